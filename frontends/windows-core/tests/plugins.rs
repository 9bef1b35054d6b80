//! The Windows core over real plugins (memfs, durable-io, fat), loaded from their built
//! shared libraries by the host's loader, driven with the call sequences Windows programs
//! make. Build the plugins first: `cargo build -p plugfs-memfs -p plugfs-durable-io
//! -p plugfs-fat` (scripts/test.sh builds the workspace).
//!
//! Every plugin call goes through [`Counting`], a pass-through layer that keeps the
//! lookup references the core holds per node, so each test ends by checking that every
//! reference taken was forgotten exactly once.
//!
//! Unix only: durable-io, and the fat images made with mkfs.fat, are Unix tools and
//! plugins. On Windows the bindings' own tests mount memfs through the real frameworks.

#![cfg(unix)]

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use plugfs_plugin_api::host::{LoadedFs, PluginLibrary};
use plugfs_plugin_api::{
    AttrOut, Capabilities, DirEntry, DirPlusSink, DirSink, Entry, FileSystem, Handle, MountOptions, NodeId, Opened,
    RenameFlags, Request, Result, SetAttr, StatFs,
};
use plugfs_windows_core::access::*;
use plugfs_windows_core::attributes::*;
use plugfs_windows_core::name::wide;
use plugfs_windows_core::ntstatus::*;
use plugfs_windows_core::security::{DELETE, FILE_READ_ATTRIBUTES, FILE_WRITE_ATTRIBUTES, UnixSids};
use plugfs_windows_core::{CreateAction, Created, Volume, VolumeOptions};

// ---------------------------------------------------------------------------------------
// Plugins through the loader, with reference accounting
// ---------------------------------------------------------------------------------------

/// A real plugin with the lookup references the host holds on each node counted.
struct Counting {
    inner: LoadedFs,
    refs: Mutex<HashMap<NodeId, i64>>,
    problems: Mutex<Vec<String>>,
}

impl Counting {
    fn took(&self, node: NodeId) {
        *self.refs.lock().unwrap().entry(node).or_default() += 1;
    }
    fn entry(&self, r: Result<Entry>) -> Result<Entry> {
        if let Ok(e) = &r {
            self.took(e.node);
        }
        r
    }
    /// Nodes with references still held, and any forget of more than was held.
    fn leaks(&self) -> Vec<String> {
        let mut out = self.problems.lock().unwrap().clone();
        for (node, n) in self.refs.lock().unwrap().iter() {
            if *n != 0 {
                out.push(format!("node {node}: {n} references never forgotten"));
            }
        }
        out
    }
}

#[allow(clippy::too_many_arguments)]
impl FileSystem for Counting {
    fn lookup(&self, req: &Request, parent: NodeId, name: &OsStr) -> Result<Entry> {
        self.entry(self.inner.lookup(req, parent, name))
    }
    fn forget(&self, node: NodeId, nlookup: u64) {
        let mut refs = self.refs.lock().unwrap();
        let n = refs.entry(node).or_default();
        *n -= nlookup as i64;
        if *n < 0 {
            self.problems.lock().unwrap().push(format!("node {node}: forgot {nlookup}, more than was held"));
        }
        drop(refs);
        self.inner.forget(node, nlookup)
    }
    fn getattr(&self, req: &Request, node: NodeId, handle: Option<Handle>) -> Result<AttrOut> {
        self.inner.getattr(req, node, handle)
    }
    fn setattr(&self, req: &Request, node: NodeId, set: &SetAttr) -> Result<AttrOut> {
        self.inner.setattr(req, node, set)
    }
    fn mkdir(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32) -> Result<Entry> {
        self.entry(self.inner.mkdir(req, parent, name, mode))
    }
    fn unlink(&self, req: &Request, parent: NodeId, name: &OsStr) -> Result<()> {
        self.inner.unlink(req, parent, name)
    }
    fn rmdir(&self, req: &Request, parent: NodeId, name: &OsStr) -> Result<()> {
        self.inner.rmdir(req, parent, name)
    }
    fn rename(&self, req: &Request, p: NodeId, n: &OsStr, np: NodeId, nn: &OsStr, flags: RenameFlags) -> Result<()> {
        self.inner.rename(req, p, n, np, nn, flags)
    }
    fn open(&self, req: &Request, node: NodeId, flags: i32) -> Result<Opened> {
        self.inner.open(req, node, flags)
    }
    fn create(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32, flags: i32) -> Result<(Entry, Opened)> {
        let r = self.inner.create(req, parent, name, mode, flags);
        if let Ok((e, _)) = &r {
            self.took(e.node);
        }
        r
    }
    fn read(&self, req: &Request, node: NodeId, handle: Handle, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.inner.read(req, node, handle, offset, buf)
    }
    fn write(&self, req: &Request, node: NodeId, h: Handle, offset: u64, data: &[u8], flags: i32) -> Result<usize> {
        self.inner.write(req, node, h, offset, data, flags)
    }
    fn release(&self, req: &Request, node: NodeId, handle: Handle, flags: i32, flush: bool) -> Result<()> {
        self.inner.release(req, node, handle, flags, flush)
    }
    fn fsync(&self, req: &Request, node: NodeId, handle: Handle, datasync: bool) -> Result<()> {
        self.inner.fsync(req, node, handle, datasync)
    }
    fn opendir(&self, req: &Request, node: NodeId, flags: i32) -> Result<Opened> {
        self.inner.opendir(req, node, flags)
    }
    fn readdir(&self, req: &Request, node: NodeId, handle: Handle, cookie: u64, sink: &mut dyn DirSink) -> Result<()> {
        self.inner.readdir(req, node, handle, cookie, sink)
    }
    fn readdirplus(
        &self,
        req: &Request,
        node: NodeId,
        handle: Handle,
        cookie: u64,
        sink: &mut dyn DirPlusSink,
    ) -> Result<()> {
        // Count up front so a forget inside the sink never sees a negative count.
        struct Pre<'a>(&'a Counting, &'a mut dyn DirPlusSink);
        impl DirPlusSink for Pre<'_> {
            fn add(&mut self, d: &DirEntry<'_>, e: &Entry) -> bool {
                let counted = d.name != b"." && d.name != b"..";
                if counted {
                    self.0.took(e.node);
                }
                let ok = self.1.add(d, e);
                if !ok && counted {
                    *self.0.refs.lock().unwrap().entry(e.node).or_default() -= 1;
                }
                ok
            }
        }
        let mut pre = Pre(self, sink);
        self.inner.readdirplus(req, node, handle, cookie, &mut pre)
    }
    fn releasedir(&self, req: &Request, node: NodeId, handle: Handle) -> Result<()> {
        self.inner.releasedir(req, node, handle)
    }
    fn fsyncdir(&self, req: &Request, node: NodeId, handle: Handle, datasync: bool) -> Result<()> {
        self.inner.fsyncdir(req, node, handle, datasync)
    }
    fn statfs(&self, req: &Request, node: NodeId) -> Result<StatFs> {
        self.inner.statfs(req, node)
    }
    fn capabilities(&self) -> Option<Capabilities> {
        Some(self.inner.mount_capabilities())
    }
}

