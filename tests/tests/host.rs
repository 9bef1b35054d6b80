//! The `plugfs` binary end to end: real configs, real plugin libraries, real FUSE mounts.

use std::path::{Path, PathBuf};

use plugfs_plugin_api::Capabilities;
use plugfs_tests::{Host, is_fuse_mount, plugfs, plugin_library, target_dir, wait_until};

/// A scratch directory with a config file in it.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        // The unprivileged user of the permission checks must be able to reach the mount.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        Setup { dir }
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn config(&self, text: &str) -> PathBuf {
        let p = self.path("plugfs.toml");
        std::fs::write(&p, text).unwrap();
        p
    }
}

fn plugin_dirs() -> String {
    format!("[host]\nplugin_dirs = [{:?}]\n", target_dir().to_str().unwrap())
}

fn durable_io_config(durability: &str, extra_options: &str) -> String {
    format!(
        "{}\n[[mount]]\nname = \"data\"\nplugin = \"durable-io\"\nmountpoint = \"mnt\"\ncreate_mountpoint = true\n\
         [mount.options]\nallow_other = true\n{extra_options}\n[mount.config]\nroot = \"data\"\ncreate_root = true\n\
         durability = \"{durability}\"\n",
        plugin_dirs()
    )
}

fn assert_conformant(mountpoint: &Path, caps: &Capabilities) {
    let report = plugfs_conformance::run_mounted(mountpoint, caps, Some((65534, 65534)));
    assert!(report.ok(), "{}", report.summary());
    // Through a mount as root with a second user, only what the capabilities rule out is
    // left out: the checks of the kernel's part and those made as the user all run.
    for (name, why) in &report.skipped {
        assert!(why.contains("capabilities"), "{name} was skipped ({why}):\n{}", report.summary());
    }
    for check in plugfs_conformance::permissions::all() {
        if (check.applies)(caps) {
            assert!(report.passed.contains(&check.name), "{} did not pass:\n{}", check.name, report.summary());
        }
    }
}

#[test]
fn plugfs_mount_serves_durable_io_that_passes_the_conformance_suite_and_exits_0_on_sigterm() {
    let s = Setup::new();
    let config = s.config(&durable_io_config("close", ""));
    let mnt = s.path("mnt");
    let mut host = Host::start(&config, &[&mnt]);
    assert_conformant(&mnt, &Capabilities::POSIX);

    std::fs::write(mnt.join("kept"), b"written through the mount").unwrap();
    let status = host.signal_and_wait(libc::SIGTERM).expect("plugfs exits on SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", host.stderr());
    assert!(!is_fuse_mount(&mnt), "SIGTERM must unmount");
    assert_eq!(std::fs::read(s.path("data/kept")).unwrap(), b"written through the mount");
}

#[test]
fn plugfs_mount_serves_memfs_that_passes_the_conformance_suite_and_exits_0_on_sigint() {
    let s = Setup::new();
    let config = s.config(&format!(
        "{}\n[[mount]]\nname = \"scratch\"\nplugin = \"memfs\"\nmountpoint = \"mnt\"\ncreate_mountpoint = true\n\
         [mount.options]\nallow_other = true\n",
        plugin_dirs()
    ));
    let mnt = s.path("mnt");
    let mut host = Host::start(&config, &[&mnt]);
    let caps =
        plugfs_plugin_api::host::PluginLibrary::load(&plugin_library("plugfs-memfs")).unwrap().info().capabilities;
    assert_conformant(&mnt, &caps);
    let status = host.signal_and_wait(libc::SIGINT).expect("plugfs exits on SIGINT");
    assert_eq!(status.code(), Some(0), "{}", host.stderr());
    assert!(!is_fuse_mount(&mnt));
}

