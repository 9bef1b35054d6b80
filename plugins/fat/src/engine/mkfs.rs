//! Making a new FAT volume, the way mkfs.fat lays one out: the type chosen by size unless
//! asked for, a cluster size that gives the type a valid cluster count, two FATs, a
//! FAT32 FSInfo sector and backup boot sector.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::bpb::{Bpb, FatType};
use super::dir::{ATTR_VOLUME_ID, ShortEntry};
use super::error::{Error, Result};
use super::time;

/// What to make.
#[derive(Clone, Debug)]
pub struct Format {
    /// Volume size in bytes (rounded down to whole sectors).
    pub size: u64,
    /// None: FAT32 from 512 MiB, FAT12 up to 8 MiB when it fits, else FAT16 (close to
    /// what mkfs.fat picks).
    pub fat_type: Option<FatType>,
    pub sector_size: u32,
    /// Bytes per cluster; None picks one by size.
    pub cluster_size: Option<u32>,
    pub label: Option<String>,
    /// Volume serial number.
    pub volume_id: u32,
}

/// The layout a format would have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub fat_type: FatType,
    pub sector_size: u32,
    pub sectors_per_cluster: u32,
    pub reserved_sectors: u32,
    pub root_entries: u32,
    pub sectors_per_fat: u32,
    pub total_sectors: u32,
    pub clusters: u32,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::Invalid(msg.into())
}

fn default_cluster(t: FatType, size: u64) -> u32 {
    const M: u64 = 1024 * 1024;
    match t {
        FatType::Fat12 => 512,
        FatType::Fat16 if size <= 128 * M => 2048,
        FatType::Fat16 if size <= 256 * M => 4096,
        FatType::Fat16 if size <= 512 * M => 8192,
        FatType::Fat16 if size <= 1024 * M => 16384,
        FatType::Fat16 => 32768,
        FatType::Fat32 if size <= 260 * M => 512,
        FatType::Fat32 if size <= 8192 * M => 4096,
        FatType::Fat32 if size <= 16384 * M => 8192,
        FatType::Fat32 if size <= 32768 * M => 16384,
        FatType::Fat32 => 32768,
    }
}

fn layout_for(t: FatType, total: u32, ss: u32, spc: u32, floppy: bool) -> Layout {
    let (reserved, root_entries): (u32, u32) = match t {
        FatType::Fat32 => (32, 0),
        _ if floppy => (1, 224),
        _ => (1, 512),
    };
    let root_secs = (root_entries * 32).div_ceil(ss);
    let bits = t.bits() as u64;
    let mut fat = 1u32;
    let mut clusters;
    loop {
        let meta = reserved as u64 + 2 * fat as u64 + root_secs as u64;
        clusters = (total as u64).saturating_sub(meta) / spc as u64;
        let need = ((clusters + 2) * bits).div_ceil(8).div_ceil(ss as u64) as u32;
        if need <= fat {
            break;
        }
        fat = need;
    }
    Layout {
        fat_type: t,
        sector_size: ss,
        sectors_per_cluster: spc,
        reserved_sectors: reserved,
        root_entries,
        sectors_per_fat: fat,
        total_sectors: total,
        clusters: clusters as u32,
    }
}

fn fits(l: &Layout) -> std::cmp::Ordering {
    let (lo, hi) = match l.fat_type {
        FatType::Fat12 => (1, 4084),
        FatType::Fat16 => (4085, 65524),
        FatType::Fat32 => (65525, 0x0FFF_FFF5),
    };
    if l.clusters < lo {
        std::cmp::Ordering::Less
    } else if l.clusters > hi {
        std::cmp::Ordering::Greater
    } else {
        std::cmp::Ordering::Equal
    }
}

/// Chooses the layout for `f`, or says why there is none.
pub fn plan(f: &Format) -> Result<Layout> {
    let ss = f.sector_size;
    if !matches!(ss, 512 | 1024 | 2048 | 4096) {
        return Err(bad(format!("sector size {ss}: use 512, 1024, 2048 or 4096")));
    }
    let total = u32::try_from(f.size / ss as u64).map_err(|_| bad("the volume is larger than FAT can address"))?;
    let floppy = f.size <= 2880 * 1024;
    let types: Vec<FatType> = match f.fat_type {
        Some(t) => vec![t],
        None if f.size >= 512 * 1024 * 1024 => vec![FatType::Fat32],
        None if f.size <= 8 * 1024 * 1024 => vec![FatType::Fat12, FatType::Fat16],
        None => vec![FatType::Fat16],
    };
    let mut last_err = String::new();
    for t in types {
        let mut cs = match f.cluster_size {
            Some(cs) => {
                if !cs.is_power_of_two() || cs < ss || cs / ss > 128 {
                    return Err(bad(format!(
                        "cluster size {cs}: a power of two from the sector size ({ss}) to 128 sectors"
                    )));
                }
                cs
            }
            None => default_cluster(t, f.size).max(ss),
        };
        loop {
            let l = layout_for(t, total, ss, cs / ss, floppy);
            match fits(&l) {
                std::cmp::Ordering::Equal => return Ok(l),
                order => {
                    last_err = format!(
                        "{} bytes give {} clusters of {cs} bytes, {} for {t}",
                        f.size,
                        l.clusters,
                        if order == std::cmp::Ordering::Less { "too few" } else { "too many" }
                    );
                    if f.cluster_size.is_some() {
                        break;
                    }
                    if order == std::cmp::Ordering::Greater && cs / ss < 128 {
                        cs *= 2;
                    } else if order == std::cmp::Ordering::Less && cs > ss {
                        cs /= 2;
                    } else {
                        break;
                    }
                }
            }
        }
    }
    Err(bad(last_err))
}

