//! Crash-cut tests: a workload runs on a real mkfs.fat image through the engine, whose IO
//! layer records every write and sync in order. Each sampled cut point replays a prefix of
//! that record (and, where the next write is large, that prefix plus a torn, sector-aligned
//! part of the next write) onto a copy of the starting image, as if the machine had died
//! there (plugfs killed, the kernel keeping every write it was given). Then one
//! `fsck.fat -a` must repair the image so that `fsck.fat -n` finds nothing, and every file
//! that was complete and synced before the cut (and not touched since) must read back
//! byte-identical with `mcopy` and through the engine. A third variant models a power cut:
//! the writes before the last sync plus a random subset of those after it (the kernel
//! writes pages back in any order); there fsck.fat gets up to three passes and the synced
//! files must be intact.
//!
//! `PLUGFS_FAT_CRASH_CUTS` sets the number of cut points per FAT type (default 30: a few
//! seconds); `scripts/crash-fat.sh` runs many more. `PLUGFS_FAT_CRASH_SEED` changes the
//! workload.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::process::Command;

use plugfs_fat::engine::io::{self, Disk, IoOp};
use plugfs_fat::engine::{Ino, OpenOptions, ROOT, Volume};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

fn tool(name: &str, args: &[&str]) -> std::process::Output {
    Command::new(name)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name} ({e}): install dosfstools and mtools"))
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A file the workload finished and synced: it must survive every cut in `from..=until`.
struct Expect {
    path: String,
    data: Vec<u8>,
    /// Record length right after the sync that made it durable.
    from: usize,
    /// Record length when the workload next touched it (unlink, rename).
    until: usize,
    /// Where a rename after `until` moves it: from then on it must be intact under one of
    /// the two names (the new entry is written before the old one is deleted).
    renamed_to: Option<String>,
}

/// Runs the workload on `img` through a recording engine; returns the record and what must
/// survive.
fn workload(img: &Path, seed: u64) -> (Vec<IoOp>, Vec<Expect>) {
    let file = std::fs::OpenOptions::new().read(true).write(true).open(img).unwrap();
    let (disk, log) = Disk::recording(file);
    let vol = Volume::from_disk(disk, OpenOptions::default()).unwrap();
    let len = |log: &io::WriteLog| log.lock().unwrap().len();
    let mut rng = Rng(seed | 1);
    let sub = vol.create(ROOT, "sub", true).unwrap();
    let deep = vol.create(sub, "A directory with a long name", true).unwrap();
    let dirs: [(Ino, &str); 3] = [(ROOT, ""), (sub, "sub/"), (deep, "sub/A directory with a long name/")];
    let mut expect = Vec::new();
    let mut scratch: Vec<(Ino, String)> = Vec::new();
    for round in 0..6 {
        let mut pending = Vec::new();
        for i in 0..3 {
            let (dir, prefix) = dirs[rng.below(3) as usize];
            let name =
                if i == 2 { format!("k{round}.bin") } else { format!("Kept file {round}-{i} of the workload.bin") };
            let n = rng.below(150_000) as usize;
            let data = rng.bytes(n);
            let ino = vol.create(dir, &name, false).unwrap();
            if rng.below(4) == 0 && data.len() > 10 {
                // The tail first, then the head: the gap is zero-filled, then overwritten.
                let mid = data.len() / 2;
                vol.write(ino, mid as u64, &data[mid..]).unwrap();
                vol.write(ino, 0, &data[..mid]).unwrap();
            } else {
                let mut at = 0;
                while at < data.len() {
                    let n = (1 + rng.below(70_000) as usize).min(data.len() - at);
                    vol.write(ino, at as u64, &data[at..at + n]).unwrap();
                    at += n;
                }
            }
            pending.push((format!("{prefix}{name}"), data));
        }
        // Volatile work around the kept files: scratch files written, truncated, renamed
        // across directories and removed; directories made and removed.
        let (dir, _) = dirs[rng.below(3) as usize];
        let name = format!("scratch {round}.tmp");
        let ino = vol.create(dir, &name, false).unwrap();
        let n = 40_000 + rng.below(40_000) as usize;
        vol.write(ino, 0, &rng.bytes(n)).unwrap();
        vol.truncate(ino, rng.below(30_000)).unwrap();
        let (to, _) = dirs[rng.below(3) as usize];
        let renamed = format!("renamed scratch {round}.tmp");
        vol.rename(dir, &name, to, &renamed, false).unwrap();
        vol.write(ino, 5_000, &rng.bytes(20_000)).unwrap();
        scratch.push((to, renamed));
        if round % 2 == 1 {
            let (d, n) = scratch.remove(0);
            let gone = vol.unlink(d, &n).unwrap();
            vol.evict(gone).unwrap();
        }
        let tmpdir = format!("empty dir {round}");
        vol.create(ROOT, &tmpdir, true).unwrap();
        if round > 0 {
            vol.rmdir(ROOT, &format!("empty dir {}", round - 1)).unwrap();
        }
        vol.sync().unwrap();
        let from = len(&log);
        expect.extend(pending.into_iter().map(|(path, data)| Expect {
            path,
            data,
            from,
            until: usize::MAX,
            renamed_to: None,
        }));
    }
    // Touch two synced files: past these points they may legitimately differ.
    let gone = &mut expect[0];
    gone.until = len(&log);
    let (dir, name) = split(&gone.path, &dirs);
    let ino = vol.unlink(dir, name).unwrap();
    vol.evict(ino).unwrap();
    let moved = &mut expect[4];
    moved.until = len(&log);
    moved.renamed_to = Some("moved at the end.bin".to_string());
    let (dir, name) = split(&moved.path, &dirs);
    vol.rename(dir, name, ROOT, "moved at the end.bin", false).unwrap();
    // A case-only rename: the same short name before and after.
    let recased = &mut expect[5];
    recased.until = len(&log);
    let (dir, name) = split(&recased.path, &dirs);
    let upper = name.to_uppercase();
    recased.renamed_to = Some(format!("{}{upper}", &recased.path[..recased.path.len() - name.len()]));
    assert_eq!(name, "k1.bin");
    vol.rename(dir, name, dir, &upper, false).unwrap();
    vol.unmount().unwrap();
    drop(vol);
    let ops = std::mem::take(&mut *log.lock().unwrap());
    (ops, expect)
}