#[test]
fn one_host_serves_two_plugins_at_once() {
    let s = Setup::new();
    let config = s.config(&format!(
        "{}\n[[mount]]\nname = \"mem\"\nplugin = \"memfs\"\nmountpoint = \"mem\"\ncreate_mountpoint = true\n\
         [[mount]]\nname = \"disk\"\nplugin = \"durable-io\"\nmountpoint = \"disk\"\ncreate_mountpoint = true\n\
         [mount.config]\nroot = \"data\"\ncreate_root = true\n",
        plugin_dirs()
    ));
    let (mem, disk) = (s.path("mem"), s.path("disk"));
    let mut host = Host::start(&config, &[&mem, &disk]);
    std::fs::write(mem.join("a"), b"in memory").unwrap();
    std::fs::write(disk.join("b"), b"on disk").unwrap();
    assert!(!disk.join("a").exists() && !mem.join("b").exists());
    assert_eq!(std::fs::read(s.path("data/b")).unwrap(), b"on disk");
    assert_eq!(host.signal_and_wait(libc::SIGTERM).and_then(|s| s.code()), Some(0), "{}", host.stderr());
    assert!(!is_fuse_mount(&mem) && !is_fuse_mount(&disk));
}

#[test]
fn a_killed_host_leaves_a_dead_mount_that_plugfs_unmount_recovers() {
    let s = Setup::new();
    let config = s.config(&durable_io_config("close", "auto_unmount = false"));
    let mnt = s.path("mnt");
    let mut host = Host::start(&config, &[&mnt]);
    host.signal_and_wait(libc::SIGKILL);
    let err = std::fs::metadata(&mnt).expect_err("a dead mount cannot be stat'ed");
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");

    let (code, out, err) = plugfs(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("dead mount") && err.contains("plugfs unmount"), "check must say how to recover: {err}");

    let (code, out, err) = plugfs(&["unmount", mnt.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(std::fs::metadata(&mnt).unwrap().is_dir() && !is_fuse_mount(&mnt));
    // And the directory can be mounted again.
    let mut again = Host::start(&config, &[&mnt]);
    assert_eq!(again.signal_and_wait(libc::SIGTERM).and_then(|s| s.code()), Some(0));
}

#[test]
fn with_auto_unmount_a_killed_host_leaves_no_mount_behind() {
    let s = Setup::new();
    let config = s.config(&durable_io_config("close", "auto_unmount = true"));
    let mnt = s.path("mnt");
    // Several rounds: a mount left behind only now and then is the failure this catches.
    for round in 0..5 {
        let mut host = Host::start(&config, &[&mnt]);
        std::fs::write(mnt.join("f"), b"x").unwrap();
        host.signal_and_wait(libc::SIGKILL);
        assert!(
            wait_until(std::time::Duration::from_secs(30), || !is_fuse_mount(&mnt) && std::fs::metadata(&mnt).is_ok()),
            "round {round}: the killed host's mount was left behind; plugfs said:\n{}",
            host.stderr()
        );
    }
}

/// A second `plugfs mount` that serves memfs at `inner`, for a backing store that can be
/// made to hang: stopping this process (SIGSTOP) leaves every request to it waiting.
fn memfs_host(s: &Setup, inner: &str) -> Host {
    let config = s.path("inner.toml");
    std::fs::write(
        &config,
        format!(
            "{}\n[[mount]]\nname = \"inner\"\nplugin = \"memfs\"\nmountpoint = {inner:?}\ncreate_mountpoint = true\n",
            plugin_dirs()
        ),
    )
    .unwrap();
    Host::start(&config, &[&s.path(inner)])
}

/// Continues a stopped process when dropped, so a failing test leaves nothing stopped.
struct Stopped(i32);

impl Stopped {
    /// Stops `pid` and waits until every thread of it has stopped.
    fn new(pid: i32) -> Stopped {
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        let all_stopped = || {
            std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().all(|task| {
                let stat = std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap_or_default();
                // The state follows the parenthesised command name.
                stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
            })
        };
        assert!(wait_until(std::time::Duration::from_secs(20), all_stopped), "{pid} did not stop");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

#[test]
fn a_second_signal_ends_a_shutdown_stuck_on_a_request_in_flight() {
    let s = Setup::new();
    let mut inner = memfs_host(&s, "inner");
    // durable-io over the memfs mount; the drain would wait an hour.
    let config = s.config(&format!(
        "{}shutdown_timeout = 3600\n[[mount]]\nname = \"outer\"\nplugin = \"durable-io\"\nmountpoint = \"outer\"\n\
         create_mountpoint = true\n[mount.config]\nroot = \"inner\"\n",
        plugin_dirs()
    ));
    let outer = s.path("outer");
    let mut host = Host::start(&config, &[&outer]);
    // Served, through lookups only: a file plugfs opened on memfs would be closed (a flush
    // on memfs that cannot be interrupted) behind our back, maybe after memfs stops.
    std::fs::write(s.path("inner/f"), b"served").unwrap();
    assert_eq!(std::fs::metadata(outer.join("f")).unwrap().len(), 6);

    let stopped = Stopped::new(inner.pid());
    // A lookup reaches plugfs, whose plugin waits on the stopped memfs host. (Under heavy
    // load one was once answered before memfs stood still; that is no part of what this
    // test checks, so a few names are tried.)
    let mut stuck = None;
    for attempt in 0..5 {
        let name = outer.join(format!("never-looked-up-{attempt}"));
        let lookup = std::thread::spawn(move || std::fs::metadata(name));
        std::thread::sleep(std::time::Duration::from_secs(1));
        if !lookup.is_finished() {
            stuck = Some(lookup);
            break;
        }
    }
    let stuck = stuck.expect("a lookup should hang on the stopped backing store");

    unsafe { libc::kill(host.pid(), libc::SIGTERM) };
    let waiting = wait_until(std::time::Duration::from_secs(20), || host.stderr().contains("request(s) in flight"));
    assert!(waiting, "the shutdown should wait for the request in flight:\n{}", host.stderr());
    assert!(host.is_running(), "still draining:\n{}", host.stderr());

    unsafe { libc::kill(host.pid(), libc::SIGTERM) };
    let status = host.wait_exit(std::time::Duration::from_secs(20));
    // Whatever happened, let memfs go on, so nothing waits on it forever.
    drop(stopped);
    let status = status.unwrap_or_else(|| panic!("a second signal should end plugfs:\n{}", host.stderr()));
    assert_eq!(status.code(), Some(1), "{}", host.stderr());
    assert!(host.stderr().contains("second signal: exiting now"), "{}", host.stderr());
    assert!(!is_fuse_mount(&outer), "the forced exit detaches the mount");
    // The caller that was stuck gets an error instead of hanging forever.
    assert!(wait_until(std::time::Duration::from_secs(30), || stuck.is_finished()), "the caller still hangs");
    assert!(stuck.join().unwrap().is_err());
    assert_eq!(inner.signal_and_wait(libc::SIGTERM).and_then(|s| s.code()), Some(0), "{}", inner.stderr());
}

#[test]
fn a_backend_that_hangs_is_swapped_away_without_the_host_waiting_for_it() {
    let s = Setup::new();
    let mut inner = memfs_host(&s, "inner");
    let outer_config = |root: &str| {
        format!(
            "{}[[mount]]\nname = \"outer\"\nplugin = \"durable-io\"\nmountpoint = \"outer\"\ncreate_mountpoint = true\n\
             [mount.config]\nroot = \"{root}\"\n",
            plugin_dirs()
        )
    };
    let config = s.config(&outer_config("inner"));
    let outer = s.path("outer");
    let mut host = Host::start(&config, &[&outer]);
    // Lookups only, as in the test above: no file of memfs is opened through plugfs.
    std::fs::write(s.path("inner/f"), b"old").unwrap();
    assert_eq!(std::fs::metadata(outer.join("f")).unwrap().len(), 3);
    std::fs::create_dir(s.path("local")).unwrap();
    std::fs::write(s.path("local/f"), b"new data").unwrap();

    // The old backend's store stops answering: listing its root for the invalidation
    // would wait forever.
    let stopped = Stopped::new(inner.pid());
    s.config(&outer_config("local"));
    let reload = std::thread::spawn({
        let config = config.clone();
        move || plugfs(&["reload", "--config", config.to_str().unwrap()])
    });
    let answered = wait_until(std::time::Duration::from_secs(60), || reload.is_finished());
    let reloaded = answered.then(|| reload.join().unwrap());
    let new_data = answered.then(|| std::fs::read(outer.join("f")));
    // Whatever happened, let memfs go on, so nothing waits on it forever.
    drop(stopped);
    let (code, out, err) = reloaded.unwrap_or_else(|| panic!("the reload never answered:\n{}", host.stderr()));
    assert_eq!(code, 0, "{out}{err}\n{}", host.stderr());
    assert!(out.contains("outer: changed: backend swapped in place"), "{out}");
    assert_eq!(new_data.unwrap().unwrap(), b"new data");
    assert!(host.stderr().contains("completes in the background"), "{}", host.stderr());

    assert_eq!(host.signal_and_wait(libc::SIGTERM).and_then(|s| s.code()), Some(0), "{}", host.stderr());
    assert_eq!(inner.signal_and_wait(libc::SIGTERM).and_then(|s| s.code()), Some(0), "{}", inner.stderr());
}

#[test]
fn a_tree_of_50000_files_is_walked_and_opened_under_a_soft_open_file_limit_of_1024() {
    use std::os::unix::process::CommandExt;
    const DIRS: usize = 50;
    const FILES: usize = 1000;
    // durable-io holds one descriptor per node the kernel remembers. The kernel is made to
    // forget every few directories, so the walk needs a few thousand at most: well above
    // the soft limit, within any usual hard limit.
    const FORGET_EVERY: usize = 4;
    let mut hard = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut hard) }, 0);
    let hard = hard.rlim_max;
    assert!(hard >= 8192, "this test needs a hard RLIMIT_NOFILE of at least 8192, not {hard}");
    let s = Setup::new();
    for d in 0..DIRS {
        let dir = s.path(&format!("data/d{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..FILES {
            std::fs::File::create(dir.join(format!("f{f}"))).unwrap();
        }
    }
    let config = s.config(&durable_io_config("kernel", ""));
    let mnt = s.path("mnt");
    // What a service manager commonly hands out: a soft limit of 1024 under a higher hard one.
    let mut host = Host::start_with(&config, &[&mnt], |command| unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit { rlim_cur: 1024, rlim_max: hard };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    });
    // Every file stat'ed; the files of each directory all open at once while it is walked.
    let mut seen = 0;
    for d in 0..DIRS {
        if d % FORGET_EVERY == 0 {
            // "2": dentries and inodes; the kernel then forgets the nodes it no longer uses.
            std::fs::write("/proc/sys/vm/drop_caches", "2").expect("drop caches (needs root)");
        }
        let mut open = Vec::new();
        for entry in std::fs::read_dir(mnt.join(format!("d{d}"))).unwrap() {
            let path = entry.unwrap_or_else(|e| panic!("listing d{d}: {e}")).path();
            let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
            assert!(meta.is_file());
            seen += 1;
            open.push(std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display())));
        }
        assert_eq!(open.len(), FILES, "d{d}");
    }
    assert_eq!(seen, DIRS * FILES);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", host.pid())).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, [hard.to_string(), hard.to_string()], "soft limit raised to the hard one: {line}");

    assert_eq!(host.signal_and_wait(libc::SIGTERM).and_then(|s| s.code()), Some(0), "{}", host.stderr());
}