/// Label bytes: upper case, space padded, checked like `Volume::set_label`.
fn label_bytes(label: Option<&str>) -> Result<[u8; 11]> {
    let mut raw = *b"NO NAME    ";
    if let Some(l) = label {
        let upper = l.to_uppercase();
        if upper.is_empty()
            || upper.len() > 11
            || !upper.chars().all(|c| c.is_ascii_alphanumeric() || " $%'-_@~`!(){}^#&".contains(c))
        {
            return Err(bad(format!("label {l:?}: up to 11 ASCII letters, digits and $%'-_@~`!(){{}}^#&")));
        }
        raw = [b' '; 11];
        raw[..upper.len()].copy_from_slice(upper.as_bytes());
    }
    Ok(raw)
}

/// Writes a new volume to `file` (already sized by the caller), calling `progress` with
/// (bytes written, bytes to write) as the FATs are written.
pub fn format(file: &File, f: &Format, mut progress: impl FnMut(u64, u64)) -> Result<Bpb> {
    let l = plan(f)?;
    let label = label_bytes(f.label.as_deref())?;
    let ss = l.sector_size as usize;
    let floppy = f.size <= 2880 * 1024 && l.fat_type == FatType::Fat12;
    let media: u8 = if floppy { 0xF0 } else { 0xF8 };
    let mut boot = vec![0u8; ss];
    let fat32 = l.fat_type == FatType::Fat32;
    boot[..3].copy_from_slice(if fat32 { &[0xEB, 0x58, 0x90] } else { &[0xEB, 0x3C, 0x90] });
    boot[3..11].copy_from_slice(b"PLUGFS  ");
    boot[11..13].copy_from_slice(&(l.sector_size as u16).to_le_bytes());
    boot[13] = l.sectors_per_cluster as u8;
    boot[14..16].copy_from_slice(&(l.reserved_sectors as u16).to_le_bytes());
    boot[16] = 2;
    boot[17..19].copy_from_slice(&(l.root_entries as u16).to_le_bytes());
    if l.total_sectors < 65536 && !fat32 {
        boot[19..21].copy_from_slice(&(l.total_sectors as u16).to_le_bytes());
    } else {
        boot[32..36].copy_from_slice(&l.total_sectors.to_le_bytes());
    }
    boot[21] = media;
    if !fat32 {
        boot[22..24].copy_from_slice(&(l.sectors_per_fat as u16).to_le_bytes());
    }
    boot[24..26].copy_from_slice(&(if floppy { 18u16 } else { 32 }).to_le_bytes());
    boot[26..28].copy_from_slice(&(if floppy { 2u16 } else { 64 }).to_le_bytes());
    let ext = if fat32 {
        boot[36..40].copy_from_slice(&l.sectors_per_fat.to_le_bytes());
        boot[44..48].copy_from_slice(&2u32.to_le_bytes());
        boot[48..50].copy_from_slice(&1u16.to_le_bytes());
        boot[50..52].copy_from_slice(&6u16.to_le_bytes());
        64
    } else {
        36
    };
    boot[ext] = if floppy { 0 } else { 0x80 };
    boot[ext + 2] = 0x29;
    boot[ext + 3..ext + 7].copy_from_slice(&f.volume_id.to_le_bytes());
    boot[ext + 7..ext + 18].copy_from_slice(&label);
    let fs_type: &[u8; 8] = match l.fat_type {
        FatType::Fat12 => b"FAT12   ",
        FatType::Fat16 => b"FAT16   ",
        FatType::Fat32 => b"FAT32   ",
    };
    boot[ext + 18..ext + 26].copy_from_slice(fs_type);
    boot[510] = 0x55;
    boot[511] = 0xAA;
    let bpb = Bpb::parse(&boot)?;
    debug_assert_eq!(bpb.fat_type, l.fat_type);

    // The FATs: two reserved entries (and the FAT32 root directory's cluster).
    let fat_bytes = l.sectors_per_fat as u64 * ss as u64;
    let mut head = vec![0u8; ss];
    match l.fat_type {
        FatType::Fat12 => head[..3].copy_from_slice(&[media, 0xFF, 0xFF]),
        FatType::Fat16 => head[..4].copy_from_slice(&[media, 0xFF, 0xFF, 0xFF]),
        FatType::Fat32 => {
            head[..4].copy_from_slice(&(0x0FFF_FF00 | media as u32).to_le_bytes());
            head[4..8].copy_from_slice(&0x0FFF_FFFFu32.to_le_bytes());
            head[8..12].copy_from_slice(&0x0FFF_FFFFu32.to_le_bytes());
        }
    }
    let total_work = 2 * fat_bytes;
    let chunk = vec![0u8; 1 << 20];
    let mut done = 0u64;
    for n in 0..2 {
        let base = bpb.fat_offset(n);
        file.write_all_at(&head, base)?;
        let mut at = ss as u64;
        while at < fat_bytes {
            let k = (fat_bytes - at).min(chunk.len() as u64) as usize;
            file.write_all_at(&chunk[..k], base + at)?;
            at += k as u64;
            done += k as u64;
            progress(done, total_work);
        }
    }
    // The root directory, empty but for the label.
    let root_bytes = if fat32 { bpb.cluster_size() as usize } else { l.root_entries as usize * 32 };
    let mut root = vec![0u8; root_bytes];
    if f.label.is_some() {
        let e = ShortEntry { name: label, attr: ATTR_VOLUME_ID, modified: time::now(0), ..ShortEntry::default() };
        root[..32].copy_from_slice(&e.encode());
    }
    let root_at = if fat32 { bpb.cluster_offset(2) } else { bpb.root_dir_offset };
    file.write_all_at(&root, root_at)?;
    // Reserved sectors: zero them, then the boot sector (and FAT32's FSInfo and backups).
    file.write_all_at(&vec![0u8; l.reserved_sectors as usize * ss], 0)?;
    if fat32 {
        let mut info = vec![0u8; ss];
        info[..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
        info[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
        info[488..492].copy_from_slice(&(l.clusters - 1).to_le_bytes());
        info[492..496].copy_from_slice(&3u32.to_le_bytes());
        info[508..512].copy_from_slice(&0xAA55_0000u32.to_le_bytes());
        file.write_all_at(&info, ss as u64)?;
        file.write_all_at(&boot, 6 * ss as u64)?;
        file.write_all_at(&info, 7 * ss as u64)?;
    }
    file.write_all_at(&boot, 0)?;
    file.sync_all()?;
    progress(total_work, total_work);
    Ok(bpb)
}

/// A volume serial number from the clock, as mkfs.fat makes one.
pub fn volume_id_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| (d.as_secs() as u32) ^ d.subsec_nanos())
        .unwrap_or(0)
}

