//! The durability policy and the syncs it calls for.

use std::os::fd::{AsFd, BorrowedFd};

use plugfs_plugin_api::{Errno, FileKind, Result};
use rustix::fs::OFlags;
use serde::Deserialize;

use crate::sys::{ProcFd, err};

/// When data and namespace changes are made durable (config key `durability`).
///
/// A caller's `fsync`/`fsyncdir` always really syncs, in every mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Leave it to the page cache; sync only when the caller asks.
    Kernel,
    /// Additionally `fdatasync` a file that was written when it is closed (on each flush,
    /// that is each `close(2)`, and on the final release).
    #[default]
    Close,
    /// Every write is durable when it returns (`O_DSYNC`), and every namespace or
    /// attribute change syncs the changed inode and its parent directory (both parents for
    /// a rename) before it returns.
    Always,
}

impl Durability {
    /// Extra flags for backing files opened for writing.
    pub(crate) fn write_flags(self) -> OFlags {
        match self {
            // Not OFlags::DSYNC: rustix 1.1 maps that to O_SYNC, which also syncs metadata
            // such as mtime on every write.
            Durability::Always => OFlags::from_bits_retain(libc::O_DSYNC as u32),
            Durability::Kernel | Durability::Close => OFlags::empty(),
        }
    }

    /// Whether closing a written file syncs its data.
    pub(crate) fn sync_on_close(self) -> bool {
        self == Durability::Close
    }

    /// Whether open files may be handed to the kernel for FUSE passthrough, where reads
    /// and writes no longer reach the plugin.
    ///
    /// Not under `always`: the kernel does not write through our descriptor but opens its
    /// own backing file from it with the *caller's* open flags, so our `O_DSYNC` would not
    /// apply and a write could return before it is durable. Under `close` the plugin still
    /// sees every flush and release, and syncs there.
    pub fn passthrough(self) -> bool {
        self != Durability::Always
    }

    /// Whether namespace and attribute changes are synced before they return.
    pub(crate) fn sync_changes(self) -> bool {
        self == Durability::Always
    }
}

/// `fdatasync` or `fsync` of an open fd.
pub(crate) fn sync_fd(fd: BorrowedFd<'_>, datasync: bool) -> Result<()> {
    if datasync { rustix::fs::fdatasync(fd) } else { rustix::fs::fsync(fd) }.map_err(err)
}

/// Syncs the inode behind the `O_PATH` fd `node`. `O_PATH` fds cannot be synced, so it is
/// reopened read-only. Symlinks cannot be opened at all, and opening a FIFO or device node
/// would block or touch hardware, so those are left to the sync of their parent directory
/// (which on journalling filesystems commits the transaction that created them). A file we
/// may not open for reading is skipped the same way. Returns whether it synced.
pub(crate) fn sync_node(proc: &ProcFd, node: BorrowedFd<'_>, kind: FileKind) -> Result<bool> {
    let flags = match kind {
        FileKind::File => OFlags::RDONLY,
        FileKind::Directory => OFlags::RDONLY | OFlags::DIRECTORY,
        _ => return Ok(false),
    };
    // O_NOATIME is refused to non-owners without CAP_FOWNER; then try without it.
    let reopened = proc
        .reopen(node, flags | OFlags::NOATIME)
        .or_else(|e| if e.errno() == Errno::EPERM { proc.reopen(node, flags) } else { Err(e) });
    match reopened {
        Ok(fd) => sync_fd(fd.as_fd(), false).map(|()| true),
        Err(e) if e.errno() == Errno::EACCES => Ok(false),
        Err(e) => Err(e),
    }
}
