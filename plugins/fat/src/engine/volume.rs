//! A mounted FAT volume: nodes (files and directories with stable ids while mounted),
//! directory loading with a per-directory name index, reading and writing file data in
//! runs of contiguous clusters, and every change to the tree.
//!
//! **Write ordering.** Growing a file writes its data first, then the FAT (every copy),
//! then its directory entry; creating a directory writes its first cluster, then the FAT,
//! then the entry in its parent. Shrinking and removing go the other way: the directory
//! entry first, then the FAT. A crash between the steps leaves at worst lost clusters or a
//! size shorter than the chain, both of which `fsck.fat` repairs without touching other
//! files.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::Path;

use super::bpb::{Bpb, FatType};
use super::dir::{self, ATTR_ARCHIVE, ATTR_DIRECTORY, ATTR_VOLUME_ID, DELETED, ENTRY_SIZE, ShortEntry};
use super::error::{Error, Result};
use super::fat::{Entry, Fat};
use super::io::Disk;
use super::names::{self, fold};
use super::time::{self, FatTime};

/// A node's id while the volume is mounted. The root is 1.
pub type Ino = u64;
/// The root directory's id.
pub const ROOT: Ino = 1;
/// Largest file FAT can hold.
pub const MAX_FILE_SIZE: u64 = 0xFFFF_FFFF;
/// A directory holds at most 65536 entries (the FAT spec's limit).
const MAX_DIR_SLOTS: u64 = 65536;

/// How to open a volume.
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenOptions {
    /// Never write to the image.
    pub read_only: bool,
    /// Seconds the clock of this volume's timestamps is ahead of UTC.
    pub tz_offset: i64,
}

/// What `stat` tells about a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub ino: Ino,
    pub is_dir: bool,
    pub size: u64,
    /// Bytes of clusters allocated to it.
    pub allocated: u64,
    pub attr: u8,
    pub created: FatTime,
    pub modified: FatTime,
    pub access_date: u16,
}

/// A directory entry as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Position in the directory, for resuming a listing after it.
    pub slot: u32,
    pub name: String,
    pub ino: Ino,
    pub is_dir: bool,
}

/// Space on the volume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    pub cluster_size: u32,
    pub clusters: u32,
    pub free_clusters: u32,
}

struct DirState {
    raw: Vec<u8>,
    /// Slot of the end marker (every slot from here on is free).
    end: u32,
    by_slot: BTreeMap<u32, Ino>,
    index: HashMap<String, Ino>,
    shorts: HashSet<[u8; 11]>,
    label_slot: Option<u32>,
    /// Deleted slots before `end`: when there are none, free space starts at `end`.
    holes: u32,
}

struct Node {
    parent: Ino,
    slot: u32,
    first_slot: u32,
    name: String,
    entry: ShortEntry,
    chain: Option<Vec<u32>>,
    /// False once removed from its directory (an unlinked file still open).
    linked: bool,
    dir: Option<DirState>,
}

/// A mounted FAT volume.
pub struct Volume {
    file: Disk,
    bpb: Bpb,
    fat: Fat,
    read_only: bool,
    tz_offset: i64,
    fsinfo_ok: bool,
    nodes: HashMap<Ino, Node>,
    next_ino: Ino,
    unmounted: bool,
}

fn corrupt_context(name: &str, e: Error) -> Error {
    match e {
        Error::Corrupt(m) => {
            tracing::error!(file = name, "corrupt filesystem: {m}");
            Error::Corrupt(format!("{name}: {m}"))
        }
        e => e,
    }
}

