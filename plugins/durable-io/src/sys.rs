//! Small safe helpers over the syscalls the plugin makes: error conversion, name checks,
//! confined opens, reopening through `/proc/self/fd`, and `statx` to [`Attr`].

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};

use plugfs_plugin_api::{Attr, Errno, Error, FileKind, Result, Timestamp};
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, Statx, StatxFlags, StatxTimestamp};

/// Converts a rustix errno, keeping the number.
pub(crate) fn err(e: rustix::io::Errno) -> Error {
    Error::new(Errno(e.raw_os_error()))
}

/// Refuses anything but a single, plain path component. The host promises this already;
/// checking again is what keeps a host bug from becoming a way out of the root.
pub(crate) fn check_name(name: &OsStr) -> Result<()> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(Error::with_message(Errno::EINVAL, "durable-io: name is not a single path component"));
    }
    if b.len() > 255 {
        return Err(Errno::ENAMETOOLONG.into());
    }
    Ok(())
}

/// Set once the kernel has answered `ENOSYS` to `openat2`, so later opens skip straight to
/// the fallback instead of paying a failed syscall each time.
static OPENAT2_MISSING: AtomicBool = AtomicBool::new(false);

/// Opens `name` inside the directory `dir`, never following a symlink and never leaving
/// `dir`: `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`
/// where the kernel has it, otherwise a single-component `openat` with `O_NOFOLLOW` (equally
/// safe for a checked name, just without the kernel's second line of defence).
pub(crate) fn open_beneath(dir: BorrowedFd<'_>, name: &OsStr, flags: OFlags, mode: Mode) -> Result<OwnedFd> {
    check_name(name)?;
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if !OPENAT2_MISSING.load(Ordering::Relaxed) {
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
        // EAGAIN means a concurrent rename raced the kernel's escape check; it asks us to retry.
        let mut tries = 0;
        loop {
            match rustix::fs::openat2(dir, name, flags, mode, resolve) {
                Ok(fd) => return Ok(fd),
                Err(rustix::io::Errno::AGAIN) if tries < 16 => tries += 1,
                Err(rustix::io::Errno::NOSYS) => {
                    OPENAT2_MISSING.store(true, Ordering::Relaxed);
                    break;
                }
                Err(e) => return Err(err(e)),
            }
        }
    }
    open_single(dir, name, flags, mode)
}

/// The fallback of [`open_beneath`] for kernels without `openat2`: `name` is one checked
/// component and `flags` carry `O_NOFOLLOW`, so nothing is resolved but `name` itself.
fn open_single(dir: BorrowedFd<'_>, name: &OsStr, flags: OFlags, mode: Mode) -> Result<OwnedFd> {
    rustix::fs::openat(dir, name, flags | OFlags::NOFOLLOW | OFlags::CLOEXEC, mode).map_err(err)
}

/// `statx` of whatever `fd` refers to (an `O_PATH` fd of a symlink included), with
/// nanosecond times and the birth time where the filesystem has one.
pub(crate) fn stat_fd(fd: BorrowedFd<'_>) -> Result<Statx> {
    rustix::fs::statx(
        fd,
        c"",
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS | StatxFlags::BTIME,
    )
    .map_err(err)
}

/// The identity of a backing inode: (device, inode number).
pub(crate) type InodeKey = (u64, u64);

/// The (dev, ino) pair `st` describes.
pub(crate) fn inode_key(st: &Statx) -> InodeKey {
    (rustix::fs::makedev(st.stx_dev_major, st.stx_dev_minor), st.stx_ino)
}

fn timestamp(t: &StatxTimestamp) -> Timestamp {
    Timestamp::new(t.tv_sec, t.tv_nsec)
}

/// Encodes a device number the way the kernel's `new_encode_dev` does, which is the
/// format FUSE carries `rdev` in.
pub(crate) fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

/// The inverse of [`encode_dev`]: (major, minor).
pub(crate) fn decode_dev(dev: u32) -> (u32, u32) {
    ((dev & 0xfff00) >> 8, (dev & 0xff) | ((dev >> 12) & 0xfff00))
}

/// [`Attr`] from `statx`, reporting the backing inode number.
pub(crate) fn attr_from_statx(st: &Statx) -> Attr {
    let mode = u32::from(st.stx_mode);
    let ctime = timestamp(&st.stx_ctime);
    let has_btime = st.stx_mask & StatxFlags::BTIME.bits() != 0;
    Attr {
        ino: st.stx_ino,
        size: st.stx_size,
        blocks: st.stx_blocks,
        atime: timestamp(&st.stx_atime),
        mtime: timestamp(&st.stx_mtime),
        ctime,
        crtime: if has_btime { timestamp(&st.stx_btime) } else { ctime },
        kind: FileKind::from_mode(mode).unwrap_or(FileKind::File),
        perm: (mode & 0o7777) as u16,
        nlink: st.stx_nlink,
        uid: st.stx_uid,
        gid: st.stx_gid,
        rdev: encode_dev(st.stx_rdev_major, st.stx_rdev_minor),
        blksize: st.stx_blksize,
    }
}

