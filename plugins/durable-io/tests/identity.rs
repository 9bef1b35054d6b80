//! durable-io acts as its caller, reports stable backing inode numbers, and answers per
//! mount what its backing filesystem supports. Called directly, with no kernel checking
//! permissions first (what a mount without `default_permissions` amounts to), so every
//! refusal here is the plugin's own. The permission tests need root (to switch users).

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;

use common::*;
use plugfs_durable_io::{Durability, DurableIo};
use plugfs_plugin_api::{
    Errno, FileKind, FileSystem, ROOT_ID, Request, SetAttr, SetTime, Timestamp, fallocate_mode, open_flags,
};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn errno<T: std::fmt::Debug>(r: plugfs_plugin_api::Result<T>) -> Errno {
    r.unwrap_err().errno()
}

/// An unprivileged caller with no supplementary groups (pid 0: unknown process).
const USER: Request = Request { uid: 4321, gid: 4321, pid: 0 };

/// A process running as `uid`:`gid` with supplementary `groups`, whose pid a request can
/// carry (the plugin reads the caller's groups from its `/proc/PID/status`).
struct Caller {
    child: std::process::Child,
}

impl Caller {
    fn new(uid: u32, gid: u32, groups: &[u32]) -> Caller {
        let groups = groups.to_vec();
        let mut cmd = Command::new("sleep");
        cmd.arg("60");
        // SAFETY: only raw syscalls between fork and exec; the child has one thread.
        unsafe {
            cmd.pre_exec(move || {
                let ok = libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) == 0
                    && libc::syscall(libc::SYS_setgid, gid) == 0
                    && libc::syscall(libc::SYS_setuid, uid) == 0;
                if ok { Ok(()) } else { Err(std::io::Error::last_os_error()) }
            })
        };
        Caller { child: cmd.spawn().unwrap() }
    }

    fn req(&self, uid: u32, gid: u32) -> Request {
        Request { uid, gid, pid: self.child.id() }
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chmod(m: &Mount, rel: &str, mode: u32) {
    fs::set_permissions(m.path(rel), fs::Permissions::from_mode(mode)).unwrap();
}

fn set(f: impl FnOnce(&mut SetAttr)) -> SetAttr {
    let mut s = SetAttr::default();
    f(&mut s);
    s
}

// ---------------------------------------------------------------------------------------
// Acting as the caller

#[test]
fn a_non_root_caller_cannot_read_change_or_move_what_it_may_not() {
    if !is_root() {
        return;
    }
    let m = mount();
    let fs = &m.fs;
    let secret = write_file(fs, ROOT_ID, "secret", b"root only");
    chmod(&m, "secret", 0o600);
    fs.setxattr(&ROOT_REQ, secret.node, os("user.note"), b"hidden", 0).unwrap();
    let readable = write_file(fs, ROOT_ID, "readable", b"anyone may read");
    chmod(&m, "readable", 0o644);
    let locked = fs.mkdir(&ROOT_REQ, ROOT_ID, os("locked"), 0o755).unwrap();
    write_file(fs, locked.node, "inside", b"x");
    let private = fs.mkdir(&ROOT_REQ, ROOT_ID, os("private"), 0o700).unwrap();
    write_file(fs, private.node, "hidden", b"x");

    // Reading and writing.
    assert_eq!(errno(fs.open(&USER, secret.node, open_flags::O_RDONLY)), Errno::EACCES);
    assert_eq!(errno(fs.open(&USER, readable.node, open_flags::O_WRONLY)), Errno::EACCES);
    assert_eq!(errno(fs.open(&USER, readable.node, open_flags::O_RDONLY | open_flags::O_TRUNC)), Errno::EACCES);
    let h = fs.open(&USER, readable.node, open_flags::O_RDONLY).unwrap().handle;
    fs.release(&USER, readable.node, h, 0, false).unwrap();
    assert_eq!(errno(fs.getxattr(&USER, secret.node, os("user.note"), &mut [0u8; 64])), Errno::EACCES);
    // Directories: listing needs read, looking up needs search permission.
    assert_eq!(errno(fs.opendir(&USER, private.node, 0)), Errno::EACCES);
    assert_eq!(errno(fs.lookup(&USER, private.node, os("hidden"))), Errno::EACCES);

    // Changing attributes of root's file.
    assert_eq!(errno(fs.setattr(&USER, readable.node, &set(|s| s.mode = Some(0o666)))), Errno::EPERM);
    assert_eq!(errno(fs.setattr(&USER, readable.node, &set(|s| s.uid = Some(USER.uid)))), Errno::EPERM);
    assert_eq!(errno(fs.setattr(&USER, readable.node, &set(|s| s.gid = Some(USER.gid)))), Errno::EPERM);
    assert_eq!(errno(fs.setattr(&USER, readable.node, &set(|s| s.size = Some(0)))), Errno::EACCES);
    let then = SetTime::At(Timestamp::new(1_000_000, 0));
    assert_eq!(errno(fs.setattr(&USER, readable.node, &set(|s| s.mtime = Some(then)))), Errno::EPERM);
    assert_eq!(errno(fs.setxattr(&USER, readable.node, os("user.mine"), b"v", 0)), Errno::EACCES);
    assert_eq!(errno(fs.removexattr(&USER, secret.node, os("user.note"))), Errno::EACCES);

    // Moving, removing and creating in root's 0755 directory.
    assert_eq!(
        errno(fs.rename(&USER, locked.node, os("inside"), ROOT_ID, os("taken"), Default::default())),
        Errno::EACCES
    );
    assert_eq!(
        errno(fs.rename(&USER, ROOT_ID, os("readable"), ROOT_ID, os("moved"), Default::default())),
        Errno::EACCES
    );
    assert_eq!(errno(fs.unlink(&USER, locked.node, os("inside"))), Errno::EACCES);
    assert_eq!(errno(fs.rmdir(&USER, ROOT_ID, os("locked"))), Errno::EACCES);
    assert_eq!(errno(fs.mkdir(&USER, locked.node, os("d"), 0o755)), Errno::EACCES);

    // Nothing changed on the backing filesystem.
    assert_eq!(fs::read(m.path("readable")).unwrap(), b"anyone may read");
    let md = fs::metadata(m.path("readable")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.uid(), md.gid()), (0o644, 0, 0));
    assert!(m.path("locked/inside").exists() && m.path("readable").exists());
    assert_eq!(xattr_value(&m.path("secret"), "user.note"), Some(b"hidden".to_vec()));
}

