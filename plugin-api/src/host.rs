//! The host side of the ABI (feature `host`): checking a plugin file, loading it, and a
//! [`FileSystem`] that calls into it.
//!
//! ```no_run
//! use plugfs_plugin_api::host::PluginLibrary;
//! use plugfs_plugin_api::MountOptions;
//! let lib = PluginLibrary::load("target/debug/libplugfs_memfs.so".as_ref())?;
//! println!("{} {}", lib.info().name, lib.info().version);
//! let fs = lib.open("max_bytes = 1048576", &MountOptions::default())?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Loading first reads the file and checks, without running any of its code, that it is a
//! shared library for this machine that exports a plugfs ABI tag of a compatible version.
//! Only then is it loaded. Libraries are never unloaded: their code may still be on a
//! thread's stack, and static tables point into them.

use std::ffi::{OsStr, c_void};
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::abi::*;
use crate::convert::*;
use crate::error::{Errno, Error, Result};
use crate::fs::{FileSystem, defaults};
use crate::plugin::OpenError;
use crate::types::*;

/// An ABI version, `major.minor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AbiVersion {
    /// Major version: must equal the host's.
    pub major: u32,
    /// Minor version: must not be newer than the host's.
    pub minor: u32,
}

impl AbiVersion {
    /// The version this host speaks.
    pub const HOST: AbiVersion = AbiVersion { major: ABI_MAJOR, minor: ABI_MINOR };
}

impl std::fmt::Display for AbiVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// Why a file could not be loaded as a plugin. Every message names the file and the
/// host's ABI version, and the plugin's when it could be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read at all.
    #[error("{path}: cannot read plugin file: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a shared library, or one that is truncated or corrupt.
    #[error("{path}: not a loadable shared library ({detail}); the file may be truncated or corrupt (host plugin ABI {host})", host = AbiVersion::HOST)]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser found wrong.
        detail: String,
    },
    /// A valid shared library that is not a plugfs plugin, or is built for another machine.
    #[error("{path}: not a plugfs plugin: {reason} (host plugin ABI {host})", host = AbiVersion::HOST)]
    NotAPlugin {
        /// The file.
        path: PathBuf,
        /// Why not.
        reason: String,
    },
    /// A plugfs plugin of an ABI version this host cannot load.
    #[error("{path}: plugin ABI {plugin} is incompatible with host plugin ABI {host}: {reason}", host = AbiVersion::HOST)]
    Incompatible {
        /// The file.
        path: PathBuf,
        /// The version the plugin was built against.
        plugin: AbiVersion,
        /// Why it cannot be loaded.
        reason: String,
    },
    /// The checks passed but the dynamic loader or the plugin's entry point failed.
    #[error("{path}: plugin ABI {plugin} (host {host}) failed to load: {detail}", host = AbiVersion::HOST)]
    LoadFailed {
        /// The file.
        path: PathBuf,
        /// The version the plugin declares.
        plugin: AbiVersion,
        /// The loader's message.
        detail: String,
    },
}

/// A plugin, described and ready to open filesystems.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginDescription {
    /// The name configs use.
    pub name: String,
    /// The plugin's own version.
    pub version: String,
    /// One line on what it serves.
    pub description: String,
    /// Its config keys.
    pub config_help: String,
    /// What it supports.
    pub capabilities: Capabilities,
    /// The ABI version it was built against.
    pub abi: AbiVersion,
}

/// A loaded plugin library.
#[derive(Clone)]
pub struct PluginLibrary {
    path: PathBuf,
    decl: PluginDecl,
    info: Arc<PluginDescription>,
}

impl std::fmt::Debug for PluginLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginLibrary").field("path", &self.path).field("info", &self.info).finish()
    }
}

