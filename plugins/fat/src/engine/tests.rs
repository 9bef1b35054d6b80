//! Engine tests on real images: made by `mkfs.fat`, filled by mtools, checked by
//! `fsck.fat -n` and read back by mtools.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::mkfs;
use super::*;
use crate::fuzzing::Rng;

/// Runs a dosfstools/mtools command; a missing tool fails with what to install.
pub(crate) fn run(tool: &str, args: &[&str]) -> std::process::Output {
    Command::new(tool).args(args).env("MTOOLS_SKIP_CHECK", "1").env("LC_ALL", "C.UTF-8").output().unwrap_or_else(|e| {
        panic!("cannot run {tool} ({e}): install dosfstools (mkfs.fat, fsck.fat) and mtools (mcopy, mdir)")
    })
}

fn run_ok(tool: &str, args: &[&str]) -> Vec<u8> {
    let out = run(tool, args);
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A fresh image made by mkfs.fat with `args` and `kib` KiB.
fn mkfs(dir: &Path, args: &[&str], kib: u64) -> PathBuf {
    let img = dir.join("fat.img");
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(["-C".to_string(), img.to_str().unwrap().to_string(), kib.to_string()]);
    let all: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
    run_ok("mkfs.fat", &all);
    img
}

fn fsck(img: &Path) {
    run_ok("fsck.fat", &["-n", img.to_str().unwrap()]);
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// The tree the read tests copy in with mtools: path -> contents (None: directory).
fn sample_tree() -> BTreeMap<String, Option<Vec<u8>>> {
    let mut t = BTreeMap::new();
    t.insert("readme.txt".into(), Some(b"hello from mtools\n".to_vec()));
    t.insert("UPPER.TXT".into(), Some(pattern(511, 1)));
    t.insert("MiXeD Case Name.Data".into(), Some(pattern(4096, 2)));
    t.insert("empty".into(), Some(Vec::new()));
    t.insert("Ünïcødé straße.txt".into(), Some(pattern(1000, 3)));
    t.insert("日本語のファイル名.bin".into(), Some(pattern(70_000, 4)));
    t.insert(
        "a name that is much longer than thirteen characters and spans several entries.dat".into(),
        Some(pattern(3, 5)),
    );
    t.insert("Sub Dir".into(), None);
    t.insert("Sub Dir/deeper".into(), None);
    t.insert("Sub Dir/deeper/big.bin".into(), Some(pattern(300_000, 6)));
    t.insert("Sub Dir/x".into(), Some(pattern(10, 7)));
    t
}

/// Fills `img` with `tree` using mmd and mcopy.
fn fill_with_mtools(img: &Path, tree: &BTreeMap<String, Option<Vec<u8>>>) {
    let src = tempfile::tempdir().unwrap();
    let i = img.to_str().unwrap();
    for (path, content) in tree {
        match content {
            None => {
                run_ok("mmd", &["-i", i, &format!("::/{path}")]);
            }
            Some(data) => {
                let f = src.path().join("f");
                std::fs::write(&f, data).unwrap();
                run_ok("mcopy", &["-i", i, f.to_str().unwrap(), &format!("::/{path}")]);
            }
        }
    }
}

fn read_all(vol: &mut Volume, ino: Ino) -> Vec<u8> {
    let size = vol.stat(ino).unwrap().size as usize;
    let mut buf = vec![0u8; size + 10];
    let mut got = 0;
    // Odd-sized reads at odd offsets, to cross cluster boundaries.
    while got < size {
        let n = vol.read(ino, got as u64, &mut buf[got..(got + 7777).min(size + 10)]).unwrap();
        assert!(n > 0);
        got += n;
    }
    buf.truncate(got);
    buf
}

/// Walks the volume: path -> contents (None: directory).
fn walk(vol: &mut Volume) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(ROOT, String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for e in vol.list(dir, None, usize::MAX).unwrap() {
            let path = if prefix.is_empty() { e.name.clone() } else { format!("{prefix}/{}", e.name) };
            if e.is_dir {
                out.insert(path.clone(), None);
                stack.push((e.ino, path));
            } else {
                out.insert(path, Some(read_all(vol, e.ino)));
            }
        }
    }
    out
}

fn check_reads_mtools_tree(mkfs_args: &[&str], kib: u64, want: FatType) {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), mkfs_args, kib);
    let tree = sample_tree();
    fill_with_mtools(&img, &tree);
    let mut vol = Volume::open(&img, OpenOptions { read_only: true, ..OpenOptions::default() }).unwrap();
    assert_eq!(vol.bpb().fat_type, want);
    let got = walk(&mut vol);
    assert_eq!(got.keys().collect::<Vec<_>>(), tree.keys().collect::<Vec<_>>());
    for (k, v) in &tree {
        assert!(got[k] == *v, "{k} differs");
    }
    // Lookups are case-insensitive and keep the stored case.
    let sub = vol.lookup(ROOT, "sub dir").unwrap();
    assert_eq!(vol.name(sub).unwrap(), "Sub Dir");
    let deeper = vol.lookup(sub, "DEEPER").unwrap();
    assert!(vol.lookup(deeper, "BIG.BIN").is_ok());
    assert!(matches!(vol.lookup(ROOT, "missing"), Err(Error::NotFound)));
}

#[test]
fn reads_a_fat12_floppy_filled_by_mtools() {
    check_reads_mtools_tree(&[], 1440, FatType::Fat12);
}

#[test]
fn reads_a_fat16_volume_filled_by_mtools() {
    check_reads_mtools_tree(&["-F", "16"], 64 * 1024, FatType::Fat16);
}

#[test]
fn reads_a_fat32_volume_filled_by_mtools() {
    check_reads_mtools_tree(&["-F", "32"], 512 * 1024, FatType::Fat32);
}

#[test]
fn reads_4096_byte_sector_volumes_filled_by_mtools() {
    check_reads_mtools_tree(&["-S", "4096", "-F", "16"], 64 * 1024, FatType::Fat16);
    check_reads_mtools_tree(&["-S", "4096", "-F", "32", "-s", "1"], 512 * 1024, FatType::Fat32);
}

#[test]
fn reads_with_small_and_large_clusters() {
    check_reads_mtools_tree(&["-F", "16", "-s", "64"], 512 * 1024, FatType::Fat16);
    check_reads_mtools_tree(&["-F", "12", "-s", "1"], 1024, FatType::Fat12);
}

/// mcopy's view of a file on the image.
fn mcopy_out(img: &Path, path: &str) -> Vec<u8> {
    run_ok("mcopy", &["-n", "-i", img.to_str().unwrap(), &format!("::/{path}"), "-"])
}

/// mdir's list of long names in a directory (bare format, `.`/`..` left out).
fn mdir_names(img: &Path, path: &str) -> Vec<String> {
    let out = run_ok("mdir", &["-b", "-i", img.to_str().unwrap(), &format!("::/{path}")]);
    let mut names: Vec<String> = String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| l.trim_end_matches('/').rsplit('/').next().map(str::to_string))
        .filter(|n| !n.is_empty() && n != "." && n != "..")
        .collect();
    names.sort();
    names
}

fn open_rw(img: &Path) -> Volume {
    Volume::open(img, OpenOptions::default()).unwrap()
}

