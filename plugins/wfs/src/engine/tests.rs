//! Engine tests: every operation against a real (in-memory or file) image, corruption,
//! ENOSPC, snapshots, and power loss replayed at many points of random workloads.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::device::{Device, MemDevice, Rng};
use super::format::{BLOCK, ROOT_INO, S_IFDIR, S_IFLNK, S_IFREG};
use super::volume::{OpenOptions, Volume, mkfs};
use super::{fsck, scrub};

const F: u32 = S_IFREG | 0o644;

fn image(blocks: u64) -> Arc<MemDevice> {
    let dev = Arc::new(MemDevice::new(blocks * BLOCK as u64));
    mkfs(&*dev, blocks).unwrap();
    dev
}

fn open(dev: &Arc<MemDevice>) -> Volume {
    Volume::open(dev.clone(), OpenOptions { cache_blocks: 64, ..OpenOptions::default() }).unwrap()
}

fn assert_clean(dev: &dyn Device) {
    let r = fsck(dev, true);
    assert!(r.is_clean(), "fsck: {:#?}", r.problems);
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.next_u64() as u8).collect()
}

fn read_all(v: &Volume, ino: u64) -> Vec<u8> {
    let size = v.inode(ino).unwrap().size as usize;
    let mut buf = vec![0; size + 10];
    let n = v.read(ino, 0, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn files_written_and_committed_read_back_after_reopening() {
    let dev = image(1024);
    let data = pattern(100_000, 1);
    {
        let mut v = open(&dev);
        let f = v.create(ROOT_INO, b"f", F, 1, 2, 0).unwrap();
        assert_eq!(v.write(f, 0, &data).unwrap(), data.len());
        v.write(f, 5000, b"hello").unwrap();
        v.commit().unwrap();
    }
    let v = open(&dev);
    let f = v.lookup(ROOT_INO, b"f").unwrap();
    let mut want = data.clone();
    want[5000..5005].copy_from_slice(b"hello");
    assert_eq!(read_all(&v, f), want);
    let i = v.inode(f).unwrap();
    assert_eq!((i.uid, i.gid, i.nlink, i.size, i.blocks), (1, 2, 1, 100_000, 25));
    drop(v);
    assert_clean(&*dev);
}

#[test]
fn directories_symlinks_hard_links_and_renames_keep_counts_right() {
    let dev = image(1024);
    let mut v = open(&dev);
    let d = v.create(ROOT_INO, b"d", S_IFDIR | 0o755, 0, 0, 0).unwrap();
    let e = v.create(d, b"e", S_IFDIR | 0o700, 0, 0, 0).unwrap();
    assert_eq!(v.inode(ROOT_INO).unwrap().nlink, 3);
    assert_eq!(v.inode(d).unwrap().nlink, 3);
    let f = v.create(e, b"f", F, 0, 0, 0).unwrap();
    v.link(f, ROOT_INO, b"g").unwrap();
    assert_eq!(v.inode(f).unwrap().nlink, 2);
    let s = v.symlink(ROOT_INO, b"s", b"d/e/f", 0, 0).unwrap();
    assert_eq!(v.readlink(s).unwrap(), b"d/e/f");
    assert_eq!(v.inode(s).unwrap().mode, S_IFLNK | 0o777);
    assert_eq!(v.rmdir(ROOT_INO, b"d").unwrap_err().errno(), libc::ENOTEMPTY);
    assert_eq!(v.rename(ROOT_INO, b"d", e, b"x", false, false).unwrap_err().errno(), libc::EINVAL);
    v.rename(d, b"e", ROOT_INO, b"e2", false, false).unwrap();
    assert_eq!(v.inode(e).unwrap().parent, ROOT_INO);
    assert_eq!(v.inode(d).unwrap().nlink, 2);
    assert_eq!(v.rename(ROOT_INO, b"g", ROOT_INO, b"s", true, false).unwrap_err().errno(), libc::EEXIST);
    v.rename(ROOT_INO, b"g", ROOT_INO, b"s", false, true).unwrap();
    assert_eq!(v.lookup(ROOT_INO, b"s").unwrap(), f);
    assert_eq!(v.lookup(ROOT_INO, b"g").unwrap(), s);
    let replaced = v.rename(ROOT_INO, b"g", e, b"f", false, false).unwrap();
    assert_eq!(replaced, Some(f));
    assert_eq!(v.inode(f).unwrap().nlink, 1);
    let mut names = Vec::new();
    v.list(ROOT_INO, 0, |l| {
        names.push(String::from_utf8(l.name).unwrap());
        true
    })
    .unwrap();
    assert_eq!(names, ["d", "e2", "s"]);
    v.commit().unwrap();
    assert_clean(&*dev);
}

#[test]
fn an_unlinked_open_file_is_freed_at_evict_or_at_the_next_open() {
    let dev = image(256);
    let mut v = open(&dev);
    let f = v.create(ROOT_INO, b"f", F, 0, 0, 0).unwrap();
    v.write(f, 0, &pattern(40_000, 2)).unwrap();
    v.commit().unwrap();
    let free_before = v.space().free;
    v.unlink(ROOT_INO, b"f").unwrap();
    assert_eq!(read_all(&v, f).len(), 40_000, "still readable while open");
    v.commit().unwrap();
    assert_clean(&*dev);
    drop(v);
    let mut v = open(&dev);
    assert!(v.inode(f).is_err(), "the orphan is gone after reopening");
    v.commit().unwrap();
    assert!(v.space().free >= free_before + 10, "its blocks came back");
    drop(v);
    assert_clean(&*dev);
}

#[test]
fn xattrs_permissions_and_nanosecond_times_are_stored() {
    let dev = image(256);
    {
        let mut v = open(&dev);
        let f = v.create(ROOT_INO, b"f", F, 0, 0, 0).unwrap();
        v.set_xattr(f, b"user.a", b"1", true, false).unwrap();
        assert_eq!(v.set_xattr(f, b"user.a", b"2", true, false).unwrap_err().errno(), libc::EEXIST);
        assert_eq!(v.set_xattr(f, b"user.b", b"2", false, true).unwrap_err().errno(), libc::ENODATA);
        v.set_xattr(f, b"user.b", &[7; 2048], false, false).unwrap();
        assert_eq!(v.set_xattr(f, b"user.c", &[7; 2049], false, false).unwrap_err().errno(), libc::ENOSPC);
        let t = super::format::Time { secs: 1_700_000_000, nanos: 123_456_789 };
        v.set_attr(f, Some(0o4751), Some(5), Some(6), Some(t), Some(t)).unwrap();
        v.commit().unwrap();
    }
    let v = open(&dev);
    let f = v.lookup(ROOT_INO, b"f").unwrap();
    assert_eq!(v.list_xattr(f).unwrap(), [b"user.a".to_vec(), b"user.b".to_vec()]);
    assert_eq!(v.get_xattr(f, b"user.b").unwrap(), vec![7; 2048]);
    let i = v.inode(f).unwrap();
    assert_eq!((i.mode, i.uid, i.gid), (S_IFREG | 0o4751, 5, 6));
    assert_eq!((i.mtime.secs, i.mtime.nanos, i.atime.nanos), (1_700_000_000, 123_456_789, 123_456_789));
}

#[test]
fn sparse_files_beyond_4_gib_keep_holes_and_seek_finds_them() {
    let dev = image(256);
    let mut v = open(&dev);
    let f = v.create(ROOT_INO, b"f", F, 0, 0, 0).unwrap();
    let far = 5 << 30; // 5 GiB
    v.write(f, far, b"far away").unwrap();
    v.write(f, 8192, b"near").unwrap();
    let i = v.inode(f).unwrap();
    assert_eq!((i.size, i.blocks), (far + 8, 2));
    let mut buf = vec![1u8; 16];
    v.read(f, far - 8, &mut buf).unwrap();
    assert_eq!(&buf, b"\0\0\0\0\0\0\0\0far away");
    assert_eq!(v.seek(f, 0, true).unwrap(), 8192);
    assert_eq!(v.seek(f, 8192, false).unwrap(), 12288);
    assert_eq!(v.seek(f, 12288, true).unwrap(), far);
    assert_eq!(v.seek(f, far, false).unwrap(), far + 8);
    v.punch_hole(f, 8192, 4096).unwrap();
    assert_eq!(v.inode(f).unwrap().blocks, 1);
    v.truncate(f, 10).unwrap();
    assert_eq!(v.inode(f).unwrap().blocks, 0);
    v.write(f, 0, &[9; 10]).unwrap();
    v.truncate(f, 5).unwrap();
    v.truncate(f, 10).unwrap();
    let mut buf = [1u8; 10];
    v.read(f, 0, &mut buf).unwrap();
    assert_eq!(buf, [9, 9, 9, 9, 9, 0, 0, 0, 0, 0], "truncate zeroes the cut tail");
    v.commit().unwrap();
    assert_clean(&*dev);
}

#[test]
fn a_corrupt_data_block_is_eio_and_fsck_and_scrub_name_it() {
    let dev = image(256);
    let (f, block) = {
        let mut v = open(&dev);
        let f = v.create(ROOT_INO, b"victim", F, 0, 0, 0).unwrap();
        v.write(f, 0, &pattern(3 * BLOCK, 3)).unwrap();
        let g = v.create(ROOT_INO, b"fine", F, 0, 0, 0).unwrap();
        v.write(g, 0, b"fine").unwrap();
        v.commit().unwrap();
        let p = v.block_of(f, 1).unwrap().unwrap();
        (f, p.block)
    };
    let mut bytes = dev.bytes();
    bytes[(block as usize) * BLOCK + 100] ^= 0x10;
    let dev = Arc::new(MemDevice::from_bytes(bytes));
    let v = Volume::open(dev.clone(), OpenOptions::default()).unwrap();
    let mut buf = vec![0; BLOCK];
    assert!(v.read(f, 0, &mut buf).is_ok(), "other blocks still read");
    assert_eq!(v.read(f, BLOCK as u64, &mut buf).unwrap_err().errno(), libc::EIO);
    let g = v.lookup(ROOT_INO, b"fine").unwrap();
    assert_eq!(read_all(&v, g), b"fine");
    let r = fsck(&*dev, true);
    assert!(r.problems.iter().any(|p| p.contains(&format!("inode {f} data block 1"))), "{:?}", r.problems);
    let mut calls = 0;
    let r = scrub(&*dev, &mut |_, _| calls += 1);
    assert!(calls >= 4);
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert!(r.problems[0].contains(&format!("inode {f} data block 1")));
}

#[test]
fn read_ahead_never_serves_a_corrupt_block_of_the_run_it_reads() {
    let dev = image(256);
    let data = pattern(8 * BLOCK, 8);
    let (f, third) = {
        let mut v = open(&dev);
        let f = v.create(ROOT_INO, b"f", F, 0, 0, 0).unwrap();
        v.write(f, 0, &data).unwrap();
        v.commit().unwrap();
        let p = v.block_of(f, 3).unwrap().unwrap();
        (f, p.block)
    };
    let mut bytes = dev.bytes();
    bytes[third as usize * BLOCK + 7] ^= 1;
    let dev = Arc::new(MemDevice::from_bytes(bytes));
    let v = open(&dev);
    let mut buf = vec![0; BLOCK];
    for idx in [0usize, 1, 2, 3, 4, 7] {
        let r = v.read(f, (idx * BLOCK) as u64, &mut buf);
        if idx == 3 {
            assert_eq!(r.unwrap_err().errno(), libc::EIO);
        } else {
            r.unwrap();
            assert_eq!(buf, data[idx * BLOCK..(idx + 1) * BLOCK], "block {idx}");
        }
    }
    assert_eq!(v.read(f, 3 * BLOCK as u64, &mut buf).unwrap_err().errno(), libc::EIO, "not cached either");
    // A large read takes the run in one IO and checks every block of it.
    let mut big = vec![0; 8 * BLOCK];
    assert_eq!(v.read(f, 0, &mut big).unwrap_err().errno(), libc::EIO, "the run holds the bad block");
    assert_eq!(v.read(f, 100, &mut big[..5 * BLOCK]).unwrap_err().errno(), libc::EIO, "unaligned too");
    assert_eq!(v.read(f, 0, &mut big[..3 * BLOCK]).unwrap(), 3 * BLOCK);
    assert_eq!(big[..3 * BLOCK], data[..3 * BLOCK]);
    assert_eq!(v.read(f, 4 * BLOCK as u64 + 1, &mut big).unwrap(), 4 * BLOCK - 1);
    assert_eq!(big[..4 * BLOCK - 1], data[4 * BLOCK + 1..]);
}

#[test]
fn a_corrupt_tree_leaf_is_named_by_fsck_and_never_panics_a_reader() {
    let dev = image(512);
    {
        let mut v = open(&dev);
        for n in 0..200u32 {
            v.create(ROOT_INO, format!("name-{n:05}-{}", "y".repeat(60)).as_bytes(), F, 0, 0, 0).unwrap();
        }
        v.commit().unwrap();
    }
    let (sb, _) = super::volume::newest_superblock(&*dev).unwrap();
    let mut nodes = Vec::new();
    super::tree::walk(&*dev, sb.root, sb.height, sb.total_blocks, &mut |b, _| nodes.push(b)).unwrap();
    assert!(nodes.len() > 3, "a tree of several nodes");
    let leaf = nodes[nodes.len() / 2];
    let mut bytes = dev.bytes();
    bytes[leaf as usize * BLOCK + 200] ^= 0x80;
    let dev = Arc::new(MemDevice::from_bytes(bytes));
    let r = fsck(&*dev, true);
    assert!(r.problems.iter().any(|p| p.contains(&format!("block {leaf}: checksum mismatch"))), "{:?}", r.problems);
}

#[test]
fn flipped_bits_anywhere_in_metadata_never_panic() {
    let dev = image(128);
    {
        let mut v = open(&dev);
        for n in 0..60u32 {
            let f = v.create(ROOT_INO, format!("file-{n:04}-{}", "x".repeat(40)).as_bytes(), F, 0, 0, 0).unwrap();
            v.set_xattr(f, b"user.k", &[n as u8; 100], false, false).unwrap();
        }
        v.commit().unwrap();
    }
    let clean = dev.bytes();
    let mut rng = Rng::new(7);
    let used: Vec<usize> = (0..128).filter(|b| clean[b * BLOCK..(b + 1) * BLOCK].iter().any(|&x| x != 0)).collect();
    for _ in 0..300 {
        let mut bytes = clean.clone();
        let b = used[rng.below(used.len() as u64) as usize];
        let at = b * BLOCK + rng.below(BLOCK as u64) as usize;
        bytes[at] ^= 1 << rng.below(8);
        let dev = Arc::new(MemDevice::from_bytes(bytes));
        let _ = fsck(&*dev, true);
        if let Ok(v) = Volume::open(dev.clone(), OpenOptions { read_only: true, ..OpenOptions::default() }) {
            let _ = v.lookup(ROOT_INO, b"file-0001");
        }
    }
}

#[test]
fn enospc_leaves_a_consistent_image_that_works_again_after_deleting() {
    let dev = image(200);
    let mut v = open(&dev);
    let mut n = 0;
    let err = loop {
        let f = match v.create(ROOT_INO, format!("f{n}").as_bytes(), F, 0, 0, 0) {
            Ok(f) => f,
            Err(e) => break e,
        };
        if let Err(e) = v.write(f, 0, &pattern(6 * BLOCK, n)) {
            break e;
        }
        n += 1;
        assert!(n < 1000);
    };
    assert_eq!(err.errno(), libc::ENOSPC);
    v.commit().unwrap();
    assert_clean(&*dev);
    for k in 0..n / 2 {
        let ino = v.unlink(ROOT_INO, format!("f{k}").as_bytes()).unwrap();
        v.evict(ino).unwrap();
    }
    v.commit().unwrap();
    let f = v.create(ROOT_INO, b"again", F, 0, 0, 0).unwrap();
    v.write(f, 0, &pattern(6 * BLOCK, 99)).unwrap();
    v.commit().unwrap();
    drop(v);
    assert_clean(&*dev);
}

#[test]
fn statfs_counts_blocks_as_they_are_written_and_freed() {
    let dev = image(512);
    let mut v = open(&dev);
    v.commit().unwrap();
    let before = v.space();
    let f = v.create(ROOT_INO, b"f", F, 0, 0, 0).unwrap();
    v.write(f, 0, &pattern(50 * BLOCK, 4)).unwrap();
    v.commit().unwrap();
    let after = v.space();
    assert!(before.free - after.free >= 50 && before.free - after.free <= 53, "{before:?} {after:?}");
    assert_eq!(after.inodes, 2);
    v.unlink(ROOT_INO, b"f").unwrap();
    v.evict(f).unwrap();
    v.commit().unwrap();
    assert_eq!(v.space().free, before.free);
}

#[test]
fn snapshots_keep_the_old_state_mount_read_only_and_give_space_back_when_deleted() {
    let dev = image(512);
    let mut v = open(&dev);
    let f = v.create(ROOT_INO, b"f", F, 0, 0, 0).unwrap();
    v.write(f, 0, &pattern(20 * BLOCK, 5)).unwrap();
    v.commit().unwrap();
    let free0 = v.space().free;
    v.snapshot_create("before").unwrap();
    assert_eq!(v.snapshot_create("before").unwrap_err().errno(), libc::EEXIST);
    v.write(f, 0, &pattern(20 * BLOCK, 6)).unwrap();
    v.commit().unwrap();
    assert!(v.space().free + 19 < free0, "the snapshot pins the old data");
    let snap =
        Volume::open(dev.clone(), OpenOptions { snapshot: Some("before".into()), ..OpenOptions::default() }).unwrap();
    assert!(snap.is_read_only());
    assert_eq!(read_all(&snap, f), pattern(20 * BLOCK, 5));
    drop(snap);
    assert_eq!(read_all(&v, f), pattern(20 * BLOCK, 6));
    assert_eq!(v.snapshots().len(), 1);
    assert_clean(&*dev);
    v.snapshot_delete("before").unwrap();
    assert!(v.space().free + 2 >= free0, "{} vs {free0}", v.space().free);
    drop(v);
    assert_clean(&*dev);
}

#[test]
fn a_directory_of_100000_entries_lists_and_looks_up_and_commits_only_what_changed() {
    let dev = image(16384);
    let mut v = open(&dev);
    for n in 0..100_000u32 {
        v.create(ROOT_INO, format!("entry-{n}").as_bytes(), F, 0, 0, 0).unwrap();
    }
    v.commit().unwrap();
    drop(v);
    let mut v = open(&dev);
    assert!(v.lookup(ROOT_INO, b"entry-98765").is_ok());
    // A commit rewrites only the leaves that changed and the nodes above them.
    dev.reset_log();
    v.create(ROOT_INO, b"one more", F, 0, 0, 0).unwrap();
    v.commit().unwrap();
    assert!(dev.log_len() < 30, "{} writes for one create in a tree of ~4,500 leaves", dev.log_len());
    assert_clean(&*dev);
    // Scattered changes over several commits keep the reused and rewritten nodes coherent.
    let mut rng = Rng::new(3);
    for _ in 0..10 {
        for _ in 0..50 {
            let n = rng.below(100_000);
            let ino = v.unlink(ROOT_INO, format!("entry-{n}").as_bytes()).unwrap_or(0);
            if ino != 0 {
                v.evict(ino).unwrap();
                v.create(ROOT_INO, format!("entry-{n}").as_bytes(), F, 0, 0, 0).unwrap();
            }
        }
        v.commit().unwrap();
    }
    drop(v);
    assert_clean(&*dev);
    let v = open(&dev);
    let mut count = 0;
    v.list(ROOT_INO, 0, |_| {
        count += 1;
        true
    })
    .unwrap();
    assert_eq!(count, 100_001);
    assert!(v.superblock().height >= 3);
}

// -- crash tests ----------------------------------------------------------------------

/// The visible state: path -> (mode, contents).
fn dump(v: &Volume) -> BTreeMap<String, (u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(ROOT_INO, String::new())];
    while let Some((dir, path)) = stack.pop() {
        let mut entries = Vec::new();
        v.list(dir, 0, |l| {
            entries.push(l);
            true
        })
        .unwrap();
        for l in entries {
            let p = format!("{path}/{}", String::from_utf8_lossy(&l.name));
            let i = v.inode(l.ino).unwrap();
            if i.is_dir() {
                stack.push((l.ino, p.clone()));
                out.insert(p, (i.mode, Vec::new()));
            } else {
                out.insert(p, (i.mode, read_all(v, l.ino)));
            }
        }
    }
    out
}

/// One random operation on a small namespace; true when it committed by itself (snapshots).
fn random_op(v: &mut Volume, rng: &mut Rng) -> bool {
    let dirs = [ROOT_INO, v.lookup(ROOT_INO, b"d").unwrap_or(ROOT_INO)];
    let dir = dirs[rng.below(2) as usize];
    let name = format!("n{}", rng.below(6));
    let name = name.as_bytes();
    let _ = match rng.below(13) {
        0 => v.create(dir, name, F, 0, 0, 0).map(drop),
        1 | 2 => match v.lookup(dir, name) {
            Ok(ino) => {
                let off = rng.below(40_000);
                let len = rng.below(12_000) as usize;
                v.write(ino, off, &pattern(len, rng.next_u64())).map(drop)
            }
            Err(_) => v.create(dir, name, F, 0, 0, 0).map(drop),
        },
        3 => v.unlink(dir, name).and_then(|ino| v.evict(ino)),
        4 => v.lookup(dir, name).and_then(|ino| v.truncate(ino, rng.below(20_000))),
        5 => {
            let other = format!("n{}", rng.below(6));
            v.rename(dir, name, dirs[rng.below(2) as usize], other.as_bytes(), false, false)
                .and_then(|r| r.map_or(Ok(()), |ino| v.evict(ino)))
        }
        6 => {
            // Up to the largest value: big items make the least-filled leaves.
            let len = [50, 2048][rng.below(2) as usize];
            v.lookup(dir, name).and_then(|ino| v.set_xattr(ino, b"user.x", &pattern(len, 1), false, false))
        }
        7 => v.lookup(ROOT_INO, name).and_then(|t| v.link(t, dirs[1], b"hl")),
        8 => v.symlink(dir, name, b"target", 0, 0).map(drop),
        9 => {
            v.lookup(dir, name).and_then(|ino| v.allocate(ino, rng.below(30_000), rng.below(20_000), rng.below(2) == 0))
        }
        10 => v.lookup(dir, name).and_then(|ino| v.punch_hole(ino, rng.below(30_000), rng.below(20_000))),
        11 => return v.snapshot_create(&format!("s{}", rng.below(3))).is_ok(),
        _ => return v.snapshot_delete(&format!("s{}", rng.below(3))).is_ok(),
    };
    false
}

/// Runs `workloads` random workloads of `ops` operations with a commit every few, and
/// replays power losses at `points` points of each: every crash image opens, fsck finds
/// nothing, and the state is the last durable commit's or the one being written.
pub fn crash_run(workloads: u64, ops: usize, points: usize, seed: u64) -> usize {
    let mut checked = 0;
    for w in 0..workloads {
        let mut rng = Rng::new(seed + w);
        let dev = image(600);
        let mut v = open(&dev);
        v.create(ROOT_INO, b"d", S_IFDIR | 0o755, 0, 0, 0).unwrap();
        v.commit().unwrap();
        dev.reset_log();
        // (log length when the commit returned, state it made durable)
        let mut commits = vec![(0usize, dump(&v))];
        for _ in 0..ops {
            if random_op(&mut v, &mut rng) || rng.below(4) == 0 {
                v.commit().unwrap();
                commits.push((dev.log_len(), dump(&v)));
            }
        }
        v.commit().unwrap();
        commits.push((dev.log_len(), dump(&v)));
        drop(v);
        let total = dev.log_len();
        for _ in 0..points {
            let point = rng.below(total as u64 + 1) as usize;
            let bytes = dev.crash_image(point, &mut rng);
            let crashed = Arc::new(MemDevice::from_bytes(bytes));
            let report = fsck(&*crashed, true);
            assert!(report.is_clean(), "workload {w} point {point}/{total}: {:?}", report.problems);
            let v = Volume::open(crashed.clone(), OpenOptions { read_only: true, ..OpenOptions::default() })
                .unwrap_or_else(|e| panic!("workload {w} point {point}: {e}"));
            let state = dump(&v);
            // The last commit complete by `point` is durable; the next may have landed too.
            let k = commits.iter().rposition(|(at, _)| *at <= point).unwrap_or(0);
            let ok = state == commits[k].1 || commits.get(k + 1).is_some_and(|c| c.1 == state);
            assert!(ok, "workload {w} point {point}/{total}: the state is neither commit {k} nor the next");
            drop(v);
            // A writable open frees orphans and commits; the image stays clean.
            drop(Volume::open(crashed.clone(), OpenOptions::default()).unwrap());
            assert!(fsck(&*crashed, true).is_clean());
            checked += 1;
        }
    }
    checked
}

#[test]
fn power_loss_at_300_points_of_random_workloads_leaves_a_clean_image_with_every_commit() {
    assert_eq!(crash_run(6, 60, 50, 1000), 300);
}

/// The long run: `WFS_CRASH_POINTS` crash points (scripts/crash-wfs.sh).
#[test]
#[ignore]
fn power_loss_long_run() {
    let points: usize = std::env::var("WFS_CRASH_POINTS").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let seed: u64 = std::env::var("WFS_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let per = 100;
    let workloads = points.div_ceil(per) as u64;
    let n = crash_run(workloads, 120, per, seed);
    eprintln!("checked {n} crash points over {workloads} workloads (seed {seed})");
}

/// Writes everything to `inner`, but reports a failure for superblock writes while `fail`
/// is set: the superblock landed, and the engine cannot know.
struct FailingSuperblock {
    inner: MemDevice,
    fail: std::sync::atomic::AtomicBool,
}

impl Device for FailingSuperblock {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_at(buf, offset)?;
        if offset < 4 * BLOCK as u64 && self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(std::io::Error::other("injected"));
        }
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        self.inner.flush()
    }
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
}

