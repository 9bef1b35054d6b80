//! The on-disk structures of docs/wfs-format.md: superblock, keys, inodes, tree nodes and
//! the snapshot table, with encoders and checked decoders (nothing read from disk is
//! trusted: every length and count is checked against the block before use).

use super::crc::crc32c;
use super::error::{Error, Result};

/// Block size in bytes.
pub const BLOCK: usize = 4096;
/// Superblock slots (blocks 0..SLOTS).
pub const SLOTS: u64 = 4;
/// The superblock magic.
pub const MAGIC: &[u8; 8] = b"WFS\0v1\0\0";
/// The format version this engine reads and writes.
pub const VERSION: u32 = 1;
/// Incompatible feature `extents`: a DATA item may map a run of up to [`MAX_EXTENT`] file
/// blocks to as many consecutive disk blocks, with a checksum for each. A reader that does
/// not know it would take such an item for damage.
pub const INCOMPAT_EXTENTS: u32 = 1;
/// Incompatible features this engine knows.
pub const INCOMPAT_KNOWN: u32 = INCOMPAT_EXTENTS;
/// The most blocks one DATA item maps (1 MiB, the largest FUSE write).
pub const MAX_EXTENT: u64 = 256;
/// Read-only-compatible feature `free-space-tree`: the superblock points at a space map (a
/// copy-on-write radix tree of bitmaps) that says which blocks are in use, so open reads it
/// instead of walking every tree. An engine that does not know it would not keep the map up
/// to date, so it may only read such an image.
pub const RO_COMPAT_FREE_SPACE_TREE: u32 = 1;
/// Read-only-compatible features this engine knows.
pub const RO_COMPAT_KNOWN: u32 = RO_COMPAT_FREE_SPACE_TREE;
/// The root directory's inode number.
pub const ROOT_INO: u64 = 1;
/// Longest name in a directory.
pub const MAX_NAME: usize = 255;
/// Largest xattr value.
pub const MAX_XATTR_VALUE: usize = 2048;
/// Longest snapshot name.
pub const MAX_SNAPSHOT_NAME: usize = 64;
/// Most snapshots the table holds.
pub const MAX_SNAPSHOTS: usize = 40;
/// Deepest tree a reader follows.
pub const MAX_HEIGHT: u8 = 16;

const NODE_MAGIC: &[u8; 4] = b"WFSn";
const SNAP_MAGIC: &[u8; 4] = b"WFSs";
const MAP_MAGIC: &[u8; 4] = b"WFSm";
/// Child pointers in one space map index node.
pub const MAP_FANOUT: usize = (BLOCK - NODE_HEADER) / 12;
const NODE_HEADER: usize = 7;

/// Item kinds (the byte after the inode number in a key).
pub mod kind {
    /// The inode itself.
    pub const INODE: u8 = 1;
    /// A directory entry by name.
    pub const DIRENT: u8 = 2;
    /// A directory entry by readdir index.
    pub const DIRINDEX: u8 = 3;
    /// An extended attribute.
    pub const XATTR: u8 = 4;
    /// A file data block.
    pub const DATA: u8 = 5;
    /// An unlinked inode still open (key inode 0).
    pub const ORPHAN: u8 = 6;
}

/// A block pointer: where, and the CRC-32C of what is there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ptr {
    /// Block number.
    pub block: u64,
    /// Checksum of the block's 4096 bytes.
    pub crc: u32,
}

/// Little-endian cursor over bytes from disk: every read is bounds-checked.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A cursor over `buf`; `what` names the structure in errors.
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }
    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or_else(|| Error::Corrupt(format!("{} is truncated", self.what)))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0; N];
        a.copy_from_slice(self.bytes(N)?);
        Ok(a)
    }
    /// A byte.
    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.arr::<1>()?[0])
    }
    /// A u16.
    pub fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.arr()?))
    }
    /// A u32.
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr()?))
    }
    /// A u64.
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr()?))
    }
    /// An i64.
    pub fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.arr()?))
    }
    /// Whether everything was read.
    pub fn at_end(&self) -> bool {
        self.pos == self.buf.len()
    }
}

