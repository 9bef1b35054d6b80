//! [`DurableIo`], the [`FileSystem`] implementation: every operation is an *at() call on a
//! node's `O_PATH` fd with a single-component name, or IO on a handle's own fd.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use plugfs_plugin_api::{
    AttrOut, DirEntry, DirSink, Entry, Errno, Error, FileKind, FileSystem, Handle, NodeId, OpenError, Opened, ROOT_ID,
    RenameFlags, Request, Result, SetAttr, SetTime, StatFs, Whence, open_flags,
};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, RawDir, SeekFrom, Statx, Timespec, Timestamps, XattrFlags};

use crate::creds::AsCaller;
use crate::durability::{Durability, sync_fd, sync_node};
use crate::handles::{DirHandle, FileHandle, HandleTable, Open};
use crate::nodes::{NodeRef, NodeTable};
use crate::sys::{ProcFd, attr_from_statx, check_name, decode_dev, err, inode_key, open_beneath, stat_fd};

/// How long the kernel may cache names and attributes. Short, because the backing directory
/// may be changed behind our back by anything else on the machine.
pub const TTL: Duration = Duration::from_secs(1);

/// Buffers for `O_DIRECT` IO are aligned to this; it covers every logical block size Linux
/// filesystems ask for.
const DIRECT_ALIGN: usize = 4096;

/// How often `create` retries when the name it found existing vanished before it could be
/// opened (a race with a concurrent unlink).
const CREATE_RETRIES: usize = 8;

/// A local directory served as a plugfs filesystem. Built by
/// [`DurableIoPlugin`](crate::DurableIoPlugin) from its config, or directly with
/// [`DurableIo::open`].
pub struct DurableIo {
    nodes: NodeTable,
    handles: HandleTable,
    proc: ProcFd,
    durability: Durability,
    read_only: bool,
    /// The host runs as root, so creations switch to the caller's fsuid/fsgid.
    as_caller: bool,
    /// The root's backing inode number, shown for the root's `..` instead of whatever lies
    /// outside the root.
    root_ino: u64,
    /// Syncs made so far, so tests can check the policy without tracing syscalls.
    file_syncs: AtomicU64,
    dir_syncs: AtomicU64,
}

