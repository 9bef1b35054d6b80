//! Checking an image: `fsck` verifies every structure and every link, `scrub` reads and
//! verifies every block in use. Both name what is damaged and never change the image.

mod links;

use self::links::{Links, Summaries, Summary};
use super::device::Device;
use super::error::{Error, Result};
use super::format::{self, BLOCK, Inode, Node, Ptr, SLOTS, kind};
use super::spacemap::MapOnDisk;
use super::tree;
use super::volume::{self, BlockSet};

/// What a check found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Damage, one line each; empty when the image is clean.
    pub problems: Vec<String>,
    /// The generation checked.
    pub generation: u64,
    /// Inodes seen.
    pub inodes: u64,
    /// Blocks in use.
    pub used_blocks: u64,
    /// Blocks verified.
    pub verified_blocks: u64,
}

impl Report {
    /// Whether nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks the structure and links of the newest commit and of every snapshot; with
/// `verify_data`, also reads every data block against its checksum.
///
/// Each tree is walked twice, one node per level in memory: first for its nodes and inodes
/// (so a data pointer into a node is named as the pointer's fault, and entries can be
/// checked against inodes later in key order), then for its items in key order. Memory is
/// a small summary per inode, one directory's entries and bitmaps of the image's blocks,
/// whatever the number of items.
pub fn fsck(dev: &dyn Device, verify_data: bool) -> Report {
    check(dev, verify_data).report
}

/// A tree of the image: what to call it, its root and height.
struct Tree {
    what: String,
    root: Ptr,
    height: u8,
}

/// What [`check`] found, and what scrub goes on with.
struct Checked {
    report: Report,
    /// The trees that could be walked, and the data blocks they reference.
    walked: Vec<Tree>,
    data_blocks: u64,
    total_blocks: u64,
}

fn check(dev: &dyn Device, verify_data: bool) -> Checked {
    let mut r = Report::default();
    let mut walked = Vec::new();
    let mut data_blocks = 0;
    let sb = match volume::newest_superblock(dev) {
        Ok((sb, passed)) => {
            for p in passed {
                r.problems.push(format!("superblock of generation {} does not lead to a valid tree", p.generation));
            }
            sb
        }
        Err(e) => {
            r.problems.push(format!("no usable superblock: {e}"));
            return Checked { report: r, walked, data_blocks, total_blocks: 0 };
        }
    };
    r.generation = sb.generation;
    let total = sb.total_blocks;
    let mut refs = BlockSet::new(total);
    let mut trees = vec![Tree { what: "live tree".into(), root: sb.root, height: sb.height }];
    match volume::read_snapshots(dev, &sb) {
        Ok(snaps) => {
            if sb.snapshots.block != 0 {
                refs.insert(sb.snapshots.block);
            }
            let snaps = snaps.into_iter().map(|s| Tree {
                what: format!("snapshot {:?}", s.name),
                root: s.root,
                height: s.height,
            });
            trees.extend(snaps);
        }
        Err(e) => r.problems.push(format!("snapshot table: {e}")),
    }
    // What snapshots reference, and the live tree's counts (for the superblock's).
    let mut snap_refs = BlockSet::new(total);
    let mut live = TreeCounts::default();
    for (i, tree) in trees.into_iter().enumerate() {
        let t = match check_tree(dev, &tree, &sb, verify_data) {
            Ok(t) => t,
            Err(e) => {
                r.problems.push(format!("{}: {e}", tree.what));
                continue;
            }
        };
        // Within one tree every block is referenced once; trees may share blocks.
        for b in t.blocks.iter() {
            refs.insert(b);
            if i > 0 {
                snap_refs.insert(b);
            }
        }
        r.problems.extend(t.problems);
        r.verified_blocks += t.verified_blocks;
        data_blocks += t.data_blocks;
        if i == 0 {
            r.inodes = t.counts.inodes;
            live = t.counts;
        }
        walked.push(tree);
    }
    r.used_blocks = refs.len() + SLOTS;
    if sb.ro_compat & format::RO_COMPAT_FREE_SPACE_TREE != 0 {
        check_space_maps(dev, &sb, &refs, &snap_refs, &mut r);
        check_counts(&sb, &live, &mut r);
    }
    Checked { report: r, walked, data_blocks, total_blocks: total }
}

/// Counts of a tree the superblock keeps for the live one.
#[derive(Clone, Copy, Debug, Default)]
struct TreeCounts {
    inodes: u64,
    nodes: u64,
    item_bytes: u64,
    largest_item: u64,
}

/// Compares the superblock's counts with the live tree's.
fn check_counts(sb: &format::Superblock, live: &TreeCounts, r: &mut Report) {
    if sb.inodes != live.inodes {
        r.problems.push(format!("the superblock counts {} inodes but the live tree has {}", sb.inodes, live.inodes));
    }
    if live.largest_item > sb.max_item {
        r.problems.push(format!(
            "the live tree holds an item of {} bytes, over the superblock's maximum {}",
            live.largest_item, sb.max_item
        ));
    }
    if sb.tree_bytes != live.item_bytes {
        r.problems.push(format!(
            "the superblock counts {} bytes of items but the live tree has {}",
            sb.tree_bytes, live.item_bytes
        ));
    }
    if sb.tree_nodes != live.nodes {
        r.problems
            .push(format!("the superblock counts {} tree nodes but the live tree has {}", sb.tree_nodes, live.nodes));
    }
}

/// What one tree holds, found by [`check_tree`].
struct TreeCheck<'a> {
    what: &'a str,
    total: u64,
    /// The blocks it references, each claimed once.
    blocks: BlockSet,
    problems: Vec<String>,
    counts: TreeCounts,
    verified_blocks: u64,
    data_blocks: u64,
}