/// Reads the ABI tag of a plugin file without loading it.
pub fn inspect(path: &Path) -> Result<AbiVersion, LoadError> {
    use object::{Object, ObjectKind, ObjectSection};

    let data = std::fs::read(path).map_err(|source| LoadError::Unreadable { path: path.into(), source })?;
    let corrupt = |detail: String| LoadError::Corrupt { path: path.into(), detail };
    let not_plugin = |reason: String| LoadError::NotAPlugin { path: path.into(), reason };

    let file = object::File::parse(&*data).map_err(|e| {
        if data.starts_with(b"\x7fELF") || data.starts_with(b"MZ") || data.starts_with(&[0xcf, 0xfa, 0xed, 0xfe]) {
            corrupt(e.to_string())
        } else {
            not_plugin(format!("not a shared library ({e})"))
        }
    })?;
    if file.kind() != ObjectKind::Dynamic {
        return Err(not_plugin(format!("it is a {:?} object, not a shared library", file.kind())));
    }
    let host_arch = host_architecture();
    if Some(file.architecture()) != host_arch {
        return Err(not_plugin(format!(
            "built for {:?}, this host is {:?}",
            file.architecture(),
            host_arch.unwrap_or(object::Architecture::Unknown)
        )));
    }
    let exports = file.exports().map_err(|e| corrupt(format!("unreadable symbol table: {e}")))?;
    let mut tag_address = None;
    for export in exports {
        let export = export.map_err(|e| corrupt(format!("unreadable symbol table: {e}")))?;
        if export.name() == object::NameOrOrdinal::Name(TAG_SYMBOL.as_bytes()) {
            if let object::ExportTarget::Address { address } = export.target() {
                tag_address = Some(address);
            }
            break;
        }
    }
    let addr = tag_address.ok_or_else(|| not_plugin(format!("it exports no `{TAG_SYMBOL}` symbol")))?;
    let tag_len = std::mem::size_of::<AbiTag>() as u64;
    let section = file
        .sections()
        .find(|s| s.address() <= addr && addr + tag_len <= s.address() + s.size())
        .ok_or_else(|| corrupt(format!("`{TAG_SYMBOL}` points outside every section")))?;
    let bytes = section
        .data_range(addr, tag_len)
        .map_err(|e| corrupt(format!("cannot read `{TAG_SYMBOL}`: {e}")))?
        .ok_or_else(|| corrupt(format!("`{TAG_SYMBOL}` is not stored in the file")))?;
    if bytes[..8] != MAGIC {
        return Err(not_plugin(format!("`{TAG_SYMBOL}` does not start with the plugfs magic bytes")));
    }
    let word = |at: usize| {
        let b: [u8; 4] = bytes[at..at + 4].try_into().expect("slice of 4");
        if file.is_little_endian() { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) }
    };
    let version = AbiVersion { major: word(8), minor: word(12) };
    check_compatible(path, version)?;
    Ok(version)
}

fn check_compatible(path: &Path, plugin: AbiVersion) -> Result<(), LoadError> {
    let host = AbiVersion::HOST;
    let reason = if plugin.major != host.major {
        format!("the major versions differ; rebuild the plugin against plugfs-plugin-api {}.x", host.major)
    } else if plugin.minor > host.minor {
        "the plugin needs a newer host; upgrade plugfs".to_string()
    } else {
        return Ok(());
    };
    Err(LoadError::Incompatible { path: path.into(), plugin, reason })
}

fn host_architecture() -> Option<object::Architecture> {
    use object::Architecture as A;
    Some(match std::env::consts::ARCH {
        "x86_64" => A::X86_64,
        "aarch64" => A::Aarch64,
        "x86" => A::I386,
        "arm" => A::Arm,
        "riscv64" => A::Riscv64,
        "powerpc64" => A::PowerPc64,
        "s390x" => A::S390x,
        "loongarch64" => A::LoongArch64,
        _ => return None,
    })
}

