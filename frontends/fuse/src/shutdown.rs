//! What a mount needs to shut down without losing anything: a gate that counts the
//! requests in flight and, once closed, refuses new ones; and the table of the file and
//! directory handles the kernel has not released yet, so they can be released through the
//! plugin before the backend goes away.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use plugfs_plugin_api::{FileSystem, Handle, NodeId, Request};
use tracing::{debug, warn};

/// Counts requests in flight; once closed, admits only the ones that give something back.
/// It also tells when every request begun before a moment has ended ([`Gate::barrier`]).
#[derive(Debug, Default)]
pub(crate) struct Gate {
    closed: AtomicBool,
    /// Requests in flight by the epoch they began in: a barrier moves new requests to the
    /// other epoch and waits for the old one to empty. Entering costs one atomic load more
    /// than a single counter would.
    in_flight: [AtomicUsize; 2],
    epoch: AtomicUsize,
    /// One barrier at a time, so an epoch is reused only once it has emptied (or its
    /// barrier gave up).
    barrier: Mutex<()>,
}

/// One request in flight; dropping it ends it.
pub(crate) struct InFlight<'a>(&'a Gate, usize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight[self.1].fetch_sub(1, Ordering::SeqCst);
    }
}

impl Gate {
    fn count(&self) -> InFlight<'_> {
        let epoch = self.epoch.load(Ordering::SeqCst) & 1;
        self.in_flight[epoch].fetch_add(1, Ordering::SeqCst);
        InFlight(self, epoch)
    }

    /// Admits a request, or refuses it (None) once the gate is closed.
    pub(crate) fn enter(&self) -> Option<InFlight<'_>> {
        // Counted before the check, so `close` followed by a zero count means nothing
        // admitted is still running.
        let admitted = self.count();
        if self.closed.load(Ordering::SeqCst) { None } else { Some(admitted) }
    }

    /// Admits a request even when closed: release, releasedir, flush and forget only give
    /// back what a caller holds, and must reach the plugin while the mount drains.
    pub(crate) fn enter_always(&self) -> InFlight<'_> {
        self.count()
    }

    /// Refuses every later request but those of [`enter_always`](Self::enter_always).
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Requests being served right now.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.iter().map(|n| n.load(Ordering::SeqCst)).sum()
    }

    /// Waits until every request that entered before this call has ended, replies and
    /// bookkeeping included; at most `timeout`. Returns whether they all ended.
    pub(crate) fn barrier(&self, timeout: Duration) -> bool {
        let _one = self.barrier.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.epoch.fetch_add(1, Ordering::SeqCst) & 1;
        let start = Instant::now();
        let mut pause = Duration::from_micros(50);
        while self.in_flight[old].load(Ordering::SeqCst) > 0 {
            if start.elapsed() >= timeout {
                return false;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
        true
    }
}

/// A file or a directory handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    File,
    Dir,
}

/// What is known of an open handle.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OpenHandle {
    node: NodeId,
    flags: i32,
    /// Opened with kernel passthrough (it holds a reference on its node's backing id).
    pub passthrough: bool,
}

/// The handles handed to the kernel and not yet released. Whoever takes a handle out of
/// the table releases it through the plugin, so each is released exactly once: by the
/// kernel's release, or by [`release_all`](Self::release_all) at shutdown.
#[derive(Debug, Default)]
pub(crate) struct OpenHandles {
    open: Mutex<HashMap<(Kind, Handle), OpenHandle>>,
}

/// What [`OpenHandles::release_all`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Handles released through the plugin.
    pub released: usize,
    /// Of those, the ones whose release the plugin answered with an error (logged).
    pub failed: usize,
}

impl OpenHandles {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Kind, Handle), OpenHandle>> {
        // A panic while holding the lock leaves a consistent map: every update is one call.
        self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records a handle about to be given to the kernel.
    pub(crate) fn insert(&self, kind: Kind, handle: Handle, node: NodeId, flags: i32, passthrough: bool) {
        self.lock().insert((kind, handle), OpenHandle { node, flags, passthrough });
    }

    /// Records that a handle was opened with kernel passthrough (before the reply that
    /// lets the kernel release it is sent).
    pub(crate) fn mark_passthrough(&self, kind: Kind, handle: Handle) {
        if let Some(h) = self.lock().get_mut(&(kind, handle)) {
            h.passthrough = true;
        }
    }

    /// Takes a handle out for the kernel's release; None if shutdown released it already.
    pub(crate) fn take(&self, kind: Kind, handle: Handle) -> Option<OpenHandle> {
        self.lock().remove(&(kind, handle))
    }

    /// Every handle open now: (is a directory's, handle).
    pub(crate) fn snapshot(&self) -> Vec<(bool, Handle)> {
        self.lock().keys().map(|(kind, h)| (*kind == Kind::Dir, *h)).collect()
    }

    /// How many handles are open.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Releases every handle the kernel still holds through the plugin, as the kernel
    /// would on the last close: the plugin's `release` (with a flush) or `releasedir`.
    pub(crate) fn release_all(&self, fs: &dyn FileSystem) -> Released {
        let open: Vec<_> = self.lock().drain().collect();
        // No caller: the host itself gives these back.
        let (uid, gid) = own_ids();
        let req = Request { uid, gid, pid: std::process::id() };
        let mut done = Released::default();
        for ((kind, handle), h) in open {
            let result = match kind {
                Kind::File => fs.release(&req, h.node, handle, h.flags, true),
                Kind::Dir => fs.releasedir(&req, h.node, handle),
            };
            done.released += 1;
            match result {
                Ok(()) => debug!(node = h.node, handle, ?kind, "released at shutdown"),
                Err(e) => {
                    done.failed += 1;
                    warn!(node = h.node, handle, ?kind, errno = ?e.errno(), message = e.message().unwrap_or(""),
                        "release at shutdown failed");
                }
            }
        }
        done
    }
}

/// The effective uid and gid of this process.
fn own_ids() -> (u32, u32) {
    // SAFETY: geteuid and getegid have no preconditions and cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_gate_refuses_but_still_counts_what_gives_back() {
        let gate = Gate::default();
        let a = gate.enter().expect("open gate admits");
        assert_eq!(gate.in_flight(), 1);
        gate.close();
        assert!(gate.enter().is_none(), "closed gate refuses");
        assert_eq!(gate.in_flight(), 1, "a refused request is not in flight");
        let b = gate.enter_always();
        assert_eq!(gate.in_flight(), 2);
        drop((a, b));
        assert_eq!(gate.in_flight(), 0);
    }

    #[test]
    fn a_handle_is_taken_once() {
        let handles = OpenHandles::default();
        handles.insert(Kind::File, 7, 2, 0, true);
        handles.insert(Kind::Dir, 7, 1, 0, false);
        assert_eq!(handles.len(), 2);
        assert!(handles.take(Kind::File, 7).is_some_and(|h| h.passthrough));
        assert!(handles.take(Kind::File, 7).is_none(), "released already");
        assert!(handles.take(Kind::Dir, 7).is_some());
    }
}

#[cfg(test)]
mod gate_tests {
    use super::*;

    #[test]
    fn a_barrier_waits_for_the_requests_begun_before_it() {
        let gate = Gate::default();
        let early = gate.enter().unwrap();
        assert!(!gate.barrier(Duration::ZERO), "a request begun before is running");
        drop(early);
        assert!(gate.barrier(Duration::ZERO));
        let _late = gate.enter_always();
        assert_eq!(gate.in_flight(), 1);
        // Begun after the last barrier, before the next one: the next one waits for it.
        assert!(!gate.barrier(Duration::ZERO));
    }
}
