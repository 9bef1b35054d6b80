//! `plugfs-fat`: makes FAT images and tells what their boot sector says.
//!
//! ```text
//! plugfs-fat mkfs IMAGE --size SIZE [--fat 12|16|32] [--sector-size N] [--cluster-size N] [--label L]
//! plugfs-fat info IMAGE
//! plugfs-fat label IMAGE [NEW-LABEL]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use plugfs_fat::engine::mkfs::{self, Format};
use plugfs_fat::engine::names::Codepage;
use plugfs_fat::engine::{FatType, OpenOptions, Volume};

#[derive(Parser)]
#[command(name = "plugfs-fat", version, about = "Make FAT images and describe them (for plugfs's fat plugin)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The OEM code page that bytes above 0x7F in the label are read in (as the mount's
    /// `codepage` key, and vfat's `codepage=`): 437, 850, 852, ...
    #[arg(long, global = true, default_value_t = 437)]
    codepage: u16,
}

#[derive(Subcommand)]
enum Command {
    /// Create a new FAT image file (replacing what the file held).
    Mkfs {
        /// The image file to create.
        image: PathBuf,
        /// Volume size: bytes, or with a K, M, G or T suffix (powers of 1024).
        #[arg(long, value_parser = parse_size)]
        size: u64,
        /// FAT type; by default FAT32 from 512 MiB on, FAT12 up to 8 MiB, else FAT16.
        #[arg(long, value_parser = ["12", "16", "32"])]
        fat: Option<String>,
        /// Bytes per sector: 512, 1024, 2048 or 4096.
        #[arg(long, default_value_t = 512)]
        sector_size: u32,
        /// Bytes per cluster (a power of two, at most 128 sectors); chosen by size if not given.
        #[arg(long, value_parser = parse_size)]
        cluster_size: Option<u64>,
        /// Volume label: up to 11 characters.
        #[arg(long)]
        label: Option<String>,
    },
    /// Print what an image's boot sector says, and its free space.
    Info {
        /// The image file or block device.
        image: PathBuf,
    },
    /// Print the volume label, or set it (in the root directory and the boot sector).
    Label {
        /// The image file or block device.
        image: PathBuf,
        /// The new label: up to 11 characters, stored in upper case.
        new_label: Option<String>,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_uppercase() {
                'K' => 1u64 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("{s:?}: the suffix must be K, M, G or T")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size"))?;
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

fn mkfs(
    image: PathBuf,
    size: u64,
    fat: Option<String>,
    sector_size: u32,
    cluster_size: Option<u64>,
    label: Option<String>,
) -> Result<(), String> {
    let fat_type = fat.map(|f| match f.as_str() {
        "12" => FatType::Fat12,
        "16" => FatType::Fat16,
        _ => FatType::Fat32,
    });
    let cluster_size =
        cluster_size.map(|c| u32::try_from(c).map_err(|_| format!("cluster size {c} is too large"))).transpose()?;
    let format = Format { size, fat_type, sector_size, cluster_size, label, volume_id: mkfs::volume_id_now() };
    // Check the layout before touching the file.
    let layout = mkfs::plan(&format).map_err(|e| e.to_string())?;
    if let Some(dir) = image.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("writing the FATs {bar:40} {bytes}/{total_bytes}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    // Only large FATs are worth a bar.
    let fats = 2 * layout.sectors_per_fat as u64 * layout.sector_size as u64;
    if fats < 8 << 20 {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let bpb = mkfs::create_image(&image, &format, true, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .map_err(|e| format!("{}: {e}", image.display()))?;
    bar.finish_and_clear();
    println!(
        "{}: {} with {} clusters of {} bytes, {} bytes per sector",
        image.display(),
        bpb.fat_type,
        bpb.cluster_count,
        bpb.cluster_size(),
        bpb.bytes_per_sector
    );
    Ok(())
}

/// Code page `number`, or the error naming the ones there are.
fn codepage(number: u16) -> Result<Codepage, String> {
    Codepage::new(number).ok_or_else(|| {
        let known: Vec<String> = Codepage::supported().iter().map(u16::to_string).collect();
        format!("--codepage {number}: not a supported OEM code page ({})", known.join(", "))
    })
}

fn info(image: PathBuf, codepage: Codepage) -> Result<(), String> {
    let vol = Volume::open(&image, OpenOptions { read_only: true, codepage, ..OpenOptions::default() })
        .map_err(|e| format!("{}: {e}", image.display()))?;
    let b = vol.bpb();
    let space = vol.space();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).trim_end().to_string();
    println!("image:               {}", image.display());
    println!("type:                {} (by cluster count)", b.fat_type);
    println!("OEM name:            {}", text(&b.oem_name));
    println!("bytes per sector:    {}", b.bytes_per_sector);
    println!("sectors per cluster: {}", b.sectors_per_cluster);
    println!("cluster size:        {}", b.cluster_size());
    println!("reserved sectors:    {}", b.reserved_sectors);
    println!("FATs:                {}", b.num_fats);
    println!("sectors per FAT:     {}", b.sectors_per_fat);
    println!("root entries:        {}", b.root_entries);
    println!("total sectors:       {}", b.total_sectors);
    println!("volume size:         {}", b.volume_bytes());
    println!("media:               {:#04x}", b.media);
    if b.fat_type == FatType::Fat32 {
        println!("root cluster:        {}", b.root_cluster);
        println!("FSInfo sector:       {}", b.fsinfo_sector);
        println!("backup boot sector:  {}", b.backup_boot_sector);
    }
    println!("volume id:           {:08X}", b.volume_id);
    println!("label:               {}", vol.label().unwrap_or_default());
    println!("clusters:            {}", space.clusters);
    println!("free clusters:       {}", space.free_clusters);
    println!("free bytes:          {}", space.free_clusters as u64 * space.cluster_size as u64);
    Ok(())
}

fn label(image: PathBuf, new_label: Option<String>, codepage: Codepage) -> Result<(), String> {
    let read_only = new_label.is_none();
    let tz_offset = plugfs_fat::engine::time::local_offset();
    let options = OpenOptions { read_only, tz_offset, codepage, ..OpenOptions::default() };
    let vol = Volume::open(&image, options).map_err(|e| format!("{}: {e}", image.display()))?;
    match new_label {
        Some(l) => vol.set_label(&l).and_then(|()| vol.unmount()).map_err(|e| format!("{}: {e}", image.display())),
        None => {
            println!("{}", vol.label().unwrap_or_default());
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Mkfs { image, size, fat, sector_size, cluster_size, label } => {
            mkfs(image, size, fat, sector_size, cluster_size, label)
        }
        Command::Info { image } => codepage(cli.codepage).and_then(|cp| info(image, cp)),
        Command::Label { image, new_label } => codepage(cli.codepage).and_then(|cp| label(image, new_label, cp)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plugfs-fat: {e}");
            ExitCode::FAILURE
        }
    }
}
