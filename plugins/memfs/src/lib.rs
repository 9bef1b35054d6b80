//! # memfs: an in-memory POSIX filesystem
//!
//! The example plugfs plugin: small enough to read top to bottom, complete enough to pass
//! for a real filesystem (hard links, symlinks, FIFOs and device nodes, xattrs, `rename`
//! with `RENAME_NOREPLACE`/`RENAME_EXCHANGE`, `fallocate`, capacity limits). Copy it to
//! start a plugin of your own; `docs/plugin-guide.md` walks through it.
//!
//! The file is laid out in the order a reader needs it:
//!
//! 1. the plugin: its name, capabilities and config table ([`MemFsPlugin`]);
//! 2. the data model: nodes, directories with stable readdir cookies, open handles;
//! 3. the [`FileSystem`] operations, each a short function over that model;
//! 4. tests that drive the filesystem through the trait, as the host does.
//!
//! **Thread safety.** The host calls from many threads at once. memfs keeps the whole tree
//! behind one [`RwLock`]: operations that only look take the read lock, everything that
//! changes something (including `lookup`, which counts references) takes the write lock.
//! That is plenty for an example and for tests; a filesystem built for parallel load would
//! lock per node instead.
//!
//! **Config** (`[mount.config]` in the host's TOML):
//!
//! ```toml
//! max_bytes = 104857600   # optional: capacity for file contents; ENOSPC beyond it
//! max_files = 100000      # optional: how many nodes may exist, the root included
//! ```
//!
//! Without `max_bytes` memfs grows until the host runs out of memory. It keeps no sparse
//! files: extending a file (by writing past its end or truncating up) stores the zeroes.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::ops::Bound;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use plugfs_plugin_api::open_flags::{O_ACCMODE, O_APPEND, O_EXCL, O_RDONLY, O_TRUNC, O_WRONLY};
use plugfs_plugin_api::xattr_flags::{XATTR_CREATE, XATTR_REPLACE};
use plugfs_plugin_api::{
    Attr, AttrOut, Capabilities, ConfigTable, DirEntry, DirSink, Entry, Errno, Error, FileKind, FileSystem, Handle,
    MountOptions, NodeId, OpenError, Opened, Plugin, PluginInfo, ROOT_ID, RenameFlags, Request, Result, SetAttr,
    SetTime, StatFs, Timestamp, fallocate_mode,
};

/// How long the kernel may cache names and attributes. Every change goes through this
/// process, and the kernel invalidates what it changed itself, so a short TTL is safe; it
/// only bounds how stale a view of a hard link's other names can get.
const TTL: Duration = Duration::from_secs(1);
/// The block size `statfs` and `stat` report.
const BLOCK_SIZE: u32 = 4096;
/// Longest name in a directory, in bytes (as on most Linux filesystems).
const MAX_NAME_LEN: usize = 255;
/// Largest file: Linux offsets are signed 64-bit.
const MAX_FILE_SIZE: u64 = i64::MAX as u64;
/// Largest xattr value Linux lets through (`XATTR_SIZE_MAX`).
const MAX_XATTR_VALUE: usize = 64 * 1024;
/// Capacity `statfs` reports when `max_bytes` is not set: "unlimited", kept below
/// `i64::MAX` so tools that compute in signed numbers stay positive.
const UNLIMITED_BYTES: u64 = 1 << 62;
/// Readdir cookies 1 and 2 resume after `.` and `..`; entries get serials from 3 on.
const FIRST_SERIAL: u64 = 3;

// ---------------------------------------------------------------------------------------
// 1. The plugin
// ---------------------------------------------------------------------------------------

/// The memfs plugin: what `export_plugin!` exports.
pub struct MemFsPlugin;

/// memfs's config table. [`ConfigTable::parse`] refuses unknown keys and names the key
/// of any error, so nothing else is needed here.
#[derive(Debug, Default, serde::Deserialize)]
struct Settings {
    max_bytes: Option<u64>,
    max_files: Option<u64>,
}

impl Plugin for MemFsPlugin {
    type Fs = MemFs;

    fn info() -> PluginInfo {
        PluginInfo {
            name: "memfs",
            version: env!("CARGO_PKG_VERSION"),
            description: "an in-memory POSIX filesystem (contents vanish on unmount)",
            config_help: "max_bytes = 104857600  # optional: capacity for file contents, ENOSPC beyond it\n\
                          max_files = 100000     # optional: most nodes that may exist, the root included",
            capabilities: CAPABILITIES,
        }
    }

    fn open(config: &ConfigTable, options: &MountOptions) -> Result<MemFs, OpenError> {
        let settings: Settings = config.parse()?;
        if settings.max_files == Some(0) {
            return Err(OpenError::config("max_files", "must be at least 1: the root directory counts"));
        }
        Ok(MemFs::new(settings.max_bytes, settings.max_files, options.read_only))
    }
}