impl PluginLibrary {
    /// Checks `path` (see [`inspect`]), loads it, and reads its description.
    pub fn load(path: &Path) -> Result<PluginLibrary, LoadError> {
        let version = inspect(path)?;
        let failed = |detail: String| LoadError::LoadFailed { path: path.into(), plugin: version, detail };

        // SAFETY: loading runs the library's initialisers. We only get here for a file
        // that declares itself a plugfs plugin of a compatible ABI; plugins are trusted
        // code that the operator configured.
        let lib = unsafe { libloading::Library::new(path) }.map_err(|e| failed(e.to_string()))?;
        // Never unloaded: see the module docs.
        let lib: &'static libloading::Library = Box::leak(Box::new(lib));
        let entry = unsafe { lib.get::<unsafe extern "C" fn() -> *const PluginDecl>(ENTRY_SYMBOL.as_bytes()) }
            .map_err(|e| failed(format!("no `{ENTRY_SYMBOL}` entry point: {e}")))?;
        let raw = unsafe { entry() };
        if raw.is_null() {
            return Err(failed("the entry point returned no declaration".into()));
        }
        let empty = PluginDecl { size: std::mem::size_of::<PluginDecl>(), tag: CURRENT_TAG, info: None, open: None };
        // SAFETY: a compatible plugin's declaration starts with its size.
        let decl = unsafe { copy_prefix(empty, raw) };
        let declared = AbiVersion { major: decl.tag.major, minor: decl.tag.minor };
        if decl.tag.magic != MAGIC || declared != version {
            return Err(failed(format!(
                "its declaration says ABI {declared} but its `{TAG_SYMBOL}` says {version}; the file is inconsistent"
            )));
        }
        let (Some(info_fn), Some(_)) = (decl.info, decl.open) else {
            return Err(failed("its declaration lacks `info` or `open`".into()));
        };
        let mut raw_info = MaybeUninit::<RawPluginInfo>::zeroed();
        // SAFETY: zeroed RawPluginInfo is valid (null pointers with length 0, no flags).
        unsafe {
            (*raw_info.as_mut_ptr()).size = std::mem::size_of::<RawPluginInfo>();
            info_fn(raw_info.as_mut_ptr());
        }
        let raw_info = unsafe { raw_info.assume_init() };
        let text = |s: RawStr| String::from_utf8_lossy(unsafe { s.as_bytes() }).into_owned();
        let info = PluginDescription {
            name: text(raw_info.name),
            version: text(raw_info.version),
            description: text(raw_info.description),
            config_help: text(raw_info.config_help),
            capabilities: caps_from_raw(&raw_info.capabilities),
            abi: version,
        };
        if info.name.is_empty() {
            return Err(failed("the plugin reports no name (its `info` panicked or is empty)".into()));
        }
        Ok(PluginLibrary { path: path.to_path_buf(), decl, info: Arc::new(info) })
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its description.
    pub fn info(&self) -> &PluginDescription {
        &self.info
    }

    /// Opens a filesystem with `config_toml` (the plugin's table as TOML text).
    pub fn open(&self, config_toml: &str, options: &MountOptions) -> Result<LoadedFs, OpenError> {
        let open = self.decl.open.ok_or_else(|| OpenError::other("plugin has no `open`"))?;
        let raw_opts =
            RawMountOptions { size: std::mem::size_of::<RawMountOptions>(), read_only: options.read_only as u8 };
        let mut key = [0u8; 256];
        let mut key_len = 0usize;
        let mut out = MaybeUninit::<RawFs>::uninit();
        let mut msg = [0u8; MSG_CAP];
        let mut ctx = new_ctx(&Request::default(), &mut msg);
        // SAFETY: all pointers are to live locals; `open` writes `out` only on success.
        let status = unsafe {
            open(
                &mut ctx,
                RawStr::new(config_toml.as_bytes()),
                &raw_opts,
                RawBuf::new(&mut key),
                &mut key_len,
                out.as_mut_ptr(),
            )
        };
        let message = String::from_utf8_lossy(&msg[..ctx.msg_len.min(MSG_CAP)]).into_owned();
        if status != 0 {
            let key = (key_len > 0).then(|| String::from_utf8_lossy(&key[..key_len.min(key.len())]).into_owned());
            let message = if status == STATUS_PANICKED {
                report_panic(&self.info.name, "open", &message);
                format!("the plugin panicked while opening: {message}")
            } else if message.is_empty() {
                format!("the plugin refused to open ({:?})", Errno(status))
            } else {
                message
            };
            return Err(OpenError { key, message });
        }
        let raw = unsafe { out.assume_init() };
        if raw.vtable.is_null() {
            return Err(OpenError::other("the plugin returned no operations table"));
        }
        // SAFETY: the table starts with its size; entries it lacks stay `None`.
        let vt = unsafe { copy_prefix(FsVTable::EMPTY, raw.vtable) };
        Ok(LoadedFs { this: raw.this, vt, plugin: Arc::from(self.info.name.as_str()) })
    }
}

/// Finds plugin files (`*.so`, `*.dylib`, `*.dll`) in a directory, sorted by name.
pub fn plugin_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(OsStr::to_str), Some(std::env::consts::DLL_EXTENSION))
        })
        .collect();
    files.sort();
    Ok(files)
}

