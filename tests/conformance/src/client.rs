//! The one interface the checks use: POSIX-style calls on paths relative to the root of
//! the filesystem under test. Two implementations: [`MountClient`] makes real system calls
//! on a mounted directory; [`DirectClient`] calls a plugin's [`FileSystem`] directly, doing
//! what the kernel would do (walking paths, `O_CREAT`/`O_EXCL`, reference counting).

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use plugfs_plugin_api::{
    Attr, DirEntry, DirSink, Errno, FileKind, FileSystem, Handle, NodeId, ROOT_ID, RenameFlags, Request, SetAttr,
    SetTime, Timestamp, Whence, open_flags,
};

/// The result of a client call: an errno on failure.
pub type R<T> = Result<T, Errno>;

/// What `stat` shows, reduced to what the checks compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Node type.
    pub kind: FileKind,
    /// Permission bits (`0o7777`).
    pub perm: u32,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Inode number.
    pub ino: u64,
    /// Access time.
    pub atime: Timestamp,
    /// Modification time.
    pub mtime: Timestamp,
    /// Device number.
    pub rdev: u32,
}

/// An open file, as a client-specific number.
pub type Fd = u64;

/// One time argument of `utimensat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeArg {
    /// This exact time.
    At(Timestamp),
    /// `UTIME_NOW`: the filesystem's current time.
    Now,
    /// `UTIME_OMIT`: leave it as it is.
    Omit,
}

/// POSIX calls on paths relative to the filesystem's root (`"a/b"`, no leading `/`).
pub trait Client: Sync {
    /// `lstat`.
    fn stat(&self, path: &str) -> R<Stat>;
    /// `mkdir`.
    fn mkdir(&self, path: &str, mode: u32) -> R<()>;
    /// `rmdir`.
    fn rmdir(&self, path: &str) -> R<()>;
    /// `unlink`.
    fn unlink(&self, path: &str) -> R<()>;
    /// `renameat2` with `flags` (`RENAME_NOREPLACE` = 1, `RENAME_EXCHANGE` = 2).
    fn rename(&self, from: &str, to: &str, flags: u32) -> R<()>;
    /// `link`.
    fn link(&self, existing: &str, new: &str) -> R<()>;
    /// `symlink(target, path)`.
    fn symlink(&self, target: &str, path: &str) -> R<()>;
    /// `readlink`.
    fn readlink(&self, path: &str) -> R<Vec<u8>>;
    /// `mknod`.
    fn mknod(&self, path: &str, mode: u32, rdev: u32) -> R<()>;
    /// `chmod`.
    fn chmod(&self, path: &str, mode: u32) -> R<()>;
    /// `lchown`.
    fn chown(&self, path: &str, uid: u32, gid: u32) -> R<()>;
    /// `truncate`.
    fn truncate(&self, path: &str, size: u64) -> R<()>;
    /// `utimensat` with nanoseconds.
    fn utimens(&self, path: &str, atime: Timestamp, mtime: Timestamp) -> R<()> {
        self.set_times(path, TimeArg::At(atime), TimeArg::At(mtime))
    }
    /// `utimensat` with `UTIME_NOW` and `UTIME_OMIT` as well as exact times.
    fn set_times(&self, path: &str, atime: TimeArg, mtime: TimeArg) -> R<()>;
    /// `open` with Linux flags; `mode` is used with `O_CREAT` (0o100).
    fn open(&self, path: &str, flags: i32, mode: u32) -> R<Fd>;
    /// `pread`.
    fn read(&self, fd: Fd, offset: u64, len: usize) -> R<Vec<u8>>;
    /// `pwrite` (or `write` for `O_APPEND` files).
    fn write(&self, fd: Fd, offset: u64, data: &[u8]) -> R<usize>;
    /// `fsync`.
    fn fsync(&self, fd: Fd) -> R<()>;
    /// `fallocate`.
    fn fallocate(&self, fd: Fd, mode: i32, offset: u64, len: u64) -> R<()>;
    /// `lseek` (only `SEEK_DATA`/`SEEK_HOLE` are interesting).
    fn lseek(&self, fd: Fd, offset: i64, whence: Whence) -> R<u64>;
    /// `copy_file_range`.
    fn copy_file_range(&self, from: Fd, from_off: u64, to: Fd, to_off: u64, len: u64) -> R<usize>;
    /// `close`.
    fn close(&self, fd: Fd) -> R<()>;
    /// The directory's entries, `.` and `..` included, with their types.
    fn readdir(&self, path: &str) -> R<Vec<(Vec<u8>, FileKind)>>;
    /// `lsetxattr`.
    fn setxattr(&self, path: &str, name: &str, value: &[u8], flags: i32) -> R<()>;
    /// `lgetxattr` into a buffer of `size` bytes (0 asks for the size).
    fn getxattr(&self, path: &str, name: &str, size: usize) -> R<Vec<u8>>;
    /// `llistxattr`: the names.
    fn listxattr(&self, path: &str) -> R<Vec<String>>;
    /// `lremovexattr`.
    fn removexattr(&self, path: &str, name: &str) -> R<()>;
    /// `statvfs`: (maximum name length, block size).
    fn statfs(&self) -> R<(u32, u32)>;
    /// How this client reaches the filesystem, for reports.
    fn describe(&self) -> String;
    /// Whether a kernel is in the loop (a mount): checks of what the kernel does on the
    /// plugin's behalf (symlink resolution, clearing set-id bits) need one.
    fn through_kernel(&self) -> bool;
}

