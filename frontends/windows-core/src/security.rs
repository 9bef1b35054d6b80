//! Security descriptors derived from a node's owner, group and mode, as SDDL text. A
//! binding turns the text into a self-relative descriptor with
//! `ConvertStringSecurityDescriptorToSecurityDescriptorW` (WinFSP and Dokan both want one
//! for `GetSecurity`).
//!
//! The descriptor has three allow entries, for the owner, the group and Everyone, each
//! with the rights the mode's `rwx` triplet gives; everyone may read attributes and the
//! descriptor (as anyone may `stat` on POSIX), the owner may also change them. Windows
//! grants the union of matching entries, so an owner with fewer bits than the group or
//! others gets theirs too: POSIX's "owner bits decide" would need deny entries, which this
//! first version leaves out (docs/windows.md).

/// `FILE_GENERIC_READ`.
pub const FILE_GENERIC_READ: u32 = 0x0012_0089;
/// `FILE_GENERIC_WRITE`.
pub const FILE_GENERIC_WRITE: u32 = 0x0012_0116;
/// `FILE_GENERIC_EXECUTE`.
pub const FILE_GENERIC_EXECUTE: u32 = 0x0012_00A0;
/// `FILE_DELETE_CHILD`.
pub const FILE_DELETE_CHILD: u32 = 0x0000_0040;
/// `FILE_READ_ATTRIBUTES`.
pub const FILE_READ_ATTRIBUTES: u32 = 0x0000_0080;
/// `FILE_WRITE_ATTRIBUTES`.
pub const FILE_WRITE_ATTRIBUTES: u32 = 0x0000_0100;
/// `DELETE`.
pub const DELETE: u32 = 0x0001_0000;
/// `READ_CONTROL`.
pub const READ_CONTROL: u32 = 0x0002_0000;
/// `WRITE_DAC`.
pub const WRITE_DAC: u32 = 0x0004_0000;
/// `WRITE_OWNER`.
pub const WRITE_OWNER: u32 = 0x0008_0000;
/// `SYNCHRONIZE`.
pub const SYNCHRONIZE: u32 = 0x0010_0000;

/// How POSIX ids become SIDs. The default follows Samba's "Unix User" and "Unix Group"
/// authorities (`S-1-22-1-uid`, `S-1-22-2-gid`); a binding on Windows passes WinFSP's
/// `FspPosixMapUidToSid` mapping instead, which knows local and domain accounts.
pub trait SidMap {
    /// The SID (as text) of user `uid`.
    fn user(&self, uid: u32) -> String;
    /// The SID (as text) of group `gid`.
    fn group(&self, gid: u32) -> String;
}

/// The `S-1-22-1-uid` / `S-1-22-2-gid` mapping.
#[derive(Clone, Copy, Debug, Default)]
pub struct UnixSids;

impl SidMap for UnixSids {
    fn user(&self, uid: u32) -> String {
        format!("S-1-22-1-{uid}")
    }
    fn group(&self, gid: u32) -> String {
        format!("S-1-22-2-{gid}")
    }
}

/// The self-relative security descriptor an SDDL string stands for, as both frameworks
/// want it in their `GetSecurity` answers. An SDDL this crate did not make may be refused:
/// the error is the NTSTATUS to answer.
#[cfg(windows)]
pub fn descriptor_from_sddl(sddl: &str) -> Result<Vec<u8>, u32> {
    use windows_sys::Win32::Foundation::LocalFree;
    use windows_sys::Win32::Security::Authorization::{
        ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
    };

    let wide: Vec<u16> = sddl.encode_utf16().chain(std::iter::once(0)).collect();
    let mut descriptor = std::ptr::null_mut();
    let mut len = 0u32;
    // SAFETY: `wide` is NUL-terminated and outlives the call; the out-pointers are valid.
    let ok = unsafe {
        ConvertStringSecurityDescriptorToSecurityDescriptorW(wide.as_ptr(), SDDL_REVISION_1, &mut descriptor, &mut len)
    };
    if ok == 0 || descriptor.is_null() {
        return Err(crate::ntstatus::STATUS_INVALID_PARAMETER);
    }
    // SAFETY: on success the function allocated `len` bytes at `descriptor` with LocalAlloc;
    // they are copied out, then freed once.
    let bytes = unsafe { std::slice::from_raw_parts(descriptor.cast::<u8>(), len as usize).to_vec() };
    // SAFETY: see above; nothing refers to the allocation any more.
    unsafe { LocalFree(descriptor) };
    Ok(bytes)
}

/// The access mask one `rwx` triplet grants.
pub fn rights(triplet: u32, directory: bool) -> u32 {
    let mut mask = READ_CONTROL | FILE_READ_ATTRIBUTES | SYNCHRONIZE;
    if triplet & 0o4 != 0 {
        mask |= FILE_GENERIC_READ;
    }
    if triplet & 0o2 != 0 {
        mask |= FILE_GENERIC_WRITE;
        if directory {
            mask |= FILE_DELETE_CHILD;
        }
    }
    if triplet & 0o1 != 0 {
        mask |= FILE_GENERIC_EXECUTE;
    }
    mask
}

/// The SDDL of a node owned by `uid`:`gid` with permission bits `mode`.
pub fn sddl(uid: u32, gid: u32, mode: u32, directory: bool, sids: &dyn SidMap) -> String {
    let (owner, group) = (sids.user(uid), sids.group(gid));
    let owner_mask = rights(mode >> 6 & 7, directory) | WRITE_DAC | WRITE_OWNER | FILE_WRITE_ATTRIBUTES | DELETE;
    let group_mask = rights(mode >> 3 & 7, directory);
    let other_mask = rights(mode & 7, directory);
    format!(
        "O:{owner}G:{group}D:P(A;;0x{owner_mask:08x};;;{owner})(A;;0x{group_mask:08x};;;{group})(A;;0x{other_mask:08x};;;WD)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mode_becomes_three_allow_entries() {
        let s = sddl(1000, 100, 0o640, false, &UnixSids);
        assert!(s.starts_with("O:S-1-22-1-1000G:S-1-22-2-100D:P("), "{s}");
        let owner = rights(6, false) | WRITE_DAC | WRITE_OWNER | FILE_WRITE_ATTRIBUTES | DELETE;
        assert!(s.contains(&format!("(A;;0x{owner:08x};;;S-1-22-1-1000)")), "{s}");
        assert!(s.contains(&format!("(A;;0x{:08x};;;S-1-22-2-100)", rights(4, false))), "{s}");
        assert!(s.ends_with(&format!("(A;;0x{:08x};;;WD)", rights(0, false))), "{s}");
    }

    #[test]
    fn rights_follow_the_triplet() {
        assert_eq!(rights(0, false) & FILE_GENERIC_READ & !(READ_CONTROL | SYNCHRONIZE | FILE_READ_ATTRIBUTES), 0);
        assert_eq!(rights(4, false) & FILE_GENERIC_READ, FILE_GENERIC_READ);
        assert_eq!(rights(2, false) & FILE_DELETE_CHILD, 0);
        assert_eq!(rights(2, true) & FILE_DELETE_CHILD, FILE_DELETE_CHILD);
        assert_eq!(rights(1, true) & FILE_GENERIC_EXECUTE, FILE_GENERIC_EXECUTE);
    }
}
