//! Errors at the plugin boundary: a POSIX errno number plus an optional message for logs.
//!
//! The errno values are Linux's and are fixed by the ABI: they mean the same on every
//! platform. Frontends for other operating systems (WinFSP, Dokan) map them to their own
//! codes in one table.

use std::borrow::Cow;
use std::fmt;

/// A POSIX error number with the values Linux uses. These values are part of the ABI.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

macro_rules! errnos {
    ($($(#[$m:meta])* $name:ident = $val:expr;)*) => {
        impl Errno {
            $($(#[$m])* pub const $name: Errno = Errno($val);)*

            /// The symbolic name (`"ENOENT"`), or `None` for a number this crate does not name.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($val => Some(stringify!($name)),)*
                    _ => None,
                }
            }
        }
    };
}

errnos! {
    /// Operation not permitted.
    EPERM = 1;
    /// No such file or directory.
    ENOENT = 2;
    /// Input/output error. Also what a panicking plugin call turns into.
    EIO = 5;
    /// No such device or address (`lseek` past the end with `SEEK_DATA`/`SEEK_HOLE`).
    ENXIO = 6;
    /// Argument list too long.
    E2BIG = 7;
    /// Bad file handle.
    EBADF = 9;
    /// Try again.
    EAGAIN = 11;
    /// Out of memory.
    ENOMEM = 12;
    /// Permission denied.
    EACCES = 13;
    /// Device or resource busy.
    EBUSY = 16;
    /// File exists.
    EEXIST = 17;
    /// Cross-device link.
    EXDEV = 18;
    /// No such device.
    ENODEV = 19;
    /// Not a directory.
    ENOTDIR = 20;
    /// Is a directory.
    EISDIR = 21;
    /// Invalid argument.
    EINVAL = 22;
    /// Too many open files in system.
    ENFILE = 23;
    /// Too many open files.
    EMFILE = 24;
    /// Text file busy.
    ETXTBSY = 26;
    /// File too large.
    EFBIG = 27;
    /// No space left on device.
    ENOSPC = 28;
    /// Illegal seek.
    ESPIPE = 29;
    /// Read-only file system.
    EROFS = 30;
    /// Too many links.
    EMLINK = 31;
    /// Result out of range (an xattr or readlink buffer too small).
    ERANGE = 34;
    /// File name too long.
    ENAMETOOLONG = 36;
    /// Function not implemented. Plugins should not use it for operations a caller must be
    /// able to rely on; see the defaults of [`crate::FileSystem`].
    ENOSYS = 38;
    /// Directory not empty.
    ENOTEMPTY = 39;
    /// Too many levels of symbolic links.
    ELOOP = 40;
    /// No data available (missing xattr).
    ENODATA = 61;
    /// Value too large for defined data type.
    EOVERFLOW = 75;
    /// Operation not supported (same value as `ENOTSUP` on Linux).
    EOPNOTSUPP = 95;
    /// Connection timed out.
    ETIMEDOUT = 110;
    /// Stale file handle.
    ESTALE = 116;
    /// Disk quota exceeded.
    EDQUOT = 122;
    /// Operation canceled.
    ECANCELED = 125;
}

impl Errno {
    /// Operation not supported; Linux gives it the same number as [`Errno::EOPNOTSUPP`].
    pub const ENOTSUP: Errno = Errno(95);
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "errno {}", self.0),
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The error every [`crate::FileSystem`] operation returns: an errno for the caller and an
/// optional message for the host's logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Error {
    errno: Errno,
    message: Option<Cow<'static, str>>,
    /// Set only by the host's loader: the plugin's code panicked in this call.
    plugin_panicked: bool,
}

impl Error {
    /// An error with only an errno.
    pub const fn new(errno: Errno) -> Self {
        Error { errno, message: None, plugin_panicked: false }
    }

    /// An error with an errno and a message for logs (the caller sees only the errno).
    pub fn with_message(errno: Errno, message: impl Into<Cow<'static, str>>) -> Self {
        Error { errno, message: Some(message.into()), plugin_panicked: false }
    }

    /// The `EIO` the host's loader answers when the plugin's code panicked: hosts count
    /// these (metrics) without reading messages.
    pub fn plugin_panic(message: impl Into<Cow<'static, str>>) -> Self {
        Error { errno: Errno::EIO, message: Some(message.into()), plugin_panicked: true }
    }

    /// Whether this is the loader's answer to a panic in the plugin (see [`Error::plugin_panic`]).
    pub fn is_plugin_panic(&self) -> bool {
        self.plugin_panicked
    }

    /// The errno the caller sees.
    pub fn errno(&self) -> Errno {
        self.errno
    }

    /// The message for logs, if any.
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }

    /// Converts an OS error. On Linux the raw number is already the ABI's errno; elsewhere
    /// the error kind is mapped, falling back to `EIO`.
    pub fn from_io(err: &std::io::Error) -> Self {
        #[cfg(target_os = "linux")]
        if let Some(raw) = err.raw_os_error() {
            return Error::new(Errno(raw));
        }
        use std::io::ErrorKind as K;
        let errno = match err.kind() {
            K::NotFound => Errno::ENOENT,
            K::PermissionDenied => Errno::EACCES,
            K::AlreadyExists => Errno::EEXIST,
            K::InvalidInput | K::InvalidData => Errno::EINVAL,
            K::Unsupported => Errno::EOPNOTSUPP,
            K::OutOfMemory => Errno::ENOMEM,
            K::TimedOut => Errno::ETIMEDOUT,
            K::WouldBlock => Errno::EAGAIN,
            _ => Errno::EIO,
        };
        Error::with_message(errno, err.to_string())
    }
}

impl From<Errno> for Error {
    fn from(errno: Errno) -> Self {
        Error::new(errno)
    }
}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        Error::from_io(&err)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.message {
            Some(m) => write!(f, "{:?}: {}", self.errno, m),
            None => write!(f, "{:?}", self.errno),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for Error {}

/// The result type of every [`crate::FileSystem`] operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_values_are_linux_numbers() {
        assert_eq!(Errno::ENOENT.0, 2);
        assert_eq!(Errno::ENOTEMPTY.0, 39);
        assert_eq!(Errno::ENODATA.0, 61);
        assert_eq!(Errno::ENOTSUP, Errno::EOPNOTSUPP);
        assert_eq!(format!("{:?}", Errno(9999)), "errno 9999");
    }

    #[test]
    fn io_errors_keep_their_errno() {
        let e = Error::from_io(&std::io::Error::from_raw_os_error(39));
        assert_eq!(e.errno(), Errno::ENOTEMPTY);
    }
}
