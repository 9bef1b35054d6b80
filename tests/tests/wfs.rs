//! The wfs plugin end to end: images made by `plugfs-wfs mkfs` (or the plugin's `format`)
//! mounted by the plugfs binary, the conformance suite through FUSE as root and as an
//! unprivileged user, a host killed mid-workload, and snapshots taken while mounted.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use plugfs_plugin_api::host::PluginLibrary;
use plugfs_tests::{Host, binary, plugin_library, target_dir, wait_until};

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
    fn mkfs(&self, size: &str) -> PathBuf {
        let img = self.path("wfs.img");
        let (code, out) = wfs_tool(&["mkfs", img.to_str().unwrap(), "--size", size]);
        assert_eq!(code, 0, "{out}");
        img
    }
    fn mount(&self, img: &Path, extra: &str) -> (Host, PathBuf) {
        let mnt = self.path("mnt");
        let config = self.path("plugfs.toml");
        std::fs::write(
            &config,
            format!(
                "[host]\nplugin_dirs = [{:?}]\n\n[[mount]]\nname = \"wfs\"\nplugin = \"wfs\"\nmountpoint = \"mnt\"\n\
                 create_mountpoint = true\n[mount.options]\nallow_other = true\n[mount.config]\nimage = {:?}\n{extra}\n",
                target_dir().to_str().unwrap(),
                img.to_str().unwrap()
            ),
        )
        .unwrap();
        (Host::start(&config, &[&mnt]), mnt)
    }
}