/// The superblock of one commit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Superblock {
    /// Incompatible feature flags.
    pub incompat: u32,
    /// Read-only-compatible feature flags.
    pub ro_compat: u32,
    /// Commit number.
    pub generation: u64,
    /// Blocks in the image.
    pub total_blocks: u64,
    /// Next inode number.
    pub next_ino: u64,
    /// Metadata tree root.
    pub root: Ptr,
    /// Tree height (1: the root is a leaf).
    pub height: u8,
    /// Snapshot table (block 0: none).
    pub snapshots: Ptr,
    /// Commit time.
    pub time: i64,
    /// The space map: which blocks the committed state uses (`free-space-tree`; block 0:
    /// none).
    pub space_map: Ptr,
    /// The pinned map: which blocks snapshots use (`free-space-tree`; block 0: none).
    pub pinned_map: Ptr,
    /// Inodes in the live tree (`free-space-tree`).
    pub inodes: u64,
    /// Nodes of the live tree (`free-space-tree`).
    pub tree_nodes: u64,
    /// Bytes of the items in the live tree's leaves (`free-space-tree`).
    pub tree_bytes: u64,
    /// At least the size of the largest leaf item the live tree ever held
    /// (`free-space-tree`).
    pub max_item: u64,
}

impl Superblock {
    /// The 4096 bytes of this superblock.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(BLOCK);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&self.incompat.to_le_bytes());
        b.extend_from_slice(&self.ro_compat.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&self.generation.to_le_bytes());
        b.extend_from_slice(&self.total_blocks.to_le_bytes());
        b.extend_from_slice(&self.next_ino.to_le_bytes());
        b.extend_from_slice(&self.root.block.to_le_bytes());
        b.extend_from_slice(&self.root.crc.to_le_bytes());
        b.extend_from_slice(&self.snapshots.block.to_le_bytes());
        b.extend_from_slice(&self.snapshots.crc.to_le_bytes());
        b.extend_from_slice(&self.time.to_le_bytes());
        b.push(self.height);
        b.resize(88, 0);
        for p in [self.space_map, self.pinned_map] {
            b.extend_from_slice(&p.block.to_le_bytes());
            b.extend_from_slice(&p.crc.to_le_bytes());
        }
        b.extend_from_slice(&self.inodes.to_le_bytes());
        b.extend_from_slice(&self.tree_nodes.to_le_bytes());
        b.extend_from_slice(&self.tree_bytes.to_le_bytes());
        b.extend_from_slice(&self.max_item.to_le_bytes());
        b.resize(BLOCK - 4, 0);
        let crc = crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a slot; `Ok(None)` for a slot that is empty, torn or not WFS.
    pub fn decode(b: &[u8]) -> Result<Option<Superblock>> {
        if b.len() != BLOCK || &b[..8] != MAGIC {
            return Ok(None);
        }
        let stored = u32::from_le_bytes([b[BLOCK - 4], b[BLOCK - 3], b[BLOCK - 2], b[BLOCK - 1]]);
        if crc32c(&b[..BLOCK - 4]) != stored {
            return Ok(None);
        }
        let mut r = Reader::new(&b[8..BLOCK - 4], "superblock");
        let version = r.u32()?;
        let incompat = r.u32()?;
        let ro_compat = r.u32()?;
        let _compat = r.u32()?;
        if version != VERSION {
            return Err(Error::Format(format!("format version {version}; this engine reads version {VERSION}")));
        }
        if incompat & !INCOMPAT_KNOWN != 0 {
            return Err(Error::Format(format!("unknown incompatible features {incompat:#x}")));
        }
        let mut sb = Superblock {
            incompat,
            ro_compat,
            generation: r.u64()?,
            total_blocks: r.u64()?,
            next_ino: r.u64()?,
            root: Ptr { block: r.u64()?, crc: r.u32()? },
            snapshots: Ptr { block: r.u64()?, crc: r.u32()? },
            time: r.i64()?,
            height: r.u8()?,
            ..Superblock::default()
        };
        // Offsets 81..88 are zero.
        r.bytes(7)?;
        if ro_compat & RO_COMPAT_FREE_SPACE_TREE != 0 {
            sb.space_map = Ptr { block: r.u64()?, crc: r.u32()? };
            sb.pinned_map = Ptr { block: r.u64()?, crc: r.u32()? };
            sb.inodes = r.u64()?;
            sb.tree_nodes = r.u64()?;
            sb.tree_bytes = r.u64()?;
            sb.max_item = r.u64()?;
            if sb.space_map.block == 0 {
                return Err(Error::Corrupt("superblock has the free-space-tree feature but no space map".into()));
            }
        }
        if sb.height == 0 || sb.height > MAX_HEIGHT {
            return Err(Error::Corrupt(format!("superblock tree height {}", sb.height)));
        }
        Ok(Some(sb))
    }
}

