//! Swapping a mount's backend while it stays mounted.
//!
//! [`Swap`] sits between a frontend and the backends of one mount. Until the first swap it
//! is transparent: node ids and handles of the first backend pass through unchanged (so
//! `st_ino` is what the plugin says), and a request costs one atomic load (`arc-swap`) on
//! top of the plugin call, no lock and no allocation. The only bookkeeping kept from the
//! start is what a swap cannot reconstruct afterwards: which node ids the kernel holds and
//! how many references it has on each (counted from the replies that hand out a node:
//! lookup, create, mkdir, mknod, symlink, link, readdirplus; and taken off by forget),
//! with the names under the root each was handed out by. That lives in a sharded table,
//! touched only by those operations, so the data path (read, write, getattr, ...) never
//! sees it and namespace operations contend only per shard.
//!
//! A swap ([`Swap::swap`]) turns on translation for good:
//!
//! - the root (id 1) is the current backend's root, so every path walked from the
//!   mountpoint reaches the new backend;
//! - every other node id the kernel holds stays with the backend that handed it out until
//!   the kernel forgets it; a node id of a newer backend that collides with one the kernel
//!   still holds for an older backend gets a fresh id (and the other way round for a
//!   late reply of an older backend), so the kernel never confuses two backends' nodes;
//! - handles are tracked from then on; a handle not in the table was opened before the
//!   first swap, on the first backend. Handles of later backends never take a value
//!   the kernel still holds for an earlier one;
//! - an earlier backend is released (its plugin instance dropped, which closes it) once
//!   the kernel holds none of its nodes and handles ([`Swap::collect`]).
//!
//! After switching, the kernel's cached entries under the root and the root's attributes
//! are invalidated through [`Kernel`], so a walk from the mountpoint does not meet an old
//! backend's dentry. Only the root is shared between backends, so only its entries can
//! mix them; a process inside an old directory keeps seeing that old directory.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use plugfs_plugin_api::{
    AttrOut, Capabilities, DirEntry, DirPlusSink, DirSink, Entry, Errno, Error, FileSystem, Handle, NodeId, Opened,
    ROOT_ID, RenameFlags, Request, Result, SetAttr, StatFs, Whence,
};
use tracing::{debug, warn};

/// What the layer needs from the frontend that serves the mount: telling the kernel to
/// drop cached entries and attributes, and which handles it holds open. The FUSE frontend
/// implements it over fuser's `Notifier`; another frontend can implement it its own way.
pub trait Kernel: Send + Sync {
    /// Drops the kernel's cached entry `name` under `parent` (no error if it has none).
    fn inval_entry(&self, parent: NodeId, name: &OsStr) -> std::io::Result<()>;
    /// Drops the kernel's cached attributes of `node` and its cached data in
    /// `offset..offset + len` (`len` 0: to the end).
    fn inval_inode(&self, node: NodeId, offset: i64, len: i64) -> std::io::Result<()>;
    /// Every handle the kernel holds open now, with whether it is a directory's.
    fn open_handles(&self) -> Vec<(HandleKind, Handle)>;
    /// Waits until every request the frontend received before the call has been answered
    /// and its handles recorded (the frontend's own work after the backend returns);
    /// at most `timeout`. Returns whether they all were.
    fn settle(&self, timeout: Duration) -> bool;
}

/// A file's handle or a directory's: the two are separate spaces of values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandleKind {
    /// From `open` or `create`.
    File,
    /// From `opendir`.
    Dir,
}

/// A backend's number: 0 for the first, one more for each swap.
type Gen = u32;

const SHARDS: usize = 64;

/// How long a swap waits for requests that started before it. A plugin call that takes
/// longer than this (a stuck backing store) makes the swap give up, and the mount is
/// remounted instead.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(10);

fn shard_of(id: u64) -> usize {
    // Ids are often sequential: the low bits spread them evenly.
    (id % SHARDS as u64) as usize
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn stale() -> Error {
    Errno::ESTALE.into()
}

/// A listed name as the frontends take it (names cross the plugin boundary as bytes).
#[cfg(unix)]
fn os_name(bytes: &[u8]) -> Cow<'_, OsStr> {
    Cow::Borrowed(std::os::unix::ffi::OsStrExt::from_bytes(bytes))
}

#[cfg(not(unix))]
fn os_name(bytes: &[u8]) -> Cow<'_, OsStr> {
    Cow::Owned(OsString::from(String::from_utf8_lossy(bytes).into_owned()))
}

/// `O_RDONLY`, the same on every platform plugins are built for.
const O_RDONLY: i32 = 0;

// ---------------------------------------------------------------------------------------
// Nodes the kernel holds
// ---------------------------------------------------------------------------------------

/// One node id the kernel holds.
#[derive(Debug)]
struct NodeRef {
    generation: Gen,
    /// The backend's own id (equal to the kernel's unless remapped).
    inner: NodeId,
    /// References the kernel holds (its nlookup).
    lookups: u64,
    /// Names under the root it was handed out by: the kernel may have them cached, and a
    /// swap invalidates them. A few are enough (hard links in the root are rare); a name
    /// missed here is still found by the swap's listing of the old root.
    root_names: Vec<OsString>,
}

const ROOT_NAMES_KEPT: usize = 4;

#[derive(Debug, Default)]
struct NodeShard {
    nodes: HashMap<NodeId, NodeRef>,
    /// Nodes per backend in this shard, so counting a backend's nodes visits each shard
    /// once instead of every node.
    per_gen: Vec<(Gen, usize)>,
}

impl NodeShard {
    fn count(&mut self, generation: Gen, delta: isize) {
        match self.per_gen.iter_mut().find(|(g, _)| *g == generation) {
            Some((_, n)) => *n = n.saturating_add_signed(delta),
            None => self.per_gen.push((generation, delta.max(0) as usize)),
        }
    }

    fn insert(&mut self, outer: NodeId, generation: Gen, inner: NodeId, root_name: Option<&OsStr>) {
        let root_names = root_name.map(|n| vec![n.to_os_string()]).unwrap_or_default();
        self.nodes.insert(outer, NodeRef { generation, inner, lookups: 1, root_names });
        self.count(generation, 1);
    }
}

impl NodeRef {
    fn add_ref(&mut self, root_name: Option<&OsStr>) {
        self.lookups += 1;
        if let Some(name) = root_name
            && self.root_names.len() < ROOT_NAMES_KEPT
            && !self.root_names.iter().any(|n| n == name)
        {
            self.root_names.push(name.to_os_string());
        }
    }
}

/// The node ids the kernel holds, by the kernel's id.
#[derive(Debug)]
struct Nodes {
    shards: Vec<Mutex<NodeShard>>,
    /// (backend, backend's id) → kernel's id, for the remapped ones only. Once `remapping`
    /// is set (at the first swap) every new entry is made under this lock, so one backend
    /// node never gets two kernel ids.
    remapped: Mutex<HashMap<(Gen, NodeId), NodeId>>,
    remapping: AtomicBool,
    /// Where fresh kernel ids are taken from; far above the ids plugins count from, so
    /// a remapped id rarely collides with a later identity one (which is handled anyway).
    next_fresh: AtomicU64,
}

impl Default for Nodes {
    fn default() -> Self {
        Nodes {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            remapped: Mutex::default(),
            remapping: AtomicBool::new(false),
            next_fresh: AtomicU64::new(1 << 48),
        }
    }
}

