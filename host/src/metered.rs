//! A layer between a frontend and a plugin that counts every call: requests, errors by
//! errno, latency and bytes, per mount and operation. Counting is a few relaxed atomic
//! additions into counters allocated when the mount starts: no lock, no allocation per
//! request. `plugfs status` and the metrics endpoint read the counters.

use std::ffi::OsStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use plugfs_plugin_api::{
    AttrOut, Capabilities, DirPlusSink, DirSink, Entry, FileSystem, Handle, NodeId, Opened, RenameFlags, Request,
    Result, SetAttr, StatFs, Whence,
};

/// The operations counted, in the order of [`MountStats::ops`].
pub const OPS: [&str; 32] = [
    "lookup",
    "forget",
    "getattr",
    "setattr",
    "readlink",
    "mknod",
    "mkdir",
    "unlink",
    "rmdir",
    "symlink",
    "link",
    "rename",
    "open",
    "create",
    "read",
    "write",
    "flush",
    "release",
    "fsync",
    "opendir",
    "readdir",
    "releasedir",
    "fsyncdir",
    "statfs",
    "setxattr",
    "getxattr",
    "listxattr",
    "removexattr",
    "fallocate",
    "copy_file_range",
    "lseek",
    "readdirplus",
];

const fn op(name: &str) -> usize {
    let mut i = 0;
    while i < OPS.len() {
        if const_eq(OPS[i], name) {
            return i;
        }
        i += 1;
    }
    panic!("unknown operation")
}

const fn const_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Upper bounds of the latency histogram's buckets (the last, +Inf, is implied).
pub const BUCKET_NANOS: [u64; 12] = [
    10_000,
    50_000,
    100_000,
    500_000,
    1_000_000,
    5_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
    500_000_000,
    1_000_000_000,
    5_000_000_000,
];

/// Errnos counted one by one; larger ones share the last slot.
pub const ERRNO_SLOTS: usize = 134;

/// The counters of one operation.
#[derive(Debug, Default)]
pub struct OpStats {
    /// Calls.
    pub requests: AtomicU64,
    /// Calls that failed.
    pub errors: AtomicU64,
    /// Latency bucket counts (not cumulative), the last being +Inf.
    pub buckets: [AtomicU64; 13],
    /// Sum of latencies in nanoseconds.
    pub latency_nanos: AtomicU64,
}

/// The counters of one mount.
#[derive(Debug)]
pub struct MountStats {
    /// Per operation, in the order of [`OPS`].
    pub ops: [OpStats; OPS.len()],
    /// Failures by errno (index = errno; the last slot counts every larger errno).
    pub errnos: [AtomicU64; ERRNO_SLOTS],
    /// Bytes returned by `read`.
    pub bytes_read: AtomicU64,
    /// Bytes accepted by `write`.
    pub bytes_written: AtomicU64,
    /// Calls in which the plugin panicked (the loader answered EIO).
    pub plugin_panics: AtomicU64,
}

impl Default for MountStats {
    fn default() -> Self {
        MountStats {
            ops: std::array::from_fn(|_| OpStats::default()),
            errnos: std::array::from_fn(|_| AtomicU64::new(0)),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            plugin_panics: AtomicU64::new(0),
        }
    }
}

impl MountStats {
    /// Calls of every operation.
    pub fn requests(&self) -> u64 {
        self.ops.iter().map(|o| o.requests.load(Ordering::Relaxed)).sum()
    }

    /// Failed calls of every operation.
    pub fn errors(&self) -> u64 {
        self.ops.iter().map(|o| o.errors.load(Ordering::Relaxed)).sum()
    }

