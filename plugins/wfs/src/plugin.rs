//! The plugin glue: [`WfsPlugin`] opens a [`Volume`] from the config table and [`WfsFs`]
//! answers the host's calls with it. Node ids are inode numbers (never reused, so the
//! generation is always 0); everything about the format lives in the engine.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};
use std::time::Duration;

use plugfs_plugin_api::open_flags::{O_ACCMODE, O_APPEND, O_RDONLY, O_TRUNC};
use plugfs_plugin_api::refs::NodeRefs;
use plugfs_plugin_api::xattr_flags::{XATTR_CREATE, XATTR_REPLACE};
use plugfs_plugin_api::{
    Attr, AttrOut, Capabilities, ConfigTable, DirEntry, DirPlusSink, DirSink, Entry, Errno, Error, FileKind,
    FileSystem, Handle, MountOptions, NodeId, OpenError, Opened, Plugin, PluginInfo, RenameFlags, Request, Result,
    SetAttr, SetTime, StatFs, Timestamp, Whence, fallocate_mode,
};

use crate::engine::format::{BLOCK, Inode, MAX_NAME, S_IFDIR, Time};
use crate::engine::volume::Listed;
use crate::engine::{self, FileDevice, OpenOptions, Volume};

/// How long the kernel may cache names and attributes: every change goes through here.
const TTL: Duration = Duration::from_secs(1);
/// Readdir cookies 1 and 2 resume after `.` and `..`; entry index i has cookie i + 2.
const DOTS: u64 = 2;
/// Setting this xattr on the root directory takes a snapshot named by its value.
pub const SNAPSHOT_XATTR: &[u8] = b"user.wfs.snapshot";

const CAPABILITIES: Capabilities =
    Capabilities { format: true, max_name_len: MAX_NAME as u32, max_file_size: i64::MAX as u64, ..Capabilities::POSIX };

/// The wfs plugin.
pub struct WfsPlugin;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    image: PathBuf,
    snapshot: Option<String>,
    #[serde(default)]
    read_only: bool,
    /// Bytes of data blocks to cache.
    cache_size: Option<u64>,
    /// Bytes of metadata (tree nodes) to cache; uncommitted metadata changes are committed
    /// once they reach half of it.
    metadata_cache_size: Option<u64>,
    /// Milliseconds between background commits (0: only on fsync and unmount).
    commit_interval_ms: Option<u64>,
}

const DEFAULT_CACHE: u64 = 64 << 20;
const DEFAULT_METADATA_CACHE: u64 = 32 << 20;
const DEFAULT_COMMIT_MS: u64 = 5000;

/// Opens `path` and takes the image lock: exclusive for a writer, shared for readers, so
/// two hosts (or a host and `plugfs-wfs`) never write one image at once.
pub fn open_image(path: &Path, read_only: bool) -> std::result::Result<FileDevice, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mode = if read_only {
        rustix::fs::FlockOperation::NonBlockingLockShared
    } else {
        rustix::fs::FlockOperation::NonBlockingLockExclusive
    };
    rustix::fs::flock(file.as_fd(), mode).map_err(|_| {
        format!("{}: the image is in use (mounted or being checked by another process)", path.display())
    })?;
    Ok(FileDevice::new(file))
}

impl Plugin for WfsPlugin {
    type Fs = WfsFs;

    fn info() -> PluginInfo {
        PluginInfo {
            name: "wfs",
            version: env!("CARGO_PKG_VERSION"),
            description: "WFS images: copy-on-write, checksummed data and metadata, atomic commits, snapshots",
            config_help: "image = \"wfs.img\"        # the image file (required; plugfs-wfs mkfs makes one)\n\
                          snapshot = \"name\"        # mount this snapshot instead, read-only\n\
                          read_only = false        # never write to the image\n\
                          cache_size = 67108864    # bytes of data blocks to cache\n\
                          metadata_cache_size = 33554432  # bytes of tree nodes to cache (half: pending changes)\n\
                          commit_interval_ms = 5000  # background commits (0: only fsync and unmount)",
            capabilities: CAPABILITIES,
        }
    }