const MSG_CAP: usize = 512;

fn new_ctx(req: &Request, msg: &mut [u8]) -> CallCtx {
    CallCtx { uid: req.uid, gid: req.gid, pid: req.pid, reserved: 0, msg: RawBuf::new(msg), msg_len: 0 }
}

fn report_panic(plugin: &str, op: &str, message: &str) {
    tracing::error!(plugin, op, "plugin panicked: {message}; the call answers EIO and the host keeps serving");
}

/// A filesystem opened by a loaded plugin. Calls go through the plugin's table; a panic in
/// the plugin becomes `EIO` plus an error log line naming the plugin and the operation.
/// Dropping it frees the plugin's object.
pub struct LoadedFs {
    this: *mut c_void,
    vt: FsVTable,
    plugin: Arc<str>,
}

// SAFETY: the plugin's object is a `FileSystem`, which is `Send + Sync`.
unsafe impl Send for LoadedFs {}
unsafe impl Sync for LoadedFs {}

impl Drop for LoadedFs {
    fn drop(&mut self) {
        if let Some(destroy) = self.vt.destroy {
            unsafe { destroy(self.this) };
        }
    }
}

impl LoadedFs {
    /// The plugin's name.
    pub fn plugin_name(&self) -> &str {
        &self.plugin
    }

    /// Makes one call through the table and turns its status into a `Result`.
    fn call(&self, op: &'static str, req: &Request, f: impl FnOnce(*mut CallCtx) -> i32) -> Result<()> {
        let mut msg = [0u8; MSG_CAP];
        let mut ctx = new_ctx(req, &mut msg);
        let status = f(&mut ctx);
        let len = ctx.msg_len.min(MSG_CAP);
        let text = || String::from_utf8_lossy(&msg[..len]).into_owned();
        match status {
            0 => Ok(()),
            STATUS_PANICKED => {
                report_panic(&self.plugin, op, &text());
                Err(Error::with_message(Errno::EIO, format!("plugin `{}` panicked in {op}", self.plugin)))
            }
            errno if len > 0 => Err(Error::with_message(Errno(errno.max(1)), text())),
            errno => Err(Error::new(Errno(errno.max(1)))),
        }
    }
}

/// The table entry for an operation, or an early return with the answer the host gives
/// for a plugin too old to have it.
macro_rules! slot {
    ($self:ident . $op:ident, $absent:expr) => {
        match $self.vt.$op {
            Some(f) => f,
            None => return $absent,
        }
    };
}

fn raw_name(name: &OsStr) -> RawStr {
    RawStr::new(os_str_bytes(name))
}

impl FileSystem for LoadedFs {
    fn lookup(&self, req: &Request, parent: NodeId, name: &OsStr) -> Result<Entry> {
        let f = slot!(self.lookup, Err(Errno::EIO.into()));
        let mut out = RawEntry::default();
        self.call("lookup", req, |c| unsafe { f(self.this, c, parent, raw_name(name), &mut out) })?;
        entry_from_raw(&out)
    }

    fn forget(&self, node: NodeId, nlookup: u64) {
        let Some(f) = self.vt.forget else { return };
        let _ = self.call("forget", &Request::default(), |c| unsafe { f(self.this, c, node, nlookup) });
    }

