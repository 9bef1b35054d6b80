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
    vt: FsVTable,
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
    /// Checks `path` (see [`inspect`]), loads it, checks its declaration and operations
    /// table, and reads its description.
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
        let empty = PluginDecl {
            struct_size: std::mem::size_of::<PluginDecl>(),
            tag: CURRENT_TAG,
            info: None,
            open: None,
            ops: std::ptr::null(),
            format: None,
            attach_host: None,
        };
        // SAFETY: a compatible plugin's declaration starts with its size.
        let declared_size = unsafe { std::ptr::read_unaligned(raw as *const usize) };
        if declared_size < PLUGIN_DECL_SIZE_2_0 {
            return Err(failed(format!(
                "its declaration is {declared_size} bytes, smaller than ABI {ABI_MAJOR}.0's {PLUGIN_DECL_SIZE_2_0}"
            )));
        }
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
        let vt = check_table(decl.ops, version.minor).map_err(failed)?;

        let mut raw_info = RawPluginInfo {
            struct_size: std::mem::size_of::<RawPluginInfo>(),
            name: RawStr::new(&[]),
            version: RawStr::new(&[]),
            description: RawStr::new(&[]),
            config_help: RawStr::new(&[]),
        };
        let mut raw_caps =
            RawCapabilities { struct_size: std::mem::size_of::<RawCapabilities>(), ..Default::default() };
        // SAFETY: both out-structs are ours, sized for this version.
        unsafe { info_fn(&mut raw_info, &mut raw_caps) };
        let text = |s: RawStr| String::from_utf8_lossy(unsafe { s.as_bytes() }).into_owned();
        let info = PluginDescription {
            name: text(raw_info.name),
            version: text(raw_info.version),
            description: text(raw_info.description),
            config_help: text(raw_info.config_help),
            capabilities: caps_from_raw(&raw_caps),
            abi: version,
        };
        if info.name.is_empty() {
            return Err(failed("the plugin reports no name (its `info` panicked or is empty)".into()));
        }
        // ABI 2.1: the log bridge. A 2.0 plugin has no `attach_host` (its declaration is
        // too short), and its log lines go nowhere, as they always did.
        if let Some(attach) = decl.attach_host {
            let offer = crate::log_bridge::host_offer(&info.name);
            // SAFETY: the offer is valid for the call; its data lives as long as the process.
            unsafe { attach(&offer) };
        }
        Ok(PluginLibrary { path: path.to_path_buf(), decl, vt, info: Arc::new(info) })
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
        let raw_opts = RawMountOptions {
            struct_size: std::mem::size_of::<RawMountOptions>(),
            flags: if options.read_only { MOUNT_READ_ONLY } else { 0 },
        };
        let mut key = [0u8; 256];
        let mut key_len = 0usize;
        let mut this: *mut c_void = std::ptr::null_mut();
        let mut msg = [0u8; MSG_CAP];
        let mut ctx = new_ctx(&Request::default(), &mut msg);
        // SAFETY: all pointers are to live locals; `open` writes `this` only on success.
        let status = unsafe {
            open(
                &mut ctx,
                RawStr::new(config_toml.as_bytes()),
                &raw_opts,
                RawBuf::new(&mut key),
                &mut key_len,
                &mut this,
            )
        };
        let message = String::from_utf8_lossy(&msg[..ctx.msg_len.min(MSG_CAP)]).into_owned();
        if status != 0 {
            let key = (key_len > 0).then(|| String::from_utf8_lossy(&key[..key_len.min(key.len())]).into_owned());
            let message = if status == STATUS_PANICKED {
                report_panic(&self.info.name, "open", &message);
                format!("the plugin panicked while opening: {message}")
            } else if message.is_empty() {
                match errno_of(status) {
                    Some(errno) => format!("the plugin refused to open ({errno:?})"),
                    None => format!("the plugin refused to open with an invalid status {status}"),
                }
            } else {
                message
            };
            return Err(OpenError { key, message });
        }
        let mut fs =
            LoadedFs { this, vt: self.vt, plugin: Arc::from(self.info.name.as_str()), caps: self.info.capabilities };
        if let Some(f) = fs.vt.capabilities {
            let mut raw = RawCapabilities { struct_size: std::mem::size_of::<RawCapabilities>(), ..Default::default() };
            if fs.call("capabilities", &Request::default(), |c| unsafe { f(fs.this, c, &mut raw) }).is_ok() {
                fs.caps = caps_from_raw(&raw);
            }
        }
        Ok(fs)
    }
}

