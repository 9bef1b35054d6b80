//! The log bridge (ABI 2.1) through the `plugfs` binary: a plugin loaded as a shared
//! library logs with plain `tracing`, and its lines appear in the host's stderr with the
//! plugin's name, filtered by `RUST_LOG` on the plugin's own target.

use std::path::Path;
use std::time::Duration;

use plugfs_tests::{Host, fixtures_dir, wait_until};

/// Mounts the `plugin-logs` fixture with `RUST_LOG=rust_log`, looks up a name that makes
/// it warn, and returns the host's stderr once that warning is in it (after 10 s at most),
/// or, when it is `silenced`, after a second.
fn mount_and_log(dir: &Path, rust_log: &str, silenced: bool) -> String {
    let mnt = dir.join("mnt");
    let config = dir.join("plugfs.toml");
    std::fs::write(
        &config,
        format!(
            "[host]\nplugin_dirs = [{:?}]\n\
             [[mount]]\nname = \"logs\"\nplugin = \"logs-fixture\"\nmountpoint = \"mnt\"\ncreate_mountpoint = true\n\
             [mount.config]\nlabel = \"mounted\"\n",
            fixtures_dir().to_str().unwrap()
        ),
    )
    .unwrap();
    let rust_log = rust_log.to_string();
    let host = Host::start_with(&config, &[&mnt], move |c| {
        c.env("RUST_LOG", rust_log);
    });
    // Served by a FUSE worker thread of the host, logged by the plugin.
    let err = std::fs::metadata(mnt.join("warn-through-fuse")).expect_err("the root is empty");
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    if silenced {
        std::thread::sleep(Duration::from_secs(1));
    } else {
        wait_until(Duration::from_secs(10), || host.stderr().contains("warn-through-fuse"));
    }
    host.stderr()
}

fn line_with<'a>(stderr: &'a str, needle: &str) -> Option<&'a str> {
    stderr.lines().find(|l| l.contains(needle))
}

#[test]
fn a_plugins_warnings_reach_the_hosts_stderr_with_its_name_and_debug_only_when_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = mount_and_log(dir.path(), "info", false);
    let opened = line_with(&stderr, "logs-fixture opened: warning from open")
        .unwrap_or_else(|| panic!("the plugin's warning from open is missing:\n{stderr}"));
    for want in ["WARN", "plugfs_fixture_logs::logs", "plugin=logs-fixture", "label=mounted"] {
        assert!(opened.contains(want), "{want:?} is missing from {opened:?}");
    }
    let lookup = line_with(&stderr, "lookup of a missing name")
        .unwrap_or_else(|| panic!("the plugin's warning from a lookup is missing:\n{stderr}"));
    assert!(lookup.contains("warn-through-fuse") && lookup.contains("plugin=logs-fixture"), "{lookup}");
    assert!(line_with(&stderr, "warning from a background thread").is_some(), "{stderr}");
    assert!(line_with(&stderr, "debug detail from open").is_none(), "DEBUG is off at RUST_LOG=info:\n{stderr}");

    // The plugin's own target enables its DEBUG lines, as for any crate.
    let dir = tempfile::tempdir().unwrap();
    let stderr = mount_and_log(dir.path(), "info,plugfs_fixture_logs=debug", false);
    let debug = line_with(&stderr, "debug detail from open")
        .unwrap_or_else(|| panic!("RUST_LOG enables the plugin's DEBUG line:\n{stderr}"));
    assert!(debug.contains("DEBUG") && debug.contains("plugin=logs-fixture"), "{debug}");
    // ... and another target's DEBUG does not.
    let dir = tempfile::tempdir().unwrap();
    let stderr = mount_and_log(dir.path(), "info,plugfs_other=debug", false);
    assert!(line_with(&stderr, "debug detail from open").is_none(), "{stderr}");
    assert!(line_with(&stderr, "logs-fixture opened").is_some(), "{stderr}");

    // Filtering by target works downwards too: the plugin's warnings can be silenced.
    let dir = tempfile::tempdir().unwrap();
    let stderr = mount_and_log(dir.path(), "info,plugfs_fixture_logs=error", true);
    assert!(line_with(&stderr, "logs-fixture opened").is_none(), "{stderr}");
    assert!(line_with(&stderr, "lookup of a missing name").is_none(), "{stderr}");
}
