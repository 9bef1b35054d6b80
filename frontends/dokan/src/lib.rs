//! # plugfs Dokan frontend
//!
//! Shows a plugin filesystem to Windows through [Dokan](https://dokan-dev.github.io):
//! Dokan's `FileSystemHandler` callbacks, each translated into one call of
//! [`plugfs_windows_core::Volume`], which holds every rule and is tested on Linux. This
//! crate is the thin, Windows-only rest; elsewhere [`BUILT_IN`] is false.
//!
//! Status: type-checked from Linux in CI (scripts/check-windows.sh, with a build-script
//! patch of dokan-sys that only cross-checking uses); it has not run on Windows yet. The
//! GitHub workflow .github/workflows/windows.yml builds and tests it there.

/// Whether this build has the Dokan frontend.
pub const BUILT_IN: bool = cfg!(windows);

#[cfg(windows)]
mod binding;
#[cfg(windows)]
pub use binding::{DokanMount, is_installed, mount};