impl PluginLibrary {
    /// Creates a new image of `size` bytes as `config_toml` (the plugin's table) says,
    /// through the plugin's `format`; refused for a plugin without [`Capabilities::format`].
    pub fn format(&self, config_toml: &str, size: u64) -> Result<(), OpenError> {
        let (true, Some(format)) = (self.info.capabilities.format, self.decl.format) else {
            return Err(OpenError::other(format!("plugin `{}` does not create images", self.info.name)));
        };
        let mut key = [0u8; 256];
        let mut key_len = 0usize;
        let mut msg = [0u8; MSG_CAP];
        let mut ctx = new_ctx(&Request::default(), &mut msg);
        // SAFETY: all pointers are to live locals.
        let status =
            unsafe { format(&mut ctx, RawStr::new(config_toml.as_bytes()), size, RawBuf::new(&mut key), &mut key_len) };
        if status == 0 {
            return Ok(());
        }
        let message = String::from_utf8_lossy(&msg[..ctx.msg_len.min(MSG_CAP)]).into_owned();
        let key = (key_len > 0).then(|| String::from_utf8_lossy(&key[..key_len.min(key.len())]).into_owned());
        let message = if status == STATUS_PANICKED {
            report_panic(&self.info.name, "format", &message);
            format!("the plugin panicked while formatting: {message}")
        } else if message.is_empty() {
            format!("the plugin could not create the image (status {status})")
        } else {
            message
        };
        Err(OpenError { key, message })
    }
}

/// Checks a plugin's operations table and copies it: it must be exactly as long as the
/// table of the minor version the plugin declares, which is at least 2.0's and a whole
/// number of entries.
fn check_table(ops: *const FsVTable, minor: u32) -> Result<FsVTable, String> {
    if ops.is_null() {
        return Err("its declaration has no operations table".into());
    }
    // SAFETY: a compatible plugin's table starts with its size.
    let size = unsafe { std::ptr::read_unaligned(ops as *const usize) };
    let entry = std::mem::size_of::<usize>();
    let expected = vtable_size_for_minor(minor).ok_or_else(|| format!("unknown minor version {minor}"))?;
    if size < FS_VTABLE_SIZE_2_0 || size % entry != 0 || size != expected {
        return Err(format!(
            "its operations table is {size} bytes; ABI {ABI_MAJOR}.{minor} needs exactly {expected} ({} entries of {entry} bytes)",
            expected / entry
        ));
    }
    // SAFETY: checked above: the table is as long as it says.
    Ok(unsafe { copy_prefix(FsVTable::EMPTY, ops) })
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
    CallCtx { uid: req.uid, gid: req.gid, pid: req.pid, msg: RawBuf::new(msg), ..CallCtx::EMPTY }
}

fn report_panic(plugin: &str, op: &str, message: &str) {
    tracing::error!(plugin, op, "plugin panicked: {message}; the call answers EIO and the host keeps serving");
}

/// The errno a status carries, accepting both `EPERM` and `-EPERM`; `None` for a status
/// that is neither (a plugin bug).
fn errno_of(status: i32) -> Option<Errno> {
    match status {
        1..=ERRNO_MAX => Some(Errno(status)),
        s if (-ERRNO_MAX..=-1).contains(&s) => Some(Errno(-s)),
        _ => None,
    }
}

/// A filesystem opened by a loaded plugin. Calls go through the plugin's table and every
/// answer is checked here, before any frontend sees it: a panic, an invalid status, a
/// length beyond the buffer, an invalid node id, file type or time becomes `EIO` plus an
/// error log line naming the plugin, the operation and the value. Dropping it frees the
/// plugin's object.
pub struct LoadedFs {
    this: *mut c_void,
    vt: FsVTable,
    plugin: Arc<str>,
    caps: Capabilities,
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

    /// This mount's capabilities: what the opened filesystem reported, or the plugin's
    /// declared ones.
    pub fn mount_capabilities(&self) -> Capabilities {
        self.caps
    }

