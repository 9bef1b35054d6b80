//! Real kernel mounts of memfs through the FUSE frontend, driven with std::fs and libc.
//!
//! Needs `/dev/fuse` and permission to mount (root, or `fusermount3`). Every test mounts
//! its own memfs in a temporary directory and unmounts it when done, even on failure.

use std::collections::{BTreeSet, HashMap};
use std::ffi::{CString, OsStr};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plugfs_fuse::{FuseMount, FuseOptions, force_unmount, mount};
use plugfs_memfs::{MemFs, MemFsPlugin};
use plugfs_plugin_api::*;

fn memfs(config: &str) -> MemFs {
    MemFsPlugin::open(&ConfigTable::from_toml(config), &MountOptions::default()).expect("memfs opens")
}

/// A mount that is unmounted when dropped, before its directory is removed.
struct TestMount {
    mount: Option<FuseMount>,
    dir: tempfile::TempDir,
}

impl TestMount {
    fn new(fs: Arc<dyn FileSystem>, options: &FuseOptions) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mount = mount(fs, dir.path(), options).expect("mount");
        TestMount { mount: Some(mount), dir }
    }

    fn memfs(config: &str) -> Self {
        Self::new(Arc::new(memfs(config)), &FuseOptions::default())
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

impl Drop for TestMount {
    fn drop(&mut self) {
        if let Some(mount) = self.mount.take()
            && let Err(e) = mount.unmount()
        {
            eprintln!("unmount failed ({e}); detaching");
            let _ = force_unmount(self.dir.path());
        }
    }
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn last_errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[test]
fn files_are_created_written_read_truncated_and_renamed() {
    let m = TestMount::memfs("");
    let a = m.path("a.txt");
    fs::write(&a, b"hello").unwrap();
    let mut f = OpenOptions::new().append(true).open(&a).unwrap();
    f.write_all(b" world").unwrap();
    drop(f);
    assert_eq!(fs::read(&a).unwrap(), b"hello world");

    let meta = fs::metadata(&a).unwrap();
    assert_eq!(meta.len(), 11);
    // SAFETY: no preconditions.
    assert_eq!(meta.uid(), unsafe { libc::geteuid() });

    // Positioned writes past the end leave zeroes; truncation both ways.
    let mut f = OpenOptions::new().read(true).write(true).open(&a).unwrap();
    f.seek(SeekFrom::Start(13)).unwrap();
    f.write_all(b"!").unwrap();
    f.set_len(16).unwrap();
    let mut all = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"hello world\0\0!\0\0");
    f.set_len(5).unwrap();
    drop(f);
    assert_eq!(fs::read(&a).unwrap(), b"hello");

    // O_TRUNC and O_EXCL.
    fs::write(&a, b"new").unwrap();
    assert_eq!(fs::read(&a).unwrap(), b"new");
    let e = OpenOptions::new().write(true).create_new(true).open(&a).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);

    fs::create_dir(m.path("d")).unwrap();
    fs::rename(&a, m.path("d/b.txt")).unwrap();
    assert!(!a.exists());
    assert_eq!(fs::read(m.path("d/b.txt")).unwrap(), b"new");
    assert_eq!(fs::remove_dir(m.path("d")).unwrap_err().raw_os_error(), Some(libc::ENOTEMPTY));
    fs::remove_file(m.path("d/b.txt")).unwrap();
    fs::remove_dir(m.path("d")).unwrap();
    assert_eq!(fs::read_dir(m.path("")).unwrap().count(), 0);
}

#[test]
fn symlinks_hard_links_and_fifos_work() {
    let m = TestMount::memfs("");
    fs::write(m.path("target"), b"data").unwrap();
    std::os::unix::fs::symlink("target", m.path("link")).unwrap();
    assert_eq!(fs::read_link(m.path("link")).unwrap(), Path::new("target"));
    assert_eq!(fs::read(m.path("link")).unwrap(), b"data");
    assert!(fs::symlink_metadata(m.path("link")).unwrap().file_type().is_symlink());

    fs::hard_link(m.path("target"), m.path("hard")).unwrap();
    let (t, h) = (fs::metadata(m.path("target")).unwrap(), fs::metadata(m.path("hard")).unwrap());
    assert_eq!((t.ino(), t.nlink()), (h.ino(), 2));
    fs::remove_file(m.path("target")).unwrap();
    assert_eq!(fs::read(m.path("hard")).unwrap(), b"data");
    assert_eq!(fs::metadata(m.path("hard")).unwrap().nlink(), 1);

    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(cstr(&m.path("fifo")).as_ptr(), 0o600) }, 0);
    assert!(fs::metadata(m.path("fifo")).unwrap().file_type().is_fifo());
}

