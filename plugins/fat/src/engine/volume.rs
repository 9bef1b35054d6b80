//! A mounted FAT volume: nodes (files and directories with stable ids while mounted),
//! directory loading with a per-directory name index, reading and writing file data in
//! runs of contiguous clusters, and every change to the tree.
//!
//! **Write ordering.** Growing a file writes its data first, then the FAT (every copy),
//! then its directory entry; creating a directory writes its first cluster, then the FAT,
//! then the entry in its parent. Shrinking and removing go the other way: the directory
//! entry first, then the FAT. A crash between the steps leaves at worst lost clusters or a
//! size shorter than the chain, both of which `fsck.fat` repairs without touching other
//! files. With several writers at once, one operation's FAT flush may carry another's
//! allocation before that one has written its data; that is the same state as a crash
//! between its data and its FAT (its entry, written last, does not name the clusters yet,
//! or names them only up to its old size), so the rule that matters, the directory entry
//! last, holds for every operation. A directory has no size to hide clusters behind: it
//! grows by clusters allocated unlinked, zeroed on disk, synced (a barrier, so not even a
//! power cut lands the link without the zeroes), and only then linked into its chain
//! (`free_slots`), so no other thread's flush can make it name a cluster of old bytes.
//!
//! **Locking.** A volume is used from many threads at once (every method takes `&self`).
//! Its state is split by who changes it, each part behind its own lock:
//!
//! - `cell` (one `RwLock<FileState>` per file): the file's cluster chain cache, size and
//!   first cluster as its IO sees them. Reads take it shared, writes and truncates
//!   exclusively, for the whole call including the data IO; IO to different files
//!   therefore runs in parallel, and IO to one file is ordered.
//! - `ns` (one `RwLock<Namespace>`): every node's name, parent, slots and directory entry,
//!   every directory's entries, index and chain, the label. One lock for the whole tree,
//!   not one per directory: rename changes two directories and walks the parents of its
//!   target to refuse moving a directory into itself, so per-directory locks would need a
//!   tree-wide lock or an ordering of their own for it, and every namespace operation is
//!   short (memory, plus a few writes of 32-byte entries; mkdir's barrier `fdatasync` runs
//!   before the lock is taken, rename's, rmdir's and a directory growth's under it). No
//!   file data is read or written under it. Lookups, listings and stat take it shared
//!   (a stat of a directory not read yet takes it exclusively once, to read it).
//! - `fat` (one `Mutex<Fat>`): the FAT in memory, the free count and next-free hint, the
//!   map of claimed clusters, and flushing changed sectors to every FAT copy and FSInfo,
//!   so copies stay identical and flushes never interleave. Held only for in-memory
//!   allocation, freeing or chain walking, and for a flush.
//! - `files` (one `RwLock` around the table of file cells): held only to find, add or
//!   remove a cell, never while taking another lock.
//! - `scan` (one `Mutex<()>`): held only by the one scan of the whole tree that finds
//!   cross-linked clusters (see **Damage** below), so it runs once; taken holding at most
//!   a file cell.
//!
//! **Lock order**, the only one: file cell, then `scan`, then `ns`, then `fat`. `files` and
//! `fat` are leaves: nothing is taken while one of them is held. A thread holding `ns`
//! never takes a file cell or `scan`; a thread holding `fat` takes nothing.
//!
//! **Damage.** A cluster two directory entries' chains reach (cross-linked) can only be
//! proven unshared by knowing every chain, and chains are loaded lazily. So before the
//! first change that could free or overwrite a cluster of an existing chain or extend it,
//! the volume walks every directory once (loaded ones from memory, the others from the
//! image) and every chain in them, and remembers the clusters more than one chain reaches
//! (`shared`). Two chains that meet share everything from the meeting cluster to their
//! end, so a chain is cross-linked exactly when its last cluster is shared: that one bit
//! is what every change checks. A cross-linked file or directory then refuses writes,
//! truncates and entry changes with `Corrupt` (EIO), and its clusters are never freed
//! (leaked instead, which `fsck.fat` reclaims). New clusters are never shared and shared
//! ones are never freed, so the map stays right for the rest of the mount. The same scan
//! finds free clusters that broken chains run into, which are then never allocated.
//! Read-only volumes change nothing and never scan.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::bpb::{Bpb, FatType};
use super::dir::{self, ATTR_ARCHIVE, ATTR_DIRECTORY, ATTR_VOLUME_ID, DELETED, ENTRY_SIZE, ShortEntry};
use super::error::{Error, Result};
use super::fat::{Entry, Fat};
use super::io::Disk;
use super::names::{self, Codepage, fold};
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
    /// The OEM code page of short names (vfat's `codepage=`, 437 by default).
    pub codepage: Codepage,
    /// Never update access dates on reads (vfat's `noatime`). Without it a read updates
    /// the access date as Linux's default `relatime` does, at FAT's one-day resolution.
    pub noatime: bool,
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
    /// Links: for a directory 2 + its subdirectories (its `.`, its entry in the parent and
    /// each subdirectory's `..`, as Linux vfat counts), 0 once removed; 1 for a file.
    pub nlink: u32,
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
    /// Free clusters that can be allocated (on FAT12, not those whose FAT entry straddles
    /// two sectors, which the allocator never uses).
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
    /// Subdirectories listed in it, counted at load and kept by every change, so a
    /// directory's link count costs no scan.
    subdirs: u32,
}

/// A node as the namespace knows it (under `ns`).
struct Node {
    parent: Ino,
    slot: u32,
    first_slot: u32,
    name: String,
    /// The directory entry as on disk. For a file, `size` and `first_cluster` follow its
    /// [`FileState`] each time a write or truncate writes the entry.
    entry: ShortEntry,
    /// A directory's cluster chain, cached (files keep theirs in their [`FileState`]).
    chain: Option<Vec<u32>>,
    /// False once removed from its directory (an unlinked file still open).
    linked: bool,
    dir: Option<DirState>,
}

/// What a file's IO needs, under the file's own lock.
struct FileState {
    first_cluster: u32,
    size: u32,
    /// The cluster chain, cached once walked (None: not walked yet).
    chain: Option<Vec<u32>>,
    /// The FAT date on which a read last found the entry's access date current (0: not
    /// yet): later reads that day skip the namespace lock `note_access` takes.
    access_checked: AtomicU16,
}

type FileCell = Arc<RwLock<FileState>>;

/// The tree: every node, every loaded directory, the label (under `ns`).
struct Namespace {
    nodes: HashMap<Ino, Node>,
    next_ino: Ino,
    /// The boot sector's label.
    boot_label: [u8; 11],
}

/// A mounted FAT volume.
pub struct Volume {
    file: Disk,
    bpb: Bpb,
    tz_offset: i64,
    codepage: Codepage,
    noatime: bool,
    fsinfo_ok: bool,
    read_only: AtomicBool,
    unmounted: AtomicBool,
    ns: RwLock<Namespace>,
    fat: Mutex<Fat>,
    files: RwLock<HashMap<Ino, FileCell>>,
    /// What the scan of every chain found, once, before the first change (see
    /// [`Volume::ownership`]).
    ownership: OnceLock<Ownership>,
    scan: Mutex<()>,
}