    /// Makes one call through the table and turns its status into a `Result`.
    fn call(&self, op: &'static str, req: &Request, f: impl FnOnce(*mut CallCtx) -> i32) -> Result<()> {
        let mut msg = [0u8; MSG_CAP];
        let mut ctx = new_ctx(req, &mut msg);
        let status = f(&mut ctx);
        let len = ctx.msg_len.min(MSG_CAP);
        let text = || String::from_utf8_lossy(&msg[..len]).into_owned();
        if status == 0 {
            return Ok(());
        }
        if status == STATUS_PANICKED {
            report_panic(&self.plugin, op, &text());
            return Err(Error::plugin_panic(format!("plugin `{}` panicked in {op}", self.plugin)));
        }
        match errno_of(status) {
            Some(errno) if len > 0 => Err(Error::with_message(errno, text())),
            Some(errno) => Err(Error::new(errno)),
            None => {
                Err(self
                    .bad(op, format_args!("returned status {status}, which is no errno (1..=4095 or its negative)")))
            }
        }
    }

    /// A plugin answer that breaks the ABI's rules: logged, and `EIO` for the call.
    fn bad(&self, op: &'static str, what: std::fmt::Arguments<'_>) -> Error {
        tracing::error!(plugin = %self.plugin, op, "plugin answer rejected: it {what}; the call answers EIO");
        Error::with_message(Errno::EIO, format!("plugin `{}` gave an invalid answer to {op}", self.plugin))
    }

    /// A length the plugin reports for a buffer of `cap` bytes.
    fn check_len(&self, op: &'static str, len: usize, cap: usize) -> Result<usize> {
        if len > cap {
            return Err(self.bad(op, format_args!("reported {len} bytes for a buffer of {cap}")));
        }
        Ok(len)
    }

    /// Attributes the plugin reports, checked.
    fn check_attr(&self, op: &'static str, raw: &RawAttr) -> Result<Attr> {
        for t in [raw.atime, raw.mtime, raw.ctime, raw.crtime] {
            if t.nanos >= 1_000_000_000 {
                return Err(self.bad(op, format_args!("reported a time with {} nanoseconds", t.nanos)));
            }
        }
        attr_from_raw(raw).map_err(|_| self.bad(op, format_args!("reported the unknown file type {:#o}", raw.kind)))
    }

    /// An entry a creating or looking-up call returned. Node 0 and the root are never the
    /// answer for a name; on any bad answer the reference the plugin counted is released.
    fn check_entry(&self, op: &'static str, raw: &RawEntry, attr: &RawAttr) -> Result<Entry> {
        let checked = if raw.node == 0 {
            Err(self.bad(op, format_args!("returned node 0")))
        } else if raw.node == ROOT_ID {
            Err(self.bad(op, format_args!("returned the root's id for a name")))
        } else {
            self.check_attr(op, attr).map(|attr| Entry {
                node: raw.node,
                generation: raw.generation,
                attr,
                entry_ttl: std::time::Duration::from_nanos(raw.entry_ttl_ns),
                attr_ttl: std::time::Duration::from_nanos(raw.attr_ttl_ns),
            })
        };
        if checked.is_err() && raw.node != 0 {
            self.forget(raw.node, 1);
        }
        checked
    }

    /// Whether a listed name may reach a frontend; logs the ones that may not.
    fn check_dirent(&self, op: &'static str, e: &RawDirEntry) -> Option<FileKind> {
        let name = unsafe { e.name.as_bytes() };
        let why = if name.is_empty() {
            "an empty name"
        } else if name.contains(&b'/') || name.contains(&0) {
            "a name with '/' or NUL"
        } else if name.len() > self.caps.max_name_len as usize {
            "a name longer than its declared limit"
        } else if e.cookie == 0 {
            "cookie 0"
        } else {
            match FileKind::from_mode(e.kind) {
                None => "an unknown file type",
                Some(kind) if (name == b"." || name == b"..") && kind != FileKind::Directory => {
                    "`.` or `..` as something other than a directory"
                }
                Some(kind) => return Some(kind),
            }
        };
        tracing::warn!(plugin = %self.plugin, op, name = %String::from_utf8_lossy(name), "plugin listed {why}; entry dropped");
        None
    }
}

/// The table entry for an operation, or an early return with the answer the host gives
/// for a plugin that leaves it out.
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

fn out_entry() -> (RawEntry, RawAttr) {
    (
        RawEntry { struct_size: std::mem::size_of::<RawEntry>(), ..Default::default() },
        RawAttr { struct_size: std::mem::size_of::<RawAttr>(), ..Default::default() },
    )
}