// ---------------------------------------------------------------------------------------
// Through a mount: real system calls.

/// Real system calls on a mounted directory.
pub struct MountClient {
    root: PathBuf,
}

impl MountClient {
    /// A client for the filesystem mounted at `root`.
    pub fn new(root: &Path) -> Self {
        MountClient { root: root.to_path_buf() }
    }

    fn c(&self, path: &str) -> CString {
        let full = if path.is_empty() { self.root.clone() } else { self.root.join(path) };
        CString::new(full.as_os_str().as_bytes()).expect("paths in checks have no NUL")
    }
}

fn errno() -> Errno {
    Errno(std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO))
}

fn ok(rc: libc::c_int) -> R<()> {
    if rc < 0 { Err(errno()) } else { Ok(()) }
}

fn ts(t: libc::time_t, ns: i64) -> Timestamp {
    Timestamp::new(t, ns as u32)
}

impl Client for MountClient {
    fn stat(&self, path: &str) -> R<Stat> {
        let p = self.c(path);
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        ok(unsafe { libc::lstat(p.as_ptr(), &mut st) })?;
        Ok(Stat {
            kind: FileKind::from_mode(st.st_mode).ok_or(Errno::EIO)?,
            perm: st.st_mode & 0o7777,
            nlink: st.st_nlink as u32,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size as u64,
            ino: st.st_ino,
            atime: ts(st.st_atime, st.st_atime_nsec),
            mtime: ts(st.st_mtime, st.st_mtime_nsec),
            rdev: st.st_rdev as u32,
        })
    }
    fn mkdir(&self, path: &str, mode: u32) -> R<()> {
        ok(unsafe { libc::mkdir(self.c(path).as_ptr(), mode) })
    }
    fn rmdir(&self, path: &str) -> R<()> {
        ok(unsafe { libc::rmdir(self.c(path).as_ptr()) })
    }
    fn unlink(&self, path: &str) -> R<()> {
        ok(unsafe { libc::unlink(self.c(path).as_ptr()) })
    }
    fn rename(&self, from: &str, to: &str, flags: u32) -> R<()> {
        let (a, b) = (self.c(from), self.c(to));
        ok(unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), flags) })
    }
    fn link(&self, existing: &str, new: &str) -> R<()> {
        ok(unsafe { libc::link(self.c(existing).as_ptr(), self.c(new).as_ptr()) })
    }
    fn symlink(&self, target: &str, path: &str) -> R<()> {
        let t = CString::new(target).expect("no NUL");
        ok(unsafe { libc::symlink(t.as_ptr(), self.c(path).as_ptr()) })
    }
    fn readlink(&self, path: &str) -> R<Vec<u8>> {
        let mut buf = vec![0u8; 4096];
        let n = unsafe { libc::readlink(self.c(path).as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(errno());
        }
        buf.truncate(n as usize);
        Ok(buf)
    }
    fn mknod(&self, path: &str, mode: u32, rdev: u32) -> R<()> {
        ok(unsafe { libc::mknod(self.c(path).as_ptr(), mode, rdev as libc::dev_t) })
    }
    fn chmod(&self, path: &str, mode: u32) -> R<()> {
        ok(unsafe { libc::chmod(self.c(path).as_ptr(), mode) })
    }
    fn chown(&self, path: &str, uid: u32, gid: u32) -> R<()> {
        ok(unsafe { libc::lchown(self.c(path).as_ptr(), uid, gid) })
    }
    fn truncate(&self, path: &str, size: u64) -> R<()> {
        ok(unsafe { libc::truncate(self.c(path).as_ptr(), size as libc::off_t) })
    }
    fn set_times(&self, path: &str, atime: TimeArg, mtime: TimeArg) -> R<()> {
        let spec = |t: TimeArg| match t {
            TimeArg::At(t) => libc::timespec { tv_sec: t.secs, tv_nsec: t.nanos as i64 },
            TimeArg::Now => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
            TimeArg::Omit => libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        };
        let t = [spec(atime), spec(mtime)];
        ok(unsafe { libc::utimensat(libc::AT_FDCWD, self.c(path).as_ptr(), t.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
    }
    fn open(&self, path: &str, flags: i32, mode: u32) -> R<Fd> {
        let fd = unsafe { libc::open(self.c(path).as_ptr(), flags | libc::O_CLOEXEC, mode) };
        if fd < 0 { Err(errno()) } else { Ok(fd as Fd) }
    }
    fn read(&self, fd: Fd, offset: u64, len: usize) -> R<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            let n = unsafe {
                libc::pread(fd as i32, buf[got..].as_mut_ptr().cast(), len - got, (offset + got as u64) as i64)
            };
            if n < 0 {
                return Err(errno());
            }
            if n == 0 {
                break;
            }
            got += n as usize;
        }
        buf.truncate(got);
        Ok(buf)
    }
    fn write(&self, fd: Fd, offset: u64, data: &[u8]) -> R<usize> {
        let flags = unsafe { libc::fcntl(fd as i32, libc::F_GETFL) };
        let n = if flags >= 0 && flags & libc::O_APPEND != 0 {
            unsafe { libc::write(fd as i32, data.as_ptr().cast(), data.len()) }
        } else {
            unsafe { libc::pwrite(fd as i32, data.as_ptr().cast(), data.len(), offset as i64) }
        };
        if n < 0 { Err(errno()) } else { Ok(n as usize) }
    }
    fn fsync(&self, fd: Fd) -> R<()> {
        ok(unsafe { libc::fsync(fd as i32) })
    }
    fn fallocate(&self, fd: Fd, mode: i32, offset: u64, len: u64) -> R<()> {
        ok(unsafe { libc::fallocate(fd as i32, mode, offset as i64, len as i64) })
    }
    fn lseek(&self, fd: Fd, offset: i64, whence: Whence) -> R<u64> {
        let n = unsafe { libc::lseek(fd as i32, offset, whence.to_raw() as i32) };
        if n < 0 { Err(errno()) } else { Ok(n as u64) }
    }
    fn copy_file_range(&self, from: Fd, from_off: u64, to: Fd, to_off: u64, len: u64) -> R<usize> {
        let (mut a, mut b) = (from_off as i64, to_off as i64);
        let n = unsafe { libc::copy_file_range(from as i32, &mut a, to as i32, &mut b, len as usize, 0) };
        if n < 0 { Err(errno()) } else { Ok(n as usize) }
    }
    fn close(&self, fd: Fd) -> R<()> {
        ok(unsafe { libc::close(fd as i32) })
    }
    fn readdir(&self, path: &str) -> R<Vec<(Vec<u8>, FileKind)>> {
        let dir = unsafe { libc::opendir(self.c(path).as_ptr()) };
        if dir.is_null() {
            return Err(errno());
        }
        let mut out = Vec::new();
        loop {
            // readdir returns NULL at the end and on error; errno tells them apart.
            unsafe { *libc::__errno_location() = 0 };
            let e = unsafe { libc::readdir(dir) };
            if e.is_null() {
                let err = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                unsafe { libc::closedir(dir) };
                if err != 0 {
                    return Err(Errno(err));
                }
                return Ok(out);
            }
            let e = unsafe { &*e };
            let name = unsafe { std::ffi::CStr::from_ptr(e.d_name.as_ptr()) }.to_bytes().to_vec();
            let kind = match e.d_type {
                libc::DT_DIR => FileKind::Directory,
                libc::DT_LNK => FileKind::Symlink,
                libc::DT_FIFO => FileKind::Fifo,
                libc::DT_SOCK => FileKind::Socket,
                libc::DT_CHR => FileKind::CharDevice,
                libc::DT_BLK => FileKind::BlockDevice,
                _ => FileKind::File,
            };
            out.push((name, kind));
        }
    }
    fn setxattr(&self, path: &str, name: &str, value: &[u8], flags: i32) -> R<()> {
        let n = CString::new(name).expect("no NUL");
        ok(unsafe { libc::lsetxattr(self.c(path).as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), flags) })
    }
    fn getxattr(&self, path: &str, name: &str, size: usize) -> R<Vec<u8>> {
        let n = CString::new(name).expect("no NUL");
        let mut buf = vec![0u8; size];
        let got = unsafe { libc::lgetxattr(self.c(path).as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), size) };
        if got < 0 {
            return Err(errno());
        }
        if size == 0 {
            return Ok(vec![0; got as usize]);
        }
        buf.truncate(got as usize);
        Ok(buf)
    }
    fn listxattr(&self, path: &str) -> R<Vec<String>> {
        let mut buf = vec![0u8; 65536];
        let got = unsafe { libc::llistxattr(self.c(path).as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            return Err(errno());
        }
        Ok(split_names(&buf[..got as usize]))
    }
    fn removexattr(&self, path: &str, name: &str) -> R<()> {
        let n = CString::new(name).expect("no NUL");
        ok(unsafe { libc::lremovexattr(self.c(path).as_ptr(), n.as_ptr()) })
    }
    fn statfs(&self) -> R<(u32, u32)> {
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        ok(unsafe { libc::statvfs(self.c("").as_ptr(), &mut s) })?;
        Ok((s.f_namemax as u32, s.f_bsize as u32))
    }
    fn describe(&self) -> String {
        format!("through the mount at {}", self.root.display())
    }
    fn through_kernel(&self) -> bool {
        true
    }
}