fn split<'a>(path: &'a str, dirs: &[(Ino, &str)]) -> (Ino, &'a str) {
    let (prefix, name) = path.rsplit_once('/').map(|(p, n)| (&path[..p.len() + 1], n)).unwrap_or(("", path));
    (dirs.iter().find(|(_, p)| *p == prefix).expect("a workload directory").0, name)
}

/// Reads `path` through the engine, or why not.
fn engine_read(vol: &mut Volume, path: &str) -> Result<Vec<u8>, String> {
    let mut ino = ROOT;
    for part in path.split('/') {
        ino = vol.lookup(ino, part).map_err(|e| format!("lookup {part}: {e}"))?;
    }
    let size = vol.stat(ino).map_err(|e| e.to_string())?.size as usize;
    let mut buf = vec![0u8; size];
    let mut at = 0;
    while at < size {
        let n = vol.read(ino, at as u64, &mut buf[at..]).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        at += n;
    }
    Ok(buf)
}

/// How much of fsck.fat's repair a cut image gets.
#[derive(Clone, Copy)]
enum Repair {
    /// One `fsck.fat -a`, after which `fsck.fat -n` must find nothing.
    OnePass,
    /// Up to this many `fsck.fat -a` passes; only the synced files are checked.
    Passes(usize),
}

