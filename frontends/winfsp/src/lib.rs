//! # plugfs WinFSP frontend
//!
//! Shows a plugin filesystem to Windows through [WinFSP](https://winfsp.dev): WinFSP's
//! `FileSystemContext` callbacks, each translated into one call of
//! [`plugfs_windows_core::Volume`], which holds every rule (paths to nodes, create
//! dispositions, delete-on-close, directory queries, times, attributes, NTSTATUS) and is
//! tested on Linux. This crate is the thin, Windows-only rest.
//!
//! The binding is compiled only on Windows with the `winfsp` feature, which is off by
//! default because the `winfsp` crate is GPL-3.0 (docs/windows.md says what that means for
//! a binary you distribute). Elsewhere, or without the feature, [`BUILT_IN`] is false and
//! the host refuses `frontend = "winfsp"` with that reason.
//!
//! Status: type-checked from Linux in CI (scripts/check-windows.sh); it has not run on
//! Windows yet. The GitHub workflow .github/workflows/windows.yml builds and tests it there.

/// Whether this build has the WinFSP frontend.
pub const BUILT_IN: bool = cfg!(all(windows, any(feature = "winfsp", feature = "cross-check")));

#[cfg(all(windows, any(feature = "winfsp", feature = "cross-check")))]
mod binding;
#[cfg(all(windows, any(feature = "winfsp", feature = "cross-check")))]
pub use binding::{WinfspMount, is_installed, mount};
