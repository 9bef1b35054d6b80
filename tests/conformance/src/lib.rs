//! # plugfs conformance suite
//!
//! POSIX-semantics checks for any plugfs plugin, chosen by the capabilities it declares,
//! run two ways:
//!
//! - **directly**, through the host's loader ([`run_direct`]): the plugin library is
//!   loaded as `plugfs` loads it and called without a kernel in the loop;
//! - **through a mount** ([`run_mounted`]): real system calls on a directory where the
//!   plugin is mounted (by [`mount_and_run`], or by a running `plugfs mount`), followed by
//!   checks made as an unprivileged user ([`user_checks`]).
//!
//! Pointing it at a new plugin takes one call, or one command:
//!
//! ```text
//! plugfs-conformance --plugin target/debug/libplugfs_memfs.so --config 'max_bytes = 1000000000'
//! ```

pub mod checks;
pub mod client;
pub mod permissions;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plugfs_plugin_api::host::PluginLibrary;
use plugfs_plugin_api::{Capabilities, FileSystem, MountOptions, Request};

pub use crate::client::{Client, DirectClient, MountClient};

/// What one run found.
#[derive(Debug, Default)]
pub struct Report {
    /// How the filesystem was reached.
    pub via: String,
    /// Checks that passed.
    pub passed: Vec<&'static str>,
    /// Checks that failed, with why.
    pub failed: Vec<(&'static str, String)>,
    /// Checks left out, with why: the plugin does not declare what they need, or this way
    /// of reaching it cannot make them (no kernel in the loop, no second user).
    pub skipped: Vec<(&'static str, String)>,
}

impl Report {
    /// Whether every check that ran passed (and at least one ran).
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && !self.passed.is_empty()
    }

    /// The names of the skipped checks.
    pub fn skipped_names(&self) -> Vec<&'static str> {
        self.skipped.iter().map(|(name, _)| *name).collect()
    }

    /// A readable summary: one line per failure and per skipped check, then the counts.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for (name, why) in &self.failed {
            s.push_str(&format!("FAIL {name} ({}): {why}\n", self.via));
        }
        for (name, why) in &self.skipped {
            s.push_str(&format!("skip {name}: {why}\n"));
        }
        s.push_str(&format!(
            "{} passed, {} failed, {} skipped ({})",
            self.passed.len(),
            self.failed.len(),
            self.skipped.len(),
            self.via
        ));
        s
    }

    fn record(&mut self, name: &'static str, outcome: checks::Outcome) {
        match outcome {
            Ok(()) => self.passed.push(name),
            Err(why) => match why.strip_prefix(checks::SKIP_MARK) {
                Some(reason) => self.skipped.push((name, reason.to_string())),
                None => self.failed.push((name, why)),
            },
        }
    }
}

/// Why a check whose capabilities are missing is left out.
const NOT_DECLARED: &str = "the plugin does not declare the capabilities it needs";
/// Why a check of the kernel's part is left out when the plugin is called directly.
const NO_KERNEL: &str = "needs the kernel in the loop: runs through a mount";
/// Why the checks made as a second user are left out.
const NO_SECOND_USER: &str = "needs a mount and a second, unprivileged user: runs through a mount given one";

/// Runs every check that `caps` calls for through `client`, each in its own directory
/// `conformance-<name>` under the root (removed afterwards where it can be).
pub fn run_checks(client: &dyn Client, caps: &Capabilities) -> Report {
    let mut report = Report { via: client.describe(), ..Report::default() };
    for check in checks::all() {
        if !(check.applies)(caps) {
            report.skipped.push((check.name, NOT_DECLARED.into()));
            continue;
        }
        if check.needs == checks::Needs::Kernel && !client.through_kernel() {
            report.skipped.push((check.name, NO_KERNEL.into()));
            continue;
        }
        let dir = format!("conformance-{}", check.name);
        if caps.writable
            && let Err(e) = client.mkdir(&dir, 0o755)
        {
            report.failed.push((check.name, format!("cannot make its directory {dir}: {e:?}")));
            continue;
        }
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (check.run)(client, &dir, caps)));
        report.record(check.name, outcome.unwrap_or_else(|_| Err("the check panicked".into())));
        if caps.writable {
            remove_tree(client, &dir);
        }
    }
    report
}

