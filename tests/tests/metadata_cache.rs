//! durable-io's `exclusive` setting through a real FUSE mount: long entry and attribute
//! TTLs, and everything done through the mount still shows at once (the kernel updates
//! its cache from each reply and on its own for what it changes), while a change made
//! directly in the backing directory stays unseen for the TTL (the documented price). The
//! mounts are made in this process, as the host makes them, so the frontend's request
//! counts can be read. Needs root (FUSE mounts).

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use plugfs_tests::DurableMount;

/// What a `stat` through the mount must agree on with the backing file.
fn seen(path: &Path) -> (u64, u64, u32, u64, i64, i64) {
    let m = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.ino(), m.size(), m.mode(), m.nlink(), m.mtime(), m.mtime_nsec())
}

/// Asserts that the mount shows `rel` as the backing directory has it.
#[track_caller]
fn agrees(m: &DurableMount, rel: &str, what: &str) {
    let (mut mounted, mut backing) = (seen(&m.mnt(rel)), seen(&m.data(rel)));
    if rel.is_empty() {
        // The root is node 1 through FUSE, whatever its backing inode number.
        (mounted.0, backing.0) = (0, 0);
    }
    assert_eq!(mounted, backing, "{what}: {rel:?} through the mount vs the backing file");
}

#[track_caller]
fn missing(path: &Path) {
    let e = std::fs::symlink_metadata(path).expect_err("still there");
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{}", path.display());
}

fn set_mtime(path: &Path, secs: i64) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let times = [libc::timespec { tv_sec: secs, tv_nsec: 0 }, libc::timespec { tv_sec: secs, tv_nsec: 5 }];
    // SAFETY: a valid NUL-terminated path and two timespecs.
    assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) }, 0);
}

/// Every kind of change through the mount, each followed by a stat that must show exactly
/// what the backing directory has, however long the kernel may cache.
fn changes_through_the_mount_show_at_once(m: &DurableMount) {
    agrees(m, "", "the root");
    std::fs::write(m.mnt("f"), b"hello").unwrap();
    agrees(m, "f", "a new file");
    agrees(m, "", "the root after a create");
    std::thread::sleep(Duration::from_millis(20));
    let mut f = std::fs::OpenOptions::new().append(true).open(m.mnt("f")).unwrap();
    f.write_all(b" world").unwrap();
    agrees(m, "f", "an append, file still open");
    drop(f);
    agrees(m, "f", "an append, closed");
    let f = std::fs::OpenOptions::new().write(true).open(m.mnt("f")).unwrap();
    f.set_len(3).unwrap();
    agrees(m, "f", "ftruncate");
    drop(f);
    std::fs::OpenOptions::new().write(true).truncate(true).open(m.mnt("f")).unwrap();
    agrees(m, "f", "an O_TRUNC open");
    std::fs::write(m.mnt("f"), vec![7u8; 100_000]).unwrap();
    agrees(m, "f", "a rewrite");
    std::fs::set_permissions(m.mnt("f"), std::fs::Permissions::from_mode(0o600)).unwrap();
    agrees(m, "f", "chmod");
    set_mtime(&m.mnt("f"), 1_000_000_000);
    agrees(m, "f", "utimensat");

    std::fs::hard_link(m.mnt("f"), m.mnt("g")).unwrap();
    agrees(m, "f", "a hard link's other name");
    agrees(m, "g", "a new hard link");
    std::fs::remove_file(m.mnt("g")).unwrap();
    missing(&m.mnt("g"));
    agrees(m, "f", "the other name of an unlinked link");

    std::fs::rename(m.mnt("f"), m.mnt("h")).unwrap();
    missing(&m.mnt("f"));
    agrees(m, "h", "a renamed file");
    std::fs::write(m.mnt("k"), b"k").unwrap();
    std::fs::hard_link(m.mnt("h"), m.mnt("h2")).unwrap();
    std::fs::rename(m.mnt("k"), m.mnt("h")).unwrap();
    agrees(m, "h", "a file renamed over another");
    agrees(m, "h2", "the replaced file's other link");
    missing(&m.mnt("k"));

    std::fs::create_dir(m.mnt("d")).unwrap();
    agrees(m, "", "the root after mkdir");
    agrees(m, "d", "a new directory");
    std::fs::write(m.mnt("d/x"), b"x").unwrap();
    std::fs::rename(m.mnt("d/x"), m.mnt("x")).unwrap();
    agrees(m, "d", "a directory a file was moved out of");
    agrees(m, "x", "a file moved between directories");
    std::fs::remove_dir(m.mnt("d")).unwrap();
    missing(&m.mnt("d"));
    agrees(m, "", "the root after rmdir");
    std::os::unix::fs::symlink("h", m.mnt("s")).unwrap();
    agrees(m, "s", "a symlink");
    assert_eq!(std::fs::read(m.mnt("s")).unwrap(), b"k");
}

