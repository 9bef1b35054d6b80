//! [`S3Fs`]: the filesystem over a [`Store`]. docs/s3.md describes the semantics; the
//! comments here say how.
//!
//! State: one node table behind a mutex (held briefly, never across a request), and per
//! file a data mutex ([`FileData`]) held across that file's downloads and uploads, so an
//! upload of one file never blocks another. Lock order: a file's data, then the table.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use plugfs_plugin_api::open_flags::{O_ACCMODE, O_APPEND, O_EXCL, O_RDONLY, O_TRUNC};
use plugfs_plugin_api::{
    Attr, AttrOut, Capabilities, DirEntry, DirPlusSink, DirSink, Entry, Errno, Error, FileKind, FileSystem, Handle,
    NodeId, Opened, RenameFlags, Request, Result, SetAttr, SetTime, StatFs, Timestamp,
};

use crate::cache::Cache;
use crate::config::Settings;
use crate::store::{ChunkStream, FileMeta, ObjectInfo, Store, StoreError};

const ROOT: NodeId = 1;
const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const S_IFDIR: u32 = 0o040000;
const S_IFLNK: u32 = 0o120000;
const S_ISGID: u32 = 0o2000;
/// S3's longest key, in bytes.
const MAX_KEY: usize = 1024;
/// S3's largest object.
pub const MAX_FILE: u64 = 5 << 40;
/// Keys asked for per listing request. S3 (and MinIO, Ceph RGW) give at most 1,000 and
/// say the listing is truncated, whatever is asked; servers that give more (moto does)
/// then need fewer requests, which matters where each page costs a scan of the bucket.
const LIST_PAGE: u32 = 10_000;
/// The smallest ranged GET of a read that is not sequential.
const MIN_READAHEAD: u64 = 256 << 10;
/// S3's smallest part but the last: less unchanged than this is never copied.
const MIN_PART: u64 = 5 << 20;

/// What the s3 plugin supports (docs/s3.md says why each is what it is).
pub const CAPABILITIES: Capabilities = Capabilities {
    writable: true,
    // In s3fs's format: the target as the object's content, S_IFLNK in x-amz-meta-mode.
    symlinks: true,
    hard_links: false,
    special_files: false,
    xattrs: false,
    permissions: true,
    fallocate: false,
    punch_hole: false,
    // Checked before the copy, not atomic against other clients (docs/s3.md).
    rename_noreplace: true,
    rename_exchange: false,
    sparse_files: false,
    case_sensitive: true,
    case_preserving: true,
    // s3fs's x-amz-meta-mtime holds whole seconds.
    nanosecond_times: false,
    checks_permissions: false,
    backing_files: false,
    format: false,
    max_name_len: 255,
    max_file_size: MAX_FILE,
    // Other clients create keys: a missing name is never cached by the kernel.
    negative_entry_ttl: std::time::Duration::ZERO,
};

/// A file's local copy and whether it differs from the stored object.
#[derive(Default)]
struct FileData {
    local: Option<Local>,
    /// The local copy (or the metadata) has changes the store does not have yet.
    dirty: bool,
    /// The ETag of the object the clean local copy holds: a copy kept after the last close
    /// serves reads again only while the object still has this ETag.
    etag: Option<String>,
    /// The local copy's first bytes that are still those of the object with `etag`
    /// (writes and truncates below lower it): an upload copies whole parts of them
    /// server-side instead of sending them (`Store::upload_over`).
    same_until: u64,
}

struct Local {
    file: File,
    /// Bytes of the cache budget this copy holds.
    reserved: u64,
}

struct Node {
    /// The path below the mount's prefix, without a trailing `/` (the root: empty).
    key: String,
    kind: FileKind,
    size: u64,
    mtime: Timestamp,
    atime: Timestamp,
    /// Permission bits (`0o7777`).
    perm: u32,
    uid: u32,
    gid: u32,
    /// The mode, owner and mtime came from the object's metadata (not from a listing).
    meta_known: bool,
    fetched: Instant,
    lookups: u64,
    opens: u32,
    /// A directory with a `dir/` marker object.
    has_marker: bool,
    /// A directory whose every entry is in the table since this time (listed whole, or
    /// made here empty): a name missing from the table is missing, without asking, while
    /// this is younger than `metadata_ttl`.
    complete_at: Option<Instant>,
    /// Still has its name (false after unlink, rmdir, or being replaced by rename).
    linked: bool,
    /// s3fs symlink: the target, read on first readlink.
    link_target: Option<Vec<u8>>,
    /// The object's ETag, as last seen (HEAD, listing, or our own upload).
    etag: Option<String>,
    data: Arc<Mutex<FileData>>,
    /// The table's clock when this node was last made, looked up or listed: eviction
    /// takes the least recently used first.
    used: u64,
}

struct OpenFile {
    flags: i32,
    ra: Mutex<ReadAhead>,
}

/// A handle's view of the object while it reads without a local copy: the bytes around
/// the reader, and for a sequential reader one streamed GET of the rest of the object.
#[derive(Default)]
struct ReadAhead {
    /// `buf` holds bytes `start..start + buf.len()` of the object.
    start: u64,
    buf: Vec<u8>,
    /// The streamed GET, whose next chunk continues `buf`.
    stream: Option<Box<dyn ChunkStream>>,
}

struct Listed {
    name: String,
    kind: FileKind,
    info: Option<ObjectInfo>,
}

#[derive(Default)]
struct DirHandle {
    entries: Option<Vec<Listed>>,
}

#[derive(Default)]
struct Table {
    nodes: HashMap<NodeId, Node>,
    by_key: HashMap<String, NodeId>,
    next_id: u64,
    /// Counts uses of nodes (`Node::used`).
    clock: u64,
    /// The number of nodes (root aside) above which the next use scans for eviction.
    evict_at: usize,
}

impl Table {
    fn touch(&mut self, id: NodeId) {
        self.clock += 1;
        let now = self.clock;
        if let Some(n) = self.nodes.get_mut(&id) {
            n.used = now;
        }
    }

    /// Whether the table may drop node `id`: it has its name (nameless ones go by
    /// `maybe_free`), the kernel holds no reference to it, nothing has it open, and its
    /// data is neither dirty nor held by anyone (an upload or a write in progress holds it).
    fn evictable(&self, id: NodeId) -> bool {
        id != ROOT
            && self.nodes.get(&id).is_some_and(|n| {
                n.linked
                    && n.lookups == 0
                    && n.opens == 0
                    && Arc::strong_count(&n.data) == 1
                    && n.data.try_lock().is_ok_and(|d| !d.dirty)
            })
    }

    /// Keeps the table at about `max` nodes beyond those the kernel references: once it
    /// has grown past `evict_at`, drops the least recently used evictable nodes down to 7/8
    /// of `max` (so a walk scans the table once per `max / 8` new names, not once per
    /// name). A directory that loses a child forgets that it was listed whole: the child's
    /// name is no longer in the table. Returns the bytes of kept local copies released
    /// with their nodes (for the caller to give back to the cache), and those nodes.
    fn evict(&mut self, max: usize) -> (u64, Vec<NodeId>) {
        let len = self.nodes.len().saturating_sub(1);
        if len <= max || len <= self.evict_at {
            return (0, Vec::new());
        }
        let mut order: Vec<(u64, NodeId)> =
            self.nodes.iter().filter(|(id, _)| self.evictable(**id)).map(|(id, n)| (n.used, *id)).collect();
        let target = max - max / 8;
        let excess = len.saturating_sub(target).min(order.len());
        let mut released = 0;
        let mut copies = Vec::new();
        if excess > 0 {
            order.select_nth_unstable(excess - 1);
            for &(_, id) in &order[..excess] {
                let Some(n) = self.nodes.remove(&id) else { continue };
                if self.by_key.get(&n.key) == Some(&id) {
                    self.by_key.remove(&n.key);
                }
                if let Some(&p) = self.by_key.get(parent_of(&n.key))
                    && p != id
                    && let Some(p) = self.nodes.get_mut(&p)
                {
                    p.complete_at = None;
                }
                if let Ok(mut d) = n.data.try_lock()
                    && let Some(old) = d.local.take()
                {
                    released += old.reserved;
                    copies.push(id);
                }
            }
        }
        // The nodes left are referenced (or busy): scan again after max / 8 more, or
        // sooner as the kernel forgets them (`forgotten`).
        self.evict_at = self.nodes.len().saturating_sub(1) + max / 8;
        (released, copies)
    }

    /// A node lost its last reference: the next scan may come one node sooner.
    fn forgotten(&mut self) {
        self.evict_at = self.evict_at.saturating_sub(1);
    }

    /// Nodes that the kernel may not reference (the root excluded): what `max_nodes` bounds.
    #[cfg(test)]
    fn unreferenced(&self) -> usize {
        self.nodes.iter().filter(|(id, n)| **id != ROOT && n.lookups == 0 && n.opens == 0).count()
    }
}

/// The s3 filesystem: [`Core`] and the thread that retries failed uploads.
pub struct S3Fs {
    core: Arc<Core>,
    retry: Option<(StopSignal, std::thread::JoinHandle<()>)>,
}

/// Set to stop the retry thread, which waits on the condvar between rounds.
type StopSignal = Arc<(Mutex<bool>, std::sync::Condvar)>;

