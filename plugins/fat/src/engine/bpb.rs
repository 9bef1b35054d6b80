//! The boot sector's BIOS Parameter Block: parsing, validation and the volume geometry
//! derived from it. The FAT type is decided by cluster count, as Microsoft's FAT
//! specification defines it, never by the `FAT12`/`FAT16`/`FAT32` label string.

use super::error::{Error, Result};

/// FAT12, FAT16 or FAT32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FatType {
    Fat12,
    Fat16,
    Fat32,
}

impl FatType {
    /// The type a volume with `clusters` data clusters has (Microsoft FAT spec, section 3.5).
    pub fn from_cluster_count(clusters: u32) -> FatType {
        if clusters < 4085 {
            FatType::Fat12
        } else if clusters < 65525 {
            FatType::Fat16
        } else {
            FatType::Fat32
        }
    }

    /// Bits per FAT entry.
    pub fn bits(self) -> u32 {
        match self {
            FatType::Fat12 => 12,
            FatType::Fat16 => 16,
            FatType::Fat32 => 32,
        }
    }
}

impl std::fmt::Display for FatType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FatType::Fat12 => "FAT12",
            FatType::Fat16 => "FAT16",
            FatType::Fat32 => "FAT32",
        })
    }
}

/// What the boot sector says, validated, with the derived layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bpb {
    pub fat_type: FatType,
    pub bytes_per_sector: u32,
    pub sectors_per_cluster: u32,
    pub reserved_sectors: u32,
    pub num_fats: u32,
    /// Root directory entries (FAT12/16; 0 on FAT32).
    pub root_entries: u32,
    pub total_sectors: u64,
    pub media: u8,
    pub sectors_per_fat: u32,
    /// First cluster of the root directory (FAT32 only).
    pub root_cluster: u32,
    /// Sector of the FSInfo structure (FAT32 only; 0 when there is none).
    pub fsinfo_sector: u32,
    pub backup_boot_sector: u32,
    pub volume_id: u32,
    /// The label field of the boot sector (11 bytes, space padded).
    pub label: [u8; 11],
    pub oem_name: [u8; 8],
    /// Data clusters: valid cluster numbers are 2 ..= cluster_count + 1.
    pub cluster_count: u32,
    /// Byte offset of the first data cluster (cluster 2).
    pub data_offset: u64,
    /// Byte offset of the fixed root directory (FAT12/16).
    pub root_dir_offset: u64,
    /// Whether the boot sector carries the 0x55AA signature.
    pub has_signature: bool,
    /// The FAT copy to read: 0, unless a FAT32 volume has mirroring turned off and names
    /// another active FAT in its extended flags.
    pub active_fat: u32,
}

