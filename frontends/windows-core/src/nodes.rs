//! The name cache: which node a name in a directory stands for, and the lookup references
//! the core holds on the plugin's nodes.
//!
//! **References.** Every plugin answer that returns an [`Entry`] hands over one lookup
//! reference. The core keeps exactly one per node it uses and gives any extra back at once,
//! so each reference taken is forgotten exactly once. A node is *pinned* by each cache entry
//! naming it, each open handle on it, and each open file whose parent it is; when the last
//! pin goes, its reference is forgotten, and the cache entries below it (keyed by its id,
//! which the plugin may now reuse) are dropped with it.
//!
//! **Staleness.** Entries live for the `entry_ttl` the plugin gives, as in the kernel's
//! dentry cache, so changes made past this mount show up. Changes made through this mount
//! (rename, delete) update the cache themselves.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use plugfs_plugin_api::{Entry, Errno, FileKind, FileSystem, NodeId, ROOT_ID, Request};

use crate::name::{key, os};

/// One cached name.
#[derive(Clone, Debug)]
struct Child {
    node: NodeId,
    kind: FileKind,
    expires: Instant,
}

/// Reference and pin counts of one node.
#[derive(Clone, Copy, Debug, Default)]
struct Held {
    refs: u64,
    pins: u64,
}

/// The name cache and the references behind it.
#[derive(Default)]
pub(crate) struct Nodes {
    /// (directory, name key) -> child.
    children: BTreeMap<(NodeId, String), Child>,
    held: HashMap<NodeId, Held>,
    case_sensitive: bool,
}

impl Nodes {
    pub(crate) fn new(case_sensitive: bool) -> Nodes {
        Nodes { case_sensitive, ..Nodes::default() }
    }

    /// The key `name` has in a directory under this mount's case rule.
    pub(crate) fn key(&self, name: &str) -> String {
        key(name, self.case_sensitive)
    }

    /// Takes over the reference an answer handed over, keeping one per node.
    fn took_ref(&mut self, fs: &dyn FileSystem, node: NodeId) {
        if node == ROOT_ID {
            return;
        }
        let held = self.held.entry(node).or_default();
        if held.refs >= 1 {
            fs.forget(node, 1);
        } else {
            held.refs = 1;
        }
    }

    /// Adds a pin on a node the core holds a reference on.
    pub(crate) fn pin(&mut self, node: NodeId) {
        if node != ROOT_ID {
            self.held.entry(node).or_default().pins += 1;
        }
    }

    /// Removes a pin; the last one gives the reference back and drops the names below.
    pub(crate) fn unpin(&mut self, fs: &dyn FileSystem, node: NodeId) {
        let mut work = vec![node];
        while let Some(node) = work.pop() {
            if node == ROOT_ID {
                continue;
            }
            let Some(held) = self.held.get_mut(&node) else { continue };
            held.pins = held.pins.saturating_sub(1);
            if held.pins > 0 {
                continue;
            }
            let refs = held.refs;
            self.held.remove(&node);
            if refs > 0 {
                fs.forget(node, refs);
            }
            let below: Vec<(NodeId, String)> = self
                .children
                .range((node, String::new())..)
                .take_while(|(k, _)| k.0 == node)
                .map(|(k, _)| k.clone())
                .collect();
            for k in below {
                if let Some(child) = self.children.remove(&k) {
                    work.push(child.node);
                }
            }
        }
    }

    /// Caches `entry` (a fresh answer, one reference) as `name` in `parent`.
    pub(crate) fn insert(&mut self, fs: &dyn FileSystem, parent: NodeId, name: &str, entry: &Entry) {
        self.took_ref(fs, entry.node);
        self.pin(entry.node);
        let child = Child { node: entry.node, kind: entry.attr.kind, expires: Instant::now() + entry.entry_ttl };
        if let Some(old) = self.children.insert((parent, self.key(name)), child) {
            self.unpin(fs, old.node);
        }
    }

    /// Forgets the name `name` in `parent`.
    pub(crate) fn remove(&mut self, fs: &dyn FileSystem, parent: NodeId, name: &str) {
        if let Some(old) = self.children.remove(&(parent, self.key(name))) {
            self.unpin(fs, old.node);
        }
    }

    /// The node `name` in `parent` stands for: from the cache while its entry is fresh,
    /// else from the plugin. `Ok(None)` when there is no such name.
    pub(crate) fn lookup(
        &mut self,
        fs: &dyn FileSystem,
        req: &Request,
        parent: NodeId,
        name: &str,
    ) -> Result<Option<(NodeId, FileKind)>, Errno> {
        let k = (parent, self.key(name));
        if let Some(c) = self.children.get(&k).filter(|c| c.expires > Instant::now()) {
            return Ok(Some((c.node, c.kind)));
        }
        match fs.lookup(req, parent, &os(name)) {
            Ok(entry) => {
                self.insert(fs, parent, name, &entry);
                Ok(Some((entry.node, entry.attr.kind)))
            }
            Err(e) if e.errno() == Errno::ENOENT => {
                self.remove(fs, parent, name);
                Ok(None)
            }
            Err(e) => Err(e.errno()),
        }
    }

    /// Keeps the cache within `capacity` entries: once past it, drops entries no open
    /// file needs (nodes pinned only by their entry, with whatever is cached below them)
    /// until half of `capacity` is left, giving their references back.
    pub(crate) fn trim(&mut self, fs: &dyn FileSystem, capacity: usize) {
        if self.children.len() <= capacity {
            return;
        }
        let target = capacity / 2;
        let candidates: Vec<(NodeId, String)> = self
            .children
            .iter()
            .filter(|(_, c)| self.held.get(&c.node).is_some_and(|h| h.pins == 1))
            .map(|(k, _)| k.clone())
            .collect();
        for k in candidates {
            if self.children.len() <= target {
                break;
            }
            // An earlier removal may have dropped it with its directory.
            if let Some(child) = self.children.remove(&k) {
                self.unpin(fs, child.node);
            }
        }
    }

    /// How many names are cached.
    pub(crate) fn len(&self) -> usize {
        self.children.len()
    }

    /// Gives every reference back (the volume is going away).
    pub(crate) fn clear(&mut self, fs: &dyn FileSystem) {
        self.children.clear();
        for (node, held) in self.held.drain() {
            if held.refs > 0 {
                fs.forget(node, held.refs);
            }
        }
    }

    /// How many nodes the core holds references on (for tests and metrics).
    pub(crate) fn held_count(&self) -> usize {
        self.held.len()
    }
}