impl TreeCheck<'_> {
    fn problem(&mut self, s: impl std::fmt::Display) {
        self.problems.push(format!("{}: {s}", self.what));
    }

    /// Takes block `b` for `owner`: a block outside the image, or one the tree already
    /// references, is damage.
    fn claim(&mut self, b: u64, owner: &dyn Fn() -> String) {
        if b < SLOTS || b >= self.total {
            self.problem(format_args!("{} points outside the image (block {b})", owner()));
        } else if !self.blocks.insert(b) {
            self.problem(format_args!("block {b} is referenced twice ({})", owner()));
        }
    }

    /// Claims (and with `dev`, verifies) the blocks of a data item.
    fn data_item(&mut self, ino: u64, tail: &[u8], v: &[u8], verify: Option<&dyn Device>) {
        let (start, extent) = match extent(ino, tail, v) {
            Ok(x) => x,
            Err(e) => return self.problem(e),
        };
        for i in 0..extent.len() {
            let (idx, p) = (start.saturating_add(i), extent.ptr(i));
            self.data_blocks += 1;
            self.claim(p.block, &|| format!("inode {ino} block {idx}"));
            if let Some(dev) = verify {
                match tree::read_verified(dev, p, self.total) {
                    Ok(_) => self.verified_blocks += 1,
                    Err(e) => self.problem(format_args!("inode {ino} data block {idx}: {e}")),
                }
            }
        }
    }
}

/// The first file block and the extent of a data item.
fn extent(ino: u64, tail: &[u8], v: &[u8]) -> Result<(u64, format::Extent)> {
    let start = format::tail_n(tail).ok_or_else(|| Error::Corrupt(format!("inode {ino}: bad data key")))?;
    Ok((start, format::decode_data(v)?))
}

