//! Kernel FUSE passthrough: a plugin's backing descriptor registered with the kernel, so
//! reads, writes and mmap of an open file go to the backing file without the daemon.
//!
//! The kernel allows one backing file per FUSE inode while any passthrough open of it
//! lasts (a second open naming a different backing id fails with `EIO`), and every open
//! of an inode in passthrough mode must be a passthrough open. So backing ids are kept
//! per node, counted by the handles that use them, and closed with the last release. The
//! kernel opens its own backing file per FUSE file from the registered one, with the
//! caller's open flags and the credentials of the thread that registered it.

use std::collections::HashMap;
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use fuser::{BackingId, ReplyCreate, ReplyOpen};
use plugfs_plugin_api::NodeId;
use tracing::{info, warn};

/// How many independently locked parts the table of backing ids has.
const SHARDS: usize = 32;

/// Per node: its backing id (shared with the opens still replying with it) and how many
/// handles use it.
type Ids = HashMap<NodeId, (Arc<BackingId>, usize)>;

/// The backing ids of one mount, by node, and whether passthrough is in use at all.
///
/// In shards by node, each locked only for map updates and a node's first registration
/// (one ioctl), never across a reply: one table-wide lock held across registration and
/// reply made every passthrough open and release of the mount wait for each other's (a
/// create's reply wakes the caller, whose close sends the release at once), the largest
/// cost of our own in a profile of creating 10,000 files (bench/RESULTS.md).
#[derive(Debug, Default)]
pub(crate) struct Backing {
    /// Decided at `init`; turned off for good if the kernel refuses a registration for
    /// lack of privilege.
    enabled: AtomicBool,
    ids: [Mutex<Ids>; SHARDS],
}

/// Why passthrough is or is not used, decided at `init`.
pub(crate) fn decide(wanted: bool, plugin_can: bool, kernel_can: bool) -> Result<(), &'static str> {
    if !wanted {
        Err("turned off by the mount option passthrough = false")
    } else if !plugin_can {
        Err("the plugin hands over no backing files (for durable-io: durability = \"always\")")
    } else if !kernel_can {
        Err("the kernel does not offer FUSE_PASSTHROUGH")
    } else if !has_cap_sys_admin() {
        Err("the host lacks CAP_SYS_ADMIN, which registering a backing file needs")
    } else {
        Ok(())
    }
}

/// Whether this process has CAP_SYS_ADMIN in its effective set (the kernel checks it in
/// `FUSE_DEV_IOC_BACKING_OPEN`).
fn has_cap_sys_admin() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return false };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

/// Something that can register a backing descriptor and reply with it: `open` or
/// `create`'s reply.
pub(crate) trait PassthroughReply {
    fn open_backing(&self, fd: BorrowedFd<'_>) -> io::Result<BackingId>;
}

impl PassthroughReply for ReplyOpen {
    fn open_backing(&self, fd: BorrowedFd<'_>) -> io::Result<BackingId> {
        ReplyOpen::open_backing(self, fd)
    }
}

impl PassthroughReply for ReplyCreate {
    fn open_backing(&self, fd: BorrowedFd<'_>) -> io::Result<BackingId> {
        ReplyCreate::open_backing(self, fd)
    }
}

impl Backing {
    fn shard(&self, node: NodeId) -> std::sync::MutexGuard<'_, Ids> {
        self.ids[(node % SHARDS as u64) as usize].lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    pub(crate) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Registers `fd` for `node` (or reuses the node's registration) and calls `send` with
    /// the backing id while it is sure to stay registered. Returns false, having sent
    /// nothing, if passthrough is off or the kernel refuses; then the open is served by
    /// the daemon as usual.
    pub(crate) fn with_id<R: PassthroughReply>(
        &self,
        node: NodeId,
        fd: Option<i32>,
        reply: R,
        send: impl FnOnce(R, &BackingId),
    ) -> Result<(), R> {
        let Some(fd) = fd.filter(|fd| *fd >= 0 && self.enabled()) else { return Err(reply) };
        // Held across the first registration, so two first opens of one node cannot
        // register two backing files. Not across the reply: the handle counted here keeps
        // the id in the table until its release, which cannot come before the reply, and
        // the `Arc` keeps it open even if other handles' releases empty the table first.
        let id = {
            let mut ids = self.shard(node);
            if let Some((id, users)) = ids.get_mut(&node) {
                *users += 1;
                Arc::clone(id)
            } else {
                // SAFETY: the loader checked that the plugin's descriptor is open, and the
                // plugin keeps it open until this handle is released, which cannot happen
                // before we reply.
                let fd = unsafe { BorrowedFd::borrow_raw(fd) };
                match reply.open_backing(fd) {
                    Ok(id) => {
                        let id = Arc::new(id);
                        ids.insert(node, (Arc::clone(&id), 1));
                        id
                    }
                    Err(e) => {
                        drop(ids);
                        if e.raw_os_error() == Some(libc::EPERM) && self.enabled.swap(false, Ordering::Relaxed) {
                            warn!(error = %e, "the kernel refused a backing file; passthrough off for this mount");
                        } else {
                            info!(node, error = %e, "no passthrough for this open; served by the daemon");
                        }
                        return Err(reply);
                    }
                }
            }
        };
        send(reply, &id);
        Ok(())
    }

    /// A passthrough handle of `node` was released: the node's backing id is closed with
    /// its last handle.
    pub(crate) fn release(&self, node: NodeId) {
        let closed = {
            let mut ids = self.shard(node);
            match ids.get_mut(&node) {
                Some((_, users)) if *users > 1 => {
                    *users -= 1;
                    None
                }
                Some(_) => ids.remove(&node),
                None => None,
            }
        };
        // The id is closed (an ioctl, in its Drop, once no reply holds it either) outside
        // the lock. A new open of the node meanwhile registers an id of its own, which the
        // kernel allows: the released file no longer uses the old one.
        drop(closed);
    }

    /// Closes every backing id (at shutdown, after every handle was released).
    pub(crate) fn clear(&self) {
        for shard in &self.ids {
            shard.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }

    /// Backing ids registered now.
    pub(crate) fn len(&self) -> usize {
        self.ids.iter().map(|shard| shard.lock().unwrap_or_else(|e| e.into_inner()).len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passthrough_is_refused_with_the_first_reason_that_applies() {
        let off = decide(false, true, true).unwrap_err();
        assert!(off.contains("passthrough = false"), "{off}");
        let plugin = decide(true, false, true).unwrap_err();
        assert!(plugin.contains("no backing files"), "{plugin}");
        let kernel = decide(true, true, false).unwrap_err();
        assert!(kernel.contains("FUSE_PASSTHROUGH"), "{kernel}");
        // Whatever else holds, this process's own privilege decides the rest.
        assert_eq!(decide(true, true, true).is_ok(), has_cap_sys_admin());
    }

    #[test]
    fn a_backing_id_is_not_registered_while_passthrough_is_off() {
        let backing = Backing::default();
        assert!(!backing.enabled());
        // No reply object can be made outside a session; `with_id` must hand the
        // reply back before touching it when passthrough is off or no fd was given.
        struct NoReply;
        impl PassthroughReply for NoReply {
            fn open_backing(&self, _: BorrowedFd<'_>) -> io::Result<BackingId> {
                panic!("registered while off")
            }
        }
        assert!(backing.with_id(2, Some(0), NoReply, |_, _| panic!("sent")).is_err());
        backing.set_enabled(true);
        assert!(backing.with_id(2, None, NoReply, |_, _| panic!("sent")).is_err());
        assert_eq!(backing.len(), 0);
    }
}
