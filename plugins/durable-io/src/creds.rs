//! Acting as the caller: a per-thread switch of fsuid, fsgid, supplementary groups and
//! effective capabilities for the duration of the syscalls of one operation.
//!
//! Every piece is per-thread on Linux, so one host thread can serve user 1234 while another
//! serves user 0:
//!
//! - `setfsuid`/`setfsgid` change only the calling thread (glibc does not broadcast them to
//!   other threads as it does `setuid`). Switching fsuid away from 0 also drops the
//!   filesystem capabilities (`CAP_DAC_OVERRIDE`, `CAP_FOWNER`, `CAP_CHOWN`, ...) from the
//!   thread's effective set; switching back restores them.
//! - Supplementary groups are set with the raw `setgroups` syscall, which changes only the
//!   calling thread. libc's `setgroups` must not be used: glibc broadcasts it to every
//!   thread of the process. The groups come from the `Groups:` line of the caller's
//!   `/proc/PID/status`, as libfuse's `fuse_req_getgroups` reads them.
//! - The capabilities that are not filesystem capabilities (`CAP_SYS_ADMIN` reaches
//!   `trusted.*` and `security.*` xattrs, `CAP_SYS_RESOURCE` the blocks ext4 reserves for
//!   root) are cleared from the effective set with `capset`, also per-thread; they stay in
//!   the permitted set, so raising them back needs no privilege.
//!
//! The backing filesystem then checks every permission as the caller and makes the caller
//! the owner of what it creates; a non-root caller gets no root powers through us. A caller
//! with uid 0 keeps the host's full rights (only its fsgid is switched, for the group of
//! new files).

use std::io::Read;

use plugfs_plugin_api::{Errno, Error, Request, Result};
use rustix::process::Gid;
use rustix::thread::{CapabilitySet, CapabilitySets};

fn current_fsuid() -> u32 {
    // -1 is never a valid id, so the call changes nothing and only reports the current one.
    // SAFETY: setfsuid has no memory-safety preconditions.
    unsafe { libc::setfsuid(u32::MAX) as u32 }
}

fn current_fsgid() -> u32 {
    // SAFETY: as above.
    unsafe { libc::setfsgid(u32::MAX) as u32 }
}

fn set_fsuid(uid: u32) -> bool {
    // SAFETY: setfsuid has no memory-safety preconditions.
    unsafe { libc::setfsuid(uid) };
    current_fsuid() == uid
}

fn set_fsgid(gid: u32) -> bool {
    // SAFETY: setfsgid has no memory-safety preconditions.
    unsafe { libc::setfsgid(gid) };
    current_fsgid() == gid
}

fn refused(what: String) -> Error {
    Error::with_message(Errno::EPERM, format!("durable-io: {what}"))
}

/// The supplementary groups of the process `pid`, if it still is the caller of `req`: its
/// filesystem uid and gid (the fourth fields of `Uid:` and `Gid:`, which is what FUSE sends
/// as the caller's ids) must be `req`'s. Anything else (pid 0 for requests the kernel makes
/// itself, a process that exited, a pid reused by another user's process) gives no groups,
/// so an unknown caller never gains a group it might not have.
pub(crate) fn caller_groups(req: &Request) -> Vec<u32> {
    if req.pid == 0 {
        return Vec::new();
    }
    let mut text = String::new();
    let read = std::fs::File::open(format!("/proc/{}/status", req.pid)).and_then(|mut f| f.read_to_string(&mut text));
    if let Err(e) = read {
        tracing::debug!(pid = req.pid, "durable-io: no supplementary groups for the caller: {e}");
        return Vec::new();
    }
    let ids = |key: &str| -> Vec<u32> {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|rest| rest.split_whitespace().filter_map(|v| v.parse().ok()).collect())
            .unwrap_or_default()
    };
    let (uids, gids) = (ids("Uid:"), ids("Gid:"));
    if uids.get(3) != Some(&req.uid) || gids.get(3) != Some(&req.gid) {
        tracing::debug!(pid = req.pid, uid = req.uid, gid = req.gid, "durable-io: pid is not the caller; no groups");
        return Vec::new();
    }
    ids("Groups:")
}