#[test]
fn rename_flags_and_posix_rename_rules_reach_the_plugin() {
    let m = TestMount::memfs("");
    fs::write(m.path("a"), b"A").unwrap();
    fs::write(m.path("b"), b"B").unwrap();
    fs::create_dir_all(m.path("dir/sub")).unwrap();
    let renameat2 = |from: &str, to: &str, flags: u32| {
        let (from, to) = (cstr(&m.path(from)), cstr(&m.path(to)));
        // SAFETY: valid C strings.
        let r = unsafe { libc::renameat2(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), flags) };
        if r == 0 { Ok(()) } else { Err(last_errno()) }
    };
    assert_eq!(renameat2("a", "b", libc::RENAME_NOREPLACE), Err(libc::EEXIST));
    renameat2("a", "b", libc::RENAME_EXCHANGE).unwrap();
    assert_eq!((fs::read(m.path("a")).unwrap(), fs::read(m.path("b")).unwrap()), (b"B".to_vec(), b"A".to_vec()));
    assert_eq!(renameat2("dir", "b", 0), Err(libc::ENOTDIR));
    assert_eq!(renameat2("b", "dir", 0), Err(libc::EISDIR));
    assert_eq!(renameat2("dir", "dir/sub/in", 0), Err(libc::EINVAL));
    fs::create_dir(m.path("other")).unwrap();
    assert_eq!(renameat2("other", "dir", 0), Err(libc::ENOTEMPTY));
    renameat2("b", "a", 0).unwrap();
    assert_eq!(fs::read(m.path("a")).unwrap(), b"A");
    assert!(!m.path("b").exists());
}

#[test]
fn xattrs_follow_the_size_probe_protocol() {
    let m = TestMount::memfs("");
    fs::write(m.path("f"), b"").unwrap();
    let path = cstr(&m.path("f"));
    let name = CString::new("user.colour").unwrap();
    let set = |value: &[u8], flags| {
        // SAFETY: valid C strings and a value buffer of the given length.
        let r = unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), flags) };
        if r == 0 { Ok(()) } else { Err(last_errno()) }
    };
    let get = |buf: &mut [u8]| {
        // SAFETY: as above; a null buffer with size 0 is the size probe.
        let r = unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if r >= 0 { Ok(r as usize) } else { Err(last_errno()) }
    };
    assert_eq!(get(&mut []), Err(libc::ENODATA));
    assert_eq!(set(b"blue", libc::XATTR_REPLACE), Err(libc::ENODATA));
    set(b"blue", libc::XATTR_CREATE).unwrap();
    assert_eq!(set(b"red", libc::XATTR_CREATE), Err(libc::EEXIST));
    assert_eq!(get(&mut []), Ok(4));
    assert_eq!(get(&mut [0; 2]), Err(libc::ERANGE));
    let mut buf = [0u8; 16];
    assert_eq!(get(&mut buf), Ok(4));
    assert_eq!(&buf[..4], b"blue");

    let mut list = [0u8; 64];
    // SAFETY: valid C string and buffer.
    let n = unsafe { libc::listxattr(path.as_ptr(), list.as_mut_ptr().cast(), list.len()) };
    assert_eq!(&list[..n as usize], b"user.colour\0");
    // SAFETY: size probe with a null buffer.
    assert_eq!(unsafe { libc::listxattr(path.as_ptr(), std::ptr::null_mut(), 0) }, n);
    // SAFETY: valid C strings.
    assert_eq!(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) }, 0);
    // SAFETY: valid C strings.
    assert_eq!(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) }, -1);
    assert_eq!(last_errno(), libc::ENODATA);
}