#[test]
fn after_a_commit_that_may_have_landed_its_blocks_are_never_rewritten_in_place() {
    let mem = image(256);
    let dev = Arc::new(FailingSuperblock {
        inner: MemDevice::from_bytes(mem.bytes()),
        fail: std::sync::atomic::AtomicBool::new(false),
    });
    let mut v = Volume::open(dev.clone(), OpenOptions::default()).unwrap();
    let f = v.create(ROOT_INO, b"f", F, 0, 0, 0).unwrap();
    v.write(f, 0, &pattern(2 * BLOCK, 1)).unwrap();
    v.commit().unwrap();
    v.write(f, 0, &pattern(2 * BLOCK, 2)).unwrap();
    dev.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(v.commit().is_err());
    dev.fail.store(false, std::sync::atomic::Ordering::SeqCst);
    // Rewrite the blocks the landed superblock's tree points at, and crash before the next
    // commit: that superblock is the newest and must find its data intact.
    v.write(f, 0, &pattern(2 * BLOCK, 3)).unwrap();
    let crashed = MemDevice::from_bytes(dev.inner.bytes());
    std::mem::forget(v);
    assert_clean(&crashed);
    let v = Volume::open(Arc::new(crashed), OpenOptions::default()).unwrap();
    assert_eq!(read_all(&v, f), pattern(2 * BLOCK, 2));
}

