//! The C header `include/plugfs_plugin.h` is generated from `src/abi.rs` and checked in, so
//! a diff shows every ABI change. These tests regenerate it with cbindgen (configured by
//! `cbindgen.toml`, parsing `src/abi.rs` alone) and compare it byte for byte with the
//! checked-in file, and with the frozen header of the released version; older released
//! headers of the same major must stay compatible prefixes.
//!
//! After a deliberate change to `src/abi.rs` or `cbindgen.toml`, rewrite the header with
//!
//! ```text
//! PLUGFS_BLESS=1 cargo test -p plugfs-plugin-api --test c_header
//! ```
//!
//! and commit it with the change. The frozen headers in `abi-history/` are never blessed:
//! a released version's header is copied there by hand once, when its minor is bumped.

use std::path::{Path, PathBuf};

use plugfs_plugin_api::abi;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn header_path() -> PathBuf {
    crate_dir().join("include/plugfs_plugin.h")
}

/// The header as cbindgen writes it from `src/abi.rs` today.
fn generate() -> String {
    let dir = crate_dir();
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("read cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/abi.rs"))
        .generate()
        .expect("cbindgen parses src/abi.rs");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("the header is UTF-8")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Where two texts first differ, as a line number and both lines, for a readable failure.
fn first_difference(want: &str, got: &str) -> String {
    let (mut w, mut g) = (want.lines(), got.lines());
    for n in 1.. {
        match (w.next(), g.next()) {
            (Some(a), Some(b)) if a == b => continue,
            (None, None) => return "they differ only in line endings".into(),
            (a, b) => return format!("line {n}: checked in {a:?}, generated {b:?}"),
        }
    }
    unreachable!()
}

#[test]
fn the_checked_in_c_header_is_generated_from_abi_rs() {
    let generated = generate();
    let path = header_path();
    if std::env::var_os("PLUGFS_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &generated).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        return;
    }
    let checked_in = read(&path);
    assert!(
        checked_in == generated,
        "{} is not what src/abi.rs generates ({}); if the ABI change is deliberate, rewrite it with \
         `PLUGFS_BLESS=1 cargo test -p plugfs-plugin-api --test c_header` and commit it",
        path.display(),
        first_difference(&checked_in, &generated)
    );
}

/// The released headers in `abi-history/` of this crate's major, by minor version.
fn released_headers() -> Vec<(u32, PathBuf)> {
    let dir = crate_dir().join("abi-history");
    let prefix = format!("plugfs_plugin_{}.", abi::ABI_MAJOR);
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| {
            let path = e.ok()?.path();
            let name = path.file_name()?.to_str()?;
            let minor = name.strip_prefix(&prefix)?.strip_suffix(".h")?.parse().ok()?;
            Some((minor, path))
        })
        .collect();
    found.sort();
    found
}

#[test]
fn the_released_header_of_this_version_is_frozen() {
    // What this crate generates must be exactly the frozen header of its version: any change
    // to a released version is caught. A change is appended in a new minor, which freezes
    // its own file (docs/abi.md, "Released headers are frozen").
    let frozen_path = crate_dir().join(format!("abi-history/plugfs_plugin_{}.{}.h", abi::ABI_MAJOR, abi::ABI_MINOR));
    let frozen = read(&frozen_path);
    let generated = generate();
    assert!(
        frozen == generated,
        "ABI {}.{} is released and frozen in {}, but src/abi.rs now generates something else ({}); \
         append fields and operations in a new minor version instead",
        abi::ABI_MAJOR,
        abi::ABI_MINOR,
        frozen_path.display(),
        first_difference(&frozen, &generated)
    );
}

/// The structs of a header: each name, and its fields' names in order.
fn structs(header: &str) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    let mut rest = header;
    while let Some(at) = rest.find("typedef struct ") {
        rest = &rest[at + "typedef struct ".len()..];
        let name = rest.split_whitespace().next().unwrap().to_string();
        let Some(open) = rest.find('{').filter(|&o| !rest[..o].contains(';')) else { continue };
        let close = rest.find("\n} ").expect("a struct body ends with `}`");
        let body: String =
            rest[open + 1..close].lines().map(str::trim).filter(|l| !l.starts_with("//")).collect::<Vec<_>>().join(" ");
        let mut fields = Vec::new();
        let (mut depth, mut field) = (0, String::new());
        for c in body.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                ';' if depth == 0 => {
                    // `type name`, `type name[8]` or `ret (*name)(args)`.
                    let name = match field.find("(*") {
                        Some(p) => field[p + 2..].split(')').next().unwrap().trim().to_string(),
                        None => field
                            .split('[')
                            .next()
                            .unwrap()
                            .split_whitespace()
                            .last()
                            .unwrap()
                            .trim_start_matches('*')
                            .to_string(),
                    };
                    fields.push(name);
                    field.clear();
                    continue;
                }
                _ => {}
            }
            field.push(c);
        }
        out.push((name, fields));
        rest = &rest[close..];
    }
    out
}