/// What [`AsCaller`] changed, to be put back.
struct Saved {
    uid: Option<u32>,
    gid: Option<u32>,
    groups: Option<Vec<Gid>>,
    caps: Option<CapabilitySets>,
}

/// While alive, the current thread acts as the caller (see the module docs); dropping it
/// restores the thread's previous identity, on every path: early returns, errors and
/// unwinding panics.
#[must_use = "the credentials switch back when the guard is dropped"]
pub(crate) struct AsCaller {
    saved: Saved,
}

impl AsCaller {
    /// Switches to `req`'s identity if `enabled` (the host runs as root). The parts that
    /// already match are left alone.
    pub(crate) fn enter(enabled: bool, req: &Request) -> Result<AsCaller> {
        AsCaller::enter_with(enabled, req, None)
    }

    /// [`AsCaller::enter`] with the supplementary groups read earlier (`Some`), for work done
    /// on behalf of a caller after its request (an atomic replace at release, when the
    /// caller may have exited).
    pub(crate) fn enter_with(enabled: bool, req: &Request, groups: Option<&[u32]>) -> Result<AsCaller> {
        let mut guard = AsCaller { saved: Saved { uid: None, gid: None, groups: None, caps: None } };
        if !enabled {
            return Ok(guard);
        }
        let saved = &mut guard.saved;
        // Groups and gid first, while the thread still holds CAP_SETGID for certain; the
        // capabilities go last, because setfsuid back to 0 on drop needs CAP_SETUID.
        if req.uid != 0 {
            let groups: Vec<Gid> = match groups {
                Some(g) => g.iter().copied().map(Gid::from_raw).collect(),
                None => caller_groups(req).into_iter().map(Gid::from_raw).collect(),
            };
            let old = rustix::process::getgroups().map_err(|e| refused(format!("getgroups: {e}")))?;
            if old != groups {
                rustix::thread::set_thread_groups(&groups)
                    .map_err(|e| refused(format!("setgroups for uid {}: {e}", req.uid)))?;
                saved.groups = Some(old);
            }
        }
        let gid = current_fsgid();
        if gid != req.gid {
            saved.gid = Some(gid);
            if !set_fsgid(req.gid) {
                return Err(refused(format!("setfsgid({}) failed", req.gid)));
            }
        }
        let uid = current_fsuid();
        if uid != req.uid {
            saved.uid = Some(uid);
            if !set_fsuid(req.uid) {
                return Err(refused(format!("setfsuid({}) failed", req.uid)));
            }
        }
        if req.uid != 0 {
            let caps = rustix::thread::capabilities(None).map_err(|e| refused(format!("capget: {e}")))?;
            if !caps.effective.is_empty() {
                rustix::thread::set_capabilities(None, CapabilitySets { effective: CapabilitySet::empty(), ..caps })
                    .map_err(|e| refused(format!("capset: {e}")))?;
                saved.caps = Some(caps);
            }
        }
        Ok(guard)
    }
}

impl Drop for AsCaller {
    fn drop(&mut self) {
        // The reverse order of `enter`. A failure here would leave a host thread acting as
        // someone else; none of these can fail when undoing what `enter` did, but say so
        // loudly if one does.
        let s = &mut self.saved;
        if let Some(caps) = s.caps.take()
            && let Err(e) = rustix::thread::set_capabilities(None, caps)
        {
            tracing::error!("durable-io: cannot restore the thread's capabilities: {e}");
        }
        if let Some(uid) = s.uid.take()
            && !set_fsuid(uid)
        {
            tracing::error!("durable-io: cannot restore the thread's fsuid {uid}");
        }
        if let Some(gid) = s.gid.take()
            && !set_fsgid(gid)
        {
            tracing::error!("durable-io: cannot restore the thread's fsgid {gid}");
        }
        if let Some(groups) = s.groups.take()
            && let Err(e) = rustix::thread::set_thread_groups(&groups)
        {
            tracing::error!("durable-io: cannot restore the thread's groups: {e}");
        }
    }
}