/// What memfs supports: everything a local POSIX filesystem does except holes. It stores
/// every byte, so it neither punches holes nor reports any to `SEEK_HOLE`.
const CAPABILITIES: Capabilities = Capabilities { punch_hole: false, sparse_files: false, ..Capabilities::POSIX };

// ---------------------------------------------------------------------------------------
// 2. The data model
// ---------------------------------------------------------------------------------------

/// One node (inode): a file, directory, symlink or special file.
struct Node {
    kind: FileKind,
    perm: u16,
    uid: u32,
    gid: u32,
    rdev: u32,
    /// Names pointing at this node (for directories: 2 + subdirectories, 0 once removed).
    nlink: u32,
    atime: Timestamp,
    mtime: Timestamp,
    ctime: Timestamp,
    crtime: Timestamp,
    /// Lookup references the host holds (see `FileSystem::forget`).
    lookups: u64,
    /// Open handles on this node.
    open_handles: u64,
    xattrs: BTreeMap<OsString, Vec<u8>>,
    content: Content,
}

enum Content {
    /// `allocated` is what the file is charged against `max_bytes`: at least `data.len()`,
    /// more after `fallocate(KEEP_SIZE)`.
    File {
        data: Vec<u8>,
        allocated: u64,
    },
    Dir(Dir),
    Symlink(Vec<u8>),
    /// FIFOs, sockets and device nodes: the kernel serves them, memfs only keeps the node.
    Special,
}

/// A directory. Names are kept twice: by name for lookups, and by *serial* for readdir.
/// Each name gets the next serial of its directory when it is added, and the serial is
/// the readdir cookie that resumes after it. Serials are never reused, so a listing in
/// progress neither repeats nor skips names when others are added or removed meanwhile.
struct Dir {
    /// The node `..` names (the root is its own parent).
    parent: NodeId,
    entries: BTreeMap<OsString, (NodeId, u64)>,
    by_serial: BTreeMap<u64, OsString>,
    next_serial: u64,
}

impl Dir {
    fn new(parent: NodeId) -> Self {
        Dir { parent, entries: BTreeMap::new(), by_serial: BTreeMap::new(), next_serial: FIRST_SERIAL }
    }
}

/// What an open handle remembers: the node and the open(2) flags (for the access mode and
/// `O_APPEND`).
struct OpenHandle {
    node: NodeId,
    flags: i32,
}

/// Everything memfs stores, behind the one lock.
struct Tree {
    nodes: HashMap<NodeId, Node>,
    /// Node ids are handed out in order and never reused, so generation numbers stay 0.
    next_node: NodeId,
    handles: HashMap<Handle, OpenHandle>,
    next_handle: Handle,
    /// Bytes charged to files, against `max_bytes`.
    used_bytes: u64,
    max_bytes: Option<u64>,
    max_files: Option<u64>,
}

/// The filesystem memfs serves: one per mount.
pub struct MemFs {
    tree: RwLock<Tree>,
    read_only: bool,
}

impl Node {
    fn new(kind: FileKind, perm: u16, uid: u32, gid: u32, content: Content) -> Self {
        let now = Timestamp::now();
        Node {
            kind,
            perm,
            uid,
            gid,
            rdev: 0,
            nlink: if kind == FileKind::Directory { 2 } else { 1 },
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            lookups: 0,
            open_handles: 0,
            xattrs: BTreeMap::new(),
            content,
        }
    }

    fn attr(&self, id: NodeId) -> Attr {
        let (size, allocated) = match &self.content {
            Content::File { data, allocated } => (data.len() as u64, *allocated),
            Content::Dir(_) => (BLOCK_SIZE as u64, 0),
            Content::Symlink(target) => (target.len() as u64, 0),
            Content::Special => (0, 0),
        };
        Attr {
            ino: id,
            size,
            blocks: allocated.div_ceil(512),
            atime: self.atime,
            mtime: self.mtime,
            ctime: self.ctime,
            crtime: self.crtime,
            kind: self.kind,
            perm: self.perm,
            nlink: self.nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: self.rdev,
            blksize: BLOCK_SIZE,
        }
    }

    /// Marks a change of the node's data (and so of its status).
    fn touch_modified(&mut self) {
        self.mtime = Timestamp::now();
        self.ctime = self.mtime;
    }
}

fn err(errno: Errno) -> Error {
    Error::new(errno)
}

/// Refuses names the host should never send, and names too long to store.
fn check_name(name: &OsStr) -> Result<()> {
    let bytes = name.as_encoded_bytes();
    if bytes.is_empty() || bytes == b"." || bytes == b".." || bytes.contains(&b'/') {
        return Err(Error::with_message(Errno::EINVAL, format!("invalid name {name:?}")));
    }
    if bytes.len() > MAX_NAME_LEN {
        return Err(err(Errno::ENAMETOOLONG));
    }
    Ok(())
}

