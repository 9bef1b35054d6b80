//! Writes the seed corpus into `corpus/<target>/`: small real images made by the engine
//! (empty; files, directories, a symlink, xattrs and a snapshot), their blocks as node,
//! superblock and snapshot-table seeds. Run by scripts/fuzz-wfs.sh.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use plugfs_wfs::engine::format::BLOCK;
use plugfs_wfs::engine::{MemDevice, OpenOptions, Volume, mkfs};

fn image(populated: bool) -> Vec<u8> {
    let blocks = 64;
    let dev = Arc::new(MemDevice::new(blocks * BLOCK as u64));
    mkfs(&*dev, blocks).unwrap();
    if populated {
        let mut vol = Volume::open(dev.clone(), OpenOptions::default()).unwrap();
        let dir = vol.create(1, b"dir", 0o40755, 0, 0, 0).unwrap();
        for i in 0..5u64 {
            let f = vol.create(dir, format!("f{i}").as_bytes(), 0o100644, 0, 0, 0).unwrap();
            vol.write(f, i * 4096, &vec![i as u8; 5000]).unwrap();
        }
        vol.symlink(1, b"link", b"dir/f0", 0, 0).unwrap();
        vol.set_xattr(dir, b"user.x", b"y", true, false).unwrap();
        vol.commit().unwrap();
        vol.snapshot_create("s").unwrap();
        vol.commit().unwrap();
    }
    dev.bytes()
}

fn main() {
    let corpus = Path::new("corpus");
    for target in ["image", "node", "superblock", "snapshots"] {
        fs::create_dir_all(corpus.join(target)).unwrap();
    }
    for (name, populated) in [("empty", false), ("populated", true)] {
        let img = image(populated);
        // The image target's first byte: 1 recomputes checksums.
        let mut seed = vec![1u8];
        seed.extend_from_slice(&img);
        fs::write(corpus.join("image").join(name), seed).unwrap();
        for (i, block) in img.chunks(BLOCK).enumerate().filter(|(_, b)| b.iter().any(|&x| x != 0)) {
            let target = match &block[..4] {
                b"WFS\0" => "superblock",
                b"WFSn" => "node",
                b"WFSs" => "snapshots",
                _ => continue,
            };
            let body = if target == "superblock" { &block[8..] } else { block };
            fs::write(corpus.join(target).join(format!("{name}-{i}")), body).unwrap();
        }
    }
}
