//! File attributes, file information and volume information, as Windows asks for them,
//! from a plugin's [`Attr`], [`StatFs`] and [`Capabilities`].
//!
//! Choices (documented in docs/windows.md):
//! - `FILE_ATTRIBUTE_READONLY` is a file without any write bit; setting it clears the write
//!   bits, clearing it gives back the write bits the umask allows. Directories never show
//!   it (on Windows it means "customised folder" there, not "cannot write").
//! - Symbolic links show `FILE_ATTRIBUTE_REPARSE_POINT` with the symlink reparse tag.
//! - `FILE_ATTRIBUTE_HIDDEN` for names starting with a dot only when the mount asks for it
//!   ([`crate::VolumeOptions::hide_dot_files`], off by default, as WinFSP's FUSE layer).

use plugfs_plugin_api::{Attr, Capabilities, FileKind, StatFs};

use crate::time::to_filetime;

/// The file cannot be written.
pub const FILE_ATTRIBUTE_READONLY: u32 = 0x0000_0001;
/// Not shown by default.
pub const FILE_ATTRIBUTE_HIDDEN: u32 = 0x0000_0002;
/// Used by the operating system.
pub const FILE_ATTRIBUTE_SYSTEM: u32 = 0x0000_0004;
/// A directory.
pub const FILE_ATTRIBUTE_DIRECTORY: u32 = 0x0000_0010;
/// Marked for backup.
pub const FILE_ATTRIBUTE_ARCHIVE: u32 = 0x0000_0020;
/// No other attribute (only ever alone).
pub const FILE_ATTRIBUTE_NORMAL: u32 = 0x0000_0080;
/// A reparse point (here: a symbolic link).
pub const FILE_ATTRIBUTE_REPARSE_POINT: u32 = 0x0000_0400;
/// "No attributes given" in requests that carry attributes.
pub const INVALID_FILE_ATTRIBUTES: u32 = 0xFFFF_FFFF;
/// The reparse tag of a symbolic link.
pub const IO_REPARSE_TAG_SYMLINK: u32 = 0xA000_000C;

/// What `GetFileInformation` / `FSP_FSCTL_FILE_INFO` report for one node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileInfo {
    /// `FILE_ATTRIBUTE_*` bits.
    pub attributes: u32,
    /// The reparse tag when `attributes` has [`FILE_ATTRIBUTE_REPARSE_POINT`], else 0.
    pub reparse_tag: u32,
    /// Bytes allocated.
    pub allocation_size: u64,
    /// Bytes in the file.
    pub file_size: u64,
    /// FILETIME of creation (the plugin's `crtime`, or `ctime` when it has none).
    pub creation_time: u64,
    /// FILETIME of the last access.
    pub last_access_time: u64,
    /// FILETIME of the last data change.
    pub last_write_time: u64,
    /// FILETIME of the last metadata change.
    pub change_time: u64,
    /// The file index (the inode number `stat` shows).
    pub index_number: u64,
    /// Number of hard links.
    pub hard_links: u32,
}

impl FileInfo {
    /// The information for `attr`, as the node called `name` (for the dot-file rule).
    pub fn from_attr(attr: &Attr, name: &str, hide_dot_files: bool) -> FileInfo {
        let crtime = if attr.crtime == Default::default() { attr.ctime } else { attr.crtime };
        let allocation_size = if attr.blocks > 0 { attr.blocks * 512 } else { attr.size.div_ceil(4096) * 4096 };
        FileInfo {
            attributes: file_attributes(attr, name, hide_dot_files),
            reparse_tag: if attr.kind == FileKind::Symlink { IO_REPARSE_TAG_SYMLINK } else { 0 },
            allocation_size,
            file_size: if attr.kind == FileKind::Directory { 0 } else { attr.size },
            creation_time: to_filetime(crtime),
            last_access_time: to_filetime(attr.atime),
            last_write_time: to_filetime(attr.mtime),
            change_time: to_filetime(attr.ctime),
            index_number: attr.ino,
            hard_links: attr.nlink,
        }
    }
}

