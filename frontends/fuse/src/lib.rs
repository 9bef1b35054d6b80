//! # plugfs FUSE frontend
//!
//! Presents a [`FileSystem`] to the Linux kernel through FUSE, using `fuser` (its pure-Rust
//! mount: `mount(2)` as root, the setuid `fusermount3` helper otherwise).
//!
//! ```no_run
//! # use std::{path::Path, sync::Arc};
//! # fn demo(fs: Arc<dyn plugfs_plugin_api::FileSystem>) -> std::io::Result<()> {
//! let mount = plugfs_fuse::mount(fs, Path::new("/mnt/scratch"), &plugfs_fuse::FuseOptions::default())?;
//! // ... serve until asked to stop ...
//! mount.unmount()?;
//! # Ok(()) }
//! ```
//!
//! The adapter is thin: every kernel request becomes one [`FileSystem`] call (`readdirplus`
//! is the exception: a `readdir` and then a `lookup` per entry), with the plugin's TTLs,
//! generation numbers and errno passed through unchanged. Filesystem semantics live in the
//! plugin; permission checks live in the kernel (`default_permissions`).
//!
//! Two limits of `fuser` 0.18 show through:
//!
//! - it sends one number as both the kernel's node id and `st_ino`, so through FUSE
//!   `stat` reports the plugin's [`NodeId`] as the inode number, not [`Attr::ino`]
//!   (plain `readdir` still reports the plugin's `d_ino`);
//! - its `batch_forget` takes a type it does not export, so batched forgets arrive through
//!   its default, one `forget` call per node.

#![warn(missing_docs)]

mod passthrough;
mod shutdown;
mod unmount;
pub mod watchdog;

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackgroundSession, Config, CopyFileRangeFlags, FileAttr, FileHandle, FileType, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, SessionACL, TimeOrNow, WriteFlags,
};
use plugfs_plugin_api::{
    Attr, DirEntry, DirPlusSink, DirSink, Entry, Errno, Error, FileKind, FileSystem, NodeId, Opened, RenameFlags,
    Request, SetAttr, SetTime, Timestamp, Whence,
};
use tracing::{debug, error, info, warn};

use crate::passthrough::Backing;
pub use crate::shutdown::Released;
use crate::shutdown::{Gate, Kind, OpenHandles};
pub use crate::unmount::force_unmount;
use crate::unmount::stop_session;

/// How a filesystem is mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FuseOptions {
    /// Mount read-only (the kernel refuses every change with `EROFS`).
    pub read_only: bool,
    /// Let users other than the one who mounted use the mount (`allow_other`). A non-root
    /// mounter needs `user_allow_other` in `/etc/fuse.conf`. Default: false, and then the
    /// kernel refuses requests from any other user, root included.
    pub allow_other: bool,
    /// Have `fusermount3` unmount the filesystem when this process ends, however it ends.
    /// `fusermount3` accepts this only together with `allow_other`; without
    /// [`allow_other`](Self::allow_other) the mount gets `allow_other` at the kernel level
    /// and the frontend itself refuses (`EACCES`) requests from anyone but the mounting
    /// user and root (fuser's `allow_root` emulation). A non-root mounter therefore needs
    /// `user_allow_other` in `/etc/fuse.conf` for this option.
    pub auto_unmount: bool,
    /// Worker threads serving kernel requests, each on its own cloned `/dev/fuse` fd.
    pub threads: usize,
    /// The source shown in `/proc/mounts` and `df` (`fsname=`).
    pub fsname: String,
    /// The type shown as `fuse.<subtype>` in `/proc/mounts` (`subtype=`).
    pub subtype: String,
    /// Let the kernel check permissions from the mode, owner and group the plugin reports
    /// (`default_permissions`). Without it plugfs checks nothing: every caller the mount
    /// admits may do everything.
    pub default_permissions: bool,
    /// Use the kernel's FUSE passthrough for files whose plugin hands over a backing
    /// descriptor ([`Opened::backing_fd`]): their reads, writes and mmap then go to the
    /// backing file without this process. Used only where the kernel offers it and the
    /// host has CAP_SYS_ADMIN; the mount logs once which path it takes and why.
    pub passthrough: bool,
}

impl Default for FuseOptions {
    fn default() -> Self {
        FuseOptions {
            read_only: false,
            allow_other: false,
            auto_unmount: false,
            threads: default_threads(),
            fsname: "plugfs".to_string(),
            subtype: "plugfs".to_string(),
            default_permissions: true,
            passthrough: true,
        }
    }
}

/// Worker threads by default: two per core (a worker waits in the plugin's IO as often
/// as it computes), at least 4 and at most 64.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(4, |n| n.get() * 2).clamp(4, 64)
}

/// Requests of the data path that reached this process (for tests and metrics: with
/// passthrough, a file's reads and writes never arrive here).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataRequests {
    /// `READ` requests.
    pub reads: u64,
    /// `WRITE` requests.
    pub writes: u64,
    /// Opens answered with passthrough.
    pub passthrough_opens: u64,
    /// `FLUSH` requests (one per `close(2)`, unless the plugin said `no_flush`).
    pub flushes: u64,
    /// `GETXATTR` requests. Without `FUSE_HANDLE_KILLPRIV_V2` the kernel sends one for
    /// `security.capability` before each `write(2)`.
    pub getxattrs: u64,
}

/// Name lookups that reached this process (for tests and metrics: with negative entries,
/// a repeated lookup of a missing name is answered by the kernel's cache).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LookupRequests {
    /// `LOOKUP` requests.
    pub lookups: u64,
    /// Of those, answered with a negative entry (the plugin's `ENOENT`, cached by the
    /// kernel for the mount's [`Capabilities::negative_entry_ttl`]).
    ///
    /// [`Capabilities::negative_entry_ttl`]: plugfs_plugin_api::Capabilities::negative_entry_ttl
    pub negative_entries: u64,
}

/// A mounted filesystem being served by background threads. Dropping it unmounts (see
/// [`FuseMount::unmount`]), logging any error.
pub struct FuseMount {
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
    fs: Arc<dyn FileSystem>,
    state: Arc<MountState>,
}

impl std::fmt::Debug for FuseMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FuseMount").field("mountpoint", &self.mountpoint).field("state", &self.state).finish()
    }
}

