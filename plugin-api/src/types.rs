//! The plain data types that [`crate::FileSystem`] operations take and return.
//!
//! These are ordinary Rust types chosen for the plugin author's comfort; the `#[repr(C)]`
//! layout that actually crosses the library boundary lives in [`crate::abi`], and the export
//! macro converts between the two.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A node (inode) id. Ids are chosen by the plugin; [`ROOT_ID`] is the root directory.
/// An id stays valid while the host holds lookup references on it (see
/// [`crate::FileSystem::forget`]).
pub type NodeId = u64;

/// The node id of the root directory.
pub const ROOT_ID: NodeId = 1;

/// An open file or directory handle, chosen by the plugin in `open`/`opendir`/`create`.
pub type Handle = u64;

/// Who is asking: the calling process's credentials, as the kernel reported them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// Effective user id of the caller.
    pub uid: u32,
    /// Effective group id of the caller.
    pub gid: u32,
    /// Process id of the caller (0 when unknown, e.g. for kernel writeback).
    pub pid: u32,
}

/// A point in time with nanosecond precision, as seconds and nanoseconds since the Unix
/// epoch. Negative seconds are times before 1970.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Whole seconds since 1970-01-01T00:00:00Z.
    pub secs: i64,
    /// Nanoseconds within the second, `0..1_000_000_000`.
    pub nanos: u32,
}

impl Timestamp {
    /// The Unix epoch.
    pub const EPOCH: Timestamp = Timestamp { secs: 0, nanos: 0 };

    /// A timestamp from seconds and nanoseconds; nanoseconds beyond a second carry over.
    pub const fn new(secs: i64, nanos: u32) -> Self {
        Timestamp { secs: secs + (nanos / 1_000_000_000) as i64, nanos: nanos % 1_000_000_000 }
    }

    /// The current time.
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp { secs: d.as_secs() as i64, nanos: d.subsec_nanos() },
            Err(e) => {
                let d = e.duration();
                if d.subsec_nanos() == 0 {
                    Timestamp { secs: -(d.as_secs() as i64), nanos: 0 }
                } else {
                    Timestamp { secs: -(d.as_secs() as i64) - 1, nanos: 1_000_000_000 - d.subsec_nanos() }
                }
            }
        }
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> Self {
        if t.secs >= 0 {
            UNIX_EPOCH + Duration::new(t.secs as u64, t.nanos)
        } else {
            UNIX_EPOCH - Duration::from_secs(t.secs.unsigned_abs()) + Duration::from_nanos(t.nanos as u64)
        }
    }
}

/// The type of a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// A regular file.
    #[default]
    File,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// A block device node.
    BlockDevice,
    /// A character device node.
    CharDevice,
    /// A named pipe (FIFO).
    Fifo,
    /// A Unix domain socket.
    Socket,
}

impl FileKind {
    /// The kind encoded in the `S_IFMT` bits of a POSIX mode, if any.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        Some(match mode & 0o170000 {
            0o100000 => FileKind::File,
            0o040000 => FileKind::Directory,
            0o120000 => FileKind::Symlink,
            0o060000 => FileKind::BlockDevice,
            0o020000 => FileKind::CharDevice,
            0o010000 => FileKind::Fifo,
            0o140000 => FileKind::Socket,
            _ => return None,
        })
    }

    /// The `S_IFMT` bits for this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileKind::File => 0o100000,
            FileKind::Directory => 0o040000,
            FileKind::Symlink => 0o120000,
            FileKind::BlockDevice => 0o060000,
            FileKind::CharDevice => 0o020000,
            FileKind::Fifo => 0o010000,
            FileKind::Socket => 0o140000,
        }
    }
}

/// The attributes of a node, as `stat(2)` shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attr {
    /// The inode number `stat` reports. It need not equal the [`NodeId`]; a plugin that
    /// serves an existing filesystem should report that filesystem's inode numbers.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Allocated size in 512-byte blocks.
    pub blocks: u64,
    /// Last access time.
    pub atime: Timestamp,
    /// Last data modification time.
    pub mtime: Timestamp,
    /// Last status change time.
    pub ctime: Timestamp,
    /// Creation time (shown on platforms that have one).
    pub crtime: Timestamp,
    /// The node type.
    pub kind: FileKind,
    /// Permission bits, including setuid, setgid and sticky (`0o7777`).
    pub perm: u16,
    /// Number of hard links.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number, for device nodes.
    pub rdev: u32,
    /// Preferred IO block size.
    pub blksize: u32,
}

