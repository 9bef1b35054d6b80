//! Entry points for fuzzing: the parsers that read untrusted bytes, and the write paths
//! over a damaged image, each fed arbitrary input. `plugins/fat/fuzz` (cargo-fuzz) calls them, and `tests/mutated_images.rs` runs
//! them over seeded mutations of real images on stable Rust. None may panic or hang on any
//! input; errors are fine.

use crate::engine::bpb::Bpb;
use crate::engine::dir;
use crate::engine::{OpenOptions, ROOT, Volume};

/// Parses `data` as a boot sector.
pub fn boot_sector(data: &[u8]) {
    if let Ok(bpb) = Bpb::parse(data) {
        // What a mount computes from it must not overflow either.
        let _ = (bpb.volume_bytes(), bpb.fat_bytes(), bpb.fat_offset(bpb.active_fat), bpb.label_offset());
        let _ = bpb.cluster_offset(bpb.cluster_count.wrapping_add(1));
    }
}

/// Parses `data` as a directory's entries.
pub fn directory(data: &[u8]) {
    let listing = dir::parse(data);
    let slots = (data.len() / dir::ENTRY_SIZE) as u32;
    assert!(listing.end <= slots, "end marker past the data");
    for e in &listing.entries {
        assert!(e.first_slot <= e.slot && e.slot < slots, "entry slots out of order or range");
        assert!(!e.name.is_empty() && !e.name.contains('/'), "unusable name {:?} returned", e.name);
        let _ = e.entry.encode();
    }
}

/// Limits of [`image`]'s walk, so one input stays fast.
const MAX_NODES: usize = 2_000;
const MAX_DEPTH: usize = 16;
const READ_BYTES: usize = 64 * 1024;

/// Mounts `data` as a whole image (read-only, from an in-memory file) and walks it: lists
/// every directory, stats and reads the start of every file. Returns how many nodes it
/// visited (0 when the image is refused at mount).
pub fn image(data: &[u8]) -> usize {
    let Ok(fd) = rustix::fs::memfd_create("plugfs-fat-fuzz", rustix::fs::MemfdFlags::CLOEXEC) else { return 0 };
    let file = std::fs::File::from(fd);
    if std::io::Write::write_all(&mut &file, data).is_err() {
        return 0;
    }
    let Ok(vol) = Volume::from_file(file, OpenOptions { read_only: true, ..OpenOptions::default() }) else { return 0 };
    let _ = (vol.label(), vol.space());
    let mut visited = 0;
    let mut stack = vec![(ROOT, 0usize)];
    let mut buf = vec![0u8; READ_BYTES];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = vol.list(dir, None, MAX_NODES) else { continue };
        for e in entries {
            visited += 1;
            if visited >= MAX_NODES {
                return visited;
            }
            // Lookup by name must find what the listing showed (or fail cleanly).
            let _ = vol.lookup(dir, &e.name);
            let _ = vol.stat(e.ino);
            if e.is_dir {
                if depth < MAX_DEPTH {
                    stack.push((e.ino, depth + 1));
                }
            } else {
                let _ = vol.read(e.ino, 0, &mut buf);
            }
        }
    }
    visited
}

/// Mounts `data` read-write (from an in-memory file) and changes what it walks: every file
/// is read, written inside and past its end, and truncated; every directory gets a new file,
/// renamed into a new subdirectory, and an unlink; then the volume is unmounted. On a
/// damaged image most of it answers errors (EIO for damaged files); none of it may panic or
/// hang, which the read-only walk cannot show for the write paths (the ownership scan,
/// allocation, freeing, directory growth). Returns how many nodes it changed.
pub fn image_rw(data: &[u8]) -> usize {
    let Ok(fd) = rustix::fs::memfd_create("plugfs-fat-fuzz", rustix::fs::MemfdFlags::CLOEXEC) else { return 0 };
    let file = std::fs::File::from(fd);
    if std::io::Write::write_all(&mut &file, data).is_err() {
        return 0;
    }
    let Ok(vol) = Volume::from_file(file, OpenOptions::default()) else { return 0 };
    let mut changed = 0;
    let mut stack = vec![(ROOT, 0usize)];
    let mut buf = vec![0u8; 4096];
    let mut visited = 0;
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = vol.list(dir, None, MAX_NODES) else { continue };
        for e in entries {
            visited += 1;
            if visited >= MAX_NODES / 4 {
                break;
            }
            if e.is_dir {
                if depth < MAX_DEPTH {
                    stack.push((e.ino, depth + 1));
                }
                continue;
            }
            let size = vol.stat(e.ino).map(|m| m.size).unwrap_or(0);
            let _ = vol.read(e.ino, 0, &mut buf);
            let _ = vol.write(e.ino, size / 2, b"fuzzed bytes");
            let _ = vol.write(e.ino, size + 5000, b"past the end");
            if vol.truncate(e.ino, size / 3).is_ok() {
                changed += 1;
            }
        }
        let Ok(new) = vol.create(dir, "fuzz new file.txt", false) else { continue };
        let _ = vol.write(new, 0, &buf[..3000]);
        if let Ok(sub) = vol.create(dir, "fuzz dir", true) {
            let _ = vol.rename(dir, "fuzz new file.txt", sub, "moved.txt", false);
            changed += 1;
        }
        if let Some(victim) = vol.list(dir, None, 8).ok().and_then(|l| l.into_iter().find(|e| !e.is_dir))
            && vol.unlink(dir, &victim.name).is_ok()
        {
            let _ = vol.evict(victim.ino);
        }
    }
    let _ = vol.unmount();
    changed
}

/// A small seeded xorshift generator for the crash and concurrency tests, so a failing run
/// repeats from its seed (and the fuzz crate needs no generator of its own).
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// The next number (the seed must not be 0).
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}
