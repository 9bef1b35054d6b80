//! The [`FileSystem`] trait: what a plugin implements, and what the host calls.

use std::ffi::OsStr;

use crate::error::{Errno, Error, Result};
use crate::types::*;

/// A mounted filesystem, as a plugin serves it.
///
/// The host calls these methods from many threads at once, synchronously; a plugin that
/// needs async IO runs its own runtime inside and blocks on it here. Nodes are addressed by
/// [`NodeId`] with lookup reference counts, exactly like FUSE's low-level protocol: every
/// method that returns an [`Entry`] hands the host one reference, which comes back through
/// [`FileSystem::forget`].
///
/// Only [`lookup`](Self::lookup), [`getattr`](Self::getattr), [`read`](Self::read) and
/// [`readdir`](Self::readdir) are required. Every other method has a default that answers as
/// POSIX expects of a filesystem without that feature (`EROFS` for changes, `EPERM` for
/// links and special files, `ENOTSUP` for xattrs, ...), never `ENOSYS`.
///
/// Names are single path components: never empty, never `.` or `..`, never containing `/`.
/// The host guarantees this before calling.
#[allow(clippy::too_many_arguments)]
pub trait FileSystem: Send + Sync + 'static {
    /// Looks up `name` in directory `parent`. On success the host holds one more lookup
    /// reference on the returned node.
    fn lookup(&self, req: &Request, parent: NodeId, name: &OsStr) -> Result<Entry>;

    /// Drops `nlookup` lookup references on `node`. When none are left and the node is not
    /// open, the plugin may free what it keeps for it. The root is never forgotten.
    fn forget(&self, node: NodeId, nlookup: u64) {
        let _ = (node, nlookup);
    }

    /// Returns the attributes of `node`; `handle` is set when the caller has it open
    /// (`fstat`).
    fn getattr(&self, req: &Request, node: NodeId, handle: Option<Handle>) -> Result<AttrOut>;

    /// Changes attributes (chmod, chown, truncate, utimes) and returns the new ones.
    fn setattr(&self, req: &Request, node: NodeId, set: &SetAttr) -> Result<AttrOut> {
        let _ = (req, node, set);
        Err(Errno::EROFS.into())
    }

    /// Reads a symbolic link's target into `buf` and returns its length. `buf` holds at
    /// least 4096 bytes (`PATH_MAX`); answer `ERANGE` if the target does not fit.
    fn readlink(&self, req: &Request, node: NodeId, buf: &mut [u8]) -> Result<usize> {
        let _ = (req, node, buf);
        Err(Errno::EINVAL.into())
    }

    /// Creates a regular file, FIFO, socket or device node. `mode` carries the file type
    /// bits and the permission bits (already masked by the caller's umask).
    fn mknod(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32, rdev: u32) -> Result<Entry> {
        let _ = (req, parent, name, mode, rdev);
        Err(Errno::EPERM.into())
    }

    /// Creates a directory with permission bits `mode`.
    fn mkdir(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32) -> Result<Entry> {
        let _ = (req, parent, name, mode);
        Err(Errno::EROFS.into())
    }

    /// Removes a non-directory entry.
    fn unlink(&self, req: &Request, parent: NodeId, name: &OsStr) -> Result<()> {
        let _ = (req, parent, name);
        Err(Errno::EROFS.into())
    }

    /// Removes an empty directory.
    fn rmdir(&self, req: &Request, parent: NodeId, name: &OsStr) -> Result<()> {
        let _ = (req, parent, name);
        Err(Errno::EROFS.into())
    }

    /// Creates a symbolic link `name` in `parent` pointing at `target`.
    fn symlink(&self, req: &Request, parent: NodeId, name: &OsStr, target: &OsStr) -> Result<Entry> {
        let _ = (req, parent, name, target);
        Err(Errno::EPERM.into())
    }

    /// Creates a hard link to `node` as `new_name` in `new_parent`.
    fn link(&self, req: &Request, node: NodeId, new_parent: NodeId, new_name: &OsStr) -> Result<Entry> {
        let _ = (req, node, new_parent, new_name);
        Err(Errno::EPERM.into())
    }

    /// Renames `name` in `parent` to `new_name` in `new_parent`, honouring
    /// [`RenameFlags::NOREPLACE`] and [`RenameFlags::EXCHANGE`]. A plugin that does not
    /// support a flag it is given answers `EINVAL`, as Linux filesystems do.
    fn rename(
        &self,
        req: &Request,
        parent: NodeId,
        name: &OsStr,
        new_parent: NodeId,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> Result<()> {
        let _ = (req, parent, name, new_parent, new_name, flags);
        Err(Errno::EROFS.into())
    }

    /// Opens a file. `flags` are the open(2) flags (see [`open_flags`]) without `O_CREAT`
    /// and `O_EXCL`; `O_TRUNC` may be present.
    fn open(&self, req: &Request, node: NodeId, flags: i32) -> Result<Opened> {
        let _ = (req, node);
        if flags & open_flags::O_ACCMODE != open_flags::O_RDONLY || flags & open_flags::O_TRUNC != 0 {
            return Err(Errno::EROFS.into());
        }
        Ok(Opened::default())
    }

    /// Creates and opens a regular file atomically. `mode` holds permission bits (already
    /// masked); `flags` are the open(2) flags. Returns the new entry (one lookup reference)
    /// and the open handle.
    fn create(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32, flags: i32) -> Result<(Entry, Opened)> {
        let _ = (req, parent, name, mode, flags);
        Err(Errno::EROFS.into())
    }

    /// Reads up to `buf.len()` bytes at `offset` into `buf` and returns how many were read.
    /// Fewer than asked means end of file.
    fn read(&self, req: &Request, node: NodeId, handle: Handle, offset: u64, buf: &mut [u8]) -> Result<usize>;

    /// Writes `data` at `offset` and returns how many bytes were written (all of them,
    /// unless an error stops it part way).
    fn write(
        &self,
        req: &Request,
        node: NodeId,
        handle: Handle,
        offset: u64,
        data: &[u8],
        flags: i32,
    ) -> Result<usize> {
        let _ = (req, node, handle, offset, data, flags);
        Err(Errno::EBADF.into())
    }

    /// Called on every `close` of a file descriptor of an open file; a place to report
    /// deferred write errors.
    fn flush(&self, req: &Request, node: NodeId, handle: Handle, lock_owner: u64) -> Result<()> {
        let _ = (req, node, handle, lock_owner);
        Ok(())
    }

    /// The last close of an open file. Exactly one per successful `open`/`create`.
    fn release(&self, req: &Request, node: NodeId, handle: Handle, flags: i32, flush: bool) -> Result<()> {
        let _ = (req, node, handle, flags, flush);
        Ok(())
    }

    /// Makes the file's data (and, unless `datasync`, its metadata) durable. When this
    /// returns `Ok`, the data must survive a crash of the process and of the machine.
    fn fsync(&self, req: &Request, node: NodeId, handle: Handle, datasync: bool) -> Result<()> {
        let _ = (req, node, handle, datasync);
        Ok(())
    }

    /// Opens a directory for listing.
    fn opendir(&self, req: &Request, node: NodeId, flags: i32) -> Result<Opened> {
        let _ = (req, node, flags);
        Ok(Opened::default())
    }

    /// Lists directory entries starting after `cookie` (0: from the start), adding them to
    /// `sink` until it is full or the directory ends. Include `.` and `..`.
    fn readdir(&self, req: &Request, node: NodeId, handle: Handle, cookie: u64, sink: &mut dyn DirSink) -> Result<()>;

    /// Closes a directory handle. Exactly one per successful `opendir`.
    fn releasedir(&self, req: &Request, node: NodeId, handle: Handle) -> Result<()> {
        let _ = (req, node, handle);
        Ok(())
    }

    /// Makes the directory's entries durable.
    fn fsyncdir(&self, req: &Request, node: NodeId, handle: Handle, datasync: bool) -> Result<()> {
        let _ = (req, node, handle, datasync);
        Ok(())
    }

    /// Filesystem statistics.
    fn statfs(&self, req: &Request, node: NodeId) -> Result<StatFs> {
        let _ = (req, node);
        Ok(StatFs { bsize: 4096, frsize: 4096, namelen: 255, ..StatFs::default() })
    }

    /// Sets an extended attribute; `flags` are [`xattr_flags`].
    fn setxattr(&self, req: &Request, node: NodeId, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        let _ = (req, node, name, value, flags);
        Err(Errno::ENOTSUP.into())
    }

    /// Gets an extended attribute. With an empty `buf`, returns the value's size; otherwise
    /// copies it into `buf` and returns its length, or answers `ERANGE` if it does not fit,
    /// and `ENODATA` if there is no such attribute.
    fn getxattr(&self, req: &Request, node: NodeId, name: &OsStr, buf: &mut [u8]) -> Result<usize> {
        let _ = (req, node, name, buf);
        Err(Errno::ENOTSUP.into())
    }

    /// Lists extended attribute names, each followed by a NUL byte, with the same size
    /// protocol as [`getxattr`](Self::getxattr). The default lists none.
    fn listxattr(&self, req: &Request, node: NodeId, buf: &mut [u8]) -> Result<usize> {
        let _ = (req, node, buf);
        Ok(0)
    }

    /// Removes an extended attribute (`ENODATA` if absent).
    fn removexattr(&self, req: &Request, node: NodeId, name: &OsStr) -> Result<()> {
        let _ = (req, node, name);
        Err(Errno::ENOTSUP.into())
    }

    /// Allocates or deallocates space; `mode` is a [`fallocate_mode`] combination.
    /// *Since ABI 1.1.*
    fn fallocate(
        &self,
        req: &Request,
        node: NodeId,
        handle: Handle,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<()> {
        let _ = (req, node, handle, offset, length, mode);
        Err(Errno::EOPNOTSUPP.into())
    }

    /// Copies a byte range between two open files inside this filesystem and returns how
    /// many bytes were copied. The default answers `EOPNOTSUPP`, on which the kernel falls
    /// back to reading and writing. *Since ABI 1.1.*
    fn copy_file_range(
        &self,
        req: &Request,
        node_in: NodeId,
        handle_in: Handle,
        offset_in: u64,
        node_out: NodeId,
        handle_out: Handle,
        offset_out: u64,
        len: u64,
        flags: u32,
    ) -> Result<usize> {
        let _ = (req, node_in, handle_in, offset_in, node_out, handle_out, offset_out, len, flags);
        Err(Errno::EOPNOTSUPP.into())
    }

    /// Finds data or holes (`SEEK_DATA`/`SEEK_HOLE`). The default treats the whole file as
    /// data, which is correct for any filesystem without sparse files. *Since ABI 1.1.*
    fn lseek(&self, req: &Request, node: NodeId, handle: Handle, offset: i64, whence: Whence) -> Result<u64> {
        defaults::lseek(self, req, node, handle, offset, whence)
    }

    /// Lists directory entries like [`readdir`](Self::readdir), each with its lookup result
    /// (see [`DirPlusSink`] for the reference counting). Override it when the backing store
    /// lists names with their attributes in one pass; the default lists with `readdir` and
    /// looks each entry up, never more than the sink takes. *Added in ABI 2.0.*
    fn readdirplus(
        &self,
        req: &Request,
        node: NodeId,
        handle: Handle,
        cookie: u64,
        sink: &mut dyn DirPlusSink,
    ) -> Result<()> {
        defaults::readdirplus(self, req, node, handle, cookie, sink)
    }

    /// This mount's capabilities, when they depend on what was opened (a backing store
    /// probed at open). `None`, the default, means the plugin's declared
    /// [`crate::PluginInfo::capabilities`]. *Added in ABI 2.0.*
    fn capabilities(&self) -> Option<Capabilities> {
        None
    }
}

/// The POSIX answers the defaults of [`FileSystem`] give, as free functions, so a host
/// can give the same answers for operations an older plugin does not have.
pub mod defaults {
    use super::*;

    /// `lseek` on a file without holes, sized by `getattr`: see [`lseek_without_holes`].
    pub fn lseek<F: FileSystem + ?Sized>(
        fs: &F,
        req: &Request,
        node: NodeId,
        handle: Handle,
        offset: i64,
        whence: Whence,
    ) -> Result<u64> {
        let size = fs.getattr(req, node, Some(handle))?.attr.size;
        lseek_without_holes(size, offset, whence)
    }

    /// `readdirplus` from `readdir` and `lookup`: lists a page of entries, then looks them
    /// up in order while the sink takes them. At most one entry is looked up that the sink
    /// then refuses, and its reference is given back at once.
    pub fn readdirplus<F: FileSystem + ?Sized>(
        fs: &F,
        req: &Request,
        node: NodeId,
        handle: Handle,
        cookie: u64,
        sink: &mut dyn DirPlusSink,
    ) -> Result<()> {
        struct Listed {
            ino: u64,
            kind: FileKind,
            name: Vec<u8>,
            cookie: u64,
        }
        /// A page of names. The kernel's reply buffer holds about 25 entries on older
        /// kernels and up to about 200 (glibc's 32 KiB getdents buffer) since Linux 6.16;
        /// names that do not fit are listed again next time, but only looked up once.
        struct Page(Vec<Listed>);
        const PAGE: usize = 128;
        impl DirSink for Page {
            fn add(&mut self, e: &DirEntry<'_>) -> bool {
                if self.0.len() >= PAGE {
                    return false;
                }
                self.0.push(Listed { ino: e.ino, kind: e.kind, name: e.name.to_vec(), cookie: e.cookie });
                true
            }
        }
        let mut page = Page(Vec::with_capacity(PAGE));
        fs.readdir(req, node, handle, cookie, &mut page)?;
        let mut added = 0;
        for item in page.0 {
            let dirent = DirEntry { ino: item.ino, kind: item.kind, name: &item.name, cookie: item.cookie };
            if item.name == b"." || item.name == b".." {
                let attr = Attr { ino: item.ino, kind: item.kind, ..Attr::default() };
                let entry = Entry { node: item.ino, attr, ..Entry::default() };
                if !sink.add(&dirent, &entry) {
                    break;
                }
                added += 1;
                continue;
            }
            let name = crate::convert::os_str_from_bytes(&item.name)?;
            let entry = match fs.lookup(req, node, name) {
                Ok(entry) => entry,
                // Removed since it was listed: leave it out, as a later readdir would.
                Err(e) if e.errno() == Errno::ENOENT => continue,
                // Hand over what we have; the caller asks again from here and gets the error.
                Err(_) if added > 0 => break,
                Err(e) => return Err(e),
            };
            if !sink.add(&dirent, &entry) {
                // Full: the caller never sees this entry, so give its reference back.
                fs.forget(entry.node, 1);
                break;
            }
            added += 1;
        }
        Ok(())
    }

    /// `lseek` on a file that is all data: `SEEK_DATA` finds `offset` itself, `SEEK_HOLE`
    /// finds the end of the file; both answer `ENXIO` at or past the end.
    pub fn lseek_without_holes(size: u64, offset: i64, whence: Whence) -> Result<u64> {
        if offset < 0 {
            return Err(Errno::EINVAL.into());
        }
        let off = offset as u64;
        match whence {
            Whence::Data if off < size => Ok(off),
            Whence::Hole if off < size => Ok(size),
            Whence::Data | Whence::Hole => Err(Errno::ENXIO.into()),
            _ => Err(Error::with_message(Errno::EINVAL, "lseek: only SEEK_DATA and SEEK_HOLE reach a plugin")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lseek_default_sees_one_data_extent() {
        assert_eq!(defaults::lseek_without_holes(100, 10, Whence::Data).unwrap(), 10);
        assert_eq!(defaults::lseek_without_holes(100, 10, Whence::Hole).unwrap(), 100);
        assert_eq!(defaults::lseek_without_holes(100, 100, Whence::Data).unwrap_err().errno(), Errno::ENXIO);
        assert_eq!(defaults::lseek_without_holes(100, -1, Whence::Data).unwrap_err().errno(), Errno::EINVAL);
    }
}
