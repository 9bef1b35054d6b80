//! The FAT engine: plain Rust, no plugin API. One file per on-disk structure, as in
//! Linux's fs/fat: the boot sector ([`bpb`]), the allocation table ([`fat`]), directory
//! entries ([`dir`]), names ([`names`]), timestamps ([`time`]); [`volume`] ties them into
//! a mounted filesystem.

pub mod bpb;
pub mod dir;
pub mod error;
pub mod fat;
mod freemap;
pub mod io;
pub mod mkfs;
pub mod names;
pub mod time;
pub mod volume;

pub use bpb::{Bpb, FatType};
pub use error::{Error, Result};
pub use volume::{Ino, Listed, MAX_FILE_SIZE, Meta, OpenOptions, ROOT, Space, Volume};

#[cfg(test)]
mod tests;
