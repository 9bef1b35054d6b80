//! The node table: our [`NodeId`]s, each backed by an `O_PATH` fd of the backing inode.
//!
//! Holding an fd (rather than a path) is what makes every later operation immune to renames
//! and planted symlinks: the fd keeps naming the same inode wherever it moves. Keying by
//! (dev, ino) makes hard links share one node, as the kernel expects. While we hold the fd
//! the inode cannot be freed, so its (dev, ino) cannot be reused by another file.
//!
//! A node's id is its backing inode number when it lives on the root's device: the FUSE
//! frontend reports the node id as `st_ino` (fuser has one field for both), so this keeps
//! `stat`, `readdir` and a remount agreeing on one number per file, as `ls -i`, `find -inum`,
//! tar and rsync -H expect. Inodes on other devices (a mount point inside the root), and
//! the backing inode number 1 (the root's id), get ids from a synthetic range above 2^63.
//! An inode number can come back after its file is deleted and forgotten, so every new
//! node takes the next value of one generation counter: (id, generation) never repeats.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use plugfs_plugin_api::{Errno, Error, FileKind, NodeId, ROOT_ID, Result};

use crate::sys::InodeKey;

/// What an operation needs of a node: its fd (shared, so a concurrent `forget` cannot
/// close it mid-call) and its kind, which never changes for a live inode.
#[derive(Clone, Debug)]
pub(crate) struct NodeRef {
    pub fd: Arc<OwnedFd>,
    pub kind: FileKind,
}

struct Node {
    fd: Arc<OwnedFd>,
    kind: FileKind,
    key: InodeKey,
    generation: u64,
    lookups: u64,
    /// The directory and name this inode was last seen under (lookup, create, rename), for
    /// an atomic replace of a regular file; `None` for the root and for other kinds.
    name: Option<(Arc<OwnedFd>, OsString)>,
    /// An atomic replace renamed a new inode over this one's name: opens of it are
    /// `ESTALE`, so the kernel looks the name up again and finds the new inode.
    superseded: bool,
}

struct Inner {
    nodes: HashMap<NodeId, Node>,
    ids: HashMap<InodeKey, NodeId>,
    root_dev: u64,
    next_synthetic: NodeId,
    next_generation: u64,
}

/// The first id given to an inode that cannot use its own number.
const SYNTHETIC_BASE: NodeId = 1 << 63;

/// Maps node ids to backing inodes and back.
pub(crate) struct NodeTable {
    inner: RwLock<Inner>,
}

