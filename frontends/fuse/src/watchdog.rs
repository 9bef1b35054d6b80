//! A watchdog process that detaches a host's mounts when the host dies without
//! unmounting them (SIGKILL, a crash, the OOM killer), so no dead mount answering
//! "Transport endpoint is not connected" is left behind.
//!
//! The host starts the watchdog as a child process with a pipe to its stdin, tells it each
//! mountpoint before mounting there and each one it has unmounted cleanly, and says
//! goodbye when it exits cleanly. The watchdog only reads. When the pipe closes without a
//! goodbye, the host is gone (the kernel closes the pipe whatever killed it), and the
//! watchdog lazily unmounts every mountpoint it was told about that is still a FUSE mount,
//! live or dead: `umount2(MNT_DETACH)` as root, `fusermount3 -u -z` otherwise.
//!
//! This does not rely on `fusermount3`'s own `auto_unmount` watcher, which was seen to
//! leave a killed process's mount behind now and then; both can run side by side.
//!
//! ```no_run
//! # use std::path::Path;
//! # fn demo() -> std::io::Result<()> {
//! // In the host: `plugfs watchdog` runs `plugfs_fuse::watchdog::serve(stdin)`.
//! let mut command = std::process::Command::new(std::env::current_exe()?);
//! command.arg("watchdog");
//! let mut watchdog = plugfs_fuse::watchdog::Watchdog::spawn(command)?;
//! watchdog.watch(Path::new("/mnt/data"))?;
//! // ... mount, serve, unmount ...
//! watchdog.unwatch(Path::new("/mnt/data"))?;
//! watchdog.disarm()?;
//! # Ok(()) }
//! ```

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

use tracing::{debug, info, warn};

use crate::unmount::kernel_unmount;

/// The host's side: the watchdog process and the pipe to it.
#[derive(Debug)]
pub struct Watchdog {
    child: Child,
    pipe: Option<ChildStdin>,
}

impl Watchdog {
    /// Starts `command`, which must run [`serve`] on its stdin, as the watchdog. It runs
    /// in `/` (so it keeps no mount busy), in a process group of its own (so a Ctrl-C at
    /// the terminal reaches only the host, which shuts down cleanly), with stdout
    /// discarded and stderr inherited for its log lines.
    pub fn spawn(mut command: Command) -> io::Result<Watchdog> {
        command.stdin(Stdio::piped()).stdout(Stdio::null()).current_dir("/").process_group(0);
        let mut child = command.spawn()?;
        let pipe = child.stdin.take();
        Ok(Watchdog { child, pipe })
    }

    /// The watchdog's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn send(&mut self, tag: u8, path: Option<&Path>) -> io::Result<()> {
        let mut line = vec![tag];
        if let Some(path) = path {
            line.extend(hex(std::path::absolute(path)?.as_os_str().as_bytes()).bytes());
        }
        line.push(b'\n');
        let pipe = self.pipe.as_mut().ok_or_else(|| io::Error::other("the watchdog was disarmed"))?;
        pipe.write_all(&line)?;
        pipe.flush()
    }

    /// From now on, unmount `mountpoint` if the host dies. Call it before mounting, so a
    /// host killed right after its mount leaves nothing behind either.
    pub fn watch(&mut self, mountpoint: &Path) -> io::Result<()> {
        self.send(b'+', Some(mountpoint))
    }

    /// `mountpoint` is unmounted (or was never mounted): leave it alone.
    pub fn unwatch(&mut self, mountpoint: &Path) -> io::Result<()> {
        self.send(b'-', Some(mountpoint))
    }

    /// The host is exiting cleanly: the watchdog exits without unmounting anything.
    /// Waits for it to exit.
    pub fn disarm(mut self) -> io::Result<()> {
        let said = self.send(b'q', None);
        drop(self.pipe.take());
        self.child.wait()?;
        said
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Not disarmed: closing the pipe is the same news as the host dying. The child is
        // not waited for; it ends on its own once it has unmounted.
        drop(self.pipe.take());
    }
}