    fn open(config: &ConfigTable, options: &MountOptions) -> Result<WfsFs, OpenError> {
        let s: Settings = config.parse()?;
        let read_only = s.read_only || options.read_only || s.snapshot.is_some();
        let dev = open_image(&s.image, read_only).map_err(OpenError::other)?;
        let cache_blocks = (s.cache_size.unwrap_or(DEFAULT_CACHE) / BLOCK as u64) as usize;
        let meta = s.metadata_cache_size.unwrap_or(DEFAULT_METADATA_CACHE).max(1 << 20);
        let opts = OpenOptions {
            read_only,
            snapshot: s.snapshot.clone(),
            cache_blocks,
            node_cache_blocks: (meta / BLOCK as u64) as usize,
            overlay_limit: meta / 2,
        };
        let vol = Volume::open(Arc::new(dev), opts).map_err(|e| match (&s.snapshot, &e) {
            (Some(_), engine::Error::Format(m)) if m.contains("snapshot") => OpenError::config("snapshot", m.clone()),
            _ => OpenError::other(format!("{}: {e}", s.image.display())),
        })?;
        tracing::info!(
            image = %s.image.display(),
            generation = vol.superblock().generation,
            snapshot = s.snapshot.as_deref().unwrap_or("-"),
            read_only,
            "mounted a WFS image"
        );
        let vol = Arc::new(RwLock::new(vol));
        let interval = s.commit_interval_ms.unwrap_or(DEFAULT_COMMIT_MS);
        if interval > 0 && !read_only {
            spawn_committer(Arc::downgrade(&vol), Duration::from_millis(interval));
        }
        Ok(WfsFs { vol, tracking: Mutex::new(NodeRefs::default()), next_handle: AtomicU64::new(1) })
    }

    fn format(config: &ConfigTable, size: u64) -> Result<(), OpenError> {
        let s: Settings = config.parse()?;
        create_image(&s.image, size).map_err(OpenError::other)
    }
}

/// Creates a new image file of `size` bytes with an empty filesystem. Refuses to replace a
/// non-empty file.
pub fn create_image(path: &Path, size: u64) -> std::result::Result<(), String> {
    let blocks = size / BLOCK as u64;
    if blocks < 16 {
        return Err(format!("{size} bytes is too small: an image needs at least 64 KiB"));
    }
    if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
        return Err(format!("{}: exists and is not empty; not replacing it", path.display()));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    file.set_len(blocks * BLOCK as u64).map_err(|e| format!("{}: {e}", path.display()))?;
    let dev = FileDevice::new(file);
    engine::mkfs(&dev, blocks).map_err(|e| format!("{}: {e}", path.display()))
}

