//! Names and paths: Windows' UTF-16 paths with backslashes to the plugin's byte names, and
//! back, with the case rule of the mount.
//!
//! **Characters Windows forbids.** A POSIX name may hold `\ : * ? " < > |` and control
//! characters, which no Windows name can. As Cygwin and WinFSP's FUSE layer do, each of
//! them is shown as the private-use character U+F000 plus its code (`a:b` is shown as
//! `a\u{F03A}b`), and such a character in a Windows name is turned back on the way in, so
//! these files can be listed, opened, renamed and deleted. Names that are not UTF-8 cannot
//! be shown at all and are left out of listings.
//!
//! **New names.** A name a Win32 program could not open again is refused when a file is
//! created or renamed to it, with `STATUS_OBJECT_NAME_INVALID`: trailing dots or spaces
//! (Win32 strips them) and the reserved device names (`CON`, `PRN`, `AUX`, `NUL`,
//! `COM0`-`COM9`, `LPT0`-`LPT9`, also with an extension). Existing files with such names
//! stay reachable through `\\?\` paths.

use std::ffi::OsString;

use crate::ntstatus::STATUS_OBJECT_NAME_INVALID;

/// Whether `c` is a character a POSIX name may hold but a Windows name may not.
fn is_forbidden(c: char) -> bool {
    matches!(c, '\u{1}'..='\u{1f}' | '"' | '*' | ':' | '<' | '>' | '?' | '\\' | '|')
}

/// Splits a Windows path (`\dir\file`, a trailing `\` allowed, `\` alone for the root)
/// into its components as plugin names. Empty components, `.` and `..`, named streams and
/// characters Windows forbids are `STATUS_OBJECT_NAME_INVALID`; `::$DATA`, the name of a
/// file's only stream, is accepted and dropped.
pub fn parse_path(path: &[u16]) -> Result<Vec<String>, u32> {
    let text = String::from_utf16(path).map_err(|_| STATUS_OBJECT_NAME_INVALID)?;
    let text = text.strip_suffix("::$DATA").unwrap_or(&text);
    let trimmed = text.strip_prefix('\\').unwrap_or(text);
    let trimmed = trimmed.strip_suffix('\\').unwrap_or(trimmed);
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    trimmed
        .split('\\')
        .map(|c| {
            if c.is_empty() || c == "." || c == ".." || c.chars().any(|ch| ch == '\0' || is_forbidden(ch)) {
                Err(STATUS_OBJECT_NAME_INVALID)
            } else {
                Ok(from_windows_name(c))
            }
        })
        .collect()
}

/// A Windows name (one component) as the plugin's name: private-use characters that stand
/// for forbidden ones are turned back.
pub fn from_windows_name(name: &str) -> String {
    name.chars()
        .map(|c| match (c as u32).checked_sub(0xF000).and_then(char::from_u32) {
            Some(orig) if is_forbidden(orig) => orig,
            _ => c,
        })
        .collect()
}

/// A plugin's name as Windows shows it, or `None` for a name that is not UTF-8.
pub fn to_windows_name(name: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(name).ok()?;
    Some(s.chars().map(|c| if is_forbidden(c) { char::from_u32(0xF000 + c as u32).unwrap_or(c) } else { c }).collect())
}

/// A plugin name as the `OsStr` the plugin API takes.
pub fn os(name: &str) -> OsString {
    OsString::from(name)
}

/// `name` with case folded the way a case-insensitive comparison sees it: each character's
/// simple uppercase form, as the upcase table of NTFS and FAT maps it.
pub fn fold(name: &str) -> String {
    name.chars()
        .map(|c| {
            let mut up = c.to_uppercase();
            if up.len() == 1 { up.next().unwrap_or(c) } else { c }
        })
        .collect()
}

/// The key a name has in a directory: the name itself when names differ by case, its
/// folded form when they do not.
pub fn key(name: &str, case_sensitive: bool) -> String {
    if case_sensitive { name.to_owned() } else { fold(name) }
}

