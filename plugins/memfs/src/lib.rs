//! # memfs: an in-memory POSIX filesystem
//!
//! The example plugfs plugin: small enough to read top to bottom, complete enough to pass
//! for a real filesystem (hard links, symlinks, FIFOs and device nodes, xattrs, `rename`
//! with `RENAME_NOREPLACE`/`RENAME_EXCHANGE`, `fallocate`, capacity limits). Copy it to
//! start a plugin of your own; `docs/plugin-guide.md` walks through it.
//!
//! Read it in the order a reader needs it:
//!
//! 1. this file: the plugin, its name, capabilities and config table ([`MemFsPlugin`]);
//! 2. `model.rs`: the data model, nodes, directories with stable readdir cookies, open
//!    handles;
//! 3. `ops.rs`: the [`FileSystem`] operations, each a short function over that model;
//! 4. `tests.rs`: tests that drive the filesystem through the trait, as the host does.
//!
//! **Thread safety.** The host calls from many threads at once. memfs keeps the whole tree
//! behind one [`RwLock`]: operations that only look take the read lock, everything that
//! changes something (including `lookup`, which counts references) takes the write lock.
//! That is plenty for an example and for tests; a filesystem built for parallel load would
//! lock per node instead.
//!
//! **Config** (`[mount.config]` in the host's TOML):
//!
//! ```toml
//! max_bytes = 104857600   # optional: capacity for file contents; ENOSPC beyond it
//! max_files = 100000      # optional: how many nodes may exist, the root included
//! ```
//!
//! Without `max_bytes` memfs grows until the host runs out of memory. It keeps no sparse
//! files: extending a file (by writing past its end or truncating up) stores the zeroes.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::ops::Bound;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use plugfs_plugin_api::open_flags::{O_ACCMODE, O_APPEND, O_EXCL, O_RDONLY, O_TRUNC, O_WRONLY};
use plugfs_plugin_api::xattr_flags::{XATTR_CREATE, XATTR_REPLACE};
use plugfs_plugin_api::{
    Attr, AttrOut, Capabilities, ConfigTable, DirEntry, DirSink, Entry, Errno, Error, FileKind, FileSystem, Handle,
    MountOptions, NodeId, OpenError, Opened, Plugin, PluginInfo, ROOT_ID, RenameFlags, Request, Result, SetAttr,
    SetTime, StatFs, Timestamp, fallocate_mode,
};

/// How long the kernel may cache names and attributes. Every change goes through this
/// process, and the kernel invalidates what it changed itself, so a short TTL is safe; it
/// only bounds how stale a view of a hard link's other names can get.
const TTL: Duration = Duration::from_secs(1);
/// The block size `statfs` and `stat` report.
const BLOCK_SIZE: u32 = 4096;
/// Longest name in a directory, in bytes (as on most Linux filesystems).
const MAX_NAME_LEN: usize = 255;
/// Largest file: Linux offsets are signed 64-bit.
const MAX_FILE_SIZE: u64 = i64::MAX as u64;
/// Largest xattr value Linux lets through (`XATTR_SIZE_MAX`).
const MAX_XATTR_VALUE: usize = 64 * 1024;
/// Capacity `statfs` reports when `max_bytes` is not set: "unlimited", kept below
/// `i64::MAX` so tools that compute in signed numbers stay positive.
const UNLIMITED_BYTES: u64 = 1 << 62;
/// Readdir cookies 1 and 2 resume after `.` and `..`; entries get serials from 3 on.
const FIRST_SERIAL: u64 = 3;

/// The memfs plugin: what `export_plugin!` exports.
pub struct MemFsPlugin;

/// memfs's config table. [`ConfigTable::parse`] refuses unknown keys and names the key
/// of any error, so nothing else is needed here.
#[derive(Debug, Default, serde::Deserialize)]
struct Settings {
    max_bytes: Option<u64>,
    max_files: Option<u64>,
}

impl Plugin for MemFsPlugin {
    type Fs = MemFs;

    fn info() -> PluginInfo {
        PluginInfo {
            name: "memfs",
            version: env!("CARGO_PKG_VERSION"),
            description: "an in-memory POSIX filesystem (contents vanish on unmount)",
            config_help: "max_bytes = 104857600  # optional: capacity for file contents, ENOSPC beyond it\n\
                          max_files = 100000     # optional: most nodes that may exist, the root included",
            capabilities: CAPABILITIES,
        }
    }

    fn open(config: &ConfigTable, options: &MountOptions) -> Result<MemFs, OpenError> {
        let settings: Settings = config.parse()?;
        if settings.max_files == Some(0) {
            return Err(OpenError::config("max_files", "must be at least 1: the root directory counts"));
        }
        Ok(MemFs::new(settings.max_bytes, settings.max_files, options.read_only))
    }
}

/// What memfs supports: everything a local POSIX filesystem does except holes. It stores
/// every byte, so it neither punches holes nor reports any to `SEEK_HOLE`.
const CAPABILITIES: Capabilities = Capabilities { punch_hole: false, sparse_files: false, ..Capabilities::POSIX };

mod model;
mod ops;
#[cfg(test)]
mod tests;

pub use model::MemFs;

plugfs_plugin_api::export_plugin!(MemFsPlugin);