fn spawn_committer(vol: Weak<RwLock<Volume>>, interval: Duration) {
    let spawned = std::thread::Builder::new().name("wfs-commit".into()).spawn(move || {
        loop {
            std::thread::sleep(interval);
            let Some(vol) = vol.upgrade() else { return };
            let Ok(mut v) = vol.write() else { return };
            if v.is_dirty()
                && let Err(e) = v.commit()
            {
                tracing::error!("wfs: background commit failed: {e}");
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!("wfs: no background commits (changes commit on fsync and unmount): {e}");
    }
}

/// A mounted WFS image. The volume sits behind a read-write lock: lookups, stats, reads and
/// listings share it; changes take it alone. Reference counts have their own lock, always
/// taken after the volume's.
pub struct WfsFs {
    vol: Arc<RwLock<Volume>>,
    tracking: Mutex<NodeRefs>,
    next_handle: AtomicU64,
}

fn errno(e: engine::Error) -> Error {
    Error::with_message(Errno(e.errno()), e.to_string())
}

fn poisoned() -> Error {
    Error::with_message(Errno::EIO, "wfs: a lock was poisoned by a panic")
}

fn ts(t: Time) -> Timestamp {
    Timestamp::new(t.secs, t.nanos)
}

fn time(t: SetTime) -> Time {
    match t {
        SetTime::Now => Time::now(),
        SetTime::At(t) => Time { secs: t.secs, nanos: t.nanos },
    }
}

fn attr(ino: u64, i: &Inode) -> Attr {
    Attr {
        ino,
        size: i.size,
        blocks: i.blocks * (BLOCK as u64 / 512),
        atime: ts(i.atime),
        mtime: ts(i.mtime),
        ctime: ts(i.ctime),
        crtime: ts(i.crtime),
        kind: FileKind::from_mode(i.mode).unwrap_or(FileKind::File),
        perm: (i.mode & 0o7777) as u16,
        nlink: i.nlink,
        uid: i.uid,
        gid: i.gid,
        rdev: i.rdev,
        blksize: BLOCK as u32,
    }
}

fn kind_of(k: u8) -> FileKind {
    FileKind::from_mode(u32::from(k) << 12).unwrap_or(FileKind::File)
}

impl WfsFs {
    fn shared(&self) -> Result<RwLockReadGuard<'_, Volume>> {
        self.vol.read().map_err(|_| poisoned())
    }

    fn exclusive(&self) -> Result<RwLockWriteGuard<'_, Volume>> {
        self.vol.write().map_err(|_| poisoned())
    }

    fn tracking(&self) -> Result<MutexGuard<'_, NodeRefs>> {
        self.tracking.lock().map_err(|_| poisoned())
    }

    fn entry_of(&self, vol: &Volume, ino: u64) -> Result<Entry> {
        let i = vol.inode(ino).map_err(errno)?;
        Ok(Entry { node: ino, generation: 0, attr: attr(ino, &i), entry_ttl: TTL, attr_ttl: TTL })
    }

    /// The entry for `ino`, counting one lookup reference.
    fn entry(&self, vol: &Volume, ino: u64) -> Result<Entry> {
        let e = self.entry_of(vol, ino)?;
        self.tracking()?.looked_up(ino);
        Ok(e)
    }

    fn attr_out(&self, vol: &Volume, ino: u64) -> Result<AttrOut> {
        Ok(AttrOut { attr: attr(ino, &vol.inode(ino).map_err(errno)?), ttl: TTL })
    }

    /// Frees an unlinked inode once nothing refers to it.
    fn maybe_evict(&self, vol: &mut Volume, ino: u64) -> Result<()> {
        if self.tracking()?.remove_if_unused(ino) {
            vol.evict(ino).map_err(errno)?;
        }
        Ok(())
    }

    fn open_handle(&self, ino: u64, flags: i32) -> Result<Opened> {
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.tracking()?.opened(handle, ino, flags);
        Ok(Opened { handle, ..Opened::default() })
    }

    /// Owner of a new node: the caller, or the directory's group under set-group-id.
    fn new_owner(vol: &Volume, parent: u64, req: &Request, mode: u32) -> Result<(u32, u32, u32)> {
        let p = vol.inode(parent).map_err(errno)?;
        if p.mode & 0o2000 != 0 {
            let mode = if mode & 0o170000 == S_IFDIR { mode | 0o2000 } else { mode };
            Ok((req.uid, p.gid, mode))
        } else {
            Ok((req.uid, req.gid, mode))
        }
    }

    fn make(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32, rdev: u32) -> Result<(Volume2<'_>, u64)> {
        let mut vol = self.exclusive()?;
        let (uid, gid, mode) = Self::new_owner(&vol, parent, req, mode)?;
        let ino = vol.create(parent, name.as_bytes(), mode, uid, gid, rdev).map_err(errno)?;
        Ok((Volume2(vol), ino))
    }
}

/// The exclusive guard a creation holds until its entry is counted.
struct Volume2<'a>(RwLockWriteGuard<'a, Volume>);

impl FileSystem for WfsFs {
    fn lookup(&self, _req: &Request, parent: NodeId, name: &OsStr) -> Result<Entry> {
        let vol = self.shared()?;
        let ino = vol.lookup(parent, name.as_bytes()).map_err(errno)?;
        self.entry(&vol, ino)
    }

