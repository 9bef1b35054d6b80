//! Names: validating long names as Linux vfat does, the 8.3 short name of a long name as
//! Windows generates it (upper case, invalid characters as `_`, numeric tails `~1`..`~4`,
//! then the hashed form), the NT lower-case flags, and the checksum that links long-name
//! entries to their short entry.

use std::collections::HashSet;

use super::error::{Error, Result};

/// NT flag (byte 12 of a directory entry): the base name is lower case.
pub const LCASE_BASE: u8 = 0x08;
/// NT flag: the extension is lower case.
pub const LCASE_EXT: u8 = 0x10;
/// Longest long name, in UTF-16 units.
pub const MAX_LFN_UNITS: usize = 255;

/// A name as vfat stores and looks it up: trailing dots dropped (`vfat_striptail_len`),
/// nothing else; `foo.` is `foo`, while `foo ` stays `foo ` (and is refused on create).
pub fn strip_tail(name: &str) -> &str {
    name.trim_end_matches('.')
}

/// The long name as it will be stored: trailing dots are dropped, as Linux vfat does
/// (`vfat_striptail_len`), and what is left is refused with the errno vfat gives: nothing
/// left (a name of only dots) `ENOENT` (`vfat_add_entry`), a trailing space, a control
/// character or one of `" * / : < > ? \ |` `EINVAL` (`vfat_valid_longname`), over 255
/// UTF-16 units `ENAMETOOLONG`.
pub fn check_long_name(name: &str) -> Result<&str> {
    let stripped = strip_tail(name);
    if stripped.is_empty() {
        return Err(Error::NotFound);
    }
    if stripped.ends_with(' ') {
        return Err(Error::InvalidName(format!("{name:?} ends in a space, which vfat refuses")));
    }
    if stripped.encode_utf16().count() > MAX_LFN_UNITS {
        return Err(Error::NameTooLong);
    }
    if let Some(c) = stripped.chars().find(|&c| (c as u32) < 0x20 || "\"*/:<>?\\|".contains(c)) {
        return Err(Error::InvalidName(format!("{name:?} contains {c:?}, which FAT does not allow")));
    }
    Ok(stripped)
}

/// The key lookups use: names compare case-insensitively.
pub fn fold(name: &str) -> String {
    name.to_uppercase()
}

/// The checksum of an 11-byte short name stored in each of its long-name entries.
pub fn checksum(short: &[u8; 11]) -> u8 {
    short.iter().fold(0u8, |sum, &b| ((sum & 1) << 7).wrapping_add(sum >> 1).wrapping_add(b))
}

/// The OEM code page short names are stored in, as vfat's `codepage=` option (default
/// 437): bytes above 0x7F in a short name are characters of this code page. Every code
/// page the `oem_cp` crate has a table for is supported (437, 720, 737, 775, 850, 852,
/// 855, 857, 858, 860 to 866, 869, 874).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Codepage(u16);

impl Default for Codepage {
    fn default() -> Codepage {
        Codepage(437)
    }
}

impl Codepage {
    /// Code page `number`, None when there is no table for it.
    pub fn new(number: u16) -> Option<Codepage> {
        oem_cp::code_table::DECODING_TABLE_CP_MAP.contains_key(&number).then_some(Codepage(number))
    }

    /// The code page's number.
    pub fn number(self) -> u16 {
        self.0
    }

    /// Every supported code page, in order.
    pub fn supported() -> Vec<u16> {
        let mut all: Vec<u16> = oem_cp::code_table::DECODING_TABLE_CP_MAP.keys().copied().collect();
        all.sort_unstable();
        all
    }

    /// The character byte `b` stands for; `?` for a byte the code page leaves undefined, as
    /// vfat shows it.
    pub fn decode(self, b: u8) -> char {
        use oem_cp::code_table_type::TableType;
        if b < 0x80 {
            return b as char;
        }
        match oem_cp::code_table::DECODING_TABLE_CP_MAP.get(&self.0) {
            Some(TableType::Complete(t)) => t[(b - 0x80) as usize],
            Some(TableType::Incomplete(t)) => t[(b - 0x80) as usize].unwrap_or('?'),
            None => '?',
        }
    }

    /// The byte for `c`, None when the code page has none.
    pub fn encode(self, c: char) -> Option<u8> {
        if c.is_ascii() {
            return Some(c as u8);
        }
        oem_cp::code_table::ENCODING_TABLE_CP_MAP.get(&self.0)?.get(&c).copied()
    }
}