impl NodeTable {
    /// A table holding only the root.
    pub(crate) fn new(root: OwnedFd, key: InodeKey) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT_ID,
            Node {
                fd: Arc::new(root),
                kind: FileKind::Directory,
                key,
                generation: 0,
                lookups: 1,
                name: None,
                superseded: false,
            },
        );
        let mut ids = HashMap::new();
        ids.insert(key, ROOT_ID);
        let inner = Inner { nodes, ids, root_dev: key.0, next_synthetic: SYNTHETIC_BASE, next_generation: 1 };
        NodeTable { inner: RwLock::new(inner) }
    }

    // A panic elsewhere while a guard was held cannot leave the maps half-updated (every
    // update below is a few infallible map operations), so a poisoned lock is still sound.
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The node `id`, or `ESTALE` if the host names one it was never given or forgot.
    pub(crate) fn get(&self, id: NodeId) -> Result<NodeRef> {
        match self.read().nodes.get(&id) {
            Some(n) => Ok(NodeRef { fd: n.fd.clone(), kind: n.kind }),
            None => Err(Error::with_message(Errno::ESTALE, format!("durable-io: unknown node {id}"))),
        }
    }

    /// Takes one lookup reference on the node of `key` (whose `O_PATH` fd is `fd`), adding
    /// it if new; returns its id and generation. A known inode keeps its id (and its first
    /// fd; `fd` is closed). `at` is the directory and name it was found under, remembered
    /// for regular files.
    pub(crate) fn remember(
        &self,
        fd: OwnedFd,
        key: InodeKey,
        kind: FileKind,
        at: Option<(&Arc<OwnedFd>, &OsStr)>,
    ) -> (NodeId, u64) {
        let name = at.filter(|_| kind == FileKind::File).map(|(dir, name)| (dir.clone(), name.to_owned()));
        let mut inner = self.write();
        if let Some(&id) = inner.ids.get(&key)
            && let Some(node) = inner.nodes.get_mut(&id)
        {
            node.lookups = node.lookups.saturating_add(1);
            if name.is_some() {
                node.name = name;
            }
            return (id, node.generation);
        }
        let (dev, ino) = key;
        let id = if dev == inner.root_dev && ino > ROOT_ID && ino < SYNTHETIC_BASE && !inner.nodes.contains_key(&ino) {
            ino
        } else {
            let id = inner.next_synthetic;
            inner.next_synthetic += 1;
            id
        };
        let generation = inner.next_generation;
        inner.next_generation += 1;
        inner.nodes.insert(id, Node { fd: Arc::new(fd), kind, key, generation, lookups: 1, name, superseded: false });
        inner.ids.insert(key, id);
        (id, generation)
    }

    /// Records that the known inode `key` is now named `name` in `dir` (after a rename).
    pub(crate) fn renamed(&self, key: InodeKey, dir: &Arc<OwnedFd>, name: &OsStr) {
        let mut inner = self.write();
        if let Some(&id) = inner.ids.get(&key)
            && let Some(node) = inner.nodes.get_mut(&id)
            && node.kind == FileKind::File
        {
            node.name = Some((dir.clone(), name.to_owned()));
        }
    }

    /// The directory and name the regular file `id` was last seen under.
    pub(crate) fn name_of(&self, id: NodeId) -> Option<(Arc<OwnedFd>, OsString)> {
        self.read().nodes.get(&id).and_then(|n| n.name.clone())
    }

    /// Whether an atomic replace put another inode under the name of `id`.
    pub(crate) fn is_superseded(&self, id: NodeId) -> bool {
        self.read().nodes.get(&id).is_some_and(|n| n.superseded)
    }

    /// Marks `id` as replaced by an atomic replace: it keeps its inode (stale references
    /// such as `getattr` and open handles still answer for the old file), but the name is
    /// no longer its own; the next lookup of the name finds the new inode, under the new
    /// inode's own id.
    pub(crate) fn supersede(&self, id: NodeId) {
        let mut inner = self.write();
        let Some(node) = inner.nodes.get_mut(&id) else { return };
        node.superseded = true;
        node.name = None;
    }

    /// [`NodeTable::supersede`] of the node of the inode `key`, if it is known.
    pub(crate) fn supersede_key(&self, key: InodeKey) {
        let id = self.read().ids.get(&key).copied();
        if let Some(id) = id
            && id != ROOT_ID
        {
            self.supersede(id);
        }
    }

    /// Drops `n` lookup references; at zero the node is removed and its fd closed (once no
    /// call in flight still holds it). The root is never removed.
    pub(crate) fn forget(&self, id: NodeId, n: u64) {
        if id == ROOT_ID {
            return;
        }
        let mut inner = self.write();
        let Some(node) = inner.nodes.get_mut(&id) else { return };
        node.lookups = node.lookups.saturating_sub(n);
        if node.lookups == 0 {
            let key = node.key;
            inner.nodes.remove(&id);
            if inner.ids.get(&key) == Some(&id) {
                inner.ids.remove(&key);
            }
        }
    }

    /// How many nodes are known (the root included).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.read().nodes.len()
    }

    /// The lookup count of `id`, if known.
    #[cfg(test)]
    pub(crate) fn lookups(&self, id: NodeId) -> Option<u64> {
        self.read().nodes.get(&id).map(|n| n.lookups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustix::fs::{Mode, OFlags};

    fn fd() -> OwnedFd {
        rustix::fs::open("/", OFlags::PATH | OFlags::CLOEXEC, Mode::empty()).unwrap()
    }

    #[test]
    fn same_inode_same_id_until_forgotten() {
        let t = NodeTable::new(fd(), (1, 1));
        let (a, gen_a) = t.remember(fd(), (1, 2), FileKind::File, None);
        let (b, gen_b) = t.remember(fd(), (1, 2), FileKind::File, None);
        assert_eq!((a, gen_a), (b, gen_b));
        assert_eq!(a, 2, "the id is the backing inode number");
        assert_eq!(t.lookups(a), Some(2));
        t.forget(a, 1);
        assert!(t.get(a).is_ok());
        t.forget(a, 1);
        assert_eq!(t.get(a).unwrap_err().errno(), Errno::ESTALE);
        let (c, gen_c) = t.remember(fd(), (1, 2), FileKind::File, None);
        assert_eq!(c, a, "an inode number that comes back keeps its id");
        assert_ne!(gen_c, gen_a, "but not its generation");
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn inodes_of_other_devices_and_inode_1_get_synthetic_ids() {
        let t = NodeTable::new(fd(), (1, 100));
        let (other_dev, _) = t.remember(fd(), (2, 5), FileKind::File, None);
        let (ino_one, _) = t.remember(fd(), (1, 1), FileKind::File, None);
        assert!(other_dev >= SYNTHETIC_BASE && ino_one >= SYNTHETIC_BASE && other_dev != ino_one);
        let (same_dev, _) = t.remember(fd(), (1, 5), FileKind::File, None);
        assert_eq!(same_dev, 5);
    }

    #[test]
    fn root_is_never_forgotten() {
        let t = NodeTable::new(fd(), (1, 1));
        t.forget(ROOT_ID, 1000);
        assert!(t.get(ROOT_ID).is_ok());
        assert_eq!(t.remember(fd(), (1, 1), FileKind::Directory, None).0, ROOT_ID);
    }
}