/// What the scan of every directory and chain found.
struct Ownership {
    /// One bit per cluster: reached by more than one directory entry's chain.
    shared: Vec<u64>,
    /// Free clusters that a directory entry's chain runs into (an entry naming a free
    /// first cluster, or a chain whose FAT entry links to a free one). Never allocated:
    /// a new file's data there would become that entry's too, a cross-link made by us
    /// (and `fsck.fat` may then truncate the new file rather than the damaged one).
    reserved: Vec<u32>,
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

/// The valid start of the broken chain from `first` (up to the cluster out of range, free,
/// bad, or seen before in it), and the free cluster it runs into when that is why it is
/// broken.
fn chain_start(fat: &Fat, first: u32) -> (Vec<u32>, Option<u32>) {
    let (mut start, mut seen) = (Vec::new(), HashSet::new());
    let mut c = first;
    while fat.in_range(c) && seen.insert(c) {
        match fat.get(c) {
            Entry::Free => return (start, Some(c)),
            Entry::Bad => break,
            Entry::End => {
                start.push(c);
                break;
            }
            Entry::Next(n) => {
                start.push(c);
                c = n;
            }
        }
    }
    (start, None)
}

/// Takes the image's `flock`, retrying for half a second before it gives up. A lock is
/// held by the open file description, which a process forked by another thread of this
/// one shares until it execs: a volume closed and opened again (a remount, a test) can
/// find its own old lock held for that moment. Another mount holds it for good.
fn lock_image(file: &File, op: rustix::fs::FlockOperation) -> rustix::io::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
    loop {
        match rustix::fs::flock(file, op) {
            Err(rustix::io::Errno::WOULDBLOCK) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

fn poisoned<T>(_: T) -> Error {
    Error::Io(std::io::Error::other("a lock of the FAT volume was poisoned by a panic"))
}

fn read<T>(lock: &RwLock<T>) -> Result<RwLockReadGuard<'_, T>> {
    lock.read().map_err(poisoned)
}

fn write<T>(lock: &RwLock<T>) -> Result<RwLockWriteGuard<'_, T>> {
    lock.write().map_err(poisoned)
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
        lock_image(&file, op)
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
        let boot_label = bpb.label;
        let vol = Volume {
            file,
            bpb,
            tz_offset: options.tz_offset,
            codepage: options.codepage,
            noatime: options.noatime,
            fsinfo_ok,
            read_only: AtomicBool::new(options.read_only),
            unmounted: AtomicBool::new(false),
            ns: RwLock::new(Namespace { nodes: HashMap::from([(ROOT, root)]), next_ino: ROOT + 1, boot_label }),
            fat: Mutex::new(fat),
            files: RwLock::new(HashMap::new()),
            ownership: OnceLock::new(),
            scan: Mutex::new(()),
        };
        vol.ns_write()?.load_dir(&vol, ROOT)?;
        if !vol.is_read_only() {
            let mut state = [0u8];
            vol.file.read_exact_at(&mut state, vol.bpb.state_byte_offset())?;
            if state[0] & 1 != 0 {
                tracing::warn!("the volume was not unmounted cleanly: `fsck.fat` can check and repair it");
            }
            vol.set_dirty(true)?;
        }
        Ok(vol)
    }

    /// The boot sector's parameters (as at mount: `label` reads the label).
    pub fn bpb(&self) -> &Bpb {
        &self.bpb
    }

    /// Whether the volume refuses changes.
    pub fn is_read_only(&self) -> bool {
        self.read_only.load(Ordering::Acquire)
    }

    /// The tz offset timestamps are read and written with.
    pub fn tz_offset(&self) -> i64 {
        self.tz_offset
    }