/// Copies `value` into `buf` with the size-probe protocol of getxattr/listxattr/readlink:
/// an empty `buf` asks for the size, a short one gets `ERANGE`.
fn copy_out(value: &[u8], buf: &mut [u8]) -> Result<usize> {
    if buf.is_empty() {
        return Ok(value.len());
    }
    let dst = buf.get_mut(..value.len()).ok_or(err(Errno::ERANGE))?;
    dst.copy_from_slice(value);
    Ok(value.len())
}

impl Tree {
    fn node(&self, id: NodeId) -> Result<&Node> {
        self.nodes.get(&id).ok_or(err(Errno::ENOENT))
    }

    fn node_mut(&mut self, id: NodeId) -> Result<&mut Node> {
        self.nodes.get_mut(&id).ok_or(err(Errno::ENOENT))
    }

    fn dir(&self, id: NodeId) -> Result<&Dir> {
        match &self.node(id)?.content {
            Content::Dir(dir) => Ok(dir),
            _ => Err(err(Errno::ENOTDIR)),
        }
    }

    fn dir_mut(&mut self, id: NodeId) -> Result<&mut Dir> {
        match &mut self.node_mut(id)?.content {
            Content::Dir(dir) => Ok(dir),
            _ => Err(err(Errno::ENOTDIR)),
        }
    }

    /// The node `name` names in directory `parent`, if any.
    fn child(&self, parent: NodeId, name: &OsStr) -> Result<Option<NodeId>> {
        Ok(self.dir(parent)?.entries.get(name).map(|&(id, _)| id))
    }

    /// Checks that `parent` is a directory that may get new names (not removed).
    fn check_live_dir(&self, parent: NodeId) -> Result<()> {
        self.dir(parent)?;
        if self.node(parent)?.nlink == 0 {
            return Err(Error::with_message(Errno::ENOENT, "the directory was removed"));
        }
        Ok(())
    }

    /// Answers a lookup-like call: hands the host one more reference on `id`.
    fn entry(&mut self, id: NodeId) -> Result<Entry> {
        let node = self.node_mut(id)?;
        node.lookups += 1;
        Ok(Entry { node: id, generation: 0, attr: node.attr(id), entry_ttl: TTL, attr_ttl: TTL })
    }

    /// Adds `name -> id` to directory `parent` under the next serial.
    fn add_entry(&mut self, parent: NodeId, name: &OsStr, id: NodeId) -> Result<()> {
        let dir = self.dir_mut(parent)?;
        let serial = dir.next_serial;
        dir.next_serial += 1;
        dir.entries.insert(name.to_owned(), (id, serial));
        dir.by_serial.insert(serial, name.to_owned());
        self.node_mut(parent)?.touch_modified();
        Ok(())
    }

    /// Removes `name` from directory `parent` and returns the node it named.
    fn remove_entry(&mut self, parent: NodeId, name: &OsStr) -> Result<NodeId> {
        let dir = self.dir_mut(parent)?;
        let (id, serial) = dir.entries.remove(name).ok_or(err(Errno::ENOENT))?;
        dir.by_serial.remove(&serial);
        self.node_mut(parent)?.touch_modified();
        Ok(id)
    }

    /// Creates a node named `name` in `parent`, owned by the caller. Returns its id; the
    /// caller then answers with [`Tree::entry`].
    fn create_node(
        &mut self,
        req: &Request,
        parent: NodeId,
        name: &OsStr,
        kind: FileKind,
        mode: u32,
        content: Content,
    ) -> Result<NodeId> {
        check_name(name)?;
        self.check_live_dir(parent)?;
        if self.child(parent, name)?.is_some() {
            return Err(err(Errno::EEXIST));
        }
        if self.max_files.is_some_and(|max| self.nodes.len() as u64 >= max) {
            return Err(Error::with_message(Errno::ENOSPC, "max_files reached"));
        }
        let mut node = Node::new(kind, (mode & 0o7777) as u16, req.uid, req.gid, content);
        // A setgid directory passes its group on, and its setgid bit to subdirectories:
        // the kernel leaves this to the filesystem.
        let parent_node = self.node(parent)?;
        if parent_node.perm & 0o2000 != 0 {
            node.gid = parent_node.gid;
            if kind == FileKind::Directory {
                node.perm |= 0o2000;
            }
        }
        let id = self.next_node;
        self.next_node += 1;
        self.nodes.insert(id, node);
        self.add_entry(parent, name, id)?;
        if kind == FileKind::Directory {
            self.node_mut(parent)?.nlink += 1;
        }
        Ok(id)
    }

    /// Frees a node once nothing refers to it: no names, no lookup references from the
    /// host, no open handles. Until then an unlinked file stays readable through them.
    fn maybe_free(&mut self, id: NodeId) {
        let unused = self.nodes.get(&id).is_some_and(|n| n.nlink == 0 && n.lookups == 0 && n.open_handles == 0);
        if id != ROOT_ID
            && unused
            && let Some(Node { content: Content::File { allocated, .. }, .. }) = self.nodes.remove(&id)
        {
            self.used_bytes -= allocated;
        }
    }

