//! Probing the backing filesystem at mount time, so a mount declares what its backing store
//! really supports (tmpfs, ext4, ramfs, a casefolded directory, ... differ) instead of
//! assuming a full POSIX filesystem.
//!
//! Each feature is tried on scratch files created in the root under hidden, unique names
//! (`.plugfs-probe-…`) and removed again before the probe returns. A read-only probe (a
//! read-only mount, or a root the host may not write) creates nothing: it can only test
//! xattrs (by listing the root's) and otherwise keeps the POSIX answers.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use plugfs_plugin_api::Capabilities;
use rustix::fs::{AtFlags, FallocateFlags, FileType, Mode, OFlags, RenameFlags, SeekFrom, StatVfsMountFlags};

use crate::sys::{ProcFd, stat_fd};

/// What a probe found: the capabilities, and what the plugin API has no field for yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probed {
    /// The capabilities of the mount.
    pub capabilities: Capabilities,
    /// `FICLONE` (reflink) works: a copy can share blocks (btrfs, XFS).
    pub reflink: bool,
}

/// Probes the directory `root`, creating and removing scratch files in it. A root that
/// cannot be opened gives [`Capabilities::POSIX`].
pub fn probe(root: &Path) -> Capabilities {
    match rustix::fs::open(root, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()) {
        Ok(dir) => probe_dir(dir.as_fd(), true).capabilities,
        Err(e) => {
            tracing::warn!("durable-io: cannot probe {}: {e}; assuming a POSIX filesystem", root.display());
            Capabilities::POSIX
        }
    }
}

/// Probes the directory `dir`; scratch files are created only if `may_write`.
pub(crate) fn probe_dir(dir: BorrowedFd<'_>, may_write: bool) -> Probed {
    let mut caps = Capabilities::POSIX;
    if let Ok(vfs) = rustix::fs::fstatvfs(dir) {
        caps.max_name_len = u32::try_from(vfs.f_namemax).unwrap_or(255).min(255);
        if vfs.f_flag.contains(StatVfsMountFlags::RDONLY) {
            caps.writable = false;
        }
    }
    let scratch = if may_write && caps.writable { Scratch::new(dir) } else { None };
    let Some(scratch) = scratch else {
        // Nothing may be created: xattrs are the one thing a listing tells.
        let listed = rustix::fs::listxattr_query(ProcFd::path(dir));
        caps.xattrs = !matches!(listed, Err(e) if e == rustix::io::Errno::NOTSUP);
        return Probed { capabilities: caps, reflink: false };
    };
    let found = scratch.run(caps);
    tracing::debug!(?found, "durable-io: probed the backing filesystem");
    found
}

/// Makes every probe's names unique within the process.
static PROBES: AtomicU64 = AtomicU64::new(0);

/// Scratch names in the probed directory, all removed on drop.
struct Scratch<'a> {
    dir: BorrowedFd<'a>,
    /// The name prefix; it holds lower-case letters, for the case test.
    base: String,
    /// The first scratch file, created `O_RDWR`.
    file: OwnedFd,
}

impl<'a> Scratch<'a> {
    const SUFFIXES: [&'static str; 6] = ["a", "b", "c", "link", "symlink", "fifo"];

    fn new(dir: BorrowedFd<'a>) -> Option<Self> {
        let n = PROBES.fetch_add(1, Ordering::Relaxed);
        let base = format!(".plugfs-probe-{}-{n}-", std::process::id());
        let flags = OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::openat(dir, format!("{base}a"), flags, Mode::from_raw_mode(0o600)) {
            Ok(file) => Some(Scratch { dir, base, file }),
            Err(e) => {
                tracing::info!("durable-io: cannot create probe files in the root ({e}); probing read-only");
                None
            }
        }
    }

    fn name(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.base)
    }