/// Writes and reads of every size and alignment, across holes, in place within a
/// transaction and copy-on-write after a commit, against a plain byte model: the run-based
/// write and read paths must agree with it byte for byte, sequential small reads included.
#[test]
fn random_unaligned_writes_and_reads_in_runs_match_a_byte_model() {
    let dev = image(2048);
    let mut v = open(&dev);
    let f = v.create(ROOT_INO, b"f", F, 0, 0, 0).unwrap();
    let mut model: Vec<u8> = Vec::new();
    let mut rng = Rng::new(42);
    for round in 0..300u64 {
        let off = rng.below(400_000) as usize;
        let len = rng.below(if round % 3 == 0 { 70_000 } else { 9_000 }) as usize;
        let data = pattern(len, round);
        assert_eq!(v.write(f, off as u64, &data).unwrap(), len);
        if len > 0 {
            if model.len() < off + len {
                model.resize(off + len, 0);
            }
            model[off..off + len].copy_from_slice(&data);
        }
        if round % 17 == 0 {
            v.commit().unwrap();
        }
        let at = rng.below(model.len() as u64 + 1) as usize;
        let mut buf = vec![0xee; rng.below(200_000) as usize];
        let n = v.read(f, at as u64, &mut buf).unwrap();
        assert_eq!(n, buf.len().min(model.len() - at), "round {round}");
        assert_eq!(buf[..n], model[at..at + n], "round {round}: read at {at}");
        // A run of small sequential reads goes through the cache's read-ahead.
        let mut pos = at;
        for _ in 0..4 {
            let mut small = vec![0xee; 3000];
            let n = v.read(f, pos as u64, &mut small).unwrap();
            assert_eq!(small[..n], model[pos..pos + n], "round {round}: small read at {pos}");
            pos += n;
        }
    }
    assert_eq!(read_all(&v, f), model);
    v.commit().unwrap();
    drop(v);
    assert_clean(&*dev);
    let v = open(&dev);
    assert_eq!(read_all(&v, f), model);
}

