//! The streaming fsck against the fsck it replaced (`fsck_reference`, which loads each tree
//! whole): over clean images of random workloads, crash images and damaged images, both
//! must find the same problems and count the same. fsck is the oracle of every crash test,
//! so a check lost in the rework would hide real bugs.

use super::super::format::{self, Node};
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

/// A random workload's image and its write log (for crash images).
fn workload(seed: u64, ops: usize) -> Arc<MemDevice> {
    let mut rng = Rng::new(seed);
    let dev = image(300);
    let mut v = open(&dev);
    v.create(ROOT_INO, b"d", S_IFDIR | 0o755, 0, 0, 0).unwrap();
    v.commit().unwrap();
    dev.reset_log();
    for _ in 0..ops {
        if random_op(&mut v, &mut rng) || rng.below(4) == 0 {
            let _ = v.commit();
        }
    }
    let _ = v.commit();
    dev
}

/// The tree nodes and data blocks the newest commit references (for aiming damage).
fn targets(bytes: &[u8]) -> (Vec<u64>, Vec<u64>) {
    let dev = MemDevice::from_bytes(bytes.to_vec());
    let Ok((sb, _)) = newest_superblock(&dev) else { return (Vec::new(), Vec::new()) };
    let Ok((items, nodes)) = fsck_reference::load(&dev, sb.root, sb.height, sb.total_blocks) else {
        return (Vec::new(), Vec::new());
    };
    let data = fsck_reference::data_blocks(&items).flatten().map(|(_, _, p)| p.block).collect();
    (nodes, data)
}

/// Changes one item of the leaf at `block`, so the damage reaches the item checks behind
/// the checksums (which the caller then recomputes).
fn edit_item(bytes: &mut [u8], block: u64, rng: &mut Rng) {
    let at = block as usize * BLOCK;
    let Ok(Node::Leaf(mut items)) = format::decode_node(&bytes[at..at + BLOCK]) else { return };
    if items.is_empty() {
        return;
    }
    let i = rng.below(items.len() as u64) as usize;
    let (k, v) = &mut items[i];
    match rng.below(7) {
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
    let (nodes, data) = targets(base);
    let blocks = (m.len() / BLOCK) as u64;
    let pick = |v: &[u64], rng: &mut Rng| v.get(rng.below(v.len().max(1) as u64) as usize).copied();
    let fix = match rng.below(4) {
        0 => match pick(&nodes, rng) {
            Some(b) => {
                edit_item(&mut m, b, rng);
                true
            }
            None => false,
        },
        choice => {
            let block = match choice {
                1 => pick(&nodes, rng),
                2 => pick(&data, rng),
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

/// Phrases of the checks that relate items to each other, which damage must reach.
const LINK_CHECKS: [&str; 9] = [
    "link count",
    "no name",
    "index",
    "names missing",
    "type differs",
    "more than one name",
    "records parent",
    "orphan",
    "blocks but has",
];

#[test]
fn fsck_finds_what_the_reference_fsck_finds_on_clean_crashed_and_damaged_images() {
    let workloads = 40;
    let (mut images, mut dirty, mut item_problems) = (0, 0, 0);
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
        }
        for d in 0..60 {
            let base = &bases[rng.below(bases.len() as u64) as usize];
            let m = damage(base, &mut rng);
            let found = compare(&m, rng.below(2) == 0, &format!("workload {w} damage {d}"));
            images += 1;
            dirty += usize::from(!found.is_empty());
            item_problems += usize::from(found.iter().any(|p| LINK_CHECKS.iter().any(|c| p.contains(c))));
        }
    }
    eprintln!("{images} images compared, {dirty} with problems, {item_problems} with item problems");
    // The damage must reach the item checks, not only the checksums.
    assert!(item_problems > 100, "only {item_problems} images reached the item checks");
}