    fn ns_read(&self) -> Result<RwLockReadGuard<'_, Namespace>> {
        read(&self.ns)
    }

    fn ns_write(&self) -> Result<RwLockWriteGuard<'_, Namespace>> {
        write(&self.ns)
    }

    fn fat(&self) -> Result<MutexGuard<'_, Fat>> {
        self.fat.lock().map_err(poisoned)
    }

    fn set_dirty(&self, dirty: bool) -> Result<()> {
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
    pub fn unmount(&self) -> Result<()> {
        if self.unmounted.load(Ordering::Acquire) || self.is_read_only() {
            self.unmounted.store(true, Ordering::Release);
            return Ok(());
        }
        self.flush()?;
        self.file.sync_data()?;
        self.set_dirty(false)?;
        self.file.sync_data()?;
        self.unmounted.store(true, Ordering::Release);
        self.read_only.store(true, Ordering::Release);
        Ok(())
    }

    /// Makes everything written so far durable.
    pub fn sync(&self) -> Result<()> {
        if !self.is_read_only() {
            self.flush()?;
            self.file.sync_data()?;
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        if self.is_read_only() { Err(Error::ReadOnly) } else { Ok(()) }
    }

    /// Writes the FAT's changed sectors to every copy (and FSInfo).
    fn flush(&self) -> Result<()> {
        let mut fat = self.fat()?;
        self.flush_fat(&mut fat)
    }

    /// [`Volume::flush`] with the FAT already locked: the writes are issued under the lock,
    /// so once a thread holds it, every change made before is on its way to every copy.
    fn flush_fat(&self, fat: &mut Fat) -> Result<()> {
        let bpb = &self.bpb;
        let (free, hint) = (fat.free_clusters(), fat.next_free_hint());
        let dirty = fat.take_dirty();
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
            b[..4].copy_from_slice(&free.to_le_bytes());
            b[4..].copy_from_slice(&hint.to_le_bytes());
            self.file.write_all_at(&b, at)?;
        }
        Ok(())
    }

    fn now(&self) -> FatTime {
        time::now(self.tz_offset)
    }

    /// The lock of file `ino`'s IO state; `IsDir` for a directory.
    fn file_cell(&self, ino: Ino) -> Result<FileCell> {
        if let Some(cell) = read(&self.files)?.get(&ino) {
            return Ok(cell.clone());
        }
        match self.ns_read()?.node(ino)?.entry.is_dir() {
            true => Err(Error::IsDir),
            false => Err(Error::NotFound),
        }
    }

    /// Walks (once) and claims the chain of a file whose lock the caller holds. `name`
    /// names it in errors; it is called with no lock of the volume's held.
    fn load_chain<'s>(&self, st: &'s mut FileState, name: impl FnOnce() -> String) -> Result<&'s mut Vec<u32>> {
        if st.chain.is_none() {
            let loaded = {
                let mut fat = self.fat()?;
                fat.chain(st.first_cluster).and_then(|chain| fat.claim(&chain).map(|()| chain))
            };
            match loaded {
                Ok(chain) => st.chain = Some(chain),
                Err(e) => return Err(corrupt_context(&name(), e)),
            }
        }
        Ok(st.chain.as_mut().expect("just filled"))
    }

    /// Name of `ino` for an error message (empty when it is gone).
    fn name_for_error(&self, ino: Ino) -> String {
        self.name(ino).unwrap_or_default()
    }

    /// Makes sure the map of clusters more than one chain reaches is known: the first call
    /// scans the whole tree (see **Damage** in the module docs). Call it holding at most a
    /// file's cell, never `ns` or `fat`.
    fn ownership(&self) -> Result<()> {
        if self.ownership.get().is_some() {
            return Ok(());
        }
        let _scan = self.scan.lock().map_err(poisoned)?;
        if self.ownership.get().is_none() {
            let found = self.scan_chains()?;
            let _ = self.ownership.set(found);
        }
        Ok(())
    }

    /// Whether cluster `c` is reached by more than one chain (false before the scan).
    fn is_shared(&self, c: u32) -> bool {
        let word = self.ownership.get().and_then(|o| o.shared.get(c as usize / 64));
        word.is_some_and(|w| w & (1 << (c % 64)) != 0)
    }

    /// [`Fat::allocate`], never handing out a reserved cluster (see [`Ownership`]): they
    /// are taken out of the free map around the call and put back after, under the FAT's
    /// lock; their FAT entries are never touched. Usually there are none.
    fn allocate(&self, fat: &mut Fat, after: Option<u32>, count: u32) -> Result<Vec<u32>> {
        let reserved = self.ownership.get().map(|o| &o.reserved[..]).unwrap_or(&[]);
        let held: Vec<u32> = reserved.iter().copied().filter(|&c| fat.get(c) == Entry::Free).collect();
        fat.hold(&held);
        let got = fat.allocate(after, count);
        fat.release(&held);
        got
    }

    /// Refuses changing a chain that is cross-linked (whose last cluster is shared).
    fn check_unshared(&self, name: &str, chain: &[u32]) -> Result<()> {
        match chain.last() {
            Some(&c) if self.is_shared(c) => Err(corrupt_context(
                name,
                Error::Corrupt(format!(
                    "its chain shares clusters (up to its last, {c}) with another entry's chain \
                     (cross-linked): not changing it"
                )),
            )),
            _ => Ok(()),
        }
    }

    /// Walks every directory and every chain named in one, and returns one bit per cluster
    /// reached by more than one of them. Directories loaded are read from memory (their
    /// bytes are what is on disk), the others from the image; `ns` is held shared
    /// throughout, so no directory changes or loads meanwhile. File writes may run: they
    /// only allocate fresh clusters, which no entry on disk names.
    ///
    /// Damaged directories are read too, as `fsck.fat` reads them (their entries are
    /// entries to it): one that is cross-linked, and the valid start of a broken chain. A
    /// chain is read as a directory once, whatever names it, so cycles end; and the scan
    /// reads at most as many bytes as the data area holds (what a volume's directories
    /// can add up to) and otherwise gives up proving anything: every existing chain then
    /// counts as shared. Broken chains cannot meet healthy ones (a chain that runs into a
    /// broken one is broken too); they answer EIO on every use and are never freed, and
    /// the free cluster one runs into is reserved.
    fn scan_chains(&self) -> Result<Ownership> {
        let words = (self.bpb.cluster_count as usize + 2).div_ceil(64);
        let (mut seen, mut shared) = (vec![0u64; words], vec![0u64; words]);
        let has = |map: &[u64], c: u32| map[c as usize / 64] & (1 << (c % 64)) != 0;
        let set = |map: &mut [u64], c: u32| map[c as usize / 64] |= 1 << (c % 64);
        let ns = self.ns_read()?;
        // (name, first cluster, whether it is a directory to read from the image)
        let mut queue: Vec<(String, u32, bool)> = Vec::new();
        for (&ino, node) in &ns.nodes {
            if ino == ROOT {
                queue.push(("/".into(), node.entry.first_cluster, false));
            } else if !node.linked && !node.entry.is_dir() {
                // Unlinked but open: in no directory, its clusters still allocated.
                queue.push((node.name.clone(), node.entry.first_cluster, false));
            }
            let Some(state) = &node.dir else { continue };
            for p in dir::parse(&state.raw).entries {
                let loaded = state.by_slot.get(&p.slot).and_then(|i| ns.nodes.get(i)).is_some_and(|n| n.dir.is_some());
                queue.push((p.name, p.entry.first_cluster, p.entry.is_dir() && !loaded));
            }
        }
        let cs = self.bpb.cluster_size() as usize;
        let mut dirs = 0usize;
        let mut reserved = Vec::new();
        // First clusters of the directories read (or loaded), so each is read once.
        let mut read: HashSet<u32> =
            ns.nodes.values().filter(|n| n.dir.is_some()).map(|n| n.entry.first_cluster).collect();
        let mut budget = self.bpb.cluster_count as u64 * cs as u64;
        while let Some((name, first, read_dir)) = queue.pop() {
            let (chain, healthy) = {
                let fat = self.fat()?;
                match fat.chain(first) {
                    Ok(chain) => (chain, true),
                    Err(_) => {
                        let (start, free) = chain_start(&fat, first);
                        reserved.extend(free);
                        (start, false)
                    }
                }
            };
            if healthy && let Some(i) = chain.iter().position(|&c| has(&seen, c)) {
                chain[..i].iter().for_each(|&c| set(&mut seen, c));
                chain[i..].iter().for_each(|&c| set(&mut shared, c));
                tracing::error!(
                    file = name,
                    "corrupt filesystem: cluster {} and the rest of its chain are also in another entry's \
                     chain (cross-linked); neither is changed or freed until fsck.fat repairs it",
                    chain[i]
                );
            } else if healthy {
                chain.iter().for_each(|&c| set(&mut seen, c));
            }
            if !read_dir || chain.is_empty() || !read.insert(first) {
                continue;
            }
            let clusters = chain.len().min(MAX_DIR_SLOTS as usize * ENTRY_SIZE * 2 / cs + 1);
            if (clusters * cs) as u64 > budget {
                tracing::error!(
                    "corrupt filesystem: the directories are too damaged to tell which clusters are shared: \
                     changes to existing files and directories answer EIO until fsck.fat repairs it"
                );
                // Every cluster in use counts as shared; free ones stay free for new files.
                let fat = self.fat()?;
                (2..=fat.max_cluster()).filter(|&c| fat.get(c) != Entry::Free).for_each(|c| set(&mut shared, c));
                break;
            }
            budget -= (clusters * cs) as u64;
            let mut raw = vec![0u8; clusters * cs];
            for (i, &c) in chain[..clusters].iter().enumerate() {
                self.file.read_exact_at(&mut raw[i * cs..(i + 1) * cs], self.bpb.cluster_offset(c))?;
            }
            dirs += 1;
            for p in dir::parse(&raw).entries {
                queue.push((p.name, p.entry.first_cluster, p.entry.is_dir()));
            }
        }
        reserved.sort_unstable();
        reserved.dedup();
        if !reserved.is_empty() {
            tracing::warn!(
                "{} free clusters are named by damaged chains: they are not allocated until fsck.fat repairs the volume",
                reserved.len()
            );
        }
        tracing::debug!(unloaded_directories = dirs, "scanned every chain for cross-links");
        Ok(Ownership { shared, reserved })
    }

    /// Refuses changes to a damaged file whose lock the caller holds (loading its chain):
    /// a broken chain, a size larger than its chain (writing would expose whatever old
    /// bytes the clusters allocated up to that size hold, and hide the damage from
    /// fsck.fat), or a chain shared with another entry.
    fn check_changeable(&self, ino: Ino, st: &mut FileState) -> Result<()> {
        let chain = self.load_chain(st, || self.name_for_error(ino))?;
        let (len, last) = (chain.len() as u64, chain.last().copied());
        if st.size as u64 > len * self.bpb.cluster_size() as u64 {
            let why = format!("size {} is larger than its {len} clusters: not changing it", st.size);
            return Err(corrupt_context(&self.name_for_error(ino), Error::Corrupt(why)));
        }
        self.ownership()?;
        let ns = self.ns_read()?;
        let node = ns.node(ino)?;
        self.check_unshared(&node.name, last.as_slice())?;
        // Its entry is rewritten after the data: its directory must be changeable too (a
        // loaded directory's chain is cached; the FAT12/16 root has none).
        match ns.nodes.get(&node.parent) {
            Some(dir) if node.linked => {
                self.check_unshared(&dir.name, dir.chain.as_deref().and_then(|c| c.last().copied()).as_slice())
            }
            _ => Ok(()),
        }
    }

    /// Writes the directory entry of file `ino` (whose cell the caller holds) from its
    /// state: size, first cluster, modification time (and access date with `access`), the
    /// archive bit. Writes nothing when the entry would not change (most overwrites within
    /// FAT's 2-second resolution), so such writes do not take the namespace exclusively.
    fn update_entry(&self, ino: Ino, st: &FileState, access: bool) -> Result<()> {
        let now = self.now();
        let apply = |e: &mut ShortEntry| {
            e.size = st.size;
            e.first_cluster = st.first_cluster;
            e.modified = FatTime { tenths: 0, ..now };
            if access {
                e.access_date = now.date;
            }
            e.attr |= ATTR_ARCHIVE;
        };
        {
            let ns = self.ns_read()?;
            let node = ns.node(ino)?;
            let mut e = node.entry;
            apply(&mut e);
            if e == node.entry {
                return Ok(());
            }
        }
        let mut ns = self.ns_write()?;
        apply(&mut ns.node_mut(ino)?.entry);
        ns.write_entry(self, ino)
    }

    /// Looks `name` up in directory `dir`, case-insensitively.
    pub fn lookup(&self, dir: Ino, name: &str) -> Result<Ino> {
        if let Some(r) = self.ns_read()?.lookup_loaded(dir, name) {
            return r;
        }
        self.ns_write()?.lookup(self, dir, name)
    }

    /// The directory holding `ino` (the root's is the root).
    pub fn parent(&self, ino: Ino) -> Result<Ino> {
        Ok(self.ns_read()?.node(ino)?.parent)
    }

    /// The name of `ino` as stored.
    pub fn name(&self, ino: Ino) -> Result<String> {
        Ok(self.ns_read()?.node(ino)?.name.clone())
    }

    /// The first cluster of a node's data (0: none).
    pub fn first_cluster(&self, ino: Ino) -> Result<u32> {
        Ok(self.ns_read()?.node(ino)?.entry.first_cluster)
    }

    /// A node's metadata. A directory not read yet is read first (its link count needs
    /// its subdirectories), as Linux vfat does when it first meets a directory's inode.
    pub fn stat(&self, ino: Ino) -> Result<Meta> {
        {
            let ns = self.ns_read()?;
            let node = ns.node(ino)?;
            if !(node.entry.is_dir() && node.linked && node.dir.is_none()) {
                return self.stat_locked(&ns, ino);
            }
        }
        let mut ns = self.ns_write()?;
        // A directory that cannot be read is still stat'ed (its lookups answer the error).
        let _ = ns.load_dir(self, ino);
        self.stat_locked(&ns, ino)
    }

    fn stat_locked(&self, ns: &Namespace, ino: Ino) -> Result<Meta> {
        let cs = self.bpb.cluster_size() as u64;
        let node = ns.node(ino)?;
        let e = node.entry;
        let allocated = if e.is_dir() {
            if ino == ROOT && self.bpb.fat_type != FatType::Fat32 {
                self.bpb.root_entries as u64 * ENTRY_SIZE as u64
            } else {
                let len = match &node.chain {
                    Some(c) => c.len(),
                    None => self.fat()?.chain(e.first_cluster).map(|c| c.len()).unwrap_or(0),
                } as u64;
                len * cs
            }
        } else {
            (e.size as u64).div_ceil(cs) * cs
        };
        let size = if e.is_dir() { allocated } else { e.size as u64 };
        let nlink = match &node.dir {
            _ if !e.is_dir() => 1,
            Some(d) => 2 + d.subdirs,
            None if node.linked => 2,
            None => 0,
        };
        Ok(Meta {
            ino,
            is_dir: e.is_dir(),
            size,
            allocated,
            attr: e.attr,
            created: e.created,
            modified: e.modified,
            access_date: e.access_date,
            nlink,
        })
    }

    /// Lists directory `dir` after slot `after` (None: from the start), at most `max`
    /// entries.
    pub fn list(&self, dir: Ino, after: Option<u32>, max: usize) -> Result<Vec<Listed>> {
        if let Some(r) = self.ns_read()?.list_loaded(dir, after, max) {
            return r;
        }
        let mut ns = self.ns_write()?;
        ns.load_dir(self, dir)?;
        ns.list_loaded(dir, after, max).unwrap_or(Err(Error::NotDir))
    }

    /// Reads up to `buf.len()` bytes at `offset`; fewer at the end of the file. Takes only
    /// the file's lock, shared once its chain is cached; then updates the access date when
    /// it is stale (see [`Volume::note_access`]).
    pub fn read(&self, ino: Ino, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let cell = self.file_cell(ino)?;
        let n = self.read_data(ino, &cell, offset, buf)?;
        if self.noatime || self.is_read_only() {
            return Ok(n);
        }
        // Once a day per file at most the namespace is asked: a read must not wait on the
        // namespace lock, which a rename or a directory growth holds across an fdatasync.
        let today = self.now().date;
        if read(&cell)?.access_checked.load(Ordering::Relaxed) != today {
            match self.note_access(ino, today) {
                Ok(()) => read(&cell)?.access_checked.store(today, Ordering::Relaxed),
                Err(e) => tracing::warn!(file = self.name_for_error(ino), "updating the access date failed: {e}"),
            }
        }
        Ok(n)
    }

    /// After a read, the access date as Linux's default `relatime` keeps it, at FAT's
    /// one-day resolution: set to today (in the mount's tz) when it is before today or not
    /// after the modification date, and only then, so at most one 32-byte entry write per
    /// file and day. The caller skips it on a read-only volume or with `noatime`.
    fn note_access(&self, ino: Ino, today: u16) -> Result<()> {
        let stale =
            |e: &ShortEntry| e.access_date != today && (e.access_date < today || e.access_date <= e.modified.date);
        {
            let ns = self.ns_read()?;
            let node = ns.node(ino)?;
            if !node.linked || !stale(&node.entry) {
                return Ok(());
            }
        }
        // An entry change like any other: the directory must be known unshared first (the
        // write refuses a cross-linked one, which only the scan can tell).
        self.ownership()?;
        let mut ns = self.ns_write()?;
        if !stale(&ns.node(ino)?.entry) {
            return Ok(());
        }
        ns.check_entry_changeable(self, ino)?;
        let node = ns.node_mut(ino)?;
        node.entry.access_date = today;
        ns.write_entry(self, ino)
    }

    fn read_data(&self, ino: Ino, cell: &FileCell, offset: u64, buf: &mut [u8]) -> Result<usize> {
        {
            let st = read(cell)?;
            if st.chain.is_some() {
                return self.read_locked(ino, &st, offset, buf);
            }
        }
        let mut st = write(cell)?;
        self.load_chain(&mut st, || self.name_for_error(ino))?;
        self.read_locked(ino, &st, offset, buf)
    }

    fn read_locked(&self, ino: Ino, st: &FileState, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let size = st.size as u64;
        if offset >= size || buf.is_empty() {
            return Ok(0);
        }
        let chain = st.chain.as_deref().unwrap_or(&[]);
        let n = (size - offset).min(buf.len() as u64) as usize;
        let cs = self.bpb.cluster_size() as u64;
        if (chain.len() as u64) * cs < size {
            let why = format!("size {size} is larger than its {} clusters", chain.len());
            return Err(corrupt_context(&self.name_for_error(ino), Error::Corrupt(why)));
        }
        self.span_io(chain, offset, &mut Span::Read(&mut buf[..n])).map(|()| n)
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

    /// Makes sure the file whose state is `st` has clusters for `bytes` bytes: allocates
    /// the missing ones (after its last cluster when possible) under the FAT's lock, without
    /// flushing the FAT. Returns whether it allocated.
    fn ensure_clusters(&self, ino: Ino, st: &mut FileState, bytes: u64) -> Result<bool> {
        let cs = self.bpb.cluster_size() as u64;
        let need = bytes.div_ceil(cs) as usize;
        let chain = self.load_chain(st, || self.name_for_error(ino))?;
        let have = chain.len();
        if have >= need {
            return Ok(false);
        }
        let last = chain.last().copied();
        let new = self.allocate(&mut *self.fat()?, last, (need - have) as u32)?;
        chain.extend_from_slice(&new);
        if last.is_none() {
            st.first_cluster = new[0];
        }
        Ok(true)
    }

    /// Writes `data` at `offset`, zero-filling any gap after the current end.
    pub fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<usize> {
        self.write_at(ino, Some(offset), data)
    }

    /// Writes `data` at the end of the file (`O_APPEND`): the end is read under the file's
    /// lock, so appends never overlap.
    pub fn append(&self, ino: Ino, data: &[u8]) -> Result<usize> {
        self.write_at(ino, None, data)
    }

    fn write_at(&self, ino: Ino, offset: Option<u64>, data: &[u8]) -> Result<usize> {
        self.check_writable()?;
        let cell = self.file_cell(ino)?;
        let mut st = write(&cell)?;
        self.check_changeable(ino, &mut st)?;
        let size = st.size as u64;
        let offset = offset.unwrap_or(size);
        let end = offset.checked_add(data.len() as u64).ok_or(Error::FileTooBig)?;
        if end > MAX_FILE_SIZE {
            return Err(Error::FileTooBig);
        }
        let allocated = self.ensure_clusters(ino, &mut st, end.max(size))?;
        // Data first, under the file's lock only.
        let chain = st.chain.as_deref().unwrap_or(&[]);
        if offset > size {
            self.span_io(chain, size, &mut Span::Zero(offset - size))?;
        }
        self.span_io(chain, offset, &mut Span::Write(data))?;
        // Then the FAT, then the entry.
        if allocated {
            self.flush()?;
        }
        st.size = end.max(size) as u32;
        self.update_entry(ino, &st, true)?;
        Ok(data.len())
    }

    /// Sets a file's size: shrinking frees clusters, growing adds zeroes.
    pub fn truncate(&self, ino: Ino, new_size: u64) -> Result<()> {
        self.check_writable()?;
        let cell = self.file_cell(ino)?;
        if new_size > MAX_FILE_SIZE {
            return Err(Error::FileTooBig);
        }
        let mut st = write(&cell)?;
        let size = st.size as u64;
        self.check_changeable(ino, &mut st)?;
        if new_size > size {
            self.ensure_clusters(ino, &mut st, new_size)?;
            let chain = st.chain.as_deref().unwrap_or(&[]);
            self.span_io(chain, size, &mut Span::Zero(new_size - size))?;
            self.flush()?;
        }
        let cs = self.bpb.cluster_size() as u64;
        let keep = new_size.div_ceil(cs) as usize;
        st.size = new_size as u32;
        if keep == 0 {
            st.first_cluster = 0;
        }
        // Shrinking: the entry first, then the FAT.
        self.update_entry(ino, &st, false)?;
        let chain = st.chain.as_mut().expect("chain loaded");
        if keep < chain.len() {
            // The cached chain loses the tail before the flush can fail: the clusters are
            // free in memory either way, and a cache still naming them would let a later
            // write reuse clusters another file has been given.
            let tail = chain.split_off(keep);
            let mut fat = self.fat()?;
            fat.free_chain(&tail);
            if keep > 0 {
                fat.set(chain[keep - 1], Entry::End);
            }
            self.flush_fat(&mut fat)?;
        }
        Ok(())
    }

    fn free_clusters(&self, chain: &[u32]) -> Result<()> {
        let mut fat = self.fat()?;
        fat.free_chain(chain);
        self.flush_fat(&mut fat)
    }

    /// Creates a file or (with `is_dir`) a directory named `name` in `dir`.
    pub fn create(&self, dir: Ino, name: &str, is_dir: bool) -> Result<Ino> {
        self.check_writable()?;
        self.ownership()?;
        let name = names::check_long_name(name)?;
        let now = self.now();
        let mut entry = ShortEntry {
            name: [b' '; 11],
            attr: if is_dir { ATTR_DIRECTORY } else { ATTR_ARCHIVE },
            nt_flags: 0,
            created: now,
            access_date: now.date,
            modified: FatTime { tenths: 0, ..now },
            first_cluster: 0,
            size: 0,
        };
        let mut chain = Vec::new();
        let mut parent_cluster = 0;
        if is_dir {
            {
                let mut ns = self.ns_write()?;
                ns.load_dir(self, dir)?;
                let state = ns.dir_state(dir)?;
                if state.index.contains_key(&fold(name)) {
                    return Err(Error::Exists);
                }
                let stored = names::short_name_for(name, &state.shorts, self.codepage)?;
                entry.name = stored.short;
                entry.nt_flags = stored.nt_flags;
                parent_cluster = if dir == ROOT { 0 } else { ns.node(dir)?.entry.first_cluster };
            }
            // The new directory's cluster, its FAT entry and the barrier are made without
            // the namespace lock: an fdatasync must not stop every lookup.
            chain = self.allocate(&mut *self.fat()?, None, 1)?;
            let c = chain[0];
            let mut block = vec![0u8; self.bpb.cluster_size() as usize];
            let dot = ShortEntry { name: *b".          ", first_cluster: c, ..entry };
            let dotdot = ShortEntry { name: *b"..         ", first_cluster: parent_cluster, ..entry };
            block[..32].copy_from_slice(&dot.encode());
            block[32..64].copy_from_slice(&dotdot.encode());
            if let Err(e) = self.file.write_all_at(&block, self.bpb.cluster_offset(c)) {
                self.fat()?.free_chain(&chain);
                return Err(e.into());
            }
            self.flush()?;
            // The barrier: the new directory's cluster and FAT entry reach the disk before
            // the entry naming it can, so a power cut never leaves the parent pointing at a
            // cluster of old bytes (garbage entries that `fsck.fat -a` does not drop). One
            // fdatasync per mkdir; files need none, as a file's garbage is only data.
            self.file.sync_data()?;
            entry.first_cluster = c;
        }
        let mut ns = self.ns_write()?;
        let added = (|| {
            ns.load_dir(self, dir)?;
            if is_dir && parent_cluster != if dir == ROOT { 0 } else { ns.node(dir)?.entry.first_cluster } {
                return Err(Error::NotFound);
            }
            let state = ns.dir_state(dir)?;
            if state.index.contains_key(&fold(name)) {
                return Err(Error::Exists);
            }
            let stored = names::short_name_for(name, &state.shorts, self.codepage)?;
            entry.name = stored.short;
            entry.nt_flags = stored.nt_flags;
            let (first_slot, slot) = ns.insert_entries(self, dir, name, &stored, &entry)?;
            ns.add_node(self, dir, name, first_slot, slot, entry, chain.clone())
        })();
        if added.is_err() && !chain.is_empty() {
            self.free_clusters(&chain)?;
        }
        added
    }

    /// Removes file `name` from `dir`. Its clusters stay allocated until [`Volume::evict`]
    /// (an unlinked file stays readable while open). Returns its id.
    pub fn unlink(&self, dir: Ino, name: &str) -> Result<Ino> {
        self.check_writable()?;
        self.ownership()?;
        let mut ns = self.ns_write()?;
        let ino = ns.lookup(self, dir, name)?;
        if ns.node(ino)?.entry.is_dir() {
            return Err(Error::IsDir);
        }
        ns.detach(self, ino)?;
        Ok(ino)
    }

    /// Forgets node `ino` when nothing refers to it any more: an unlinked node's clusters
    /// are freed.
    pub fn evict(&self, ino: Ino) -> Result<()> {
        // Most calls are for linked nodes the kernel forgot: answer those from the shared
        // lock.
        match self.ns_read()?.nodes.get(&ino) {
            None => return Ok(()),
            Some(node) if node.linked || ino == ROOT => return Ok(()),
            Some(_) => {}
        }
        if !self.is_read_only() {
            self.ownership()?;
        }
        let cell = read(&self.files)?.get(&ino).cloned();
        let mut st = match &cell {
            Some(c) => Some(write(c)?),
            None => None,
        };
        let mut ns = self.ns_write()?;
        let Some(node) = ns.nodes.get(&ino) else { return Ok(()) };
        if node.linked || ino == ROOT {
            return Ok(());
        }
        if !self.is_read_only()
            && let Some(st) = st.as_mut()
        {
            let name = node.name.clone();
            // A damaged chain is not freed: its clusters may be in another entry's chain.
            // They stay allocated, lost once nothing names them, and fsck.fat reclaims
            // them; freeing them would let the next allocation hand them to a third file.
            match self.load_chain(st, || name.clone()) {
                Ok(chain) => match self.check_unshared(&name, chain) {
                    Ok(()) => {
                        // Emptied before the flush can fail: freed clusters must not stay
                        // in the cache.
                        let gone = std::mem::take(chain);
                        self.free_clusters(&gone)?;
                    }
                    Err(_) => tracing::warn!(file = name, "the removed file's clusters are left allocated"),
                },
                Err(Error::Corrupt(_)) => {
                    tracing::warn!(file = name, "the removed file's clusters are left allocated")
                }
                Err(e) => return Err(e),
            }
        }
        ns.nodes.remove(&ino);
        write(&self.files)?.remove(&ino);
        Ok(())
    }

    /// Removes the empty directory `name` from `dir` and frees its clusters.
    pub fn rmdir(&self, dir: Ino, name: &str) -> Result<Ino> {
        self.check_writable()?;
        self.ownership()?;
        self.ns_write()?.rmdir(self, dir, name)
    }

    /// Renames `name` in `dir` to `new_name` in `new_dir`, replacing a file, or an empty
    /// directory, of that name unless `noreplace`. Returns the id of a replaced node, which
    /// the caller evicts when nothing refers to it.
    pub fn rename(&self, dir: Ino, name: &str, new_dir: Ino, new_name: &str, noreplace: bool) -> Result<Option<Ino>> {
        self.check_writable()?;
        self.ownership()?;
        self.ns_write()?.rename(self, dir, name, new_dir, new_name, noreplace)
    }

    /// Sets the modification time and access date.
    pub fn set_times(&self, ino: Ino, modified: Option<FatTime>, accessed: Option<FatTime>) -> Result<()> {
        self.check_writable()?;
        // The next read checks the access date again (relatime: a date set back is stale).
        let cell = read(&self.files)?.get(&ino).cloned(); // `files` is a leaf: let go first
        if let Some(cell) = cell {
            read(&cell)?.access_checked.store(0, Ordering::Relaxed);
        }
        self.ownership()?;
        let mut ns = self.ns_write()?;
        ns.check_entry_changeable(self, ino)?;
        let node = ns.node_mut(ino)?;
        if let Some(m) = modified {
            node.entry.modified = FatTime { tenths: 0, ..m };
        }
        if let Some(a) = accessed {
            node.entry.access_date = a.date;
        }
        ns.write_entry(self, ino)
    }

    /// Sets the attribute bits read-only, hidden, system and archive (others are kept).
    pub fn set_attributes(&self, ino: Ino, attr: u8) -> Result<()> {
        self.check_writable()?;
        self.ownership()?;
        let mut ns = self.ns_write()?;
        ns.check_entry_changeable(self, ino)?;
        let node = ns.node_mut(ino)?;
        node.entry.attr = (node.entry.attr & !0x27) | (attr & 0x27);
        ns.write_entry(self, ino)
    }

    /// How many FAT links cluster-chain walks have followed since mount. Files and
    /// directories walk their chain once and keep it, so this grows with the files opened,
    /// not with the IO done (a cost statistic; tests check the chain caches with it).
    pub fn chain_links_walked(&self) -> u64 {
        self.fat().map(|f| f.links_walked()).unwrap_or(0)
    }

    /// Space on the volume.
    pub fn space(&self) -> Space {
        let reserved = self.ownership.get().map(|o| &o.reserved[..]).unwrap_or(&[]);
        let free_clusters = self
            .fat()
            .map(|f| {
                let held = reserved.iter().filter(|&&c| f.get(c) == Entry::Free).count() as u32;
                f.allocatable_clusters().saturating_sub(held)
            })
            .unwrap_or(0);
        Space { cluster_size: self.bpb.cluster_size(), clusters: self.bpb.cluster_count, free_clusters }
    }

    /// The volume label: the root directory's label entry, else the boot sector's; None
    /// when neither holds one.
    pub fn label(&self) -> Option<String> {
        let ns = self.ns_read().ok()?;
        let state = ns.dir_state(ROOT).ok()?;
        let raw = match state.label_slot {
            Some(s) => {
                let mut l = [0u8; 11];
                l.copy_from_slice(&state.raw[s as usize * ENTRY_SIZE..s as usize * ENTRY_SIZE + 11]);
                l
            }
            None => ns.boot_label,
        };
        let s: String = raw.iter().map(|&b| self.codepage.decode(b)).collect::<String>().trim_end().to_string();
        (!s.is_empty() && s != "NO NAME").then_some(s)
    }

    /// Sets the volume label (up to 11 characters that a short name may hold, stored in
    /// upper case) in the root directory, the boot sector and, on FAT32, the backup boot
    /// sector (which `fsck.fat` compares with the boot sector).
    pub fn set_label(&self, label: &str) -> Result<()> {
        self.check_writable()?;
        // It may grow the FAT32 root and writes its entries: like every change, only once
        // the scan knows which clusters are shared or reserved.
        self.ownership()?;
        let upper = label.to_uppercase();
        if upper.len() > 11 || !upper.chars().all(|c| c.is_ascii_alphanumeric() || " $%'-_@~`!(){}^#&".contains(c)) {
            return Err(Error::InvalidName(format!("{label:?} is not a FAT volume label (up to 11 ASCII characters)")));
        }
        let mut raw = [b' '; 11];
        raw[..upper.len()].copy_from_slice(upper.as_bytes());
        let now = self.now();
        let entry = ShortEntry { name: raw, attr: ATTR_VOLUME_ID, modified: now, ..ShortEntry::default() };
        let mut ns = self.ns_write()?;
        let slot = match ns.dir_state(ROOT)?.label_slot {
            Some(s) => s,
            None => {
                let s = ns.free_slots(self, ROOT, 1)?;
                let state = ns.dir_state_mut(ROOT)?;
                state.end = state.end.max(s + 1);
                s
            }
        };
        let state = ns.dir_state_mut(ROOT)?;
        state.raw[slot as usize * ENTRY_SIZE..(slot as usize + 1) * ENTRY_SIZE].copy_from_slice(&entry.encode());
        state.label_slot = Some(slot);
        ns.write_dir_slots(self, ROOT, slot, 1)?;
        self.file.write_all_at(&raw, self.bpb.label_offset())?;
        if let Some(at) = self.backup_boot_offset()? {
            self.file.write_all_at(&raw, at + self.bpb.label_offset())?;
        }
        ns.boot_label = raw;
        Ok(())
    }

    /// Byte offset of the FAT32 backup boot sector (BPB `BkBootSec`, usually sector 6),
    /// when the BPB names one inside the reserved sectors and it holds a boot sector with
    /// the extended signature (so writing its label field cannot hit anything else).
    fn backup_boot_offset(&self) -> Result<Option<u64>> {
        let b = &self.bpb;
        let sector = b.backup_boot_sector;
        if b.fat_type != FatType::Fat32 || sector == 0 || sector >= b.reserved_sectors {
            return Ok(None);
        }
        let at = sector as u64 * b.bytes_per_sector as u64;
        let mut s = [0u8; 512];
        self.file.read_exact_at(&mut s, at)?;
        Ok((s[510..512] == [0x55, 0xAA] && s[66] == 0x29).then_some(at))
    }
}