/// A key: inode (big-endian), kind, tail.
pub fn key(ino: u64, kind: u8, tail: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + tail.len());
    k.extend_from_slice(&ino.to_be_bytes());
    k.push(kind);
    k.extend_from_slice(tail);
    k
}

/// A key whose tail is a big-endian number.
pub fn key_n(ino: u64, kind: u8, n: u64) -> Vec<u8> {
    key(ino, kind, &n.to_be_bytes())
}

/// Splits a key into (inode, kind, tail).
pub fn split_key(k: &[u8]) -> Option<(u64, u8, &[u8])> {
    if k.len() < 9 {
        return None;
    }
    let ino = u64::from_be_bytes(k[..8].try_into().ok()?);
    Some((ino, k[8], &k[9..]))
}

/// The big-endian number in a key's tail.
pub fn tail_n(tail: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(tail.try_into().ok()?))
}

/// A time: seconds and nanoseconds since the epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Time {
    /// Seconds.
    pub secs: i64,
    /// Nanoseconds, below 1e9.
    pub nanos: u32,
}

impl Time {
    /// Now.
    pub fn now() -> Time {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Time { secs: d.as_secs() as i64, nanos: d.subsec_nanos() },
            Err(_) => Time::default(),
        }
    }
}

/// An inode.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inode {
    /// Type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Links.
    pub nlink: u32,
    /// Size in bytes.
    pub size: u64,
    /// DATA items (allocated blocks).
    pub blocks: u64,
    /// Device number.
    pub rdev: u32,
    /// Access time.
    pub atime: Time,
    /// Modification time.
    pub mtime: Time,
    /// Change time.
    pub ctime: Time,
    /// Creation time.
    pub crtime: Time,
    /// Directories: the parent.
    pub parent: u64,
    /// Directories: the next readdir index.
    pub next_index: u64,
}

/// `S_IFMT`.
pub const S_IFMT: u32 = 0o170000;
/// A directory.
pub const S_IFDIR: u32 = 0o040000;
/// A regular file.
pub const S_IFREG: u32 = 0o100000;
/// A symlink.
pub const S_IFLNK: u32 = 0o120000;

impl Inode {
    /// Whether it is a directory.
    pub fn is_dir(&self) -> bool {
        self.mode & S_IFMT == S_IFDIR
    }
    /// The value bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(100);
        for v in [self.mode, self.uid, self.gid, self.nlink] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&self.size.to_le_bytes());
        b.extend_from_slice(&self.blocks.to_le_bytes());
        b.extend_from_slice(&self.rdev.to_le_bytes());
        for t in [self.atime, self.mtime, self.ctime, self.crtime] {
            b.extend_from_slice(&t.secs.to_le_bytes());
            b.extend_from_slice(&t.nanos.to_le_bytes());
        }
        b.extend_from_slice(&self.parent.to_le_bytes());
        b.extend_from_slice(&self.next_index.to_le_bytes());
        b
    }
    /// Decodes an inode value.
    pub fn decode(v: &[u8]) -> Result<Inode> {
        let mut r = Reader::new(v, "inode");
        let mut i = Inode {
            mode: r.u32()?,
            uid: r.u32()?,
            gid: r.u32()?,
            nlink: r.u32()?,
            size: r.u64()?,
            blocks: r.u64()?,
            rdev: r.u32()?,
            ..Inode::default()
        };
        let mut t = [Time::default(); 4];
        for slot in &mut t {
            let secs = r.i64()?;
            let nanos = r.u32()?;
            if nanos >= 1_000_000_000 {
                return Err(Error::Corrupt("inode time with nanoseconds beyond a second".into()));
            }
            *slot = Time { secs, nanos };
        }
        [i.atime, i.mtime, i.ctime, i.crtime] = t;
        i.parent = r.u64()?;
        i.next_index = r.u64()?;
        if !r.at_end() {
            return Err(Error::Corrupt("inode value has trailing bytes".into()));
        }
        Ok(i)
    }
}