#[test]
fn the_block_set_finds_free_blocks_and_free_runs_across_words() {
    let mut s = super::volume::BlockSet::new(300);
    for b in (0..200).filter(|b| b % 7 != 3) {
        s.insert(b);
    }
    s.insert(199);
    assert_eq!(s.first_clear(0, 300), Some(3));
    assert_eq!(s.first_clear(4, 300), Some(10));
    assert_eq!(s.first_clear(197, 200), None, "197 to 199 are used");
    assert_eq!(s.first_clear_run(0, 300, 1), Some(3));
    assert_eq!(s.first_clear_run(0, 300, 2), Some(200), "holes of one block are skipped");
    assert_eq!(s.first_clear_run(0, 300, 100), Some(200));
    assert_eq!(s.first_clear_run(0, 300, 101), None);
    assert_eq!(s.first_clear_run(0, 250, 60), None, "a run must end by the limit");
    s.insert(260);
    assert_eq!(s.first_clear_run(0, 300, 50), Some(200));
    assert_eq!(s.first_clear_run(0, 300, 61), None);
    assert_eq!(s.first_clear_run(250, 300, 39), Some(261));
}

// -- bounded metadata memory and the space map -----------------------------------------

#[test]
fn metadata_memory_stays_within_its_limits_in_a_tree_far_larger_than_them() {
    let dev = image(16384);
    let limit = 256 << 10;
    let small = OpenOptions { cache_blocks: 16, node_cache_blocks: 64, overlay_limit: limit, ..OpenOptions::default() };
    let mut v = Volume::open(dev.clone(), small.clone()).unwrap();
    let first_generation = v.superblock().generation;
    for n in 0..40_000u32 {
        let f = v.create(ROOT_INO, format!("file-with-a-longish-name-{n}").as_bytes(), F, 0, 0, 0).unwrap();
        if n.is_multiple_of(97) {
            v.write(f, 0, &pattern(100, u64::from(n))).unwrap();
        }
        if n.is_multiple_of(1000) {
            assert!(v.cached_nodes() <= 64, "{} nodes cached", v.cached_nodes());
            // One change's worth of entries past the limit at most.
            assert!(v.pending_bytes() <= limit + 4096, "{} bytes pending", v.pending_bytes());
        }
    }
    // No commit was asked for: the overlay's limit made them.
    assert!(v.superblock().generation > first_generation + 20, "generation {}", v.superblock().generation);
    let tree_nodes = v.superblock().tree_nodes;
    assert!(tree_nodes > 64 * 10, "the tree ({tree_nodes} nodes) is far larger than the node cache");
    let mut rng = Rng::new(5);
    for _ in 0..200 {
        let n = rng.below(40_000) as u32;
        let ino = v.lookup(ROOT_INO, format!("file-with-a-longish-name-{n}").as_bytes()).unwrap();
        if n.is_multiple_of(97) {
            assert_eq!(read_all(&v, ino), pattern(100, u64::from(n)));
        }
        assert!(v.cached_nodes() <= 64);
    }
    for n in (0..40_000u32).step_by(2) {
        let ino = v.unlink(ROOT_INO, format!("file-with-a-longish-name-{n}").as_bytes()).unwrap();
        v.evict(ino).unwrap();
    }
    drop(v);
    assert_clean(&*dev);
    let v = Volume::open(dev.clone(), small).unwrap();
    let mut count = 0;
    v.list(ROOT_INO, 0, |_| {
        count += 1;
        true
    })
    .unwrap();
    assert_eq!(count, 20_000);
    assert!(v.cached_nodes() <= 64);
    // Half the entries gone: the leaves were merged, not left half empty.
    assert!(v.superblock().tree_nodes < tree_nodes * 3 / 4, "{} of {tree_nodes} nodes", v.superblock().tree_nodes);
}

