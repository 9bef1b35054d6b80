//! Acting as the caller: a per-thread fsuid/fsgid switch for the duration of one syscall.
//!
//! `setfsuid`/`setfsgid` change only the calling thread (glibc does not broadcast them to
//! other threads as it does `setuid`), so one host thread can create a file as user 1234
//! while another serves user 0. The backing filesystem then both checks permissions as the
//! caller and makes the caller the owner. Switching fsuid away from 0 also drops the
//! filesystem capabilities from the thread's effective set (the kernel does this), so a
//! caller gets no root powers through us; switching back restores them.
//!
//! Supplementary groups are not switched: the thread keeps the host's.

use plugfs_plugin_api::{Errno, Error, Request, Result};

fn current_fsuid() -> u32 {
    // -1 is never a valid id, so the call changes nothing and only reports the current one.
    // SAFETY: setfsuid has no memory-safety preconditions.
    unsafe { libc::setfsuid(u32::MAX) as u32 }
}

fn current_fsgid() -> u32 {
    // SAFETY: as above.
    unsafe { libc::setfsgid(u32::MAX) as u32 }
}

/// While alive, the current thread's fsuid/fsgid are the caller's; dropping it restores the
/// previous ones (also on unwind).
#[must_use = "the credentials switch back when the guard is dropped"]
pub(crate) struct AsCaller {
    old_uid: Option<u32>,
    old_gid: Option<u32>,
}

impl AsCaller {
    /// Switches to `req`'s uid and gid if `enabled` (the host runs as root) and they differ
    /// from the current ones.
    pub(crate) fn enter(enabled: bool, req: &Request) -> Result<AsCaller> {
        let mut guard = AsCaller { old_uid: None, old_gid: None };
        if !enabled {
            return Ok(guard);
        }
        // The group first: it needs CAP_SETGID, which a non-root fsuid keeps anyway, but
        // doing it while still fully privileged keeps the order obviously right.
        let gid = current_fsgid();
        if gid != req.gid {
            // SAFETY: setfsgid has no memory-safety preconditions.
            unsafe { libc::setfsgid(req.gid) };
            guard.old_gid = Some(gid);
            if current_fsgid() != req.gid {
                return Err(Error::with_message(Errno::EPERM, format!("durable-io: setfsgid({}) failed", req.gid)));
            }
        }
        let uid = current_fsuid();
        if uid != req.uid {
            // SAFETY: setfsuid has no memory-safety preconditions.
            unsafe { libc::setfsuid(req.uid) };
            guard.old_uid = Some(uid);
            if current_fsuid() != req.uid {
                return Err(Error::with_message(Errno::EPERM, format!("durable-io: setfsuid({}) failed", req.uid)));
            }
        }
        Ok(guard)
    }
}

impl Drop for AsCaller {
    fn drop(&mut self) {
        // SAFETY: setfsuid/setfsgid have no memory-safety preconditions.
        if let Some(uid) = self.old_uid {
            unsafe { libc::setfsuid(uid) };
        }
        if let Some(gid) = self.old_gid {
            unsafe { libc::setfsgid(gid) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_is_per_thread_and_restored() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let req = Request { uid: 1234, gid: 5678, pid: 0 };
        // The other thread must exist before the switch: a new thread copies its creator's
        // credentials.
        let (ask, asked) = std::sync::mpsc::channel::<()>();
        let (tell, told) = std::sync::mpsc::channel();
        let other = std::thread::spawn(move || {
            while asked.recv().is_ok() {
                tell.send((current_fsuid(), current_fsgid())).unwrap();
            }
        });
        {
            let _g = AsCaller::enter(true, &req).unwrap();
            assert_eq!((current_fsuid(), current_fsgid()), (1234, 5678));
            ask.send(()).unwrap();
            assert_eq!(told.recv().unwrap(), (0, 0), "another thread must keep its own credentials");
        }
        drop(ask);
        other.join().unwrap();
        assert_eq!((current_fsuid(), current_fsgid()), (0, 0));
    }

    #[test]
    fn disabled_switch_changes_nothing() {
        let before = (current_fsuid(), current_fsgid());
        let _g = AsCaller::enter(false, &Request { uid: 1234, gid: 5678, pid: 0 }).unwrap();
        assert_eq!((current_fsuid(), current_fsgid()), before);
    }
}