    fn getattr(&self, req: &Request, node: NodeId, handle: Option<Handle>) -> Result<AttrOut> {
        let f = slot!(self.getattr, Err(Errno::EIO.into()));
        let mut out = RawAttrOut::default();
        let (has, h) = (handle.is_some() as u8, handle.unwrap_or(0));
        self.call("getattr", req, |c| unsafe { f(self.this, c, node, has, h, &mut out) })?;
        attr_out_from_raw(&out)
    }

    fn setattr(&self, req: &Request, node: NodeId, set: &SetAttr) -> Result<AttrOut> {
        let f = slot!(self.setattr, Err(Errno::EROFS.into()));
        let raw = setattr_to_raw(set);
        let mut out = RawAttrOut::default();
        self.call("setattr", req, |c| unsafe { f(self.this, c, node, &raw, &mut out) })?;
        attr_out_from_raw(&out)
    }

    fn readlink(&self, req: &Request, node: NodeId, buf: &mut [u8]) -> Result<usize> {
        let f = slot!(self.readlink, Err(Errno::EINVAL.into()));
        let mut len = 0usize;
        let raw = RawBuf::new(buf);
        self.call("readlink", req, |c| unsafe { f(self.this, c, node, raw, &mut len) })?;
        Ok(len.min(raw.len))
    }

    fn mknod(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32, rdev: u32) -> Result<Entry> {
        let f = slot!(self.mknod, Err(Errno::EPERM.into()));
        let mut out = RawEntry::default();
        self.call("mknod", req, |c| unsafe { f(self.this, c, parent, raw_name(name), mode, rdev, &mut out) })?;
        entry_from_raw(&out)
    }

    fn mkdir(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32) -> Result<Entry> {
        let f = slot!(self.mkdir, Err(Errno::EROFS.into()));
        let mut out = RawEntry::default();
        self.call("mkdir", req, |c| unsafe { f(self.this, c, parent, raw_name(name), mode, &mut out) })?;
        entry_from_raw(&out)
    }

    fn unlink(&self, req: &Request, parent: NodeId, name: &OsStr) -> Result<()> {
        let f = slot!(self.unlink, Err(Errno::EROFS.into()));
        self.call("unlink", req, |c| unsafe { f(self.this, c, parent, raw_name(name)) })
    }

    fn rmdir(&self, req: &Request, parent: NodeId, name: &OsStr) -> Result<()> {
        let f = slot!(self.rmdir, Err(Errno::EROFS.into()));
        self.call("rmdir", req, |c| unsafe { f(self.this, c, parent, raw_name(name)) })
    }

    fn symlink(&self, req: &Request, parent: NodeId, name: &OsStr, target: &OsStr) -> Result<Entry> {
        let f = slot!(self.symlink, Err(Errno::EPERM.into()));
        let mut out = RawEntry::default();
        self.call("symlink", req, |c| unsafe { f(self.this, c, parent, raw_name(name), raw_name(target), &mut out) })?;
        entry_from_raw(&out)
    }

    fn link(&self, req: &Request, node: NodeId, new_parent: NodeId, new_name: &OsStr) -> Result<Entry> {
        let f = slot!(self.link, Err(Errno::EPERM.into()));
        let mut out = RawEntry::default();
        self.call("link", req, |c| unsafe { f(self.this, c, node, new_parent, raw_name(new_name), &mut out) })?;
        entry_from_raw(&out)
    }

