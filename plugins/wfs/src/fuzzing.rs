//! Entry points for fuzzing: everything that reads untrusted bytes, each fed arbitrary
//! input. `plugins/wfs/fuzz` (cargo-fuzz) calls them, and `tests/mutated_images.rs` runs
//! them over seeded mutations of real images on stable Rust. None may panic, hang or
//! allocate without bound on any input; errors are fine.
//!
//! Every block of a WFS image is covered by a CRC-32C, so almost every random change is
//! refused at the first checksum and the code behind it would never see fuzzed bytes.
//! [`fix_checksums`] recomputes them over a mutated image (superblocks, internal nodes,
//! the snapshot table, the space maps' index nodes), so the fuzzers also reach what a checksum cannot catch: a
//! corrupt image written with correct checksums (a bug, or a hostile image).

use std::collections::HashMap;
use std::sync::Arc;

use crate::engine::crc::crc32c;
use crate::engine::format::{
    self, BLOCK, MAGIC, MAX_HEIGHT, Node, Ptr, ROOT_INO, SLOTS, Superblock, decode_node, decode_snapshots,
    encode_internal, encode_snapshots, kind,
};
use crate::engine::{MemDevice, OpenOptions, Volume, fsck};

/// Limits of [`image`]'s walk, so one input stays fast.
const MAX_NODES: usize = 2_000;
const MAX_DEPTH: usize = 16;
const READ_BYTES: usize = 64 * 1024;

/// Decodes `data` as a superblock body: the magic and a correct checksum are put around
/// it, so the field checks behind them are what gets fuzzed.
pub fn superblock(data: &[u8]) {
    let mut block = vec![0u8; BLOCK];
    block[..8].copy_from_slice(MAGIC);
    let n = data.len().min(BLOCK - 12);
    block[8..8 + n].copy_from_slice(&data[..n]);
    let crc = crc32c(&block[..BLOCK - 4]);
    block[BLOCK - 4..].copy_from_slice(&crc.to_le_bytes());
    if let Ok(Some(sb)) = Superblock::decode(&block) {
        // What decodes must encode back to the same superblock.
        assert_eq!(Superblock::decode(&sb.encode()).ok().flatten().as_ref(), Some(&sb), "superblock round trip");
    }
}

/// Decodes `data` as a tree node, then every leaf item by the kind its key names.
pub fn node(data: &[u8]) {
    let Ok(node) = decode_node(data) else { return };
    let Node::Leaf(items) = node else { return };
    for (key, value) in &items {
        let Some((_ino, item_kind, _tail)) = format::split_key(key) else { continue };
        match item_kind {
            kind::INODE => {
                let _ = format::Inode::decode(value);
            }
            kind::DIRENT | kind::DIRINDEX => {
                let _ = format::Dirent::decode(value);
            }
            kind::DATA => {
                if let Ok(e) = format::decode_data(value) {
                    // What decodes must encode back to the same bytes.
                    assert_eq!(format::encode_data(&e), *value, "data item round trip");
                }
            }
            _ => {}
        }
    }
}

/// Decodes `data` as a snapshot table.
pub fn snapshots(data: &[u8]) {
    if let Ok(snaps) = decode_snapshots(data) {
        for s in &snaps {
            assert!(s.name.len() <= format::MAX_SNAPSHOT_NAME, "snapshot name too long accepted");
        }
    }
}

/// Recomputes every checksum of `image` that a reader checks, bottom-up from each
/// superblock slot that has the magic: leaves and data keep their bytes, internal nodes and
/// the snapshot table are re-encoded with their children's checksums, and each superblock
/// gets its own. Blocks a superblock does not lead to are left alone.
pub fn fix_checksums(image: &mut [u8]) {
    let total = (image.len() / BLOCK) as u64;
    for slot in 0..SLOTS.min(total) {
        let at = slot as usize * BLOCK;
        if &image[at..at + 8] != MAGIC {
            continue;
        }
        let crc = crc32c(&image[at..at + BLOCK - 4]);
        image[at + BLOCK - 4..at + BLOCK].copy_from_slice(&crc.to_le_bytes());
        let Ok(Some(mut sb)) = Superblock::decode(&image[at..at + BLOCK]) else { continue };
        let blocks = sb.total_blocks.min(total);
        let mut done = HashMap::new();
        if let Some(crc) = fix_node(image, blocks, sb.root.block, 0, &mut done) {
            sb.root.crc = crc;
        }
        if sb.snapshots.block >= SLOTS && sb.snapshots.block < blocks {
            let table = block_mut(image, sb.snapshots.block);
            if let Ok(mut snaps) = decode_snapshots(table) {
                for s in &mut snaps {
                    if let Some(crc) = fix_node(image, blocks, s.root.block, 0, &mut done) {
                        s.root.crc = crc;
                    }
                }
                let encoded = encode_snapshots(&snaps);
                let table = block_mut(image, sb.snapshots.block);
                let n = encoded.len().min(BLOCK);
                table[..n].copy_from_slice(&encoded[..n]);
            }
            sb.snapshots.crc = crc32c(block_mut(image, sb.snapshots.block));
        }
        for map in [&mut sb.space_map, &mut sb.pinned_map] {
            if let Some(crc) = fix_map_node(image, blocks, map.block, 0) {
                map.crc = crc;
            }
        }
        image[at..at + BLOCK].copy_from_slice(&sb.encode());
    }
}