fn xattr_value(path: &std::path::Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = [0u8; 256];
    rustix::fs::lgetxattr(path, name, &mut buf).ok().map(|n| buf[..n].to_vec())
}

#[test]
fn a_non_root_caller_has_no_root_powers_on_its_own_files() {
    if !is_root() {
        return;
    }
    let m = mount();
    let fs = &m.fs;
    let shared = fs.mkdir(&ROOT_REQ, ROOT_ID, os("shared"), 0o777).unwrap();
    chmod(&m, "shared", 0o1777);
    let (mine, o) = fs.create(&USER, shared.node, os("mine"), 0o644, open_flags::O_RDWR).unwrap();
    fs.release(&USER, mine.node, o.handle, 0, true).unwrap();
    // What an owner may do.
    fs.setattr(&USER, mine.node, &set(|s| s.mode = Some(0o600))).unwrap();
    fs.setattr(&USER, mine.node, &set(|s| s.size = Some(10))).unwrap();
    fs.setxattr(&USER, mine.node, os("user.mine"), b"v", 0).unwrap();
    // What needs privileges even for an owner: giving it away, a group it is not in,
    // trusted.* xattrs (CAP_SYS_ADMIN, which a non-root caller does not get through us).
    assert_eq!(errno(fs.setattr(&USER, mine.node, &set(|s| s.uid = Some(0)))), Errno::EPERM);
    assert_eq!(errno(fs.setattr(&USER, mine.node, &set(|s| s.gid = Some(4242)))), Errno::EPERM);
    assert_eq!(errno(fs.setxattr(&USER, mine.node, os("trusted.mine"), b"v", 0)), Errno::EPERM);
    assert_eq!(errno(fs.mknod(&USER, shared.node, os("null"), libc::S_IFCHR | 0o666, 0x103)), Errno::EPERM);
    // Root's file in a sticky directory: not the caller's to delete or replace.
    write_file(fs, shared.node, "roots", b"r");
    chmod(&m, "shared/roots", 0o666);
    assert_eq!(errno(fs.unlink(&USER, shared.node, os("roots"))), Errno::EPERM);
    assert_eq!(
        errno(fs.rename(&USER, shared.node, os("mine"), shared.node, os("roots"), Default::default())),
        Errno::EPERM
    );
    let md = fs::metadata(m.path("shared/mine")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.len(), md.uid()), (0o600, 10, USER.uid));
    // A root caller keeps full rights over the same file.
    fs.setattr(&ROOT_REQ, mine.node, &set(|s| s.uid = Some(0))).unwrap();
    assert_eq!(fs::metadata(m.path("shared/mine")).unwrap().uid(), 0);
}