/// The watchdog's side, the whole work of its process: reads the host's messages from
/// `input` until the host says goodbye (returns at once) or the input ends without one
/// (unmounts every mountpoint still watched, then returns). Ignores SIGINT, SIGTERM and
/// SIGHUP, so it outlives a host that is being stopped; it ends when the host is gone.
pub fn serve(input: impl Read) -> io::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: setting a signal to SIG_IGN installs no handler and has no preconditions.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
    let mut watched: Vec<PathBuf> = Vec::new();
    for line in BufReader::new(input).split(b'\n') {
        let line = match line {
            Ok(line) => line,
            Err(e) => {
                warn!("watchdog: reading from the host failed ({e}); taking it for dead");
                break;
            }
        };
        match line.split_first() {
            Some((b'q', _)) => {
                debug!("watchdog: the host exited cleanly");
                return Ok(());
            }
            Some((b'+', rest)) => match unhex(rest) {
                Some(path) => watched.push(path),
                None => warn!("watchdog: ignoring a malformed message"),
            },
            Some((b'-', rest)) => match unhex(rest) {
                Some(path) => watched.retain(|p| *p != path),
                None => warn!("watchdog: ignoring a malformed message"),
            },
            _ => warn!("watchdog: ignoring a malformed message"),
        }
    }
    let mut failed = 0;
    for mountpoint in watched.iter().rev() {
        match detach_if_dead(mountpoint) {
            Ok(Detach::Detached) => {
                info!("watchdog: plugfs ended without unmounting; detached {}", mountpoint.display())
            }
            Ok(Detach::NotMounted) => debug!("watchdog: nothing of ours is mounted at {}", mountpoint.display()),
            Ok(Detach::Alive) => {
                // Someone mounted there again after fusermount3's own watcher unmounted ours.
                info!("watchdog: {} is a live mount of another process; leaving it", mountpoint.display())
            }
            Err(e) => {
                failed += 1;
                warn!("watchdog: plugfs ended without unmounting, and {e}");
            }
        }
    }
    if failed > 0 {
        return Err(io::Error::other(format!("{failed} mount(s) left behind")));
    }
    Ok(())
}

/// What [`detach_if_dead`] found at a watched mountpoint.
#[derive(Debug, PartialEq, Eq)]
enum Detach {
    /// A dead FUSE mount, now detached.
    Detached,
    /// No FUSE mount (any more): already unmounted, by fusermount3's watcher or by hand.
    NotMounted,
    /// A FUSE mount that answers: not the dead host's, so not ours to touch.
    Alive,
}

/// Detaches the FUSE mount at `path` if it is dead (its connection answers `ENOTCONN`).
///
/// Only a dead mount is touched. The race this avoids: fusermount3's `auto_unmount`
/// watcher detaches the dead mount first, something mounts at the same path again (a
/// restarted plugfs, a test's next round), and a watchdog that unmounted by path would take
/// the new mount down mid-handshake. Linux pins the mount it examined with an `O_PATH`
/// descriptor (which also keeps its mount id from being reused) and, as root, unmounts
/// exactly that mount through `/proc/self/fd`.
#[cfg(target_os = "linux")]
fn detach_if_dead(path: &Path) -> io::Result<Detach> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;

    // O_PATH does not open the directory through the filesystem, so a dead mount's root
    // can be pinned; following the path crosses into whatever is mounted on top.
    let pinned = match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Detach::NotMounted),
        Err(e) => return Err(io::Error::new(e.kind(), format!("cannot examine {}: {e}", path.display()))),
    };
    let mount_id = mount_id_of(&pinned)?;
    let table = std::fs::read("/proc/self/mountinfo")?;
    if !mountinfo_fstype(&table, mount_id).is_some_and(is_fuse_fstype) {
        return Ok(Detach::NotMounted);
    }
    if answers(&pinned) {
        return Ok(Detach::Alive);
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        let by_fd = std::ffi::CString::new(format!("/proc/self/fd/{}", pinned.as_raw_fd())).expect("no NUL");
        // SAFETY: `by_fd` is a valid NUL-terminated string that outlives the call.
        if unsafe { libc::umount2(by_fd.as_ptr(), libc::MNT_DETACH) } == 0 {
            return Ok(Detach::Detached);
        }
        let error = io::Error::last_os_error();
        // EINVAL: no longer a mount (fusermount3's watcher detached it meanwhile).
        return match error.raw_os_error() {
            Some(libc::EINVAL) => Ok(Detach::NotMounted),
            _ => Err(io::Error::new(error.kind(), format!("could not unmount {}: {error}", path.display()))),
        };
    }
    // Not root: only fusermount3 may unmount, and only by path. Make sure the path still
    // leads to the dead mount (the pinned descriptor keeps its id unique) just before.
    let now = match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH).open(path) {
        Ok(file) => mount_id_of(&file)?,
        Err(_) => return Ok(Detach::NotMounted),
    };
    if now != mount_id {
        return Ok(Detach::NotMounted);
    }
    kernel_unmount(path, true)?;
    Ok(Detach::Detached)
}

/// Elsewhere there is no cheap way to tell a dead mount from a new one: try, and let the
/// unmount refuse what is not a mount.
#[cfg(not(target_os = "linux"))]
fn detach_if_dead(path: &Path) -> io::Result<Detach> {
    match kernel_unmount(path, true) {
        Ok(()) => Ok(Detach::Detached),
        Err(_) => Ok(Detach::NotMounted),
    }
}

