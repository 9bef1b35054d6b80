//! # plugfs plugin API
//!
//! The one crate a plugfs plugin depends on. A plugin implements [`FileSystem`] (the
//! operations on a mounted filesystem) and [`Plugin`] (how to describe itself and open a
//! filesystem from its config table), then exports them with [`export_plugin!`]. The
//! result, built as a `cdylib`, is a shared library any plugfs host of the same major ABI
//! version loads at run time.
//!
//! Log with `tracing` as usual and install no subscriber: the export macro forwards your
//! library's events to the host's log (ABI 2.1), named after your plugin.
//!
//! With the `host` feature the crate also carries the host side: [`host::PluginLibrary`]
//! checks and loads a plugin file and hands back a [`FileSystem`] that calls into it.
//!
//! `docs/plugin-guide.md` in the repository walks through a complete plugin.

#![warn(missing_docs)]

pub mod abi;
#[cfg_attr(not(feature = "host"), allow(dead_code))]
mod convert;
mod error;
mod export;
mod fs;
#[cfg(feature = "host")]
pub mod host;
mod log_bridge;
mod plugin;
pub mod refs;
mod types;

pub use error::{Errno, Error, Result};
pub use fs::{FileSystem, defaults};
pub use plugin::{ConfigTable, OpenError, Plugin};
pub use types::*;

#[doc(hidden)]
pub mod __private {
    pub use crate::export::declaration;
}
