//! Access masks, share modes, create dispositions and create options: the numbers a
//! create request carries, and the share-mode check NTFS makes (`IoCheckShareAccess`).

use crate::security::{DELETE, FILE_GENERIC_EXECUTE, FILE_GENERIC_READ, FILE_GENERIC_WRITE};

/// Read the file's data.
pub const FILE_READ_DATA: u32 = 0x0001;
/// Write the file's data.
pub const FILE_WRITE_DATA: u32 = 0x0002;
/// Append to the file's data.
pub const FILE_APPEND_DATA: u32 = 0x0004;
/// Execute the file.
pub const FILE_EXECUTE: u32 = 0x0020;
/// `GENERIC_READ`.
pub const GENERIC_READ: u32 = 0x8000_0000;
/// `GENERIC_WRITE`.
pub const GENERIC_WRITE: u32 = 0x4000_0000;
/// `GENERIC_EXECUTE`.
pub const GENERIC_EXECUTE: u32 = 0x2000_0000;
/// `GENERIC_ALL`.
pub const GENERIC_ALL: u32 = 0x1000_0000;
/// `MAXIMUM_ALLOWED`: whatever the file allows.
pub const MAXIMUM_ALLOWED: u32 = 0x0200_0000;
/// `FILE_ALL_ACCESS`.
pub const FILE_ALL_ACCESS: u32 = 0x001F_01FF;

/// Other handles may read.
pub const FILE_SHARE_READ: u32 = 0x1;
/// Other handles may write.
pub const FILE_SHARE_WRITE: u32 = 0x2;
/// Other handles may delete or rename.
pub const FILE_SHARE_DELETE: u32 = 0x4;

/// Replace the file if it exists, create it otherwise.
pub const FILE_SUPERSEDE: u32 = 0;
/// Open the file; fail if it does not exist.
pub const FILE_OPEN: u32 = 1;
/// Create the file; fail if it exists.
pub const FILE_CREATE: u32 = 2;
/// Open the file, or create it.
pub const FILE_OPEN_IF: u32 = 3;
/// Open and truncate the file; fail if it does not exist.
pub const FILE_OVERWRITE: u32 = 4;
/// Open and truncate the file, or create it.
pub const FILE_OVERWRITE_IF: u32 = 5;

/// The file must be a directory.
pub const FILE_DIRECTORY_FILE: u32 = 0x0000_0001;
/// Writes go through to the medium before they complete.
pub const FILE_WRITE_THROUGH: u32 = 0x0000_0002;
/// The file must not be a directory.
pub const FILE_NON_DIRECTORY_FILE: u32 = 0x0000_0040;
/// Delete the file when the last handle to it is closed.
pub const FILE_DELETE_ON_CLOSE: u32 = 0x0000_1000;

/// What a create request did (`IO_STATUS_BLOCK.Information`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateAction {
    /// `FILE_SUPERSEDED`: an existing file was replaced.
    Superseded,
    /// `FILE_OPENED`.
    Opened,
    /// `FILE_CREATED`.
    Created,
    /// `FILE_OVERWRITTEN`: an existing file was truncated.
    Overwritten,
}

/// Access that reads data, for the share check.
const READ_ACCESS: u32 = FILE_READ_DATA | FILE_EXECUTE;
/// Access that writes data, for the share check.
const WRITE_ACCESS: u32 = FILE_WRITE_DATA | FILE_APPEND_DATA;

/// `access` with the generic rights replaced by the file rights they stand for.
/// `MAXIMUM_ALLOWED` becomes read and execute, and write too unless `read_only`.
pub fn map_generic(access: u32, read_only: bool) -> u32 {
    let mut out = access & !(GENERIC_READ | GENERIC_WRITE | GENERIC_EXECUTE | GENERIC_ALL | MAXIMUM_ALLOWED);
    if access & GENERIC_READ != 0 {
        out |= FILE_GENERIC_READ;
    }
    if access & GENERIC_WRITE != 0 {
        out |= FILE_GENERIC_WRITE;
    }
    if access & GENERIC_EXECUTE != 0 {
        out |= FILE_GENERIC_EXECUTE;
    }
    if access & GENERIC_ALL != 0 {
        out |= FILE_ALL_ACCESS;
    }
    if access & MAXIMUM_ALLOWED != 0 {
        out |= FILE_GENERIC_READ | FILE_GENERIC_EXECUTE | DELETE;
        if !read_only {
            out |= FILE_GENERIC_WRITE;
        }
    }
    out
}