#[test]
fn a_supplementary_group_lets_a_caller_create_in_a_group_writable_directory() {
    if !is_root() {
        return;
    }
    let m = mount();
    let fs = &m.fs;
    let team = fs.mkdir(&ROOT_REQ, ROOT_ID, os("team"), 0o770).unwrap();
    let sgid = fs.mkdir(&ROOT_REQ, ROOT_ID, os("team-sgid"), 0o770).unwrap();
    for (dir, mode) in [("team", 0o770), ("team-sgid", 0o2770)] {
        std::os::unix::fs::chown(m.path(dir), Some(0), Some(4242)).unwrap();
        chmod(&m, dir, mode);
    }
    let member = Caller::new(4321, 4321, &[4242]);
    let req = member.req(4321, 4321);

    // Without the group (the same user, but a request naming no process) it is refused.
    assert_eq!(errno(fs.create(&USER, team.node, os("f"), 0o644, open_flags::O_RDWR)), Errno::EACCES);
    assert_eq!(errno(fs.opendir(&USER, team.node, 0)), Errno::EACCES);

    let (f, o) = fs.create(&req, team.node, os("f"), 0o644, open_flags::O_RDWR).unwrap();
    fs.release(&req, f.node, o.handle, 0, true).unwrap();
    let d = fs.mkdir(&req, team.node, os("d"), 0o755).unwrap();
    let md = fs::metadata(m.path("team/f")).unwrap();
    assert_eq!((md.uid(), md.gid()), (4321, 4321), "a plain directory: the caller's primary group");
    assert_eq!((d.attr.uid, d.attr.gid), (4321, 4321));

    let (g, o) = fs.create(&req, sgid.node, os("g"), 0o644, open_flags::O_RDWR).unwrap();
    fs.release(&req, g.node, o.handle, 0, true).unwrap();
    let md = fs::metadata(m.path("team-sgid/g")).unwrap();
    assert_eq!((md.uid(), md.gid()), (4321, 4242), "a setgid directory: its group");

    // The owner may give its file to a group it is in, not to another.
    fs.setattr(&req, f.node, &set(|s| s.gid = Some(4242))).unwrap();
    assert_eq!(fs::metadata(m.path("team/f")).unwrap().gid(), 4242);
    assert_eq!(errno(fs.setattr(&req, f.node, &set(|s| s.gid = Some(4343)))), Errno::EPERM);
    // And the listing of the group's directory works for a member.
    let h = fs.opendir(&req, team.node, 0).unwrap().handle;
    fs.releasedir(&req, team.node, h).unwrap();
}

#[test]
fn a_non_root_callers_mkdir_and_mknod_get_the_mode_asked_for() {
    if !is_root() {
        return;
    }
    let m = mount();
    let fs = &m.fs;
    let shared = fs.mkdir(&ROOT_REQ, ROOT_ID, os("shared"), 0o777).unwrap();
    chmod(&m, "shared", 0o1777);
    // The host umask (022 here) would strip group and other write; the fix-up, made as the
    // caller on the new inode, puts them back.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o022));
    let d = fs.mkdir(&USER, shared.node, os("d"), 0o777).unwrap();
    assert_eq!((d.attr.perm, d.attr.uid), (0o777, USER.uid));
    let p = fs.mknod(&USER, shared.node, os("p"), libc::S_IFIFO | 0o666, 0).unwrap();
    assert_eq!((p.attr.perm, p.attr.uid), (0o666, USER.uid));
    assert_eq!(fs::metadata(m.path("shared/d")).unwrap().mode() & 0o7777, 0o777);
}

// ---------------------------------------------------------------------------------------
// Inode numbers