fn check_engine_writes(mkfs_args: &[&str], kib: u64) {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), mkfs_args, kib);
    let mut want: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
    {
        let mut vol = open_rw(&img);
        let docs = vol.create(ROOT, "Documents and Settings", true).unwrap();
        want.insert("Documents and Settings".into(), None);
        // Two files written in turns, so their clusters interleave.
        let a = vol.create(docs, "first file.bin", false).unwrap();
        let b = vol.create(docs, "second.BIN", false).unwrap();
        let (da, db) = (pattern(40_000, 10), pattern(33_333, 11));
        for i in (0..40_000).step_by(5000) {
            vol.write(a, i as u64, &da[i..(i + 5000).min(40_000)]).unwrap();
            if i < 33_333 {
                vol.write(b, i as u64, &db[i..(i + 5000).min(33_333)]).unwrap();
            }
        }
        want.insert("Documents and Settings/first file.bin".into(), Some(da.clone()));
        want.insert("Documents and Settings/second.BIN".into(), Some(db.clone()));
        // Writing past the end fills with zeroes; truncate shrinks and extends.
        let c = vol.create(ROOT, "sparse.txt", false).unwrap();
        vol.write(c, 10_000, b"tail").unwrap();
        let mut dc = vec![0u8; 10_000];
        dc.extend_from_slice(b"tail");
        want.insert("sparse.txt".into(), Some(dc));
        let d = vol.create(ROOT, "shrink.dat", false).unwrap();
        vol.write(d, 0, &pattern(20_000, 12)).unwrap();
        vol.truncate(d, 700).unwrap();
        vol.truncate(d, 900).unwrap();
        let mut dd = pattern(20_000, 12)[..700].to_vec();
        dd.resize(900, 0);
        want.insert("shrink.dat".into(), Some(dd));
        let e = vol.create(ROOT, "zero.len", false).unwrap();
        vol.write(e, 0, b"gone").unwrap();
        vol.truncate(e, 0).unwrap();
        want.insert("zero.len".into(), Some(Vec::new()));
        // Short-name collisions: numeric tails, then the hashed form.
        for i in 0..8 {
            let n = format!("Long File Name {i}.txt");
            let f = vol.create(ROOT, &n, false).unwrap();
            vol.write(f, 0, n.as_bytes()).unwrap();
            want.insert(n.clone(), Some(n.into_bytes()));
        }
        // Names: lower case 8.3, non-ASCII, characters a short name cannot hold.
        for n in ["lower.txt", "Ünïcødé.txt", "a+b=c;d,e.g h", ".hidden"] {
            let f = vol.create(ROOT, n, false).unwrap();
            vol.write(f, 0, n.as_bytes()).unwrap();
            want.insert(n.to_string(), Some(n.as_bytes().to_vec()));
        }
        // Unlink, mkdir + rmdir.
        let g = vol.create(ROOT, "doomed", false).unwrap();
        vol.write(g, 0, &pattern(9000, 13)).unwrap();
        assert_eq!(vol.unlink(ROOT, "DOOMED").unwrap(), g);
        vol.evict(g).unwrap();
        let t = vol.create(ROOT, "temp dir", true).unwrap();
        assert!(matches!(vol.create(ROOT, "TEMP DIR", false), Err(Error::Exists)));
        let inner = vol.create(t, "inner", false).unwrap();
        assert!(matches!(vol.rmdir(ROOT, "temp dir"), Err(Error::NotEmpty)));
        vol.unlink(t, "inner").unwrap();
        vol.evict(inner).unwrap();
        vol.rmdir(ROOT, "temp dir").unwrap();
        // Renames: a file across directories, a directory across directories (its `..`
        // must follow), a case-only rename, a rename over an existing file.
        let moved = vol.create(ROOT, "Moved Dir", true).unwrap();
        let inside = vol.create(moved, "inside.txt", false).unwrap();
        vol.write(inside, 0, b"inside").unwrap();
        vol.rename(ROOT, "Moved Dir", docs, "Moved Dir Renamed", false).unwrap();
        want.insert("Documents and Settings/Moved Dir Renamed".into(), None);
        want.insert("Documents and Settings/Moved Dir Renamed/inside.txt".into(), Some(b"inside".to_vec()));
        vol.rename(docs, "second.bin", ROOT, "Second Moved.bin", false).unwrap();
        want.remove("Documents and Settings/second.BIN");
        want.insert("Second Moved.bin".into(), Some(db.clone()));
        vol.rename(ROOT, "lower.txt", ROOT, "LOWER.TXT", false).unwrap();
        want.remove("lower.txt");
        want.insert("LOWER.TXT".into(), Some(b"lower.txt".to_vec()));
        let replaced = vol.rename(ROOT, "sparse.txt", ROOT, "zero.len", false).unwrap();
        vol.evict(replaced.unwrap()).unwrap();
        let sparse = want.remove("sparse.txt").unwrap();
        want.insert("zero.len".into(), sparse);
        assert!(matches!(vol.rename(ROOT, "Documents and Settings", docs, "x", false), Err(Error::Invalid(_))));
        assert!(matches!(vol.rename(ROOT, "LOWER.TXT", ROOT, "zero.len", true), Err(Error::Exists)));
        // What the engine reads back is what was written.
        assert_eq!(walk(&mut vol), want);
        vol.set_label("PLUGFS").unwrap();
        assert_eq!(vol.label().as_deref(), Some("PLUGFS"));
    }
    fsck(&img);
    for (path, content) in &want {
        match content {
            Some(data) => assert!(mcopy_out(&img, path) == *data, "mcopy reads {path} differently"),
            None => {
                let mut names: Vec<String> = want
                    .keys()
                    .filter_map(|k| k.strip_prefix(&format!("{path}/")))
                    .filter(|rest| !rest.contains('/'))
                    .map(str::to_string)
                    .collect();
                names.sort();
                assert_eq!(mdir_names(&img, path), names, "mdir lists {path} differently");
            }
        }
    }
    let mut top: Vec<String> = want.keys().filter(|k| !k.contains('/')).cloned().collect();
    top.sort();
    assert_eq!(mdir_names(&img, ""), top);
    let label = run_ok("mlabel", &["-s", "-i", img.to_str().unwrap(), "::"]);
    assert!(String::from_utf8_lossy(&label).contains("PLUGFS"), "{}", String::from_utf8_lossy(&label));
    // And a second mount sees it all too.
    let mut vol = Volume::open(&img, OpenOptions { read_only: true, ..OpenOptions::default() }).unwrap();
    assert_eq!(walk(&mut vol), want);
}

#[test]
fn fat12_writes_pass_fsck_and_read_back_with_mtools() {
    check_engine_writes(&[], 1440);
}

#[test]
fn fat16_writes_pass_fsck_and_read_back_with_mtools() {
    check_engine_writes(&["-F", "16"], 64 * 1024);
}

#[test]
fn fat32_writes_pass_fsck_and_read_back_with_mtools() {
    check_engine_writes(&["-F", "32", "-s", "1"], 128 * 1024);
}

#[test]
fn fat32_4096_byte_sector_writes_pass_fsck() {
    check_engine_writes(&["-S", "4096", "-F", "32", "-s", "1"], 512 * 1024);
}

#[test]
fn the_dirty_bit_is_set_while_mounted_and_cleared_on_unmount() {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), &["-F", "32", "-s", "1"], 128 * 1024);
    let state = |img: &Path| std::fs::read(img).unwrap()[65];
    assert_eq!(state(&img) & 1, 0);
    let vol = open_rw(&img);
    assert_eq!(state(&img) & 1, 1);
    let f = vol.create(ROOT, "f", false).unwrap();
    vol.write(f, 0, &pattern(100_000, 1)).unwrap();
    drop(vol);
    assert_eq!(state(&img) & 1, 0);
    // fsck.fat checks FSInfo's free count against the FAT.
    fsck(&img);
    let out = run_ok("fsck.fat", &["-n", "-v", img.to_str().unwrap()]);
    assert!(!String::from_utf8_lossy(&out).contains("Free cluster summary wrong"));
}

#[test]
fn a_second_read_write_open_of_the_same_image_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), &[], 1440);
    let _vol = open_rw(&img);
    assert!(matches!(Volume::open(&img, OpenOptions::default()), Err(Error::Busy(_))));
}

#[test]
fn read_only_volumes_refuse_changes() {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), &[], 1440);
    let before = std::fs::read(&img).unwrap();
    let vol = Volume::open(&img, OpenOptions { read_only: true, ..OpenOptions::default() }).unwrap();
    assert!(matches!(vol.create(ROOT, "x", false), Err(Error::ReadOnly)));
    drop(vol);
    assert!(std::fs::read(&img).unwrap() == before);
}

#[test]
fn a_directory_of_thousands_of_entries_is_created_and_looked_up() {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), &["-F", "32", "-s", "1"], 128 * 1024);
    {
        let vol = open_rw(&img);
        let d = vol.create(ROOT, "many", true).unwrap();
        for i in 0..3000 {
            vol.create(d, &format!("a long file name number {i}.txt"), false).unwrap();
        }
        for i in (0..3000).step_by(97) {
            vol.lookup(d, &format!("A LONG FILE NAME NUMBER {i}.TXT")).unwrap();
        }
        assert_eq!(vol.list(d, None, usize::MAX).unwrap().len(), 3000);
    }
    fsck(&img);
    assert_eq!(mdir_names(&img, "many").len(), 3000);
}

