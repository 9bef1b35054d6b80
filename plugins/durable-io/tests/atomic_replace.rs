//! `atomic_replace`, through the `FileSystem` trait: what happens to nodes, owners and
//! modes, hidden temporary names, and the cases that truncate in place.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use common::*;
use plugfs_durable_io::{Durability, DurableIo};
use plugfs_plugin_api::{Errno, FileSystem, ROOT_ID, Request, open_flags};

fn replacing_mount() -> Mount {
    let dir = tempfile::tempdir().unwrap();
    let fs = DurableIo::open(dir.path(), Durability::Close, false).unwrap().with_atomic_replace(true);
    Mount { dir, fs }
}

const TRUNC_W: i32 = open_flags::O_WRONLY | open_flags::O_TRUNC;

#[test]
fn the_old_node_keeps_the_old_file_and_lookups_find_the_new_one() {
    let m = replacing_mount();
    let fs = &m.fs;
    assert!(!fs.capabilities().backing_files, "no passthrough with atomic_replace");
    let old = write_file(fs, ROOT_ID, "f", b"old data");
    let reader = fs.open(&ROOT_REQ, old.node, open_flags::O_RDONLY).unwrap();
    let w = fs.open(&ROOT_REQ, old.node, TRUNC_W).unwrap();
    assert!(w.direct_io && w.backing_fd.is_none());
    fs.write(&ROOT_REQ, old.node, w.handle, 0, b"new", 0).unwrap();
    assert_eq!(fs.getattr(&ROOT_REQ, old.node, Some(w.handle)).unwrap().attr.size, 3);
    assert_eq!(fs::read(m.path("f")).unwrap(), b"old data", "nothing changes before the release");
    fs.release(&ROOT_REQ, old.node, w.handle, 0, true).unwrap();

    assert_eq!(fs::read(m.path("f")).unwrap(), b"new");
    let mut buf = [0u8; 64];
    let n = fs.read(&ROOT_REQ, old.node, reader.handle, 0, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"old data", "an open handle keeps the old file");
    assert_eq!(fs.getattr(&ROOT_REQ, old.node, None).unwrap().attr.size, 8, "the old node is the old inode");
    assert_eq!(fs.open(&ROOT_REQ, old.node, open_flags::O_RDONLY).unwrap_err().errno(), Errno::ESTALE);
    let new = lookup(fs, ROOT_ID, "f");
    assert_ne!(new.node, old.node);
    assert_eq!(new.attr.ino, fs::metadata(m.path("f")).unwrap().ino());
    assert_eq!(read_all(fs, new.node), b"new");
    fs.release(&ROOT_REQ, old.node, reader.handle, 0, false).unwrap();
    fs.forget(old.node, 2);
    assert!(list(fs, ROOT_ID, 100).iter().all(|(n, _, _)| !n.starts_with(".plugfs-replace-")));
}

#[test]
fn create_over_an_existing_file_and_a_renamed_file_are_replaced_too() {
    let m = replacing_mount();
    let fs = &m.fs;
    let e = write_file(fs, ROOT_ID, "a", b"one");
    let ino = fs::metadata(m.path("a")).unwrap().ino();
    let (e2, o) = fs.create(&ROOT_REQ, ROOT_ID, os("a"), 0o644, open_flags::O_RDWR | open_flags::O_TRUNC).unwrap();
    assert_eq!(e2.node, e.node);
    fs.write(&ROOT_REQ, e2.node, o.handle, 0, b"two", 0).unwrap();
    fs.release(&ROOT_REQ, e2.node, o.handle, 0, true).unwrap();
    assert_eq!(fs::read(m.path("a")).unwrap(), b"two");
    assert_ne!(fs::metadata(m.path("a")).unwrap().ino(), ino);

    // Renamed through the mount: the new name is used.
    let b = lookup(fs, ROOT_ID, "a");
    fs.rename(&ROOT_REQ, ROOT_ID, os("a"), ROOT_ID, os("b"), Default::default()).unwrap();
    let h = fs.open(&ROOT_REQ, b.node, TRUNC_W).unwrap().handle;
    fs.write(&ROOT_REQ, b.node, h, 0, b"three", 0).unwrap();
    fs.release(&ROOT_REQ, b.node, h, 0, true).unwrap();
    assert_eq!(fs::read(m.path("b")).unwrap(), b"three");
    assert!(!m.path("a").exists());
}