/// The process's `/proc/self/fd` directory, through which nodes held as `O_PATH` fds are
/// reopened for IO (the passthrough_ll technique): the kernel follows the magic link to the
/// very inode the fd refers to, never to a path, so a rename or a planted symlink cannot
/// redirect it.
pub(crate) struct ProcFd {
    dir: OwnedFd,
}

/// `PROC_SUPER_MAGIC`: checked so that something mounted over `/proc` cannot stand in for it.
const PROC_SUPER_MAGIC: i64 = 0x9fa0;

impl ProcFd {
    /// Opens `/proc/self/fd` and checks that it really is procfs.
    pub(crate) fn open() -> std::result::Result<Self, String> {
        let dir = rustix::fs::open("/proc/self/fd", OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| format!("cannot open /proc/self/fd (is /proc mounted?): {e}"))?;
        let fs = rustix::fs::fstatfs(&dir).map_err(|e| format!("cannot statfs /proc/self/fd: {e}"))?;
        #[allow(clippy::unnecessary_cast)]
        if fs.f_type as i64 != PROC_SUPER_MAGIC {
            return Err("/proc/self/fd is not on procfs".into());
        }
        Ok(ProcFd { dir })
    }

    /// Opens the inode behind `fd` anew with `flags`. Flags that make no sense for a reopen
    /// (`O_CREAT`, `O_EXCL`) or would stop at the magic link itself (`O_NOFOLLOW`) are
    /// dropped. A symlink node cannot be reopened for IO: the kernel answers `ELOOP`.
    pub(crate) fn reopen(&self, fd: BorrowedFd<'_>, flags: OFlags) -> Result<OwnedFd> {
        let flags = (flags - (OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW)) | OFlags::CLOEXEC;
        rustix::fs::openat(&self.dir, Self::name(fd), flags, Mode::empty()).map_err(err)
    }

    /// The entry name of `fd` inside `/proc/self/fd`, for *at calls relative to [`Self::dir`].
    pub(crate) fn name(fd: BorrowedFd<'_>) -> String {
        fd.as_raw_fd().to_string()
    }

    /// The directory fd, for *at calls that resolve through the magic link.
    pub(crate) fn dir(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// The absolute magic-link path of `fd`, for the calls that have no *at form (xattrs).
    pub(crate) fn path(fd: BorrowedFd<'_>) -> String {
        format!("/proc/self/fd/{}", fd.as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_round_trip() {
        for (maj, min) in [(0, 0), (1, 3), (8, 17), (259, 65536), (4095, 0xfffff)] {
            assert_eq!(decode_dev(encode_dev(maj, min)), (maj, min));
        }
        // The kernel's own encoding of /dev/null (1:3).
        assert_eq!(encode_dev(1, 3), 0x103);
    }

    #[test]
    fn both_open_paths_stop_at_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/", dir.path().join("to-root")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("absent"), dir.path().join("dangling")).unwrap();
        let d = rustix::fs::open(dir.path(), OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let with_openat2 = |name: &str, flags, mode| open_beneath(d.as_fd(), OsStr::new(name), flags, mode);
        let fallback = |name: &str, flags, mode| {
            check_name(OsStr::new(name))?;
            open_single(d.as_fd(), OsStr::new(name), flags, mode)
        };
        for open in [&with_openat2 as &dyn Fn(&str, OFlags, Mode) -> Result<OwnedFd>, &fallback] {
            let fd = open("to-root", OFlags::PATH, Mode::empty()).unwrap();
            assert_eq!(FileKind::from_mode(stat_fd(fd.as_fd()).unwrap().stx_mode.into()), Some(FileKind::Symlink));
            assert_eq!(open("to-root", OFlags::RDONLY, Mode::empty()).unwrap_err().errno(), Errno::ELOOP);
            assert_eq!(open("..", OFlags::PATH, Mode::empty()).unwrap_err().errno(), Errno::EINVAL);
            let create = OFlags::CREATE | OFlags::WRONLY;
            assert_eq!(open("dangling", create, Mode::RUSR).unwrap_err().errno(), Errno::ELOOP);
            assert_eq!(open("dangling", create | OFlags::EXCL, Mode::RUSR).unwrap_err().errno(), Errno::EEXIST);
            assert!(!dir.path().join("absent").exists());
        }
    }

    #[test]
    fn names_must_be_single_components() {
        for bad in ["", ".", "..", "a/b", "/", "a\0b"] {
            assert_eq!(check_name(OsStr::new(bad)).unwrap_err().errno(), Errno::EINVAL, "{bad:?}");
        }
        assert_eq!(check_name(OsStr::new(&"x".repeat(256))).unwrap_err().errno(), Errno::ENAMETOOLONG);
        check_name(OsStr::new("...")).unwrap();
        check_name(OsStr::new(".hidden")).unwrap();
    }
}