#[test]
fn an_image_from_before_the_space_map_and_extents_is_walked_once_and_upgraded_at_its_first_commit() {
    use super::format::{RO_COMPAT_FREE_SPACE_TREE, Superblock};
    let dev = image(1024);
    let mut v = open(&dev);
    let f = v.create(ROOT_INO, b"f", F, 0, 0, 0).unwrap();
    v.write(f, 0, &pattern(5 * BLOCK, 1)).unwrap();
    v.snapshot_create("before").unwrap();
    v.write(f, 0, &pattern(3 * BLOCK, 2)).unwrap();
    v.commit().unwrap();
    let free = v.space().free;
    drop(v);
    // Make the newest superblock one an engine without the space map wrote: no feature,
    // no map (the blocks of the old map become unreferenced, as free space is then).
    let (sb, _) = super::volume::newest_superblock(&*dev).unwrap();
    let old = Superblock { ro_compat: 0, incompat: 0, ..sb.clone() };
    dev.write_at(&old.encode(), (sb.generation % 4) * BLOCK as u64).unwrap();
    let (back, _) = super::volume::newest_superblock(&*dev).unwrap();
    assert_eq!(back.ro_compat & RO_COMPAT_FREE_SPACE_TREE, 0);
    assert_eq!(back.space_map.block, 0);
    assert_clean(&*dev);

    let mut v = open(&dev);
    // The walk finds the same free space the map said, give or take the map's own blocks.
    assert!(v.space().free.abs_diff(free) <= 4, "{} vs {free}", v.space().free);
    assert_eq!(read_all(&v, f)[..3 * BLOCK], pattern(3 * BLOCK, 2)[..]);
    let g = v.create(ROOT_INO, b"g", F, 0, 0, 0).unwrap();
    v.write(g, 0, b"after the upgrade").unwrap();
    v.commit().unwrap();
    assert_ne!(v.superblock().ro_compat & RO_COMPAT_FREE_SPACE_TREE, 0);
    assert_ne!(v.superblock().incompat & super::format::INCOMPAT_EXTENTS, 0);
    drop(v);
    assert_clean(&*dev);
    let mut v = open(&dev);
    v.snapshot_delete("before").unwrap();
    drop(v);
    assert_clean(&*dev);
}

