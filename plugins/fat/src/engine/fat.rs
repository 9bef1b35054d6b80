//! The file allocation table, held in memory as the raw bytes of the first FAT: entry
//! access for all three widths behind one interface, chain walking with loop and range
//! checks, the free-cluster count and allocation that prefers contiguous runs. Changed
//! sectors are remembered so a flush writes only them, to every FAT copy.

use std::collections::BTreeSet;

use super::bpb::{Bpb, FatType};
use super::error::{Error, Result};

/// What a FAT entry says about the cluster it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    Free,
    Next(u32),
    Bad,
    End,
}

/// The FAT of a mounted volume.
pub struct Fat {
    fat_type: FatType,
    bytes: Vec<u8>,
    sector_size: usize,
    /// Highest valid cluster number.
    max_cluster: u32,
    free: u32,
    /// Where the next search for a free cluster starts.
    next_free: u32,
    dirty_sectors: BTreeSet<usize>,
    /// One bit per cluster: claimed by a chain the volume has loaded or allocated. A
    /// second chain reaching a claimed cluster is a cross-link.
    owned: Vec<u64>,
}

impl Fat {
    /// Wraps the bytes of one FAT copy.
    pub fn new(bpb: &Bpb, bytes: Vec<u8>) -> Fat {
        let mut fat = Fat {
            fat_type: bpb.fat_type,
            bytes,
            sector_size: bpb.bytes_per_sector as usize,
            max_cluster: bpb.cluster_count + 1,
            free: 0,
            next_free: 2,
            dirty_sectors: BTreeSet::new(),
            owned: vec![0; (bpb.cluster_count as usize + 2).div_ceil(64)],
        };
        fat.free = (2..=fat.max_cluster).filter(|&c| fat.raw(c) == 0).count() as u32;
        fat
    }

    /// The FAT type.
    pub fn fat_type(&self) -> FatType {
        self.fat_type
    }

    /// Free clusters.
    pub fn free_clusters(&self) -> u32 {
        self.free
    }

    /// Where allocation looks first (FSInfo's next-free hint).
    pub fn next_free_hint(&self) -> u32 {
        self.next_free
    }

    /// Highest valid cluster number.
    pub fn max_cluster(&self) -> u32 {
        self.max_cluster
    }

    /// The raw value of entry `n` (FAT32: the low 28 bits).
    pub fn raw(&self, n: u32) -> u32 {
        let n = n as usize;
        match self.fat_type {
            FatType::Fat12 => {
                let at = n + n / 2;
                let v = u16::from_le_bytes([self.bytes[at], self.bytes[at + 1]]) as u32;
                if n & 1 == 1 { v >> 4 } else { v & 0xFFF }
            }
            FatType::Fat16 => u16::from_le_bytes([self.bytes[2 * n], self.bytes[2 * n + 1]]) as u32,
            FatType::Fat32 => {
                let b = &self.bytes[4 * n..4 * n + 4];
                u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x0FFF_FFFF
            }
        }
    }

    fn set_raw(&mut self, n: u32, value: u32) {
        let n = n as usize;
        let (at, len) = match self.fat_type {
            FatType::Fat12 => {
                let at = n + n / 2;
                let old = u16::from_le_bytes([self.bytes[at], self.bytes[at + 1]]);
                let v = value as u16 & 0xFFF;
                let new = if n & 1 == 1 { (old & 0x000F) | (v << 4) } else { (old & 0xF000) | v };
                self.bytes[at..at + 2].copy_from_slice(&new.to_le_bytes());
                (at, 2)
            }
            FatType::Fat16 => {
                self.bytes[2 * n..2 * n + 2].copy_from_slice(&(value as u16).to_le_bytes());
                (2 * n, 2)
            }
            FatType::Fat32 => {
                let b = &mut self.bytes[4 * n..4 * n + 4];
                // The top four bits are reserved: keep what is there.
                let old = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                b.copy_from_slice(&((old & 0xF000_0000) | (value & 0x0FFF_FFFF)).to_le_bytes());
                (4 * n, 4)
            }
        };
        self.dirty_sectors.insert(at / self.sector_size);
        self.dirty_sectors.insert((at + len - 1) / self.sector_size);
    }

    /// Entry `cluster` (which must be 2 ..= max_cluster) interpreted.
    pub fn get(&self, cluster: u32) -> Entry {
        let v = self.raw(cluster);
        let (bad, end) = match self.fat_type {
            FatType::Fat12 => (0xFF7, 0xFF8),
            FatType::Fat16 => (0xFFF7, 0xFFF8),
            FatType::Fat32 => (0x0FFF_FFF7, 0x0FFF_FFF8),
        };
        match v {
            0 => Entry::Free,
            v if v == bad => Entry::Bad,
            v if v >= end => Entry::End,
            v => Entry::Next(v),
        }
    }

    /// Sets entry `cluster`, keeping the free count.
    pub fn set(&mut self, cluster: u32, entry: Entry) {
        let was_free = self.raw(cluster) == 0;
        let value = match entry {
            Entry::Free => 0,
            Entry::Next(n) => n,
            Entry::Bad => self.end_value() - 8,
            Entry::End => self.end_value(),
        };
        self.set_raw(cluster, value);
        match (was_free, entry == Entry::Free) {
            (true, false) => self.free -= 1,
            (false, true) => {
                self.free += 1;
                if cluster < self.next_free {
                    self.next_free = cluster;
                }
            }
            _ => {}
        }
    }