#[test]
fn a_panicking_plugin_answers_eio_through_the_mount_and_the_host_keeps_serving() {
    let s = Setup::new();
    let config = s.config(&format!(
        "[[mount]]\nname = \"buggy\"\nplugin = {:?}\nmountpoint = \"mnt\"\ncreate_mountpoint = true\n",
        plugin_library("plugfs-fixture-panics").to_str().unwrap()
    ));
    let mnt = s.path("mnt");
    let mut host = Host::start(&config, &[&mnt]);
    for _ in 0..3 {
        let err = std::fs::read(mnt.join("file")).expect_err("read panics in the plugin");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
        let err = std::fs::read_dir(&mnt).and_then(|d| d.collect::<Result<Vec<_>, _>>()).expect_err("readdir panics");
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
        assert_eq!(std::fs::metadata(mnt.join("file")).unwrap().len(), 10, "other calls still work");
    }
    assert!(host.is_running(), "the host must survive plugin panics");
    let log = host.stderr();
    assert!(
        log.lines().any(|l| l.contains("ERROR") && l.contains("panics-fixture") && l.contains("op=\"read\"")),
        "expected an error line naming the plugin and the operation:\n{log}"
    );
    assert_eq!(host.signal_and_wait(libc::SIGTERM).and_then(|s| s.code()), Some(0), "{}", host.stderr());
}

