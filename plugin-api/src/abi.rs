//! The binary interface between a host and a plugin library.
//!
//! Plugin authors who write Rust never touch this module: [`crate::export_plugin!`] builds
//! it from a [`crate::Plugin`], and the `host` feature's loader reads it. C authors use the
//! same definitions through `plugin-api/include/plugfs_plugin.h`, which is generated from
//! this file and checked in, so a diff shows every ABI change.
//!
//! # Shape
//!
//! A plugin library exports two symbols:
//!
//! - [`TAG_SYMBOL`]: an [`AbiTag`] in read-only data (magic bytes and the ABI version). The
//!   host reads it *from the file* before loading it, so a wrong or foreign file is refused
//!   without running any of its code.
//! - [`ENTRY_SYMBOL`]: `extern "C" fn() -> *const PluginDecl`.
//!
//! [`PluginDecl`] carries the plugin's two functions (`info`, `open`) and its operations
//! table [`FsVTable`], whose size the host validates at load.
//!
//! # Growing without breaking anyone
//!
//! Every struct that crosses the boundary starts with `struct_size`, the size in bytes of
//! the struct as its *allocator* was built. Fields are only ever appended, in a new minor
//! version. The rules:
//!
//! - **In-structs** (the caller fills them: [`CallCtx`], [`RawSetAttr`],
//!   [`RawMountOptions`], [`RawDirEntry`] handed to the host's sink, [`RawHost`] and
//!   [`RawLogRecord`] since 2.1): the reader copies
//!   `min(struct_size, its own size)` bytes into a zeroed struct of its own, so fields the
//!   writer is too old to know read as zero.
//! - **Out-structs** (the caller allocates them zeroed, with `struct_size` set to its own
//!   size, and the callee fills them: [`RawEntry`], [`RawAttr`], [`RawOpened`],
//!   [`RawStatFs`], [`RawCapabilities`], [`RawPluginInfo`]): the callee writes at most
//!   `struct_size` bytes and sets `struct_size` to how many it wrote.
//! - **Tables** ([`PluginDecl`], [`FsVTable`]): entries are appended; entries a plugin is
//!   too old to have read as `NULL`, and the host answers them with the POSIX defaults of
//!   [`crate::FileSystem`] (see [`crate::defaults`]).
//! - **Value types** ([`AbiTag`], [`RawStr`], [`RawBuf`], [`RawTimestamp`], [`RawSetTime`])
//!   are small, have no size field, and are frozen for the life of the major version.
//!
//! No struct embeds another sized struct, so each can grow on its own.
//!
//! # Statuses
//!
//! Every operation returns `0` for success or an errno for failure, either positive
//! (`EPERM`) or negative (`-EPERM`, the libfuse convention C authors bring), with
//! `1 <= |errno| <= 4095`. [`STATUS_PANICKED`] (`INT32_MIN`, never an errno) means the
//! plugin's code panicked; the message buffer holds the panic text. Any other value is a
//! plugin bug: the host answers `EIO` and logs it. A message for logs may be written into
//! the caller's [`CallCtx`] buffer. All buffers are owned by the caller; nothing allocated
//! on one side is freed on the other.
//!
//! # Trust
//!
//! The host checks every answer before any frontend sees it (`plugfs_plugin_api::host`):
//! statuses, lengths against the buffer given, node ids, file types, directory entry
//! names. A bad answer is `EIO` for that call and an error log line naming the plugin, the
//! operation and the value.
//!
//! # Versions
//!
//! - **2.0**: the first version with sized structs everywhere, the operations table in the
//!   declaration, per-mount capabilities and `readdirplus`. Its C header is frozen as
//!   `plugin-api/abi-history/plugfs_plugin_2.0.h`.
//! - **2.1**: the log bridge: the declaration's `attach_host` entry receives a [`RawHost`]
//!   whose `log` callback carries the plugin's log events ([`RawLogRecord`]) into the
//!   host's log. Frozen as `plugin-api/abi-history/plugfs_plugin_2.1.h`.
//! - **2.2**: negative entries: [`RawCapabilities::negative_ttl_ns`], how long a frontend
//!   may cache a name `lookup` answered `ENOENT` for; [`OPENED_NO_FLUSH`], a handle whose
//!   `flush` does nothing. Frozen as
//!   `plugin-api/abi-history/plugfs_plugin_2.2.h`.
//! - 1.0 and 1.1 (before sized structs) are refused; 1.0 is kept as a fixture
//!   (`plugin-api/abi-history/v1_0.rs`) to prove it.
//!
//! A host loads a plugin of the same major whose minor is not newer than its own.

// The operation tables spell out each C signature in place, so a reader can check them
// against the version history without chasing aliases.
#![allow(clippy::type_complexity)]

use std::ffi::c_void;