/// Directories count their links as Linux vfat does: 2 + subdirectories, the root too,
/// counted once when a directory is first read (here one mtools filled) and then kept by
/// mkdir, rmdir and renames across parents, including one that replaces an empty directory.
#[test]
fn directory_link_counts_are_two_plus_subdirectories_through_every_change() {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), &["-F", "16"], 16 * 1024);
    let i = img.to_str().unwrap();
    run_ok("mmd", &["-i", i, "::/a", "::/a/x", "::/a/y", "::/b"]);
    run_ok("mcopy", &["-i", i, "/dev/null", "::/a/file"]);
    let vol = open_rw(&img);
    let nlink = |ino: Ino| vol.stat(ino).unwrap().nlink;
    let a = vol.lookup(ROOT, "a").unwrap();
    let b = vol.lookup(ROOT, "b").unwrap();
    // Read from disk: `a` is stat'ed before it is ever listed.
    assert_eq!((nlink(ROOT), nlink(a), nlink(b)), (4, 4, 2));
    assert_eq!(nlink(vol.lookup(a, "file").unwrap()), 1);
    let c = vol.create(ROOT, "c", true).unwrap();
    let z = vol.create(b, "z", true).unwrap();
    assert_eq!((nlink(ROOT), nlink(b), nlink(c), nlink(z)), (5, 3, 2, 2));
    vol.rename(a, "x", b, "x moved", false).unwrap();
    assert_eq!((nlink(a), nlink(b)), (3, 4));
    // Over an empty directory: the target's link goes, the moved one's comes.
    vol.rename(a, "y", b, "z", false).unwrap();
    assert_eq!((nlink(a), nlink(b), nlink(z)), (2, 4, 0));
    // Within one directory, and case only: nothing changes.
    vol.rename(b, "x moved", b, "X MOVED", false).unwrap();
    assert_eq!(nlink(b), 4);
    // A file moved between directories counts nowhere.
    vol.rename(a, "file", c, "file", false).unwrap();
    assert_eq!((nlink(a), nlink(c)), (2, 2));
    vol.rmdir(ROOT, "c").unwrap_err();
    vol.unlink(c, "file").unwrap();
    vol.rmdir(ROOT, "c").unwrap();
    assert_eq!((nlink(ROOT), nlink(c)), (4, 0));
    drop(vol);
    fsck(&img);
    // What was kept matches a fresh count from disk.
    let vol = open_rw(&img);
    let nlink = |ino: Ino| vol.stat(ino).unwrap().nlink;
    let b = vol.lookup(ROOT, "b").unwrap();
    assert_eq!((nlink(ROOT), nlink(b)), (4, 4));
}

/// A name's entries never cross a sector boundary when they fit in one sector: the slots
/// left at the end of a sector are written as deleted entries (not end markers: mtools and
/// fsck.fat still see every name after them), and later names reuse them.
#[test]
fn a_long_name_starts_in_the_next_sector_and_the_slots_skipped_stay_usable() {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), &["-F", "16", "-s", "4"], 16 * 1024);
    let slot_of = |vol: &Volume, d: Ino, name: &str| {
        vol.list(d, None, usize::MAX).unwrap().into_iter().find(|l| l.name == name).unwrap().slot
    };
    let mut names = Vec::new();
    {
        let vol = open_rw(&img);
        let d = vol.create(ROOT, "d", true).unwrap();
        // `.` and `..`, then 12 short names: slots 0..=13 of the first 512-byte sector.
        for i in 0..12 {
            names.push(format!("s{i}.txt"));
            vol.create(d, &names[i], false).unwrap();
        }
        // 2 long-name entries and a short entry do not fit in slots 14 and 15.
        names.push("long name 1.txt".into());
        vol.create(d, "long name 1.txt", false).unwrap();
        assert_eq!(slot_of(&vol, d, "long name 1.txt"), 18, "the name's short entry, in the second sector");
        names.push("x.txt".into());
        vol.create(d, "x.txt", false).unwrap();
        assert_eq!(slot_of(&vol, d, "x.txt"), 14, "a skipped slot is reused");
        names.push("y.txt".into());
        vol.create(d, "y.txt", false).unwrap();
        assert_eq!(slot_of(&vol, d, "y.txt"), 15);
        names.push("z.txt".into());
        vol.create(d, "z.txt", false).unwrap();
        assert_eq!(slot_of(&vol, d, "z.txt"), 19);
    }
    fsck(&img);
    names.sort();
    assert_eq!(mdir_names(&img, "d"), names);
    let vol = Volume::open(&img, OpenOptions { read_only: true, ..OpenOptions::default() }).unwrap();
    let d = vol.lookup(ROOT, "d").unwrap();
    assert_eq!(vol.list(d, None, usize::MAX).unwrap().len(), names.len());
}

#[test]
fn a_looping_chain_is_eio_on_that_file_only() {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), &["-F", "16"], 64 * 1024);
    let mut tree = BTreeMap::new();
    tree.insert("loop.bin".to_string(), Some(pattern(10_000, 1)));
    tree.insert("fine.bin".to_string(), Some(pattern(10_000, 2)));
    fill_with_mtools(&img, &tree);
    let (cluster, fat_at) = {
        let vol = Volume::open(&img, OpenOptions { read_only: true, ..OpenOptions::default() }).unwrap();
        let ino = vol.lookup(ROOT, "loop.bin").unwrap();
        let first = vol.first_cluster(ino).unwrap();
        (first, vol.bpb().fat_offset(0))
    };
    // Point the file's second cluster back at its first.
    let mut bytes = std::fs::read(&img).unwrap();
    let second = u16::from_le_bytes([
        bytes[fat_at as usize + 2 * cluster as usize],
        bytes[fat_at as usize + 2 * cluster as usize + 1],
    ]);
    let at = fat_at as usize + 2 * second as usize;
    bytes[at..at + 2].copy_from_slice(&(cluster as u16).to_le_bytes());
    std::fs::write(&img, &bytes).unwrap();
    let mut vol = Volume::open(&img, OpenOptions { read_only: true, ..OpenOptions::default() }).unwrap();
    let bad = vol.lookup(ROOT, "loop.bin").unwrap();
    let err = vol.read(bad, 0, &mut [0u8; 100]).unwrap_err();
    assert!(matches!(err, Error::Corrupt(ref m) if m.contains("loops")), "{err}");
    assert_eq!(err.errno(), libc::EIO);
    let fine = vol.lookup(ROOT, "fine.bin").unwrap();
    assert_eq!(read_all(&mut vol, fine), pattern(10_000, 2));
}

#[test]
fn a_malformed_boot_sector_is_a_clear_error_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), &[], 1440);
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[13] = 3;
    std::fs::write(&img, &bytes).unwrap();
    let err = Volume::open(&img, OpenOptions::default()).err().expect("must fail");
    assert!(err.to_string().contains("sectors per cluster"), "{err}");
}

fn formatted(size: u64, fat_type: Option<FatType>, sector_size: u32, cluster_size: Option<u32>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("fat.img");
    let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&img).unwrap();
    file.set_len(size).unwrap();
    let f = mkfs::Format { size, fat_type, sector_size, cluster_size, label: Some("Made Here".into()), volume_id: 7 };
    mkfs::format(&file, &f, |_, _| {}).unwrap();
    dir
}

#[test]
fn images_made_by_format_pass_fsck_and_mtools_reads_them() {
    let cases = [
        (1440 * 1024, None, 512, None, FatType::Fat12),
        (64 << 20, None, 512, None, FatType::Fat16),
        (64 << 20, Some(FatType::Fat32), 512, Some(512), FatType::Fat32),
        (600 << 20, None, 512, None, FatType::Fat32),
        (64 << 20, Some(FatType::Fat16), 4096, None, FatType::Fat16),
        (512 << 20, Some(FatType::Fat32), 4096, Some(4096), FatType::Fat32),
        (4 << 20, Some(FatType::Fat12), 2048, None, FatType::Fat12),
    ];
    for (size, t, ss, cs, want) in cases {
        let dir = formatted(size, t, ss, cs);
        let img = dir.path().join("fat.img");
        let i = img.to_str().unwrap();
        fsck(&img);
        run_ok("mdir", &["-i", i, "::/"]);
        let label = run_ok("mlabel", &["-s", "-i", i, "::"]);
        assert!(String::from_utf8_lossy(&label).contains("MADE HERE"), "{}", String::from_utf8_lossy(&label));
        // mtools writes into it, the engine reads it back, and the other way round.
        let src = dir.path().join("src");
        std::fs::write(&src, pattern(100_000, 9)).unwrap();
        run_ok("mcopy", &["-i", i, src.to_str().unwrap(), "::/from mtools.bin"]);
        {
            let mut vol = open_rw(&img);
            assert_eq!(vol.bpb().fat_type, want, "{size} {t:?} {ss}");
            let f = vol.lookup(ROOT, "from mtools.bin").unwrap();
            assert_eq!(read_all(&mut vol, f), pattern(100_000, 9));
            let g = vol.create(ROOT, "from plugfs.bin", false).unwrap();
            vol.write(g, 0, &pattern(50_000, 10)).unwrap();
        }
        fsck(&img);
        assert!(mcopy_out(&img, "from plugfs.bin") == pattern(50_000, 10));
    }
}

