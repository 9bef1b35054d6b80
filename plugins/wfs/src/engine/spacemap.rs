//! The space map (read-only-compatible feature `free-space-tree`, docs/wfs-format.md): which
//! blocks the committed state uses, on disk as a copy-on-write radix tree of bitmap blocks.
//! Open reads it (32 KiB per GiB of image) instead of walking every tree, and a commit
//! rewrites only the bitmap blocks whose bits changed and the index nodes above them.
//!
//! The map never records its own blocks: they are reachable from the superblock, so open
//! marks them in use after reading them, and writing a new map changes no bit of it (no
//! fixpoint to chase).

use std::collections::BTreeSet;

use super::crc::crc32c;
use super::device::Device;
use super::error::{Error, Result};
use super::format::{self, BLOCK, MAP_FANOUT, Ptr};
use super::tree::read_verified;

/// Blocks one bitmap block covers.
pub const BITS: u64 = (BLOCK * 8) as u64;
const WORDS: usize = BLOCK / 8;

/// A set of block numbers as a bitmap.
#[derive(Clone, Debug, Default)]
pub struct BlockSet {
    words: Vec<u64>,
    count: u64,
}

impl BlockSet {
    /// An empty set over `n` blocks.
    pub fn new(n: u64) -> Self {
        BlockSet { words: vec![0; n.div_ceil(64) as usize], count: 0 }
    }
    /// Whether `b` is in it.
    pub fn contains(&self, b: u64) -> bool {
        self.words.get((b / 64) as usize).is_some_and(|w| w & (1 << (b % 64)) != 0)
    }
    /// Adds `b`; false if it was there already (or is out of range).
    pub fn insert(&mut self, b: u64) -> bool {
        match self.words.get_mut((b / 64) as usize) {
            Some(w) if *w & (1 << (b % 64)) == 0 => {
                *w |= 1 << (b % 64);
                self.count += 1;
                true
            }
            _ => false,
        }
    }
    /// Removes `b`.
    pub fn remove(&mut self, b: u64) {
        if let Some(w) = self.words.get_mut((b / 64) as usize)
            && *w & (1 << (b % 64)) != 0
        {
            *w &= !(1 << (b % 64));
            self.count -= 1;
        }
    }
    /// The first block in `[from, to)` not in the set, a word at a time.
    pub fn first_clear(&self, from: u64, to: u64) -> Option<u64> {
        let mut w = (from / 64) as usize;
        let mut mask = !0u64 << (from % 64);
        while (w as u64) * 64 < to {
            let free = !*self.words.get(w)? & mask;
            if free != 0 {
                let b = w as u64 * 64 + u64::from(free.trailing_zeros());
                return (b < to).then_some(b);
            }
            w += 1;
            mask = !0;
        }
        None
    }
    /// The first run of at least `len` consecutive blocks not in the set that starts in
    /// `[from, to)` and ends by `to`.
    pub fn first_clear_run(&self, from: u64, to: u64, len: u64) -> Option<u64> {
        let mut b = from;
        while b < to {
            let start = self.first_clear(b, to)?;
            let mut end = start + 1;
            while end < to && end - start < len && !self.contains(end) {
                end += 1;
            }
            if end - start >= len {
                return Some(start);
            }
            b = end + 1;
        }
        None
    }
    /// How many.
    pub fn len(&self) -> u64 {
        self.count
    }
    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    /// Removes everything.
    pub fn clear(&mut self) {
        if self.count > 0 {
            self.words.fill(0);
            self.count = 0;
        }
    }
}