/// The ABI's major version. Plugins of another major are refused.
pub const ABI_MAJOR: u32 = 2;
/// The ABI's minor version. Plugins with a newer minor are refused; older ones load.
pub const ABI_MINOR: u32 = 2;

/// The magic bytes at the start of [`AbiTag`].
pub const MAGIC: [u8; 8] = *b"PLUGFS\0\x01";
/// Name of the exported [`AbiTag`] static.
pub const TAG_SYMBOL: &str = "PLUGFS_ABI_TAG";
/// Name of the exported entry function.
pub const ENTRY_SYMBOL: &str = "plugfs_plugin_entry";

/// Returned by a call whose plugin code panicked. The message buffer holds the panic text.
/// It is `INT32_MIN` so that it can never be mistaken for a `-errno`.
pub const STATUS_PANICKED: i32 = i32::MIN;

/// The largest errno a status may carry; anything beyond is a plugin bug (Linux's kernel
/// rejects FUSE replies with an error of 4096 or more without completing the request).
pub const ERRNO_MAX: i32 = 4095;

/// Identifies a plugin library and the ABI version it was built against.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbiTag {
    /// Always [`MAGIC`].
    pub magic: [u8; 8],
    /// ABI major version.
    pub major: u32,
    /// ABI minor version.
    pub minor: u32,
}

/// The tag of this crate's ABI version.
pub const CURRENT_TAG: AbiTag = AbiTag { magic: MAGIC, major: ABI_MAJOR, minor: ABI_MINOR };

/// A borrowed byte string.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawStr {
    /// Start of the bytes (may dangle when `len` is 0).
    pub ptr: *const u8,
    /// Number of bytes.
    pub len: usize,
}

impl RawStr {
    /// Borrows a byte slice.
    pub fn new(bytes: &[u8]) -> Self {
        RawStr { ptr: bytes.as_ptr(), len: bytes.len() }
    }

    /// # Safety
    /// `ptr` must point to `len` readable bytes that outlive `'a`.
    pub unsafe fn as_bytes<'a>(self) -> &'a [u8] {
        if self.len == 0 { &[] } else { unsafe { std::slice::from_raw_parts(self.ptr, self.len) } }
    }
}

/// A borrowed, writable buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawBuf {
    /// Start of the buffer (may dangle when `len` is 0).
    pub ptr: *mut u8,
    /// Capacity in bytes.
    pub len: usize,
}

impl RawBuf {
    /// Borrows a mutable byte slice.
    pub fn new(bytes: &mut [u8]) -> Self {
        RawBuf { ptr: bytes.as_mut_ptr(), len: bytes.len() }
    }

    /// # Safety
    /// `ptr` must point to `len` writable bytes, not aliased, that outlive `'a`.
    pub unsafe fn as_mut<'a>(self) -> &'a mut [u8] {
        if self.len == 0 { &mut [] } else { unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) } }
    }
}

/// Per-call context: who is calling, and where to put a message for logs. An in-struct
/// for the caller's fields, and the plugin writes `msg_len`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CallCtx {
    /// `size_of::<CallCtx>()` as the host was built.
    pub struct_size: usize,
    /// Caller's uid.
    pub uid: u32,
    /// Caller's gid.
    pub gid: u32,
    /// Caller's pid (0 when unknown, e.g. for kernel writeback).
    pub pid: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// The message buffer, owned by the host.
    pub msg: RawBuf,
    /// How many bytes of `msg` the plugin wrote.
    pub msg_len: usize,
}

impl CallCtx {
    /// A context with no caller and no message buffer, its size set to this version's.
    pub const EMPTY: CallCtx = CallCtx {
        struct_size: std::mem::size_of::<CallCtx>(),
        uid: 0,
        gid: 0,
        pid: 0,
        reserved: 0,
        msg: RawBuf { ptr: std::ptr::null_mut(), len: 0 },
        msg_len: 0,
    };
}

/// A timestamp: seconds and nanoseconds since the Unix epoch. A value type.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawTimestamp {
    /// Seconds (negative before 1970).
    pub secs: i64,
    /// Nanoseconds, `0..1e9`.
    pub nanos: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

/// [`crate::Attr`] on the wire (an out-struct). `kind` is the `S_IFMT` bits of a mode,
/// `perm` the lower 12 bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[allow(missing_docs)]
pub struct RawAttr {
    pub struct_size: usize,
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: RawTimestamp,
    pub mtime: RawTimestamp,
    pub ctime: RawTimestamp,
    pub crtime: RawTimestamp,
    pub kind: u32,
    pub perm: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
    pub reserved: u32,
}

/// [`crate::Entry`] on the wire, without its attributes (an out-struct; the attributes
/// come in a [`RawAttr`] beside it). TTLs in nanoseconds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[allow(missing_docs)]
pub struct RawEntry {
    pub struct_size: usize,
    pub node: u64,
    pub generation: u64,
    pub entry_ttl_ns: u64,
    pub attr_ttl_ns: u64,
}