#[test]
fn unlinked_files_stay_readable_while_open() {
    let m = TestMount::memfs("");
    let p = m.path("tmp");
    let mut f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&p).unwrap();
    f.write_all(b"still here").unwrap();
    fs::remove_file(&p).unwrap();
    assert!(!p.exists());
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    let mut s = String::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "still here");
    f.write_all(b"!").unwrap();
    assert_eq!(f.metadata().unwrap().len(), 11);
}

#[test]
fn times_modes_and_owners_are_set_with_nanoseconds() {
    let m = TestMount::memfs("");
    let p = m.path("f");
    fs::write(&p, b"x").unwrap();
    let times = [
        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
        libc::timespec { tv_sec: 1_234_567_890, tv_nsec: 123_456_789 },
    ];
    // SAFETY: valid C string and a two-element array.
    assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, cstr(&p).as_ptr(), times.as_ptr(), 0) }, 0);
    let meta = fs::metadata(&p).unwrap();
    assert_eq!((meta.mtime(), meta.mtime_nsec()), (1_234_567_890, 123_456_789));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!((meta.atime() - now).abs() < 60, "atime set to now");

    fs::set_permissions(&p, fs::Permissions::from_mode(0o4751)).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o4751);
    std::os::unix::fs::chown(&p, Some(1234), Some(5678)).unwrap();
    let meta = fs::metadata(&p).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1234, 5678));
}

#[test]
fn files_are_created_as_the_calling_user() {
    let fs_ = Arc::new(memfs(""));
    let m = TestMount::new(fs_, &FuseOptions { allow_other: true, ..FuseOptions::default() });
    fs::set_permissions(m.path(""), fs::Permissions::from_mode(0o777)).unwrap();
    let p = m.path("theirs");
    // fsuid/fsgid are per thread and are what FUSE reports as the caller's uid/gid.
    let created = std::thread::spawn(move || {
        // SAFETY: plain syscalls changing only this thread's filesystem ids.
        unsafe {
            libc::setfsgid(4321);
            libc::setfsuid(1234);
        }
        fs::write(&p, b"x").map(|_| fs::metadata(&p))
    })
    .join()
    .unwrap()
    .unwrap()
    .unwrap();
    assert_eq!((created.uid(), created.gid()), (1234, 4321));
}

#[test]
fn statfs_reports_capacity_and_writes_beyond_it_fail_with_enospc() {
    let m = TestMount::memfs("max_bytes = 1048576");
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    assert_eq!(unsafe { libc::statvfs(cstr(&m.path("")).as_ptr(), &mut st) }, 0);
    assert_eq!(st.f_blocks * st.f_frsize, 1 << 20);
    let mut f = File::create(m.path("big")).unwrap();
    f.write_all(&vec![7u8; 1 << 20]).unwrap();
    let e = f.write_all(b"one byte too many").and_then(|_| f.sync_all()).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
}

#[test]
fn fallocate_lseek_and_copy_file_range_work() {
    let m = TestMount::memfs("");
    let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(m.path("f")).unwrap();
    let fd = f.as_raw_fd();
    // SAFETY: fd is open for the duration of these calls.
    unsafe {
        assert_eq!(libc::fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, 0, 8192), 0);
        assert_eq!(f.metadata().unwrap().len(), 0);
        assert_eq!(libc::fallocate(fd, 0, 0, 100), 0);
        assert_eq!(f.metadata().unwrap().len(), 100);
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        assert_eq!(libc::fallocate(fd, punch, 0, 10), -1);
        assert_eq!(last_errno(), libc::EOPNOTSUPP);
        assert_eq!(libc::lseek(fd, 10, libc::SEEK_DATA), 10);
        assert_eq!(libc::lseek(fd, 10, libc::SEEK_HOLE), 100);
    }
    f.write_all_at(b"copied bytes", 0).unwrap();
    let g = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(m.path("g")).unwrap();
    let (mut off_in, mut off_out) = (0i64, 0i64);
    // SAFETY: both fds are open; offsets point to live locals.
    let n = unsafe { libc::copy_file_range(fd, &mut off_in, g.as_raw_fd(), &mut off_out, 12, 0) };
    assert_eq!(n, 12);
    assert_eq!(fs::read(m.path("g")).unwrap(), b"copied bytes");
}