impl std::ops::Deref for S3Fs {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

/// How often files left with changes by a failed upload are retried in the background.
const RETRY_EVERY: Duration = Duration::from_secs(5);

/// Everything but the retry thread, which holds a weak reference to it.
pub struct Core {
    store: Arc<dyn Store>,
    s: Settings,
    cache: Cache,
    read_only: bool,
    table: Mutex<Table>,
    files: Mutex<HashMap<Handle, Arc<OpenFile>>>,
    dirs: Mutex<HashMap<Handle, Arc<Mutex<DirHandle>>>>,
    next_handle: AtomicU64,
    started: Timestamp,
    /// Files whose clean local copy is kept after their last close, oldest first: the
    /// copies `cache_size` evicts first.
    idle: Mutex<std::collections::VecDeque<NodeId>>,
}

fn err(e: Errno, msg: impl Into<String>) -> Error {
    Error::with_message(e, msg.into())
}

/// A store failure as the caller's errno, logged with its cause.
fn store_err(op: &str, key: &str, e: StoreError) -> Error {
    match e {
        StoreError::NotFound => Errno::ENOENT.into(),
        StoreError::PreconditionFailed => Errno::EEXIST.into(),
        e => {
            tracing::error!("s3: {op} {key:?}: {e}");
            err(Errno::EIO, format!("{op} {key:?}: {e}"))
        }
    }
}

fn io_err(op: &str, e: std::io::Error) -> Error {
    tracing::error!("s3: local cache: {op}: {e}");
    Error::from_io(&e)
}

fn now_ts() -> Timestamp {
    Timestamp::from(SystemTime::now())
}

fn name_str(name: &OsStr) -> Result<&str> {
    let s = name.to_str().ok_or_else(|| err(Errno::EINVAL, "S3 keys are UTF-8; this name is not"))?;
    if s.len() > CAPABILITIES.max_name_len as usize {
        return Err(Errno::ENAMETOOLONG.into());
    }
    if s.is_empty() || s == "." || s == ".." || s.contains('/') {
        return Err(Errno::EINVAL.into());
    }
    Ok(s)
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() { name.to_string() } else { format!("{parent}/{name}") }
}

fn parent_of(key: &str) -> &str {
    key.rfind('/').map(|i| &key[..i]).unwrap_or("")
}

impl S3Fs {
    pub(crate) fn new(store: Arc<dyn Store>, s: Settings, cache: Cache, read_only: bool) -> S3Fs {
        let core = Arc::new(Core::new(store, s, cache, read_only));
        let stop: StopSignal = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let weak = Arc::downgrade(&core);
        let signal = stop.clone();
        let thread = std::thread::Builder::new().name("plugfs-s3-retry".into()).spawn(move || {
            let (lock, cv) = &*signal;
            loop {
                let stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
                let (stopped, _) = cv.wait_timeout(stopped, RETRY_EVERY).unwrap_or_else(|p| p.into_inner());
                if *stopped {
                    return;
                }
                drop(stopped);
                let Some(core) = weak.upgrade() else { return };
                if core.has_pending() {
                    core.retry_pending();
                }
            }
        });
        S3Fs { core, retry: thread.ok().map(|t| (stop, t)) }
    }
}

impl Core {
    fn new(store: Arc<dyn Store>, s: Settings, cache: Cache, read_only: bool) -> Core {
        let started = now_ts();
        let mut table = Table { next_id: ROOT + 1, ..Table::default() };
        table.nodes.insert(
            ROOT,
            Node {
                key: String::new(),
                kind: FileKind::Directory,
                size: 0,
                mtime: started,
                atime: started,
                perm: s.dir_mode,
                uid: s.uid,
                gid: s.gid,
                meta_known: true,
                fetched: Instant::now(),
                lookups: 1,
                opens: 0,
                has_marker: false,
                complete_at: None,
                linked: true,
                link_target: None,
                etag: None,
                data: Arc::default(),
                used: 0,
            },
        );
        table.by_key.insert(String::new(), ROOT);
        Core {
            store,
            s,
            cache,
            read_only,
            table: Mutex::new(table),
            files: Mutex::default(),
            dirs: Mutex::default(),
            next_handle: AtomicU64::new(1),
            started,
            idle: Mutex::default(),
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The full object key of a path.
    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.s.prefix)
    }

    /// The prefix that lists a directory's children (and is its marker's key).
    fn dir_prefix(&self, key: &str) -> String {
        if key.is_empty() { self.s.prefix.clone() } else { format!("{}{key}/", self.s.prefix) }
    }

    fn writable(&self) -> Result<()> {
        if self.read_only { Err(Errno::EROFS.into()) } else { Ok(()) }
    }

    fn ttl(&self) -> Duration {
        self.s.metadata_ttl
    }

    fn attr_of(&self, id: NodeId, n: &Node) -> Attr {
        let dir = n.kind == FileKind::Directory;
        Attr {
            ino: id,
            size: if dir { 0 } else { n.size },
            blocks: n.size.div_ceil(512),
            atime: n.atime,
            mtime: n.mtime,
            ctime: n.mtime,
            crtime: n.mtime,
            kind: n.kind,
            perm: (n.perm & 0o7777) as u16,
            // Directories do not count their subdirectories: that would need a listing
            // per stat (docs/s3.md). 1 is what find(1) reads as "unknown".
            nlink: if n.linked { 1 } else { 0 },
            uid: n.uid,
            gid: n.gid,
            rdev: 0,
            blksize: 1 << 20,
        }
    }

    fn entry_of(&self, id: NodeId, n: &Node) -> Entry {
        Entry { node: id, generation: 0, attr: self.attr_of(id, n), entry_ttl: self.ttl(), attr_ttl: self.ttl() }
    }

    fn key_of(&self, id: NodeId) -> Result<(String, FileKind)> {
        let t = self.table();
        let n = t.nodes.get(&id).ok_or_else(|| err(Errno::ENOENT, "stale node"))?;
        Ok((n.key.clone(), n.kind))
    }

    fn dir_key(&self, id: NodeId) -> Result<String> {
        let (key, kind) = self.key_of(id)?;
        if kind != FileKind::Directory {
            return Err(Errno::ENOTDIR.into());
        }
        Ok(key)
    }

    fn child_key(&self, parent: NodeId, name: &OsStr) -> Result<String> {
        let name = name_str(name)?;
        let key = join(&self.dir_key(parent)?, name);
        if self.full(&key).len() + 1 > MAX_KEY {
            return Err(err(Errno::ENAMETOOLONG, "the object key would be longer than S3's 1024 bytes"));
        }
        Ok(key)
    }

    fn meta_of(&self, n: &Node) -> FileMeta {
        let kind_bits = match n.kind {
            FileKind::Directory => S_IFDIR,
            FileKind::Symlink => S_IFLNK,
            _ => S_IFREG,
        };
        FileMeta {
            mode: Some(kind_bits | (n.perm & 0o7777)),
            uid: Some(n.uid),
            gid: Some(n.gid),
            mtime: Some(n.mtime.secs),
            atime: Some(n.atime.secs),
        }
    }

    /// Node attributes from an object (HEAD or listing) or a directory.
    fn fill(&self, n: &mut Node, kind: FileKind, info: Option<&ObjectInfo>) {
        n.kind = kind;
        n.fetched = Instant::now();
        if let Some(info) = info {
            if kind != FileKind::Directory {
                n.size = info.size;
                n.etag = info.etag.clone();
            }
            let meta = info.meta.unwrap_or_default();
            n.mtime =
                meta.mtime.map(|s| Timestamp::new(s, 0)).or(info.modified.map(Timestamp::from)).unwrap_or(self.started);
            n.atime = meta.atime.map(|s| Timestamp::new(s, 0)).unwrap_or(n.mtime);
            if info.meta.is_some() {
                n.meta_known = true;
                n.perm = meta.mode.map(|m| m & 0o7777).unwrap_or(if kind == FileKind::Directory {
                    self.s.dir_mode
                } else {
                    self.s.file_mode
                });
                n.uid = meta.uid.unwrap_or(self.s.uid);
                n.gid = meta.gid.unwrap_or(self.s.gid);
            }
        }
    }

    /// Finds or makes the node for `key` with what the store said about it, and returns its
    /// id. A node of another kind under the same name is replaced (it loses its name).
    fn upsert(&self, t: &mut Table, key: &str, kind: FileKind, info: Option<&ObjectInfo>, has_marker: bool) -> NodeId {
        if let Some(&id) = t.by_key.get(key) {
            let same = t.nodes.get(&id).is_some_and(|n| n.kind == kind);
            if same {
                // try_lock: the table is held, and the order is data then table.
                let local =
                    t.nodes.get(&id).is_some_and(|n| n.opens > 0 || n.data.try_lock().map(|d| d.dirty).unwrap_or(true));
                let fresh = t.nodes.get(&id).is_some_and(|n| n.meta_known && n.fetched.elapsed() < self.ttl());
                if let Some(n) = t.nodes.get_mut(&id) {
                    n.has_marker |= has_marker;
                    // A node being written keeps its own size and times; one whose
                    // metadata is fresh keeps it against a listing that lacks it.
                    if !(local || fresh && info.is_some_and(|i| i.meta.is_none())) {
                        self.fill(n, kind, info);
                    }
                }
                t.touch(id);
                return id;
            }
            t.by_key.remove(key);
            if let Some(n) = t.nodes.get_mut(&id) {
                n.linked = false;
            }
            self.maybe_free(t, id);
        }
        let id = t.next_id;
        t.next_id += 1;
        let mut n = Node {
            key: key.to_string(),
            kind,
            size: 0,
            mtime: self.started,
            atime: self.started,
            perm: if kind == FileKind::Directory { self.s.dir_mode } else { self.s.file_mode },
            uid: self.s.uid,
            gid: self.s.gid,
            meta_known: false,
            fetched: Instant::now(),
            lookups: 0,
            opens: 0,
            has_marker,
            complete_at: None,
            linked: true,
            link_target: None,
            etag: None,
            data: Arc::default(),
            used: 0,
        };
        self.fill(&mut n, kind, info);
        if kind == FileKind::Directory && info.is_none() {
            // A directory without a marker has no metadata of its own.
            n.meta_known = true;
        }
        t.nodes.insert(id, n);
        t.by_key.insert(key.to_string(), id);
        t.touch(id);
        id
    }