/// A directory entry's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dirent {
    /// The inode it names.
    pub ino: u64,
    /// `mode >> 12` of that inode.
    pub kind: u8,
    /// Its readdir index.
    pub index: u64,
}

impl Dirent {
    /// The value bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(17);
        b.extend_from_slice(&self.ino.to_le_bytes());
        b.push(self.kind);
        b.extend_from_slice(&self.index.to_le_bytes());
        b
    }
    /// Decodes a dirent value.
    pub fn decode(v: &[u8]) -> Result<Dirent> {
        let mut r = Reader::new(v, "directory entry");
        let d = Dirent { ino: r.u64()?, kind: r.u8()?, index: r.u64()? };
        if !r.at_end() {
            return Err(Error::Corrupt("directory entry has trailing bytes".into()));
        }
        Ok(d)
    }
}

/// A DATA value: the block and its checksum.
pub fn encode_data(e: &Extent) -> Vec<u8> {
    let mut b = Vec::with_capacity(10 + 4 * e.crcs.len());
    b.extend_from_slice(&e.block.to_le_bytes());
    if let [crc] = e.crcs[..] {
        // One block: the 12-byte form every version reads.
        b.extend_from_slice(&crc.to_le_bytes());
        return b;
    }
    b.extend_from_slice(&(e.crcs.len() as u16).to_le_bytes());
    for crc in &e.crcs {
        b.extend_from_slice(&crc.to_le_bytes());
    }
    b
}

/// Decodes a DATA value: one block (`block u64, crc u32`) or, with `extents`, a run
/// (`block u64, count u16`, then `count` checksums; 2 to [`MAX_EXTENT`] blocks).
pub fn decode_data(v: &[u8]) -> Result<Extent> {
    let mut r = Reader::new(v, "data pointer");
    let block = r.u64()?;
    let crcs = if v.len() == 12 {
        vec![r.u32()?]
    } else {
        let count = u64::from(r.u16()?);
        if !(2..=MAX_EXTENT).contains(&count) {
            return Err(Error::Corrupt(format!("an extent of {count} blocks")));
        }
        (0..count).map(|_| r.u32()).collect::<Result<_>>()?
    };
    if !r.at_end() {
        return Err(Error::Corrupt("data pointer has trailing bytes".into()));
    }
    if block.checked_add(crcs.len() as u64).is_none() {
        return Err(Error::Corrupt(format!("an extent at block {block} runs past the largest block number")));
    }
    Ok(Extent { block, crcs })
}

/// A DATA item's value: file blocks `start..start + crcs.len()` (the start is in the key)
/// are disk blocks `block..`, with the checksum of each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extent {
    /// The first disk block.
    pub block: u64,
    /// The checksum of each block.
    pub crcs: Vec<u32>,
}

impl Extent {
    /// Blocks it maps.
    pub fn len(&self) -> u64 {
        self.crcs.len() as u64
    }
    /// Whether it maps none (never stored).
    pub fn is_empty(&self) -> bool {
        self.crcs.is_empty()
    }
    /// Its `i`th block.
    pub fn ptr(&self, i: u64) -> Ptr {
        Ptr { block: self.block + i, crc: self.crcs[i as usize] }
    }
}

/// A decoded tree node.
pub enum Node {
    /// Items.
    Leaf(Vec<(Vec<u8>, Vec<u8>)>),
    /// (first key, child) pairs, at `level`.
    Internal(u8, Vec<(Vec<u8>, Ptr)>),
}

