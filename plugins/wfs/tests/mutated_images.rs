//! The fuzz targets' entry points (`plugfs_wfs::fuzzing`) over seeded random mutations of a
//! real image, on stable Rust: what CI runs in place of cargo-fuzz (scripts/fuzz-wfs.sh
//! runs the real fuzzer for longer). The image is made by the engine itself, with
//! directories, files, a symlink, xattrs and a snapshot. Mutated images get their
//! checksums recomputed, so the code behind the checksums sees the damage too.
//!
//! `PLUGFS_WFS_MUTATIONS=N` runs N rounds instead of CI's share.

use std::sync::Arc;

use plugfs_wfs::engine::device::Rng;
use plugfs_wfs::engine::format::BLOCK;
use plugfs_wfs::engine::{MemDevice, OpenOptions, Volume, mkfs};
use plugfs_wfs::fuzzing;

/// A 1 MiB image with a little of everything.
fn real_image() -> Vec<u8> {
    let dev = Arc::new(MemDevice::new(256 * BLOCK as u64));
    mkfs(&*dev, 256).unwrap();
    let mut vol = Volume::open(dev.clone(), OpenOptions::default()).unwrap();
    let dir = vol.create(1, b"documents", 0o40755, 1000, 1000, 0).unwrap();
    let sub = vol.create(dir, b"deeper", 0o40700, 1000, 1000, 0).unwrap();
    for i in 0..20u64 {
        let f =
            vol.create(if i % 2 == 0 { dir } else { sub }, format!("file-{i}").as_bytes(), 0o100644, 0, 0, 0).unwrap();
        vol.write(f, i * 1000, &vec![i as u8; 3000 + i as usize * 100]).unwrap();
    }
    vol.symlink(1, b"link", b"documents/file-0", 0, 0).unwrap();
    vol.set_xattr(dir, b"user.note", b"a value", true, false).unwrap();
    vol.commit().unwrap();
    vol.snapshot_create("before").unwrap();
    let extra = vol.create(1, b"after-snapshot", 0o100600, 0, 0, 0).unwrap();
    vol.write(extra, 0, b"new data").unwrap();
    vol.commit().unwrap();
    drop(vol);
    dev.bytes()
}

#[test]
fn the_walk_reads_a_real_image_and_checksum_fixing_leaves_it_as_it_was() {
    let image = real_image();
    // The walk really visits the tree (documents, its files, deeper, link, ...), so the
    // mutated runs below exercise it.
    assert!(fuzzing::image(&image) >= 24, "the walk should see every node of the real image");
    let mut fixed = image.clone();
    fuzzing::fix_checksums(&mut fixed);
    assert!(fixed == image, "recomputing checksums changed an image the engine wrote");
    for block in image.chunks(BLOCK) {
        fuzzing::node(block);
        fuzzing::snapshots(block);
        fuzzing::superblock(&block[8..]);
    }
}

#[test]
fn mutated_images_are_refused_or_read_without_panics() {
    let image = real_image();
    let rounds: u64 = std::env::var("PLUGFS_WFS_MUTATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let blocks = image.len() / BLOCK;
    for seed in 0..rounds {
        let mut rng = Rng::new(seed);
        let mut m = image.clone();
        // Damage one to four metadata-heavy spots: the superblocks, the first blocks
        // after them (the tree), or anywhere.
        for _ in 0..1 + rng.below(4) {
            let block = match rng.below(3) {
                0 => rng.below(4),
                1 => 4 + rng.below(16),
                _ => rng.below(blocks as u64),
            } as usize;
            let at = block * BLOCK + rng.below(BLOCK as u64) as usize;
            match rng.below(3) {
                0 => m[at] ^= 1 << rng.below(8),
                1 => m[at] = rng.next_u64() as u8,
                // A length or count field set to something large.
                _ => {
                    let end = (at + 2).min(m.len());
                    m[at..end].fill(0xff)
                }
            }
        }
        // Half of the rounds keep the checksums valid, so the damage gets past them.
        if seed % 2 == 0 {
            fuzzing::fix_checksums(&mut m);
        }
        let result = std::panic::catch_unwind(|| fuzzing::image(&m));
        assert!(result.is_ok(), "seed {seed}: the engine panicked on a mutated image");
    }
}
