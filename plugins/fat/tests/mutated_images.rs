//! The fuzz targets' entry points (`plugfs_fat::fuzzing`) over seeded random mutations of
//! real images, on stable Rust: what CI runs in place of cargo-fuzz. Images are made by
//! mkfs.fat and filled by mtools (files, directories, long and non-ASCII names); each round
//! flips a few bytes in the boot sector, the FATs or the directories and mounts and walks
//! the result. Any panic fails the test; a hang would never finish it (the walk and chain
//! following are bounded by construction).
//!
//! `PLUGFS_FAT_MUTATIONS` sets the rounds per image (default 300), `PLUGFS_FAT_FUZZ_SEED`
//! the seed.

use std::path::Path;
use std::process::Command;

use plugfs_fat::engine::bpb::Bpb;
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
        let mut m = image.to_vec();
        for _ in 0..1 + rng.below(8) {
            // Boot sector, FATs and root directory, or the first data clusters (where
            // mtools put the subdirectories).
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
        fuzzing::boot_sector(&m[..512]);
        fuzzing::directory(&m[data_offset.saturating_sub(8192)..(data_offset + 8192).min(m.len())]);
        if fuzzing::image(&m) > 0 {
            mounted += 1;
        }
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