fn out_attr() -> RawAttr {
    RawAttr { struct_size: std::mem::size_of::<RawAttr>(), ..Default::default() }
}

fn out_opened() -> RawOpened {
    RawOpened { struct_size: std::mem::size_of::<RawOpened>(), ..Default::default() }
}

/// Runs a host callback that a plugin calls, so that a panic in it never unwinds through
/// the plugin's `extern "C"` frames: the panic text is kept for the call's answer.
fn catch_callback<T>(panicked: &mut Option<String>, fallback: T, f: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(payload) => {
            let text = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic with a non-string payload".into());
            *panicked = Some(text);
            fallback
        }
    }
}

impl FileSystem for LoadedFs {
    fn lookup(&self, req: &Request, parent: NodeId, name: &OsStr) -> Result<Entry> {
        let f = slot!(self.lookup, Err(Errno::EIO.into()));
        let (mut out, mut attr) = out_entry();
        self.call("lookup", req, |c| unsafe { f(self.this, c, parent, raw_name(name), &mut out, &mut attr) })?;
        self.check_entry("lookup", &out, &attr)
    }

    fn forget(&self, node: NodeId, nlookup: u64) {
        let Some(f) = self.vt.forget else { return };
        let _ = self.call("forget", &Request::default(), |c| unsafe { f(self.this, c, node, nlookup) });
    }

    fn getattr(&self, req: &Request, node: NodeId, handle: Option<Handle>) -> Result<AttrOut> {
        let f = slot!(self.getattr, Err(Errno::EIO.into()));
        let mut attr = out_attr();
        let mut ttl = 0u64;
        let (has, h) = (handle.is_some() as u8, handle.unwrap_or(0));
        self.call("getattr", req, |c| unsafe { f(self.this, c, node, has, h, &mut attr, &mut ttl) })?;
        Ok(AttrOut { attr: self.check_attr("getattr", &attr)?, ttl: std::time::Duration::from_nanos(ttl) })
    }

    fn setattr(&self, req: &Request, node: NodeId, set: &SetAttr) -> Result<AttrOut> {
        let f = slot!(self.setattr, Err(Errno::EROFS.into()));
        let raw = setattr_to_raw(set);
        let mut attr = out_attr();
        let mut ttl = 0u64;
        self.call("setattr", req, |c| unsafe { f(self.this, c, node, &raw, &mut attr, &mut ttl) })?;
        Ok(AttrOut { attr: self.check_attr("setattr", &attr)?, ttl: std::time::Duration::from_nanos(ttl) })
    }

    fn readlink(&self, req: &Request, node: NodeId, buf: &mut [u8]) -> Result<usize> {
        let f = slot!(self.readlink, Err(Errno::EINVAL.into()));
        let mut len = 0usize;
        let raw = RawBuf::new(buf);
        self.call("readlink", req, |c| unsafe { f(self.this, c, node, raw, &mut len) })?;
        self.check_len("readlink", len, raw.len)
    }

    fn mknod(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32, rdev: u32) -> Result<Entry> {
        let f = slot!(self.mknod, Err(Errno::EPERM.into()));
        let (mut out, mut attr) = out_entry();
        self.call("mknod", req, |c| unsafe {
            f(self.this, c, parent, raw_name(name), mode, rdev, &mut out, &mut attr)
        })?;
        self.check_entry("mknod", &out, &attr)
    }

    fn mkdir(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32) -> Result<Entry> {
        let f = slot!(self.mkdir, Err(Errno::EROFS.into()));
        let (mut out, mut attr) = out_entry();
        self.call("mkdir", req, |c| unsafe { f(self.this, c, parent, raw_name(name), mode, &mut out, &mut attr) })?;
        self.check_entry("mkdir", &out, &attr)
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
        let (mut out, mut attr) = out_entry();
        self.call("symlink", req, |c| unsafe {
            f(self.this, c, parent, raw_name(name), raw_name(target), &mut out, &mut attr)
        })?;
        self.check_entry("symlink", &out, &attr)
    }

    fn link(&self, req: &Request, node: NodeId, new_parent: NodeId, new_name: &OsStr) -> Result<Entry> {
        let f = slot!(self.link, Err(Errno::EPERM.into()));
        let (mut out, mut attr) = out_entry();
        self.call("link", req, |c| unsafe {
            f(self.this, c, node, new_parent, raw_name(new_name), &mut out, &mut attr)
        })?;
        self.check_entry("link", &out, &attr)
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
        let mut out = out_opened();
        self.call("open", req, |c| unsafe { f(self.this, c, node, flags, &mut out) })?;
        let opened = opened_from_raw(&out);
        self.check_backing_fd("open", node, flags, opened)
    }