/// The answer to a name lookup or to an operation that creates a node. Each such answer
/// counts as one lookup reference on `node`, which the host returns with
/// [`crate::FileSystem::forget`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// The node's id.
    pub node: NodeId,
    /// Generation number: must differ between two nodes that ever had the same id while
    /// the filesystem was mounted (0 if ids are never reused).
    pub generation: u64,
    /// The node's attributes.
    pub attr: Attr,
    /// How long the kernel may cache the name -> node mapping.
    pub entry_ttl: Duration,
    /// How long the kernel may cache `attr`.
    pub attr_ttl: Duration,
}

/// Attributes with the time the caller may cache them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttrOut {
    /// The attributes.
    pub attr: Attr,
    /// How long the kernel may cache them.
    pub ttl: Duration,
}

/// A time to set in `setattr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetTime {
    /// The plugin's current time (`UTIME_NOW`).
    Now,
    /// This exact time.
    At(Timestamp),
}

/// The changes a `setattr` asks for; `None` fields stay as they are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    /// New permission bits (`0o7777`).
    pub mode: Option<u32>,
    /// New owner.
    pub uid: Option<u32>,
    /// New group.
    pub gid: Option<u32>,
    /// New size (truncate or extend with zeroes).
    pub size: Option<u64>,
    /// New access time.
    pub atime: Option<SetTime>,
    /// New modification time.
    pub mtime: Option<SetTime>,
    /// New status change time (rarely sent; plugins may ignore it).
    pub ctime: Option<Timestamp>,
    /// The open handle this change came through (`ftruncate`, `fchmod`), if any.
    pub handle: Option<Handle>,
}

/// The answer to `open`, `opendir` and `create`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Opened {
    /// The handle later calls on this open file will carry.
    pub handle: Handle,
    /// Bypass the kernel page cache for this open file.
    pub direct_io: bool,
    /// Keep the kernel's cached data from earlier opens of this file.
    pub keep_cache: bool,
    /// The file is not seekable (a stream).
    pub nonseekable: bool,
    /// A descriptor of a local file that holds exactly this file's bytes, for the kernel's
    /// FUSE passthrough: reads, writes and mmap then go to it without the plugin. The
    /// plugin keeps it open until this handle is released, and declares
    /// [`Capabilities::backing_files`]. The frontend may ignore it (a mount option, an
    /// older kernel, a host without CAP_SYS_ADMIN), so `read` and `write` must still work.
    pub backing_fd: Option<i32>,
    /// `flush` of this handle does nothing (and reports nothing), so the frontend need not
    /// call it: FUSE then sends no `FLUSH` request on each `close(2)`, one round trip
    /// less per close. `release` is still called. Since ABI 2.2; older plugins read as
    /// `false`.
    pub no_flush: bool,
}

/// Filesystem statistics, as `statvfs(3)` shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatFs {
    /// Total blocks of `frsize` bytes.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Free blocks available to unprivileged users.
    pub bavail: u64,
    /// Total inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Preferred block size.
    pub bsize: u32,
    /// Maximum name length in bytes.
    pub namelen: u32,
    /// Fragment size (the unit of `blocks`).
    pub frsize: u32,
}

/// One directory entry produced by [`crate::FileSystem::readdir`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirEntry<'a> {
    /// The inode number `readdir(3)` shows (`d_ino`); see [`Attr::ino`].
    pub ino: u64,
    /// The entry's type.
    pub kind: FileKind,
    /// The entry's name (no `/`, not empty).
    pub name: &'a [u8],
    /// The cookie that resumes the listing *after* this entry. Must be non-zero: cookie 0
    /// means "from the start".
    pub cookie: u64,
}

/// Where `readdir` puts its entries. The host owns the buffer behind it.
pub trait DirSink {
    /// Adds one entry. Returns `false`, without adding it, when the page is full: the
    /// plugin then stops and returns `Ok(())`; the host resumes later from the cookie of
    /// the last entry it accepted.
    fn add(&mut self, entry: &DirEntry<'_>) -> bool;
}

/// Where `readdirplus` puts its entries, each with its lookup result.
pub trait DirPlusSink {
    /// Adds one entry with its [`Entry`]. Returns `false`, without adding it, when the page
    /// is full. The plugin counts one lookup reference on `entry.node` for each call that
    /// returns `true`, none for a call that returns `false`, and none for `.` and `..`
    /// (whose `entry` the host ignores).
    fn add(&mut self, dirent: &DirEntry<'_>, entry: &Entry) -> bool;
}

/// Flags of `rename`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RenameFlags(pub u32);

impl RenameFlags {
    /// Fail with `EEXIST` instead of replacing an existing target (`RENAME_NOREPLACE`).
    pub const NOREPLACE: u32 = 1;
    /// Atomically swap source and target, which must both exist (`RENAME_EXCHANGE`).
    pub const EXCHANGE: u32 = 2;
    /// Leave a whiteout at the source (`RENAME_WHITEOUT`, for overlay filesystems).
    pub const WHITEOUT: u32 = 4;