impl DurableIo {
    /// Serves the directory `root` (an absolute path to an existing directory). Problems
    /// with `root` are reported as errors of the config key `root`.
    pub fn open(root: &Path, durability: Durability, read_only: bool) -> Result<Self, OpenError> {
        let bad_root = |why: String| OpenError::config("root", format!("`{}` {why}", root.display()));
        if !root.is_absolute() {
            return Err(bad_root("is not an absolute path".into()));
        }
        let root_fd = rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| {
                bad_root(match e {
                    rustix::io::Errno::NOENT => "does not exist".into(),
                    rustix::io::Errno::NOTDIR => "is not a directory".into(),
                    e => format!("cannot be opened: {e}"),
                })
            })?;
        let st = stat_fd(root_fd.as_fd()).map_err(|e| bad_root(format!("cannot be examined: {e}")))?;
        let proc = ProcFd::open().map_err(OpenError::other)?;
        Ok(DurableIo {
            nodes: NodeTable::new(root_fd, inode_key(&st)),
            handles: HandleTable::new(),
            proc,
            durability,
            read_only,
            as_caller: rustix::process::geteuid().is_root(),
            root_ino: st.stx_ino,
            file_syncs: AtomicU64::new(0),
            dir_syncs: AtomicU64::new(0),
        })
    }

    /// The durability mode this filesystem runs in.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// How many (file, directory) syncs this filesystem has made. For tests of the
    /// durability policy; not a stable interface.
    #[doc(hidden)]
    pub fn sync_counts(&self) -> (u64, u64) {
        (self.file_syncs.load(Ordering::Relaxed), self.dir_syncs.load(Ordering::Relaxed))
    }

    fn counted(&self, kind: FileKind) {
        let counter = if kind == FileKind::Directory { &self.dir_syncs } else { &self.file_syncs };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Syncs an open fd of a node of `kind`.
    fn sync_open(&self, fd: BorrowedFd<'_>, kind: FileKind, datasync: bool) -> Result<()> {
        sync_fd(fd, datasync)?;
        self.counted(kind);
        Ok(())
    }

    /// Syncs the inode behind a node's `O_PATH` fd (see [`sync_node`]).
    fn sync_path(&self, fd: BorrowedFd<'_>, kind: FileKind) -> Result<()> {
        if sync_node(&self.proc, fd, kind)? {
            self.counted(kind);
        }
        Ok(())
    }

    fn node(&self, id: NodeId) -> Result<NodeRef> {
        self.nodes.get(id)
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only { Err(Errno::EROFS.into()) } else { Ok(()) }
    }

    fn as_caller(&self, req: &Request) -> Result<AsCaller> {
        AsCaller::enter(self.as_caller, req)
    }

    fn entry(&self, fd: OwnedFd, st: &Statx) -> Entry {
        let attr = attr_from_statx(st);
        let node = self.nodes.remember(fd, inode_key(st), attr.kind);
        Entry { node, generation: 0, attr, entry_ttl: TTL, attr_ttl: TTL }
    }

    /// In `always` mode, syncs the changed inode (if given) and the directories.
    fn sync_change(&self, node: Option<(BorrowedFd<'_>, FileKind)>, dirs: &[&NodeRef]) -> Result<()> {
        if !self.durability.sync_changes() {
            return Ok(());
        }
        if let Some((fd, kind)) = node {
            self.sync_path(fd, kind)?;
        }
        for (i, dir) in dirs.iter().enumerate() {
            // A rename within one directory names it twice; once is enough.
            if dirs[..i].iter().any(|d| Arc::ptr_eq(&d.fd, &dir.fd)) {
                continue;
            }
            self.sync_path(dir.fd.as_fd(), FileKind::Directory)?;
        }
        Ok(())
    }

    /// Completes a creation: restores permission bits the host process's umask took away
    /// (the caller's umask has already been applied to `mode`), syncs in `always` mode,
    /// and hands out the entry. `mode` is `None` when nothing was created (a new link).
    fn finish_create(&self, fd: OwnedFd, mode: Option<u32>, parent: &NodeRef, sync_new: bool) -> Result<Entry> {
        let mut st = stat_fd(fd.as_fd())?;
        let kind = FileKind::from_mode(st.stx_mode.into()).unwrap_or(FileKind::File);
        if let Some(mode) = mode.filter(|_| kind != FileKind::Symlink) {
            let perm = u32::from(st.stx_mode) & 0o7777;
            let missing = mode & 0o777 & !perm;
            if missing != 0 {
                rustix::fs::chmodat(
                    self.proc.dir(),
                    ProcFd::name(fd.as_fd()),
                    Mode::from_raw_mode(perm | missing),
                    AtFlags::empty(),
                )
                .map_err(err)?;
                st = stat_fd(fd.as_fd())?;
            }
        }
        self.sync_change(sync_new.then_some((fd.as_fd(), kind)), &[parent])?;
        Ok(self.entry(fd, &st))
    }

    /// The open(2) flags of a backing file for the caller's `flags`, and whether it is
    /// opened for writing. Only flags that mean something for a regular file pass; the
    /// rest (`O_CREAT`, `O_NOFOLLOW`, `O_PATH`, `O_TMPFILE`, ...) never reach the backing
    /// open, and `O_NOATIME` is dropped because a non-owner may not use it.
    fn file_flags(&self, flags: i32) -> Result<(OFlags, bool)> {
        let writable = match flags & open_flags::O_ACCMODE {
            open_flags::O_RDONLY => false,
            open_flags::O_WRONLY | open_flags::O_RDWR => true,
            _ => return Err(Errno::EINVAL.into()),
        };
        if (writable || flags & open_flags::O_TRUNC != 0) && self.read_only {
            return Err(Errno::EROFS.into());
        }
        let keep = open_flags::O_ACCMODE
            | open_flags::O_APPEND
            | open_flags::O_TRUNC
            | open_flags::O_DSYNC
            | open_flags::O_SYNC
            | open_flags::O_DIRECT
            | libc::O_NONBLOCK;
        let mut oflags = OFlags::from_bits_retain((flags & keep) as u32);
        if writable {
            oflags |= self.durability.write_flags();
        }
        Ok((oflags, writable))
    }

    fn file_handle(&self, fd: OwnedFd, flags: i32, writable: bool) -> Handle {
        let truncated = flags & open_flags::O_TRUNC != 0;
        self.handles.insert(Open::File(Arc::new(FileHandle {
            fd,
            dirty: AtomicBool::new(truncated),
            direct: flags & open_flags::O_DIRECT != 0,
            writable,
        })))
    }

    /// Syncs a handle's data if it was written since its last sync (`close` mode).
    fn sync_if_dirty(&self, fh: &FileHandle) -> Result<()> {
        if !self.durability.sync_on_close() || !fh.dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        self.sync_open(fh.fd.as_fd(), FileKind::File, true).inspect_err(|_| fh.dirty.store(true, Ordering::Release))
    }

    /// Writes that must be durable on return in `always` mode but did not go through the
    /// `O_DSYNC` fd (fallocate, copy_file_range, truncating opens).
    fn sync_data_change(&self, fd: BorrowedFd<'_>) -> Result<()> {
        if self.durability.sync_changes() { self.sync_open(fd, FileKind::File, false) } else { Ok(()) }
    }

    fn remove(&self, parent: NodeId, name: &OsStr, flags: AtFlags) -> Result<()> {
        self.check_writable()?;
        check_name(name)?;
        let p = self.node(parent)?;
        rustix::fs::unlinkat(p.fd.as_fd(), name, flags).map_err(err)?;
        self.sync_change(None, &[&p])
    }

    fn set_times(&self, n: &NodeRef, atime: Option<SetTime>, mtime: Option<SetTime>) -> Result<()> {
        fn spec(t: Option<SetTime>) -> Timespec {
            match t {
                None => Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT },
                Some(SetTime::Now) => Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_NOW },
                Some(SetTime::At(ts)) => Timespec { tv_sec: ts.secs, tv_nsec: ts.nanos.into() },
            }
        }
        let times = Timestamps { last_access: spec(atime), last_modification: spec(mtime) };
        // AT_EMPTY_PATH works on the O_PATH fd itself, symlinks included (Linux 5.8+).
        match rustix::fs::utimensat(n.fd.as_fd(), c"", &times, AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::INVAL) if n.kind != FileKind::Symlink => {
                rustix::fs::utimensat(self.proc.dir(), ProcFd::name(n.fd.as_fd()), &times, AtFlags::empty())
                    .map_err(err)
            }
            Err(e) => Err(err(e)),
        }
    }

    fn truncate(&self, n: &NodeRef, handle: Option<Handle>, size: u64) -> Result<()> {
        match n.kind {
            FileKind::File => {}
            FileKind::Directory => return Err(Errno::EISDIR.into()),
            _ => return Err(Errno::EINVAL.into()),
        }
        if let Some(fh) = handle.and_then(|h| self.handles.file(h).ok()).filter(|fh| fh.writable) {
            fh.dirty.store(true, Ordering::Release);
            return rustix::fs::ftruncate(&fh.fd, size).map_err(err);
        }
        let fd = self.proc.reopen(n.fd.as_fd(), OFlags::WRONLY)?;
        rustix::fs::ftruncate(&fd, size).map_err(err)
    }
}

