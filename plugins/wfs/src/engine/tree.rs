//! The metadata B+tree: written bottom-up into fresh blocks at commit (copy-on-write: no
//! block of a durable tree is ever overwritten), read back with every node verified.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use super::crc::crc32c;
use super::device::Device;
use super::error::{Error, Result};
use super::format::{self, BLOCK, MAX_HEIGHT, NODE_ROOM, Node, Ptr, SLOTS};

/// The items of a tree, in key order.
pub type Items = BTreeMap<Vec<u8>, Vec<u8>>;

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

/// A leaf of a written tree: its first key and where it is. A commit reuses the leaves
/// whose key range saw no change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// The first key in it (empty for the empty tree's one leaf).
    pub first: Vec<u8>,
    /// The block.
    pub ptr: Ptr,
}

/// Reads a whole tree: its items, and the blocks of its nodes.
pub fn load(dev: &dyn Device, root: Ptr, height: u8, total_blocks: u64) -> Result<(Items, Vec<u64>)> {
    let (items, nodes, _) = load_with_leaves(dev, root, height, total_blocks)?;
    Ok((items, nodes))
}

/// [`load`], with the tree's nodes of each level (0: leaves) in key order.
pub fn load_with_leaves(
    dev: &dyn Device,
    root: Ptr,
    height: u8,
    total_blocks: u64,
) -> Result<(Items, Vec<u64>, Levels)> {
    let mut items = Items::new();
    let mut nodes = Vec::new();
    if height == 0 || height > MAX_HEIGHT {
        return Err(Error::Corrupt(format!("tree height {height}")));
    }
    let mut levels = vec![Vec::new(); height as usize];
    walk(dev, root, height - 1, total_blocks, &mut items, &mut nodes, &mut levels)?;
    Ok((items, nodes, levels))
}

/// The nodes of a tree by level (0: leaves), each level in key order.
pub type Levels = Vec<Vec<Leaf>>;

fn walk(
    dev: &dyn Device,
    ptr: Ptr,
    level: u8,
    total: u64,
    items: &mut Items,
    nodes: &mut Vec<u64>,
    levels: &mut Levels,
) -> Result<()> {
    let b = read_verified(dev, ptr, total)?;
    nodes.push(ptr.block);
    match format::decode_node(&b)? {
        Node::Leaf(list) => {
            if level != 0 {
                return Err(Error::Corrupt(format!("block {}: a leaf where level {level} belongs", ptr.block)));
            }
            levels[0].push(Leaf { first: list.first().map(|(k, _)| k.clone()).unwrap_or_default(), ptr });
            for (k, v) in list {
                if items.last_key_value().is_some_and(|(last, _)| *last >= k) {
                    return Err(Error::Corrupt(format!("block {}: keys out of order", ptr.block)));
                }
                items.insert(k, v);
            }
        }
        Node::Internal(l, children) => {
            if l != level || children.is_empty() {
                return Err(Error::Corrupt(format!("block {}: node level {l} where {level} belongs", ptr.block)));
            }
            levels[level as usize].push(Leaf { first: children[0].0.clone(), ptr });
            for (_, child) in children {
                walk(dev, child, level - 1, total, items, nodes, levels)?;
            }
        }
    }
    Ok(())
}

/// Writes `items` as a new tree into blocks from `alloc`; returns the root, the height and
/// the blocks written.
pub fn write(dev: &dyn Device, items: &Items, alloc: &mut dyn FnMut() -> Result<u64>) -> Result<(Ptr, u8, Vec<u64>)> {
    let w = write_incremental(dev, items, &[], &BTreeSet::new(), alloc)?;
    Ok((w.root, w.height, w.nodes))
}

/// A tree written by [`write_incremental`].
pub struct Written {
    /// The root.
    pub root: Ptr,
    /// The height.
    pub height: u8,
    /// Every node of the new tree, reused leaves included.
    pub nodes: Vec<u64>,
    /// Its nodes by level.
    pub levels: Levels,
}

