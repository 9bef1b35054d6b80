//! # plugfs Windows core
//!
//! What the WinFSP and Dokan frontends share, in portable Rust with no Windows dependency,
//! so it compiles and is tested on every platform: Windows paths to plugin nodes
//! ([`name`], and the name cache inside [`Volume`]), `NtCreateFile`'s dispositions and
//! options, share modes and delete-on-close ([`access`], [`Volume`]), directory queries
//! with wildcards ([`pattern`]), FILETIME ([`time`]), attributes and volume information
//! ([`attributes`]), security descriptors ([`security`]) and the one errno to NTSTATUS
//! table ([`ntstatus`]). The bindings on top translate their callbacks and nothing more.
//!
//! docs/windows.md describes the design, the choices made, and what has and has not run
//! on Windows.

#![warn(missing_docs)]

pub mod access;
pub mod attributes;
pub mod name;
mod nodes;
pub mod ntstatus;
pub mod pattern;
pub mod security;
pub mod time;
mod volume;

pub use access::CreateAction;
pub use attributes::{FileInfo, VolumeInfo};
pub use volume::{CreateRequest, Created, DirInfo, FileId, Released, Volume, VolumeOptions};