/// Whether `access` reads data.
pub fn reads(access: u32) -> bool {
    access & READ_ACCESS != 0
}

/// Whether `access` writes data.
pub fn writes(access: u32) -> bool {
    access & WRITE_ACCESS != 0
}

/// One open handle's part in the share check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShareEntry {
    /// The access it was granted (generic rights mapped).
    pub access: u32,
    /// The `FILE_SHARE_*` bits it allows others.
    pub share: u32,
}

/// Whether a new handle asking for `new` conflicts with the handles `open` hold, as
/// `IoCheckShareAccess` decides: an access some open handle does not share, or a share
/// mode that leaves out an access some open handle has. A handle that neither reads,
/// writes nor deletes (attributes only) takes part in no check.
pub fn conflicts(open: &[ShareEntry], new: ShareEntry) -> bool {
    let relevant = READ_ACCESS | WRITE_ACCESS | DELETE;
    if new.access & relevant == 0 {
        return false;
    }
    open.iter().filter(|o| o.access & relevant != 0).any(|o| {
        (reads(new.access) && o.share & FILE_SHARE_READ == 0)
            || (writes(new.access) && o.share & FILE_SHARE_WRITE == 0)
            || (new.access & DELETE != 0 && o.share & FILE_SHARE_DELETE == 0)
            || (reads(o.access) && new.share & FILE_SHARE_READ == 0)
            || (writes(o.access) && new.share & FILE_SHARE_WRITE == 0)
            || (o.access & DELETE != 0 && new.share & FILE_SHARE_DELETE == 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RW: u32 = FILE_READ_DATA | FILE_WRITE_DATA;

    fn e(access: u32, share: u32) -> ShareEntry {
        ShareEntry { access, share }
    }

    #[test]
    fn share_modes_decide_like_io_check_share_access() {
        let reader_sharing_all = e(FILE_READ_DATA, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE);
        let exclusive_writer = e(RW, 0);
        // Nothing open: no conflict.
        assert!(!conflicts(&[], exclusive_writer));
        // An exclusive handle blocks everyone who reads, writes or deletes...
        assert!(conflicts(&[exclusive_writer], reader_sharing_all));
        assert!(conflicts(&[exclusive_writer], e(DELETE, 7)));
        // ... but not a handle that only reads attributes (Explorer's queries).
        assert!(!conflicts(&[exclusive_writer], e(0x80, 0)));
        // A reader that shares only reading blocks writers, not readers.
        let reader = e(FILE_READ_DATA, FILE_SHARE_READ);
        assert!(!conflicts(&[reader], e(FILE_READ_DATA, FILE_SHARE_READ)));
        assert!(conflicts(&[reader], e(FILE_WRITE_DATA, 7)));
        // A new handle's share mode must allow what open handles do.
        assert!(conflicts(&[e(FILE_WRITE_DATA, 7)], e(FILE_READ_DATA, FILE_SHARE_READ)));
        assert!(!conflicts(&[e(FILE_WRITE_DATA, 7)], e(FILE_READ_DATA, FILE_SHARE_READ | FILE_SHARE_WRITE)));
        // Delete needs FILE_SHARE_DELETE from every open handle, and the other way round.
        assert!(conflicts(&[e(FILE_READ_DATA, FILE_SHARE_READ | FILE_SHARE_WRITE)], e(DELETE, 7)));
        assert!(!conflicts(&[e(FILE_READ_DATA, 7)], e(DELETE, 7)));
        assert!(conflicts(&[e(DELETE, 7)], e(FILE_READ_DATA, FILE_SHARE_READ)));
        // Attribute-only handles open do not constrain a new one.
        assert!(!conflicts(&[e(0x80, 0)], exclusive_writer));
    }

    #[test]
    fn generic_rights_map_to_file_rights() {
        assert!(reads(map_generic(GENERIC_READ, false)) && !writes(map_generic(GENERIC_READ, false)));
        assert!(writes(map_generic(GENERIC_WRITE, false)));
        assert_eq!(map_generic(GENERIC_ALL, false), FILE_ALL_ACCESS);
        assert!(writes(map_generic(MAXIMUM_ALLOWED, false)) && !writes(map_generic(MAXIMUM_ALLOWED, true)));
        assert_eq!(map_generic(DELETE, false), DELETE);
    }
}
