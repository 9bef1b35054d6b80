//! The WFS engine: a copy-on-write filesystem in an image file, with no plugin API in it
//! (docs/wfs-format.md is the format).

pub mod cache;
pub mod crc;
pub mod device;
pub mod error;
pub mod format;
pub mod fsck;
#[cfg(test)]
mod fsck_reference;
pub mod spacemap;
pub mod tree;
pub mod volume;

#[cfg(test)]
mod tests;

pub use device::{Device, FileDevice, MemDevice};
pub use error::{Error, Result};
pub use fsck::{Report, fsck, scrub};
pub use volume::{OpenOptions, Space, Volume, mkfs};