#[test]
fn every_older_released_header_is_a_compatible_prefix_of_this_one() {
    // A minor version may only append: every struct of an older header keeps each field at
    // its offset with its size, a struct without `struct_size` (a value type) keeps its
    // size, and every constant keeps its value. Checked by the C compiler on a file that
    // includes the old header (renamed) and the current one.
    let older: Vec<(u32, PathBuf)> = released_headers().into_iter().filter(|(m, _)| *m < abi::ABI_MINOR).collect();
    // Every released minor before this one is frozen (2.0, 2.1, ...), so each is checked.
    for minor in 0..abi::ABI_MINOR {
        assert!(older.iter().any(|(m, _)| *m == minor), "the frozen {}.{minor} header is missing", abi::ABI_MAJOR);
    }
    let current = generate();
    let dir = std::env::temp_dir().join(format!("plugfs-c-prefix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut c = String::from("#include <stddef.h>\n#include \"plugfs_plugin.h\"\n");
    for (minor, path) in &older {
        let old = read(path);
        for line in old.lines().filter(|l| l.starts_with("#define PLUGFS_")) {
            let name = line.split_whitespace().nth(1).unwrap();
            if !["PLUGFS_ABI_MINOR", "PLUGFS_PLUGIN_H"].contains(&name) {
                assert!(
                    current.lines().any(|l| l == line),
                    "{} has `{line}`, which this version changed",
                    path.display()
                );
            }
        }
        let tag = format!("V{}_{minor}_", abi::ABI_MAJOR);
        let renamed = old
            .replace("PLUGFS_", &format!("{tag}PLUGFS_"))
            .replace("Plugfs", &format!("{tag}Plugfs"))
            .replace("plugfs_plugin_entry", &format!("{tag}plugfs_plugin_entry"));
        let file = format!("old_{minor}.h");
        std::fs::write(dir.join(&file), renamed).unwrap();
        c.push_str(&format!("#include \"{file}\"\n"));
        let structs = structs(&old);
        assert!(structs.len() > 10, "{} parsed to too few structs: {structs:?}", path.display());
        for (name, fields) in structs {
            let old_ty = format!("{tag}{name}");
            let what = format!("{} {name}", path.display());
            if fields.iter().any(|f| f == "struct_size") {
                c.push_str(&format!("_Static_assert(sizeof({old_ty}) <= sizeof({name}), \"{what} shrank\");\n"));
            } else {
                c.push_str(&format!("_Static_assert(sizeof({old_ty}) == sizeof({name}), \"{what} changed size\");\n"));
            }
            for f in fields {
                c.push_str(&format!(
                    "_Static_assert(offsetof({old_ty}, {f}) == offsetof({name}, {f}), \"{what}.{f} moved\");\n\
                     _Static_assert(sizeof((({old_ty} *)0)->{f}) == sizeof((({name} *)0)->{f}), \"{what}.{f} changed size\");\n"
                ));
            }
        }
    }
    let source = dir.join("prefix.c");
    std::fs::write(&source, &c).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = std::process::Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-fsyntax-only", "-I"])
        .arg(crate_dir().join("include"))
        .arg("-I")
        .arg(&dir)
        .arg(&source)
        .output()
        .unwrap_or_else(|e| panic!("this test needs a C compiler (`{cc}`, or set CC): {e}"));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "an older header is no prefix of this ABI:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn every_c_name_carries_the_plugfs_prefix() {
    // A type added to abi.rs without a name in cbindgen.toml comes out as `PLUGFS_Foo`.
    let header = generate();
    for line in header.lines() {
        let line = line.trim_start();
        let name = if let Some(rest) = line.strip_prefix("typedef struct ") {
            rest.split_whitespace().next()
        } else if let Some(rest) = line.strip_prefix("#define ") {
            rest.split_whitespace().next()
        } else {
            None
        };
        if let Some(name) = name {
            let ok = name.starts_with("PLUGFS_")
                && name[7..].bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                || name.starts_with("Plugfs") && !name.contains('_');
            assert!(
                ok,
                "{name} breaks the C naming: PlugfsCamelCase types, PLUGFS_UPPER constants; name it in cbindgen.toml"
            );
        }
    }
}

#[test]
fn the_header_declares_what_a_plugin_exports() {
    let header = generate();
    for want in [
        format!("extern const PlugfsAbiTag {};", abi::TAG_SYMBOL),
        format!("const PlugfsPluginDecl *{}(void);", abi::ENTRY_SYMBOL),
        format!("#define PLUGFS_ABI_MAJOR {}", abi::ABI_MAJOR),
        format!("#define PLUGFS_ABI_MINOR {}", abi::ABI_MINOR),
        format!("#define PLUGFS_ERRNO_MAX {}", abi::ERRNO_MAX),
        "#define PLUGFS_STATUS_PANICKED INT32_MIN".to_string(),
        "#define PLUGFS_MAGIC { 'P', 'L', 'U', 'G', 'F', 'S', 0, 1 }".to_string(),
        "#include <stdint.h>".to_string(),
        "#include <stddef.h>".to_string(),
    ] {
        assert!(header.contains(&want), "the header lacks {want:?}");
    }
    assert_eq!(abi::STATUS_PANICKED, i32::MIN, "cbindgen spells it INT32_MIN");
    assert_eq!(&abi::MAGIC, b"PLUGFS\0\x01", "the hand-written PLUGFS_MAGIC spells these bytes");
}

#[test]
fn the_c_compiler_lays_out_every_struct_as_rust_does() {
    use std::mem::{offset_of, size_of};
    // (C type, Rust size, offset of its last field in Rust, that field's name)
    let types: &[(&str, usize, usize, &str)] = &[
        ("PlugfsAbiTag", size_of::<abi::AbiTag>(), offset_of!(abi::AbiTag, minor), "minor"),
        ("PlugfsStr", size_of::<abi::RawStr>(), offset_of!(abi::RawStr, len), "len"),
        ("PlugfsBuf", size_of::<abi::RawBuf>(), offset_of!(abi::RawBuf, len), "len"),
        ("PlugfsCallCtx", size_of::<abi::CallCtx>(), offset_of!(abi::CallCtx, msg_len), "msg_len"),
        ("PlugfsTimestamp", size_of::<abi::RawTimestamp>(), offset_of!(abi::RawTimestamp, reserved), "reserved"),
        ("PlugfsAttr", size_of::<abi::RawAttr>(), offset_of!(abi::RawAttr, reserved), "reserved"),
        ("PlugfsEntry", size_of::<abi::RawEntry>(), offset_of!(abi::RawEntry, attr_ttl_ns), "attr_ttl_ns"),
        ("PlugfsSetTime", size_of::<abi::RawSetTime>(), offset_of!(abi::RawSetTime, at), "at"),
        ("PlugfsSetAttr", size_of::<abi::RawSetAttr>(), offset_of!(abi::RawSetAttr, handle), "handle"),
        ("PlugfsOpened", size_of::<abi::RawOpened>(), offset_of!(abi::RawOpened, backing_fd), "backing_fd"),
        ("PlugfsStatFs", size_of::<abi::RawStatFs>(), offset_of!(abi::RawStatFs, reserved), "reserved"),
        ("PlugfsDirEntry", size_of::<abi::RawDirEntry>(), offset_of!(abi::RawDirEntry, cookie), "cookie"),
        (
            "PlugfsCapabilities",
            size_of::<abi::RawCapabilities>(),
            offset_of!(abi::RawCapabilities, negative_ttl_ns),
            "negative_ttl_ns",
        ),
        (
            "PlugfsPluginInfo",
            size_of::<abi::RawPluginInfo>(),
            offset_of!(abi::RawPluginInfo, config_help),
            "config_help",
        ),
        ("PlugfsMountOptions", size_of::<abi::RawMountOptions>(), offset_of!(abi::RawMountOptions, flags), "flags"),
        ("PlugfsPluginDecl", size_of::<abi::PluginDecl>(), offset_of!(abi::PluginDecl, attach_host), "attach_host"),
        ("PlugfsHost", size_of::<abi::RawHost>(), offset_of!(abi::RawHost, reserved), "reserved"),
        ("PlugfsLogRecord", size_of::<abi::RawLogRecord>(), offset_of!(abi::RawLogRecord, file), "file"),
        ("PlugfsFsVTable", size_of::<abi::FsVTable>(), offset_of!(abi::FsVTable, capabilities), "capabilities"),
    ];
    // Static assertions, so a mismatch fails to compile and the compiler names the type.
    let mut c = String::from("#include <stddef.h>\n#include \"plugfs_plugin.h\"\n");
    for (ty, size, last, field) in types {
        c.push_str(&format!("_Static_assert(sizeof({ty}) == {size}, \"sizeof {ty}\");\n"));
        c.push_str(&format!("_Static_assert(offsetof({ty}, {field}) == {last}, \"offsetof {ty}.{field}\");\n"));
    }
    let dir = std::env::temp_dir().join(format!("plugfs-c-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = dir.join("layout.c");
    std::fs::write(&source, c).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = std::process::Command::new(&cc)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-fsyntax-only", "-I"])
        .arg(crate_dir().join("include"))
        .arg(&source)
        .output()
        .unwrap_or_else(|e| panic!("this test needs a C compiler (`{cc}`, or set CC): {e}"));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "the C header disagrees with abi.rs:\n{}", String::from_utf8_lossy(&out.stderr));
}