/// The namespace's operations, called with `ns` held (exclusively where `&mut self`);
/// `v` gives the image, the boot sector and the FAT's lock (taken after `ns`).
impl Namespace {
    fn node(&self, ino: Ino) -> Result<&Node> {
        self.nodes.get(&ino).ok_or(Error::NotFound)
    }

    fn node_mut(&mut self, ino: Ino) -> Result<&mut Node> {
        self.nodes.get_mut(&ino).ok_or(Error::NotFound)
    }

    fn dir_state(&self, ino: Ino) -> Result<&DirState> {
        self.node(ino)?.dir.as_ref().ok_or(Error::NotDir)
    }

    fn dir_state_mut(&mut self, ino: Ino) -> Result<&mut DirState> {
        self.node_mut(ino)?.dir.as_mut().ok_or(Error::NotDir)
    }

    /// The cluster chain of directory `ino`, cached.
    fn dir_chain(&mut self, v: &Volume, ino: Ino) -> Result<&Vec<u32>> {
        let node = self.nodes.get_mut(&ino).ok_or(Error::NotFound)?;
        if node.chain.is_none() {
            let loaded = {
                let mut fat = v.fat()?;
                fat.chain(node.entry.first_cluster).and_then(|chain| fat.claim(&chain).map(|()| chain))
            };
            node.chain = Some(loaded.map_err(|e| corrupt_context(&node.name, e))?);
        }
        Ok(node.chain.as_ref().expect("just filled"))
    }