/// A time to set: [`SET_TIME_OMIT`], [`SET_TIME_NOW`] or [`SET_TIME_AT`]. A value type.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[allow(missing_docs)]
pub struct RawSetTime {
    pub how: u32,
    pub reserved: u32,
    pub at: RawTimestamp,
}

/// Leave the time as it is.
pub const SET_TIME_OMIT: u32 = 0;
/// Set the time to now.
pub const SET_TIME_NOW: u32 = 1;
/// Set the time to `at`.
pub const SET_TIME_AT: u32 = 2;

/// [`RawSetAttr::valid`]: `mode` is set.
pub const SETATTR_MODE: u32 = 1 << 0;
/// [`RawSetAttr::valid`]: `uid` is set.
pub const SETATTR_UID: u32 = 1 << 1;
/// [`RawSetAttr::valid`]: `gid` is set.
pub const SETATTR_GID: u32 = 1 << 2;
/// [`RawSetAttr::valid`]: `size` is set (truncate or extend).
pub const SETATTR_SIZE: u32 = 1 << 3;
/// [`RawSetAttr::valid`]: `ctime` is set.
pub const SETATTR_CTIME: u32 = 1 << 4;
/// [`RawSetAttr::valid`]: `handle` is the open file the change comes through.
pub const SETATTR_HANDLE: u32 = 1 << 5;

/// [`crate::SetAttr`] on the wire (an in-struct).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[allow(missing_docs)]
pub struct RawSetAttr {
    pub struct_size: usize,
    pub valid: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime: RawSetTime,
    pub mtime: RawSetTime,
    pub ctime: RawTimestamp,
    pub handle: u64,
}

/// [`crate::Opened`] on the wire (an out-struct); `flags` is a set of `OPENED_*` bits.
/// `backing_fd` counts only with [`OPENED_BACKING_FD`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[allow(missing_docs)]
pub struct RawOpened {
    pub struct_size: usize,
    pub handle: u64,
    pub flags: u32,
    pub backing_fd: i32,
}

/// [`crate::Opened::direct_io`].
pub const OPENED_DIRECT_IO: u32 = 1;
/// [`crate::Opened::keep_cache`].
pub const OPENED_KEEP_CACHE: u32 = 2;
/// [`crate::Opened::nonseekable`].
pub const OPENED_NONSEEKABLE: u32 = 4;
/// [`crate::Opened::backing_fd`]: `backing_fd` is a descriptor of a local file holding
/// exactly this file's bytes, which the plugin keeps open until the handle is released.
pub const OPENED_BACKING_FD: u32 = 8;
/// [`crate::Opened::no_flush`] (since 2.2): the plugin's `flush` of this handle does
/// nothing, so the frontend may spare the kernel the request on every `close(2)`.
pub const OPENED_NO_FLUSH: u32 = 16;

/// [`crate::StatFs`] on the wire (an out-struct).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[allow(missing_docs)]
pub struct RawStatFs {
    pub struct_size: usize,
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
    pub reserved: u32,
}

/// [`crate::DirEntry`] on the wire (an in-struct: the plugin fills it and hands it to the
/// host's sink).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[allow(missing_docs)]
pub struct RawDirEntry {
    pub struct_size: usize,
    pub ino: u64,
    pub kind: u32,
    pub reserved: u32,
    pub name: RawStr,
    pub cookie: u64,
}

/// The host's directory sink for `readdir`: returns 1 if the entry was taken, 0 if the page
/// is full (then the plugin stops and returns 0).
pub type DirAddFn = unsafe extern "C" fn(sink: *mut c_void, entry: *const RawDirEntry) -> u8;

/// The host's directory sink for `readdirplus`: like [`DirAddFn`], with the entry's lookup
/// result. The plugin counts one lookup reference on `entry.node` for each call that
/// returns 1, none for a call that returns 0, and none for `.` and `..`.
pub type DirPlusAddFn = unsafe extern "C" fn(
    sink: *mut c_void,
    dirent: *const RawDirEntry,
    entry: *const RawEntry,
    attr: *const RawAttr,
) -> u8;

/// [`crate::Capabilities`] on the wire (an out-struct): `CAP_*` bits and limits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[allow(missing_docs)]
pub struct RawCapabilities {
    pub struct_size: usize,
    pub flags: u64,
    pub max_name_len: u32,
    pub reserved: u32,
    pub max_file_size: u64,
    /// Since 2.2: nanoseconds a frontend may remember that a name does not exist after
    /// `lookup` answered `ENOENT` for it (a negative entry); 0, as a 2.0 or 2.1 plugin
    /// leaves it, caches nothing.
    pub negative_ttl_ns: u64,
}