impl Nodes {
    fn shard(&self, id: NodeId) -> MutexGuard<'_, NodeShard> {
        lock(&self.shards[shard_of(id)])
    }

    /// Counts one kernel reference on node `inner` of backend `generation`, handed out
    /// under `parent` as `name`; returns the id the kernel is to get.
    fn register(&self, generation: Gen, inner: NodeId, parent: NodeId, name: &OsStr) -> NodeId {
        if inner == ROOT_ID {
            // The kernel never forgets the root, and it is always the current backend's.
            return ROOT_ID;
        }
        let root_name = (parent == ROOT_ID).then_some(name);
        {
            let mut shard = self.shard(inner);
            match shard.nodes.get_mut(&inner) {
                Some(r) if r.generation == generation && r.inner == inner => {
                    r.add_ref(root_name);
                    return inner;
                }
                None if !self.remapping.load(Ordering::SeqCst) => {
                    shard.insert(inner, generation, inner, root_name);
                    return inner;
                }
                _ => {}
            }
        }
        let mut remapped = lock(&self.remapped);
        if let Some(&outer) = remapped.get(&(generation, inner)) {
            let mut shard = self.shard(outer);
            if let Some(r) = shard.nodes.get_mut(&outer) {
                r.add_ref(root_name);
                return outer;
            }
            // Forgotten meanwhile (forget takes this lock after the shard's): start over.
            drop(shard);
            remapped.remove(&(generation, inner));
        }
        let mut shard = self.shard(inner);
        match shard.nodes.get_mut(&inner) {
            Some(r) if r.generation == generation && r.inner == inner => {
                r.add_ref(root_name);
                inner
            }
            None => {
                shard.insert(inner, generation, inner, root_name);
                inner
            }
            Some(_) => {
                drop(shard);
                let outer = loop {
                    let candidate = self.next_fresh.fetch_add(1, Ordering::Relaxed);
                    let mut shard = self.shard(candidate);
                    if candidate > ROOT_ID && !shard.nodes.contains_key(&candidate) {
                        shard.insert(candidate, generation, inner, root_name);
                        break candidate;
                    }
                };
                remapped.insert((generation, inner), outer);
                debug!(generation, inner, outer, "node id taken by an earlier backend's node; remapped");
                outer
            }
        }
    }

    /// Takes `n` kernel references off `outer`; returns the backend and its id, and
    /// whether the kernel now holds none.
    fn forget(&self, outer: NodeId, n: u64) -> Option<(Gen, NodeId)> {
        let mut shard = self.shard(outer);
        let r = shard.nodes.get_mut(&outer)?;
        r.lookups = r.lookups.saturating_sub(n);
        let target = (r.generation, r.inner);
        if r.lookups == 0 {
            shard.nodes.remove(&outer);
            shard.count(target.0, -1);
            if target.1 != outer {
                drop(shard);
                let mut remapped = lock(&self.remapped);
                if remapped.get(&target) == Some(&outer) {
                    remapped.remove(&target);
                }
            }
        }
        Some(target)
    }

    /// The backend and its id for the kernel's `outer`.
    fn route(&self, outer: NodeId) -> Option<(Gen, NodeId)> {
        self.shard(outer).nodes.get(&outer).map(|r| (r.generation, r.inner))
    }

    fn count(&self, generation: Gen) -> usize {
        self.shards.iter().map(|s| lock(s).per_gen.iter().find(|(g, _)| *g == generation).map_or(0, |(_, n)| *n)).sum()
    }

    fn root_names(&self, generation: Gen) -> Vec<OsString> {
        let mut names = Vec::new();
        for s in &self.shards {
            for r in lock(s).nodes.values().filter(|r| r.generation == generation) {
                names.extend(r.root_names.iter().cloned());
            }
        }
        names
    }
}

// ---------------------------------------------------------------------------------------
// Handles, tracked from the first swap on
// ---------------------------------------------------------------------------------------

type HandleKey = (HandleKind, Handle);

#[derive(Debug, Default)]
struct HandleAlloc {
    /// Handles the kernel held open when tracking began (all of the first backend); they
    /// pass through unchanged, and no later handle may take their value.
    untracked: HashSet<HandleKey>,
    next_fresh: u64,
}

#[derive(Debug)]
struct Handles {
    /// Kernel's handle → (backend, backend's handle).
    shards: Vec<RwLock<HashMap<HandleKey, (Gen, Handle)>>>,
    /// Taken to hand out or give back a handle, so a value is never handed out twice.
    alloc: Mutex<HandleAlloc>,
}

impl Default for Handles {
    fn default() -> Self {
        Handles {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            alloc: Mutex::new(HandleAlloc { untracked: HashSet::new(), next_fresh: 1 << 48 }),
        }
    }
}

impl Handles {
    fn shard(&self, h: Handle) -> &RwLock<HashMap<HandleKey, (Gen, Handle)>> {
        &self.shards[shard_of(h)]
    }

    fn taken(&self, alloc: &HandleAlloc, key: HandleKey) -> bool {
        alloc.untracked.contains(&key) || self.shard(key.1).read().unwrap_or_else(|p| p.into_inner()).contains_key(&key)
    }

    fn insert(&self, kind: HandleKind, generation: Gen, inner: Handle) -> Handle {
        let mut alloc = lock(&self.alloc);
        let outer = if !self.taken(&alloc, (kind, inner)) {
            inner
        } else {
            loop {
                let candidate = alloc.next_fresh;
                alloc.next_fresh = alloc.next_fresh.wrapping_add(1);
                if !self.taken(&alloc, (kind, candidate)) {
                    break candidate;
                }
            }
        };
        self.shard(outer).write().unwrap_or_else(|p| p.into_inner()).insert((kind, outer), (generation, inner));
        outer
    }

    /// The backend and its handle for the kernel's `outer`; `None` for a handle opened
    /// before tracking began.
    fn route(&self, kind: HandleKind, outer: Handle) -> Option<(Gen, Handle)> {
        self.shard(outer).read().unwrap_or_else(|p| p.into_inner()).get(&(kind, outer)).copied()
    }

    fn remove(&self, kind: HandleKind, outer: Handle) {
        let mut alloc = lock(&self.alloc);
        let removed = self.shard(outer).write().unwrap_or_else(|p| p.into_inner()).remove(&(kind, outer));
        if removed.is_none() {
            alloc.untracked.remove(&(kind, outer));
        }
    }

    /// Records the handles the kernel holds that are not tracked: opened before tracking
    /// began. Runs under the allocation lock, which `remove` takes too, so a handle
    /// released meanwhile is either absent from `open` or removed after this.
    fn adopt(&self, kernel: &dyn Kernel) {
        let mut alloc = lock(&self.alloc);
        for key in kernel.open_handles() {
            if self.shard(key.1).read().unwrap_or_else(|p| p.into_inner()).get(&key).is_none() {
                alloc.untracked.insert(key);
            }
        }
    }

    fn count(&self, generation: Gen, first: Gen) -> usize {
        let tracked: usize = self
            .shards
            .iter()
            .map(|s| s.read().unwrap_or_else(|p| p.into_inner()).values().filter(|(g, _)| *g == generation).count())
            .sum();
        tracked + if generation == first { lock(&self.alloc).untracked.len() } else { 0 }
    }
}

// ---------------------------------------------------------------------------------------
// The layer
// ---------------------------------------------------------------------------------------

/// A backend and what status shows of it.
#[derive(Clone)]
pub struct Backend {
    /// The backend.
    pub fs: Arc<dyn FileSystem>,
    /// For logs and status: plugin name and version.
    pub label: String,
}

/// The backend the root belongs to. Requests routed by the root hold it while they run,
/// so a swap can wait for those that started before it.
struct Current {
    generation: Gen,
    fs: Arc<dyn FileSystem>,
}

/// The state after the first swap.
struct Mapped {
    current: ArcSwap<Current>,
    backends: RwLock<HashMap<Gen, Backend>>,
    handles: Handles,
    /// Root names to invalidate once more on the next [`Swap::collect`]: should the wait
    /// for the requests begun before the switch time out, a lookup under the root that the
    /// old backend answered may reach the kernel after the first invalidation.
    late_invalidation: Mutex<Vec<OsString>>,
}

enum Mode {
    /// One backend; ids and handles pass through.
    Direct(Arc<dyn FileSystem>),
    /// From the first swap on: nodes and handles are looked up in tables.
    Mapped(Arc<Mapped>),
}

/// Why a swap was not made; the mount is then remounted instead.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// Requests that began before the swap did not end in time.
    #[error("{0} request(s) begun before the swap were still running after {1}s")]
    Busy(usize, u64),
}

/// The layer (see the module).
pub struct Swap {
    mode: ArcSwap<Mode>,
    nodes: Nodes,
    /// The first backend's label, for status and logs once there are several.
    first_label: String,
    swaps: AtomicU64,
}

/// What [`Swap::collect`] did.
#[derive(Default)]
pub struct Collected {
    /// The earlier backends no longer used: dropping one closes its plugin instance (the
    /// last request still inside it, if any, drops it then).
    pub released: Vec<Backend>,
}

impl Swap {
    /// Serves `fs` (labelled `label` in logs) until a swap.
    pub fn new(fs: Arc<dyn FileSystem>, label: impl Into<String>) -> Swap {
        Swap {
            mode: ArcSwap::from_pointee(Mode::Direct(fs)),
            nodes: Nodes::default(),
            first_label: label.into(),
            swaps: AtomicU64::new(0),
        }
    }

    /// Swaps done.
    pub fn swaps(&self) -> u64 {
        self.swaps.load(Ordering::Relaxed)
    }

    /// Backends served: 1, more while earlier ones still hold what the kernel opened or
    /// looked up before a swap.
    pub fn backends(&self) -> usize {
        match &**self.mode.load() {
            Mode::Direct(_) => 1,
            Mode::Mapped(m) => m.backends.read().unwrap_or_else(|p| p.into_inner()).len(),
        }
    }

