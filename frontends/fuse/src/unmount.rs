//! Unmounting at the kernel: the end of a session, and the recovery of a mount whose
//! process is gone.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

use fuser::BackgroundSession;

/// Ends a session by unmounting at the kernel, then joins its workers.
///
/// fuser's own unmount does not do here: with `auto_unmount` it only closes its socket to
/// the `fusermount3` watcher and expects that to unmount, which was seen to leave the
/// mount in place with every worker blocked reading `/dev/fuse`, so the join never ended.
/// Unmounting first makes the kernel end the session; fuser then finds nothing mounted.
pub(crate) fn stop_session(session: BackgroundSession, mountpoint: &Path) -> io::Result<()> {
    if session.guard.is_finished() {
        return session.join();
    }
    if let Err(busy) = kernel_unmount(mountpoint, false) {
        kernel_unmount(mountpoint, true)?;
        // Dropping the session detaches its thread, which serves the still-open files.
        drop(session);
        return Err(io::Error::other(format!("{busy}; detached it lazily instead")));
    }
    session.join()
}

/// Detaches the FUSE mount at `mountpoint` even when nothing serves it any more (its
/// process was killed; the mount point then answers `ENOTCONN`), so the directory can be
/// used again. Tries `fusermount3 -u -z` (and `fusermount -u -z`), then, as root,
/// `umount2(MNT_DETACH)` and `umount -l`. Open files keep the old mount alive, detached,
/// until they are closed. Also detaches a live mount, under the process serving it.
pub fn force_unmount(mountpoint: &Path) -> io::Result<()> {
    kernel_unmount(mountpoint, true)
}

/// Unmounts at the kernel: through `fusermount3`/`fusermount` (which also works for a
/// non-root mounter), then, as root, `umount2` and `umount`. `lazy` detaches even a busy
/// or dead mount; otherwise a busy mount fails with the helper's message.
pub(crate) fn kernel_unmount(mountpoint: &Path, lazy: bool) -> io::Result<()> {
    let mut failures = Vec::new();
    let args: &[&str] = if lazy { &["-u", "-z", "--"] } else { &["-u", "--"] };
    for helper in ["fusermount3", "fusermount"] {
        match Command::new(helper).args(args).arg(mountpoint).output() {
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => failures.push(format!("{helper}: {}", String::from_utf8_lossy(&out.stderr).trim())),
            Err(e) => failures.push(format!("{helper}: {e}")),
        }
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        #[cfg(target_os = "linux")]
        {
            let path = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "mount point contains a NUL byte"))?;
            let flags = if lazy { libc::MNT_DETACH } else { 0 };
            // SAFETY: `path` is a valid NUL-terminated string that outlives the call.
            if unsafe { libc::umount2(path.as_ptr(), flags) } == 0 {
                return Ok(());
            }
            failures.push(format!("umount2: {}", io::Error::last_os_error()));
        }
        if lazy {
            // `-l` (lazy) on Linux; elsewhere `-f` is the closest there is.
            let flag = if cfg!(target_os = "linux") { "-l" } else { "-f" };
            match Command::new("umount").arg(flag).arg(mountpoint).output() {
                Ok(out) if out.status.success() => return Ok(()),
                Ok(out) => failures.push(format!("umount {flag}: {}", String::from_utf8_lossy(&out.stderr).trim())),
                Err(e) => failures.push(format!("umount {flag}: {e}")),
            }
        }
    }
    Err(io::Error::other(format!("could not unmount {}: {}", mountpoint.display(), failures.join("; "))))
}