#[test]
fn a_config_typo_names_the_file_line_column_and_key() {
    let s = Setup::new();
    let config = s.config("[[mount]]\nname = \"x\"\nplugin = \"memfs\"\nmountpiont = \"mnt\"\n");
    let (code, _, err) = plugfs(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    let want = format!("{}:4:1: key `mount[0].mountpiont`: unknown field `mountpiont`", config.display());
    assert!(err.contains(&want), "expected {want:?} in:\n{err}");
}

#[test]
fn a_setting_the_plugin_refuses_is_located_in_the_file() {
    let s = Setup::new();
    let config = s.config(&durable_io_config("sometimes", ""));
    let (code, _, err) = plugfs(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    let line = std::fs::read_to_string(&config).unwrap().lines().position(|l| l.starts_with("durability")).unwrap() + 1;
    let want = format!("{}:{line}:1: key `mount[0].config.durability`: plugin `durable-io` refused", config.display());
    assert!(err.contains(&want), "expected {want:?} in:\n{err}");
    assert!(err.contains("sometimes"), "{err}");
}

#[test]
fn default_permissions_off_is_refused_for_a_plugin_that_does_not_check_permissions() {
    let s = Setup::new();
    let config = s.config(&format!(
        "{}\n[[mount]]\nname = \"x\"\nplugin = \"memfs\"\nmountpoint = \"mnt\"\ncreate_mountpoint = true\n\
         [mount.options]\ndefault_permissions = false\n",
        plugin_dirs()
    ));
    let (code, _, err) = plugfs(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    let want = ":10:1: key `mount[0].options.default_permissions`: plugin `memfs` does not check permissions itself";
    assert!(err.contains(want), "expected {want:?} in:\n{err}");
}

#[test]
fn an_unknown_plugin_name_lists_where_plugfs_looked() {
    let s = Setup::new();
    let config =
        s.config(&format!("{}\n[[mount]]\nname = \"x\"\nplugin = \"nosuchfs\"\nmountpoint = \"mnt\"\n", plugin_dirs()));
    let (code, _, err) = plugfs(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(":6:1: key `mount[0].plugin`: no plugin named `nosuchfs`"), "{err}");
    assert!(err.contains(target_dir().to_str().unwrap()), "{err}");
}

#[test]
fn plugins_lists_every_plugin_with_its_abi_and_the_refusals() {
    let dir = plugfs_tests::fixtures_dir();
    let (code, out, err) = plugfs(&["plugins", "--dir", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    // The real plugins speak 2.2; the fixtures of 2.0 (misbehaves, logs-2-0) still load.
    for want in ["name:         memfs", "name:         durable-io", "ABI:          2.2", "ABI:          2.0"] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    assert!(out.contains("capabilities: writable symlinks hard-links"), "{out}");
    assert!(out.contains("plugin ABI 1.0 is incompatible with host plugin ABI 2.2"), "{out}");
    assert!(out.contains("plugin ABI 3.0 is incompatible with host plugin ABI 2.2"), "{out}");
}

#[test]
fn plugins_by_default_lists_the_real_plugins_and_no_test_fixture() {
    let (code, out, err) = plugfs(&["plugins"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("name:         memfs") && out.contains("name:         durable-io"), "{out}");
    assert!(!out.contains("fixture"), "a test fixture is listed beside the real plugins:\n{out}");
    assert!(!out.contains("not loadable"), "{out}");
}

#[test]
fn help_explains_the_commands_and_the_config() {
    let (code, out, _) = plugfs(&["--help"]);
    assert_eq!(code, 0);
    for want in ["mount", "check", "plugins", "unmount", "[[mount]]", "RUST_LOG", "Examples"] {
        assert!(out.contains(want), "--help lacks {want:?}:\n{out}");
    }
}

#[test]
fn the_default_config_of_the_readme_mounts_a_directory_of_the_checkout() {
    // The README's first command, with the checkout's config/default.toml copied into a
    // scratch "checkout" so the test does not touch the real demo/ directory.
    let s = Setup::new();
    let repo_config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/default.toml");
    std::fs::create_dir(s.path("config")).unwrap();
    let config = s.path("config/default.toml");
    std::fs::copy(&repo_config, &config).unwrap();
    let (code, out, err) = plugfs(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");

    let mnt = s.path("demo/mnt");
    let mut host = Host::start(&config, &[&mnt]);
    std::fs::write(mnt.join("hello.txt"), b"hello through plugfs\n").unwrap();
    assert_eq!(std::fs::read(s.path("demo/data/hello.txt")).unwrap(), b"hello through plugfs\n");
    assert_eq!(host.signal_and_wait(libc::SIGINT).and_then(|s| s.code()), Some(0), "{}", host.stderr());
    assert!(!is_fuse_mount(&mnt));
}

#[test]
fn plugfs_mount_serves_the_c_example_plugin_read_only_and_it_passes_the_checks_it_declares() {
    let s = Setup::new();
    let config = s.config(&format!(
        "{}\n[[mount]]\nname = \"hello\"\nplugin = \"hello-c\"\nmountpoint = \"mnt\"\ncreate_mountpoint = true\n\
         [mount.options]\nallow_other = true\n",
        plugin_dirs()
    ));
    let mnt = s.path("mnt");
    let mut host = Host::start(&config, &[&mnt]);
    let caps =
        plugfs_plugin_api::host::PluginLibrary::load(&plugin_library("plugfs-hello-c")).unwrap().info().capabilities;
    let report = plugfs_conformance::run_mounted(&mnt, &caps, Some((65534, 65534)));
    assert!(report.ok(), "{}", report.summary());
    assert!(report.passed.contains(&"missing_names_are_enoent"), "{}", report.summary());

    assert_eq!(std::fs::read_to_string(mnt.join("hello.txt")).unwrap(), "Hello from C!\n");
    assert_eq!(std::fs::read_link(mnt.join("link")).unwrap(), Path::new("hello.txt"));
    assert_eq!(std::fs::read_to_string(mnt.join("link")).unwrap(), "Hello from C!\n");
    let mut names: Vec<String> =
        std::fs::read_dir(&mnt).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["docs", "hello.txt", "link"]);
    let err = std::fs::write(mnt.join("new"), b"x").expect_err("a read-only plugin refuses new files");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    let err = std::fs::metadata(mnt.join("missing")).expect_err("missing");
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");

    assert_eq!(host.signal_and_wait(libc::SIGTERM).and_then(|s| s.code()), Some(0), "{}", host.stderr());
    assert!(!host.stderr().contains("panicked"), "{}", host.stderr());
}

#[test]
fn plugins_lists_the_c_example_plugin() {
    let dir = target_dir();
    let (code, out, err) = plugfs(&["plugins", "--dir", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    // One block per file: its path, then indented lines.
    let mut blocks: Vec<String> = Vec::new();
    for line in out.lines() {
        match blocks.last_mut() {
            Some(block) if line.starts_with("  ") => block.push_str(&format!("\n{line}")),
            _ => blocks.push(line.to_string()),
        }
    }
    let block = blocks.iter().find(|b| b.contains("name:         hello-c")).unwrap_or_else(|| panic!("{out}"));
    assert!(block.starts_with(&dir.join("libplugfs_hello_c.so").display().to_string()), "{block}");
    assert!(block.contains("ABI:          2.2"), "{block}");
    assert!(block.contains("written in C"), "{block}");
    assert!(block.contains("capabilities: symlinks case-sensitive case-preserving names<=255B"), "{block}");
}