/// Best-effort recursive removal, so a run leaves the filesystem as it found it.
fn remove_tree(client: &dyn Client, dir: &str) {
    if let Ok(entries) = client.readdir(dir) {
        for (name, kind) in entries {
            if name == b"." || name == b".." {
                continue;
            }
            let path = format!("{dir}/{}", String::from_utf8_lossy(&name));
            if kind == plugfs_plugin_api::FileKind::Directory {
                remove_tree(client, &path);
            } else {
                let _ = client.unlink(&path);
            }
        }
    }
    let _ = client.rmdir(dir);
}

/// Loads the plugin at `library`, opens it with `config` (TOML text) and runs the checks
/// directly through the plugin API, as root.
pub fn run_direct(library: &Path, config: &str) -> Result<Report, String> {
    let lib = PluginLibrary::load(library).map_err(|e| e.to_string())?;
    let caps = lib.info().capabilities;
    let fs = lib.open(config, &MountOptions::default()).map_err(|e| e.to_string())?;
    let fs: Arc<dyn FileSystem> = Arc::new(fs);
    let client = DirectClient::new(fs, Request { uid: 0, gid: 0, pid: std::process::id() });
    let mut report = run_checks(&client, &caps);
    for check in permissions::all() {
        report.skipped.push((check.name, NO_SECOND_USER.into()));
    }
    Ok(report)
}

/// Runs the checks through the filesystem mounted at `mountpoint`, which a plugin with
/// capabilities `caps` serves; then, if `unprivileged` names a user, the checks made as
/// that user (see [`user_checks`]). Needs root.
pub fn run_mounted(mountpoint: &Path, caps: &Capabilities, unprivileged: Option<(u32, u32)>) -> Report {
    let client = MountClient::new(mountpoint);
    let mut report = run_checks(&client, caps);
    match unprivileged {
        Some((uid, gid)) => user_checks(mountpoint, caps, uid, gid, &mut report),
        None => {
            for check in permissions::all() {
                report.skipped.push((check.name, NO_SECOND_USER.into()));
            }
        }
    }
    report
}

/// Mounts the plugin at `library` through the FUSE frontend (with `allow_other`, so the
/// unprivileged user may enter), runs [`run_mounted`], and unmounts.
pub fn mount_and_run(
    library: &Path,
    config: &str,
    mountpoint: &Path,
    unprivileged: Option<(u32, u32)>,
) -> Result<Report, String> {
    let lib = PluginLibrary::load(library).map_err(|e| e.to_string())?;
    let caps = lib.info().capabilities;
    let fs = lib.open(config, &MountOptions::default()).map_err(|e| e.to_string())?;
    let options = plugfs_fuse::FuseOptions {
        allow_other: true,
        fsname: format!("conformance:{}", lib.info().name),
        ..plugfs_fuse::FuseOptions::default()
    };
    let mount = plugfs_fuse::mount(Arc::new(fs), mountpoint, &options).map_err(|e| format!("mount: {e}"))?;
    let report = run_mounted(mountpoint, &caps, unprivileged);
    mount.unmount().map_err(|e| format!("unmount: {e}"))?;
    Ok(report)
}

