//! NTSTATUS values, and the one table that turns a plugin's errno into one.
//!
//! The values are Windows' own (`ntstatus.h`), defined here as `u32` so the core needs no
//! Windows crate; the bindings cast them to their `NTSTATUS` (`i32`) type.

use plugfs_plugin_api::Errno;

macro_rules! statuses {
    ($($(#[$m:meta])* $name:ident = $val:expr;)*) => {
        $($(#[$m])* pub const $name: u32 = $val;)*

        /// The symbolic name of a status this crate defines (`"STATUS_ACCESS_DENIED"`).
        pub fn name(status: u32) -> Option<&'static str> {
            match status {
                $($val => Some(stringify!($name)),)*
                _ => None,
            }
        }
    };
}

statuses! {
    /// Success.
    STATUS_SUCCESS = 0x0000_0000;
    /// A directory query found no (more) entries.
    STATUS_NO_MORE_FILES = 0x8000_0006;
    /// Unspecified failure (an errno this table does not know).
    STATUS_UNSUCCESSFUL = 0xC000_0001;
    /// An operation the volume cannot do (`ENOSYS`).
    STATUS_INVALID_DEVICE_REQUEST = 0xC000_0010;
    /// A bad handle (`EBADF`).
    STATUS_INVALID_HANDLE = 0xC000_0008;
    /// A bad argument (`EINVAL`, contradictory create options).
    STATUS_INVALID_PARAMETER = 0xC000_000D;
    /// No such device (`ENODEV`, `ENXIO`).
    STATUS_NO_SUCH_DEVICE = 0xC000_000E;
    /// A read at or past the end of the file.
    STATUS_END_OF_FILE = 0xC000_0011;
    /// Access denied (`EACCES`, `EPERM`, a read-only file opened for writing, ...).
    STATUS_ACCESS_DENIED = 0xC000_0022;
    /// A buffer too small for the answer (`ERANGE`).
    STATUS_BUFFER_TOO_SMALL = 0xC000_0023;
    /// A name no file can have here (`ENAMETOOLONG`, reserved characters, trailing dots).
    STATUS_OBJECT_NAME_INVALID = 0xC000_0033;
    /// The last component of a path does not exist (`ENOENT`).
    STATUS_OBJECT_NAME_NOT_FOUND = 0xC000_0034;
    /// The name exists (`EEXIST`).
    STATUS_OBJECT_NAME_COLLISION = 0xC000_0035;
    /// A directory on the way to the last component does not exist or is not a directory.
    STATUS_OBJECT_PATH_NOT_FOUND = 0xC000_003A;
    /// Another open handle's share mode forbids this access, or this share mode forbids
    /// another handle's access (`ETXTBSY`, `EBUSY`).
    STATUS_SHARING_VIOLATION = 0xC000_0043;
    /// A lock could not be granted without waiting (`EAGAIN`).
    STATUS_LOCK_NOT_GRANTED = 0xC000_0055;
    /// The file is being deleted: it opens no more.
    STATUS_DELETE_PENDING = 0xC000_0056;
    /// No space left (`ENOSPC`).
    STATUS_DISK_FULL = 0xC000_007F;
    /// Out of memory or handles (`ENOMEM`).
    STATUS_INSUFFICIENT_RESOURCES = 0xC000_009A;
    /// A stale node (`ESTALE`).
    STATUS_FILE_INVALID = 0xC000_0098;
    /// A value too large for its type (`EOVERFLOW`).
    STATUS_INTEGER_OVERFLOW = 0xC000_0095;
    /// The volume is read-only (`EROFS`).
    STATUS_MEDIA_WRITE_PROTECTED = 0xC000_00A2;
    /// A timeout (`ETIMEDOUT`).
    STATUS_IO_TIMEOUT = 0xC000_00B5;
    /// A directory where a file was needed (`EISDIR`).
    STATUS_FILE_IS_A_DIRECTORY = 0xC000_00BA;
    /// Not supported (`ENOTSUP`/`EOPNOTSUPP`).
    STATUS_NOT_SUPPORTED = 0xC000_00BB;
    /// A rename across volumes (`EXDEV`).
    STATUS_NOT_SAME_DEVICE = 0xC000_00D4;
    /// A directory that must be empty is not (`ENOTEMPTY`).
    STATUS_DIRECTORY_NOT_EMPTY = 0xC000_0101;
    /// A file where a directory was needed (`ENOTDIR`).
    STATUS_NOT_A_DIRECTORY = 0xC000_0103;
    /// Too many open files (`EMFILE`, `ENFILE`).
    STATUS_TOO_MANY_OPENED_FILES = 0xC000_011F;
    /// The operation was cancelled (`ECANCELED`).
    STATUS_CANCELLED = 0xC000_0120;
    /// The file cannot be deleted (read-only, or the root).
    STATUS_CANNOT_DELETE = 0xC000_0121;
    /// An input/output error (`EIO`, and what a misbehaving plugin's answer becomes).
    STATUS_IO_DEVICE_ERROR = 0xC000_0185;
    /// Too many hard links (`EMLINK`).
    STATUS_TOO_MANY_LINKS = 0xC000_0265;
    /// The volume is being unmounted: new opens are refused ([`crate::Volume::begin_shutdown`]).
    STATUS_VOLUME_DISMOUNTED = 0xC000_026E;
    /// A symbolic link loop (`ELOOP`).
    STATUS_REPARSE_POINT_NOT_RESOLVED = 0xC000_0280;
    /// The disk quota is exhausted (`EDQUOT`).
    STATUS_DISK_QUOTA_EXCEEDED = 0xC000_0802;
    /// The file would grow past the largest size the volume stores (`EFBIG`).
    STATUS_FILE_TOO_LARGE = 0xC000_0904;
}

/// Whether `status` means success (`NT_SUCCESS`: severity success or informational).
pub fn is_success(status: u32) -> bool {
    (status as i32) >= 0
}

/// The NTSTATUS for an errno a plugin answered about the node an operation names (the last
/// path component, or an open file). `ENOENT` here is [`STATUS_OBJECT_NAME_NOT_FOUND`];
/// for a directory on the way, use [`from_errno_on_path`].
pub fn from_errno(errno: Errno) -> u32 {
    match errno {
        Errno::EPERM | Errno::EACCES => STATUS_ACCESS_DENIED,
        Errno::ENOENT => STATUS_OBJECT_NAME_NOT_FOUND,
        Errno::EIO => STATUS_IO_DEVICE_ERROR,
        Errno::ENXIO | Errno::ENODEV => STATUS_NO_SUCH_DEVICE,
        Errno::E2BIG | Errno::EINVAL | Errno::ESPIPE => STATUS_INVALID_PARAMETER,
        Errno::EBADF => STATUS_INVALID_HANDLE,
        Errno::EAGAIN => STATUS_LOCK_NOT_GRANTED,
        Errno::ENOMEM => STATUS_INSUFFICIENT_RESOURCES,
        Errno::EBUSY | Errno::ETXTBSY => STATUS_SHARING_VIOLATION,
        Errno::EEXIST => STATUS_OBJECT_NAME_COLLISION,
        Errno::EXDEV => STATUS_NOT_SAME_DEVICE,
        Errno::ENOTDIR => STATUS_NOT_A_DIRECTORY,
        Errno::EISDIR => STATUS_FILE_IS_A_DIRECTORY,
        Errno::ENFILE | Errno::EMFILE => STATUS_TOO_MANY_OPENED_FILES,
        Errno::EFBIG => STATUS_FILE_TOO_LARGE,
        Errno::ENOSPC => STATUS_DISK_FULL,
        Errno::EROFS => STATUS_MEDIA_WRITE_PROTECTED,
        Errno::EMLINK => STATUS_TOO_MANY_LINKS,
        Errno::ERANGE => STATUS_BUFFER_TOO_SMALL,
        Errno::ENAMETOOLONG => STATUS_OBJECT_NAME_INVALID,
        Errno::ENOSYS => STATUS_INVALID_DEVICE_REQUEST,
        Errno::ENOTEMPTY => STATUS_DIRECTORY_NOT_EMPTY,
        Errno::ELOOP => STATUS_REPARSE_POINT_NOT_RESOLVED,
        Errno::EOVERFLOW => STATUS_INTEGER_OVERFLOW,
        Errno::EOPNOTSUPP => STATUS_NOT_SUPPORTED,
        Errno::ETIMEDOUT => STATUS_IO_TIMEOUT,
        Errno::ESTALE => STATUS_FILE_INVALID,
        Errno::EDQUOT => STATUS_DISK_QUOTA_EXCEEDED,
        Errno::ECANCELED => STATUS_CANCELLED,
        _ => STATUS_UNSUCCESSFUL,
    }
}

/// The NTSTATUS for an errno a plugin answered while looking up a directory on the way to
/// the last component: a missing or non-directory component there is
/// [`STATUS_OBJECT_PATH_NOT_FOUND`], as Windows reports it; anything else as
/// [`from_errno`].
pub fn from_errno_on_path(errno: Errno) -> u32 {
    match errno {
        Errno::ENOENT | Errno::ENOTDIR => STATUS_OBJECT_PATH_NOT_FOUND,
        other => from_errno(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_maps_the_errnos_windows_programs_tell_apart() {
        for (errno, status) in [
            (Errno::ENOENT, STATUS_OBJECT_NAME_NOT_FOUND),
            (Errno::EEXIST, STATUS_OBJECT_NAME_COLLISION),
            (Errno::EACCES, STATUS_ACCESS_DENIED),
            (Errno::EPERM, STATUS_ACCESS_DENIED),
            (Errno::ENOTEMPTY, STATUS_DIRECTORY_NOT_EMPTY),
            (Errno::ENOSPC, STATUS_DISK_FULL),
            (Errno::EROFS, STATUS_MEDIA_WRITE_PROTECTED),
            (Errno::ENAMETOOLONG, STATUS_OBJECT_NAME_INVALID),
            (Errno::ENOTDIR, STATUS_NOT_A_DIRECTORY),
            (Errno::EISDIR, STATUS_FILE_IS_A_DIRECTORY),
            (Errno::EIO, STATUS_IO_DEVICE_ERROR),
            (Errno::EXDEV, STATUS_NOT_SAME_DEVICE),
            (Errno::EOPNOTSUPP, STATUS_NOT_SUPPORTED),
            (Errno::ENOSYS, STATUS_INVALID_DEVICE_REQUEST),
            (Errno::EDQUOT, STATUS_DISK_QUOTA_EXCEEDED),
            (Errno::EFBIG, STATUS_FILE_TOO_LARGE),
            (Errno(71), STATUS_UNSUCCESSFUL),
        ] {
            assert_eq!(from_errno(errno), status, "{errno:?} -> {:?}", name(from_errno(errno)));
        }
    }

    #[test]
    fn a_missing_directory_on_the_way_is_a_path_not_found() {
        assert_eq!(from_errno_on_path(Errno::ENOENT), STATUS_OBJECT_PATH_NOT_FOUND);
        assert_eq!(from_errno_on_path(Errno::ENOTDIR), STATUS_OBJECT_PATH_NOT_FOUND);
        assert_eq!(from_errno_on_path(Errno::EACCES), STATUS_ACCESS_DENIED);
    }

    #[test]
    fn every_errno_the_api_names_maps_to_a_named_failure() {
        for raw in 0..200 {
            let errno = Errno(raw);
            if errno.name().is_none() {
                continue;
            }
            let status = from_errno(errno);
            assert!(!is_success(status), "{errno:?}");
            assert!(name(status).is_some(), "{errno:?} -> {status:#x}");
        }
        assert!(is_success(STATUS_SUCCESS) && !is_success(STATUS_NO_MORE_FILES));
    }
}