    fn end_value(&self) -> u32 {
        match self.fat_type {
            FatType::Fat12 => 0xFFF,
            FatType::Fat16 => 0xFFFF,
            FatType::Fat32 => 0x0FFF_FFFF,
        }
    }

    fn owned(&self, c: u32) -> bool {
        self.owned[c as usize / 64] & (1 << (c % 64)) != 0
    }

    fn set_owned(&mut self, c: u32, on: bool) {
        let (word, bit) = (c as usize / 64, 1u64 << (c % 64));
        if on {
            self.owned[word] |= bit;
        } else {
            self.owned[word] &= !bit;
        }
    }

    /// Claims the clusters of a chain just loaded for one file or directory; refuses a
    /// chain that shares a cluster with one claimed before (a cross-link), claiming none.
    pub fn claim(&mut self, chain: &[u32]) -> Result<()> {
        if let Some(&c) = chain.iter().find(|&&c| self.owned(c)) {
            return Err(Error::Corrupt(format!("cluster {c} also belongs to another file (cross-linked)")));
        }
        for &c in chain {
            self.set_owned(c, true);
        }
        Ok(())
    }

    /// Whether `cluster` is a valid data cluster number.
    pub fn in_range(&self, cluster: u32) -> bool {
        (2..=self.max_cluster).contains(&cluster)
    }

    /// The chain starting at `first`, checked: every link inside the volume, no free or
    /// bad cluster inside it, no loop. `first == 0` is the empty chain.
    pub fn chain(&self, first: u32) -> Result<Vec<u32>> {
        let mut chain = Vec::new();
        if first == 0 {
            return Ok(chain);
        }
        let mut c = first;
        loop {
            if !self.in_range(c) {
                return Err(Error::Corrupt(format!(
                    "cluster chain from {first} reaches cluster {c}, outside 2..={}",
                    self.max_cluster
                )));
            }
            if chain.len() > self.max_cluster as usize {
                return Err(Error::Corrupt(format!("cluster chain from {first} loops")));
            }
            chain.push(c);
            match self.get(c) {
                Entry::End => return Ok(chain),
                Entry::Next(n) => c = n,
                Entry::Free => {
                    return Err(Error::Corrupt(format!("cluster chain from {first} runs into free cluster {c}")));
                }
                Entry::Bad => {
                    return Err(Error::Corrupt(format!("cluster chain from {first} runs into bad cluster {c}")));
                }
            }
        }
    }

    /// Allocates `count` clusters, preferring the run right after `after` (so a growing
    /// file stays contiguous), then the first free run from the next-free hint. Links them
    /// into a chain that ends the volume's way, and links `after` to the first one. Returns
    /// the new clusters; nothing changes on `NoSpace`.
    pub fn allocate(&mut self, after: Option<u32>, count: u32) -> Result<Vec<u32>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        if self.free < count {
            return Err(Error::NoSpace);
        }
        let mut got = Vec::with_capacity(count as usize);
        let mut c = match after {
            Some(a) if a < self.max_cluster && self.raw(a + 1) == 0 => a + 1,
            _ => self.next_free.clamp(2, self.max_cluster),
        };
        let mut scanned = 0u64;
        let total = self.max_cluster as u64 - 1;
        while got.len() < count as usize && scanned < total {
            if self.raw(c) == 0 {
                got.push(c);
            }
            scanned += 1;
            c = if c >= self.max_cluster { 2 } else { c + 1 };
        }
        if got.len() < count as usize {
            return Err(Error::NoSpace);
        }
        for &c in &got {
            self.set_owned(c, true);
        }
        for w in got.windows(2) {
            self.set(w[0], Entry::Next(w[1]));
        }
        let last = *got.last().unwrap_or(&2);
        self.set(last, Entry::End);
        if let Some(a) = after {
            self.set(a, Entry::Next(got[0]));
        }
        self.next_free = if last >= self.max_cluster { 2 } else { last + 1 };
        Ok(got)
    }

    /// Frees every cluster of `chain`.
    pub fn free_chain(&mut self, chain: &[u32]) {
        for &c in chain {
            self.set(c, Entry::Free);
            self.set_owned(c, false);
        }
    }

    /// Takes the sectors changed since the last call, with their bytes: (byte offset inside
    /// the FAT, bytes).
    pub fn take_dirty(&mut self) -> Vec<(u64, &[u8])> {
        let sectors = std::mem::take(&mut self.dirty_sectors);
        let ss = self.sector_size;
        sectors
            .into_iter()
            .filter(|&s| (s + 1) * ss <= self.bytes.len())
            .map(|s| ((s * ss) as u64, &self.bytes[s * ss..(s + 1) * ss]))
            .collect()
    }

    /// The clean-shutdown and no-error bits some tools keep in FAT entry 1 are left alone;
    /// the dirty flag lives in the boot sector (see `Volume`).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}