/// The checks made as a second user ([`permissions::all`]): root sets each up in its own
/// directory `conformance-user-<name>`, one child process running as `uid`:`gid` makes
/// them all, and each outcome goes into `report`. Needs root (to set up files owned by
/// root and to switch user).
pub fn user_checks(mountpoint: &Path, caps: &Capabilities, uid: u32, gid: u32, report: &mut Report) {
    let client = MountClient::new(mountpoint);
    let mut expected = Vec::new();
    for check in permissions::all() {
        let dir = permissions::dir_of(check.name);
        let _ = std::fs::remove_dir_all(mountpoint.join(&dir));
        if !(check.applies)(caps) {
            report.skipped.push((check.name, NOT_DECLARED.into()));
            continue;
        }
        let made = client.mkdir(&dir, 0o755).and_then(|()| client.chmod(&dir, 0o755));
        let setup = match made {
            Ok(()) => (check.setup)(&client, &dir),
            Err(e) => Err(format!("cannot make its directory {dir}: {e:?}")),
        };
        match setup {
            Ok(()) => expected.push(check.name),
            Err(why) => {
                report.failed.push((check.name, format!("setting up as root: {why}")));
                let _ = std::fs::remove_dir_all(mountpoint.join(&dir));
            }
        }
    }
    if !expected.is_empty() {
        let mut outcomes = run_as(mountpoint, uid, gid);
        for name in expected {
            let outcome = match &mut outcomes {
                Ok(map) => map.remove(name).unwrap_or_else(|| Err("the user's process gave no outcome".into())),
                Err(why) => Err(why.clone()),
            };
            report.record(name, outcome.map_err(|why| format!("as {uid}:{gid}: {why}")));
        }
    }
    for check in permissions::all() {
        let _ = std::fs::remove_dir_all(mountpoint.join(permissions::dir_of(check.name)));
    }
}

/// Runs the user's part of every check set up under `mountpoint` in a child process as
/// `uid`:`gid`, and reads back one outcome per check.
fn run_as(mountpoint: &Path, uid: u32, gid: u32) -> Result<HashMap<String, checks::Outcome>, String> {
    let exe = permissions::helper_binary()?;
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new(&exe)
        .arg("--permission-checks-as-user")
        .arg(mountpoint)
        .uid(uid)
        .gid(gid)
        .output()
        .map_err(|e| format!("running {} as {uid}:{gid}: {e}", exe.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} exited with {}: {}{}",
            exe.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(permissions::parse_outcomes(&String::from_utf8_lossy(&out.stdout)))
}

/// Waits until `path` is a FUSE mount (or `timeout` passes).
pub fn wait_for_mount(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if is_fuse_mount(path) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Whether `path` is the root of a FUSE mount.
pub fn is_fuse_mount(path: &Path) -> bool {
    const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
    let Ok(c) = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str())) else { return false };
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut s) == 0 && s.f_type as i64 == FUSE_SUPER_MAGIC }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_that_skips_itself_is_reported_as_skipped_with_its_reason_not_passed() {
        let mut r = Report { via: "test".into(), ..Report::default() };
        r.record("a", Ok(()));
        r.record("b", checks::skip("no reason to run"));
        r.record("c", Err("broken".into()));
        assert_eq!(r.passed, ["a"]);
        assert_eq!(r.skipped, [("b", "no reason to run".to_string())]);
        assert_eq!(r.failed, [("c", "broken".to_string())]);
        let summary = r.summary();
        assert!(summary.contains("FAIL c (test): broken"), "{summary}");
        assert!(summary.contains("skip b: no reason to run"), "{summary}");
        assert!(summary.ends_with("1 passed, 1 failed, 1 skipped (test)"), "{summary}");
    }

    #[test]
    fn outcomes_from_the_users_process_read_back() {
        let text = "PASS one\nFAIL two: expected EPERM, got Ok(())\nnoise\n";
        let got = permissions::parse_outcomes(text);
        assert_eq!(got.len(), 2);
        assert_eq!(got["one"], Ok(()));
        assert_eq!(got["two"], Err("expected EPERM, got Ok(())".to_string()));
    }

    #[test]
    fn check_names_are_unique() {
        let mut names: Vec<&str> = checks::all().iter().map(|c| c.name).collect();
        names.extend(permissions::all().iter().map(|c| c.name));
        let count = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), count);
    }
}