    fn rename(
        &self,
        req: &Request,
        parent: NodeId,
        name: &OsStr,
        new_parent: NodeId,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> Result<()> {
        let f = slot!(self.rename, Err(Errno::EROFS.into()));
        self.call("rename", req, |c| unsafe {
            f(self.this, c, parent, raw_name(name), new_parent, raw_name(new_name), flags.0)
        })
    }

    fn open(&self, req: &Request, node: NodeId, flags: i32) -> Result<Opened> {
        let f = slot!(self.open, Err(Errno::EIO.into()));
        let mut out = RawOpened::default();
        self.call("open", req, |c| unsafe { f(self.this, c, node, flags, &mut out) })?;
        Ok(opened_from_raw(&out))
    }

    fn create(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32, flags: i32) -> Result<(Entry, Opened)> {
        let f = slot!(self.create, Err(Errno::EROFS.into()));
        let mut entry = RawEntry::default();
        let mut opened = RawOpened::default();
        self.call("create", req, |c| unsafe {
            f(self.this, c, parent, raw_name(name), mode, flags, &mut entry, &mut opened)
        })?;
        Ok((entry_from_raw(&entry)?, opened_from_raw(&opened)))
    }

    fn read(&self, req: &Request, node: NodeId, handle: Handle, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let f = slot!(self.read, Err(Errno::EIO.into()));
        let mut len = 0usize;
        let raw = RawBuf::new(buf);
        self.call("read", req, |c| unsafe { f(self.this, c, node, handle, offset, raw, &mut len) })?;
        Ok(len.min(raw.len))
    }

    fn write(
        &self,
        req: &Request,
        node: NodeId,
        handle: Handle,
        offset: u64,
        data: &[u8],
        flags: i32,
    ) -> Result<usize> {
        let f = slot!(self.write, Err(Errno::EBADF.into()));
        let mut len = 0usize;
        self.call("write", req, |c| unsafe {
            f(self.this, c, node, handle, offset, RawStr::new(data), flags, &mut len)
        })?;
        Ok(len.min(data.len()))
    }

    fn flush(&self, req: &Request, node: NodeId, handle: Handle, lock_owner: u64) -> Result<()> {
        let f = slot!(self.flush, Ok(()));
        self.call("flush", req, |c| unsafe { f(self.this, c, node, handle, lock_owner) })
    }

    fn release(&self, req: &Request, node: NodeId, handle: Handle, flags: i32, flush: bool) -> Result<()> {
        let f = slot!(self.release, Ok(()));
        self.call("release", req, |c| unsafe { f(self.this, c, node, handle, flags, flush as u8) })
    }

    fn fsync(&self, req: &Request, node: NodeId, handle: Handle, datasync: bool) -> Result<()> {
        let f = slot!(self.fsync, Ok(()));
        self.call("fsync", req, |c| unsafe { f(self.this, c, node, handle, datasync as u8) })
    }

    fn opendir(&self, req: &Request, node: NodeId, flags: i32) -> Result<Opened> {
        let f = slot!(self.opendir, Ok(Opened::default()));
        let mut out = RawOpened::default();
        self.call("opendir", req, |c| unsafe { f(self.this, c, node, flags, &mut out) })?;
        Ok(opened_from_raw(&out))
    }

    fn readdir(&self, req: &Request, node: NodeId, handle: Handle, cookie: u64, sink: &mut dyn DirSink) -> Result<()> {
        struct Trampoline<'a> {
            sink: &'a mut dyn DirSink,
        }
        unsafe extern "C" fn add(sink: *mut c_void, entry: *const RawDirEntry) -> u8 {
            // SAFETY: `sink` is the Trampoline below, alive for the whole readdir call.
            let t = unsafe { &mut *(sink as *mut Trampoline<'_>) };
            let e = unsafe { &*entry };
            let Some(kind) = FileKind::from_mode(e.kind) else { return 1 };
            let name = unsafe { e.name.as_bytes() };
            // A plugin must not produce these; drop them rather than confuse the kernel.
            if name.is_empty() || name.contains(&b'/') || e.cookie == 0 {
                return 1;
            }
            t.sink.add(&DirEntry { ino: e.ino, kind, name, cookie: e.cookie }) as u8
        }
        let f = slot!(self.readdir, Err(Errno::EIO.into()));
        let mut t = Trampoline { sink };
        let tp = &mut t as *mut Trampoline<'_> as *mut c_void;
        self.call("readdir", req, |c| unsafe { f(self.this, c, node, handle, cookie, tp, add) })
    }

    fn releasedir(&self, req: &Request, node: NodeId, handle: Handle) -> Result<()> {
        let f = slot!(self.releasedir, Ok(()));
        self.call("releasedir", req, |c| unsafe { f(self.this, c, node, handle) })
    }

    fn fsyncdir(&self, req: &Request, node: NodeId, handle: Handle, datasync: bool) -> Result<()> {
        let f = slot!(self.fsyncdir, Ok(()));
        self.call("fsyncdir", req, |c| unsafe { f(self.this, c, node, handle, datasync as u8) })
    }

    fn statfs(&self, req: &Request, node: NodeId) -> Result<StatFs> {
        let f = slot!(self.statfs, Ok(StatFs { bsize: 4096, frsize: 4096, namelen: 255, ..StatFs::default() }));
        let mut out = RawStatFs::default();
        self.call("statfs", req, |c| unsafe { f(self.this, c, node, &mut out) })?;
        Ok(statfs_from_raw(&out))
    }

    fn setxattr(&self, req: &Request, node: NodeId, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        let f = slot!(self.setxattr, Err(Errno::ENOTSUP.into()));
        self.call("setxattr", req, |c| unsafe { f(self.this, c, node, raw_name(name), RawStr::new(value), flags) })
    }

    fn getxattr(&self, req: &Request, node: NodeId, name: &OsStr, buf: &mut [u8]) -> Result<usize> {
        let f = slot!(self.getxattr, Err(Errno::ENOTSUP.into()));
        let mut len = 0usize;
        let raw = RawBuf::new(buf);
        self.call("getxattr", req, |c| unsafe { f(self.this, c, node, raw_name(name), raw, &mut len) })?;
        xattr_len(len, raw.len)
    }

    fn listxattr(&self, req: &Request, node: NodeId, buf: &mut [u8]) -> Result<usize> {
        let f = slot!(self.listxattr, Ok(0));
        let mut len = 0usize;
        let raw = RawBuf::new(buf);
        self.call("listxattr", req, |c| unsafe { f(self.this, c, node, raw, &mut len) })?;
        xattr_len(len, raw.len)
    }

    fn removexattr(&self, req: &Request, node: NodeId, name: &OsStr) -> Result<()> {
        let f = slot!(self.removexattr, Err(Errno::ENOTSUP.into()));
        self.call("removexattr", req, |c| unsafe { f(self.this, c, node, raw_name(name)) })
    }

    fn fallocate(
        &self,
        req: &Request,
        node: NodeId,
        handle: Handle,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<()> {
        let f = slot!(self.fallocate, Err(Errno::EOPNOTSUPP.into()));
        self.call("fallocate", req, |c| unsafe { f(self.this, c, node, handle, offset, length, mode) })
    }

    fn copy_file_range(
        &self,
        req: &Request,
        node_in: NodeId,
        handle_in: Handle,
        offset_in: u64,
        node_out: NodeId,
        handle_out: Handle,
        offset_out: u64,
        len: u64,
        flags: u32,
    ) -> Result<usize> {
        let f = slot!(self.copy_file_range, Err(Errno::EOPNOTSUPP.into()));
        let mut copied = 0usize;
        self.call("copy_file_range", req, |c| unsafe {
            f(self.this, c, node_in, handle_in, offset_in, node_out, handle_out, offset_out, len, flags, &mut copied)
        })?;
        Ok(copied)
    }

    fn lseek(&self, req: &Request, node: NodeId, handle: Handle, offset: i64, whence: Whence) -> Result<u64> {
        let f = slot!(self.lseek, defaults::lseek(self, req, node, handle, offset, whence));
        let mut pos = 0u64;
        self.call("lseek", req, |c| unsafe { f(self.this, c, node, handle, offset, whence.to_raw(), &mut pos) })?;
        Ok(pos)
    }
}

/// A plugin claiming to have written more than the buffer holds is a bug; do not let the
/// frontend read past the buffer.
fn xattr_len(len: usize, cap: usize) -> Result<usize> {
    if cap > 0 && len > cap {
        return Err(Error::with_message(Errno::ERANGE, "plugin reported more xattr bytes than the buffer holds"));
    }
    Ok(len)
}