/// Writes `items` as a new tree, reusing each node of the previous tree (`old_levels`)
/// whose key range holds none of the `dirty` keys (keys set or removed since):
/// copy-on-write that rewrites only the changed leaves and the nodes on their paths.
pub fn write_incremental(
    dev: &dyn Device,
    items: &Items,
    old_levels: &[Vec<Leaf>],
    dirty: &BTreeSet<Vec<u8>>,
    alloc: &mut dyn FnMut() -> Result<u64>,
) -> Result<Written> {
    let mut nodes = Vec::new();
    let mut put = |b: Vec<u8>, nodes: &mut Vec<u64>| -> Result<Ptr> {
        let block = alloc()?;
        dev.write_at(&b, block * BLOCK as u64)?;
        nodes.push(block);
        Ok(Ptr { block, crc: crc32c(&b) })
    };
    let old: &[Leaf] = old_levels.first().map(|l| l.as_slice()).unwrap_or(&[]);
    let mut leaves: Vec<Leaf> = Vec::new();
    let mut pack = |range: &mut dyn Iterator<Item = (&Vec<u8>, &Vec<u8>)>,
                    leaves: &mut Vec<Leaf>,
                    nodes: &mut Vec<u64>|
     -> Result<()> {
        let mut page: Vec<(&[u8], &[u8])> = Vec::new();
        let mut used = 0;
        for (k, v) in range {
            let size = format::leaf_item_size(k, v);
            if used + size > NODE_ROOM && !page.is_empty() {
                let first = page[0].0.to_vec();
                leaves.push(Leaf { first, ptr: put(format::encode_leaf(&page), nodes)? });
                page.clear();
                used = 0;
            }
            page.push((k, v));
            used += size;
        }
        if !page.is_empty() {
            let first = page[0].0.to_vec();
            leaves.push(Leaf { first, ptr: put(format::encode_leaf(&page), nodes)? });
        }
        Ok(())
    };
    let lower = |i: usize| if i == 0 { Bound::Unbounded } else { Bound::Included(old[i].first.as_slice()) };
    let upper = |i: usize| match old.get(i + 1) {
        Some(next) => Bound::Excluded(next.first.as_slice()),
        None => Bound::Unbounded,
    };
    let is_dirty = |i: usize| dirty.range::<[u8], _>((lower(i), upper(i))).next().is_some();
    if old.is_empty() {
        pack(&mut items.iter(), &mut leaves, &mut nodes)?;
    }
    let mut i = 0;
    while i < old.len() {
        if !is_dirty(i) {
            leaves.push(old[i].clone());
            nodes.push(old[i].ptr.block);
            i += 1;
            continue;
        }
        let mut j = i + 1;
        while j < old.len() && is_dirty(j) {
            j += 1;
        }
        pack(&mut items.range::<[u8], _>((lower(i), upper(j - 1))), &mut leaves, &mut nodes)?;
        i = j;
    }
    if leaves.is_empty() {
        leaves.push(Leaf { first: Vec::new(), ptr: put(format::encode_leaf(&[]), &mut nodes)? });
    }
    let mut levels: Levels = vec![leaves];
    let mut height = 1u8;
    while levels[height as usize - 1].len() > 1 {
        let below = &levels[height as usize - 1];
        let old: &[Leaf] = old_levels.get(height as usize).map(|l| l.as_slice()).unwrap_or(&[]);
        let mut next: Vec<Leaf> = Vec::new();
        let mut pack = |entries: &[Leaf], next: &mut Vec<Leaf>, nodes: &mut Vec<u64>| -> Result<()> {
            let mut page: Vec<(Vec<u8>, Ptr)> = Vec::new();
            let mut used = 0;
            for e in entries {
                let size = format::internal_item_size(&e.first);
                if used + size > NODE_ROOM && !page.is_empty() {
                    let first = page[0].0.clone();
                    next.push(Leaf { first, ptr: put(format::encode_internal(height, &page), nodes)? });
                    page.clear();
                    used = 0;
                }
                page.push((e.first.clone(), e.ptr));
                used += size;
            }
            if !page.is_empty() {
                let first = page[0].0.clone();
                next.push(Leaf { first, ptr: put(format::encode_internal(height, &page), nodes)? });
            }
            Ok(())
        };
        let lower = |i: usize| if i == 0 { Bound::Unbounded } else { Bound::Included(old[i].first.as_slice()) };
        let upper = |i: usize| match old.get(i + 1) {
            Some(next) => Bound::Excluded(next.first.as_slice()),
            None => Bound::Unbounded,
        };
        let is_dirty = |i: usize| dirty.range::<[u8], _>((lower(i), upper(i))).next().is_some();
        // The entries of `below` whose first key is in old node range [i, j).
        let in_range = |i: usize, j: usize| -> &[Leaf] {
            let start = if i == 0 { 0 } else { below.partition_point(|e| e.first < old[i].first) };
            let end = match old.get(j) {
                Some(n) => below.partition_point(|e| e.first < n.first),
                None => below.len(),
            };
            &below[start..end.max(start)]
        };
        if old.is_empty() {
            pack(below, &mut next, &mut nodes)?;
        }
        let mut i = 0;
        while i < old.len() {
            if !is_dirty(i) {
                next.push(old[i].clone());
                nodes.push(old[i].ptr.block);
                i += 1;
                continue;
            }
            let mut j = i + 1;
            while j < old.len() && is_dirty(j) {
                j += 1;
            }
            pack(in_range(i, j), &mut next, &mut nodes)?;
            i = j;
        }
        levels.push(next);
        height += 1;
        if height > MAX_HEIGHT {
            return Err(Error::Corrupt("the tree grew beyond its height limit".into()));
        }
    }
    let root = levels[height as usize - 1][0].ptr;
    Ok(Written { root, height, nodes, levels })
}