    /// No flags: a plain POSIX rename.
    pub const fn empty() -> Self {
        RenameFlags(0)
    }
    /// Whether `RENAME_NOREPLACE` is set.
    pub const fn noreplace(self) -> bool {
        self.0 & Self::NOREPLACE != 0
    }
    /// Whether `RENAME_EXCHANGE` is set.
    pub const fn exchange(self) -> bool {
        self.0 & Self::EXCHANGE != 0
    }
}

/// Where `lseek` looks. FUSE forwards only [`Whence::Data`] and [`Whence::Hole`]; the kernel
/// answers the others itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Whence {
    /// `SEEK_SET`.
    Set,
    /// `SEEK_CUR`.
    Cur,
    /// `SEEK_END`.
    End,
    /// `SEEK_DATA`: the next offset at or after `offset` that holds data.
    Data,
    /// `SEEK_HOLE`: the next offset at or after `offset` that is in a hole (the end of the
    /// file counts as a hole).
    Hole,
}

impl Whence {
    /// The `whence` number Linux uses.
    pub fn to_raw(self) -> u32 {
        match self {
            Whence::Set => 0,
            Whence::Cur => 1,
            Whence::End => 2,
            Whence::Data => 3,
            Whence::Hole => 4,
        }
    }
    /// From the `whence` number Linux uses.
    pub fn from_raw(raw: u32) -> Option<Self> {
        Some(match raw {
            0 => Whence::Set,
            1 => Whence::Cur,
            2 => Whence::End,
            3 => Whence::Data,
            4 => Whence::Hole,
            _ => return None,
        })
    }
}

/// Linux open(2) flag values, as they arrive in `open` and `create`. Only the ones plugins
/// commonly look at are named here; the rest pass through unchanged.
pub mod open_flags {
    /// Access mode mask.
    pub const O_ACCMODE: i32 = 0o3;
    /// Read only.
    pub const O_RDONLY: i32 = 0o0;
    /// Write only.
    pub const O_WRONLY: i32 = 0o1;
    /// Read and write.
    pub const O_RDWR: i32 = 0o2;
    /// Fail if the file exists (with `create`).
    pub const O_EXCL: i32 = 0o200;
    /// Truncate on open.
    pub const O_TRUNC: i32 = 0o1000;
    /// Every write appends.
    pub const O_APPEND: i32 = 0o2000;
    /// Every write is durable on return, data only.
    pub const O_DSYNC: i32 = 0o10000;
    /// Every write is durable on return, with metadata.
    pub const O_SYNC: i32 = 0o4010000;
    /// Bypass the page cache.
    pub const O_DIRECT: i32 = 0o40000;
}

/// Linux `fallocate(2)` mode bits.
pub mod fallocate_mode {
    /// Do not change the file size.
    pub const KEEP_SIZE: i32 = 0x01;
    /// Deallocate the range (requires `KEEP_SIZE`).
    pub const PUNCH_HOLE: i32 = 0x02;
    /// Remove the range and shift the rest down.
    pub const COLLAPSE_RANGE: i32 = 0x08;
    /// Zero the range.
    pub const ZERO_RANGE: i32 = 0x10;
    /// Insert a hole, shifting the rest up.
    pub const INSERT_RANGE: i32 = 0x20;
}

/// Linux `setxattr(2)` flag values.
pub mod xattr_flags {
    /// Fail with `EEXIST` if the attribute exists.
    pub const XATTR_CREATE: i32 = 1;
    /// Fail with `ENODATA` if the attribute does not exist.
    pub const XATTR_REPLACE: i32 = 2;
}

/// What a plugin supports. Hosts and frontends read this to answer the same way on every
/// platform, and the conformance suite picks its checks from it.
///
/// Construct it with struct-update syntax from [`Capabilities::NONE`] or
/// [`Capabilities::POSIX`], so fields added in later versions take their defaults:
///
/// ```
/// use plugfs_plugin_api::Capabilities;
/// let caps = Capabilities { xattrs: false, ..Capabilities::POSIX };
/// assert!(caps.symlinks && !caps.xattrs);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// The filesystem can be written to at all (a plugin may still be mounted read-only).
    pub writable: bool,
    /// `symlink` and `readlink` work.
    pub symlinks: bool,
    /// `link` works.
    pub hard_links: bool,
    /// FIFOs, sockets and device nodes can be created with `mknod`.
    pub special_files: bool,
    /// Extended attributes can be stored.
    pub xattrs: bool,
    /// Permission bits and ownership are stored (`chmod`/`chown` work).
    pub permissions: bool,
    /// `fallocate` works (at least mode 0 and `KEEP_SIZE`).
    pub fallocate: bool,
    /// `fallocate` can punch holes.
    pub punch_hole: bool,
    /// `rename` honours `RENAME_NOREPLACE`.
    pub rename_noreplace: bool,
    /// `rename` honours `RENAME_EXCHANGE`.
    pub rename_exchange: bool,
    /// `lseek` with `SEEK_DATA`/`SEEK_HOLE` reports real holes.
    pub sparse_files: bool,
    /// Names differing only in case are different files.
    pub case_sensitive: bool,
    /// The case of a name is kept as created.
    pub case_preserving: bool,
    /// Times are stored with nanosecond precision (otherwise coarser).
    pub nanosecond_times: bool,
    /// The plugin checks permissions itself, as the caller, on every operation, so a mount
    /// may run with `default_permissions = false` (the kernel then checks nothing).
    pub checks_permissions: bool,
    /// `open` may hand over a backing file descriptor ([`Opened::backing_fd`]).
    pub backing_files: bool,
    /// [`crate::Plugin::format`] creates new images.
    pub format: bool,
    /// The longest name, in bytes.
    pub max_name_len: u32,
    /// The largest file, in bytes.
    pub max_file_size: u64,
    /// How long a frontend may remember that a name does not exist once `lookup` answered
    /// `ENOENT` for it (a FUSE negative entry), so a repeated lookup of a missing name
    /// reaches the plugin only once in that time. Zero (the default): never. Only for a
    /// store that changes through this mount alone: a name created behind its back stays
    /// invisible that long. A creation through the mount replaces the negative entry at
    /// once. Since ABI 2.2; older plugins read as zero.
    pub negative_entry_ttl: Duration,
}

