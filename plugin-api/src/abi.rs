//! The binary interface between a host and a plugin library.
//!
//! Plugin authors never touch this module: [`crate::export_plugin!`] builds it from a
//! [`crate::Plugin`], and the `host` feature's loader reads it. It is public so that its
//! layout is documented and so that frozen copies of older versions (kept under
//! `plugin-api/abi-history/`) can be checked against it.
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
//! [`PluginDecl`] and [`FsVTable`] are tables of `extern "C"` function pointers that start
//! with their own size in bytes. New entries are only ever appended, in a new minor
//! version. A host copies as many bytes as the plugin's table has into a zeroed table of
//! its own, so entries a plugin is too old to have read as `None` and the host answers
//! them with the POSIX defaults of [`crate::FileSystem`] (see [`crate::defaults`]).
//!
//! Every call returns a status: `0` for success, a positive errno for failure, or
//! [`STATUS_PANICKED`] when the plugin panicked (the host turns it into `EIO` and logs it).
//! A message for logs may be written into the caller's [`CallCtx`] buffer. All buffers are
//! owned by the caller; nothing allocated on one side is freed on the other.
//!
//! # Versions
//!
//! - **1.0**: the initial operation set, up to and including `removexattr`.
//! - **1.1**: adds `fallocate`, `copy_file_range` and `lseek`.
//!
//! A host loads a plugin of the same major whose minor is not newer than its own.

// The operation tables spell out each C signature in place, so a reader can check them
// against the version history without chasing aliases.
#![allow(clippy::type_complexity)]

use std::ffi::c_void;

/// The ABI's major version. Plugins of another major are refused.
pub const ABI_MAJOR: u32 = 1;
/// The ABI's minor version. Plugins with a newer minor are refused; older ones load.
pub const ABI_MINOR: u32 = 1;

/// The magic bytes at the start of [`AbiTag`].
pub const MAGIC: [u8; 8] = *b"PLUGFS\0\x01";
/// Name of the exported [`AbiTag`] static.
pub const TAG_SYMBOL: &str = "PLUGFS_ABI_TAG";
/// Name of the exported entry function.
pub const ENTRY_SYMBOL: &str = "plugfs_plugin_entry";

/// Returned by a call whose plugin code panicked. The message buffer holds the panic text.
pub const STATUS_PANICKED: i32 = -1;

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

/// [`crate::Attr`] on the wire. `kind` is the `S_IFMT` bits of a mode.
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

/// [`crate::Entry`] on the wire; TTLs in nanoseconds.
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

/// [`crate::AttrOut`] on the wire.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[allow(missing_docs)]
pub struct RawAttrOut {
    pub attr: RawAttr,
    pub ttl_ns: u64,
}

/// A time to set: [`SET_TIME_OMIT`], [`SET_TIME_NOW`] or [`SET_TIME_AT`].
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

/// Which fields of [`RawSetAttr`] are set.
#[allow(missing_docs)]
pub mod setattr_valid {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const CTIME: u32 = 1 << 4;
    pub const HANDLE: u32 = 1 << 5;
}

/// [`crate::SetAttr`] on the wire.
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

/// [`crate::Opened`] on the wire; `flags` is a set of `OPENED_*` bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[allow(missing_docs)]
pub struct RawOpened {
    pub handle: u64,
    pub flags: u32,
    pub reserved: u32,
}

/// [`crate::Opened::direct_io`].
pub const OPENED_DIRECT_IO: u32 = 1;
/// [`crate::Opened::keep_cache`].
pub const OPENED_KEEP_CACHE: u32 = 2;
/// [`crate::Opened::nonseekable`].
pub const OPENED_NONSEEKABLE: u32 = 4;

/// [`crate::StatFs`] on the wire.
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

/// [`crate::DirEntry`] on the wire.
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

/// [`crate::Capabilities`] on the wire: a size, then `CAP_*` bits and limits.
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

/// [`crate::PluginInfo`] on the wire. The strings point into the plugin's static data,
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

/// [`crate::MountOptions`] on the wire.
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