    fn forget(&self, node: NodeId, nlookup: u64) {
        // Dropping the kernel's caches forgets every inode it knew: count down under the
        // shared lock, so lookups go on meanwhile, and take the exclusive one only for an
        // unlinked inode whose last reference this was. An unlink racing with this either
        // sees the count at zero and frees the inode itself, or comes first and leaves
        // nlink at zero for the check below (maybe_evict checks both again).
        {
            let Ok(vol) = self.shared() else { return };
            let Ok(mut t) = self.tracking() else { return };
            if !t.forgotten(node, nlookup) {
                return;
            }
            if vol.inode(node).is_ok_and(|i| i.nlink > 0) {
                t.remove_if_unused(node);
                return;
            }
        }
        let Ok(mut vol) = self.exclusive() else { return };
        if let Err(e) = self.maybe_evict(&mut vol, node) {
            tracing::error!(node, "wfs: freeing an unlinked inode failed: {e}");
        }
    }

    fn getattr(&self, _req: &Request, node: NodeId, _handle: Option<Handle>) -> Result<AttrOut> {
        let vol = self.shared()?;
        self.attr_out(&vol, node)
    }

    fn setattr(&self, _req: &Request, node: NodeId, set: &SetAttr) -> Result<AttrOut> {
        let mut vol = self.exclusive()?;
        if let Some(size) = set.size {
            vol.truncate(node, size).map_err(errno)?;
        }
        if set.mode.is_some() || set.uid.is_some() || set.gid.is_some() || set.atime.is_some() || set.mtime.is_some() {
            vol.set_attr(node, set.mode, set.uid, set.gid, set.atime.map(time), set.mtime.map(time)).map_err(errno)?;
        }
        self.attr_out(&vol, node)
    }

    fn readlink(&self, _req: &Request, node: NodeId, buf: &mut [u8]) -> Result<usize> {
        let target = self.shared()?.readlink(node).map_err(errno)?;
        let out = buf.get_mut(..target.len()).ok_or(Error::from(Errno::ERANGE))?;
        out.copy_from_slice(&target);
        Ok(target.len())
    }

    fn mknod(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32, rdev: u32) -> Result<Entry> {
        let (vol, ino) = self.make(req, parent, name, mode, rdev)?;
        self.entry(&vol.0, ino)
    }

    fn mkdir(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32) -> Result<Entry> {
        let (vol, ino) = self.make(req, parent, name, S_IFDIR | (mode & 0o7777), 0)?;
        self.entry(&vol.0, ino)
    }

    fn unlink(&self, _req: &Request, parent: NodeId, name: &OsStr) -> Result<()> {
        let mut vol = self.exclusive()?;
        let ino = vol.unlink(parent, name.as_bytes()).map_err(errno)?;
        self.maybe_evict(&mut vol, ino)
    }

    fn rmdir(&self, _req: &Request, parent: NodeId, name: &OsStr) -> Result<()> {
        let mut vol = self.exclusive()?;
        let ino = vol.rmdir(parent, name.as_bytes()).map_err(errno)?;
        self.maybe_evict(&mut vol, ino)
    }

    fn symlink(&self, req: &Request, parent: NodeId, name: &OsStr, target: &OsStr) -> Result<Entry> {
        let mut vol = self.exclusive()?;
        let (uid, gid, _) = Self::new_owner(&vol, parent, req, 0)?;
        let ino = vol.symlink(parent, name.as_bytes(), target.as_bytes(), uid, gid).map_err(errno)?;
        self.entry(&vol, ino)
    }

    fn link(&self, _req: &Request, node: NodeId, new_parent: NodeId, new_name: &OsStr) -> Result<Entry> {
        let mut vol = self.exclusive()?;
        vol.link(node, new_parent, new_name.as_bytes()).map_err(errno)?;
        self.entry(&vol, node)
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
        if flags.0 & !(RenameFlags::NOREPLACE | RenameFlags::EXCHANGE) != 0 || (flags.noreplace() && flags.exchange()) {
            return Err(Error::with_message(Errno::EINVAL, "wfs supports RENAME_NOREPLACE and RENAME_EXCHANGE"));
        }
        let mut vol = self.exclusive()?;
        let replaced = vol
            .rename(parent, name.as_bytes(), new_parent, new_name.as_bytes(), flags.noreplace(), flags.exchange())
            .map_err(errno)?;
        match replaced {
            Some(ino) => self.maybe_evict(&mut vol, ino),
            None => Ok(()),
        }
    }