    /// Bounds the table (`max_nodes`, [`Table::evict`]). Called where no node id is held
    /// without a reference: after a lookup has counted its own, at the end of a listing.
    fn trim(&self, t: &mut Table) {
        let (released, copies) = t.evict(self.s.max_nodes);
        if released > 0 {
            self.cache.release(released);
        }
        if !copies.is_empty() {
            // Lock order: nothing takes the table while holding `idle`.
            let gone: HashSet<NodeId> = copies.into_iter().collect();
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).retain(|id| !gone.contains(id));
        }
    }

    /// Frees a node that lost its name and that nobody refers to any more. Nodes with a
    /// name stay for the whole mount, so a name keeps its inode number (across renames
    /// too) even while the kernel holds no reference: S3 has no inode numbers to ask for.
    fn maybe_free(&self, t: &mut Table, id: NodeId) {
        if id == ROOT {
            return;
        }
        let free = t.nodes.get(&id).is_some_and(|n| {
            !n.linked
                && n.lookups == 0
                && n.opens == 0
                && n.data.try_lock().is_ok_and(|mut d| {
                    // A kept copy of a file that lost its name goes with it.
                    if !d.dirty
                        && let Some(old) = d.local.take()
                    {
                        self.cache.release(old.reserved);
                    }
                    !d.dirty
                })
        });
        if free
            && let Some(n) = t.nodes.remove(&id)
            && t.by_key.get(&n.key) == Some(&id)
        {
            t.by_key.remove(&n.key);
        }
    }

    /// What the store has under `key`: a file (HEAD), else a directory (its marker, or any
    /// key below it). A file shadows a directory of the same name (docs/s3.md).
    fn resolve(&self, key: &str) -> Result<Option<(FileKind, Option<ObjectInfo>, bool)>> {
        let full = self.full(key);
        if let Some(info) = self.store.head(&full).map_err(|e| store_err("HEAD", &full, e))? {
            let mode = info.meta.and_then(|m| m.mode).unwrap_or(S_IFREG);
            let kind = match mode & S_IFMT {
                S_IFDIR => FileKind::Directory,
                S_IFLNK => FileKind::Symlink,
                _ => FileKind::File,
            };
            return Ok(Some((kind, Some(info), false)));
        }
        let prefix = self.dir_prefix(key);
        // The marker and a listing at once: one round trip for either kind of directory.
        let (marker, listed) = std::thread::scope(|s| {
            let m = s.spawn(|| self.store.head(&prefix));
            let l = self.store.list(&prefix, true, None, 1);
            (m.join().unwrap_or_else(|_| Err(StoreError::BadResponse("HEAD panicked".into()))), l)
        });
        if let Some(info) = marker.map_err(|e| store_err("HEAD", &prefix, e))? {
            return Ok(Some((FileKind::Directory, Some(info), true)));
        }
        let page = listed.map_err(|e| store_err("LIST", &prefix, e))?;
        if !page.objects.is_empty() || !page.prefixes.is_empty() {
            return Ok(Some((FileKind::Directory, None, false)));
        }
        Ok(None)
    }

    /// The node for `key`, from the table while fresh, else from the store.
    fn lookup_key(&self, key: &str) -> Result<NodeId> {
        {
            let t = self.table();
            if let Some(&id) = t.by_key.get(key)
                && let Some(n) = t.nodes.get(&id)
                && (n.fetched.elapsed() < self.ttl() || n.opens > 0 || n.kind == FileKind::Directory && id == ROOT)
            {
                return Ok(id);
            }
        }
        // A file written here and not yet stored is only in the table.
        let pending = {
            let t = self.table();
            t.by_key
                .get(key)
                .and_then(|id| t.nodes.get(id))
                .is_some_and(|n| n.data.try_lock().map(|d| d.dirty).unwrap_or(true))
        };
        if pending {
            let t = self.table();
            return t.by_key.get(key).copied().ok_or(Errno::ENOENT.into());
        }
        {
            // Creating files in a directory made or listed here moments ago: no requests
            // to learn that a new name is new.
            let t = self.table();
            let known = t.by_key.get(key).and_then(|id| t.nodes.get(id)).is_some_and(|n| n.linked);
            let complete = t
                .by_key
                .get(parent_of(key))
                .and_then(|id| t.nodes.get(id))
                .and_then(|p| p.complete_at)
                .is_some_and(|at| at.elapsed() < self.ttl());
            if complete && !known && !key.is_empty() {
                return Err(Errno::ENOENT.into());
            }
        }
        match self.resolve(key)? {
            Some((kind, info, marker)) => {
                let mut t = self.table();
                Ok(self.upsert(&mut t, key, kind, info.as_ref(), marker))
            }
            None => {
                let mut t = self.table();
                if let Some(id) = t.by_key.remove(key) {
                    if let Some(n) = t.nodes.get_mut(&id) {
                        n.linked = false;
                    }
                    self.maybe_free(&mut t, id);
                }
                Err(Errno::ENOENT.into())
            }
        }
    }

    fn new_handle(&self) -> Handle {
        self.next_handle.fetch_add(1, Ordering::Relaxed)
    }

    fn open_file(&self, h: Handle) -> Result<Arc<OpenFile>> {
        self.files.lock().unwrap_or_else(|p| p.into_inner()).get(&h).cloned().ok_or(Errno::EBADF.into())
    }

    fn data_of(&self, id: NodeId) -> Result<Arc<Mutex<FileData>>> {
        let t = self.table();
        Ok(t.nodes.get(&id).ok_or(Error::new(Errno::ENOENT))?.data.clone())
    }

    /// Makes sure the file has a local copy (downloading the object into it unless
    /// `empty`), inside its data lock.
    fn ensure_local(&self, id: NodeId, d: &mut FileData, empty: bool) -> Result<()> {
        if d.local.is_some() && !empty {
            // A clean copy of an object that changed since is not the file any more.
            let current = self.table().nodes.get(&id).and_then(|n| n.etag.clone());
            if d.dirty || current.is_none() || d.etag == current {
                return Ok(());
            }
        }
        let (key, size, linked, etag) = {
            let t = self.table();
            let n = t.nodes.get(&id).ok_or(Error::new(Errno::ENOENT))?;
            (n.key.clone(), n.size, n.linked, n.etag.clone())
        };
        let want = if empty { 0 } else { size };
        if !self.reserve(want) {
            return Err(err(Errno::ENOSPC, format!("cache_size ({} bytes) is full", self.cache.limit())));
        }
        let file = match self.cache.new_file() {
            Ok(f) => f,
            Err(e) => {
                self.cache.release(want);
                return Err(io_err("new copy", e));
            }
        };
        if !empty && size > 0 {
            if !linked {
                self.cache.release(want);
                return Err(err(Errno::EIO, "the object was removed before it was copied"));
            }
            let full = self.full(&key);
            if let Err(e) = self.store.download(&full, &file) {
                self.cache.release(want);
                return Err(store_err("GET", &full, e));
            }
        }
        if let Some(old) = d.local.take() {
            self.cache.release(old.reserved);
        }
        d.local = Some(Local { file, reserved: want });
        d.etag = if empty { None } else { etag };
        d.same_until = want;
        Ok(())
    }

    /// Reserves cache space, evicting kept copies of closed files (oldest first) if needed.
    fn reserve(&self, bytes: u64) -> bool {
        if self.cache.reserve(bytes) {
            return true;
        }
        loop {
            let Some(id) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop_front() else {
                return false;
            };
            let data = {
                let t = self.table();
                match t.nodes.get(&id) {
                    Some(n) if n.opens == 0 => n.data.clone(),
                    _ => continue,
                }
            };
            // try_lock: the caller may hold another file's data lock; never wait for one.
            if let Ok(mut d) = data.try_lock()
                && !d.dirty
                && let Some(old) = d.local.take()
            {
                self.cache.release(old.reserved);
            }
            if self.cache.reserve(bytes) {
                return true;
            }
        }
    }