    fn create(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32, flags: i32) -> Result<(Entry, Opened)> {
        let f = slot!(self.create, Err(Errno::EROFS.into()));
        let (mut entry, mut attr) = out_entry();
        let mut opened = out_opened();
        self.call("create", req, |c| unsafe {
            f(self.this, c, parent, raw_name(name), mode, flags, &mut entry, &mut attr, &mut opened)
        })?;
        let opened = opened_from_raw(&opened);
        match self.check_entry("create", &entry, &attr) {
            Ok(entry) => Ok((entry, self.check_backing_fd("create", entry.node, flags, opened)?)),
            Err(e) => {
                // The file was opened: close it again, or the plugin keeps it forever.
                if entry.node != 0 {
                    let _ = self.release(req, entry.node, opened.handle, flags, false);
                }
                Err(e)
            }
        }
    }

    fn read(&self, req: &Request, node: NodeId, handle: Handle, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let f = slot!(self.read, Err(Errno::EIO.into()));
        let mut len = 0usize;
        let raw = RawBuf::new(buf);
        self.call("read", req, |c| unsafe { f(self.this, c, node, handle, offset, raw, &mut len) })?;
        self.check_len("read", len, raw.len)
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
        self.check_len("write", len, data.len())
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
        let mut out = out_opened();
        self.call("opendir", req, |c| unsafe { f(self.this, c, node, flags, &mut out) })?;
        Ok(opened_from_raw(&out))
    }