    /// Whether `ancestor` is `id` or one of the directories above it.
    fn is_ancestor_or_self(&self, ancestor: NodeId, mut id: NodeId) -> bool {
        // Bounded by the number of nodes, so a bug can never make this loop forever.
        for _ in 0..=self.nodes.len() {
            if id == ancestor {
                return true;
            }
            match self.dir(id) {
                Ok(dir) if dir.parent != id => id = dir.parent,
                _ => return false,
            }
        }
        false
    }

    /// Resizes a file's data to `len` bytes and its charge to `allocated` bytes, refusing
    /// with `ENOSPC` (and changing nothing) past `max_bytes` or the memory available.
    fn resize_file(&mut self, id: NodeId, len: u64, allocated: u64) -> Result<()> {
        if len > MAX_FILE_SIZE {
            return Err(err(Errno::EFBIG));
        }
        let new_len = usize::try_from(len).map_err(|_| err(Errno::EFBIG))?;
        let (used, max) = (self.used_bytes, self.max_bytes);
        let Content::File { data, allocated: charged } = &mut self.node_mut(id)?.content else {
            return Err(err(Errno::EINVAL));
        };
        let used = used - *charged + allocated;
        if max.is_some_and(|max| used > max) {
            return Err(Error::with_message(Errno::ENOSPC, "max_bytes reached"));
        }
        if new_len > data.len() {
            data.try_reserve_exact(new_len - data.len())
                .map_err(|_| Error::with_message(Errno::ENOSPC, "out of memory"))?;
        }
        data.resize(new_len, 0);
        if new_len < data.capacity() / 2 {
            data.shrink_to_fit();
        }
        *charged = allocated;
        self.used_bytes = used;
        Ok(())
    }

    /// Sets a file's size as `truncate(2)` does: shrinking also drops space preallocated
    /// past the end; growing fills with zeroes.
    fn truncate(&mut self, id: NodeId, len: u64) -> Result<()> {
        match &self.node(id)?.content {
            Content::File { data, allocated } => {
                let allocated = if len < data.len() as u64 { len } else { len.max(*allocated) };
                self.resize_file(id, len, allocated)
            }
            Content::Dir(_) => Err(err(Errno::EISDIR)),
            _ => Err(err(Errno::EINVAL)),
        }
    }

    fn open_handle(&mut self, node: NodeId, flags: i32) -> Result<Opened> {
        self.node_mut(node)?.open_handles += 1;
        let handle = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(handle, OpenHandle { node, flags });
        Ok(Opened { handle, ..Opened::default() })
    }

    /// The open flags of `handle`, which must be open on `node`.
    fn handle_flags(&self, handle: Handle, node: NodeId) -> Result<i32> {
        match self.handles.get(&handle) {
            Some(h) if h.node == node => Ok(h.flags),
            _ => Err(Error::with_message(Errno::EBADF, format!("handle {handle} is not open on node {node}"))),
        }
    }

    fn close_handle(&mut self, handle: Handle, node: NodeId) -> Result<()> {
        self.handle_flags(handle, node)?;
        self.handles.remove(&handle);
        self.node_mut(node)?.open_handles -= 1;
        self.maybe_free(node);
        Ok(())
    }
}

impl MemFs {
    /// An empty filesystem: a root directory owned by the host process's user and group.
    fn new(max_bytes: Option<u64>, max_files: Option<u64>, read_only: bool) -> Self {
        #[cfg(unix)]
        let (uid, gid) = (rustix::process::geteuid().as_raw(), rustix::process::getegid().as_raw());
        #[cfg(not(unix))]
        let (uid, gid) = (0, 0);
        let root = Node::new(FileKind::Directory, 0o755, uid, gid, Content::Dir(Dir::new(ROOT_ID)));
        let tree = Tree {
            nodes: HashMap::from([(ROOT_ID, root)]),
            next_node: ROOT_ID + 1,
            handles: HashMap::new(),
            next_handle: 1,
            used_bytes: 0,
            max_bytes,
            max_files,
        };
        MemFs { tree: RwLock::new(tree), read_only }
    }

    /// The tree for looking. A poisoned lock means an earlier call panicked half way
    /// through a change; answering EIO from then on beats serving a broken tree.
    fn tree(&self) -> Result<RwLockReadGuard<'_, Tree>> {
        self.tree.read().map_err(|_| Error::with_message(Errno::EIO, "memfs: an earlier call panicked"))
    }

    /// The tree for changing; see [`MemFs::tree`].
    fn tree_mut(&self) -> Result<RwLockWriteGuard<'_, Tree>> {
        self.tree.write().map_err(|_| Error::with_message(Errno::EIO, "memfs: an earlier call panicked"))
    }

    /// Every change starts here: a read-only mount refuses it with `EROFS`.
    fn check_writable(&self) -> Result<()> {
        if self.read_only { Err(err(Errno::EROFS)) } else { Ok(()) }
    }
}

// ---------------------------------------------------------------------------------------
// 3. The operations
// ---------------------------------------------------------------------------------------

