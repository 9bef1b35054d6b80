//! Atomic replace (config key `atomic_replace`): a regular file opened for writing with
//! `O_TRUNC` is written to an unnamed `O_TMPFILE` in its directory, and the last release of
//! the handle syncs it, links it under a hidden temporary name and renames it over the
//! target, then syncs the directory. A crash leaves the old content or the new one.
//!
//! The temporary names (`.plugfs-replace-*`) exist only between the link and the rename;
//! they are hidden from `lookup` and `readdir`, and leftovers of a crash in that window are
//! removed from the root directory when the plugin opens.

use std::ffi::{OsStr, OsString};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use plugfs_plugin_api::{NodeId, Request};
use rustix::fs::{AtFlags, OFlags, RawDir};

/// The prefix of the temporary names.
pub(crate) const TEMP_PREFIX: &str = ".plugfs-replace-";

/// Whether `name` is one of ours, hidden from the mount.
pub(crate) fn is_replace_temp(name: &OsStr) -> bool {
    name.as_bytes().starts_with(TEMP_PREFIX.as_bytes())
}

/// A fresh temporary name.
pub(crate) fn temp_name() -> OsString {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{TEMP_PREFIX}{}-{n}-{nanos:x}", std::process::id()).into()
}

/// What an atomic-replace handle must know at release: where the target is, who asked.
pub(crate) struct Replace {
    /// The target's directory (an `O_PATH` fd) and name, as they were at open.
    pub dir: Arc<OwnedFd>,
    pub name: OsString,
    /// The node of the old inode, marked superseded once the rename is done.
    pub old: NodeId,
    /// The caller who opened, and its supplementary groups then: the rename is made as it.
    pub req: Request,
    pub groups: Vec<u32>,
}

/// Removes leftover temporary names from the directory `dir` (a readable fd); returns how
/// many. Errors are only logged: this is housekeeping.
pub(crate) fn remove_stale(dir: BorrowedFd<'_>) -> usize {
    let mut names = Vec::new();
    let mut buf = Vec::with_capacity(16 * 1024);
    if rustix::fs::seek(dir, rustix::fs::SeekFrom::Start(0)).is_err() {
        return 0;
    }
    let mut iter = RawDir::new(dir, buf.spare_capacity_mut());
    while let Some(entry) = iter.next() {
        match entry {
            Ok(e) if is_replace_temp(OsStr::from_bytes(e.file_name().to_bytes())) => {
                names.push(e.file_name().to_owned());
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("durable-io: cannot list the root for stale replace temporaries: {e}");
                break;
            }
        }
    }
    let mut removed = 0;
    for name in names {
        match rustix::fs::unlinkat(dir, name.as_c_str(), AtFlags::empty()) {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!("durable-io: cannot remove stale {name:?}: {e}"),
        }
    }
    if removed > 0 {
        let _ = rustix::fs::fsync(dir);
    }
    removed
}

/// The flags for the temporary file of a handle opened with `oflags`.
pub(crate) fn temp_flags(oflags: OFlags) -> OFlags {
    (oflags & !OFlags::TRUNC) | OFlags::TMPFILE | OFlags::CLOEXEC
}
