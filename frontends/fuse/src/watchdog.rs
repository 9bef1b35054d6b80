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
        if !is_fuse_mount(mountpoint) {
            continue;
        }
        match kernel_unmount(mountpoint, true) {
            Ok(()) => info!("watchdog: plugfs ended without unmounting; detached {}", mountpoint.display()),
            // fusermount3's own auto_unmount watcher got there first.
            Err(_) if !is_fuse_mount(mountpoint) => {
                debug!("watchdog: {} was unmounted meanwhile", mountpoint.display())
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

/// Whether a FUSE filesystem is mounted at `path`, served or dead.
///
/// The mount table answers without asking the filesystem. `statfs` is the fallback for a
/// path the table spells differently (through a symlink): it asks the filesystem, and a
/// dying one answers `ECONNABORTED` (the request was queued when the connection was torn
/// down: the host's end of our pipe closes before its `/dev/fuse`) or `ENOTCONN` (after).
fn is_fuse_mount(path: &Path) -> bool {
    #[cfg(target_os = "linux")]
    {
        if let Ok(table) = std::fs::read("/proc/self/mountinfo")
            && mountinfo_has_fuse_mount(&table, path.as_os_str().as_bytes())
        {
            return true;
        }
        const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
        let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else { return false };
        // SAFETY: an all-zero statfs is a valid value to be overwritten.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is NUL-terminated and `st` is a valid statfs, both live for the call.
        if unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0 {
            #[allow(clippy::unnecessary_cast)] // f_type's type differs between libcs
            return st.f_type as i64 == FUSE_SUPER_MAGIC;
        }
        matches!(io::Error::last_os_error().raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED))
    }
    #[cfg(not(target_os = "linux"))]
    {
        // No cheap check: try, and let the unmount refuse what is not a mount.
        let _ = path;
        true
    }
}

/// Whether `/proc/self/mountinfo` text lists a `fuse` or `fuse.*` mount at `path`.
#[cfg(any(target_os = "linux", test))]
fn mountinfo_has_fuse_mount(table: &[u8], path: &[u8]) -> bool {
    table.split(|&b| b == b'\n').any(|line| {
        // "id parent major:minor root mountpoint options... - fstype source superoptions"
        let mut fields = line.split(|&b| b == b' ');
        let Some(mountpoint) = fields.nth(4) else { return false };
        let Some(fstype) = fields.skip_while(|f| *f != b"-").nth(1) else { return false };
        (fstype == b"fuse" || fstype.starts_with(b"fuse.")) && unescape_octal(mountpoint) == path
    })
}

/// Undoes mountinfo's `\NNN` escapes (space, tab, newline, backslash).
#[cfg(any(target_os = "linux", test))]
fn unescape_octal(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let code = field.get(i + 1..i + 4).filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match code {
            Some(d) => {
                out.push(d.iter().fold(0u8, |n, c| n.wrapping_mul(8).wrapping_add(c - b'0')));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
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
    fn the_mount_table_is_read_with_its_escapes() {
        let table = b"36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - fuse.plugfs plugfs:x rw,user_id=0\n\
                      37 35 98:1 / /mnt/c rw - ext4 /dev/sda rw\n";
        assert!(mountinfo_has_fuse_mount(table, b"/mnt/a b"));
        assert!(!mountinfo_has_fuse_mount(table, b"/mnt/c"), "not FUSE");
        assert!(!mountinfo_has_fuse_mount(table, b"/mnt/a"));
    }

    #[test]
    fn a_goodbye_leaves_everything_mounted_and_the_end_of_input_unmounts_only_fuse_mounts() {
        // A goodbye returns before looking at any mountpoint.
        serve(&b"+2f\nq\n"[..]).unwrap();
        // "/" is watched but is no FUSE mount, so nothing is touched and nothing fails.
        serve(&b"+2f\n"[..]).unwrap();
    }
}