impl FileSystem for MemFs {
    fn lookup(&self, _req: &Request, parent: NodeId, name: &OsStr) -> Result<Entry> {
        // As Linux filesystems do: a name no entry can have is too long, not missing.
        if name.len() > MAX_NAME_LEN {
            return Err(err(Errno::ENAMETOOLONG));
        }
        let mut tree = self.tree_mut()?;
        let id = tree.child(parent, name)?.ok_or(err(Errno::ENOENT))?;
        tree.entry(id)
    }

    fn forget(&self, node: NodeId, nlookup: u64) {
        // forget cannot report errors; with a poisoned lock there is nothing to free safely.
        if let Ok(mut tree) = self.tree.write() {
            if let Some(n) = tree.nodes.get_mut(&node) {
                n.lookups = n.lookups.saturating_sub(nlookup);
            }
            tree.maybe_free(node);
        }
    }

    fn getattr(&self, _req: &Request, node: NodeId, _handle: Option<Handle>) -> Result<AttrOut> {
        Ok(AttrOut { attr: self.tree()?.node(node)?.attr(node), ttl: TTL })
    }

    fn setattr(&self, _req: &Request, node: NodeId, set: &SetAttr) -> Result<AttrOut> {
        self.check_writable()?;
        let mut tree = self.tree_mut()?;
        // The size is the one change that can fail (ENOSPC), so it goes first: a refused
        // setattr changes nothing.
        if let Some(size) = set.size {
            tree.truncate(node, size)?;
            tree.node_mut(node)?.touch_modified();
        }
        let now = Timestamp::now();
        let resolve = |t: SetTime| match t {
            SetTime::Now => now,
            SetTime::At(t) => t,
        };
        let n = tree.node_mut(node)?;
        if let Some(mode) = set.mode {
            n.perm = (mode & 0o7777) as u16;
        }
        if let Some(uid) = set.uid {
            n.uid = uid;
        }
        if let Some(gid) = set.gid {
            n.gid = gid;
        }
        if let Some(atime) = set.atime {
            n.atime = resolve(atime);
        }
        if let Some(mtime) = set.mtime {
            n.mtime = resolve(mtime);
        }
        // Any attribute change is a status change.
        n.ctime = set.ctime.unwrap_or(now);
        Ok(AttrOut { attr: n.attr(node), ttl: TTL })
    }

    fn readlink(&self, _req: &Request, node: NodeId, buf: &mut [u8]) -> Result<usize> {
        match &self.tree()?.node(node)?.content {
            Content::Symlink(target) if target.len() <= buf.len() => copy_out(target, buf),
            Content::Symlink(_) => Err(err(Errno::ERANGE)),
            _ => Err(err(Errno::EINVAL)),
        }
    }

    fn mknod(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32, rdev: u32) -> Result<Entry> {
        self.check_writable()?;
        // mknod(2) with no type bits makes a regular file.
        let kind = FileKind::from_mode(mode).unwrap_or(FileKind::File);
        let content = match kind {
            FileKind::File => Content::File { data: Vec::new(), allocated: 0 },
            FileKind::Directory | FileKind::Symlink => return Err(err(Errno::EPERM)),
            _ => Content::Special,
        };
        let mut tree = self.tree_mut()?;
        let id = tree.create_node(req, parent, name, kind, mode, content)?;
        tree.node_mut(id)?.rdev = rdev;
        tree.entry(id)
    }

    fn mkdir(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32) -> Result<Entry> {
        self.check_writable()?;
        let mut tree = self.tree_mut()?;
        let id = tree.create_node(req, parent, name, FileKind::Directory, mode, Content::Dir(Dir::new(parent)))?;
        tree.entry(id)
    }

    fn unlink(&self, _req: &Request, parent: NodeId, name: &OsStr) -> Result<()> {
        self.check_writable()?;
        let mut tree = self.tree_mut()?;
        let id = tree.child(parent, name)?.ok_or(err(Errno::ENOENT))?;
        if tree.node(id)?.kind == FileKind::Directory {
            return Err(err(Errno::EISDIR));
        }
        tree.remove_entry(parent, name)?;
        let n = tree.node_mut(id)?;
        n.nlink -= 1;
        n.ctime = Timestamp::now();
        tree.maybe_free(id);
        Ok(())
    }

    fn rmdir(&self, _req: &Request, parent: NodeId, name: &OsStr) -> Result<()> {
        self.check_writable()?;
        let mut tree = self.tree_mut()?;
        let id = tree.child(parent, name)?.ok_or(err(Errno::ENOENT))?;
        if !tree.dir(id)?.entries.is_empty() {
            return Err(err(Errno::ENOTEMPTY));
        }
        tree.remove_entry(parent, name)?;
        tree.node_mut(id)?.nlink = 0;
        tree.node_mut(parent)?.nlink -= 1;
        tree.maybe_free(id);
        Ok(())
    }