#[test]
fn an_exclusive_mount_shows_every_change_made_through_it_at_once() {
    for (durability, passthrough) in [("close", true), ("close", false), ("always", false)] {
        let m = DurableMount::new(&format!("durability = {durability:?}\nexclusive = true"), passthrough);
        changes_through_the_mount_show_at_once(&m);
        let counts = m.mount().data_requests();
        assert_eq!(counts.passthrough_opens > 0, passthrough && durability != "always", "{counts:?}");
    }
}

#[test]
fn an_exclusive_mount_keeps_its_cache_when_the_backing_directory_changes_behind_it() {
    // The price of `exclusive`, as documented: what is changed directly in the backing
    // directory stays unseen for the TTL. Without it (1 s TTLs) it shows within a second.
    let m = DurableMount::new("exclusive = true", true);
    std::fs::write(m.mnt("f"), b"short").unwrap();
    let before = seen(&m.mnt("f"));
    std::fs::write(m.data("f"), b"made longer behind the mount's back").unwrap();
    std::fs::write(m.data("new"), b"").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(seen(&m.mnt("f")), before, "the cached attributes were dropped");

    let m = DurableMount::new("", true);
    std::fs::write(m.mnt("f"), b"short").unwrap();
    seen(&m.mnt("f"));
    std::fs::write(m.data("f"), b"made longer behind the mount's back").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    agrees(&m, "f", "a change behind a non-exclusive mount, after its TTL");
}

#[test]
fn an_exclusive_mount_with_atomic_replace_shows_the_replaced_file_within_the_short_ttl() {
    // The replace renames a new inode over the name at the release, which the kernel does
    // not see; on such a mount files' names keep the 1 s TTL.
    let m = DurableMount::new("exclusive = true\natomic_replace = true", false);
    std::fs::write(m.mnt("f"), b"old").unwrap();
    let old = seen(&m.mnt("f"));
    std::fs::write(m.mnt("f"), b"the new content").unwrap();
    let shown = plugfs_tests::wait_until(Duration::from_secs(5), || seen(&m.mnt("f")).1 == 15);
    assert!(shown, "still {:?} (was {old:?})", seen(&m.mnt("f")));
    agrees(&m, "f", "a replaced file");
    assert_eq!(std::fs::read(m.mnt("f")).unwrap(), b"the new content");
}

/// `stat`s `name` under the mount `times` times, each failing with ENOENT, and returns how
/// many LOOKUP requests (and negative entries) reached the frontend meanwhile.
fn lookups_for_missing(m: &DurableMount, name: &str, times: usize) -> plugfs_fuse::LookupRequests {
    let mount = m.mount();
    let before = mount.lookup_requests();
    for _ in 0..times {
        missing(&m.mnt(name));
    }
    let after = mount.lookup_requests();
    plugfs_fuse::LookupRequests {
        lookups: after.lookups - before.lookups,
        negative_entries: after.negative_entries - before.negative_entries,
    }
}