/// A built plugin library, by crate name.
fn library(crate_name: &str) -> PluginLibrary {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).expect("test binary in <target>/<profile>/deps");
    let file =
        format!("{}{}{}", std::env::consts::DLL_PREFIX, crate_name.replace('-', "_"), std::env::consts::DLL_SUFFIX);
    let path: PathBuf = dir.join(file);
    assert!(
        path.is_file(),
        "{} is missing: build the plugins first (cargo build -p plugfs-memfs -p plugfs-durable-io -p plugfs-fat)",
        path.display()
    );
    PluginLibrary::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One mounted plugin behind a [`Volume`].
struct Mount {
    name: &'static str,
    vol: Option<Volume>,
    fs: Arc<Counting>,
    caps: Capabilities,
    _lib: PluginLibrary,
    _dir: tempfile::TempDir,
}

impl Mount {
    fn new(plugin: &'static str) -> Mount {
        let dir = tempfile::tempdir().unwrap();
        let config = match plugin {
            "memfs" => String::new(),
            "durable-io" => {
                format!("root = {:?}\n", dir.path().join("root").to_str().unwrap()) + "create_root = true\n"
            }
            "fat" => {
                let img = dir.path().join("fat.img");
                let out = std::process::Command::new("mkfs.fat")
                    .args(["-C", img.to_str().unwrap(), "4096"])
                    .output()
                    .expect("mkfs.fat is missing: install dosfstools");
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                format!("image = {:?}\n", img.to_str().unwrap())
            }
            other => panic!("no config for {other}"),
        };
        let lib = library(&format!("plugfs-{plugin}"));
        let inner = lib.open(&config, &MountOptions::default()).unwrap_or_else(|e| panic!("{plugin}: {e}"));
        let caps = inner.mount_capabilities();
        let fs = Arc::new(Counting { inner, refs: Mutex::default(), problems: Mutex::default() });
        use std::os::unix::fs::MetadataExt;
        let me = std::fs::metadata(dir.path()).unwrap();
        let request = Request { uid: me.uid(), gid: me.gid(), pid: std::process::id() };
        let vol = Volume::new(fs.clone(), caps, VolumeOptions { request, ..VolumeOptions::default() });
        Mount { name: plugin, vol: Some(vol), fs, caps, _lib: lib, _dir: dir }
    }

    fn v(&self) -> &Volume {
        self.vol.as_ref().unwrap()
    }

    /// Drops the volume and checks that every reference was given back.
    fn finish(mut self) {
        let v = self.vol.take().unwrap();
        assert_eq!(v.open_handles(), 0, "{}: handles left open by the test", self.name);
        drop(v);
        let leaks = self.fs.leaks();
        assert!(leaks.is_empty(), "{}: {leaks:#?}", self.name);
    }

    fn open(&self, path: &str, access: u32, share: u32, disposition: u32, options: u32) -> Result<Created, u32> {
        let path = wide(path);
        self.v().create(&plugfs_windows_core::CreateRequest {
            path: &path,
            access,
            share,
            disposition,
            options,
            attributes: FILE_ATTRIBUTE_NORMAL,
        })
    }

    fn close(&self, id: u64) {
        self.v().cleanup(id).unwrap();
        self.v().close(id);
    }

    fn put(&self, path: &str, data: &[u8]) {
        let c = self.open(path, GENERIC_WRITE, 0, FILE_OVERWRITE_IF, FILE_NON_DIRECTORY_FILE).unwrap();
        assert_eq!(self.v().write(c.id, Some(0), data, false).unwrap(), data.len());
        self.close(c.id);
    }

    fn get(&self, path: &str) -> Vec<u8> {
        let c = self.open(path, GENERIC_READ, FILE_SHARE_READ, FILE_OPEN, 0).unwrap();
        let data = read_all(self.v(), c.id);
        self.close(c.id);
        data
    }

    fn mkdir(&self, path: &str) {
        let c = self.open(path, FILE_READ_DATA, 7, FILE_CREATE, FILE_DIRECTORY_FILE).unwrap();
        assert_eq!(c.action, CreateAction::Created);
        self.close(c.id);
    }

    fn status(&self, path: &str) -> u32 {
        match self.open(path, FILE_READ_ATTRIBUTES, 7, FILE_OPEN, 0) {
            Ok(c) => {
                self.close(c.id);
                STATUS_SUCCESS
            }
            Err(s) => s,
        }
    }

    /// Explorer's way of listing: open the directory, query `*`, then resume from the last
    /// name until the answer is empty, `page` names at a time.
    fn list(&self, dir: &str, pattern: &str, page: usize) -> Vec<String> {
        let c = self.open(dir, FILE_READ_DATA | FILE_READ_ATTRIBUTES, 7, FILE_OPEN, FILE_DIRECTORY_FILE).unwrap();
        let mut names: Vec<String> = Vec::new();
        loop {
            let marker = names.last().map(|n| wide(n));
            let got = self.v().read_directory(c.id, &wide(pattern), marker.as_deref()).unwrap();
            if got.is_empty() {
                break;
            }
            names.extend(got.into_iter().take(page).map(|d| d.name));
        }
        self.close(c.id);
        names
    }

    /// Deletes as `DeleteFileW` does: open with DELETE, set the disposition, close.
    fn delete(&self, path: &str) -> Result<(), u32> {
        let c = self.open(path, DELETE | FILE_READ_ATTRIBUTES, 7, FILE_OPEN, 0)?;
        let r = self.v().set_delete_on_close(c.id, true);
        self.close(c.id);
        r
    }