/// A short name as displayed: `NAME.EXT`, its bytes decoded with code page `cp` (as vfat
/// and mtools do), with the NT lower-case flags applied.
pub fn short_to_display(short: &[u8; 11], nt_flags: u8, cp: Codepage) -> String {
    let mut raw = *short;
    if raw[0] == 0x05 {
        raw[0] = 0xE5;
    }
    let conv = |bytes: &[u8], lower: bool| -> String {
        let s: String = bytes.iter().map(|&b| cp.decode(b)).collect::<String>().trim_end_matches(' ').to_string();
        if lower { s.chars().map(single_lower).collect() } else { s }
    };
    let base = conv(&raw[..8], nt_flags & LCASE_BASE != 0);
    let ext = conv(&raw[8..], nt_flags & LCASE_EXT != 0);
    if ext.is_empty() { base } else { format!("{base}.{ext}") }
}

/// `c` in lower case when that is one character, else `c`.
fn single_lower(c: char) -> char {
    let mut l = c.to_lowercase();
    match (l.next(), l.next()) {
        (Some(x), None) => x,
        _ => c,
    }
}

/// `c` in upper case when that is one character, else `c` (`ß` stays `ß`, as in vfat).
fn single_upper(c: char) -> char {
    let mut u = c.to_uppercase();
    match (u.next(), u.next()) {
        (Some(x), None) => x,
        _ => c,
    }
}

fn short_char_ok(c: char) -> bool {
    c.is_ascii_uppercase() || c.is_ascii_digit() || "$%'-_@~`!(){}^#&".contains(c)
}

/// How a long name is stored in a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredName {
    pub short: [u8; 11],
    pub nt_flags: u8,
    /// Whether long-name entries are needed (the name is not exactly its short form).
    pub needs_lfn: bool,
}

/// If `name` fits 8.3 exactly, possibly all in lower case in the base or the extension
/// (NT flags), the short name and flags that represent it without long-name entries.
fn exact_short(name: &str) -> Option<([u8; 11], u8)> {
    let (base, ext) = match name.rfind('.') {
        Some(0) => return None,
        Some(i) => (&name[..i], &name[i + 1..]),
        None => (name, ""),
    };
    if base.is_empty() || base.len() > 8 || ext.len() > 3 || base.contains('.') {
        return None;
    }
    let mut flags = 0;
    for (part, flag) in [(base, LCASE_BASE), (ext, LCASE_EXT)] {
        let has_lower = part.chars().any(|c| c.is_ascii_lowercase());
        let has_upper = part.chars().any(|c| c.is_ascii_uppercase());
        if has_lower && has_upper {
            return None;
        }
        if has_lower {
            flags |= flag;
        }
        if !part.chars().all(|c| short_char_ok(c.to_ascii_uppercase())) {
            return None;
        }
    }
    let mut short = [b' '; 11];
    for (i, b) in base.bytes().enumerate() {
        short[i] = b.to_ascii_uppercase();
    }
    for (i, b) in ext.bytes().enumerate() {
        short[8 + i] = b.to_ascii_uppercase();
    }
    if short[0] == 0xE5 {
        short[0] = 0x05;
    }
    Some((short, flags))
}

