//! `plugfs-wfs`: makes, checks, scrubs, snapshots and describes WFS images.
//!
//! Exit codes follow fsck(8): 0 clean, 4 errors left uncorrected, 8 operational error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use plugfs_wfs::engine::{self, OpenOptions, Volume};
use plugfs_wfs::plugin::{create_image, open_image};

#[derive(Parser)]
#[command(name = "plugfs-wfs", version, about = "Make, check, scrub, snapshot and describe WFS images")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Creates a new image file with an empty filesystem.
    Mkfs {
        /// The image file (must not exist or be empty).
        image: PathBuf,
        /// Size: bytes, or with K, M, G or T (powers of 1024).
        #[arg(long)]
        size: String,
    },
    /// Checks every structure, link and checksum; exit 0 when clean, 4 when damaged.
    Fsck {
        /// The image file.
        image: PathBuf,
    },
    /// Reads every block in use and verifies its checksum, naming what is damaged.
    Scrub {
        /// The image file.
        image: PathBuf,
    },
    /// Creates, lists or deletes snapshots (of an image that is not mounted; while mounted,
    /// set the xattr `user.wfs.snapshot` on the mount's root to the snapshot's name).
    Snapshot {
        #[command(subcommand)]
        action: SnapshotAction,
    },
    /// Describes an image: size, space, generation, snapshots.
    Info {
        /// The image file.
        image: PathBuf,
    },
}

#[derive(Subcommand)]
enum SnapshotAction {
    /// Takes a snapshot of the image's current state.
    Create { image: PathBuf, name: String },
    /// Lists the snapshots.
    List { image: PathBuf },
    /// Deletes a snapshot, returning the space only it used.
    Delete { image: PathBuf, name: String },
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("{s:?}: unknown size suffix (use K, M, G or T)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size"))?;
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

fn open(image: &Path, read_only: bool) -> Result<Volume, String> {
    let dev = open_image(image, read_only)?;
    Volume::open(Arc::new(dev), OpenOptions { read_only, ..OpenOptions::default() })
        .map_err(|e| format!("{}: {e}", image.display()))
}

fn device(image: &Path) -> Result<engine::FileDevice, String> {
    open_image(image, true)
}

fn print_report(r: &engine::Report) {
    for p in &r.problems {
        println!("damaged: {p}");
    }
}

fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Command::Mkfs { image, size } => {
            create_image(&image, parse_size(&size)?)?;
            println!("{}: made a WFS image of {size}", image.display());
        }
        Command::Fsck { image } => {
            let dev = device(&image)?;
            let r = engine::fsck(&dev, true);
            print_report(&r);
            if !r.is_clean() {
                println!("{}: {} problems", image.display(), r.problems.len());
                return Ok(ExitCode::from(4));
            }
            println!(
                "{}: clean (generation {}, {} inodes, {} blocks in use, {} verified)",
                image.display(),
                r.generation,
                r.inodes,
                r.used_blocks,
                r.verified_blocks
            );
        }
        Command::Scrub { image } => {
            let dev = device(&image)?;
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} blocks {elapsed}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let r = engine::scrub(&dev, &mut |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            });
            bar.finish_and_clear();
            print_report(&r);
            if !r.is_clean() {
                println!("{}: {} damaged", image.display(), r.problems.len());
                return Ok(ExitCode::from(4));
            }
            println!("{}: {} data blocks verified, no damage", image.display(), r.verified_blocks);
        }
        Command::Snapshot { action } => match action {
            SnapshotAction::Create { image, name } => {
                open(&image, false)?.snapshot_create(&name).map_err(|e| format!("snapshot {name:?}: {e}"))?;
                println!("{}: took snapshot {name:?}", image.display());
            }
            SnapshotAction::Delete { image, name } => {
                open(&image, false)?.snapshot_delete(&name).map_err(|e| format!("snapshot {name:?}: {e}"))?;
                println!("{}: deleted snapshot {name:?}", image.display());
            }
            SnapshotAction::List { image } => {
                for s in open(&image, true)?.snapshots() {
                    println!("{}\tgeneration {}\tcreated {}", s.name, s.generation, s.created);
                }
            }
        },
        Command::Info { image } => {
            let v = open(&image, true)?;
            let sb = v.superblock();
            let space = v.space();
            println!("image:        {}", image.display());
            println!("format:       WFS version {}", engine::format::VERSION);
            println!("block size:   {}", engine::format::BLOCK);
            println!("blocks:       {} ({} free)", space.total, space.free);
            println!("inodes:       {}", space.inodes);
            println!("generation:   {}", sb.generation);
            println!("tree height:  {} ({} nodes)", sb.height, sb.tree_nodes);
            let features = if sb.ro_compat & engine::format::RO_COMPAT_FREE_SPACE_TREE != 0 {
                "free-space-tree"
            } else {
                "none (free space is found by walking at mount; the first commit adds the space map)"
            };
            println!("features:     {features}");
            println!("snapshots:    {}", v.snapshots().len());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("plugfs-wfs: {e}");
            ExitCode::from(8)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(super::parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(super::parse_size("4096").unwrap(), 4096);
        assert!(super::parse_size("1Q").is_err());
        assert!(super::parse_size("99999999999T").is_err());
    }
}
