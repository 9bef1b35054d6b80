//! The speed claims of docs/fat.md ("Speed"), checked by counting what operations cost
//! rather than by timing them: one IO per contiguous run of clusters, a cached cluster chain
//! (a read far into a file follows no FAT links), allocation in a run that holds the
//! request, and lookups in a large directory that read nothing once it is loaded. Each
//! count is exact, so a change that loses one of these properties fails here, on any
//! machine.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

use plugfs_fat::engine::io::{Disk, IoOp, ReadLog, WriteLog};
use plugfs_fat::engine::{OpenOptions, ROOT, Volume};

const MIB: usize = 1 << 20;

/// A FAT32 image of `mib` MiB with 4 KiB clusters, made by mkfs.fat (at least 260 MiB:
/// fewer clusters would make it FAT16, whatever the BPB says).
fn image(dir: &Path, mib: u32) -> PathBuf {
    let img = dir.join("io.img");
    let size = (mib * 1024).to_string();
    let out = Command::new("mkfs.fat")
        .args(["-F", "32", "-S", "512", "-s", "8", "-C", img.to_str().unwrap(), &size])
        .output()
        .expect("mkfs.fat (install dosfstools)");
    assert!(out.status.success(), "mkfs.fat: {}", String::from_utf8_lossy(&out.stderr));
    img
}

/// The volume on `img`, with its writes and reads recorded. `noatime`: a read that found
/// a stale access date (a test running over midnight) would add the entry's write and the
/// first change's scan of every directory to what the reads cost.
fn open(img: &Path) -> (Volume, WriteLog, ReadLog) {
    let file = File::options().read(true).write(true).open(img).unwrap();
    let (disk, writes) = Disk::recording(file);
    let (disk, reads) = disk.recording_reads();
    (Volume::from_disk(disk, OpenOptions { noatime: true, ..OpenOptions::default() }).unwrap(), writes, reads)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 4093) as u8).collect()
}

/// The writes of `log` at or after byte `from` (the data area), as (offset, length).
fn data_writes(log: &WriteLog, from: u64) -> Vec<(u64, usize)> {
    let log = log.lock().unwrap();
    log.iter()
        .filter_map(|op| match op {
            IoOp::Write { offset, data } if *offset >= from => Some((*offset, data.len())),
            _ => None,
        })
        .collect()
}

fn clear<T>(log: &std::sync::Mutex<Vec<T>>) {
    log.lock().unwrap().clear();
}

#[test]
fn a_contiguous_write_and_read_of_a_mebibyte_are_one_io_each() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), 320);
    let data = pattern(4 * MIB);
    {
        let (vol, writes, _) = open(&img);
        let f = vol.create(ROOT, "big file.bin", false).unwrap();
        // The directory's cluster lies in the data area too: count from after it.
        let from = vol.bpb().cluster_offset(vol.first_cluster(ROOT).unwrap() + 1);
        clear(&writes);
        for chunk in 0..4 {
            vol.write(f, (chunk * MIB) as u64, &data[chunk * MIB..(chunk + 1) * MIB]).unwrap();
        }
        // Four writes, one per request, back to back: the file is one run.
        let w = data_writes(&writes, from);
        assert_eq!(w.len(), 4, "{w:?}");
        assert!(w.iter().all(|&(_, len)| len == MIB), "{w:?}");
        assert!(w.windows(2).all(|p| p[1].0 == p[0].0 + MIB as u64), "{w:?}");
        vol.unmount().unwrap();
    }
    let (vol, _, reads) = open(&img);
    let f = vol.lookup(ROOT, "big file.bin").unwrap();
    let mut buf = vec![0u8; MIB];
    clear(&reads);
    assert_eq!(vol.read(f, MIB as u64, &mut buf).unwrap(), MIB);
    assert_eq!(buf, data[MIB..2 * MIB]);
    let r = reads.lock().unwrap().clone();
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].1, MIB);
}

#[test]
fn a_read_far_into_a_file_follows_no_fat_links_once_its_chain_is_known() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), 320);
    let data = pattern(16 * MIB);
    {
        let (vol, _, _) = open(&img);
        let f = vol.create(ROOT, "long.bin", false).unwrap();
        vol.write(f, 0, &data).unwrap();
        vol.unmount().unwrap();
    }
    let (vol, _, reads) = open(&img);
    let f = vol.lookup(ROOT, "long.bin").unwrap();
    let clusters = (16 * MIB / 4096) as u64;
    let before = vol.chain_links_walked();
    let mut buf = vec![0u8; 4096];
    vol.read(f, 15 * MIB as u64, &mut buf).unwrap();
    // The first read walks the chain once, whole...
    assert_eq!(vol.chain_links_walked() - before, clusters - 1);
    // ...and no read after it follows a link, wherever it lands; each is one IO.
    clear(&reads);
    for at in [16 * MIB - 4096, 3 * MIB + 100, 8 * MIB, 0, 12 * MIB + 5] {
        vol.read(f, at as u64, &mut buf).unwrap();
        assert_eq!(buf, data[at..at + 4096]);
    }
    assert_eq!(vol.chain_links_walked() - before, clusters - 1);
    assert_eq!(reads.lock().unwrap().len(), 5);
}

#[test]
fn a_file_is_placed_in_a_run_that_holds_it_not_in_the_first_hole() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), 320);
    let (vol, writes, _) = open(&img);
    let from = vol.bpb().cluster_offset(vol.first_cluster(ROOT).unwrap() + 1);
    // Free a hole of 100 clusters before a file: a 2 MiB file (512 clusters) must not start
    // in it and break into pieces.
    let a = vol.create(ROOT, "a", false).unwrap();
    vol.write(a, 0, &pattern(400 * 1024)).unwrap();
    let b = vol.create(ROOT, "b", false).unwrap();
    vol.write(b, 0, &pattern(4096)).unwrap();
    vol.unlink(ROOT, "a").unwrap();
    vol.evict(a).unwrap();
    let big = vol.create(ROOT, "big", false).unwrap();
    clear(&writes);
    vol.write(big, 0, &pattern(2 * MIB)).unwrap();
    let w = data_writes(&writes, from);
    assert_eq!(w.len(), 1, "a 2 MiB file in one run: {w:?}");
    assert!(vol.first_cluster(big).unwrap() > vol.first_cluster(b).unwrap());
    vol.unmount().unwrap();
}

#[test]
fn lookups_in_a_directory_of_ten_thousand_entries_read_nothing_once_it_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), 320);
    {
        let (vol, _, _) = open(&img);
        let d = vol.create(ROOT, "many", true).unwrap();
        for i in 0..10_000 {
            vol.create(d, &format!("entry number {i:05}.txt"), false).unwrap();
        }
        vol.unmount().unwrap();
    }
    let (vol, _, reads) = open(&img);
    let d = vol.lookup(ROOT, "many").unwrap();
    // The first lookup reads the directory, once.
    vol.lookup(d, "entry number 00000.txt").unwrap();
    let walked = vol.chain_links_walked();
    clear(&reads);
    for i in (0..10_000).rev().step_by(7) {
        // Case-insensitive, as FAT is.
        vol.lookup(d, &format!("ENTRY NUMBER {i:05}.TXT")).unwrap();
    }
    assert!(vol.lookup(d, "entry number 10000.txt").is_err());
    assert_eq!(reads.lock().unwrap().len(), 0);
    assert_eq!(vol.chain_links_walked(), walked);
}