/// Checks one tree: its nodes and data blocks claimed, its items checked. An error is a
/// tree that cannot be walked (a node that fails its checksum, level or key order); then
/// nothing else of it is reported, as nothing of it can be trusted.
fn check_tree<'a>(
    dev: &dyn Device,
    tree: &'a Tree,
    sb: &format::Superblock,
    verify_data: bool,
) -> Result<TreeCheck<'a>> {
    let total = sb.total_blocks;
    let mut t = TreeCheck {
        what: &tree.what,
        total,
        blocks: BlockSet::new(total),
        problems: Vec::new(),
        counts: TreeCounts::default(),
        verified_blocks: 0,
        data_blocks: 0,
    };
    let mut inodes = Summaries::new();
    tree::walk(dev, tree.root, tree.height, total, &mut |block, node| {
        t.claim(block, &|| "a tree node".into());
        t.counts.nodes += 1;
        if let Node::Leaf(items) = node {
            for (k, v) in items {
                if let Some((ino, kind::INODE, _)) = format::split_key(k)
                    && let Ok(i) = Inode::decode(v)
                {
                    inodes.insert(ino, Summary::of(&i));
                }
            }
        }
    })?;
    t.verified_blocks = t.counts.nodes;
    let mut links = Links::new(inodes, sb.next_ino);
    let verify = verify_data.then_some(dev);
    tree::walk(dev, tree.root, tree.height, total, &mut |_, node| {
        let Node::Leaf(items) = node else { return };
        for (k, v) in items {
            let size = format::leaf_item_size(k, v) as u64;
            t.counts.item_bytes += size;
            t.counts.largest_item = t.counts.largest_item.max(size);
            if k.len() == 9 && k[8] == kind::INODE {
                t.counts.inodes += 1;
            }
            if let Some((ino, kind::DATA, tail)) = format::split_key(k) {
                t.data_item(ino, tail, v, verify);
            }
            links.item(k, v);
        }
        #[cfg(test)]
        peak::note(items.len() + links.held());
    })?;
    let what = t.what;
    t.problems.extend(links.finish().into_iter().map(|p| format!("{what}: {p}")));
    Ok(t)
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

/// Reads every block in use (tree nodes, snapshot table, data) and checks its checksum;
/// `progress(done, total)` is called as it goes. Returns the damage found.
pub fn scrub(dev: &dyn Device, progress: &mut dyn FnMut(u64, u64)) -> Report {
    let Checked { report: mut r, walked, data_blocks: total, total_blocks } = check(dev, false);
    if r.generation == 0 {
        return r;
    }
    r.verified_blocks = 0;
    let mut done = 0;
    for tree in walked {
        let mut read_data = |_, node: &Node| {
            let Node::Leaf(items) = node else { return };
            for (k, v) in items {
                let Some((ino, kind::DATA, tail)) = format::split_key(k) else { continue };
                let Ok((start, e)) = extent(ino, tail, v) else { continue };
                for i in 0..e.len() {
                    let idx = start.saturating_add(i);
                    match tree::read_verified(dev, e.ptr(i), total_blocks) {
                        Ok(_) => r.verified_blocks += 1,
                        Err(err) => r.problems.push(format!(
                            "{}: inode {ino} data block {idx} (offset {}): {err}",
                            tree.what,
                            idx.saturating_mul(BLOCK as u64)
                        )),
                    }
                    done += 1;
                    progress(done, total);
                }
            }
        };
        // The trees were walked a moment ago; one that fails now has no data left to read.
        let _ = tree::walk(dev, tree.root, tree.height, total_blocks, &mut read_data);
    }
    r
}

/// The most items fsck held at once on this thread (leaf items and one directory's
/// entries), for the test that memory does not grow with the items of a tree.
#[cfg(test)]
pub(crate) mod peak {
    use std::cell::Cell;

    thread_local!(static PEAK: Cell<usize> = const { Cell::new(0) });

    pub fn note(held: usize) {
        PEAK.with(|p| p.set(p.get().max(held)));
    }

    /// The peak since the last call, which starts a new one.
    pub fn take() -> usize {
        PEAK.with(|p| p.replace(0))
    }
}