/// Whether `name` is one of the device names Win32 reserves (with or without extension).
pub fn is_reserved_device_name(name: &str) -> bool {
    let stem = name.split('.').next().unwrap_or(name).trim_end_matches(' ');
    let upper = stem.to_ascii_uppercase();
    match upper.as_str() {
        "CON" | "PRN" | "AUX" | "NUL" | "CONIN$" | "CONOUT$" => true,
        _ => {
            let b = upper.as_bytes();
            b.len() == 4 && (upper.starts_with("COM") || upper.starts_with("LPT")) && b[3].is_ascii_digit()
        }
    }
}

/// Checks a name a file is about to get (create, mkdir, rename target): see the module
/// documentation. `max_len` is the plugin's limit in bytes.
pub fn check_new_name(name: &str, max_len: u32) -> Result<(), u32> {
    if name.ends_with('.') || name.ends_with(' ') || is_reserved_device_name(name) || name.len() > max_len as usize {
        return Err(STATUS_OBJECT_NAME_INVALID);
    }
    Ok(())
}

/// `s` as UTF-16, for tests and bindings that start from Rust strings.
pub fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_on_backslashes() {
        assert_eq!(parse_path(&wide("\\")).unwrap(), Vec::<String>::new());
        assert_eq!(parse_path(&wide("")).unwrap(), Vec::<String>::new());
        assert_eq!(parse_path(&wide("\\a\\b c\\d.txt")).unwrap(), ["a", "b c", "d.txt"]);
        assert_eq!(parse_path(&wide("\\dir\\")).unwrap(), ["dir"]);
        assert_eq!(parse_path(&wide("\\f::$DATA")).unwrap(), ["f"]);
        assert_eq!(parse_path(&wide("\\Grüße\\日本")).unwrap(), ["Grüße", "日本"]);
        for bad in ["\\a\\\\b", "\\a\\.\\b", "\\..", "\\f:stream", "\\a*b", "\\a?", "\\x|y", "\\q\"", "\\n\0"] {
            assert_eq!(parse_path(&wide(bad)), Err(STATUS_OBJECT_NAME_INVALID), "{bad:?}");
        }
        assert_eq!(parse_path(&[0x5c, 0xD800, 0x61]), Err(STATUS_OBJECT_NAME_INVALID), "a lone surrogate");
    }

    #[test]
    fn forbidden_characters_round_trip_through_private_use() {
        let posix = "a:b*c?d\\e|f\u{7}g";
        let shown = to_windows_name(posix.as_bytes()).unwrap();
        assert!(!shown.chars().any(is_forbidden), "{shown:?}");
        assert_eq!(shown.chars().nth(1), Some('\u{F03A}'));
        assert_eq!(from_windows_name(&shown), posix);
        assert_eq!(parse_path(&wide(&format!("\\{shown}"))).unwrap(), [posix]);
        // A private-use character that stands for nothing stays as it is.
        assert_eq!(from_windows_name("\u{F041}"), "\u{F041}");
        assert_eq!(to_windows_name(b"\xff\xfe"), None);
    }

    #[test]
    fn folding_ignores_case_of_any_script() {
        assert_eq!(fold("Readme.TXT"), "README.TXT");
        assert_eq!(fold("grüße"), "GRÜSSE".replace("SS", "ß"), "ß has no one-character uppercase");
        assert_eq!(fold("αβγ"), fold("ΑΒΓ"));
        assert_eq!(key("Mixed", true), "Mixed");
        assert_eq!(key("Mixed", false), "MIXED");
    }

    #[test]
    fn names_win32_cannot_reach_are_refused_for_new_files() {
        for bad in ["trail.", "trail ", "CON", "con.txt", "Nul", "COM1", "lpt9.log", "aux .c"] {
            assert_eq!(check_new_name(bad, 255), Err(STATUS_OBJECT_NAME_INVALID), "{bad:?}");
        }
        for good in ["CONSOLE", "COM10", "file.txt", ".hidden", "a.b.c", "LPT"] {
            assert_eq!(check_new_name(good, 255), Ok(()), "{good:?}");
        }
        assert_eq!(check_new_name(&"x".repeat(256), 255), Err(STATUS_OBJECT_NAME_INVALID));
    }
}
