//! The metadata B+tree: paged from disk through a bounded cache of verified nodes
//! ([`Pager`]), and changed at commit by rewriting the changed leaves and the nodes above
//! them into fresh blocks (copy-on-write: no block of a durable tree is ever overwritten).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use super::crc::crc32c;
use super::device::Device;
use super::error::{Error, Result};
use super::format::{self, BLOCK, MAX_HEIGHT, NODE_ROOM, Node, Ptr, SLOTS};

/// Reads block `ptr.block` and checks it against `ptr.crc`.
pub fn read_verified(dev: &dyn Device, ptr: Ptr, total_blocks: u64) -> Result<Vec<u8>> {
    if ptr.block < SLOTS || ptr.block >= total_blocks {
        return Err(Error::Corrupt(format!("pointer to block {} outside the image", ptr.block)));
    }
    let mut b = vec![0; BLOCK];
    let off = ptr.block.checked_mul(BLOCK as u64).ok_or_else(|| Error::Corrupt("block number overflows".into()))?;
    dev.read_at(&mut b, off)?;
    let crc = crc32c(&b);
    if crc != ptr.crc {
        tracing::error!(block = ptr.block, expected = ptr.crc, found = crc, "wfs: checksum mismatch");
        return Err(Error::Corrupt(format!("block {}: checksum mismatch", ptr.block)));
    }
    Ok(b)
}

/// Visits the tree at `root` depth first with one node per level in memory (fsck and
/// scrub see every item without holding them all): `visit` gets each node's block and the
/// node, parents before children, leaves in key order. A node that fails its checksum, does
/// not decode, is not of the level its place calls for, or puts keys out of order ends the
/// walk with an error.
pub fn walk(
    dev: &dyn Device,
    root: Ptr,
    height: u8,
    total_blocks: u64,
    visit: &mut dyn FnMut(u64, &Node),
) -> Result<()> {
    if height == 0 || height > MAX_HEIGHT {
        return Err(Error::Corrupt(format!("tree height {height}")));
    }
    walk_node(dev, root, height - 1, total_blocks, &mut None, visit)
}

fn walk_node(
    dev: &dyn Device,
    ptr: Ptr,
    level: u8,
    total: u64,
    last_key: &mut Option<Vec<u8>>,
    visit: &mut dyn FnMut(u64, &Node),
) -> Result<()> {
    let node = format::decode_node(&read_verified(dev, ptr, total)?)?;
    match &node {
        Node::Leaf(items) => {
            if level != 0 {
                return Err(Error::Corrupt(format!("block {}: a leaf where level {level} belongs", ptr.block)));
            }
            let mut last = last_key.as_deref();
            for (k, _) in items {
                if last.is_some_and(|last| last >= k.as_slice()) {
                    return Err(Error::Corrupt(format!("block {}: keys out of order", ptr.block)));
                }
                last = Some(k);
            }
            if let Some((k, _)) = items.last() {
                *last_key = Some(k.clone());
            }
            visit(ptr.block, &node);
        }
        Node::Internal(l, children) => {
            if *l != level || children.is_empty() {
                return Err(Error::Corrupt(format!("block {}: node level {l} where {level} belongs", ptr.block)));
            }
            visit(ptr.block, &node);
            for (_, child) in children {
                walk_node(dev, *child, level - 1, total, last_key, visit)?;
            }
        }
    }
    Ok(())
}

/// Reads tree nodes through a bounded cache of decoded nodes: the live tree and snapshots
/// are paged from disk, never loaded whole.
pub struct Pager {
    dev: Arc<dyn Device>,
    total: u64,
    /// Nodes by block, with the checksum they were read under (a block reused for another
    /// node has another checksum, so a stale entry is never served).
    cache: std::sync::Mutex<Cache<(u32, Arc<Node>)>>,
}

use super::cache::Cache;

impl Pager {
    /// A pager over an image of `total` blocks caching at most `capacity` nodes.
    pub fn new(dev: Arc<dyn Device>, total: u64, capacity: usize) -> Pager {
        Pager { dev, total, cache: std::sync::Mutex::new(Cache::new(capacity)) }
    }

    /// The node at `ptr`, verified and decoded.
    pub fn node(&self, ptr: Ptr) -> Result<Arc<Node>> {
        if let Ok(mut c) = self.cache.lock()
            && let Some((crc, n)) = c.get(ptr.block)
            && crc == ptr.crc
        {
            return Ok(n);
        }
        let n = Arc::new(format::decode_node(&read_verified(&*self.dev, ptr, self.total)?)?);
        self.remember(ptr, n.clone());
        Ok(n)
    }