fn u16_at(b: &[u8], at: usize) -> u32 {
    u16::from_le_bytes([b[at], b[at + 1]]) as u32
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn bad(msg: impl Into<String>) -> Error {
    Error::BadBootSector(msg.into())
}

impl Bpb {
    /// Parses and validates a boot sector (at least 512 bytes). Never panics on any input.
    pub fn parse(b: &[u8]) -> Result<Bpb> {
        if b.len() < 512 {
            return Err(bad(format!("boot sector is {} bytes, needs 512", b.len())));
        }
        let bytes_per_sector = u16_at(b, 11);
        if !matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096) {
            return Err(bad(format!("bytes per sector is {bytes_per_sector}, must be 512, 1024, 2048 or 4096")));
        }
        let sectors_per_cluster = b[13] as u32;
        if sectors_per_cluster == 0 || !sectors_per_cluster.is_power_of_two() {
            return Err(bad(format!("sectors per cluster is {sectors_per_cluster}, must be a power of two")));
        }
        let cluster_size = bytes_per_sector * sectors_per_cluster;
        if cluster_size > 256 * 1024 {
            return Err(bad(format!("cluster size {cluster_size} bytes is larger than 256 KiB")));
        }
        let reserved_sectors = u16_at(b, 14);
        if reserved_sectors == 0 {
            return Err(bad("reserved sector count is 0"));
        }
        let num_fats = b[16] as u32;
        if num_fats == 0 {
            return Err(bad("number of FATs is 0"));
        }
        let root_entries = u16_at(b, 17);
        let total16 = u16_at(b, 19);
        let media = b[21];
        let fat16_size = u16_at(b, 22);
        let total32 = u32_at(b, 32);
        let total_sectors = if total16 != 0 { total16 as u64 } else { total32 as u64 };
        if total_sectors == 0 {
            return Err(bad("total sector count is 0"));
        }
        let sectors_per_fat = if fat16_size != 0 { fat16_size } else { u32_at(b, 36) };
        if sectors_per_fat == 0 {
            return Err(bad("sectors per FAT is 0"));
        }
        let root_dir_sectors = (root_entries * 32).div_ceil(bytes_per_sector);
        let meta_sectors = reserved_sectors as u64 + num_fats as u64 * sectors_per_fat as u64 + root_dir_sectors as u64;
        let data_sectors = total_sectors
            .checked_sub(meta_sectors)
            .filter(|&d| d > 0)
            .ok_or_else(|| bad(format!("{total_sectors} sectors leave no room for data after {meta_sectors}")))?;
        let clusters = data_sectors / sectors_per_cluster as u64;
        if clusters == 0 || clusters > 0x0FFF_FFF5 {
            return Err(bad(format!("{clusters} data clusters is not a valid FAT volume")));
        }
        let cluster_count = clusters as u32;
        let fat_type = FatType::from_cluster_count(cluster_count);
        // The FAT must hold an entry for every cluster, plus the two reserved ones.
        let fat_bits_needed = (cluster_count as u64 + 2) * fat_type.bits() as u64;
        if (sectors_per_fat as u64) * bytes_per_sector as u64 * 8 < fat_bits_needed {
            return Err(bad(format!(
                "a FAT of {sectors_per_fat} sectors is too small for {cluster_count} clusters of {fat_type}"
            )));
        }
        let (root_cluster, fsinfo_sector, backup_boot_sector, ext) = if fat_type == FatType::Fat32 {
            if root_entries != 0 || fat16_size != 0 {
                return Err(bad("FAT32 volume with a FAT16 root directory or FAT size"));
            }
            let root = u32_at(b, 44);
            if root < 2 || root > cluster_count + 1 {
                return Err(bad(format!("root directory cluster {root} is outside the volume")));
            }
            (root, u16_at(b, 48), u16_at(b, 50), 64)
        } else {
            if root_entries == 0 {
                return Err(bad(format!("{fat_type} volume without root directory entries")));
            }
            (0, 0, 0, 36)
        };
        let ext_flags = if fat_type == FatType::Fat32 { u16_at(b, 40) } else { 0 };
        let active_fat = if ext_flags & 0x80 != 0 { ext_flags & 0x0F } else { 0 };
        if active_fat >= num_fats {
            return Err(bad(format!("active FAT {active_fat} of {num_fats}")));
        }
        let has_ext = b[ext + 2] == 0x29;
        let volume_id = if has_ext { u32_at(b, ext + 3) } else { 0 };
        let mut label = *b"NO NAME    ";
        if has_ext {
            label.copy_from_slice(&b[ext + 7..ext + 18]);
        }
        let mut oem_name = [0u8; 8];
        oem_name.copy_from_slice(&b[3..11]);
        let bps = bytes_per_sector as u64;
        let root_dir_offset = (reserved_sectors as u64 + num_fats as u64 * sectors_per_fat as u64) * bps;
        Ok(Bpb {
            fat_type,
            bytes_per_sector,
            sectors_per_cluster,
            reserved_sectors,
            num_fats,
            root_entries,
            total_sectors,
            media,
            sectors_per_fat,
            root_cluster,
            fsinfo_sector: if fsinfo_sector == 0 || fsinfo_sector == 0xFFFF { 0 } else { fsinfo_sector },
            backup_boot_sector,
            volume_id,
            label,
            oem_name,
            cluster_count,
            data_offset: meta_sectors * bps,
            root_dir_offset,
            has_signature: b[510] == 0x55 && b[511] == 0xAA,
            active_fat,
        })
    }

    /// Bytes per cluster.
    pub fn cluster_size(&self) -> u32 {
        self.bytes_per_sector * self.sectors_per_cluster
    }

    /// Byte offset of data cluster `cluster` (2 ..= cluster_count + 1).
    pub fn cluster_offset(&self, cluster: u32) -> u64 {
        self.data_offset + (cluster as u64 - 2) * self.cluster_size() as u64
    }

    /// Byte offset of FAT copy `n`.
    pub fn fat_offset(&self, n: u32) -> u64 {
        (self.reserved_sectors as u64 + n as u64 * self.sectors_per_fat as u64) * self.bytes_per_sector as u64
    }

    /// Bytes in one FAT copy.
    pub fn fat_bytes(&self) -> u64 {
        self.sectors_per_fat as u64 * self.bytes_per_sector as u64
    }

    /// Offset in the boot sector of the "state" byte whose bit 0 is the dirty flag (as
    /// Linux and dosfstools use it).
    pub fn state_byte_offset(&self) -> u64 {
        if self.fat_type == FatType::Fat32 { 65 } else { 37 }
    }

    /// Offset in the boot sector of the label field.
    pub fn label_offset(&self) -> u64 {
        if self.fat_type == FatType::Fat32 { 71 } else { 43 }
    }

    /// The volume's size in bytes, as the boot sector says.
    pub fn volume_bytes(&self) -> u64 {
        self.total_sectors * self.bytes_per_sector as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn floppy() -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[11..13].copy_from_slice(&512u16.to_le_bytes());
        b[13] = 1;
        b[14..16].copy_from_slice(&1u16.to_le_bytes());
        b[16] = 2;
        b[17..19].copy_from_slice(&224u16.to_le_bytes());
        b[19..21].copy_from_slice(&2880u16.to_le_bytes());
        b[21] = 0xF0;
        b[22..24].copy_from_slice(&9u16.to_le_bytes());
        b[510] = 0x55;
        b[511] = 0xAA;
        b
    }

    #[test]
    fn a_floppy_boot_sector_is_fat12_with_2847_clusters() {
        let bpb = Bpb::parse(&floppy()).unwrap();
        assert_eq!(bpb.fat_type, FatType::Fat12);
        assert_eq!(bpb.cluster_count, 2847);
        assert_eq!(bpb.root_dir_offset, 19 * 512);
        assert_eq!(bpb.data_offset, 33 * 512);
    }

    #[test]
    fn malformed_boot_sectors_are_refused_with_a_reason() {
        let cases: [(usize, &[u8], &str); 5] = [
            (11, &[0, 3], "bytes per sector"),
            (13, &[3], "power of two"),
            (16, &[0], "number of FATs"),
            (22, &[1, 0], "too small"),
            (19, &[10, 0], "no room for data"),
        ];
        for (at, bytes, why) in cases {
            let mut b = floppy();
            b[at..at + bytes.len()].copy_from_slice(bytes);
            let e = Bpb::parse(&b).unwrap_err().to_string();
            assert!(e.contains(why), "{e} should say {why}");
        }
        assert!(Bpb::parse(&[0u8; 100]).is_err());
    }

    #[test]
    fn random_boot_sectors_never_panic() {
        let mut state = 0x1234_5678_u64;
        for _ in 0..20_000 {
            let mut b = floppy();
            for _ in 0..4 {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let at = (state >> 33) as usize % 90;
                b[at] = (state >> 20) as u8;
            }
            let _ = Bpb::parse(&b);
        }
    }
}