/// Files can be created and changed.
pub const CAP_WRITABLE: u64 = 1 << 0;
/// Symbolic links.
pub const CAP_SYMLINKS: u64 = 1 << 1;
/// Hard links.
pub const CAP_HARD_LINKS: u64 = 1 << 2;
/// Devices, FIFOs and sockets.
pub const CAP_SPECIAL_FILES: u64 = 1 << 3;
/// Extended attributes.
pub const CAP_XATTRS: u64 = 1 << 4;
/// Modes and owners are stored and reported.
pub const CAP_PERMISSIONS: u64 = 1 << 5;
/// `fallocate` reserving space.
pub const CAP_FALLOCATE: u64 = 1 << 6;
/// `fallocate` punching holes.
pub const CAP_PUNCH_HOLE: u64 = 1 << 7;
/// `RENAME_NOREPLACE`.
pub const CAP_RENAME_NOREPLACE: u64 = 1 << 8;
/// `RENAME_EXCHANGE`.
pub const CAP_RENAME_EXCHANGE: u64 = 1 << 9;
/// Holes read as zeros without taking space.
pub const CAP_SPARSE_FILES: u64 = 1 << 10;
/// Names that differ only in case are different files.
pub const CAP_CASE_SENSITIVE: u64 = 1 << 11;
/// The case a name was created with is kept.
pub const CAP_CASE_PRESERVING: u64 = 1 << 12;
/// Times are kept to the nanosecond.
pub const CAP_NANOSECOND_TIMES: u64 = 1 << 13;
/// The plugin checks permissions itself, as the caller, on every operation, so a mount may
/// run without the kernel's `default_permissions`.
pub const CAP_CHECKS_PERMISSIONS: u64 = 1 << 14;
/// `open` may hand over a backing file descriptor ([`OPENED_BACKING_FD`]) for the kernel's
/// FUSE passthrough.
pub const CAP_BACKING_FILES: u64 = 1 << 15;
/// The declaration's `format` creates new images.
pub const CAP_FORMAT: u64 = 1 << 16;

/// [`crate::PluginInfo`] on the wire (an out-struct). The strings point into the plugin's
/// static data, which lives as long as the process (libraries are never unloaded).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[allow(missing_docs)]
pub struct RawPluginInfo {
    pub struct_size: usize,
    pub name: RawStr,
    pub version: RawStr,
    pub description: RawStr,
    pub config_help: RawStr,
}

/// [`RawMountOptions::flags`]: the mount is read-only.
pub const MOUNT_READ_ONLY: u64 = 1;

/// [`crate::MountOptions`] on the wire (an in-struct).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[allow(missing_docs)]
pub struct RawMountOptions {
    pub struct_size: usize,
    pub flags: u64,
}

/// Log levels, as [`RawLogRecord::level`] and [`RawHost::log_max_level`] use them (since
/// 2.1): `tracing`'s levels, most severe first. [`LOG_OFF`] is only a maximum: nothing.
pub const LOG_OFF: u32 = 0;
/// Something failed.
pub const LOG_ERROR: u32 = 1;
/// Something is wrong but the call goes on.
pub const LOG_WARN: u32 = 2;
/// Normal operation worth a line.
pub const LOG_INFO: u32 = 3;
/// Detail for debugging.
pub const LOG_DEBUG: u32 = 4;
/// Very verbose detail.
pub const LOG_TRACE: u32 = 5;

/// One log event of a plugin, handed to the host's [`RawHost::log`] (an in-struct, since 2.1:
/// the host reads it as far as its `struct_size` says). Strings are borrowed for the
/// call only and need not be NUL-terminated; the host replaces invalid UTF-8.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawLogRecord {
    /// `size_of::<RawLogRecord>()` as the plugin was built.
    pub struct_size: usize,
    /// One of `LOG_ERROR..=LOG_TRACE`; anything else is dropped.
    pub level: u32,
    /// The line in `file`, 0 when unknown.
    pub line: u32,
    /// Where the event comes from, for filtering (`RUST_LOG=target=level`): a Rust
    /// plugin's module path such as `plugfs_wfs::engine`, by `tracing`'s convention. Empty
    /// means the plugin's name.
    pub target: RawStr,
    /// The text: the event's message followed by its fields as `name=value`. Empty when
    /// the plugin asks [`RawHost::log_enabled`].
    pub message: RawStr,
    /// The module the event is in (may be empty).
    pub module_path: RawStr,
    /// The source file the event is in (may be empty).
    pub file: RawStr,
}