    /// Nodes and handles the kernel holds on earlier backends.
    pub fn earlier_holds(&self) -> (usize, usize) {
        let Mode::Mapped(m) = &**self.mode.load() else { return (0, 0) };
        let current = m.current.load().generation;
        let gens: Vec<Gen> = m.backends.read().unwrap_or_else(|p| p.into_inner()).keys().copied().collect();
        gens.into_iter()
            .filter(|&g| g != current)
            .fold((0, 0), |(n, h), g| (n + self.nodes.count(g), h + m.handles.count(g, 0)))
    }

    /// Makes `new` the current backend: the root and every path walked from it reach
    /// `new`, while the nodes and handles the kernel holds keep their backend until it
    /// forgets and closes them. Invalidates the kernel's entries under the root and the
    /// root's attributes through `kernel`.
    ///
    /// The first swap turns translation on: it waits (at most [`QUIESCE_TIMEOUT`]) for the
    /// requests that began untranslated, then takes the kernel's open handles as the first
    /// backend's. If they do not end in time nothing is switched and the error says why.
    pub fn swap(&self, new: Backend, kernel: Arc<dyn Kernel>) -> std::result::Result<(), SwapError> {
        self.swap_within(new, kernel, QUIESCE_TIMEOUT)
    }

    fn swap_within(
        &self,
        new: Backend,
        kernel: Arc<dyn Kernel>,
        timeout: Duration,
    ) -> std::result::Result<(), SwapError> {
        // Not a guard held across the wait below: it would count as a request running.
        let (existing, direct) = match &**self.mode.load() {
            Mode::Mapped(m) => (Some(Arc::clone(m)), None),
            Mode::Direct(fs) => (None, Some(Arc::clone(fs))),
        };
        let mapped = match (existing, direct) {
            (Some(m), _) => m,
            (None, fs) => {
                let fs = fs.expect("one of the two");
                // From now on new nodes are registered under the remap lock, so a late
                // reply of the first backend and the new backend's nodes cannot both
                // take one id.
                self.nodes.remapping.store(true, Ordering::SeqCst);
                let m = Arc::new(Mapped {
                    current: ArcSwap::from_pointee(Current { generation: 0, fs: Arc::clone(&fs) }),
                    backends: RwLock::new(HashMap::from([(0, Backend { fs, label: self.first_label.clone() })])),
                    handles: Handles::default(),
                    late_invalidation: Mutex::default(),
                });
                // Still the first backend only, but handles are tracked from here on.
                let old = self.mode.swap(Arc::new(Mode::Mapped(Arc::clone(&m))));
                // Every untranslated request holds `old` (arc-swap turns the guards of
                // loads still running into counted references when it swaps): once the
                // count is ours alone, none is running. Then the frontend, which records a
                // handle after the backend's open returns, must have done so too. After
                // that the kernel's open handles that are not tracked are exactly those
                // opened untranslated.
                let waited = match wait_alone(&old, timeout) {
                    Err(running) => Err(SwapError::Busy(running, timeout.as_secs())),
                    Ok(()) if !kernel.settle(timeout) => Err(SwapError::Busy(1, timeout.as_secs())),
                    Ok(()) => Ok(()),
                };
                if let Err(e) = waited {
                    // Back to passing through, so a later swap starts over. Requests that
                    // saw the tracking state routed exactly as untranslated ones, and with
                    // one backend no id was remapped.
                    self.mode.store(old);
                    self.nodes.remapping.store(false, Ordering::SeqCst);
                    return Err(e);
                }
                drop(old);
                m.handles.adopt(kernel.as_ref());
                m
            }
        };
        let generation = {
            let mut backends = mapped.backends.write().unwrap_or_else(|p| p.into_inner());
            let generation = backends.keys().max().map_or(0, |g| g + 1);
            backends.insert(generation, new.clone());
            generation
        };
        let previous = mapped.current.swap(Arc::new(Current { generation, fs: Arc::clone(&new.fs) }));
        // Requests routed by the root hold `previous`; wait for them so their replies
        // (entries under the root) reach the kernel before the invalidation, not after.
        // And for the frontend to have sent their replies.
        if wait_alone(&previous, timeout).is_err() || !kernel.settle(timeout) {
            warn!("requests begun before the swap still running; invalidating now and once more later");
        }
        // The old backend may have let the kernel cache missing names (negative entries);
        // those the new backend has must go too, and only its listing knows them.
        let negative = previous.fs.capabilities().is_some_and(|c| !c.negative_entry_ttl.is_zero());
        let names = invalidate_old_root(
            kernel,
            self.nodes.root_names(previous.generation),
            Arc::clone(&previous.fs),
            negative.then(|| Arc::clone(&new.fs)),
        );
        *lock(&mapped.late_invalidation) = names;
        self.swaps.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Takes out every earlier backend that the kernel holds nothing of any more, for
    /// the caller to drop (which closes it: the host does so on a thread of its own), and
    /// repeats the root's invalidation once after a swap. Call it now and then (the host
    /// does on every tick).
    pub fn collect(&self, kernel: Arc<dyn Kernel>) -> Collected {
        let mut out = Collected::default();
        let Mode::Mapped(m) = &**self.mode.load() else { return out };
        let late = std::mem::take(&mut *lock(&m.late_invalidation));
        if !late.is_empty() {
            // In the background, as the first pass: see `invalidate_old_root`. Best effort.
            let spawned = std::thread::Builder::new()
                .name("swap-invalidate".into())
                .spawn(move || invalidate_root(kernel.as_ref(), &late));
            if let Err(e) = spawned {
                warn!("cannot start the second invalidation after a swap: {e}");
            }
        }
        let current = m.current.load().generation;
        let earlier: Vec<Gen> =
            m.backends.read().unwrap_or_else(|p| p.into_inner()).keys().copied().filter(|&g| g != current).collect();
        for g in earlier {
            let (nodes, handles) = (self.nodes.count(g), m.handles.count(g, 0));
            if nodes > 0 || handles > 0 {
                continue;
            }
            let removed = m.backends.write().unwrap_or_else(|p| p.into_inner()).remove(&g);
            if let Some(b) = removed {
                out.released.push(b);
            }
        }
        out
    }
}

/// Waits until `arc` is referenced only by the caller; Err(other references) on timeout.
fn wait_alone<T>(arc: &Arc<T>, timeout: Duration) -> std::result::Result<(), usize> {
    let start = Instant::now();
    let mut pause = Duration::from_micros(50);
    loop {
        let others = Arc::strong_count(arc) - 1;
        if others == 0 {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(others);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// How long a swap waits for its invalidation (see [`invalidate_old_root`]).
const INVALIDATION_WAIT: Duration = Duration::from_secs(5);

/// Invalidates the kernel's entries under the root: the `recorded` names, every name in
/// the root of the `old` backend and, when the old backend had the kernel cache missing
/// names, every name in the root of the `new` one; returns the names. Runs on a thread of its own, waited
/// for at most [`INVALIDATION_WAIT`]: listing a stuck old backend would never end, and the
/// kernel takes the root directory's lock for an invalidation, which a request stuck in
/// the old backend may hold. The host must go on serving its other mounts meanwhile.
fn invalidate_old_root(
    kernel: Arc<dyn Kernel>,
    recorded: Vec<OsString>,
    old: Arc<dyn FileSystem>,
    new: Option<Arc<dyn FileSystem>>,
) -> Vec<OsString> {
    let (done, finished) = std::sync::mpsc::channel();
    let mut names = recorded.clone();
    let background = Arc::clone(&kernel);
    let spawned = std::thread::Builder::new().name("swap-invalidate".into()).spawn(move || {
        // The names handed out first, and the root's attributes: they need no call into
        // the old backend. Then the names only its listing knows.
        invalidate_root(background.as_ref(), &names);
        let mut known: HashSet<OsString> = names.iter().cloned().collect();
        let mut listed = list_root(old.as_ref());
        // Before the answer: whoever releases the old backend next must hold its last
        // reference.
        drop(old);
        if let Some(new) = new {
            listed.extend(list_root(new.as_ref()));
        }
        for name in listed {
            if known.insert(name.clone()) {
                invalidate_entry(background.as_ref(), &name);
                names.push(name);
            }
        }
        let _ = done.send(names);
    });
    if let Err(e) = spawned {
        warn!("cannot start a thread for the invalidation after a swap ({e}); invalidating the names handed out only");
        invalidate_root(kernel.as_ref(), &recorded);
        return recorded;
    }
    match finished.recv_timeout(INVALIDATION_WAIT) {
        Ok(names) => names,
        Err(_) => {
            warn!(
                "invalidating the kernel's entries under the root is taking more than {}s (the old backend's \
                 listing, or a request stuck in it on the root); going on, it completes in the background",
                INVALIDATION_WAIT.as_secs()
            );
            recorded
        }
    }
}

fn invalidate_entry(kernel: &dyn Kernel, name: &OsStr) {
    if let Err(e) = kernel.inval_entry(ROOT_ID, name) {
        debug!(?name, "invalidating a cached entry under the root: {e}");
    }
}

fn invalidate_root(kernel: &dyn Kernel, names: &[OsString]) {
    for name in names {
        invalidate_entry(kernel, name);
    }
    if let Err(e) = kernel.inval_inode(ROOT_ID, 0, 0) {
        debug!("invalidating the root's attributes: {e}");
    }
}

/// The names in the root of `fs`, as the kernel may have cached them (renames into the
/// root make entries no lookup handed out). A failure only loses names: logged.
fn list_root(fs: &dyn FileSystem) -> Vec<OsString> {
    struct Names(Vec<OsString>, u64);
    impl DirSink for Names {
        fn add(&mut self, e: &DirEntry<'_>) -> bool {
            if e.name != b"." && e.name != b".." {
                self.0.push(os_name(e.name).into_owned());
            }
            self.1 = e.cookie;
            true
        }
    }
    let req = Request::default();
    let mut names = Names(Vec::new(), 0);
    let listed = fs.opendir(&req, ROOT_ID, O_RDONLY).and_then(|o| {
        let mut cookie = 0;
        let result = loop {
            let before = names.0.len();
            if let Err(e) = fs.readdir(&req, ROOT_ID, o.handle, cookie, &mut names) {
                break Err(e);
            }
            if names.0.len() == before || names.1 == cookie {
                break Ok(());
            }
            cookie = names.1;
        };
        let _ = fs.releasedir(&req, ROOT_ID, o.handle);
        result
    });
    if let Err(e) = listed {
        warn!("listing the old backend's root to invalidate its names: {e}");
    }
    names.0
}

// ---------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------

/// A backend and the ids to call it with.
struct To {
    generation: Gen,
    fs: Arc<dyn FileSystem>,
    node: NodeId,
    /// The root's current backend, held while the call runs (see [`Current`]).
    _current: Option<arc_swap::Guard<Arc<Current>>>,
}

impl Mapped {
    /// A handle a backend handed out, as the kernel is to get it.
    fn opened(&self, kind: HandleKind, generation: Gen, mut o: Opened) -> Opened {
        o.handle = self.handles.insert(kind, generation, o.handle);
        o
    }

    fn backend(&self, generation: Gen) -> Result<Arc<dyn FileSystem>> {
        let backends = self.backends.read().unwrap_or_else(|p| p.into_inner());
        backends.get(&generation).map(|b| Arc::clone(&b.fs)).ok_or_else(stale)
    }

    fn node(&self, nodes: &Nodes, node: NodeId) -> Result<To> {
        if node == ROOT_ID {
            let current = self.current.load();
            return Ok(To {
                generation: current.generation,
                fs: Arc::clone(&current.fs),
                node: ROOT_ID,
                _current: Some(current),
            });
        }
        let (generation, inner) = nodes.route(node).ok_or_else(stale)?;
        Ok(To { generation, fs: self.backend(generation)?, node: inner, _current: None })
    }

    /// `node` as open through handle `h`: the handle decides the backend (a directory
    /// handle on the root opened before a swap stays with the old root).
    fn handle(&self, nodes: &Nodes, kind: HandleKind, node: NodeId, h: Handle) -> Result<(To, Handle)> {
        let (generation, inner_handle) = self.handles.route(kind, h).unwrap_or((0, h));
        let inner = if node == ROOT_ID {
            ROOT_ID
        } else {
            let (g, inner) = nodes.route(node).ok_or_else(stale)?;
            if g != generation {
                return Err(stale());
            }
            inner
        };
        Ok((To { generation, fs: self.backend(generation)?, node: inner, _current: None }, inner_handle))
    }
}

/// Calls `$direct` with the first backend's `fs` before any swap, `$mapped` with the
/// mapped state after.
macro_rules! route {
    ($self:ident, $fs:ident => $direct:expr, $m:ident => $mapped:expr) => {{
        let mode = $self.mode.load();
        match &**mode {
            Mode::Direct($fs) => $direct,
            Mode::Mapped($m) => $mapped,
        }
    }};
}

/// Node-addressed operations.
macro_rules! by_node {
    ($self:ident, $node:expr, |$fs:ident, $n:ident| $call:expr) => {{
        route!($self, $fs => { let $n = $node; $call }, m => {
            let to = m.node(&$self.nodes, $node)?;
            let ($fs, $n) = (&to.fs, to.node);
            $call
        })
    }};
}

/// Handle-addressed operations.
macro_rules! by_handle {
    ($self:ident, $kind:expr, $node:expr, $h:expr, |$fs:ident, $n:ident, $hh:ident| $call:expr) => {{
        route!($self, $fs => { let ($n, $hh) = ($node, $h); $call }, m => {
            let (to, $hh) = m.handle(&$self.nodes, $kind, $node, $h)?;
            let ($fs, $n) = (&to.fs, to.node);
            $call
        })
    }};
}

impl Swap {
    /// Registers an entry a backend handed out, under the kernel's `parent`.
    fn entry(&self, generation: Gen, parent: NodeId, name: &OsStr, mut e: Entry) -> Entry {
        e.node = self.nodes.register(generation, e.node, parent, name);
        e
    }

    /// A node-returning operation on `parent`.
    fn make(
        &self,
        parent: NodeId,
        name: &OsStr,
        call: impl FnOnce(&dyn FileSystem, NodeId) -> Result<Entry>,
    ) -> Result<Entry> {
        route!(self, fs => {
            let e = call(fs.as_ref(), parent)?;
            Ok(self.entry(0, parent, name, e))
        }, m => {
            let to = m.node(&self.nodes, parent)?;
            let e = call(to.fs.as_ref(), to.node)?;
            Ok(self.entry(to.generation, parent, name, e))
        })
    }

    /// Two nodes that must be on one backend (rename, link): EXDEV otherwise, as between
    /// two filesystems.
    fn pair(&self, m: &Mapped, a: NodeId, b: NodeId) -> Result<(To, NodeId)> {
        let (a, b) = (m.node(&self.nodes, a)?, m.node(&self.nodes, b)?);
        if a.generation != b.generation {
            return Err(Errno::EXDEV.into());
        }
        Ok((a, b.node))
    }
}

/// readdirplus: registers each entry the frontend takes.
struct PlusSink<'a> {
    swap: &'a Swap,
    /// After a swap, to tell whether `generation` is still the root's.
    mapped: Option<&'a Mapped>,
    generation: Gen,
    parent: NodeId,
    sink: &'a mut dyn DirPlusSink,
}

impl DirPlusSink for PlusSink<'_> {
    fn add(&mut self, dirent: &DirEntry<'_>, entry: &Entry) -> bool {
        if dirent.name == b"." || dirent.name == b".." {
            return self.sink.add(dirent, entry);
        }
        let mut outer = self.swap.entry(self.generation, self.parent, &os_name(dirent.name), *entry);
        if self.parent == ROOT_ID && self.mapped.is_some_and(|m| m.current.load().generation != self.generation) {
            // Listed through a handle on a root that is no longer the current backend's:
            // the kernel puts these entries in its cache under the one root directory it
            // knows, where the new backend's names belong. With no time to live it checks
            // them again with a lookup, which the current backend answers, before any use.
            outer.entry_ttl = Duration::ZERO;
        }
        if self.sink.add(dirent, &outer) {
            return true;
        }
        // Not taken: the plugin counts no reference for it, so neither may we.
        if outer.node != ROOT_ID {
            self.swap.nodes.forget(outer.node, 1);
        }
        false
    }
}

impl FileSystem for Swap {
    fn lookup(&self, req: &Request, parent: NodeId, name: &OsStr) -> Result<Entry> {
        self.make(parent, name, |fs, p| fs.lookup(req, p, name))
    }

    fn forget(&self, node: NodeId, nlookup: u64) {
        let mode = self.mode.load();
        if node == ROOT_ID {
            // Not counted (see `Nodes::register`). Before a swap it goes through as it came;
            // after, the root has been several backends' and none can tell which it means.
            if let Mode::Direct(fs) = &**mode {
                fs.forget(node, nlookup);
            }
            return;
        }
        let Some((generation, inner)) = self.nodes.forget(node, nlookup) else {
            // Not counted: pass it on as it came (a kernel and a plugin that disagree are
            // the plugin's to log).
            if let Mode::Direct(fs) = &**mode {
                fs.forget(node, nlookup);
            }
            return;
        };
        match &**mode {
            Mode::Direct(fs) => fs.forget(inner, nlookup),
            Mode::Mapped(m) => match m.backend(generation) {
                Ok(fs) => fs.forget(inner, nlookup),
                Err(_) => debug!(node, "forget for a released backend"),
            },
        }
    }

    fn getattr(&self, req: &Request, node: NodeId, handle: Option<Handle>) -> Result<AttrOut> {
        match handle {
            Some(h) => by_handle!(self, HandleKind::File, node, h, |fs, n, hh| fs.getattr(req, n, Some(hh))),
            None => by_node!(self, node, |fs, n| fs.getattr(req, n, None)),
        }
    }

    fn setattr(&self, req: &Request, node: NodeId, set: &SetAttr) -> Result<AttrOut> {
        match set.handle {
            Some(h) => by_handle!(self, HandleKind::File, node, h, |fs, n, hh| fs.setattr(
                req,
                n,
                &SetAttr { handle: Some(hh), ..*set }
            )),
            None => by_node!(self, node, |fs, n| fs.setattr(req, n, set)),
        }
    }

    fn readlink(&self, req: &Request, node: NodeId, buf: &mut [u8]) -> Result<usize> {
        by_node!(self, node, |fs, n| fs.readlink(req, n, buf))
    }

    fn mknod(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32, rdev: u32) -> Result<Entry> {
        self.make(parent, name, |fs, p| fs.mknod(req, p, name, mode, rdev))
    }

    fn mkdir(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32) -> Result<Entry> {
        self.make(parent, name, |fs, p| fs.mkdir(req, p, name, mode))
    }

    fn unlink(&self, req: &Request, parent: NodeId, name: &OsStr) -> Result<()> {
        by_node!(self, parent, |fs, p| fs.unlink(req, p, name))
    }

    fn rmdir(&self, req: &Request, parent: NodeId, name: &OsStr) -> Result<()> {
        by_node!(self, parent, |fs, p| fs.rmdir(req, p, name))
    }

    fn symlink(&self, req: &Request, parent: NodeId, name: &OsStr, target: &OsStr) -> Result<Entry> {
        self.make(parent, name, |fs, p| fs.symlink(req, p, name, target))
    }

    fn link(&self, req: &Request, node: NodeId, new_parent: NodeId, new_name: &OsStr) -> Result<Entry> {
        route!(self, fs => {
            let e = fs.link(req, node, new_parent, new_name)?;
            Ok(self.entry(0, new_parent, new_name, e))
        }, m => {
            let (to, inner_parent) = self.pair(m, node, new_parent)?;
            let e = to.fs.link(req, to.node, inner_parent, new_name)?;
            Ok(self.entry(to.generation, new_parent, new_name, e))
        })
    }

    fn rename(
        &self,
        req: &Request,
        parent: NodeId,
        name: &OsStr,
        new_parent: NodeId,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> Result<()> {
        route!(self, fs => fs.rename(req, parent, name, new_parent, new_name, flags), m => {
            let (to, inner_new_parent) = self.pair(m, parent, new_parent)?;
            to.fs.rename(req, to.node, name, inner_new_parent, new_name, flags)
        })
    }

    fn open(&self, req: &Request, node: NodeId, flags: i32) -> Result<Opened> {
        route!(self, fs => fs.open(req, node, flags), m => {
            let to = m.node(&self.nodes, node)?;
            let o = to.fs.open(req, to.node, flags)?;
            Ok(m.opened(HandleKind::File, to.generation, o))
        })
    }

    fn create(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32, flags: i32) -> Result<(Entry, Opened)> {
        route!(self, fs => {
            let (e, o) = fs.create(req, parent, name, mode, flags)?;
            Ok((self.entry(0, parent, name, e), o))
        }, m => {
            let to = m.node(&self.nodes, parent)?;
            let (e, o) = to.fs.create(req, to.node, name, mode, flags)?;
            Ok((self.entry(to.generation, parent, name, e), m.opened(HandleKind::File, to.generation, o)))
        })
    }

    fn read(&self, req: &Request, node: NodeId, handle: Handle, offset: u64, buf: &mut [u8]) -> Result<usize> {
        by_handle!(self, HandleKind::File, node, handle, |fs, n, h| fs.read(req, n, h, offset, buf))
    }

    fn write(
        &self,
        req: &Request,
        node: NodeId,
        handle: Handle,
        offset: u64,
        data: &[u8],
        flags: i32,
    ) -> Result<usize> {
        by_handle!(self, HandleKind::File, node, handle, |fs, n, h| fs.write(req, n, h, offset, data, flags))
    }

    fn flush(&self, req: &Request, node: NodeId, handle: Handle, lock_owner: u64) -> Result<()> {
        by_handle!(self, HandleKind::File, node, handle, |fs, n, h| fs.flush(req, n, h, lock_owner))
    }

    fn release(&self, req: &Request, node: NodeId, handle: Handle, flags: i32, flush: bool) -> Result<()> {
        route!(self, fs => fs.release(req, node, handle, flags, flush), m => {
            let result = m
                .handle(&self.nodes, HandleKind::File, node, handle)
                .and_then(|(to, h)| to.fs.release(req, to.node, h, flags, flush));
            // Closed whatever the backend answered: the kernel will not use it again.
            m.handles.remove(HandleKind::File, handle);
            result
        })
    }

    fn fsync(&self, req: &Request, node: NodeId, handle: Handle, datasync: bool) -> Result<()> {
        by_handle!(self, HandleKind::File, node, handle, |fs, n, h| fs.fsync(req, n, h, datasync))
    }

    fn opendir(&self, req: &Request, node: NodeId, flags: i32) -> Result<Opened> {
        route!(self, fs => fs.opendir(req, node, flags), m => {
            let to = m.node(&self.nodes, node)?;
            let o = to.fs.opendir(req, to.node, flags)?;
            Ok(m.opened(HandleKind::Dir, to.generation, o))
        })
    }

    fn readdir(&self, req: &Request, node: NodeId, handle: Handle, cookie: u64, sink: &mut dyn DirSink) -> Result<()> {
        by_handle!(self, HandleKind::Dir, node, handle, |fs, n, h| fs.readdir(req, n, h, cookie, sink))
    }

    fn releasedir(&self, req: &Request, node: NodeId, handle: Handle) -> Result<()> {
        route!(self, fs => fs.releasedir(req, node, handle), m => {
            let result =
                m.handle(&self.nodes, HandleKind::Dir, node, handle).and_then(|(to, h)| to.fs.releasedir(req, to.node, h));
            m.handles.remove(HandleKind::Dir, handle);
            result
        })
    }

    fn fsyncdir(&self, req: &Request, node: NodeId, handle: Handle, datasync: bool) -> Result<()> {
        by_handle!(self, HandleKind::Dir, node, handle, |fs, n, h| fs.fsyncdir(req, n, h, datasync))
    }

    fn statfs(&self, req: &Request, node: NodeId) -> Result<StatFs> {
        by_node!(self, node, |fs, n| fs.statfs(req, n))
    }

    fn setxattr(&self, req: &Request, node: NodeId, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        by_node!(self, node, |fs, n| fs.setxattr(req, n, name, value, flags))
    }

    fn getxattr(&self, req: &Request, node: NodeId, name: &OsStr, buf: &mut [u8]) -> Result<usize> {
        by_node!(self, node, |fs, n| fs.getxattr(req, n, name, buf))
    }

    fn listxattr(&self, req: &Request, node: NodeId, buf: &mut [u8]) -> Result<usize> {
        by_node!(self, node, |fs, n| fs.listxattr(req, n, buf))
    }

    fn removexattr(&self, req: &Request, node: NodeId, name: &OsStr) -> Result<()> {
        by_node!(self, node, |fs, n| fs.removexattr(req, n, name))
    }

    fn fallocate(
        &self,
        req: &Request,
        node: NodeId,
        handle: Handle,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<()> {
        by_handle!(self, HandleKind::File, node, handle, |fs, n, h| fs.fallocate(req, n, h, offset, length, mode))
    }

    fn copy_file_range(
        &self,
        req: &Request,
        node_in: NodeId,
        handle_in: Handle,
        offset_in: u64,
        node_out: NodeId,
        handle_out: Handle,
        offset_out: u64,
        len: u64,
        flags: u32,
    ) -> Result<usize> {
        route!(self, fs => fs.copy_file_range(
            req, node_in, handle_in, offset_in, node_out, handle_out, offset_out, len, flags
        ), m => {
            let (a, ha) = m.handle(&self.nodes, HandleKind::File, node_in, handle_in)?;
            let (b, hb) = m.handle(&self.nodes, HandleKind::File, node_out, handle_out)?;
            if a.generation != b.generation {
                return Err(Errno::EXDEV.into());
            }
            a.fs.copy_file_range(req, a.node, ha, offset_in, b.node, hb, offset_out, len, flags)
        })
    }

    fn lseek(&self, req: &Request, node: NodeId, handle: Handle, offset: i64, whence: Whence) -> Result<u64> {
        by_handle!(self, HandleKind::File, node, handle, |fs, n, h| fs.lseek(req, n, h, offset, whence))
    }

    fn readdirplus(
        &self,
        req: &Request,
        node: NodeId,
        handle: Handle,
        cookie: u64,
        sink: &mut dyn DirPlusSink,
    ) -> Result<()> {
        route!(self, fs => {
            let mut sink = PlusSink { swap: self, mapped: None, generation: 0, parent: node, sink };
            fs.readdirplus(req, node, handle, cookie, &mut sink)
        }, m => {
            let (to, h) = m.handle(&self.nodes, HandleKind::Dir, node, handle)?;
            let mut sink = PlusSink { swap: self, mapped: Some(m), generation: to.generation, parent: node, sink };
            to.fs.readdirplus(req, to.node, h, cookie, &mut sink)
        })
    }

    fn capabilities(&self) -> Option<Capabilities> {
        // Asked by the frontend when it starts, at each `ENOENT` of a lookup (whether to
        // cache it) and on each write of a mount without passthrough (whether the backend
        // stores xattrs): the current backend's, a copy the loader keeps.
        route!(self, fs => fs.capabilities(), m => m.current.load().fs.capabilities())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plugfs_plugin_api::Attr;
    use std::sync::atomic::AtomicUsize;

    /// A backend whose names, ids and handles the test chooses, so ids collide on purpose.
    struct Fake {
        label: &'static str,
        names: Vec<(&'static str, NodeId)>,
        handle: Handle,
        lookups: AtomicUsize,
        forgets: Mutex<Vec<(NodeId, u64)>>,
        released: AtomicUsize,
        dropped: Arc<AtomicBool>,
        /// Its capabilities' negative-entry TTL, in seconds.
        negative_secs: AtomicU64,
    }

    impl Fake {
        fn new(label: &'static str, names: &[(&'static str, NodeId)], handle: Handle) -> (Arc<Fake>, Arc<AtomicBool>) {
            let dropped = Arc::new(AtomicBool::new(false));
            let fake = Fake {
                label,
                names: names.to_vec(),
                handle,
                lookups: AtomicUsize::new(0),
                forgets: Mutex::default(),
                released: AtomicUsize::new(0),
                dropped: Arc::clone(&dropped),
                negative_secs: AtomicU64::new(0),
            };
            (Arc::new(fake), dropped)
        }

        fn check(&self, h: Handle) -> Result<()> {
            if h == self.handle { Ok(()) } else { Err(Errno::EBADF.into()) }
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    impl FileSystem for Fake {
        fn lookup(&self, _: &Request, _: NodeId, name: &OsStr) -> Result<Entry> {
            let &(_, node) = self.names.iter().find(|(n, _)| OsStr::new(n) == name).ok_or(Errno::ENOENT)?;
            self.lookups.fetch_add(1, Ordering::SeqCst);
            let ttl = Duration::from_secs(1);
            Ok(Entry {
                node,
                attr: Attr { ino: node, ..Attr::default() },
                entry_ttl: ttl,
                attr_ttl: ttl,
                ..Entry::default()
            })
        }

        fn forget(&self, node: NodeId, nlookup: u64) {
            lock(&self.forgets).push((node, nlookup));
        }

        fn getattr(&self, _: &Request, node: NodeId, _: Option<Handle>) -> Result<AttrOut> {
            Ok(AttrOut {
                attr: Attr { ino: node, size: self.label.len() as u64, ..Attr::default() },
                ..AttrOut::default()
            })
        }

        fn open(&self, _: &Request, _: NodeId, _: i32) -> Result<Opened> {
            Ok(Opened { handle: self.handle, ..Opened::default() })
        }

        fn opendir(&self, _: &Request, _: NodeId, _: i32) -> Result<Opened> {
            Ok(Opened { handle: self.handle, ..Opened::default() })
        }

        fn release(&self, _: &Request, _: NodeId, h: Handle, _: i32, _: bool) -> Result<()> {
            self.check(h)?;
            self.released.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }

        fn releasedir(&self, _: &Request, _: NodeId, h: Handle) -> Result<()> {
            self.check(h)?;
            self.released.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }

        /// Reads "label:node".
        fn read(&self, _: &Request, node: NodeId, h: Handle, _: u64, buf: &mut [u8]) -> Result<usize> {
            self.check(h)?;
            let text = format!("{}:{node}", self.label);
            buf[..text.len()].copy_from_slice(text.as_bytes());
            Ok(text.len())
        }

        fn readdir(&self, _: &Request, _: NodeId, h: Handle, cookie: u64, sink: &mut dyn DirSink) -> Result<()> {
            self.check(h)?;
            for (i, (name, node)) in self.names.iter().enumerate().skip(cookie as usize) {
                let e = DirEntry { ino: *node, kind: Default::default(), name: name.as_bytes(), cookie: i as u64 + 1 };
                if !sink.add(&e) {
                    break;
                }
            }
            Ok(())
        }

        fn readdirplus(
            &self,
            req: &Request,
            _: NodeId,
            h: Handle,
            cookie: u64,
            sink: &mut dyn DirPlusSink,
        ) -> Result<()> {
            self.check(h)?;
            for (i, (name, _)) in self.names.iter().enumerate().skip(cookie as usize) {
                let entry = self.lookup(req, ROOT_ID, OsStr::new(name))?;
                let e =
                    DirEntry { ino: entry.node, kind: Default::default(), name: name.as_bytes(), cookie: i as u64 + 1 };
                if !sink.add(&e, &entry) {
                    // Not taken: no reference counted.
                    self.lookups.fetch_sub(1, Ordering::SeqCst);
                    break;
                }
            }
            Ok(())
        }

        fn link(&self, _: &Request, node: NodeId, _: NodeId, _: &OsStr) -> Result<Entry> {
            Ok(Entry { node, ..Entry::default() })
        }

        fn capabilities(&self) -> Option<Capabilities> {
            let negative_entry_ttl = Duration::from_secs(self.negative_secs.load(Ordering::SeqCst));
            Some(Capabilities { negative_entry_ttl, ..Capabilities::POSIX })
        }
    }

    #[derive(Default)]
    struct FakeKernel {
        open: Mutex<Vec<(HandleKind, Handle)>>,
        entries: Mutex<Vec<(NodeId, OsString)>>,
        inodes: Mutex<Vec<NodeId>>,
    }

    impl Kernel for FakeKernel {
        fn inval_entry(&self, parent: NodeId, name: &OsStr) -> std::io::Result<()> {
            lock(&self.entries).push((parent, name.to_os_string()));
            Ok(())
        }
        fn inval_inode(&self, node: NodeId, _: i64, _: i64) -> std::io::Result<()> {
            lock(&self.inodes).push(node);
            Ok(())
        }
        fn open_handles(&self) -> Vec<(HandleKind, Handle)> {
            lock(&self.open).clone()
        }
        fn settle(&self, _: Duration) -> bool {
            true
        }
    }

    /// Drops the released backends, as the host does, and names them.
    fn labels(c: Collected) -> Vec<String> {
        c.released.into_iter().map(|b| b.label).collect()
    }

    fn req() -> Request {
        Request::default()
    }

    fn read(fs: &Swap, node: NodeId, h: Handle) -> String {
        let mut buf = [0u8; 64];
        let n = fs.read(&req(), node, h, 0, &mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    fn label(fs: Arc<Fake>) -> Backend {
        let label = fs.label.to_string();
        Backend { fs, label }
    }

    #[test]
    fn before_a_swap_ids_and_handles_pass_through_unchanged() {
        let (old, _) = Fake::new("old", &[("f", 77)], 4242);
        let swap = Swap::new(old.clone(), "old");
        let e = swap.lookup(&req(), ROOT_ID, OsStr::new("f")).unwrap();
        assert_eq!((e.node, e.attr.ino), (77, 77));
        let o = swap.open(&req(), 77, 0).unwrap();
        assert_eq!(o.handle, 4242);
        assert_eq!(read(&swap, 77, 4242), "old:77");
        swap.forget(77, 1);
        assert_eq!(*lock(&old.forgets), [(77, 1)]);
        assert_eq!((swap.backends(), swap.swaps()), (1, 0));
    }

    /// The whole life of a swap: a file open on the old backend, the same name on the new
    /// one with the same node id and handle value, invalidation, release of the old one.
    #[test]
    fn a_swap_routes_the_root_to_the_new_backend_and_keeps_old_ids_and_handles_on_the_old_one() {
        let (old, old_dropped) = Fake::new("old", &[("f", 5), ("only-old", 6)], 7);
        let (new, _) = Fake::new("new", &[("f", 5), ("g", 9)], 7);
        let kernel = Arc::new(FakeKernel::default());
        let swap = Swap::new(old.clone(), "old");

        // Before: f looked up twice (one reference counted per reply) and opened.
        assert_eq!(swap.lookup(&req(), ROOT_ID, OsStr::new("f")).unwrap().node, 5);
        assert_eq!(swap.lookup(&req(), ROOT_ID, OsStr::new("f")).unwrap().node, 5);
        let h = swap.open(&req(), 5, 0).unwrap().handle;
        lock(&kernel.open).push((HandleKind::File, h));

        swap.swap(label(new.clone()), kernel.clone()).unwrap();
        assert_eq!((swap.backends(), swap.swaps()), (2, 1));
        // The names under the old root the kernel may cache, and the root's attributes.
        let entries = lock(&kernel.entries).clone();
        for name in ["f", "only-old"] {
            assert!(entries.contains(&(ROOT_ID, OsString::from(name))), "{name} in {entries:?}");
        }
        assert_eq!(*lock(&kernel.inodes), [ROOT_ID]);

        // The root is the new backend's now.
        assert_eq!(swap.getattr(&req(), ROOT_ID, None).unwrap().attr.size, 3);
        let e = swap.lookup(&req(), ROOT_ID, OsStr::new("f")).unwrap();
        assert_ne!(e.node, 5, "the new backend's node 5 must not take the id the kernel holds for the old one");
        assert_eq!(e.attr.ino, 5, "attributes pass through");
        assert_eq!(swap.lookup(&req(), ROOT_ID, OsStr::new("f")).unwrap().node, e.node, "one id per node");
        assert_eq!(swap.lookup(&req(), ROOT_ID, OsStr::new("g")).unwrap().node, 9, "no collision: its own id");
        assert!(swap.lookup(&req(), ROOT_ID, OsStr::new("only-old")).is_err());

        // A new open of the same path reaches the new backend with a handle of its own.
        let h2 = swap.open(&req(), e.node, 0).unwrap().handle;
        assert_ne!(h2, h, "the old backend's handle is still open");
        assert_eq!(read(&swap, e.node, h2), "new:5");
        // The file opened before reads on from the old backend.
        assert_eq!(read(&swap, 5, h), "old:5");
        assert_eq!(swap.getattr(&req(), 5, None).unwrap().attr.size, 3);

        // Released once closed and forgotten, not before.
        // (The swap listed the old root through a directory handle of its own.)
        let released = old.released.load(Ordering::SeqCst);
        swap.release(&req(), 5, h, 0, true).unwrap();
        assert_eq!(old.released.load(Ordering::SeqCst), released + 1);
        assert!(labels(swap.collect(kernel.clone())).is_empty(), "the kernel still holds node 5");
        swap.forget(5, 2);
        assert_eq!(*lock(&old.forgets), [(5, 2)]);
        drop(old);
        assert!(!old_dropped.load(Ordering::SeqCst));
        assert_eq!(labels(swap.collect(kernel.clone())), ["old"]);
        assert!(old_dropped.load(Ordering::SeqCst), "the old plugin instance is dropped");
        assert_eq!(swap.backends(), 1);

        // The new backend's remapped node goes on working, and its forget reaches it.
        assert_eq!(read(&swap, e.node, h2), "new:5");
        swap.release(&req(), e.node, h2, 0, true).unwrap();
        swap.forget(e.node, 2);
        assert_eq!(*lock(&new.forgets), [(5, 2)]);
        // Node 5 is free again: the new backend's node 5 gets its own id now.
        assert_eq!(swap.lookup(&req(), ROOT_ID, OsStr::new("f")).unwrap().node, 5);
    }

    /// Two swaps in a row: each backend keeps what it handed out, the root is the last
    /// one's, and each earlier one is released on its own once the kernel lets go.
    #[test]
    fn after_two_swaps_each_backend_keeps_its_own_and_is_released_on_its_own() {
        let (a, a_dropped) = Fake::new("a", &[("f", 5)], 7);
        let (b, b_dropped) = Fake::new("b", &[("f", 5)], 7);
        let (c, _) = Fake::new("c", &[("f", 5)], 7);
        let kernel = Arc::new(FakeKernel::default());
        let swap = Swap::new(a, "a");
        let fa = swap.lookup(&req(), ROOT_ID, OsStr::new("f")).unwrap().node;
        let ha = swap.open(&req(), fa, 0).unwrap().handle;
        lock(&kernel.open).push((HandleKind::File, ha));
        swap.swap(label(b), kernel.clone()).unwrap();
        let fb = swap.lookup(&req(), ROOT_ID, OsStr::new("f")).unwrap().node;
        let hb = swap.open(&req(), fb, 0).unwrap().handle;
        swap.swap(label(c), kernel.clone()).unwrap();
        let fc = swap.lookup(&req(), ROOT_ID, OsStr::new("f")).unwrap().node;
        let hc = swap.open(&req(), fc, 0).unwrap().handle;
        assert_eq!((fa, [fa, fb, fc].iter().collect::<HashSet<_>>().len()), (5, 3), "three kernel ids");
        assert_eq!([ha, hb, hc].iter().collect::<HashSet<_>>().len(), 3, "three handles");
        assert_eq!(
            (read(&swap, fa, ha), read(&swap, fb, hb), read(&swap, fc, hc)),
            ("a:5".into(), "b:5".into(), "c:5".into())
        );
        assert_eq!((swap.backends(), swap.swaps()), (3, 2));

        // b lets go first: released, while a still serves its open file.
        swap.release(&req(), fb, hb, 0, true).unwrap();
        swap.forget(fb, 1);
        assert_eq!(labels(swap.collect(kernel.clone())), ["b"]);
        assert!(b_dropped.load(Ordering::SeqCst) && !a_dropped.load(Ordering::SeqCst));
        assert_eq!(read(&swap, fa, ha), "a:5");
        swap.release(&req(), fa, ha, 0, true).unwrap();
        swap.forget(fa, 1);
        assert_eq!(labels(swap.collect(kernel.clone())), ["a"]);
        assert_eq!(swap.backends(), 1);
        assert_eq!(read(&swap, fc, hc), "c:5");
    }

    #[test]
    fn a_directory_handle_on_the_root_opened_before_a_swap_lists_the_old_root() {
        let (old, _) = Fake::new("old", &[("a", 2)], 3);
        let (new, _) = Fake::new("new", &[("b", 2)], 3);
        let kernel = Arc::new(FakeKernel::default());
        let swap = Swap::new(old, "old");
        let h = swap.opendir(&req(), ROOT_ID, 0).unwrap().handle;
        lock(&kernel.open).push((HandleKind::Dir, h));
        swap.swap(label(new), kernel.clone()).unwrap();
        let h2 = swap.opendir(&req(), ROOT_ID, 0).unwrap().handle;
        assert_ne!(h2, h);

        struct Names(Vec<String>);
        impl DirSink for Names {
            fn add(&mut self, e: &DirEntry<'_>) -> bool {
                self.0.push(String::from_utf8_lossy(e.name).into_owned());
                true
            }
        }
        let (mut before, mut after) = (Names(Vec::new()), Names(Vec::new()));
        swap.readdir(&req(), ROOT_ID, h, 0, &mut before).unwrap();
        swap.readdir(&req(), ROOT_ID, h2, 0, &mut after).unwrap();
        assert_eq!((before.0, after.0), (vec!["a".to_string()], vec!["b".to_string()]));
        // readdirplus through the old handle: the kernel would cache its entries under the
        // root, so they come with no time to live and are looked up again before use.
        struct Ttls(Vec<(NodeId, Duration)>);
        impl DirPlusSink for Ttls {
            fn add(&mut self, _: &DirEntry<'_>, e: &Entry) -> bool {
                self.0.push((e.node, e.entry_ttl));
                true
            }
        }
        let (mut new_ttls, mut old_ttls) = (Ttls(Vec::new()), Ttls(Vec::new()));
        swap.readdirplus(&req(), ROOT_ID, h2, 0, &mut new_ttls).unwrap();
        swap.readdirplus(&req(), ROOT_ID, h, 0, &mut old_ttls).unwrap();
        assert_eq!(new_ttls.0, [(2, Duration::from_secs(1))]);
        let [(old_b, ttl)] = old_ttls.0[..] else { panic!("{:?}", old_ttls.0) };
        assert_eq!(ttl, Duration::ZERO);
        assert_ne!(old_b, 2, "node 2 is held for the new backend's b");
        swap.forget(2, 1);
        swap.forget(old_b, 1);
        swap.releasedir(&req(), ROOT_ID, h).unwrap();
        swap.releasedir(&req(), ROOT_ID, h2).unwrap();
        assert_eq!(labels(swap.collect(kernel.clone())), ["old"], "no node, no handle left on the old backend");
    }

    #[test]
    fn operations_joining_an_old_node_and_a_new_one_fail_with_exdev() {
        let (old, _) = Fake::new("old", &[("d", 2)], 3);
        let (new, _) = Fake::new("new", &[("e", 4)], 3);
        let kernel = Arc::new(FakeKernel::default());
        let swap = Swap::new(old, "old");
        let d = swap.lookup(&req(), ROOT_ID, OsStr::new("d")).unwrap().node;
        swap.swap(label(new), kernel.clone()).unwrap();
        let e = swap.lookup(&req(), ROOT_ID, OsStr::new("e")).unwrap().node;
        let exdev = |r: Result<()>| r.unwrap_err().errno();
        assert_eq!(exdev(swap.link(&req(), d, ROOT_ID, OsStr::new("x")).map(drop)), Errno::EXDEV);
        assert_eq!(exdev(swap.rename(&req(), d, OsStr::new("x"), e, OsStr::new("y"), RenameFlags(0))), Errno::EXDEV);
        assert!(swap.link(&req(), e, ROOT_ID, OsStr::new("x")).is_ok(), "within the new backend");
    }

    #[test]
    fn a_swap_away_from_negative_entries_invalidates_the_new_backends_root_names_too() {
        // The kernel may hold "no such name" for a name only the new backend has.
        for negative in [0, 3600] {
            let (old, _) = Fake::new("old", &[("a", 2)], 3);
            old.negative_secs.store(negative, Ordering::SeqCst);
            let (new, _) = Fake::new("new", &[("b", 4), ("c", 5)], 3);
            let kernel = Arc::new(FakeKernel::default());
            let swap = Swap::new(old, "old");
            assert_eq!(swap.capabilities().unwrap().negative_entry_ttl, Duration::from_secs(negative));
            swap.swap(label(new), kernel.clone()).unwrap();
            assert_eq!(swap.capabilities().unwrap().negative_entry_ttl, Duration::ZERO, "the new backend's");
            let mut names: Vec<String> =
                lock(&kernel.entries).iter().map(|(_, n)| n.to_string_lossy().into_owned()).collect();
            names.sort();
            let want: &[&str] = if negative > 0 { &["a", "b", "c"] } else { &["a"] };
            assert_eq!(names, want, "negative entries for {negative} s");
        }
    }

    #[test]
    fn readdirplus_counts_only_the_entries_the_frontend_takes() {
        let (old, _) = Fake::new("old", &[("a", 2), ("b", 3)], 3);
        let swap = Swap::new(old.clone(), "old");
        struct TakeOne(usize);
        impl DirPlusSink for TakeOne {
            fn add(&mut self, _: &DirEntry<'_>, _: &Entry) -> bool {
                self.0 += 1;
                self.0 == 1
            }
        }
        swap.readdirplus(&req(), ROOT_ID, 3, 0, &mut TakeOne(0)).unwrap();
        assert_eq!(swap.nodes.count(0), 1, "b was not taken");
        assert_eq!(swap.nodes.route(2), Some((0, 2)));
        assert_eq!(swap.nodes.route(3), None);
        swap.forget(2, 1);
        assert_eq!(swap.nodes.count(0), 0);
    }

    /// A reply of the old backend that arrives after a newer backend took its id (a
    /// lookup in an old directory) is remapped instead, and forgetting it frees the remap.
    #[test]
    fn node_ids_collide_either_way_and_each_backend_node_keeps_one_kernel_id() {
        let nodes = Nodes::default();
        nodes.remapping.store(true, Ordering::SeqCst);
        assert_eq!(nodes.register(1, 8, ROOT_ID, OsStr::new("n")), 8);
        let old = nodes.register(0, 8, 20, OsStr::new("o"));
        assert_ne!(old, 8);
        assert_eq!(nodes.register(0, 8, 20, OsStr::new("o")), old);
        assert_eq!((nodes.route(8), nodes.route(old)), (Some((1, 8)), Some((0, 8))));
        assert_eq!((nodes.count(0), nodes.count(1)), (1, 1));
        assert_eq!(nodes.root_names(1), [OsString::from("n")]);
        assert!(nodes.root_names(0).is_empty(), "named under another directory");
        assert_eq!(nodes.forget(old, 2), Some((0, 8)));
        assert!(lock(&nodes.remapped).is_empty());
        assert_eq!(nodes.route(old), None);
        // Id 8 is still the new backend's; the old one's next reply gets a fresh id again.
        assert_ne!(nodes.register(0, 8, 20, OsStr::new("o")), 8);
    }

    /// Many threads looking nodes of two backends up and forgetting them, their ids
    /// colliding all the time: while a reference is held its kernel id leads to that node,
    /// and once all are forgotten nothing is left behind.
    #[test]
    fn concurrent_lookups_and_forgets_of_colliding_ids_stay_consistent() {
        let nodes = Arc::new(Nodes::default());
        nodes.remapping.store(true, Ordering::SeqCst);
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let nodes = Arc::clone(&nodes);
                std::thread::spawn(move || {
                    for i in 0..5_000u64 {
                        let (generation, inner) = (((t + i) % 2) as Gen, 2 + (t * 7 + i) % 5);
                        let outer = nodes.register(generation, inner, ROOT_ID, OsStr::new("n"));
                        assert_eq!(nodes.route(outer), Some((generation, inner)));
                        let again = nodes.register(generation, inner, 9, OsStr::new("m"));
                        assert_eq!(again, outer, "one kernel id per node while it is held");
                        assert_eq!(nodes.forget(outer, 2), Some((generation, inner)));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!((nodes.count(0), nodes.count(1)), (0, 0));
        assert!(lock(&nodes.remapped).is_empty());
        assert!(nodes.shards.iter().all(|s| lock(s).nodes.is_empty()));
    }

    /// A request of the first backend still running when a swap begins holds the swap
    /// back (nothing switched), rather than leave a handle the swap does not know.
    #[test]
    fn a_first_swap_waits_for_requests_begun_untranslated_and_gives_up_without_switching() {
        let (old, _) = Fake::new("old", &[("f", 5)], 7);
        let (new, _) = Fake::new("new", &[("f", 5)], 7);
        let kernel = Arc::new(FakeKernel::default());
        let swap = Swap::new(old, "old");
        let h = swap.open(&req(), 5, 0).unwrap().handle;
        lock(&kernel.open).push((HandleKind::File, h));
        // A request in flight, as one holds the mode while it runs.
        let running = swap.mode.load();
        let err = swap.swap_within(label(new.clone()), kernel.clone(), Duration::ZERO).unwrap_err();
        assert!(matches!(err, SwapError::Busy(1, _)), "{err}");
        drop(running);
        assert_eq!((swap.backends(), swap.swaps()), (1, 0));
        assert_eq!(read_root_size(&swap), 3);
        assert_eq!(swap.lookup(&req(), ROOT_ID, OsStr::new("f")).unwrap().node, 5);
        assert!(matches!(&**swap.mode.load(), Mode::Direct(_)), "passing through again");
        // Nothing running: the next swap goes through, and knows the handle open before.
        swap.swap_within(label(new), kernel.clone(), Duration::ZERO).unwrap();
        assert_eq!(swap.swaps(), 1);
        let e = swap.lookup(&req(), ROOT_ID, OsStr::new("f")).unwrap();
        assert_ne!(swap.open(&req(), e.node, 0).unwrap().handle, h);
        assert_eq!(read(&swap, 5, h), "old:5");
    }

    fn read_root_size(swap: &Swap) -> u64 {
        swap.getattr(&req(), ROOT_ID, None).unwrap().attr.size
    }
}