    /// Stores the local copy if it has changes. Returns when the object is stored.
    fn upload(&self, id: NodeId, d: &mut FileData) -> Result<()> {
        if !d.dirty {
            return Ok(());
        }
        let (key, meta, linked) = {
            let t = self.table();
            let n = t.nodes.get(&id).ok_or(Error::new(Errno::ENOENT))?;
            (n.key.clone(), self.meta_of(n), n.linked)
        };
        if !linked {
            // Unlinked while open: its data has nowhere to go.
            d.dirty = false;
            return Ok(());
        }
        let full = self.full(&key);
        match &d.local {
            Some(local) => {
                let size = local.file.metadata().map_err(|e| io_err("stat copy", e))?.len();
                let stored = match &d.etag {
                    // An append or a small overwrite of a large object: its unchanged parts
                    // are copied server-side, if it is still the object the copy came from.
                    // The HEAD first because not every server honours the copy's condition
                    // (moto ignores x-amz-copy-source-if-match); S3 does, which closes the
                    // race between the two.
                    Some(base) if d.same_until > 0 && size > self.s.part_size && d.same_until >= MIN_PART => {
                        let current = self.store.head(&full).map(|i| i.and_then(|i| i.etag));
                        let same = matches!(&current, Ok(Some(e)) if e == base);
                        let r = if same {
                            self.store.upload_over(&full, &local.file, size, &meta, d.same_until, base)
                        } else {
                            Err(StoreError::PreconditionFailed)
                        };
                        match r {
                            Err(StoreError::PreconditionFailed | StoreError::NotFound) => {
                                tracing::info!("s3: {full:?} changed in the store; uploading it whole");
                                self.store.upload(&full, &local.file, size, &meta)
                            }
                            r => r,
                        }
                    }
                    _ => self.store.upload(&full, &local.file, size, &meta),
                };
                let etag = stored.map_err(|e| store_err("PUT", &full, e))?;
                d.same_until = if etag.is_some() { size } else { 0 };
                d.etag = etag.clone();
                if let Some(n) = self.table().nodes.get_mut(&id) {
                    n.etag = etag;
                }
            }
            None => {
                // Only the metadata changed: a copy onto itself replaces it server-side.
                let size = self.table().nodes.get(&id).map(|n| n.size).unwrap_or(0);
                self.store.copy(&full, &full, size, Some(&meta)).map_err(|e| store_err("COPY", &full, e))?;
            }
        }
        d.dirty = false;
        let mut t = self.table();
        if let Some(n) = t.nodes.get_mut(&id) {
            n.fetched = Instant::now();
            n.meta_known = true;
        }
        Ok(())
    }

    /// After a close: a file nobody has open any more keeps its local copy if it is
    /// stored and its ETag is known (a read cache, bounded by `cache_size`); otherwise the
    /// copy goes.
    fn drop_local_if_idle(&self, id: NodeId, d: &mut FileData) {
        let (opens, keep) = self
            .table()
            .nodes
            .get(&id)
            .map(|n| (n.opens, n.linked && n.etag.is_some() && n.etag == d.etag))
            .unwrap_or((0, false));
        if opens > 0 || d.dirty || d.local.is_none() {
            return;
        }
        if keep {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.retain(|&i| i != id);
            idle.push_back(id);
        } else if let Some(old) = d.local.take() {
            self.cache.release(old.reserved);
        }
    }

    /// Keeps an implicit directory (one without a marker) alive when its last entry goes:
    /// without a marker it would vanish with its last key.
    fn pin_dir(&self, key: &str) -> Result<()> {
        if key.is_empty() {
            return Ok(());
        }
        let (id, meta) = {
            let t = self.table();
            let Some(&id) = t.by_key.get(key) else { return Ok(()) };
            let Some(n) = t.nodes.get(&id) else { return Ok(()) };
            if n.has_marker {
                return Ok(());
            }
            (id, self.meta_of(n))
        };
        let marker = self.dir_prefix(key);
        self.store.put(&marker, Bytes::new(), &meta, false).map_err(|e| store_err("PUT", &marker, e))?;
        if let Some(n) = self.table().nodes.get_mut(&id) {
            n.has_marker = true;
        }
        Ok(())
    }

    /// The children of directory `key`: one delimited listing, paginated.
    fn list_dir(&self, key: &str) -> Result<Vec<Listed>> {
        let prefix = self.dir_prefix(key);
        let mut token: Option<String> = None;
        let mut files = Vec::new();
        let mut dirs = Vec::new();
        loop {
            let page = self
                .store
                .list(&prefix, true, token.as_deref(), LIST_PAGE)
                .map_err(|e| store_err("LIST", &prefix, e))?;
            for p in page.prefixes {
                let name = p.strip_prefix(&prefix).unwrap_or("").trim_end_matches('/');
                if !name.is_empty() && name != "." && name != ".." && !name.contains('/') && name.len() <= 255 {
                    dirs.push(name.to_string());
                }
            }
            for o in page.objects {
                let name = o.key.strip_prefix(&prefix).unwrap_or("");
                // The directory's own marker, and keys no name can show.
                if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.len() > 255 {
                    continue;
                }
                files.push(Listed { name: name.to_string(), kind: FileKind::File, info: Some(o) });
            }
            match page.next {
                Some(t) if token.as_deref() != Some(t.as_str()) => token = Some(t),
                _ => break,
            }
        }
        // A file shadows a directory of the same name, as in lookup.
        let names: HashSet<&str> = files.iter().map(|f| f.name.as_str()).collect();
        let dirs: Vec<Listed> = dirs
            .into_iter()
            .filter(|d| !names.contains(d.as_str()))
            .map(|name| Listed { name, kind: FileKind::Directory, info: None })
            .collect();
        let mut all = dirs;
        all.extend(files);
        // Every listed name into the table now (not only those a page takes), so the
        // directory counts as complete for negative lookups.
        let started = Instant::now();
        let mut t = self.table();
        for l in &all {
            let child = join(key, &l.name);
            let known = t
                .by_key
                .get(&child)
                .and_then(|id| t.nodes.get(id))
                .is_some_and(|n| n.kind == l.kind || n.kind == FileKind::Symlink && l.kind == FileKind::File);
            if !known {
                self.upsert(&mut t, &child, l.kind, l.info.as_ref(), false);
            } else {
                let kind = t.by_key.get(&child).and_then(|id| t.nodes.get(id)).map(|n| n.kind).unwrap_or(l.kind);
                self.upsert(&mut t, &child, kind, l.info.as_ref(), false);
            }
        }
        if let Some(&id) = t.by_key.get(key)
            && let Some(n) = t.nodes.get_mut(&id)
        {
            n.complete_at = Some(started);
        }
        // A directory larger than the table's bound loses some of its names again here,
        // and with them its completeness.
        self.trim(&mut t);
        Ok(all)
    }

    fn dir_handle(&self, h: Handle) -> Result<Arc<Mutex<DirHandle>>> {
        self.dirs.lock().unwrap_or_else(|p| p.into_inner()).get(&h).cloned().ok_or(Errno::EBADF.into())
    }

    /// Lists from `cookie`, calling `add(name, kind, id)` until it says stop. Cookies 1 and
    /// 2 are `.` and `..`; entry i of the handle's listing has cookie i + 3.
    fn list_from(
        &self,
        node: NodeId,
        handle: Handle,
        cookie: u64,
        mut add: impl FnMut(&str, FileKind, NodeId, u64, Option<Entry>) -> bool,
        plus: bool,
    ) -> Result<()> {
        let key = self.dir_key(node)?;
        let dh = self.dir_handle(handle)?;
        let mut dh = dh.lock().unwrap_or_else(|p| p.into_inner());
        if dh.entries.is_none() || cookie == 0 {
            dh.entries = Some(self.list_dir(&key)?);
        }
        let parent = {
            let t = self.table();
            t.by_key.get(parent_of(&key)).copied().unwrap_or(ROOT)
        };
        if cookie < 1 && !add(".", FileKind::Directory, node, 1, None) {
            return Ok(());
        }
        if cookie < 2 && !add("..", FileKind::Directory, parent, 2, None) {
            return Ok(());
        }
        let entries = dh.entries.as_deref().unwrap_or(&[]);
        let start = cookie.saturating_sub(2) as usize;
        for (i, l) in entries.iter().enumerate().skip(start) {
            let child = join(&key, &l.name);
            let mut t = self.table();
            let id = match t.by_key.get(&child).copied() {
                // A node the table knows keeps its own (possibly fresher) attributes.
                Some(id) if t.nodes.get(&id).is_some_and(|n| n.kind == l.kind || n.kind == FileKind::Symlink) => id,
                _ => self.upsert(&mut t, &child, l.kind, l.info.as_ref(), false),
            };
            let Some(n) = t.nodes.get(&id) else { continue };
            let kind = n.kind;
            let entry = plus.then(|| self.entry_of(id, n));
            if !add(&l.name, kind, id, i as u64 + 3, entry) {
                self.maybe_free(&mut t, id);
                break;
            }
            if plus && let Some(n) = t.nodes.get_mut(&id) {
                n.lookups += 1;
            }
            t.touch(id);
            if !plus {
                self.maybe_free(&mut t, id);
            }
        }
        self.trim(&mut self.table());
        Ok(())
    }

