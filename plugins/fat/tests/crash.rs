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
//! files must be intact. A fourth is the power cut that loses exactly the pages zeroed
//! since the last sync. The images are made over random bytes, and before any repair no
//! directory may hold a name the workload never gave: a directory cluster named before its
//! zeroes are durable shows as garbage there.
//!
//! A concurrent variant runs 3 writer threads (appends, overwrites, writes past the end,
//! truncates, fsyncs of their own files) and a namespace thread (create, unlink, mkdir,
//! rmdir, renames of files and directories in a shared directory) at once, records their
//! writes and syncs in global order, and cuts that record the same ways: after a crash
//! every worker file must hold what its last returned operation left (or what its
//! operation in flight may leave), after a power cut every file fsynced and not changed
//! since must hold what it held at that fsync. Three small tests pin what it found: a
//! directory's growth held inside the IO layer while another thread fsyncs, rmdir's
//! barrier, and a rename's new short name.
//!
//! `PLUGFS_FAT_CRASH_CUTS` sets the number of cut points per FAT type (default 30: a few
//! seconds), `PLUGFS_FAT_CRASH_MT_CUTS` those of the concurrent variant (default 120:
//! 15 to 25 s in debug); `scripts/crash-fat.sh` runs many more. `PLUGFS_FAT_CRASH_SEED`
//! changes the workloads (the concurrent one's interleaving is the scheduler's);
//! `PLUGFS_FAT_CRASH_KEEP=DIR` keeps the concurrent variant's failing cut images.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};

use plugfs_fat::engine::io::{self, Disk, IoOp};
use plugfs_fat::engine::{Ino, OpenOptions, ROOT, Volume};
use plugfs_fat::fuzzing::Rng;

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

/// Runs the workload on `img` through a recording engine; returns the record, what must
/// survive and every name the workload gave a file or directory.
fn workload(img: &Path, seed: u64) -> (Vec<IoOp>, Vec<Expect>, HashSet<String>) {
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
    let mut names: HashSet<String> =
        ["sub", "A directory with a long name", "moved at the end.bin"].into_iter().map(String::from).collect();
    for round in 0..6 {
        let mut pending = Vec::new();
        for i in 0..3 {
            let (dir, prefix) = dirs[rng.below(3) as usize];
            let name =
                if i == 2 { format!("k{round}.bin") } else { format!("Kept file {round}-{i} of the workload.bin") };
            let n = rng.below(150_000) as usize;
            let data = rng.bytes(n);
            let ino = vol.create(dir, &name, false).unwrap();
            names.insert(name.clone());
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
        names.extend([name.clone(), renamed.clone()]);
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
        names.insert(tmpdir);
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
    // A case-only rename (the new entry gets a short name of its own: two entries with one
    // short name in the window would make fsck.fat auto-rename one).
    let recased = &mut expect[5];
    recased.until = len(&log);
    let (dir, name) = split(&recased.path, &dirs);
    let upper = name.to_uppercase();
    recased.renamed_to = Some(format!("{}{upper}", &recased.path[..recased.path.len() - name.len()]));
    assert_eq!(name, "k1.bin");
    vol.rename(dir, name, dir, &upper, false).unwrap();
    names.insert(upper);
    vol.unmount().unwrap();
    drop(vol);
    let ops = std::mem::take(&mut *log.lock().unwrap());
    (ops, expect, names)
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
    /// Up to three `fsck.fat -a`, after which `fsck.fat -n` must find nothing: a cut inside
    /// a directory's rename leaves two entries for the directory; the first pass truncates
    /// one of them to nothing, the second removes its short entry ("Start does point to
    /// root directory") and the third its long name ("Orphaned long file name part").
    ThreePasses,
    /// Up to this many `fsck.fat -a` passes; only the synced files are checked.
    Passes(usize),
}

/// Replays `ops` (the last one torn after `torn` bytes) onto a copy of `start` as
/// `work/cut.img` and repairs it as `mode` says. Returns what the repair said.
fn repair_cut(work: &Path, start: &Path, ops: &[IoOp], torn: Option<usize>, mode: Repair) -> Result<String, String> {
    repair(&replay_cut(work, start, ops, torn), mode)
}

/// A new image made by mkfs.fat with `args`, `kib` KiB, as `work/start.img`, and a volume
/// over a copy of it (`work/end.img`) that records its writes.
fn recorded_volume(work: &Path, args: &[&str], kib: u32) -> (std::path::PathBuf, Volume, io::WriteLog) {
    let start = work.join("start.img");
    let size = kib.to_string();
    let mut all = args.to_vec();
    all.extend(["-C", start.to_str().unwrap(), &size]);
    let out = tool("mkfs.fat", &all);
    assert!(out.status.success(), "mkfs.fat {all:?}: {}", text(&out));
    let end = work.join("end.img");
    std::fs::copy(&start, &end).unwrap();
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&end).unwrap();
    let (disk, log) = Disk::recording(file);
    (start, Volume::from_disk(disk, OpenOptions::default()).unwrap(), log)
}

/// Replays `ops` (the last one torn after `torn` bytes) onto a copy of `start` as
/// `work/cut.img`.
fn replay_cut(work: &Path, start: &Path, ops: &[IoOp], torn: Option<usize>) -> std::path::PathBuf {
    let img = work.join("cut.img");
    std::fs::copy(start, &img).unwrap();
    io::replay(&File::options().write(true).open(&img).unwrap(), ops, torn).unwrap();
    img
}

/// Whether `name` is one of `known` or the short name one of them got (`KEPTFI~2.BIN`, or the
/// hashed `KE1A2B~1.BIN`): a power cut can keep a later rewrite of a short entry (a new
/// size) but lose the write of its long-name entries.
fn known_or_alias(name: &str, known: &HashSet<String>) -> bool {
    if known.contains(name) {
        return true;
    }
    let split = |n: &str| -> (String, String) {
        let (b, e) = n.rsplit_once('.').unwrap_or((n, ""));
        (b.to_uppercase().replace([' ', '.'], ""), e.to_uppercase().chars().take(3).collect())
    };
    let (base, ext) = split(name);
    let Some((stem, tail)) = base.split_once('~') else { return false };
    if tail.is_empty() || !tail.chars().all(|c| c.is_ascii_digit()) {
        return false;
    }
    let hashed = stem.len() == 6 && stem[2..].chars().all(|c| c.is_ascii_hexdigit());
    known
        .iter()
        .map(|k| split(k))
        .any(|(kb, ke)| ke == ext && (kb.starts_with(stem) || (hashed && kb.starts_with(&stem[..2]))))
}

/// Names in the directories of cut image `img`, before any repair, that the workload never
/// gave (`known`, or their short names): entries read from a directory cluster of old
/// bytes. Directories the engine cannot read (a chain cut short) are fsck.fat's to repair
/// and not walked.
fn stray_names(img: &Path, known: &HashSet<String>) -> Vec<String> {
    let vol =
        Volume::open(img, OpenOptions { read_only: true, ..OpenOptions::default() }).expect("the cut image mounts");
    let mut stray = Vec::new();
    let mut todo = vec![(ROOT, String::from("/"))];
    while let Some((dir, path)) = todo.pop() {
        let Ok(listed) = vol.list(dir, None, usize::MAX) else { continue };
        for l in listed {
            if !known_or_alias(&l.name, known) {
                stray.push(format!("{path}{:?}", l.name));
            } else if l.is_dir {
                todo.push((l.ino, format!("{path}{}/", l.name)));
            }
        }
    }
    stray
}

/// Whether a `fsck.fat -n` report names a long-name fragment: it exits 0 over those that
/// `fsck.fat -a` leaves ("Long filename fragment ... found outside a LFN sequence", "Not
/// auto-correcting this"), so the exit status alone does not tell.
fn names_a_long_name_fragment(report: &str) -> bool {
    report.lines().any(|l| l.contains("ong file") || l.contains("Not auto-correcting"))
}

/// Repairs cut image `img` as `mode` says. Returns what the repair said.
fn repair(img: &Path, mode: Repair) -> Result<String, String> {
    let i = img.to_str().unwrap();
    let repair = tool("fsck.fat", &["-a", "-w", i]);
    if !matches!(repair.status.code(), Some(0 | 1)) {
        return Err(format!("fsck.fat -a failed ({:?}):\n{}", repair.status, text(&repair)));
    }
    let check = tool("fsck.fat", &["-n", i]);
    if matches!(mode, Repair::OnePass) && names_a_long_name_fragment(&text(&check)) {
        return Err(format!(
            "fsck.fat -n after the repair still finds a long-name fragment:\n{}\nthe repair said:\n{}",
            text(&check),
            text(&repair)
        ));
    }
    if !check.status.success() {
        match mode {
            Repair::OnePass => {
                return Err(format!(
                    "fsck.fat -n after the repair still finds problems:\n{}\nthe repair said:\n{}",
                    text(&check),
                    text(&repair)
                ));
            }
            Repair::ThreePasses => {
                let mut said = text(&repair);
                for _ in 1..3 {
                    said += &text(&tool("fsck.fat", &["-a", "-w", i]));
                    let check = tool("fsck.fat", &["-n", i]);
                    if check.status.success() {
                        return Ok(said);
                    }
                }
                let check = tool("fsck.fat", &["-n", i]);
                return Err(format!(
                    "fsck.fat -n after three repairs still finds problems:\n{}\nthe repairs said:\n{said}",
                    text(&check)
                ));
            }
            // What fsck.fat -a leaves for a second pass (a directory it truncated to
            // nothing), or will not drop in auto mode (a new directory whose cluster never
            // reached the disk): more passes, and the synced files must be intact anyway.
            Repair::Passes(n) => {
                let mut said = text(&repair);
                for _ in 1..n {
                    said += &text(&tool("fsck.fat", &["-a", "-w", i]));
                }
                return Ok(said);
            }
        }
    }
    Ok(text(&repair))
}

/// Replays `ops` (the last one torn after `torn` bytes) onto a copy of `start`, checks that
/// every directory holds only names the workload gave (`known`: none read from a cluster of
/// old bytes), repairs it and checks the files due at record position `cut`. Returns what
/// went wrong.
#[allow(clippy::too_many_arguments)]
fn check_cut(
    work: &Path,
    start: &Path,
    ops: &[IoOp],
    cut: usize,
    torn: Option<usize>,
    expect: &[Expect],
    known: &HashSet<String>,
    mode: Repair,
) -> Result<(), String> {
    let img = replay_cut(work, start, ops, torn);
    let stray = stray_names(&img, known);
    if !stray.is_empty() {
        return Err(format!("directories hold entries the workload never made (garbage): {stray:?}"));
    }
    let repair = repair(&img, mode)?;
    let i = img.to_str().unwrap();
    let due: Vec<&Expect> =
        expect.iter().filter(|e| e.from <= cut && (cut <= e.until || e.renamed_to.is_some())).collect();
    let mut vol = Volume::open(&img, OpenOptions { read_only: true, ..OpenOptions::default() })
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
            return Err(format!("{}: lost or damaged: {why}\nthe repair said:\n{repair}", e.path));
        }
    }
    Ok(())
}