impl BlockSet {
    /// Bitmap block `leaf` as stored (bit `b` is bit `b % 8` of byte `b / 8`).
    fn leaf_bytes(&self, leaf: usize) -> Vec<u8> {
        let mut out = vec![0u8; BLOCK];
        let words = self.words.iter().skip(leaf * WORDS).take(WORDS);
        for (chunk, w) in out.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Sets the bits of bitmap block `leaf` from its stored bytes; bits past `total` are
    /// ignored.
    fn load_leaf(&mut self, leaf: usize, bytes: &[u8], total: u64) {
        for (i, chunk) in bytes.chunks_exact(8).enumerate() {
            let w = leaf * WORDS + i;
            let Some(slot) = self.words.get_mut(w) else { break };
            let mut word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
            let first = w as u64 * 64;
            if first + 64 > total {
                word &= (1u64 << total.saturating_sub(first).min(63)) - 1;
            }
            self.count = self.count - u64::from(slot.count_ones()) + u64::from(word.count_ones());
            *slot = word;
        }
    }

    /// Every block in the set, in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros();
                w &= w - 1;
                Some(i as u64 * 64 + u64::from(bit))
            })
        })
    }
}

/// The shape of a map over `total` blocks: how many pointers each level has (0: bitmap
/// blocks; the last level has one, the root).
fn shape(total: u64) -> Vec<usize> {
    let mut levels = vec![total.div_ceil(BITS).max(1) as usize];
    loop {
        let up = levels.last().expect("one level").div_ceil(MAP_FANOUT);
        levels.push(up);
        if up == 1 {
            return levels;
        }
    }
}

/// Where a map is on disk: its pointers level by level (0: bitmap blocks; the last level
/// holds the root).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapOnDisk {
    levels: Vec<Vec<Ptr>>,
}

impl MapOnDisk {
    /// The root (block 0: no map written yet).
    pub fn root(&self) -> Ptr {
        self.levels.last().and_then(|l| l.first()).copied().unwrap_or_default()
    }