/// What [`ENTRY_SYMBOL`] returns.
#[repr(C)]
#[derive(Clone, Copy)]
#[allow(missing_docs)]
pub struct PluginDecl {
    /// `size_of::<PluginDecl>()` as the plugin was built.
    pub size: usize,
    /// A copy of the exported [`AbiTag`].
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
    // ---- ABI 1.1 ----
    pub fallocate:
        Option<unsafe extern "C" fn(This, Ctx, node: u64, handle: u64, offset: u64, length: u64, mode: i32) -> i32>,
    pub copy_file_range: Option<
        unsafe extern "C" fn(
            This,
            Ctx,
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
    pub lseek:
        Option<unsafe extern "C" fn(This, Ctx, node: u64, handle: u64, offset: i64, whence: u32, out: *mut u64) -> i32>,
}

impl FsVTable {
    /// A table with no operations, its size set to this version's.
    pub const EMPTY: FsVTable = FsVTable {
        size: std::mem::size_of::<FsVTable>(),
        destroy: None,
        lookup: None,
        forget: None,
        getattr: None,
        setattr: None,
        readlink: None,
        mknod: None,
        mkdir: None,
        unlink: None,
        rmdir: None,
        symlink: None,
        link: None,
        rename: None,
        open: None,
        create: None,
        read: None,
        write: None,
        flush: None,
        release: None,
        fsync: None,
        opendir: None,
        readdir: None,
        releasedir: None,
        fsyncdir: None,
        statfs: None,
        setxattr: None,
        getxattr: None,
        listxattr: None,
        removexattr: None,
        fallocate: None,
        copy_file_range: None,
        lseek: None,
    };
}

/// Copies the first `size` bytes of a plugin's size-prefixed table into a host table that
/// starts as `base`, so entries the plugin does not have keep `base`'s value (`None`).
///
/// # Safety
/// `src` must point to a readable table whose first field is its size in bytes and which
/// is at least that long.
pub unsafe fn copy_prefix<T: Copy>(base: T, src: *const T) -> T {
    let mut out = base;
    let plugin_size = unsafe { std::ptr::read_unaligned(src as *const usize) };
    let n = plugin_size.min(std::mem::size_of::<T>());
    unsafe { std::ptr::copy_nonoverlapping(src as *const u8, &mut out as *mut T as *mut u8, n) };
    out
}

/// ABI 1.0 as it was released, frozen. The fixture plugin built against it
/// (`tests/fixtures/plugin-abi-1.0`) includes this very file.
#[cfg(test)]
#[path = "../abi-history/v1_0.rs"]
#[allow(dead_code, missing_docs)]
mod v1_0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1_1_only_appends_to_version_1_0() {
        use std::mem::offset_of;
        macro_rules! same_offsets {
            ($new:ty, $old:ty: $($f:ident),*) => {$(
                assert_eq!(offset_of!($new, $f), offset_of!($old, $f), "field {} moved", stringify!($f));
            )*};
        }
        same_offsets!(FsVTable, v1_0::FsVTable: size, destroy, lookup, forget, getattr, setattr, readlink, mknod,
            mkdir, unlink, rmdir, symlink, link, rename, open, create, read, write, flush, release, fsync, opendir,
            readdir, releasedir, fsyncdir, statfs, setxattr, getxattr, listxattr, removexattr);
        assert!(std::mem::size_of::<v1_0::FsVTable>() < std::mem::size_of::<FsVTable>());
        same_offsets!(PluginDecl, v1_0::PluginDecl: size, tag, info, open);
        same_offsets!(RawPluginInfo, v1_0::RawPluginInfo: size, name, version, description, config_help, capabilities);
        same_offsets!(RawEntry, v1_0::RawEntry: node, generation, attr, entry_ttl_ns, attr_ttl_ns);
        same_offsets!(RawAttr, v1_0::RawAttr: ino, size, blocks, atime, mtime, ctime, crtime, kind, perm, nlink,
            uid, gid, rdev, blksize);
        same_offsets!(CallCtx, v1_0::CallCtx: uid, gid, pid, msg, msg_len);
        assert_eq!(std::mem::size_of::<RawAttr>(), std::mem::size_of::<v1_0::RawAttr>());
        assert_eq!(std::mem::size_of::<CallCtx>(), std::mem::size_of::<v1_0::CallCtx>());
        assert_eq!(MAGIC, v1_0::MAGIC);
        assert_eq!(ABI_MAJOR, v1_0::ABI_MAJOR);
    }

    #[test]
    fn copying_a_shorter_table_leaves_newer_entries_empty() {
        unsafe extern "C" fn forget(_: This, _: Ctx, _: u64, _: u64) -> i32 {
            0
        }
        let mut old = FsVTable::EMPTY;
        old.forget = Some(forget);
        old.lseek = Some({
            unsafe extern "C" fn l(_: This, _: Ctx, _: u64, _: u64, _: i64, _: u32, _: *mut u64) -> i32 {
                0
            }
            l
        });
        old.size = std::mem::offset_of!(FsVTable, fallocate);
        let copied = unsafe { copy_prefix(FsVTable::EMPTY, &old) };
        assert!(copied.forget.is_some());
        assert!(copied.lseek.is_none(), "an entry beyond the plugin's size must not be read");
    }
}