fn split_names(buf: &[u8]) -> Vec<String> {
    buf.split(|b| *b == 0).filter(|n| !n.is_empty()).map(|n| String::from_utf8_lossy(n).into_owned()).collect()
}

// ---------------------------------------------------------------------------------------
// Directly through the plugin: what the kernel would do, done here.

/// Calls a [`FileSystem`] directly, as the kernel's VFS and the FUSE frontend would.
pub struct DirectClient {
    fs: Arc<dyn FileSystem>,
    req: Request,
    files: Mutex<HashMap<Fd, OpenFile>>,
    next_fd: Mutex<Fd>,
}

#[derive(Clone, Copy)]
struct OpenFile {
    node: NodeId,
    handle: Handle,
    flags: i32,
    /// Opened with `opendir`: closed with `releasedir`, and not a file for reads and writes.
    dir: bool,
}

impl DirectClient {
    /// A client calling `fs` as `req`'s user.
    pub fn new(fs: Arc<dyn FileSystem>, req: Request) -> Self {
        DirectClient { fs, req, files: Mutex::new(HashMap::new()), next_fd: Mutex::new(3) }
    }

    /// Resolves `path` to a node, holding one lookup reference on it (not on the root).
    fn walk(&self, path: &str) -> R<(NodeId, Attr)> {
        let mut node = ROOT_ID;
        let mut attr = self.fs.getattr(&self.req, ROOT_ID, None).map_err(|e| e.errno())?.attr;
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if attr.kind != FileKind::Directory {
                self.release_ref(node);
                return Err(Errno::ENOTDIR);
            }
            let found = self.fs.lookup(&self.req, node, OsStr::new(part));
            self.release_ref(node);
            let entry = found.map_err(|e| e.errno())?;
            node = entry.node;
            attr = entry.attr;
        }
        Ok((node, attr))
    }

    fn release_ref(&self, node: NodeId) {
        if node != ROOT_ID {
            self.fs.forget(node, 1);
        }
    }

    /// Resolves the parent of `path` and returns it with the last name.
    fn parent<'p>(&self, path: &'p str) -> R<(NodeId, &'p OsStr)> {
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (d, n),
            None => ("", path),
        };
        let (node, attr) = self.walk(dir)?;
        if attr.kind != FileKind::Directory {
            self.release_ref(node);
            return Err(Errno::ENOTDIR);
        }
        Ok((node, OsStr::new(name)))
    }

    /// Runs `f` on the node at `path`, then drops the reference the walk took.
    fn on<T>(&self, path: &str, f: impl FnOnce(NodeId, Attr) -> R<T>) -> R<T> {
        let (node, attr) = self.walk(path)?;
        let out = f(node, attr);
        self.release_ref(node);
        out
    }

    fn in_parent<T>(&self, path: &str, f: impl FnOnce(NodeId, &OsStr) -> R<T>) -> R<T> {
        let (parent, name) = self.parent(path)?;
        let out = f(parent, name);
        self.release_ref(parent);
        out
    }

    fn file(&self, fd: Fd) -> R<OpenFile> {
        match self.files.lock().expect("fd table").get(&fd).copied() {
            Some(f) if f.dir => Err(Errno::EISDIR),
            Some(f) => Ok(f),
            None => Err(Errno::EBADF),
        }
    }

    fn setattr(&self, path: &str, set: SetAttr) -> R<()> {
        self.on(path, |node, _| self.fs.setattr(&self.req, node, &set).map(|_| ()).map_err(|e| e.errno()))
    }
}