/// Fixes the space map subtree at `block` (index nodes re-encoded with their children's
/// checksums; bitmap blocks keep their bytes) and answers its checksum.
fn fix_map_node(image: &mut [u8], blocks: u64, block: u64, depth: u8) -> Option<u32> {
    if block < SLOTS || block >= blocks || depth > MAX_HEIGHT {
        return None;
    }
    if let Ok((level, mut children)) = format::decode_map_node(block_mut(image, block))
        && level >= 1
    {
        for child in &mut children {
            let crc = if level == 1 {
                (child.block >= SLOTS && child.block < blocks).then(|| crc32c(block_mut(image, child.block)))
            } else {
                fix_map_node(image, blocks, child.block, depth + 1)
            };
            if let Some(crc) = crc {
                child.crc = crc;
            }
        }
        block_mut(image, block).copy_from_slice(&format::encode_map_node(level, &children));
    }
    Some(crc32c(block_mut(image, block)))
}

fn block_mut(image: &mut [u8], block: u64) -> &mut [u8] {
    let at = block as usize * BLOCK;
    &mut image[at..at + BLOCK]
}

/// Fixes the subtree at `block` and answers its checksum. `done` memoises blocks already
/// fixed, so shared subtrees (snapshots) and cycles cost one visit.
fn fix_node(image: &mut [u8], blocks: u64, block: u64, depth: u8, done: &mut HashMap<u64, u32>) -> Option<u32> {
    if block < SLOTS || block >= blocks || depth > MAX_HEIGHT {
        return None;
    }
    if let Some(crc) = done.get(&block) {
        return Some(*crc);
    }
    // A cycle back to this block sees its current checksum.
    done.insert(block, crc32c(block_mut(image, block)));
    if let Ok(Node::Internal(level, mut children)) = decode_node(block_mut(image, block)) {
        for (_, child) in &mut children {
            if let Some(crc) = fix_node(image, blocks, child.block, depth + 1, done) {
                *child = Ptr { block: child.block, crc };
            }
        }
        let encoded = encode_internal(level, &children);
        if encoded.len() == BLOCK {
            block_mut(image, block).copy_from_slice(&encoded);
        }
    }
    let crc = crc32c(block_mut(image, block));
    done.insert(block, crc);
    Some(crc)
}

/// Checks `data` as a whole image with fsck (data checksums too), then opens it read-only
/// and walks it: lists every directory, looks up every name, stats every node, reads the
/// start of every file and link and every xattr. Returns how many nodes it visited (0 when
/// the image is refused).
pub fn image(data: &[u8]) -> usize {
    let dev = Arc::new(MemDevice::from_bytes(data.to_vec()));
    let _ = fsck(&*dev, true);
    let Ok(vol) = Volume::open(dev, OpenOptions { read_only: true, ..OpenOptions::default() }) else { return 0 };
    let _ = vol.space();
    let mut visited = 0;
    let mut stack = vec![(ROOT_INO, 0usize)];
    let mut buf = vec![0u8; READ_BYTES];
    while let Some((dir, depth)) = stack.pop() {
        let mut entries = Vec::new();
        let _ = vol.list(dir, 0, |e| {
            entries.push(e);
            entries.len() < MAX_NODES
        });
        for e in entries {
            visited += 1;
            if visited >= MAX_NODES {
                return visited;
            }
            let _ = vol.lookup(dir, &e.name);
            let Ok(stat) = vol.stat(e.ino) else { continue };
            if let Ok(names) = vol.list_xattr(e.ino) {
                for name in names.iter().take(64) {
                    let _ = vol.get_xattr(e.ino, name);
                }
            }
            if stat.inode.is_dir() {
                if depth < MAX_DEPTH && e.ino != dir {
                    stack.push((e.ino, depth + 1));
                }
            } else if stat.inode.mode & format::S_IFMT == format::S_IFLNK {
                let _ = vol.readlink(e.ino);
            } else {
                let _ = vol.read(e.ino, 0, &mut buf);
                let _ = vol.seek(e.ino, 0, false);
            }
        }
    }
    visited
}