/// How long a mount may take to answer `statfs` before the watchdog takes it for a live,
/// slow one. A dead connection answers at once.
#[cfg(target_os = "linux")]
const LIVENESS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether the filesystem `file` is on answers a request. A dead FUSE connection answers
/// `ENOTCONN`, or `ECONNABORTED` for a request queued while it was torn down (the host's
/// end of our pipe closes before its `/dev/fuse`). A new mount still in its handshake
/// answers once that completes; one that never answers is left alone too.
#[cfg(target_os = "linux")]
fn answers(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;

    let Ok(probe) = file.try_clone() else { return true };
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new().name("watchdog-statfs".into()).spawn(move || {
        // SAFETY: an all-zero statfs is a valid value to be overwritten.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: `probe` is an open descriptor and `st` a valid statfs, both live for the call.
        let result = unsafe { libc::fstatfs(probe.as_raw_fd(), &mut st) };
        let _ = tx.send(if result == 0 { None } else { io::Error::last_os_error().raw_os_error() });
    });
    if spawned.is_err() {
        return true;
    }
    match rx.recv_timeout(LIVENESS_TIMEOUT) {
        Ok(Some(libc::ENOTCONN | libc::ECONNABORTED)) => false,
        Ok(_) => true,
        // A thread stuck in a FUSE request is killable; it ends with this process.
        Err(_) => true,
    }
}

/// The id of the mount `file` is on, from `/proc/self/fdinfo` (no filesystem request).
#[cfg(target_os = "linux")]
fn mount_id_of(file: &std::fs::File) -> io::Result<u64> {
    use std::os::fd::AsRawFd;

    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", file.as_raw_fd()))?;
    info.lines()
        .find_map(|line| line.strip_prefix("mnt_id:"))
        .and_then(|id| id.trim().parse().ok())
        .ok_or_else(|| io::Error::other("/proc/self/fdinfo has no mnt_id"))
}

/// The filesystem type `/proc/self/mountinfo` text gives for mount id `id`.
#[cfg(any(target_os = "linux", test))]
fn mountinfo_fstype(table: &[u8], id: u64) -> Option<&[u8]> {
    table.split(|&b| b == b'\n').find_map(|line| {
        // "id parent major:minor root mountpoint options... - fstype source superoptions"
        let mut fields = line.split(|&b| b == b' ');
        let this_id: u64 = std::str::from_utf8(fields.next()?).ok()?.parse().ok()?;
        (this_id == id).then(|| fields.skip_while(|f| *f != b"-").nth(1)).flatten()
    })
}

#[cfg(any(target_os = "linux", test))]
fn is_fuse_fstype(fstype: &[u8]) -> bool {
    fstype == b"fuse" || fstype.starts_with(b"fuse.")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &[u8]) -> Option<PathBuf> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let bytes = text
        .chunks(2)
        .map(|pair| std::str::from_utf8(pair).ok().and_then(|s| u8::from_str_radix(s, 16).ok()))
        .collect::<Option<Vec<u8>>>()?;
    (!bytes.is_empty()).then(|| PathBuf::from(std::ffi::OsString::from_vec(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_cross_the_pipe_byte_for_byte() {
        let path = Path::new("/mnt/with space/\n and \u{e9}");
        assert_eq!(unhex(hex(path.as_os_str().as_bytes()).as_bytes()).as_deref(), Some(path));
        assert_eq!(unhex(b"zz"), None);
        assert_eq!(unhex(b"abc"), None);
    }

    #[test]
    fn the_mount_table_gives_each_mount_ids_type() {
        let table = b"36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - fuse.plugfs plugfs:x rw,user_id=0\n\
                      37 35 98:1 / /mnt/c rw shared:2 - ext4 /dev/sda rw\n";
        assert_eq!(mountinfo_fstype(table, 36), Some(&b"fuse.plugfs"[..]));
        assert_eq!(mountinfo_fstype(table, 37), Some(&b"ext4"[..]));
        assert_eq!(mountinfo_fstype(table, 3), None);
        assert!(is_fuse_fstype(b"fuse") && is_fuse_fstype(b"fuse.plugfs") && !is_fuse_fstype(b"ext4"));
    }

    #[test]
    fn a_goodbye_leaves_everything_mounted_and_the_end_of_input_unmounts_only_fuse_mounts() {
        // A goodbye returns before looking at any mountpoint.
        serve(&b"+2f\nq\n"[..]).unwrap();
        // "/" is watched but is no FUSE mount, so nothing is touched and nothing fails.
        serve(&b"+2f\n"[..]).unwrap();
    }
}