#[test]
fn read_only_mounts_refuse_changes() {
    let fs_ = Arc::new(memfs(""));
    let m = TestMount::new(fs_, &FuseOptions { read_only: true, ..FuseOptions::default() });
    assert_eq!(fs::write(m.path("f"), b"x").unwrap_err().raw_os_error(), Some(libc::EROFS));
    assert_eq!(fs::read_dir(m.path("")).unwrap().count(), 0);
}

#[test]
fn a_mount_unmounted_from_outside_ends_its_session() {
    let m = TestMount::memfs("");
    let mount = m.mount.as_ref().unwrap();
    assert!(!mount.is_finished());
    let status = Command::new("umount").arg(m.path("")).status().unwrap();
    assert!(status.success());
    let mut m = m;
    let mount = m.mount.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !mount.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(mount.is_finished());
    mount.join().unwrap();
}

// ---------------------------------------------------------------------------------------
// Large directories: paging in readdir and readdirplus, and no leaked lookup references.
// ---------------------------------------------------------------------------------------

/// Delegates to memfs and counts the lookup references the kernel holds per node.
struct Counting {
    inner: MemFs,
    refs: Mutex<HashMap<NodeId, i64>>,
    lookups: AtomicUsize,
}

impl Counting {
    fn counted(&self, r: Result<Entry>) -> Result<Entry> {
        if let Ok(e) = &r {
            *self.refs.lock().unwrap().entry(e.node).or_default() += 1;
        }
        r
    }
    fn outstanding(&self) -> i64 {
        self.refs.lock().unwrap().values().sum()
    }
    fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }
}

impl FileSystem for Counting {
    fn lookup(&self, req: &Request, parent: NodeId, name: &OsStr) -> Result<Entry> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        self.counted(self.inner.lookup(req, parent, name))
    }
    fn forget(&self, node: NodeId, nlookup: u64) {
        *self.refs.lock().unwrap().entry(node).or_default() -= nlookup as i64;
        self.inner.forget(node, nlookup)
    }
    fn getattr(&self, req: &Request, node: NodeId, handle: Option<Handle>) -> Result<AttrOut> {
        self.inner.getattr(req, node, handle)
    }
    fn create(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32, flags: i32) -> Result<(Entry, Opened)> {
        let (e, o) = self.inner.create(req, parent, name, mode, flags)?;
        self.counted(Ok(e)).map(|e| (e, o))
    }
    fn mkdir(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32) -> Result<Entry> {
        self.counted(self.inner.mkdir(req, parent, name, mode))
    }
    fn mknod(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32, rdev: u32) -> Result<Entry> {
        self.counted(self.inner.mknod(req, parent, name, mode, rdev))
    }
    fn setattr(&self, req: &Request, node: NodeId, set: &SetAttr) -> Result<AttrOut> {
        self.inner.setattr(req, node, set)
    }
    fn open(&self, req: &Request, node: NodeId, flags: i32) -> Result<Opened> {
        self.inner.open(req, node, flags)
    }
    fn read(&self, req: &Request, node: NodeId, handle: Handle, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.inner.read(req, node, handle, offset, buf)
    }
    fn release(&self, req: &Request, node: NodeId, handle: Handle, flags: i32, flush: bool) -> Result<()> {
        self.inner.release(req, node, handle, flags, flush)
    }
    fn opendir(&self, req: &Request, node: NodeId, flags: i32) -> Result<Opened> {
        self.inner.opendir(req, node, flags)
    }
    fn readdir(&self, req: &Request, node: NodeId, handle: Handle, cookie: u64, sink: &mut dyn DirSink) -> Result<()> {
        self.inner.readdir(req, node, handle, cookie, sink)
    }
    fn releasedir(&self, req: &Request, node: NodeId, handle: Handle) -> Result<()> {
        self.inner.releasedir(req, node, handle)
    }
}

