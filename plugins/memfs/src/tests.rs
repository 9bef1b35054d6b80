//! The filesystem driven through the trait, as the host drives it.

use super::*;
use crate::model::*;
use plugfs_plugin_api::open_flags::O_RDWR;

const REQ: Request = Request { uid: 1000, gid: 100, pid: 42 };

fn memfs(config: &str) -> MemFs {
    MemFsPlugin::open(&ConfigTable::from_toml(config), &MountOptions::default()).unwrap()
}

fn n(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn errno<T: std::fmt::Debug>(r: Result<T>) -> Errno {
    r.unwrap_err().errno()
}

/// Creates and opens a file in the root, returning (node, handle).
fn create(fs: &MemFs, name: &str) -> (NodeId, Handle) {
    let (e, o) = fs.create(&REQ, ROOT_ID, n(name), 0o644, O_RDWR).unwrap();
    (e.node, o.handle)
}

fn attr(fs: &MemFs, node: NodeId) -> Attr {
    fs.getattr(&REQ, node, None).unwrap().attr
}

/// Collects up to `limit` entries per page.
struct Page {
    entries: Vec<(String, u64)>,
    limit: usize,
}
impl DirSink for Page {
    fn add(&mut self, e: &DirEntry<'_>) -> bool {
        if self.entries.len() == self.limit {
            return false;
        }
        self.entries.push((String::from_utf8_lossy(e.name).into_owned(), e.cookie));
        true
    }
}

fn read_page(fs: &MemFs, dir: NodeId, handle: Handle, cookie: u64, limit: usize) -> Vec<(String, u64)> {
    let mut page = Page { entries: Vec::new(), limit };
    fs.readdir(&REQ, dir, handle, cookie, &mut page).unwrap();
    page.entries
}

fn list(fs: &MemFs, dir: NodeId) -> Vec<String> {
    let h = fs.opendir(&REQ, dir, 0).unwrap().handle;
    let names = read_page(fs, dir, h, 0, usize::MAX).into_iter().map(|(name, _)| name).collect();
    fs.releasedir(&REQ, dir, h).unwrap();
    names
}

#[test]
fn create_write_read_round_trips_and_owner_is_the_caller() {
    let fs = memfs("");
    let (f, h) = create(&fs, "a");
    assert_eq!(fs.write(&REQ, f, h, 0, b"hello world", 0).unwrap(), 11);
    let mut buf = [0u8; 5];
    assert_eq!(fs.read(&REQ, f, h, 6, &mut buf).unwrap(), 5);
    assert_eq!(&buf, b"world");
    assert_eq!(fs.read(&REQ, f, h, 100, &mut buf).unwrap(), 0);
    let a = attr(&fs, f);
    assert_eq!((a.size, a.uid, a.gid, a.perm, a.kind), (11, 1000, 100, 0o644, FileKind::File));
    assert_eq!(fs.lookup(&REQ, ROOT_ID, n("a")).unwrap().node, f);
}

#[test]
fn create_with_o_excl_refuses_an_existing_name_and_without_it_opens_the_file() {
    let fs = memfs("");
    let (f, h) = create(&fs, "a");
    fs.write(&REQ, f, h, 0, b"data", 0).unwrap();
    assert_eq!(errno(fs.create(&REQ, ROOT_ID, n("a"), 0o644, O_RDWR | O_EXCL)), Errno::EEXIST);
    let (e, _) = fs.create(&REQ, ROOT_ID, n("a"), 0o644, O_RDWR | O_TRUNC).unwrap();
    assert_eq!((e.node, e.attr.size), (f, 0));
}

#[test]
fn writes_past_the_end_zero_fill_and_o_append_writes_at_the_end() {
    let fs = memfs("");
    let (f, _) = create(&fs, "a");
    let h = fs.open(&REQ, f, O_WRONLY | O_APPEND).unwrap().handle;
    fs.write(&REQ, f, h, 0, b"ab", O_WRONLY | O_APPEND).unwrap();
    fs.write(&REQ, f, h, 0, b"cd", O_WRONLY | O_APPEND).unwrap();
    let r = fs.open(&REQ, f, O_RDONLY).unwrap().handle;
    let mut buf = [0u8; 8];
    assert_eq!(fs.read(&REQ, f, r, 0, &mut buf).unwrap(), 4);
    assert_eq!(&buf[..4], b"abcd");
    assert_eq!(errno(fs.read(&REQ, f, h, 0, &mut buf)), Errno::EBADF, "write-only handle");
    assert_eq!(errno(fs.write(&REQ, f, r, 0, b"x", 0)), Errno::EBADF, "read-only handle");
    let w = fs.open(&REQ, f, O_RDWR).unwrap().handle;
    fs.write(&REQ, f, w, 6, b"z", 0).unwrap();
    assert_eq!(fs.read(&REQ, f, r, 0, &mut buf).unwrap(), 7);
    assert_eq!(&buf[..7], b"abcd\0\0z");
}

#[test]
fn open_with_o_trunc_empties_the_file() {
    let fs = memfs("");
    let (f, h) = create(&fs, "a");
    fs.write(&REQ, f, h, 0, b"data", 0).unwrap();
    fs.open(&REQ, f, O_WRONLY | O_TRUNC).unwrap();
    assert_eq!(attr(&fs, f).size, 0);
    assert_eq!(errno(fs.open(&REQ, ROOT_ID, O_RDONLY)), Errno::EISDIR);
}

#[test]
fn unlinked_files_live_until_the_last_handle_and_lookup_are_gone() {
    let fs = memfs("");
    let (f, h) = create(&fs, "a");
    fs.write(&REQ, f, h, 0, b"still here", 0).unwrap();
    fs.unlink(&REQ, ROOT_ID, n("a")).unwrap();
    assert_eq!(errno(fs.lookup(&REQ, ROOT_ID, n("a"))), Errno::ENOENT);
    assert_eq!(attr(&fs, f).nlink, 0);
    let mut buf = [0u8; 10];
    assert_eq!(fs.read(&REQ, f, h, 0, &mut buf).unwrap(), 10);
    fs.release(&REQ, f, h, O_RDWR, false).unwrap();
    assert!(fs.getattr(&REQ, f, None).is_ok(), "the host still holds the lookup from create");
    fs.forget(f, 1);
    assert_eq!(errno(fs.getattr(&REQ, f, None)), Errno::ENOENT);
    assert_eq!(fs.tree().unwrap().used_bytes, 0, "its bytes are released");
}

#[test]
fn forget_keeps_nodes_that_still_have_names() {
    let fs = memfs("");
    let (f, h) = create(&fs, "a");
    fs.release(&REQ, f, h, 0, false).unwrap();
    fs.forget(f, 1);
    assert_eq!(fs.lookup(&REQ, ROOT_ID, n("a")).unwrap().node, f);
}

#[test]
fn setattr_changes_mode_owner_size_and_times_with_nanoseconds() {
    let fs = memfs("");
    let (f, h) = create(&fs, "a");
    fs.write(&REQ, f, h, 0, b"abcdef", 0).unwrap();
    let before = attr(&fs, f).ctime;
    let at = Timestamp::new(1_000_000_000, 123_456_789);
    let set = SetAttr {
        mode: Some(0o100600),
        uid: Some(7),
        gid: Some(8),
        size: Some(3),
        atime: Some(SetTime::At(at)),
        mtime: Some(SetTime::Now),
        ..SetAttr::default()
    };
    let a = fs.setattr(&REQ, f, &set).unwrap().attr;
    assert_eq!((a.perm, a.uid, a.gid, a.size, a.atime), (0o600, 7, 8, 3, at));
    assert!(a.mtime >= before && a.ctime >= before);
    let a = fs.setattr(&REQ, f, &SetAttr { size: Some(5), ..SetAttr::default() }).unwrap().attr;
    let mut buf = [9u8; 5];
    fs.read(&REQ, f, h, 0, &mut buf).unwrap();
    assert_eq!((&buf, a.size), (b"abc\0\0", 5));
    assert_eq!(errno(fs.setattr(&REQ, ROOT_ID, &SetAttr { size: Some(0), ..SetAttr::default() })), Errno::EISDIR);
}

#[test]
fn max_bytes_refuses_growth_with_enospc_and_statfs_reports_it() {
    let fs = memfs("max_bytes = 8192");
    let (f, h) = create(&fs, "a");
    fs.write(&REQ, f, h, 0, &[1; 8192], 0).unwrap();
    assert_eq!(errno(fs.write(&REQ, f, h, 8192, b"x", 0)), Errno::ENOSPC);
    let st = fs.statfs(&REQ, ROOT_ID).unwrap();
    assert_eq!((st.blocks, st.bfree, st.bsize), (2, 0, 4096));
    fs.setattr(&REQ, f, &SetAttr { size: Some(0), ..SetAttr::default() }).unwrap();
    assert_eq!(fs.statfs(&REQ, ROOT_ID).unwrap().bfree, 2);
}

#[test]
fn max_files_refuses_new_nodes_with_enospc() {
    let fs = memfs("max_files = 2");
    create(&fs, "a");
    assert_eq!(errno(fs.mkdir(&REQ, ROOT_ID, n("d"), 0o755)), Errno::ENOSPC);
    assert_eq!(fs.statfs(&REQ, ROOT_ID).unwrap().ffree, 0);
}

#[test]
fn config_errors_name_the_key() {
    let open = |toml: &str| MemFsPlugin::open(&ConfigTable::from_toml(toml), &MountOptions::default());
    assert_eq!(open("max_byte = 1").err().unwrap().key.as_deref(), Some("max_byte"));
    assert_eq!(open("max_bytes = \"lots\"").err().unwrap().key.as_deref(), Some("max_bytes"));
    assert_eq!(open("max_files = 0").err().unwrap().key.as_deref(), Some("max_files"));
}

#[test]
fn read_only_mounts_refuse_changes_with_erofs() {
    let options = MountOptions { read_only: true };
    let fs = MemFsPlugin::open(&ConfigTable::default(), &options).unwrap();
    assert_eq!(errno(fs.mkdir(&REQ, ROOT_ID, n("d"), 0o755)), Errno::EROFS);
    assert_eq!(errno(fs.create(&REQ, ROOT_ID, n("f"), 0o644, O_RDWR)), Errno::EROFS);
    assert!(fs.opendir(&REQ, ROOT_ID, 0).is_ok());
}

#[test]
fn mkdir_and_rmdir_keep_link_counts_and_refuse_non_empty_directories() {
    let fs = memfs("");
    let d = fs.mkdir(&REQ, ROOT_ID, n("d"), 0o755).unwrap().node;
    assert_eq!((attr(&fs, ROOT_ID).nlink, attr(&fs, d).nlink), (3, 2));
    fs.mknod(&REQ, d, n("f"), 0o100644, 0).unwrap();
    assert_eq!(errno(fs.rmdir(&REQ, ROOT_ID, n("d"))), Errno::ENOTEMPTY);
    assert_eq!(errno(fs.unlink(&REQ, ROOT_ID, n("d"))), Errno::EISDIR);
    fs.unlink(&REQ, d, n("f")).unwrap();
    fs.rmdir(&REQ, ROOT_ID, n("d")).unwrap();
    assert_eq!(attr(&fs, ROOT_ID).nlink, 2);
    assert_eq!(errno(fs.mknod(&REQ, d, n("g"), 0o100644, 0)), Errno::ENOENT, "removed directory");
}

#[test]
fn names_that_exist_or_are_invalid_are_refused() {
    let fs = memfs("");
    fs.mkdir(&REQ, ROOT_ID, n("d"), 0o755).unwrap();
    assert_eq!(errno(fs.mkdir(&REQ, ROOT_ID, n("d"), 0o755)), Errno::EEXIST);
    assert_eq!(errno(fs.mkdir(&REQ, ROOT_ID, n("a/b"), 0o755)), Errno::EINVAL);
    assert_eq!(errno(fs.mkdir(&REQ, ROOT_ID, n(".."), 0o755)), Errno::EINVAL);
    assert_eq!(errno(fs.mkdir(&REQ, ROOT_ID, n(&"x".repeat(256)), 0o755)), Errno::ENAMETOOLONG);
    assert_eq!(errno(fs.lookup(&REQ, ROOT_ID, n(&"x".repeat(256)))), Errno::ENAMETOOLONG);
}

#[test]
fn mknod_makes_fifos_and_device_nodes() {
    let fs = memfs("");
    let fifo = fs.mknod(&REQ, ROOT_ID, n("p"), 0o010644, 0).unwrap().attr;
    assert_eq!((fifo.kind, fifo.perm), (FileKind::Fifo, 0o644));
    let dev = fs.mknod(&REQ, ROOT_ID, n("c"), 0o020600, 0x0103).unwrap().attr;
    assert_eq!((dev.kind, dev.rdev), (FileKind::CharDevice, 0x0103));
    assert_eq!(errno(fs.mknod(&REQ, ROOT_ID, n("d"), 0o040755, 0)), Errno::EPERM);
}

#[test]
fn setgid_directories_pass_on_their_group() {
    let fs = memfs("");
    let d = fs.mkdir(&REQ, ROOT_ID, n("d"), 0o2775).unwrap().node;
    fs.setattr(&REQ, d, &SetAttr { gid: Some(55), ..SetAttr::default() }).unwrap();
    let other = Request { uid: 2000, gid: 2000, pid: 1 };
    let sub = fs.mkdir(&other, d, n("sub"), 0o755).unwrap().attr;
    assert_eq!((sub.uid, sub.gid, sub.perm), (2000, 55, 0o2755));
}

#[test]
fn symlinks_read_back_and_short_buffers_get_erange() {
    let fs = memfs("");
    let l = fs.symlink(&REQ, ROOT_ID, n("l"), n("../target")).unwrap();
    assert_eq!((l.attr.kind, l.attr.size), (FileKind::Symlink, 9));
    let mut buf = [0u8; 4096];
    let len = fs.readlink(&REQ, l.node, &mut buf).unwrap();
    assert_eq!(&buf[..len], b"../target");
    assert_eq!(errno(fs.readlink(&REQ, l.node, &mut [0u8; 4])), Errno::ERANGE);
    assert_eq!(errno(fs.readlink(&REQ, ROOT_ID, &mut buf)), Errno::EINVAL);
}

#[test]
fn hard_links_share_the_node_and_count_links() {
    let fs = memfs("");
    let (f, _) = create(&fs, "a");
    let d = fs.mkdir(&REQ, ROOT_ID, n("d"), 0o755).unwrap().node;
    let e = fs.link(&REQ, f, d, n("b")).unwrap();
    assert_eq!((e.node, e.attr.nlink), (f, 2));
    fs.unlink(&REQ, ROOT_ID, n("a")).unwrap();
    assert_eq!(fs.lookup(&REQ, d, n("b")).unwrap().attr.nlink, 1);
    assert_eq!(errno(fs.link(&REQ, d, ROOT_ID, n("dd"))), Errno::EPERM);
    assert_eq!(errno(fs.link(&REQ, f, d, n("b"))), Errno::EEXIST);
}

#[test]
fn rename_replaces_a_file_and_frees_the_old_target() {
    let fs = memfs("");
    let (a, _) = create(&fs, "a");
    let (b, hb) = create(&fs, "b");
    fs.release(&REQ, b, hb, 0, false).unwrap();
    fs.forget(b, 1);
    fs.rename(&REQ, ROOT_ID, n("a"), ROOT_ID, n("b"), RenameFlags::empty()).unwrap();
    assert_eq!(fs.lookup(&REQ, ROOT_ID, n("b")).unwrap().node, a);
    assert_eq!(errno(fs.lookup(&REQ, ROOT_ID, n("a"))), Errno::ENOENT);
    assert_eq!(errno(fs.getattr(&REQ, b, None)), Errno::ENOENT, "old target freed");
    assert_eq!(list(&fs, ROOT_ID), [".", "..", "b"]);
}

#[test]
fn rename_follows_posix_rules_for_directories_and_files() {
    let fs = memfs("");
    let d = fs.mkdir(&REQ, ROOT_ID, n("d"), 0o755).unwrap().node;
    fs.mkdir(&REQ, ROOT_ID, n("full"), 0o755).unwrap();
    fs.mkdir(&REQ, ROOT_ID, n("empty"), 0o755).unwrap();
    let sub = fs.mkdir(&REQ, d, n("sub"), 0o755).unwrap().node;
    let full = fs.lookup(&REQ, ROOT_ID, n("full")).unwrap().node;
    fs.mknod(&REQ, full, n("x"), 0o100644, 0).unwrap();
    create(&fs, "f");
    let none = RenameFlags::empty();
    let rename = |from: &str, to_dir, to: &str, flags| fs.rename(&REQ, ROOT_ID, n(from), to_dir, n(to), flags);
    assert_eq!(errno(rename("d", ROOT_ID, "full", none)), Errno::ENOTEMPTY);
    assert_eq!(errno(rename("d", ROOT_ID, "f", none)), Errno::ENOTDIR);
    assert_eq!(errno(rename("f", ROOT_ID, "d", none)), Errno::EISDIR);
    assert_eq!(errno(rename("d", sub, "inside", none)), Errno::EINVAL);
    assert_eq!(errno(rename("d", d, "self", none)), Errno::EINVAL);
    assert_eq!(errno(rename("missing", ROOT_ID, "x", none)), Errno::ENOENT);
    assert_eq!(errno(rename("f", ROOT_ID, "d", RenameFlags(RenameFlags::NOREPLACE))), Errno::EEXIST);
    assert_eq!(errno(rename("f", ROOT_ID, "g", RenameFlags(RenameFlags::WHITEOUT))), Errno::EINVAL);
    // A directory over an empty directory replaces it, and moves its `..`.
    rename("d", ROOT_ID, "empty", none).unwrap();
    assert_eq!(list(&fs, ROOT_ID), [".", "..", "full", "f", "empty"]);
    let e = fs.lookup(&REQ, ROOT_ID, n("empty")).unwrap().node;
    assert_eq!(e, d);
    fs.rename(&REQ, ROOT_ID, n("empty"), full, n("moved"), none).unwrap();
    assert_eq!((attr(&fs, ROOT_ID).nlink, attr(&fs, full).nlink), (3, 3));
    let h = fs.opendir(&REQ, d, 0).unwrap().handle;
    let dots = read_page(&fs, d, h, 0, 2);
    assert_eq!(dots[1].0, "..");
    assert_eq!(fs.tree().unwrap().dir(d).unwrap().parent, full);
}

#[test]
fn rename_exchange_swaps_two_names_and_noreplace_moves_to_a_free_name() {
    let fs = memfs("");
    let (f, _) = create(&fs, "f");
    let d = fs.mkdir(&REQ, ROOT_ID, n("d"), 0o755).unwrap().node;
    let sub = fs.mkdir(&REQ, d, n("sub"), 0o755).unwrap().node;
    let x = RenameFlags(RenameFlags::EXCHANGE);
    fs.rename(&REQ, ROOT_ID, n("f"), d, n("sub"), x).unwrap();
    assert_eq!(fs.lookup(&REQ, ROOT_ID, n("f")).unwrap().node, sub);
    assert_eq!(fs.lookup(&REQ, d, n("sub")).unwrap().node, f);
    assert_eq!((attr(&fs, ROOT_ID).nlink, attr(&fs, d).nlink), (4, 2), "the subdirectory moved up");
    assert_eq!(errno(fs.rename(&REQ, ROOT_ID, n("f"), ROOT_ID, n("none"), x)), Errno::ENOENT);
    assert_eq!(errno(fs.rename(&REQ, ROOT_ID, n("d"), d, n("sub"), x)), Errno::EINVAL);
    let both = RenameFlags(RenameFlags::EXCHANGE | RenameFlags::NOREPLACE);
    assert_eq!(errno(fs.rename(&REQ, ROOT_ID, n("f"), d, n("sub"), both)), Errno::EINVAL);
    fs.rename(&REQ, ROOT_ID, n("f"), ROOT_ID, n("g"), RenameFlags(RenameFlags::NOREPLACE)).unwrap();
}

#[test]
fn readdir_lists_dot_entries_and_resumes_by_cookie_across_changes() {
    let fs = memfs("");
    for i in 0..10 {
        fs.mknod(&REQ, ROOT_ID, n(&format!("f{i}")), 0o100644, 0).unwrap();
    }
    let h = fs.opendir(&REQ, ROOT_ID, 0).unwrap().handle;
    let first = read_page(&fs, ROOT_ID, h, 0, 5);
    assert_eq!(first.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(), [".", "..", "f0", "f1", "f2"]);
    // Changes between pages: a name not yet listed goes, a new one comes, a listed one goes.
    fs.unlink(&REQ, ROOT_ID, n("f5")).unwrap();
    fs.mknod(&REQ, ROOT_ID, n("new"), 0o100644, 0).unwrap();
    fs.unlink(&REQ, ROOT_ID, n("f0")).unwrap();
    let mut seen: Vec<String> = first.iter().map(|e| e.0.clone()).collect();
    let mut cookie = first.last().unwrap().1;
    loop {
        let page = read_page(&fs, ROOT_ID, h, cookie, 3);
        let Some(last) = page.last() else { break };
        cookie = last.1;
        seen.extend(page.into_iter().map(|e| e.0));
    }
    let expected = [".", "..", "f0", "f1", "f2", "f3", "f4", "f6", "f7", "f8", "f9", "new"];
    assert_eq!(seen, expected);
    fs.releasedir(&REQ, ROOT_ID, h).unwrap();
    assert_eq!(errno(fs.readdir(&REQ, ROOT_ID, h, 0, &mut Page { entries: vec![], limit: 1 })), Errno::EBADF);
}

#[test]
fn xattrs_follow_the_create_replace_and_size_probe_rules() {
    let fs = memfs("");
    let (f, _) = create(&fs, "a");
    let name = n("user.k");
    assert_eq!(errno(fs.setxattr(&REQ, f, name, b"v", XATTR_REPLACE)), Errno::ENODATA);
    fs.setxattr(&REQ, f, name, b"value", XATTR_CREATE).unwrap();
    assert_eq!(errno(fs.setxattr(&REQ, f, name, b"v", XATTR_CREATE)), Errno::EEXIST);
    fs.setxattr(&REQ, f, n("user.other"), b"", 0).unwrap();
    assert_eq!(fs.getxattr(&REQ, f, name, &mut []).unwrap(), 5);
    assert_eq!(errno(fs.getxattr(&REQ, f, name, &mut [0; 4])), Errno::ERANGE);
    let mut buf = [0u8; 64];
    assert_eq!(fs.getxattr(&REQ, f, name, &mut buf).unwrap(), 5);
    assert_eq!(&buf[..5], b"value");
    let len = fs.listxattr(&REQ, f, &mut []).unwrap();
    assert_eq!(fs.listxattr(&REQ, f, &mut buf).unwrap(), len);
    assert_eq!(&buf[..len], b"user.k\0user.other\0");
    assert_eq!(errno(fs.listxattr(&REQ, f, &mut [0; 3])), Errno::ERANGE);
    fs.removexattr(&REQ, f, name).unwrap();
    assert_eq!(errno(fs.removexattr(&REQ, f, name)), Errno::ENODATA);
    assert_eq!(errno(fs.getxattr(&REQ, f, name, &mut buf)), Errno::ENODATA);
}

#[test]
fn fallocate_extends_or_preallocates_and_refuses_punching_holes() {
    let fs = memfs("max_bytes = 8192");
    let (f, h) = create(&fs, "a");
    fs.fallocate(&REQ, f, h, 0, 4096, fallocate_mode::KEEP_SIZE).unwrap();
    let a = attr(&fs, f);
    assert_eq!((a.size, a.blocks), (0, 8));
    fs.fallocate(&REQ, f, h, 0, 100, 0).unwrap();
    assert_eq!(attr(&fs, f).size, 100);
    assert_eq!(errno(fs.fallocate(&REQ, f, h, 0, 8193, 0)), Errno::ENOSPC);
    let punch = fallocate_mode::PUNCH_HOLE | fallocate_mode::KEEP_SIZE;
    assert_eq!(errno(fs.fallocate(&REQ, f, h, 0, 10, punch)), Errno::EOPNOTSUPP);
    assert_eq!(fs.tree().unwrap().used_bytes, 4096);
    fs.setattr(&REQ, f, &SetAttr { size: Some(10), ..SetAttr::default() }).unwrap();
    assert_eq!(fs.tree().unwrap().used_bytes, 10, "truncating drops the preallocation");
}

#[test]
fn info_declares_what_memfs_does() {
    let info = MemFsPlugin::info();
    assert_eq!(info.name, "memfs");
    assert!(info.capabilities.xattrs && info.capabilities.rename_exchange && info.capabilities.fallocate);
    assert!(!info.capabilities.punch_hole && !info.capabilities.sparse_files);
}