/// The short name for long name `name` in a directory whose short names are `taken`,
/// generated as Windows and vfat do: the long name upper-cased with spaces and leading
/// dots removed, characters a short name cannot hold (or code page `cp` has no byte for)
/// replaced by `_`, base cut to 8 and extension to 3; a numeric tail `~1` .. `~4` when the
/// name was changed or collides, and after that the hashed form (two characters, four hex
/// digits of a hash, `~1` .. `~9`). Non-ASCII characters the code page holds are kept,
/// in its encoding, as vfat does (`é` is `É`, byte 0x90 in code page 437).
pub fn short_name_for(name: &str, taken: &HashSet<[u8; 11]>, cp: Codepage) -> Result<StoredName> {
    // Exactly representable: no long name needed when the case is carried by flags.
    if let Some((short, nt_flags)) = exact_short(name).filter(|(short, _)| !taken.contains(short)) {
        return Ok(StoredName { short, nt_flags, needs_lfn: false });
    }
    let trimmed = name.trim_start_matches('.');
    let (base_src, ext_src) = match trimmed.rfind('.') {
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => (trimmed, ""),
    };
    let mut lossy = trimmed.len() != name.len();
    let mut convert = |s: &str, max: usize| -> Vec<u8> {
        let mut out = Vec::new();
        for c in s.chars() {
            if c == ' ' || c == '.' {
                lossy = true;
                continue;
            }
            if out.len() == max {
                lossy = true;
                break;
            }
            let upper = single_upper(c);
            let byte = if upper.is_ascii() {
                Some(upper as u8).filter(|&b| short_char_ok(b as char))
            } else {
                cp.encode(upper).or_else(|| cp.encode(c))
            };
            match byte {
                Some(b) => out.push(b),
                None => {
                    lossy = true;
                    out.push(b'_');
                }
            }
        }
        out
    };
    let base = convert(base_src, 8);
    let ext = convert(ext_src, 3);
    let base = if base.is_empty() { b"_".to_vec() } else { base };
    let build = |base: &[u8], tail: &str| -> [u8; 11] {
        let mut short = [b' '; 11];
        let keep = base.len().min(8 - tail.len());
        short[..keep].copy_from_slice(&base[..keep]);
        short[keep..keep + tail.len()].copy_from_slice(tail.as_bytes());
        for (i, &b) in ext.iter().enumerate() {
            short[8 + i] = b;
        }
        if short[0] == 0xE5 {
            short[0] = 0x05;
        }
        short
    };
    if !lossy {
        let short = build(&base, "");
        if !taken.contains(&short) {
            return Ok(StoredName { short, nt_flags: 0, needs_lfn: true });
        }
    }
    for n in 1..=4 {
        let short = build(&base, &format!("~{n}"));
        if !taken.contains(&short) {
            return Ok(StoredName { short, nt_flags: 0, needs_lfn: true });
        }
    }
    // The hashed form: two characters of the base, a 16-bit hash of the long name in hex.
    let hash = name.encode_utf16().fold(0u16, |h, u| h.wrapping_mul(37).wrapping_add(u)).wrapping_mul(0x9E37);
    for salt in 0u16..=u16::MAX {
        let h = hash.wrapping_add(salt.wrapping_mul(0x9E37));
        let mut stem = base[..base.len().min(2)].to_vec();
        stem.extend_from_slice(format!("{h:04X}").as_bytes());
        for n in 1..=9 {
            let short = build(&stem, &format!("~{n}"));
            if !taken.contains(&short) {
                return Ok(StoredName { short, nt_flags: 0, needs_lfn: true });
            }
        }
    }
    Err(Error::NoSpace)
}

/// The long-name entries (32 bytes each) for `name`, in on-disk order (last part first).
pub fn lfn_entries(name: &str, short: &[u8; 11]) -> Vec<[u8; 32]> {
    let units: Vec<u16> = name.encode_utf16().collect();
    let parts = units.len().div_ceil(13);
    let sum = checksum(short);
    let mut out = Vec::with_capacity(parts);
    for i in (0..parts).rev() {
        let mut e = [0u8; 32];
        e[0] = (i + 1) as u8 | if i + 1 == parts { 0x40 } else { 0 };
        e[11] = 0x0F;
        e[13] = sum;
        let mut chunk = [0xFFFFu16; 13];
        for (j, slot) in chunk.iter_mut().enumerate() {
            let k = i * 13 + j;
            if k < units.len() {
                *slot = units[k];
            } else if k == units.len() {
                *slot = 0;
            }
        }
        let positions = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
        for (u, &at) in chunk.iter().zip(positions.iter()) {
            e[at..at + 2].copy_from_slice(&u.to_le_bytes());
        }
        out.push(e);
    }
    out
}