    fn symlink(&self, req: &Request, parent: NodeId, name: &OsStr, target: &OsStr) -> Result<Entry> {
        self.check_writable()?;
        let target = target.as_encoded_bytes().to_vec();
        if target.is_empty() {
            return Err(err(Errno::ENOENT));
        }
        let mut tree = self.tree_mut()?;
        let id = tree.create_node(req, parent, name, FileKind::Symlink, 0o777, Content::Symlink(target))?;
        tree.entry(id)
    }

    fn link(&self, _req: &Request, node: NodeId, new_parent: NodeId, new_name: &OsStr) -> Result<Entry> {
        self.check_writable()?;
        check_name(new_name)?;
        let mut tree = self.tree_mut()?;
        match tree.node(node)? {
            n if n.kind == FileKind::Directory => return Err(err(Errno::EPERM)),
            n if n.nlink == 0 => return Err(err(Errno::ENOENT)),
            _ => {}
        }
        tree.check_live_dir(new_parent)?;
        if tree.child(new_parent, new_name)?.is_some() {
            return Err(err(Errno::EEXIST));
        }
        tree.add_entry(new_parent, new_name, node)?;
        let n = tree.node_mut(node)?;
        n.nlink += 1;
        n.ctime = Timestamp::now();
        tree.entry(node)
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
        self.check_writable()?;
        // We honour NOREPLACE and EXCHANGE, not both at once, and nothing else (WHITEOUT).
        let known = RenameFlags::NOREPLACE | RenameFlags::EXCHANGE;
        if flags.0 & !known != 0 || (flags.noreplace() && flags.exchange()) {
            return Err(err(Errno::EINVAL));
        }
        check_name(new_name)?;
        let mut tree = self.tree_mut()?;
        let src = tree.child(parent, name)?.ok_or(err(Errno::ENOENT))?;
        tree.check_live_dir(new_parent)?;
        let dst = tree.child(new_parent, new_name)?;
        let src_is_dir = tree.node(src)?.kind == FileKind::Directory;
        let now = Timestamp::now();

        if flags.exchange() {
            let dst = dst.ok_or(err(Errno::ENOENT))?;
            if dst == src {
                return Ok(());
            }
            let dst_is_dir = tree.node(dst)?.kind == FileKind::Directory;
            // Neither directory may end up inside itself.
            if (src_is_dir && tree.is_ancestor_or_self(src, new_parent))
                || (dst_is_dir && tree.is_ancestor_or_self(dst, parent))
            {
                return Err(err(Errno::EINVAL));
            }
            // Swap which node each name points at; the names keep their readdir cookies.
            if let Some(e) = tree.dir_mut(parent)?.entries.get_mut(name) {
                e.0 = dst;
            }
            if let Some(e) = tree.dir_mut(new_parent)?.entries.get_mut(new_name) {
                e.0 = src;
            }
            if parent != new_parent {
                if let Content::Dir(d) = &mut tree.node_mut(src)?.content {
                    d.parent = new_parent;
                }
                if let Content::Dir(d) = &mut tree.node_mut(dst)?.content {
                    d.parent = parent;
                }
                // A directory moving to the other parent moves its `..` link with it.
                if src_is_dir && !dst_is_dir {
                    tree.node_mut(parent)?.nlink -= 1;
                    tree.node_mut(new_parent)?.nlink += 1;
                } else if dst_is_dir && !src_is_dir {
                    tree.node_mut(new_parent)?.nlink -= 1;
                    tree.node_mut(parent)?.nlink += 1;
                }
            }
            for id in [src, dst] {
                tree.node_mut(id)?.ctime = now;
            }
            for id in [parent, new_parent] {
                tree.node_mut(id)?.touch_modified();
            }
            return Ok(());
        }

        if let Some(dst) = dst {
            if flags.noreplace() {
                return Err(err(Errno::EEXIST));
            }
            // The same name, or two hard links to one file: POSIX says do nothing.
            if dst == src {
                return Ok(());
            }
            match (src_is_dir, tree.node(dst)?.kind == FileKind::Directory) {
                (true, false) => return Err(err(Errno::ENOTDIR)),
                (false, true) => return Err(err(Errno::EISDIR)),
                (true, true) if !tree.dir(dst)?.entries.is_empty() => return Err(err(Errno::ENOTEMPTY)),
                _ => {}
            }
        }
        if src_is_dir && tree.is_ancestor_or_self(src, new_parent) {
            return Err(Error::with_message(Errno::EINVAL, "cannot move a directory into itself"));
        }

        // All checks passed: from here on nothing fails.
        if let Some(dst) = dst {
            tree.remove_entry(new_parent, new_name)?;
            let n = tree.node_mut(dst)?;
            n.ctime = now;
            if n.kind == FileKind::Directory {
                n.nlink = 0;
                tree.node_mut(new_parent)?.nlink -= 1;
            } else {
                n.nlink -= 1;
            }
        }
        tree.remove_entry(parent, name)?;
        tree.add_entry(new_parent, new_name, src)?;
        if src_is_dir && parent != new_parent {
            if let Content::Dir(d) = &mut tree.node_mut(src)?.content {
                d.parent = new_parent;
            }
            tree.node_mut(parent)?.nlink -= 1;
            tree.node_mut(new_parent)?.nlink += 1;
        }
        tree.node_mut(src)?.ctime = now;
        if let Some(dst) = dst {
            tree.maybe_free(dst);
        }
        Ok(())
    }

