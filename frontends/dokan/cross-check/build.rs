//! A replacement build script for `dokan-sys`, used only to type-check plugfs's Dokan
//! frontend from a machine that is not Windows (scripts/check-windows.sh copies dokan-sys
//! and puts this file in place of its build.rs, through a `[patch]` given on the command
//! line; normal builds never see it).
//!
//! The original compiles and runs a small C program against the bundled `dokan.h` to
//! print five version constants, which cannot run off Windows. This reads the same
//! constants from the same headers as text, and links nothing (type-checking does not
//! link).

use std::env;
use std::fs;
use std::path::Path;

/// The value of `#define NAME value` in `header`.
fn define(header: &str, name: &str) -> String {
    header
        .lines()
        .find_map(|line| {
            let rest = line.trim().strip_prefix("#define ")?.trim_start().strip_prefix(name)?;
            rest.starts_with([' ', '\t']).then(|| rest.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("dokan headers define no {name}"))
}

/// `L"2"` as `2`.
fn wide_literal(value: &str) -> String {
    value.trim_start_matches('L').trim_matches('"').to_owned()
}

fn main() {
    if env::var("HOST") == env::var("TARGET") {
        panic!("this build script only serves cross-checking; build dokan-sys unpatched on Windows");
    }
    let dokan_h = fs::read_to_string("src/dokany/dokan/dokan.h").expect("the bundled dokan.h");
    let public_h = fs::read_to_string("src/dokany/sys/public.h").expect("the bundled public.h");
    let version = define(&dokan_h, "DOKAN_VERSION");
    let minimum = define(&dokan_h, "DOKAN_MINIMUM_COMPATIBLE_VERSION");
    let major = wide_literal(&define(&public_h, "DOKAN_MAJOR_API_VERSION"));
    // dokan.h spells these as L"dokan" DOKAN_MAJOR_API_VERSION L".sys" and L"Dokan" ...
    let version_rs = format!(
        "pub const DOKAN_VERSION: u32 = {version};\n\
         pub const DOKAN_MINIMUM_COMPATIBLE_VERSION: u32 = {minimum};\n\
         pub const DOKAN_DRIVER_NAME: &str = \"dokan{major}.sys\";\n\
         pub const DOKAN_NP_NAME: &str = \"Dokan{major}\";\n\
         pub const DOKAN_MAJOR_API_VERSION: &str = \"{major}\";\n"
    );
    let out = env::var("OUT_DIR").expect("OUT_DIR");
    fs::write(Path::new(&out).join("version.rs"), version_rs).expect("write version.rs");
    fs::write(Path::new(&out).join("version.txt"), &version).expect("write version.txt");
    println!("cargo:rerun-if-changed=build.rs");
}
