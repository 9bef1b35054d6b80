//! The node table: our [`NodeId`]s, each backed by an `O_PATH` fd of the backing inode.
//!
//! Holding an fd (rather than a path) is what makes every later operation immune to renames
//! and planted symlinks: the fd keeps naming the same inode wherever it moves. Keying by
//! (dev, ino) makes hard links share one node, as the kernel expects. While we hold the fd
//! the inode cannot be freed, so its (dev, ino) cannot be reused by another file; ids come
//! from a counter and are never reused, so generation 0 is always correct.

use std::collections::HashMap;
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
    lookups: u64,
}

struct Inner {
    nodes: HashMap<NodeId, Node>,
    ids: HashMap<InodeKey, NodeId>,
    next_id: NodeId,
}

/// Maps node ids to backing inodes and back.
pub(crate) struct NodeTable {
    inner: RwLock<Inner>,
}

impl NodeTable {
    /// A table holding only the root.
    pub(crate) fn new(root: OwnedFd, key: InodeKey) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(ROOT_ID, Node { fd: Arc::new(root), kind: FileKind::Directory, key, lookups: 1 });
        let mut ids = HashMap::new();
        ids.insert(key, ROOT_ID);
        NodeTable { inner: RwLock::new(Inner { nodes, ids, next_id: ROOT_ID + 1 }) }
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

    /// Records one more lookup reference on the inode `key`, whose `O_PATH` fd is `fd`.
    /// A known inode keeps its id (and its first fd; `fd` is closed).
    pub(crate) fn remember(&self, fd: OwnedFd, key: InodeKey, kind: FileKind) -> NodeId {
        let mut inner = self.write();
        if let Some(&id) = inner.ids.get(&key)
            && let Some(node) = inner.nodes.get_mut(&id)
        {
            node.lookups = node.lookups.saturating_add(1);
            return id;
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.nodes.insert(id, Node { fd: Arc::new(fd), kind, key, lookups: 1 });
        inner.ids.insert(key, id);
        id
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
        let a = t.remember(fd(), (1, 2), FileKind::File);
        let b = t.remember(fd(), (1, 2), FileKind::File);
        assert_eq!(a, b);
        assert_eq!(t.lookups(a), Some(2));
        t.forget(a, 1);
        assert!(t.get(a).is_ok());
        t.forget(a, 1);
        assert_eq!(t.get(a).unwrap_err().errno(), Errno::ESTALE);
        let c = t.remember(fd(), (1, 2), FileKind::File);
        assert_ne!(c, a, "ids are never reused");
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn root_is_never_forgotten() {
        let t = NodeTable::new(fd(), (1, 1));
        t.forget(ROOT_ID, 1000);
        assert!(t.get(ROOT_ID).is_ok());
        assert_eq!(t.remember(fd(), (1, 1), FileKind::Directory), ROOT_ID);
    }
}
