//! plugfs plugin ABI **1.0**, frozen as released. Never edit this file.
//!
//! It is the definition the fixture plugin in `plugin-api/abi-history/fixture-v1_0/` is
//! built against, and `abi.rs`'s tests check that the current ABI only appends to it.
//! ABI 1.1 added `fallocate`, `copy_file_range` and `lseek` at the end of `FsVTable`.
#![allow(clippy::all)]

use std::ffi::c_void;

/// The ABI's major version. Plugins of another major are refused.
pub const ABI_MAJOR: u32 = 1;
/// The ABI's minor version. Plugins with a newer minor are refused; older ones load.
pub const ABI_MINOR: u32 = 0;

/// The magic bytes at the start of `AbiTag`.
pub const MAGIC: [u8; 8] = *b"PLUGFS\0\x01";
/// Name of the exported `AbiTag` static.
pub const TAG_SYMBOL: &str = "PLUGFS_ABI_TAG";
/// Name of the exported entry function.
pub const ENTRY_SYMBOL: &str = "plugfs_plugin_entry";

/// Returned by a call whose plugin code panicked. The message buffer holds the panic text.
pub const STATUS_PANICKED: i32 = -1;

/// Identifies a plugin library and the ABI version it was built against.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbiTag {
    /// Always `MAGIC`.
    pub magic: [u8; 8],
    /// ABI major version.
    pub major: u32,
    /// ABI minor version.
    pub minor: u32,
}

/// The tag of this crate's ABI version.
pub const TAG: AbiTag = AbiTag { magic: MAGIC, major: ABI_MAJOR, minor: ABI_MINOR };

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

/// Per-call context: who is calling, and where to put a message for logs.
#[repr(C)]
#[derive(Debug)]
pub struct CallCtx {
    /// Caller's uid.
    pub uid: u32,
    /// Caller's gid.
    pub gid: u32,
    /// Caller's pid.
    pub pid: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// The message buffer, owned by the host.
    pub msg: RawBuf,
    /// How many bytes of `msg` the plugin wrote.
    pub msg_len: usize,
}

/// A timestamp: seconds and nanoseconds since the Unix epoch.
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