/// Space for items in a node.
pub const NODE_ROOM: usize = BLOCK - NODE_HEADER;

/// The encoded size of a leaf item.
pub fn leaf_item_size(k: &[u8], v: &[u8]) -> usize {
    4 + k.len() + v.len()
}

/// The encoded size of an internal item.
pub fn internal_item_size(k: &[u8]) -> usize {
    2 + k.len() + 12
}

fn node_header(level: u8, count: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(BLOCK);
    b.extend_from_slice(NODE_MAGIC);
    b.push(level);
    b.extend_from_slice(&(count as u16).to_le_bytes());
    b
}

/// A leaf block.
pub fn encode_leaf(items: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut b = node_header(0, items.len());
    for (k, v) in items {
        b.extend_from_slice(&(k.len() as u16).to_le_bytes());
        b.extend_from_slice(&(v.len() as u16).to_le_bytes());
        b.extend_from_slice(k);
        b.extend_from_slice(v);
    }
    b.resize(BLOCK, 0);
    b
}

/// An internal node block.
pub fn encode_internal(level: u8, items: &[(Vec<u8>, Ptr)]) -> Vec<u8> {
    let mut b = node_header(level, items.len());
    for (k, p) in items {
        b.extend_from_slice(&(k.len() as u16).to_le_bytes());
        b.extend_from_slice(k);
        b.extend_from_slice(&p.block.to_le_bytes());
        b.extend_from_slice(&p.crc.to_le_bytes());
    }
    b.resize(BLOCK, 0);
    b
}

/// Decodes a node block (already checksum-verified).
pub fn decode_node(b: &[u8]) -> Result<Node> {
    let mut r = Reader::new(b, "tree node");
    if r.bytes(4)? != NODE_MAGIC {
        return Err(Error::Corrupt("tree node without its magic".into()));
    }
    let level = r.u8()?;
    let count = r.u16()? as usize;
    if level == 0 {
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            let kl = r.u16()? as usize;
            let vl = r.u16()? as usize;
            items.push((r.bytes(kl)?.to_vec(), r.bytes(vl)?.to_vec()));
        }
        Ok(Node::Leaf(items))
    } else {
        if level >= MAX_HEIGHT {
            return Err(Error::Corrupt(format!("tree node level {level}")));
        }
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            let kl = r.u16()? as usize;
            let k = r.bytes(kl)?.to_vec();
            items.push((k, Ptr { block: r.u64()?, crc: r.u32()? }));
        }
        Ok(Node::Internal(level, items))
    }
}

/// A space map index node: `level` (1: its children are bitmap blocks) and child pointers
/// (block 0: a subtree of zeroes).
pub fn encode_map_node(level: u8, children: &[Ptr]) -> Vec<u8> {
    let mut b = Vec::with_capacity(BLOCK);
    b.extend_from_slice(MAP_MAGIC);
    b.push(level);
    b.extend_from_slice(&(children.len() as u16).to_le_bytes());
    for p in children {
        b.extend_from_slice(&p.block.to_le_bytes());
        b.extend_from_slice(&p.crc.to_le_bytes());
    }
    b.resize(BLOCK, 0);
    b
}

/// Decodes a space map index node (already checksum-verified): its level and children.
pub fn decode_map_node(b: &[u8]) -> Result<(u8, Vec<Ptr>)> {
    let mut r = Reader::new(b, "space map node");
    if r.bytes(4)? != MAP_MAGIC {
        return Err(Error::Corrupt("space map node without its magic".into()));
    }
    let level = r.u8()?;
    let count = r.u16()? as usize;
    if count > MAP_FANOUT {
        return Err(Error::Corrupt(format!("space map node with {count} children")));
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        out.push(Ptr { block: r.u64()?, crc: r.u32()? });
    }
    Ok((level, out))
}

/// A snapshot: a named extra root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Its name.
    pub name: String,
    /// Tree root.
    pub root: Ptr,
    /// Tree height.
    pub height: u8,
    /// The commit it was taken at.
    pub generation: u64,
    /// When it was taken.
    pub created: i64,
}