    /// Reads without a local copy. The first read (and any read after a seek) is one
    /// ranged GET of at least 256 KiB; a read that continues where the buffer ends opens one
    /// streamed GET of the rest of the object, which later sequential reads consume as it
    /// arrives. Memory per handle: the bytes kept behind the reader (`KEEP_BEHIND`, for the
    /// kernel's read-ahead, whose reads arrive out of order), the read, and the stream's
    /// bounded channel.
    fn read_remote(&self, of: &OpenFile, key: &str, size: u64, offset: u64, buf: &mut [u8]) -> Result<usize> {
        const KEEP_BEHIND: u64 = 4 << 20;
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(size - offset);
        let mut ra = of.ra.lock().unwrap_or_else(|p| p.into_inner());
        let full = self.full(key);
        let covered = |ra: &ReadAhead| offset >= ra.start && offset + want <= ra.start + ra.buf.len() as u64;
        if !covered(&ra) {
            let end = ra.start + ra.buf.len() as u64;
            let sequential = !ra.buf.is_empty() && offset >= ra.start && offset <= end + MIN_READAHEAD;
            if sequential && ra.stream.is_none() && end < size {
                match self.store.get_stream(&full, end, size - end) {
                    Ok(st) => ra.stream = Some(st),
                    Err(e) => tracing::warn!("s3: streamed GET {full:?}: {e}; reading by ranges"),
                }
            }
            if sequential {
                while !covered(&ra) {
                    let Some(st) = ra.stream.as_mut() else { break };
                    match st.next_chunk() {
                        Some(Ok(chunk)) => ra.buf.extend_from_slice(&chunk),
                        Some(Err(e)) => {
                            tracing::warn!("s3: streamed GET {full:?} broke: {e}; reading by ranges");
                            ra.stream = None;
                        }
                        None => ra.stream = None,
                    }
                }
                // Keep only a little behind the reader.
                let behind = (offset.saturating_sub(KEEP_BEHIND).saturating_sub(ra.start) as usize).min(ra.buf.len());
                if behind > 0 {
                    ra.buf.drain(..behind);
                    ra.start += behind as u64;
                }
            }
            if !covered(&ra) {
                // A seek, or the stream failed: one ranged GET, and no stream until the
                // reader shows it is sequential again.
                let len = MIN_READAHEAD.max(want).min(size - offset);
                let data = self.store.get_range(&full, offset, len).map_err(|e| store_err("GET", &full, e))?;
                ra.stream = None;
                ra.start = offset;
                ra.buf = data.to_vec();
            }
        }
        let from = offset.saturating_sub(ra.start) as usize;
        let avail = ra.buf.len().saturating_sub(from);
        let n = avail.min(want as usize);
        buf[..n].copy_from_slice(&ra.buf[from..from + n]);
        Ok(n)
    }

    /// Copies or moves one object, for rename.
    fn move_object(&self, from: &str, to: &str, size: u64) -> Result<()> {
        self.store.copy(from, to, size, None).map_err(|e| store_err("COPY", from, e))?;
        self.store.delete(from).map_err(|e| store_err("DELETE", from, e))
    }

    /// Whether directory `key` has any entry.
    fn dir_is_empty(&self, key: &str) -> Result<bool> {
        let prefix = self.dir_prefix(key);
        let page = self.store.list(&prefix, true, None, 2).map_err(|e| store_err("LIST", &prefix, e))?;
        Ok(page.prefixes.is_empty() && page.objects.iter().all(|o| o.key == prefix))
    }