#[test]
fn a_file_sharing_clusters_with_another_is_eio_and_never_written() {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), &["-F", "16"], 64 * 1024);
    let mut tree = BTreeMap::new();
    tree.insert("A.BIN".to_string(), Some(pattern(10_000, 1)));
    tree.insert("B.BIN".to_string(), Some(pattern(10_000, 2)));
    fill_with_mtools(&img, &tree);
    let (a_cluster, root_at) = {
        let vol = Volume::open(&img, OpenOptions { read_only: true, ..OpenOptions::default() }).unwrap();
        let a = vol.lookup(ROOT, "A.BIN").unwrap();
        (vol.first_cluster(a).unwrap(), vol.bpb().root_dir_offset as usize)
    };
    // Point B's directory entry at A's clusters.
    let mut bytes = std::fs::read(&img).unwrap();
    let slot = (0..512).find(|s| &bytes[root_at + s * 32..root_at + s * 32 + 11] == b"B       BIN").unwrap();
    let at = root_at + slot * 32 + 26;
    bytes[at..at + 2].copy_from_slice(&(a_cluster as u16).to_le_bytes());
    std::fs::write(&img, &bytes).unwrap();
    let before = std::fs::read(&img).unwrap();
    let mut vol = open_rw(&img);
    let a = vol.lookup(ROOT, "A.BIN").unwrap();
    assert_eq!(read_all(&mut vol, a), pattern(10_000, 1));
    let b = vol.lookup(ROOT, "B.BIN").unwrap();
    let err = vol.read(b, 0, &mut [0u8; 10]).unwrap_err();
    assert!(err.to_string().contains("cross-linked"), "{err}");
    assert_eq!(err.errno(), libc::EIO);
    assert!(vol.write(b, 0, b"spread").is_err());
    assert!(vol.truncate(b, 0).is_err());
    drop(vol);
    // Nothing but the dirty bit's set-and-clear touched the image.
    assert!(std::fs::read(&img).unwrap() == before);
}

#[test]
fn a_full_volume_is_enospc_and_the_image_stays_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), &[], 1440);
    {
        let vol = open_rw(&img);
        let f = vol.create(ROOT, "filler", false).unwrap();
        let chunk = pattern(64 * 1024, 3);
        let mut written = 0u64;
        let err = loop {
            match vol.write(f, written, &chunk) {
                Ok(n) => written += n as u64,
                Err(e) => break e,
            }
        };
        assert!(matches!(err, Error::NoSpace), "{err}");
        assert_eq!(err.errno(), libc::ENOSPC);
        assert!(written > 1_300_000, "{written}");
        // What was written before stays intact, and the space left is still usable.
        assert_eq!(vol.stat(f).unwrap().size, written);
        let free = vol.space().free_clusters as usize * vol.space().cluster_size as usize;
        vol.write(f, written, &chunk[..free]).unwrap();
        assert_eq!(vol.space().free_clusters, 0);
        assert!(matches!(vol.create(ROOT, "a dir", true), Err(Error::NoSpace)));
        // Too big for FAT at all.
        let g = vol.create(ROOT, "g", false).unwrap();
        assert!(matches!(vol.write(g, MAX_FILE_SIZE, b"x"), Err(Error::FileTooBig)));
        assert!(matches!(vol.truncate(g, MAX_FILE_SIZE + 1), Err(Error::FileTooBig)));
    }
    fsck(&img);
}

#[test]
fn a_fat32_volume_with_mirroring_off_is_read_from_its_active_fat() {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), &["-F", "32", "-s", "1"], 128 * 1024);
    let mut tree = BTreeMap::new();
    tree.insert("data.bin".to_string(), Some(pattern(50_000, 4)));
    fill_with_mtools(&img, &tree);
    let bpb = Volume::open(&img, OpenOptions { read_only: true, ..OpenOptions::default() }).unwrap().bpb().clone();
    let mut bytes = std::fs::read(&img).unwrap();
    // Active FAT 1, mirroring off; FAT 0 wiped past its reserved entries.
    bytes[40..42].copy_from_slice(&0x81u16.to_le_bytes());
    let fat0 = bpb.fat_offset(0) as usize;
    bytes[fat0 + 12..fat0 + bpb.fat_bytes() as usize].fill(0);
    std::fs::write(&img, &bytes).unwrap();
    let mut vol = Volume::open(&img, OpenOptions { read_only: true, ..OpenOptions::default() }).unwrap();
    assert_eq!(vol.bpb().active_fat, 1);
    let f = vol.lookup(ROOT, "data.bin").unwrap();
    assert_eq!(read_all(&mut vol, f), pattern(50_000, 4));
}

#[test]
fn a_block_device_is_served_like_an_image_file() {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), &["-F", "16"], 64 * 1024);
    let mut tree = BTreeMap::new();
    tree.insert("on a device.txt".to_string(), Some(pattern(5000, 8)));
    fill_with_mtools(&img, &tree);
    let out = run("losetup", &["-f", "--show", img.to_str().unwrap()]);
    assert!(out.status.success(), "losetup (util-linux, as root) is needed: {}", String::from_utf8_lossy(&out.stderr));
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = Command::new("losetup").args(["-d", &self.0]).status();
        }
    }
    let _detach = Detach(dev.clone());
    {
        let mut vol = open_rw(Path::new(&dev));
        let f = vol.lookup(ROOT, "ON A DEVICE.TXT").unwrap();
        assert_eq!(read_all(&mut vol, f), pattern(5000, 8));
        let g = vol.create(ROOT, "written to the device", false).unwrap();
        vol.write(g, 0, b"device").unwrap();
    }
    run_ok("fsck.fat", &["-n", &dev]);
    assert_eq!(run_ok("mcopy", &["-n", "-i", &dev, "::/written to the device", "-"]), b"device");
}

/// Many threads write and read their own files at once while one thread creates, writes,
/// unlinks, makes and removes directories in the same directory: every file reads back
/// what its writer wrote (through the engine and with mcopy), and fsck.fat finds nothing.
fn check_concurrent_io(mkfs_args: &[&str], kib: u64) {
    const WRITERS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), mkfs_args, kib);
    let vol = std::sync::Arc::new(open_rw(&img));
    let shared = vol.create(ROOT, "shared directory", true).unwrap();
    // A file every writer also reads while the others write.
    let common = vol.create(shared, "read by everyone.bin", false).unwrap();
    vol.write(common, 0, &pattern(40_000, 99)).unwrap();
    let mut threads = Vec::new();
    for w in 0..WRITERS {
        let vol = vol.clone();
        threads.push(std::thread::spawn(move || {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (w as u64 + 1));
            let name = format!("writer {w} with a long name.dat");
            let ino = vol.create(shared, &name, false).unwrap();
            let mut model: Vec<u8> = Vec::new();
            for round in 0..300u32 {
                let data = pattern(1 + rng.below(6000) as usize, round * 64 + w as u32);
                let offset = match rng.below(10) {
                    // Overwrite inside the file (no allocation when it fits).
                    0..=2 if !model.is_empty() => rng.below(model.len() as u64),
                    // Past the end: a gap of zeroes.
                    3 => model.len() as u64 + rng.below(3000),
                    _ => model.len() as u64,
                } as usize;
                assert_eq!(vol.write(ino, offset as u64, &data).unwrap(), data.len());
                if model.len() < offset + data.len() {
                    model.resize(offset + data.len(), 0);
                }
                model[offset..offset + data.len()].copy_from_slice(&data);
                if rng.below(20) == 0 {
                    let keep = rng.below(model.len() as u64 + 1) as usize;
                    vol.truncate(ino, keep as u64).unwrap();
                    model.truncate(keep);
                }
                // Read back a random range of its own file, and of the common one.
                let at = rng.below(model.len() as u64 + 1) as usize;
                let len = (1 + rng.below(9000) as usize).min(model.len() - at);
                let mut buf = vec![0u8; len];
                let mut got = 0;
                while got < len {
                    let n = vol.read(ino, (at + got) as u64, &mut buf[got..]).unwrap();
                    assert!(n > 0, "short read of {name}");
                    got += n;
                }
                assert!(buf == model[at..at + len], "{name}: read {len} at {at} differs in round {round}");
                let at = rng.below(40_000) as usize;
                let mut buf = vec![0u8; 4096.min(40_000 - at)];
                let n = vol.read(common, at as u64, &mut buf).unwrap();
                assert!(buf[..n] == pattern(40_000, 99)[at..at + n], "the common file reads differently");
            }
            (name, model)
        }));
    }
    let churn = {
        let vol = vol.clone();
        std::thread::spawn(move || {
            let mut rng = Rng(42);
            let mut alive: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            for i in 0..400u32 {
                match rng.below(4) {
                    0 | 1 => {
                        let name = format!("churn file {i} of the creating thread.txt");
                        let ino = vol.create(shared, &name, false).unwrap();
                        let data = pattern(rng.below(5000) as usize, 10_000 + i);
                        vol.write(ino, 0, &data).unwrap();
                        alive.insert(name, data);
                    }
                    2 if !alive.is_empty() => {
                        let name = alive.keys().nth(rng.below(alive.len() as u64) as usize).unwrap().clone();
                        let ino = vol.unlink(shared, &name).unwrap();
                        vol.evict(ino).unwrap();
                        alive.remove(&name);
                    }
                    _ => {
                        let name = format!("churn dir {i}");
                        vol.create(shared, &name, true).unwrap();
                        // Half stay, so the directory keeps growing.
                        if rng.below(2) == 0 {
                            vol.rmdir(shared, &name).unwrap();
                        }
                    }
                }
            }
            alive
        })
    };
    let mut want: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for t in threads {
        let (name, model) = t.join().expect("a writer failed");
        want.insert(name, model);
    }
    want.extend(churn.join().expect("the creating thread failed"));
    want.insert("read by everyone.bin".into(), pattern(40_000, 99));
    let mut vol = std::sync::Arc::into_inner(vol).expect("every thread is done");
    for (name, data) in &want {
        let ino = vol.lookup(shared, name).unwrap();
        assert!(read_all(&mut vol, ino) == *data, "{name} reads back differently through the engine");
    }
    let files = vol.list(shared, None, usize::MAX).unwrap().into_iter().filter(|e| !e.is_dir).count();
    assert_eq!(files, want.len(), "files in the shared directory");
    drop(vol);
    fsck(&img);
    for (name, data) in &want {
        assert!(mcopy_out(&img, &format!("shared directory/{name}")) == *data, "mcopy reads {name} differently");
    }
}