/// Replays `ops` (the last one torn after `torn` bytes) onto a copy of `start`, repairs it
/// and checks the files due at record position `cut`. Returns what went wrong.
fn check_cut(
    work: &Path,
    start: &Path,
    ops: &[IoOp],
    cut: usize,
    torn: Option<usize>,
    expect: &[Expect],
    mode: Repair,
) -> Result<(), String> {
    let img = work.join("cut.img");
    std::fs::copy(start, &img).unwrap();
    io::replay(&File::options().write(true).open(&img).unwrap(), ops, torn).unwrap();
    let i = img.to_str().unwrap();
    let repair = tool("fsck.fat", &["-a", "-w", i]);
    if !matches!(repair.status.code(), Some(0 | 1)) {
        return Err(format!("fsck.fat -a failed ({:?}):\n{}", repair.status, text(&repair)));
    }
    let check = tool("fsck.fat", &["-n", i]);
    if !check.status.success() {
        match mode {
            Repair::OnePass => {
                return Err(format!(
                    "fsck.fat -n after the repair still finds problems:\n{}\nthe repair said:\n{}",
                    text(&check),
                    text(&repair)
                ));
            }
            // What fsck.fat -a leaves for a second pass (a directory it truncated to
            // nothing), or will not drop in auto mode (a new directory whose cluster never
            // reached the disk): more passes, and the synced files must be intact anyway.
            Repair::Passes(n) => {
                for _ in 1..n {
                    tool("fsck.fat", &["-a", "-w", i]);
                }
            }
        }
    }
    let due: Vec<&Expect> =
        expect.iter().filter(|e| e.from <= cut && (cut <= e.until || e.renamed_to.is_some())).collect();
    let mut vol = Volume::open(&img, OpenOptions { read_only: true, tz_offset: 0 })
        .map_err(|e| format!("the engine cannot mount the repaired image: {e}"))?;
    for e in &due {
        let names: Vec<&str> =
            if cut <= e.until { vec![&e.path] } else { vec![&e.path, e.renamed_to.as_deref().unwrap_or_default()] };
        // Each name read with mcopy and the engine: found when both give the synced bytes.
        let mut found = Vec::new();
        let mut wrong = Vec::new();
        for name in &names {
            let out = work.join("out.bin");
            let _ = std::fs::remove_file(&out);
            let copy = tool("mcopy", &["-n", "-i", i, &format!("::/{name}"), out.to_str().unwrap()]);
            if !copy.status.success() {
                continue;
            }
            if std::fs::read(&out).unwrap() != e.data {
                wrong.push(format!("{name}: mcopy reads other bytes"));
                continue;
            }
            match engine_read(&mut vol, name) {
                Ok(d) if d == e.data => found.push(name),
                Ok(_) => wrong.push(format!("{name}: the engine reads other bytes")),
                Err(m) => wrong.push(format!("{name}: the engine cannot read it: {m}")),
            }
        }
        // A cut inside a rename leaves both names on one chain and fsck.fat truncates one
        // of them: the data must survive under the other. Otherwise the one name must.
        let why = if !wrong.is_empty() { wrong.join("; ") } else { format!("mcopy finds none of {names:?}") };
        if found.is_empty() || (names.len() == 1 && !wrong.is_empty()) {
            return Err(format!("{}: lost or damaged: {why}\nthe repair said:\n{}", e.path, text(&repair)));
        }
    }
    Ok(())
}

/// The cut points: every one when `count` covers them, else `count` spread evenly plus
/// seeded random ones, always including the sync points and every cut after the last sync
/// (where synced files are unlinked and renamed).
fn cut_points(ops: &[IoOp], count: u64, last_phase: usize, rng: &mut Rng) -> Vec<usize> {
    let total = ops.len();
    let mut cuts: BTreeMap<usize, ()> = BTreeMap::new();
    if count as usize > total {
        return (0..=total).collect();
    }
    for k in 0..count / 2 {
        cuts.insert((k as usize * total) / (count as usize / 2).max(1), ());
    }
    while (cuts.len() as u64) < count {
        cuts.insert(rng.below(total as u64 + 1) as usize, ());
    }
    for (i, op) in ops.iter().enumerate() {
        if *op == IoOp::Sync {
            cuts.insert(i + 1, ());
        }
    }
    // Every cut of the last phase, where synced files are unlinked and renamed.
    for k in last_phase.min(total)..=total {
        cuts.insert(k, ());
    }
    cuts.into_keys().collect()
}