    /// Every key below directory `key` (its marker included).
    fn all_keys_below(&self, key: &str) -> Result<Vec<ObjectInfo>> {
        let prefix = self.dir_prefix(key);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .store
                .list(&prefix, false, token.as_deref(), LIST_PAGE)
                .map_err(|e| store_err("LIST", &prefix, e))?;
            out.extend(page.objects);
            match page.next {
                Some(t) if token.as_deref() != Some(t.as_str()) => token = Some(t),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Re-keys every node at or below `from` to `to` after a rename.
    fn rekey(&self, t: &mut Table, from: &str, to: &str) {
        let below = format!("{from}/");
        let moved: Vec<(String, NodeId)> = t
            .by_key
            .iter()
            .filter(|(k, _)| k.as_str() == from || k.starts_with(&below))
            .map(|(k, id)| (k.clone(), *id))
            .collect();
        for (k, _) in &moved {
            t.by_key.remove(k);
        }
        for (k, id) in moved {
            let nk = format!("{to}{}", &k[from.len()..]);
            if let Some(old) = t.by_key.insert(nk.clone(), id)
                && let Some(n) = t.nodes.get_mut(&old)
            {
                n.linked = false;
            }
            if let Some(n) = t.nodes.get_mut(&id) {
                n.key = nk;
            }
        }
    }

    fn unlink_node(&self, t: &mut Table, key: &str) {
        if let Some(id) = t.by_key.remove(key) {
            if let Some(n) = t.nodes.get_mut(&id) {
                n.linked = false;
            }
            self.maybe_free(t, id);
        }
    }

    fn check_size(&self, end: u64) -> Result<()> {
        if end > MAX_FILE { Err(err(Errno::EFBIG, "S3 objects are at most 5 TiB")) } else { Ok(()) }
    }
}

impl FileSystem for S3Fs {
    fn lookup(&self, _req: &Request, parent: NodeId, name: &OsStr) -> Result<Entry> {
        let key = self.child_key(parent, name)?;
        // Another thread's trim may evict the node between lookup_key and the count below
        // (it is unreferenced then): look again, which makes a new one.
        for _ in 0..3 {
            let id = self.lookup_key(&key)?;
            let mut t = self.table();
            let Some(n) = t.nodes.get_mut(&id) else { continue };
            n.lookups += 1;
            t.touch(id);
            let entry = t.nodes.get(&id).map(|n| self.entry_of(id, n));
            self.trim(&mut t);
            return entry.ok_or(Error::new(Errno::ENOENT));
        }
        Err(err(Errno::EIO, "the node table kept evicting this name"))
    }

    fn forget(&self, node: NodeId, nlookup: u64) {
        let mut t = self.table();
        if let Some(n) = t.nodes.get_mut(&node) {
            let had = n.lookups;
            n.lookups = n.lookups.saturating_sub(nlookup);
            if had > 0 && n.lookups == 0 {
                t.forgotten();
            }
        }
        self.maybe_free(&mut t, node);
        self.trim(&mut t);
    }

    fn getattr(&self, _req: &Request, node: NodeId, _handle: Option<Handle>) -> Result<AttrOut> {
        let (key, kind, stale, busy) = {
            let t = self.table();
            let n = t.nodes.get(&node).ok_or(Error::new(Errno::ENOENT))?;
            let busy = n.opens > 0 || !n.linked || n.data.try_lock().map(|d| d.dirty).unwrap_or(true);
            (n.key.clone(), n.kind, n.fetched.elapsed() >= self.ttl(), busy)
        };
        // Files that nobody here is using are refreshed from the store once stale:
        // another client may have changed them.
        if stale && !busy && kind == FileKind::File && node != ROOT {
            let full = self.full(&key);
            match self.store.head(&full).map_err(|e| store_err("HEAD", &full, e))? {
                Some(info) => {
                    let mut t = self.table();
                    if let Some(n) = t.nodes.get_mut(&node) {
                        self.fill(n, kind, Some(&info));
                    }
                }
                None => {
                    let mut t = self.table();
                    self.unlink_node(&mut t, &key);
                    return Err(Errno::ENOENT.into());
                }
            }
        }
        let t = self.table();
        let n = t.nodes.get(&node).ok_or(Error::new(Errno::ENOENT))?;
        Ok(AttrOut { attr: self.attr_of(node, n), ttl: self.ttl() })
    }

    fn setattr(&self, _req: &Request, node: NodeId, set: &SetAttr) -> Result<AttrOut> {
        self.writable()?;
        let (kind, key) = {
            let t = self.table();
            let n = t.nodes.get(&node).ok_or(Error::new(Errno::ENOENT))?;
            (n.kind, n.key.clone())
        };
        let data = self.data_of(node)?;
        let mut d = data.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(size) = set.size {
            if kind == FileKind::Directory {
                return Err(Errno::EISDIR.into());
            }
            self.check_size(size)?;
            self.ensure_local(node, &mut d, size == 0)?;
            if let Some(local) = d.local.as_mut() {
                let grow = size.saturating_sub(local.reserved);
                if !self.reserve(grow) {
                    return Err(err(Errno::ENOSPC, "cache_size is full"));
                }
                local.reserved += grow;
                local.file.set_len(size).map_err(|e| io_err("truncate", e))?;
            }
            d.same_until = d.same_until.min(size);
            d.dirty = true;
        }
        let meta_change =
            set.mode.is_some() || set.uid.is_some() || set.gid.is_some() || set.mtime.is_some() || set.atime.is_some();
        {
            let mut t = self.table();
            let n = t.nodes.get_mut(&node).ok_or(Error::new(Errno::ENOENT))?;
            if let Some(size) = set.size {
                n.size = size;
                n.mtime = now_ts();
            }
            if let Some(m) = set.mode {
                n.perm = m & 0o7777;
            }
            if let Some(u) = set.uid {
                n.uid = u;
            }
            if let Some(g) = set.gid {
                n.gid = g;
            }
            // Whole seconds: what the metadata keeps (nanosecond_times is false).
            match set.mtime {
                Some(SetTime::Now) => n.mtime = Timestamp::new(now_ts().secs, 0),
                Some(SetTime::At(ts)) => n.mtime = Timestamp::new(ts.secs, 0),
                None => {}
            }
            match set.atime {
                Some(SetTime::Now) => n.atime = Timestamp::new(now_ts().secs, 0),
                Some(SetTime::At(ts)) => n.atime = Timestamp::new(ts.secs, 0),
                None => {}
            }
            n.meta_known = true;
            n.fetched = Instant::now();
        }
        if meta_change {
            match kind {
                FileKind::Directory => {
                    if !key.is_empty() {
                        // The marker carries a directory's metadata (made if missing).
                        let meta = self.meta_of(self.table().nodes.get(&node).ok_or(Error::new(Errno::ENOENT))?);
                        let marker = self.dir_prefix(&key);
                        self.store
                            .put(&marker, Bytes::new(), &meta, false)
                            .map_err(|e| store_err("PUT", &marker, e))?;
                        if let Some(n) = self.table().nodes.get_mut(&node) {
                            n.has_marker = true;
                        }
                    }
                    // The root has no object of its own: its attributes live in memory.
                }
                _ => {
                    // Only the metadata changed on a closed file: drop a kept copy, so the
                    // upload is a metadata-only server-side copy, not the whole file again.
                    let opens = self.table().nodes.get(&node).map(|n| n.opens).unwrap_or(0);
                    if opens == 0
                        && !d.dirty
                        && set.size.is_none()
                        && let Some(old) = d.local.take()
                    {
                        self.cache.release(old.reserved);
                    }
                    d.dirty = true;
                }
            }
        }
        // With no open handle no close will store the change: store it now. With one, the
        // change goes with the data on close or fsync.
        let opens = self.table().nodes.get(&node).map(|n| n.opens).unwrap_or(0);
        if opens == 0 && d.dirty {
            self.upload(node, &mut d)?;
            self.drop_local_if_idle(node, &mut d);
        }
        drop(d);
        let t = self.table();
        let n = t.nodes.get(&node).ok_or(Error::new(Errno::ENOENT))?;
        Ok(AttrOut { attr: self.attr_of(node, n), ttl: self.ttl() })
    }

    fn readlink(&self, _req: &Request, node: NodeId, buf: &mut [u8]) -> Result<usize> {
        let (key, kind, cached) = {
            let t = self.table();
            let n = t.nodes.get(&node).ok_or(Error::new(Errno::ENOENT))?;
            (n.key.clone(), n.kind, n.link_target.clone())
        };
        if kind != FileKind::Symlink {
            return Err(Errno::EINVAL.into());
        }
        // s3fs stores a symlink as an object whose content is the target.
        let target = match cached {
            Some(t) => t,
            None => {
                let full = self.full(&key);
                let data = self.store.get_range(&full, 0, 4096).map_err(|e| store_err("GET", &full, e))?.to_vec();
                if let Some(n) = self.table().nodes.get_mut(&node) {
                    n.link_target = Some(data.clone());
                }
                data
            }
        };
        let dst = buf.get_mut(..target.len()).ok_or(Error::new(Errno::ERANGE))?;
        dst.copy_from_slice(&target);
        Ok(target.len())
    }

    fn mkdir(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32) -> Result<Entry> {
        self.writable()?;
        let key = self.child_key(parent, name)?;
        // A file of that name (the conditional PUT below only sees a marker).
        match self.lookup_key(&key) {
            Ok(_) => return Err(Errno::EEXIST.into()),
            Err(e) if e.errno() == Errno::ENOENT => {}
            Err(e) => return Err(e),
        }
        let (pgid, psgid) = {
            let t = self.table();
            let p = t.nodes.get(&parent).ok_or(Error::new(Errno::ENOENT))?;
            (p.gid, p.perm & S_ISGID != 0)
        };
        // A setgid directory passes its group, and the bit, on to new directories.
        let perm = (mode & 0o7777) | if psgid { S_ISGID } else { 0 };
        let gid = if psgid { pgid } else { req.gid };
        let now = now_ts();
        let meta = FileMeta {
            mode: Some(S_IFDIR | perm),
            uid: Some(req.uid),
            gid: Some(gid),
            mtime: Some(now.secs),
            atime: Some(now.secs),
        };
        let marker = self.dir_prefix(&key);
        self.store
            .put(&marker, Bytes::new(), &meta, self.s.conditional_create)
            .map_err(|e| store_err("PUT", &marker, e))?;
        let mut t = self.table();
        let id = self.upsert(&mut t, &key, FileKind::Directory, None, true);
        let n = t.nodes.get_mut(&id).ok_or(Error::new(Errno::ENOENT))?;
        n.perm = perm;
        n.uid = req.uid;
        n.gid = gid;
        n.mtime = now;
        n.atime = now;
        n.meta_known = true;
        n.complete_at = Some(Instant::now());
        n.lookups += 1;
        let n = t.nodes.get(&id).ok_or(Error::new(Errno::ENOENT))?;
        Ok(self.entry_of(id, n))
    }

    fn symlink(&self, req: &Request, parent: NodeId, name: &OsStr, target: &OsStr) -> Result<Entry> {
        self.writable()?;
        let key = self.child_key(parent, name)?;
        match self.lookup_key(&key) {
            Ok(_) => return Err(Errno::EEXIST.into()),
            Err(e) if e.errno() == Errno::ENOENT => {}
            Err(e) => return Err(e),
        }
        let target = std::os::unix::ffi::OsStrExt::as_bytes(target).to_vec();
        let (pgid, psgid) = {
            let t = self.table();
            let p = t.nodes.get(&parent).ok_or(Error::new(Errno::ENOENT))?;
            (p.gid, p.perm & S_ISGID != 0)
        };
        let gid = if psgid { pgid } else { req.gid };
        let now = now_ts();
        // As s3fs stores one: the target is the object's content, the mode says S_IFLNK.
        let meta = FileMeta {
            mode: Some(S_IFLNK | 0o777),
            uid: Some(req.uid),
            gid: Some(gid),
            mtime: Some(now.secs),
            atime: Some(now.secs),
        };
        let full = self.full(&key);
        self.store
            .put(&full, Bytes::from(target.clone()), &meta, self.s.conditional_create)
            .map_err(|e| store_err("PUT", &full, e))?;
        let mut t = self.table();
        let id = self.upsert(&mut t, &key, FileKind::Symlink, None, false);
        let n = t.nodes.get_mut(&id).ok_or(Error::new(Errno::ENOENT))?;
        n.size = target.len() as u64;
        n.link_target = Some(target);
        n.perm = 0o777;
        n.uid = req.uid;
        n.gid = gid;
        n.mtime = now;
        n.atime = now;
        n.meta_known = true;
        n.fetched = Instant::now();
        n.lookups += 1;
        let n = t.nodes.get(&id).ok_or(Error::new(Errno::ENOENT))?;
        Ok(self.entry_of(id, n))
    }

    fn unlink(&self, _req: &Request, parent: NodeId, name: &OsStr) -> Result<()> {
        self.writable()?;
        let key = self.child_key(parent, name)?;
        let id = self.lookup_key(&key)?;
        let (kind, opens, data) = {
            let t = self.table();
            let n = t.nodes.get(&id).ok_or(Error::new(Errno::ENOENT))?;
            (n.kind, n.opens, n.data.clone())
        };
        if kind == FileKind::Directory {
            return Err(Errno::EISDIR.into());
        }
        self.pin_dir(parent_of(&key))?;
        {
            let mut d = data.lock().unwrap_or_else(|p| p.into_inner());
            if opens > 0 {
                // Still open: keep reading and writing the bytes from a local copy.
                self.ensure_local(id, &mut d, false)?;
            }
            let full = self.full(&key);
            self.store.delete(&full).map_err(|e| store_err("DELETE", &full, e))?;
            d.dirty = false;
        }
        let mut t = self.table();
        self.unlink_node(&mut t, &key);
        Ok(())
    }

    fn rmdir(&self, _req: &Request, parent: NodeId, name: &OsStr) -> Result<()> {
        self.writable()?;
        let key = self.child_key(parent, name)?;
        let id = self.lookup_key(&key)?;
        let kind = self.table().nodes.get(&id).map(|n| n.kind).ok_or(Error::new(Errno::ENOENT))?;
        if kind != FileKind::Directory {
            return Err(Errno::ENOTDIR.into());
        }
        if !self.dir_is_empty(&key)? {
            return Err(Errno::ENOTEMPTY.into());
        }
        self.pin_dir(parent_of(&key))?;
        let marker = self.dir_prefix(&key);
        self.store.delete(&marker).map_err(|e| store_err("DELETE", &marker, e))?;
        let mut t = self.table();
        self.unlink_node(&mut t, &key);
        Ok(())
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
        self.writable()?;
        if flags.0 & !RenameFlags::NOREPLACE != 0 {
            return Err(Errno::EINVAL.into());
        }
        let from = self.child_key(parent, name)?;
        let to = self.child_key(new_parent, new_name)?;
        if from == to {
            return Ok(());
        }
        let src = self.lookup_key(&from)?;
        let (skind, ssize, sdata) = {
            let t = self.table();
            let n = t.nodes.get(&src).ok_or(Error::new(Errno::ENOENT))?;
            (n.kind, n.size, n.data.clone())
        };
        if skind == FileKind::Directory && to.starts_with(&format!("{from}/")) {
            return Err(Errno::EINVAL.into());
        }
        let target = match self.lookup_key(&to) {
            Ok(id) => Some(id),
            Err(e) if e.errno() == Errno::ENOENT => None,
            Err(e) => return Err(e),
        };
        if let Some(tid) = target {
            if flags.noreplace() {
                return Err(Errno::EEXIST.into());
            }
            let tkind = self.table().nodes.get(&tid).map(|n| n.kind).unwrap_or(FileKind::File);
            match (skind == FileKind::Directory, tkind == FileKind::Directory) {
                (false, true) => return Err(Errno::EISDIR.into()),
                (true, false) => return Err(Errno::ENOTDIR.into()),
                (true, true) if !self.dir_is_empty(&to)? => return Err(Errno::ENOTEMPTY.into()),
                _ => {}
            }
        }
        self.pin_dir(parent_of(&from))?;
        if skind == FileKind::Directory {
            if target.is_some() {
                // An empty directory being replaced: only its marker is there.
                let marker = self.dir_prefix(&to);
                self.store.delete(&marker).map_err(|e| store_err("DELETE", &marker, e))?;
            }
            // Key by key: copies first, deletes after, so a failure part way leaves every
            // object in at least one place (docs/s3.md: not atomic).
            let keys = self.all_keys_below(&from)?;
            let (old_prefix, new_prefix) = (self.dir_prefix(&from), self.dir_prefix(&to));
            for o in &keys {
                // A listing of the prefix holds only keys below it; anything else is skipped.
                let Some(rest) = o.key.strip_prefix(&old_prefix) else { continue };
                let dest = format!("{new_prefix}{rest}");
                self.store.copy(&o.key, &dest, o.size, None).map_err(|e| store_err("COPY", &o.key, e))?;
            }
            for o in keys.iter().filter(|o| o.key.starts_with(&old_prefix)) {
                self.store.delete(&o.key).map_err(|e| store_err("DELETE", &o.key, e))?;
            }
            let mut t = self.table();
            if let Some(tid) = target
                && let Some(n) = t.nodes.get_mut(&tid)
            {
                n.linked = false;
            }
            self.rekey(&mut t, &from, &to);
            return Ok(());
        }
        // A file: written here and not yet stored, it is uploaded under the new name;
        // otherwise copied server-side (metadata with it) and the old key deleted.
        let mut d = sdata.lock().unwrap_or_else(|p| p.into_inner());
        let (ffull, tfull) = (self.full(&from), self.full(&to));
        if d.dirty && d.local.is_some() {
            {
                let mut t = self.table();
                self.rekey(&mut t, &from, &to);
            }
            // Nothing to copy parts from under the new name.
            d.same_until = 0;
            if let Err(e) = self.upload(src, &mut d) {
                let mut t = self.table();
                self.rekey(&mut t, &to, &from);
                return Err(e);
            }
            self.store.delete(&ffull).map_err(|e| store_err("DELETE", &ffull, e))?;
        } else {
            self.move_object(&ffull, &tfull, ssize)?;
            let mut t = self.table();
            self.rekey(&mut t, &from, &to);
        }
        if let Some(tid) = target
            && tid != src
            && let Some(n) = self.table().nodes.get_mut(&tid)
        {
            n.linked = false;
        }
        Ok(())
    }

    fn open(&self, _req: &Request, node: NodeId, flags: i32) -> Result<Opened> {
        let writing = flags & O_ACCMODE != O_RDONLY;
        if writing || flags & O_TRUNC != 0 {
            self.writable()?;
        }
        let kind = self.table().nodes.get(&node).map(|n| n.kind).ok_or(Error::new(Errno::ENOENT))?;
        if kind == FileKind::Directory {
            return Err(Errno::EISDIR.into());
        }
        {
            // A copy kept from an earlier open serves this one only if the object has not
            // changed since (the ETag the last lookup or getattr saw).
            let data = self.data_of(node)?;
            let mut d = data.lock().unwrap_or_else(|p| p.into_inner());
            let (opens, etag) = self.table().nodes.get(&node).map(|n| (n.opens, n.etag.clone())).unwrap_or((0, None));
            if opens == 0
                && !d.dirty
                && d.local.is_some()
                && (etag.is_none() || d.etag != etag)
                && let Some(old) = d.local.take()
            {
                self.cache.release(old.reserved);
            }
            let mut t = self.table();
            let n = t.nodes.get_mut(&node).ok_or(Error::new(Errno::ENOENT))?;
            n.opens += 1;
        }
        if flags & O_TRUNC != 0 && writing {
            let data = self.data_of(node)?;
            let mut d = data.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = self.ensure_local(node, &mut d, true) {
                drop(d);
                self.close_node(node);
                return Err(e);
            }
            d.dirty = true;
            let mut t = self.table();
            if let Some(n) = t.nodes.get_mut(&node) {
                n.size = 0;
                n.mtime = now_ts();
            }
        }
        let h = self.new_handle();
        let of = Arc::new(OpenFile { flags, ra: Mutex::default() });
        self.files.lock().unwrap_or_else(|p| p.into_inner()).insert(h, of);
        Ok(Opened { handle: h, ..Opened::default() })
    }

    fn create(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32, flags: i32) -> Result<(Entry, Opened)> {
        self.writable()?;
        let key = self.child_key(parent, name)?;
        let (pgid, psgid, exists) = {
            let t = self.table();
            let p = t.nodes.get(&parent).ok_or(Error::new(Errno::ENOENT))?;
            // Open here: it exists even if another client removed the object.
            let exists = t.by_key.get(&key).and_then(|id| t.nodes.get(id)).is_some_and(|n| n.linked && n.opens > 0);
            (p.gid, p.perm & S_ISGID != 0, exists)
        };
        // Without conditional PUTs, ask first (a race with another client remains).
        let exists = exists || (!self.s.conditional_create && self.lookup_key(&key).is_ok());
        let gid = if psgid { pgid } else { req.gid };
        let now = now_ts();
        let meta = FileMeta {
            mode: Some(S_IFREG | (mode & 0o7777)),
            uid: Some(req.uid),
            gid: Some(gid),
            mtime: Some(now.secs),
            atime: Some(now.secs),
        };
        let full = self.full(&key);
        let stored = if exists {
            Err(StoreError::PreconditionFailed)
        } else {
            // The empty object now, conditionally: a concurrent creator wins and we see
            // EEXIST, and the name is visible to listings at once.
            self.store.put(&full, Bytes::new(), &meta, self.s.conditional_create)
        };
        let etag = match stored {
            Ok(etag) => etag,
            Err(StoreError::PreconditionFailed) if flags & O_EXCL == 0 => {
                // Someone else made it first and the caller did not ask for exclusivity:
                // open theirs, as open(2) with O_CREAT does.
                let id = self.lookup_key(&key)?;
                let opened = self.open(req, id, flags)?;
                let mut t = self.table();
                let n = t.nodes.get_mut(&id).ok_or(Error::new(Errno::ENOENT))?;
                n.lookups += 1;
                let n = t.nodes.get(&id).ok_or(Error::new(Errno::ENOENT))?;
                return Ok((self.entry_of(id, n), opened));
            }
            Err(e) => return Err(store_err("PUT", &full, e)),
        };
        let id = {
            let mut t = self.table();
            let id = self.upsert(&mut t, &key, FileKind::File, None, false);
            let n = t.nodes.get_mut(&id).ok_or(Error::new(Errno::ENOENT))?;
            n.size = 0;
            n.perm = mode & 0o7777;
            n.uid = req.uid;
            n.gid = gid;
            n.mtime = now;
            n.atime = now;
            n.meta_known = true;
            n.fetched = Instant::now();
            n.lookups += 1;
            n.opens += 1;
            n.etag = etag;
            id
        };
        {
            // The object is empty: the local copy starts empty, with nothing to download.
            let data = self.data_of(id)?;
            let mut d = data.lock().unwrap_or_else(|p| p.into_inner());
            self.ensure_local(id, &mut d, true)?;
        }
        let h = self.new_handle();
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(h, Arc::new(OpenFile { flags, ra: Mutex::default() }));
        let t = self.table();
        let n = t.nodes.get(&id).ok_or(Error::new(Errno::ENOENT))?;
        Ok((self.entry_of(id, n), Opened { handle: h, ..Opened::default() }))
    }

    fn read(&self, _req: &Request, node: NodeId, handle: Handle, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let of = self.open_file(handle)?;
        if of.flags & O_ACCMODE == plugfs_plugin_api::open_flags::O_WRONLY {
            return Err(Errno::EBADF.into());
        }
        let data = self.data_of(node)?;
        {
            let d = data.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(local) = &d.local {
                let mut done = 0;
                while done < buf.len() {
                    match local.file.read_at(&mut buf[done..], offset + done as u64) {
                        Ok(0) => break,
                        Ok(n) => done += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(io_err("read copy", e)),
                    }
                }
                return Ok(done);
            }
        }
        let (key, size) = {
            let t = self.table();
            let n = t.nodes.get(&node).ok_or(Error::new(Errno::ENOENT))?;
            (n.key.clone(), n.size)
        };
        self.read_remote(&of, &key, size, offset, buf)
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
        self.writable()?;
        let of = self.open_file(handle)?;
        if of.flags & O_ACCMODE == O_RDONLY {
            return Err(Errno::EBADF.into());
        }
        let fd = self.data_of(node)?;
        let mut d = fd.lock().unwrap_or_else(|p| p.into_inner());
        self.ensure_local(node, &mut d, false)?;
        let local = d.local.as_mut().ok_or(Error::new(Errno::EIO))?;
        let cur = local.file.metadata().map_err(|e| io_err("stat copy", e))?.len();
        let offset = if of.flags & O_APPEND != 0 { cur } else { offset };
        let end = offset.checked_add(data.len() as u64).ok_or(Error::new(Errno::EFBIG))?;
        self.check_size(end)?;
        let grow = end.saturating_sub(local.reserved.max(cur));
        if !self.reserve(grow) {
            return Err(err(Errno::ENOSPC, format!("cache_size ({} bytes) is full", self.cache.limit())));
        }
        local.reserved += grow;
        local.file.write_all_at(data, offset).map_err(|e| io_err("write copy", e))?;
        d.same_until = d.same_until.min(offset);
        d.dirty = true;
        let mut t = self.table();
        if let Some(n) = t.nodes.get_mut(&node) {
            n.size = n.size.max(end).max(cur);
            n.mtime = now_ts();
        }
        Ok(data.len())
    }

    fn flush(&self, _req: &Request, node: NodeId, handle: Handle, _lock_owner: u64) -> Result<()> {
        let of = self.open_file(handle)?;
        if of.flags & O_ACCMODE == O_RDONLY {
            return Ok(());
        }
        let data = self.data_of(node)?;
        let mut d = data.lock().unwrap_or_else(|p| p.into_inner());
        self.upload(node, &mut d)
    }

    fn release(&self, _req: &Request, node: NodeId, handle: Handle, _flags: i32, _flush: bool) -> Result<()> {
        let of = self.files.lock().unwrap_or_else(|p| p.into_inner()).remove(&handle);
        if of.is_none() {
            return Err(Errno::EBADF.into());
        }
        let mut result = Ok(());
        // Through any handle: a read-only one may be the last open of a file whose
        // metadata (chmod while open) or size (truncate by path) changed meanwhile.
        if let Ok(data) = self.data_of(node) {
            let mut d = data.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = self.upload(node, &mut d) {
                // Kept dirty, with its local copy: the retry thread, or the next fsync or
                // close of this file, tries again (docs/s3.md, failures).
                tracing::error!("s3: upload on release failed; the changes stay in the local cache for a retry");
                result = Err(e);
            }
        }
        self.close_node(node);
        result
    }

    fn fsync(&self, _req: &Request, node: NodeId, _handle: Handle, _datasync: bool) -> Result<()> {
        let data = self.data_of(node)?;
        let mut d = data.lock().unwrap_or_else(|p| p.into_inner());
        self.upload(node, &mut d)
    }

    fn opendir(&self, _req: &Request, node: NodeId, _flags: i32) -> Result<Opened> {
        self.dir_key(node)?;
        let h = self.new_handle();
        self.dirs.lock().unwrap_or_else(|p| p.into_inner()).insert(h, Arc::default());
        Ok(Opened { handle: h, ..Opened::default() })
    }

    fn readdir(&self, _req: &Request, node: NodeId, handle: Handle, cookie: u64, sink: &mut dyn DirSink) -> Result<()> {
        self.list_from(
            node,
            handle,
            cookie,
            |name, kind, ino, cookie, _| sink.add(&DirEntry { ino, kind, name: name.as_bytes(), cookie }),
            false,
        )
    }

    fn readdirplus(
        &self,
        _req: &Request,
        node: NodeId,
        handle: Handle,
        cookie: u64,
        sink: &mut dyn DirPlusSink,
    ) -> Result<()> {
        self.list_from(
            node,
            handle,
            cookie,
            |name, kind, ino, cookie, entry| {
                let entry = entry.unwrap_or(Entry {
                    node: ino,
                    attr: Attr { ino, kind, ..Attr::default() },
                    ..Entry::default()
                });
                sink.add(&DirEntry { ino, kind, name: name.as_bytes(), cookie }, &entry)
            },
            true,
        )
    }

    fn releasedir(&self, _req: &Request, _node: NodeId, handle: Handle) -> Result<()> {
        self.dirs.lock().unwrap_or_else(|p| p.into_inner()).remove(&handle);
        Ok(())
    }

    fn statfs(&self, _req: &Request, _node: NodeId) -> Result<StatFs> {
        // A bucket has no fixed size; report plenty, as s3fs and mountpoint-s3 do, so
        // programs that check free space before writing do not refuse.
        // Inodes "used" are the nodes in the table (root included), so `df -i` shows
        // what the mount holds in memory (bounded by `max_nodes`, docs/s3.md).
        let blocks = 1u64 << 40;
        let used = self.table().nodes.len() as u64;
        Ok(StatFs {
            blocks,
            bfree: blocks,
            bavail: blocks,
            files: 1 << 40,
            ffree: (1 << 40) - used,
            bsize: 4096,
            frsize: 4096,
            namelen: CAPABILITIES.max_name_len,
        })
    }

    fn capabilities(&self) -> Option<Capabilities> {
        Some(CAPABILITIES)
    }
}

impl Core {
    /// One open of `node` ended: drop its local copy if it was the last and nothing is
    /// left to store.
    fn close_node(&self, node: NodeId) {
        let data = {
            let mut t = self.table();
            let Some(n) = t.nodes.get_mut(&node) else { return };
            n.opens = n.opens.saturating_sub(1);
            n.data.clone()
        };
        {
            let mut d = data.lock().unwrap_or_else(|p| p.into_inner());
            self.drop_local_if_idle(node, &mut d);
        }
        let mut t = self.table();
        self.maybe_free(&mut t, node);
    }

    /// Stores every file nobody has open that still has changes (a failed upload on close
    /// left them). Returns how many are still pending.
    pub fn retry_pending(&self) -> usize {
        let pending: Vec<(NodeId, Arc<Mutex<FileData>>)> = {
            let t = self.table();
            t.nodes.iter().filter(|(_, n)| n.opens == 0 && n.linked).map(|(id, n)| (*id, n.data.clone())).collect()
        };
        let mut left = 0;
        for (id, data) in pending {
            // Busy: someone is uploading or writing it now.
            let Ok(mut d) = data.try_lock() else { continue };
            if !d.dirty {
                continue;
            }
            if self.upload(id, &mut d).is_err() {
                left += 1;
            } else {
                let key = self.table().nodes.get(&id).map(|n| n.key.clone()).unwrap_or_default();
                tracing::info!("s3: stored {key:?}, whose upload on close had failed");
                self.drop_local_if_idle(id, &mut d);
                drop(d);
                let mut t = self.table();
                self.maybe_free(&mut t, id);
            }
        }
        left
    }

    /// Whether any file has changes the store does not have.
    pub fn has_pending(&self) -> bool {
        let t = self.table();
        t.nodes.values().any(|n| n.data.try_lock().map(|d| d.dirty).unwrap_or(true))
    }
}

impl Drop for S3Fs {
    fn drop(&mut self) {
        if let Some((stop, thread)) = self.retry.take() {
            *stop.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
            stop.1.notify_all();
            let _ = thread.join();
        }
        // Unmount: one last try for changes a failed close left behind.
        if self.has_pending() && self.retry_pending() > 0 {
            tracing::error!("s3: unmounting with changes that could not be stored; they are lost");
        }
        let _ = self.cache.used();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(key: &str, kind: FileKind) -> Node {
        Node {
            key: key.to_string(),
            kind,
            size: 0,
            mtime: Timestamp::new(0, 0),
            atime: Timestamp::new(0, 0),
            perm: 0o644,
            uid: 0,
            gid: 0,
            meta_known: false,
            fetched: Instant::now(),
            lookups: 0,
            opens: 0,
            has_marker: false,
            complete_at: None,
            linked: true,
            link_target: None,
            etag: None,
            data: Arc::default(),
            used: 0,
        }
    }

    fn add(t: &mut Table, n: Node) -> NodeId {
        let id = t.next_id;
        t.next_id += 1;
        t.by_key.insert(n.key.clone(), id);
        t.nodes.insert(id, n);
        t.touch(id);
        id
    }

    #[test]
    fn the_table_evicts_least_recently_used_unreferenced_nodes_and_forgets_completeness() {
        let mut t = Table { next_id: ROOT, ..Table::default() };
        let root = add(&mut t, node("", FileKind::Directory));
        t.nodes.get_mut(&root).unwrap().lookups = 1;
        let mut dir = node("d", FileKind::Directory);
        dir.lookups = 1;
        dir.complete_at = Some(Instant::now());
        let d = add(&mut t, dir);
        let mut other = node("e", FileKind::Directory);
        other.lookups = 1;
        other.complete_at = Some(Instant::now());
        let e = add(&mut t, other);
        // Kept whatever their age: referenced, open, dirty, held by someone.
        let mut looked = node("d/looked", FileKind::File);
        looked.lookups = 2;
        let looked = add(&mut t, looked);
        let mut open = node("d/open", FileKind::File);
        open.opens = 1;
        let open = add(&mut t, open);
        let dirty = add(&mut t, node("d/dirty", FileKind::File));
        t.nodes[&dirty].data.lock().unwrap().dirty = true;
        let held = add(&mut t, node("d/held", FileKind::File));
        let _hold = t.nodes[&held].data.clone();
        let first = add(&mut t, node("d/f0", FileKind::File));
        for i in 1..200 {
            add(&mut t, node(&format!("d/f{i}"), FileKind::File));
            assert_eq!(t.evict(32), (0, Vec::new()));
            assert!(t.nodes.len() - 1 <= 32 + 4 + 32 / 8, "{} nodes", t.nodes.len());
        }
        for id in [root, d, e, looked, open, dirty, held] {
            assert!(t.nodes.contains_key(&id), "node {id} was evicted");
        }
        assert!(!t.nodes.contains_key(&first), "the oldest unreferenced node is still there");
        // The newest ones stay; the table and its index agree.
        assert!(t.by_key.contains_key("d/f199") && t.by_key.contains_key("d/f198"));
        assert_eq!(t.by_key.len(), t.nodes.len());
        for (k, id) in &t.by_key {
            assert_eq!(&t.nodes[id].key, k);
        }
        // d lost children, so a name missing from the table may exist: not complete.
        assert!(t.nodes[&d].complete_at.is_none());
        assert!(t.nodes[&e].complete_at.is_some());
        // Touching an old node keeps it through the next scans.
        let f190 = t.by_key["d/f190"];
        t.touch(f190);
        for i in 200..215 {
            add(&mut t, node(&format!("d/f{i}"), FileKind::File));
            t.evict(32);
        }
        assert!(t.nodes.contains_key(&f190));
        assert!(!t.by_key.contains_key("d/f185"));
        // Once the kernel forgets the referenced ones, they go too.
        t.nodes.get_mut(&looked).unwrap().lookups = 0;
        t.forgotten();
        for i in 215..300 {
            add(&mut t, node(&format!("d/f{i}"), FileKind::File));
            t.evict(32);
        }
        assert!(!t.nodes.contains_key(&looked));
        assert!(t.unreferenced() <= 32 + 32 / 8);
    }
}
