//! The fuzz targets' entry points (`plugfs_fat::fuzzing`) over seeded random mutations of
//! real images, on stable Rust: what CI runs in place of cargo-fuzz. Images are made by
//! mkfs.fat and filled by mtools (files, directories, long and non-ASCII names); each round
//! flips a few bytes in the boot sector, the FATs or the directories and mounts and walks
//! the result. Any panic fails the test; a hang would never finish it (the walk and chain
//! following are bounded by construction).
//!
//! A second test mounts mutated images read-write and changes every file it reaches, to
//! check that damage never spreads: every file left alone, or whose change was refused,
//! reads afterwards as it did before.
//!
//! `PLUGFS_FAT_MUTATIONS` sets the rounds per image (default 300; the read-write test runs
//! a third of them), `PLUGFS_FAT_FUZZ_SEED` the seed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use plugfs_fat::engine::bpb::Bpb;
use plugfs_fat::engine::{Ino, OpenOptions, ROOT, Volume};
use plugfs_fat::fuzzing;

fn tool(name: &str, args: &[&str]) {
    let out = Command::new(name)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name} ({e}): install dosfstools and mtools"));
    assert!(
        out.status.success(),
        "{name} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).map(|v| v.parse().expect("a number")).unwrap_or(default)
}

/// A filled image made by mkfs.fat `args`, cut to its metadata plus 1 MiB of data (the
/// engine mounts a short image and answers EIO past its end), and its data offset.
fn filled_image(dir: &Path, args: &[&str], kib: u64) -> (Vec<u8>, usize) {
    let img = dir.join("img");
    let _ = std::fs::remove_file(&img);
    let kib = kib.to_string();
    let mut all = args.to_vec();
    all.extend(["-C", img.to_str().unwrap(), &kib]);
    tool("mkfs.fat", &all);
    let i = img.to_str().unwrap();
    let src = dir.join("src");
    let _ = std::fs::remove_dir_all(&src);
    std::fs::create_dir_all(src.join("A long directory name/deeper")).unwrap();
    std::fs::write(src.join("readme.txt"), b"hello\n").unwrap();
    std::fs::write(src.join("Größere Datei mit langem Namen.bin"), vec![7u8; 70_000]).unwrap();
    std::fs::write(src.join("A long directory name/deeper/inner file.txt"), vec![1u8; 5000]).unwrap();
    for n in 0..40 {
        std::fs::write(src.join(format!("A long directory name/entry number {n}.dat")), format!("{n}")).unwrap();
    }
    tool(
        "mcopy",
        &[
            "-s",
            "-i",
            i,
            src.join("readme.txt").to_str().unwrap(),
            src.join("Größere Datei mit langem Namen.bin").to_str().unwrap(),
            src.join("A long directory name").to_str().unwrap(),
            "::/",
        ],
    );
    let mut bytes = std::fs::read(&img).unwrap();
    let bpb = Bpb::parse(&bytes).expect("mkfs.fat's boot sector parses");
    bytes.truncate((bpb.data_offset as usize + (1 << 20)).min(bytes.len()));
    (bytes, bpb.data_offset as usize)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() as usize) % n.max(1)
    }
}

fn mutate_and_walk(name: &str, image: &[u8], data_offset: usize) {
    let rounds = env_number("PLUGFS_FAT_MUTATIONS", 300);
    let mut rng = Rng(env_number("PLUGFS_FAT_FUZZ_SEED", 1) ^ name.len() as u64);
    let pristine = fuzzing::image(image);
    assert!(pristine >= 40, "{name}: the unmutated image walks only {pristine} nodes");
    let mut mounted = 0;
    for _ in 0..rounds {
        let m = mutate(&mut rng, image, data_offset);
        fuzzing::boot_sector(&m[..512]);
        fuzzing::directory(&m[data_offset.saturating_sub(8192)..(data_offset + 8192).min(m.len())]);
        if fuzzing::image(&m) > 0 {
            mounted += 1;
        }
        fuzzing::image_rw(&m);
    }
    // Most mutations leave a mountable image, so the walk really ran over damage.
    assert!(mounted * 2 > rounds as usize, "{name}: only {mounted} of {rounds} mutated images mounted");
}