#[test]
fn fat16_concurrent_writers_readers_and_a_creator_leave_a_clean_image() {
    check_concurrent_io(&["-F", "16", "-s", "2"], 32 * 1024);
}

#[test]
fn fat32_concurrent_writers_readers_and_a_creator_leave_a_clean_image() {
    check_concurrent_io(&["-F", "32", "-s", "1"], 64 * 1024);
}

#[test]
fn trailing_dots_are_dropped_and_trailing_spaces_refused_as_vfat_does() {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), &[], 1440);
    {
        let vol = open_rw(&img);
        let foo = vol.create(ROOT, "foo.", false).unwrap();
        assert_eq!(vol.name(foo).unwrap(), "foo");
        // Lookup drops trailing dots as create does, and only dots.
        assert_eq!(vol.lookup(ROOT, "FOO..").unwrap(), foo);
        assert!(matches!(vol.lookup(ROOT, "foo "), Err(Error::NotFound)));
        assert!(matches!(vol.lookup(ROOT, "..."), Err(Error::NotFound)));
        for bad in ["bar ", "bar .", "bar. ", " "] {
            let e = vol.create(ROOT, bad, false).unwrap_err();
            assert_eq!(e.errno(), libc::EINVAL, "{bad:?}: {e}");
            let e = vol.rename(ROOT, "foo", ROOT, bad, false).unwrap_err();
            assert_eq!(e.errno(), libc::EINVAL, "rename to {bad:?}: {e}");
        }
        // Nothing left after the dots: vfat's create answers ENOENT.
        assert_eq!(vol.create(ROOT, "...", true).unwrap_err().errno(), libc::ENOENT);
        assert_eq!(vol.rename(ROOT, "foo", ROOT, "..", false).unwrap_err().errno(), libc::ENOENT);
        let names: Vec<String> = vol.list(ROOT, None, 100).unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["foo"]);
        // Spaces inside a name, and leading ones, are kept.
        vol.create(ROOT, " a b", false).unwrap();
    }
    fsck(&img);
    assert_eq!(mdir_names(&img, ""), [" a b", "foo"]);
}

/// Access dates as vfat's default `relatime` keeps them: a read sets a stale one to today
/// (one entry write), never on a read-only volume or with `noatime`.
#[test]
fn a_read_updates_a_stale_access_date_unless_noatime_or_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), &["-F", "16"], 32 * 1024);
    let old = time::FatTime::from_unix(978_307_200, 0, 0); // 2001-01-01
    let today = time::now(0).date;
    let access_date = |options: OpenOptions| {
        let vol = Volume::open(&img, options).unwrap();
        vol.stat(vol.lookup(ROOT, "read me.txt").unwrap()).unwrap().access_date
    };
    {
        let vol = open_rw(&img);
        let f = vol.create(ROOT, "read me.txt", false).unwrap();
        vol.write(f, 0, b"some bytes").unwrap();
        vol.set_times(f, Some(old), Some(old)).unwrap();
    }
    let ro = OpenOptions { read_only: true, ..OpenOptions::default() };
    assert_eq!(access_date(ro), old.date);
    let read_with = |options: OpenOptions| {
        let vol = Volume::open(&img, options).unwrap();
        let f = vol.lookup(ROOT, "read me.txt").unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(vol.read(f, 0, &mut buf).unwrap(), 10);
        vol.stat(f).unwrap().access_date
    };
    // Read-only and noatime volumes leave it, in memory and on disk.
    assert_eq!(read_with(ro), old.date);
    assert_eq!(read_with(OpenOptions { noatime: true, ..OpenOptions::default() }), old.date);
    assert_eq!(access_date(ro), old.date);
    // A read-write volume sets it to today, on disk too.
    assert_eq!(read_with(OpenOptions::default()), today);
    assert_eq!(access_date(ro), today);
    // An access date after the modification date and from today is left as it is: a
    // second read writes nothing.
    {
        let vol = open_rw(&img);
        let f = vol.lookup(ROOT, "read me.txt").unwrap();
        let before = std::fs::read(&img).unwrap();
        let mut buf = [0u8; 4];
        vol.read(f, 0, &mut buf).unwrap();
        let root = vol.bpb().root_dir_offset as usize;
        assert!(std::fs::read(&img).unwrap()[root..root + 512] == before[root..root + 512], "the entry was rewritten");
        // Set back within the same mount (after a read found it current today), the next
        // read sets it again: the per-file note of today's check is dropped.
        vol.set_times(f, None, Some(old)).unwrap();
        vol.read(f, 0, &mut buf).unwrap();
        assert_eq!(vol.stat(f).unwrap().access_date, today);
    }
    fsck(&img);
}

#[test]
fn a_new_label_reaches_the_root_entry_the_boot_sector_and_its_fat32_backup() {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), &["-F", "32", "-s", "1", "-n", "OLDNAME"], 64 * 1024);
    {
        let vol = open_rw(&img);
        assert_eq!(vol.label().as_deref(), Some("OLDNAME"));
        vol.set_label("New Label").unwrap();
    }
    let bytes = std::fs::read(&img).unwrap();
    let backup = u16::from_le_bytes([bytes[50], bytes[51]]) as usize * 512;
    assert!(backup > 0);
    assert_eq!(&bytes[71..82], b"NEW LABEL  ");
    assert!(bytes[..512] == bytes[backup..backup + 512], "the backup boot sector differs from the boot sector");
    let out = run_ok("fsck.fat", &["-n", "-v", img.to_str().unwrap()]);
    assert!(!String::from_utf8_lossy(&out).contains("ifferences"), "{}", String::from_utf8_lossy(&out));
    let vol = Volume::open(&img, OpenOptions { read_only: true, ..OpenOptions::default() }).unwrap();
    assert_eq!(vol.label().as_deref(), Some("NEW LABEL"));
}