/// The `FILE_ATTRIBUTE_*` bits of a node.
pub fn file_attributes(attr: &Attr, name: &str, hide_dot_files: bool) -> u32 {
    let mut bits = match attr.kind {
        FileKind::Directory => FILE_ATTRIBUTE_DIRECTORY,
        FileKind::Symlink => FILE_ATTRIBUTE_REPARSE_POINT,
        // FIFOs, sockets and devices have no Windows form: they show as (empty) system files.
        FileKind::File => 0,
        _ => FILE_ATTRIBUTE_SYSTEM,
    };
    if attr.kind != FileKind::Directory && attr.perm & 0o222 == 0 {
        bits |= FILE_ATTRIBUTE_READONLY;
    }
    if hide_dot_files && name.starts_with('.') && name != "." && name != ".." {
        bits |= FILE_ATTRIBUTE_HIDDEN;
    }
    if bits == 0 { FILE_ATTRIBUTE_NORMAL } else { bits }
}

/// Whether a node with these attributes counts as read-only for opening and deleting.
pub fn is_read_only(attr: &Attr) -> bool {
    attr.kind == FileKind::File && attr.perm & 0o222 == 0
}

/// The permission bits for a new node with the `FILE_ATTRIBUTE_*` bits of a create
/// request: 0o666 for files and 0o777 for directories less `umask`, and no write bits for
/// a read-only file.
pub fn mode_for_new(attributes: u32, directory: bool, umask: u32) -> u32 {
    let base = if directory { 0o777 } else { 0o666 };
    let mode = base & !umask;
    if !directory && attributes != INVALID_FILE_ATTRIBUTES && attributes & FILE_ATTRIBUTE_READONLY != 0 {
        mode & !0o222
    } else {
        mode
    }
}

/// The new permission bits a "set attributes" request asks for, or `None` to leave them:
/// the read-only bit is the only one that maps onto the mode; 0 and
/// [`INVALID_FILE_ATTRIBUTES`] mean "no change", as Windows defines them.
pub fn mode_for_attributes(attr: &Attr, attributes: u32, umask: u32) -> Option<u32> {
    if attributes == 0 || attributes == INVALID_FILE_ATTRIBUTES || attr.kind == FileKind::Directory {
        return None;
    }
    let perm = attr.perm as u32;
    let wanted = if attributes & FILE_ATTRIBUTE_READONLY != 0 {
        perm & !0o222
    } else if perm & 0o222 == 0 {
        perm | (0o222 & !umask)
    } else {
        perm
    };
    (wanted != perm).then_some(wanted)
}

/// What `GetVolumeInformation` and `GetDiskFreeSpace` report, and the volume parameters a
/// binding sets when it mounts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Bytes in the volume.
    pub total_size: u64,
    /// Bytes free for the caller.
    pub free_size: u64,
    /// Bytes per allocation unit.
    pub allocation_unit: u32,
    /// Bytes per sector (always 512: plugins do not report one).
    pub sector_size: u32,
    /// Longest name, in UTF-16 units (the plugin's byte limit; a binding may pass it
    /// through since names of ASCII take as many units as bytes).
    pub max_component_length: u32,
    /// Names that differ only in case are different files (`FILE_CASE_SENSITIVE_SEARCH`).
    pub case_sensitive_search: bool,
    /// Names keep their case (`FILE_CASE_PRESERVED_NAMES`).
    pub case_preserved_names: bool,
    /// Permissions are stored (`FILE_PERSISTENT_ACLS`: the security descriptor derived
    /// from the mode means something).
    pub persistent_acls: bool,
    /// Symbolic links exist (`FILE_SUPPORTS_REPARSE_POINTS`).
    pub reparse_points: bool,
    /// Hard links exist (`FILE_SUPPORTS_HARD_LINKS`).
    pub hard_links: bool,
    /// The volume cannot be written (`FILE_READ_ONLY_VOLUME`).
    pub read_only: bool,
    /// The file system name Windows shows.
    pub file_system_name: &'static str,
}