/// `Attr` on the wire. `kind` is the `S_IFMT` bits of a mode.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[allow(missing_docs)]
pub struct RawAttr {
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

/// `Entry` on the wire; TTLs in nanoseconds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[allow(missing_docs)]
pub struct RawEntry {
    pub node: u64,
    pub generation: u64,
    pub attr: RawAttr,
    pub entry_ttl_ns: u64,
    pub attr_ttl_ns: u64,
}

/// `AttrOut` on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[allow(missing_docs)]
pub struct RawAttrOut {
    pub attr: RawAttr,
    pub ttl_ns: u64,
}

/// A time to set: `SET_TIME_OMIT`, `SET_TIME_NOW` or `SET_TIME_AT`.
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

/// Which fields of `RawSetAttr` are set.
#[allow(missing_docs)]
pub mod setattr_valid {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const CTIME: u32 = 1 << 4;
    pub const HANDLE: u32 = 1 << 5;
}

/// `SetAttr` on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[allow(missing_docs)]
pub struct RawSetAttr {
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

/// `Opened` on the wire; `flags` is a set of `OPENED_*` bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[allow(missing_docs)]
pub struct RawOpened {
    pub handle: u64,
    pub flags: u32,
    pub reserved: u32,
}

/// `Opened::direct_io`.
pub const OPENED_DIRECT_IO: u32 = 1;
/// `Opened::keep_cache`.
pub const OPENED_KEEP_CACHE: u32 = 2;
/// `Opened::nonseekable`.
pub const OPENED_NONSEEKABLE: u32 = 4;

/// `StatFs` on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[allow(missing_docs)]
pub struct RawStatFs {
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

/// `DirEntry` on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[allow(missing_docs)]
pub struct RawDirEntry {
    pub ino: u64,
    pub kind: u32,
    pub reserved: u32,
    pub name: RawStr,
    pub cookie: u64,
}

/// The host's directory sink: returns 1 if the entry was taken, 0 if the page is full.
pub type DirAddFn = unsafe extern "C" fn(sink: *mut c_void, entry: *const RawDirEntry) -> u8;

/// `Capabilities` on the wire: a size, then `CAP_*` bits and limits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[allow(missing_docs)]
pub struct RawCapabilities {
    pub size: usize,
    pub flags: u64,
    pub max_name_len: u32,
    pub reserved: u32,
    pub max_file_size: u64,
}

#[allow(missing_docs)]
pub mod cap {
    pub const WRITABLE: u64 = 1 << 0;
    pub const SYMLINKS: u64 = 1 << 1;
    pub const HARD_LINKS: u64 = 1 << 2;
    pub const SPECIAL_FILES: u64 = 1 << 3;
    pub const XATTRS: u64 = 1 << 4;
    pub const PERMISSIONS: u64 = 1 << 5;
    pub const FALLOCATE: u64 = 1 << 6;
    pub const PUNCH_HOLE: u64 = 1 << 7;
    pub const RENAME_NOREPLACE: u64 = 1 << 8;
    pub const RENAME_EXCHANGE: u64 = 1 << 9;
    pub const SPARSE_FILES: u64 = 1 << 10;
    pub const CASE_SENSITIVE: u64 = 1 << 11;
    pub const CASE_PRESERVING: u64 = 1 << 12;
    pub const NANOSECOND_TIMES: u64 = 1 << 13;
}

/// `PluginInfo` on the wire. The strings point into the plugin's static data,
/// which lives as long as the process (libraries are never unloaded).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[allow(missing_docs)]
pub struct RawPluginInfo {
    pub size: usize,
    pub name: RawStr,
    pub version: RawStr,
    pub description: RawStr,
    pub config_help: RawStr,
    pub capabilities: RawCapabilities,
}

/// `MountOptions` on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[allow(missing_docs)]
pub struct RawMountOptions {
    pub size: usize,
    pub read_only: u8,
}

/// An opened filesystem: the plugin's object and its operations.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RawFs {
    /// The plugin's object, passed back as `this` to every operation.
    pub this: *mut c_void,
    /// The operations.
    pub vtable: *const FsVTable,
}

/// What `ENTRY_SYMBOL` returns.
#[repr(C)]
#[allow(missing_docs)]
pub struct PluginDecl {
    /// `size_of::<PluginDecl>()` as the plugin was built.
    pub size: usize,
    /// A copy of the exported `AbiTag`.
    pub tag: AbiTag,
    /// Describes the plugin. The host sets `out.size` to its own `size_of::<RawPluginInfo>()`;
    /// the plugin writes at most that many bytes and sets `size` to what it wrote. The
    /// strings point into the plugin's static data.
    pub info: Option<unsafe extern "C" fn(out: *mut RawPluginInfo)>,
    /// Opens a filesystem from TOML text. On failure the message goes to `ctx.msg` and the
    /// offending config key (a dotted path), if any, to `key` with its length in `key_len`.
    pub open: Option<
        unsafe extern "C" fn(
            ctx: *mut CallCtx,
            config_toml: RawStr,
            options: *const RawMountOptions,
            key: RawBuf,
            key_len: *mut usize,
            out: *mut RawFs,
        ) -> i32,
    >,
}

type This = *const c_void;
type Ctx = *mut CallCtx;

/// The operations of an opened filesystem. Entries are appended, never reordered; see the
/// module docs for versions.
#[repr(C)]
#[allow(missing_docs)]
#[derive(Clone, Copy)]
pub struct FsVTable {
    /// `size_of::<FsVTable>()` as the plugin was built.
    pub size: usize,
    /// Frees the plugin's object. Called once, after the last operation.
    pub destroy: Option<unsafe extern "C" fn(this: *mut c_void)>,
    pub lookup: Option<unsafe extern "C" fn(This, Ctx, parent: u64, name: RawStr, out: *mut RawEntry) -> i32>,
    pub forget: Option<unsafe extern "C" fn(This, Ctx, node: u64, nlookup: u64) -> i32>,
    pub getattr:
        Option<unsafe extern "C" fn(This, Ctx, node: u64, has_handle: u8, handle: u64, out: *mut RawAttrOut) -> i32>,
    pub setattr:
        Option<unsafe extern "C" fn(This, Ctx, node: u64, set: *const RawSetAttr, out: *mut RawAttrOut) -> i32>,
    pub readlink: Option<unsafe extern "C" fn(This, Ctx, node: u64, buf: RawBuf, out_len: *mut usize) -> i32>,
    pub mknod: Option<
        unsafe extern "C" fn(This, Ctx, parent: u64, name: RawStr, mode: u32, rdev: u32, out: *mut RawEntry) -> i32,
    >,
    pub mkdir: Option<unsafe extern "C" fn(This, Ctx, parent: u64, name: RawStr, mode: u32, out: *mut RawEntry) -> i32>,
    pub unlink: Option<unsafe extern "C" fn(This, Ctx, parent: u64, name: RawStr) -> i32>,
    pub rmdir: Option<unsafe extern "C" fn(This, Ctx, parent: u64, name: RawStr) -> i32>,
    pub symlink:
        Option<unsafe extern "C" fn(This, Ctx, parent: u64, name: RawStr, target: RawStr, out: *mut RawEntry) -> i32>,
    pub link: Option<
        unsafe extern "C" fn(This, Ctx, node: u64, new_parent: u64, new_name: RawStr, out: *mut RawEntry) -> i32,
    >,
    pub rename: Option<
        unsafe extern "C" fn(
            This,
            Ctx,
            parent: u64,
            name: RawStr,
            new_parent: u64,
            new_name: RawStr,
            flags: u32,
        ) -> i32,
    >,
    pub open: Option<unsafe extern "C" fn(This, Ctx, node: u64, flags: i32, out: *mut RawOpened) -> i32>,
    pub create: Option<
        unsafe extern "C" fn(
            This,
            Ctx,
            parent: u64,
            name: RawStr,
            mode: u32,
            flags: i32,
            out_entry: *mut RawEntry,
            out_opened: *mut RawOpened,
        ) -> i32,
    >,
    pub read: Option<
        unsafe extern "C" fn(This, Ctx, node: u64, handle: u64, offset: u64, buf: RawBuf, out_len: *mut usize) -> i32,
    >,
    pub write: Option<
        unsafe extern "C" fn(
            This,
            Ctx,
            node: u64,
            handle: u64,
            offset: u64,
            data: RawStr,
            flags: i32,
            out_len: *mut usize,
        ) -> i32,
    >,
    pub flush: Option<unsafe extern "C" fn(This, Ctx, node: u64, handle: u64, lock_owner: u64) -> i32>,
    pub release: Option<unsafe extern "C" fn(This, Ctx, node: u64, handle: u64, flags: i32, flush: u8) -> i32>,
    pub fsync: Option<unsafe extern "C" fn(This, Ctx, node: u64, handle: u64, datasync: u8) -> i32>,
    pub opendir: Option<unsafe extern "C" fn(This, Ctx, node: u64, flags: i32, out: *mut RawOpened) -> i32>,
    pub readdir: Option<
        unsafe extern "C" fn(This, Ctx, node: u64, handle: u64, cookie: u64, sink: *mut c_void, add: DirAddFn) -> i32,
    >,
    pub releasedir: Option<unsafe extern "C" fn(This, Ctx, node: u64, handle: u64) -> i32>,
    pub fsyncdir: Option<unsafe extern "C" fn(This, Ctx, node: u64, handle: u64, datasync: u8) -> i32>,
    pub statfs: Option<unsafe extern "C" fn(This, Ctx, node: u64, out: *mut RawStatFs) -> i32>,
    pub setxattr: Option<unsafe extern "C" fn(This, Ctx, node: u64, name: RawStr, value: RawStr, flags: i32) -> i32>,
    pub getxattr:
        Option<unsafe extern "C" fn(This, Ctx, node: u64, name: RawStr, buf: RawBuf, out_len: *mut usize) -> i32>,
    pub listxattr: Option<unsafe extern "C" fn(This, Ctx, node: u64, buf: RawBuf, out_len: *mut usize) -> i32>,
    pub removexattr: Option<unsafe extern "C" fn(This, Ctx, node: u64, name: RawStr) -> i32>,
}