/// The thread's identity as [`AsCaller`] switches it, for tests.
#[cfg(test)]
fn identity() -> (u32, u32, Vec<u32>, CapabilitySet) {
    let groups = rustix::process::getgroups().unwrap().into_iter().map(Gid::as_raw).collect();
    (current_fsuid(), current_fsgid(), groups, rustix::thread::capabilities(None).unwrap().effective)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    /// A process running as `uid`:`gid` with supplementary `groups`, for its
    /// `/proc/PID/status`. Raw syscalls in the child: it has one thread.
    fn process_as(uid: u32, gid: u32, groups: &[u32]) -> std::process::Child {
        let groups = groups.to_vec();
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        // SAFETY: only async-signal-safe raw syscalls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let ok = libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) == 0
                    && libc::syscall(libc::SYS_setgid, gid) == 0
                    && libc::syscall(libc::SYS_setuid, uid) == 0;
                if ok { Ok(()) } else { Err(std::io::Error::last_os_error()) }
            })
        };
        cmd.spawn().unwrap()
    }

    #[test]
    fn switch_is_per_thread_and_restored() {
        if !is_root() {
            return;
        }
        let mut child = process_as(1234, 5678, &[4242, 4343]);
        let req = Request { uid: 1234, gid: 5678, pid: child.id() };
        let before = identity();
        // The other thread must exist before the switch: a new thread copies its creator's
        // credentials.
        let (ask, asked) = std::sync::mpsc::channel::<()>();
        let (tell, told) = std::sync::mpsc::channel();
        let other = std::thread::spawn(move || {
            while asked.recv().is_ok() {
                tell.send(identity()).unwrap();
            }
        });
        {
            let _g = AsCaller::enter(true, &req).unwrap();
            let (uid, gid, groups, caps) = identity();
            assert_eq!((uid, gid, groups), (1234, 5678, vec![4242, 4343]));
            assert!(caps.is_empty(), "a non-root caller keeps no capabilities: {caps:?}");
            ask.send(()).unwrap();
            assert_eq!(told.recv().unwrap(), before, "another thread must keep its own credentials");
        }
        drop(ask);
        other.join().unwrap();
        assert_eq!(identity(), before);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn identity_is_restored_when_a_panic_unwinds() {
        if !is_root() {
            return;
        }
        let before = identity();
        let r = std::panic::catch_unwind(|| {
            let _g = AsCaller::enter(true, &Request { uid: 1234, gid: 5678, pid: 0 }).unwrap();
            assert_eq!(identity().0, 1234);
            panic!("in the middle of an operation");
        });
        assert!(r.is_err());
        assert_eq!(identity(), before);
    }

    #[test]
    fn a_pid_that_is_not_the_caller_gives_no_groups() {
        if !is_root() {
            return;
        }
        let mut child = process_as(1234, 5678, &[4242]);
        assert_eq!(caller_groups(&Request { uid: 1234, gid: 5678, pid: child.id() }), vec![4242]);
        // Another uid or gid than the process has: a reused pid, or a forged request.
        assert!(caller_groups(&Request { uid: 1235, gid: 5678, pid: child.id() }).is_empty());
        assert!(caller_groups(&Request { uid: 1234, gid: 0, pid: child.id() }).is_empty());
        assert!(caller_groups(&Request { uid: 1234, gid: 5678, pid: 0 }).is_empty());
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(caller_groups(&Request { uid: 1234, gid: 5678, pid: child.id() }).is_empty(), "exited");
    }

    #[test]
    fn root_callers_keep_their_capabilities() {
        if !is_root() {
            return;
        }
        let before = identity();
        let _g = AsCaller::enter(true, &Request { uid: 0, gid: 5678, pid: 0 }).unwrap();
        let (uid, gid, groups, caps) = identity();
        assert_eq!((uid, gid, groups, caps), (0, 5678, before.2, before.3));
    }

    #[test]
    fn disabled_switch_changes_nothing() {
        let before = identity();
        let _g = AsCaller::enter(false, &Request { uid: 1234, gid: 5678, pid: 0 }).unwrap();
        assert_eq!(identity(), before);
    }
}
