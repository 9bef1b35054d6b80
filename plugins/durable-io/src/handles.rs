//! The handle table: open files and directory streams, each owning its own fd.
//!
//! Entries are `Arc`s so that an operation takes the lock only long enough to clone one,
//! then does its IO lock-free; `release` removes the entry and the fd closes when the last
//! call still using it returns.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use plugfs_plugin_api::{Errno, Error, Handle, Result};

/// An open regular file.
pub(crate) struct FileHandle {
    /// The backing file, opened with the caller's flags.
    pub fd: OwnedFd,
    /// Written to (or truncated, or allocated) since it was last synced; `close` mode syncs
    /// such a file on flush and release.
    pub dirty: AtomicBool,
    /// Opened with `O_DIRECT`, so IO needs aligned buffers.
    pub direct: bool,
    /// Opened for writing (`ftruncate` through it works).
    pub writable: bool,
    /// Handed over for the kernel's passthrough while writable: writes to it may never
    /// reach us, so `dirty` cannot be trusted and `close` mode syncs it on every close.
    pub unseen_writes: bool,
    /// An atomic replace: `fd` is an unnamed temporary file that the last release renames
    /// over the target (see `replace.rs`).
    pub replace: Option<crate::replace::Replace>,
}

/// How large a `getdents` buffer a directory stream keeps.
const DIR_BUF: usize = 32 * 1024;

/// An open directory stream.
pub(crate) struct DirHandle {
    /// The backing directory, opened `O_RDONLY | O_DIRECTORY`; its file position is the
    /// stream position, so `getdents` offsets are our cookies.
    pub fd: OwnedFd,
    /// This is the root, whose `..` must not show what lies outside.
    pub is_root: bool,
    /// The `getdents` buffer; the lock also serializes seek+read pairs on `fd`.
    pub buf: Mutex<Vec<u8>>,
}

impl DirHandle {
    pub(crate) fn new(fd: OwnedFd, is_root: bool) -> Self {
        DirHandle { fd, is_root, buf: Mutex::new(Vec::with_capacity(DIR_BUF)) }
    }
}

/// Either kind of open handle.
#[derive(Clone)]
pub(crate) enum Open {
    File(Arc<FileHandle>),
    Dir(Arc<DirHandle>),
}

impl Open {
    /// The handle's fd, whichever kind it is (for `fstat` and `fsync`).
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Open::File(f) => f.fd.as_fd(),
            Open::Dir(d) => d.fd.as_fd(),
        }
    }
}

/// How many independently locked parts the handle table has. Handles are numbered in
/// order, so consecutive opens land in different shards and concurrent reads and writes
/// of different files rarely touch the same lock.
const SHARDS: usize = 16;

type Shard = RwLock<HashMap<Handle, Open>>;

/// All open handles of one mount, in shards, so the read/write path takes no lock that
/// every other handle's IO takes too.
pub(crate) struct HandleTable {
    shards: [Shard; SHARDS],
    next: AtomicU64,
}

fn bad_handle(h: Handle) -> Error {
    Error::with_message(Errno::EBADF, format!("durable-io: unknown handle {h}"))
}

impl HandleTable {
    pub(crate) fn new() -> Self {
        // Handle 0 is left unused: hosts commonly treat it as "no handle".
        HandleTable { shards: std::array::from_fn(|_| RwLock::new(HashMap::new())), next: AtomicU64::new(1) }
    }

    fn shard(&self, h: Handle) -> &Shard {
        &self.shards[(h % SHARDS as u64) as usize]
    }

    // Each update is one map insert or remove, so a poisoned lock is still consistent.
    fn read(&self, h: Handle) -> RwLockReadGuard<'_, HashMap<Handle, Open>> {
        self.shard(h).read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self, h: Handle) -> RwLockWriteGuard<'_, HashMap<Handle, Open>> {
        self.shard(h).write().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn insert(&self, open: Open) -> Handle {
        let h = self.next.fetch_add(1, Ordering::Relaxed);
        self.write(h).insert(h, open);
        h
    }

    pub(crate) fn get(&self, h: Handle) -> Result<Open> {
        self.read(h).get(&h).cloned().ok_or_else(|| bad_handle(h))
    }

    pub(crate) fn file(&self, h: Handle) -> Result<Arc<FileHandle>> {
        match self.get(h)? {
            Open::File(f) => Ok(f),
            Open::Dir(_) => Err(Errno::EISDIR.into()),
        }
    }

    pub(crate) fn dir(&self, h: Handle) -> Result<Arc<DirHandle>> {
        match self.get(h)? {
            Open::Dir(d) => Ok(d),
            Open::File(_) => Err(Errno::ENOTDIR.into()),
        }
    }

    pub(crate) fn remove(&self, h: Handle) -> Result<Open> {
        self.write(h).remove(&h).ok_or_else(|| bad_handle(h))
    }
}
