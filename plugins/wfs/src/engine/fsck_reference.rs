//! fsck and scrub as they were before they streamed each tree, kept verbatim as a test
//! oracle: they load each tree whole, so every check is plainly the relation it states.
//! `tests/fsck_equivalence.rs` runs old and new over thousands of images and compares what
//! they find.

use std::collections::{BTreeMap, HashMap};

use super::device::Device;
use super::error::{Error, Result};
use super::format::{self, BLOCK, Dirent, Inode, MAX_HEIGHT, Node, Ptr, ROOT_INO, S_IFDIR, SLOTS, kind};
use super::fsck::Report;
use super::spacemap::MapOnDisk;
use super::tree;
use super::volume::{self, BlockSet};

type Items = BTreeMap<Vec<u8>, Vec<u8>>;

/// Checks the structure and links of the newest commit and of every snapshot; with
/// `verify_data`, also reads every data block against its checksum.
pub fn fsck(dev: &dyn Device, verify_data: bool) -> Report {
    let mut r = Report::default();
    let sb = match volume::newest_superblock(dev) {
        Ok((sb, passed)) => {
            for p in passed {
                r.problems.push(format!("superblock of generation {} does not lead to a valid tree", p.generation));
            }
            sb
        }
        Err(e) => {
            r.problems.push(format!("no usable superblock: {e}"));
            return r;
        }
    };
    r.generation = sb.generation;
    let total = sb.total_blocks;
    let mut refs = BlockSet::new(total);
    let mut trees = vec![("live tree".to_string(), sb.root, sb.height)];
    match volume::read_snapshots(dev, &sb) {
        Ok(snaps) => {
            if sb.snapshots.block != 0 {
                refs.insert(sb.snapshots.block);
            }
            trees.extend(snaps.into_iter().map(|s| (format!("snapshot {:?}", s.name), s.root, s.height)));
        }
        Err(e) => r.problems.push(format!("snapshot table: {e}")),
    }
    let mut shared = BlockSet::new(total);
    // What snapshots reference, and the live tree's node count (for the space maps).
    let mut snap_refs = BlockSet::new(total);
    let mut live_nodes = 0;
    let mut live_bytes = 0;
    let mut largest = 0;
    for (i, (what, root, height)) in trees.into_iter().enumerate() {
        let (items, nodes) = match load(dev, root, height, total) {
            Ok(t) => t,
            Err(e) => {
                r.problems.push(format!("{what}: {e}"));
                continue;
            }
        };
        // Within one tree every block is referenced once; trees may share blocks.
        let mut mine = BlockSet::new(total);
        let mut claim = |b: u64, owner: &dyn Fn() -> String, r: &mut Report| {
            if b < SLOTS || b >= total {
                r.problems.push(format!("{what}: {} points outside the image (block {b})", owner()));
            } else if !mine.insert(b) {
                r.problems.push(format!("{what}: block {b} is referenced twice ({})", owner()));
            } else {
                if i > 0 {
                    snap_refs.insert(b);
                }
                if !refs.insert(b) && !shared.contains(b) {
                    shared.insert(b);
                }
            }
        };
        for b in &nodes {
            claim(*b, &|| "a tree node".into(), &mut r);
        }
        for d in data_blocks(&items) {
            match d {
                Ok((ino, idx, p)) => {
                    claim(p.block, &|| format!("inode {ino} block {idx}"), &mut r);
                    if verify_data {
                        match tree::read_verified(dev, p, total) {
                            Ok(_) => r.verified_blocks += 1,
                            Err(e) => r.problems.push(format!("{what}: inode {ino} data block {idx}: {e}")),
                        }
                    }
                }
                Err(e) => r.problems.push(format!("{what}: {e}")),
            }
        }
        r.verified_blocks += nodes.len() as u64;
        check_links(&what, &items, sb.next_ino, &mut r);
        if i == 0 {
            r.inodes = items.keys().filter(|k| k.get(8) == Some(&kind::INODE) && k.len() == 9).count() as u64;
            live_nodes = nodes.len() as u64;
            let sizes = items.iter().map(|(k, v)| format::leaf_item_size(k, v) as u64);
            (live_bytes, largest) = sizes.fold((0, 0), |(sum, max), s| (sum + s, max.max(s)));
        }
    }
    r.used_blocks = refs.len() + SLOTS;
    if sb.ro_compat & format::RO_COMPAT_FREE_SPACE_TREE != 0 {
        check_space_maps(dev, &sb, &refs, &snap_refs, &mut r);
        if sb.inodes != r.inodes {
            r.problems.push(format!("the superblock counts {} inodes but the live tree has {}", sb.inodes, r.inodes));
        }
        if largest > sb.max_item {
            r.problems.push(format!(
                "the live tree holds an item of {largest} bytes, over the superblock's maximum {}",
                sb.max_item
            ));
        }
        if sb.tree_bytes != live_bytes {
            r.problems.push(format!(
                "the superblock counts {} bytes of items but the live tree has {live_bytes}",
                sb.tree_bytes
            ));
        }
        if sb.tree_nodes != live_nodes {
            r.problems
                .push(format!("the superblock counts {} tree nodes but the live tree has {live_nodes}", sb.tree_nodes));
        }
    }
    r
}