#[test]
fn two_links_or_an_unknown_name_truncate_in_place() {
    let m = replacing_mount();
    let fs = &m.fs;
    let e = write_file(fs, ROOT_ID, "x", b"linked");
    fs::hard_link(m.path("x"), m.path("y")).unwrap();
    let ino = fs::metadata(m.path("x")).unwrap().ino();
    let w = fs.open(&ROOT_REQ, e.node, TRUNC_W).unwrap();
    assert!(!w.direct_io);
    assert_eq!(fs::read(m.path("y")).unwrap(), b"", "truncated in place at once");
    fs.release(&ROOT_REQ, e.node, w.handle, 0, true).unwrap();
    assert_eq!(fs::metadata(m.path("x")).unwrap().ino(), ino);

    // Renamed behind the mount's back: the remembered name no longer leads to the file.
    let z = write_file(fs, ROOT_ID, "z", b"zzz");
    fs::rename(m.path("z"), m.path("moved")).unwrap();
    let w = fs.open(&ROOT_REQ, z.node, TRUNC_W).unwrap();
    assert_eq!(fs::read(m.path("moved")).unwrap(), b"");
    fs.release(&ROOT_REQ, z.node, w.handle, 0, true).unwrap();
}

#[test]
fn temporary_names_are_hidden_and_stale_ones_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(".plugfs-replace-9-9-9"), b"half").unwrap();
    let fs = DurableIo::open(dir.path(), Durability::Close, false).unwrap().with_atomic_replace(true);
    assert!(!dir.path().join(".plugfs-replace-9-9-9").exists(), "removed at open");
    fs::create_dir(dir.path().join("sub")).unwrap();
    fs::write(dir.path().join("sub/.plugfs-replace-1"), b"x").unwrap();
    let sub = lookup(&fs, ROOT_ID, "sub");
    assert_eq!(fs.lookup(&ROOT_REQ, sub.node, os(".plugfs-replace-1")).unwrap_err().errno(), Errno::ENOENT);
    let names: Vec<String> = list(&fs, sub.node, 100).into_iter().map(|(n, _, _)| n).collect();
    assert!(!names.iter().any(|n| n.starts_with(".plugfs-replace-")), "{names:?}");
}

#[test]
fn the_new_file_gets_the_old_owner_and_mode_and_the_caller_needs_permission() {
    if !rustix::process::geteuid().is_root() {
        return;
    }
    let m = replacing_mount();
    let fs = &m.fs;
    // A group-writable file of user 1000 in a directory the writer (uid 2000, group 3000)
    // may write.
    fs::set_permissions(m.dir.path(), fs::Permissions::from_mode(0o777)).unwrap();
    let e = write_file(fs, ROOT_ID, "shared", b"old");
    std::os::unix::fs::chown(m.path("shared"), Some(1000), Some(3000)).unwrap();
    fs::set_permissions(m.path("shared"), fs::Permissions::from_mode(0o664)).unwrap();
    let writer = Request { uid: 2000, gid: 3000, pid: 0 };
    let h = fs.open(&writer, e.node, TRUNC_W).unwrap().handle;
    fs.write(&writer, e.node, h, 0, b"new", 0).unwrap();
    fs.release(&writer, e.node, h, 0, true).unwrap();
    let md = fs::metadata(m.path("shared")).unwrap();
    assert_eq!(fs::read(m.path("shared")).unwrap(), b"new");
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (1000, 3000, 0o664));

    // Without write permission on the file: refused, as in place.
    let other = Request { uid: 4000, gid: 4000, pid: 0 };
    let n = lookup(fs, ROOT_ID, "shared");
    assert_eq!(fs.open(&other, n.node, TRUNC_W).unwrap_err().errno(), Errno::EACCES);
    assert_eq!(fs::read(m.path("shared")).unwrap(), b"new");

    // A set-user-ID file replaced by a non-owner loses the bit, as a write in place would.
    fs::set_permissions(m.path("shared"), fs::Permissions::from_mode(0o4775)).unwrap();
    let h = fs.open(&writer, n.node, TRUNC_W).unwrap().handle;
    fs.release(&writer, n.node, h, 0, true).unwrap();
    assert_eq!(fs::metadata(m.path("shared")).unwrap().mode() & 0o7777, 0o775);
}

#[test]
fn of_two_concurrent_replaces_the_last_release_wins_and_each_replaced_node_is_stale() {
    let m = replacing_mount();
    let fs = &m.fs;
    let x = write_file(fs, ROOT_ID, "f", b"x");
    let a = fs.open(&ROOT_REQ, x.node, TRUNC_W).unwrap().handle;
    let b = fs.open(&ROOT_REQ, x.node, TRUNC_W).unwrap().handle;
    fs.write(&ROOT_REQ, x.node, a, 0, b"aaa", 0).unwrap();
    fs.write(&ROOT_REQ, x.node, b, 0, b"bbb", 0).unwrap();
    fs.release(&ROOT_REQ, x.node, a, 0, true).unwrap();
    let y = lookup(fs, ROOT_ID, "f");
    assert_eq!(read_all(fs, y.node), b"aaa");
    fs.release(&ROOT_REQ, x.node, b, 0, true).unwrap();
    assert_eq!(fs::read(m.path("f")).unwrap(), b"bbb");
    assert_eq!(fs.open(&ROOT_REQ, y.node, open_flags::O_RDONLY).unwrap_err().errno(), Errno::ESTALE);
    assert_eq!(read_all(fs, lookup(fs, ROOT_ID, "f").node), b"bbb");
}