/// Fails the `n`th write after it is armed, without writing it.
struct FailingAt {
    inner: MemDevice,
    countdown: std::sync::atomic::AtomicI64,
}

impl Device for FailingAt {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        if self.countdown.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            return Err(std::io::Error::other("injected"));
        }
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.inner.flush()
    }
    fn len(&self) -> std::io::Result<u64> {
        self.inner.len()
    }
}

#[test]
fn a_commit_that_fails_at_any_write_leaks_nothing_and_the_next_one_commits_everything() {
    let mut failed = 0;
    for n in 0..40 {
        let mem = image(512);
        let dev = Arc::new(FailingAt { inner: MemDevice::from_bytes(mem.bytes()), countdown: i64::MAX.into() });
        let mut v = Volume::open(dev.clone(), OpenOptions::default()).unwrap();
        let keep = v.create(ROOT_INO, b"keep", F, 0, 0, 0).unwrap();
        v.write(keep, 0, &pattern(4 * BLOCK, 1)).unwrap();
        v.snapshot_create("s").unwrap();
        for i in 0..30u32 {
            v.create(ROOT_INO, format!("n{i}").as_bytes(), F, 0, 0, 0).unwrap();
        }
        v.write(keep, BLOCK as u64, &pattern(2 * BLOCK, 2)).unwrap();
        dev.countdown.store(n, std::sync::atomic::Ordering::SeqCst);
        let result = v.commit();
        dev.countdown.store(i64::MAX, std::sync::atomic::Ordering::SeqCst);
        if result.is_err() {
            failed += 1;
        }
        v.write(keep, 0, b"then").unwrap();
        v.snapshot_delete("s").unwrap();
        v.commit().unwrap();
        drop(v);
        let r = fsck(&dev.inner, true);
        assert!(r.is_clean(), "failing write {n}: {:#?}", r.problems);
        let v = Volume::open(Arc::new(MemDevice::from_bytes(dev.inner.bytes())), OpenOptions::default()).unwrap();
        let mut want = pattern(4 * BLOCK, 1);
        want[BLOCK..3 * BLOCK].copy_from_slice(&pattern(2 * BLOCK, 2));
        want[..4].copy_from_slice(b"then");
        assert_eq!(read_all(&v, keep), want, "failing write {n}");
        assert!(v.lookup(ROOT_INO, b"n29").is_ok());
    }
    assert!(failed >= 5, "only {failed} commits failed: the test no longer reaches the superblock");
}

