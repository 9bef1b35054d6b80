//! Directory entries: the 32-byte short entry, and parsing a directory's bytes into named
//! entries, joining VFAT long-name entries to their short entry by checksum. Long-name
//! entries that do not link up (wrong order, wrong checksum) are ignored and the short name
//! is used, as Windows and Linux do.

use super::names::{self, Codepage, checksum, lfn_units};
use super::time::FatTime;

pub const ATTR_READ_ONLY: u8 = 0x01;
pub const ATTR_HIDDEN: u8 = 0x02;
pub const ATTR_SYSTEM: u8 = 0x04;
pub const ATTR_VOLUME_ID: u8 = 0x08;
pub const ATTR_DIRECTORY: u8 = 0x10;
pub const ATTR_ARCHIVE: u8 = 0x20;
pub const ATTR_LFN: u8 = 0x0F;
/// First name byte of a deleted entry.
pub const DELETED: u8 = 0xE5;
/// Bytes per directory entry.
pub const ENTRY_SIZE: usize = 32;

/// A short (8.3) directory entry, decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShortEntry {
    pub name: [u8; 11],
    pub attr: u8,
    pub nt_flags: u8,
    pub created: FatTime,
    pub access_date: u16,
    pub modified: FatTime,
    pub first_cluster: u32,
    pub size: u32,
}

impl ShortEntry {
    /// Decodes 32 bytes.
    pub fn decode(b: &[u8]) -> ShortEntry {
        let u16_at = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        let mut name = [0u8; 11];
        name.copy_from_slice(&b[..11]);
        ShortEntry {
            name,
            attr: b[11],
            nt_flags: b[12],
            created: FatTime { date: u16_at(16), time: u16_at(14), tenths: b[13] },
            access_date: u16_at(18),
            modified: FatTime { date: u16_at(24), time: u16_at(22), tenths: 0 },
            first_cluster: (u16_at(20) as u32) << 16 | u16_at(26) as u32,
            size: u32::from_le_bytes([b[28], b[29], b[30], b[31]]),
        }
    }

    /// Encodes into 32 bytes.
    pub fn encode(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[..11].copy_from_slice(&self.name);
        b[11] = self.attr;
        b[12] = self.nt_flags;
        b[13] = self.created.tenths;
        b[14..16].copy_from_slice(&self.created.time.to_le_bytes());
        b[16..18].copy_from_slice(&self.created.date.to_le_bytes());
        b[18..20].copy_from_slice(&self.access_date.to_le_bytes());
        b[20..22].copy_from_slice(&((self.first_cluster >> 16) as u16).to_le_bytes());
        b[22..24].copy_from_slice(&self.modified.time.to_le_bytes());
        b[24..26].copy_from_slice(&self.modified.date.to_le_bytes());
        b[26..28].copy_from_slice(&(self.first_cluster as u16).to_le_bytes());
        b[28..32].copy_from_slice(&self.size.to_le_bytes());
        b
    }

    pub fn is_dir(&self) -> bool {
        self.attr & ATTR_DIRECTORY != 0
    }
}

/// One named entry found in a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// The name: the long name when one links up, else the short name with NT flags.
    pub name: String,
    /// Slot (32-byte index) of the first entry belonging to this name (a long-name entry,
    /// or the short entry itself).
    pub first_slot: u32,
    /// Slot of the short entry.
    pub slot: u32,
    pub entry: ShortEntry,
}

/// What a directory holds.
#[derive(Debug, Default)]
pub struct Listing {
    pub entries: Vec<Parsed>,
    /// The volume label entry (root only): its slot and label.
    pub label: Option<(u32, [u8; 11])>,
    /// The slot of the end marker (first entry whose first byte is 0), or the slot count.
    pub end: u32,
}

/// Parses a directory's bytes, short names in code page 437. Never panics; garbage
/// entries are skipped.
pub fn parse(bytes: &[u8]) -> Listing {
    parse_with(bytes, Codepage::default())
}

/// [`parse`], short names decoded with code page `cp`.
pub fn parse_with(bytes: &[u8], cp: Codepage) -> Listing {
    let mut out = Listing::default();
    let mut lfn: Vec<u16> = Vec::new();
    let mut lfn_start = 0u32;
    // (expected next ordinal, checksum) of the long name being collected.
    let mut lfn_state: Option<(u8, u8)> = None;
    let slots = bytes.len() / ENTRY_SIZE;
    out.end = slots as u32;
    for slot in 0..slots {
        let e = &bytes[slot * ENTRY_SIZE..(slot + 1) * ENTRY_SIZE];
        if e[0] == 0 {
            out.end = slot as u32;
            break;
        }
        if e[0] == DELETED {
            lfn_state = None;
            continue;
        }
        if e[11] & 0x3F == ATTR_LFN {
            let ord = e[0] & 0x1F;
            if e[0] & 0x40 != 0 && (1..=20).contains(&ord) {
                lfn = vec![0xFFFF; ord as usize * 13];
                lfn_start = slot as u32;
                lfn_state = Some((ord, e[13]));
            }
            match lfn_state {
                Some((want, sum)) if ord == want && e[13] == sum => {
                    let at = (ord as usize - 1) * 13;
                    lfn[at..at + 13].copy_from_slice(&lfn_units(e));
                    lfn_state = Some((ord - 1, sum));
                }
                _ => lfn_state = None,
            }
            continue;
        }
        let entry = ShortEntry::decode(e);
        let linked = matches!(lfn_state, Some((0, sum)) if sum == checksum(&entry.name));
        lfn_state = None;
        if entry.attr & ATTR_VOLUME_ID != 0 && !entry.is_dir() {
            if out.label.is_none() {
                out.label = Some((slot as u32, entry.name));
            }
            continue;
        }
        if &entry.name == b".          " || &entry.name == b"..         " {
            continue;
        }
        let long = if linked {
            let end = lfn.iter().position(|&u| u == 0 || u == 0xFFFF).unwrap_or(lfn.len());
            String::from_utf16(&lfn[..end]).ok().filter(|s| !s.is_empty())
        } else {
            None
        };
        let (name, first_slot) = match long {
            Some(n) => (n, lfn_start),
            None => (names::short_to_display(&entry.name, entry.nt_flags, cp), slot as u32),
        };
        if name.is_empty() || name.contains('/') || name.contains('\0') || name == "." || name == ".." {
            tracing::warn!(slot, "skipping a directory entry with an unusable name");
            continue;
        }
        out.entries.push(Parsed { name, first_slot, slot: slot as u32, entry });
    }
    out
}