#[test]
fn stat_ino_equals_readdir_ino_and_the_backing_ino_across_remounts() {
    let m = mount();
    let fs = &m.fs;
    let d = fs.mkdir(&ROOT_REQ, ROOT_ID, os("dir"), 0o755).unwrap();
    let f = write_file(fs, d.node, "file", b"x");
    fs.link(&ROOT_REQ, f.node, ROOT_ID, os("hardlink")).unwrap();
    fs.symlink(&ROOT_REQ, ROOT_ID, os("symlink"), os("dir/file")).unwrap();
    fs.mknod(&ROOT_REQ, ROOT_ID, os("fifo"), libc::S_IFIFO | 0o644, 0).unwrap();

    let inos = |fs: &DurableIo| -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for (dir, rel) in [(ROOT_ID, ""), (fs.lookup(&ROOT_REQ, ROOT_ID, os("dir")).unwrap().node, "dir/")] {
            for (name, kind, ino) in list(fs, dir, 2) {
                if name == "." || name == ".." {
                    continue;
                }
                let e = fs.lookup(&ROOT_REQ, dir, os(&name)).unwrap();
                let attr = fs.getattr(&ROOT_REQ, e.node, None).unwrap().attr;
                let backing = fs::symlink_metadata(m.path(&format!("{rel}{name}"))).unwrap().ino();
                assert_eq!((e.attr.ino, attr.ino, ino), (backing, backing, backing), "{rel}{name}");
                assert_eq!(e.attr.kind, kind, "{rel}{name}");
                out.push((format!("{rel}{name}"), ino));
            }
        }
        out.sort();
        out
    };
    let first = inos(fs);
    assert_eq!(first.len(), 5);
    let by_name = |n: &str| first.iter().find(|(name, _)| name == n).unwrap().1;
    assert_eq!(by_name("hardlink"), by_name("dir/file"), "hard links share the inode number");
    // The root too: its own stat, and "." in its listing.
    let root_ino = fs::metadata(m.dir.path()).unwrap().ino();
    assert_eq!(fs.getattr(&ROOT_REQ, ROOT_ID, None).unwrap().attr.ino, root_ino);
    assert!(list(fs, ROOT_ID, 64).contains(&(".".into(), FileKind::Directory, root_ino)));

    // A second mount of the same root (a remount) reports the same numbers.
    let again = DurableIo::open(m.dir.path(), Durability::Close, false).unwrap();
    assert_eq!(inos(&again), first);
}

// ---------------------------------------------------------------------------------------
// Capabilities per mount

/// A ramfs (no xattrs, no fallocate) on a fresh directory, unmounted on drop.
struct Ramfs(tempfile::TempDir);

impl Ramfs {
    fn mount() -> Ramfs {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount").args(["-t", "ramfs", "ramfs"]).arg(dir.path()).status().unwrap();
        assert!(ok.success(), "mount -t ramfs");
        Ramfs(dir)
    }
}

impl Drop for Ramfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn a_mount_answers_what_its_backing_filesystem_cannot_do_with_the_posix_errno() {
    if !is_root() {
        return;
    }
    let ram = Ramfs::mount();
    let fs = DurableIo::open(ram.0.path(), Durability::Close, false).unwrap();
    let caps = fs.capabilities();
    assert!(!caps.xattrs && !caps.fallocate && !caps.sparse_files && caps.writable, "{caps:?}");
    let (f, h) = create(&fs, ROOT_ID, "f");
    assert_eq!(errno(fs.setxattr(&ROOT_REQ, f.node, os("user.a"), b"v", 0)), Errno::ENOTSUP);
    assert_eq!(errno(fs.getxattr(&ROOT_REQ, f.node, os("user.a"), &mut [0u8; 8])), Errno::ENOTSUP);
    assert_eq!(errno(fs.listxattr(&ROOT_REQ, f.node, &mut [0u8; 64])), Errno::ENOTSUP);
    assert_eq!(errno(fs.removexattr(&ROOT_REQ, f.node, os("user.a"))), Errno::ENOTSUP);
    assert_eq!(errno(fs.fallocate(&ROOT_REQ, f.node, h, 0, 4096, 0)), Errno::EOPNOTSUPP);
    assert_eq!(errno(fs.fallocate(&ROOT_REQ, f.node, h, 0, 4096, fallocate_mode::KEEP_SIZE)), Errno::EOPNOTSUPP);
    fs.release(&ROOT_REQ, f.node, h, 0, true).unwrap();
    drop(fs);

    // The same plugin over a tmpfs directory has them.
    let tmp = tempfile::tempdir_in("/dev/shm").unwrap();
    let fs = DurableIo::open(tmp.path(), Durability::Close, false).unwrap();
    assert!(fs.capabilities().xattrs && fs.capabilities().fallocate, "{:?}", fs.capabilities());
    let (f, h) = create(&fs, ROOT_ID, "f");
    fs.fallocate(&ROOT_REQ, f.node, h, 0, 4096, 0).unwrap();
    fs.setxattr(&ROOT_REQ, f.node, os("user.a"), b"v", 0).unwrap();
    fs.release(&ROOT_REQ, f.node, h, 0, true).unwrap();
    // Probing leaves nothing behind in the served directory.
    let names: Vec<_> = fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, [os("f")]);
}

#[test]
fn a_read_only_mount_declares_itself_not_writable_and_probes_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let before = fs::metadata(dir.path()).unwrap().mtime_nsec();
    let fs = DurableIo::open(dir.path(), Durability::Close, true).unwrap();
    assert!(!fs.capabilities().writable);
    assert_eq!(fs::metadata(dir.path()).unwrap().mtime_nsec(), before, "the root was written to");
    let rw = DurableIo::open(dir.path(), Durability::Close, false).unwrap();
    assert!(rw.capabilities().writable);
}