impl Volume {
    /// Opens the image at `path`, read-write unless `options.read_only` or the file cannot
    /// be written, and takes an exclusive lock on it (shared when read-only) so two
    /// processes never mount one image read-write.
    pub fn open(path: &Path, options: OpenOptions) -> Result<Volume> {
        let mut read_only = options.read_only;
        if !read_only {
            let meta = std::fs::metadata(path)?;
            if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o222 == 0 {
                tracing::info!(image = %path.display(), "the image file is not writable: mounting read-only");
                read_only = true;
            }
        }
        let file = if read_only {
            File::open(path)?
        } else {
            match std::fs::OpenOptions::new().read(true).write(true).open(path) {
                Ok(f) => f,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EACCES | libc::EROFS | libc::EPERM)) => {
                    tracing::info!(image = %path.display(), "cannot open the image for writing ({e}): mounting read-only");
                    read_only = true;
                    File::open(path)?
                }
                Err(e) => return Err(e.into()),
            }
        };
        let op = if read_only {
            rustix::fs::FlockOperation::NonBlockingLockShared
        } else {
            rustix::fs::FlockOperation::NonBlockingLockExclusive
        };
        rustix::fs::flock(&file, op)
            .map_err(|e| Error::Busy(format!("{} is locked by another process ({e})", path.display())))?;
        Volume::from_file(file, OpenOptions { read_only, ..options })
    }

    /// Opens a volume on an already open file (no lock is taken).
    pub fn from_file(file: File, options: OpenOptions) -> Result<Volume> {
        Volume::from_disk(Disk::new(file), options)
    }

    /// Opens a volume on a [`Disk`] (e.g. one that records its writes; no lock is taken).
    pub fn from_disk(file: Disk, options: OpenOptions) -> Result<Volume> {
        let mut boot = vec![0u8; 512];
        file.read_exact_at(&mut boot, 0).map_err(|e| Error::BadBootSector(format!("cannot read it: {e}")))?;
        let bpb = Bpb::parse(&boot)?;
        // Seeking to the end sizes block devices too (their metadata says 0).
        let len = file.size()?;
        if len < bpb.data_offset {
            return Err(Error::BadBootSector(format!(
                "the image is {len} bytes, shorter than its FATs and root directory ({} bytes)",
                bpb.data_offset
            )));
        }
        if len < bpb.volume_bytes() {
            tracing::warn!(
                image_bytes = len,
                volume_bytes = bpb.volume_bytes(),
                "the image is shorter than its volume"
            );
        }
        let mut fat_bytes = vec![0u8; bpb.fat_bytes() as usize];
        file.read_exact_at(&mut fat_bytes, bpb.fat_offset(bpb.active_fat))?;
        let fat = Fat::new(&bpb, fat_bytes);
        let mut fsinfo_ok = false;
        if bpb.fat_type == FatType::Fat32 && bpb.fsinfo_sector != 0 {
            let mut s = [0u8; 512];
            let at = bpb.fsinfo_sector as u64 * bpb.bytes_per_sector as u64;
            if file.read_exact_at(&mut s, at).is_ok() {
                fsinfo_ok = s[0..4] == 0x4161_5252u32.to_le_bytes() && s[484..488] == 0x6141_7272u32.to_le_bytes();
            }
        }
        let root_entry = ShortEntry { attr: ATTR_DIRECTORY, first_cluster: bpb.root_cluster, ..ShortEntry::default() };
        let root = Node {
            parent: ROOT,
            slot: 0,
            first_slot: 0,
            name: String::new(),
            entry: root_entry,
            chain: None,
            linked: true,
            dir: None,
        };
        let mut vol = Volume {
            file,
            bpb,
            fat,
            read_only: options.read_only,
            tz_offset: options.tz_offset,
            fsinfo_ok,
            nodes: HashMap::from([(ROOT, root)]),
            next_ino: ROOT + 1,
            unmounted: false,
        };
        vol.load_dir(ROOT)?;
        if !vol.read_only {
            let mut state = [0u8];
            vol.file.read_exact_at(&mut state, vol.bpb.state_byte_offset())?;
            if state[0] & 1 != 0 {
                tracing::warn!("the volume was not unmounted cleanly: `fsck.fat` can check and repair it");
            }
            vol.set_dirty(true)?;
        }
        Ok(vol)
    }

    /// The boot sector's parameters.
    pub fn bpb(&self) -> &Bpb {
        &self.bpb
    }

    /// Whether the volume refuses changes.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The tz offset timestamps are read and written with.
    pub fn tz_offset(&self) -> i64 {
        self.tz_offset
    }

    fn set_dirty(&mut self, dirty: bool) -> Result<()> {
        let at = self.bpb.state_byte_offset();
        let mut b = [0u8];
        self.file.read_exact_at(&mut b, at)?;
        let new = if dirty { b[0] | 1 } else { b[0] & !1 };
        if new != b[0] {
            self.file.write_all_at(&[new], at)?;
        }
        Ok(())
    }

    /// Writes what is pending, clears the dirty bit and syncs. Called by `Drop` too; after
    /// it the volume refuses changes.
    pub fn unmount(&mut self) -> Result<()> {
        if self.unmounted || self.read_only {
            self.unmounted = true;
            return Ok(());
        }
        self.flush_fat()?;
        self.file.sync_data()?;
        self.set_dirty(false)?;
        self.file.sync_data()?;
        self.unmounted = true;
        self.read_only = true;
        Ok(())
    }

    /// Makes everything written so far durable.
    pub fn sync(&mut self) -> Result<()> {
        if !self.read_only {
            self.flush_fat()?;
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only { Err(Error::ReadOnly) } else { Ok(()) }
    }

    fn flush_fat(&mut self) -> Result<()> {
        let bpb = &self.bpb;
        let dirty = self.fat.take_dirty();
        if dirty.is_empty() {
            return Ok(());
        }
        for n in 0..bpb.num_fats {
            let base = bpb.fat_offset(n);
            for (off, bytes) in &dirty {
                self.file.write_all_at(bytes, base + off)?;
            }
        }
        if self.fsinfo_ok {
            let at = bpb.fsinfo_sector as u64 * bpb.bytes_per_sector as u64 + 488;
            let mut b = [0u8; 8];
            b[..4].copy_from_slice(&self.fat.free_clusters().to_le_bytes());
            b[4..].copy_from_slice(&self.fat.next_free_hint().to_le_bytes());
            self.file.write_all_at(&b, at)?;
        }
        Ok(())
    }

    fn node(&self, ino: Ino) -> Result<&Node> {
        self.nodes.get(&ino).ok_or(Error::NotFound)
    }

    fn node_mut(&mut self, ino: Ino) -> Result<&mut Node> {
        self.nodes.get_mut(&ino).ok_or(Error::NotFound)
    }

    fn now(&self) -> FatTime {
        time::now(self.tz_offset)
    }

    /// The cluster chain of a node, cached.
    fn chain(&mut self, ino: Ino) -> Result<&Vec<u32>> {
        let node = self.nodes.get_mut(&ino).ok_or(Error::NotFound)?;
        if node.chain.is_none() {
            let chain = self
                .fat
                .chain(node.entry.first_cluster)
                .and_then(|chain| self.fat.claim(&chain).map(|()| chain))
                .map_err(|e| corrupt_context(&node.name, e))?;
            node.chain = Some(chain);
        }
        Ok(node.chain.as_ref().expect("just filled"))
    }

    /// Byte extents (offset, length) holding directory `ino`'s entries, in order.
    fn dir_extents(&mut self, ino: Ino) -> Result<Vec<(u64, u64)>> {
        if ino == ROOT && self.bpb.fat_type != FatType::Fat32 {
            return Ok(vec![(self.bpb.root_dir_offset, self.bpb.root_entries as u64 * ENTRY_SIZE as u64)]);
        }
        let cs = self.bpb.cluster_size() as u64;
        let chain = self.chain(ino)?.clone();
        Ok(chain.iter().map(|&c| (self.bpb.cluster_offset(c), cs)).collect())
    }

    fn load_dir(&mut self, ino: Ino) -> Result<()> {
        let node = self.node(ino)?;
        if !node.entry.is_dir() {
            return Err(Error::NotDir);
        }
        if node.dir.is_some() {
            return Ok(());
        }
        if !node.linked {
            return Err(Error::NotFound);
        }
        let extents = self.dir_extents(ino)?;
        let total: u64 = extents.iter().map(|e| e.1).sum();
        if total > MAX_DIR_SLOTS * ENTRY_SIZE as u64 * 2 {
            let name = self.node(ino)?.name.clone();
            return Err(corrupt_context(&name, Error::Corrupt(format!("directory of {total} bytes is too large"))));
        }
        let mut raw = vec![0u8; total as usize];
        let mut at = 0usize;
        for (off, len) in extents {
            self.file.read_exact_at(&mut raw[at..at + len as usize], off)?;
            at += len as usize;
        }
        let listing = dir::parse(&raw);
        // Whatever follows the end marker is free; keep it zero in memory.
        let end_byte = listing.end as usize * ENTRY_SIZE;
        raw[end_byte..].fill(0);
        let mut state = DirState {
            raw,
            end: listing.end,
            by_slot: BTreeMap::new(),
            index: HashMap::new(),
            shorts: HashSet::new(),
            label_slot: listing.label.map(|l| l.0),
            holes: 0,
        };
        state.holes = (0..state.end as usize).filter(|&s| state.raw[s * ENTRY_SIZE] == DELETED).count() as u32;
        for p in listing.entries {
            state.shorts.insert(p.entry.name);
            let key = fold(&p.name);
            if state.index.contains_key(&key) {
                tracing::warn!(name = p.name, "a second entry with the same name in one directory is hidden");
                continue;
            }
            let child = self.next_ino;
            self.next_ino += 1;
            state.by_slot.insert(p.slot, child);
            state.index.insert(key, child);
            self.nodes.insert(
                child,
                Node {
                    parent: ino,
                    slot: p.slot,
                    first_slot: p.first_slot,
                    name: p.name,
                    entry: p.entry,
                    chain: None,
                    linked: true,
                    dir: None,
                },
            );
        }
        self.node_mut(ino)?.dir = Some(state);
        Ok(())
    }

    fn dir_state(&self, ino: Ino) -> Result<&DirState> {
        self.node(ino)?.dir.as_ref().ok_or(Error::NotDir)
    }

    fn dir_state_mut(&mut self, ino: Ino) -> Result<&mut DirState> {
        self.node_mut(ino)?.dir.as_mut().ok_or(Error::NotDir)
    }

    /// Writes slots `first..first + count` of directory `ino` from memory to the image.
    fn write_dir_slots(&mut self, ino: Ino, first: u32, count: u32) -> Result<()> {
        let extents = self.dir_extents(ino)?;
        let state = self.dir_state(ino)?;
        let mut start = first as u64 * ENTRY_SIZE as u64;
        let end = (first + count) as u64 * ENTRY_SIZE as u64;
        let mut base = 0u64;
        for (off, len) in extents {
            if start < base + len && start < end {
                let piece_end = end.min(base + len);
                let bytes = &state.raw[start as usize..piece_end as usize];
                self.file.write_all_at(bytes, off + (start - base))?;
                start = piece_end;
            }
            base += len;
        }
        Ok(())
    }

    /// Finds `n` consecutive free slots in directory `ino`, growing it by zeroed clusters
    /// when there are none.
    fn free_slots(&mut self, ino: Ino, n: u32) -> Result<u32> {
        let state = self.dir_state(ino)?;
        let total = (state.raw.len() / ENTRY_SIZE) as u32;
        let mut run = 0u32;
        let start = if state.holes == 0 { state.end } else { 0 };
        for s in start..total {
            let free = s >= state.end || state.raw[s as usize * ENTRY_SIZE] == DELETED;
            run = if free { run + 1 } else { 0 };
            if run == n {
                return Ok(s + 1 - n);
            }
        }
        if ino == ROOT && self.bpb.fat_type != FatType::Fat32 {
            return Err(Error::NoSpace);
        }
        let per_cluster = self.bpb.cluster_size() / ENTRY_SIZE as u32;
        let clusters = (n - run).div_ceil(per_cluster);
        if total as u64 + (clusters * per_cluster) as u64 > MAX_DIR_SLOTS {
            return Err(Error::NoSpace);
        }
        let last = *self.chain(ino)?.last().ok_or_else(|| Error::Corrupt("directory without clusters".into()))?;
        let new = self.fat.allocate(Some(last), clusters)?;
        let zeros = vec![0u8; self.bpb.cluster_size() as usize];
        for &c in &new {
            if let Err(e) = self.file.write_all_at(&zeros, self.bpb.cluster_offset(c)) {
                self.undo_allocation(Some(last), &new);
                return Err(e.into());
            }
        }
        self.flush_fat()?;
        let node = self.node_mut(ino)?;
        node.chain.as_mut().expect("chain loaded").extend_from_slice(&new);
        let state = node.dir.as_mut().expect("dir loaded");
        state.raw.resize(state.raw.len() + (clusters * per_cluster) as usize * ENTRY_SIZE, 0);
        Ok(total - run)
    }

    fn undo_allocation(&mut self, after: Option<u32>, new: &[u32]) {
        self.fat.free_chain(new);
        if let Some(a) = after {
            self.fat.set(a, Entry::End);
        }
    }

    /// Writes `name`'s entries (long-name entries, then `entry`) into directory `dir`.
    /// Returns (first slot, short entry slot).
    fn insert_entries(
        &mut self,
        dir: Ino,
        name: &str,
        stored: &names::StoredName,
        entry: &ShortEntry,
    ) -> Result<(u32, u32)> {
        let mut slots: Vec<[u8; 32]> =
            if stored.needs_lfn { names::lfn_entries(name, &stored.short) } else { Vec::new() };
        slots.push(entry.encode());
        let n = slots.len() as u32;
        let first = self.free_slots(dir, n)?;
        let state = self.dir_state_mut(dir)?;
        for (i, s) in slots.iter().enumerate() {
            let at = (first as usize + i) * ENTRY_SIZE;
            if state.raw[at] == DELETED {
                state.holes -= 1;
            }
            state.raw[at..at + ENTRY_SIZE].copy_from_slice(s);
        }
        let mut count = n;
        if first + n > state.end {
            state.end = first + n;
            // What follows on disk may be stale: make sure an end marker follows.
            if ((first + n) as usize) < state.raw.len() / ENTRY_SIZE {
                count += 1;
            }
        }
        state.shorts.insert(stored.short);
        self.write_dir_slots(dir, first, count)?;
        Ok((first, first + n - 1))
    }

    fn remove_entries(&mut self, dir: Ino, first: u32, last: u32) -> Result<()> {
        let state = self.dir_state_mut(dir)?;
        for s in first..=last {
            state.raw[s as usize * ENTRY_SIZE] = DELETED;
            state.holes += 1;
        }
        self.write_dir_slots(dir, first, last - first + 1)
    }

    /// Writes a node's short entry from memory to its directory.
    fn write_entry(&mut self, ino: Ino) -> Result<()> {
        let node = self.node(ino)?;
        if ino == ROOT || !node.linked {
            return Ok(());
        }
        let (parent, slot, bytes) = (node.parent, node.slot, node.entry.encode());
        let state = self.dir_state_mut(parent)?;
        let at = slot as usize * ENTRY_SIZE;
        state.raw[at..at + ENTRY_SIZE].copy_from_slice(&bytes);
        self.write_dir_slots(parent, slot, 1)
    }

    /// Looks `name` up in directory `dir`, case-insensitively.
    pub fn lookup(&mut self, dir: Ino, name: &str) -> Result<Ino> {
        self.load_dir(dir)?;
        self.lookup_loaded(dir, name).unwrap_or(Err(Error::NotDir))
    }

    /// [`Volume::lookup`] without changing anything: None when `dir` has not been read
    /// yet (then call `lookup`).
    pub fn lookup_loaded(&self, dir: Ino, name: &str) -> Option<Result<Ino>> {
        let state = match self.node(dir) {
            Err(e) => return Some(Err(e)),
            Ok(n) if !n.entry.is_dir() => return Some(Err(Error::NotDir)),
            Ok(n) => n.dir.as_ref()?,
        };
        let name = name.trim_end_matches(['.', ' ']);
        Some(state.index.get(&fold(name)).copied().ok_or(Error::NotFound))
    }

    /// The directory holding `ino` (the root's is the root).
    pub fn parent(&self, ino: Ino) -> Result<Ino> {
        Ok(self.node(ino)?.parent)
    }

    /// The name of `ino` as stored.
    pub fn name(&self, ino: Ino) -> Result<&str> {
        Ok(&self.node(ino)?.name)
    }

    /// The first cluster of a node's data (0: none).
    pub fn first_cluster(&self, ino: Ino) -> Result<u32> {
        Ok(self.node(ino)?.entry.first_cluster)
    }

    /// A node's metadata.
    pub fn stat(&self, ino: Ino) -> Result<Meta> {
        let cs = self.bpb.cluster_size() as u64;
        let node = self.node(ino)?;
        let e = node.entry;
        let allocated = if e.is_dir() {
            let len = match &node.chain {
                Some(c) => c.len(),
                None => self.fat.chain(e.first_cluster).map(|c| c.len()).unwrap_or(0),
            } as u64;
            if ino == ROOT && self.bpb.fat_type != FatType::Fat32 {
                self.bpb.root_entries as u64 * ENTRY_SIZE as u64
            } else {
                len * cs
            }
        } else {
            (e.size as u64).div_ceil(cs) * cs
        };
        let size = if e.is_dir() { allocated } else { e.size as u64 };
        Ok(Meta {
            ino,
            is_dir: e.is_dir(),
            size,
            allocated,
            attr: e.attr,
            created: e.created,
            modified: e.modified,
            access_date: e.access_date,
        })
    }

    /// Lists directory `dir` after slot `after` (None: from the start), at most `max`
    /// entries.
    pub fn list(&mut self, dir: Ino, after: Option<u32>, max: usize) -> Result<Vec<Listed>> {
        self.load_dir(dir)?;
        self.list_loaded(dir, after, max).unwrap_or(Err(Error::NotDir))
    }

    /// [`Volume::list`] without changing anything: None when `dir` has not been read yet.
    pub fn list_loaded(&self, dir: Ino, after: Option<u32>, max: usize) -> Option<Result<Vec<Listed>>> {
        let state = match self.node(dir) {
            Err(e) => return Some(Err(e)),
            Ok(n) if !n.entry.is_dir() => return Some(Err(Error::NotDir)),
            Ok(n) => n.dir.as_ref()?,
        };
        let range = match after {
            Some(a) => state.by_slot.range(a.saturating_add(1)..),
            None => state.by_slot.range(0..),
        };
        Some(
            range
                .take(max)
                .map(|(&slot, &ino)| {
                    let n = self.node(ino)?;
                    Ok(Listed { slot, name: n.name.clone(), ino, is_dir: n.entry.is_dir() })
                })
                .collect(),
        )
    }

    /// Reads up to `buf.len()` bytes at `offset`; fewer at the end of the file.
    pub fn read(&mut self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if self.node(ino)?.entry.is_dir() {
            return Err(Error::IsDir);
        }
        self.chain(ino)?;
        self.read_cached(ino, offset, buf).unwrap_or(Err(Error::Corrupt("chain not cached".into())))
    }

    /// [`Volume::read`] without changing anything, so many readers can share the volume:
    /// None when the file's cluster chain is not cached yet (then call `read`).
    pub fn read_cached(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Option<Result<usize>> {
        let node = match self.node(ino) {
            Err(e) => return Some(Err(e)),
            Ok(n) if n.entry.is_dir() => return Some(Err(Error::IsDir)),
            Ok(n) => n,
        };
        let size = node.entry.size as u64;
        if offset >= size || buf.is_empty() {
            return Some(Ok(0));
        }
        let chain = node.chain.as_ref()?;
        let n = (size - offset).min(buf.len() as u64) as usize;
        let cs = self.bpb.cluster_size() as u64;
        if (chain.len() as u64) * cs < size {
            let why = format!("size {size} is larger than its {} clusters", chain.len());
            return Some(Err(corrupt_context(&node.name, Error::Corrupt(why))));
        }
        Some(self.span_io(chain, offset, &mut Span::Read(&mut buf[..n])).map(|()| n))
    }

    /// Reads or writes bytes at `offset` of a file with `chain`, one IO per run of
    /// contiguous clusters.
    fn span_io(&self, chain: &[u32], offset: u64, span: &mut Span<'_>) -> Result<()> {
        let cs = self.bpb.cluster_size() as u64;
        let len = span.len();
        let mut done = 0usize;
        while done < len {
            let pos = offset + done as u64;
            let ci = (pos / cs) as usize;
            let within = pos % cs;
            let mut j = ci;
            let want_end = pos + (len - done) as u64;
            while j + 1 < chain.len() && chain[j + 1] == chain[j] + 1 && (j as u64 + 1) * cs < want_end {
                j += 1;
            }
            let run_bytes = (j - ci + 1) as u64 * cs - within;
            let take = run_bytes.min((len - done) as u64) as usize;
            let at = self.bpb.cluster_offset(*chain.get(ci).ok_or(Error::Corrupt("chain too short".into()))?) + within;
            match span {
                Span::Read(b) => self.file.read_exact_at(&mut b[done..done + take], at)?,
                Span::Write(b) => self.file.write_all_at(&b[done..done + take], at)?,
                Span::Zero(_) => {
                    let zeros = vec![0u8; take.min(1 << 20)];
                    let mut z = 0;
                    while z < take {
                        let k = zeros.len().min(take - z);
                        self.file.write_all_at(&zeros[..k], at + z as u64)?;
                        z += k;
                    }
                }
            }
            done += take;
        }
        Ok(())
    }

    /// Makes sure file `ino` has clusters for `bytes` bytes: allocates the missing ones
    /// (after its last cluster when possible), without flushing the FAT.
    fn ensure_clusters(&mut self, ino: Ino, bytes: u64) -> Result<bool> {
        let cs = self.bpb.cluster_size() as u64;
        let need = bytes.div_ceil(cs) as usize;
        let have = self.chain(ino)?.len();
        if have >= need {
            return Ok(false);
        }
        let last = self.chain(ino)?.last().copied();
        let new = self.fat.allocate(last, (need - have) as u32)?;
        let node = self.node_mut(ino)?;
        if last.is_none() {
            node.entry.first_cluster = new[0];
        }
        node.chain.as_mut().expect("chain loaded").extend_from_slice(&new);
        Ok(true)
    }

    /// Writes `data` at `offset`, zero-filling any gap after the current end.
    pub fn write(&mut self, ino: Ino, offset: u64, data: &[u8]) -> Result<usize> {
        self.check_writable()?;
        if self.node(ino)?.entry.is_dir() {
            return Err(Error::IsDir);
        }
        let end = offset.checked_add(data.len() as u64).ok_or(Error::FileTooBig)?;
        if end > MAX_FILE_SIZE {
            return Err(Error::FileTooBig);
        }
        let size = self.node(ino)?.entry.size as u64;
        self.grow(ino, size, end.max(size))?;
        // Borrowed, not cloned: a large file's chain is long and writes come in small pieces.
        self.chain(ino)?;
        let chain = self.node(ino)?.chain.as_deref().unwrap_or(&[]);
        if offset > size {
            self.span_io(chain, size, &mut Span::Zero(offset - size))?;
        }
        self.span_io(chain, offset, &mut Span::Write(data))?;
        self.flush_fat()?;
        let now = self.now();
        let node = self.node_mut(ino)?;
        node.entry.size = end.max(size) as u32;
        node.entry.modified = FatTime { tenths: 0, ..now };
        node.entry.access_date = now.date;
        node.entry.attr |= ATTR_ARCHIVE;
        self.write_entry(ino)?;
        Ok(data.len())
    }

    fn grow(&mut self, ino: Ino, _size: u64, new_size: u64) -> Result<()> {
        self.ensure_clusters(ino, new_size)?;
        Ok(())
    }

    /// Sets a file's size: shrinking frees clusters, growing adds zeroes.
    pub fn truncate(&mut self, ino: Ino, new_size: u64) -> Result<()> {
        self.check_writable()?;
        if self.node(ino)?.entry.is_dir() {
            return Err(Error::IsDir);
        }
        if new_size > MAX_FILE_SIZE {
            return Err(Error::FileTooBig);
        }
        let size = self.node(ino)?.entry.size as u64;
        let now = self.now();
        if new_size > size {
            self.grow(ino, size, new_size)?;
            let chain = self.chain(ino)?.clone();
            self.span_io(&chain, size, &mut Span::Zero(new_size - size))?;
            self.flush_fat()?;
        }
        let cs = self.bpb.cluster_size() as u64;
        let keep = new_size.div_ceil(cs) as usize;
        let chain = self.chain(ino)?.clone();
        let node = self.node_mut(ino)?;
        node.entry.size = new_size as u32;
        node.entry.modified = FatTime { tenths: 0, ..now };
        node.entry.attr |= ATTR_ARCHIVE;
        if keep == 0 {
            node.entry.first_cluster = 0;
        }
        self.write_entry(ino)?;
        if keep < chain.len() {
            self.fat.free_chain(&chain[keep..]);
            if keep > 0 {
                self.fat.set(chain[keep - 1], Entry::End);
            }
            self.flush_fat()?;
            self.node_mut(ino)?.chain.as_mut().expect("chain loaded").truncate(keep);
        }
        Ok(())
    }

    /// Creates a file or (with `is_dir`) a directory named `name` in `dir`.
    pub fn create(&mut self, dir: Ino, name: &str, is_dir: bool) -> Result<Ino> {
        self.check_writable()?;
        self.load_dir(dir)?;
        let name = names::check_long_name(name)?;
        if self.dir_state(dir)?.index.contains_key(&fold(name)) {
            return Err(Error::Exists);
        }
        let stored = names::short_name_for(name, &self.dir_state(dir)?.shorts)?;
        let now = self.now();
        let mut entry = ShortEntry {
            name: stored.short,
            attr: if is_dir { ATTR_DIRECTORY } else { ATTR_ARCHIVE },
            nt_flags: stored.nt_flags,
            created: now,
            access_date: now.date,
            modified: FatTime { tenths: 0, ..now },
            first_cluster: 0,
            size: 0,
        };
        let mut chain = Vec::new();
        if is_dir {
            chain = self.fat.allocate(None, 1)?;
            let c = chain[0];
            let mut block = vec![0u8; self.bpb.cluster_size() as usize];
            let dot = ShortEntry { name: *b".          ", first_cluster: c, ..entry };
            let parent_cluster = if dir == ROOT { 0 } else { self.node(dir)?.entry.first_cluster };
            let dotdot = ShortEntry { name: *b"..         ", first_cluster: parent_cluster, ..entry };
            block[..32].copy_from_slice(&dot.encode());
            block[32..64].copy_from_slice(&dotdot.encode());
            if let Err(e) = self.file.write_all_at(&block, self.bpb.cluster_offset(c)) {
                self.undo_allocation(None, &chain);
                return Err(e.into());
            }
            self.flush_fat()?;
            // The barrier: the new directory's cluster and FAT entry reach the disk before
            // the entry naming it can, so a power cut never leaves the parent pointing at a
            // cluster of old bytes (garbage entries that `fsck.fat -a` does not drop). One
            // fdatasync per mkdir; files need none, as a file's garbage is only data.
            self.file.sync_data()?;
            entry.first_cluster = c;
        }
        let (first_slot, slot) = match self.insert_entries(dir, name, &stored, &entry) {
            Ok(s) => s,
            Err(e) => {
                if !chain.is_empty() {
                    self.fat.free_chain(&chain);
                    self.flush_fat()?;
                }
                return Err(e);
            }
        };
        let ino = self.add_node(dir, name, first_slot, slot, entry);
        self.node_mut(ino)?.chain = Some(chain);
        Ok(ino)
    }

    fn add_node(&mut self, dir: Ino, name: &str, first_slot: u32, slot: u32, entry: ShortEntry) -> Ino {
        let ino = self.next_ino;
        self.next_ino += 1;
        let node =
            Node { parent: dir, slot, first_slot, name: name.to_string(), entry, chain: None, linked: true, dir: None };
        self.nodes.insert(ino, node);
        if let Ok(state) = self.dir_state_mut(dir) {
            state.by_slot.insert(slot, ino);
            state.index.insert(fold(name), ino);
        }
        ino
    }

    /// Takes node `ino` out of its directory's entries and index.
    fn detach(&mut self, ino: Ino) -> Result<()> {
        let node = self.node(ino)?;
        let (parent, first, slot, key, short) =
            (node.parent, node.first_slot, node.slot, fold(&node.name), node.entry.name);
        self.remove_entries(parent, first, slot)?;
        let state = self.dir_state_mut(parent)?;
        state.by_slot.remove(&slot);
        if state.index.get(&key) == Some(&ino) {
            state.index.remove(&key);
        }
        state.shorts.remove(&short);
        self.node_mut(ino)?.linked = false;
        Ok(())
    }

    /// Removes file `name` from `dir`. Its clusters stay allocated until [`Volume::evict`]
    /// (an unlinked file stays readable while open). Returns its id.
    pub fn unlink(&mut self, dir: Ino, name: &str) -> Result<Ino> {
        self.check_writable()?;
        let ino = self.lookup(dir, name)?;
        if self.node(ino)?.entry.is_dir() {
            return Err(Error::IsDir);
        }
        self.detach(ino)?;
        Ok(ino)
    }

    /// Forgets node `ino` when nothing refers to it any more: an unlinked node's clusters
    /// are freed.
    pub fn evict(&mut self, ino: Ino) -> Result<()> {
        let Some(node) = self.nodes.get(&ino) else { return Ok(()) };
        if node.linked || ino == ROOT {
            return Ok(());
        }
        if !self.read_only {
            let chain = self.chain(ino)?.clone();
            self.fat.free_chain(&chain);
            self.flush_fat()?;
        }
        self.nodes.remove(&ino);
        Ok(())
    }

    /// Removes the empty directory `name` from `dir` and frees its clusters.
    pub fn rmdir(&mut self, dir: Ino, name: &str) -> Result<Ino> {
        self.check_writable()?;
        let ino = self.lookup(dir, name)?;
        if !self.node(ino)?.entry.is_dir() {
            return Err(Error::NotDir);
        }
        self.load_dir(ino)?;
        if !self.dir_state(ino)?.by_slot.is_empty() {
            return Err(Error::NotEmpty);
        }
        self.detach(ino)?;
        let chain = self.chain(ino)?.clone();
        self.fat.free_chain(&chain);
        self.flush_fat()?;
        let node = self.node_mut(ino)?;
        node.chain = Some(Vec::new());
        node.entry.first_cluster = 0;
        node.dir = None;
        Ok(ino)
    }

    fn is_ancestor(&self, ancestor: Ino, mut ino: Ino) -> Result<bool> {
        loop {
            if ino == ancestor {
                return Ok(true);
            }
            if ino == ROOT {
                return Ok(false);
            }
            ino = self.node(ino)?.parent;
        }
    }

    /// Renames `name` in `dir` to `new_name` in `new_dir`, replacing a file, or an empty
    /// directory, of that name unless `noreplace`. Returns the id of a replaced node, which
    /// the caller evicts when nothing refers to it.
    pub fn rename(
        &mut self,
        dir: Ino,
        name: &str,
        new_dir: Ino,
        new_name: &str,
        noreplace: bool,
    ) -> Result<Option<Ino>> {
        self.check_writable()?;
        let src = self.lookup(dir, name)?;
        self.load_dir(new_dir)?;
        let new_name = names::check_long_name(new_name)?;
        let target = self.dir_state(new_dir)?.index.get(&fold(new_name)).copied();
        let src_is_dir = self.node(src)?.entry.is_dir();
        if src_is_dir && self.is_ancestor(src, new_dir)? {
            return Err(Error::Invalid("cannot move a directory into itself".into()));
        }
        let same_name = self.node(src)?.name == new_name && dir == new_dir;
        let mut replaced = None;
        match target {
            Some(t) if t == src && same_name => return Ok(None),
            Some(t) if t == src => {}
            Some(_) if noreplace => return Err(Error::Exists),
            Some(t) => {
                let t_is_dir = self.node(t)?.entry.is_dir();
                match (src_is_dir, t_is_dir) {
                    (true, false) => return Err(Error::NotDir),
                    (false, true) => return Err(Error::IsDir),
                    (true, true) => {
                        self.rmdir(new_dir, new_name)?;
                    }
                    (false, false) => {
                        self.detach(t)?;
                        replaced = Some(t);
                    }
                }
            }
            None => {}
        }
        let old = self.node(src)?;
        let (old_first, old_slot, old_short) = (old.first_slot, old.slot, old.entry.name);
        let mut entry = old.entry;
        let mut taken = self.dir_state(new_dir)?.shorts.clone();
        if new_dir == dir {
            taken.remove(&old_short);
        }
        let stored = names::short_name_for(new_name, &taken)?;
        entry.name = stored.short;
        entry.nt_flags = stored.nt_flags;
        // The new entry first, then the old one goes: a crash in between leaves two names
        // for one chain (with a case-only rename, two entries with one short name), which
        // fsck.fat resolves, never a lost file.
        let (first_slot, slot) = self.insert_entries(new_dir, new_name, &stored, &entry)?;
        if self.node(src)?.linked {
            // A barrier, so that even a power cut (the kernel writing pages back in any
            // order) cannot land the deletion without the new entry.
            self.file.sync_data()?;
            self.detach(src)?;
        }
        // Detaching forgot the old short name, which may be the new one too.
        self.dir_state_mut(new_dir)?.shorts.insert(stored.short);
        let _ = (old_first, old_slot);
        let node = self.node_mut(src)?;
        node.parent = new_dir;
        node.first_slot = first_slot;
        node.slot = slot;
        node.name = new_name.to_string();
        node.entry = entry;
        node.linked = true;
        let state = self.dir_state_mut(new_dir)?;
        state.by_slot.insert(slot, src);
        state.index.insert(fold(new_name), src);
        if src_is_dir && new_dir != dir {
            self.load_dir(src)?;
            let parent_cluster = if new_dir == ROOT { 0 } else { self.node(new_dir)?.entry.first_cluster };
            let state = self.dir_state_mut(src)?;
            let mut dotdot = ShortEntry::decode(&state.raw[32..64]);
            if &dotdot.name == b"..         " {
                dotdot.first_cluster = parent_cluster;
                state.raw[32..64].copy_from_slice(&dotdot.encode());
                self.write_dir_slots(src, 1, 1)?;
            }
        }
        Ok(replaced)
    }

    /// Sets the modification time and access date.
    pub fn set_times(&mut self, ino: Ino, modified: Option<FatTime>, accessed: Option<FatTime>) -> Result<()> {
        self.check_writable()?;
        let node = self.node_mut(ino)?;
        if let Some(m) = modified {
            node.entry.modified = FatTime { tenths: 0, ..m };
        }
        if let Some(a) = accessed {
            node.entry.access_date = a.date;
        }
        self.write_entry(ino)
    }

    /// Sets the attribute bits read-only, hidden, system and archive (others are kept).
    pub fn set_attributes(&mut self, ino: Ino, attr: u8) -> Result<()> {
        self.check_writable()?;
        let node = self.node_mut(ino)?;
        node.entry.attr = (node.entry.attr & !0x27) | (attr & 0x27);
        self.write_entry(ino)
    }

    /// Space on the volume.
    pub fn space(&self) -> Space {
        Space {
            cluster_size: self.bpb.cluster_size(),
            clusters: self.bpb.cluster_count,
            free_clusters: self.fat.free_clusters(),
        }
    }

    /// The volume label: the root directory's label entry, else the boot sector's; None
    /// when neither holds one.
    pub fn label(&self) -> Option<String> {
        let state = self.dir_state(ROOT).ok()?;
        let raw = match state.label_slot {
            Some(s) => {
                let mut l = [0u8; 11];
                l.copy_from_slice(&state.raw[s as usize * ENTRY_SIZE..s as usize * ENTRY_SIZE + 11]);
                l
            }
            None => self.bpb.label,
        };
        let s: String = raw.iter().map(|&b| b as char).collect::<String>().trim_end().to_string();
        (!s.is_empty() && s != "NO NAME").then_some(s)
    }

    /// Sets the volume label (up to 11 characters that a short name may hold, stored in
    /// upper case) in the root directory and the boot sector.
    pub fn set_label(&mut self, label: &str) -> Result<()> {
        self.check_writable()?;
        let upper = label.to_uppercase();
        if upper.len() > 11 || !upper.chars().all(|c| c.is_ascii_alphanumeric() || " $%'-_@~`!(){}^#&".contains(c)) {
            return Err(Error::InvalidName(format!("{label:?} is not a FAT volume label (up to 11 ASCII characters)")));
        }
        let mut raw = [b' '; 11];
        raw[..upper.len()].copy_from_slice(upper.as_bytes());
        let now = self.now();
        let entry = ShortEntry { name: raw, attr: ATTR_VOLUME_ID, modified: now, ..ShortEntry::default() };
        let slot = match self.dir_state(ROOT)?.label_slot {
            Some(s) => s,
            None => {
                let s = self.free_slots(ROOT, 1)?;
                let state = self.dir_state_mut(ROOT)?;
                state.end = state.end.max(s + 1);
                s
            }
        };
        let state = self.dir_state_mut(ROOT)?;
        state.raw[slot as usize * ENTRY_SIZE..(slot as usize + 1) * ENTRY_SIZE].copy_from_slice(&entry.encode());
        state.label_slot = Some(slot);
        self.write_dir_slots(ROOT, slot, 1)?;
        self.file.write_all_at(&raw, self.bpb.label_offset())?;
        self.bpb.label = raw;
        Ok(())
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            tracing::error!("unmounting the FAT volume failed: {e}");
        }
    }
}

enum Span<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
    Zero(u64),
}

impl Span<'_> {
    fn len(&self) -> usize {
        match self {
            Span::Read(b) => b.len(),
            Span::Write(b) => b.len(),
            Span::Zero(n) => *n as usize,
        }
    }
}
