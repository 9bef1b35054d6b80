//! The [`FileSystem`] operations, each a short function over the model.

use super::*;
use crate::model::*;

impl FileSystem for MemFs {
    fn lookup(&self, _req: &Request, parent: NodeId, name: &OsStr) -> Result<Entry> {
        // As Linux filesystems do: a name no entry can have is too long, not missing.
        if name.len() > MAX_NAME_LEN {
            return Err(err(Errno::ENAMETOOLONG));
        }
        let mut tree = self.tree_mut()?;
        let id = tree.child(parent, name)?.ok_or(err(Errno::ENOENT))?;
        tree.entry(id)
    }

    fn forget(&self, node: NodeId, nlookup: u64) {
        // forget cannot report errors; with a poisoned lock there is nothing to free safely.
        if let Ok(mut tree) = self.tree.write() {
            if let Some(n) = tree.nodes.get_mut(&node) {
                n.lookups = n.lookups.saturating_sub(nlookup);
            }
            tree.maybe_free(node);
        }
    }

    fn getattr(&self, _req: &Request, node: NodeId, _handle: Option<Handle>) -> Result<AttrOut> {
        Ok(AttrOut { attr: self.tree()?.node(node)?.attr(node), ttl: TTL })
    }

    fn setattr(&self, _req: &Request, node: NodeId, set: &SetAttr) -> Result<AttrOut> {
        self.check_writable()?;
        let mut tree = self.tree_mut()?;
        // The size is the one change that can fail (ENOSPC), so it goes first: a refused
        // setattr changes nothing.
        if let Some(size) = set.size {
            tree.truncate(node, size)?;
            tree.node_mut(node)?.touch_modified();
        }
        let now = Timestamp::now();
        let resolve = |t: SetTime| match t {
            SetTime::Now => now,
            SetTime::At(t) => t,
        };
        let n = tree.node_mut(node)?;
        if let Some(mode) = set.mode {
            n.perm = (mode & 0o7777) as u16;
        }
        if let Some(uid) = set.uid {
            n.uid = uid;
        }
        if let Some(gid) = set.gid {
            n.gid = gid;
        }
        if let Some(atime) = set.atime {
            n.atime = resolve(atime);
        }
        if let Some(mtime) = set.mtime {
            n.mtime = resolve(mtime);
        }
        // Any attribute change is a status change.
        n.ctime = set.ctime.unwrap_or(now);
        Ok(AttrOut { attr: n.attr(node), ttl: TTL })
    }

    fn readlink(&self, _req: &Request, node: NodeId, buf: &mut [u8]) -> Result<usize> {
        match &self.tree()?.node(node)?.content {
            Content::Symlink(target) if target.len() <= buf.len() => copy_out(target, buf),
            Content::Symlink(_) => Err(err(Errno::ERANGE)),
            _ => Err(err(Errno::EINVAL)),
        }
    }

    fn mknod(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32, rdev: u32) -> Result<Entry> {
        self.check_writable()?;
        // mknod(2) with no type bits makes a regular file.
        let kind = FileKind::from_mode(mode).unwrap_or(FileKind::File);
        let content = match kind {
            FileKind::File => Content::File { data: Vec::new(), allocated: 0 },
            FileKind::Directory | FileKind::Symlink => return Err(err(Errno::EPERM)),
            _ => Content::Special,
        };
        let mut tree = self.tree_mut()?;
        let id = tree.create_node(req, parent, name, kind, mode, content)?;
        tree.node_mut(id)?.rdev = rdev;
        tree.entry(id)
    }

    fn mkdir(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32) -> Result<Entry> {
        self.check_writable()?;
        let mut tree = self.tree_mut()?;
        let id = tree.create_node(req, parent, name, FileKind::Directory, mode, Content::Dir(Dir::new(parent)))?;
        tree.entry(id)
    }

