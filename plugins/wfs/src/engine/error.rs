//! The engine's errors, each with the errno the plugin answers.

/// What went wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing the image failed.
    #[error("image IO: {0}")]
    Io(#[from] std::io::Error),
    /// A block failed its checksum or did not decode: the image is damaged there.
    #[error("corrupt image: {0}")]
    Corrupt(String),
    /// No valid superblock, an unknown version or feature: not an image this engine reads.
    #[error("not a usable WFS image: {0}")]
    Format(String),
    /// A POSIX error for the caller (ENOENT, EEXIST, ENOSPC, ...).
    #[error("{what} (errno {errno})")]
    Posix {
        /// The errno number.
        errno: i32,
        /// What was refused.
        what: &'static str,
    },
}

impl Error {
    /// The errno the plugin answers with.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            Error::Corrupt(_) | Error::Format(_) => libc::EIO,
            Error::Posix { errno, .. } => *errno,
        }
    }
}

/// A POSIX error.
pub(crate) fn posix(errno: i32, what: &'static str) -> Error {
    Error::Posix { errno, what }
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
