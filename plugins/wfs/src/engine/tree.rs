//! The metadata B+tree: written bottom-up into fresh blocks at commit (copy-on-write: no
//! block of a durable tree is ever overwritten), read back with every node verified.

use std::collections::BTreeMap;

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

/// Reads a whole tree: its items, and the blocks of its nodes.
pub fn load(dev: &dyn Device, root: Ptr, height: u8, total_blocks: u64) -> Result<(Items, Vec<u64>)> {
    let mut items = Items::new();
    let mut nodes = Vec::new();
    if height == 0 || height > MAX_HEIGHT {
        return Err(Error::Corrupt(format!("tree height {height}")));
    }
    walk(dev, root, height - 1, total_blocks, &mut items, &mut nodes)?;
    Ok((items, nodes))
}

fn walk(dev: &dyn Device, ptr: Ptr, level: u8, total: u64, items: &mut Items, nodes: &mut Vec<u64>) -> Result<()> {
    let b = read_verified(dev, ptr, total)?;
    nodes.push(ptr.block);
    match format::decode_node(&b)? {
        Node::Leaf(list) => {
            if level != 0 {
                return Err(Error::Corrupt(format!("block {}: a leaf where level {level} belongs", ptr.block)));
            }
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
                walk(dev, child, level - 1, total, items, nodes)?;
            }
        }
    }
    Ok(())
}

/// Writes `items` as a new tree into blocks from `alloc`; returns the root, the height and
/// the blocks written.
pub fn write(dev: &dyn Device, items: &Items, alloc: &mut dyn FnMut() -> Result<u64>) -> Result<(Ptr, u8, Vec<u64>)> {
    let mut written = Vec::new();
    let mut put = |b: Vec<u8>, written: &mut Vec<u64>| -> Result<Ptr> {
        let block = alloc()?;
        dev.write_at(&b, block * BLOCK as u64)?;
        written.push(block);
        Ok(Ptr { block, crc: crc32c(&b) })
    };
    // Leaves, packed full.
    let mut level: Vec<(Vec<u8>, Ptr)> = Vec::new();
    let mut page: Vec<(&[u8], &[u8])> = Vec::new();
    let mut used = 0;
    for (k, v) in items {
        let size = format::leaf_item_size(k, v);
        if used + size > NODE_ROOM && !page.is_empty() {
            let first = page[0].0.to_vec();
            level.push((first, put(format::encode_leaf(&page), &mut written)?));
            page.clear();
            used = 0;
        }
        page.push((k, v));
        used += size;
    }
    if !page.is_empty() || level.is_empty() {
        let first = page.first().map(|p| p.0.to_vec()).unwrap_or_default();
        level.push((first, put(format::encode_leaf(&page), &mut written)?));
    }
    let mut height = 1u8;
    while level.len() > 1 {
        let mut next = Vec::new();
        let mut page: Vec<(Vec<u8>, Ptr)> = Vec::new();
        let mut used = 0;
        for (k, p) in level {
            let size = format::internal_item_size(&k);
            if used + size > NODE_ROOM && !page.is_empty() {
                let first = page[0].0.clone();
                next.push((first, put(format::encode_internal(height, &page), &mut written)?));
                page.clear();
                used = 0;
            }
            page.push((k, p));
            used += size;
        }
        let first = page[0].0.clone();
        next.push((first, put(format::encode_internal(height, &page), &mut written)?));
        level = next;
        height += 1;
    }
    Ok((level[0].1, height, written))
}