    fn remember(&self, ptr: Ptr, n: Arc<Node>) {
        if let Ok(mut c) = self.cache.lock() {
            c.insert(ptr.block, (ptr.crc, n));
        }
    }

    /// Forgets a block (freed).
    pub fn forget(&self, block: u64) {
        if let Ok(mut c) = self.cache.lock() {
            c.remove(block);
        }
    }

    /// Nodes cached now.
    pub fn cached(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// The value of `key` in the tree at `root`.
    pub fn get(&self, root: Ptr, height: u8, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut it = self.iter(root, height, key)?;
        match it.next().transpose()? {
            Some((k, v)) if k == key => Ok(Some(v)),
            _ => Ok(None),
        }
    }

    /// The items of the tree at `root` from `from` on, in key order.
    pub fn iter(&self, root: Ptr, height: u8, from: &[u8]) -> Result<TreeIter<'_>> {
        if height == 0 || height > MAX_HEIGHT {
            return Err(Error::Corrupt(format!("tree height {height}")));
        }
        let mut stack = Vec::with_capacity(height as usize);
        let mut ptr = root;
        let mut level = height - 1;
        loop {
            let n = self.node(ptr)?;
            check_level(&n, level, ptr)?;
            match &*n {
                Node::Leaf(items) => {
                    let i = items.partition_point(|(k, _)| k.as_slice() < from);
                    stack.push((n, i));
                    return Ok(TreeIter { pager: self, stack });
                }
                Node::Internal(_, children) => {
                    let i = children.partition_point(|(k, _)| k.as_slice() <= from).saturating_sub(1);
                    ptr = children[i].1;
                    stack.push((n.clone(), i));
                    level -= 1;
                }
            }
        }
    }

    /// Applies `changes` (a value to set, or `None` to remove) to the tree at `root`
    /// copy-on-write: the leaves holding a changed key are merged with their changes and
    /// repacked, a small leftover absorbs its next sibling, and the nodes on their paths are
    /// rewritten; every other node stays where it is. New nodes go to blocks from `alloc`.
    pub fn apply(
        &self,
        root: Ptr,
        height: u8,
        changes: &Changes,
        alloc: &mut dyn FnMut() -> Result<u64>,
    ) -> Result<Applied> {
        let mut w = Rewriter { pager: self, alloc, dropped: Vec::new(), leaf_bytes: (0, 0) };
        if height == 0 || height > MAX_HEIGHT {
            return Err(Error::Corrupt(format!("tree height {height}")));
        }
        if changes.is_empty() {
            return Ok(Applied { root, height, dropped: Vec::new(), leaf_bytes: (0, 0) });
        }
        let all = (Bound::Unbounded, Bound::Unbounded);
        let mut level = height - 1;
        let mut entries = w.rewrite(root, level, all, changes)?;
        if entries.is_empty() {
            level = 0;
            entries = vec![w.leaf(&[])?];
        }
        while entries.len() > 1 {
            level += 1;
            if level >= MAX_HEIGHT {
                return Err(Error::Corrupt("the tree grew beyond its height limit".into()));
            }
            entries = w.pack_internal(level, &entries)?;
        }
        let mut root = entries[0].1;
        // A root with one child is replaced by the child.
        while level > 0 {
            let n = self.node(root)?;
            let Node::Internal(_, children) = &*n else { break };
            if children.len() != 1 {
                break;
            }
            w.dropped.push(root.block);
            root = children[0].1;
            level -= 1;
        }
        Ok(Applied { root, height: level + 1, dropped: w.dropped, leaf_bytes: w.leaf_bytes })
    }
}

/// Changes to apply to a tree: a value to set, or `None` to remove the key.
pub type Changes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// What [`Pager::apply`] did.
pub struct Applied {
    /// The new root.
    pub root: Ptr,
    /// The new height.
    pub height: u8,
    /// Blocks of nodes it replaced or dropped (a root replaced by its only child may be one
    /// `alloc` gave it).
    pub dropped: Vec<u64>,
    /// Bytes of leaf items written, and in the leaves it dropped.
    pub leaf_bytes: (u64, u64),
}

fn check_level(n: &Node, level: u8, ptr: Ptr) -> Result<()> {
    match n {
        Node::Leaf(_) if level == 0 => Ok(()),
        Node::Internal(l, children) if *l == level && !children.is_empty() => Ok(()),
        _ => Err(Error::Corrupt(format!("block {}: not the node of level {level} that belongs there", ptr.block))),
    }
}