/// Runs plugfs-wfs; returns (exit code, stdout + stderr).
fn wfs_tool(args: &[&str]) -> (i32, String) {
    let out = Command::new(binary("plugfs-wfs")).args(args).output().expect("run plugfs-wfs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn assert_fsck_clean(img: &Path) {
    let (code, out) = wfs_tool(&["fsck", img.to_str().unwrap()]);
    assert_eq!(code, 0, "fsck: {out}");
    assert!(out.contains("clean"), "{out}");
}

fn stop(mut host: Host) {
    let status = host.signal_and_wait(libc::SIGTERM).expect("plugfs exits on SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", host.stderr());
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn wfs_library() -> PluginLibrary {
    PluginLibrary::load(&plugin_library("plugfs-wfs")).unwrap()
}

#[test]
fn the_conformance_suite_passes_through_a_mount_as_root_and_as_an_unprivileged_user() {
    let s = Setup::new();
    let img = s.mkfs("64M");
    let (host, mnt) = s.mount(&img, "");
    let caps = wfs_library().info().capabilities;
    let report = plugfs_conformance::run_mounted(&mnt, &caps, Some((65534, 65534)));
    assert!(report.ok() && !report.passed.is_empty(), "{}", report.summary());
    for (name, why) in &report.skipped {
        assert!(why.contains("capabilities"), "{name} was skipped ({why}):\n{}", report.summary());
    }
    for check in plugfs_conformance::permissions::all() {
        if (check.applies)(&caps) {
            assert!(report.passed.contains(&check.name), "{} did not pass:\n{}", check.name, report.summary());
        }
    }
    stop(host);
    assert_fsck_clean(&img);
}

#[test]
fn a_host_killed_mid_workload_leaves_a_clean_image_with_every_fsynced_byte() {
    let s = Setup::new();
    let img = s.mkfs("64M");
    // No background commits: only fsync makes anything durable.
    let (mut host, mnt) = s.mount(&img, "commit_interval_ms = 0");
    let mut synced = Vec::new();
    for n in 0..10u32 {
        let path = mnt.join(format!("synced-{n}"));
        let data = pattern(10_000 + n as usize * 3000, n);
        let mut f = std::fs::File::create(&path).unwrap();
        std::io::Write::write_all(&mut f, &data).unwrap();
        f.sync_all().unwrap();
        synced.push((format!("synced-{n}"), data));
    }
    // Keep writing (never fsyncing) while the host is killed.
    let writer_mnt = mnt.clone();
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let seen = progress.clone();
    let writer = std::thread::spawn(move || {
        for n in 0.. {
            if std::fs::write(writer_mnt.join(format!("later-{n}")), pattern(20_000, n)).is_err() {
                return;
            }
            seen.store(n + 1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    assert!(wait_until(std::time::Duration::from_secs(60), || progress.load(std::sync::atomic::Ordering::SeqCst) >= 5));
    host.signal_and_wait(libc::SIGKILL);
    // With auto_unmount the mount may already be gone; either way it is gone after this.
    let _ = Command::new("fusermount3").args(["-u", "-z"]).arg(&mnt).stderr(std::process::Stdio::null()).status();
    writer.join().unwrap();
    drop(host);
    assert_fsck_clean(&img);
    let (host, mnt) = s.mount(&img, "");
    for (name, data) in &synced {
        assert_eq!(&std::fs::read(mnt.join(name)).unwrap(), data, "{name} was fsynced");
    }
    std::fs::write(mnt.join("after"), b"the remounted image is writable").unwrap();
    stop(host);
    assert_fsck_clean(&img);
}

fn setxattr(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings and a live buffer.
    let r = unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[test]
fn a_snapshot_taken_through_the_root_xattr_while_mounted_keeps_the_old_files_and_mounts_read_only() {
    let s = Setup::new();
    let img = s.mkfs("32M");
    let (host, mnt) = s.mount(&img, "");
    std::fs::write(mnt.join("a"), b"version 1").unwrap();
    setxattr(&mnt, "user.wfs.snapshot", b"monday").unwrap();
    std::fs::write(mnt.join("a"), b"version 2").unwrap();
    std::fs::write(mnt.join("b"), b"new").unwrap();
    assert!(setxattr(&mnt, "user.wfs.snapshot", b"monday").is_err(), "names are unique");
    stop(host);
    let (code, out) = wfs_tool(&["snapshot", "list", img.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("monday\t"), "{out}");

    let (host, mnt) = s.mount(&img, "snapshot = \"monday\"");
    assert_eq!(std::fs::read(mnt.join("a")).unwrap(), b"version 1");
    assert!(!mnt.join("b").exists());
    assert!(std::fs::write(mnt.join("c"), b"x").is_err(), "a snapshot is read-only");
    stop(host);

    let (code, out) = wfs_tool(&["snapshot", "create", img.to_str().unwrap(), "tuesday"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = wfs_tool(&["snapshot", "delete", img.to_str().unwrap(), "monday"]);
    assert_eq!(code, 0, "{out}");
    let (_, out) = wfs_tool(&["snapshot", "list", img.to_str().unwrap()]);
    assert!(out.starts_with("tuesday\t") && !out.contains("monday"), "{out}");
    assert_fsck_clean(&img);
    let (host, mnt) = s.mount(&img, "");
    assert_eq!(std::fs::read(mnt.join("a")).unwrap(), b"version 2");
    stop(host);
}

#[test]
fn the_plugins_format_makes_an_image_that_mounts_and_info_describes() {
    let s = Setup::new();
    let img = s.path("made.img");
    let lib = wfs_library();
    assert!(lib.info().capabilities.format);
    lib.format(&format!("image = {:?}\n", img.to_str().unwrap()), 8 << 20).unwrap();
    let again = lib.format(&format!("image = {:?}\n", img.to_str().unwrap()), 8 << 20);
    assert!(again.unwrap_err().message.contains("not replacing"));
    let (host, mnt) = s.mount(&img, "");
    std::fs::write(mnt.join("f"), b"hello").unwrap();
    stop(host);
    let (code, out) = wfs_tool(&["info", img.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("blocks:       2048"), "{out}");
    assert!(out.contains("inodes:       2"), "{out}");
    assert_fsck_clean(&img);
}

fn statvfs_free(path: &Path) -> u64 {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid C string and a zeroed struct the call fills.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(p.as_ptr(), &mut st) }, 0);
    st.f_bfree as u64
}

#[test]
fn a_full_image_answers_enospc_through_the_mount_and_works_again_after_deleting() {
    let s = Setup::new();
    let img = s.mkfs("8M");
    let (host, mnt) = s.mount(&img, "");
    let free_empty = statvfs_free(&mnt);
    let mut written = 0;
    let err = loop {
        match std::fs::write(mnt.join(format!("f{written}")), pattern(256 * 1024, written)) {
            Ok(()) => written += 1,
            Err(e) => break e,
        }
        assert!(written < 100, "an 8 MiB image cannot hold 25 MiB");
    };
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    assert!(written >= 20, "most of the image is usable: {written} files of 256 KiB");
    assert!(statvfs_free(&mnt) < 64, "statfs shows the image full");
    for n in 0..written / 2 {
        std::fs::remove_file(mnt.join(format!("f{n}"))).unwrap();
    }
    // Frees count once a commit makes them durable.
    std::fs::File::open(&mnt).unwrap().sync_all().unwrap();
    assert!(statvfs_free(&mnt) > free_empty / 3, "deleting gave the space back");
    std::fs::write(mnt.join("again"), pattern(256 * 1024, 999)).unwrap();
    for n in written / 2..written {
        assert_eq!(std::fs::read(mnt.join(format!("f{n}"))).unwrap(), pattern(256 * 1024, n), "f{n}");
    }
    stop(host);
    assert_fsck_clean(&img);
}

#[test]
fn fsck_and_scrub_exit_4_and_name_a_damaged_file() {
    let s = Setup::new();
    let img = s.mkfs("8M");
    let (host, mnt) = s.mount(&img, "");
    std::fs::write(mnt.join("victim"), pattern(3 * 4096, 9)).unwrap();
    stop(host);
    // Find the file's second block by its contents and flip one bit in it.
    let mut bytes = std::fs::read(&img).unwrap();
    let needle = &pattern(3 * 4096, 9)[4096..4096 + 64];
    let at = bytes.windows(64).position(|w| w == needle).expect("the data is in the image");
    bytes[at + 10] ^= 0x04;
    std::fs::write(&img, &bytes).unwrap();
    for tool in ["fsck", "scrub"] {
        let (code, out) = wfs_tool(&[tool, img.to_str().unwrap()]);
        assert_eq!(code, 4, "{tool}: {out}");
        assert!(out.contains("data block 1"), "{tool}: {out}");
    }
    let (host, mnt) = s.mount(&img, "read_only = true");
    let err = std::fs::read(mnt.join("victim")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    stop(host);
}

/// A small `metadata_cache_size` bounds the uncommitted changes too: with no background
/// commits and no fsync, files still become durable as the pending changes pass half of it,
/// so a host killed afterwards keeps most of them, each whole.
#[test]
fn a_small_metadata_cache_commits_as_changes_pile_up_and_a_killed_host_keeps_those_files() {
    let s = Setup::new();
    let img = s.mkfs("64M");
    let (mut host, mnt) = s.mount(&img, "commit_interval_ms = 0\nmetadata_cache_size = 1048576");
    for n in 0..4000u32 {
        std::fs::write(mnt.join(format!("f{n}")), pattern(3000, n)).unwrap();
    }
    host.signal_and_wait(libc::SIGKILL);
    let _ = Command::new("fusermount3").args(["-u", "-z"]).arg(&mnt).stderr(std::process::Stdio::null()).status();
    drop(host);
    assert_fsck_clean(&img);
    let (host, mnt) = s.mount(&img, "");
    let mut kept = 0;
    for n in 0..4000u32 {
        match std::fs::read(mnt.join(format!("f{n}"))) {
            // Created but not yet written when the last commit was made.
            Ok(data) if data.is_empty() => {}
            Ok(data) => {
                assert_eq!(data, pattern(3000, n), "f{n}");
                kept += 1;
            }
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "f{n}"),
        }
    }
    // Each file costs about 500 bytes of pending changes, so a commit came every ~1,000.
    assert!(kept >= 2000, "only {kept} of 4,000 files survived: the pending changes were not committed as they grew");
    stop(host);
    assert_fsck_clean(&img);
}
