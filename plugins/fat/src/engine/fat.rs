//! The file allocation table, held in memory as the raw bytes of the first FAT: entry
//! access for all three widths behind one interface, chain walking with loop and range
//! checks, the free-cluster count, and allocation from a map of free runs that prefers
//! contiguous runs. Changed sectors are remembered so a flush writes only them, to every
//! FAT copy.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};

use super::bpb::{Bpb, FatType};
use super::error::{Error, Result};
use super::freemap::FreeMap;

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
    /// The free clusters as runs, kept in step with the entries.
    free_map: FreeMap,
    /// FAT links `chain` has followed since mount: what the chain caches save.
    links_walked: AtomicU64,
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
            free_map: FreeMap::default(),
            links_walked: AtomicU64::new(0),
            dirty_sectors: BTreeSet::new(),
            owned: vec![0; (bpb.cluster_count as usize + 2).div_ceil(64)],
        };
        fat.free = (2..=fat.max_cluster).filter(|&c| fat.raw(c) == 0).count() as u32;
        let free_map = FreeMap::build(2, fat.max_cluster, |c| fat.raw(c) == 0 && !fat.straddles(c));
        fat.free_map = free_map;
        fat
    }

    /// The FAT type.
    pub fn fat_type(&self) -> FatType {
        self.fat_type
    }

    /// Free clusters, as the FAT counts them (what FSInfo and fsck.fat count).
    pub fn free_clusters(&self) -> u32 {
        self.free
    }

    /// Free clusters the allocator can hand out: all free ones but those whose FAT12
    /// entry straddles two sectors (see [`Fat::straddles`]). What `statfs` reports, so
    /// that what it promises can be written.
    pub fn allocatable_clusters(&self) -> u32 {
        self.free_map.total()
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

    /// Whether entry `cluster` straddles two sectors of the FAT: on FAT12, the entry
    /// whose byte and a half crosses a sector boundary (2 in every 1,024 entries). Such
    /// an entry is written as two sectors, and a crash between them (or a power cut that
    /// keeps one) leaves it half old, half new: 12 bits naming any cluster, perhaps one of
    /// another file, which `fsck.fat` then frees when it trims the chain. So the allocator
    /// never hands these clusters out: a chain plugfs links never passes through one. They
    /// stay free on disk (fsck.fat and other drivers see ordinary free clusters).
    fn straddles(&self, cluster: u32) -> bool {
        let at = cluster as usize + cluster as usize / 2;
        self.fat_type == FatType::Fat12 && at % self.sector_size == self.sector_size - 1
    }

    /// Sets entry `cluster`, keeping the free count and the free map.
    pub fn set(&mut self, cluster: u32, entry: Entry) {
        let was_free = self.raw(cluster) == 0;
        self.set_counted(cluster, entry);
        match (was_free, entry == Entry::Free) {
            (true, false) if !self.straddles(cluster) => self.free_map.take(cluster, 1),
            (false, true) if !self.straddles(cluster) => self.free_map.give(cluster),
            _ => {}
        }
    }

    /// Sets entry `cluster` and keeps the free count, but not the free map (for clusters
    /// `allocate` has taken from the map already).
    fn set_counted(&mut self, cluster: u32, entry: Entry) {
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
                Entry::Next(n) => {
                    self.links_walked.fetch_add(1, Ordering::Relaxed);
                    c = n;
                }
                Entry::Free => {
                    return Err(Error::Corrupt(format!("cluster chain from {first} runs into free cluster {c}")));
                }
                Entry::Bad => {
                    return Err(Error::Corrupt(format!("cluster chain from {first} runs into bad cluster {c}")));
                }
            }
        }
    }

    /// Allocates `count` clusters as few runs as the free space allows, and links them into
    /// a chain that ends the volume's way, with `after` (a file's last cluster) linked to the
    /// first. Where each run comes from, in order of preference:
    /// - right after `after`, so a growing file stays contiguous;
    /// - at the next-free hint, when the run there holds all that is still needed (next
    ///   fit: files created one after another lie one after another, as vfat places them);
    /// - the smallest run that holds all that is still needed (best fit, which keeps long
    ///   runs for long files);
    /// - else the longest run, and again, so a chain that cannot be contiguous has as few
    ///   pieces as possible.
    ///
    /// Each choice is O(log runs). Returns the new clusters; nothing changes on `NoSpace`.
    pub fn allocate(&mut self, after: Option<u32>, count: u32) -> Result<Vec<u32>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        if self.free < count {
            return Err(Error::NoSpace);
        }
        let mut runs: Vec<(u32, u32)> = Vec::new();
        let mut need = count;
        if let Some((s, l)) = after.and_then(|a| a.checked_add(1)).and_then(|c| self.free_map.run_at(c)) {
            let start = after.map_or(s, |a| a + 1);
            let n = need.min(s + l - start);
            self.free_map.take(start, n);
            runs.push((start, n));
            need -= n;
        }
        while need > 0 {
            let hint = self.next_free;
            let at_hint = self.free_map.run_from(hint).and_then(|(s, l)| {
                let start = s.max(hint);
                (s + l - start >= need).then_some(start)
            });
            let (start, n) = match at_hint.or_else(|| self.free_map.best_fit(need).map(|(s, _)| s)) {
                Some(start) => (start, need),
                None => match self.free_map.largest() {
                    Some((s, l)) => (s, l.min(need)),
                    None => {
                        // Only free clusters the allocator never uses (FAT12 entries that
                        // straddle sectors) are left: give back and refuse.
                        for &(s, l) in &runs {
                            (s..s + l).for_each(|c| self.free_map.give(c));
                        }
                        return Err(Error::NoSpace);
                    }
                },
            };
            self.free_map.take(start, n);
            runs.push((start, n));
            need -= n;
            self.next_free = if start + n > self.max_cluster { 2 } else { start + n };
        }
        let got: Vec<u32> = runs.iter().flat_map(|&(s, l)| s..s + l).collect();
        for &c in &got {
            self.set_owned(c, true);
        }
        for w in got.windows(2) {
            self.set_counted(w[0], Entry::Next(w[1]));
        }
        let last = got[got.len() - 1];
        self.set_counted(last, Entry::End);
        if let Some(a) = after {
            self.set(a, Entry::Next(got[0]));
        }
        self.next_free = if last >= self.max_cluster { 2 } else { last + 1 };
        Ok(got)
    }

    /// How many FAT links chain walks have followed since the FAT was read.
    pub fn links_walked(&self) -> u64 {
        self.links_walked.load(Ordering::Relaxed)
    }

    /// How many runs the free space is in.
    pub fn free_runs(&self) -> usize {
        self.free_map.runs()
    }

    /// Keeps the free `clusters` out of allocation until [`Fat::release`]: their entries,
    /// the free count and the next-free hint stay as they are.
    pub fn hold(&mut self, clusters: &[u32]) {
        for &c in clusters {
            if self.free_map.run_at(c).is_some() {
                self.free_map.take(c, 1);
            }
        }
    }

    /// Makes clusters [`Fat::hold`] kept out allocatable again (those still free).
    pub fn release(&mut self, clusters: &[u32]) {
        for &c in clusters {
            if self.raw(c) == 0 && !self.straddles(c) {
                self.free_map.give(c);
            }
        }
    }

    /// Frees every cluster of `chain`.
    pub fn free_chain(&mut self, chain: &[u32]) {
        for &c in chain {
            self.set(c, Entry::Free);
            self.set_owned(c, false);
        }
    }

    /// Takes the sectors changed since the last call as runs of consecutive sectors, with
    /// their bytes: (byte offset inside the FAT, bytes). One write per run: fewer IOs, and
    /// a crash of the process cannot land between two sectors of one run.
    pub fn take_dirty(&mut self) -> Vec<(u64, &[u8])> {
        let sectors = std::mem::take(&mut self.dirty_sectors);
        let ss = self.sector_size;
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for s in sectors.into_iter().filter(|&s| (s + 1) * ss <= self.bytes.len()) {
            match runs.last_mut() {
                Some((_, end)) if *end == s => *end = s + 1,
                _ => runs.push((s, s + 1)),
            }
        }
        runs.into_iter().map(|(a, b)| ((a * ss) as u64, &self.bytes[a * ss..b * ss])).collect()
    }

    /// The clean-shutdown and no-error bits some tools keep in FAT entry 1 are left alone;
    /// the dirty flag lives in the boot sector (see `Volume`).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An empty FAT32 FAT of `clusters` data clusters (entries 0 and 1 reserved).
    fn fat32(clusters: u32) -> Fat {
        empty(FatType::Fat32, clusters)
    }

    fn empty(fat_type: FatType, clusters: u32) -> Fat {
        let bytes_per_entry_x2 = match fat_type {
            FatType::Fat12 => 3,
            FatType::Fat16 => 4,
            FatType::Fat32 => 8,
        };
        let bpb = Bpb {
            fat_type,
            bytes_per_sector: 512,
            sectors_per_cluster: 1,
            reserved_sectors: 32,
            num_fats: 2,
            root_entries: 0,
            total_sectors: 0,
            media: 0xF8,
            sectors_per_fat: (bytes_per_entry_x2 * (clusters + 2)).div_ceil(2 * 512),
            root_cluster: 2,
            fsinfo_sector: 1,
            backup_boot_sector: 6,
            volume_id: 0,
            label: *b"NO NAME    ",
            oem_name: *b"TEST    ",
            cluster_count: clusters,
            data_offset: 0,
            root_dir_offset: 0,
            has_signature: true,
            active_fat: 0,
        };
        let mut bytes = vec![0u8; 512 * bpb.sectors_per_fat as usize];
        bytes[..3].copy_from_slice(&[0xF8, 0xFF, 0xFF]);
        Fat::new(&bpb, bytes)
    }

    /// Marks `clusters` used, each a chain of its own.
    fn occupy(fat: &mut Fat, clusters: impl IntoIterator<Item = u32>) {
        for c in clusters {
            fat.set(c, Entry::End);
        }
    }

    /// Whether the free map and the free count say exactly what the entries say.
    fn assert_in_step(fat: &Fat) {
        let truth = FreeMap::build(2, fat.max_cluster, |c| fat.raw(c) == 0);
        let runs = |m: &FreeMap| (m.runs(), (2..=fat.max_cluster).filter(|&c| m.run_at(c).is_some()).count());
        assert_eq!(runs(&fat.free_map), runs(&truth));
        for c in 2..=fat.max_cluster {
            assert_eq!(fat.free_map.run_at(c), truth.run_at(c), "cluster {c}");
        }
        assert_eq!(fat.free as usize, runs(&truth).1);
        assert_eq!(fat.allocatable_clusters(), fat.free);
    }

    fn is_run(chain: &[u32]) -> bool {
        chain.windows(2).all(|w| w[1] == w[0] + 1)
    }

    #[test]
    fn a_growing_file_continues_in_place_and_new_files_follow_one_another() {
        let mut fat = fat32(1000);
        let a = fat.allocate(None, 10).unwrap();
        let b = fat.allocate(None, 5).unwrap();
        assert_eq!((a[0], b[0]), (2, 12));
        // b's end is free: b grows in place.
        let more = fat.allocate(Some(*b.last().unwrap()), 20).unwrap();
        assert_eq!(more[0], 17);
        assert!(is_run(&more));
        assert_eq!(fat.chain(b[0]).unwrap(), [b, more].concat());
        assert_in_step(&fat);
    }

    #[test]
    fn a_request_takes_the_smallest_run_that_holds_it_then_the_longest_runs() {
        let mut fat = fat32(200);
        // Free runs: 2..=4 (3), 6..=12 (7), 14..=17 (4), 19..=201 (183).
        occupy(&mut fat, [5, 13, 18]);
        // The hint (2) holds a run of 3: a request of 4 goes to the run of exactly 4.
        fat.next_free = 2;
        let four = fat.allocate(None, 4).unwrap();
        assert_eq!(four, [14, 15, 16, 17]);
        // 5 fits the 7-run best; the hint moved past it.
        fat.next_free = 2;
        assert_eq!(fat.allocate(None, 5).unwrap(), [6, 7, 8, 9, 10]);
        // 300 fits nowhere and is more than the volume holds: refused, nothing changed.
        let free = fat.free_clusters();
        assert!(matches!(fat.allocate(None, 300), Err(Error::NoSpace)));
        assert_eq!(fat.free_clusters(), free);
        assert_in_step(&fat);
        // All that is left (183 + 3 + 2): the longest run first, then the next longest.
        let all = fat.allocate(None, free).unwrap();
        assert_eq!(all.len() as u32, free);
        assert_eq!((all[0], all[182], all[183], all[186]), (19, 201, 2, 11));
        assert_eq!(fat.free_clusters(), 0);
        assert_eq!(fat.free_runs(), 0);
        assert_in_step(&fat);
    }

    #[test]
    fn fat12_entries_that_straddle_two_sectors_are_never_allocated() {
        // 3,000 clusters: a FAT of 9 sectors, with entries 341, 682, 1365, 1706, 2389 and
        // 2730 crossing a sector boundary (a byte and a half each, at bytes 511-512 and so
        // on).
        let mut fat = empty(FatType::Fat12, 3000);
        let straddling: Vec<u32> = (2..=fat.max_cluster).filter(|&c| fat.straddles(c)).collect();
        assert_eq!(straddling, [341, 682, 1365, 1706, 2389, 2730]);
        let free = fat.free_clusters();
        assert_eq!(fat.allocatable_clusters(), free - 6);
        let all = fat.allocate(None, free - 6).unwrap();
        assert!(all.iter().all(|c| !straddling.contains(c)));
        // What is left are the six, which FAT still counts as free but nothing gets.
        assert_eq!((fat.free_clusters(), fat.allocatable_clusters()), (6, 0));
        assert!(matches!(fat.allocate(None, 1), Err(Error::NoSpace)));
        // A chain through one (made by another tool), freed: it stays out of the map.
        fat.set(340, Entry::Next(341));
        fat.set(341, Entry::End);
        fat.free_chain(&[340, 341]);
        assert_eq!(fat.allocate(None, 2).ok(), None);
        assert_eq!(fat.allocate(None, 1).unwrap(), [340]);
        // FAT16 and FAT32 entries never straddle.
        let fat16 = empty(FatType::Fat16, 5000);
        assert!((2..=fat16.max_cluster).all(|c| !fat16.straddles(c)));
    }

    #[test]
    fn held_clusters_are_not_allocated_and_nothing_else_changes() {
        let mut fat = fat32(100);
        fat.hold(&[2, 3, 50]);
        let (free, hint) = (fat.free_clusters(), fat.next_free_hint());
        assert!(fat.take_dirty().is_empty());
        let got = fat.allocate(None, 2).unwrap();
        assert_eq!(got, [4, 5]);
        fat.release(&[2, 3, 50]);
        assert_eq!(fat.free_clusters(), free - 2);
        assert_eq!(fat.next_free_hint(), 6);
        assert_ne!(hint, 6);
        assert_in_step(&fat);
        assert_eq!(fat.allocate(None, 2).unwrap(), [6, 7]);
        fat.next_free = 2;
        assert_eq!(fat.allocate(None, 1).unwrap(), [2]);
    }

    #[test]
    fn changed_fat_sectors_are_written_as_runs() {
        let mut fat = fat32(2000);
        // Entries 100 (sector 0), 200 and 300 (sectors 1 and 2), and 1000 (sector 7).
        for c in [100, 200, 300, 1000] {
            fat.set(c, Entry::End);
        }
        let runs: Vec<(u64, usize)> = fat.take_dirty().iter().map(|&(o, b)| (o, b.len())).collect();
        assert_eq!(runs, [(0, 512 * 3), (512 * 7, 512)]);
        assert!(fat.take_dirty().is_empty());
    }

    #[test]
    fn the_free_map_stays_in_step_with_the_entries_through_random_changes() {
        let mut fat = fat32(3000);
        let mut chains: Vec<Vec<u32>> = Vec::new();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for round in 0..2000 {
            match next(4) {
                0 | 1 => {
                    let n = 1 + next(40) as u32;
                    match chains.len() {
                        0 => {}
                        len => {
                            // Grow a chain at its end, as a write does.
                            let i = next(len as u64) as usize;
                            if let Ok(more) = fat.allocate(chains[i].last().copied(), n) {
                                chains[i].extend(more);
                            }
                        }
                    }
                    // A new chain is one piece whenever some free run holds it.
                    let fits = fat.free_map.largest().is_some_and(|(_, l)| l >= n);
                    if let Ok(c) = fat.allocate(None, n) {
                        assert!(!fits || is_run(&c), "{c:?} in pieces");
                        chains.push(c);
                    }
                }
                2 if !chains.is_empty() => {
                    let c = chains.swap_remove(next(chains.len() as u64) as usize);
                    fat.free_chain(&c);
                }
                _ if !chains.is_empty() => {
                    // Truncate, as Volume::truncate does.
                    let i = next(chains.len() as u64) as usize;
                    let keep = 1 + next(chains[i].len() as u64) as usize;
                    let cut = chains[i].split_off(keep);
                    fat.free_chain(&cut);
                    fat.set(chains[i][keep - 1], Entry::End);
                }
                _ => {}
            }
            if round % 50 == 0 {
                assert_in_step(&fat);
            }
            for c in &chains {
                assert_eq!(&fat.chain(c[0]).unwrap(), c);
            }
        }
        assert_in_step(&fat);
    }
}