/// Short names are in the OEM code page (437 unless configured): byte 0x8E is `Ä`, as
/// mtools shows it, and names the code page holds are written in it.
#[test]
fn short_names_are_in_the_oem_code_page_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), &[], 1440);
    let mut tree = BTreeMap::new();
    tree.insert("XPFEL.TXT".to_string(), Some(b"apples".to_vec()));
    fill_with_mtools(&img, &tree);
    let root = 19 * 512;
    let mut bytes = std::fs::read(&img).unwrap();
    let slot = (0..224).find(|s| &bytes[root + s * 32..root + s * 32 + 11] == b"XPFEL   TXT").unwrap();
    bytes[root + slot * 32] = 0x8E;
    std::fs::write(&img, &bytes).unwrap();
    assert_eq!(mdir_names(&img, ""), ["ÄPFEL.TXT"]);
    {
        let vol = open_rw(&img);
        let names: Vec<String> = vol.list(ROOT, None, 100).unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["ÄPFEL.TXT"]);
        assert_eq!(vol.lookup(ROOT, "äpfel.txt").unwrap(), vol.lookup(ROOT, "ÄPFEL.TXT").unwrap());
        // A new name with characters code page 437 holds gets them in its short name.
        let f = vol.create(ROOT, "café crème.txt", false).unwrap();
        vol.write(f, 0, b"coffee").unwrap();
    }
    fsck(&img);
    let mut names = mdir_names(&img, "");
    names.sort();
    assert_eq!(names, ["café crème.txt", "ÄPFEL.TXT"]);
    // The short entry: CAFÉCR~1.TXT, É as 0x90.
    let bytes = std::fs::read(&img).unwrap();
    assert!((0..224).any(|s| &bytes[root + s * 32..root + s * 32 + 11] == b"CAF\x90CR~1TXT"));
    // Code page 850 has Ä at 0x8E too.
    let vol = Volume::open(
        &img,
        OpenOptions { read_only: true, codepage: names::Codepage::new(850).unwrap(), ..OpenOptions::default() },
    )
    .unwrap();
    assert!(vol.lookup(ROOT, "ÄPFEL.TXT").is_ok());
}

// Damaged images: every change to a damaged file or directory answers EIO with a log line
// naming it, and the damage never spreads (fsck.fat finds nothing it did not find before,
// the other files' bytes stay as they were).

/// Runs `f` with the engine's log lines (this thread's) captured; returns them with its
/// result.
fn with_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
    let r = tracing::subscriber::with_default(subscriber, f);
    let logs = String::from_utf8_lossy(&buf.0.lock().unwrap()).into_owned();
    (r, logs)
}

/// What `fsck.fat -n` reports about `img`, one line each, numbers blanked (counts of lost
/// clusters and the like follow the files written since): every line but its version,
/// "Leaving filesystem unchanged." and the closing summary.
fn fsck_problems(img: &Path) -> std::collections::BTreeSet<String> {
    let out = run("fsck.fat", &["-n", img.to_str().unwrap()]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty() && !l.starts_with("Leaving filesystem") && !l.contains(" files, "))
        .map(|l| {
            let mut out = String::new();
            for c in l.chars() {
                if !c.is_ascii_digit() {
                    out.push(c);
                } else if !out.ends_with('#') {
                    out.push('#');
                }
            }
            out
        })
        .collect()
}

/// Asserts fsck.fat finds in `img` nothing but what it found `before`, and, when
/// `lost_ok`, clusters that nothing names (what unlinking a damaged file leaves).
fn assert_no_new_problems(img: &Path, before: &std::collections::BTreeSet<String>, lost_ok: bool) {
    let after = fsck_problems(img);
    let new: Vec<_> = after.difference(before).filter(|l| !(lost_ok && l.starts_with("Reclaimed # unused"))).collect();
    let report = String::from_utf8_lossy(&run("fsck.fat", &["-n", img.to_str().unwrap()]).stdout).into_owned();
    assert!(new.is_empty(), "fsck.fat -n finds new problems: {new:?}\nbefore: {before:?}\n{report}");
}

/// Asserts `r` failed with EIO.
fn assert_eio<T: std::fmt::Debug>(what: &str, r: Result<T>) {
    match r {
        Err(e) => assert_eq!(e.errno(), libc::EIO, "{what}: {e}"),
        Ok(v) => panic!("{what} succeeded ({v:?}) on a damaged file"),
    }
}

/// Byte offset of the root directory entry with short name `short` (FAT12/16).
fn root_entry_at(bytes: &[u8], bpb: &Bpb, short: &[u8; 11]) -> usize {
    let root = bpb.root_dir_offset as usize;
    (0..bpb.root_entries as usize)
        .map(|s| root + s * 32)
        .find(|&at| &bytes[at..at + 11] == short)
        .unwrap_or_else(|| panic!("no entry {}", String::from_utf8_lossy(short)))
}

/// Sets FAT16 entry `cluster` to `value` in every FAT copy.
fn set_fat16(bytes: &mut [u8], bpb: &Bpb, cluster: u32, value: u16) {
    for n in 0..bpb.num_fats {
        let at = bpb.fat_offset(n) as usize + 2 * cluster as usize;
        bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
    }
}

fn fat16_entry(bytes: &[u8], bpb: &Bpb, cluster: u32) -> u32 {
    let at = bpb.fat_offset(0) as usize + 2 * cluster as usize;
    u16::from_le_bytes([bytes[at], bytes[at + 1]]) as u32
}

/// A FAT16 image (2 KiB clusters) holding `files` (short names, written by mcopy in
/// order), damaged by `damage` (bytes of the image, its BPB).
fn damaged_fat16(dir: &Path, files: &[(&str, Vec<u8>)], damage: impl FnOnce(&mut Vec<u8>, &Bpb)) -> PathBuf {
    let img = mkfs(dir, &["-F", "16", "-s", "4"], 64 * 1024);
    let src = dir.join("src");
    for (name, data) in files {
        std::fs::write(&src, data).unwrap();
        run_ok("mcopy", &["-i", img.to_str().unwrap(), src.to_str().unwrap(), &format!("::/{name}")]);
    }
    let mut bytes = std::fs::read(&img).unwrap();
    let bpb = Bpb::parse(&bytes[..512]).unwrap();
    damage(&mut bytes, &bpb);
    std::fs::write(&img, &bytes).unwrap();
    img
}

fn first_cluster_in(bytes: &[u8], bpb: &Bpb, short: &[u8; 11]) -> u32 {
    let at = root_entry_at(bytes, bpb, short);
    u16::from_le_bytes([bytes[at + 26], bytes[at + 27]]) as u32
}

/// The chain of the root entry `short`, from the image's first FAT.
fn chain_in(bytes: &[u8], bpb: &Bpb, short: &[u8; 11]) -> Vec<u32> {
    let mut c = first_cluster_in(bytes, bpb, short);
    let mut chain = vec![c];
    while let n @ 2..0xFFF0 = fat16_entry(bytes, bpb, c) {
        chain.push(n);
        c = n;
    }
    chain
}

/// Two files share clusters (`how`), the one named `changed` is loaded first, before the
/// other's chain is ever walked, and every change to it is refused; unlinking it leaves
/// the shared clusters allocated, so a new file never gets them.
fn check_cross_link(how: &str, changed: &str) {
    let dir = tempfile::tempdir().unwrap();
    let a_data = pattern(10_000, 1);
    let b_data = pattern(3_000, 2);
    let img = damaged_fat16(dir.path(), &[("A.BIN", a_data.clone()), ("B.BIN", b_data)], |bytes, bpb| {
        let a = chain_in(bytes, bpb, b"A       BIN");
        match how {
            // B's entry names A's first cluster: B is all of A.
            "entry" => {
                let at = root_entry_at(bytes, bpb, b"B       BIN") + 26;
                bytes[at..at + 2].copy_from_slice(&(a[0] as u16).to_le_bytes());
            }
            // B's first cluster links into A's third: they share A's last three.
            "fat" => {
                let b = first_cluster_in(bytes, bpb, b"B       BIN");
                set_fat16(bytes, bpb, b, a[2] as u16);
            }
            _ => unreachable!(),
        }
    });
    let before = fsck_problems(&img);
    assert!(before.iter().any(|l| l.contains("share clusters")), "{before:?}");
    // What the other file reads: A's bytes, from its third cluster on for "fat".
    let other = if changed == "A.BIN" { "B.BIN" } else { "A.BIN" };
    let other_before = mcopy_out(&img, other);
    if how == "entry" && other == "B.BIN" {
        assert!(other_before == a_data[..3_000]);
    }
    {
        let mut vol = open_rw(&img);
        let f = vol.lookup(ROOT, changed).unwrap();
        let content = read_all(&mut vol, f);
        let (_, logs) = with_logs(|| {
            assert_eio("truncate to 0", vol.truncate(f, 0));
            assert_eio("truncate to one cluster", vol.truncate(f, 2048));
            assert_eio("truncate longer", vol.truncate(f, 40_000));
            assert_eio("write in place", vol.write(f, 0, b"spread"));
            assert_eio("write past the end", vol.write(f, 30_000, b"spread"));
            assert_eio("append", vol.append(f, b"spread"));
        });
        assert!(logs.contains("cross-linked") && logs.contains(changed), "{logs}");
        // Still readable: reading spreads nothing.
        assert_eq!(read_all(&mut vol, f), content);
    }
    assert_no_new_problems(&img, &before, false);
    assert!(mcopy_out(&img, other) == other_before, "{other} changed");
    {
        // Unlinked, the name goes and its clusters stay allocated: a new file's data
        // never lands in the other file's.
        let vol = open_rw(&img);
        let f = vol.lookup(ROOT, changed).unwrap();
        let (_, logs) = with_logs(|| {
            vol.unlink(ROOT, changed).unwrap();
            vol.evict(f).unwrap();
        });
        assert!(logs.contains("left allocated"), "{logs}");
        let c = vol.create(ROOT, "C.BIN", false).unwrap();
        vol.write(c, 0, &pattern(40_000, 3)).unwrap();
    }
    // The other file alone has the shared clusters now: fsck.fat sees its chain longer
    // than its size, or as it was, and nothing about C.
    let report = String::from_utf8_lossy(&run("fsck.fat", &["-n", img.to_str().unwrap()]).stdout).into_owned();
    assert!(!report.contains("C.BIN") && !report.contains("share"), "{report}");
    assert!(mcopy_out(&img, other) == other_before, "{other} changed");
    assert!(mcopy_out(&img, "C.BIN") == pattern(40_000, 3));
}

