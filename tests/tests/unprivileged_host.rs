//! A host that is not root: mounted through the setuid fusermount3, without CAP_SYS_ADMIN,
//! so kernel passthrough (which needs it to register backing files) is off and every read
//! and write goes through the plugin. The host says so once, and the data is right.

use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use plugfs_tests::{Host, target_dir};

const NOBODY: u32 = 65534;

/// Runs `sh -c script` in `cwd` as nobody and returns its stdout (None if it failed).
fn sh_as_nobody(cwd: &Path, script: &str) -> Option<String> {
    let mut cmd = Command::new("sh");
    cmd.args(["-c", script]).current_dir(cwd);
    // SAFETY: only raw syscalls between fork and exec; the child has one thread.
    unsafe {
        cmd.pre_exec(|| {
            let ok = libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) == 0
                && libc::syscall(libc::SYS_setgid, NOBODY) == 0
                && libc::syscall(libc::SYS_setuid, NOBODY) == 0;
            if ok { Ok(()) } else { Err(std::io::Error::last_os_error()) }
        })
    };
    let out = cmd.output().unwrap();
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Makes /dev/fuse usable by every user for the test, as Debian's udev rule leaves it
/// (0666), and puts the mode back after: containers often create it 0600, and fusermount3
/// opens it as the calling user.
struct FuseDeviceOpen {
    mode: u32,
}

impl FuseDeviceOpen {
    fn new() -> Self {
        let mode = std::fs::metadata("/dev/fuse").unwrap().permissions().mode() & 0o7777;
        std::fs::set_permissions("/dev/fuse", PermissionsExt::from_mode(0o666)).unwrap();
        FuseDeviceOpen { mode }
    }
}

impl Drop for FuseDeviceOpen {
    fn drop(&mut self) {
        let _ = std::fs::set_permissions("/dev/fuse", PermissionsExt::from_mode(self.mode));
    }
}

#[test]
fn a_host_without_cap_sys_admin_serves_through_the_plugin_and_says_why_passthrough_is_off() {
    let _device = FuseDeviceOpen::new();
    let dir = tempfile::tempdir().unwrap();
    // Everything the host makes (mountpoint, backing directory, control socket) is its own.
    std::fs::set_permissions(dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
    chown(dir.path(), Some(NOBODY), Some(NOBODY)).unwrap();
    let config = dir.path().join("plugfs.toml");
    std::fs::write(
        &config,
        format!(
            "[host]\nplugin_dirs = [{:?}]\n\n[[mount]]\nname = \"data\"\nplugin = \"durable-io\"\n\
             mountpoint = \"mnt\"\ncreate_mountpoint = true\n[mount.config]\nroot = \"data\"\n\
             create_root = true\ndurability = \"kernel\"\n",
            target_dir().to_str().unwrap()
        ),
    )
    .unwrap();
    let mnt = dir.path().join("mnt");
    let mut host = Host::start_with(&config, &[&mnt], |command| unsafe {
        command.pre_exec(|| {
            let ok = libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) == 0
                && libc::syscall(libc::SYS_setgid, NOBODY) == 0
                && libc::syscall(libc::SYS_setuid, NOBODY) == 0;
            if ok { Ok(()) } else { Err(std::io::Error::last_os_error()) }
        });
    });

    // Only its owner may use a mount without allow_other: the test's reads are nobody's.
    // 300,000 bytes: several FUSE writes and reads.
    let data = "x".repeat(300_000);
    let script = "head -c 300000 /dev/zero | tr '\\0' x > mnt/file && cat mnt/file && stat -c %s mnt/file";
    let out = sh_as_nobody(dir.path(), script).unwrap_or_else(|| panic!("I/O failed; host:\n{}", host.stderr()));
    assert_eq!(out, format!("{data}{}\n", data.len()));
    assert_eq!(std::fs::read_to_string(dir.path().join("data/file")).unwrap(), data, "in the backing directory");

    let log = host.stderr();
    assert!(
        log.contains("no kernel passthrough") && log.contains("lacks CAP_SYS_ADMIN"),
        "the host should say why passthrough is off:\n{log}"
    );
    // auto_unmount is on by default; without user_allow_other in /etc/fuse.conf (as here)
    // fusermount3 would refuse it, so the host mounts without its watcher and says so.
    let user_allow_other = std::fs::read_to_string("/etc/fuse.conf")
        .is_ok_and(|c| c.lines().any(|l| l.split('#').next().unwrap_or("").trim() == "user_allow_other"));
    if !user_allow_other {
        assert!(log.contains("auto_unmount without fusermount3's watcher"), "{log}");
    }
    assert!(host.signal_and_wait(libc::SIGTERM).is_some_and(|s| s.success()), "clean exit:\n{}", host.stderr());
    assert!(!plugfs_tests::is_fuse_mount(&mnt), "unmounted by the unprivileged host itself");
}