impl FuseMount {
    /// Where the filesystem is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Whether the session has ended: the filesystem was unmounted from outside
    /// (`fusermount3 -u`, `umount`) or the connection was aborted.
    pub fn is_finished(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.guard.is_finished())
    }

    /// Unmounts the filesystem and waits for the worker threads to end.
    ///
    /// If files on it are still open the unmount is busy: the mount is then detached
    /// lazily (it disappears from the namespace at once and ends when the last file is
    /// closed), the workers are left serving those files, and the `EBUSY`-style error is
    /// returned.
    pub fn unmount(mut self) -> io::Result<()> {
        let Some(session) = self.session.take() else { return Ok(()) };
        stop_session(session, &self.mountpoint)
    }

    /// Begins a shutdown that loses nothing: from now on every new request is refused
    /// with `EIO`, except those that give something back (`release`, `releasedir`,
    /// `flush`, `forget`), which still reach the plugin. Requests already being served
    /// go on; [`in_flight`](Self::in_flight) counts them. Finish with
    /// [`finish_shutdown`](Self::finish_shutdown).
    pub fn begin_shutdown(&self) {
        self.state.gate.close();
    }

    /// Requests being served right now.
    pub fn in_flight(&self) -> usize {
        self.state.gate.in_flight()
    }

    /// Files and directories the kernel holds open (handed out and not yet released).
    pub fn open_handles(&self) -> usize {
        self.state.handles.len()
    }

    /// The data requests served so far.
    pub fn data_requests(&self) -> DataRequests {
        DataRequests {
            reads: self.state.reads.load(Ordering::Relaxed),
            writes: self.state.writes.load(Ordering::Relaxed),
            passthrough_opens: self.state.passthrough_opens.load(Ordering::Relaxed),
            flushes: self.state.flushes.load(Ordering::Relaxed),
            getxattrs: self.state.getxattrs.load(Ordering::Relaxed),
        }
    }

    /// The `LOOKUP` requests served so far.
    pub fn lookup_requests(&self) -> LookupRequests {
        LookupRequests {
            lookups: self.state.lookups.load(Ordering::Relaxed),
            negative_entries: self.state.negative_entries.load(Ordering::Relaxed),
        }
    }

    /// Backing files registered with the kernel now (one per node open in passthrough).
    pub fn backing_files(&self) -> usize {
        self.state.backing.len()
    }

    /// Ends a shutdown begun with [`begin_shutdown`](Self::begin_shutdown): releases every
    /// handle the kernel still holds through the plugin (`release` with a flush, or
    /// `releasedir`), as the last `close` of each would, then unmounts as
    /// [`unmount`](Self::unmount) does. Call it once the requests in flight have ended,
    /// or when waiting longer is pointless; a handle still in use by a request is released
    /// all the same.
    ///
    /// Returns what was released and how the unmount went: a busy mount (files still
    /// open) is detached lazily, and its later requests are refused.
    pub fn finish_shutdown(mut self) -> (Released, io::Result<()>) {
        self.state.gate.close();
        let released = self.state.handles.release_all(self.fs.as_ref());
        self.state.backing.clear();
        let stuck = self.state.gate.in_flight();
        let unmounted = match self.session.take() {
            // A worker still inside the plugin would never let the session be joined:
            // detach the mount and leave the workers to the end of the process.
            Some(session) if stuck > 0 => crate::unmount::kernel_unmount(&self.mountpoint, true).and_then(|()| {
                drop(session);
                Err(io::Error::other(format!("{stuck} request(s) still in flight; detached it lazily")))
            }),
            Some(session) => stop_session(session, &self.mountpoint),
            None => Ok(()),
        };
        (released, unmounted)
    }

    /// A handle to tell the kernel to drop what it caches of this mount (see
    /// [`Invalidator`]); `None` once the session is gone.
    pub fn invalidator(&self) -> Option<Invalidator> {
        let session = self.session.as_ref()?;
        Some(Invalidator { notifier: session.notifier(), state: Arc::clone(&self.state) })
    }

    /// Waits until the session ends on its own, i.e. until someone unmounts the
    /// filesystem from outside, and returns how the session ended.
    pub fn join(mut self) -> io::Result<()> {
        match self.session.take() {
            Some(session) => session.join(),
            None => Ok(()),
        }
    }
}

impl Drop for FuseMount {
    fn drop(&mut self) {
        if let Some(session) = self.session.take()
            && let Err(e) = stop_session(session, &self.mountpoint)
        {
            warn!(mountpoint = %self.mountpoint.display(), error = %e, "unmount on drop failed");
        }
    }
}

/// Tells the kernel to drop entries and attributes it caches for a mount (FUSE's
/// `notify_inval_entry` and `notify_inval_inode`, through fuser's `Notifier`), so the next
/// access asks the filesystem again; and says which handles the kernel holds open. The
/// host uses it when a mount switches to another backend under the same mountpoint.
///
/// Do not call it from inside a request of the same mount: the kernel may hold locks that
/// the invalidation waits for.
#[derive(Clone)]
pub struct Invalidator {
    notifier: fuser::Notifier,
    state: Arc<MountState>,
}

impl std::fmt::Debug for Invalidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invalidator").finish_non_exhaustive()
    }
}

/// The kernel answers ENOENT for what it does not cache: nothing to drop, no error.
fn nothing_cached_is_fine(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

impl Invalidator {
    /// Drops the kernel's cached entry `name` in directory `parent` (and, for a directory,
    /// the entries below it that are not in use). Not cached is not an error.
    pub fn inval_entry(&self, parent: NodeId, name: &OsStr) -> io::Result<()> {
        nothing_cached_is_fine(self.notifier.inval_entry(INodeNo(parent), name))
    }

    /// Drops the kernel's cached attributes of `node` and its cached data from `offset`,
    /// `len` bytes (0: to the end; a negative `offset`: attributes only). Not cached is
    /// not an error.
    pub fn inval_inode(&self, node: NodeId, offset: i64, len: i64) -> io::Result<()> {
        nothing_cached_is_fine(self.notifier.inval_inode(INodeNo(node), offset, len))
    }

    /// The handles the kernel holds open now, each with whether it is a directory's.
    pub fn open_handles(&self) -> Vec<(bool, u64)> {
        self.state.handles.snapshot()
    }

    /// Waits until every request that reached this mount before the call has been
    /// answered (its reply sent, the handles it opened or released recorded), at most
    /// `timeout`; returns whether they all were.
    pub fn wait_for_earlier_requests(&self, timeout: Duration) -> bool {
        self.state.gate.barrier(timeout)
    }
}

/// Whether this process may mount with `allow_other`: root may; another user only where
/// /etc/fuse.conf has a `user_allow_other` line.
fn may_allow_other() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    std::fs::read_to_string("/etc/fuse.conf")
        .is_ok_and(|conf| conf.lines().any(|l| l.split('#').next().unwrap_or("").trim() == "user_allow_other"))
}

