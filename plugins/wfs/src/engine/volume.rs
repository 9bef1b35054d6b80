//! A mounted WFS image: the operations of a POSIX filesystem over the items of the metadata
//! tree, data written copy-on-write, and commits (docs/wfs-format.md).
//!
//! The tree is paged from disk through a bounded node cache ([`tree::Pager`]); changes since
//! the last commit are an overlay over it, and a commit applies them copy-on-write, rewriting
//! only the changed leaves and the nodes above them. The overlay is committed once it grows
//! past its limit, so metadata memory stays bounded whatever the filesystem's size.
//!
//! Data blocks are written as soon as `write` is called, never over a block a durable tree
//! references; a block written earlier in the same transaction is rewritten in place, since
//! nothing durable points at it. Which blocks are in use is the space map's business
//! (`free-space-tree`): read at open, updated at each commit.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};

use super::cache::BlockCache;
use super::crc::crc32c;
use super::device::Device;
use super::error::{Error, Result, posix};
use super::format::{
    self, BLOCK, Dirent, Extent, Inode, MAX_EXTENT, MAX_NAME, MAX_SNAPSHOT_NAME, MAX_SNAPSHOTS, MAX_XATTR_VALUE, Ptr,
    ROOT_INO, S_IFDIR, S_IFLNK, S_IFMT, S_IFREG, SLOTS, Snapshot, Superblock, Time, kind,
};
pub use super::spacemap::BlockSet;
use super::spacemap::{BITS, MapOnDisk};
use super::tree::{self, Changes, Pager};

const B: u64 = BLOCK as u64;
/// Blocks read ahead on a cache miss when the file continues contiguously on disk.
const READ_AHEAD: usize = 32;
/// A read of at least this many blocks (64 KiB) is a streaming read: the device is asked
/// to start on the file's next [`PREFETCH`] blocks.
const PREFETCH_AFTER: u64 = 16;
/// How far ahead a streaming read prefetches (1 MiB, the kernel's largest read-ahead).
const PREFETCH: u64 = 256;
/// The longest free run a write looks for (1 MiB, the largest FUSE write).
const RUN: u64 = 256;
/// How far past the hint a write looks for a free run (4 GiB of image).
const RUN_SEARCH: u64 = 1 << 20;

/// How to open an image.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Never write to the image.
    pub read_only: bool,
    /// Open this snapshot (always read-only) instead of the live tree.
    pub snapshot: Option<String>,
    /// Data blocks to cache (0: none).
    pub cache_blocks: usize,
    /// Tree nodes to cache (0: the default, [`DEFAULT_NODE_CACHE`]).
    pub node_cache_blocks: usize,
    /// Bytes of uncommitted metadata changes after which the next change commits first (0:
    /// the default, [`DEFAULT_OVERLAY_LIMIT`]).
    pub overlay_limit: u64,
}

/// Tree nodes cached by default (32 MiB).
pub const DEFAULT_NODE_CACHE: usize = 8192;
/// Uncommitted metadata held by default before a commit (16 MiB).
pub const DEFAULT_OVERLAY_LIMIT: u64 = 16 << 20;
/// The most runs of new keys one change adds (a rename that replaces a directory: two
/// names and indexes removed, one of each added, four inodes, an orphan).
const OP_RUNS: u64 = 12;
/// File blocks a truncate, fallocate or evict handles at a time (256 MiB of file), so
/// their memory does not grow with the file.
const CHUNK: u64 = 1 << 16;
/// What an overlay entry costs in memory beyond its key and value (map node, vectors).
const OVERLAY_ENTRY: u64 = 80;

/// Space, for statfs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    /// Blocks in the image.
    pub total: u64,
    /// Blocks neither in use nor reserved for the next commit.
    pub free: u64,
    /// Inodes in use.
    pub inodes: u64,
}

/// The attributes of an inode, with its number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Inode number.
    pub ino: u64,
    /// The inode.
    pub inode: Inode,
}

/// One directory entry of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Name.
    pub name: Vec<u8>,
    /// Inode.
    pub ino: u64,
    /// `mode >> 12`.
    pub kind: u8,
    /// The readdir index (resume after it).
    pub index: u64,
}

/// One block of a write: file block `idx` goes to disk block `block`, replacing `old`;
/// its bytes are `merged` (a partial block merged with the old contents) or the whole
/// block of the caller's data at `at`.
struct Piece {
    idx: u64,
    block: u64,
    old: Option<Ptr>,
    merged: Option<Vec<u8>>,
    at: usize,
}

/// What a rename replaced.
pub type Replaced = Option<u64>;

/// The allocator's state: which blocks it may hand out, and what each taken block is.
struct Blocks {
    total: u64,
    /// Blocks not to hand out: the committed state's, the space maps' own, this
    /// transaction's, and those freed since the last commit (free once it is durable).
    used: BlockSet,
    /// Taken since the last commit and still meant to be referenced by the next one.
    txn: HashSet<u64>,
    /// Taken since the last commit attempt: nothing durable can reference them, so they are
    /// rewritten in place and given back at once.
    fresh: HashSet<u64>,
    /// Blocks the live tree stopped referencing since the last commit.
    freed: HashSet<u64>,
    hint: u64,
}

impl Blocks {
    fn new(total: u64) -> Blocks {
        Blocks {
            total,
            used: BlockSet::new(total),
            txn: HashSet::new(),
            fresh: HashSet::new(),
            freed: HashSet::new(),
            hint: SLOTS,
        }
    }

    /// The first free block at or after the hint, wrapping once: consecutive calls hand
    /// out consecutive blocks while they are free, so a large write lands in runs.
    fn take(&mut self) -> Result<u64> {
        let total = self.total;
        let found = self.used.first_clear(self.hint.max(SLOTS), total).or_else(|| self.used.first_clear(SLOTS, total));
        let b = found.ok_or(posix(libc::ENOSPC, "the image is full"))?;
        self.used.insert(b);
        self.fresh.insert(b);
        self.hint = b + 1;
        Ok(b)
    }

    /// A block for the tree or data of this transaction.
    fn alloc(&mut self) -> Result<u64> {
        let b = self.take()?;
        self.txn.insert(b);
        Ok(b)
    }

    /// Gives back blocks taken for a commit attempt that never reached its superblock.
    fn give_back(&mut self, taken: &[u64]) {
        for &b in taken {
            self.fresh.remove(&b);
            self.used.remove(b);
        }
    }

    /// Gives back a block: at once if nothing durable can reference it, else once the next
    /// commit is durable.
    fn release(&mut self, b: u64) {
        if self.fresh.remove(&b) {
            self.txn.remove(&b);
            self.used.remove(b);
        } else if self.used.contains(b) {
            self.txn.remove(&b);
            self.freed.insert(b);
        }
    }
}

/// An open image.
pub struct Volume {
    dev: Arc<dyn Device>,
    read_only: bool,
    sb: Superblock,
    /// The tree this volume shows (the live tree, or a snapshot's).
    root: Ptr,
    height: u8,
    pager: Pager,
    /// Changes since the last commit, read over the tree.
    overlay: Changes,
    overlay_bytes: u64,
    /// What the overlay's values take in leaves (for the commit reserve).
    overlay_leaf_bytes: u64,
    /// Runs of keys in the overlay: a key new to it starts one unless it is the DATA key
    /// right after the last new one (a sequential write is one run). Each run touches at
    /// most two existing leaves.
    overlay_runs: u64,
    last_new_key: Vec<u8>,
    overlay_limit: u64,
    blocks: Blocks,
    /// Blocks the committed state references: what the space map on disk says.
    durable: BlockSet,
    /// Blocks snapshots reference.
    pinned: BlockSet,
    space_map: MapOnDisk,
    pinned_map: MapOnDisk,
    /// The most blocks a commit writes for both maps (fixed by the image's size).
    maps_bound: u64,
    /// The pinned set changed since the pinned map was written.
    pinned_changed: bool,
    /// Recompute `durable` and `pinned` by walking every tree at the next commit (a
    /// snapshot was deleted).
    rewalk: bool,
    snapshots: Vec<Snapshot>,
    dirty: bool,
    /// INODE items of the live tree.
    inodes: u64,
    /// Nodes of the live tree, and the bytes of its leaf items.
    tree_nodes: u64,
    tree_bytes: u64,
    /// At least the largest leaf item the live tree ever held: full leaves are at least
    /// `NODE_ROOM - max_item` full.
    max_item: u64,
    cache: Mutex<BlockCache>,
    /// The inode and end offset of the last read: a read starting there is sequential.
    last_read: Mutex<(u64, u64)>,
}

/// Blocks and counts found by walking trees.
#[derive(Default)]
struct Walked {
    inodes: u64,
    nodes: u64,
    bytes: u64,
    max_item: u64,
}

/// Marks in `set` every node of the tree at `root` and every data block its items
/// reference; counts its inodes and nodes. `tree::walk` checks each node's level and the
/// key order, so a damaged tree ends the walk with an error, never a loop.
fn walk_tree(dev: &dyn Device, root: Ptr, height: u8, total: u64, set: &mut BlockSet, w: &mut Walked) -> Result<()> {
    let mut bad = None;
    tree::walk(dev, root, height, total, &mut |block, node| {
        set.insert(block);
        w.nodes += 1;
        let format::Node::Leaf(items) = node else { return };
        w.bytes += tree::items_bytes(items);
        for (k, v) in items {
            w.max_item = w.max_item.max(format::leaf_item_size(k, v) as u64);
            if is_inode_key(k) {
                w.inodes += 1;
            } else if k.get(8) == Some(&kind::DATA) {
                match format::decode_data(v) {
                    Ok(e) => (e.block..e.block + e.len()).for_each(|b| {
                        set.insert(b);
                    }),
                    Err(e) => bad = bad.take().or(Some(e)),
                }
            }
        }
    })?;
    bad.map_or(Ok(()), Err)
}

/// The items of a paged tree under an overlay of changes, in key order, below `hi`.
pub struct Merged<'a> {
    tree: std::iter::Peekable<tree::TreeIter<'a>>,
    over: std::iter::Peekable<std::collections::btree_map::Range<'a, Vec<u8>, Option<Vec<u8>>>>,
    hi: Vec<u8>,
}