type Range<'k> = (Bound<&'k [u8]>, Bound<&'k [u8]>);

/// The key range of child `i` of a node whose own range is `outer`.
fn child_range<'k>(children: &'k [(Vec<u8>, Ptr)], i: usize, outer: Range<'k>) -> Range<'k> {
    let lo = if i == 0 { outer.0 } else { Bound::Included(children[i].0.as_slice()) };
    let hi = match children.get(i + 1) {
        Some((k, _)) => Bound::Excluded(k.as_slice()),
        None => outer.1,
    };
    (lo, hi)
}

fn changes_in<'c>(
    changes: &'c Changes,
    r: Range<'_>,
) -> std::collections::btree_map::Range<'c, Vec<u8>, Option<Vec<u8>>> {
    changes.range::<[u8], _>(r)
}

/// Merges sorted items with sorted changes.
fn merge<'c>(
    items: &[(Vec<u8>, Vec<u8>)],
    changes: impl Iterator<Item = (&'c Vec<u8>, &'c Option<Vec<u8>>)>,
    out: &mut Vec<(Vec<u8>, Vec<u8>)>,
) {
    let mut items = items.iter().peekable();
    for (k, v) in changes {
        while let Some((ik, iv)) = items.next_if(|(ik, _)| ik < k) {
            out.push((ik.clone(), iv.clone()));
        }
        items.next_if(|(ik, _)| ik == k);
        if let Some(v) = v {
            out.push((k.clone(), v.clone()));
        }
    }
    out.extend(items.cloned());
}

struct Rewriter<'a> {
    pager: &'a Pager,
    alloc: &'a mut dyn FnMut() -> Result<u64>,
    dropped: Vec<u64>,
    leaf_bytes: (u64, u64),
}

/// Bytes of leaf items.
pub fn items_bytes(items: &[(Vec<u8>, Vec<u8>)]) -> u64 {
    items.iter().map(|(k, v)| format::leaf_item_size(k, v) as u64).sum()
}

