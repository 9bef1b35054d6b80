//! The data model: nodes, directories with stable readdir cookies, open handles, and the
//! tree that holds them behind one lock.

use super::*;

/// One node (inode): a file, directory, symlink or special file.
pub(crate) struct Node {
    pub(crate) kind: FileKind,
    pub(crate) perm: u16,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) rdev: u32,
    /// Names pointing at this node (for directories: 2 + subdirectories, 0 once removed).
    pub(crate) nlink: u32,
    pub(crate) atime: Timestamp,
    pub(crate) mtime: Timestamp,
    pub(crate) ctime: Timestamp,
    pub(crate) crtime: Timestamp,
    /// Lookup references the host holds (see `FileSystem::forget`).
    pub(crate) lookups: u64,
    /// Open handles on this node.
    pub(crate) open_handles: u64,
    pub(crate) xattrs: BTreeMap<OsString, Vec<u8>>,
    pub(crate) content: Content,
}

pub(crate) enum Content {
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
pub(crate) struct Dir {
    /// The node `..` names (the root is its own parent).
    pub(crate) parent: NodeId,
    pub(crate) entries: BTreeMap<OsString, (NodeId, u64)>,
    pub(crate) by_serial: BTreeMap<u64, OsString>,
    pub(crate) next_serial: u64,
}

impl Dir {
    pub(crate) fn new(parent: NodeId) -> Self {
        Dir { parent, entries: BTreeMap::new(), by_serial: BTreeMap::new(), next_serial: FIRST_SERIAL }
    }
}

/// What an open handle remembers: the node and the open(2) flags (for the access mode and
/// `O_APPEND`).
pub(crate) struct OpenHandle {
    pub(crate) node: NodeId,
    pub(crate) flags: i32,
}

/// Everything memfs stores, behind the one lock.
pub(crate) struct Tree {
    pub(crate) nodes: HashMap<NodeId, Node>,
    /// Node ids are handed out in order and never reused, so generation numbers stay 0.
    pub(crate) next_node: NodeId,
    pub(crate) handles: HashMap<Handle, OpenHandle>,
    pub(crate) next_handle: Handle,
    /// Bytes charged to files, against `max_bytes`.
    pub(crate) used_bytes: u64,
    pub(crate) max_bytes: Option<u64>,
    pub(crate) max_files: Option<u64>,
}

/// The filesystem memfs serves: one per mount.
pub struct MemFs {
    pub(crate) tree: RwLock<Tree>,
    pub(crate) read_only: bool,
}

impl Node {
    pub(crate) fn new(kind: FileKind, perm: u16, uid: u32, gid: u32, content: Content) -> Self {
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

    pub(crate) fn attr(&self, id: NodeId) -> Attr {
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
    pub(crate) fn touch_modified(&mut self) {
        self.mtime = Timestamp::now();
        self.ctime = self.mtime;
    }
}

pub(crate) fn err(errno: Errno) -> Error {
    Error::new(errno)
}

/// Refuses names the host should never send, and names too long to store.
pub(crate) fn check_name(name: &OsStr) -> Result<()> {
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
pub(crate) fn copy_out(value: &[u8], buf: &mut [u8]) -> Result<usize> {
    if buf.is_empty() {
        return Ok(value.len());
    }
    let dst = buf.get_mut(..value.len()).ok_or(err(Errno::ERANGE))?;
    dst.copy_from_slice(value);
    Ok(value.len())
}

impl Tree {
    pub(crate) fn node(&self, id: NodeId) -> Result<&Node> {
        self.nodes.get(&id).ok_or(err(Errno::ENOENT))
    }

    pub(crate) fn node_mut(&mut self, id: NodeId) -> Result<&mut Node> {
        self.nodes.get_mut(&id).ok_or(err(Errno::ENOENT))
    }

    pub(crate) fn dir(&self, id: NodeId) -> Result<&Dir> {
        match &self.node(id)?.content {
            Content::Dir(dir) => Ok(dir),
            _ => Err(err(Errno::ENOTDIR)),
        }
    }

    pub(crate) fn dir_mut(&mut self, id: NodeId) -> Result<&mut Dir> {
        match &mut self.node_mut(id)?.content {
            Content::Dir(dir) => Ok(dir),
            _ => Err(err(Errno::ENOTDIR)),
        }
    }

    /// The node `name` names in directory `parent`, if any.
    pub(crate) fn child(&self, parent: NodeId, name: &OsStr) -> Result<Option<NodeId>> {
        Ok(self.dir(parent)?.entries.get(name).map(|&(id, _)| id))
    }

    /// Checks that `parent` is a directory that may get new names (not removed).
    pub(crate) fn check_live_dir(&self, parent: NodeId) -> Result<()> {
        self.dir(parent)?;
        if self.node(parent)?.nlink == 0 {
            return Err(Error::with_message(Errno::ENOENT, "the directory was removed"));
        }
        Ok(())
    }

    /// Answers a lookup-like call: hands the host one more reference on `id`.
    pub(crate) fn entry(&mut self, id: NodeId) -> Result<Entry> {
        let node = self.node_mut(id)?;
        node.lookups += 1;
        Ok(Entry { node: id, generation: 0, attr: node.attr(id), entry_ttl: TTL, attr_ttl: TTL })
    }

    /// Adds `name -> id` to directory `parent` under the next serial.
    pub(crate) fn add_entry(&mut self, parent: NodeId, name: &OsStr, id: NodeId) -> Result<()> {
        let dir = self.dir_mut(parent)?;
        let serial = dir.next_serial;
        dir.next_serial += 1;
        dir.entries.insert(name.to_owned(), (id, serial));
        dir.by_serial.insert(serial, name.to_owned());
        self.node_mut(parent)?.touch_modified();
        Ok(())
    }

    /// Removes `name` from directory `parent` and returns the node it named.
    pub(crate) fn remove_entry(&mut self, parent: NodeId, name: &OsStr) -> Result<NodeId> {
        let dir = self.dir_mut(parent)?;
        let (id, serial) = dir.entries.remove(name).ok_or(err(Errno::ENOENT))?;
        dir.by_serial.remove(&serial);
        self.node_mut(parent)?.touch_modified();
        Ok(id)
    }

    /// Creates a node named `name` in `parent`, owned by the caller. Returns its id; the
    /// caller then answers with [`Tree::entry`].
    pub(crate) fn create_node(
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
    pub(crate) fn maybe_free(&mut self, id: NodeId) {
        let unused = self.nodes.get(&id).is_some_and(|n| n.nlink == 0 && n.lookups == 0 && n.open_handles == 0);
        if id != ROOT_ID
            && unused
            && let Some(Node { content: Content::File { allocated, .. }, .. }) = self.nodes.remove(&id)
        {
            self.used_bytes -= allocated;
        }
    }

    /// Whether `ancestor` is `id` or one of the directories above it.
    pub(crate) fn is_ancestor_or_self(&self, ancestor: NodeId, mut id: NodeId) -> bool {
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
    pub(crate) fn resize_file(&mut self, id: NodeId, len: u64, allocated: u64) -> Result<()> {
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
    pub(crate) fn truncate(&mut self, id: NodeId, len: u64) -> Result<()> {
        match &self.node(id)?.content {
            Content::File { data, allocated } => {
                let allocated = if len < data.len() as u64 { len } else { len.max(*allocated) };
                self.resize_file(id, len, allocated)
            }
            Content::Dir(_) => Err(err(Errno::EISDIR)),
            _ => Err(err(Errno::EINVAL)),
        }
    }

    pub(crate) fn open_handle(&mut self, node: NodeId, flags: i32) -> Result<Opened> {
        self.node_mut(node)?.open_handles += 1;
        let handle = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(handle, OpenHandle { node, flags });
        Ok(Opened { handle, ..Opened::default() })
    }

    /// The open flags of `handle`, which must be open on `node`.
    pub(crate) fn handle_flags(&self, handle: Handle, node: NodeId) -> Result<i32> {
        match self.handles.get(&handle) {
            Some(h) if h.node == node => Ok(h.flags),
            _ => Err(Error::with_message(Errno::EBADF, format!("handle {handle} is not open on node {node}"))),
        }
    }

    pub(crate) fn close_handle(&mut self, handle: Handle, node: NodeId) -> Result<()> {
        self.handle_flags(handle, node)?;
        self.handles.remove(&handle);
        self.node_mut(node)?.open_handles -= 1;
        self.maybe_free(node);
        Ok(())
    }
}

impl MemFs {
    /// An empty filesystem: a root directory owned by the host process's user and group.
    pub(crate) fn new(max_bytes: Option<u64>, max_files: Option<u64>, read_only: bool) -> Self {
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
    pub(crate) fn tree(&self) -> Result<RwLockReadGuard<'_, Tree>> {
        self.tree.read().map_err(|_| Error::with_message(Errno::EIO, "memfs: an earlier call panicked"))
    }

    /// The tree for changing; see [`MemFs::tree`].
    pub(crate) fn tree_mut(&self) -> Result<RwLockWriteGuard<'_, Tree>> {
        self.tree.write().map_err(|_| Error::with_message(Errno::EIO, "memfs: an earlier call panicked"))
    }

    /// Every change starts here: a read-only mount refuses it with `EROFS`.
    pub(crate) fn check_writable(&self) -> Result<()> {
        if self.read_only { Err(err(Errno::EROFS)) } else { Ok(()) }
    }
}