/// What the host offers a plugin library, handed to [`PluginDecl::attach_host`] (an
/// in-struct, since 2.1). Every entry may be `NULL`: the host offers nothing there.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawHost {
    /// `size_of::<RawHost>()` as the host was built.
    pub struct_size: usize,
    /// The host's pointer for this library, passed back to every callback; valid for the
    /// life of the process.
    pub host_data: *mut c_void,
    /// The host's log sink: re-emits `record` into the host's log, naming the plugin.
    /// Callable from any thread, at any time after `attach_host`, concurrently; it never
    /// unwinds into the plugin.
    pub log: Option<unsafe extern "C" fn(host_data: *mut c_void, record: *const RawLogRecord)>,
    /// Whether the host would log events of a call site: `record` has the site's level,
    /// target, module, file and line, and an empty message; returns 1 or 0. The answer is
    /// stable for a call site while the host runs, so a plugin asks once per site. Without
    /// it, every event up to `log_max_level` is worth sending.
    pub log_enabled: Option<unsafe extern "C" fn(host_data: *mut c_void, record: *const RawLogRecord) -> u8>,
    /// The most verbose level the host's log filter can enable ([`LOG_OFF`]..=[`LOG_TRACE`]):
    /// events beyond it are dropped, so a plugin need not even format them.
    pub log_max_level: u32,
    /// Reserved, zero.
    pub reserved: u32,
}

impl RawHost {
    /// Offers nothing, its size set to this version's.
    pub const EMPTY: RawHost = RawHost {
        struct_size: std::mem::size_of::<RawHost>(),
        host_data: std::ptr::null_mut(),
        log: None,
        log_enabled: None,
        log_max_level: LOG_OFF,
        reserved: 0,
    };
}

impl RawLogRecord {
    /// An empty record, its size set to this version's.
    pub const EMPTY: RawLogRecord = RawLogRecord {
        struct_size: std::mem::size_of::<RawLogRecord>(),
        level: LOG_OFF,
        line: 0,
        target: RawStr { ptr: std::ptr::null(), len: 0 },
        message: RawStr { ptr: std::ptr::null(), len: 0 },
        module_path: RawStr { ptr: std::ptr::null(), len: 0 },
        file: RawStr { ptr: std::ptr::null(), len: 0 },
    };
}

// SAFETY: `host_data` is the host's, which promises its callbacks are thread-safe.
unsafe impl Send for RawHost {}
unsafe impl Sync for RawHost {}

/// What [`ENTRY_SYMBOL`] returns: a table in the plugin's static data.
#[repr(C)]
#[derive(Clone, Copy)]
#[allow(missing_docs)]
pub struct PluginDecl {
    /// `size_of::<PluginDecl>()` as the plugin was built.
    pub struct_size: usize,
    /// A copy of the exported [`AbiTag`].
    pub tag: AbiTag,
    /// Describes the plugin: fills `out` and the capabilities every mount of it has unless
    /// the opened filesystem's `capabilities` operation says otherwise.
    pub info: Option<unsafe extern "C" fn(out: *mut RawPluginInfo, caps: *mut RawCapabilities)>,
    /// Opens a filesystem from TOML text and stores the plugin's object (passed back as
    /// `object` to every operation) in `out_object`. On failure the message goes to `ctx.msg`
    /// and the offending config key (a dotted path), if any, to `key` with its length in
    /// `key_len`.
    pub open: Option<
        unsafe extern "C" fn(
            ctx: *mut CallCtx,
            config_toml: RawStr,
            options: *const RawMountOptions,
            key: RawBuf,
            key_len: *mut usize,
            out_object: *mut *mut c_void,
        ) -> i32,
    >,
    /// The operations of every filesystem this plugin opens. Validated at load.
    pub ops: *const FsVTable,
    /// Creates a new, empty image of `size` bytes where the config text says (for plugins
    /// that own an image format, with [`CAP_FORMAT`]). Errors as for `open`.
    pub format: Option<
        unsafe extern "C" fn(
            ctx: *mut CallCtx,
            config_toml: RawStr,
            size: u64,
            key: RawBuf,
            key_len: *mut usize,
        ) -> i32,
    >,
    /// Since 2.1: receives what the host offers (its log sink). A host of 2.1 or later calls
    /// it once per load of the library, after `info` and before any `open` or `format`; a
    /// library loaded twice is attached twice, and the later call wins. `host` is valid for
    /// the call only: copy it (as far as its `struct_size` says). An older host never calls
    /// it, and the plugin's log lines then go nowhere.
    pub attach_host: Option<unsafe extern "C" fn(host: *const RawHost)>,
}

/// The size of the 2.0 declaration: the smallest a 2.x host accepts. Entries beyond a
/// plugin's size read as `NULL`.
pub const PLUGIN_DECL_SIZE_2_0: usize = std::mem::offset_of!(PluginDecl, attach_host);

// SAFETY: a declaration is immutable static data: function pointers and a pointer to
// another static table.
unsafe impl Sync for PluginDecl {}