    /// The blocks of the map itself.
    pub fn blocks(&self) -> impl Iterator<Item = u64> + '_ {
        self.levels.iter().flatten().map(|p| p.block).filter(|&b| b != 0)
    }

    /// How many blocks a commit may write for it when `changed` bits change: the bitmap
    /// blocks holding them and every index node above, at most.
    pub fn write_bound(total: u64, changed: u64) -> u64 {
        let s = shape(total);
        let leaves = (s[0] as u64).min(changed.max(1));
        leaves + s[1..].iter().map(|&n| (n as u64).min(leaves)).sum::<u64>()
    }

    /// Reads the map at `root` over `total` blocks into `set` (cleared first).
    pub fn read(dev: &dyn Device, root: Ptr, total: u64, set: &mut BlockSet) -> Result<MapOnDisk> {
        set.clear();
        let s = shape(total);
        let mut levels: Vec<Vec<Ptr>> = s.iter().map(|&n| vec![Ptr::default(); n]).collect();
        let top = s.len() - 1;
        levels[top][0] = root;
        for level in (1..=top).rev() {
            for j in 0..s[level] {
                let p = levels[level][j];
                if p.block == 0 {
                    continue;
                }
                let (l, children) = format::decode_map_node(&read_verified(dev, p, total)?)?;
                let want = (s[level - 1] - j * MAP_FANOUT).min(MAP_FANOUT);
                if usize::from(l) != level || children.len() != want {
                    return Err(Error::Corrupt(format!(
                        "space map node at block {}: level {l} with {} children where level {level} with {want} belongs",
                        p.block,
                        children.len()
                    )));
                }
                levels[level - 1][j * MAP_FANOUT..j * MAP_FANOUT + want].copy_from_slice(&children);
            }
        }
        for (leaf, p) in levels[0].iter().enumerate() {
            if p.block != 0 {
                set.load_leaf(leaf, &read_verified(dev, *p, total)?, total);
            }
        }
        Ok(MapOnDisk { levels })
    }

    /// Writes `set` over `total` blocks copy-on-write: the bitmap blocks of `changed` (all of
    /// them when nothing was written yet) into blocks from `alloc`, then the index nodes above
    /// them. The blocks it replaces are pushed to `replaced`.
    pub fn write(
        &mut self,
        dev: &dyn Device,
        set: &BlockSet,
        total: u64,
        changed: &BTreeSet<usize>,
        alloc: &mut dyn FnMut() -> Result<u64>,
        replaced: &mut Vec<u64>,
    ) -> Result<()> {
        let s = shape(total);
        let mut dirty: BTreeSet<usize> = changed.iter().copied().filter(|&l| l < s[0]).collect();
        if self.levels.len() != s.len() || self.levels.iter().zip(&s).any(|(l, &n)| l.len() != n) {
            self.levels = s.iter().map(|&n| vec![Ptr::default(); n]).collect();
            dirty = (0..s[0]).collect();
        }
        let mut put = |bytes: Vec<u8>, slot: &mut Ptr| -> Result<()> {
            let block = alloc()?;
            dev.write_at(&bytes, block * BLOCK as u64)?;
            if slot.block != 0 {
                replaced.push(slot.block);
            }
            *slot = Ptr { block, crc: crc32c(&bytes) };
            Ok(())
        };
        for &leaf in &dirty {
            put(set.leaf_bytes(leaf), &mut self.levels[0][leaf])?;
        }
        for level in 1..s.len() {
            dirty = dirty.iter().map(|&i| i / MAP_FANOUT).collect();
            for &j in &dirty {
                let (below, this) = self.levels.split_at_mut(level);
                let children = &below[level - 1][j * MAP_FANOUT..((j + 1) * MAP_FANOUT).min(s[level - 1])];
                put(format::encode_map_node(level as u8, children), &mut this[0][j])?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// A device of any size that stores only the blocks written to it.
    #[derive(Default)]
    struct Sparse(Mutex<HashMap<u64, Vec<u8>>>);

    impl Device for Sparse {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            let blocks = self.0.lock().unwrap();
            buf.copy_from_slice(blocks.get(&offset).map(|b| &b[..]).unwrap_or(&[0; BLOCK]));
            Ok(())
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
            self.0.lock().unwrap().insert(offset, buf.to_vec());
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn len(&self) -> std::io::Result<u64> {
            Ok(u64::MAX / 2)
        }
    }

    #[test]
    fn a_map_round_trips_and_a_commit_rewrites_only_the_changed_bitmap_block_and_its_path() {
        // Three levels: 400 bitmap blocks need two index nodes and a root.
        let total = 400 * BITS - 5;
        let dev = Sparse::default();
        let mut set = BlockSet::new(total);
        for b in [0, 1, 63, 64, BITS, 5 * BITS + 7, total - 1] {
            set.insert(b);
        }
        let mut next = total - 2000;
        let mut alloc = || {
            next += 1;
            Ok(next)
        };
        let mut map = MapOnDisk::default();
        let mut replaced = Vec::new();
        map.write(&dev, &set, total, &BTreeSet::new(), &mut alloc, &mut replaced).unwrap();
        assert!(replaced.is_empty());
        assert_eq!(map.blocks().count(), 400 + 2 + 1);
        let mut back = BlockSet::new(total);
        assert_eq!(MapOnDisk::read(&dev, map.root(), total, &mut back).unwrap(), map);
        assert_eq!(back.iter().collect::<Vec<_>>(), set.iter().collect::<Vec<_>>());
        assert_eq!(back.len(), 7);

        set.remove(5 * BITS + 7);
        let changed = BTreeSet::from([5usize]);
        map.write(&dev, &set, total, &changed, &mut alloc, &mut replaced).unwrap();
        assert_eq!(replaced.len(), 3, "one bitmap block, its index node and the root");
        MapOnDisk::read(&dev, map.root(), total, &mut back).unwrap();
        assert_eq!(back.len(), 6);
        assert!(!back.contains(5 * BITS + 7));
        assert!(MapOnDisk::write_bound(total, 1) >= 3);
    }

    #[test]
    fn a_map_node_of_the_wrong_shape_is_corrupt() {
        let total = 100;
        let dev = Sparse::default();
        let bytes = format::encode_map_node(2, &[Ptr::default()]);
        dev.write_at(&bytes, 10 * BLOCK as u64).unwrap();
        let mut set = BlockSet::new(total);
        let err = MapOnDisk::read(&dev, Ptr { block: 10, crc: crc32c(&bytes) }, total, &mut set).unwrap_err();
        assert!(matches!(err, Error::Corrupt(_)), "{err}");
    }
}