/// The name the volume reports as its file system.
pub const FILE_SYSTEM_NAME: &str = "plugfs";

impl VolumeInfo {
    /// The volume information from a plugin's `statfs` and this mount's capabilities.
    pub fn new(st: &StatFs, caps: &Capabilities, read_only: bool) -> VolumeInfo {
        let unit = if st.frsize > 0 { st.frsize } else { st.bsize.max(512) };
        VolumeInfo {
            total_size: st.blocks.saturating_mul(unit as u64),
            free_size: st.bavail.saturating_mul(unit as u64),
            allocation_unit: unit,
            sector_size: 512,
            max_component_length: if st.namelen > 0 { st.namelen.min(caps.max_name_len) } else { caps.max_name_len },
            case_sensitive_search: caps.case_sensitive,
            case_preserved_names: caps.case_preserving,
            persistent_acls: caps.permissions,
            reparse_points: caps.symlinks,
            hard_links: caps.hard_links,
            read_only: read_only || !caps.writable,
            file_system_name: FILE_SYSTEM_NAME,
        }
    }
}

impl VolumeInfo {
    /// The `FILE_*` file system flags `GetVolumeInformation` reports (Dokan asks for them
    /// as one word; WinFSP takes them as separate volume parameters).
    pub fn file_system_flags(&self) -> u32 {
        const FILE_CASE_SENSITIVE_SEARCH: u32 = 0x0000_0001;
        const FILE_CASE_PRESERVED_NAMES: u32 = 0x0000_0002;
        const FILE_UNICODE_ON_DISK: u32 = 0x0000_0004;
        const FILE_PERSISTENT_ACLS: u32 = 0x0000_0008;
        const FILE_SUPPORTS_REPARSE_POINTS: u32 = 0x0000_0080;
        const FILE_READ_ONLY_VOLUME: u32 = 0x0008_0000;
        const FILE_SUPPORTS_HARD_LINKS: u32 = 0x0040_0000;
        let mut flags = FILE_UNICODE_ON_DISK;
        for (on, flag) in [
            (self.case_sensitive_search, FILE_CASE_SENSITIVE_SEARCH),
            (self.case_preserved_names, FILE_CASE_PRESERVED_NAMES),
            (self.persistent_acls, FILE_PERSISTENT_ACLS),
            (self.reparse_points, FILE_SUPPORTS_REPARSE_POINTS),
            (self.read_only, FILE_READ_ONLY_VOLUME),
            (self.hard_links, FILE_SUPPORTS_HARD_LINKS),
        ] {
            if on {
                flags |= flag;
            }
        }
        flags
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_system_flags_follow_the_volume_information() {
        let mut info = VolumeInfo {
            total_size: 0,
            free_size: 0,
            allocation_unit: 4096,
            sector_size: 512,
            max_component_length: 255,
            case_sensitive_search: false,
            case_preserved_names: false,
            persistent_acls: false,
            reparse_points: false,
            hard_links: false,
            read_only: false,
            file_system_name: FILE_SYSTEM_NAME,
        };
        assert_eq!(info.file_system_flags(), 0x4, "Unicode names always");
        info.case_sensitive_search = true;
        info.case_preserved_names = true;
        info.persistent_acls = true;
        assert_eq!(info.file_system_flags(), 0xF);
        info.read_only = true;
        info.hard_links = true;
        info.reparse_points = true;
        assert_eq!(info.file_system_flags(), 0x0048_008F);
    }

    fn attr(kind: FileKind, perm: u16) -> Attr {
        Attr { kind, perm, size: 10, nlink: 1, ..Attr::default() }
    }

    #[test]
    fn attributes_follow_kind_and_write_bits() {
        assert_eq!(file_attributes(&attr(FileKind::File, 0o644), "a", false), FILE_ATTRIBUTE_NORMAL);
        assert_eq!(file_attributes(&attr(FileKind::File, 0o444), "a", false), FILE_ATTRIBUTE_READONLY);
        assert_eq!(file_attributes(&attr(FileKind::Directory, 0o555), "d", false), FILE_ATTRIBUTE_DIRECTORY);
        assert_eq!(file_attributes(&attr(FileKind::Symlink, 0o777), "l", false), FILE_ATTRIBUTE_REPARSE_POINT);
        assert_eq!(file_attributes(&attr(FileKind::Fifo, 0o644), "p", false), FILE_ATTRIBUTE_SYSTEM);
        assert_eq!(file_attributes(&attr(FileKind::File, 0o644), ".git", false), FILE_ATTRIBUTE_NORMAL);
        assert_eq!(file_attributes(&attr(FileKind::File, 0o644), ".git", true), FILE_ATTRIBUTE_HIDDEN);
        assert_eq!(file_attributes(&attr(FileKind::Directory, 0o755), "..", true), FILE_ATTRIBUTE_DIRECTORY);
        let link = FileInfo::from_attr(&attr(FileKind::Symlink, 0o777), "l", false);
        assert_eq!(link.reparse_tag, IO_REPARSE_TAG_SYMLINK);
    }

    #[test]
    fn the_read_only_attribute_maps_onto_the_write_bits() {
        assert_eq!(mode_for_new(FILE_ATTRIBUTE_NORMAL, false, 0o022), 0o644);
        assert_eq!(mode_for_new(FILE_ATTRIBUTE_READONLY, false, 0o022), 0o444);
        assert_eq!(mode_for_new(FILE_ATTRIBUTE_READONLY, true, 0o022), 0o755);
        let rw = attr(FileKind::File, 0o640);
        assert_eq!(mode_for_attributes(&rw, FILE_ATTRIBUTE_READONLY, 0o022), Some(0o440));
        assert_eq!(mode_for_attributes(&rw, FILE_ATTRIBUTE_NORMAL, 0o022), None);
        assert_eq!(mode_for_attributes(&rw, 0, 0o022), None);
        let ro = attr(FileKind::File, 0o444);
        assert_eq!(mode_for_attributes(&ro, FILE_ATTRIBUTE_ARCHIVE, 0o022), Some(0o644));
        assert_eq!(mode_for_attributes(&ro, INVALID_FILE_ATTRIBUTES, 0o022), None);
    }

    #[test]
    fn sizes_and_times_fill_the_file_information() {
        let mut a = attr(FileKind::File, 0o644);
        a.size = 5000;
        a.ino = 42;
        a.ctime = plugfs_plugin_api::Timestamp::new(1, 0);
        let info = FileInfo::from_attr(&a, "f", false);
        assert_eq!((info.file_size, info.allocation_size, info.index_number), (5000, 8192, 42));
        assert_eq!(info.creation_time, info.change_time, "no crtime: creation is the change time");
        a.blocks = 16;
        assert_eq!(FileInfo::from_attr(&a, "f", false).allocation_size, 8192);
    }

    #[test]
    fn volume_information_comes_from_statfs_and_capabilities() {
        let st =
            StatFs { blocks: 100, bfree: 60, bavail: 50, frsize: 4096, bsize: 4096, namelen: 255, ..StatFs::default() };
        let caps = Capabilities { case_sensitive: false, ..Capabilities::POSIX };
        let v = VolumeInfo::new(&st, &caps, false);
        assert_eq!((v.total_size, v.free_size, v.allocation_unit), (409_600, 204_800, 4096));
        assert!(!v.case_sensitive_search && v.case_preserved_names && !v.read_only);
        assert!(VolumeInfo::new(&st, &caps, true).read_only);
        assert!(VolumeInfo::new(&st, &Capabilities::NONE, false).read_only);
    }
}
