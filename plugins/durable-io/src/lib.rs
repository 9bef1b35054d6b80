//! # durable-io
//!
//! A plugfs plugin that serves a local directory with full POSIX semantics, an explicit
//! durability policy, and no way out of its root. See `docs/durable-io.md` for the
//! behaviour in detail.
//!
//! This file is the plugin glue (description and config); [`DurableIo`] in `fs.rs` does
//! the work, over the node table (`nodes.rs`), the handle table (`handles.rs`), the
//! durability policy (`durability.rs`), the per-thread caller credentials (`creds.rs`) and
//! the syscall helpers (`sys.rs`).

#![warn(missing_docs)]

mod creds;
mod durability;
mod fs;
mod handles;
mod nodes;
mod sys;

use std::path::PathBuf;

use plugfs_plugin_api::{Capabilities, ConfigTable, MountOptions, OpenError, Plugin, PluginInfo};
use serde::Deserialize;

pub use durability::Durability;
pub use fs::{DurableIo, TTL};

/// The plugin's config table.
#[derive(Debug, Deserialize)]
struct Config {
    /// The directory to serve.
    root: PathBuf,
    /// The durability policy.
    #[serde(default)]
    durability: Durability,
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
                "root = \"/srv/data\"  # the directory to serve: an absolute path to an existing directory (required)\n",
                "durability = \"close\"  # kernel: sync only on fsync | close (default): also fdatasync written files ",
                "on close | always: every write and every namespace change is durable when it returns",
            ),
            capabilities: Capabilities::POSIX,
        }
    }

    fn open(config: &ConfigTable, options: &MountOptions) -> Result<DurableIo, OpenError> {
        let config: Config = config.parse()?;
        DurableIo::open(&config.root, config.durability, options.read_only)
    }
}

plugfs_plugin_api::export_plugin!(DurableIoPlugin);
