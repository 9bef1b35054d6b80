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

/// [`load`], with the tree's leaves in key order.
pub fn load_with_leaves(
    dev: &dyn Device,
    root: Ptr,
    height: u8,
    total_blocks: u64,
) -> Result<(Items, Vec<u64>, Vec<Leaf>)> {
    let mut items = Items::new();
    let mut nodes = Vec::new();
    let mut leaves = Vec::new();
    if height == 0 || height > MAX_HEIGHT {
        return Err(Error::Corrupt(format!("tree height {height}")));
    }
    walk(dev, root, height - 1, total_blocks, &mut items, &mut nodes, &mut leaves)?;
    Ok((items, nodes, leaves))
}

fn walk(
    dev: &dyn Device,
    ptr: Ptr,
    level: u8,
    total: u64,
    items: &mut Items,
    nodes: &mut Vec<u64>,
    leaves: &mut Vec<Leaf>,
) -> Result<()> {
    let b = read_verified(dev, ptr, total)?;
    nodes.push(ptr.block);
    match format::decode_node(&b)? {
        Node::Leaf(list) => {
            if level != 0 {
                return Err(Error::Corrupt(format!("block {}: a leaf where level {level} belongs", ptr.block)));
            }
            leaves.push(Leaf { first: list.first().map(|(k, _)| k.clone()).unwrap_or_default(), ptr });
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
            for (_, child) in children {
                walk(dev, child, level - 1, total, items, nodes, leaves)?;
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
    /// Its leaves.
    pub leaves: Vec<Leaf>,
}

/// Writes `items` as a new tree, reusing each leaf of the previous tree (`old`) whose key
/// range holds none of the `dirty` keys (keys set or removed since): copy-on-write that
/// rewrites only the changed leaves and the internal nodes above them.
pub fn write_incremental(
    dev: &dyn Device,
    items: &Items,
    old: &[Leaf],
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
    let mut level: Vec<(Vec<u8>, Ptr)> = leaves.iter().map(|l| (l.first.clone(), l.ptr)).collect();
    let mut height = 1u8;
    while level.len() > 1 {
        let mut next = Vec::new();
        let mut page: Vec<(Vec<u8>, Ptr)> = Vec::new();
        let mut used = 0;
        for (k, p) in level {
            let size = format::internal_item_size(&k);
            if used + size > NODE_ROOM && !page.is_empty() {
                let first = page[0].0.clone();
                next.push((first, put(format::encode_internal(height, &page), &mut nodes)?));
                page.clear();
                used = 0;
            }
            page.push((k, p));
            used += size;
        }
        let first = page[0].0.clone();
        next.push((first, put(format::encode_internal(height, &page), &mut nodes)?));
        level = next;
        height += 1;
    }
    Ok(Written { root: level[0].1, height, nodes, leaves })
}
