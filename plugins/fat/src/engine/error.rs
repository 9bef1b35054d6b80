//! The engine's errors, each with the errno a POSIX caller gets for it.

/// What can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image could not be read or written.
    #[error("image IO: {0}")]
    Io(#[from] std::io::Error),
    /// The boot sector does not describe a FAT volume this engine can serve.
    #[error("bad boot sector: {0}")]
    BadBootSector(String),
    /// On-disk structures contradict each other (a chain that loops, runs past the volume,
    /// is shorter than the file, ...). The affected file answers EIO.
    #[error("corrupt filesystem: {0}")]
    Corrupt(String),
    #[error("no such file or directory")]
    NotFound,
    #[error("name exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("no space left on the volume")]
    NoSpace,
    #[error("read-only volume")]
    ReadOnly,
    /// A name FAT cannot store (forbidden characters, only dots, ...).
    #[error("invalid name: {0}")]
    InvalidName(String),
    /// Longer than 255 UTF-16 units.
    #[error("name longer than 255 UTF-16 units")]
    NameTooLong,
    /// Past FAT's 4 GiB - 1 file size limit.
    #[error("file larger than FAT allows (4 GiB - 1)")]
    FileTooBig,
    /// An operation FAT's structure does not allow (moving a directory into itself, ...).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// Another process holds the image's lock.
    #[error("image is in use: {0}")]
    Busy(String),
}

impl Error {
    /// The POSIX errno for this error, as Linux's vfat would answer.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            Error::BadBootSector(_) | Error::Corrupt(_) => libc::EIO,
            Error::NotFound => libc::ENOENT,
            Error::Exists => libc::EEXIST,
            Error::NotDir => libc::ENOTDIR,
            Error::IsDir => libc::EISDIR,
            Error::NotEmpty => libc::ENOTEMPTY,
            Error::NoSpace => libc::ENOSPC,
            Error::ReadOnly => libc::EROFS,
            Error::InvalidName(_) | Error::Invalid(_) => libc::EINVAL,
            Error::NameTooLong => libc::ENAMETOOLONG,
            Error::FileTooBig => libc::EFBIG,
            Error::Busy(_) => libc::EBUSY,
        }
    }
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