    fn open(&self, _req: &Request, node: NodeId, flags: i32) -> Result<Opened> {
        if flags & O_TRUNC != 0 && flags & O_ACCMODE != O_RDONLY {
            let mut vol = self.exclusive()?;
            if vol.inode(node).map_err(errno)?.is_dir() {
                return Err(Errno::EISDIR.into());
            }
            vol.truncate(node, 0).map_err(errno)?;
        } else if self.shared()?.inode(node).map_err(errno)?.is_dir() {
            return Err(Errno::EISDIR.into());
        }
        self.open_handle(node, flags)
    }

    fn create(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32, flags: i32) -> Result<(Entry, Opened)> {
        let (vol, ino) = self.make(req, parent, name, 0o100000 | (mode & 0o7777), 0)?;
        let entry = self.entry(&vol.0, ino)?;
        let opened = self.open_handle(ino, flags)?;
        Ok((entry, opened))
    }

    fn read(&self, _req: &Request, node: NodeId, _handle: Handle, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.shared()?.read(node, offset, buf).map_err(errno)
    }

    fn write(
        &self,
        _req: &Request,
        node: NodeId,
        handle: Handle,
        offset: u64,
        data: &[u8],
        _flags: i32,
    ) -> Result<usize> {
        let mut vol = self.exclusive()?;
        let append = self.tracking()?.flags(handle).is_some_and(|f| f & O_APPEND != 0);
        let offset = if append { vol.inode(node).map_err(errno)?.size } else { offset };
        vol.write(node, offset, data).map_err(errno)
    }

    fn release(&self, _req: &Request, _node: NodeId, handle: Handle, _flags: i32, _flush: bool) -> Result<()> {
        let mut vol = self.exclusive()?;
        let closed = self.tracking()?.closed(handle);
        if let Some(ino) = closed {
            self.maybe_evict(&mut vol, ino)?;
        }
        Ok(())
    }

    fn fsync(&self, _req: &Request, _node: NodeId, _handle: Handle, _datasync: bool) -> Result<()> {
        self.exclusive()?.commit().map_err(errno)
    }

    fn opendir(&self, _req: &Request, node: NodeId, _flags: i32) -> Result<Opened> {
        self.shared()?.parent(node).map_err(errno)?;
        Ok(Opened::default())
    }

    fn readdir(
        &self,
        _req: &Request,
        node: NodeId,
        _handle: Handle,
        cookie: u64,
        sink: &mut dyn DirSink,
    ) -> Result<()> {
        let vol = self.shared()?;
        let dot = |name: &'static [u8], ino, cookie| DirEntry { ino, kind: FileKind::Directory, name, cookie };
        if cookie < 1 && !sink.add(&dot(b".", node, 1)) {
            return Ok(());
        }
        let parent = vol.parent(node).map_err(errno)?;
        if cookie < 2 && !sink.add(&dot(b"..", parent, 2)) {
            return Ok(());
        }
        vol.list(node, cookie.saturating_sub(DOTS), |l: Listed| {
            sink.add(&DirEntry { ino: l.ino, kind: kind_of(l.kind), name: &l.name, cookie: l.index + DOTS })
        })
        .map_err(errno)
    }

    fn readdirplus(
        &self,
        _req: &Request,
        node: NodeId,
        _handle: Handle,
        cookie: u64,
        sink: &mut dyn DirPlusSink,
    ) -> Result<()> {
        let vol = self.shared()?;
        let dot = |name: &'static [u8], ino, cookie| DirEntry { ino, kind: FileKind::Directory, name, cookie };
        let none = Entry::default();
        if cookie < 1 && !sink.add(&dot(b".", node, 1), &none) {
            return Ok(());
        }
        let parent = vol.parent(node).map_err(errno)?;
        if cookie < 2 && !sink.add(&dot(b"..", parent, 2), &none) {
            return Ok(());
        }
        let mut failed = None;
        let mut accepted = Vec::new();
        vol.list(node, cookie.saturating_sub(DOTS), |l: Listed| {
            let entry = match self.entry_of(&vol, l.ino) {
                Ok(e) => e,
                Err(e) => {
                    failed = Some(e);
                    return false;
                }
            };
            let d = DirEntry { ino: l.ino, kind: kind_of(l.kind), name: &l.name, cookie: l.index + DOTS };
            let taken = sink.add(&d, &entry);
            if taken {
                accepted.push(l.ino);
            }
            taken
        })
        .map_err(errno)?;
        let mut t = self.tracking()?;
        for ino in &accepted {
            t.looked_up(*ino);
        }
        match failed {
            Some(e) if accepted.is_empty() => Err(e),
            _ => Ok(()),
        }
    }

