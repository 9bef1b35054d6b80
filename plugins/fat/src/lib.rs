//! # fat: FAT12/16/32 images, read-write, with VFAT long names
//!
//! [`engine`] is a plain Rust FAT implementation with no plugin API in it; the plugin glue
//! over it is in `plugin.rs`. The `plugfs-fat` tool (`src/bin/plugfs-fat.rs`) makes and
//! describes images with the same engine.

pub mod engine;
#[doc(hidden)]
pub mod fuzzing;
pub mod plugin;

pub use plugin::{FatFs, FatPlugin};

plugfs_plugin_api::export_plugin!(FatPlugin);
