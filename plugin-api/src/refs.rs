//! Who refers to which node, for plugins that must keep an unlinked file alive while the
//! kernel still knows it (an open file, a lookup reference not yet forgotten) and free it
//! after: the bookkeeping every such plugin needs, in one place. Not part of the ABI.
//!
//! ```
//! use plugfs_plugin_api::refs::NodeRefs;
//! let mut refs = NodeRefs::default();
//! refs.looked_up(7);
//! refs.opened(1, 7, 0);
//! assert!(!refs.forgotten(7, 1), "still open");
//! assert_eq!(refs.closed(1), Some(7));
//! assert!(refs.unused(7));
//! ```

use std::collections::HashMap;

use crate::{Handle, NodeId};

#[derive(Debug, Default)]
struct Counts {
    lookups: u64,
    opens: u64,
}

/// Lookup references and open handles per node, and each handle's node and open flags.
#[derive(Debug, Default)]
pub struct NodeRefs {
    refs: HashMap<NodeId, Counts>,
    handles: HashMap<Handle, (NodeId, i32)>,
}

impl NodeRefs {
    /// The kernel took one lookup reference on `node` (an entry was handed out).
    pub fn looked_up(&mut self, node: NodeId) {
        self.refs.entry(node).or_default().lookups += 1;
    }

    /// `handle` was opened on `node` with `flags`.
    pub fn opened(&mut self, handle: Handle, node: NodeId, flags: i32) {
        self.handles.insert(handle, (node, flags));
        self.refs.entry(node).or_default().opens += 1;
    }

    /// The open flags of `handle`, if it is open.
    pub fn flags(&self, handle: Handle) -> Option<i32> {
        self.handles.get(&handle).map(|&(_, flags)| flags)
    }

    /// `handle` was released; returns the node it was open on.
    pub fn closed(&mut self, handle: Handle) -> Option<NodeId> {
        let (node, _) = self.handles.remove(&handle)?;
        if let Some(c) = self.refs.get_mut(&node) {
            c.opens = c.opens.saturating_sub(1);
        }
        Some(node)
    }

    /// The kernel forgot `n` lookup references on `node`; returns whether nothing refers
    /// to it any more.
    pub fn forgotten(&mut self, node: NodeId, n: u64) -> bool {
        match self.refs.get_mut(&node) {
            Some(c) => {
                c.lookups = c.lookups.saturating_sub(n);
                c.lookups == 0 && c.opens == 0
            }
            None => true,
        }
    }

    /// Whether nothing refers to `node`.
    pub fn unused(&self, node: NodeId) -> bool {
        self.refs.get(&node).is_none_or(|c| c.lookups == 0 && c.opens == 0)
    }

    /// Drops the counts of `node` if nothing refers to it; returns whether it did (the
    /// caller may then free an unlinked node).
    pub fn remove_if_unused(&mut self, node: NodeId) -> bool {
        let unused = self.unused(node);
        if unused {
            self.refs.remove(&node);
        }
        unused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_unused_only_when_every_lookup_is_forgotten_and_every_handle_closed() {
        let mut r = NodeRefs::default();
        r.looked_up(5);
        r.looked_up(5);
        r.opened(10, 5, 0o2000);
        assert_eq!(r.flags(10), Some(0o2000));
        assert!(!r.forgotten(5, 1));
        assert!(!r.forgotten(5, 1), "open");
        assert!(!r.remove_if_unused(5));
        assert_eq!(r.closed(10), Some(5));
        assert_eq!(r.closed(10), None, "closed once");
        assert_eq!(r.flags(10), None);
        assert!(r.remove_if_unused(5));
        assert!(r.unused(5) && r.forgotten(5, 3), "no counts left, and over-forgetting is harmless");
    }
}