/// The operations of an opened filesystem. Entries are appended, never reordered; see the
/// module docs for versions. `object` is what `open` made.
#[repr(C)]
#[allow(missing_docs)]
#[derive(Clone, Copy)]
pub struct FsVTable {
    /// `size_of::<FsVTable>()` as the plugin was built.
    pub struct_size: usize,
    /// Frees the plugin's object. Called once, after the last operation.
    pub destroy: Option<unsafe extern "C" fn(object: *mut c_void)>,
    pub lookup: Option<
        unsafe extern "C" fn(
            object: *const c_void,
            ctx: *mut CallCtx,
            parent: u64,
            name: RawStr,
            out_entry: *mut RawEntry,
            out_attr: *mut RawAttr,
        ) -> i32,
    >,
    pub forget: Option<unsafe extern "C" fn(object: *const c_void, ctx: *mut CallCtx, node: u64, nlookup: u64) -> i32>,
    pub getattr: Option<
        unsafe extern "C" fn(
            object: *const c_void,
            ctx: *mut CallCtx,
            node: u64,
            has_handle: u8,
            handle: u64,
            out_attr: *mut RawAttr,
            out_ttl_ns: *mut u64,
        ) -> i32,
    >,
    pub setattr: Option<
        unsafe extern "C" fn(
            object: *const c_void,
            ctx: *mut CallCtx,
            node: u64,
            set: *const RawSetAttr,
            out_attr: *mut RawAttr,
            out_ttl_ns: *mut u64,
        ) -> i32,
    >,
    pub readlink: Option<
        unsafe extern "C" fn(
            object: *const c_void,
            ctx: *mut CallCtx,
            node: u64,
            buf: RawBuf,
            out_len: *mut usize,
        ) -> i32,
    >,
    pub mknod: Option<
        unsafe extern "C" fn(
            object: *const c_void,
            ctx: *mut CallCtx,
            parent: u64,
            name: RawStr,
            mode: u32,
            rdev: u32,
            out_entry: *mut RawEntry,
            out_attr: *mut RawAttr,
        ) -> i32,
    >,
    pub mkdir: Option<
        unsafe extern "C" fn(
            object: *const c_void,
            ctx: *mut CallCtx,
            parent: u64,
            name: RawStr,
            mode: u32,
            out_entry: *mut RawEntry,
            out_attr: *mut RawAttr,
        ) -> i32,
    >,
    pub unlink:
        Option<unsafe extern "C" fn(object: *const c_void, ctx: *mut CallCtx, parent: u64, name: RawStr) -> i32>,
    pub rmdir: Option<unsafe extern "C" fn(object: *const c_void, ctx: *mut CallCtx, parent: u64, name: RawStr) -> i32>,
    pub symlink: Option<
        unsafe extern "C" fn(
            object: *const c_void,
            ctx: *mut CallCtx,
            parent: u64,
            name: RawStr,
            target: RawStr,
            out_entry: *mut RawEntry,
            out_attr: *mut RawAttr,
        ) -> i32,
    >,
    pub link: Option<
        unsafe extern "C" fn(
            object: *const c_void,
            ctx: *mut CallCtx,
            node: u64,
            new_parent: u64,
            new_name: RawStr,
            out_entry: *mut RawEntry,
            out_attr: *mut RawAttr,
        ) -> i32,
    >,
    pub rename: Option<
        unsafe extern "C" fn(
            object: *const c_void,
            ctx: *mut CallCtx,
            parent: u64,
            name: RawStr,
            new_parent: u64,
            new_name: RawStr,
            flags: u32,
        ) -> i32,
    >,
    pub open: Option<
        unsafe extern "C" fn(
            object: *const c_void,
            ctx: *mut CallCtx,
            node: u64,
            flags: i32,
            out: *mut RawOpened,
        ) -> i32,
    >,
    pub create: Option<
        unsafe extern "C" fn(
            object: *const c_void,
            ctx: *mut CallCtx,
            parent: u64,
            name: RawStr,
            mode: u32,
            flags: i32,
            out_entry: *mut RawEntry,
            out_attr: *mut RawAttr,
            out_opened: *mut RawOpened,
        ) -> i32,
    >,
    pub read: Option<
        unsafe extern "C" fn(
            object: *const c_void,
            ctx: *mut CallCtx,
            node: u64,
            handle: u64,
            offset: u64,
            buf: RawBuf,
            out_len: *mut usize,
        ) -> i32,
    >,
    pub write: Option<
        unsafe extern "C" fn(
            object: *const c_void,
            ctx: *mut CallCtx,
            node: u64,
            handle: u64,
            offset: u64,
            data: RawStr,
            flags: i32,
            out_len: *mut usize,
        ) -> i32,
    >,
    pub flush: Option<
        unsafe extern "C" fn(object: *const c_void, ctx: *mut CallCtx, node: u64, handle: u64, lock_owner: u64) -> i32,
    >,
    pub release: Option<
        unsafe extern "C" fn(
            object: *const c_void,
            ctx: *mut CallCtx,
            node: u64,
            handle: u64,
            flags: i32,
            flush: u8,
        ) -> i32,
    >,
    pub fsync: Option<
        unsafe extern "C" fn(object: *const c_void, ctx: *mut CallCtx, node: u64, handle: u64, datasync: u8) -> i32,
    >,
    pub opendir: Option<
        unsafe extern "C" fn(
            object: *const c_void,
            ctx: *mut CallCtx,
            node: u64,
            flags: i32,
            out: *mut RawOpened,
        ) -> i32,
    >,
    pub readdir: Option<
        unsafe extern "C" fn(
            object: *const c_void,
            ctx: *mut CallCtx,
            node: u64,
            handle: u64,
            cookie: u64,
            sink: *mut c_void,
            add: DirAddFn,
        ) -> i32,
    >,
    pub releasedir:
        Option<unsafe extern "C" fn(object: *const c_void, ctx: *mut CallCtx, node: u64, handle: u64) -> i32>,
    pub fsyncdir: Option<
        unsafe extern "C" fn(object: *const c_void, ctx: *mut CallCtx, node: u64, handle: u64, datasync: u8) -> i32,
    >,
    pub statfs:
        Option<unsafe extern "C" fn(object: *const c_void, ctx: *mut CallCtx, node: u64, out: *mut RawStatFs) -> i32>,
    pub setxattr: Option<
        unsafe extern "C" fn(
            object: *const c_void,
            ctx: *mut CallCtx,
            node: u64,
            name: RawStr,
            value: RawStr,
            flags: i32,
        ) -> i32,
    >,
    pub getxattr: Option<
        unsafe extern "C" fn(
            object: *const c_void,
            ctx: *mut CallCtx,
            node: u64,
            name: RawStr,
            buf: RawBuf,
            out_len: *mut usize,
        ) -> i32,
    >,
    pub listxattr: Option<
        unsafe extern "C" fn(
            object: *const c_void,
            ctx: *mut CallCtx,
            node: u64,
            buf: RawBuf,
            out_len: *mut usize,
        ) -> i32,
    >,
    pub removexattr:
        Option<unsafe extern "C" fn(object: *const c_void, ctx: *mut CallCtx, node: u64, name: RawStr) -> i32>,
    pub fallocate: Option<
        unsafe extern "C" fn(
            object: *const c_void,
            ctx: *mut CallCtx,
            node: u64,
            handle: u64,
            offset: u64,
            length: u64,
            mode: i32,
        ) -> i32,
    >,
    pub copy_file_range: Option<
        unsafe extern "C" fn(
            object: *const c_void,
            ctx: *mut CallCtx,
            node_in: u64,
            handle_in: u64,
            offset_in: u64,
            node_out: u64,
            handle_out: u64,
            offset_out: u64,
            len: u64,
            flags: u32,
            out_len: *mut usize,
        ) -> i32,
    >,
    pub lseek: Option<
        unsafe extern "C" fn(
            object: *const c_void,
            ctx: *mut CallCtx,
            node: u64,
            handle: u64,
            offset: i64,
            whence: u32,
            out: *mut u64,
        ) -> i32,
    >,
    /// Lists a directory with each entry's lookup result, in one pass where the plugin can
    /// (see [`DirPlusAddFn`] for the reference counting). Without it the host lists with
    /// `readdir` and looks entries up one by one, no more than the reply can carry.
    pub readdirplus: Option<
        unsafe extern "C" fn(
            object: *const c_void,
            ctx: *mut CallCtx,
            node: u64,
            handle: u64,
            cookie: u64,
            sink: *mut c_void,
            add: DirPlusAddFn,
        ) -> i32,
    >,
    /// This mount's capabilities, where they depend on the backing store (probed at open).
    /// Without it, or when it fails, the plugin's declared capabilities apply.
    pub capabilities:
        Option<unsafe extern "C" fn(object: *const c_void, ctx: *mut CallCtx, out: *mut RawCapabilities) -> i32>,
}