impl Capabilities {
    /// Supports nothing optional: a read-only filesystem with POSIX name rules.
    pub const NONE: Capabilities = Capabilities {
        writable: false,
        symlinks: false,
        hard_links: false,
        special_files: false,
        xattrs: false,
        permissions: false,
        fallocate: false,
        punch_hole: false,
        rename_noreplace: false,
        rename_exchange: false,
        sparse_files: false,
        case_sensitive: true,
        case_preserving: true,
        nanosecond_times: false,
        checks_permissions: false,
        backing_files: false,
        format: false,
        max_name_len: 255,
        max_file_size: i64::MAX as u64,
        negative_entry_ttl: Duration::ZERO,
    };

    /// Supports everything a local POSIX filesystem does.
    pub const POSIX: Capabilities = Capabilities {
        writable: true,
        symlinks: true,
        hard_links: true,
        special_files: true,
        xattrs: true,
        permissions: true,
        fallocate: true,
        punch_hole: true,
        rename_noreplace: true,
        rename_exchange: true,
        sparse_files: true,
        case_sensitive: true,
        case_preserving: true,
        nanosecond_times: true,
        checks_permissions: false,
        backing_files: false,
        format: false,
        max_name_len: 255,
        max_file_size: i64::MAX as u64,
        negative_entry_ttl: Duration::ZERO,
    };
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities::NONE
    }
}

/// How the host describes a plugin without mounting it (`plugfs plugins`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PluginInfo {
    /// The name configs refer to it by (`plugin = "durable-io"`). Lowercase, no spaces.
    pub name: &'static str,
    /// The plugin's own version (usually `env!("CARGO_PKG_VERSION")`).
    pub version: &'static str,
    /// One line saying what it serves.
    pub description: &'static str,
    /// The settings its config table takes, one per line, as `key = example  # meaning`.
    pub config_help: &'static str,
    /// What it supports.
    pub capabilities: Capabilities,
}

/// Host-side settings of one mount that a plugin may need when it opens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MountOptions {
    /// The mount is read-only: the plugin should refuse changes with `EROFS` and may open
    /// its backing store read-only.
    pub read_only: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_before_and_after_the_epoch() {
        for ts in [Timestamp::new(0, 0), Timestamp::new(1_700_000_000, 123_456_789), Timestamp::new(-5, 250)] {
            assert_eq!(Timestamp::from(SystemTime::from(ts)), ts);
        }
        assert_eq!(Timestamp::new(1, 1_500_000_000), Timestamp { secs: 2, nanos: 500_000_000 });
    }

    #[test]
    fn file_kinds_round_trip_through_mode_bits() {
        for k in [
            FileKind::File,
            FileKind::Directory,
            FileKind::Symlink,
            FileKind::BlockDevice,
            FileKind::CharDevice,
            FileKind::Fifo,
            FileKind::Socket,
        ] {
            assert_eq!(FileKind::from_mode(k.mode_bits() | 0o644), Some(k));
        }
        assert_eq!(FileKind::from_mode(0o644), None);
    }
}
