//! durable-io enforces permissions itself: mounted through `plugfs mount` *without*
//! `default_permissions`, the kernel checks nothing, and an unprivileged user must still be
//! refused what the backing filesystem would refuse it.

use std::path::{Path, PathBuf};

use plugfs_tests::{Host, target_dir};

fn config(dir: &Path) -> PathBuf {
    let text = format!(
        "[host]\nplugin_dirs = [{:?}]\n\n[[mount]]\nname = \"data\"\nplugin = \"durable-io\"\nmountpoint = \"mnt\"\n\
         create_mountpoint = true\n[mount.options]\nallow_other = true\ndefault_permissions = false\n\
         [mount.config]\nroot = \"data\"\ncreate_root = true\n",
        target_dir().to_str().unwrap()
    );
    let p = dir.join("plugfs.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn without_default_permissions_durable_io_still_refuses_an_unprivileged_user() {
    let dir = tempfile::tempdir().unwrap();
    // The unprivileged user must be able to reach the mount.
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mnt = dir.path().join("mnt");
    let mut host = Host::start(&config(dir.path()), &[&mnt]);
    let caps = plugfs_plugin_api::Capabilities::POSIX;
    let mut report = plugfs_conformance::Report::default();
    plugfs_conformance::user_checks(&mnt, &caps, 65534, 65534, &mut report);
    host.signal_and_wait(libc::SIGTERM);
    assert!(report.ok() && !report.passed.is_empty(), "{}\n{}", report.summary(), host.stderr());
}

/// Runs `sh -c script` in `cwd` as 65534:65534 with the supplementary `groups`.
fn sh_as_nobody(cwd: &Path, groups: &[u32], script: &str) -> bool {
    use std::os::unix::process::CommandExt;
    let groups = groups.to_vec();
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", script]).current_dir(cwd);
    // SAFETY: only raw syscalls between fork and exec; the child has one thread.
    unsafe {
        cmd.pre_exec(move || {
            let ok = libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) == 0
                && libc::syscall(libc::SYS_setgid, 65534) == 0
                && libc::syscall(libc::SYS_setuid, 65534) == 0;
            if ok { Ok(()) } else { Err(std::io::Error::last_os_error()) }
        })
    };
    cmd.status().unwrap().success()
}

#[test]
fn through_a_mount_a_supplementary_group_grants_access_and_its_absence_refuses_it() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mnt = dir.path().join("mnt");
    let mut host = Host::start(&config(dir.path()), &[&mnt]);
    let team = dir.path().join("data/team");
    std::fs::create_dir(&team).unwrap();
    std::os::unix::fs::chown(&team, Some(0), Some(4242)).unwrap();
    std::fs::set_permissions(&team, std::os::unix::fs::PermissionsExt::from_mode(0o2770)).unwrap();

    let outsider = sh_as_nobody(&mnt, &[], "echo x > team/outsider");
    let member = sh_as_nobody(&mnt, &[4242], "echo x > team/member && cat team/member");
    let stderr = host.stderr();
    host.signal_and_wait(libc::SIGTERM);
    assert!(!outsider, "a user without the group wrote into a 0770 directory");
    assert!(member, "a member of the directory's group could not write into it\n{stderr}");
    let md = std::fs::metadata(team.join("member")).unwrap();
    assert_eq!((md.uid(), md.gid()), (65534, 4242));
}

/// `ls -i`, `find -inum`, tar and rsync -H see one number per file: `st_ino` equals the
/// backing inode and `d_ino` from both listings, and a remount keeps it.
#[test]
fn inode_numbers_through_a_mount_are_the_backing_ones_in_stat_and_readdir_and_survive_a_remount() {
    use std::os::unix::fs::{DirEntryExt, MetadataExt};
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    for name in ["a", "b", "sub/c"] {
        std::fs::write(data.join(name), name).unwrap();
    }
    std::fs::hard_link(data.join("a"), data.join("a-link")).unwrap();
    let backing = |name: &str| std::fs::symlink_metadata(data.join(name)).unwrap().ino();

    let mut seen = Vec::new();
    for round in 0..2 {
        let mut host = Host::start(&config(dir.path()), &[&mnt]);
        let mut listed = Vec::new();
        for (parent, names) in [("", vec!["a", "b", "a-link", "sub"]), ("sub", vec!["c"])] {
            // The first listing of a directory goes through readdirplus, a second through
            // readdir (the kernel has the entries cached by then): check both.
            for _ in 0..2 {
                for e in std::fs::read_dir(mnt.join(parent)).unwrap() {
                    let e = e.unwrap();
                    let name = e.file_name().to_string_lossy().into_owned();
                    if names.contains(&name.as_str()) {
                        let rel = if parent.is_empty() { name.clone() } else { format!("{parent}/{name}") };
                        let st_ino = std::fs::symlink_metadata(mnt.join(&rel)).unwrap().ino();
                        assert_eq!(e.ino(), st_ino, "d_ino of {rel} (round {round})");
                        assert_eq!(st_ino, backing(&rel), "st_ino of {rel} is the backing inode (round {round})");
                        listed.push((rel, st_ino));
                    }
                }
            }
        }
        let a = std::fs::symlink_metadata(mnt.join("a")).unwrap();
        assert_eq!(a.ino(), std::fs::symlink_metadata(mnt.join("a-link")).unwrap().ino(), "hard links share one");
        listed.sort();
        seen.push(listed);
        host.signal_and_wait(libc::SIGTERM);
    }
    assert_eq!(seen[0], seen[1], "a remount keeps every number");
    assert_eq!(seen[0].len(), 10);
}