/// Mounts `fs` at `mountpoint` and serves it from background threads until the returned
/// [`FuseMount`] is unmounted or dropped, or the filesystem is unmounted from outside.
///
/// Returns once the kernel has completed the FUSE handshake, so the mount is usable at
/// once. The plugin sees each caller's uid, gid and pid in its [`Request`]; files are
/// created as the calling user.
pub fn mount(fs: Arc<dyn FileSystem>, mountpoint: &Path, options: &FuseOptions) -> io::Result<FuseMount> {
    let mut mount_options = vec![MountOption::FSName(options.fsname.clone())];
    if !options.subtype.is_empty() {
        mount_options.push(MountOption::Subtype(options.subtype.clone()));
    }
    if options.default_permissions {
        mount_options.push(MountOption::DefaultPermissions);
    }
    if options.read_only {
        mount_options.push(MountOption::RO);
    }
    // fuser refuses auto_unmount with the owner-only ACL, because fusermount needs
    // allow_other for it; RootAndOwner mounts with allow_other and filters in fuser. A user
    // other than root gets allow_other only where /etc/fuse.conf says `user_allow_other`;
    // elsewhere fusermount3 would refuse the whole mount, so such a host mounts without
    // fusermount3's watcher and relies on its own watchdog (the host starts it for every
    // mount with auto_unmount).
    let auto_unmount = options.auto_unmount && (options.allow_other || may_allow_other());
    if options.auto_unmount && !auto_unmount {
        info!(
            mountpoint = %mountpoint.display(),
            "auto_unmount without fusermount3's watcher: it needs allow_other, which /etc/fuse.conf does not \
             allow users other than root (user_allow_other); the host's watchdog unmounts after a crash"
        );
    }
    if auto_unmount {
        mount_options.push(MountOption::AutoUnmount);
    }
    let mut config = Config::default();
    config.mount_options = mount_options;
    config.acl = match (options.allow_other, auto_unmount) {
        (true, _) => SessionACL::All,
        (false, true) => SessionACL::RootAndOwner,
        (false, false) => SessionACL::Owner,
    };
    // fuser serves from several threads (each with its own cloned fd) on Linux only.
    let linux = cfg!(target_os = "linux");
    config.n_threads = Some(if linux { options.threads.max(1) } else { 1 });
    config.clone_fd = linux;

    let state = Arc::new(MountState::default());
    let adapter = FuseAdapter {
        fs: Arc::clone(&fs),
        state: Arc::clone(&state),
        passthrough: options.passthrough,
        mountpoint: mountpoint.to_path_buf(),
    };
    let session = fuser::Session::new(adapter, mountpoint, &config)?;
    let session = session.spawn()?;
    Ok(FuseMount { session: Some(session), mountpoint: mountpoint.to_path_buf(), fs, state })
}

// ---------------------------------------------------------------------------------------
// The adapter: fuser::Filesystem over plugfs_plugin_api::FileSystem
// ---------------------------------------------------------------------------------------

std::thread_local! {
    /// Each worker thread's read buffer (see `FuseAdapter::read`).
    static READ_BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

struct FuseAdapter {
    fs: Arc<dyn FileSystem>,
    state: Arc<MountState>,
    /// [`FuseOptions::passthrough`].
    passthrough: bool,
    /// For the log line that says which data path the mount uses.
    mountpoint: PathBuf,
}

/// What the adapter and the [`FuseMount`] share: for shutting down, the passthrough
/// registrations, and the request counts.
#[derive(Debug, Default)]
struct MountState {
    gate: Gate,
    handles: OpenHandles,
    backing: Backing,
    reads: AtomicU64,
    writes: AtomicU64,
    passthrough_opens: AtomicU64,
    lookups: AtomicU64,
    negative_entries: AtomicU64,
    flushes: AtomicU64,
    getxattrs: AtomicU64,
    /// The kernel was told this process kills privileges itself
    /// (`FUSE_HANDLE_KILLPRIV_V2`); see [`FuseAdapter::kill_privs`].
    kill_privs: AtomicBool,
}

/// The answer to requests that arrive after shutdown began.
fn shutting_down(op: &'static str) -> fuser::Errno {
    debug!(op, "refused: the mount is shutting down");
    fuser::Errno::from_i32(libc::EIO)
}

fn request(req: &fuser::Request) -> Request {
    Request { uid: req.uid(), gid: req.gid(), pid: req.pid() }
}

/// Logs a failed plugin call and converts its errno (already Linux's numbers).
fn fail(op: &'static str, node: u64, error: &Error) -> fuser::Errno {
    debug!(op, node, errno = ?error.errno(), message = error.message().unwrap_or(""), "plugin call failed");
    let errno = error.errno().0;
    // Linux rejects a FUSE reply whose error is 512 or more without completing the request
    // (the caller would hang until killed). The loader lets errnos up to 4095 through, for
    // other frontends; here they become EIO.
    if !(1..KERNEL_ERRNO_LIMIT).contains(&errno) {
        error!(op, node, errno, "an errno the kernel does not accept; answering EIO");
        return fuser::Errno::EIO;
    }
    fuser::Errno::from_i32(errno)
}

/// The first errno Linux's FUSE refuses in a reply (`fuse_dev_do_write`).
const KERNEL_ERRNO_LIMIT: i32 = 512;

/// Refuses names a plugin must never see. The kernel never sends them; this is defence
/// against a confused caller, not a filesystem rule.
fn check_name(op: &'static str, node: u64, name: &OsStr) -> Result<(), fuser::Errno> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
        return Err(fail(op, node, &Error::with_message(Errno::EINVAL, format!("invalid name {name:?}"))));
    }
    Ok(())
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::BlockDevice => FileType::BlockDevice,
        FileKind::CharDevice => FileType::CharDevice,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
    }
}

/// Converts without panicking on times `SystemTime` cannot hold (clamped to the epoch).
fn system_time(t: Timestamp) -> SystemTime {
    let nanos = Duration::from_nanos(u64::from(t.nanos.min(999_999_999)));
    let time = if t.secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(t.secs as u64))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(t.secs.unsigned_abs()))
    };
    time.and_then(|t| t.checked_add(nanos)).unwrap_or(UNIX_EPOCH)
}