struct Collect(Vec<(Vec<u8>, FileKind, u64)>);
impl DirSink for Collect {
    fn add(&mut self, e: &DirEntry<'_>) -> bool {
        // A small page, so listings of any size exercise the cookie protocol.
        if self.0.len() >= 64 {
            return false;
        }
        self.0.push((e.name.to_vec(), e.kind, e.cookie));
        true
    }
}

impl Client for DirectClient {
    fn stat(&self, path: &str) -> R<Stat> {
        self.on(path, |_, a| {
            Ok(Stat {
                kind: a.kind,
                perm: u32::from(a.perm),
                nlink: a.nlink,
                uid: a.uid,
                gid: a.gid,
                size: a.size,
                ino: a.ino,
                atime: a.atime,
                mtime: a.mtime,
                rdev: a.rdev,
            })
        })
    }
    fn mkdir(&self, path: &str, mode: u32) -> R<()> {
        self.in_parent(path, |p, n| {
            let e = self.fs.mkdir(&self.req, p, n, mode).map_err(|e| e.errno())?;
            self.release_ref(e.node);
            Ok(())
        })
    }
    fn rmdir(&self, path: &str) -> R<()> {
        self.in_parent(path, |p, n| self.fs.rmdir(&self.req, p, n).map_err(|e| e.errno()))
    }
    fn unlink(&self, path: &str) -> R<()> {
        self.in_parent(path, |p, n| self.fs.unlink(&self.req, p, n).map_err(|e| e.errno()))
    }
    fn rename(&self, from: &str, to: &str, flags: u32) -> R<()> {
        self.in_parent(from, |p, n| {
            self.in_parent(to, |np, nn| {
                self.fs.rename(&self.req, p, n, np, nn, RenameFlags(flags)).map_err(|e| e.errno())
            })
        })
    }
    fn link(&self, existing: &str, new: &str) -> R<()> {
        self.on(existing, |node, _| {
            self.in_parent(new, |p, n| {
                let e = self.fs.link(&self.req, node, p, n).map_err(|e| e.errno())?;
                self.release_ref(e.node);
                Ok(())
            })
        })
    }
    fn symlink(&self, target: &str, path: &str) -> R<()> {
        self.in_parent(path, |p, n| {
            let e = self.fs.symlink(&self.req, p, n, OsStr::new(target)).map_err(|e| e.errno())?;
            self.release_ref(e.node);
            Ok(())
        })
    }
    fn readlink(&self, path: &str) -> R<Vec<u8>> {
        self.on(path, |node, _| {
            let mut buf = vec![0u8; 4096];
            let n = self.fs.readlink(&self.req, node, &mut buf).map_err(|e| e.errno())?;
            buf.truncate(n);
            Ok(buf)
        })
    }
    fn mknod(&self, path: &str, mode: u32, rdev: u32) -> R<()> {
        self.in_parent(path, |p, n| {
            let e = self.fs.mknod(&self.req, p, n, mode, rdev).map_err(|e| e.errno())?;
            self.release_ref(e.node);
            Ok(())
        })
    }
    fn chmod(&self, path: &str, mode: u32) -> R<()> {
        self.setattr(path, SetAttr { mode: Some(mode), ..SetAttr::default() })
    }
    fn chown(&self, path: &str, uid: u32, gid: u32) -> R<()> {
        self.setattr(path, SetAttr { uid: Some(uid), gid: Some(gid), ..SetAttr::default() })
    }
    fn truncate(&self, path: &str, size: u64) -> R<()> {
        self.setattr(path, SetAttr { size: Some(size), ..SetAttr::default() })
    }
    fn set_times(&self, path: &str, atime: TimeArg, mtime: TimeArg) -> R<()> {
        let arg = |t: TimeArg| match t {
            TimeArg::At(t) => Some(SetTime::At(t)),
            TimeArg::Now => Some(SetTime::Now),
            TimeArg::Omit => None,
        };
        let (atime, mtime) = (arg(atime), arg(mtime));
        if atime.is_none() && mtime.is_none() {
            return self.stat(path).map(|_| ()); // as utimensat: nothing to change
        }
        self.setattr(path, SetAttr { atime, mtime, ..SetAttr::default() })
    }
    fn open(&self, path: &str, flags: i32, mode: u32) -> R<Fd> {
        const O_CREAT: i32 = 0o100;
        let existing = self.walk(path);
        let (node, opened) = match existing {
            Ok(_) if flags & O_CREAT != 0 && flags & open_flags::O_EXCL != 0 => {
                let (node, _) = existing.expect("matched Ok");
                self.release_ref(node);
                return Err(Errno::EEXIST);
            }
            Ok((node, attr)) => {
                if attr.kind == FileKind::Directory && flags & open_flags::O_ACCMODE != open_flags::O_RDONLY {
                    self.release_ref(node);
                    return Err(Errno::EISDIR);
                }
                // The kernel opens a directory with opendir.
                let opened = if attr.kind == FileKind::Directory {
                    self.fs.opendir(&self.req, node, flags & !(O_CREAT | open_flags::O_EXCL))
                } else {
                    self.fs.open(&self.req, node, flags & !(O_CREAT | open_flags::O_EXCL))
                };
                match opened {
                    Ok(o) => (node, o),
                    Err(e) => {
                        self.release_ref(node);
                        return Err(e.errno());
                    }
                }
            }
            Err(Errno::ENOENT) if flags & O_CREAT != 0 => {
                let (entry, o) =
                    self.in_parent(path, |p, n| self.fs.create(&self.req, p, n, mode, flags).map_err(|e| e.errno()))?;
                (entry.node, o)
            }
            Err(e) => return Err(e),
        };
        let mut next = self.next_fd.lock().expect("fd counter");
        let fd = *next;
        *next += 1;
        // The reference from the walk or create is held while the file is open.
        let dir = matches!(existing, Ok((_, attr)) if attr.kind == FileKind::Directory);
        self.files.lock().expect("fd table").insert(fd, OpenFile { node, handle: opened.handle, flags, dir });
        Ok(fd)
    }
    fn read(&self, fd: Fd, offset: u64, len: usize) -> R<Vec<u8>> {
        let f = self.file(fd)?;
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            let n = self
                .fs
                .read(&self.req, f.node, f.handle, offset + got as u64, &mut buf[got..])
                .map_err(|e| e.errno())?;
            if n == 0 {
                break;
            }
            got += n;
        }
        buf.truncate(got);
        Ok(buf)
    }
    fn write(&self, fd: Fd, offset: u64, data: &[u8]) -> R<usize> {
        let f = self.file(fd)?;
        if f.flags & open_flags::O_ACCMODE == open_flags::O_RDONLY {
            return Err(Errno::EBADF);
        }
        self.fs.write(&self.req, f.node, f.handle, offset, data, f.flags).map_err(|e| e.errno())
    }
    fn fsync(&self, fd: Fd) -> R<()> {
        let f = self.file(fd)?;
        self.fs.fsync(&self.req, f.node, f.handle, false).map_err(|e| e.errno())
    }
    fn fallocate(&self, fd: Fd, mode: i32, offset: u64, len: u64) -> R<()> {
        let f = self.file(fd)?;
        self.fs.fallocate(&self.req, f.node, f.handle, offset, len, mode).map_err(|e| e.errno())
    }
    fn lseek(&self, fd: Fd, offset: i64, whence: Whence) -> R<u64> {
        let f = self.file(fd)?;
        self.fs.lseek(&self.req, f.node, f.handle, offset, whence).map_err(|e| e.errno())
    }
    fn copy_file_range(&self, from: Fd, from_off: u64, to: Fd, to_off: u64, len: u64) -> R<usize> {
        let (a, b) = (self.file(from)?, self.file(to)?);
        self.fs
            .copy_file_range(&self.req, a.node, a.handle, from_off, b.node, b.handle, to_off, len, 0)
            .map_err(|e| e.errno())
    }
    fn close(&self, fd: Fd) -> R<()> {
        let f = self.files.lock().expect("fd table").remove(&fd).ok_or(Errno::EBADF)?;
        if f.dir {
            let released = self.fs.releasedir(&self.req, f.node, f.handle);
            self.release_ref(f.node);
            return released.map_err(|e| e.errno());
        }
        let flushed = self.fs.flush(&self.req, f.node, f.handle, 0);
        let released = self.fs.release(&self.req, f.node, f.handle, f.flags, true);
        self.release_ref(f.node);
        flushed.and(released).map_err(|e| e.errno())
    }
    fn readdir(&self, path: &str) -> R<Vec<(Vec<u8>, FileKind)>> {
        self.on(path, |node, attr| {
            if attr.kind != FileKind::Directory {
                return Err(Errno::ENOTDIR);
            }
            let dh = self.fs.opendir(&self.req, node, 0).map_err(|e| e.errno())?;
            let mut out = Vec::new();
            let mut cookie = 0;
            let result = loop {
                let mut page = Collect(Vec::new());
                if let Err(e) = self.fs.readdir(&self.req, node, dh.handle, cookie, &mut page) {
                    break Err(e.errno());
                }
                let Some(last) = page.0.last() else { break Ok(()) };
                cookie = last.2;
                out.extend(page.0.into_iter().map(|(n, k, _)| (n, k)));
                if out.len() > 1_000_000 {
                    break Err(Errno::ELOOP); // a plugin whose cookies never advance
                }
            };
            let _ = self.fs.releasedir(&self.req, node, dh.handle);
            result.map(|()| out)
        })
    }
    fn setxattr(&self, path: &str, name: &str, value: &[u8], flags: i32) -> R<()> {
        self.on(path, |node, _| {
            self.fs.setxattr(&self.req, node, OsStr::new(name), value, flags).map_err(|e| e.errno())
        })
    }
    fn getxattr(&self, path: &str, name: &str, size: usize) -> R<Vec<u8>> {
        self.on(path, |node, _| {
            let mut buf = vec![0u8; size];
            let n = self.fs.getxattr(&self.req, node, OsStr::new(name), &mut buf).map_err(|e| e.errno())?;
            if size == 0 {
                return Ok(vec![0; n]);
            }
            buf.truncate(n);
            Ok(buf)
        })
    }
    fn listxattr(&self, path: &str) -> R<Vec<String>> {
        self.on(path, |node, _| {
            let mut buf = vec![0u8; 65536];
            let n = self.fs.listxattr(&self.req, node, &mut buf).map_err(|e| e.errno())?;
            Ok(split_names(&buf[..n]))
        })
    }
    fn removexattr(&self, path: &str, name: &str) -> R<()> {
        self.on(path, |node, _| self.fs.removexattr(&self.req, node, OsStr::new(name)).map_err(|e| e.errno()))
    }
    fn statfs(&self) -> R<(u32, u32)> {
        let s = self.fs.statfs(&self.req, ROOT_ID).map_err(|e| e.errno())?;
        Ok((s.namelen, s.bsize))
    }
    fn describe(&self) -> String {
        "directly through the plugin API".into()
    }
    fn through_kernel(&self) -> bool {
        false
    }
}