    fn open(&self, _req: &Request, node: NodeId, flags: i32) -> Result<Opened> {
        let truncate = flags & O_TRUNC != 0;
        if flags & O_ACCMODE != O_RDONLY || truncate {
            self.check_writable()?;
        }
        let mut tree = self.tree_mut()?;
        match tree.node(node)?.kind {
            FileKind::Directory => return Err(err(Errno::EISDIR)),
            FileKind::File if truncate => {
                tree.truncate(node, 0)?;
                tree.node_mut(node)?.touch_modified();
            }
            _ => {}
        }
        tree.open_handle(node, flags)
    }

    fn create(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32, flags: i32) -> Result<(Entry, Opened)> {
        self.check_writable()?;
        let mut tree = self.tree_mut()?;
        let id = match tree.child(parent, name)? {
            // The kernel sends `create` only for names it believes absent; if another
            // caller made it meanwhile, answer as open(2) with O_CREAT would.
            Some(_) if flags & O_EXCL != 0 => return Err(err(Errno::EEXIST)),
            Some(id) => {
                match tree.node(id)?.kind {
                    FileKind::Directory => return Err(err(Errno::EISDIR)),
                    FileKind::File if flags & O_TRUNC != 0 => {
                        tree.truncate(id, 0)?;
                        tree.node_mut(id)?.touch_modified();
                    }
                    _ => {}
                }
                id
            }
            None => {
                let content = Content::File { data: Vec::new(), allocated: 0 };
                tree.create_node(req, parent, name, FileKind::File, mode, content)?
            }
        };
        let entry = tree.entry(id)?;
        let opened = tree.open_handle(id, flags)?;
        Ok((entry, opened))
    }