/// Checks the space map against what the trees reference (`refs`) and the pinned map
/// against what snapshots reference: a block in use but marked free would be handed out
/// again, a block marked in use that nothing references is leaked space.
fn check_space_maps(dev: &dyn Device, sb: &format::Superblock, refs: &BlockSet, snap_refs: &BlockSet, r: &mut Report) {
    let total = sb.total_blocks;
    let mut map = BlockSet::new(total);
    let space = match MapOnDisk::read(dev, sb.space_map, total, &mut map) {
        Ok(m) => m,
        Err(e) => {
            r.problems.push(format!("space map: {e}"));
            return;
        }
    };
    let mut pinned = BlockSet::new(total);
    let pinned_map = if sb.pinned_map.block == 0 {
        MapOnDisk::default()
    } else {
        match MapOnDisk::read(dev, sb.pinned_map, total, &mut pinned) {
            Ok(m) => m,
            Err(e) => {
                r.problems.push(format!("pinned map: {e}"));
                return;
            }
        }
    };
    let mut map_blocks = BlockSet::new(total);
    for b in space.blocks().chain(pinned_map.blocks()) {
        if b < SLOTS || b >= total || refs.contains(b) || !map_blocks.insert(b) {
            r.problems.push(format!("space map block {b} is outside the image or used twice"));
        }
    }
    r.used_blocks += map_blocks.len();
    let mut report = |what: String| {
        // One line per block would bury the first one in a badly damaged image.
        if r.problems.len() < 1000 {
            r.problems.push(what);
        }
    };
    for b in (0..SLOTS).chain(refs.iter()) {
        if !map.contains(b) {
            report(format!("block {b} is in use but the space map marks it free"));
        }
    }
    for b in map.iter() {
        if b >= SLOTS && !refs.contains(b) {
            report(format!("block {b} is marked in use but nothing references it (leaked)"));
        }
    }
    for b in snap_refs.iter() {
        if !pinned.contains(b) {
            report(format!("block {b} belongs to a snapshot but the pinned map does not say so"));
        }
    }
    for b in pinned.iter() {
        if !snap_refs.contains(b) {
            report(format!("block {b} is marked pinned but no snapshot references it"));
        }
    }
}