    fn fsyncdir(&self, _req: &Request, _node: NodeId, _handle: Handle, _datasync: bool) -> Result<()> {
        self.exclusive()?.commit().map_err(errno)
    }

    fn statfs(&self, _req: &Request, _node: NodeId) -> Result<StatFs> {
        let s = self.shared()?.space();
        Ok(StatFs {
            blocks: s.total,
            bfree: s.free,
            bavail: s.free,
            files: s.inodes + s.free,
            ffree: s.free,
            bsize: BLOCK as u32,
            namelen: MAX_NAME as u32,
            frsize: BLOCK as u32,
        })
    }

    fn setxattr(&self, _req: &Request, node: NodeId, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        let mut vol = self.exclusive()?;
        if node == plugfs_plugin_api::ROOT_ID && name.as_bytes() == SNAPSHOT_XATTR {
            let name = std::str::from_utf8(value)
                .map_err(|_| Error::with_message(Errno::EINVAL, "snapshot names are UTF-8"))?;
            vol.snapshot_create(name).map_err(errno)?;
            tracing::info!(snapshot = name, "wfs: took a snapshot");
            return Ok(());
        }
        vol.set_xattr(node, name.as_bytes(), value, flags & XATTR_CREATE != 0, flags & XATTR_REPLACE != 0)
            .map_err(errno)
    }

    fn getxattr(&self, _req: &Request, node: NodeId, name: &OsStr, buf: &mut [u8]) -> Result<usize> {
        let value = self.shared()?.get_xattr(node, name.as_bytes()).map_err(errno)?;
        if buf.is_empty() {
            return Ok(value.len());
        }
        buf.get_mut(..value.len()).ok_or(Error::from(Errno::ERANGE))?.copy_from_slice(&value);
        Ok(value.len())
    }

    fn listxattr(&self, _req: &Request, node: NodeId, buf: &mut [u8]) -> Result<usize> {
        let names = self.shared()?.list_xattr(node).map_err(errno)?;
        let mut out = Vec::new();
        for n in names {
            out.extend_from_slice(&n);
            out.push(0);
        }
        if buf.is_empty() {
            return Ok(out.len());
        }
        buf.get_mut(..out.len()).ok_or(Error::from(Errno::ERANGE))?.copy_from_slice(&out);
        Ok(out.len())
    }

    fn removexattr(&self, _req: &Request, node: NodeId, name: &OsStr) -> Result<()> {
        self.exclusive()?.remove_xattr(node, name.as_bytes()).map_err(errno)
    }

