//! Where the image lives: a file, or (for tests) memory that records writes and flushes so
//! a power loss can be replayed at any point.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

/// Block storage with positional IO and a durability barrier.
pub trait Device: Send + Sync {
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes all of `buf` at `offset`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every write before it durable.
    fn flush(&self) -> io::Result<()>;
    /// Size in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the device has no bytes.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Hints that `len` bytes at `offset` will be read soon (a sequential reader's next
    /// blocks): the device may start reading them in the background. Never required.
    fn prefetch(&self, _offset: u64, _len: u64) {}
}

/// An image file.
pub struct FileDevice {
    file: File,
}

impl FileDevice {
    /// Wraps an open image file.
    pub fn new(file: File) -> Self {
        FileDevice { file }
    }
    /// The file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl Device for FileDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn prefetch(&self, offset: u64, len: u64) {
        // Starts the page cache's read of the range without waiting for it, so the disk
        // reads a sequential reader's next blocks while this request's go through FUSE.
        let _ = rustix::fs::fadvise(&self.file, offset, std::num::NonZeroU64::new(len), rustix::fs::Advice::WillNeed);
    }
}

/// One recorded operation.
#[derive(Clone, Debug)]
pub enum Op {
    /// A write of `data` at `offset`.
    Write {
        /// Byte offset.
        offset: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// A flush barrier.
    Flush,
}

struct Recorded {
    image: Vec<u8>,
    base: Vec<u8>,
    log: Vec<Op>,
}

/// An in-memory image that records every write and flush since it was made (or since
/// [`MemDevice::reset_log`]), for crash tests.
pub struct MemDevice {
    inner: Mutex<Recorded>,
}

/// A small deterministic random generator (xorshift64*), so crash runs replay by seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// A number below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

impl MemDevice {
    /// A zeroed image of `len` bytes.
    pub fn new(len: u64) -> Self {
        Self::from_bytes(vec![0; len as usize])
    }
    /// An image holding `bytes`.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        MemDevice { inner: Mutex::new(Recorded { base: bytes.clone(), image: bytes, log: Vec::new() }) }
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// The current bytes.
    pub fn bytes(&self) -> Vec<u8> {
        self.lock().image.clone()
    }
    /// Starts recording afresh from the current bytes.
    pub fn reset_log(&self) {
        let mut r = self.lock();
        r.base = r.image.clone();
        r.log.clear();
    }
    /// How many operations were recorded.
    pub fn log_len(&self) -> usize {
        self.lock().log.len()
    }
    /// The image as a power loss after the first `point` recorded operations could leave
    /// it: everything before the last flush among them is kept; of the writes after it,
    /// a random subset is kept, in random order, some torn (a prefix of 512-byte sectors).
    pub fn crash_image(&self, point: usize, rng: &mut Rng) -> Vec<u8> {
        let r = self.lock();
        let ops = &r.log[..point.min(r.log.len())];
        let last_flush = ops.iter().rposition(|op| matches!(op, Op::Flush)).map_or(0, |i| i + 1);
        let mut image = r.base.clone();
        let apply = |image: &mut Vec<u8>, offset: u64, data: &[u8]| {
            let o = offset as usize;
            image[o..o + data.len()].copy_from_slice(data);
        };
        for op in &ops[..last_flush] {
            if let Op::Write { offset, data } = op {
                apply(&mut image, *offset, data);
            }
        }
        let mut pending: Vec<&Op> = ops[last_flush..].iter().collect();
        for i in (1..pending.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            pending.swap(i, j);
        }
        for op in pending {
            if let Op::Write { offset, data } = op {
                match rng.below(4) {
                    0 | 1 => {}
                    2 => apply(&mut image, *offset, data),
                    _ => {
                        let sectors = data.len().div_ceil(512);
                        let keep = (rng.below(sectors as u64) as usize * 512).min(data.len());
                        apply(&mut image, *offset, &data[..keep]);
                    }
                }
            }
        }
        image
    }
}

impl Device for MemDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let r = self.lock();
        let o = usize::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let src = r.image.get(o..o.saturating_add(buf.len())).ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut r = self.lock();
        let o = usize::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::WriteZero))?;
        let dst = r.image.get_mut(o..o.saturating_add(buf.len())).ok_or(io::ErrorKind::WriteZero)?;
        dst.copy_from_slice(buf);
        r.log.push(Op::Write { offset, data: buf.to_vec() });
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        self.lock().log.push(Op::Flush);
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.lock().image.len() as u64)
    }
}