/// `since` (writes after the last sync) without the writes of zeroes of a sector or more and
/// every write since that overlaps one: what a power cut leaves when the kernel wrote back
/// every other page. None when nothing was zeroed.
fn lose_zeroed_pages(since: &[IoOp]) -> Option<Vec<IoOp>> {
    let mut lost: Vec<(u64, u64)> = Vec::new();
    let mut kept = Vec::new();
    for op in since {
        if let IoOp::Write { offset, data } = op {
            let end = offset + data.len() as u64;
            if data.len() >= 512 && data.iter().all(|&b| b == 0) {
                lost.push((*offset, end));
                continue;
            }
            if lost.iter().any(|&(a, b)| *offset < b && a < end) {
                continue;
            }
        }
        kept.push(op.clone());
    }
    (!lost.is_empty()).then_some(kept)
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
    let seed = env_number("PLUGFS_FAT_CRASH_SEED", 7);
    crash_cuts_of(mkfs_args, kib, seed, env_number("PLUGFS_FAT_CRASH_CUTS", 30));
}

fn crash_cuts_of(mkfs_args: &[&str], kib: u64, seed: u64, count: u64) {
    let work = tempfile::tempdir().unwrap();
    // Free clusters hold old bytes, so a directory cluster named before its zeroes are
    // durable shows as garbage entries (`stray_names`).
    let start = make_used_image(work.path(), mkfs_args, kib, seed);

    let end = work.path().join("end.img");
    std::fs::copy(&start, &end).unwrap();
    let (ops, expect, known) = workload(&end, seed);
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
            if let Err(e) = check_cut(work.path(), &start, &ops[..n], n, torn, &expect, &known, Repair::OnePass) {
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
            if let Err(e) = check_cut(work.path(), &start, &subset, cut, None, &expect, &known, Repair::Passes(3)) {
                failures.push(format!(
                    "cut after {cut} of {} writes, {} of the {} writes since the last sync reordered in: {e}",
                    ops.len(),
                    subset.len() - synced,
                    cut - synced
                ));
            }
            // The power cut that finds what a random subset rarely does: every page since
            // the last sync written back but those that were zeroed (a directory's new
            // clusters, a file's gap) and whatever was written over them since. A directory
            // linked to a cluster whose zeroes are not durable shows its old bytes.
            if let Some(lost) = lose_zeroed_pages(&ops[synced..cut]) {
                let mut subset = ops[..synced].to_vec();
                subset.extend(lost);
                checked += 1;
                if let Err(e) = check_cut(work.path(), &start, &subset, cut, None, &expect, &known, Repair::Passes(3)) {
                    failures.push(format!(
                        "cut after {cut} of {} writes, the zeroed pages since the last sync lost: {e}",
                        ops.len()
                    ));
                }
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

/// Every cut of the FAT12 workload of seed 4, whose files grow past cluster 341: its FAT
/// entry straddles the first two sectors of the FAT. When the allocator still handed such
/// clusters out, a cut between the two sector writes of a FAT flush left that entry half
/// new, naming cluster 6 of a synced file, and `fsck.fat` freed it while trimming the
/// growing file: 3 of 883 cut images lost the synced file (`Fat::straddles`).
#[test]
fn every_cut_of_a_fat12_workload_crossing_a_straddling_fat_entry_keeps_synced_files() {
    crash_cuts_of(&["-F", "12", "-s", "8"], 8 * 1024, 4, 1_000_000);
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

/// A directory's growth barrier: its new clusters' zeroes are synced before any FAT write
/// that could link them, so no power cut can leave the directory naming a cluster of old
/// bytes (the power-cut variant above, losing the zeroed pages, finds that in a workload).
#[test]
fn a_directory_grows_only_by_clusters_whose_zeroes_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("fat32.img");
    let out = tool("mkfs.fat", &["-F", "32", "-s", "1", "-C", img.to_str().unwrap(), "40960"]);
    assert!(out.status.success(), "{}", text(&out));
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&img).unwrap();
    let (disk, log) = Disk::recording(file);
    let vol = Volume::from_disk(disk, OpenOptions::default()).unwrap();
    let (fat_start, fat_end) = (vol.bpb().fat_offset(0), vol.bpb().data_offset);
    let d = vol.create(ROOT, "d", true).unwrap();
    let before = log.lock().unwrap().len();
    // 512-byte clusters of 16 entries, 4 entries a name: the directory grows a few times.
    for i in 0..20 {
        vol.create(d, &format!("a long name number {i}.txt"), false).unwrap();
    }
    let ops: Vec<IoOp> = log.lock().unwrap()[before..].to_vec();
    let zeroed: Vec<usize> = (0..ops.len())
        .filter(|&i| matches!(&ops[i], IoOp::Write { data, .. } if data.len() == 512 && data.iter().all(|&b| b == 0)))
        .collect();
    assert!(zeroed.len() >= 3, "the directory grows: {} clusters zeroed", zeroed.len());
    for z in zeroed {
        let fat_write = (z + 1..ops.len())
            .find(|&i| matches!(&ops[i], IoOp::Write { offset, .. } if (fat_start..fat_end).contains(offset)))
            .expect("the growth is linked");
        assert!(ops[z..fat_write].contains(&IoOp::Sync), "no sync between zeroing a cluster and the next FAT write");
    }
}

// Several threads at once: per-file locks, one namespace lock, a short FAT lock
// (engine/volume.rs). One operation's FAT flush may carry another's allocation before that
// one's data is written; these cuts check that fsck.fat repairs every such state.

/// Threads writing their own files in the multi-threaded workload (one more changes names).
const WORKERS: usize = 3;
/// Operations (writes, truncates) per worker, each followed by an fsync one time in three.
const WORKER_OPS: usize = 36;

/// One state of a file: what it holds once the operation that made it returned, and where
/// that operation's writes lie in the record (all of them at `start..end`).
struct Version {
    start: usize,
    end: usize,
    data: Arc<Vec<u8>>,
}

/// A file of one worker: its states in order (the first is the empty file its create made)
/// and its worker's fsyncs (record positions before the call and after it returned).
struct Tracked {
    path: String,
    versions: Vec<Version>,
    syncs: Vec<(usize, usize)>,
}

/// A worker: creates two files (one in the shared directory, one in the root) and changes
/// them with appends, overwrites (some running past the end), writes past the end (the gap
/// zero-filled), truncates down and up, calling fsync (`Volume::sync`, what the plugin's
/// fsync does) after one operation in three and at the end.
fn mt_worker(vol: &Volume, log: &io::WriteLog, shared: Ino, t: usize, seed: u64) -> Vec<Tracked> {
    let len = || log.lock().unwrap().len();
    let mut rng = Rng((seed ^ (t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1);
    let mut files: Vec<(Ino, Vec<u8>, Tracked)> = Vec::new();
    for (dir, prefix, name) in
        [(shared, "shared directory/", format!("Worker {t} writes this file.dat")), (ROOT, "", format!("w{t}.bin"))]
    {
        let start = len();
        let ino = vol.create(dir, &name, false).unwrap();
        let empty = Version { start, end: len(), data: Arc::new(Vec::new()) };
        files.push((
            ino,
            Vec::new(),
            Tracked { path: format!("{prefix}{name}"), versions: vec![empty], syncs: vec![] },
        ));
    }
    let mut syncs = Vec::new();
    let fsync = |syncs: &mut Vec<(usize, usize)>| {
        let start = len();
        vol.sync().unwrap();
        syncs.push((start, len()));
    };
    for _ in 0..WORKER_OPS {
        let f = rng.below(files.len() as u64) as usize;
        let (ino, model, tracked) = &mut files[f];
        let ino = *ino;
        let size = model.len();
        let n = if rng.below(3) == 0 { 1 + rng.below(600) } else { 1 + rng.below(30_000) } as usize;
        let kind = if size > 150_000 { 3 } else { rng.below(6) };
        let start = len();
        match kind {
            0 | 1 if size > 0 => {
                // An overwrite, part of it past the end when it runs that far.
                let at = rng.below(size as u64) as usize;
                let data = rng.bytes(n);
                vol.write(ino, at as u64, &data).unwrap();
                model.resize(model.len().max(at + n), 0);
                model[at..at + n].copy_from_slice(&data);
            }
            2 => {
                // Past the end: the gap reads as zeroes.
                let at = size + 1 + rng.below(8_000) as usize;
                let data = rng.bytes(n);
                vol.write(ino, at as u64, &data).unwrap();
                model.resize(at, 0);
                model.extend_from_slice(&data);
            }
            3 => {
                let to = rng.below(size as u64 + 1) as usize;
                vol.truncate(ino, to as u64).unwrap();
                model.truncate(to);
            }
            4 => {
                let to = size + n;
                vol.truncate(ino, to as u64).unwrap();
                model.resize(to, 0);
            }
            _ => {
                let data = rng.bytes(n);
                vol.append(ino, &data).unwrap();
                model.extend_from_slice(&data);
            }
        }
        tracked.versions.push(Version { start, end: len(), data: Arc::new(model.clone()) });
        if rng.below(3) == 0 {
            fsync(&mut syncs);
        }
    }
    fsync(&mut syncs);
    files
        .into_iter()
        .map(|(_, _, mut tracked)| {
            tracked.syncs = syncs.clone();
            tracked
        })
        .collect()
}

/// The namespace thread: in the shared directory, until the workers are done, creates and
/// writes small files, makes directories, moves files into them and back under new names,
/// renames a file over another, renames directories, unlinks files and removes directories.
/// Returns the number of operations and where each directory rename lies in the record.
fn mt_namespace(
    vol: &Volume,
    log: &io::WriteLog,
    shared: Ino,
    seed: u64,
    done: &AtomicBool,
) -> (usize, Vec<(usize, usize)>) {
    let len = || log.lock().unwrap().len();
    let mut dir_renames = Vec::new();
    let mut rng = Rng(seed.wrapping_mul(0xD134_2543_DE82_EF95) | 1);
    let mut files: Vec<(Ino, String)> = Vec::new();
    let mut dirs: Vec<(Ino, String)> = Vec::new();
    let mut i = 0;
    while !done.load(Ordering::Acquire) && i < 2_000 {
        i += 1;
        let kind = rng.below(9);
        match kind {
            2 if dirs.len() < 4 => {
                let name = format!("namespace directory {i}");
                let ino = vol.create(shared, &name, true).unwrap();
                dirs.push((ino, name));
            }
            3 | 4 if !files.is_empty() => {
                // A move: into a directory, or back to the shared one, under a new name.
                let (dir, name) = files.remove(rng.below(files.len() as u64) as usize);
                let to = match rng.below(dirs.len() as u64 + 1) as usize {
                    0 => shared,
                    k => dirs[k - 1].0,
                };
                let new = format!("moved {i}.txt");
                assert_eq!(vol.rename(dir, &name, to, &new, false).unwrap(), None);
                files.push((to, new));
            }
            5 if files.len() >= 2 => {
                // Over another file, which goes.
                let (dir, name) = files.remove(rng.below(files.len() as u64) as usize);
                let (to, over) = files[rng.below(files.len() as u64) as usize].clone();
                let gone = vol.rename(dir, &name, to, &over, false).unwrap().expect("a file replaced");
                vol.evict(gone).unwrap();
            }
            6 if !files.is_empty() => {
                let (dir, name) = files.remove(rng.below(files.len() as u64) as usize);
                let gone = vol.unlink(dir, &name).unwrap();
                vol.evict(gone).unwrap();
            }
            7 if !dirs.is_empty() => {
                // Empties a directory and removes it.
                let (dir, name) = dirs.remove(rng.below(dirs.len() as u64) as usize);
                for (d, n) in files.extract_if(.., |(d, _)| *d == dir) {
                    let gone = vol.unlink(d, &n).unwrap();
                    vol.evict(gone).unwrap();
                }
                vol.rmdir(shared, &name).unwrap();
            }
            8 if !dirs.is_empty() => {
                let k = rng.below(dirs.len() as u64) as usize;
                let new = format!("renamed directory {i}");
                let start = len();
                vol.rename(shared, &dirs[k].1, shared, &new, false).unwrap();
                dir_renames.push((start, len()));
                dirs[k].1 = new;
            }
            _ if files.len() < 24 => {
                let name = format!("namespace file {i} with a long name.tmp");
                let ino = vol.create(shared, &name, false).unwrap();
                let n = rng.below(6_000) as usize;
                vol.write(ino, 0, &rng.bytes(n)).unwrap();
                files.push((shared, name));
            }
            _ => {
                let (dir, name) = files.remove(0);
                let gone = vol.unlink(dir, &name).unwrap();
                vol.evict(gone).unwrap();
            }
        }
    }
    (i, dir_renames)
}

/// Runs the workers and the namespace thread at once on `img` through a recording engine.
/// Returns the record, the workers' files, how many worker operations overlapped another
/// worker's in the record, the namespace thread's operation count and where its directory
/// renames lie in the record.
#[allow(clippy::type_complexity)]
fn mt_workload(img: &Path, seed: u64) -> (Vec<IoOp>, Vec<Tracked>, usize, usize, Vec<(usize, usize)>) {
    let file = std::fs::OpenOptions::new().read(true).write(true).open(img).unwrap();
    let (disk, log) = Disk::recording(file);
    let vol = Volume::from_disk(disk, OpenOptions::default()).unwrap();
    let shared = vol.create(ROOT, "shared directory", true).unwrap();
    let done = AtomicBool::new(false);
    let go = Barrier::new(WORKERS + 1);
    let (tracked, (ns_ops, dir_renames)) = std::thread::scope(|s| {
        let (vol, log, go, done) = (&vol, &log, &go, &done);
        let workers: Vec<_> = (0..WORKERS)
            .map(|t| {
                s.spawn(move || {
                    go.wait();
                    mt_worker(vol, log, shared, t, seed)
                })
            })
            .collect();
        let namespace = s.spawn(move || {
            go.wait();
            mt_namespace(vol, log, shared, seed, done)
        });
        let tracked: Vec<Tracked> = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
        done.store(true, Ordering::Release);
        (tracked, namespace.join().unwrap())
    });
    vol.unmount().unwrap();
    drop(vol);
    let ops = std::mem::take(&mut *log.lock().unwrap());
    // Worker operations whose writes may interleave with another worker's (their spans in
    // the record overlap): the concurrency the cuts are about. Each worker has two files,
    // in order, so file f is worker f / 2's.
    let spans: Vec<(usize, usize, usize)> =
        tracked.iter().enumerate().flat_map(|(f, t)| t.versions.iter().map(move |v| (f / 2, v.start, v.end))).collect();
    let overlapping = spans.iter().filter(|a| spans.iter().any(|b| a.0 != b.0 && a.1 < b.2 && b.1 < a.2)).count();
    (ops, tracked, overlapping, ns_ops, dir_renames)
}

/// What a file may hold after a cut: exactly `base`, or, with an operation in flight at the
/// cut, exactly what that operation left (`next`), or `base`'s size with each byte from
/// `base` or `next` (an overwrite in place cut between or inside its data writes).
struct Allowed {
    path: String,
    base: Arc<Vec<u8>>,
    next: Option<Arc<Vec<u8>>>,
}

impl Allowed {
    fn admits(&self, got: &[u8]) -> bool {
        let (base, next) = (&self.base[..], self.next.as_deref().map(|n| &n[..]));
        got == base
            || next.is_some_and(|next| {
                got == next
                    || (got.len() == base.len()
                        && got.iter().enumerate().all(|(i, &b)| b == base[i] || next.get(i) == Some(&b)))
            })
    }
}

/// After a crash of plugfs (the kernel keeping every write it was given) cutting the record
/// after `n` writes, the last torn when `torn`: every operation that returned is on disk,
/// fsynced or not, so every worker file whose create returned must hold the state its last
/// returned operation left, or a state its operation in flight may leave.
fn allowed_after_crash(files: &[Tracked], n: usize, torn: bool) -> Vec<Allowed> {
    // An operation whose `end` is at most this wrote all its bytes.
    let done = if torn { n - 1 } else { n };
    files
        .iter()
        .filter(|f| f.versions[0].end <= done)
        .map(|f| {
            let last = f.versions.iter().rposition(|v| v.end <= done).expect("the create returned");
            // The worker runs one operation at a time: at most the next one is in flight.
            let next = f.versions.get(last + 1).filter(|v| v.start < n).map(|v| v.data.clone());
            Allowed { path: f.path.clone(), base: f.versions[last].data.clone(), next }
        })
        .collect()
}

/// After a power cut at record position `cut` (any subset of the writes since the last
/// sync on disk): every worker file whose worker's fsync returned before the cut and that
/// its worker has not changed since must hold exactly what it held at that fsync.
fn allowed_after_power_cut(files: &[Tracked], cut: usize) -> Vec<Allowed> {
    files
        .iter()
        .filter_map(|f| {
            let &(sync_start, _) = f.syncs.iter().rev().find(|s| s.1 <= cut)?;
            // The state its fsync made durable: every operation before the call returned.
            let at = f.versions.iter().rposition(|v| v.end <= sync_start)?;
            let untouched = f.versions.get(at + 1).is_none_or(|v| v.start >= cut);
            untouched.then(|| Allowed { path: f.path.clone(), base: f.versions[at].data.clone(), next: None })
        })
        .collect()
}

/// Replays `ops` onto a copy of `start`, repairs it and reads every file in `due` with the
/// engine and with mcopy. Returns what went wrong.
fn mt_check_cut(
    work: &Path,
    start: &Path,
    ops: &[IoOp],
    torn: Option<usize>,
    due: &[Allowed],
    mode: Repair,
) -> Result<(), String> {
    let repair = repair_cut(work, start, ops, torn, mode)?;
    let img = work.join("cut.img");
    let i = img.to_str().unwrap();
    let mut vol = Volume::open(&img, OpenOptions { read_only: true, ..OpenOptions::default() })
        .map_err(|e| format!("the engine cannot mount the repaired image: {e}"))?;
    // The whole tree out with one mcopy (the namespace thread's leftovers included).
    let out = work.join("out");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir(&out).unwrap();
    tool("mcopy", &["-s", "-n", "-i", i, "::/*", out.to_str().unwrap()]);
    let mut wrong = Vec::new();
    for a in due {
        let what = |got: &[u8]| {
            let at = got.iter().zip(a.base.iter()).position(|(x, y)| x != y).unwrap_or(got.len().min(a.base.len()));
            let next = a.next.as_ref().map_or("no operation in flight".into(), |n| format!("or {} bytes", n.len()));
            format!("{} bytes, {} expected ({next}); first difference from them at {at}", got.len(), a.base.len())
        };
        match engine_read(&mut vol, &a.path) {
            Ok(got) if a.admits(&got) => {}
            Ok(got) => wrong.push(format!("{}: the engine reads {}", a.path, what(&got))),
            Err(m) => wrong.push(format!("{}: the engine cannot read it: {m}", a.path)),
        }
        let copied = out.join(&a.path);
        if !copied.exists() {
            // The copy of the whole tree may stop early at garbage a power cut left elsewhere.
            std::fs::create_dir_all(copied.parent().unwrap()).unwrap();
            tool("mcopy", &["-n", "-i", i, &format!("::/{}", a.path), copied.to_str().unwrap()]);
        }
        match std::fs::read(&copied) {
            Ok(got) if a.admits(&got) => {}
            Ok(got) => wrong.push(format!("{}: mcopy reads {}", a.path, what(&got))),
            Err(e) => wrong.push(format!("{}: mcopy did not copy it: {e}", a.path)),
        }
    }
    if wrong.is_empty() {
        return Ok(());
    }
    if let Ok(keep) = std::env::var("PLUGFS_FAT_CRASH_KEEP") {
        // For a look with mtools: the cut image, its files as they should read, the record.
        static KEPT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = Path::new(&keep).join(format!("{}-{}", std::process::id(), KEPT.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(&img, dir.join("cut.img")).unwrap();
        std::fs::copy(start, dir.join("start.img")).unwrap();
        for (k, a) in due.iter().enumerate() {
            std::fs::write(dir.join(format!("due{k}.bin")), &a.base[..]).unwrap();
        }
        std::fs::write(dir.join("ops.txt"), format!("{ops:?}")).unwrap();
        wrong.push(format!("kept in {}", dir.display()));
    }
    Err(format!("{}\nthe repair said:\n{repair}", wrong.join("\n")))
}

fn mt_crash_cuts(mkfs_args: &[&str], kib: u64) {
    let started = std::time::Instant::now();
    let work = tempfile::tempdir().unwrap();
    let seed = env_number("PLUGFS_FAT_CRASH_SEED", 7);
    let count = env_number("PLUGFS_FAT_CRASH_MT_CUTS", 120);
    let start = make_used_image(work.path(), mkfs_args, kib, seed);

    let end = work.path().join("end.img");
    std::fs::copy(&start, &end).unwrap();
    let (ops, files, overlapping, ns_ops, dir_renames) = mt_workload(&end, seed);
    // The record in its global order is the whole story, whatever the threads interleaved.
    let replayed = work.path().join("replayed.img");
    std::fs::copy(&start, &replayed).unwrap();
    io::replay(&File::options().write(true).open(&replayed).unwrap(), &ops, None).unwrap();
    assert!(std::fs::read(&replayed).unwrap() == std::fs::read(&end).unwrap(), "the write record misses writes");
    let end_check = tool("fsck.fat", &["-n", end.to_str().unwrap()]);
    assert!(end_check.status.success(), "the finished workload does not pass fsck.fat -n: {}", text(&end_check));
    let last = allowed_after_crash(&files, ops.len(), false);
    assert_eq!(last.len(), files.len());
    mt_check_cut(work.path(), &start, &ops, None, &last, Repair::OnePass).expect("the finished workload");
    assert!(overlapping > 0, "no two workers' operations overlapped: the threads never ran at once");

    // Cut points: half spread evenly, a quarter at random, a quarter right after a sync.
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let total = ops.len();
    let syncs: Vec<usize> = (0..total).filter(|&i| ops[i] == IoOp::Sync).map(|i| i + 1).collect();
    let mut cuts = std::collections::BTreeSet::new();
    if count as usize > total {
        cuts.extend(0..=total);
    }
    for k in 0..count / 2 {
        cuts.insert((k as usize * total) / (count as usize / 2).max(1));
    }
    for _ in 0..count / 4 {
        cuts.insert(syncs[rng.below(syncs.len() as u64) as usize]);
    }
    while (cuts.len() as u64) < count.min(total as u64 + 1) {
        cuts.insert(rng.below(total as u64 + 1) as usize);
    }
    let mut failures = Vec::new();
    let mut checked = 0;
    for &cut in &cuts {
        let mut variants = vec![(cut, None)];
        // The write after the cut, torn at a sector boundary inside it: file data, new
        // directory clusters, and a name's entries with the end marker after them (a
        // name's entries lie in one sector, so the tear falls before or after them).
        if let Some(IoOp::Write { offset, data }) =
            ops.get(cut).filter(|op| matches!(op, IoOp::Write { data, .. } if data.len() > 32))
        {
            let mid = ((offset + data.len() as u64 / 2) & !511).saturating_sub(*offset) as usize;
            if mid > 0 && mid < data.len() {
                variants.push((cut + 1, Some(mid)));
            }
        }
        for (n, torn) in variants {
            checked += 1;
            let due = allowed_after_crash(&files, n, torn.is_some());
            let in_dir_rename = dir_renames.iter().any(|&(s, e)| s < n && n < e);
            let mode = if in_dir_rename { Repair::ThreePasses } else { Repair::OnePass };
            if let Err(e) = mt_check_cut(work.path(), &start, &ops[..n], torn, &due, mode) {
                failures.push(format!("cut after {n} of {total} writes (torn: {torn:?}): {e}"));
            }
        }
        // A power cut: the writes before the last sync, and any subset of those after it.
        let synced = ops[..cut].iter().rposition(|op| *op == IoOp::Sync).map_or(0, |i| i + 1);
        if cut > synced + 1 {
            let mut subset = ops[..synced].to_vec();
            subset.extend(ops[synced..cut].iter().filter(|_| rng.below(2) == 0).cloned());
            checked += 1;
            let due = allowed_after_power_cut(&files, cut);
            if let Err(e) = mt_check_cut(work.path(), &start, &subset, None, &due, Repair::Passes(3)) {
                failures.push(format!(
                    "power cut after {cut} of {total} writes, {} of the {} since the last sync on disk: {e}",
                    subset.len() - synced,
                    cut - synced
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "seed {seed}: {} of {checked} cut images failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    eprintln!(
        "{mkfs_args:?}, {WORKERS} writers and a namespace thread ({ns_ops} operations), seed {seed}: {checked} cut \
         images of a {total}-write record ({overlapping} worker operations overlapping another's) repaired with \
         every file as allowed, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn every_cut_of_a_concurrent_fat16_workload_is_repaired_by_fsck_with_synced_files_intact() {
    mt_crash_cuts(&["-F", "16", "-s", "4"], 16 * 1024);
}

#[test]
fn every_cut_of_a_concurrent_fat32_workload_is_repaired_by_fsck_with_synced_files_intact() {
    mt_crash_cuts(&["-F", "32", "-s", "1", "-S", "512"], 40 * 1024);
}

/// An image whose free clusters hold old bytes, as on a used disk: pseudo-random bytes
/// written over the whole file, then mkfs.fat (which writes only its reserved area, FATs
/// and root directory). A cluster handed out before the engine writes it holds garbage.
fn make_used_image(work: &Path, mkfs_args: &[&str], kib: u64, seed: u64) -> std::path::PathBuf {
    let start = work.join("start.img");
    let mut rng = Rng(seed | 1);
    std::fs::write(&start, rng.bytes(kib as usize * 1024)).unwrap();
    let mut args: Vec<&str> = mkfs_args.to_vec();
    args.push(start.to_str().unwrap());
    let out = tool("mkfs.fat", &args);
    assert!(out.status.success(), "mkfs.fat {args:?}: {}", text(&out));
    start
}

/// A directory grows by a cluster only once that cluster is zeroed on disk, whatever another
/// thread flushes meanwhile: with the growth linked into the directory's chain in memory
/// before the zeroes are written, a FAT flush by another thread's fsync (holding no
/// namespace lock) in between makes the directory's chain name a cluster of old bytes on
/// disk, durably: after a crash there the directory holds garbage entries, which
/// `fsck.fat -a` renames, truncates and cross-links with real files.
#[test]
fn a_directory_never_grows_by_a_cluster_of_old_bytes_when_another_thread_flushes_the_fat() {
    let work = tempfile::tempdir().unwrap();
    // 512-byte clusters: a directory grows every 16 entries.
    let start = make_used_image(work.path(), &["-F", "32", "-s", "1", "-S", "512"], 40 * 1024, 3);
    let img = work.path().join("run.img");
    std::fs::copy(&start, &img).unwrap();
    let cluster = 512usize;
    // Stops the first write of one zeroed cluster (a directory's growth) until released.
    let armed = Arc::new(AtomicBool::new(false));
    let (entered_tx, entered) = std::sync::mpsc::channel::<()>();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let gate = std::sync::Mutex::new((entered_tx, release_rx));
    let hook: io::WriteHook = {
        let armed = armed.clone();
        Arc::new(move |_offset, data: &[u8]| {
            if data.len() == cluster && data.iter().all(|&b| b == 0) && armed.swap(false, Ordering::AcqRel) {
                let gate = gate.lock().unwrap();
                gate.0.send(()).unwrap();
                gate.1.recv().unwrap();
            }
        })
    };
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&img).unwrap();
    let (disk, log) = Disk::recording(file);
    let vol = Volume::from_disk(disk.with_write_hook(hook), OpenOptions::default()).unwrap();
    let dir = vol.create(ROOT, "grows", true).unwrap();
    // A synced file elsewhere, whose clusters garbage entries could claim.
    let kept = vol.create(ROOT, "kept.bin", false).unwrap();
    let data = Rng(11).bytes(200_000);
    vol.write(kept, 0, &data).unwrap();
    vol.sync().unwrap();
    // Fill the directory's first cluster (".", ".." and 14 short names), then arm the gate:
    // the next create grows it.
    for i in 0..14 {
        vol.create(dir, &format!("F{i}.TXT"), false).unwrap();
    }
    armed.store(true, Ordering::Release);
    let cut = std::thread::scope(|s| {
        let grower = s.spawn(|| vol.create(dir, "F14.TXT", false).unwrap());
        entered.recv().unwrap();
        // The growth is allocated and its zeroes are held back: another thread's fsync now.
        vol.sync().unwrap();
        let cut = log.lock().unwrap().len();
        release.send(()).unwrap();
        grower.join().unwrap();
        cut
    });
    vol.unmount().unwrap();
    drop(vol);
    let ops = log.lock().unwrap()[..cut].to_vec();
    // Everything up to the other thread's fsync is durable: a power cut or crash there.
    let repair = repair_cut(work.path(), &start, &ops, None, Repair::OnePass)
        .unwrap_or_else(|e| panic!("a crash right after another thread's fsync: {e}"));
    let mut vol =
        Volume::open(&work.path().join("cut.img"), OpenOptions { read_only: true, ..OpenOptions::default() }).unwrap();
    assert!(engine_read(&mut vol, "kept.bin").unwrap() == data, "kept.bin damaged; the repair said:\n{repair}");
    let dir = vol.lookup(ROOT, "grows").unwrap();
    let names: Vec<String> = vol.list(dir, None, 100).unwrap().into_iter().map(|l| l.name).collect();
    let expected: Vec<String> = (0..14).map(|i| format!("F{i}.TXT")).collect();
    assert_eq!(names, expected, "the directory after the repair; the repair said:\n{repair}");
}

/// rmdir's barrier: the entry's deletion is synced before the directory's clusters are
/// freed (and can be taken by another file), so no power cut can leave the entry naming
/// a cluster another file has since written.
#[test]
fn a_removed_directory_entry_is_durably_deleted_before_its_clusters_are_freed() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("fat16.img");
    let out = tool("mkfs.fat", &["-F", "16", "-C", img.to_str().unwrap(), "65536"]);
    assert!(out.status.success(), "{}", text(&out));
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&img).unwrap();
    let (disk, log) = Disk::recording(file);
    let vol = Volume::from_disk(disk, OpenOptions::default()).unwrap();
    vol.create(ROOT, "GONEDIR", true).unwrap();
    let fats = vol.bpb().fat_offset(0)..vol.bpb().fat_offset(vol.bpb().num_fats);
    let before = log.lock().unwrap().len();
    vol.rmdir(ROOT, "GONEDIR").unwrap();
    let ops: Vec<IoOp> = log.lock().unwrap()[before..].to_vec();
    let deleted = ops
        .iter()
        .position(|op| matches!(op, IoOp::Write { data, .. } if data.starts_with(b"\xe5ONEDIR    ")))
        .expect("the entry is deleted");
    let freed = ops
        .iter()
        .position(|op| matches!(op, IoOp::Write { offset, .. } if fats.contains(offset)))
        .expect("the FAT is written");
    assert!(deleted < freed, "the entry first: {ops:?}");
    assert!(ops[deleted..freed].contains(&IoOp::Sync), "no sync between the deletion and the free: {ops:?}");
}

/// A rename's new entry gets a short name of its own, even in a case-only rename: the old
/// entry keeps its short name until it goes, and two entries with one short name are a
/// state `fsck.fat -a` repairs by auto-renaming, which was seen to damage other files.
#[test]
fn a_rename_never_gives_the_new_entry_the_old_short_name() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("fat16.img");
    let out = tool("mkfs.fat", &["-F", "16", "-C", img.to_str().unwrap(), "65536"]);
    assert!(out.status.success(), "{}", text(&out));
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&img).unwrap();
    let (disk, log) = Disk::recording(file);
    let vol = Volume::from_disk(disk, OpenOptions::default()).unwrap();
    vol.create(ROOT, "k1.bin", false).unwrap();
    vol.create(ROOT, "renamed directory 1", true).unwrap();
    vol.create(ROOT, "target.txt", false).unwrap();
    vol.create(ROOT, "source.txt", false).unwrap();
    let before = log.lock().unwrap().len();
    vol.rename(ROOT, "k1.bin", ROOT, "K1.BIN", false).unwrap();
    vol.rename(ROOT, "renamed directory 1", ROOT, "renamed directory 2", false).unwrap();
    let replaced = vol.rename(ROOT, "source.txt", ROOT, "target.txt", false).unwrap();
    vol.evict(replaced.unwrap()).unwrap();
    let ops: Vec<IoOp> = log.lock().unwrap()[before..].to_vec();
    // Every 32-byte short entry written live (not deleted) by the renames.
    let shorts: Vec<&[u8]> = ops
        .iter()
        .filter_map(|op| match op {
            IoOp::Write { data, .. } => {
                Some(data.chunks(32).filter(|e| e.len() == 32 && e[11] != 0x0f && e[0] != 0xe5))
            }
            IoOp::Sync => None,
        })
        .flatten()
        .map(|e| &e[..11])
        .collect();
    for old in [&b"K1      BIN"[..], b"RENAME~1   ", b"TARGET  TXT"] {
        assert!(
            !shorts.contains(&old),
            "a rename wrote a live entry with the short name {:?}",
            String::from_utf8_lossy(old)
        );
    }
    assert_eq!(vol.lookup(ROOT, "K1.BIN").ok(), vol.lookup(ROOT, "k1.bin").ok());
}

/// Every write of directory entries torn at every sector boundary inside it (a power cut
/// tears a write at any sector; a process dying, at a page): one `fsck.fat -a` must repair
/// the image so that `fsck.fat -n` passes. A new name's entries (long-name entries and short
/// entry) are placed within one sector when they fit in one, so a tear never splits them
/// into an orphan long-name fragment (which `fsck.fat -a` does not remove); the slots
/// skipped before them are written as deleted entries, never left as end markers.
#[test]
fn a_long_name_torn_at_a_sector_boundary_leaves_nothing_fsck_cannot_repair() {
    for (mkfs_args, kib) in [(&["-F", "16", "-s", "8"][..], 16 * 1024), (&["-F", "32", "-s", "2"][..], 72 * 1024)] {
        let work = tempfile::tempdir().unwrap();
        let (start, vol, log) = recorded_volume(work.path(), mkfs_args, kib);
        // Where the FATs end: the root directory (FAT12/16) or the data area begins.
        let dirs_from = vol.bpb().root_dir_offset;
        let d = vol.create(ROOT, "a directory", true).unwrap();
        // A name reusing the deleted slots of another across a sector boundary, before a
        // live entry: slots 2..=9 hold short names, "first" (7 long-name entries and its
        // short entry) went to 10..=17 and was removed, "after.txt" sits at 18.
        let holes = vol.create(ROOT, "holes", true).unwrap();
        for i in 0..8 {
            vol.create(holes, &format!("s{i}.txt"), false).unwrap();
        }
        vol.create(holes, &format!("first {}", "n".repeat(80)), false).unwrap();
        vol.create(holes, "after.txt", false).unwrap();
        let gone = vol.unlink(holes, &format!("first {}", "n".repeat(80))).unwrap();
        vol.evict(gone).unwrap();
        vol.create(holes, &format!("second {}", "m".repeat(79)), false).unwrap();
        let mut rng = Rng(11);
        // Names of 1 to 9 long-name entries and short-only ones; some removed and renamed,
        // so later names reuse deleted slots (and those skipped before a name).
        let mut made = Vec::new();
        for i in 0..70 {
            let dir = if i % 3 == 0 { ROOT } else { d };
            let name = match rng.below(4) {
                0 => format!("f{i}.txt"),
                _ => format!("{i} {}.txt", "long name ".repeat(1 + rng.below(10) as usize)),
            };
            vol.create(dir, &name, false).unwrap();
            made.push((dir, name));
            if i % 5 == 4 {
                let (dir, name) = made.remove(rng.below(made.len() as u64) as usize);
                if rng.below(2) == 0 {
                    let gone = vol.unlink(dir, &name).unwrap();
                    vol.evict(gone).unwrap();
                } else {
                    let to = format!("renamed {i} {}", "x".repeat(rng.below(40) as usize));
                    vol.rename(dir, &name, d, &to, false).unwrap();
                    made.push((d, to));
                }
            }
        }
        vol.unmount().unwrap();
        drop(vol);
        let ops = std::mem::take(&mut *log.lock().unwrap());
        let mut failures = Vec::new();
        let mut torn_writes = 0;
        for (i, op) in ops.iter().enumerate() {
            // Writes of directory entries (the files stay empty), not zeroes; the FATs and
            // the boot sector are not torn here.
            let IoOp::Write { offset, data } = op else { continue };
            if *offset < dirs_from || data.iter().all(|&b| b == 0) || data.len() <= 32 {
                continue;
            }
            let first_boundary = (offset / 512 + 1) * 512;
            let mut at = first_boundary;
            if at >= offset + data.len() as u64 {
                continue;
            }
            torn_writes += 1;
            while at < offset + data.len() as u64 {
                let torn = (at - offset) as usize;
                // The sectors before the boundary reached the disk, or only those after it.
                let mut tail_only = ops[..i].to_vec();
                tail_only.push(IoOp::Write { offset: at, data: data[torn..].to_vec() });
                for (what, ops, cut) in [("head", &ops[..=i], Some(torn)), ("tail", &tail_only[..], None)] {
                    // One fsck.fat -a, then fsck.fat -n passes and names no long-name
                    // fragment (`repair`).
                    if let Err(e) = repair_cut(work.path(), &start, ops, cut, Repair::OnePass) {
                        failures.push(format!(
                            "write {i} ({} bytes at {offset}) torn at byte {torn}, only its {what} written: {e}",
                            data.len()
                        ));
                    }
                }
                at += 512;
            }
        }
        assert!(torn_writes > 0, "{mkfs_args:?}: no write of directory entries spans a sector boundary");
        assert!(
            failures.is_empty(),
            "{mkfs_args:?}: {} torn writes failed:\n{}",
            failures.len(),
            failures.join("\n\n")
        );
        eprintln!("{mkfs_args:?}: {torn_writes} writes of entries spanning sectors, torn at each boundary: repaired");
    }
}

/// A name too long for one sector (over 15 long-name entries with 512-byte sectors) cannot
/// be kept whole by the sector rule above, so it is written a sector at a time, in order,
/// with a barrier between: after a power cut at any point, either its first sectors are
/// there without the rest (a fragment followed by free entries, which one `fsck.fat -a`
/// removes) or all of it, never the end without the start.
#[test]
fn a_name_longer_than_a_sector_is_written_in_order_and_any_cut_is_repaired() {
    let work = tempfile::tempdir().unwrap();
    let (start, vol, log) = recorded_volume(work.path(), &["-F", "16", "-s", "4"], 16 * 1024);
    let dirs_from = vol.bpb().root_dir_offset;
    let d = vol.create(ROOT, "d", true).unwrap();
    for (i, len) in [200usize, 255, 230, 20, 250].into_iter().enumerate() {
        let name = format!("{i}{}", "long".repeat(64))[..len].to_string();
        vol.create(if i % 2 == 0 { d } else { ROOT }, &name, false).unwrap();
    }
    vol.unmount().unwrap();
    drop(vol);
    let ops = std::mem::take(&mut *log.lock().unwrap());
    // A sector whose first entry continues a long name (an LFN entry, attribute 0x0f,
    // without the "last part" flag 0x40 in its ordinal) may only be written after a barrier.
    let mut continuations = 0;
    let mut failures = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let IoOp::Write { offset, data } = op else { continue };
        if *offset < dirs_from || data.len() < 32 {
            continue;
        }
        if offset % 512 == 0 && data[11] == 0x0f && data[0] & 0x40 == 0 && data[0] != 0xe5 {
            continuations += 1;
            if !matches!(ops[i - 1], IoOp::Sync) {
                failures.push(format!("write {i} continues a long name with no barrier before it"));
            }
        }
        // A power cut right after this write: everything before it is kept.
        if let Err(e) = repair_cut(work.path(), &start, &ops[..=i], None, Repair::OnePass) {
            failures.push(format!("cut after write {i} ({} bytes at {offset}): {e}", data.len()));
        }
        // A write across sectors torn so only what follows a boundary landed.
        let mut at = (offset / 512 + 1) * 512;
        while at < offset + data.len() as u64 {
            let mut tail_only = ops[..i].to_vec();
            tail_only.push(IoOp::Write { offset: at, data: data[(at - offset) as usize..].to_vec() });
            if let Err(e) = repair_cut(work.path(), &start, &tail_only, None, Repair::OnePass) {
                failures
                    .push(format!("write {i} ({} bytes at {offset}) with only its part from {at}: {e}", data.len()));
            }
            at += 512;
        }
    }
    let long_entries = ops.iter().filter(|op| {
        matches!(op, IoOp::Write { offset, data } if *offset >= dirs_from
            && data.chunks(32).any(|e| e.len() == 32 && e[11] == 0x0f && e[0] & 0x40 == 0 && e[0] != 0xe5))
    });
    assert!(long_entries.count() >= 3, "no write holds the middle of a long name: the test lost its subject");
    assert!(continuations >= 4 || !failures.is_empty(), "the long names were neither split nor torn");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