    fn unlink(&self, _req: &Request, parent: NodeId, name: &OsStr) -> Result<()> {
        self.check_writable()?;
        let mut tree = self.tree_mut()?;
        let id = tree.child(parent, name)?.ok_or(err(Errno::ENOENT))?;
        if tree.node(id)?.kind == FileKind::Directory {
            return Err(err(Errno::EISDIR));
        }
        tree.remove_entry(parent, name)?;
        let n = tree.node_mut(id)?;
        n.nlink -= 1;
        n.ctime = Timestamp::now();
        tree.maybe_free(id);
        Ok(())
    }

    fn rmdir(&self, _req: &Request, parent: NodeId, name: &OsStr) -> Result<()> {
        self.check_writable()?;
        let mut tree = self.tree_mut()?;
        let id = tree.child(parent, name)?.ok_or(err(Errno::ENOENT))?;
        if !tree.dir(id)?.entries.is_empty() {
            return Err(err(Errno::ENOTEMPTY));
        }
        tree.remove_entry(parent, name)?;
        tree.node_mut(id)?.nlink = 0;
        tree.node_mut(parent)?.nlink -= 1;
        tree.maybe_free(id);
        Ok(())
    }

    fn symlink(&self, req: &Request, parent: NodeId, name: &OsStr, target: &OsStr) -> Result<Entry> {
        self.check_writable()?;
        let target = target.as_encoded_bytes().to_vec();
        if target.is_empty() {
            return Err(err(Errno::ENOENT));
        }
        let mut tree = self.tree_mut()?;
        let id = tree.create_node(req, parent, name, FileKind::Symlink, 0o777, Content::Symlink(target))?;
        tree.entry(id)
    }

    fn link(&self, _req: &Request, node: NodeId, new_parent: NodeId, new_name: &OsStr) -> Result<Entry> {
        self.check_writable()?;
        check_name(new_name)?;
        let mut tree = self.tree_mut()?;
        match tree.node(node)? {
            n if n.kind == FileKind::Directory => return Err(err(Errno::EPERM)),
            n if n.nlink == 0 => return Err(err(Errno::ENOENT)),
            _ => {}
        }
        tree.check_live_dir(new_parent)?;
        if tree.child(new_parent, new_name)?.is_some() {
            return Err(err(Errno::EEXIST));
        }
        tree.add_entry(new_parent, new_name, node)?;
        let n = tree.node_mut(node)?;
        n.nlink += 1;
        n.ctime = Timestamp::now();
        tree.entry(node)
    }