/// The space kept back for commits is enough: an image whose metadata tree is a large share
/// of it is kept full with data while changes land all over the tree (renames, unlinks,
/// creates, big xattrs), and no commit ever fails for lack of space.
#[test]
fn on_images_kept_full_no_commit_ever_runs_out_of_space() {
    let mut refused = 0;
    for seed in 0..4 {
        let dev = image(900);
        let mut v = open(&dev);
        let mut rng = Rng::new(seed);
        let name = |n: u64| format!("a-file-name-long-enough-to-fill-leaves-quickly-{n:05}");
        for n in 0..1500 {
            v.create(ROOT_INO, name(n).as_bytes(), F, 0, 0, 0).unwrap();
        }
        let data = v.create(ROOT_INO, b"data", F, 0, 0, 0).unwrap();
        v.commit().unwrap();
        let mut next = 1500;
        for _ in 0..1500 {
            let n = rng.below(next);
            let r = match rng.below(8) {
                0 | 1 => {
                    let size = v.inode(data).unwrap().size;
                    v.write(data, size, &pattern(64 * BLOCK, size)).map(drop)
                }
                // Now and then the data goes, and the image fills again.
                2 if rng.below(10) == 0 => v.truncate(data, 0),
                2 => Ok(()),
                3 => {
                    next += 1;
                    v.rename(ROOT_INO, name(n).as_bytes(), ROOT_INO, name(next).as_bytes(), false, false).map(drop)
                }
                4 => v.unlink(ROOT_INO, name(n).as_bytes()).and_then(|ino| v.evict(ino)),
                5 => {
                    next += 1;
                    v.create(ROOT_INO, name(next).as_bytes(), F, 0, 0, 0).map(drop)
                }
                6 => v
                    .lookup(ROOT_INO, name(n).as_bytes())
                    .and_then(|ino| v.set_xattr(ino, b"user.big", &pattern(2048, n), false, false)),
                _ => {
                    v.commit().unwrap_or_else(|e| panic!("seed {seed}: a commit failed: {e}"));
                    Ok(())
                }
            };
            match r {
                Err(e) if e.errno() == libc::ENOSPC => refused += 1,
                Err(e) if e.errno() == libc::ENOENT => {}
                Err(e) => panic!("seed {seed}: {e}"),
                Ok(()) => {}
            }
        }
        v.commit().unwrap();
        drop(v);
        assert_clean(&*dev);
    }
    assert!(refused > 200, "only {refused} changes met a full image: the test no longer fills it");
}

// -- extents --------------------------------------------------------------------------------

/// The extent (file blocks from `idx`) stored under `idx`, if an item starts there.
fn extent_at(v: &Volume, ino: u64, idx: u64) -> Option<u64> {
    let item = v.item(&super::format::key_n(ino, super::format::kind::DATA, idx)).unwrap()?;
    Some(super::format::decode_data(&item).unwrap().len())
}