    /// Renames as `MoveFileExW` does: open with DELETE, rename through the handle, close.
    fn move_file(&self, from: &str, to: &str, replace: bool) -> Result<(), u32> {
        let c = self.open(from, DELETE | FILE_READ_ATTRIBUTES, 7, FILE_OPEN, 0)?;
        let r = self.v().rename(c.id, &wide(to), replace, false);
        self.close(c.id);
        r
    }
}

fn read_all(v: &Volume, id: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 7];
    loop {
        match v.read(id, out.len() as u64, &mut buf) {
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(STATUS_END_OF_FILE) => return out,
            Err(s) => panic!("read: {s:#x} {:?}", name(s)),
        }
    }
}

fn each(plugins: &[&'static str], test: impl Fn(&Mount)) {
    for p in plugins {
        let m = Mount::new(p);
        test(&m);
        m.finish();
    }
}

const ALL: &[&str] = &["memfs", "durable-io", "fat"];
const SHARE_ALL: u32 = FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE;

fn s(status: u32) -> String {
    format!("{status:#x} {}", name(status).unwrap_or("?"))
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn the_plugins_report_the_case_rules_the_tests_expect() {
    assert!(Mount::new("memfs").caps.case_sensitive);
    assert!(Mount::new("durable-io").caps.case_sensitive, "durable-io over a case-sensitive temporary directory");
    let fat = Mount::new("fat");
    assert!(!fat.caps.case_sensitive && fat.caps.case_preserving);
}

#[test]
fn every_disposition_on_an_existing_and_a_missing_file() {
    each(ALL, |m| {
        for (disp, existing, missing) in [
            (FILE_SUPERSEDE, Ok(CreateAction::Superseded), Ok(CreateAction::Created)),
            (FILE_OPEN, Ok(CreateAction::Opened), Err(STATUS_OBJECT_NAME_NOT_FOUND)),
            (FILE_CREATE, Err(STATUS_OBJECT_NAME_COLLISION), Ok(CreateAction::Created)),
            (FILE_OPEN_IF, Ok(CreateAction::Opened), Ok(CreateAction::Created)),
            (FILE_OVERWRITE, Ok(CreateAction::Overwritten), Err(STATUS_OBJECT_NAME_NOT_FOUND)),
            (FILE_OVERWRITE_IF, Ok(CreateAction::Overwritten), Ok(CreateAction::Created)),
        ] {
            m.put("\\there.txt", b"old contents");
            let got = m.open("\\there.txt", GENERIC_READ | GENERIC_WRITE, 0, disp, FILE_NON_DIRECTORY_FILE);
            assert_eq!(got.map(|c| c.action), existing, "{}: disposition {disp} on an existing file", m.name);
            if let Ok(c) = got {
                let truncated = existing != Ok(CreateAction::Opened);
                assert_eq!(c.info.file_size == 0, truncated, "{}: disposition {disp}", m.name);
                m.close(c.id);
                let want: &[u8] = if truncated { b"" } else { b"old contents" };
                assert_eq!(m.get("\\there.txt"), want, "{}: disposition {disp}", m.name);
            }
            let got = m.open("\\missing.txt", GENERIC_READ | GENERIC_WRITE, 0, disp, FILE_NON_DIRECTORY_FILE);
            assert_eq!(got.map(|c| c.action), missing, "{}: disposition {disp} on a missing file", m.name);
            if let Ok(c) = got {
                assert_eq!(c.info.attributes & FILE_ATTRIBUTE_DIRECTORY, 0);
                m.close(c.id);
                m.delete("\\missing.txt").unwrap();
            }
            assert_eq!(m.status("\\missing.txt"), STATUS_OBJECT_NAME_NOT_FOUND);
        }
    });
}

#[test]
fn directory_and_file_options_and_bad_paths_get_the_statuses_windows_gives() {
    each(ALL, |m| {
        m.mkdir("\\dir");
        m.put("\\file", b"x");
        let o = |path: &str, disp: u32, opts: u32| m.open(path, FILE_READ_DATA, 7, disp, opts).map(|c| m.close(c.id));
        assert_eq!(o("\\file", FILE_OPEN, FILE_DIRECTORY_FILE), Err(STATUS_NOT_A_DIRECTORY), "{}", m.name);
        assert_eq!(o("\\dir", FILE_OPEN, FILE_NON_DIRECTORY_FILE), Err(STATUS_FILE_IS_A_DIRECTORY));
        assert_eq!(o("\\dir", FILE_OVERWRITE_IF, 0), Err(STATUS_FILE_IS_A_DIRECTORY));
        assert_eq!(o("\\d2", FILE_OVERWRITE_IF, FILE_DIRECTORY_FILE), Err(STATUS_INVALID_PARAMETER));
        assert_eq!(
            o("\\d2", FILE_OPEN_IF, FILE_DIRECTORY_FILE | FILE_NON_DIRECTORY_FILE),
            Err(STATUS_INVALID_PARAMETER)
        );
        assert_eq!(o("\\dir", FILE_CREATE, FILE_DIRECTORY_FILE), Err(STATUS_OBJECT_NAME_COLLISION));
        assert_eq!(o("\\dir", FILE_OPEN_IF, FILE_DIRECTORY_FILE), Ok(()));
        assert_eq!(o("\\", FILE_OPEN, FILE_DIRECTORY_FILE), Ok(()));
        assert_eq!(o("\\nowhere\\f", FILE_OPEN_IF, 0), Err(STATUS_OBJECT_PATH_NOT_FOUND));
        assert_eq!(o("\\nowhere\\f", FILE_OPEN, 0), Err(STATUS_OBJECT_PATH_NOT_FOUND));
        assert_eq!(o("\\file\\f", FILE_OPEN, 0), Err(STATUS_OBJECT_PATH_NOT_FOUND));
        assert_eq!(o("\\dir\\f", FILE_OPEN, 0), Err(STATUS_OBJECT_NAME_NOT_FOUND));
        for bad in ["\\CON", "\\dir\\nul.txt", "\\trailing.", "\\trailing "] {
            assert_eq!(o(bad, FILE_CREATE, 0), Err(STATUS_OBJECT_NAME_INVALID), "{}: {bad}", m.name);
        }
        assert_eq!(o("\\a\\\\b", FILE_OPEN, 0), Err(STATUS_OBJECT_NAME_INVALID));
        assert_eq!(o(&format!("\\{}", "n".repeat(300)), FILE_OPEN, 0), Err(STATUS_OBJECT_NAME_INVALID), "{}", m.name);
        // A new directory through FILE_DIRECTORY_FILE is a directory.
        let c = m.open("\\dir\\sub", FILE_READ_DATA, 7, FILE_OPEN_IF, FILE_DIRECTORY_FILE).unwrap();
        assert_eq!(
            (c.action, c.info.attributes & FILE_ATTRIBUTE_DIRECTORY),
            (CreateAction::Created, FILE_ATTRIBUTE_DIRECTORY)
        );
        m.close(c.id);
    });
}

#[test]
fn a_read_only_file_refuses_writers_and_deletion_until_the_attribute_is_cleared() {
    each(&["memfs", "durable-io"], |m| {
        m.put("\\ro.txt", b"keep");
        let c = m.open("\\ro.txt", FILE_WRITE_ATTRIBUTES | FILE_READ_ATTRIBUTES, 7, FILE_OPEN, 0).unwrap();
        let info = m.v().set_basic_info(c.id, FILE_ATTRIBUTE_READONLY, 0, 0).unwrap();
        assert_eq!(info.attributes, FILE_ATTRIBUTE_READONLY, "{}", m.name);
        assert_eq!(m.open("\\ro.txt", GENERIC_WRITE, 7, FILE_OPEN, 0).map(|c| c.id), Err(STATUS_ACCESS_DENIED));
        assert_eq!(m.open("\\ro.txt", GENERIC_READ, 7, FILE_OVERWRITE, 0).map(|c| c.id), Err(STATUS_ACCESS_DENIED));
        assert_eq!(m.delete("\\ro.txt"), Err(STATUS_CANNOT_DELETE));
        let info = m.v().set_basic_info(c.id, FILE_ATTRIBUTE_NORMAL, 0, 0).unwrap();
        assert_eq!(info.attributes, FILE_ATTRIBUTE_NORMAL);
        m.close(c.id);
        assert_eq!(m.get("\\ro.txt"), b"keep");
        m.delete("\\ro.txt").unwrap();
    });
}

#[test]
fn share_modes_decide_who_else_may_open() {
    each(ALL, |m| {
        m.put("\\doc.txt", b"text");
        // An editor holds the file open for writing, sharing only reading.
        let editor = m.open("\\doc.txt", GENERIC_READ | GENERIC_WRITE, FILE_SHARE_READ, FILE_OPEN, 0).unwrap();
        let reader = m.open("\\doc.txt", GENERIC_READ, FILE_SHARE_READ | FILE_SHARE_WRITE, FILE_OPEN, 0).unwrap();
        assert_eq!(read_all(m.v(), reader.id), b"text");
        assert_eq!(m.open("\\doc.txt", GENERIC_WRITE, 7, FILE_OPEN, 0).map(|c| c.id), Err(STATUS_SHARING_VIOLATION));
        // A reader that does not share writing conflicts with the editor's write access.
        assert_eq!(
            m.open("\\doc.txt", GENERIC_READ, FILE_SHARE_READ, FILE_OPEN, 0).map(|c| c.id),
            Err(STATUS_SHARING_VIOLATION)
        );
        // Deleting needs FILE_SHARE_DELETE from every open handle.
        assert_eq!(m.delete("\\doc.txt"), Err(STATUS_SHARING_VIOLATION));
        // Explorer's attribute queries never conflict.
        assert_eq!(m.status("\\doc.txt"), STATUS_SUCCESS);
        // Share checks end at cleanup, before close.
        m.v().cleanup(editor.id).unwrap();
        let writer = m.open("\\doc.txt", GENERIC_WRITE, SHARE_ALL, FILE_OPEN, 0).unwrap();
        m.close(writer.id);
        m.v().close(editor.id);
        m.close(reader.id);
        // Reading without read access, writing without write access.
        let attrs_only = m.open("\\doc.txt", FILE_READ_ATTRIBUTES, 7, FILE_OPEN, 0).unwrap();
        assert_eq!(m.v().read(attrs_only.id, 0, &mut [0; 4]), Err(STATUS_ACCESS_DENIED));
        assert_eq!(m.v().write(attrs_only.id, Some(0), b"x", false), Err(STATUS_ACCESS_DENIED));
        assert_eq!(m.v().file_info(attrs_only.id).unwrap().file_size, 4);
        m.close(attrs_only.id);
    });
}

#[test]
fn delete_on_close_deletes_when_the_last_handle_closes() {
    each(ALL, |m| {
        // A temporary file opened with FILE_DELETE_ON_CLOSE, and a second handle on it.
        let tmp = m
            .open("\\scratch.tmp", GENERIC_READ | GENERIC_WRITE | DELETE, SHARE_ALL, FILE_CREATE, FILE_DELETE_ON_CLOSE)
            .unwrap();
        m.v().write(tmp.id, Some(0), b"scratch", false).unwrap();
        let other = m.open("\\scratch.tmp", GENERIC_READ, SHARE_ALL, FILE_OPEN, 0).unwrap();
        m.close(tmp.id);
        // Delete pending: the name stays while a handle is open, but opens no more.
        assert_eq!(m.status("\\scratch.tmp"), STATUS_DELETE_PENDING, "{}", m.name);
        assert_eq!(read_all(m.v(), other.id), b"scratch");
        m.close(other.id);
        assert_eq!(m.status("\\scratch.tmp"), STATUS_OBJECT_NAME_NOT_FOUND, "{}", m.name);
        assert!(!m.list("\\", "*", 100).contains(&"scratch.tmp".to_string()));
        // FILE_DELETE_ON_CLOSE needs DELETE access.
        assert_eq!(
            m.open("\\x", GENERIC_WRITE, 0, FILE_CREATE, FILE_DELETE_ON_CLOSE).map(|c| c.id),
            Err(STATUS_INVALID_PARAMETER)
        );
        assert_eq!(m.status("\\x"), STATUS_OBJECT_NAME_NOT_FOUND, "{}: refused, so not created", m.name);
        // The disposition can be set and cleared again before the last close.
        m.put("\\keep", b"k");
        let c = m.open("\\keep", DELETE, SHARE_ALL, FILE_OPEN, 0).unwrap();
        m.v().set_delete_on_close(c.id, true).unwrap();
        m.v().set_delete_on_close(c.id, false).unwrap();
        m.close(c.id);
        assert_eq!(m.get("\\keep"), b"k");
        // Without DELETE access, no disposition.
        let c = m.open("\\keep", GENERIC_READ, SHARE_ALL, FILE_OPEN, 0).unwrap();
        assert_eq!(m.v().set_delete_on_close(c.id, true), Err(STATUS_ACCESS_DENIED));
        m.close(c.id);
        // A directory deletes only when empty, and the root never.
        m.mkdir("\\full");
        m.put("\\full\\f", b"");
        assert_eq!(m.delete("\\full"), Err(STATUS_DIRECTORY_NOT_EMPTY), "{}", m.name);
        m.delete("\\full\\f").unwrap();
        m.delete("\\full").unwrap();
        assert_eq!(m.status("\\full"), STATUS_OBJECT_NAME_NOT_FOUND);
        assert_eq!(m.delete("\\"), Err(STATUS_CANNOT_DELETE));
        // Creating in a directory being deleted is refused.
        m.mkdir("\\going");
        let d = m.open("\\going", DELETE | FILE_READ_DATA, SHARE_ALL, FILE_OPEN, FILE_DIRECTORY_FILE).unwrap();
        m.v().set_delete_on_close(d.id, true).unwrap();
        assert_eq!(m.open("\\going\\new", GENERIC_WRITE, 0, FILE_CREATE, 0).map(|c| c.id), Err(STATUS_DELETE_PENDING));
        m.close(d.id);
        assert_eq!(m.status("\\going"), STATUS_OBJECT_NAME_NOT_FOUND);
    });
}

#[test]
fn office_saves_by_writing_a_temporary_file_and_renaming() {
    each(ALL, |m| {
        m.mkdir("\\Documents");
        m.put("\\Documents\\Report.docx", b"version 1");
        // Word keeps the document open while editing (reading, sharing read and delete).
        let doc = m
            .open("\\Documents\\Report.docx", GENERIC_READ, FILE_SHARE_READ | FILE_SHARE_DELETE, FILE_OPEN, 0)
            .unwrap();
        // 1. Write the new version to a temporary file.
        m.put("\\Documents\\~WRL0001.tmp", b"version 2, longer");
        // 2. Rename the original to a backup name (the open document moves with it).
        m.move_file("\\Documents\\Report.docx", "\\Documents\\~WRL0002.tmp", false).unwrap();
        assert_eq!(m.v().path(doc.id).unwrap(), "\\Documents\\~WRL0002.tmp");
        // 3. Rename the temporary file to the original name.
        m.move_file("\\Documents\\~WRL0001.tmp", "\\Documents\\Report.docx", false).unwrap();
        // 4. Close the old document and delete the backup.
        assert_eq!(read_all(m.v(), doc.id), b"version 1", "{}: the open handle follows its file", m.name);
        m.close(doc.id);
        m.delete("\\Documents\\~WRL0002.tmp").unwrap();
        assert_eq!(m.get("\\Documents\\Report.docx"), b"version 2, longer", "{}", m.name);
        assert_eq!(m.list("\\Documents", "*", 100), [".", "..", "Report.docx"], "{}", m.name);
        assert_eq!(m.status("\\Documents\\~WRL0001.tmp"), STATUS_OBJECT_NAME_NOT_FOUND);
    });
}

#[test]
fn a_rename_over_an_open_file_is_refused_until_it_closes_unless_posix_semantics() {
    each(ALL, |m| {
        m.put("\\new", b"new");
        m.put("\\target", b"target");
        let holder = m.open("\\target", GENERIC_READ, SHARE_ALL, FILE_OPEN, 0).unwrap();
        assert_eq!(m.move_file("\\new", "\\target", false), Err(STATUS_OBJECT_NAME_COLLISION), "{}", m.name);
        assert_eq!(m.move_file("\\new", "\\target", true), Err(STATUS_ACCESS_DENIED), "{}", m.name);
        assert_eq!(m.get("\\target"), b"target");
        m.close(holder.id);
        m.move_file("\\new", "\\target", true).unwrap();
        assert_eq!(m.get("\\target"), b"new");
        assert_eq!(m.status("\\new"), STATUS_OBJECT_NAME_NOT_FOUND);
        // A directory is never a target to replace.
        m.mkdir("\\dir");
        m.put("\\f", b"f");
        assert_eq!(m.move_file("\\f", "\\dir", true), Err(STATUS_ACCESS_DENIED));
        // Into a missing directory: the path is not found.
        assert_eq!(m.move_file("\\f", "\\nowhere\\f", true), Err(STATUS_OBJECT_PATH_NOT_FOUND));
        assert_eq!(m.move_file("\\f", "\\CON", true), Err(STATUS_OBJECT_NAME_INVALID));
    });
    // POSIX semantics replace an open target; its handle keeps the old contents.
    each(&["memfs", "durable-io"], |m| {
        m.put("\\new", b"new");
        m.put("\\target", b"target");
        let holder = m.open("\\target", GENERIC_READ, SHARE_ALL, FILE_OPEN, 0).unwrap();
        let mover = m.open("\\new", DELETE, SHARE_ALL, FILE_OPEN, 0).unwrap();
        m.v().rename(mover.id, &wide("\\target"), true, true).unwrap();
        m.close(mover.id);
        assert_eq!(read_all(m.v(), holder.id), b"target");
        m.close(holder.id);
        assert_eq!(m.get("\\target"), b"new");
    });
}

#[test]
fn renaming_needs_delete_access_and_a_directory_with_open_files_below_stays() {
    each(ALL, |m| {
        m.mkdir("\\old");
        m.mkdir("\\old\\deep");
        m.put("\\old\\deep\\f.txt", b"inside");
        let c = m.open("\\old\\deep\\f.txt", GENERIC_READ, SHARE_ALL, FILE_OPEN, 0).unwrap();
        let no_delete = m.open("\\old", FILE_READ_DATA, SHARE_ALL, FILE_OPEN, 0).unwrap();
        assert_eq!(m.v().rename(no_delete.id, &wide("\\new"), false, false), Err(STATUS_ACCESS_DENIED));
        m.close(no_delete.id);
        assert_eq!(m.move_file("\\old", "\\new", false), Err(STATUS_ACCESS_DENIED), "{}", m.name);
        m.close(c.id);
        m.move_file("\\old", "\\new", false).unwrap();
        // The cache follows the move: old paths are gone, new ones lead to the same files.
        assert_eq!(m.status("\\old\\deep\\f.txt"), STATUS_OBJECT_PATH_NOT_FOUND, "{}", m.name);
        assert_eq!(m.get("\\new\\deep\\f.txt"), b"inside");
        // Moving a file between directories.
        m.move_file("\\new\\deep\\f.txt", "\\top.txt", false).unwrap();
        assert_eq!(m.get("\\top.txt"), b"inside");
        assert_eq!(m.list("\\new\\deep", "*", 100), [".", ".."]);
    });
}

#[test]
fn a_case_only_rename_on_a_case_insensitive_plugin_renames_the_file_onto_itself() {
    let m = Mount::new("fat");
    m.put("\\readme.txt", b"hello");
    assert_eq!(m.get("\\README.TXT"), b"hello", "lookups ignore case");
    assert_eq!(
        m.open("\\ReadMe.txt", GENERIC_WRITE, 0, FILE_CREATE, 0).map(|c| c.id),
        Err(STATUS_OBJECT_NAME_COLLISION)
    );
    m.move_file("\\readme.txt", "\\README.TXT", false).unwrap();
    assert_eq!(m.list("\\", "*", 100), ["README.TXT"], "the new case is kept");
    assert_eq!(m.get("\\readme.txt"), b"hello");
    // Another name that differs only in case from an existing file is a collision.
    m.put("\\other.txt", b"other");
    assert_eq!(m.move_file("\\other.txt", "\\readme.TXT", false), Err(STATUS_OBJECT_NAME_COLLISION));
    m.finish();
}

#[test]
fn a_case_only_rename_on_a_case_sensitive_plugin_is_an_ordinary_rename() {
    each(&["memfs", "durable-io"], |m| {
        m.put("\\readme.txt", b"hello");
        assert_eq!(m.status("\\README.TXT"), STATUS_OBJECT_NAME_NOT_FOUND, "{}: names differ by case", m.name);
        m.move_file("\\readme.txt", "\\README.TXT", false).unwrap();
        assert_eq!(m.list("\\", "*", 100), ["README.TXT"], "{}", m.name);
        assert_eq!(m.status("\\readme.txt"), STATUS_OBJECT_NAME_NOT_FOUND);
        // Both cases may exist side by side; renaming one onto the other collides.
        m.put("\\readme.txt", b"lower");
        assert_eq!(m.move_file("\\readme.txt", "\\README.TXT", false), Err(STATUS_OBJECT_NAME_COLLISION));
        assert_eq!((m.get("\\readme.txt"), m.get("\\README.TXT")), (b"lower".to_vec(), b"hello".to_vec()));
    });
}

#[test]
fn explorer_lists_a_directory_in_pages_resuming_after_the_last_name() {
    each(ALL, |m| {
        m.mkdir("\\photos");
        let names: Vec<String> = (0..40).map(|i| format!("IMG_{i:04}.jpg")).collect();
        for n in &names {
            m.put(&format!("\\photos\\{n}"), b"jpeg");
        }
        m.put("\\photos\\notes.TXT", b"t");
        m.put("\\photos\\list.txt", b"t");
        m.mkdir("\\photos\\Album");
        let all = m.list("\\photos", "*", 1000);
        for page in [1, 3, 7] {
            assert_eq!(m.list("\\photos", "*", page), all, "{}: pages of {page}", m.name);
        }
        assert_eq!(&all[..2], [".", ".."]);
        assert_eq!(all.len(), 2 + 40 + 3, "{}: {all:?}", m.name);
        let mut sorted = all[2..].to_vec();
        if m.caps.case_sensitive {
            sorted.sort();
        } else {
            sorted.sort_by_key(|n| n.to_uppercase());
        }
        assert_eq!(all[2..], sorted, "{}: sorted by the mount's case rule", m.name);
        // Patterns, with the mount's case rule.
        let txt = m.list("\\photos", "*.txt", 1000);
        if m.caps.case_sensitive {
            assert_eq!(txt, ["list.txt"], "{}", m.name);
        } else {
            assert_eq!(txt, ["list.txt", "notes.TXT"], "{}", m.name);
        }
        assert_eq!(m.list("\\photos", "IMG_000?.jpg", 1000).len(), 10);
        assert_eq!(m.list("\\photos", "IMG_00>>.jpg", 1000).len(), 40, "DOS ? matches up to its count");
        assert_eq!(m.list("\\photos", "<\"", 1000), [".", "..", "Album"], "{}: names without extension", m.name);
        assert_eq!(m.list("\\photos", "Album", 1000), ["Album"]);
        // Entries carry their information.
        let d = m.open("\\photos", FILE_READ_DATA, 7, FILE_OPEN, FILE_DIRECTORY_FILE).unwrap();
        let got = m.v().read_directory(d.id, &wide("*"), None).unwrap();
        let album = got.iter().find(|e| e.name == "Album").unwrap();
        assert_ne!(album.info.attributes & FILE_ATTRIBUTE_DIRECTORY, 0);
        let img = got.iter().find(|e| e.name == "IMG_0001.jpg").unwrap();
        assert_eq!((img.info.file_size, img.info.attributes & FILE_ATTRIBUTE_DIRECTORY), (4, 0));
        // A name removed between two queries does not lose the place.
        let first = m.v().read_directory(d.id, &wide("*"), None).unwrap();
        let marker = first[10].name.clone();
        m.delete(&format!("\\photos\\{marker}")).unwrap();
        let rest = m.v().read_directory(d.id, &wide("*"), Some(&wide(&marker))).unwrap();
        assert_eq!(rest, first[11..], "{}", m.name);
        m.close(d.id);
        // The root has no "." and "..".
        assert_eq!(m.list("\\", "*", 100), ["photos"]);
    });
}

#[test]
fn posix_names_windows_cannot_show_are_mapped_to_private_use_characters() {
    each(&["memfs", "durable-io"], |m| {
        // Created through the plugin directly, as a Linux user of the same store would.
        let root = plugfs_plugin_api::ROOT_ID;
        let req = Request::default();
        let (e, o) = m.fs.inner.create(&req, root, OsStr::new("a:b?"), 0o644, 0).unwrap();
        m.fs.inner.release(&req, e.node, o.handle, 0, false).unwrap();
        m.fs.inner.forget(e.node, 1);
        let listed = m.list("\\", "*", 100);
        assert_eq!(listed, ["a\u{F03A}b\u{F03F}"], "{}", m.name);
        m.put("\\a\u{F03A}b\u{F03F}", b"reachable");
        assert_eq!(m.get("\\a\u{F03A}b\u{F03F}"), b"reachable");
        m.delete("\\a\u{F03A}b\u{F03F}").unwrap();
        assert!(m.list("\\", "*", 100).is_empty());
    });
}

#[test]
fn writes_times_sizes_volume_information_and_security() {
    each(ALL, |m| {
        let c = m
            .open(
                "\\data.bin",
                GENERIC_READ | GENERIC_WRITE,
                0,
                FILE_CREATE,
                FILE_WRITE_THROUGH | FILE_NON_DIRECTORY_FILE,
            )
            .unwrap();
        m.v().write(c.id, Some(0), b"0123456789", false).unwrap();
        m.v().write(c.id, None, b"ab", false).unwrap();
        // Paging IO never extends the file.
        assert_eq!(m.v().write(c.id, Some(10), b"XYZW", true).unwrap(), 2);
        assert_eq!(m.v().write(c.id, Some(12), b"Q", true).unwrap(), 0);
        m.v().flush(c.id).unwrap();
        assert_eq!(read_all(m.v(), c.id), b"0123456789XY");
        m.v().set_file_size(c.id, 4, false).unwrap();
        assert_eq!(m.v().set_file_size(c.id, 100, true).unwrap().file_size, 4, "allocation never grows the size");
        assert_eq!(m.v().set_file_size(c.id, 2, true).unwrap().file_size, 2);
        // 2001-09-09T01:46:40Z, which FAT stores exactly (an even second).
        let when = plugfs_windows_core::time::to_filetime(plugfs_plugin_api::Timestamp::new(1_000_000_000, 0));
        let info = m.v().set_basic_info(c.id, 0, 0, when).unwrap();
        assert_eq!(info.last_write_time, when, "{}", m.name);
        assert_eq!(m.v().file_info(c.id).unwrap().last_write_time, when);
        let sddl = m.v().security(c.id, &UnixSids).unwrap();
        assert!(sddl.starts_with("O:S-1-22-1-") && sddl.contains("(A;;"), "{sddl}");
        m.close(c.id);
        let vol = m.v().volume_info().unwrap();
        assert!(vol.total_size > 0 && vol.free_size <= vol.total_size, "{}: {vol:?}", m.name);
        assert_eq!(vol.case_sensitive_search, m.caps.case_sensitive);
        assert!(!vol.read_only);
    });
}

#[test]
fn a_read_only_volume_refuses_changes_with_media_write_protected() {
    let m = Mount::new("memfs");
    m.put("\\f", b"x");
    let ro = Volume::new(m.fs.clone(), m.caps, VolumeOptions { read_only: true, ..VolumeOptions::default() });
    let path = wide("\\g");
    let req = plugfs_windows_core::CreateRequest {
        path: &path,
        access: GENERIC_WRITE,
        share: 0,
        disposition: FILE_CREATE,
        options: 0,
        attributes: 0,
    };
    assert_eq!(ro.create(&req).map(|c| c.id), Err(STATUS_MEDIA_WRITE_PROTECTED));
    let path = wide("\\f");
    let c = ro.create(&plugfs_windows_core::CreateRequest { path: &path, disposition: FILE_OPEN, ..req }).unwrap_err();
    assert_eq!(c, STATUS_MEDIA_WRITE_PROTECTED, "opening for writing");
    assert!(ro.volume_info().unwrap().read_only);
    drop(ro);
    m.finish();
}

#[test]
fn errors_from_the_plugin_arrive_as_the_mapped_status() {
    each(&["memfs"], |m| {
        m.mkdir("\\d");
        m.put("\\d\\f", b"");
        // ENOTEMPTY from the plugin when a file appears after the disposition was set.
        let d = m.open("\\d", DELETE | FILE_READ_DATA, SHARE_ALL, FILE_OPEN, FILE_DIRECTORY_FILE).unwrap();
        assert_eq!(m.v().set_delete_on_close(d.id, true), Err(STATUS_DIRECTORY_NOT_EMPTY));
        m.close(d.id);
        // EISDIR/ENOTDIR from a path that changes kind behind the cache's back is covered
        // by the table's unit tests; here the plugin's own ENAMETOOLONG on lookup:
        let long = format!("\\d\\{}", "x".repeat(256));
        assert_eq!(m.status(&long), STATUS_OBJECT_NAME_INVALID, "{}", s(m.status(&long)));
    });
}

#[test]
fn a_node_reached_again_while_held_keeps_one_reference() {
    each(ALL, |m| {
        m.put("\\a", b"a");
        // Held by an open handle while its name moves; looking the new name up hands the
        // core a second reference on the same node, which it must give back at once.
        let holder = m.open("\\a", GENERIC_READ, SHARE_ALL, FILE_OPEN, 0).unwrap();
        m.move_file("\\a", "\\b", false).unwrap();
        for _ in 0..3 {
            assert_eq!(m.status("\\b"), STATUS_SUCCESS);
        }
        let held = m.v().held_nodes();
        m.move_file("\\b", "\\c", false).unwrap();
        assert_eq!(m.status("\\c"), STATUS_SUCCESS);
        assert_eq!(m.v().held_nodes(), held, "{}: the same node, held once", m.name);
        m.close(holder.id);
        // Deleted files are no longer held once closed.
        m.delete("\\c").unwrap();
        assert_eq!(m.v().held_nodes(), 0, "{}", m.name);
    });
}

#[test]
fn the_name_cache_stays_within_its_capacity_and_still_finds_everything() {
    for plugin in ["memfs", "durable-io"] {
        let mut m = Mount::new(plugin);
        let opts = VolumeOptions { cache_capacity: 8, request: Request::default(), ..VolumeOptions::default() };
        drop(m.vol.replace(Volume::new(m.fs.clone(), m.caps, opts)));
        for d in 0..4 {
            m.mkdir(&format!("\\d{d}"));
            for f in 0..10 {
                m.put(&format!("\\d{d}\\f{f}"), format!("{d}/{f}").as_bytes());
                assert!(m.v().cached_names() <= 8, "{plugin}: {} names cached", m.v().cached_names());
            }
        }
        // An open file keeps its parent held while the cache is trimmed around it.
        let open = m.open("\\d0\\f0", FILE_READ_ATTRIBUTES, SHARE_ALL, FILE_OPEN, 0).unwrap();
        for d in 0..4 {
            for f in 0..10 {
                assert_eq!(m.get(&format!("\\d{d}\\f{f}")), format!("{d}/{f}").as_bytes(), "{plugin}");
            }
        }
        m.close(open.id);
        m.delete("\\d0\\f0").unwrap();
        assert_eq!(m.status("\\d0\\f0"), STATUS_OBJECT_NAME_NOT_FOUND, "{plugin}");
        assert_eq!(m.list("\\d1", "*", 100).len(), 12);
        m.finish();
    }
}

#[test]
fn handle_level_misuse_gets_its_own_status() {
    each(&["memfs"], |m| {
        m.mkdir("\\d");
        m.put("\\f", b"f");
        let d = m.open("\\d", FILE_READ_DATA, SHARE_ALL, FILE_OPEN, 0).unwrap();
        assert_eq!(m.v().read(d.id, 0, &mut [0; 4]), Err(STATUS_INVALID_DEVICE_REQUEST));
        assert_eq!(m.v().write(d.id, Some(0), b"x", false), Err(STATUS_INVALID_DEVICE_REQUEST));
        assert_eq!(m.v().set_file_size(d.id, 0, false).map(|_| ()), Err(STATUS_INVALID_DEVICE_REQUEST));
        m.close(d.id);
        let f = m.open("\\f", GENERIC_READ, SHARE_ALL, FILE_OPEN, 0).unwrap();
        assert_eq!(m.v().read_directory(f.id, &wide("*"), None), Err(STATUS_NOT_A_DIRECTORY));
        let mut buf = [0u8; 4];
        assert_eq!(m.v().read(f.id, 1, &mut buf), Err(STATUS_END_OF_FILE), "at the end");
        m.close(f.id);
        // A handle the volume never gave out, or one already closed.
        assert_eq!(m.v().read(f.id, 0, &mut buf), Err(STATUS_INVALID_HANDLE));
        assert_eq!(m.v().cleanup(9999), Err(STATUS_INVALID_HANDLE));
        assert_eq!(m.v().rename(9999, &wide("\\x"), false, false), Err(STATUS_INVALID_HANDLE));
        assert_eq!(m.v().file_info(9999).map(|_| ()), Err(STATUS_INVALID_HANDLE));
        m.v().close(9999);
    });
}

#[test]
fn changes_made_past_the_mount_show_once_the_plugins_entry_ttl_runs_out() {
    let m = Mount::new("durable-io");
    m.put("\\before", b"data");
    assert_eq!(m.status("\\before"), STATUS_SUCCESS);
    // Another program renames the file in the backing directory.
    let root = m._dir.path().join("root");
    std::fs::rename(root.join("before"), root.join("after")).unwrap();
    // Wait out the entry's lifetime as the plugin gave it.
    let e = m.fs.inner.lookup(&Request::default(), plugfs_plugin_api::ROOT_ID, OsStr::new("after")).unwrap();
    m.fs.inner.forget(e.node, 1);
    std::thread::sleep(e.entry_ttl + std::time::Duration::from_millis(50));
    assert_eq!(m.status("\\before"), STATUS_OBJECT_NAME_NOT_FOUND);
    assert_eq!(m.get("\\after"), b"data");
    m.finish();
}

#[test]
fn renaming_a_file_onto_another_of_its_hard_links_leaves_only_the_new_name() {
    each(&["memfs", "durable-io"], |m| {
        m.put("\\one", b"linked");
        let req = Request::default();
        let root = plugfs_plugin_api::ROOT_ID;
        let e = m.fs.inner.lookup(&req, root, OsStr::new("one")).unwrap();
        let l = m.fs.inner.link(&req, e.node, root, OsStr::new("two")).unwrap();
        m.fs.inner.forget(l.node, 1);
        m.fs.inner.forget(e.node, 1);
        assert_eq!(m.move_file("\\one", "\\two", false), Err(STATUS_OBJECT_NAME_COLLISION), "{}", m.name);
        m.move_file("\\one", "\\two", true).unwrap();
        assert_eq!(m.list("\\", "*", 100), ["two"], "{}", m.name);
        assert_eq!(m.get("\\two"), b"linked");
    });
}

#[test]
fn a_shutdown_refuses_new_opens_and_releases_what_windows_left_open() {
    each(ALL, |m| {
        m.mkdir("\\d");
        let file = m.open("\\left-open", GENERIC_READ | GENERIC_WRITE, SHARE_ALL, FILE_CREATE, 0).unwrap();
        let dir = m.open("\\d", FILE_READ_DATA, SHARE_ALL, FILE_OPEN, FILE_DIRECTORY_FILE).unwrap();
        // An attribute-only open of a file holds no plugin handle: nothing to release.
        let attrs = m.open("\\left-open", FILE_READ_ATTRIBUTES, SHARE_ALL, FILE_OPEN, 0).unwrap();
        assert_eq!(m.v().in_flight(), 0, "{}: nothing is being served between calls", m.name);
        // A handle cleaned up (the program closed it) but not yet closed by Windows no
        // longer keeps the mount in use.
        let closing = m.open("\\d", FILE_READ_ATTRIBUTES, SHARE_ALL, FILE_OPEN, 0).unwrap();
        m.v().cleanup(closing.id).unwrap();
        assert_eq!((m.v().open_handles(), m.v().active_handles()), (4, 3), "{}", m.name);

        m.v().begin_shutdown();
        assert_eq!(m.status("\\left-open"), STATUS_VOLUME_DISMOUNTED, "{}: no new opens", m.name);
        // What is open still works until it is released.
        assert_eq!(m.v().write(file.id, Some(0), b"written before the unmount", false), Ok(26));

        let released = m.v().release_all();
        // Plugin handles: the file, the directory, and the directory opened for attributes.
        assert_eq!((released.released, released.failed), (3, 0), "{}", m.name);
        assert_eq!(m.v().open_handles(), 0);
        assert_eq!(m.fs.leaks(), Vec::<String>::new(), "{}: every reference given back", m.name);
        // The framework's late closes find nothing and do nothing.
        for id in [file.id, dir.id, attrs.id, closing.id] {
            m.v().close(id);
        }
        assert_eq!(m.v().release_all(), plugfs_windows_core::Released::default());
    });
}