#[test]
fn a_cross_linked_file_loaded_first_is_never_changed_or_freed() {
    check_cross_link("entry", "A.BIN");
    check_cross_link("entry", "B.BIN");
}

#[test]
fn a_chain_linked_into_another_is_never_changed_or_freed_nor_is_the_other() {
    check_cross_link("fat", "A.BIN");
    check_cross_link("fat", "B.BIN");
}

/// A file whose chain is broken (`damage`): reads and every change answer EIO, unlinking
/// it frees nothing, and neither the other file nor fsck's findings change.
fn check_broken_chain(damage: impl FnOnce(&mut Vec<u8>, &Bpb, &[u32]), why: &str) {
    let dir = tempfile::tempdir().unwrap();
    let img =
        damaged_fat16(dir.path(), &[("A.BIN", pattern(10_000, 1)), ("FINE.BIN", pattern(10_000, 2))], |b, bpb| {
            let chain = chain_in(b, bpb, b"A       BIN");
            damage(b, bpb, &chain)
        });
    let before = fsck_problems(&img);
    assert!(!before.is_empty());
    {
        let mut vol = open_rw(&img);
        let a = vol.lookup(ROOT, "A.BIN").unwrap();
        let (_, logs) = with_logs(|| {
            assert_eio("read", vol.read(a, 0, &mut [0u8; 10]));
            assert_eio("write", vol.write(a, 0, b"spread"));
            assert_eio("append", vol.append(a, b"spread"));
            assert_eio("truncate to 0", vol.truncate(a, 0));
            assert_eio("truncate longer", vol.truncate(a, 40_000));
        });
        assert!(logs.contains(why) && logs.contains("A.BIN"), "{logs}");
        let fine = vol.lookup(ROOT, "FINE.BIN").unwrap();
        assert_eq!(read_all(&mut vol, fine), pattern(10_000, 2));
    }
    assert_no_new_problems(&img, &before, false);
    {
        let vol = open_rw(&img);
        let a = vol.lookup(ROOT, "A.BIN").unwrap();
        let (_, logs) = with_logs(|| {
            vol.unlink(ROOT, "A.BIN").unwrap();
            vol.evict(a).unwrap();
        });
        assert!(logs.contains("left allocated"), "{logs}");
        let c = vol.create(ROOT, "C.BIN", false).unwrap();
        vol.write(c, 0, &pattern(40_000, 3)).unwrap();
    }
    assert_no_new_problems(&img, &before, true);
    assert!(mcopy_out(&img, "FINE.BIN") == pattern(10_000, 2));
    assert!(mcopy_out(&img, "C.BIN") == pattern(40_000, 3));
}

#[test]
fn a_chain_running_past_the_volume_is_eio_and_never_freed() {
    check_broken_chain(|b, bpb, chain| set_fat16(b, bpb, chain[1], 0xFFF0), "outside");
}

#[test]
fn a_looping_chain_is_eio_and_never_freed() {
    check_broken_chain(|b, bpb, chain| set_fat16(b, bpb, chain[3], chain[1] as u16), "loops");
}

/// A file whose size is larger than its chain answers EIO on every change, instead of
/// growing its chain up to that size with clusters of old bytes (a deleted file's here),
/// which would show those bytes and hide the damage from fsck.fat.
#[test]
fn a_file_larger_than_its_chain_is_eio_on_every_change_and_shows_no_old_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), &["-F", "16", "-s", "4"], 64 * 1024);
    let i = img.to_str().unwrap();
    let src = dir.path().join("src");
    std::fs::write(&src, pattern(20_000, 9)).unwrap();
    run_ok("mcopy", &["-i", i, src.to_str().unwrap(), "::/OLD.BIN"]);
    run_ok("mdel", &["-i", i, "::/OLD.BIN"]);
    std::fs::write(&src, pattern(1_000, 1)).unwrap();
    run_ok("mcopy", &["-i", i, src.to_str().unwrap(), "::/F.BIN"]);
    let mut bytes = std::fs::read(&img).unwrap();
    let bpb = Bpb::parse(&bytes[..512]).unwrap();
    let at = root_entry_at(&bytes, &bpb, b"F       BIN") + 28;
    bytes[at..at + 4].copy_from_slice(&(3 * 2048u32 + 100).to_le_bytes());
    std::fs::write(&img, &bytes).unwrap();
    let before = std::fs::read(&img).unwrap();
    {
        let vol = open_rw(&img);
        let f = vol.lookup(ROOT, "F.BIN").unwrap();
        let (_, logs) = with_logs(|| {
            assert_eio("read", vol.read(f, 0, &mut [0u8; 10]));
            assert_eio("write", vol.write(f, 0, b"x"));
            assert_eio("write at the end", vol.write(f, 3 * 2048 + 100, b"x"));
            assert_eio("append", vol.append(f, b"x"));
            assert_eio("truncate longer", vol.truncate(f, 5 * 2048));
            assert_eio("truncate shorter", vol.truncate(f, 500));
        });
        assert!(logs.contains("larger than its 1 clusters") && logs.contains("F.BIN"), "{logs}");
    }
    // Nothing but the dirty bit's set-and-clear touched the image.
    assert!(std::fs::read(&img).unwrap() == before);
}

/// Clusters a file gains inside its readable range are zeroed, on an image whose free
/// clusters hold a deleted file's bytes: a write past the end and a truncate that extends.
#[test]
fn clusters_a_file_grows_into_never_show_old_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), &["-F", "16", "-s", "4"], 64 * 1024);
    let i = img.to_str().unwrap();
    let src = dir.path().join("src");
    std::fs::write(&src, vec![0xAA; 100_000]).unwrap();
    run_ok("mcopy", &["-i", i, src.to_str().unwrap(), "::/OLD.BIN"]);
    run_ok("mdel", &["-i", i, "::/OLD.BIN"]);
    {
        let mut vol = open_rw(&img);
        let f = vol.create(ROOT, "gap", false).unwrap();
        vol.write(f, 0, b"head").unwrap();
        vol.write(f, 3 * 2048 + 5, b"tail").unwrap();
        let mut want = vec![0u8; 3 * 2048 + 9];
        want[..4].copy_from_slice(b"head");
        want[3 * 2048 + 5..].copy_from_slice(b"tail");
        assert!(read_all(&mut vol, f) == want);
        let g = vol.create(ROOT, "grown", false).unwrap();
        vol.write(g, 0, b"x").unwrap();
        vol.truncate(g, 7 * 2048 + 3).unwrap();
        let mut want = vec![0u8; 7 * 2048 + 3];
        want[0] = b'x';
        assert!(read_all(&mut vol, g) == want);
    }
    fsck(&img);
}

