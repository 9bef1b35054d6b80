//! Helpers shared by the integration tests: a durable-io mount over a fresh temp dir, and
//! shorthands for the trait calls the tests repeat.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use plugfs_durable_io::{DurableIo, DurableIoPlugin};
use plugfs_plugin_api::{
    ConfigTable, DirEntry, DirSink, Entry, FileKind, FileSystem, Handle, MountOptions, NodeId, Plugin, Request,
    open_flags,
};

/// The caller of most tests: root.
pub const ROOT_REQ: Request = Request { uid: 0, gid: 0, pid: 1 };

/// A mounted durable-io over a temp dir that lives as long as it does.
pub struct Mount {
    pub dir: tempfile::TempDir,
    pub fs: DurableIo,
}

impl Mount {
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

pub fn config(root: &Path, durability: &str) -> ConfigTable {
    ConfigTable::from_toml(format!("root = {:?}\ndurability = {durability:?}\n", root.to_str().unwrap()))
}

pub fn mount_with(durability: &str, options: MountOptions) -> Mount {
    let dir = tempfile::tempdir().unwrap();
    let fs = DurableIoPlugin::open(&config(dir.path(), durability), &options).unwrap();
    Mount { dir, fs }
}

pub fn mount() -> Mount {
    mount_with("close", MountOptions::default())
}

pub fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

pub fn lookup(fs: &DurableIo, parent: NodeId, name: &str) -> Entry {
    fs.lookup(&ROOT_REQ, parent, os(name)).unwrap()
}

/// Creates `name` read-write and returns (entry, handle).
pub fn create(fs: &DurableIo, parent: NodeId, name: &str) -> (Entry, Handle) {
    let (e, o) = fs.create(&ROOT_REQ, parent, os(name), 0o644, open_flags::O_RDWR).unwrap();
    (e, o.handle)
}

/// Creates `name` holding `data`, closed again.
pub fn write_file(fs: &DurableIo, parent: NodeId, name: &str, data: &[u8]) -> Entry {
    let (e, h) = create(fs, parent, name);
    assert_eq!(fs.write(&ROOT_REQ, e.node, h, 0, data, open_flags::O_RDWR).unwrap(), data.len());
    fs.release(&ROOT_REQ, e.node, h, open_flags::O_RDWR, true).unwrap();
    e
}

pub fn read_all(fs: &DurableIo, node: NodeId) -> Vec<u8> {
    let h = fs.open(&ROOT_REQ, node, open_flags::O_RDONLY).unwrap().handle;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let n = fs.read(&ROOT_REQ, node, h, out.len() as u64, &mut buf).unwrap();
        out.extend_from_slice(&buf[..n]);
        if n < buf.len() {
            break;
        }
    }
    fs.release(&ROOT_REQ, node, h, 0, false).unwrap();
    out
}

/// A sink that takes at most `cap` entries per call.
pub struct Collect {
    pub cap: usize,
    pub got: Vec<(Vec<u8>, FileKind, u64, u64)>,
}

impl DirSink for Collect {
    fn add(&mut self, e: &DirEntry<'_>) -> bool {
        if self.got.len() >= self.cap {
            return false;
        }
        self.got.push((e.name.to_vec(), e.kind, e.cookie, e.ino));
        true
    }
}

/// Lists a directory through opendir/readdir in pages of `page` entries; returns
/// (name, kind, ino).
pub fn list(fs: &DurableIo, dir: NodeId, page: usize) -> Vec<(String, FileKind, u64)> {
    let h = fs.opendir(&ROOT_REQ, dir, 0).unwrap().handle;
    let mut all = Vec::new();
    let mut cookie = 0;
    loop {
        let mut sink = Collect { cap: page, got: Vec::new() };
        fs.readdir(&ROOT_REQ, dir, h, cookie, &mut sink).unwrap();
        if sink.got.is_empty() {
            break;
        }
        cookie = sink.got.last().unwrap().2;
        for (name, kind, _, ino) in sink.got {
            all.push((String::from_utf8(name).unwrap(), kind, ino));
        }
    }
    fs.releasedir(&ROOT_REQ, dir, h).unwrap();
    all
}