    fn run(&self, mut caps: Capabilities) -> Probed {
        let (dir, file) = (self.dir, self.file.as_fd());
        caps.xattrs = rustix::fs::fsetxattr(file, "user.plugfs.probe", b"1", rustix::fs::XattrFlags::empty())
            .and_then(|()| rustix::fs::fremovexattr(file, "user.plugfs.probe"))
            .is_ok();
        caps.permissions = rustix::fs::fchmod(file, Mode::from_raw_mode(0o640)).is_ok()
            && stat_fd(file).is_ok_and(|st| u32::from(st.stx_mode) & 0o7777 == 0o640);
        caps.fallocate = rustix::fs::fallocate(file, FallocateFlags::empty(), 0, 8192).is_ok();
        caps.punch_hole =
            rustix::fs::fallocate(file, FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE, 0, 4096).is_ok();
        // A filesystem that tracks holes finds one in the middle of a file only truncated
        // there; one that does not treats the whole file as data (hole at the end).
        const MIB: u64 = 1 << 20;
        caps.sparse_files = rustix::fs::ftruncate(file, 4 * MIB).is_ok()
            && rustix::fs::seek(file, SeekFrom::Hole(2 * MIB)).is_ok_and(|at| at == 2 * MIB);
        let ts = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec { tv_sec: 1_000_000_000, tv_nsec: 123_456_789 },
            last_modification: rustix::fs::Timespec { tv_sec: 1_000_000_000, tv_nsec: 123_456_789 },
        };
        caps.nanosecond_times = rustix::fs::futimens(file, &ts).is_ok()
            && stat_fd(file).is_ok_and(|st| st.stx_mtime.tv_nsec == 123_456_789);