/// The size of the 2.0 operations table: the smallest a 2.x host accepts.
pub const FS_VTABLE_SIZE_2_0: usize = std::mem::size_of::<FsVTable>();

/// The table size a plugin of minor version `minor` must declare, or `None` for a minor
/// this host does not know (newer than its own).
pub fn vtable_size_for_minor(minor: u32) -> Option<usize> {
    match minor {
        // 2.1 and 2.2 added no operation.
        0..=2 => Some(FS_VTABLE_SIZE_2_0),
        _ => None,
    }
}

impl FsVTable {
    /// A table with no operations, its size set to this version's.
    pub const EMPTY: FsVTable = {
        // SAFETY: every entry is an `Option` of a function pointer, for which all-zero
        // bytes are `None`; so a new entry needs no line here.
        let mut table: FsVTable = unsafe { std::mem::zeroed() };
        table.struct_size = std::mem::size_of::<FsVTable>();
        table
    };
}

/// Reads an in-struct or a table the other side allocated: copies the first
/// `min(struct_size, size_of::<T>())` bytes of `src` over `base`, so fields the writer is
/// too old to have keep `base`'s value (zero, `None`).
///
/// # Safety
/// `src` must point to a readable struct whose first field is its size in bytes and which
/// is at least that long.
pub unsafe fn copy_prefix<T: Copy>(base: T, src: *const T) -> T {
    let mut out = base;
    let plugin_size = unsafe { std::ptr::read_unaligned(src as *const usize) };
    let n = plugin_size.min(std::mem::size_of::<T>());
    unsafe { std::ptr::copy_nonoverlapping(src as *const u8, &mut out as *mut T as *mut u8, n) };
    out
}