impl Iterator for Merged<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let tree_key = match self.tree.peek() {
                Some(Err(_)) => return self.tree.next(),
                Some(Ok((k, _))) if *k < self.hi => Some(k.clone()),
                _ => None,
            };
            let over_key = self.over.peek().map(|(k, _)| *k);
            match (tree_key, over_key) {
                (None, None) => return None,
                (Some(_), None) => return self.tree.next(),
                (Some(t), Some(o)) if t < *o => return self.tree.next(),
                (t, Some(o)) => {
                    if t.as_ref() == Some(o) {
                        self.tree.next();
                    }
                    let (k, v) = self.over.next()?;
                    if let Some(v) = v {
                        return Some(Ok((k.clone(), v.clone())));
                    }
                }
            }
        }
    }
}

fn is_inode_key(k: &[u8]) -> bool {
    format::split_key(k).is_some_and(|(ino, kd, tail)| kd == kind::INODE && ino > 0 && tail.is_empty())
}

fn corrupt(what: String) -> Error {
    Error::Corrupt(what)
}

/// Creates an empty filesystem of `total_blocks` blocks on `dev`.
pub fn mkfs(dev: &dyn Device, total_blocks: u64) -> Result<()> {
    if total_blocks < 16 {
        return Err(posix(libc::EINVAL, "an image needs at least 16 blocks (64 KiB)"));
    }
    let now = Time::now();
    let root = Inode {
        mode: S_IFDIR | 0o755,
        nlink: 2,
        atime: now,
        mtime: now,
        ctime: now,
        crtime: now,
        parent: ROOT_INO,
        next_index: 1,
        uid: rustix::process::getuid().as_raw(),
        gid: rustix::process::getgid().as_raw(),
        ..Inode::default()
    };
    // The tree: one leaf holding the root directory's inode.
    let key = format::key(ROOT_INO, kind::INODE, b"");
    let leaf = format::encode_leaf(&[(&key, &root.encode())]);
    let root_ptr = Ptr { block: SLOTS, crc: crc32c(&leaf) };
    dev.write_at(&leaf, SLOTS * B)?;
    let (height, nodes) = (1, [SLOTS]);
    let mut next = SLOTS + 1;
    let mut alloc = || {
        next += 1;
        Ok(next - 1)
    };
    let mut durable = BlockSet::new(total_blocks);
    for b in (0..SLOTS).chain(nodes.iter().copied()) {
        durable.insert(b);
    }
    let mut map = MapOnDisk::default();
    map.write(dev, &durable, total_blocks, &BTreeSet::new(), &mut alloc, &mut Vec::new())?;
    // Clear the other slots so an old image's superblocks cannot win.
    for slot in 0..SLOTS {
        dev.write_at(&[0; BLOCK], slot * B)?;
    }
    dev.flush()?;
    let sb = Superblock {
        generation: 1,
        total_blocks,
        next_ino: ROOT_INO + 1,
        root: root_ptr,
        height,
        time: now.secs,
        ro_compat: format::RO_COMPAT_FREE_SPACE_TREE,
        incompat: format::INCOMPAT_EXTENTS,
        space_map: map.root(),
        inodes: 1,
        tree_nodes: nodes.len() as u64,
        tree_bytes: format::leaf_item_size(&key, &root.encode()) as u64,
        max_item: format::leaf_item_size(&key, &root.encode()) as u64,
        ..Superblock::default()
    };
    dev.write_at(&sb.encode(), B)?;
    dev.flush()?;
    Ok(())
}

/// The newest valid superblock whose tree root verifies, and its items; with `older`, the
/// superblocks that were passed over.
pub fn newest_superblock(dev: &dyn Device) -> Result<(Superblock, Vec<Superblock>)> {
    let mut found = Vec::new();
    let mut buf = vec![0; BLOCK];
    for slot in 0..SLOTS {
        if dev.read_at(&mut buf, slot * B).is_ok()
            && let Some(sb) = Superblock::decode(&buf)?
        {
            found.push(sb);
        }
    }
    found.sort_by_key(|sb| std::cmp::Reverse(sb.generation));
    let len = dev.len()?;
    let mut passed = Vec::new();
    for sb in found {
        if sb.total_blocks > len / B {
            tracing::error!(generation = sb.generation, "wfs: superblock claims more blocks than the image has");
            passed.push(sb);
            continue;
        }
        if tree::read_verified(dev, sb.root, sb.total_blocks).is_ok() {
            return Ok((sb, passed));
        }
        tracing::error!(generation = sb.generation, "wfs: the tree root of a superblock does not verify");
        passed.push(sb);
    }
    Err(Error::Format("no valid superblock".into()))
}

/// Reads the snapshot table a superblock points at.
pub fn read_snapshots(dev: &dyn Device, sb: &Superblock) -> Result<Vec<Snapshot>> {
    if sb.snapshots.block == 0 {
        return Ok(Vec::new());
    }
    format::decode_snapshots(&tree::read_verified(dev, sb.snapshots, sb.total_blocks)?)
}

impl Volume {
    /// Opens the image on `dev`.
    pub fn open(dev: Arc<dyn Device>, opts: OpenOptions) -> Result<Volume> {
        let (sb, _) = newest_superblock(&*dev)?;
        let snapshots = read_snapshots(&*dev, &sb)?;
        let mut read_only = opts.read_only || opts.snapshot.is_some();
        if sb.ro_compat & !format::RO_COMPAT_KNOWN != 0 {
            tracing::warn!("wfs: unknown read-only-compatible features {:#x}: mounting read-only", sb.ro_compat);
            read_only = true;
        }
        let (root, height) = match &opts.snapshot {
            Some(name) => {
                let s = snapshots.iter().find(|s| &s.name == name);
                let s = s.ok_or_else(|| Error::Format(format!("no snapshot named {name:?}")))?;
                (s.root, s.height)
            }
            None => (sb.root, sb.height),
        };
        let total = sb.total_blocks;
        let nodes = if opts.node_cache_blocks == 0 { DEFAULT_NODE_CACHE } else { opts.node_cache_blocks };
        let overlay_limit = if opts.overlay_limit == 0 { DEFAULT_OVERLAY_LIMIT } else { opts.overlay_limit };
        let mut v = Volume {
            pager: Pager::new(dev.clone(), total, nodes),
            blocks: Blocks::new(total),
            durable: BlockSet::new(total),
            pinned: BlockSet::new(total),
            space_map: MapOnDisk::default(),
            pinned_map: MapOnDisk::default(),
            maps_bound: 2 * MapOnDisk::write_bound(total, u64::MAX),
            pinned_changed: false,
            rewalk: false,
            dev,
            read_only,
            root,
            height,
            overlay: Changes::new(),
            overlay_bytes: 0,
            overlay_leaf_bytes: 0,
            overlay_runs: 0,
            last_new_key: Vec::new(),
            overlay_limit,
            inodes: sb.inodes,
            tree_nodes: sb.tree_nodes,
            tree_bytes: sb.tree_bytes,
            max_item: sb.max_item,
            sb,
            snapshots,
            dirty: false,
            cache: Mutex::new(BlockCache::new(opts.cache_blocks)),
            last_read: Mutex::new((0, 0)),
        };
        // The tree must at least have a readable root.
        v.pager.node(root)?;
        let mut rebuild = false;
        if v.sb.ro_compat & format::RO_COMPAT_FREE_SPACE_TREE != 0 {
            let read = (|| -> Result<()> {
                v.space_map = MapOnDisk::read(&*v.dev, v.sb.space_map, total, &mut v.durable)?;
                if v.sb.pinned_map.block != 0 {
                    v.pinned_map = MapOnDisk::read(&*v.dev, v.sb.pinned_map, total, &mut v.pinned)?;
                }
                Ok(())
            })();
            if let Err(e) = read {
                // The trees say the same thing, only slower: walk them, and write the maps
                // anew (nothing else depends on the damaged ones).
                tracing::error!("wfs: the space map is damaged ({e}): finding free space by walking the trees");
                (v.space_map, v.pinned_map) = (MapOnDisk::default(), MapOnDisk::default());
                v.pinned = BlockSet::new(total);
                v.walk_all()?;
                v.pinned_changed = true;
                rebuild = true;
            }
        } else {
            // An image from before the space map: walk it once; the next commit writes the
            // map and sets the feature.
            v.walk_all()?;
        }
        v.blocks.used = v.durable.clone();
        for b in v.space_map.blocks().chain(v.pinned_map.blocks()).collect::<Vec<_>>() {
            v.blocks.used.insert(b);
        }
        if !v.read_only {
            if rebuild {
                v.dirty = true;
                v.commit()?;
                tracing::info!("wfs: the space map is rewritten");
            }
            v.free_orphans()?;
        }
        Ok(v)
    }

    /// Recomputes `durable` and `pinned` (and the live tree's counts) from what every tree
    /// of the committed state reaches.
    fn walk_all(&mut self) -> Result<()> {
        let total = self.sb.total_blocks;
        let mut pinned = BlockSet::new(total);
        for s in &self.snapshots {
            walk_tree(&*self.dev, s.root, s.height, total, &mut pinned, &mut Walked::default())?;
        }
        let mut durable = pinned.clone();
        let mut live = Walked::default();
        walk_tree(&*self.dev, self.sb.root, self.sb.height, total, &mut durable, &mut live)?;
        for b in 0..SLOTS {
            durable.insert(b);
        }
        if self.sb.snapshots.block != 0 {
            durable.insert(self.sb.snapshots.block);
        }
        self.inodes = live.inodes;
        self.tree_nodes = live.nodes;
        self.tree_bytes = live.bytes;
        self.max_item = self.max_item.max(live.max_item);
        self.pinned_changed |= pinned.len() != self.pinned.len() || pinned.iter().any(|b| !self.pinned.contains(b));
        self.durable = durable;
        self.pinned = pinned;
        Ok(())
    }

    /// Whether changes are refused.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The superblock of the last commit.
    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    fn free_orphans(&mut self) -> Result<()> {
        let lo = format::key(0, kind::ORPHAN, b"");
        let hi = format::key(0, kind::ORPHAN + 1, b"");
        let mut orphans = Vec::new();
        for item in self.range(lo, hi)? {
            let (k, _) = item?;
            orphans.extend(format::split_key(&k).and_then(|(_, _, t)| format::tail_n(t)));
        }
        if orphans.is_empty() {
            return Ok(());
        }
        for ino in orphans {
            tracing::info!(ino, "wfs: freeing an unlinked inode left open at the last unmount");
            self.evict(ino)?;
        }
        self.commit()
    }

