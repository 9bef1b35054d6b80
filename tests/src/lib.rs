//! Support for the end-to-end tests: finding the plugin libraries and binaries that
//! `cargo build --workspace` produced.
//!
//! The tests load plugins the way the host does, from built shared libraries, so the
//! workspace must be built before they run; `scripts/test.sh` does both.

use std::path::{Path, PathBuf};

/// The cargo output directory these tests were built into (`target/debug` or similar).
pub fn target_dir() -> PathBuf {
    // The test binary lives in `<target>/<profile>/deps/`.
    let exe = std::env::current_exe().expect("path of the test binary");
    exe.parent().and_then(Path::parent).expect("test binary is inside <target>/<profile>/deps").to_path_buf()
}

/// The built shared library of workspace crate `crate_name` (dashes or underscores).
/// Panics with the fix when it has not been built.
pub fn plugin_library(crate_name: &str) -> PathBuf {
    let file =
        format!("{}{}{}", std::env::consts::DLL_PREFIX, crate_name.replace('-', "_"), std::env::consts::DLL_SUFFIX);
    let path = target_dir().join(file);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace first (`cargo build --workspace`, or run scripts/test.sh)",
        path.display()
    );
    path
}

/// A built binary of this workspace, e.g. `plugfs`.
pub fn binary(name: &str) -> PathBuf {
    let path = target_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} is missing: build the workspace first (`cargo build --workspace`, or run scripts/test.sh)",
        path.display()
    );
    path
}