#[test]
fn mutated_fat12_fat16_and_fat32_images_never_panic_the_parsers() {
    let dir = tempfile::tempdir().unwrap();
    for (name, args, kib) in [
        ("FAT12", &["-F", "12"][..], 1440),
        ("FAT16", &["-F", "16", "-s", "2"][..], 20 * 1024),
        ("FAT32", &["-F", "32", "-s", "1"][..], 40 * 1024),
        ("FAT16, 4096-byte sectors", &["-F", "16", "-S", "4096", "-s", "1"][..], 64 * 1024),
    ] {
        let (image, data_offset) = filled_image(dir.path(), args, kib);
        mutate_and_walk(name, &image, data_offset);
    }
}

#[test]
fn random_directory_bytes_never_panic_the_directory_parser() {
    let mut rng = Rng(99);
    for _ in 0..2_000 {
        let len = rng.below(4096);
        let mut d: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        // Many long-name entries, so checksums and ordinals get exercised.
        for slot in 0..len / 32 {
            if rng.below(2) == 0 {
                d[slot * 32 + 11] = 0x0F;
            }
        }
        fuzzing::directory(&d);
    }
}

/// `image` with 1 to 8 bytes set to 0, 0xFF or a random value: in the boot sector, the
/// FATs and root directory, or the first data clusters (where mtools put the
/// subdirectories).
fn mutate(rng: &mut Rng, image: &[u8], data_offset: usize) -> Vec<u8> {
    let mut m = image.to_vec();
    for _ in 0..1 + rng.below(8) {
        let at = match rng.below(3) {
            0 => rng.below(512),
            1 => rng.below(data_offset),
            _ => data_offset + rng.below(64 * 1024),
        };
        if let Some(b) = m.get_mut(at) {
            *b = match rng.below(4) {
                0 => 0,
                1 => 0xFF,
                _ => rng.next() as u8,
            };
        }
    }
    m
}

/// The files `vol` reaches (bounded), with their directory and name: path -> (directory,
/// name, id).
fn reach(vol: &Volume) -> BTreeMap<String, (Ino, String, Ino)> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![(ROOT, String::new(), 0)];
    let mut seen = 0;
    while let Some((dir, prefix, depth)) = dirs.pop() {
        let Ok(entries) = vol.list(dir, None, 2_000) else { continue };
        for e in entries {
            seen += 1;
            if seen > 2_000 {
                return out;
            }
            let path = format!("{prefix}/{}", e.name);
            if !e.is_dir {
                out.insert(path, (dir, e.name, e.ino));
            } else if depth < 8 {
                dirs.push((e.ino, path, depth + 1));
            }
        }
    }
    out
}

/// What a read-only mount of `img` reads of every file it reaches: None for an error. (No
/// `flock`, unlike `Volume::open`: a process another test forks holds the image's
/// descriptor, and its lock, until it execs, and a refused mount would read as nothing.) A
/// file that answers an error is read again in a mount of its own: in one mount the second
/// of a cross-linked pair answers EIO, and a change that spread into it must show.
fn contents(img: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    let open =
        || Volume::from_file(std::fs::File::open(img)?, OpenOptions { read_only: true, ..OpenOptions::default() });
    let read = |vol: &Volume, ino: Ino| -> Option<Vec<u8>> {
        let size = vol.stat(ino).ok()?.size.min(1 << 20) as usize;
        let mut buf = vec![0u8; size];
        let n = vol.read(ino, 0, &mut buf).ok()?;
        buf.truncate(n);
        Some(buf)
    };
    let Ok(vol) = open() else { return BTreeMap::new() };
    let mut out: BTreeMap<String, Option<Vec<u8>>> =
        reach(&vol).into_iter().map(|(path, (_, _, ino))| (path, read(&vol, ino))).collect();
    drop(vol);
    for (path, got) in out.iter_mut().filter(|(_, got)| got.is_none()) {
        let Ok(vol) = open() else { continue };
        let mut ino = Some(ROOT);
        for name in path.split('/').skip(1) {
            ino = ino.and_then(|dir| vol.lookup(dir, name).ok());
        }
        *got = ino.and_then(|ino| read(&vol, ino));
    }
    out
}