/// A buffer aligned for `O_DIRECT`, carved out of an over-allocated vector (no unsafe).
struct Aligned {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let buf = vec![0u8; len + DIRECT_ALIGN];
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
        Aligned { buf, start, len }
    }
    fn slice(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

fn misaligned(direct: bool, ptr: *const u8) -> bool {
    direct && ptr.align_offset(DIRECT_ALIGN) != 0
}

fn pread_full(fd: BorrowedFd<'_>, offset: u64, buf: &mut [u8]) -> Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let at = offset.checked_add(done as u64).ok_or(Errno::EINVAL)?;
        match rustix::io::pread(fd, &mut buf[done..], at) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) if done > 0 => break,
            Err(e) => return Err(err(e)),
        }
    }
    Ok(done)
}

fn pwrite_full(fd: BorrowedFd<'_>, offset: u64, data: &[u8]) -> Result<usize> {
    let mut done = 0;
    while done < data.len() {
        let at = offset.checked_add(done as u64).ok_or(Errno::EINVAL)?;
        // On an O_APPEND fd Linux ignores `at` and appends, which is what makes appends
        // land at the end however the caller computed the offset.
        match rustix::io::pwrite(fd, &data[done..], at) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) if done > 0 => break,
            Err(e) => return Err(err(e)),
        }
    }
    Ok(done)
}