        let reflink = self.reflink();
        caps.symlinks = rustix::fs::symlinkat("target", dir, self.name("symlink")).is_ok();
        caps.hard_links = rustix::fs::linkat(dir, self.name("a"), dir, self.name("link"), AtFlags::empty()).is_ok();
        caps.special_files = rustix::fs::mknodat(dir, self.name("fifo"), FileType::Fifo, Mode::RUSR, 0).is_ok();
        let b = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        if rustix::fs::openat(dir, self.name("b"), b, Mode::RUSR).is_ok() {
            // b -> c (no c yet), then a <-> c: both names exist afterwards, as before.
            caps.rename_noreplace =
                rustix::fs::renameat_with(dir, self.name("b"), dir, self.name("c"), RenameFlags::NOREPLACE).is_ok();
            let other = if caps.rename_noreplace { "c" } else { "b" };
            caps.rename_exchange =
                rustix::fs::renameat_with(dir, self.name("a"), dir, self.name(other), RenameFlags::EXCHANGE).is_ok();
        }
        (caps.case_sensitive, caps.case_preserving) = self.case();
        Probed { capabilities: caps, reflink }
    }

    /// Whether `FICLONE` of the first scratch file into a second one works.
    fn reflink(&self) -> bool {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::openat(self.dir, self.name("c"), flags, Mode::RUSR) {
            Ok(dst) => {
                let cloned = rustix::fs::ioctl_ficlone(&dst, &self.file).is_ok();
                drop(dst);
                let _ = rustix::fs::unlinkat(self.dir, self.name("c"), AtFlags::empty());
                cloned
            }
            Err(_) => false,
        }
    }

    /// (case sensitive, case preserving): whether the upper-case spelling of the first
    /// scratch file's name finds it too, and if so whether the listing keeps the spelling
    /// it was created with.
    fn case(&self) -> (bool, bool) {
        let created = self.name("a");
        let (Ok(upper), Ok(st)) = (
            rustix::fs::statat(self.dir, created.to_uppercase(), AtFlags::SYMLINK_NOFOLLOW),
            stat_fd(self.file.as_fd()),
        ) else {
            return (true, true);
        };
        if upper.st_ino != st.stx_ino {
            return (true, true);
        }
        let preserving = rustix::fs::Dir::read_from(self.dir)
            .is_ok_and(|dir| dir.filter_map(Result::ok).any(|e| e.file_name().to_bytes() == created.as_bytes()));
        (false, preserving)
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        for suffix in Self::SUFFIXES {
            let _ = rustix::fs::unlinkat(self.dir, self.name(suffix), AtFlags::empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    /// A filesystem of type `fstype` mounted on a fresh directory, unmounted on drop.
    struct Mounted {
        dir: tempfile::TempDir,
    }

    impl Mounted {
        fn new(fstype: &str, options: &str) -> Option<Mounted> {
            let dir = tempfile::tempdir().unwrap();
            let ok = Command::new("mount")
                .args(["-t", fstype, "-o", options, "probe-test"])
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            ok.then_some(Mounted { dir })
        }
    }

    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.dir.path()).status();
        }
    }

    fn no_scratch_left(dir: &Path) {
        let left: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(left.is_empty(), "probe files left behind: {left:?}");
    }

    #[test]
    fn tmpfs_supports_everything_but_reflink() {
        if !is_root() {
            return;
        }
        let m = Mounted::new("tmpfs", "size=16m").expect("mount tmpfs");
        let dir = rustix::fs::open(m.dir.path(), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let found = probe_dir(dir.as_fd(), true);
        // tmpfs has user xattrs since Linux 6.6.
        assert_eq!(found.capabilities, Capabilities { max_name_len: 255, ..Capabilities::POSIX });
        assert!(!found.reflink, "tmpfs cannot share blocks");
        assert_eq!(probe(m.dir.path()), found.capabilities);
        no_scratch_left(m.dir.path());
    }

    #[test]
    fn ramfs_lacks_xattrs_fallocate_and_holes() {
        if !is_root() {
            return;
        }
        let m = Mounted::new("ramfs", "mode=755").expect("mount ramfs");
        let caps = probe(m.dir.path());
        assert!(!caps.xattrs && !caps.fallocate && !caps.punch_hole && !caps.sparse_files, "{caps:?}");
        assert!(caps.writable && caps.symlinks && caps.hard_links && caps.special_files && caps.permissions);
        assert!(caps.rename_noreplace && caps.rename_exchange && caps.case_sensitive && caps.nanosecond_times);
        no_scratch_left(m.dir.path());
    }

    #[test]
    fn a_casefolded_directory_is_case_insensitive_but_preserving() {
        if !is_root() {
            return;
        }
        let Some(m) = Mounted::new("tmpfs", "size=16m,casefold") else {
            eprintln!("skipped: this kernel's tmpfs has no casefold");
            return;
        };
        let folded = m.dir.path().join("folded");
        std::fs::create_dir(&folded).unwrap();
        assert!(Command::new("chattr").arg("+F").arg(&folded).status().unwrap().success());
        let caps = probe(&folded);
        assert!(!caps.case_sensitive && caps.case_preserving, "{caps:?}");
        // The rest of the same filesystem still tells case apart.
        assert!(probe(m.dir.path()).case_sensitive);
        no_scratch_left(&folded);
    }

    #[test]
    fn a_read_only_filesystem_is_not_writable_and_nothing_is_created() {
        if !is_root() {
            return;
        }
        let m = Mounted::new("tmpfs", "size=16m,ro").expect("mount tmpfs read-only");
        let caps = probe(m.dir.path());
        assert!(!caps.writable, "{caps:?}");
        // A plain directory probed without permission to write keeps its xattr answer.
        let plain = tempfile::tempdir().unwrap();
        let dir = rustix::fs::open(plain.path(), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
        assert!(probe_dir(dir.as_fd(), false).capabilities.writable);
        no_scratch_left(plain.path());
    }

    #[test]
    fn ext4_probes_like_a_posix_filesystem() {
        if !is_root() {
            return;
        }
        let img = tempfile::NamedTempFile::new().unwrap();
        img.as_file().set_len(32 << 20).unwrap();
        let made = Command::new("mkfs.ext4").args(["-q", "-F"]).arg(img.path()).status();
        if !made.is_ok_and(|s| s.success()) {
            eprintln!("skipped: mkfs.ext4 not available");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mounted = Command::new("mount").args(["-o", "loop"]).arg(img.path()).arg(dir.path()).status();
        assert!(mounted.is_ok_and(|s| s.success()), "loop mount of an ext4 image");
        let caps = probe(dir.path());
        let _ = Command::new("umount").arg(dir.path()).status();
        assert_eq!(caps, Capabilities { max_name_len: 255, ..Capabilities::POSIX });
    }
}