fn set_time(t: TimeOrNow) -> SetTime {
    match t {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(t) => SetTime::At(Timestamp::from(t)),
    }
}

/// The largest read or write request this frontend asks the kernel for (its maximum,
/// 256 pages).
const MAX_REQUEST: u32 = 1 << 20;

/// fuser sends `FileAttr::ino` as the node id too, so it must be the node id.
fn file_attr(node: NodeId, a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(node),
        size: a.size,
        blocks: a.blocks,
        atime: system_time(a.atime),
        mtime: system_time(a.mtime),
        ctime: system_time(a.ctime),
        crtime: system_time(a.crtime),
        kind: file_type(a.kind),
        perm: a.perm & 0o7777,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: io_block_size(a),
        flags: 0,
    }
}

/// `st_blksize` for a node: for regular files at least one full request. Every `read(2)`
/// or `write(2)` that does not hit the page cache is a round trip to this process, and
/// tools size their buffers from `st_blksize` (`cp` and `cat` use 128 KiB below it), so a
/// plugin's cluster or block size would cost several round trips per request the kernel
/// could carry in one: a 512 MiB `cp` into a fat mount ran at 680 MiB/s with 128 KiB
/// writes and 950 with 1 MiB.
fn io_block_size(a: &Attr) -> u32 {
    match a.kind {
        FileKind::File => a.blksize.max(MAX_REQUEST),
        _ => a.blksize,
    }
}

fn reply_entry(reply: ReplyEntry, e: &Entry) {
    reply.entry_with_ttls(&e.attr_ttl, &e.entry_ttl, &file_attr(e.node, &e.attr), Generation(e.generation));
}

/// A negative entry: "no such name", which the kernel caches for `ttl` (node id 0 with an
/// entry timeout; an `ENOENT` error reply is never cached). A creation through the mount
/// replaces it; nothing else drops it before `ttl` but an `inval_entry` notification.
fn reply_negative(reply: ReplyEntry, ttl: Duration) {
    let attr = file_attr(0, &Attr { kind: FileKind::File, ..Attr::default() });
    reply.entry_with_ttls(&Duration::ZERO, &ttl, &attr, Generation(0));
}

fn fopen_flags(o: &Opened) -> FopenFlags {
    let mut flags = FopenFlags::empty();
    flags.set(FopenFlags::FOPEN_DIRECT_IO, o.direct_io);
    flags.set(FopenFlags::FOPEN_KEEP_CACHE, o.keep_cache);
    flags.set(FopenFlags::FOPEN_NONSEEKABLE, o.nonseekable);
    // The kernel then skips FLUSH on close (it still sends it with a writeback cache,
    // which this frontend never asks for).
    flags.set(FopenFlags::FOPEN_NOFLUSH, o.no_flush);
    flags
}

/// Whether a plugin's directory entry name is one the kernel accepts (it fails the whole
/// listing with `EIO` otherwise).
fn valid_dirent_name(name: &[u8]) -> bool {
    !name.is_empty() && name.len() <= 1024 && !name.contains(&b'/')
}

/// `readdir` straight into the kernel's reply buffer.
struct DirectorySink<'a> {
    reply: &'a mut ReplyDirectory,
}

impl DirSink for DirectorySink<'_> {
    fn add(&mut self, e: &DirEntry<'_>) -> bool {
        if !valid_dirent_name(e.name) {
            warn!(name = ?String::from_utf8_lossy(e.name), "plugin listed an invalid name; skipped");
            return true;
        }
        // fuser's `add` answers "full" (and adds nothing); the sink answers "accepted".
        !self.reply.add(INodeNo(e.ino), e.cookie, file_type(e.kind), OsStr::from_bytes(e.name))
    }
}

/// `readdirplus` straight into the kernel's reply buffer.
struct DirectoryPlusSink<'a> {
    reply: &'a mut ReplyDirectoryPlus,
}

impl DirPlusSink for DirectoryPlusSink<'_> {
    fn add(&mut self, e: &DirEntry<'_>, entry: &Entry) -> bool {
        // Names were checked by the loader, which also gives back the reference of an
        // entry it drops; a frontend cannot, so it takes what it is given.
        let name = OsStr::from_bytes(e.name);
        let full = if e.name == b"." || e.name == b".." {
            // The kernel takes no reference for these and ignores their attributes.
            let attr = file_attr(e.ino, &Attr { ino: e.ino, kind: e.kind, ..Attr::default() });
            self.reply.add(INodeNo(e.ino), e.cookie, name, &Duration::ZERO, &attr, Generation(0))
        } else {
            // fuser has one TTL for both: use the shorter so neither is cached too long.
            let ttl = entry.entry_ttl.min(entry.attr_ttl);
            let attr = file_attr(entry.node, &entry.attr);
            self.reply.add(INodeNo(entry.node), e.cookie, name, &ttl, &attr, Generation(entry.generation))
        };
        // fuser's `add` answers "full" (and adds nothing); the sink answers "accepted".
        !full
    }
}

impl FuseAdapter {
    /// How long the kernel may cache a missing name: the mount's capability, asked at each
    /// `ENOENT` (a cheap copy; the host may swap the backend under the mount), or `None`.
    fn negative_ttl(&self) -> Option<Duration> {
        self.fs.capabilities().map(|c| c.negative_entry_ttl).filter(|ttl| !ttl.is_zero())
    }

    fn count_passthrough_open(&self) {
        self.state.passthrough_opens.fetch_add(1, Ordering::Relaxed);
    }

