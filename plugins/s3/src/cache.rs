//! The local write-back cache: one directory per mount, holding a local copy of each file
//! that is being written (or is open while unlinked), and a count of the bytes they take,
//! bounded by `cache_size`.
//!
//! Crash safety: the copies are only ever written *before* their upload, and a file's data
//! counts as stored only when the upload returned (that is what fsync waits for). So a
//! copy left by a crashed host holds nothing that fsync acknowledged, and the next mount
//! of the same cache directory discards it (logging how many it found). A lock file
//! keeps two live mounts from sharing one directory.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The cache directory of one mount.
pub struct Cache {
    dir: PathBuf,
    /// Keeps the flock for as long as the mount lives.
    _lock: File,
    /// A temporary directory we made ourselves (no `cache_dir` configured): removed on drop.
    _temp: Option<tempfile::TempDir>,
    limit: u64,
    used: AtomicU64,
    serial: AtomicU64,
}

impl Cache {
    /// Opens (creating it) `base/plugfs-s3-<id>/`, where `id` names the bucket and prefix,
    /// takes its lock and discards what a crashed host left. `base` `None`: a new
    /// temporary directory.
    pub fn open(base: Option<&Path>, id: &str, limit: u64) -> Result<Cache, String> {
        let (temp, base) = match base {
            Some(b) => (None, b.to_path_buf()),
            None => {
                let t = tempfile::Builder::new()
                    .prefix("plugfs-s3-cache-")
                    .tempdir()
                    .map_err(|e| format!("cannot make a temporary cache directory: {e}"))?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let dir = base.join(format!("plugfs-s3-{id}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let lock_path = dir.join("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("{}: {e}", lock_path.display()))?;
        rustix::fs::flock(lock.as_fd(), rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|_| format!("{} is in use by another mount of the same bucket and prefix", dir.display()))?;
        let files = dir.join("files");
        std::fs::create_dir_all(&files).map_err(|e| format!("{}: {e}", files.display()))?;
        // Leftovers of a crashed host: never fsynced (see the module docs), so discarded.
        let mut discarded = 0u64;
        if let Ok(rd) = std::fs::read_dir(&files) {
            for e in rd.flatten() {
                if std::fs::remove_file(e.path()).is_ok() {
                    discarded += 1;
                }
            }
        }
        if discarded > 0 {
            tracing::warn!(
                "s3: discarded {discarded} local file copies in {} that a previous mount left unfinished; \
                 what they held was never acknowledged by fsync",
                files.display()
            );
        }
        Ok(Cache { dir: files, _lock: lock, _temp: temp, limit, used: AtomicU64::new(0), serial: AtomicU64::new(0) })
    }

    /// A new, empty local copy file. It is unlinked at once: it lives exactly as long as
    /// its descriptor, so nothing is left behind by a clean exit and only an unlinked inode
    /// by a crash (freed by the kernel).
    pub fn new_file(&self) -> std::io::Result<File> {
        let n = self.serial.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("copy-{}-{n}", std::process::id()));
        let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        std::fs::remove_file(&path)?;
        Ok(f)
    }

    /// Reserves `bytes` more of the budget; ENOSPC-worthy when it does not fit.
    pub fn reserve(&self, bytes: u64) -> bool {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            let Some(next) = cur.checked_add(bytes).filter(|n| *n <= self.limit) else {
                return false;
            };
            match self.used.compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(c) => cur = c,
            }
        }
    }

    /// Gives `bytes` back.
    pub fn release(&self, bytes: u64) {
        let _ = self.used.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| Some(c.saturating_sub(bytes)));
    }

    /// Bytes in use.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The budget.
    pub fn limit(&self) -> u64 {
        self.limit
    }
}