/// Fills an out-struct the other side allocated: writes at most its `struct_size` bytes of
/// `value` and sets its `struct_size` to the number written.
///
/// # Safety
/// `dst` must point to a writable struct whose first field is its capacity in bytes and
/// which is at least that long; `T` must start with a `usize` size field.
pub unsafe fn write_out<T: Copy>(dst: *mut T, value: &T) {
    let cap = unsafe { std::ptr::read_unaligned(dst as *const usize) };
    let n = cap.min(std::mem::size_of::<T>());
    if n < std::mem::size_of::<usize>() {
        return;
    }
    unsafe {
        std::ptr::copy_nonoverlapping(value as *const T as *const u8, dst as *mut u8, n);
        std::ptr::write_unaligned(dst as *mut usize, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copying_a_shorter_table_leaves_newer_entries_empty() {
        unsafe extern "C" fn forget(_: *const c_void, _: *mut CallCtx, _: u64, _: u64) -> i32 {
            0
        }
        unsafe extern "C" fn caps(_: *const c_void, _: *mut CallCtx, _: *mut RawCapabilities) -> i32 {
            0
        }
        let mut old = FsVTable::EMPTY;
        old.forget = Some(forget);
        old.capabilities = Some(caps);
        old.struct_size = std::mem::offset_of!(FsVTable, readdirplus);
        let copied = unsafe { copy_prefix(FsVTable::EMPTY, &old) };
        assert!(copied.forget.is_some());
        assert!(copied.capabilities.is_none(), "an entry beyond the plugin's size must not be read");
    }

    #[test]
    fn an_out_struct_is_written_only_as_far_as_its_allocator_knows() {
        // A host of an older minor whose RawStatFs ended before `bsize`.
        let old_size = std::mem::offset_of!(RawStatFs, bsize);
        let mut dst = RawStatFs { struct_size: old_size, bsize: 7, ..RawStatFs::default() };
        let value =
            RawStatFs { struct_size: std::mem::size_of::<RawStatFs>(), blocks: 9, bsize: 4096, ..Default::default() };
        unsafe { write_out(&mut dst, &value) };
        assert_eq!(dst.blocks, 9);
        assert_eq!(dst.bsize, 7, "a field beyond the allocator's size must not be written");
        assert_eq!(dst.struct_size, old_size);

        // A newer allocator: only our fields are written, and the size says so.
        let mut dst = RawStatFs { struct_size: 1 << 20, ..RawStatFs::default() };
        unsafe { write_out(&mut dst, &value) };
        assert_eq!(dst.struct_size, std::mem::size_of::<RawStatFs>());
        assert_eq!(dst.bsize, 4096);
    }

    #[test]
    fn capabilities_of_a_2_1_plugin_have_no_negative_ttl_and_a_2_1_host_gets_none() {
        let size_2_1 = std::mem::offset_of!(RawCapabilities, negative_ttl_ns);
        assert_eq!(size_2_1, 32, "2.1's PlugfsCapabilities ended here");
        // A 2.1 plugin in this host: it writes its 32 bytes; the rest stays as allocated.
        let mut dst = RawCapabilities { struct_size: std::mem::size_of::<RawCapabilities>(), ..Default::default() };
        let old = RawCapabilities { struct_size: size_2_1, flags: CAP_WRITABLE, ..Default::default() };
        unsafe {
            std::ptr::copy_nonoverlapping(&old as *const _ as *const u8, &mut dst as *mut _ as *mut u8, size_2_1)
        };
        assert_eq!((dst.flags, dst.negative_ttl_ns), (CAP_WRITABLE, 0));
        // This plugin in a host that allocated 2.1's size: the TTL is not written.
        let mut dst = RawCapabilities { struct_size: size_2_1, negative_ttl_ns: 7, ..Default::default() };
        let new = RawCapabilities {
            struct_size: std::mem::size_of::<RawCapabilities>(),
            flags: CAP_WRITABLE,
            negative_ttl_ns: 3_600_000_000_000,
            ..Default::default()
        };
        unsafe { write_out(&mut dst, &new) };
        assert_eq!((dst.struct_size, dst.flags, dst.negative_ttl_ns), (size_2_1, CAP_WRITABLE, 7));
    }

    // The panic status can never be mistaken for a `-errno`.
    const _: () = assert!(STATUS_PANICKED < -ERRNO_MAX);
}