    /// What the kernel's `file_remove_privs` does before a write, a truncation or an
    /// fallocate, done here because the mount asked for `FUSE_HANDLE_KILLPRIV_V2` (see
    /// `init`): remove the file capabilities (`security.capability`), whoever writes, and
    /// if `suid_sgid` (the caller may lack `CAP_FSETID`) clear set-user-ID, and
    /// set-group-ID where the group may execute. Done as root, as the kernel does it
    /// (`ATTR_FORCE`): the writer need not own the file. Nothing on a mount without
    /// the flag (the kernel then does it itself, at the price of a `GETXATTR` round trip
    /// per `write(2)`). Failures are logged, never reported: the kernel ignores them too
    /// where a filesystem has no xattrs or modes.
    fn kill_privs(&self, req: &fuser::Request, node: u64, suid_sgid: bool) -> Option<u16> {
        if !self.state.kill_privs.load(Ordering::Relaxed) {
            return None;
        }
        let root = Request { uid: 0, gid: 0, pid: req.pid() };
        // Only where the plugin stores xattrs: elsewhere there is nothing to remove, and a
        // refused call per write would only add to the mount's error counts.
        if self.fs.capabilities().is_some_and(|c| c.xattrs) {
            match self.fs.removexattr(&root, node, OsStr::new("security.capability")) {
                Ok(()) => {}
                Err(e) if matches!(e.errno(), Errno::ENODATA | Errno::ENOTSUP | Errno::ENOSYS | Errno::EROFS) => {}
                Err(e) => debug!(node, errno = ?e.errno(), "could not remove security.capability before a write"),
            }
        }
        if !suid_sgid {
            return None;
        }
        let attr = self.fs.getattr(&root, node, None).ok()?.attr;
        let mode = attr.perm & 0o7777;
        let killed = killed_mode(mode);
        if attr.kind != FileKind::File || killed == mode {
            return None;
        }
        let set = SetAttr { mode: Some(u32::from(killed)), ..SetAttr::default() };
        match self.fs.setattr(&root, node, &set) {
            Ok(_) => Some(killed),
            Err(e) => {
                warn!(node, errno = ?e.errno(), "could not clear set-user-ID/set-group-ID before a write");
                None
            }
        }
    }
}

/// A mode without set-user-ID, and without set-group-ID if the group may execute (without
/// group execute the bit marks mandatory locking and stays), as Linux clears them when
/// someone without `CAP_FSETID` writes or truncates a file.
fn killed_mode(mode: u16) -> u16 {
    const SUID: u16 = 0o4000;
    const SGID: u16 = 0o2000;
    const GROUP_EXEC: u16 = 0o010;
    let mut m = mode & !SUID;
    if m & (SGID | GROUP_EXEC) == SGID | GROUP_EXEC {
        m &= !SGID;
    }
    m
}