fn dirent_kind(t: FileType) -> Option<FileKind> {
    Some(match t {
        FileType::RegularFile => FileKind::File,
        FileType::Directory => FileKind::Directory,
        FileType::Symlink => FileKind::Symlink,
        FileType::Fifo => FileKind::Fifo,
        FileType::Socket => FileKind::Socket,
        FileType::CharacterDevice => FileKind::CharDevice,
        FileType::BlockDevice => FileKind::BlockDevice,
        _ => return None,
    })
}

impl FileSystem for DurableIo {
    fn lookup(&self, _req: &Request, parent: NodeId, name: &OsStr) -> Result<Entry> {
        let p = self.node(parent)?;
        let fd = open_beneath(p.fd.as_fd(), name, OFlags::PATH, Mode::empty())?;
        let st = stat_fd(fd.as_fd())?;
        Ok(self.entry(fd, &st))
    }

    fn forget(&self, node: NodeId, nlookup: u64) {
        self.nodes.forget(node, nlookup);
    }

    fn getattr(&self, _req: &Request, node: NodeId, handle: Option<Handle>) -> Result<AttrOut> {
        let st = match handle.and_then(|h| self.handles.get(h).ok()) {
            Some(open) => stat_fd(open.fd())?,
            None => stat_fd(self.node(node)?.fd.as_fd())?,
        };
        Ok(AttrOut { attr: attr_from_statx(&st), ttl: TTL })
    }