fn list(dir: &Path) -> Vec<String> {
    fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

/// Drops the kernel's dentries and inodes until every reference the plugin handed out has
/// come back (at most 10 s). Once is not always enough: an inode still busy at that moment
/// (a `release` of a file just closed, still on its way) is skipped by the drop and would
/// never be forgotten, which made this flaky under a loaded full-suite run.
fn forgotten(counting: &Counting) -> bool {
    wait_for(|| {
        drop_kernel_caches();
        counting.outstanding() == 0
    })
}

/// Waits for the kernel's queued forgets to arrive.
fn wait_for(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn drop_kernel_caches() {
    // "2": dentries and inodes only; the kernel then forgets every node it no longer uses.
    fs::write("/proc/sys/vm/drop_caches", "2").expect("drop caches (needs root)");
}

#[test]
fn listing_2000_entries_pages_through_readdir_and_readdirplus_without_leaking_references() {
    let counting = Arc::new(Counting { inner: memfs(""), refs: Mutex::new(HashMap::new()), lookups: 0.into() });
    let m = TestMount::new(counting.clone(), &FuseOptions::default());
    fs::create_dir(m.path("big")).unwrap();
    let expected: BTreeSet<String> = (0..2000).map(|i| format!("entry-with-a-longish-name-{i:05}")).collect();
    for name in &expected {
        File::create(m.path("big").join(name)).unwrap();
    }
    assert!(forgotten(&counting), "references left: {}", counting.outstanding());

    // Plain listing: readdirplus for the first page (READDIRPLUS_AUTO), readdir after.
    // Nothing but readdirplus looks names up here.
    let before = counting.lookups();
    let names = list(&m.path("big"));
    assert_eq!(names.len(), 2000, "no duplicates");
    assert_eq!(names.into_iter().collect::<BTreeSet<_>>(), expected);
    assert!(counting.lookups() > before + 1, "readdirplus was used");

    // `ls -l`-style: stat while listing makes the kernel use readdirplus for every page.
    assert!(forgotten(&counting), "references left: {}", counting.outstanding());
    let mut seen = BTreeSet::new();
    for e in fs::read_dir(m.path("big")).unwrap() {
        let e = e.unwrap();
        assert!(e.metadata().unwrap().is_file());
        assert!(seen.insert(e.file_name().to_string_lossy().into_owned()), "duplicate");
    }
    assert_eq!(seen, expected);

    // Every reference the plugin handed out, through lookup or readdirplus, comes back.
    assert!(forgotten(&counting), "references left: {}", counting.outstanding());
}

// ---------------------------------------------------------------------------------------
// A killed host leaves a dead mount; force_unmount recovers it.
// ---------------------------------------------------------------------------------------

const CHILD_ENV: &str = "PLUGFS_FUSE_TEST_CHILD_MOUNTPOINT";
const CHILD_AUTO_UNMOUNT_ENV: &str = "PLUGFS_FUSE_TEST_CHILD_AUTO_UNMOUNT";
const CHILD_WATCHDOG_ENV: &str = "PLUGFS_FUSE_TEST_CHILD_WATCHDOG";
const WATCHDOG_ENV: &str = "PLUGFS_FUSE_TEST_WATCHDOG";

/// Guard: whatever happens, the child dies and the mount point is released.
struct Child {
    process: std::process::Child,
    mountpoint: PathBuf,
}

impl Child {
    /// Re-runs this test binary as a child that mounts memfs at `mountpoint`.
    fn mount(mountpoint: &Path, auto_unmount: bool, watchdog: bool) -> Child {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args(["--exact", "child_process_that_mounts_and_waits_to_be_killed", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, mountpoint)
            .stdout(Stdio::piped());
        if auto_unmount {
            command.env(CHILD_AUTO_UNMOUNT_ENV, "1");
        }
        if watchdog {
            command.env(CHILD_WATCHDOG_ENV, "1");
        }
        let mut process = command.spawn().unwrap();
        let stdout = process.stdout.take().unwrap();
        let child = Child { process, mountpoint: mountpoint.to_path_buf() };
        let mounted = BufReader::new(stdout).lines().map_while(|l| l.ok()).any(|l| l.contains("MOUNTED"));
        assert!(mounted, "the child did not mount");
        child
    }

    /// SIGKILL: no chance to unmount.
    fn kill(&mut self) {
        self.process.kill().unwrap();
        self.process.wait().unwrap();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        // A dead mount answers ENOTCONN; an auto_unmount one is already gone.
        if fs::metadata(&self.mountpoint).is_err() {
            let _ = force_unmount(&self.mountpoint);
        }
    }
}

/// Not a test on its own: when re-executed with `CHILD_ENV` set, mounts memfs there,
/// says so on stdout, and serves until killed.
#[test]
fn child_process_that_mounts_and_waits_to_be_killed() {
    let Some(mountpoint) = std::env::var_os(CHILD_ENV) else { return };
    let auto_unmount = std::env::var_os(CHILD_AUTO_UNMOUNT_ENV).is_some();
    let options = FuseOptions { auto_unmount, ..FuseOptions::default() };
    // The watchdog is this test binary again, running `serve` as the test below.
    let _watchdog = std::env::var_os(CHILD_WATCHDOG_ENV).map(|_| {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args(["--exact", "child_process_that_serves_as_watchdog", "--nocapture", "--test-threads=1"])
            .env_remove(CHILD_ENV)
            .env(WATCHDOG_ENV, "1");
        let mut watchdog = plugfs_fuse::watchdog::Watchdog::spawn(command).unwrap();
        watchdog.watch(Path::new(&mountpoint)).unwrap();
        watchdog
    });
    let _mount = mount(Arc::new(memfs("")), Path::new(&mountpoint), &options).unwrap();
    println!("MOUNTED");
    io::stdout().flush().unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// Not a test on its own: when re-executed with `WATCHDOG_ENV` set, is the watchdog of a
/// child that mounts.
#[test]
fn child_process_that_serves_as_watchdog() {
    if std::env::var_os(WATCHDOG_ENV).is_none() {
        return;
    }
    plugfs_fuse::watchdog::serve(io::stdin().lock()).unwrap();
}

#[test]
fn force_unmount_recovers_the_mount_of_a_killed_process() {
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().to_path_buf();
    let parent_dev = fs::metadata(dir.path().parent().unwrap()).unwrap().dev();
    let mut child = Child::mount(&mountpoint, false, false);
    fs::write(mountpoint.join("f"), b"x").unwrap();

    // The mount stays, with nobody serving it.
    child.kill();
    assert_eq!(fs::metadata(&mountpoint).unwrap_err().raw_os_error(), Some(libc::ENOTCONN));

    force_unmount(&mountpoint).unwrap();
    let meta = fs::metadata(&mountpoint).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.dev(), parent_dev, "a plain directory of the parent filesystem again");
    assert_eq!(fs::read_dir(&mountpoint).unwrap().count(), 0);
}

/// Mounts in a child process, kills it (SIGKILL: no chance to unmount) and waits for
/// the mount point to be released, several times: a mount left behind only now and then is
/// the failure this catches.
fn killed_children_leave_no_mount(auto_unmount: bool, watchdog: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().to_path_buf();
    let parent_dev = fs::metadata(dir.path().parent().unwrap()).unwrap().dev();
    for round in 0..5 {
        let mut child = Child::mount(&mountpoint, auto_unmount, watchdog);
        assert_ne!(fs::metadata(&mountpoint).unwrap().dev(), parent_dev, "round {round}: mounted");
        fs::write(mountpoint.join("f"), b"x").unwrap();
        child.kill();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !fs::metadata(&mountpoint).is_ok_and(|m| m.dev() == parent_dev) {
            assert!(Instant::now() < deadline, "round {round}: the killed process's mount was left behind");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn auto_unmount_cleans_up_after_a_killed_process() {
    // fusermount3's watcher and the watchdog, side by side, as plugfs mounts.
    killed_children_leave_no_mount(true, true);
}

#[test]
fn the_watchdog_alone_unmounts_the_mount_of_a_killed_process() {
    killed_children_leave_no_mount(false, true);
}

/// The race behind a flaky CI run: fusermount3's watcher detached a killed host's mount,
/// the next mount at the same path began its handshake, and the watchdog, unmounting by
/// path, took that new mount down. The watchdog now only detaches a dead mount.
#[test]
fn the_watchdog_of_a_dead_host_leaves_a_live_mount_at_its_path_alone() {
    let dir = tempfile::tempdir().unwrap();
    let parent_dev = fs::metadata(dir.path().parent().unwrap()).unwrap().dev();
    let live = mount(Arc::new(memfs("")), dir.path(), &FuseOptions::default()).unwrap();
    fs::write(dir.path().join("f"), b"still here").unwrap();

    // The host's messages: watch this path, then the pipe ends without a goodbye.
    let hex: String = dir.path().as_os_str().as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    plugfs_fuse::watchdog::serve(format!("+{hex}\n").as_bytes()).unwrap();

    assert_ne!(fs::metadata(dir.path()).unwrap().dev(), parent_dev, "still mounted");
    assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"still here");
    live.unmount().unwrap();
}

/// Counts the lookups and getattrs the kernel sends, and lets it cache both for an hour,
/// so only an invalidation makes it ask again.
struct LongCache {
    inner: MemFs,
    lookups: AtomicUsize,
    getattrs: AtomicUsize,
}

const HOUR: Duration = Duration::from_secs(3600);

impl FileSystem for LongCache {
    fn lookup(&self, req: &Request, parent: NodeId, name: &OsStr) -> Result<Entry> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let e = self.inner.lookup(req, parent, name)?;
        Ok(Entry { entry_ttl: HOUR, attr_ttl: HOUR, ..e })
    }
    fn forget(&self, node: NodeId, nlookup: u64) {
        self.inner.forget(node, nlookup)
    }
    fn getattr(&self, req: &Request, node: NodeId, handle: Option<Handle>) -> Result<AttrOut> {
        self.getattrs.fetch_add(1, Ordering::SeqCst);
        let a = self.inner.getattr(req, node, handle)?;
        Ok(AttrOut { ttl: HOUR, ..a })
    }
    fn read(&self, req: &Request, node: NodeId, handle: Handle, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.inner.read(req, node, handle, offset, buf)
    }
    fn readdir(&self, req: &Request, node: NodeId, handle: Handle, cookie: u64, sink: &mut dyn DirSink) -> Result<()> {
        self.inner.readdir(req, node, handle, cookie, sink)
    }
}

#[test]
fn the_invalidator_makes_the_kernel_ask_again_for_a_cached_entry_and_cached_attributes() {
    let inner = memfs("");
    let (_, opened) = inner.create(&Request::default(), ROOT_ID, OsStr::new("f"), 0o644, libc::O_RDWR).unwrap();
    inner.release(&Request::default(), 2, opened.handle, 0, true).ok();
    let fs = Arc::new(LongCache { inner, lookups: AtomicUsize::new(0), getattrs: AtomicUsize::new(0) });
    let m = TestMount::new(fs.clone(), &FuseOptions::default());
    let invalidator = m.mount.as_ref().unwrap().invalidator().expect("a live session");
    let lookups = || fs.lookups.load(Ordering::SeqCst);
    let getattrs = || fs.getattrs.load(Ordering::SeqCst);

    fs::metadata(m.path("f")).unwrap();
    fs::metadata(m.path("f")).unwrap();
    assert_eq!(lookups(), 1, "the entry is cached");
    invalidator.inval_entry(ROOT_ID, OsStr::new("f")).unwrap();
    fs::metadata(m.path("f")).unwrap();
    assert_eq!(lookups(), 2, "asked again after inval_entry");
    invalidator.inval_entry(ROOT_ID, OsStr::new("never-looked-up")).expect("nothing cached is no error");

    fs::metadata(m.path("")).unwrap();
    let before = getattrs();
    fs::metadata(m.path("")).unwrap();
    assert_eq!(getattrs(), before, "the root's attributes are cached");
    invalidator.inval_inode(ROOT_ID, 0, 0).unwrap();
    fs::metadata(m.path("")).unwrap();
    assert_eq!(getattrs(), before + 1, "asked again after inval_inode");
    assert!(invalidator.open_handles().is_empty());
    let f = File::open(m.path("f")).unwrap();
    assert_eq!(invalidator.open_handles().len(), 1, "the open file's handle");
    assert!(!invalidator.open_handles()[0].0, "a file's, not a directory's");
    drop(f);
    assert!(wait_for(|| invalidator.open_handles().is_empty()), "released on close");
    assert!(invalidator.wait_for_earlier_requests(Duration::from_secs(10)), "nothing in flight");
}