fn check_links(what: &str, items: &Items, next_ino: u64, r: &mut Report) {
    let mut inodes: BTreeMap<u64, Inode> = BTreeMap::new();
    let mut links: HashMap<u64, u32> = HashMap::new();
    let mut subdirs: HashMap<u64, u32> = HashMap::new();
    let mut parent_of: HashMap<u64, u64> = HashMap::new();
    let mut data_count: HashMap<u64, u64> = HashMap::new();
    let mut data_end: HashMap<u64, u64> = HashMap::new();
    let mut orphans = Vec::new();
    let mut p = |s: String| r.problems.push(format!("{what}: {s}"));
    for (k, v) in items {
        let Some((ino, kd, tail)) = format::split_key(k) else {
            p("an item with a short key".into());
            continue;
        };
        if kd == kind::INODE {
            match Inode::decode(v) {
                Ok(i) => {
                    if ino >= next_ino || ino == 0 {
                        p(format!("inode {ino} is beyond the next inode number {next_ino}"));
                    }
                    inodes.insert(ino, i);
                }
                Err(e) => p(format!("inode {ino}: {e}")),
            }
        }
        if kd == kind::ORPHAN {
            match format::tail_n(tail) {
                Some(o) => orphans.push(o),
                None => p("a bad orphan key".into()),
            }
        }
    }
    for (k, v) in items {
        let Some((ino, kd, tail)) = format::split_key(k) else { continue };
        let owner = inodes.get(&ino);
        match kd {
            kind::INODE | kind::ORPHAN => {}
            kind::DIRENT => {
                let Some(dir) = owner.filter(|i| i.is_dir()) else {
                    p(format!("entry {:?} in {ino}, which is not a directory", String::from_utf8_lossy(tail)));
                    continue;
                };
                match Dirent::decode(v) {
                    Ok(d) => {
                        let name = String::from_utf8_lossy(tail);
                        match inodes.get(&d.ino) {
                            None => p(format!("entry {name:?} in directory {ino} names missing inode {}", d.ino)),
                            Some(t) if (t.mode >> 12) as u8 != d.kind => {
                                p(format!("entry {name:?} in directory {ino}: type differs from inode {}", d.ino))
                            }
                            Some(t) => {
                                *links.entry(d.ino).or_default() += 1;
                                if t.is_dir() {
                                    *subdirs.entry(ino).or_default() += 1;
                                    if parent_of.insert(d.ino, ino).is_some() {
                                        p(format!("directory {} has more than one name", d.ino));
                                    }
                                }
                            }
                        }
                        if items.get(&format::key_n(ino, kind::DIRINDEX, d.index)).map(|n| n.as_slice()) != Some(tail) {
                            p(format!("entry {name:?} in directory {ino} has no matching index"));
                        }
                        if d.index >= dir.next_index {
                            p(format!("entry {name:?} in directory {ino} has an index beyond the next one"));
                        }
                    }
                    Err(e) => p(format!("directory {ino}: {e}")),
                }
            }
            kind::DIRINDEX => {
                let ok = items
                    .get(&format::key(ino, kind::DIRENT, v))
                    .and_then(|d| Dirent::decode(d).ok())
                    .is_some_and(|d| Some(d.index) == format::tail_n(tail));
                if !ok {
                    p(format!("directory {ino}: an index entry without its name entry"));
                }
            }
            kind::XATTR | kind::DATA => {
                if owner.is_none() {
                    p(format!("an item of kind {kd} for missing inode {ino}"));
                }
                if kd == kind::DATA {
                    // Extents of one file in key order may not overlap.
                    match (format::tail_n(tail), format::decode_data(v)) {
                        (Some(start), Ok(e)) => {
                            if data_end.get(&ino).is_some_and(|&end| start < end) {
                                p(format!("inode {ino}: extents overlap at file block {start}"));
                            }
                            data_end.insert(ino, start.saturating_add(e.len()));
                            *data_count.entry(ino).or_default() += e.len();
                        }
                        _ => p(format!("inode {ino}: a bad data item")),
                    }
                }
            }
            other => p(format!("inode {ino}: unknown item kind {other}")),
        }
    }
    for (&ino, i) in &inodes {
        let names = links.get(&ino).copied().unwrap_or(0);
        let orphan = orphans.contains(&ino);
        if i.is_dir() {
            let expect = if i.nlink == 0 { 0 } else { 2 + subdirs.get(&ino).copied().unwrap_or(0) };
            if i.nlink != expect {
                p(format!("directory {ino} has link count {} but {expect} links", i.nlink));
            }
            if ino != ROOT_INO && i.nlink > 0 && parent_of.get(&ino) != Some(&i.parent) {
                p(format!("directory {ino} records parent {} but is not named there", i.parent));
            }
            if ino != ROOT_INO && names == 0 && !orphan {
                p(format!("directory {ino} has no name"));
            }
        } else {
            if i.nlink != names {
                p(format!("inode {ino} has link count {} but {names} names", i.nlink));
            }
            if names == 0 && !orphan {
                p(format!("inode {ino} has no name and is not an orphan"));
            }
        }
        if data_count.get(&ino).copied().unwrap_or(0) != i.blocks {
            p(format!("inode {ino} counts {} blocks but has {}", i.blocks, data_count.get(&ino).unwrap_or(&0)));
        }
    }
    match inodes.get(&ROOT_INO) {
        Some(root) if root.mode & format::S_IFMT == S_IFDIR => {}
        _ => p("the root directory is missing".into()),
    }
    for o in orphans {
        if inodes.get(&o).is_none_or(|i| i.nlink != 0) {
            p(format!("orphan {o} is not an unlinked inode"));
        }
    }
}