    // -- items ---------------------------------------------------------------------------

    /// The value of `k`: the overlay's, else the tree's.
    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.overlay.get(k) {
            Some(v) => Ok(v.clone()),
            None => self.pager.get(self.root, self.height, k),
        }
    }

    /// The value of item `k` (for fsck and tests).
    pub fn item(&self, k: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get(k)
    }

    /// The items in `[lo, hi)`, in key order.
    fn range(&self, lo: Vec<u8>, hi: Vec<u8>) -> Result<Merged<'_>> {
        let tree = self.pager.iter(self.root, self.height, &lo)?.peekable();
        let over = if lo < hi { self.overlay.range(lo..hi.clone()) } else { self.overlay.range(lo.clone()..lo) };
        Ok(Merged { tree, over: over.peekable(), hi })
    }

    fn record(&mut self, k: Vec<u8>, v: Option<Vec<u8>>) {
        let size =
            |k: &[u8], v: &Option<Vec<u8>>| k.len() as u64 + v.as_ref().map_or(0, |v| v.len() as u64) + OVERLAY_ENTRY;
        self.overlay_bytes += size(&k, &v);
        let item = v.as_ref().map_or(0, |v| format::leaf_item_size(&k, v) as u64);
        self.overlay_leaf_bytes += item;
        self.max_item = self.max_item.max(item);
        let follows = k.len() == 17
            && k[8] == kind::DATA
            && self.last_new_key.len() == 17
            && k[..9] == self.last_new_key[..9]
            && format::tail_n(&k[9..])
                .zip(format::tail_n(&self.last_new_key[9..]))
                .is_some_and(|(i, last)| i > last && i - last <= MAX_EXTENT);
        match self.overlay.insert(k.clone(), v) {
            Some(old) => {
                self.overlay_bytes -= size(&k, &old);
                self.overlay_leaf_bytes -= old.as_ref().map_or(0, |v| format::leaf_item_size(&k, v) as u64);
            }
            None => {
                if !follows {
                    self.overlay_runs += 1;
                }
                self.last_new_key = k;
            }
        }
        self.dirty = true;
    }

    fn put(&mut self, k: Vec<u8>, v: Vec<u8>) -> Result<()> {
        if is_inode_key(&k) && self.get(&k)?.is_none() {
            self.inodes += 1;
        }
        self.record(k, Some(v));
        Ok(())
    }

    fn del(&mut self, k: &[u8]) -> Result<Option<Vec<u8>>> {
        let old = self.get(k)?;
        if old.is_some() {
            if is_inode_key(k) {
                self.inodes -= 1;
            }
            self.record(k.to_vec(), None);
        }
        Ok(old)
    }

    /// Refuses changes to a read-only volume. Commits first when the uncommitted changes
    /// have outgrown their limit, or when one more change could need more room at commit
    /// than is free (every change starts here, so this is between changes).
    fn writable(&mut self) -> Result<()> {
        if self.read_only {
            return Err(posix(libc::EROFS, "the image is mounted read-only"));
        }
        let full = self.free_blocks() < self.reserve_with(OP_RUNS);
        if self.dirty
            && (self.overlay_bytes > self.overlay_limit || full)
            && let Err(e) = self.commit()
        {
            tracing::warn!("wfs: committing {} bytes of pending changes failed: {e}", self.overlay_bytes);
        }
        Ok(())
    }

    /// Blocks the next commit may need, kept back from data.
    ///
    /// Each run of pending keys rewrites the leaf it lands in and at most one more it
    /// absorbs, so the items repacked are at most those of two full leaves per run (and never
    /// more than the whole tree's) plus what the changes add. Greedy packing fills every leaf
    /// but the last of a run to at least `NODE_ROOM - max_item`, and runs of rewritten
    /// leaves are separated by clean ones. Above them: the nodes on the runs'
    /// paths (at most every internal node; a fan-out of at least 14 with 264-byte keys),
    /// then the space maps and the snapshot table.
    fn reserve(&self) -> u64 {
        self.reserve_with(0)
    }

    /// [`Volume::reserve`] after `more` runs of new keys.
    fn reserve_with(&self, more: u64) -> u64 {
        let room = format::NODE_ROOM as u64;
        let runs = self.overlay_runs + more;
        let leaf_count = self.tree_nodes + 1;
        let repacked = (2 * runs * room).min(self.tree_bytes) + self.overlay_leaf_bytes + more * self.max_item;
        let fill = room.saturating_sub(self.max_item).max(room / 4);
        let leaves = repacked / fill + runs.min(leaf_count / 2 + 1) + 1;
        let height = u64::from(self.height) + 1;
        let internal = (runs * height).min(leaf_count / 13 + height) + leaves / 13 + height;
        leaves + internal + self.maps_bound + 8
    }

    fn free_blocks(&self) -> u64 {
        self.sb.total_blocks.saturating_sub(self.blocks.used.len())
    }

    /// Refuses a change that needs `blocks` of data and `meta` bytes of items if it would
    /// leave too little room to commit, plus room for one more change of any kind after it:
    /// changes that only remove (unlink, rmdir, truncate, removing an xattr) are never
    /// refused, and the room kept for them is what makes deleting possible on a full image.
    fn room_for(&self, blocks: u64, meta: usize) -> Result<()> {
        let need = blocks + self.reserve_with(2 * OP_RUNS) + (meta as u64) / 2000 + 1;
        if self.free_blocks() < need { Err(posix(libc::ENOSPC, "the image is full")) } else { Ok(()) }
    }

    fn alloc(&mut self) -> Result<u64> {
        self.blocks.alloc()
    }

    /// Moves the allocation hint to the start of a free run of `len` blocks (at most
    /// [`RUN`]) if the blocks at the hint are not one, so a large write lands in one run
    /// instead of filling the small holes copy-on-write leaves behind. Looks at most
    /// [`RUN_SEARCH`] blocks ahead (wrapping once); finding nothing leaves the hint.
    fn seek_run(&mut self, len: u64) {
        let len = len.min(RUN);
        let total = self.sb.total_blocks;
        let used = &self.blocks.used;
        let from = self.blocks.hint.max(SLOTS);
        let found = used.first_clear_run(from, total.min(from.saturating_add(RUN_SEARCH)), len).or_else(|| {
            let wrapped = RUN_SEARCH.saturating_sub(total.saturating_sub(from));
            used.first_clear_run(SLOTS, total.min(SLOTS + wrapped).min(from), len)
        });
        if let Some(b) = found {
            self.blocks.hint = b;
        }
    }

    /// Gives back a block the live tree no longer references.
    fn release(&mut self, b: u64) {
        self.blocks.release(b);
        if let Ok(mut c) = self.cache.lock() {
            c.remove(b);
        }
    }

    // -- inodes --------------------------------------------------------------------------

    /// The inode `ino`.
    pub fn inode(&self, ino: u64) -> Result<Inode> {
        let v = self.get(&format::key(ino, kind::INODE, b""))?.ok_or(posix(libc::ENOENT, "no such inode"))?;
        Inode::decode(&v)
    }

    /// The attributes of `ino`.
    pub fn stat(&self, ino: u64) -> Result<Stat> {
        Ok(Stat { ino, inode: self.inode(ino)? })
    }

    fn set_inode(&mut self, ino: u64, i: &Inode) -> Result<()> {
        self.put(format::key(ino, kind::INODE, b""), i.encode())
    }

    fn dir(&self, ino: u64) -> Result<Inode> {
        let i = self.inode(ino)?;
        if !i.is_dir() {
            return Err(posix(libc::ENOTDIR, "not a directory"));
        }
        Ok(i)
    }

    fn dirent(&self, dir: u64, name: &[u8]) -> Result<Option<Dirent>> {
        self.get(&format::key(dir, kind::DIRENT, name))?.map(|v| Dirent::decode(&v)).transpose()
    }

    fn check_name(name: &[u8]) -> Result<()> {
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
            return Err(posix(libc::EINVAL, "not a valid name"));
        }
        if name.len() > MAX_NAME {
            return Err(posix(libc::ENAMETOOLONG, "name longer than 255 bytes"));
        }
        Ok(())
    }

    /// Looks `name` up in `dir`.
    pub fn lookup(&self, dir: u64, name: &[u8]) -> Result<u64> {
        if name.len() > MAX_NAME {
            return Err(posix(libc::ENAMETOOLONG, "name longer than 255 bytes"));
        }
        self.dir(dir)?;
        Ok(self.dirent(dir, name)?.ok_or(posix(libc::ENOENT, "no such entry"))?.ino)
    }

    fn add_entry(&mut self, dir: u64, name: &[u8], ino: u64, mode: u32, now: Time) -> Result<()> {
        let mut d = self.dir(dir)?;
        let index = d.next_index.max(1);
        d.next_index = index + 1;
        d.mtime = now;
        d.ctime = now;
        if mode & S_IFMT == S_IFDIR {
            d.nlink = d.nlink.saturating_add(1);
        }
        self.set_inode(dir, &d)?;
        let kind_byte = (mode >> 12) as u8;
        self.put(format::key(dir, kind::DIRENT, name), Dirent { ino, kind: kind_byte, index }.encode())?;
        self.put(format::key_n(dir, kind::DIRINDEX, index), name.to_vec())?;
        Ok(())
    }

    fn remove_entry(&mut self, dir: u64, name: &[u8], now: Time) -> Result<Dirent> {
        let e = self.dirent(dir, name)?.ok_or(posix(libc::ENOENT, "no such entry"))?;
        self.del(&format::key(dir, kind::DIRENT, name))?;
        self.del(&format::key_n(dir, kind::DIRINDEX, e.index))?;
        let mut d = self.dir(dir)?;
        d.mtime = now;
        d.ctime = now;
        if u32::from(e.kind) << 12 == S_IFDIR {
            d.nlink = d.nlink.saturating_sub(1);
        }
        self.set_inode(dir, &d)?;
        Ok(e)
    }

    /// Creates a node of `mode` (type and permission bits) named `name` in `dir`.
    pub fn create(&mut self, dir: u64, name: &[u8], mode: u32, uid: u32, gid: u32, rdev: u32) -> Result<u64> {
        self.writable()?;
        Self::check_name(name)?;
        self.dir(dir)?;
        if self.dirent(dir, name)?.is_some() {
            return Err(posix(libc::EEXIST, "the name exists"));
        }
        if mode & S_IFMT == 0 {
            return Err(posix(libc::EINVAL, "no file type"));
        }
        self.room_for(0, 200 + 2 * name.len())?;
        let ino = self.sb.next_ino;
        self.sb.next_ino += 1;
        let now = Time::now();
        let is_dir = mode & S_IFMT == S_IFDIR;
        let inode = Inode {
            mode,
            uid,
            gid,
            nlink: if is_dir { 2 } else { 1 },
            rdev,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            parent: if is_dir { dir } else { 0 },
            next_index: if is_dir { 1 } else { 0 },
            ..Inode::default()
        };
        self.set_inode(ino, &inode)?;
        self.add_entry(dir, name, ino, mode, now)?;
        Ok(ino)
    }

    /// Creates a symlink to `target`.
    pub fn symlink(&mut self, dir: u64, name: &[u8], target: &[u8], uid: u32, gid: u32) -> Result<u64> {
        if target.is_empty() || target.len() >= 4096 {
            return Err(posix(libc::ENAMETOOLONG, "symlink targets are 1 to 4095 bytes"));
        }
        self.room_for(1, 100)?;
        let ino = self.create(dir, name, S_IFLNK | 0o777, uid, gid, 0)?;
        self.write(ino, 0, target)?;
        Ok(ino)
    }

    /// A symlink's target.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let i = self.inode(ino)?;
        if i.mode & S_IFMT != S_IFLNK {
            return Err(posix(libc::EINVAL, "not a symlink"));
        }
        let mut buf = vec![0; usize::try_from(i.size.min(4096)).unwrap_or(4096)];
        let n = self.read(ino, 0, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Adds a hard link.
    pub fn link(&mut self, ino: u64, dir: u64, name: &[u8]) -> Result<()> {
        self.writable()?;
        Self::check_name(name)?;
        let mut i = self.inode(ino)?;
        if i.is_dir() {
            return Err(posix(libc::EPERM, "hard links to directories"));
        }
        self.dir(dir)?;
        if self.dirent(dir, name)?.is_some() {
            return Err(posix(libc::EEXIST, "the name exists"));
        }
        if i.nlink >= 65000 {
            return Err(posix(libc::EMLINK, "too many links"));
        }
        self.room_for(0, 100 + 2 * name.len())?;
        let now = Time::now();
        i.nlink += 1;
        i.ctime = now;
        self.set_inode(ino, &i)?;
        if i.nlink == 1 {
            self.del(&format::key_n(0, kind::ORPHAN, ino))?;
        }
        self.add_entry(dir, name, ino, i.mode, now)
    }

    fn drop_link(&mut self, ino: u64, now: Time) -> Result<()> {
        let mut i = self.inode(ino)?;
        i.nlink = if i.is_dir() { 0 } else { i.nlink.saturating_sub(1) };
        i.ctime = now;
        self.set_inode(ino, &i)?;
        if i.nlink == 0 {
            self.put(format::key_n(0, kind::ORPHAN, ino), Vec::new())?;
        }
        Ok(())
    }

    /// Removes a non-directory; returns its inode (free it with [`Volume::evict`] once
    /// nothing has it open).
    pub fn unlink(&mut self, dir: u64, name: &[u8]) -> Result<u64> {
        self.writable()?;
        let e = self.dirent(dir, name)?.ok_or(posix(libc::ENOENT, "no such entry"))?;
        if self.inode(e.ino)?.is_dir() {
            return Err(posix(libc::EISDIR, "is a directory"));
        }
        let now = Time::now();
        self.remove_entry(dir, name, now)?;
        self.drop_link(e.ino, now)?;
        Ok(e.ino)
    }

    fn is_empty_dir(&self, ino: u64) -> Result<bool> {
        let lo = format::key(ino, kind::DIRENT, b"");
        let hi = format::key(ino, kind::DIRENT + 1, b"");
        Ok(self.range(lo, hi)?.next().transpose()?.is_none())
    }

    /// Removes an empty directory; returns its inode.
    pub fn rmdir(&mut self, dir: u64, name: &[u8]) -> Result<u64> {
        self.writable()?;
        let e = self.dirent(dir, name)?.ok_or(posix(libc::ENOENT, "no such entry"))?;
        if !self.inode(e.ino)?.is_dir() {
            return Err(posix(libc::ENOTDIR, "not a directory"));
        }
        if !self.is_empty_dir(e.ino)? {
            return Err(posix(libc::ENOTEMPTY, "directory not empty"));
        }
        let now = Time::now();
        self.remove_entry(dir, name, now)?;
        self.drop_link(e.ino, now)?;
        Ok(e.ino)
    }

    /// Frees an inode whose last link is gone (no-op if it still has links).
    pub fn evict(&mut self, ino: u64) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let Ok(mut i) = self.inode(ino) else { return Ok(()) };
        if i.nlink > 0 {
            return Ok(());
        }
        // The data a stretch at a time, then the few items left (inode, xattrs).
        self.drop_blocks(ino, &mut i, 0, u64::MAX)?;
        let lo = format::key(ino, 0, b"");
        let hi = format::key(ino.saturating_add(1), 0, b"");
        let keys = self.range(lo, hi)?.map(|item| item.map(|(k, _)| k)).collect::<Result<Vec<_>>>()?;
        for k in keys {
            self.record(k.clone(), None);
            if is_inode_key(&k) {
                self.inodes -= 1;
            }
        }
        self.del(&format::key_n(0, kind::ORPHAN, ino))?;
        Ok(())
    }

    fn is_ancestor(&self, anc: u64, mut dir: u64) -> Result<bool> {
        for _ in 0..100_000 {
            if dir == anc {
                return Ok(true);
            }
            if dir == ROOT_INO {
                return Ok(false);
            }
            dir = self.inode(dir)?.parent;
        }
        Err(corrupt("directory parents form a loop".into()))
    }

    /// Renames; returns the inode a plain rename replaced (free it with evict when unused).
    pub fn rename(
        &mut self,
        dir: u64,
        name: &[u8],
        new_dir: u64,
        new_name: &[u8],
        noreplace: bool,
        exchange: bool,
    ) -> Result<Replaced> {
        self.writable()?;
        Self::check_name(new_name)?;
        self.dir(new_dir)?;
        let src = self.dirent(dir, name)?.ok_or(posix(libc::ENOENT, "no such entry"))?;
        let dst = self.dirent(new_dir, new_name)?;
        let src_dir = self.inode(src.ino)?.is_dir();
        if src_dir && src.ino != new_dir && self.is_ancestor(src.ino, new_dir)? {
            return Err(posix(libc::EINVAL, "a directory cannot move into itself"));
        }
        if src_dir && src.ino == new_dir {
            return Err(posix(libc::EINVAL, "a directory cannot move into itself"));
        }
        let now = Time::now();
        if exchange {
            let dst = dst.ok_or(posix(libc::ENOENT, "no such entry"))?;
            let dst_dir = self.inode(dst.ino)?.is_dir();
            if dst_dir && self.is_ancestor(dst.ino, dir)? {
                return Err(posix(libc::EINVAL, "a directory cannot move into itself"));
            }
            if dir == new_dir && name == new_name {
                return Ok(None);
            }
            let src_mode = self.inode(src.ino)?.mode;
            let dst_mode = self.inode(dst.ino)?.mode;
            self.remove_entry(dir, name, now)?;
            self.remove_entry(new_dir, new_name, now)?;
            self.add_entry(dir, name, dst.ino, dst_mode, now)?;
            self.add_entry(new_dir, new_name, src.ino, src_mode, now)?;
            for (ino, parent) in [(src.ino, new_dir), (dst.ino, dir)] {
                let mut i = self.inode(ino)?;
                if i.is_dir() {
                    i.parent = parent;
                }
                i.ctime = now;
                self.set_inode(ino, &i)?;
            }
            return Ok(None);
        }
        if let Some(dst) = dst {
            if noreplace {
                return Err(posix(libc::EEXIST, "the target exists"));
            }
            if dst.ino == src.ino {
                return Ok(None);
            }
            let dst_dir = self.inode(dst.ino)?.is_dir();
            match (src_dir, dst_dir) {
                (true, false) => return Err(posix(libc::ENOTDIR, "the target is not a directory")),
                (false, true) => return Err(posix(libc::EISDIR, "the target is a directory")),
                (true, true) if !self.is_empty_dir(dst.ino)? => {
                    return Err(posix(libc::ENOTEMPTY, "the target directory is not empty"));
                }
                _ => {}
            }
        }
        self.room_for(0, 100 + 2 * new_name.len())?;
        let replaced = match dst {
            Some(d) => {
                self.remove_entry(new_dir, new_name, now)?;
                self.drop_link(d.ino, now)?;
                Some(d.ino)
            }
            None => None,
        };
        self.remove_entry(dir, name, now)?;
        let mut i = self.inode(src.ino)?;
        self.add_entry(new_dir, new_name, src.ino, i.mode, now)?;
        if i.is_dir() {
            i.parent = new_dir;
        }
        i.ctime = now;
        self.set_inode(src.ino, &i)?;
        Ok(replaced)
    }

    /// Lists `dir` after readdir index `after`, until `f` returns false.
    pub fn list(&self, dir: u64, after: u64, mut f: impl FnMut(Listed) -> bool) -> Result<()> {
        self.dir(dir)?;
        let lo = format::key_n(dir, kind::DIRINDEX, after.saturating_add(1));
        let hi = format::key(dir, kind::DIRINDEX + 1, b"");
        if lo >= hi {
            return Ok(());
        }
        for item in self.range(lo, hi)? {
            let (k, name) = item?;
            let index = format::split_key(&k).and_then(|(_, _, t)| format::tail_n(t));
            let index = index.ok_or_else(|| corrupt(format!("directory {dir}: bad index key")))?;
            let e = self.dirent(dir, &name)?.ok_or_else(|| corrupt(format!("directory {dir}: index without entry")))?;
            if !f(Listed { name, ino: e.ino, kind: e.kind, index }) {
                break;
            }
        }
        Ok(())
    }

    /// The parent of a directory.
    pub fn parent(&self, dir: u64) -> Result<u64> {
        Ok(self.dir(dir)?.parent)
    }

    // -- attributes ----------------------------------------------------------------------

    /// Changes mode bits, owner and times; `ctime` is set to now.
    pub fn set_attr(
        &mut self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        atime: Option<Time>,
        mtime: Option<Time>,
    ) -> Result<Inode> {
        self.writable()?;
        let mut i = self.inode(ino)?;
        if let Some(m) = mode {
            i.mode = (i.mode & S_IFMT) | (m & 0o7777);
        }
        if let Some(u) = uid {
            i.uid = u;
        }
        if let Some(g) = gid {
            i.gid = g;
        }
        if let Some(t) = atime {
            i.atime = t;
        }
        if let Some(t) = mtime {
            i.mtime = t;
        }
        i.ctime = Time::now();
        self.set_inode(ino, &i)?;
        Ok(i)
    }

    // -- data ----------------------------------------------------------------------------

    /// The extents of `ino` that map any of file blocks `[from, to)`, in order, with their
    /// first file block.
    fn extents(&self, ino: u64, from: u64, to: u64) -> Result<Vec<(u64, Extent)>> {
        let mut out = Vec::new();
        if from >= to {
            return Ok(out);
        }
        // An extent holding `from` starts at most MAX_EXTENT - 1 blocks before it.
        let lo = format::key_n(ino, kind::DATA, from.saturating_sub(MAX_EXTENT - 1));
        let hi = format::key_n(ino, kind::DATA, to);
        let mut end = 0;
        for item in self.range(lo, hi)? {
            let (k, v) = item?;
            let start = format::split_key(&k).and_then(|(_, _, t)| format::tail_n(t));
            let start = start.ok_or_else(|| corrupt(format!("inode {ino}: bad data key")))?;
            let e = format::decode_data(&v)?;
            if start < end {
                return Err(corrupt(format!("inode {ino}: extents overlap at file block {start}")));
            }
            end = start.saturating_add(e.len());
            if end > from {
                out.push((start, e));
            }
        }
        Ok(out)
    }

    /// The blocks of `ino` mapped in `[from, to)`: (file block, where it is).
    fn mapped(&self, ino: u64, from: u64, to: u64) -> Result<Vec<(u64, Ptr)>> {
        let mut out = Vec::new();
        for (start, e) in self.extents(ino, from, to)? {
            for i in from.saturating_sub(start)..e.len().min(to - start) {
                out.push((start + i, e.ptr(i)));
            }
        }
        Ok(out)
    }

    fn data_ptr(&self, ino: u64, idx: u64) -> Result<Option<Ptr>> {
        Ok(self.mapped(ino, idx, idx.saturating_add(1))?.first().map(|&(_, p)| p))
    }

    /// Where file block `idx` of `ino` is (for fsck tools and tests).
    pub fn block_of(&self, ino: u64, idx: u64) -> Result<Option<Ptr>> {
        self.data_ptr(ino, idx)
    }

    /// Maps file blocks `[from, to)` of `ino` to exactly `new` (file block, where; in order,
    /// inside the range; everything else a hole): the extents overlapping the range are cut
    /// at its ends, and runs that continue one another on disk are joined, with the
    /// extents just before and after, into extents of up to [`MAX_EXTENT`] blocks. Returns
    /// what the range mapped before. Blocks are neither written nor released here.
    fn remap(&mut self, ino: u64, from: u64, to: u64, new: &[(u64, Ptr)]) -> Result<Vec<(u64, Ptr)>> {
        // The extents touching the range, and the ones right before and after it.
        let touched = self.extents(ino, from.saturating_sub(1), to.saturating_add(1))?;
        let mut old = Vec::new();
        let mut pieces: Vec<(u64, Ptr)> = Vec::new();
        let mut before = Vec::new();
        let mut after = Vec::new();
        for (start, e) in &touched {
            self.record(format::key_n(ino, kind::DATA, *start), None);
            for i in 0..e.len() {
                let idx = start + i;
                if idx < from {
                    before.push((idx, e.ptr(i)));
                } else if idx >= to {
                    after.push((idx, e.ptr(i)));
                } else {
                    old.push((idx, e.ptr(i)));
                }
            }
        }
        pieces.extend(before);
        pieces.extend_from_slice(new);
        pieces.extend(after);
        let mut at = 0;
        while at < pieces.len() {
            let (start, first) = pieces[at];
            let mut n = 1;
            while at + n < pieces.len()
                && (n as u64) < MAX_EXTENT
                && pieces[at + n].0 == start + n as u64
                && pieces[at + n].1.block == first.block + n as u64
            {
                n += 1;
            }
            let e = Extent { block: first.block, crcs: pieces[at..at + n].iter().map(|(_, p)| p.crc).collect() };
            self.record(format::key_n(ino, kind::DATA, start), Some(format::encode_data(&e)));
            at += n;
        }
        Ok(old)
    }

    fn read_block(&self, p: Ptr) -> Result<Arc<[u8]>> {
        if let Ok(mut c) = self.cache.lock()
            && let Some(b) = c.get(p.block)
        {
            return Ok(b);
        }
        let b: Arc<[u8]> = tree::read_verified(&*self.dev, p, self.sb.total_blocks)?.into();
        if let Ok(mut c) = self.cache.lock() {
            c.insert(p.block, b.clone());
        }
        Ok(b)
    }

    /// Reads file block `idx` (at `p`); on a cache miss, also reads ahead the file's next
    /// blocks that lie right after it on disk (up to [`READ_AHEAD`]) in one IO, verifies
    /// each against its own checksum and caches the good ones.
    fn read_file_block(&self, ino: u64, idx: u64, p: Ptr) -> Result<Arc<[u8]>> {
        let cached = self.cache.lock().ok().and_then(|mut c| c.get(p.block));
        if let Some(b) = cached {
            return Ok(b);
        }
        let mut run = vec![p];
        if self.cache.lock().is_ok_and(|c| c.capacity() >= 2 * READ_AHEAD) {
            let next = self.mapped(ino, idx.saturating_add(1), idx.saturating_add(READ_AHEAD as u64));
            for (j, (i, q)) in next.unwrap_or_default().into_iter().enumerate() {
                let j = j as u64 + 1;
                if i != idx + j || Some(q.block) != p.block.checked_add(j) || q.block >= self.sb.total_blocks {
                    break;
                }
                run.push(q);
            }
        }
        if run.len() == 1 || p.block < SLOTS {
            return self.read_block(p);
        }
        let mut buf = vec![0u8; run.len() * BLOCK];
        self.dev.read_at(&mut buf, p.block * B)?;
        let mut first = None;
        for (n, q) in run.iter().enumerate() {
            let bytes = &buf[n * BLOCK..(n + 1) * BLOCK];
            if crc32c(bytes) != q.crc {
                continue;
            }
            let b: Arc<[u8]> = Arc::from(bytes);
            if n == 0 {
                first = Some(b.clone());
            }
            if let Ok(mut c) = self.cache.lock() {
                c.insert(q.block, b);
            }
        }
        match first {
            Some(b) => Ok(b),
            // Let the single-block path log and answer the mismatch.
            None => self.read_block(p),
        }
    }

    /// Reads at `offset`; fewer bytes than asked means end of file. A block that fails its
    /// checksum is EIO, never its bytes.
    ///
    /// The request's data items are found with one range scan. A small read that continues
    /// the previous read of the file goes block by block through the cache with read-ahead;
    /// any other read reads each run of blocks that lie one after another on disk with one
    /// IO, straight into `buf` where whole blocks land there, and checks every block of
    /// it: a 4 KiB random read costs one 4 KiB IO (no read-ahead the next read would not
    /// use), a 1 MiB read a few large ones.
    pub fn read(&self, ino: u64, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let i = self.inode(ino)?;
        if i.is_dir() {
            return Err(posix(libc::EISDIR, "is a directory"));
        }
        if offset >= i.size {
            return Ok(0);
        }
        let len = (buf.len() as u64).min(i.size - offset) as usize;
        let end = offset + len as u64;
        let sequential = self.last_read.lock().map(|mut l| std::mem::replace(&mut *l, (ino, end)) == (ino, offset));
        let first = offset / B;
        let last = (end - 1) / B;
        let small = last - first < READ_AHEAD as u64 / 4;
        let mapped = self.mapped(ino, first, last + 1)?;
        let fail = |idx: u64, e: Error| {
            tracing::error!(ino, block = idx, "wfs: file data failed its checksum: {e}");
            e
        };
        // The bytes of file block `idx` that the request covers: (block offset, buf range).
        let span = |idx: u64| {
            let start = (idx * B).max(offset);
            let stop = ((idx + 1) * B).min(end);
            ((start - idx * B) as usize, (start - offset) as usize..(stop - offset) as usize)
        };
        // Holes read as zeroes.
        let mut next = first;
        for &(idx, _) in &mapped {
            for h in next..idx {
                buf[span(h).1].fill(0);
            }
            next = idx + 1;
        }
        for h in next..=last {
            buf[span(h).1].fill(0);
        }
        if small && sequential.unwrap_or(false) {
            for &(idx, p) in &mapped {
                let b = self.read_file_block(ino, idx, p).map_err(|e| fail(idx, e))?;
                let (within, r) = span(idx);
                let n = r.len();
                buf[r].copy_from_slice(&b[within..within + n]);
            }
            return Ok(len);
        }
        if last - first + 1 >= PREFETCH_AFTER {
            self.prefetch_after(ino, last + 1);
        }
        let mut at = 0;
        while at < mapped.len() {
            let (idx0, p0) = mapped[at];
            let mut n = 1;
            // Checked in this order so a damaged pointer near u64::MAX cannot overflow.
            while at + n < mapped.len()
                && p0.block.saturating_add(n as u64) < self.sb.total_blocks
                && mapped[at + n].0 == idx0 + n as u64
                && mapped[at + n].1.block == p0.block + n as u64
            {
                n += 1;
            }
            let run = &mapped[at..at + n];
            at += n;
            if n == 1 || p0.block < SLOTS {
                for &(idx, p) in run {
                    let b = self.read_block(p).map_err(|e| fail(idx, e))?;
                    let (within, r) = span(idx);
                    let len = r.len();
                    buf[r].copy_from_slice(&b[within..within + len]);
                }
                continue;
            }
            let (within0, r0) = span(idx0);
            let (_, rn) = span(idx0 + n as u64 - 1);
            let whole = within0 == 0 && r0.len() == BLOCK && rn.len() == BLOCK;
            let mut scratch = Vec::new();
            let bytes: &mut [u8] = if whole {
                &mut buf[r0.start..rn.end]
            } else {
                scratch.resize(n * BLOCK, 0);
                &mut scratch
            };
            self.dev.read_at(bytes, p0.block * B)?;
            for (j, &(idx, p)) in run.iter().enumerate() {
                if crc32c(&bytes[j * BLOCK..(j + 1) * BLOCK]) != p.crc {
                    // The single-block path logs the block and answers EIO.
                    self.read_block(p).map_err(|e| fail(idx, e))?;
                    return Err(fail(idx, corrupt(format!("block {}: checksum mismatch", p.block))));
                }
            }
            if !whole {
                for (j, &(idx, _)) in run.iter().enumerate() {
                    let (within, r) = span(idx);
                    let len = r.len();
                    buf[r].copy_from_slice(&scratch[j * BLOCK + within..j * BLOCK + within + len]);
                }
            }
        }
        Ok(len)
    }

    /// Asks the device to start reading the file's blocks from `idx` on (up to
    /// [`PREFETCH`] of them), one hint per run of consecutive blocks on disk: data only,
    /// nothing is verified or served from it until a read checks it.
    fn prefetch_after(&self, ino: u64, idx: u64) {
        let mut run: Option<(u64, u64)> = None;
        let Ok(blocks) = self.mapped(ino, idx, idx.saturating_add(PREFETCH)) else { return };
        for (_, p) in blocks {
            if p.block < SLOTS || p.block >= self.sb.total_blocks {
                break;
            }
            run = match run {
                Some((start, n)) if start + n == p.block => Some((start, n + 1)),
                Some((start, n)) => {
                    self.dev.prefetch(start * B, n * B);
                    Some((p.block, 1))
                }
                None => Some((p.block, 1)),
            };
        }
        if let Some((start, n)) = run {
            self.dev.prefetch(start * B, n * B);
        }
    }

    /// Puts one block of file data: in place if this transaction wrote it, else in a new
    /// block (copy-on-write).
    fn put_block(&mut self, ino: u64, idx: u64, data: &[u8]) -> Result<bool> {
        let old = self.data_ptr(ino, idx)?;
        let block = match old {
            Some(p) if self.blocks.fresh.contains(&p.block) => p.block,
            _ => self.alloc()?,
        };
        if let Err(e) = self.dev.write_at(data, block * B) {
            if old.is_none_or(|p| p.block != block) {
                self.release(block);
            }
            return Err(e.into());
        }
        let crc = crc32c(data);
        if let Ok(mut c) = self.cache.lock() {
            c.insert(block, Arc::from(data));
        }
        self.remap(ino, idx, idx + 1, &[(idx, Ptr { block, crc })])?;
        if let Some(p) = old
            && p.block != block
        {
            self.release(p.block);
        }
        Ok(old.is_none())
    }

    /// Writes `data` at `offset`; returns how much was written (all, or an error when
    /// nothing could be).
    ///
    /// Three passes: find each block's target (in place if this transaction wrote it, else
    /// a newly allocated one; the allocator hands out consecutive blocks while they are
    /// free), then write each run of consecutive targets with one IO (straight from `data`
    /// when it covers whole blocks), then checksum and record the blocks. A 1 MiB write is
    /// one or a few IOs instead of 256.
    pub fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<usize> {
        self.writable()?;
        let mut i = self.inode(ino)?;
        if i.is_dir() {
            return Err(posix(libc::EISDIR, "is a directory"));
        }
        let end = offset.checked_add(data.len() as u64).filter(|&e| e <= i64::MAX as u64);
        let end = end.ok_or(posix(libc::EFBIG, "beyond the largest file"))?;
        if data.is_empty() {
            return Ok(0);
        }
        let first = offset / B;
        let last = (end - 1) / B;
        let mut olds: Vec<Option<Ptr>> = vec![None; (last - first + 1) as usize];
        for (idx, p) in self.mapped(ino, first, last + 1)? {
            olds[(idx - first) as usize] = Some(p);
        }
        let fresh = olds.iter().filter(|o| o.is_none_or(|p| !self.blocks.fresh.contains(&p.block))).count() as u64;
        if fresh > 1 {
            self.seek_run(fresh);
        }
        let mut plan: Vec<Piece> = Vec::with_capacity(olds.len());
        let mut result = Ok(());
        for (j, &old) in olds.iter().enumerate() {
            let idx = first + j as u64;
            let start = (idx * B).max(offset);
            let stop = ((idx + 1) * B).min(end);
            let within = (start - idx * B) as usize;
            let at = (start - offset) as usize;
            let n = (stop - start) as usize;
            let step = (|| -> Result<Piece> {
                // Copy-on-write needs a new block even for an overwrite.
                self.room_for(1, 40)?;
                let merged = if n < BLOCK {
                    let mut block = vec![0u8; BLOCK];
                    if let Some(p) = old {
                        block.copy_from_slice(&self.read_block(p)?);
                    }
                    block[within..within + n].copy_from_slice(&data[at..at + n]);
                    Some(block)
                } else {
                    None
                };
                let block = match old {
                    Some(p) if self.blocks.fresh.contains(&p.block) => p.block,
                    _ => self.alloc()?,
                };
                Ok(Piece { idx, block, old, merged, at })
            })();
            match step {
                Ok(piece) => plan.push(piece),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        fn bytes<'a>(p: &'a Piece, data: &'a [u8]) -> &'a [u8] {
            match &p.merged {
                Some(m) => m,
                None => &data[p.at..p.at + BLOCK],
            }
        }
        let mut written = 0;
        while written < plan.len() {
            let mut n = 1;
            while written + n < plan.len() && plan[written + n].block == plan[written].block + n as u64 {
                n += 1;
            }
            let run = &plan[written..written + n];
            let io = if run.iter().all(|p| p.merged.is_none()) {
                self.dev.write_at(&data[run[0].at..run[n - 1].at + BLOCK], run[0].block * B)
            } else {
                let mut joined = Vec::with_capacity(n * BLOCK);
                for p in run {
                    joined.extend_from_slice(bytes(p, data));
                }
                self.dev.write_at(&joined, run[0].block * B)
            };
            if let Err(e) = io {
                result = Err(e.into());
                break;
            }
            written += n;
        }
        // Blocks allocated for pieces that were not written go back.
        for p in &plan[written..] {
            if p.old.is_none_or(|o| o.block != p.block) {
                self.release(p.block);
            }
        }
        let single = plan.len() == 1;
        let mut new = Vec::with_capacity(written);
        for p in &plan[..written] {
            let b = bytes(p, data);
            let crc = crc32c(b);
            if let Ok(mut c) = self.cache.lock() {
                // A small write is likely read or partly rewritten next: keep it. A large
                // one would only push the cache's other blocks out; its blocks must still
                // not be served stale (in place rewrites).
                if single { c.insert(p.block, Arc::from(b)) } else { c.remove(p.block) }
            }
            new.push((p.idx, Ptr { block: p.block, crc }));
        }
        let mut done = 0;
        if written > 0 {
            if let Err(e) = self.remap(ino, first, first + written as u64, &new) {
                for p in &plan[..written] {
                    if p.old.is_none_or(|o| o.block != p.block) {
                        self.release(p.block);
                    }
                }
                return Err(e);
            }
            for p in &plan[..written] {
                match p.old {
                    None => i.blocks += 1,
                    Some(o) if o.block != p.block => self.release(o.block),
                    Some(_) => {}
                }
            }
            done = ((first + written as u64) * B).min(end) - offset;
        }
        let done = done as usize;
        if done > 0 {
            let now = Time::now();
            i.size = i.size.max(offset + done as u64);
            i.mtime = now;
            i.ctime = now;
            // Writing clears set-user-id (and set-group-id with group execute), as Linux does.
            if i.mode & 0o4000 != 0 || i.mode & 0o2010 == 0o2010 {
                i.mode &= !0o6000;
            }
            self.set_inode(ino, &i)?;
        }
        match result {
            Err(e) if done == 0 => Err(e),
            _ => Ok(done),
        }
    }

    /// Drops the data items of `ino` in block range `[from, to)`.
    /// Drops the data of `ino` in file blocks `[from, to)`, a bounded stretch at a time.
    fn drop_blocks(&mut self, ino: u64, i: &mut Inode, from: u64, to: u64) -> Result<()> {
        let mut at = from;
        while at < to {
            // Skip the holes: on to the next extent that ends past `at`.
            let Some((start, _)) = self.next_extent(ino, at)? else { break };
            at = at.max(start);
            if at >= to {
                break;
            }
            let stop = at.saturating_add(CHUNK).min(to);
            for (_, p) in self.remap(ino, at, stop, &[])? {
                self.release(p.block);
                i.blocks = i.blocks.saturating_sub(1);
            }
            at = stop;
        }
        Ok(())
    }

    /// The first extent of `ino` that maps a block at or after `idx`.
    fn next_extent(&self, ino: u64, idx: u64) -> Result<Option<(u64, Extent)>> {
        let lo = format::key_n(ino, kind::DATA, idx.saturating_sub(MAX_EXTENT - 1));
        let hi = format::key(ino, kind::DATA + 1, b"");
        for item in self.range(lo, hi)? {
            let (k, v) = item?;
            let start = format::split_key(&k).and_then(|(_, _, t)| format::tail_n(t));
            let start = start.ok_or_else(|| corrupt(format!("inode {ino}: bad data key")))?;
            let e = format::decode_data(&v)?;
            if start.saturating_add(e.len()) > idx {
                return Ok(Some((start, e)));
            }
        }
        Ok(None)
    }

    /// Zeroes `[from, to)` inside one block, if the block exists.
    fn zero_in_block(&mut self, ino: u64, i: &mut Inode, from: u64, to: u64) -> Result<()> {
        let idx = from / B;
        if let Some(p) = self.data_ptr(ino, idx)? {
            self.room_for(1, 0)?;
            let mut block = self.read_block(p)?.to_vec();
            block[(from % B) as usize..(to - idx * B) as usize].fill(0);
            if self.put_block(ino, idx, &block)? {
                i.blocks += 1;
            }
        }
        Ok(())
    }

    /// Sets the size: shrinking frees blocks past it and zeroes the tail of the last one;
    /// growing leaves a hole.
    pub fn truncate(&mut self, ino: u64, size: u64) -> Result<()> {
        self.writable()?;
        let mut i = self.inode(ino)?;
        if i.is_dir() {
            return Err(posix(libc::EISDIR, "is a directory"));
        }
        if size > i64::MAX as u64 {
            return Err(posix(libc::EFBIG, "beyond the largest file"));
        }
        if size < i.size {
            if !size.is_multiple_of(B) {
                let end = (size / B + 1) * B;
                self.zero_in_block(ino, &mut i, size, end)?;
            }
            self.drop_blocks(ino, &mut i, size.div_ceil(B), u64::MAX)?;
        }
        let now = Time::now();
        i.size = size;
        i.mtime = now;
        i.ctime = now;
        self.set_inode(ino, &i)?;
        Ok(())
    }

    /// Allocates `[offset, offset+len)` (zeroed blocks where there are holes); grows the
    /// size unless `keep_size`.
    pub fn allocate(&mut self, ino: u64, offset: u64, len: u64, keep_size: bool) -> Result<()> {
        self.writable()?;
        let mut i = self.inode(ino)?;
        let end = offset.checked_add(len).filter(|&e| e <= i64::MAX as u64).ok_or(posix(libc::EFBIG, "too large"))?;
        let first = offset / B;
        let last = end.div_ceil(B);
        // The holes, a bounded stretch at a time: counted first, so ENOSPC changes nothing.
        let holes = |v: &Volume, from: u64, to: u64| -> Result<Vec<(u64, u64)>> {
            let mut out = Vec::new();
            let mut at = from;
            for (start, e) in v.extents(ino, from, to)? {
                if start > at {
                    out.push((at, start));
                }
                at = at.max(start + e.len());
            }
            if at < to {
                out.push((at, to));
            }
            Ok(out)
        };
        // Counted over the file's extents, not the range (which may be far larger than the
        // image): past the space check, the range is at most free space plus the file.
        let mut mapped = 0;
        let lo = format::key_n(ino, kind::DATA, first.saturating_sub(MAX_EXTENT - 1));
        for item in self.range(lo, format::key_n(ino, kind::DATA, last))? {
            let (k, v) = item?;
            let start = format::split_key(&k).and_then(|(_, _, t)| format::tail_n(t)).unwrap_or(u64::MAX);
            let end = start.saturating_add(format::decode_data(&v)?.len());
            mapped += end.min(last).saturating_sub(start.max(first));
        }
        let missing = (last - first).saturating_sub(mapped);
        self.room_for(missing, (missing as usize).div_ceil(MAX_EXTENT as usize) * 1100)?;
        let zero = vec![0u8; BLOCK * MAX_EXTENT as usize];
        let crc = crc32c(&zero[..BLOCK]);
        for c in (first..last).step_by(CHUNK as usize) {
            for (from, to) in holes(self, c, (c + CHUNK).min(last))? {
                let mut idx = from;
                while idx < to {
                    let n = (to - idx).min(MAX_EXTENT);
                    self.seek_run(n);
                    let mut new: Vec<(u64, Ptr)> = Vec::with_capacity(n as usize);
                    for j in 0..n {
                        match self.alloc() {
                            Ok(block) => new.push((idx + j, Ptr { block, crc })),
                            Err(e) => {
                                for (_, p) in &new {
                                    self.release(p.block);
                                }
                                return Err(e);
                            }
                        }
                    }
                    // One write per run of consecutive blocks.
                    let mut k = 0;
                    while k < new.len() {
                        let mut m = 1;
                        while k + m < new.len() && new[k + m].1.block == new[k].1.block + m as u64 {
                            m += 1;
                        }
                        if let Err(e) = self.dev.write_at(&zero[..m * BLOCK], new[k].1.block * B) {
                            for (_, p) in &new {
                                self.release(p.block);
                            }
                            return Err(e.into());
                        }
                        k += m;
                    }
                    self.remap(ino, idx, idx + n, &new)?;
                    i.blocks += n;
                    idx += n;
                }
            }
        }
        if !keep_size && end > i.size {
            i.size = end;
        }
        i.ctime = Time::now();
        self.set_inode(ino, &i)?;
        Ok(())
    }

    /// Punches a hole: `[offset, offset+len)` reads as zeroes and whole blocks are freed.
    pub fn punch_hole(&mut self, ino: u64, offset: u64, len: u64) -> Result<()> {
        self.writable()?;
        let mut i = self.inode(ino)?;
        let end = offset.saturating_add(len).min(i.size.max(offset));
        if end <= offset {
            return Ok(());
        }
        let first_full = offset.div_ceil(B);
        let last_full = end / B;
        if first_full > last_full {
            self.zero_in_block(ino, &mut i, offset, end)?;
        } else {
            if !offset.is_multiple_of(B) {
                self.zero_in_block(ino, &mut i, offset, first_full * B)?;
            }
            if !end.is_multiple_of(B) {
                self.zero_in_block(ino, &mut i, last_full * B, end)?;
            }
            self.drop_blocks(ino, &mut i, first_full, last_full)?;
        }
        let now = Time::now();
        i.mtime = now;
        i.ctime = now;
        self.set_inode(ino, &i)?;
        Ok(())
    }

    /// SEEK_DATA (`data`) or SEEK_HOLE from `offset`.
    pub fn seek(&self, ino: u64, offset: u64, data: bool) -> Result<u64> {
        let i = self.inode(ino)?;
        if offset >= i.size {
            return Err(posix(libc::ENXIO, "at or past the end"));
        }
        let mut idx = offset / B;
        let lo = format::key_n(ino, kind::DATA, idx.saturating_sub(MAX_EXTENT - 1));
        let hi = format::key(ino, kind::DATA + 1, b"");
        for item in self.range(lo, hi)? {
            let (k, v) = item?;
            let start = format::split_key(&k).and_then(|(_, _, t)| format::tail_n(t)).unwrap_or(u64::MAX);
            let end = start.saturating_add(format::decode_data(&v)?.len());
            if end <= idx {
                continue;
            }
            if data {
                let o = start.max(idx).saturating_mul(B).max(offset);
                return if o >= i.size { Err(posix(libc::ENXIO, "no data after the offset")) } else { Ok(o) };
            }
            if start > idx {
                break;
            }
            idx = end;
        }
        if data {
            return Err(posix(libc::ENXIO, "no data after the offset"));
        }
        Ok((idx.saturating_mul(B)).max(offset).min(i.size))
    }

    // -- xattrs --------------------------------------------------------------------------

    /// An xattr's value.
    pub fn get_xattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        self.inode(ino)?;
        self.get(&format::key(ino, kind::XATTR, name))?.ok_or(posix(libc::ENODATA, "no such attribute"))
    }

    /// Sets an xattr; `create`: fail if present, `replace`: fail if absent.
    pub fn set_xattr(&mut self, ino: u64, name: &[u8], value: &[u8], create: bool, replace: bool) -> Result<()> {
        self.writable()?;
        let mut i = self.inode(ino)?;
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(posix(libc::ERANGE, "xattr names are 1 to 255 bytes"));
        }
        if value.len() > MAX_XATTR_VALUE {
            return Err(posix(libc::ENOSPC, "xattr values are at most 2048 bytes"));
        }
        let k = format::key(ino, kind::XATTR, name);
        let exists = self.get(&k)?.is_some();
        if create && exists {
            return Err(posix(libc::EEXIST, "the attribute exists"));
        }
        if replace && !exists {
            return Err(posix(libc::ENODATA, "no such attribute"));
        }
        self.room_for(0, name.len() + value.len() + 20)?;
        self.put(k, value.to_vec())?;
        i.ctime = Time::now();
        self.set_inode(ino, &i)?;
        Ok(())
    }

    /// Names of the xattrs of `ino`.
    pub fn list_xattr(&self, ino: u64) -> Result<Vec<Vec<u8>>> {
        self.inode(ino)?;
        let lo = format::key(ino, kind::XATTR, b"");
        let hi = format::key(ino, kind::XATTR + 1, b"");
        self.range(lo, hi)?.map(|item| item.map(|(k, _)| k[9..].to_vec())).collect()
    }

    /// Removes an xattr.
    pub fn remove_xattr(&mut self, ino: u64, name: &[u8]) -> Result<()> {
        self.writable()?;
        let mut i = self.inode(ino)?;
        self.del(&format::key(ino, kind::XATTR, name))?.ok_or(posix(libc::ENODATA, "no such attribute"))?;
        i.ctime = Time::now();
        self.set_inode(ino, &i)?;
        Ok(())
    }

    // -- space and commits ---------------------------------------------------------------

    /// Space, for statfs: free is what the next commit leaves (blocks freed since the last
    /// commit count once it is durable).
    pub fn space(&self) -> Space {
        Space {
            total: self.sb.total_blocks,
            free: self.free_blocks().saturating_sub(self.reserve()),
            inodes: self.inodes,
        }
    }

    /// Whether there are uncommitted changes.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Makes every change so far durable: the changed part of the tree, the space maps,
    /// flush, superblock, flush (docs/wfs-format.md, "Commit protocol").
    pub fn commit(&mut self) -> Result<()> {
        if !self.dirty || self.read_only {
            return Ok(());
        }
        let total = self.sb.total_blocks;
        // 1. The tree, copy-on-write, into blocks taken for this attempt only.
        let mut tree_blocks = Vec::new();
        let applied = {
            let (blocks, taken) = (&mut self.blocks, &mut tree_blocks);
            self.pager.apply(self.root, self.height, &self.overlay, &mut || {
                let b = blocks.take()?;
                taken.push(b);
                Ok(b)
            })
        };
        let applied = match applied {
            Ok(a) => a,
            Err(e) => {
                self.blocks.give_back(&tree_blocks);
                return Err(e);
            }
        };
        // 2. The new set of blocks in use, and the bitmap blocks it changes. A root replaced
        // by its only child was written by this attempt and is used by nothing.
        let mut undo = Undo { durable: None, pinned: None, removed: Vec::new(), added: Vec::new() };
        let mut changed = BTreeSet::new();
        let written: BTreeSet<u64> = tree_blocks.iter().copied().collect();
        let dropped: Vec<u64> = applied.dropped.iter().copied().filter(|b| !written.contains(b)).collect();
        let collapsed: Vec<u64> = applied.dropped.iter().copied().filter(|b| written.contains(b)).collect();
        let new_nodes: Vec<u64> = tree_blocks.iter().copied().filter(|b| !collapsed.contains(b)).collect();
        if self.rewalk {
            undo.durable = Some(self.durable.clone());
            undo.pinned = Some(self.pinned.clone());
            let (root, height) = (self.sb.root, self.sb.height);
            self.sb.root = applied.root;
            self.sb.height = applied.height;
            let walked = self.walk_all();
            self.sb.root = root;
            self.sb.height = height;
            if let Err(e) = walked {
                self.undo_commit(undo, &tree_blocks, &[]);
                return Err(e);
            }
            changed = (0..total.div_ceil(BITS) as usize).collect();
        } else {
            for b in self.blocks.freed.iter().copied().chain(dropped.iter().copied()) {
                if !self.pinned.contains(b) && self.durable.contains(b) {
                    undo.removed.push(b);
                }
            }
            for b in self.blocks.txn.iter().copied().chain(new_nodes.iter().copied()) {
                if !self.durable.contains(b) {
                    undo.added.push(b);
                }
            }
            for &b in &undo.removed {
                self.durable.remove(b);
                changed.insert((b / BITS) as usize);
            }
            for &b in &undo.added {
                self.durable.insert(b);
                changed.insert((b / BITS) as usize);
            }
        }
        // 3. The space maps, into blocks no tree references (not recorded in themselves).
        let old_maps = (self.space_map.clone(), self.pinned_map.clone());
        let mut map_blocks = Vec::new();
        let mut replaced = Vec::new();
        let maps = (|| -> Result<()> {
            let blocks = &mut self.blocks;
            let mut take = || {
                let b = blocks.take()?;
                map_blocks.push(b);
                Ok(b)
            };
            self.space_map.write(&*self.dev, &self.durable, total, &changed, &mut take, &mut replaced)?;
            if self.pinned_changed {
                if self.pinned.is_empty() {
                    replaced.extend(self.pinned_map.blocks());
                    self.pinned_map = MapOnDisk::default();
                } else {
                    let all = (0..total.div_ceil(BITS) as usize).collect();
                    self.pinned_map.write(&*self.dev, &self.pinned, total, &all, &mut take, &mut replaced)?;
                }
            }
            Ok(())
        })();
        if let Err(e) = maps {
            (self.space_map, self.pinned_map) = old_maps;
            self.undo_commit(undo, &tree_blocks, &map_blocks);
            return Err(e);
        }
        // 4. Flush, superblock, flush.
        let mut sb = self.sb.clone();
        sb.generation += 1;
        sb.root = applied.root;
        sb.height = applied.height;
        sb.time = Time::now().secs;
        sb.ro_compat |= format::RO_COMPAT_FREE_SPACE_TREE;
        sb.incompat |= format::INCOMPAT_EXTENTS;
        sb.space_map = self.space_map.root();
        sb.pinned_map = self.pinned_map.root();
        sb.inodes = self.inodes;
        sb.max_item = self.max_item;
        (sb.tree_nodes, sb.tree_bytes) = if self.rewalk {
            (self.tree_nodes, self.tree_bytes)
        } else {
            (
                (self.tree_nodes + new_nodes.len() as u64).saturating_sub(dropped.len() as u64),
                (self.tree_bytes + applied.leaf_bytes.0).saturating_sub(applied.leaf_bytes.1),
            )
        };
        let dev = self.dev.clone();
        if let Err(e) = dev.flush() {
            (self.space_map, self.pinned_map) = old_maps;
            self.undo_commit(undo, &tree_blocks, &map_blocks);
            return Err(e.into());
        }
        let step = (|| -> Result<()> {
            dev.write_at(&sb.encode(), (sb.generation % SLOTS) * B)?;
            dev.flush()?;
            Ok(())
        })();
        if let Err(e) = step {
            // The new superblock may or may not be on disk, so whatever this commit wrote
            // may be referenced by a durable tree now: nothing of it is reused or rewritten
            // in place until a later commit succeeds. The next one starts again from the
            // previous commit's tree and maps.
            tracing::error!("wfs: commit failed: {e}");
            (self.space_map, self.pinned_map) = old_maps;
            for &b in tree_blocks.iter().chain(&map_blocks) {
                self.blocks.freed.insert(b);
            }
            self.blocks.fresh.clear();
            self.restore_sets(undo);
            return Err(e);
        }
        // 5. Durable: what it stopped using is free now.
        let now_free: Vec<u64> = if self.rewalk {
            self.blocks.used.iter().filter(|&b| !self.durable.contains(b)).collect()
        } else {
            let freed = self.blocks.freed.iter().copied().chain(dropped.iter().copied());
            freed.filter(|&b| !self.pinned.contains(b)).chain(collapsed.iter().copied()).collect()
        };
        for b in now_free.into_iter().chain(replaced) {
            self.blocks.used.remove(b);
            self.pager.forget(b);
            if let Ok(mut c) = self.cache.lock() {
                c.remove(b);
            }
        }
        for b in self.space_map.blocks().chain(self.pinned_map.blocks()).collect::<Vec<_>>() {
            self.blocks.used.insert(b);
        }
        self.blocks.txn.clear();
        self.blocks.fresh.clear();
        self.blocks.freed.clear();
        self.tree_nodes = sb.tree_nodes;
        self.tree_bytes = sb.tree_bytes;
        self.root = applied.root;
        self.height = applied.height;
        self.sb = sb;
        self.overlay.clear();
        self.overlay_bytes = 0;
        self.overlay_leaf_bytes = 0;
        self.overlay_runs = 0;
        self.last_new_key.clear();
        self.dirty = false;
        self.rewalk = false;
        self.pinned_changed = false;
        Ok(())
    }

    /// Undoes a commit that failed before its superblock was written: the blocks it wrote
    /// go back, and the in-use sets are as before.
    fn undo_commit(&mut self, undo: Undo, tree_blocks: &[u64], map_blocks: &[u64]) {
        self.blocks.give_back(tree_blocks);
        self.blocks.give_back(map_blocks);
        self.restore_sets(undo);
    }

    fn restore_sets(&mut self, undo: Undo) {
        if let Some(d) = undo.durable {
            self.durable = d;
        }
        if let Some(p) = undo.pinned {
            self.pinned = p;
        }
        for b in undo.removed {
            self.durable.insert(b);
        }
        for b in undo.added {
            self.durable.remove(b);
        }
    }

    // -- snapshots -----------------------------------------------------------------------

    /// The snapshots.
    pub fn snapshots(&self) -> &[Snapshot] {
        &self.snapshots
    }

    fn write_snapshot_table(&mut self, snaps: Vec<Snapshot>) -> Result<()> {
        let ptr = if snaps.is_empty() {
            Ptr::default()
        } else {
            let b = format::encode_snapshots(&snaps);
            let block = self.alloc()?;
            self.dev.write_at(&b, block * B)?;
            Ptr { block, crc: crc32c(&b) }
        };
        if self.sb.snapshots.block != 0 {
            self.release(self.sb.snapshots.block);
        }
        self.sb.snapshots = ptr;
        self.snapshots = snaps;
        self.dirty = true;
        self.commit()
    }

    /// Takes a snapshot of the state after committing everything pending.
    pub fn snapshot_create(&mut self, name: &str) -> Result<()> {
        self.writable()?;
        if name.is_empty() || name.len() > MAX_SNAPSHOT_NAME || name.contains('/') || name.contains('\0') {
            return Err(posix(libc::EINVAL, "snapshot names are 1 to 64 bytes without '/'"));
        }
        if self.snapshots.iter().any(|s| s.name == name) {
            return Err(posix(libc::EEXIST, "a snapshot of that name exists"));
        }
        if self.snapshots.len() >= MAX_SNAPSHOTS {
            return Err(posix(libc::ENOSPC, "the snapshot table is full (40)"));
        }
        self.dirty = true;
        self.commit()?;
        // Everything the committed state uses is the new snapshot's or an older one's, but
        // for the superblock slots and the snapshot table (which the next commit replaces).
        let mut pinned = self.durable.clone();
        for b in 0..SLOTS {
            pinned.remove(b);
        }
        pinned.remove(self.sb.snapshots.block);
        self.pinned = pinned;
        self.pinned_changed = true;
        let mut snaps = self.snapshots.clone();
        snaps.push(Snapshot {
            name: name.to_string(),
            root: self.sb.root,
            height: self.sb.height,
            generation: self.sb.generation,
            created: Time::now().secs,
        });
        self.write_snapshot_table(snaps)
    }

    /// Deletes a snapshot; its blocks are free once that commit is durable.
    pub fn snapshot_delete(&mut self, name: &str) -> Result<()> {
        self.writable()?;
        let mut snaps = self.snapshots.clone();
        let before = snaps.len();
        snaps.retain(|s| s.name != name);
        if snaps.len() == before {
            return Err(posix(libc::ENOENT, "no snapshot of that name"));
        }
        // What only that snapshot used is found by walking what is left, at the commit.
        self.rewalk = true;
        self.write_snapshot_table(snaps)
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        if let Err(e) = self.commit() {
            tracing::error!("wfs: the last commit at close failed: {e}");
        }
    }
}

/// Regular file mode bits.
pub const FILE: u32 = S_IFREG;

/// What a failed commit puts back.
struct Undo {
    durable: Option<BlockSet>,
    pinned: Option<BlockSet>,
    removed: Vec<u64>,
    added: Vec<u64>,
}

impl Volume {
    /// Tree nodes in the cache now, and what it may hold (for tests of bounded memory).
    pub fn cached_nodes(&self) -> usize {
        self.pager.cached()
    }
    /// Bytes of uncommitted changes held.
    pub fn pending_bytes(&self) -> u64 {
        self.overlay_bytes
    }
}