    fn read(&self, _req: &Request, node: NodeId, handle: Handle, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let tree = self.tree()?;
        if tree.handle_flags(handle, node)? & O_ACCMODE == O_WRONLY {
            return Err(err(Errno::EBADF));
        }
        match &tree.node(node)?.content {
            Content::File { data, .. } => {
                // memfs does not update atime on read (as with `noatime`), so reads can
                // share the lock.
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(data.len());
                let n = buf.len().min(data.len() - start);
                buf[..n].copy_from_slice(&data[start..start + n]);
                Ok(n)
            }
            Content::Dir(_) => Err(err(Errno::EISDIR)),
            _ => Err(err(Errno::EINVAL)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        node: NodeId,
        handle: Handle,
        offset: u64,
        data: &[u8],
        flags: i32,
    ) -> Result<usize> {
        self.check_writable()?;
        let mut tree = self.tree_mut()?;
        let open_flags = tree.handle_flags(handle, node)?;
        if open_flags & O_ACCMODE == O_RDONLY {
            return Err(err(Errno::EBADF));
        }
        let Content::File { data: old, allocated } = &tree.node(node)?.content else {
            return Err(err(Errno::EINVAL));
        };
        let (size, allocated) = (old.len() as u64, *allocated);
        // O_APPEND: every write goes to the end, whatever offset the kernel computed.
        let offset = if (open_flags | flags) & O_APPEND != 0 { size } else { offset };
        let end = offset.checked_add(data.len() as u64).ok_or(err(Errno::EFBIG))?;
        if end > size {
            tree.resize_file(node, end, allocated.max(end))?;
        }
        let n = tree.node_mut(node)?;
        if let Content::File { data: stored, .. } = &mut n.content {
            // `end` fits in usize: the file is at least `end` bytes long now.
            stored[offset as usize..end as usize].copy_from_slice(data);
        }
        n.touch_modified();
        Ok(data.len())
    }

    fn release(&self, _req: &Request, node: NodeId, handle: Handle, _flags: i32, _flush: bool) -> Result<()> {
        self.tree_mut()?.close_handle(handle, node)
    }

    fn opendir(&self, _req: &Request, node: NodeId, flags: i32) -> Result<Opened> {
        let mut tree = self.tree_mut()?;
        tree.dir(node)?;
        tree.open_handle(node, flags)
    }

    fn readdir(&self, _req: &Request, node: NodeId, handle: Handle, cookie: u64, sink: &mut dyn DirSink) -> Result<()> {
        let tree = self.tree()?;
        tree.handle_flags(handle, node)?;
        let dir = tree.dir(node)?;
        let dot = |name: &'static [u8], ino, cookie| DirEntry { ino, kind: FileKind::Directory, name, cookie };
        if cookie < 1 && !sink.add(&dot(b".", node, 1)) {
            return Ok(());
        }
        if cookie < 2 && !sink.add(&dot(b"..", dir.parent, 2)) {
            return Ok(());
        }
        // Resume after the entry whose serial is `cookie`, in serial order.
        for (&serial, name) in dir.by_serial.range((Bound::Excluded(cookie.max(2)), Bound::Unbounded)) {
            let Some(&(id, _)) = dir.entries.get(name) else { continue };
            let kind = tree.node(id).map(|n| n.kind).unwrap_or_default();
            if !sink.add(&DirEntry { ino: id, kind, name: name.as_encoded_bytes(), cookie: serial }) {
                break;
            }
        }
        Ok(())
    }

    fn releasedir(&self, _req: &Request, node: NodeId, handle: Handle) -> Result<()> {
        self.tree_mut()?.close_handle(handle, node)
    }

    fn statfs(&self, _req: &Request, _node: NodeId) -> Result<StatFs> {
        let tree = self.tree()?;
        let bs = BLOCK_SIZE as u64;
        let blocks = tree.max_bytes.unwrap_or(UNLIMITED_BYTES) / bs;
        let bfree = blocks.saturating_sub(tree.used_bytes.div_ceil(bs));
        let files = tree.max_files.unwrap_or(UNLIMITED_BYTES);
        let ffree = files.saturating_sub(tree.nodes.len() as u64);
        Ok(StatFs {
            blocks,
            bfree,
            bavail: bfree,
            files,
            ffree,
            bsize: BLOCK_SIZE,
            namelen: MAX_NAME_LEN as u32,
            frsize: BLOCK_SIZE,
        })
    }

    fn setxattr(&self, _req: &Request, node: NodeId, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        self.check_writable()?;
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(err(Errno::ERANGE));
        }
        if value.len() > MAX_XATTR_VALUE {
            return Err(err(Errno::E2BIG));
        }
        let mut tree = self.tree_mut()?;
        let n = tree.node_mut(node)?;
        match (n.xattrs.contains_key(name), flags) {
            (true, f) if f & XATTR_CREATE != 0 => return Err(err(Errno::EEXIST)),
            (false, f) if f & XATTR_REPLACE != 0 => return Err(err(Errno::ENODATA)),
            _ => {}
        }
        n.xattrs.insert(name.to_owned(), value.to_vec());
        n.ctime = Timestamp::now();
        Ok(())
    }

    fn getxattr(&self, _req: &Request, node: NodeId, name: &OsStr, buf: &mut [u8]) -> Result<usize> {
        let tree = self.tree()?;
        let value = tree.node(node)?.xattrs.get(name).ok_or(err(Errno::ENODATA))?;
        copy_out(value, buf)
    }

    fn listxattr(&self, _req: &Request, node: NodeId, buf: &mut [u8]) -> Result<usize> {
        let tree = self.tree()?;
        let mut names = Vec::new();
        for name in tree.node(node)?.xattrs.keys() {
            names.extend_from_slice(name.as_encoded_bytes());
            names.push(0);
        }
        copy_out(&names, buf)
    }

    fn removexattr(&self, _req: &Request, node: NodeId, name: &OsStr) -> Result<()> {
        self.check_writable()?;
        let mut tree = self.tree_mut()?;
        let n = tree.node_mut(node)?;
        n.xattrs.remove(name).ok_or(err(Errno::ENODATA))?;
        n.ctime = Timestamp::now();
        Ok(())
    }

    fn fallocate(
        &self,
        _req: &Request,
        node: NodeId,
        handle: Handle,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<()> {
        self.check_writable()?;
        // Mode 0 allocates (and extends the size); KEEP_SIZE only allocates. Punching
        // holes and the other modes are not supported, as `CAPABILITIES` says.
        if mode & !fallocate_mode::KEEP_SIZE != 0 {
            return Err(err(Errno::EOPNOTSUPP));
        }
        if length == 0 {
            return Err(err(Errno::EINVAL));
        }
        let mut tree = self.tree_mut()?;
        if tree.handle_flags(handle, node)? & O_ACCMODE == O_RDONLY {
            return Err(err(Errno::EBADF));
        }
        let end = offset.checked_add(length).filter(|&e| e <= MAX_FILE_SIZE).ok_or(err(Errno::EFBIG))?;
        let (size, allocated) = match &tree.node(node)?.content {
            Content::File { data, allocated } => (data.len() as u64, *allocated),
            Content::Dir(_) => return Err(err(Errno::EISDIR)),
            _ => return Err(err(Errno::ENODEV)),
        };
        let new_size = if mode & fallocate_mode::KEEP_SIZE != 0 { size } else { size.max(end) };
        // Preallocating is only a charge against `max_bytes`: later writes into it cannot
        // fail with ENOSPC, which is what fallocate promises.
        tree.resize_file(node, new_size, allocated.max(end))?;
        tree.node_mut(node)?.touch_modified();
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// 4. Tests: the filesystem driven through the trait, as the host drives it.
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
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
}

plugfs_plugin_api::export_plugin!(MemFsPlugin);