impl fuser::Filesystem for FuseAdapter {
    fn init(&mut self, _req: &fuser::Request, config: &mut KernelConfig) -> io::Result<()> {
        // Ask only for what the kernel offers; add_capabilities refuses the whole set
        // otherwise. Not asked for: FUSE_WRITEBACK_CACHE, which lets the kernel reorder
        // and merge writes and keep its own idea of size and mtime (weaker POSIX
        // semantics than plugins promise).
        let mut wanted = InitFlags::FUSE_ASYNC_READ
            | InitFlags::FUSE_BIG_WRITES
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_MAX_PAGES;
        let plugin_can = self.fs.capabilities().is_some_and(|c| c.backing_files);
        let kernel_can = config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH);
        let mountpoint = self.mountpoint.display();
        match passthrough::decide(self.passthrough, plugin_can, kernel_can) {
            // Backing files must not be FUSE or overlayfs mounts themselves (stack depth
            // 1): then this mount can still be a lower layer of an overlayfs.
            Ok(()) if config.set_max_stack_depth(1).is_ok() => {
                wanted |= InitFlags::FUSE_PASSTHROUGH;
                self.state.backing.set_enabled(true);
                info!(%mountpoint, "data path: kernel passthrough (reads, writes and mmap go to the backing files)");
            }
            Ok(()) => info!(%mountpoint, "data path: the daemon (the kernel refused a passthrough stack depth)"),
            Err(why) => info!(%mountpoint, "data path: the daemon, no kernel passthrough: {why}"),
        }
        // Without passthrough every write reaches this process, which can then clear
        // set-user-ID and file capabilities itself (`kill_privs`): the kernel then stops
        // asking for `security.capability` (one GETXATTR round trip before every
        // `write(2)`, on a filesystem with xattrs). Not with passthrough: the kernel writes
        // the backing file as the mounter and would leave those bits on writes by others.
        if !wanted.contains(InitFlags::FUSE_PASSTHROUGH)
            && config.capabilities().contains(InitFlags::FUSE_HANDLE_KILLPRIV_V2)
        {
            wanted |= InitFlags::FUSE_HANDLE_KILLPRIV_V2;
            self.state.kill_privs.store(true, Ordering::Relaxed);
        }
        let offered = wanted & config.capabilities();
        if let Err(missing) = config.add_capabilities(offered) {
            debug!(?missing, "kernel refused FUSE capabilities");
            self.state.kill_privs.store(false, Ordering::Relaxed);
        }
        // 1 MiB writes (the kernel's maximum of 256 pages); a smaller limit is kept.
        if let Err(nearest) = config.set_max_write(MAX_REQUEST) {
            let _ = config.set_max_write(nearest);
        }
        // Read-ahead up to 1 MiB too, so sequential reads through the daemon come in
        // requests as large as writes (the kernel caps it at what it offered).
        if let Err(nearest) = config.set_max_readahead(MAX_REQUEST) {
            let _ = config.set_max_readahead(nearest);
        }
        Ok(())
    }

    fn lookup(&self, req: &fuser::Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(_in_flight) = self.state.gate.enter() else { return reply.error(shutting_down("lookup")) };
        if let Err(e) = check_name("lookup", parent.0, name) {
            return reply.error(e);
        }
        self.state.lookups.fetch_add(1, Ordering::Relaxed);
        match self.fs.lookup(&request(req), parent.0, name) {
            Ok(entry) => reply_entry(reply, &entry),
            Err(e) if e.errno() == Errno::ENOENT => match self.negative_ttl() {
                Some(ttl) => {
                    self.state.negative_entries.fetch_add(1, Ordering::Relaxed);
                    reply_negative(reply, ttl);
                }
                None => reply.error(fail("lookup", parent.0, &e)),
            },
            Err(e) => reply.error(fail("lookup", parent.0, &e)),
        }
    }

    fn forget(&self, _req: &fuser::Request, ino: INodeNo, nlookup: u64) {
        let _in_flight = self.state.gate.enter_always();
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &fuser::Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let Some(_in_flight) = self.state.gate.enter() else { return reply.error(shutting_down("getattr")) };
        match self.fs.getattr(&request(req), ino.0, fh.map(|fh| fh.0)) {
            Ok(out) => reply.attr(&out.ttl, &file_attr(ino.0, &out.attr)),
            Err(e) => reply.error(fail("getattr", ino.0, &e)),
        }
    }

    fn setattr(
        &self,
        req: &fuser::Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let Some(_in_flight) = self.state.gate.enter() else { return reply.error(shutting_down("setattr")) };
        let set = SetAttr {
            mode: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime: atime.map(set_time),
            mtime: mtime.map(set_time),
            ctime: ctime.map(Timestamp::from),
            handle: fh.map(|fh| fh.0),
        };
        match self.fs.setattr(&request(req), ino.0, &set) {
            Ok(mut out) => {
                // With FUSE_HANDLE_KILLPRIV_V2 the kernel leaves it to us to clear the
                // privileges a truncation (by a caller who may lack CAP_FSETID: we are
                // not told, so by anyone but root) or a change of owner (always) clears.
                // After the change succeeded, so that a refused one changes nothing.
                let chown = set.uid.is_some() || set.gid.is_some();
                let kill = out.attr.kind == FileKind::File && set.mode.is_none() && (chown || set.size.is_some());
                if kill && let Some(mode) = self.kill_privs(req, ino.0, chown || req.uid() != 0) {
                    out.attr.perm = mode;
                }
                reply.attr(&out.ttl, &file_attr(ino.0, &out.attr))
            }
            Err(e) => reply.error(fail("setattr", ino.0, &e)),
        }
    }

    fn readlink(&self, req: &fuser::Request, ino: INodeNo, reply: ReplyData) {
        let Some(_in_flight) = self.state.gate.enter() else { return reply.error(shutting_down("readlink")) };
        let mut buf = vec![0u8; 4096];
        match self.fs.readlink(&request(req), ino.0, &mut buf) {
            Ok(n) => match buf.get(..n) {
                Some(target) => reply.data(target),
                None => reply.error(fail("readlink", ino.0, &Error::with_message(Errno::EIO, "length past buffer"))),
            },
            Err(e) => reply.error(fail("readlink", ino.0, &e)),
        }
    }

    fn mknod(
        &self,
        req: &fuser::Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let Some(_in_flight) = self.state.gate.enter() else { return reply.error(shutting_down("mknod")) };
        // The kernel has applied the umask to `mode` already (we do not ask for
        // FUSE_DONT_MASK).
        if let Err(e) = check_name("mknod", parent.0, name) {
            return reply.error(e);
        }
        match self.fs.mknod(&request(req), parent.0, name, mode, rdev) {
            Ok(entry) => reply_entry(reply, &entry),
            Err(e) => reply.error(fail("mknod", parent.0, &e)),
        }
    }

    fn mkdir(&self, req: &fuser::Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        let Some(_in_flight) = self.state.gate.enter() else { return reply.error(shutting_down("mkdir")) };
        if let Err(e) = check_name("mkdir", parent.0, name) {
            return reply.error(e);
        }
        match self.fs.mkdir(&request(req), parent.0, name, mode & 0o7777) {
            Ok(entry) => reply_entry(reply, &entry),
            Err(e) => reply.error(fail("mkdir", parent.0, &e)),
        }
    }

    fn unlink(&self, req: &fuser::Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let Some(_in_flight) = self.state.gate.enter() else { return reply.error(shutting_down("unlink")) };
        if let Err(e) = check_name("unlink", parent.0, name) {
            return reply.error(e);
        }
        match self.fs.unlink(&request(req), parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("unlink", parent.0, &e)),
        }
    }

    fn rmdir(&self, req: &fuser::Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let Some(_in_flight) = self.state.gate.enter() else { return reply.error(shutting_down("rmdir")) };
        if let Err(e) = check_name("rmdir", parent.0, name) {
            return reply.error(e);
        }
        match self.fs.rmdir(&request(req), parent.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("rmdir", parent.0, &e)),
        }
    }

    fn symlink(&self, req: &fuser::Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let Some(_in_flight) = self.state.gate.enter() else { return reply.error(shutting_down("symlink")) };
        if let Err(e) = check_name("symlink", parent.0, link_name) {
            return reply.error(e);
        }
        match self.fs.symlink(&request(req), parent.0, link_name, target.as_os_str()) {
            Ok(entry) => reply_entry(reply, &entry),
            Err(e) => reply.error(fail("symlink", parent.0, &e)),
        }
    }

    fn rename(
        &self,
        req: &fuser::Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        let Some(_in_flight) = self.state.gate.enter() else { return reply.error(shutting_down("rename")) };
        if let Err(e) = check_name("rename", parent.0, name).and(check_name("rename", newparent.0, newname)) {
            return reply.error(e);
        }
        match self.fs.rename(&request(req), parent.0, name, newparent.0, newname, RenameFlags(flags.bits())) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("rename", parent.0, &e)),
        }
    }

    fn link(&self, req: &fuser::Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let Some(_in_flight) = self.state.gate.enter() else { return reply.error(shutting_down("link")) };
        if let Err(e) = check_name("link", newparent.0, newname) {
            return reply.error(e);
        }
        match self.fs.link(&request(req), ino.0, newparent.0, newname) {
            Ok(entry) => reply_entry(reply, &entry),
            Err(e) => reply.error(fail("link", ino.0, &e)),
        }
    }

    fn open(&self, req: &fuser::Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let Some(_in_flight) = self.state.gate.enter() else { return reply.error(shutting_down("open")) };
        match self.fs.open(&request(req), ino.0, flags.0) {
            Ok(o) => {
                if flags.0 & libc::O_TRUNC != 0 {
                    self.kill_privs(req, ino.0, req.uid() != 0);
                }
                let fh = FileHandle(o.handle);
                let fopen = fopen_flags(&o);
                // Recorded before any reply: the kernel may release the file as soon as it
                // has the reply.
                self.state.handles.insert(Kind::File, o.handle, ino.0, flags.0, false);
                let passthrough = self.state.backing.with_id(ino.0, o.backing_fd, reply, |reply, id| {
                    self.state.handles.mark_passthrough(Kind::File, o.handle);
                    reply.opened_passthrough(fh, fopen, id);
                });
                match passthrough {
                    Ok(()) => self.count_passthrough_open(),
                    Err(reply) => reply.opened(fh, fopen),
                }
            }
            Err(e) => reply.error(fail("open", ino.0, &e)),
        }
    }

    fn read(
        &self,
        req: &fuser::Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(_in_flight) = self.state.gate.enter() else { return reply.error(shutting_down("read")) };
        self.state.reads.fetch_add(1, Ordering::Relaxed);
        // The plugin fills a buffer we own and we send only what it says it filled. Each
        // worker thread keeps one buffer for its whole life, so a read costs neither an
        // allocation nor zeroing up to 1 MiB.
        READ_BUF.with_borrow_mut(|buf| {
            if buf.len() < size as usize {
                buf.resize(size as usize, 0);
            }
            let buf = &mut buf[..size as usize];
            match self.fs.read(&request(req), ino.0, fh.0, offset, buf) {
                Ok(n) => match buf.get(..n) {
                    Some(data) => reply.data(data),
                    None => reply.error(fail("read", ino.0, &Error::with_message(Errno::EIO, "length past buffer"))),
                },
                Err(e) => reply.error(fail("read", ino.0, &e)),
            }
        })
    }

    fn write(
        &self,
        req: &fuser::Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(_in_flight) = self.state.gate.enter() else { return reply.error(shutting_down("write")) };
        self.state.writes.fetch_add(1, Ordering::Relaxed);
        // The kernel sets the flag when the writer lacks CAP_FSETID.
        self.kill_privs(req, ino.0, write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID));
        match self.fs.write(&request(req), ino.0, fh.0, offset, data, flags.0) {
            // `data` is at most max_write (1 MiB) long, so the count fits in u32.
            Ok(n) => reply.written(n.min(data.len()) as u32),
            Err(e) => reply.error(fail("write", ino.0, &e)),
        }
    }

    fn flush(&self, req: &fuser::Request, ino: INodeNo, fh: FileHandle, lock_owner: LockOwner, reply: ReplyEmpty) {
        let _in_flight = self.state.gate.enter_always();
        self.state.flushes.fetch_add(1, Ordering::Relaxed);
        match self.fs.flush(&request(req), ino.0, fh.0, lock_owner.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("flush", ino.0, &e)),
        }
    }

    fn release(
        &self,
        req: &fuser::Request,
        ino: INodeNo,
        fh: FileHandle,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        flush: bool,
        reply: ReplyEmpty,
    ) {
        let _in_flight = self.state.gate.enter_always();
        let Some(open) = self.state.handles.take(Kind::File, fh.0) else {
            // Released through the plugin at shutdown already.
            return reply.ok();
        };
        if open.passthrough {
            self.state.backing.release(ino.0);
        }
        match self.fs.release(&request(req), ino.0, fh.0, flags.0, flush) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("release", ino.0, &e)),
        }
    }

    fn fsync(&self, req: &fuser::Request, ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        let Some(_in_flight) = self.state.gate.enter() else { return reply.error(shutting_down("fsync")) };
        match self.fs.fsync(&request(req), ino.0, fh.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("fsync", ino.0, &e)),
        }
    }

    fn opendir(&self, req: &fuser::Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let Some(_in_flight) = self.state.gate.enter() else { return reply.error(shutting_down("opendir")) };
        match self.fs.opendir(&request(req), ino.0, flags.0) {
            Ok(o) => {
                self.state.handles.insert(Kind::Dir, o.handle, ino.0, flags.0, false);
                reply.opened(FileHandle(o.handle), fopen_flags(&o))
            }
            Err(e) => reply.error(fail("opendir", ino.0, &e)),
        }
    }

    fn readdir(&self, req: &fuser::Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let Some(_in_flight) = self.state.gate.enter() else { return reply.error(shutting_down("readdir")) };
        let result = self.fs.readdir(&request(req), ino.0, fh.0, offset, &mut DirectorySink { reply: &mut reply });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("readdir", ino.0, &e)),
        }
    }

    fn readdirplus(
        &self,
        req: &fuser::Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let Some(_in_flight) = self.state.gate.enter() else { return reply.error(shutting_down("readdirplus")) };
        let result =
            self.fs.readdirplus(&request(req), ino.0, fh.0, offset, &mut DirectoryPlusSink { reply: &mut reply });
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("readdirplus", ino.0, &e)),
        }
    }

    fn releasedir(&self, req: &fuser::Request, ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        let _in_flight = self.state.gate.enter_always();
        if self.state.handles.take(Kind::Dir, fh.0).is_none() {
            return reply.ok();
        }
        match self.fs.releasedir(&request(req), ino.0, fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("releasedir", ino.0, &e)),
        }
    }

    fn fsyncdir(&self, req: &fuser::Request, ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        let Some(_in_flight) = self.state.gate.enter() else { return reply.error(shutting_down("fsyncdir")) };
        match self.fs.fsyncdir(&request(req), ino.0, fh.0, datasync) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("fsyncdir", ino.0, &e)),
        }
    }

    fn statfs(&self, req: &fuser::Request, ino: INodeNo, reply: ReplyStatfs) {
        let Some(_in_flight) = self.state.gate.enter() else { return reply.error(shutting_down("statfs")) };
        match self.fs.statfs(&request(req), ino.0) {
            Ok(s) => reply.statfs(s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize),
            Err(e) => reply.error(fail("statfs", ino.0, &e)),
        }
    }

    fn setxattr(
        &self,
        req: &fuser::Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let Some(_in_flight) = self.state.gate.enter() else { return reply.error(shutting_down("setxattr")) };
        match self.fs.setxattr(&request(req), ino.0, name, value, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("setxattr", ino.0, &e)),
        }
    }

    fn getxattr(&self, req: &fuser::Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some(_in_flight) = self.state.gate.enter() else { return reply.error(shutting_down("getxattr")) };
        self.state.getxattrs.fetch_add(1, Ordering::Relaxed);
        // size 0 asks for the value's size; otherwise the plugin fills a buffer of `size`.
        let mut buf = vec![0u8; size as usize];
        match self.fs.getxattr(&request(req), ino.0, name, &mut buf) {
            Ok(n) => reply_xattr(reply, "getxattr", ino.0, &buf, n),
            Err(e) => reply.error(fail("getxattr", ino.0, &e)),
        }
    }

    fn listxattr(&self, req: &fuser::Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let Some(_in_flight) = self.state.gate.enter() else { return reply.error(shutting_down("listxattr")) };
        let mut buf = vec![0u8; size as usize];
        match self.fs.listxattr(&request(req), ino.0, &mut buf) {
            Ok(n) => reply_xattr(reply, "listxattr", ino.0, &buf, n),
            Err(e) => reply.error(fail("listxattr", ino.0, &e)),
        }
    }

    fn removexattr(&self, req: &fuser::Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let Some(_in_flight) = self.state.gate.enter() else { return reply.error(shutting_down("removexattr")) };
        match self.fs.removexattr(&request(req), ino.0, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("removexattr", ino.0, &e)),
        }
    }

    fn access(&self, req: &fuser::Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let Some(_in_flight) = self.state.gate.enter() else { return reply.error(shutting_down("access")) };
        // Only called without default_permissions. plugfs has no permission model of its
        // own, so any existing node is accessible in any way.
        let _ = mask;
        match self.fs.getattr(&request(req), ino.0, None) {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(fail("access", ino.0, &e)),
        }
    }

    fn create(
        &self,
        req: &fuser::Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let Some(_in_flight) = self.state.gate.enter() else { return reply.error(shutting_down("create")) };
        if let Err(e) = check_name("create", parent.0, name) {
            return reply.error(e);
        }
        match self.fs.create(&request(req), parent.0, name, mode & 0o7777, flags) {
            Ok((mut entry, o)) => {
                // A create that found the name existing truncates it like an open.
                if flags & libc::O_TRUNC != 0
                    && let Some(mode) = self.kill_privs(req, entry.node, req.uid() != 0)
                {
                    entry.attr.perm = mode;
                }
                // fuser has one TTL for both: use the shorter so neither is cached too long.
                let ttl = entry.entry_ttl.min(entry.attr_ttl);
                let attr = file_attr(entry.node, &entry.attr);
                let (generation, fh, fopen) = (Generation(entry.generation), FileHandle(o.handle), fopen_flags(&o));
                // Recorded before any reply, as in `open`.
                self.state.handles.insert(Kind::File, o.handle, entry.node, flags, false);
                let passthrough = self.state.backing.with_id(entry.node, o.backing_fd, reply, |reply, id| {
                    self.state.handles.mark_passthrough(Kind::File, o.handle);
                    reply.created_passthrough(&ttl, &attr, generation, fh, fopen, id);
                });
                match passthrough {
                    Ok(()) => self.count_passthrough_open(),
                    Err(reply) => reply.created(&ttl, &attr, generation, fh, fopen),
                }
            }
            Err(e) => reply.error(fail("create", parent.0, &e)),
        }
    }

    fn fallocate(
        &self,
        req: &fuser::Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let Some(_in_flight) = self.state.gate.enter() else { return reply.error(shutting_down("fallocate")) };
        // On a handle open for writing, as a write (the kernel's `file_modified`).
        self.kill_privs(req, ino.0, req.uid() != 0);
        match self.fs.fallocate(&request(req), ino.0, fh.0, offset, length, mode) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fail("fallocate", ino.0, &e)),
        }
    }

    fn lseek(&self, req: &fuser::Request, ino: INodeNo, fh: FileHandle, offset: i64, whence: i32, reply: ReplyLseek) {
        let Some(_in_flight) = self.state.gate.enter() else { return reply.error(shutting_down("lseek")) };
        let Some(whence) = u32::try_from(whence).ok().and_then(Whence::from_raw) else {
            return reply.error(fail("lseek", ino.0, &Error::with_message(Errno::EINVAL, "unknown whence")));
        };
        match self.fs.lseek(&request(req), ino.0, fh.0, offset, whence) {
            Ok(pos) => match i64::try_from(pos) {
                Ok(pos) => reply.offset(pos),
                Err(_) => reply.error(fail("lseek", ino.0, &Error::new(Errno::EOVERFLOW))),
            },
            Err(e) => reply.error(fail("lseek", ino.0, &e)),
        }
    }

    fn copy_file_range(
        &self,
        req: &fuser::Request,
        ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let Some(_in_flight) = self.state.gate.enter() else { return reply.error(shutting_down("copy_file_range")) };
        let Ok(flags) = u32::try_from(flags.bits()) else {
            return reply.error(fail("copy_file_range", ino_in.0, &Error::new(Errno::EINVAL)));
        };
        let r = request(req);
        self.kill_privs(req, ino_out.0, req.uid() != 0);
        match self.fs.copy_file_range(&r, ino_in.0, fh_in.0, offset_in, ino_out.0, fh_out.0, offset_out, len, flags) {
            // FUSE replies carry a u32 count; a plugin that copied more is clamped.
            Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => reply.error(fail("copy_file_range", ino_in.0, &e)),
        }
    }
}