/// The snapshot table block.
pub fn encode_snapshots(snaps: &[Snapshot]) -> Vec<u8> {
    let mut b = Vec::with_capacity(BLOCK);
    b.extend_from_slice(SNAP_MAGIC);
    b.extend_from_slice(&(snaps.len() as u16).to_le_bytes());
    for s in snaps {
        b.push(s.name.len() as u8);
        b.extend_from_slice(s.name.as_bytes());
        b.extend_from_slice(&s.root.block.to_le_bytes());
        b.extend_from_slice(&s.root.crc.to_le_bytes());
        b.push(s.height);
        b.extend_from_slice(&s.generation.to_le_bytes());
        b.extend_from_slice(&s.created.to_le_bytes());
    }
    b.resize(BLOCK, 0);
    b
}

/// Decodes the snapshot table (already checksum-verified).
pub fn decode_snapshots(b: &[u8]) -> Result<Vec<Snapshot>> {
    let mut r = Reader::new(b, "snapshot table");
    if r.bytes(4)? != SNAP_MAGIC {
        return Err(Error::Corrupt("snapshot table without its magic".into()));
    }
    let count = r.u16()? as usize;
    if count > MAX_SNAPSHOTS {
        return Err(Error::Corrupt(format!("snapshot table lists {count} snapshots")));
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let nl = r.u8()? as usize;
        let name = String::from_utf8(r.bytes(nl)?.to_vec())
            .map_err(|_| Error::Corrupt("snapshot name is not UTF-8".into()))?;
        // Only what snapshot_create accepts was ever written (found by fuzzing: longer
        // names decoded, which the tools could then neither show nor delete by name).
        if name.is_empty() || name.len() > MAX_SNAPSHOT_NAME || name.contains(['/', '\0']) {
            return Err(Error::Corrupt(format!("snapshot name {name:?} is not one wfs writes")));
        }
        let root = Ptr { block: r.u64()?, crc: r.u32()? };
        let height = r.u8()?;
        if height == 0 || height > MAX_HEIGHT {
            return Err(Error::Corrupt(format!("snapshot {name:?} has tree height {height}")));
        }
        out.push(Snapshot { name, root, height, generation: r.u64()?, created: r.i64()? });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_round_trips_and_a_flipped_bit_voids_it() {
        let sb = Superblock {
            generation: 7,
            total_blocks: 100,
            next_ino: 9,
            root: Ptr { block: 5, crc: 3 },
            height: 2,
            time: 1,
            ..Superblock::default()
        };
        let mut b = sb.encode();
        assert_eq!(Superblock::decode(&b).unwrap(), Some(sb));
        b[30] ^= 1;
        assert_eq!(Superblock::decode(&b).unwrap(), None);
    }

    #[test]
    fn truncated_nodes_are_corrupt_not_a_panic() {
        let mut b = encode_leaf(&[(b"k", b"v")]);
        b[5] = 0xff; // claims 255+ items
        b[6] = 0xff;
        assert!(matches!(decode_node(&b), Err(Error::Corrupt(_))));
        assert!(Inode::decode(&[1, 2, 3]).is_err());
    }

    #[test]
    fn snapshot_tables_with_names_wfs_never_writes_are_corrupt() {
        let snap = |name: &str| Snapshot {
            name: name.into(),
            root: Ptr { block: 5, crc: 1 },
            height: 1,
            generation: 2,
            created: 3,
        };
        assert_eq!(decode_snapshots(&encode_snapshots(&[snap("monday")])).unwrap(), vec![snap("monday")]);
        for bad in ["", "a/b", "nul\0", &"x".repeat(MAX_SNAPSHOT_NAME + 1)] {
            assert!(matches!(decode_snapshots(&encode_snapshots(&[snap(bad)])), Err(Error::Corrupt(_))), "{bad:?}");
        }
    }

    #[test]
    fn keys_sort_by_inode_then_kind_then_number() {
        assert!(key_n(1, kind::DATA, 255) < key_n(1, kind::DATA, 256));
        assert!(key_n(1, kind::DATA, u64::MAX) < key(2, kind::INODE, b""));
    }
}