impl Rewriter<'_> {
    fn put(&mut self, bytes: Vec<u8>, node: Node) -> Result<Ptr> {
        let block = (self.alloc)()?;
        self.pager.dev.write_at(&bytes, block * BLOCK as u64)?;
        let ptr = Ptr { block, crc: crc32c(&bytes) };
        self.pager.remember(ptr, Arc::new(node));
        Ok(ptr)
    }

    fn leaf(&mut self, page: &[(Vec<u8>, Vec<u8>)]) -> Result<(Vec<u8>, Ptr)> {
        let refs: Vec<(&[u8], &[u8])> = page.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
        let first = page.first().map(|(k, _)| k.clone()).unwrap_or_default();
        self.leaf_bytes.0 += items_bytes(page);
        Ok((first, self.put(format::encode_leaf(&refs), Node::Leaf(page.to_vec()))?))
    }

    /// Packs items into full leaves.
    fn pack_leaves(&mut self, items: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<(Vec<u8>, Ptr)>> {
        let mut out = Vec::new();
        let start = self.pack_all_but_last(items, &mut out)?;
        if start < items.len() {
            out.push(self.leaf(&items[start..])?);
        }
        Ok(out)
    }

    /// Packs items into full leaves except the last page; returns how many items it wrote.
    fn pack_all_but_last(&mut self, items: &[(Vec<u8>, Vec<u8>)], out: &mut Vec<(Vec<u8>, Ptr)>) -> Result<usize> {
        let mut start = 0;
        let mut used = 0;
        for (i, (k, v)) in items.iter().enumerate() {
            let size = format::leaf_item_size(k, v);
            if used + size > NODE_ROOM && i > start {
                out.push(self.leaf(&items[start..i])?);
                start = i;
                used = 0;
            }
            used += size;
        }
        Ok(start)
    }

    /// Packs child entries into full internal nodes of `level`.
    fn pack_internal(&mut self, level: u8, entries: &[(Vec<u8>, Ptr)]) -> Result<Vec<(Vec<u8>, Ptr)>> {
        let mut out = Vec::new();
        let mut start = 0;
        let mut used = 0;
        let emit = |w: &mut Self, page: &[(Vec<u8>, Ptr)], out: &mut Vec<(Vec<u8>, Ptr)>| -> Result<()> {
            let ptr = w.put(format::encode_internal(level, page), Node::Internal(level, page.to_vec()))?;
            out.push((page[0].0.clone(), ptr));
            Ok(())
        };
        for (i, (k, _)) in entries.iter().enumerate() {
            let size = format::internal_item_size(k);
            if used + size > NODE_ROOM && i > start {
                emit(self, &entries[start..i], &mut out)?;
                start = i;
                used = 0;
            }
            used += size;
        }
        if start < entries.len() {
            emit(self, &entries[start..], &mut out)?;
        }
        Ok(out)
    }

    /// The nodes (at `level`) that replace the node at `ptr`, whose keys lie in `range`,
    /// once `changes` are applied: none when it ends up empty.
    fn rewrite(&mut self, ptr: Ptr, level: u8, range: Range<'_>, changes: &Changes) -> Result<Vec<(Vec<u8>, Ptr)>> {
        let n = self.pager.node(ptr)?;
        check_level(&n, level, ptr)?;
        self.dropped.push(ptr.block);
        let children = match &*n {
            Node::Leaf(items) => {
                self.leaf_bytes.1 += items_bytes(items);
                let mut merged = Vec::with_capacity(items.len());
                merge(items, changes_in(changes, range), &mut merged);
                return self.pack_leaves(&merged);
            }
            Node::Internal(_, children) => children,
        };
        let mut out: Vec<(Vec<u8>, Ptr)> = Vec::with_capacity(children.len() + 2);
        if level == 1 {
            // Leaves: the changed ones (and a clean one after a small leftover) are merged
            // into one run and packed together, so deletions do not leave a trail of
            // nearly empty leaves.
            let mut run: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            let mut run_bytes = 0;
            for (i, (first, child)) in children.iter().enumerate() {
                let r = child_range(children, i, range);
                let changed = changes_in(changes, r).next().is_some();
                // (The run's last page is roughly what is left over after its full ones.)
                if changed || (!run.is_empty() && run_bytes % NODE_ROOM < NODE_ROOM / 2) {
                    let leaf = self.pager.node(*child)?;
                    check_level(&leaf, 0, *child)?;
                    let Node::Leaf(items) = &*leaf else { unreachable!("checked") };
                    self.dropped.push(child.block);
                    self.leaf_bytes.1 += items_bytes(items);
                    let before = run.len();
                    merge(items, changes_in(changes, r), &mut run);
                    run_bytes += run[before..].iter().map(|(k, v)| format::leaf_item_size(k, v)).sum::<usize>();
                    // Write the full pages now; only the last one waits for what follows.
                    if run_bytes > 4 * NODE_ROOM {
                        let keep = self.pack_all_but_last(&run, &mut out)?;
                        run.drain(..keep);
                        run_bytes = run.iter().map(|(k, v)| format::leaf_item_size(k, v)).sum();
                    }
                } else {
                    if !run.is_empty() {
                        out.extend(self.pack_leaves(&std::mem::take(&mut run))?);
                        run_bytes = 0;
                    }
                    out.push((first.clone(), *child));
                }
            }
            if !run.is_empty() {
                out.extend(self.pack_leaves(&run)?);
            }
        } else {
            for (i, (first, child)) in children.iter().enumerate() {
                let r = child_range(children, i, range);
                if changes_in(changes, r).next().is_some() {
                    out.extend(self.rewrite(*child, level - 1, r, changes)?);
                } else {
                    out.push((first.clone(), *child));
                }
            }
        }
        self.pack_internal(level, &out)
    }
}

/// Items of a paged tree in key order (see [`Pager::iter`]).
pub struct TreeIter<'a> {
    pager: &'a Pager,
    /// The path from the root: each node and the index of the child (or item) next.
    stack: Vec<(Arc<Node>, usize)>,
}

impl Iterator for TreeIter<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (node, i) = self.stack.last_mut()?;
            match &**node {
                Node::Leaf(items) => {
                    if let Some(item) = items.get(*i) {
                        *i += 1;
                        return Some(Ok(item.clone()));
                    }
                }
                Node::Internal(level, children) => {
                    if let Some((_, ptr)) = children.get(*i) {
                        let (ptr, level) = (*ptr, *level);
                        let child = self.pager.node(ptr).and_then(|n| check_level(&n, level - 1, ptr).map(|_| n));
                        match child {
                            Ok(n) => self.stack.push((n, 0)),
                            Err(e) => {
                                self.stack.clear();
                                return Some(Err(e));
                            }
                        }
                        continue;
                    }
                }
            }
            // This node is done: go on with the parent's next child.
            self.stack.pop();
            if let Some((_, i)) = self.stack.last_mut() {
                *i += 1;
            }
        }
    }
}