/// Answers getxattr/listxattr: a size probe gets the size, otherwise the filled bytes.
fn reply_xattr(reply: ReplyXattr, op: &'static str, node: u64, buf: &[u8], n: usize) {
    if buf.is_empty() {
        match u32::try_from(n) {
            Ok(n) => reply.size(n),
            Err(_) => reply.error(fail(op, node, &Error::new(Errno::E2BIG))),
        }
    } else {
        match buf.get(..n) {
            Some(data) => reply.data(data),
            None => reply.error(fail(op, node, &Error::with_message(Errno::EIO, "length past buffer"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn killing_privileges_clears_suid_and_only_a_group_executable_sgid() {
        assert_eq!(killed_mode(0o6777), 0o777);
        assert_eq!(killed_mode(0o4755), 0o755);
        assert_eq!(killed_mode(0o2766), 0o2766);
        assert_eq!(killed_mode(0o2775), 0o775);
        assert_eq!(killed_mode(0o1777), 0o1777);
    }

    #[test]
    fn timestamps_outside_system_time_do_not_panic() {
        for secs in [i64::MIN, i64::MAX] {
            let _ = system_time(Timestamp { secs, nanos: 999_999_999 });
        }
        let t = Timestamp::new(1_700_000_000, 5);
        assert_eq!(Timestamp::from(system_time(t)), t);
        let before = Timestamp { secs: -2, nanos: 500_000_000 };
        assert_eq!(Timestamp::from(system_time(before)), before);
    }

    #[test]
    fn invalid_names_are_refused_before_the_plugin_sees_them() {
        for bad in ["", ".", "..", "a/b"] {
            assert!(check_name("test", 1, OsStr::new(bad)).is_err(), "{bad:?}");
        }
        assert!(check_name("test", 1, OsStr::new("...")).is_ok());
    }

    #[test]
    fn regular_files_advertise_at_least_one_full_request_as_their_io_size() {
        let file = |blksize| Attr { kind: FileKind::File, blksize, ..Attr::default() };
        assert_eq!(io_block_size(&file(4096)), MAX_REQUEST);
        assert_eq!(io_block_size(&file(8 << 20)), 8 << 20);
        let dir = Attr { kind: FileKind::Directory, blksize: 4096, ..Attr::default() };
        assert_eq!(io_block_size(&dir), 4096);
    }

    #[test]
    fn default_options_are_owner_only_with_kernel_permission_checks() {
        let o = FuseOptions::default();
        assert!(!o.allow_other && o.default_permissions && !o.read_only && o.threads >= 1);
    }
}
