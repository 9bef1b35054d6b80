//! The image file as the engine sees it: positioned reads and writes and syncs, and
//! optionally a record of every write and sync in order, so tests can replay any prefix of
//! a workload onto a copy of the starting image and see what a crash at that point leaves
//! (`tests/crash.rs`).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

/// One recorded change to the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IoOp {
    /// `data` was written at `offset`.
    Write { offset: u64, data: Vec<u8> },
    /// Everything written before reached stable storage (`fdatasync`).
    Sync,
}

/// A shared, growing record of the writes and syncs made through a [`Disk`].
pub type WriteLog = Arc<Mutex<Vec<IoOp>>>;

/// A shared record of the reads made through a [`Disk`]: (offset, length) each.
pub type ReadLog = Arc<Mutex<Vec<(u64, usize)>>>;

/// Called with (offset, data) before each write reaches the image: tests use it to stop a
/// write inside the IO layer (see `Disk::with_write_hook`).
pub type WriteHook = Arc<dyn Fn(u64, &[u8]) + Send + Sync>;

/// The image file, with an optional write record.
pub struct Disk {
    file: File,
    log: Option<WriteLog>,
    reads: Option<ReadLog>,
    hook: Option<WriteHook>,
}

impl Disk {
    /// The image file, not recorded.
    pub fn new(file: File) -> Disk {
        Disk { file, log: None, reads: None, hook: None }
    }

    /// The image file, recording every write and sync into the returned log.
    pub fn recording(file: File) -> (Disk, WriteLog) {
        let log = WriteLog::default();
        (Disk { file, log: Some(log.clone()), reads: None, hook: None }, log)
    }

    /// Records every read as well, into the returned log (tests count the IOs an
    /// operation costs with it).
    pub fn recording_reads(mut self) -> (Disk, ReadLog) {
        let reads = ReadLog::default();
        self.reads = Some(reads.clone());
        (self, reads)
    }

    /// Calls `hook` before every write (for tests: a hook that blocks holds the writing
    /// thread inside the IO layer, with whatever locks it holds, for as long as it likes).
    pub fn with_write_hook(mut self, hook: WriteHook) -> Disk {
        self.hook = Some(hook);
        self
    }

    /// The file underneath.
    pub fn file(&self) -> &File {
        &self.file
    }

    fn record(&self, op: IoOp) {
        if let Some(log) = &self.log {
            log.lock().unwrap_or_else(|e| e.into_inner()).push(op);
        }
    }

    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        if let Some(reads) = &self.reads {
            reads.lock().unwrap_or_else(|e| e.into_inner()).push((offset, buf.len()));
        }
        self.file.read_exact_at(buf, offset)
    }

    /// Writes all of `data` at `offset` (recorded as one write).
    pub fn write_all_at(&self, data: &[u8], offset: u64) -> std::io::Result<()> {
        if let Some(hook) = &self.hook {
            hook(offset, data);
        }
        self.file.write_all_at(data, offset)?;
        self.record(IoOp::Write { offset, data: data.to_vec() });
        Ok(())
    }

    /// `fdatasync`: what was written before is durable.
    pub fn sync_data(&self) -> std::io::Result<()> {
        let Some(log) = &self.log else { return self.file.sync_data() };
        // Recording: the log stays locked across the fdatasync, so with several threads
        // the `Sync` lands exactly between the writes that completed before the fdatasync
        // began (recorded before it: durable once it returns) and the rest (a write that
        // completes meanwhile is recorded after it, as not made durable by it).
        let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
        self.file.sync_data()?;
        log.push(IoOp::Sync);
        Ok(())
    }

    /// The size of the image (seeking to its end sizes block devices too).
    pub fn size(&self) -> std::io::Result<u64> {
        std::io::Seek::seek(&mut &self.file, std::io::SeekFrom::End(0))
    }
}

/// Applies `ops` to `file` in order, the last write cut after `torn` bytes when given (a
/// write the crash interrupted). Syncs are no-ops: the replay is what reached the disk.
pub fn replay(file: &File, ops: &[IoOp], torn: Option<usize>) -> std::io::Result<()> {
    for (i, op) in ops.iter().enumerate() {
        if let IoOp::Write { offset, data } = op {
            let n = if i + 1 == ops.len() { torn.unwrap_or(data.len()).min(data.len()) } else { data.len() };
            file.write_all_at(&data[..n], *offset)?;
        }
    }
    Ok(())
}
