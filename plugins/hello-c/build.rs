//! Builds `hello.c` into a shared library next to the workspace's plugins.
//!
//! Cargo gives a build script only `OUT_DIR`, so the library is copied three levels up from
//! it (`<target>/<profile>/build/<crate>-<hash>/out` -> `<target>/<profile>`), where cargo
//! puts the Rust plugins' `cdylib`s and where `plugfs plugins` looks by default.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let source = manifest.join("hello.c");
    let include = manifest.join("../../plugin-api/include");
    println!("cargo::rerun-if-changed={}", source.display());
    println!("cargo::rerun-if-changed={}", include.join("plugfs_plugin.h").display());

    let (prefix, suffix) = match std::env::var("CARGO_CFG_TARGET_OS").as_deref() {
        Ok("linux" | "android" | "freebsd" | "netbsd" | "openbsd") => ("lib", ".so"),
        Ok("macos") => ("lib", ".dylib"),
        other => {
            println!("cargo::warning=the C example plugin is not built for target OS {other:?}");
            return;
        }
    };
    let file = format!("{prefix}plugfs_hello_c{suffix}");
    let built = out_dir.join(&file);

    // The `cc` crate picks the compiler the way every C build in cargo does (CC, CFLAGS,
    // the target's defaults); the flags after them are the example's own.
    let compiler = cc::Build::new().get_compiler();
    let status = Command::new(compiler.path())
        .args(compiler.args())
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2", "-fPIC", "-shared"])
        .arg("-fvisibility=hidden")
        .arg("-I")
        .arg(&include)
        .arg("-o")
        .arg(&built)
        .arg(&source)
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {}: {e}", compiler.path().display()));
    assert!(status.success(), "compiling {} failed ({status})", source.display());

    let profile_dir = out_dir.ancestors().nth(3).expect("OUT_DIR is <target>/<profile>/build/<crate>/out");
    // Copy then rename, so a test loading the plugin never sees a half-written file.
    let staged = profile_dir.join(format!(".{file}.tmp"));
    std::fs::copy(&built, &staged).unwrap_or_else(|e| panic!("copy to {}: {e}", staged.display()));
    std::fs::rename(&staged, profile_dir.join(&file))
        .unwrap_or_else(|e| panic!("rename in {}: {e}", profile_dir.display()));
}
