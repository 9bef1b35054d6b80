//! What a Windows program does with files, through `std::fs` (CreateFileW, MoveFileExW,
//! FindFirstFileW...), on a mounted plugin. Shared by the WinFSP and Dokan bindings' tests
//! (`#[path]`-included), which mount memfs and call [`run`]; it runs only on Windows.

#![allow(dead_code)]

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::windows::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use plugfs_memfs::MemFsPlugin;
use plugfs_plugin_api::{Capabilities, ConfigTable, FileSystem, MountOptions, Plugin};

/// `FILE_FLAG_DELETE_ON_CLOSE`.
const FILE_FLAG_DELETE_ON_CLOSE: u32 = 0x0400_0000;

/// A fresh memfs and its capabilities.
pub fn memfs() -> (Arc<dyn FileSystem>, Capabilities) {
    let fs = MemFsPlugin::open(&ConfigTable::from_toml(""), &MountOptions::default()).expect("memfs opens");
    let caps = fs.capabilities().unwrap_or(MemFsPlugin::info().capabilities);
    (Arc::new(fs), caps)
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// Files, directories, renames, a save-by-rename, delete-on-close, times and listings,
/// checked at every step, on the volume mounted at `root`.
pub fn run(root: &Path) {
    // Create, write, read back.
    fs::write(root.join("hello.txt"), b"hello, windows").unwrap();
    assert_eq!(fs::read(root.join("hello.txt")).unwrap(), b"hello, windows");
    let meta = fs::metadata(root.join("hello.txt")).unwrap();
    assert_eq!(meta.len(), 14);
    assert!(meta.is_file());

    // Append and overwrite in the middle.
    let mut f = OpenOptions::new().append(true).open(root.join("hello.txt")).unwrap();
    f.write_all(b"!").unwrap();
    drop(f);
    let mut s = String::new();
    fs::File::open(root.join("hello.txt")).unwrap().read_to_string(&mut s).unwrap();
    assert_eq!(s, "hello, windows!");

    // Directories and listings.
    fs::create_dir(root.join("dir")).unwrap();
    fs::write(root.join("dir").join("a.txt"), b"a").unwrap();
    assert_eq!(names(&root.join("dir")), ["a.txt"]);
    assert!(fs::metadata(root.join("dir")).unwrap().is_dir());
    assert!(fs::create_dir(root.join("dir")).is_err(), "exists");

    // Rename within and across directories.
    fs::rename(root.join("dir").join("a.txt"), root.join("dir").join("b.txt")).unwrap();
    fs::rename(root.join("dir").join("b.txt"), root.join("b.txt")).unwrap();
    assert_eq!(names(&root.join("dir")), Vec::<String>::new());
    assert_eq!(fs::read(root.join("b.txt")).unwrap(), b"a");

    // Office's save: write a temporary file, rename it over the document.
    fs::write(root.join("doc.txt"), b"version 1").unwrap();
    fs::write(root.join("doc.tmp"), b"version 2").unwrap();
    fs::rename(root.join("doc.tmp"), root.join("doc.txt")).unwrap();
    assert_eq!(fs::read(root.join("doc.txt")).unwrap(), b"version 2");

    // Delete-on-close: gone when the handle closes.
    let f = OpenOptions::new()
        .create(true)
        .write(true)
        .read(true)
        .access_mode(0x0001_0000 | 0x1 | 0x2) // DELETE | FILE_READ_DATA | FILE_WRITE_DATA
        .custom_flags(FILE_FLAG_DELETE_ON_CLOSE)
        .open(root.join("scratch.tmp"))
        .unwrap();
    assert!(root.join("scratch.tmp").exists());
    drop(f);
    assert!(!root.join("scratch.tmp").exists(), "deleted on close");

    // Times: set and read back (100 ns resolution on Windows).
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    fs::File::options().write(true).open(root.join("b.txt")).unwrap().set_modified(when).unwrap();
    assert_eq!(fs::metadata(root.join("b.txt")).unwrap().modified().unwrap(), when);

    // Truncate.
    fs::File::options().write(true).open(root.join("hello.txt")).unwrap().set_len(5).unwrap();
    assert_eq!(fs::read(root.join("hello.txt")).unwrap(), b"hello");

    // Delete files and the directory.
    fs::remove_file(root.join("b.txt")).unwrap();
    fs::remove_dir(root.join("dir")).unwrap();
    assert_eq!(names(root), ["doc.txt", "hello.txt"]);
    assert!(fs::remove_file(root.join("missing")).is_err());
}