/// Sets FAT entry `n` to `value` in every FAT copy.
fn set_fat(m: &mut [u8], bpb: &Bpb, n: u32, value: u32) {
    for copy in 0..bpb.num_fats {
        let base = bpb.fat_offset(copy) as usize;
        match bpb.fat_type {
            plugfs_fat::engine::FatType::Fat12 => {
                let at = base + (n + n / 2) as usize;
                if at + 1 >= m.len() {
                    return;
                }
                let old = u16::from_le_bytes([m[at], m[at + 1]]);
                let v = value as u16 & 0xFFF;
                let new = if n & 1 == 1 { (old & 0x000F) | (v << 4) } else { (old & 0xF000) | v };
                m[at..at + 2].copy_from_slice(&new.to_le_bytes());
            }
            plugfs_fat::engine::FatType::Fat16 => {
                let at = base + 2 * n as usize;
                m[at..at + 2].copy_from_slice(&(value as u16).to_le_bytes());
            }
            plugfs_fat::engine::FatType::Fat32 => {
                let at = base + 4 * n as usize;
                m[at..at + 4].copy_from_slice(&value.to_le_bytes());
            }
        }
    }
}

fn get_fat(m: &[u8], bpb: &Bpb, n: u32) -> u32 {
    let base = bpb.fat_offset(bpb.active_fat) as usize;
    match bpb.fat_type {
        plugfs_fat::engine::FatType::Fat12 => {
            let at = base + (n + n / 2) as usize;
            let v = u16::from_le_bytes([m[at], m[at + 1]]) as u32;
            if n & 1 == 1 { v >> 4 } else { v & 0xFFF }
        }
        plugfs_fat::engine::FatType::Fat16 => {
            u16::from_le_bytes([m[base + 2 * n as usize], m[base + 2 * n as usize + 1]]) as u32
        }
        plugfs_fat::engine::FatType::Fat32 => {
            let b = &m[base + 4 * n as usize..base + 4 * n as usize + 4];
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]) & 0x0FFF_FFFF
        }
    }
}

/// Damage aimed at what spreads: links one used cluster to another (two chains merging, or
/// a loop), or gives a root directory entry another's first cluster (two entries naming one
/// chain), or a size larger than its chain; else a random mutation as above.
fn damage(rng: &mut Rng, image: &[u8], data_offset: usize) -> Vec<u8> {
    let mut m = image.to_vec();
    let bpb = Bpb::parse(&m[..512]).expect("the unmutated boot sector parses");
    let max = bpb.cluster_count + 1;
    let used: Vec<u32> = (2..=max).filter(|&c| get_fat(&m, &bpb, c) != 0).collect();
    let root = match bpb.fat_type {
        plugfs_fat::engine::FatType::Fat32 => bpb.cluster_offset(bpb.root_cluster) as usize,
        _ => bpb.root_dir_offset as usize,
    };
    let entries: Vec<usize> = (0..64)
        .map(|s| root + s * 32)
        .filter(|&at| {
            at + 32 <= m.len() && m[at] != 0 && m[at] != 0xE5 && m[at + 11] & 0x3F != 0x0F && m[at + 11] & 0x08 == 0
        })
        .collect();
    match rng.below(4) {
        0 if used.len() > 1 => {
            let (x, y) = (used[rng.below(used.len())], used[rng.below(used.len())]);
            set_fat(&mut m, &bpb, x, y);
        }
        1 if entries.len() > 1 => {
            let (from, to) = (entries[rng.below(entries.len())], entries[rng.below(entries.len())]);
            let first: [u8; 2] = [m[from + 26], m[from + 27]];
            let high: [u8; 2] = [m[from + 20], m[from + 21]];
            m[to + 26..to + 28].copy_from_slice(&first);
            m[to + 20..to + 22].copy_from_slice(&high);
        }
        2 if !entries.is_empty() => {
            let at = entries[rng.below(entries.len())] + 28;
            let size = u32::from_le_bytes([m[at], m[at + 1], m[at + 2], m[at + 3]]);
            m[at..at + 4].copy_from_slice(&(size + bpb.cluster_size() * (1 + rng.below(3) as u32)).to_le_bytes());
        }
        _ => m = mutate(rng, image, data_offset),
    }
    m
}