/// Garbage directory entries: an unusable name is skipped; an entry naming a cluster past
/// the volume, and one whose size has no chain, answer EIO; a "directory" whose entry
/// names a file's clusters lists (garbage, without a panic) but is never written, nor is
/// the file.
#[test]
fn garbage_directory_entries_are_skipped_or_eio_and_never_spread() {
    let dir = tempfile::tempdir().unwrap();
    let img = damaged_fat16(dir.path(), &[("A.BIN", pattern(10_000, 1)), ("E.BIN", pattern(10, 2))], |b, bpb| {
        let a = first_cluster_in(b, bpb, b"A       BIN");
        let free = (0..bpb.root_entries as usize).map(|s| bpb.root_dir_offset as usize + s * 32);
        let free: Vec<usize> = free.filter(|&at| b[at] == 0).take(4).collect();
        let entry = |name: &[u8; 11], attr: u8, cluster: u32, size: u32| {
            let mut e = [0u8; 32];
            e[..11].copy_from_slice(name);
            e[11] = attr;
            e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
            e[28..32].copy_from_slice(&size.to_le_bytes());
            e
        };
        let garbage = [
            entry(b"BAD/NAME   ", 0x20, 7, 100),
            entry(b"FAR     BIN", 0x20, 0xFFF0, 5000),
            entry(b"HUGE    BIN", 0x20, 0, 100_000),
            entry(b"OVERDIR    ", 0x10, a, 0),
        ];
        for (at, e) in free.iter().zip(garbage) {
            b[*at..*at + 32].copy_from_slice(&e);
        }
    });
    let before = fsck_problems(&img);
    {
        let mut vol = open_rw(&img);
        let names: Vec<String> = vol.list(ROOT, None, usize::MAX).unwrap().into_iter().map(|l| l.name).collect();
        assert!(!names.iter().any(|n| n.contains('/')), "{names:?}");
        let (_, logs) = with_logs(|| {
            for name in ["far.bin", "huge.bin"] {
                let f = vol.lookup(ROOT, name).unwrap();
                assert_eio("read", vol.read(f, 0, &mut [0u8; 10]));
                assert_eio("write", vol.write(f, 0, b"x"));
                assert_eio("truncate", vol.truncate(f, 1));
            }
        });
        assert!(logs.contains("outside") && logs.contains("larger than"), "{logs}");
        let d = vol.lookup(ROOT, "overdir").unwrap();
        // Whatever A's bytes parse as, listing them is fine.
        let _ = vol.list(d, None, usize::MAX);
        let a = vol.lookup(ROOT, "A.BIN").unwrap();
        let (_, logs) = with_logs(|| {
            assert_eio("create in it", vol.create(d, "new", false));
            assert_eio("mkdir in it", vol.create(d, "newdir", true));
            assert_eio("rename into it", vol.rename(ROOT, "E.BIN", d, "moved", false));
            assert_eio("write to the file under it", vol.write(a, 0, b"x"));
            assert_eio("truncate the file under it", vol.truncate(a, 0));
        });
        assert!(logs.contains("cross-linked"), "{logs}");
        // Its chain was claimed by the directory loaded first.
        assert_eio("read the file under it", vol.read(a, 0, &mut [0u8; 10]));
        let e = vol.lookup(ROOT, "E.BIN").unwrap();
        assert_eq!(read_all(&mut vol, e), pattern(10, 2));
    }
    assert_no_new_problems(&img, &before, false);
    assert!(mcopy_out(&img, "A.BIN") == pattern(10_000, 1));
    assert!(mcopy_out(&img, "E.BIN") == pattern(10, 2));
}

/// Free clusters that damaged entries name (an entry whose first cluster is free, a chain
/// linking to a free cluster) are never given to a new file: its data would become theirs
/// too, a cross-link fsck.fat might settle by truncating the new file.
#[test]
fn free_clusters_that_damaged_entries_name_are_never_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let mut named = Vec::new();
    let img = damaged_fat16(dir.path(), &[("A.BIN", pattern(10_000, 1)), ("B.BIN", pattern(3_000, 2))], |b, bpb| {
        let a = chain_in(b, bpb, b"A       BIN");
        let bc = chain_in(b, bpb, b"B       BIN");
        let first_free = (2..).find(|&c| fat16_entry(b, bpb, c) == 0).unwrap();
        // An entry naming the first free cluster, and B's last cluster linking to the next.
        let slot = (0..bpb.root_entries as usize).map(|s| bpb.root_dir_offset as usize + s * 32);
        let at = slot.into_iter().find(|&at| b[at] == 0).unwrap();
        b[at..at + 11].copy_from_slice(b"GONE    BIN");
        b[at + 11] = 0x20;
        b[at + 26..at + 28].copy_from_slice(&(first_free as u16).to_le_bytes());
        b[at + 28..at + 32].copy_from_slice(&2048u32.to_le_bytes());
        set_fat16(b, bpb, *bc.last().unwrap(), first_free as u16 + 2);
        named = vec![first_free, first_free + 2];
        assert!(a.iter().chain(&bc).all(|c| !named.contains(c)));
    });
    let before = fsck_problems(&img);
    {
        let vol = open_rw(&img);
        let free_before = vol.space().free_clusters;
        let (_, logs) = with_logs(|| {
            let n = vol.create(ROOT, "NEW.BIN", false).unwrap();
            vol.write(n, 0, &pattern(40_000, 3)).unwrap();
            let d = vol.create(ROOT, "NEWDIR", true).unwrap();
            vol.create(d, "inner", false).unwrap();
        });
        assert!(logs.contains("free clusters are named by damaged chains"), "{logs}");
        // statfs counts only what can be allocated: not the two reserved clusters (nor the
        // clusters the new file and directory took).
        let cs = vol.space().cluster_size as u32;
        let taken = 40_000u32.div_ceil(cs) + 1;
        assert_eq!(vol.space().free_clusters, free_before - taken - 2);
        let g = vol.lookup(ROOT, "GONE.BIN").unwrap();
        assert_eio("read GONE.BIN", vol.read(g, 0, &mut [0u8; 10]));
        assert_eio("write GONE.BIN", vol.write(g, 0, b"x"));
    }
    let bytes = std::fs::read(&img).unwrap();
    let bpb = Bpb::parse(&bytes[..512]).unwrap();
    for name in [b"NEW     BIN", b"NEWDIR     "] {
        let chain = chain_in(&bytes, &bpb, name);
        assert!(chain.iter().all(|c| !named.contains(c)), "{chain:?} takes one of {named:?}");
    }
    assert_no_new_problems(&img, &before, false);
    assert!(mcopy_out(&img, "NEW.BIN") == pattern(40_000, 3));
}

/// The scan reads a cross-linked directory's entries too (fsck.fat counts them): here a
/// file X names directory D's clusters, and a file G shares the clusters of D's file C;
/// G must not be truncated, although X is walked before D.
#[test]
fn the_entries_of_a_cross_linked_directory_are_scanned_too() {
    let dir = tempfile::tempdir().unwrap();
    let img = mkfs(dir.path(), &["-F", "16", "-s", "4"], 64 * 1024);
    let i = img.to_str().unwrap();
    let src = dir.path().join("src");
    run_ok("mmd", &["-i", i, "::/D"]);
    std::fs::write(&src, pattern(5_000, 1)).unwrap();
    run_ok("mcopy", &["-i", i, src.to_str().unwrap(), "::/D/C.BIN"]);
    for name in ["G.BIN", "X.BIN"] {
        run_ok("mcopy", &["-i", i, src.to_str().unwrap(), &format!("::/{name}")]);
    }
    let c_first = {
        let vol = Volume::open(&img, OpenOptions { read_only: true, ..OpenOptions::default() }).unwrap();
        let d = vol.lookup(ROOT, "D").unwrap();
        vol.first_cluster(vol.lookup(d, "C.BIN").unwrap()).unwrap()
    };
    let mut bytes = std::fs::read(&img).unwrap();
    let bpb = Bpb::parse(&bytes[..512]).unwrap();
    let d_first = first_cluster_in(&bytes, &bpb, b"D          ");
    for (name, cluster) in [(b"G       BIN", c_first), (b"X       BIN", d_first)] {
        let at = root_entry_at(&bytes, &bpb, name) + 26;
        bytes[at..at + 2].copy_from_slice(&(cluster as u16).to_le_bytes());
    }
    std::fs::write(&img, &bytes).unwrap();
    {
        let vol = open_rw(&img);
        let g = vol.lookup(ROOT, "G.BIN").unwrap();
        assert_eio("truncate G.BIN", vol.truncate(g, 0));
    }
    let c = run_ok("mcopy", &["-n", "-i", i, "::/D/C.BIN", "-"]);
    assert!(c == pattern(5_000, 1));
}
