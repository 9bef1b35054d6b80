//! The streaming fsck against the fsck it replaced (`fsck_reference`, which loads each tree
//! whole): over clean images of random workloads, crash images and damaged images, both
//! must find the same problems and count the same. fsck is the oracle of every crash test,
//! so a check lost in the rework would hide real bugs.

use super::super::format::{self, Node, kind};
use super::super::fsck_reference;
use super::super::volume::newest_superblock;
use super::*;
use crate::fuzzing::fix_checksums;

/// Runs both fscks over `bytes`; panics on any difference. Answers the problems found.
fn compare(bytes: &[u8], verify_data: bool, what: &str) -> Vec<String> {
    let dev = MemDevice::from_bytes(bytes.to_vec());
    let new = fsck(&dev, verify_data);
    let old = fsck_reference::fsck(&dev, verify_data);
    let (mut a, mut b) = (new.problems.clone(), old.problems.clone());
    a.sort();
    b.sort();
    assert_eq!(a, b, "{what}: problems differ (left: streaming, right: reference)");
    let counts = |r: &super::super::Report| (r.generation, r.inodes, r.used_blocks, r.verified_blocks);
    assert_eq!(counts(&new), counts(&old), "{what}: counts differ (generation, inodes, used, verified)");
    a
}

/// Runs both scrubs over `bytes`; panics on any difference, in what they find or in the
/// progress they report.
fn compare_scrub(bytes: &[u8], what: &str) {
    let dev = MemDevice::from_bytes(bytes.to_vec());
    let (mut new_progress, mut old_progress) = (Vec::new(), Vec::new());
    let new = scrub(&dev, &mut |done, total| new_progress.push((done, total)));
    let old = fsck_reference::scrub(&dev, &mut |done, total| old_progress.push((done, total)));
    let (mut a, mut b) = (new.problems, old.problems);
    a.sort();
    b.sort();
    assert_eq!(a, b, "{what}: scrub problems differ (left: streaming, right: reference)");
    assert_eq!(new.verified_blocks, old.verified_blocks, "{what}: scrub verified blocks differ");
    assert_eq!(new_progress, old_progress, "{what}: scrub progress differs");
}

/// A random workload's image and its write log (for crash images).
fn workload(seed: u64, ops: usize) -> Arc<MemDevice> {
    let mut rng = Rng::new(seed);
    let dev = image(300);
    let mut v = open(&dev);
    v.create(ROOT_INO, b"d", S_IFDIR | 0o755, 0, 0, 0).unwrap();
    v.commit().unwrap();
    dev.reset_log();
    for _ in 0..ops {
        // A file unlinked while open stays as an orphan until evicted.
        if rng.below(10) == 0 {
            let _ = v.create(ROOT_INO, b"open", F, 0, 0, 0).and_then(|_| v.unlink(ROOT_INO, b"open"));
        }
        if random_op(&mut v, &mut rng) || rng.below(4) == 0 {
            let _ = v.commit();
        }
    }
    let _ = v.commit();
    dev
}

/// Blocks the newest commit references, for aiming damage.
#[derive(Default)]
struct Targets {
    nodes: Vec<u64>,
    data: Vec<u64>,
    /// The snapshot table and the roots of the space maps.
    tables: Vec<u64>,
}

fn targets(bytes: &[u8]) -> Targets {
    let dev = MemDevice::from_bytes(bytes.to_vec());
    let Ok((sb, _)) = newest_superblock(&dev) else { return Targets::default() };
    let tables =
        [sb.snapshots.block, sb.space_map.block, sb.pinned_map.block].into_iter().filter(|&b| b != 0).collect();
    let Ok((items, nodes)) = fsck_reference::load(&dev, sb.root, sb.height, sb.total_blocks) else {
        return Targets { tables, ..Targets::default() };
    };
    let data = fsck_reference::data_blocks(&items).flatten().map(|(_, _, p)| p.block).collect();
    Targets { nodes, data, tables }
}

/// Changes one item of the leaf at `block`, so the damage reaches the item checks behind
/// the checksums (which the caller then recomputes).
fn edit_item(bytes: &mut [u8], block: u64, t: &Targets, rng: &mut Rng) {
    let at = block as usize * BLOCK;
    let Ok(Node::Leaf(mut items)) = format::decode_node(&bytes[at..at + BLOCK]) else { return };
    if items.is_empty() {
        return;
    }
    let mutation = rng.below(10);
    // The data pointer mutations go to data items when the leaf has any.
    let data: Vec<usize> = (0..items.len()).filter(|&i| items[i].0.get(8) == Some(&kind::DATA)).collect();
    let i = match mutation {
        6 | 7 if !data.is_empty() => data[rng.below(data.len() as u64) as usize],
        _ => rng.below(items.len() as u64) as usize,
    };
    let (k, v) = &mut items[i];
    match mutation {
        0 => drop(items.remove(i)),
        // A value byte: an inode's mode or link count, an entry's target, type or index.
        1 | 2 if !v.is_empty() => {
            let j = rng.below(v.len().min(24) as u64) as usize;
            v[j] = if rng.below(2) == 0 { v[j] ^ (1 << rng.below(8)) } else { rng.next_u64() as u8 };
        }
        3 if !v.is_empty() => v.truncate(rng.below(v.len() as u64) as usize),
        // The kind or tail of the key (may put keys out of order: the whole tree is refused).
        4 if k.len() > 8 => {
            let j = 8 + rng.below(k.len() as u64 - 8) as usize;
            k[j] = k[j].wrapping_add(1 + rng.below(3) as u8);
        }
        // The inode number of the key.
        5 if k.len() >= 8 => k[7] = k[7].wrapping_add(1),
        // A data pointer to a block in use (or a tree node).
        6 if k.get(8) == Some(&kind::DATA) && v.len() >= 8 => {
            let all: Vec<u64> = t.nodes.iter().chain(&t.data).copied().collect();
            let b = all[rng.below(all.len() as u64) as usize];
            v[..8].copy_from_slice(&b.to_le_bytes());
        }
        // A copy of an extent starting a block into it.
        7 if k.len() == 17 => {
            let start = format::tail_n(&k[9..]).unwrap_or(0);
            let mut k2 = k.clone();
            k2[9..].copy_from_slice(&start.wrapping_add(1).to_be_bytes());
            let v2 = v.clone();
            items.insert(i + 1, (k2, v2));
        }
        // A key cut short.
        8 => k.truncate(rng.below(9) as usize),
        // A second item right after this one, its key one byte longer.
        _ => {
            let (mut k2, v2) = (k.clone(), v.clone());
            k2.push(0);
            items.insert(i + 1, (k2, v2));
        }
    }
    let refs: Vec<(&[u8], &[u8])> = items.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
    let leaf = format::encode_leaf(&refs);
    bytes[at..at + BLOCK].copy_from_slice(&leaf[..BLOCK]);
}

