//! # durable-io
//!
//! A plugfs plugin that serves a local directory with full POSIX semantics, an explicit
//! durability policy, and no way out of its root. See `docs/durable-io.md` for the
//! behaviour in detail.
//!
//! This file is the plugin glue (description and config); [`DurableIo`] in `fs.rs` does
//! the work, over the node table (`nodes.rs`), the handle table (`handles.rs`), the
//! durability policy (`durability.rs`), the per-thread caller credentials (`creds.rs`), the
//! probe of what the backing filesystem supports (`probe.rs`), atomic replace
//! (`replace.rs`) and the syscall helpers (`sys.rs`).

#![warn(missing_docs)]

mod creds;
mod durability;
mod fs;
mod handles;
mod nodes;
pub mod probe;
mod replace;
mod sys;

use std::path::PathBuf;
use std::time::Duration;

use plugfs_plugin_api::{Capabilities, ConfigTable, MountOptions, OpenError, Plugin, PluginInfo};
use serde::Deserialize;

pub use durability::Durability;
pub use fs::{DurableIo, EXCLUSIVE_TTL, TTL};

/// The longest `metadata_ttl` accepted: a day.
const MAX_METADATA_TTL: u64 = 24 * 3600;
pub use probe::{Probed, probe};

/// The plugin's config table.
#[derive(Debug, Deserialize)]
struct Config {
    /// The directory to serve. A relative path is taken against the working directory,
    /// which the plugfs host sets to the config file's directory.
    root: PathBuf,
    /// Create `root` (and its parents) if it does not exist.
    #[serde(default)]
    create_root: bool,
    /// The durability policy.
    #[serde(default)]
    durability: Durability,
    /// Replace files opened with `O_TRUNC` atomically (see docs/durable-io.md).
    #[serde(default)]
    atomic_replace: bool,
    /// Nothing but this mount changes the backing directory, so the kernel may cache
    /// names, attributes and missing names for long (see docs/durable-io.md).
    #[serde(default)]
    exclusive: bool,
    /// Seconds the kernel may cache names and attributes: default 1, or 3600 with
    /// `exclusive`.
    #[serde(default)]
    metadata_ttl: Option<u64>,
}

/// The `durable-io` plugin.
pub struct DurableIoPlugin;

impl Plugin for DurableIoPlugin {
    type Fs = DurableIo;

    fn info() -> PluginInfo {
        PluginInfo {
            name: "durable-io",
            version: env!("CARGO_PKG_VERSION"),
            description: "a local directory, with explicit durability, safe against escapes from its root",
            config_help: concat!(
                "root = \"/srv/data\"  # the directory to serve (required); relative paths are relative to the config file\n",
                "create_root = false  # create root if it does not exist\n",
                "durability = \"close\"  # kernel: sync only on fsync | close (default): also fdatasync written files ",
                "on close | always: every write and every namespace change is durable when it returns\n",
                "atomic_replace = false  # a file opened for writing with O_TRUNC is written to a temporary file and ",
                "renamed over the old one on the last close: readers keep the old content, a crash leaves old or new, ",
                "never a mix (no kernel passthrough on such a mount; files with several hard links are truncated in place)\n",
                "exclusive = false  # true: nothing but this mount changes root, so the kernel caches names, attributes ",
                "and missing names for metadata_ttl; changes made directly in root may then stay unseen that long\n",
                "metadata_ttl = 1  # seconds the kernel may cache names and attributes (default 1, 3600 with exclusive)",
            ),
            // Each mount reports what its backing directory supports (see `probe`).
            capabilities: Capabilities { checks_permissions: true, backing_files: true, ..Capabilities::POSIX },
        }
    }

    fn open(config: &ConfigTable, options: &MountOptions) -> Result<DurableIo, OpenError> {
        let config: Config = config.parse()?;
        let root = std::path::absolute(&config.root)
            .map_err(|e| OpenError::config("root", format!("{}: {e}", config.root.display())))?;
        if config.create_root && !root.exists() {
            std::fs::create_dir_all(&root)
                .map_err(|e| OpenError::config("root", format!("cannot create {}: {e}", root.display())))?;
        }
        let ttl = match config.metadata_ttl {
            Some(secs) if secs > MAX_METADATA_TTL => {
                return Err(OpenError::config(
                    "metadata_ttl",
                    format!("{secs} is more than {MAX_METADATA_TTL} seconds"),
                ));
            }
            Some(secs) => Duration::from_secs(secs),
            None if config.exclusive => EXCLUSIVE_TTL,
            None => TTL,
        };
        Ok(DurableIo::open(&root, config.durability, options.read_only)?
            .with_atomic_replace(config.atomic_replace)
            .with_metadata_cache(config.exclusive, ttl))
    }
}

plugfs_plugin_api::export_plugin!(DurableIoPlugin);
