//! # wfs: plugfs's copy-on-write filesystem with checksums and snapshots
//!
//! [`engine`] is a plain Rust implementation of the format in docs/wfs-format.md, with no
//! plugin API in it; the plugin glue over it is in `plugin.rs`. The `plugfs-wfs` tool
//! (`src/bin/plugfs-wfs.rs`) makes, checks, scrubs and snapshots images with the same engine.

pub mod engine;
pub mod fuzzing;
pub mod plugin;

pub use plugin::{WfsFs, WfsPlugin};

plugfs_plugin_api::export_plugin!(WfsPlugin);
