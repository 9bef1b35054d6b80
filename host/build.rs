//! Links the Windows frontends' libraries delay-loaded (`/DELAYLOAD`), so that a plugfs
//! built for Windows starts on a machine without Dokan or WinFSP: each is loaded on the
//! first call into it, which `frontend = "auto"` makes only after checking that the library
//! loads (docs/windows.md). winfsp-rs supports only this linkage for WinFSP anyway.
//!
//! A library's build script cannot do this for the binary (`rustc-link-arg` applies to
//! the package's own binaries and tests), so it is here, in the package that links.

fn main() {
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    println!("cargo:rerun-if-changed=build.rs");
    if var("CARGO_CFG_TARGET_OS") != "windows" || var("CARGO_CFG_TARGET_ENV") != "msvc" {
        return;
    }
    // The delay-load helper of the MSVC runtime.
    println!("cargo:rustc-link-lib=dylib=delayimp");
    println!("cargo:rustc-link-arg=/DELAYLOAD:dokan2.dll");
    if std::env::var_os("CARGO_FEATURE_WINFSP").is_some() {
        let dll = match var("CARGO_CFG_TARGET_ARCH").as_str() {
            "x86_64" => "winfsp-x64.dll",
            "x86" => "winfsp-x86.dll",
            "aarch64" => "winfsp-a64.dll",
            other => panic!("WinFSP has no library for the {other} architecture"),
        };
        println!("cargo:rustc-link-arg=/DELAYLOAD:{dll}");
    }
}