#[test]
fn a_sequential_write_is_one_extent_per_mib_and_an_overwrite_splits_only_its_own() {
    let dev = image(4096);
    let mut v = open(&dev);
    let f = v.create(ROOT_INO, b"f", F, 0, 0, 0).unwrap();
    let mut model = pattern(4 << 20, 1);
    for (n, chunk) in model.chunks(1 << 20).enumerate() {
        v.write(f, (n << 20) as u64, chunk).unwrap();
    }
    v.commit().unwrap();
    for start in [0, 256, 512, 768] {
        assert_eq!(extent_at(&v, f, start), Some(256), "extent at block {start}");
    }
    assert_eq!(v.inode(f).unwrap().blocks, 1024);
    // Copy-on-write of two blocks in the middle of the first extent: it is cut around them.
    let patch = pattern(2 * BLOCK, 2);
    v.write(f, 25 * BLOCK as u64, &patch).unwrap();
    model[25 * BLOCK..27 * BLOCK].copy_from_slice(&patch);
    assert_eq!((extent_at(&v, f, 0), extent_at(&v, f, 25), extent_at(&v, f, 27)), (Some(25), Some(2), Some(229)));
    assert_eq!(extent_at(&v, f, 256), Some(256));
    assert_eq!(read_all(&v, f), model);
    // Small appends join the extent before them while the blocks follow on disk.
    let g = v.create(ROOT_INO, b"g", F, 0, 0, 0).unwrap();
    for n in 0..40u64 {
        v.write(g, n * BLOCK as u64, &pattern(BLOCK, n)).unwrap();
    }
    assert!(extent_at(&v, g, 0).unwrap() >= 30, "{:?}", extent_at(&v, g, 0));
    v.commit().unwrap();
    drop(v);
    assert_clean(&*dev);
    let mut v = open(&dev);
    assert_eq!(read_all(&v, f), model);
    // A truncate across several stretches of file and holes gives everything back.
    let free = v.space().free;
    let h = v.create(ROOT_INO, b"h", F, 0, 0, 0).unwrap();
    for idx in [0u64, 70_000, 200_000, 200_255] {
        v.write(h, idx * BLOCK as u64, &pattern(3 * BLOCK, idx)).unwrap();
    }
    assert_eq!(v.inode(h).unwrap().blocks, 12);
    assert_eq!(v.seek(h, 4 * BLOCK as u64, true).unwrap(), 70_000 * BLOCK as u64);
    assert_eq!(v.seek(h, 70_000 * BLOCK as u64, false).unwrap(), 70_003 * BLOCK as u64);
    v.truncate(h, 0).unwrap();
    assert_eq!(v.inode(h).unwrap().blocks, 0);
    v.commit().unwrap();
    assert!(v.space().free >= free - 2, "{} of {free} free", v.space().free);
    drop(v);
    assert_clean(&*dev);
}

#[test]
fn a_damaged_space_map_is_named_by_fsck_and_rebuilt_from_the_trees_at_the_next_writable_open() {
    let dev = image(1024);
    let mut v = open(&dev);
    let f = v.create(ROOT_INO, b"f", F, 0, 0, 0).unwrap();
    v.write(f, 0, &pattern(20 * BLOCK, 1)).unwrap();
    v.snapshot_create("s").unwrap();
    v.write(f, 0, &pattern(3 * BLOCK, 2)).unwrap();
    v.commit().unwrap();
    let free = v.space().free;
    drop(v);
    for pinned in [false, true] {
        let (sb, _) = super::volume::newest_superblock(&*dev).unwrap();
        let map = if pinned { sb.pinned_map } else { sb.space_map };
        let mut b = vec![0; BLOCK];
        dev.read_at(&mut b, map.block * BLOCK as u64).unwrap();
        b[100] ^= 0x10;
        dev.write_at(&b, map.block * BLOCK as u64).unwrap();
        let r = fsck(&*dev, false);
        assert!(r.problems.iter().any(|p| p.contains("map")), "{:?}", r.problems);
        // Read-only: the trees are walked and nothing is written.
        let v = Volume::open(dev.clone(), OpenOptions { read_only: true, ..OpenOptions::default() }).unwrap();
        // Give or take the damaged maps' own blocks, free now.
        assert!(v.space().free.abs_diff(free) <= 4, "{} vs {free}", v.space().free);
        drop(v);
        // Writable: the maps are written anew at once.
        let v = open(&dev);
        assert_eq!(read_all(&v, f)[..3 * BLOCK], pattern(3 * BLOCK, 2)[..]);
        drop(v);
        assert_clean(&*dev);
    }
}

#[test]
fn fsck_holds_a_leaf_and_one_directory_of_items_at_a_time_however_many_items_a_tree_has() {
    let dev = image(16_384);
    let mut v = open(&dev);
    for d in 0..250 {
        let dir = v.create(ROOT_INO, format!("dir-{d}").as_bytes(), S_IFDIR | 0o755, 0, 0, 0).unwrap();
        for f in 0..200 {
            let ino = v.create(dir, format!("file-{f}").as_bytes(), F, 0, 0, 0).unwrap();
            if f % 10 == 0 {
                v.write(ino, 0, b"data").unwrap();
            }
        }
        if d % 25 == 24 {
            v.commit().unwrap();
        }
    }
    v.commit().unwrap();
    drop(v);
    let (sb, _) = super::volume::newest_superblock(&*dev).unwrap();
    let mut items = 0;
    super::tree::walk(&*dev, sb.root, sb.height, sb.total_blocks, &mut |_, n| {
        if let super::format::Node::Leaf(l) = n {
            items += l.len();
        }
    })
    .unwrap();
    super::fsck::peak::take();
    let r = fsck(&*dev, true);
    let peak = super::fsck::peak::take();
    assert!(r.is_clean(), "fsck: {:#?}", r.problems);
    assert_eq!(r.inodes, 50_251);
    eprintln!("{items} items, {} inodes: at most {peak} items held at once", r.inodes);
    // The largest directory's names and index entries (2 x 250), and a leaf.
    assert!(peak < 700 && peak * 100 < items, "{peak} items held of {items}");
}

mod fsck_equivalence;

#[test]
fn fallocate_of_a_range_far_larger_than_the_image_is_enospc_at_once_and_changes_nothing() {
    let dev = image(256);
    let mut v = open(&dev);
    let f = v.create(ROOT_INO, b"f", F, 0, 0, 0).unwrap();
    v.write(f, 0, &pattern(3 * BLOCK, 1)).unwrap();
    let started = std::time::Instant::now();
    let err = v.allocate(f, 0, 1 << 60, false).unwrap_err();
    assert_eq!(err.errno(), libc::ENOSPC);
    // Counting the holes walks the file's extents, not 2^48 blocks of range.
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(v.inode(f).unwrap().blocks, 3);
    assert_eq!(read_all(&v, f), pattern(3 * BLOCK, 1));
    drop(v);
    assert_clean(&*dev);
}