    /// Refuses changing directory `ino` when its chain is cross-linked with another entry's
    /// (writing its entries would overwrite that entry's data or entries).
    fn check_dir_unshared(&mut self, v: &Volume, ino: Ino) -> Result<()> {
        if ino == ROOT && v.bpb.fat_type != FatType::Fat32 {
            return Ok(());
        }
        let last = self.dir_chain(v, ino)?.last().copied();
        v.check_unshared(&self.node(ino)?.name, last.as_slice())
    }

    /// Byte extents (offset, length) holding directory `ino`'s entries, in order.
    fn dir_extents(&mut self, v: &Volume, ino: Ino) -> Result<Vec<(u64, u64)>> {
        if ino == ROOT && v.bpb.fat_type != FatType::Fat32 {
            return Ok(vec![(v.bpb.root_dir_offset, v.bpb.root_entries as u64 * ENTRY_SIZE as u64)]);
        }
        let cs = v.bpb.cluster_size() as u64;
        let chain = self.dir_chain(v, ino)?;
        Ok(chain.iter().map(|&c| (v.bpb.cluster_offset(c), cs)).collect())
    }

    fn load_dir(&mut self, v: &Volume, ino: Ino) -> Result<()> {
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
        let extents = self.dir_extents(v, ino)?;
        let total: u64 = extents.iter().map(|e| e.1).sum();
        if total > MAX_DIR_SLOTS * ENTRY_SIZE as u64 * 2 {
            let name = self.node(ino)?.name.clone();
            return Err(corrupt_context(&name, Error::Corrupt(format!("directory of {total} bytes is too large"))));
        }
        let mut raw = vec![0u8; total as usize];
        let mut at = 0usize;
        for (off, len) in extents {
            v.file.read_exact_at(&mut raw[at..at + len as usize], off)?;
            at += len as usize;
        }
        let listing = dir::parse_with(&raw, v.codepage);
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
            subdirs: 0,
        };
        state.holes = (0..state.end as usize).filter(|&s| state.raw[s * ENTRY_SIZE] == DELETED).count() as u32;
        let mut cells = Vec::new();
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
            state.subdirs += p.entry.is_dir() as u32;
            if !p.entry.is_dir() {
                let st = FileState {
                    first_cluster: p.entry.first_cluster,
                    size: p.entry.size,
                    chain: None,
                    access_checked: AtomicU16::new(0),
                };
                cells.push((child, Arc::new(RwLock::new(st))));
            }
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
        write(&v.files)?.extend(cells);
        self.node_mut(ino)?.dir = Some(state);
        Ok(())
    }

    /// Writes slots `first..first + count` of directory `ino` from memory to the image.
    fn write_dir_slots(&mut self, v: &Volume, ino: Ino, first: u32, count: u32) -> Result<()> {
        self.check_dir_unshared(v, ino)?;
        let extents = self.dir_extents(v, ino)?;
        let state = self.dir_state(ino)?;
        let mut start = first as u64 * ENTRY_SIZE as u64;
        let end = (first + count) as u64 * ENTRY_SIZE as u64;
        let mut base = 0u64;
        for (off, len) in extents {
            if start < base + len && start < end {
                let piece_end = end.min(base + len);
                let bytes = &state.raw[start as usize..piece_end as usize];
                v.file.write_all_at(bytes, off + (start - base))?;
                start = piece_end;
            }
            base += len;
        }
        Ok(())
    }

    /// Finds `n` consecutive free slots in directory `ino`, growing it by zeroed clusters
    /// when there are none. When `n` slots fit in one sector they never cross a sector
    /// boundary: a name's entries written in one sector cannot be torn apart, while a
    /// write torn (or a power cut keeping one sector of it) between a long name's
    /// entries leaves a fragment `fsck.fat -a` does not remove ("Long filename fragment
    /// found outside a LFN sequence. Not auto-correcting this"). Slots skipped at the
    /// end of the entries for that are for the caller to mark deleted.
    fn free_slots(&mut self, v: &Volume, ino: Ino, n: u32) -> Result<u32> {
        // Checked here, before `insert_entries` changes anything in memory.
        self.check_dir_unshared(v, ino)?;
        let state = self.dir_state(ino)?;
        let total = (state.raw.len() / ENTRY_SIZE) as u32;
        let per_sector = v.bpb.bytes_per_sector / ENTRY_SIZE as u32;
        let fits = |first: u32| n > per_sector || first / per_sector == (first + n - 1) / per_sector;
        let mut run = 0u32;
        let start = if state.holes == 0 { state.end } else { 0 };
        for s in start..total {
            let free = s >= state.end || state.raw[s as usize * ENTRY_SIZE] == DELETED;
            run = if free { run + 1 } else { 0 };
            if run >= n && fits(s + 1 - n) {
                return Ok(s + 1 - n);
            }
        }
        if ino == ROOT && v.bpb.fat_type != FatType::Fat32 {
            return Err(Error::NoSpace);
        }
        let per_cluster = v.bpb.cluster_size() / ENTRY_SIZE as u32;
        let clusters = (n - run).div_ceil(per_cluster);
        if total as u64 + (clusters * per_cluster) as u64 > MAX_DIR_SLOTS {
            return Err(Error::NoSpace);
        }
        let last =
            *self.dir_chain(v, ino)?.last().ok_or_else(|| Error::Corrupt("directory without clusters".into()))?;
        // The new clusters join the directory's chain only once they are zeroed on disk.
        // Linked at once, another thread's FAT flush (a write or fsync elsewhere, which
        // needs no namespace lock) could write the link before the zeroes, and a crash
        // then leaves the directory naming a cluster of old bytes: garbage entries that
        // `fsck.fat -a` cannot repair in one pass, some naming other files' clusters. A
        // directory has no size to hide them behind, unlike a file. Unlinked, such a
        // flush only carries a chain nothing names yet (lost clusters).
        let new = {
            let mut fat = v.fat()?;
            let new = v.allocate(&mut fat, Some(last), clusters)?;
            fat.set(last, Entry::End);
            // Their own FAT entries go out now, so the barrier below covers them too and
            // the link's flush writes only the link.
            v.flush_fat(&mut fat)?;
            new
        };
        let zeros = vec![0u8; v.bpb.cluster_size() as usize];
        let zeroed = new.iter().try_for_each(|&c| v.file.write_all_at(&zeros, v.bpb.cluster_offset(c)));
        // The barrier: the zeroes (and the new clusters' FAT entries) are durable before
        // the link can be written, so not even a power cut (the kernel writing pages back
        // in any order) can land the link without them. One fdatasync per growth, which
        // zeroes every cluster it needs at once: in a bulk create, one per cluster of
        // entries (a cluster of 4 KiB holds 25 names of 40 to 52 characters).
        if let Err(e) = zeroed.and_then(|()| v.file.sync_data()) {
            v.fat()?.free_chain(&new);
            return Err(e.into());
        }
        {
            let mut fat = v.fat()?;
            fat.set(last, Entry::Next(new[0]));
            v.flush_fat(&mut fat)?;
        }
        let node = self.node_mut(ino)?;
        node.chain.as_mut().expect("chain loaded").extend_from_slice(&new);
        let state = node.dir.as_mut().expect("dir loaded");
        state.raw.resize(state.raw.len() + (clusters * per_cluster) as usize * ENTRY_SIZE, 0);
        // The free run at the end, or (when the name fits in a sector but not in what is
        // left of the run's first one) the next sector: the new cluster's first at latest.
        let first = total - run;
        Ok(if fits(first) { first } else { (first / per_sector + 1) * per_sector })
    }

    /// Writes `name`'s entries (long-name entries, then `entry`) into directory `dir`.
    /// Returns (first slot, short entry slot).
    fn insert_entries(
        &mut self,
        v: &Volume,
        dir: Ino,
        name: &str,
        stored: &names::StoredName,
        entry: &ShortEntry,
    ) -> Result<(u32, u32)> {
        let mut slots: Vec<[u8; 32]> =
            if stored.needs_lfn { names::lfn_entries(name, &stored.short) } else { Vec::new() };
        slots.push(entry.encode());
        let n = slots.len() as u32;
        let first = self.free_slots(v, dir, n)?;
        let state = self.dir_state_mut(dir)?;
        for (i, s) in slots.iter().enumerate() {
            let at = (first as usize + i) * ENTRY_SIZE;
            if state.raw[at] == DELETED {
                state.holes -= 1;
            }
            state.raw[at..at + ENTRY_SIZE].copy_from_slice(s);
        }
        // Slots skipped after the end so the name starts in the next sector: deleted
        // entries (free for later names), never end markers, which would end the
        // directory before the name. Written first, on their own: their sector is
        // another than the name's.
        let old_end = state.end;
        let skipped = first.saturating_sub(old_end);
        for s in old_end..old_end + skipped {
            state.raw[s as usize * ENTRY_SIZE] = DELETED;
        }
        state.holes += skipped;
        let mut count = n;
        if first + n > state.end {
            state.end = first + n;
            // What follows on disk may be stale: make sure an end marker follows.
            if ((first + n) as usize) < state.raw.len() / ENTRY_SIZE {
                count += 1;
            }
        }
        state.shorts.insert(stored.short);
        if skipped > 0 {
            self.write_dir_slots(v, dir, old_end, skipped)?;
        }
        // A name too long for one sector (over 15 long-name entries with 512-byte sectors)
        // is written a sector at a time in order, with a barrier between: a power cut may
        // then keep the start of its long-name entries without their end (a fragment
        // followed by free entries, which `fsck.fat -a` removes), but never the end
        // without the start (which it does not).
        let per_sector = v.bpb.bytes_per_sector / ENTRY_SIZE as u32;
        let mut at = first;
        while (at / per_sector + 1) * per_sector < first + n {
            let next = (at / per_sector + 1) * per_sector;
            self.write_dir_slots(v, dir, at, next - at)?;
            v.file.sync_data()?;
            at = next;
        }
        self.write_dir_slots(v, dir, at, first + count - at)?;
        Ok((first, first + n - 1))
    }

    /// Marks slots `first..=last` of directory `dir` deleted, one write per sector, the
    /// last sector first: a name whose entries cross a sector boundary (written by
    /// another tool, or too long for one sector) loses its short entry before its first
    /// long-name entries, so a crash in between leaves a long-name fragment followed by
    /// deleted entries, which `fsck.fat -a` removes, never a fragment without its start,
    /// which it does not.
    fn remove_entries(&mut self, v: &Volume, dir: Ino, first: u32, last: u32) -> Result<()> {
        self.check_dir_unshared(v, dir)?;
        let state = self.dir_state_mut(dir)?;
        for s in first..=last {
            state.raw[s as usize * ENTRY_SIZE] = DELETED;
            state.holes += 1;
        }
        let per_sector = v.bpb.bytes_per_sector / ENTRY_SIZE as u32;
        let mut hi = last;
        loop {
            let lo = first.max(hi / per_sector * per_sector);
            self.write_dir_slots(v, dir, lo, hi - lo + 1)?;
            if lo == first {
                return Ok(());
            }
            hi = lo - 1;
        }
    }

    /// Writes a node's short entry from memory to its directory.
    /// Refuses changing `ino`'s directory entry when its directory is cross-linked: called
    /// before the entry changes in memory, so a refusal leaves memory matching the disk.
    fn check_entry_changeable(&mut self, v: &Volume, ino: Ino) -> Result<()> {
        let node = self.node(ino)?;
        if ino == ROOT || !node.linked {
            return Ok(());
        }
        let parent = node.parent;
        self.check_dir_unshared(v, parent)
    }

    fn write_entry(&mut self, v: &Volume, ino: Ino) -> Result<()> {
        let node = self.node(ino)?;
        if ino == ROOT || !node.linked {
            return Ok(());
        }
        let (parent, slot, bytes) = (node.parent, node.slot, node.entry.encode());
        // Refused before the directory's bytes in memory change, so they keep matching disk.
        self.check_dir_unshared(v, parent)?;
        let state = self.dir_state_mut(parent)?;
        let at = slot as usize * ENTRY_SIZE;
        state.raw[at..at + ENTRY_SIZE].copy_from_slice(&bytes);
        self.write_dir_slots(v, parent, slot, 1)
    }

    fn lookup(&mut self, v: &Volume, dir: Ino, name: &str) -> Result<Ino> {
        self.load_dir(v, dir)?;
        self.lookup_loaded(dir, name).unwrap_or(Err(Error::NotDir))
    }

    /// A lookup that changes nothing: None when `dir` has not been read yet.
    fn lookup_loaded(&self, dir: Ino, name: &str) -> Option<Result<Ino>> {
        let state = match self.node(dir) {
            Err(e) => return Some(Err(e)),
            Ok(n) if !n.entry.is_dir() => return Some(Err(Error::NotDir)),
            Ok(n) => n.dir.as_ref()?,
        };
        // As vfat: trailing dots are not part of a name (`foo.` is `foo`), spaces are.
        let name = names::strip_tail(name);
        Some(state.index.get(&fold(name)).copied().ok_or(Error::NotFound))
    }

    /// A listing that changes nothing: None when `dir` has not been read yet.
    fn list_loaded(&self, dir: Ino, after: Option<u32>, max: usize) -> Option<Result<Vec<Listed>>> {
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

    /// Adds a node just written into `dir`: a directory with its chain, or a file (whose
    /// chain is `chain`, empty for a new file) with its own lock.
    #[allow(clippy::too_many_arguments)]
    fn add_node(
        &mut self,
        v: &Volume,
        dir: Ino,
        name: &str,
        first_slot: u32,
        slot: u32,
        entry: ShortEntry,
        chain: Vec<u32>,
    ) -> Result<Ino> {
        let ino = self.next_ino;
        self.next_ino += 1;
        let is_dir = entry.is_dir();
        if !is_dir {
            let st = FileState {
                first_cluster: entry.first_cluster,
                size: entry.size,
                chain: Some(chain.clone()),
                access_checked: AtomicU16::new(0),
            };
            write(&v.files)?.insert(ino, Arc::new(RwLock::new(st)));
        }
        let node = Node {
            parent: dir,
            slot,
            first_slot,
            name: name.to_string(),
            entry,
            chain: is_dir.then_some(chain),
            linked: true,
            dir: None,
        };
        self.nodes.insert(ino, node);
        if let Ok(state) = self.dir_state_mut(dir) {
            state.by_slot.insert(slot, ino);
            state.index.insert(fold(name), ino);
            state.subdirs += is_dir as u32;
        }
        Ok(ino)
    }

    /// Takes node `ino` out of its directory's entries and index.
    fn detach(&mut self, v: &Volume, ino: Ino) -> Result<()> {
        let node = self.node(ino)?;
        let (parent, first, slot, key, short, is_dir) =
            (node.parent, node.first_slot, node.slot, fold(&node.name), node.entry.name, node.entry.is_dir());
        self.remove_entries(v, parent, first, slot)?;
        let state = self.dir_state_mut(parent)?;
        state.subdirs = state.subdirs.saturating_sub(is_dir as u32);
        state.by_slot.remove(&slot);
        if state.index.get(&key) == Some(&ino) {
            state.index.remove(&key);
        }
        state.shorts.remove(&short);
        self.node_mut(ino)?.linked = false;
        Ok(())
    }

    fn rmdir(&mut self, v: &Volume, dir: Ino, name: &str) -> Result<Ino> {
        let ino = self.lookup(v, dir, name)?;
        if !self.node(ino)?.entry.is_dir() {
            return Err(Error::NotDir);
        }
        self.load_dir(v, ino)?;
        if !self.dir_state(ino)?.by_slot.is_empty() {
            return Err(Error::NotEmpty);
        }
        // Its clusters are freed below: not when another entry's chain has them too.
        self.check_dir_unshared(v, ino)?;
        self.detach(v, ino)?;
        // A barrier before the clusters are freed: once free, another file may take them
        // and write its data there, and a power cut that kept that data but lost the
        // entry's deletion would leave the entry naming a directory of garbage entries
        // (which `fsck.fat -a` does not drop, found by the concurrent crash test). A
        // file's clusters need none: a deleted file that comes back holds only data.
        v.file.sync_data()?;
        let chain = self.dir_chain(v, ino)?;
        v.free_clusters(chain)?;
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

    fn rename(
        &mut self,
        v: &Volume,
        dir: Ino,
        name: &str,
        new_dir: Ino,
        new_name: &str,
        noreplace: bool,
    ) -> Result<Option<Ino>> {
        let src = self.lookup(v, dir, name)?;
        self.load_dir(v, new_dir)?;
        let new_name = names::check_long_name(new_name)?;
        let target = self.dir_state(new_dir)?.index.get(&fold(new_name)).copied();
        let src_is_dir = self.node(src)?.entry.is_dir();
        if src_is_dir && self.is_ancestor(src, new_dir)? {
            return Err(Error::Invalid("cannot move a directory into itself".into()));
        }
        // Every directory written is checked before the first write: failing after the
        // new entry is in would leave two entries naming one chain.
        self.check_dir_unshared(v, dir)?;
        self.check_dir_unshared(v, new_dir)?;
        if src_is_dir && new_dir != dir {
            self.load_dir(v, src)?;
            self.check_dir_unshared(v, src)?;
        }
        let same_name = self.node(src)?.name == new_name && dir == new_dir;
        let mut replaced = None;
        let mut replaced_short = None;
        match target {
            Some(t) if t == src && same_name => return Ok(None),
            Some(t) if t == src => {}
            Some(_) if noreplace => return Err(Error::Exists),
            Some(t) => {
                let t_is_dir = self.node(t)?.entry.is_dir();
                replaced_short = Some(self.node(t)?.entry.name);
                match (src_is_dir, t_is_dir) {
                    (true, false) => return Err(Error::NotDir),
                    (false, true) => return Err(Error::IsDir),
                    (true, true) => {
                        self.rmdir(v, new_dir, new_name)?;
                    }
                    (false, false) => {
                        self.detach(v, t)?;
                        replaced = Some(t);
                    }
                }
            }
            None => {}
        }
        let mut entry = self.node(src)?.entry;
        // The new entry never gets the old entry's short name (even in a case-only rename),
        // nor a replaced target's: the old entry stays on disk until after the barrier, and
        // a power cut may keep the new entry but lose the target's deletion. Two entries
        // with one short name make `fsck.fat -a` auto-rename one ("Duplicate directory
        // entry"), a repair the concurrent crash test saw overwrite other files' clusters.
        let mut taken = self.dir_state(new_dir)?.shorts.clone();
        taken.extend(replaced_short);
        let stored = names::short_name_for(new_name, &taken, v.codepage)?;
        entry.name = stored.short;
        entry.nt_flags = stored.nt_flags;
        // The new entry first, then the old one goes: a crash in between leaves two names
        // for one chain, which fsck.fat resolves, never a lost file.
        let (first_slot, slot) = self.insert_entries(v, new_dir, new_name, &stored, &entry)?;
        if self.node(src)?.linked {
            // A barrier, so that even a power cut (the kernel writing pages back in any
            // order) cannot land the deletion without the new entry.
            v.file.sync_data()?;
            self.detach(v, src)?;
        }
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
        state.subdirs += src_is_dir as u32;
        if src_is_dir && new_dir != dir {
            self.load_dir(v, src)?;
            let parent_cluster = if new_dir == ROOT { 0 } else { self.node(new_dir)?.entry.first_cluster };
            let state = self.dir_state_mut(src)?;
            let mut dotdot = ShortEntry::decode(&state.raw[32..64]);
            if &dotdot.name == b"..         " {
                dotdot.first_cluster = parent_cluster;
                state.raw[32..64].copy_from_slice(&dotdot.encode());
                self.write_dir_slots(v, src, 1, 1)?;
            }
        }
        Ok(replaced)
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