#[test]
fn an_exclusive_mount_has_the_kernel_cache_missing_names_until_created_through_it() {
    let m = DurableMount::new("exclusive = true", true);
    let counted = lookups_for_missing(&m, "absent", 100);
    assert_eq!((counted.lookups, counted.negative_entries), (1, 1), "100 stats of a missing name: {counted:?}");
    // In a subdirectory too, and for open(O_RDONLY) as for stat.
    std::fs::create_dir(m.mnt("d")).unwrap();
    let counted = lookups_for_missing(&m, "d/absent", 50);
    assert_eq!(counted.lookups, 1, "{counted:?}");
    assert!(std::fs::File::open(m.mnt("d/absent")).is_err());
    assert_eq!(lookups_for_missing(&m, "d/absent", 1).lookups, 0);

    // Every way of creating the name through the mount replaces the negative entry.
    std::fs::write(m.mnt("absent"), b"here now").unwrap();
    assert_eq!(std::fs::read(m.mnt("absent")).unwrap(), b"here now");
    agrees(&m, "absent", "a file created over a cached missing name");
    for (name, make) in [
        ("d/dir", &(|p: &Path| std::fs::create_dir(p).unwrap()) as &dyn Fn(&Path)),
        ("d/link", &|p: &Path| std::os::unix::fs::symlink("target", p).unwrap()),
        ("d/hard", &|p: &Path| std::fs::hard_link(m.mnt("absent"), p).unwrap()),
        ("d/renamed", &|p: &Path| std::fs::rename(m.mnt("absent"), p).unwrap()),
    ] {
        assert_eq!(lookups_for_missing(&m, name, 3).lookups, 1, "{name}");
        make(&m.mnt(name));
        agrees(&m, name, "a name made over a cached missing name");
    }
    // A name that goes away through the mount is asked about once more (the kernel's
    // dentry of an unlinked name is left expired), then cached as missing.
    missing(&m.mnt("absent"));
    std::fs::remove_file(m.mnt("d/renamed")).unwrap();
    assert_eq!(lookups_for_missing(&m, "d/renamed", 20).lookups, 1, "after an unlink");

    // Without `exclusive`, every stat of a missing name asks the plugin.
    let m = DurableMount::new("", true);
    let counted = lookups_for_missing(&m, "absent", 100);
    assert_eq!((counted.lookups, counted.negative_entries), (100, 0), "{counted:?}");
}

#[test]
fn a_name_created_behind_an_exclusive_mount_stays_missing_for_the_ttl() {
    // The documented price: a missing name cached by the kernel hides a file created
    // directly in the backing directory. With a short metadata_ttl it shows after it.
    let m = DurableMount::new("exclusive = true\nmetadata_ttl = 2", true);
    missing(&m.mnt("late"));
    std::fs::write(m.data("late"), b"made behind the mount").unwrap();
    missing(&m.mnt("late"));
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(std::fs::read(m.mnt("late")).unwrap(), b"made behind the mount");
}

#[test]
fn a_close_reaches_the_plugin_only_where_its_flush_does_something() {
    // durable-io's flush syncs under `close` and does nothing otherwise, so under `kernel`
    // and `always` its handles say `no_flush` and the kernel sends no FLUSH on close(2).
    for (durability, passthrough, flushed) in
        [("kernel", true, false), ("kernel", false, false), ("always", false, false), ("close", true, true)]
    {
        let m = DurableMount::new(&format!("durability = {durability:?}"), passthrough);
        for i in 0..10 {
            std::fs::write(m.mnt(&format!("f{i}")), b"data").unwrap();
            assert_eq!(std::fs::read(m.mnt(&format!("f{i}"))).unwrap(), b"data");
        }
        let counts = m.mount().data_requests();
        assert_eq!(counts.flushes >= 20, flushed, "{durability}, passthrough {passthrough}: {counts:?}");
        if !flushed {
            assert_eq!(counts.flushes, 0, "{durability}: {counts:?}");
        }
    }
}

#[test]
fn durable_io_passes_the_conformance_suite_through_an_exclusive_mount() {
    // Long TTLs, negative entries and no FLUSH (durability = "kernel"), with and without
    // passthrough: everything the suite does goes through the mount, so all must hold.
    for passthrough in [true, false] {
        let m = DurableMount::new("durability = \"kernel\"\nexclusive = true", passthrough);
        let caps = m.library().info().capabilities;
        let report = plugfs_conformance::run_mounted(&m.mnt(""), &caps, Some((65534, 65534)));
        assert!(report.ok(), "passthrough = {passthrough}: {}", report.summary());
        let lookups = m.mount().lookup_requests();
        assert!(lookups.negative_entries > 0, "the suite looked up missing names: {lookups:?}");
    }
}