    fn readdir(&self, req: &Request, node: NodeId, handle: Handle, cookie: u64, sink: &mut dyn DirSink) -> Result<()> {
        struct Trampoline<'a> {
            fs: &'a LoadedFs,
            sink: &'a mut dyn DirSink,
            panicked: Option<String>,
        }
        unsafe extern "C" fn add(sink: *mut c_void, entry: *const RawDirEntry) -> u8 {
            // SAFETY: `sink` is the Trampoline below, alive for the whole readdir call; the
            // entry is the plugin's, read only as far as its version has it.
            let t = unsafe { &mut *(sink as *mut Trampoline<'_>) };
            let e = unsafe {
                copy_prefix(
                    RawDirEntry { struct_size: 0, ino: 0, kind: 0, reserved: 0, name: RawStr::new(&[]), cookie: 0 },
                    entry,
                )
            };
            let Some(kind) = t.fs.check_dirent("readdir", &e) else { return 1 };
            let name = unsafe { e.name.as_bytes() };
            let (fs_sink, panicked) = (&mut t.sink, &mut t.panicked);
            catch_callback(panicked, 0, || fs_sink.add(&DirEntry { ino: e.ino, kind, name, cookie: e.cookie }) as u8)
        }
        let f = slot!(self.readdir, Err(Errno::EIO.into()));
        let mut t = Trampoline { fs: self, sink, panicked: None };
        let tp = &mut t as *mut Trampoline<'_> as *mut c_void;
        let result = self.call("readdir", req, |c| unsafe { f(self.this, c, node, handle, cookie, tp, add) });
        if let Some(text) = t.panicked {
            tracing::error!(plugin = %self.plugin, op = "readdir", "the host's directory sink panicked: {text}; the call answers EIO");
            return Err(Errno::EIO.into());
        }
        result
    }

    fn readdirplus(
        &self,
        req: &Request,
        node: NodeId,
        handle: Handle,
        cookie: u64,
        sink: &mut dyn DirPlusSink,
    ) -> Result<()> {
        struct Trampoline<'a> {
            fs: &'a LoadedFs,
            sink: &'a mut dyn DirPlusSink,
            panicked: Option<String>,
        }
        unsafe extern "C" fn add(
            sink: *mut c_void,
            dirent: *const RawDirEntry,
            entry: *const RawEntry,
            attr: *const RawAttr,
        ) -> u8 {
            // SAFETY: as in `readdir`; the entry and attributes are the plugin's in-structs.
            let t = unsafe { &mut *(sink as *mut Trampoline<'_>) };
            let d = unsafe {
                copy_prefix(
                    RawDirEntry { struct_size: 0, ino: 0, kind: 0, reserved: 0, name: RawStr::new(&[]), cookie: 0 },
                    dirent,
                )
            };
            let e = unsafe { copy_prefix(RawEntry::default(), entry) };
            let a = unsafe { copy_prefix(RawAttr::default(), attr) };
            let name = unsafe { d.name.as_bytes() };
            let dot = name == b"." || name == b"..";
            let Some(kind) = t.fs.check_dirent("readdirplus", &d) else {
                // The plugin counted a reference for it: give it back.
                if !dot && e.node != 0 {
                    t.fs.forget(e.node, 1);
                }
                return 1;
            };
            let entry = if dot {
                Entry { node: d.ino, attr: Attr { ino: d.ino, kind, ..Attr::default() }, ..Entry::default() }
            } else {
                // check_entry releases the reference itself when it refuses.
                match t.fs.check_entry("readdirplus", &e, &a) {
                    Ok(entry) => entry,
                    Err(_) => return 1,
                }
            };
            let (fs_sink, panicked) = (&mut t.sink, &mut t.panicked);
            catch_callback(panicked, 0, || {
                fs_sink.add(&DirEntry { ino: d.ino, kind, name, cookie: d.cookie }, &entry) as u8
            })
        }
        let f = slot!(self.readdirplus, defaults::readdirplus(self, req, node, handle, cookie, sink));
        let mut t = Trampoline { fs: self, sink, panicked: None };
        let tp = &mut t as *mut Trampoline<'_> as *mut c_void;
        let result = self.call("readdirplus", req, |c| unsafe { f(self.this, c, node, handle, cookie, tp, add) });
        if let Some(text) = t.panicked {
            tracing::error!(plugin = %self.plugin, op = "readdirplus", "the host's directory sink panicked: {text}; the call answers EIO");
            return Err(Errno::EIO.into());
        }
        result
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
        let mut out = RawStatFs { struct_size: std::mem::size_of::<RawStatFs>(), ..Default::default() };
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
        self.check_xattr_len("getxattr", len, raw.len)
    }

    fn listxattr(&self, req: &Request, node: NodeId, buf: &mut [u8]) -> Result<usize> {
        let f = slot!(self.listxattr, Ok(0));
        let mut len = 0usize;
        let raw = RawBuf::new(buf);
        self.call("listxattr", req, |c| unsafe { f(self.this, c, node, raw, &mut len) })?;
        self.check_xattr_len("listxattr", len, raw.len)
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
        self.check_len("copy_file_range", copied, usize::try_from(len).unwrap_or(usize::MAX))
    }

    fn lseek(&self, req: &Request, node: NodeId, handle: Handle, offset: i64, whence: Whence) -> Result<u64> {
        let f = slot!(self.lseek, defaults::lseek(self, req, node, handle, offset, whence));
        let mut pos = 0u64;
        self.call("lseek", req, |c| unsafe { f(self.this, c, node, handle, offset, whence.to_raw(), &mut pos) })?;
        if pos > i64::MAX as u64 {
            return Err(self.bad("lseek", format_args!("returned the offset {pos}, beyond the largest file offset")));
        }
        Ok(pos)
    }

    fn capabilities(&self) -> Option<Capabilities> {
        Some(self.caps)
    }
}

impl LoadedFs {
    /// A backing descriptor handed over by `open` or `create` must be an open descriptor of
    /// this process; anything else is a plugin bug, answered EIO after closing the handle.
    fn check_backing_fd(&self, op: &'static str, node: NodeId, flags: i32, opened: Opened) -> Result<Opened> {
        let Some(fd) = opened.backing_fd else { return Ok(opened) };
        #[cfg(unix)]
        let open = fd >= 0 && unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1;
        #[cfg(not(unix))]
        let open = fd >= 0;
        if open {
            return Ok(opened);
        }
        let _ = self.release(&Request::default(), node, opened.handle, flags, false);
        Err(self.bad(op, format_args!("handed over the backing descriptor {fd}, which is not open")))
    }

    /// An xattr length: with an empty buffer it is the size the value needs, otherwise it
    /// must fit the buffer.
    fn check_xattr_len(&self, op: &'static str, len: usize, cap: usize) -> Result<usize> {
        if cap == 0 { Ok(len) } else { self.check_len(op, len, cap) }
    }
}