/// The 13 UTF-16 units of one long-name entry.
pub fn lfn_units(e: &[u8]) -> [u16; 13] {
    let positions = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30];
    let mut out = [0u16; 13];
    for (o, &at) in out.iter_mut().zip(positions.iter()) {
        *o = u16::from_le_bytes([e[at], e[at + 1]]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CP: Codepage = Codepage(437);

    fn short(s: &str) -> [u8; 11] {
        s.as_bytes().try_into().unwrap()
    }

    #[test]
    fn names_that_fit_8_3_in_one_case_need_no_long_name() {
        let none = HashSet::new();
        let n = short_name_for("readme.txt", &none, CP).unwrap();
        assert_eq!((n.short, n.nt_flags, n.needs_lfn), (short("README  TXT"), LCASE_BASE | LCASE_EXT, false));
        let n = short_name_for("README.txt", &none, CP).unwrap();
        assert_eq!((n.nt_flags, n.needs_lfn), (LCASE_EXT, false));
        let n = short_name_for("ReadMe.txt", &none, CP).unwrap();
        // Windows keeps the plain upper-case short name when it is not taken.
        assert_eq!((n.short, n.needs_lfn), (short("README  TXT"), true));
        let taken = HashSet::from([short("README  TXT")]);
        assert_eq!(short_name_for("ReadMe.txt", &taken, CP).unwrap().short, short("README~1TXT"));
    }

    #[test]
    fn short_names_get_numeric_tails_then_the_hashed_form() {
        let mut taken = HashSet::new();
        let mut seen = Vec::new();
        for _ in 0..6 {
            let n = short_name_for("Long File Name.html", &taken, CP).unwrap();
            assert!(n.needs_lfn);
            taken.insert(n.short);
            seen.push(String::from_utf8_lossy(&n.short).into_owned());
        }
        assert_eq!(&seen[..4], ["LONGFI~1HTM", "LONGFI~2HTM", "LONGFI~3HTM", "LONGFI~4HTM"]);
        assert!(seen[4].starts_with("LO") && seen[4].ends_with("~1HTM"), "{seen:?}");
        assert_ne!(seen[4], seen[5]);
    }

    #[test]
    fn invalid_short_characters_become_underscores() {
        let n = short_name_for("a+b,c;d=€.t[x", &HashSet::new(), CP).unwrap();
        assert_eq!(&n.short, b"A_B_C_~1T_X");
        let n = short_name_for(".bashrc", &HashSet::new(), CP).unwrap();
        assert_eq!(&n.short, b"BASHRC~1   ");
    }

    #[test]
    fn long_names_are_checked_like_vfat() {
        assert_eq!(check_long_name("a.").unwrap(), "a");
        assert_eq!(check_long_name("a b.c").unwrap(), "a b.c");
        // vfat strips trailing dots only: a trailing space is EINVAL, a name of only dots
        // (nothing left) ENOENT.
        assert!(matches!(check_long_name("foo "), Err(Error::InvalidName(_))));
        assert!(matches!(check_long_name("foo. "), Err(Error::InvalidName(_))));
        assert!(matches!(check_long_name("foo ."), Err(Error::InvalidName(_))));
        assert!(matches!(check_long_name(" "), Err(Error::InvalidName(_))));
        assert_eq!(check_long_name("...").unwrap_err().errno(), libc::ENOENT);
        assert_eq!(check_long_name("foo ").unwrap_err().errno(), libc::EINVAL);
        assert!(matches!(check_long_name("a:b"), Err(Error::InvalidName(_))));
        assert!(matches!(check_long_name(&"x".repeat(256)), Err(Error::NameTooLong)));
        assert!(check_long_name(&"x".repeat(255)).is_ok());
    }

    #[test]
    fn short_names_are_decoded_and_encoded_with_the_oem_code_page() {
        let mut raw = short("XPFEL   TXT");
        raw[0] = 0x8E;
        assert_eq!(short_to_display(&raw, 0, CP), "ÄPFEL.TXT");
        assert_eq!(short_to_display(&raw, LCASE_BASE | LCASE_EXT, CP), "äpfel.txt");
        raw[0] = 0x9B;
        assert_eq!(short_to_display(&raw, 0, CP), "¢PFEL.TXT");
        assert_eq!(short_to_display(&raw, 0, Codepage::new(850).unwrap()), "øPFEL.TXT");
        // A deleted-looking first byte 0x05 stands for 0xE5 (σ in 437).
        raw[0] = 0x05;
        assert_eq!(short_to_display(&raw, 0, CP), "σPFEL.TXT");
        // Creating: characters the code page holds are kept, upper-cased, in its encoding.
        let n = short_name_for("äpfel.txt", &HashSet::new(), CP).unwrap();
        assert_eq!((n.short[0], &n.short[1..], n.needs_lfn), (0x8E, &b"PFEL   TXT"[..], true));
        let n = short_name_for("café.txt", &HashSet::new(), CP).unwrap();
        assert_eq!(&n.short, b"CAF\x90    TXT");
        // Characters it lacks become `_` with a numeric tail.
        let n = short_name_for("€uro.txt", &HashSet::new(), CP).unwrap();
        assert_eq!(&n.short, b"_URO~1  TXT");
        assert!(Codepage::new(437).is_some() && Codepage::new(850).is_some() && Codepage::new(1234).is_none());
        assert!(Codepage::supported().contains(&866));
    }

    #[test]
    fn lfn_entries_round_trip_and_carry_the_checksum() {
        let name = "Ünïcødé name that is longer than thirteen units.txt";
        let s = short("UNICOD~1TXT");
        let entries = lfn_entries(name, &s);
        assert_eq!(entries.len(), name.encode_utf16().count().div_ceil(13));
        assert_eq!(entries[0][0] & 0x40, 0x40);
        let mut units = Vec::new();
        for e in entries.iter().rev() {
            assert_eq!(e[13], checksum(&s));
            units.extend(lfn_units(e).iter().copied().take_while(|&u| u != 0 && u != 0xFFFF));
        }
        assert_eq!(String::from_utf16(&units).unwrap(), name);
    }
}
