//! Service integration: the systemd unit, the sd_notify messages, and `mount.plugfs`.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use plugfs_tests::{Host, binary, is_fuse_mount, target_dir, wait_until};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn memfs_config(dir: &Path, name: &str, mountpoint: &str) -> PathBuf {
    let path = dir.join("plugfs.toml");
    std::fs::write(
        &path,
        format!(
            "[host]\nplugin_dirs = [{:?}]\n\n[[mount]]\nname = \"{name}\"\nplugin = \"memfs\"\nmountpoint = \"{mountpoint}\"\n\
             create_mountpoint = true\n",
            target_dir().to_str().unwrap()
        ),
    )
    .unwrap();
    path
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let Ok(out) = std::process::Command::new("systemd-analyze").arg("--version").output() else {
        println!("skipped: systemd-analyze is missing (apt-get install systemd)");
        return;
    };
    assert!(out.status.success());
    let dir = tempfile::tempdir().unwrap();
    // The unit names the installed binary; verify checks that it exists, so point it at
    // the built one.
    let unit = std::fs::read_to_string(repo().join("contrib/systemd/plugfs@.service")).unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("ExecReload=/bin/kill -HUP $MAINPID"), "{unit}");
    let unit = unit.replace("/usr/bin/plugfs", binary("plugfs").to_str().unwrap());
    std::fs::write(dir.path().join("plugfs@.service"), unit).unwrap();
    let instance = dir.path().join("plugfs@demo.service");
    std::os::unix::fs::symlink(dir.path().join("plugfs@.service"), &instance).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&instance)
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = stderr.lines().filter(|l| l.contains("plugfs@")).collect();
    assert!(out.status.success() && complaints.is_empty(), "{stderr}");
}

#[test]
fn the_host_notifies_ready_reloading_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let config = memfs_config(dir.path(), "n", "mnt");
    let mnt = dir.path().join("mnt");
    let mut host = Host::start_with(&config, &[&mnt], |c| {
        c.env("NOTIFY_SOCKET", &socket_path);
    });
    let next = || {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = next();
    assert!(ready.starts_with("READY=1") && ready.contains("serving 1 mount"), "{ready}");
    assert!(is_fuse_mount(&mnt), "READY=1 comes once every mount is up");
    unsafe { libc::kill(host.pid(), libc::SIGHUP) };
    assert!(next().starts_with("RELOADING=1\nMONOTONIC_USEC="));
    assert!(next().starts_with("READY=1"));
    unsafe { libc::kill(host.pid(), libc::SIGTERM) };
    assert_eq!(next(), "STOPPING=1");
    assert_eq!(host.wait_exit(Duration::from_secs(20)).and_then(|s| s.code()), Some(0), "{}", host.stderr());
}

#[test]
fn mount_plugfs_mounts_from_an_fstab_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = memfs_config(dir.path(), "scratch", "unused");
    let target = dir.path().join("target");
    std::fs::create_dir(&target).unwrap();
    let fstab_line = format!("{}:scratch {} plugfs rw,noauto 0 0", config.display(), target.display());
    let fields: Vec<&str> = fstab_line.split_whitespace().collect();

    // mount(8) runs /sbin/mount.<type> SOURCE DIR -o OPTIONS; the helper is the plugfs
    // binary called as mount.plugfs.
    let helper = dir.path().join("mount.plugfs");
    std::os::unix::fs::symlink(binary("plugfs"), &helper).unwrap();
    let out = std::process::Command::new(&helper).args([fields[0], fields[1], "-o", fields[3]]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(is_fuse_mount(&target));
    assert!(!dir.path().join("unused").exists(), "the fstab line's directory is used instead");
    std::fs::write(target.join("f"), b"through mount.plugfs").unwrap();
    assert_eq!(std::fs::read(target.join("f")).unwrap(), b"through mount.plugfs");

    // Its host has a control socket of its own and unmounts by name.
    let out = std::process::Command::new(binary("plugfs"))
        .args(["unmount", "scratch", "--socket"])
        .arg(dir.path().join("plugfs.scratch.sock"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(wait_until(Duration::from_secs(20), || !is_fuse_mount(&target)));

    let out = std::process::Command::new(&helper).args(["no-colon", fields[1]]).output().unwrap();
    assert_eq!(out.status.code(), Some(32));
    assert!(String::from_utf8_lossy(&out.stderr).contains("CONFIG:NAME"));
}