/// One damaged copy of `base`: a changed item, a flipped byte in a tree node, a data block
/// or anywhere; checksums recomputed or not.
fn damage(base: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut m = base.to_vec();
    let t = targets(base);
    let blocks = (m.len() / BLOCK) as u64;
    let pick = |v: &[u64], rng: &mut Rng| v.get(rng.below(v.len().max(1) as u64) as usize).copied();
    let fix = match rng.below(5) {
        0 => match pick(&t.nodes, rng) {
            Some(b) => {
                edit_item(&mut m, b, &t, rng);
                true
            }
            None => false,
        },
        choice => {
            let block = match choice {
                1 => pick(&t.nodes, rng),
                2 => pick(&t.data, rng),
                3 => pick(&t.tables, rng),
                _ => Some(rng.below(blocks)),
            };
            if let Some(b) = block {
                let at = b as usize * BLOCK + rng.below(BLOCK as u64) as usize;
                m[at] ^= 1 << rng.below(8);
            }
            rng.below(3) != 0
        }
    };
    if fix {
        fix_checksums(&mut m);
    }
    m
}

/// A phrase of each check's message (`$`: at its end). The damage must reach every check
/// (all but a tree node outside the image or referenced twice, which its walk refuses
/// first, and no superblock at all, where fsck stops before any tree), or an equivalence
/// over it would prove nothing about that check.
const CHECKS: [&str; 39] = [
    "superblock of generation",
    "snapshot table: ",
    "keys out of order",
    "checksum mismatch",
    "points outside the image",
    "is referenced twice",
    "bad data key",
    "data block",
    "space map block",
    "but the space map marks it free",
    "(leaked)",
    "but the pinned map does not say so",
    "is marked pinned but no snapshot references it",
    "inodes but the live tree has",
    "tree nodes but the live tree has",
    "bytes of items but the live tree has",
    "over the superblock's maximum",
    "an item with a short key",
    "is beyond the next inode number",
    "a bad orphan key",
    "which is not a directory",
    "names missing inode",
    "type differs from inode",
    "has more than one name",
    "has no matching index",
    "has an index beyond the next one",
    "an index entry without its name entry",
    "directory entry is truncated",
    "for missing inode",
    "extents overlap",
    "a bad data item",
    "unknown item kind",
    "links$",
    "names$",
    "records parent",
    "has no name",
    "blocks but has",
    "the root directory is missing",
    "is not an unlinked inode",
];

fn says(problem: &str, check: &str) -> bool {
    match check.strip_suffix('$') {
        Some(end) => problem.ends_with(end),
        None => problem.contains(check),
    }
}

#[test]
fn fsck_finds_what_the_reference_fsck_finds_on_clean_crashed_and_damaged_images() {
    let workloads = 40;
    let (mut images, mut dirty, mut scrubbed) = (0, 0, 0);
    let mut reached = [0; CHECKS.len()];
    for w in 0..workloads {
        let mut rng = Rng::new(7000 + w);
        let dev = workload(9000 + w, 50);
        let last = dev.bytes();
        let mut bases = vec![last.clone()];
        let log = dev.log_len();
        for _ in 0..15 {
            let point = rng.below(log as u64 + 1) as usize;
            bases.push(dev.crash_image(point, &mut rng));
        }
        for (n, base) in bases.iter().enumerate() {
            images += 1;
            assert!(compare(base, true, &format!("workload {w} base {n}")).is_empty(), "undamaged images are clean");
            compare_scrub(base, &format!("workload {w} base {n}"));
            scrubbed += 1;
        }
        for d in 0..60 {
            let base = &bases[rng.below(bases.len() as u64) as usize];
            let m = damage(base, &mut rng);
            let found = compare(&m, rng.below(2) == 0, &format!("workload {w} damage {d}"));
            if d % 3 == 0 {
                compare_scrub(&m, &format!("workload {w} damage {d}"));
                scrubbed += 1;
            }
            images += 1;
            dirty += usize::from(!found.is_empty());
            for (check, n) in CHECKS.iter().zip(&mut reached) {
                *n += found.iter().filter(|p| says(p, check)).count();
            }
        }
    }
    eprintln!("{images} images compared ({dirty} damaged as fsck sees it), {scrubbed} scrubbed");
    for (check, n) in CHECKS.iter().zip(&reached) {
        eprintln!("{n:6} {check}");
    }
    let missed: Vec<_> = CHECKS.iter().zip(&reached).filter(|(_, n)| **n == 0).map(|(c, _)| c).collect();
    assert!(missed.is_empty(), "no damage reached these checks: {missed:?}");
}