fn crash_cuts(mkfs_args: &[&str], kib: u64) {
    let work = tempfile::tempdir().unwrap();
    let start = work.path().join("start.img");
    let _ = std::fs::remove_file(&start);
    let mut args: Vec<&str> = mkfs_args.to_vec();
    let kib = kib.to_string();
    args.extend(["-C", start.to_str().unwrap(), &kib]);
    let out = tool("mkfs.fat", &args);
    assert!(out.status.success(), "mkfs.fat {args:?}: {}", text(&out));
    let seed = env_number("PLUGFS_FAT_CRASH_SEED", 7);
    let count = env_number("PLUGFS_FAT_CRASH_CUTS", 30);

    let end = work.path().join("end.img");
    std::fs::copy(&start, &end).unwrap();
    let (ops, expect) = workload(&end, seed);
    // The record is the whole story: replaying all of it gives the image the engine left.
    let replayed = work.path().join("replayed.img");
    std::fs::copy(&start, &replayed).unwrap();
    io::replay(&File::options().write(true).open(&replayed).unwrap(), &ops, None).unwrap();
    assert!(std::fs::read(&replayed).unwrap() == std::fs::read(&end).unwrap(), "the write record misses writes");
    let end_check = tool("fsck.fat", &["-n", end.to_str().unwrap()]);
    assert!(end_check.status.success(), "the finished workload does not pass fsck.fat -n: {}", text(&end_check));

    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let last_phase = expect.iter().map(|e| e.from).max().unwrap_or(0);
    let cuts = cut_points(&ops, count, last_phase, &mut rng);
    let mut failures = Vec::new();
    let mut checked = 0;
    for &cut in &cuts {
        let mut variants = vec![(cut, None)];
        // The write after the cut, torn at a sector boundary inside it.
        if let Some(IoOp::Write { offset, data }) = ops.get(cut) {
            let mid = ((offset + data.len() as u64 / 2) & !511).saturating_sub(*offset) as usize;
            if mid > 0 && mid < data.len() {
                variants.push((cut + 1, Some(mid)));
            }
        }
        for (n, torn) in variants {
            checked += 1;
            if let Err(e) = check_cut(work.path(), &start, &ops[..n], n, torn, &expect, Repair::OnePass) {
                failures.push(format!("cut after {n} of {} writes (torn: {torn:?}): {e}", ops.len()));
            }
        }
        // A power cut rather than a crash of plugfs: the kernel writes dirty pages back in
        // any order, so of the writes since the last sync any subset may have reached the
        // disk. fsck.fat may need more than one pass then (docs/fat.md), but synced files
        // must survive.
        let synced = ops[..cut].iter().rposition(|op| *op == IoOp::Sync).map_or(0, |i| i + 1);
        if cut > synced + 1 {
            let mut subset = ops[..synced].to_vec();
            subset.extend(ops[synced..cut].iter().filter(|_| rng.below(2) == 0).cloned());
            checked += 1;
            if let Err(e) = check_cut(work.path(), &start, &subset, cut, None, &expect, Repair::Passes(3)) {
                failures.push(format!(
                    "cut after {cut} of {} writes, {} of the {} writes since the last sync reordered in: {e}",
                    ops.len(),
                    subset.len() - synced,
                    cut - synced
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {checked} cut images failed:\n{}", failures.len(), failures.join("\n\n"));
    eprintln!(
        "{mkfs_args:?}: {checked} cut images of a {}-write record repaired with every synced file intact",
        ops.len()
    );
}

#[test]
fn every_cut_of_a_fat16_workload_is_repaired_by_fsck_with_synced_files_intact() {
    crash_cuts(&["-F", "16", "-s", "4"], 16 * 1024);
}

#[test]
fn every_cut_of_a_fat32_workload_is_repaired_by_fsck_with_synced_files_intact() {
    crash_cuts(&["-F", "32", "-s", "1", "-S", "512"], 40 * 1024);
}

#[test]
fn every_cut_of_a_fat12_workload_is_repaired_by_fsck_with_synced_files_intact() {
    crash_cuts(&["-F", "12", "-s", "8"], 8 * 1024);
}

/// mkdir's barrier: the new directory's cluster (with `.` and `..`) is synced before any
/// write to the parent's entries, so no power cut can leave the parent naming a cluster of
/// old bytes (garbage entries `fsck.fat -a` would not drop).
#[test]
fn a_new_directory_cluster_is_durable_before_its_entry_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("fat16.img");
    let out = tool("mkfs.fat", &["-F", "16", "-C", img.to_str().unwrap(), "65536"]);
    assert!(out.status.success(), "{}", text(&out));
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&img).unwrap();
    let (disk, log) = Disk::recording(file);
    let vol = Volume::from_disk(disk, OpenOptions::default()).unwrap();
    let before = log.lock().unwrap().len();
    vol.create(ROOT, "new directory", true).unwrap();
    let ops: Vec<IoOp> = log.lock().unwrap()[before..].to_vec();
    let writes =
        |pred: &dyn Fn(&[u8]) -> bool| ops.iter().position(|op| matches!(op, IoOp::Write { data, .. } if pred(data)));
    // The new cluster starts with the "." entry; the parent's entry holds the short name.
    let cluster = writes(&|d| d.starts_with(b".          ")).expect("the new cluster is written");
    let entry = writes(&|d| d.windows(8).any(|w| w == b"NEWDIR~1")).expect("the parent's entry is written");
    assert!(cluster < entry, "the cluster first: {ops:?}");
    assert!(ops[cluster..entry].contains(&IoOp::Sync), "no sync between the new cluster and its entry: {ops:?}");
}