    fn setattr(&self, req: &Request, node: NodeId, set: &SetAttr) -> Result<AttrOut> {
        let n = self.node(node)?;
        let changes = set.mode.is_some()
            || set.uid.is_some()
            || set.gid.is_some()
            || set.size.is_some()
            || set.atime.is_some()
            || set.mtime.is_some();
        if changes {
            self.check_writable()?;
        }
        // Ownership first: chown clears setuid/setgid, which a mode set in the same call
        // must be able to put back.
        if set.uid.is_some() || set.gid.is_some() {
            rustix::fs::chownat(
                n.fd.as_fd(),
                c"",
                set.uid.map(rustix::fs::Uid::from_raw),
                set.gid.map(rustix::fs::Gid::from_raw),
                AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(err)?;
        }
        if let Some(mode) = set.mode {
            // Linux has no symlink permissions (lchmod is ENOTSUP); going through the magic
            // link would change the bits the kernel ignores anyway.
            if n.kind == FileKind::Symlink {
                return Err(Errno::EOPNOTSUPP.into());
            }
            rustix::fs::chmodat(
                self.proc.dir(),
                ProcFd::name(n.fd.as_fd()),
                Mode::from_raw_mode(mode & 0o7777),
                AtFlags::empty(),
            )
            .map_err(err)?;
        }
        if let Some(size) = set.size {
            self.truncate(&n, set.handle, size)?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            self.set_times(&n, set.atime, set.mtime)?;
        }
        if changes {
            self.sync_change(Some((n.fd.as_fd(), n.kind)), &[])?;
        }
        self.getattr(req, node, set.handle)
    }

    fn readlink(&self, _req: &Request, node: NodeId, buf: &mut [u8]) -> Result<usize> {
        let n = self.node(node)?;
        if n.kind != FileKind::Symlink {
            return Err(Errno::EINVAL.into());
        }
        let len = rustix::fs::readlinkat_raw(n.fd.as_fd(), c"", &mut *buf).map_err(err)?;
        // readlink truncates silently; a full buffer may mean the target did not fit.
        if len == buf.len() && stat_fd(n.fd.as_fd())?.stx_size != len as u64 {
            return Err(Errno::ERANGE.into());
        }
        Ok(len)
    }

    fn mknod(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32, rdev: u32) -> Result<Entry> {
        self.check_writable()?;
        check_name(name)?;
        let file_type = match FileKind::from_mode(mode) {
            None if mode & 0o170000 == 0 => FileType::RegularFile,
            Some(FileKind::File) => FileType::RegularFile,
            Some(FileKind::Fifo) => FileType::Fifo,
            Some(FileKind::Socket) => FileType::Socket,
            Some(FileKind::CharDevice) => FileType::CharacterDevice,
            Some(FileKind::BlockDevice) => FileType::BlockDevice,
            Some(FileKind::Directory) => return Err(Errno::EPERM.into()),
            Some(FileKind::Symlink) | None => return Err(Errno::EINVAL.into()),
        };
        let p = self.node(parent)?;
        let (major, minor) = decode_dev(rdev);
        {
            let _caller = self.as_caller(req)?;
            rustix::fs::mknodat(
                p.fd.as_fd(),
                name,
                file_type,
                Mode::from_raw_mode(mode & 0o7777),
                rustix::fs::makedev(major, minor),
            )
            .map_err(err)?;
        }
        let fd = open_beneath(p.fd.as_fd(), name, OFlags::PATH, Mode::empty())?;
        self.finish_create(fd, Some(mode), &p, true)
    }

    fn mkdir(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32) -> Result<Entry> {
        self.check_writable()?;
        check_name(name)?;
        let p = self.node(parent)?;
        {
            let _caller = self.as_caller(req)?;
            rustix::fs::mkdirat(p.fd.as_fd(), name, Mode::from_raw_mode(mode & 0o7777)).map_err(err)?;
        }
        let fd = open_beneath(p.fd.as_fd(), name, OFlags::PATH, Mode::empty())?;
        self.finish_create(fd, Some(mode), &p, true)
    }

    fn unlink(&self, _req: &Request, parent: NodeId, name: &OsStr) -> Result<()> {
        self.remove(parent, name, AtFlags::empty())
    }

    fn rmdir(&self, _req: &Request, parent: NodeId, name: &OsStr) -> Result<()> {
        self.remove(parent, name, AtFlags::REMOVEDIR)
    }

    fn symlink(&self, req: &Request, parent: NodeId, name: &OsStr, target: &OsStr) -> Result<Entry> {
        self.check_writable()?;
        check_name(name)?;
        let p = self.node(parent)?;
        {
            let _caller = self.as_caller(req)?;
            rustix::fs::symlinkat(target, p.fd.as_fd(), name).map_err(err)?;
        }
        let fd = open_beneath(p.fd.as_fd(), name, OFlags::PATH, Mode::empty())?;
        self.finish_create(fd, None, &p, true)
    }

    fn link(&self, req: &Request, node: NodeId, new_parent: NodeId, new_name: &OsStr) -> Result<Entry> {
        self.check_writable()?;
        check_name(new_name)?;
        let n = self.node(node)?;
        if n.kind == FileKind::Directory {
            return Err(Errno::EPERM.into());
        }
        let p = self.node(new_parent)?;
        {
            let _caller = self.as_caller(req)?;
            // Through the magic link, which lands on the inode itself (symlinks included);
            // AT_EMPTY_PATH would need CAP_DAC_READ_SEARCH, which the fsuid switch drops.
            rustix::fs::linkat(
                self.proc.dir(),
                ProcFd::name(n.fd.as_fd()),
                p.fd.as_fd(),
                new_name,
                AtFlags::SYMLINK_FOLLOW,
            )
            .map_err(err)?;
        }
        let fd = open_beneath(p.fd.as_fd(), new_name, OFlags::PATH, Mode::empty())?;
        self.finish_create(fd, None, &p, true)
    }

    fn rename(
        &self,
        _req: &Request,
        parent: NodeId,
        name: &OsStr,
        new_parent: NodeId,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> Result<()> {
        if flags.0 & !(RenameFlags::NOREPLACE | RenameFlags::EXCHANGE) != 0 {
            return Err(Errno::EINVAL.into());
        }
        self.check_writable()?;
        check_name(name)?;
        check_name(new_name)?;
        let p = self.node(parent)?;
        let np = self.node(new_parent)?;
        rustix::fs::renameat_with(
            p.fd.as_fd(),
            name,
            np.fd.as_fd(),
            new_name,
            rustix::fs::RenameFlags::from_bits_retain(flags.0),
        )
        .map_err(err)?;
        self.sync_change(None, &[&p, &np])
    }

    fn open(&self, _req: &Request, node: NodeId, flags: i32) -> Result<Opened> {
        let n = self.node(node)?;
        match n.kind {
            FileKind::File => {}
            FileKind::Directory => return Err(Errno::EISDIR.into()),
            FileKind::Symlink => return Err(Errno::ELOOP.into()),
            // FUSE never sends opens of special files (the kernel serves them itself), and
            // opening a device node as the host would reach real hardware.
            _ => return Err(Errno::ENXIO.into()),
        }
        let (oflags, writable) = self.file_flags(flags)?;
        let fd = self.proc.reopen(n.fd.as_fd(), oflags)?;
        if flags & open_flags::O_TRUNC != 0 {
            self.sync_data_change(fd.as_fd())?;
        }
        Ok(Opened { handle: self.file_handle(fd, flags, writable), ..Opened::default() })
    }

    fn create(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32, flags: i32) -> Result<(Entry, Opened)> {
        self.check_writable()?;
        check_name(name)?;
        let p = self.node(parent)?;
        let (oflags, writable) = self.file_flags(flags)?;
        let exclusive = flags & open_flags::O_EXCL != 0;
        let mut tries = 0;
        // Always create with O_EXCL, so an existing FIFO or device under this name is never
        // opened by accident (it would block, or reach hardware). Without the caller's
        // O_EXCL, an existing name is then pinned with O_PATH, checked to be a regular
        // file, and reopened: the check and the open see the same inode.
        let (fd, created) = loop {
            let attempt = {
                let _caller = self.as_caller(req)?;
                open_beneath(
                    p.fd.as_fd(),
                    name,
                    oflags | OFlags::CREATE | OFlags::EXCL,
                    Mode::from_raw_mode(mode & 0o7777),
                )
            };
            match attempt {
                Ok(fd) => break (fd, true),
                Err(e) if e.errno() == Errno::EEXIST && !exclusive => {}
                Err(e) => return Err(e),
            }
            let existing = match open_beneath(p.fd.as_fd(), name, OFlags::PATH, Mode::empty()) {
                Ok(fd) => fd,
                Err(e) if e.errno() == Errno::ENOENT && tries < CREATE_RETRIES => {
                    tries += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match FileKind::from_mode(stat_fd(existing.as_fd())?.stx_mode.into()) {
                Some(FileKind::File) => {}
                Some(FileKind::Directory) => return Err(Errno::EISDIR.into()),
                Some(FileKind::Symlink) => return Err(Errno::ELOOP.into()),
                _ => return Err(Errno::ENXIO.into()),
            }
            let _caller = self.as_caller(req)?;
            break (self.proc.reopen(existing.as_fd(), oflags)?, false);
        };
        if created || flags & open_flags::O_TRUNC != 0 {
            self.sync_data_change(fd.as_fd())?;
        }
        let node_fd = self.proc.reopen(fd.as_fd(), OFlags::PATH)?;
        let entry = self.finish_create(node_fd, created.then_some(mode), &p, false)?;
        let opened = Opened { handle: self.file_handle(fd, flags, writable), ..Opened::default() };
        Ok((entry, opened))
    }

    fn read(&self, _req: &Request, _node: NodeId, handle: Handle, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let fh = self.handles.file(handle)?;
        if misaligned(fh.direct, buf.as_ptr()) {
            let mut bounce = Aligned::new(buf.len());
            let n = pread_full(fh.fd.as_fd(), offset, bounce.slice())?;
            buf[..n].copy_from_slice(&bounce.slice()[..n]);
            return Ok(n);
        }
        pread_full(fh.fd.as_fd(), offset, buf)
    }

    fn write(
        &self,
        _req: &Request,
        _node: NodeId,
        handle: Handle,
        offset: u64,
        data: &[u8],
        _flags: i32,
    ) -> Result<usize> {
        self.check_writable()?;
        let fh = self.handles.file(handle)?;
        // Marked before writing, so a concurrent flush that misses this write's data can
        // only be one the caller did not order after it.
        fh.dirty.store(true, Ordering::Release);
        if misaligned(fh.direct, data.as_ptr()) {
            let mut bounce = Aligned::new(data.len());
            bounce.slice().copy_from_slice(data);
            return pwrite_full(fh.fd.as_fd(), offset, bounce.slice());
        }
        pwrite_full(fh.fd.as_fd(), offset, data)
    }

    fn flush(&self, _req: &Request, _node: NodeId, handle: Handle, _lock_owner: u64) -> Result<()> {
        match self.handles.get(handle)? {
            Open::File(fh) => self.sync_if_dirty(&fh),
            Open::Dir(_) => Ok(()),
        }
    }

    fn release(&self, _req: &Request, _node: NodeId, handle: Handle, _flags: i32, _flush: bool) -> Result<()> {
        match self.handles.remove(handle)? {
            Open::File(fh) => self.sync_if_dirty(&fh),
            Open::Dir(_) => Ok(()),
        }
    }

    fn fsync(&self, _req: &Request, _node: NodeId, handle: Handle, datasync: bool) -> Result<()> {
        let open = self.handles.get(handle)?;
        if let Open::File(fh) = &open {
            let was_dirty = fh.dirty.swap(false, Ordering::AcqRel);
            return self.sync_open(fh.fd.as_fd(), FileKind::File, datasync).inspect_err(|_| {
                if was_dirty {
                    fh.dirty.store(true, Ordering::Release);
                }
            });
        }
        self.sync_open(open.fd(), FileKind::Directory, datasync)
    }

    fn opendir(&self, _req: &Request, node: NodeId, _flags: i32) -> Result<Opened> {
        let n = self.node(node)?;
        if n.kind != FileKind::Directory {
            return Err(Errno::ENOTDIR.into());
        }
        let fd = self.proc.reopen(n.fd.as_fd(), OFlags::RDONLY | OFlags::DIRECTORY)?;
        let handle = self.handles.insert(Open::Dir(Arc::new(DirHandle::new(fd, node == ROOT_ID))));
        Ok(Opened { handle, ..Opened::default() })
    }

    fn readdir(
        &self,
        _req: &Request,
        _node: NodeId,
        handle: Handle,
        cookie: u64,
        sink: &mut dyn DirSink,
    ) -> Result<()> {
        let dh = self.handles.dir(handle)?;
        let mut buf = dh.buf.lock().unwrap_or_else(|e| e.into_inner());
        // The getdents offset (d_off) of an entry is the directory position just after it,
        // so seeking to a cookie resumes exactly after the last entry the host accepted,
        // however the page before it ended.
        rustix::fs::seek(&dh.fd, SeekFrom::Start(cookie)).map_err(err)?;
        let mut dir = RawDir::new(&dh.fd, buf.spare_capacity_mut());
        while let Some(entry) = dir.next() {
            let entry = entry.map_err(err)?;
            let name = entry.file_name().to_bytes();
            let next = entry.next_entry_cookie();
            if next == 0 {
                return Err(Error::with_message(Errno::EIO, "durable-io: backing filesystem gave a zero d_off"));
            }
            let ino = if dh.is_root && name == b".." { self.root_ino } else { entry.ino() };
            let kind = match dirent_kind(entry.file_type()) {
                Some(kind) => kind,
                // DT_UNKNOWN: some filesystems do not record the type in the directory.
                None => match rustix::fs::statat(&dh.fd, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => FileKind::from_mode(st.st_mode).unwrap_or(FileKind::File),
                    Err(rustix::io::Errno::NOENT) => continue,
                    Err(e) => return Err(err(e)),
                },
            };
            if !sink.add(&DirEntry { ino, kind, name, cookie: next }) {
                break;
            }
        }
        Ok(())
    }

    fn releasedir(&self, _req: &Request, _node: NodeId, handle: Handle) -> Result<()> {
        self.handles.remove(handle).map(drop)
    }

    fn fsyncdir(&self, _req: &Request, _node: NodeId, handle: Handle, datasync: bool) -> Result<()> {
        let open = self.handles.get(handle)?;
        let kind = if matches!(open, Open::Dir(_)) { FileKind::Directory } else { FileKind::File };
        self.sync_open(open.fd(), kind, datasync)
    }

    fn statfs(&self, _req: &Request, node: NodeId) -> Result<StatFs> {
        let n = self.node(node)?;
        let st = rustix::fs::fstatvfs(n.fd.as_fd()).map_err(err)?;
        Ok(StatFs {
            blocks: st.f_blocks,
            bfree: st.f_bfree,
            bavail: st.f_bavail,
            files: st.f_files,
            ffree: st.f_ffree,
            bsize: u32::try_from(st.f_bsize).unwrap_or(u32::MAX),
            namelen: u32::try_from(st.f_namemax).unwrap_or(255),
            frsize: u32::try_from(st.f_frsize).unwrap_or(u32::MAX),
        })
    }

    // Extended attributes go through the magic-link path: the kernel resolves it to the very
    // inode the node's fd holds, for every kind (symlinks and special files included) and
    // without opening it. The kernel's own rules then apply, e.g. EPERM for user.* on a
    // symlink.
    fn setxattr(&self, _req: &Request, node: NodeId, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        self.check_writable()?;
        let n = self.node(node)?;
        let flags = u32::try_from(flags).ok().and_then(XattrFlags::from_bits).ok_or(Errno::EINVAL)?;
        rustix::fs::setxattr(ProcFd::path(n.fd.as_fd()), name, value, flags).map_err(err)?;
        self.sync_change(Some((n.fd.as_fd(), n.kind)), &[])
    }

    fn getxattr(&self, _req: &Request, node: NodeId, name: &OsStr, buf: &mut [u8]) -> Result<usize> {
        let n = self.node(node)?;
        let path = ProcFd::path(n.fd.as_fd());
        // rustix does not treat an empty buffer as the size query the kernel does.
        if buf.is_empty() { rustix::fs::getxattr_query(path, name) } else { rustix::fs::getxattr(path, name, buf) }
            .map_err(err)
    }

    fn listxattr(&self, _req: &Request, node: NodeId, buf: &mut [u8]) -> Result<usize> {
        let n = self.node(node)?;
        let path = ProcFd::path(n.fd.as_fd());
        if buf.is_empty() { rustix::fs::listxattr_query(path) } else { rustix::fs::listxattr(path, buf) }.map_err(err)
    }

    fn removexattr(&self, _req: &Request, node: NodeId, name: &OsStr) -> Result<()> {
        self.check_writable()?;
        let n = self.node(node)?;
        rustix::fs::removexattr(ProcFd::path(n.fd.as_fd()), name).map_err(err)?;
        self.sync_change(Some((n.fd.as_fd(), n.kind)), &[])
    }

    fn fallocate(
        &self,
        _req: &Request,
        _node: NodeId,
        handle: Handle,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<()> {
        self.check_writable()?;
        let fh = self.handles.file(handle)?;
        let mode = u32::try_from(mode).map_err(|_| Errno::EINVAL)?;
        fh.dirty.store(true, Ordering::Release);
        rustix::fs::fallocate(&fh.fd, rustix::fs::FallocateFlags::from_bits_retain(mode), offset, length)
            .map_err(err)?;
        self.sync_data_change(fh.fd.as_fd())
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _node_in: NodeId,
        handle_in: Handle,
        offset_in: u64,
        _node_out: NodeId,
        handle_out: Handle,
        offset_out: u64,
        len: u64,
        flags: u32,
    ) -> Result<usize> {
        if flags != 0 {
            return Err(Errno::EINVAL.into());
        }
        self.check_writable()?;
        let fin = self.handles.file(handle_in)?;
        let fout = self.handles.file(handle_out)?;
        let (mut off_in, mut off_out) = (offset_in, offset_out);
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        fout.dirty.store(true, Ordering::Release);
        let n =
            rustix::fs::copy_file_range(&fin.fd, Some(&mut off_in), &fout.fd, Some(&mut off_out), len).map_err(err)?;
        self.sync_data_change(fout.fd.as_fd())?;
        Ok(n)
    }

    fn lseek(&self, _req: &Request, _node: NodeId, handle: Handle, offset: i64, whence: Whence) -> Result<u64> {
        let fh = self.handles.file(handle)?;
        let offset = u64::try_from(offset).map_err(|_| Errno::EINVAL)?;
        let pos = match whence {
            Whence::Data => SeekFrom::Data(offset),
            Whence::Hole => SeekFrom::Hole(offset),
            _ => {
                return Err(Error::with_message(Errno::EINVAL, "lseek: only SEEK_DATA and SEEK_HOLE reach a plugin"));
            }
        };
        rustix::fs::seek(&fh.fd, pos).map_err(err)
    }
}