/// Reads every block in use (tree nodes, snapshot table, data) and checks its checksum;
/// `progress(done, total)` is called as it goes. Returns the damage found.
pub fn scrub(dev: &dyn Device, progress: &mut dyn FnMut(u64, u64)) -> Report {
    let mut r = fsck(dev, false);
    if r.generation == 0 {
        return r;
    }
    let Ok((sb, _)) = volume::newest_superblock(dev) else { return r };
    let mut all: Vec<(String, format::Ptr)> = Vec::new();
    let mut roots = vec![("live tree".to_string(), sb.root, sb.height)];
    if let Ok(snaps) = volume::read_snapshots(dev, &sb) {
        roots.extend(snaps.into_iter().map(|s| (format!("snapshot {:?}", s.name), s.root, s.height)));
    }
    for (what, root, height) in roots {
        if let Ok((items, _)) = load(dev, root, height, sb.total_blocks) {
            for (ino, idx, p) in data_blocks(&items).flatten() {
                all.push((format!("{what}: inode {ino} data block {idx} (offset {})", idx * BLOCK as u64), p));
            }
        }
    }
    let total = all.len() as u64;
    r.verified_blocks = 0;
    for (n, (what, p)) in all.into_iter().enumerate() {
        match tree::read_verified(dev, p, sb.total_blocks) {
            Ok(_) => r.verified_blocks += 1,
            Err(e) => r.problems.push(format!("{what}: {e}")),
        }
        progress(n as u64 + 1, total);
    }
    r
}

/// Reads a whole tree: its items, and the blocks of its nodes.
pub(super) fn load(dev: &dyn Device, root: Ptr, height: u8, total_blocks: u64) -> Result<(Items, Vec<u64>)> {
    let mut items = Items::new();
    let mut nodes = Vec::new();
    if height == 0 || height > MAX_HEIGHT {
        return Err(Error::Corrupt(format!("tree height {height}")));
    }
    walk(dev, root, height - 1, total_blocks, &mut items, &mut nodes)?;
    Ok((items, nodes))
}

fn walk(dev: &dyn Device, ptr: Ptr, level: u8, total: u64, items: &mut Items, nodes: &mut Vec<u64>) -> Result<()> {
    let b = tree::read_verified(dev, ptr, total)?;
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

/// The data blocks of a tree: (inode, file block, pointer).
pub(super) fn data_blocks(items: &Items) -> impl Iterator<Item = Result<(u64, u64, Ptr)>> + '_ {
    items.iter().flat_map(|(k, v)| {
        let Some((ino, kind::DATA, tail)) = format::split_key(k) else { return Vec::new() };
        let Some(start) = format::tail_n(tail) else {
            return vec![Err(Error::Corrupt(format!("inode {ino}: bad data key")))];
        };
        match format::decode_data(v) {
            Ok(e) => (0..e.len()).map(|i| Ok((ino, start.saturating_add(i), e.ptr(i)))).collect(),
            Err(e) => vec![Err(e)],
        }
    })
}