    fn rename(
        &self,
        _req: &Request,
        parent: NodeId,
        name: &OsStr,
        new_parent: NodeId,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> Result<()> {
        self.check_writable()?;
        // We honour NOREPLACE and EXCHANGE, not both at once, and nothing else (WHITEOUT).
        let known = RenameFlags::NOREPLACE | RenameFlags::EXCHANGE;
        if flags.0 & !known != 0 || (flags.noreplace() && flags.exchange()) {
            return Err(err(Errno::EINVAL));
        }
        check_name(new_name)?;
        let mut tree = self.tree_mut()?;
        let src = tree.child(parent, name)?.ok_or(err(Errno::ENOENT))?;
        tree.check_live_dir(new_parent)?;
        let dst = tree.child(new_parent, new_name)?;
        let src_is_dir = tree.node(src)?.kind == FileKind::Directory;
        let now = Timestamp::now();

        if flags.exchange() {
            let dst = dst.ok_or(err(Errno::ENOENT))?;
            if dst == src {
                return Ok(());
            }
            let dst_is_dir = tree.node(dst)?.kind == FileKind::Directory;
            // Neither directory may end up inside itself.
            if (src_is_dir && tree.is_ancestor_or_self(src, new_parent))
                || (dst_is_dir && tree.is_ancestor_or_self(dst, parent))
            {
                return Err(err(Errno::EINVAL));
            }
            // Swap which node each name points at; the names keep their readdir cookies.
            if let Some(e) = tree.dir_mut(parent)?.entries.get_mut(name) {
                e.0 = dst;
            }
            if let Some(e) = tree.dir_mut(new_parent)?.entries.get_mut(new_name) {
                e.0 = src;
            }
            if parent != new_parent {
                if let Content::Dir(d) = &mut tree.node_mut(src)?.content {
                    d.parent = new_parent;
                }
                if let Content::Dir(d) = &mut tree.node_mut(dst)?.content {
                    d.parent = parent;
                }
                // A directory moving to the other parent moves its `..` link with it.
                if src_is_dir && !dst_is_dir {
                    tree.node_mut(parent)?.nlink -= 1;
                    tree.node_mut(new_parent)?.nlink += 1;
                } else if dst_is_dir && !src_is_dir {
                    tree.node_mut(new_parent)?.nlink -= 1;
                    tree.node_mut(parent)?.nlink += 1;
                }
            }
            for id in [src, dst] {
                tree.node_mut(id)?.ctime = now;
            }
            for id in [parent, new_parent] {
                tree.node_mut(id)?.touch_modified();
            }
            return Ok(());
        }

        if let Some(dst) = dst {
            if flags.noreplace() {
                return Err(err(Errno::EEXIST));
            }
            // The same name, or two hard links to one file: POSIX says do nothing.
            if dst == src {
                return Ok(());
            }
            match (src_is_dir, tree.node(dst)?.kind == FileKind::Directory) {
                (true, false) => return Err(err(Errno::ENOTDIR)),
                (false, true) => return Err(err(Errno::EISDIR)),
                (true, true) if !tree.dir(dst)?.entries.is_empty() => return Err(err(Errno::ENOTEMPTY)),
                _ => {}
            }
        }
        if src_is_dir && tree.is_ancestor_or_self(src, new_parent) {
            return Err(Error::with_message(Errno::EINVAL, "cannot move a directory into itself"));
        }

        // All checks passed: from here on nothing fails.
        if let Some(dst) = dst {
            tree.remove_entry(new_parent, new_name)?;
            let n = tree.node_mut(dst)?;
            n.ctime = now;
            if n.kind == FileKind::Directory {
                n.nlink = 0;
                tree.node_mut(new_parent)?.nlink -= 1;
            } else {
                n.nlink -= 1;
            }
        }
        tree.remove_entry(parent, name)?;
        tree.add_entry(new_parent, new_name, src)?;
        if src_is_dir && parent != new_parent {
            if let Content::Dir(d) = &mut tree.node_mut(src)?.content {
                d.parent = new_parent;
            }
            tree.node_mut(parent)?.nlink -= 1;
            tree.node_mut(new_parent)?.nlink += 1;
        }
        tree.node_mut(src)?.ctime = now;
        if let Some(dst) = dst {
            tree.maybe_free(dst);
        }
        Ok(())
    }

    fn open(&self, _req: &Request, node: NodeId, flags: i32) -> Result<Opened> {
        let truncate = flags & O_TRUNC != 0;
        if flags & O_ACCMODE != O_RDONLY || truncate {
            self.check_writable()?;
        }
        let mut tree = self.tree_mut()?;
        match tree.node(node)?.kind {
            FileKind::Directory => return Err(err(Errno::EISDIR)),
            FileKind::File if truncate => {
                tree.truncate(node, 0)?;
                tree.node_mut(node)?.touch_modified();
            }
            _ => {}
        }
        tree.open_handle(node, flags)
    }

    fn create(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32, flags: i32) -> Result<(Entry, Opened)> {
        self.check_writable()?;
        let mut tree = self.tree_mut()?;
        let id = match tree.child(parent, name)? {
            // The kernel sends `create` only for names it believes absent; if another
            // caller made it meanwhile, answer as open(2) with O_CREAT would.
            Some(_) if flags & O_EXCL != 0 => return Err(err(Errno::EEXIST)),
            Some(id) => {
                match tree.node(id)?.kind {
                    FileKind::Directory => return Err(err(Errno::EISDIR)),
                    FileKind::File if flags & O_TRUNC != 0 => {
                        tree.truncate(id, 0)?;
                        tree.node_mut(id)?.touch_modified();
                    }
                    _ => {}
                }
                id
            }
            None => {
                let content = Content::File { data: Vec::new(), allocated: 0 };
                tree.create_node(req, parent, name, FileKind::File, mode, content)?
            }
        };
        let entry = tree.entry(id)?;
        let opened = tree.open_handle(id, flags)?;
        Ok((entry, opened))
    }

    fn read(&self, _req: &Request, node: NodeId, handle: Handle, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let tree = self.tree()?;
        if tree.handle_flags(handle, node)? & O_ACCMODE == O_WRONLY {
            return Err(err(Errno::EBADF));
        }
        match &tree.node(node)?.content {
            Content::File { data, .. } => {
                // memfs does not update atime on read (as with `noatime`), so reads can
                // share the lock.
                let start = usize::try_from(offset).unwrap_or(usize::MAX).min(data.len());
                let n = buf.len().min(data.len() - start);
                buf[..n].copy_from_slice(&data[start..start + n]);
                Ok(n)
            }
            Content::Dir(_) => Err(err(Errno::EISDIR)),
            _ => Err(err(Errno::EINVAL)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        node: NodeId,
        handle: Handle,
        offset: u64,
        data: &[u8],
        flags: i32,
    ) -> Result<usize> {
        self.check_writable()?;
        let mut tree = self.tree_mut()?;
        let open_flags = tree.handle_flags(handle, node)?;
        if open_flags & O_ACCMODE == O_RDONLY {
            return Err(err(Errno::EBADF));
        }
        let Content::File { data: old, allocated } = &tree.node(node)?.content else {
            return Err(err(Errno::EINVAL));
        };
        let (size, allocated) = (old.len() as u64, *allocated);
        // O_APPEND: every write goes to the end, whatever offset the kernel computed.
        let offset = if (open_flags | flags) & O_APPEND != 0 { size } else { offset };
        let end = offset.checked_add(data.len() as u64).ok_or(err(Errno::EFBIG))?;
        if end > size {
            tree.resize_file(node, end, allocated.max(end))?;
        }
        let n = tree.node_mut(node)?;
        if let Content::File { data: stored, .. } = &mut n.content {
            // `end` fits in usize: the file is at least `end` bytes long now.
            stored[offset as usize..end as usize].copy_from_slice(data);
        }
        n.touch_modified();
        Ok(data.len())
    }

    fn release(&self, _req: &Request, node: NodeId, handle: Handle, _flags: i32, _flush: bool) -> Result<()> {
        self.tree_mut()?.close_handle(handle, node)
    }

    fn opendir(&self, _req: &Request, node: NodeId, flags: i32) -> Result<Opened> {
        let mut tree = self.tree_mut()?;
        tree.dir(node)?;
        tree.open_handle(node, flags)
    }

    fn readdir(&self, _req: &Request, node: NodeId, handle: Handle, cookie: u64, sink: &mut dyn DirSink) -> Result<()> {
        let tree = self.tree()?;
        tree.handle_flags(handle, node)?;
        let dir = tree.dir(node)?;
        let dot = |name: &'static [u8], ino, cookie| DirEntry { ino, kind: FileKind::Directory, name, cookie };
        if cookie < 1 && !sink.add(&dot(b".", node, 1)) {
            return Ok(());
        }
        if cookie < 2 && !sink.add(&dot(b"..", dir.parent, 2)) {
            return Ok(());
        }
        // Resume after the entry whose serial is `cookie`, in serial order.
        for (&serial, name) in dir.by_serial.range((Bound::Excluded(cookie.max(2)), Bound::Unbounded)) {
            let Some(&(id, _)) = dir.entries.get(name) else { continue };
            let kind = tree.node(id).map(|n| n.kind).unwrap_or_default();
            if !sink.add(&DirEntry { ino: id, kind, name: name.as_encoded_bytes(), cookie: serial }) {
                break;
            }
        }
        Ok(())
    }

    fn releasedir(&self, _req: &Request, node: NodeId, handle: Handle) -> Result<()> {
        self.tree_mut()?.close_handle(handle, node)
    }

    fn statfs(&self, _req: &Request, _node: NodeId) -> Result<StatFs> {
        let tree = self.tree()?;
        let bs = BLOCK_SIZE as u64;
        let blocks = tree.max_bytes.unwrap_or(UNLIMITED_BYTES) / bs;
        let bfree = blocks.saturating_sub(tree.used_bytes.div_ceil(bs));
        let files = tree.max_files.unwrap_or(UNLIMITED_BYTES);
        let ffree = files.saturating_sub(tree.nodes.len() as u64);
        Ok(StatFs {
            blocks,
            bfree,
            bavail: bfree,
            files,
            ffree,
            bsize: BLOCK_SIZE,
            namelen: MAX_NAME_LEN as u32,
            frsize: BLOCK_SIZE,
        })
    }

    fn setxattr(&self, _req: &Request, node: NodeId, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        self.check_writable()?;
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return Err(err(Errno::ERANGE));
        }
        if value.len() > MAX_XATTR_VALUE {
            return Err(err(Errno::E2BIG));
        }
        let mut tree = self.tree_mut()?;
        let n = tree.node_mut(node)?;
        match (n.xattrs.contains_key(name), flags) {
            (true, f) if f & XATTR_CREATE != 0 => return Err(err(Errno::EEXIST)),
            (false, f) if f & XATTR_REPLACE != 0 => return Err(err(Errno::ENODATA)),
            _ => {}
        }
        n.xattrs.insert(name.to_owned(), value.to_vec());
        n.ctime = Timestamp::now();
        Ok(())
    }

    fn getxattr(&self, _req: &Request, node: NodeId, name: &OsStr, buf: &mut [u8]) -> Result<usize> {
        let tree = self.tree()?;
        let value = tree.node(node)?.xattrs.get(name).ok_or(err(Errno::ENODATA))?;
        copy_out(value, buf)
    }

    fn listxattr(&self, _req: &Request, node: NodeId, buf: &mut [u8]) -> Result<usize> {
        let tree = self.tree()?;
        let mut names = Vec::new();
        for name in tree.node(node)?.xattrs.keys() {
            names.extend_from_slice(name.as_encoded_bytes());
            names.push(0);
        }
        copy_out(&names, buf)
    }

    fn removexattr(&self, _req: &Request, node: NodeId, name: &OsStr) -> Result<()> {
        self.check_writable()?;
        let mut tree = self.tree_mut()?;
        let n = tree.node_mut(node)?;
        n.xattrs.remove(name).ok_or(err(Errno::ENODATA))?;
        n.ctime = Timestamp::now();
        Ok(())
    }

    fn fallocate(
        &self,
        _req: &Request,
        node: NodeId,
        handle: Handle,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<()> {
        self.check_writable()?;
        // Mode 0 allocates (and extends the size); KEEP_SIZE only allocates. Punching
        // holes and the other modes are not supported, as `CAPABILITIES` says.
        if mode & !fallocate_mode::KEEP_SIZE != 0 {
            return Err(err(Errno::EOPNOTSUPP));
        }
        if length == 0 {
            return Err(err(Errno::EINVAL));
        }
        let mut tree = self.tree_mut()?;
        if tree.handle_flags(handle, node)? & O_ACCMODE == O_RDONLY {
            return Err(err(Errno::EBADF));
        }
        let end = offset.checked_add(length).filter(|&e| e <= MAX_FILE_SIZE).ok_or(err(Errno::EFBIG))?;
        let (size, allocated) = match &tree.node(node)?.content {
            Content::File { data, allocated } => (data.len() as u64, *allocated),
            Content::Dir(_) => return Err(err(Errno::EISDIR)),
            _ => return Err(err(Errno::ENODEV)),
        };
        let new_size = if mode & fallocate_mode::KEEP_SIZE != 0 { size } else { size.max(end) };
        // Preallocating is only a charge against `max_bytes`: later writes into it cannot
        // fail with ENOSPC, which is what fallocate promises.
        tree.resize_file(node, new_size, allocated.max(end))?;
        tree.node_mut(node)?.touch_modified();
        Ok(())
    }
}