/// Mounts `img` read-write and changes what it reaches: a write, an append, a truncate
/// shorter or longer, an unlink, or nothing, for each file; a new file and a new directory
/// in each directory. Returns the files changed (whose change succeeded).
fn change_everything(img: &Path, rng: &mut Rng) -> BTreeSet<String> {
    let mut changed = BTreeSet::new();
    let Ok(file) = std::fs::OpenOptions::new().read(true).write(true).open(img) else { return changed };
    let Ok(vol) = Volume::from_file(file, OpenOptions { noatime: true, ..OpenOptions::default() }) else {
        return changed;
    };
    let files = reach(&vol);
    let mut dirs = BTreeSet::from([ROOT]);
    for (path, (dir, name, ino)) in files {
        dirs.insert(dir);
        let size = vol.stat(ino).map(|m| m.size).unwrap_or(0);
        let ok = match rng.below(6) {
            0 => vol.write(ino, rng.below(size as usize + 100) as u64, &[0x5A; 3000]).is_ok(),
            1 => vol.append(ino, &[0xA5; 100]).is_ok(),
            2 => vol.truncate(ino, size / 2).is_ok(),
            3 => vol.truncate(ino, size + 5000).is_ok(),
            4 => vol.unlink(dir, &name).is_ok() && vol.evict(ino).is_ok(),
            _ => false,
        };
        if ok {
            changed.insert(path);
        }
    }
    for (n, dir) in dirs.into_iter().enumerate() {
        if let Ok(f) = vol.create(dir, &format!("new file {n}"), false) {
            let _ = vol.write(f, 0, &[0xC3; 9000]);
        }
        let _ = vol.create(dir, &format!("new dir {n}"), true);
    }
    changed
}

#[test]
fn mutated_images_written_to_never_change_the_files_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("mutated.img");
    let rounds = env_number("PLUGFS_FAT_MUTATIONS", 300).div_ceil(3);
    for (name, args, kib) in [
        ("FAT12", &["-F", "12"][..], 1440),
        ("FAT16", &["-F", "16", "-s", "2"][..], 20 * 1024),
        ("FAT32", &["-F", "32", "-s", "1"][..], 40 * 1024),
    ] {
        let (image, data_offset) = filled_image(dir.path(), args, kib);
        let mut rng = Rng(env_number("PLUGFS_FAT_FUZZ_SEED", 1) ^ 0x5eed ^ name.len() as u64);
        let mut compared = 0;
        for round in 0..rounds {
            std::fs::write(&img, damage(&mut rng, &image, data_offset)).unwrap();
            let before = contents(&img);
            let changed = change_everything(&img, &mut rng);
            let after = contents(&img);
            for (path, was) in &before {
                let Some(was) = was else { continue };
                if changed.contains(path) {
                    continue;
                }
                compared += 1;
                match after.get(path) {
                    Some(Some(now)) if now == was => {}
                    now => panic!(
                        "{name}, round {round}: {path} was left alone but reads {} now",
                        match now {
                            None => "as missing".to_string(),
                            Some(None) => "as an error".to_string(),
                            Some(Some(b)) => format!("{} other bytes", b.len()),
                        }
                    ),
                }
            }
        }
        assert!(compared > rounds as usize * 3, "{name}: only {compared} files compared");
    }
}