    fn fallocate(
        &self,
        _req: &Request,
        node: NodeId,
        _handle: Handle,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<()> {
        use fallocate_mode::{KEEP_SIZE, PUNCH_HOLE};
        let mut vol = self.exclusive()?;
        match mode {
            0 | KEEP_SIZE => vol.allocate(node, offset, length, mode == KEEP_SIZE).map_err(errno),
            m if m == PUNCH_HOLE | KEEP_SIZE => vol.punch_hole(node, offset, length).map_err(errno),
            _ => Err(Error::with_message(
                Errno::EOPNOTSUPP,
                "wfs: fallocate supports allocate, KEEP_SIZE and PUNCH_HOLE",
            )),
        }
    }

    fn lseek(&self, _req: &Request, node: NodeId, _handle: Handle, offset: i64, whence: Whence) -> Result<u64> {
        let off = u64::try_from(offset).map_err(|_| Error::from(Errno::EINVAL))?;
        let vol = self.shared()?;
        match whence {
            Whence::Data => vol.seek(node, off, true).map_err(errno),
            Whence::Hole => vol.seek(node, off, false).map_err(errno),
            _ => Err(Errno::EINVAL.into()),
        }
    }

    fn capabilities(&self) -> Option<Capabilities> {
        let ro = self.vol.read().map(|v| v.is_read_only()).unwrap_or(true);
        Some(Capabilities { writable: !ro, ..CAPABILITIES })
    }
}

impl Drop for WfsFs {
    fn drop(&mut self) {
        if let Ok(mut vol) = self.vol.write()
            && let Err(e) = vol.commit()
        {
            tracing::error!("wfs: the commit at unmount failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(dir: &Path) -> PathBuf {
        let img = dir.join("wfs.img");
        create_image(&img, 4 << 20).unwrap();
        img
    }

    fn open(config: &str) -> Result<WfsFs, OpenError> {
        WfsPlugin::open(&ConfigTable::from_toml(config), &MountOptions::default())
    }

    #[test]
    fn config_errors_name_the_key_and_a_second_writer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path());
        let base = format!("image = {:?}\n", img.to_str().unwrap());
        let e = open(&format!("{base}colour = 1\n")).err().expect("refused");
        assert_eq!(e.key.as_deref(), Some("colour"), "{e}");
        let e = open(&format!("{base}snapshot = \"nope\"\n")).err().expect("refused");
        assert_eq!(e.key.as_deref(), Some("snapshot"), "{e}");
        assert!(open("").err().expect("refused").message.contains("image"));
        let first = open(&base).unwrap();
        let e = open(&base).err().expect("the image is locked");
        assert!(e.message.contains("in use"), "{e}");
        drop(first);
        assert!(open(&base).is_ok(), "the lock goes with the mount");
    }

    struct Plus(Vec<(String, Entry)>, usize);
    impl DirPlusSink for Plus {
        fn add(&mut self, d: &DirEntry<'_>, e: &Entry) -> bool {
            if self.0.len() >= self.1 {
                return false;
            }
            self.0.push((String::from_utf8_lossy(d.name).into_owned(), *e));
            true
        }
    }

    #[test]
    fn readdirplus_gives_attributes_and_one_reference_per_entry_taken() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path());
        let fs = open(&format!("image = {:?}\ncommit_interval_ms = 0\n", img.to_str().unwrap())).unwrap();
        let req = Request { uid: 7, gid: 8, pid: 1 };
        let root = plugfs_plugin_api::ROOT_ID;
        for n in ["a", "b", "c"] {
            let (e, h) = fs.create(&req, root, OsStr::new(n), 0o640, 2).unwrap();
            fs.write(&req, e.node, h.handle, 0, n.as_bytes(), 0).unwrap();
            fs.release(&req, e.node, h.handle, 0, false).unwrap();
            fs.forget(e.node, 1);
        }
        let mut sink = Plus(Vec::new(), 4);
        fs.readdirplus(&req, root, 0, 0, &mut sink).unwrap();
        let names: Vec<&str> = sink.0.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, [".", "..", "a", "b"]);
        let a = sink.0[2].1;
        assert_eq!((a.attr.size, a.attr.perm, a.attr.uid, a.attr.gid), (1, 0o640, 7, 8));
        // "a" holds one reference from readdirplus: unlinking it keeps it until forgotten.
        fs.unlink(&req, root, OsStr::new("a")).unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(fs.read(&req, a.node, 0, 0, &mut buf).unwrap(), 1);
        fs.forget(a.node, 1);
        assert_eq!(fs.getattr(&req, a.node, None).unwrap_err().errno(), Errno::ENOENT);
        // "c" was refused by the full sink and holds no reference: it is freed at once.
        let c = fs.lookup(&req, root, OsStr::new("c")).unwrap();
        fs.forget(c.node, 1);
        fs.unlink(&req, root, OsStr::new("c")).unwrap();
        assert_eq!(fs.getattr(&req, c.node, None).unwrap_err().errno(), Errno::ENOENT);
    }
}