    fn record<T>(&self, op: usize, start: Instant, result: &Result<T>) {
        let o = &self.ops[op];
        o.requests.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let bucket = BUCKET_NANOS.iter().position(|&b| nanos <= b).unwrap_or(BUCKET_NANOS.len());
        o.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        o.latency_nanos.fetch_add(nanos, Ordering::Relaxed);
        if let Err(e) = result {
            o.errors.fetch_add(1, Ordering::Relaxed);
            let errno = usize::try_from(e.errno().0).unwrap_or(0).min(ERRNO_SLOTS - 1);
            self.errnos[errno].fetch_add(1, Ordering::Relaxed);
            if e.is_plugin_panic() {
                self.plugin_panics.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A [`FileSystem`] that counts the calls it passes to `inner`.
pub struct Metered<F: ?Sized> {
    stats: Arc<MountStats>,
    inner: Arc<F>,
}

impl<F: FileSystem + ?Sized> Metered<F> {
    /// Counts the calls to `inner` into `stats`.
    pub fn new(inner: Arc<F>, stats: Arc<MountStats>) -> Metered<F> {
        Metered { stats, inner }
    }
}

macro_rules! metered {
    ($self:ident, $op:literal, $call:expr) => {{
        let start = Instant::now();
        let result = $call;
        $self.stats.record(const { op($op) }, start, &result);
        result
    }};
}

impl<F: FileSystem + ?Sized> FileSystem for Metered<F> {
    fn lookup(&self, req: &Request, parent: NodeId, name: &OsStr) -> Result<Entry> {
        metered!(self, "lookup", self.inner.lookup(req, parent, name))
    }

    fn forget(&self, node: NodeId, nlookup: u64) {
        let _: Result<()> = metered!(self, "forget", {
            self.inner.forget(node, nlookup);
            Ok(())
        });
    }

    fn getattr(&self, req: &Request, node: NodeId, handle: Option<Handle>) -> Result<AttrOut> {
        metered!(self, "getattr", self.inner.getattr(req, node, handle))
    }

    fn setattr(&self, req: &Request, node: NodeId, set: &SetAttr) -> Result<AttrOut> {
        metered!(self, "setattr", self.inner.setattr(req, node, set))
    }

    fn readlink(&self, req: &Request, node: NodeId, buf: &mut [u8]) -> Result<usize> {
        metered!(self, "readlink", self.inner.readlink(req, node, buf))
    }

    fn mknod(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32, rdev: u32) -> Result<Entry> {
        metered!(self, "mknod", self.inner.mknod(req, parent, name, mode, rdev))
    }

    fn mkdir(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32) -> Result<Entry> {
        metered!(self, "mkdir", self.inner.mkdir(req, parent, name, mode))
    }

    fn unlink(&self, req: &Request, parent: NodeId, name: &OsStr) -> Result<()> {
        metered!(self, "unlink", self.inner.unlink(req, parent, name))
    }

    fn rmdir(&self, req: &Request, parent: NodeId, name: &OsStr) -> Result<()> {
        metered!(self, "rmdir", self.inner.rmdir(req, parent, name))
    }

    fn symlink(&self, req: &Request, parent: NodeId, name: &OsStr, target: &OsStr) -> Result<Entry> {
        metered!(self, "symlink", self.inner.symlink(req, parent, name, target))
    }

    fn link(&self, req: &Request, node: NodeId, new_parent: NodeId, new_name: &OsStr) -> Result<Entry> {
        metered!(self, "link", self.inner.link(req, node, new_parent, new_name))
    }

    fn rename(
        &self,
        req: &Request,
        parent: NodeId,
        name: &OsStr,
        new_parent: NodeId,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> Result<()> {
        metered!(self, "rename", self.inner.rename(req, parent, name, new_parent, new_name, flags))
    }

    fn open(&self, req: &Request, node: NodeId, flags: i32) -> Result<Opened> {
        metered!(self, "open", self.inner.open(req, node, flags))
    }

    fn create(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32, flags: i32) -> Result<(Entry, Opened)> {
        metered!(self, "create", self.inner.create(req, parent, name, mode, flags))
    }

    fn read(&self, req: &Request, node: NodeId, handle: Handle, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let result = metered!(self, "read", self.inner.read(req, node, handle, offset, buf));
        if let Ok(n) = result {
            self.stats.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
        }
        result
    }

    fn write(
        &self,
        req: &Request,
        node: NodeId,
        handle: Handle,
        offset: u64,
        data: &[u8],
        flags: i32,
    ) -> Result<usize> {
        let result = metered!(self, "write", self.inner.write(req, node, handle, offset, data, flags));
        if let Ok(n) = result {
            self.stats.bytes_written.fetch_add(n as u64, Ordering::Relaxed);
        }
        result
    }

    fn flush(&self, req: &Request, node: NodeId, handle: Handle, lock_owner: u64) -> Result<()> {
        metered!(self, "flush", self.inner.flush(req, node, handle, lock_owner))
    }

    fn release(&self, req: &Request, node: NodeId, handle: Handle, flags: i32, flush: bool) -> Result<()> {
        metered!(self, "release", self.inner.release(req, node, handle, flags, flush))
    }

    fn fsync(&self, req: &Request, node: NodeId, handle: Handle, datasync: bool) -> Result<()> {
        metered!(self, "fsync", self.inner.fsync(req, node, handle, datasync))
    }

    fn opendir(&self, req: &Request, node: NodeId, flags: i32) -> Result<Opened> {
        metered!(self, "opendir", self.inner.opendir(req, node, flags))
    }

    fn readdir(&self, req: &Request, node: NodeId, handle: Handle, cookie: u64, sink: &mut dyn DirSink) -> Result<()> {
        metered!(self, "readdir", self.inner.readdir(req, node, handle, cookie, sink))
    }

    fn releasedir(&self, req: &Request, node: NodeId, handle: Handle) -> Result<()> {
        metered!(self, "releasedir", self.inner.releasedir(req, node, handle))
    }

    fn fsyncdir(&self, req: &Request, node: NodeId, handle: Handle, datasync: bool) -> Result<()> {
        metered!(self, "fsyncdir", self.inner.fsyncdir(req, node, handle, datasync))
    }

    fn statfs(&self, req: &Request, node: NodeId) -> Result<StatFs> {
        metered!(self, "statfs", self.inner.statfs(req, node))
    }

    fn setxattr(&self, req: &Request, node: NodeId, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        metered!(self, "setxattr", self.inner.setxattr(req, node, name, value, flags))
    }

    fn getxattr(&self, req: &Request, node: NodeId, name: &OsStr, buf: &mut [u8]) -> Result<usize> {
        metered!(self, "getxattr", self.inner.getxattr(req, node, name, buf))
    }

    fn listxattr(&self, req: &Request, node: NodeId, buf: &mut [u8]) -> Result<usize> {
        metered!(self, "listxattr", self.inner.listxattr(req, node, buf))
    }

    fn removexattr(&self, req: &Request, node: NodeId, name: &OsStr) -> Result<()> {
        metered!(self, "removexattr", self.inner.removexattr(req, node, name))
    }

    fn fallocate(
        &self,
        req: &Request,
        node: NodeId,
        handle: Handle,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<()> {
        metered!(self, "fallocate", self.inner.fallocate(req, node, handle, offset, length, mode))
    }

    fn copy_file_range(
        &self,
        req: &Request,
        node_in: NodeId,
        handle_in: Handle,
        offset_in: u64,
        node_out: NodeId,
        handle_out: Handle,
        offset_out: u64,
        len: u64,
        flags: u32,
    ) -> Result<usize> {
        metered!(
            self,
            "copy_file_range",
            self.inner
                .copy_file_range(req, node_in, handle_in, offset_in, node_out, handle_out, offset_out, len, flags)
        )
    }

    fn lseek(&self, req: &Request, node: NodeId, handle: Handle, offset: i64, whence: Whence) -> Result<u64> {
        metered!(self, "lseek", self.inner.lseek(req, node, handle, offset, whence))
    }

    fn readdirplus(
        &self,
        req: &Request,
        node: NodeId,
        handle: Handle,
        cookie: u64,
        sink: &mut dyn DirPlusSink,
    ) -> Result<()> {
        metered!(self, "readdirplus", self.inner.readdirplus(req, node, handle, cookie, sink))
    }

    fn capabilities(&self) -> Option<Capabilities> {
        self.inner.capabilities()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_indexes_follow_the_table() {
        assert_eq!(op("lookup"), 0);
        assert_eq!(op("readdirplus"), OPS.len() - 1);
        assert_eq!(OPS[op("write")], "write");
    }

    #[test]
    fn a_failure_counts_its_errno_and_a_latency_bucket() {
        let stats = MountStats::default();
        let failed: Result<()> = Err(plugfs_plugin_api::Errno::ENOENT.into());
        stats.record(op("lookup"), Instant::now(), &failed);
        stats.record(op("lookup"), Instant::now(), &Ok(()));
        let o = &stats.ops[op("lookup")];
        assert_eq!(o.requests.load(Ordering::Relaxed), 2);
        assert_eq!(o.errors.load(Ordering::Relaxed), 1);
        assert_eq!(stats.errnos[2].load(Ordering::Relaxed), 1);
        assert_eq!(o.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum::<u64>(), 2);
        assert_eq!(stats.errors(), 1);
    }
}