/// Creates the image file `path` sized and formatted as `f` says: the layout is checked
/// before the file is touched; with `replace` an existing file is truncated and reused,
/// without it an existing file is refused (`Error::Exists`) and left alone. A file this
/// call created is removed again when formatting fails.
pub fn create_image(path: &Path, f: &Format, replace: bool, progress: impl FnMut(u64, u64)) -> Result<Bpb> {
    let layout = plan(f)?;
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true);
    if replace {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => Error::Exists,
        _ => Error::Io(e),
    })?;
    let result = file
        .set_len(layout.total_sectors as u64 * layout.sector_size as u64)
        .map_err(Error::Io)
        .and_then(|()| format(&file, f, progress));
    if result.is_err() && !replace {
        let _ = std::fs::remove_file(path);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_of(size: u64, t: Option<FatType>) -> Layout {
        plan(&Format { size, fat_type: t, sector_size: 512, cluster_size: None, label: None, volume_id: 0 }).unwrap()
    }

    #[test]
    fn the_type_follows_the_size_like_mkfs_fat() {
        assert_eq!(plan_of(1440 * 1024, None).fat_type, FatType::Fat12);
        assert_eq!(plan_of(64 << 20, None).fat_type, FatType::Fat16);
        assert_eq!(plan_of(1 << 30, None).fat_type, FatType::Fat32);
        assert_eq!(plan_of(64 << 20, Some(FatType::Fat32)).fat_type, FatType::Fat32);
    }

    #[test]
    fn impossible_combinations_say_why() {
        let f = Format {
            size: 1 << 20,
            fat_type: Some(FatType::Fat32),
            sector_size: 512,
            cluster_size: None,
            label: None,
            volume_id: 0,
        };
        assert!(plan(&f).unwrap_err().to_string().contains("too few"));
        let f = Format { sector_size: 300, ..f };
        assert!(plan(&f).unwrap_err().to_string().contains("sector size"));
    }
}
