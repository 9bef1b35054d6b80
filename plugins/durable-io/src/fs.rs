//! [`DurableIo`], the [`FileSystem`] implementation: every operation is an *at() call on a
//! node's `O_PATH` fd with a single-component name, or IO on a handle's own fd.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use plugfs_plugin_api::{
    AttrOut, Capabilities, DirEntry, DirSink, Entry, Errno, Error, FileKind, FileSystem, Handle, NodeId, OpenError,
    Opened, ROOT_ID, RenameFlags, Request, Result, SetAttr, SetTime, StatFs, Whence, open_flags,
};
use rustix::fs::{
    AtFlags, FileType, Mode, OFlags, RawDir, SeekFrom, Statx, StatxFlags, Timespec, Timestamps, XattrFlags,
};

use crate::creds::{AsCaller, caller_groups};
use crate::durability::{Durability, sync_fd, sync_node};
use crate::handles::{DirHandle, FileHandle, HandleTable, Open};
use crate::nodes::{NodeRef, NodeTable};
use crate::probe::{Probed, probe_dir};
use crate::replace::{Replace, is_replace_temp, remove_stale, temp_flags, temp_name};
use crate::sys::{InodeKey, ProcFd, attr_from_statx, check_name, decode_dev, err, inode_key, open_beneath, stat_fd};

/// How long the kernel may cache names and attributes by default. Short, because the
/// backing directory may be changed behind our back by anything else on the machine.
pub const TTL: Duration = Duration::from_secs(1);

/// How long the kernel may cache names, attributes and missing names when the mount owns
/// its backing directory exclusively (config key `exclusive`): every change then goes
/// through the mount, and the kernel keeps its own cache up to date on each of them.
pub const EXCLUSIVE_TTL: Duration = Duration::from_secs(3600);

/// Buffers for `O_DIRECT` IO are aligned to this; it covers every logical block size Linux
/// filesystems ask for.
const DIRECT_ALIGN: usize = 4096;

/// How often `create` retries when the name it found existing vanished before it could be
/// opened (a race with a concurrent unlink).
const CREATE_RETRIES: usize = 8;

/// What a creation asked for, for [`DurableIo::restore_mode`].
#[derive(Clone, Copy)]
struct Created {
    /// The mode the caller asked for (already masked by the caller's umask).
    mode: u32,
    /// The descriptor of the new node was opened by name after the creation, so it may be
    /// something else by now; this is the kind that was created.
    verify: Option<FileKind>,
}

/// A local directory served as a plugfs filesystem. Built by
/// [`DurableIoPlugin`](crate::DurableIoPlugin) from its config, or directly with
/// [`DurableIo::open`].
pub struct DurableIo {
    nodes: NodeTable,
    handles: HandleTable,
    proc: ProcFd,
    durability: Durability,
    read_only: bool,
    /// The host runs as root, so creations switch to the caller's fsuid/fsgid.
    as_caller: bool,
    /// The root's backing inode number, shown for the root's `..` instead of whatever lies
    /// outside the root.
    root_ino: u64,
    /// What the backing filesystem supports, probed at open (see `probe.rs`).
    caps: Capabilities,
    /// `FICLONE` works on the backing filesystem.
    reflink: bool,
    /// Files opened for writing with `O_TRUNC` are replaced atomically (`replace.rs`).
    atomic_replace: bool,
    /// Open files are handed to the kernel for passthrough.
    passthrough: bool,
    /// Nothing but this mount changes the backing directory (config key `exclusive`).
    exclusive: bool,
    /// How long the kernel may cache names and attributes (config key `metadata_ttl`).
    ttl: Duration,
    /// Syncs made so far, so tests can check the policy without tracing syscalls.
    file_syncs: AtomicU64,
    dir_syncs: AtomicU64,
}

impl DurableIo {
    /// Serves the directory `root` (an absolute path to an existing directory). Problems
    /// with `root` are reported as errors of the config key `root`.
    pub fn open(root: &Path, durability: Durability, read_only: bool) -> Result<Self, OpenError> {
        let bad_root = |why: String| OpenError::config("root", format!("`{}` {why}", root.display()));
        if !root.is_absolute() {
            return Err(bad_root("is not an absolute path".into()));
        }
        let root_fd = rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| {
                bad_root(match e {
                    rustix::io::Errno::NOENT => "does not exist".into(),
                    rustix::io::Errno::NOTDIR => "is not a directory".into(),
                    e => format!("cannot be opened: {e}"),
                })
            })?;
        let st = stat_fd(root_fd.as_fd()).map_err(|e| bad_root(format!("cannot be examined: {e}")))?;
        let proc = ProcFd::open().map_err(OpenError::other)?;
        // The very directory `root_fd` holds, whatever happened to the path since.
        let probed = match proc.reopen(root_fd.as_fd(), OFlags::RDONLY | OFlags::DIRECTORY) {
            Ok(dir) => probe_dir(dir.as_fd(), !read_only),
            // Only a root the host cannot read: no probe, the POSIX answers.
            Err(e) => {
                tracing::warn!("durable-io: cannot probe {}: {e}", root.display());
                Probed { capabilities: Capabilities::POSIX, reflink: false }
            }
        };
        let mut caps = probed.capabilities;
        caps.writable &= !read_only;
        // Only a root host can act as each caller; otherwise every caller would act as
        // the host's user, and the kernel's checks are all there is.
        let as_caller = rustix::process::geteuid().is_root();
        caps.checks_permissions = as_caller;
        caps.backing_files = durability.passthrough();
        Ok(DurableIo {
            nodes: NodeTable::new(root_fd, inode_key(&st)),
            handles: HandleTable::new(),
            proc,
            durability,
            read_only,
            as_caller,
            root_ino: st.stx_ino,
            caps,
            reflink: probed.reflink,
            atomic_replace: false,
            passthrough: durability.passthrough(),
            exclusive: false,
            ttl: TTL,
            file_syncs: AtomicU64::new(0),
            dir_syncs: AtomicU64::new(0),
        })
    }

    /// Turns atomic replace on or off (config key `atomic_replace`). On, it removes
    /// temporary files a crash left in the root directory, and hands no descriptors over
    /// for the kernel's passthrough (writes to a replacing handle must reach the plugin).
    pub fn with_atomic_replace(mut self, on: bool) -> Self {
        self.atomic_replace = on;
        if on {
            self.passthrough = false;
            self.caps.backing_files = false;
            if !self.read_only
                && let Ok(root) = self.node(ROOT_ID)
                && let Ok(dir) = self.proc.reopen(root.fd.as_fd(), OFlags::RDONLY | OFlags::DIRECTORY)
            {
                let removed = remove_stale(dir.as_fd());
                if removed > 0 {
                    tracing::info!("durable-io: removed {removed} temporary file(s) of interrupted atomic replaces");
                }
            }
        }
        self
    }

    /// Sets how long the kernel may cache names and attributes (config key
    /// `metadata_ttl`), and whether the mount owns its backing directory exclusively
    /// (config key `exclusive`), in which case missing names are cached for as long.
    ///
    /// Long TTLs stay coherent for everything done through the mount: the kernel updates
    /// its cache from each reply (creations, `setattr`, `link`) and on its own for what it
    /// changes (a write's size and mtime, `unlink`/`rmdir`/`rename`, a new name replacing
    /// a negative entry). The one change durable-io makes by itself, outside any request
    /// for that name, is an atomic replace at a release: on such a mount the entries of
    /// regular files keep the short [`TTL`], so a `stat` finds the new file soon.
    ///
    /// Missing names are declared through the mount's capabilities
    /// ([`Capabilities::negative_entry_ttl`], plugin ABI 2.2), not per answer: a negative
    /// entry is as safe as the store's exclusivity, which is a property of the whole mount,
    /// and it is how FUSE daemons usually set it (libfuse's `negative_timeout` is a mount
    /// option). Reusing the entry TTL instead (no ABI change: a frontend caching every
    /// `ENOENT` for the entry TTL it saw last) would have turned negative caching on for
    /// every plugin that never asked for it, fat, wfs and s3 included, and the entry TTL
    /// answers for names that exist, not for names that do not.
    pub fn with_metadata_cache(mut self, exclusive: bool, ttl: Duration) -> Self {
        self.exclusive = exclusive;
        self.ttl = ttl;
        self.caps.negative_entry_ttl = if exclusive { ttl } else { Duration::ZERO };
        self
    }

    /// Whether the mount owns its backing directory exclusively (config key `exclusive`).
    pub fn is_exclusive(&self) -> bool {
        self.exclusive
    }

    /// What this mount supports, as probed on its backing directory when it was opened
    /// (xattrs, fallocate, holes, case sensitivity, ...; see [`crate::probe`]). Not
    /// writable on a read-only mount.
    pub fn capabilities(&self) -> Capabilities {
        self.caps
    }

    /// Whether `set` is the mode change the kernel sends after a write, or with a
    /// truncation, by a caller other than the owner (FUSE without `handle_killpriv`):
    /// nothing but the set-user-ID and set-group-ID bits removed from a regular file's
    /// current mode (and maybe a new size), by a caller with write permission on it.
    fn clears_set_id_bits_for_a_writer(&self, req: &Request, n: &NodeRef, set: &SetAttr) -> Result<bool> {
        let only_mode = set.uid.is_none() && set.gid.is_none() && set.atime.is_none() && set.mtime.is_none();
        let Some(mode) = set.mode else { return Ok(false) };
        if !only_mode || n.kind != FileKind::File || !self.as_caller {
            return Ok(false);
        }
        let current = stat_fd(n.fd.as_fd())?.stx_mode as u32 & 0o7777;
        let set_id = current & 0o6000;
        if set_id == 0 || mode & 0o7777 != current & !0o6000 {
            return Ok(false);
        }
        let _caller = self.as_caller(req)?;
        // Through /proc/self/fd: faccessat does not take AT_EMPTY_PATH. AT_EACCESS checks
        // with the current (the caller's) filesystem identity.
        let writable = rustix::fs::accessat(
            self.proc.dir(),
            ProcFd::name(n.fd.as_fd()),
            rustix::fs::Access::WRITE_OK,
            rustix::fs::AtFlags::EACCESS,
        );
        Ok(writable.is_ok())
    }

    /// Whether the backing filesystem can share blocks between files (`FICLONE`), so
    /// `copy_file_range` there is a cheap clone.
    pub fn supports_reflink(&self) -> bool {
        self.reflink
    }

    /// The durability mode this filesystem runs in.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// How many (file, directory) syncs this filesystem has made. For tests of the
    /// durability policy; not a stable interface.
    #[doc(hidden)]
    pub fn sync_counts(&self) -> (u64, u64) {
        (self.file_syncs.load(Ordering::Relaxed), self.dir_syncs.load(Ordering::Relaxed))
    }

    fn counted(&self, kind: FileKind) {
        let counter = if kind == FileKind::Directory { &self.dir_syncs } else { &self.file_syncs };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Syncs an open fd of a node of `kind`.
    fn sync_open(&self, fd: BorrowedFd<'_>, kind: FileKind, datasync: bool) -> Result<()> {
        sync_fd(fd, datasync)?;
        self.counted(kind);
        Ok(())
    }

    /// Syncs the inode behind a node's `O_PATH` fd (see [`sync_node`]).
    fn sync_path(&self, fd: BorrowedFd<'_>, kind: FileKind) -> Result<()> {
        if sync_node(&self.proc, fd, kind)? {
            self.counted(kind);
        }
        Ok(())
    }

    fn node(&self, id: NodeId) -> Result<NodeRef> {
        self.nodes.get(id)
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only { Err(Errno::EROFS.into()) } else { Ok(()) }
    }

    fn check_xattrs(&self) -> Result<()> {
        if self.caps.xattrs {
            Ok(())
        } else {
            Err(Error::with_message(Errno::ENOTSUP, "durable-io: the backing filesystem has no user xattrs"))
        }
    }

    fn as_caller(&self, req: &Request) -> Result<AsCaller> {
        AsCaller::enter(self.as_caller, req)
    }

    /// Hands out the entry of a node, remembering where a regular file was found (`at`)
    /// when atomic replace needs it.
    fn entry(&self, fd: OwnedFd, st: &Statx, at: Option<(&Arc<OwnedFd>, &OsStr)>) -> Entry {
        let at = at.filter(|_| self.atomic_replace);
        let attr = attr_from_statx(st);
        let (node, generation) = self.nodes.remember(fd, inode_key(st), attr.kind, at);
        // An atomic replace renames a new file over a name at a release, which the kernel
        // does not see: its entry for that name must not outlive the short TTL.
        let entry_ttl = if self.atomic_replace && attr.kind == FileKind::File { self.ttl.min(TTL) } else { self.ttl };
        Entry { node, generation, attr, entry_ttl, attr_ttl: self.ttl }
    }

    /// In `always` mode, syncs the changed inode (if given) and the directories.
    fn sync_change(&self, node: Option<(BorrowedFd<'_>, FileKind)>, dirs: &[&NodeRef]) -> Result<()> {
        if !self.durability.sync_changes() {
            return Ok(());
        }
        if let Some((fd, kind)) = node {
            self.sync_path(fd, kind)?;
        }
        for (i, dir) in dirs.iter().enumerate() {
            // A rename within one directory names it twice; once is enough.
            if dirs[..i].iter().any(|d| Arc::ptr_eq(&d.fd, &dir.fd)) {
                continue;
            }
            self.sync_path(dir.fd.as_fd(), FileKind::Directory)?;
        }
        Ok(())
    }

    /// Completes a creation: restores permission bits the host process's umask took away
    /// (see [`Self::restore_mode`]), syncs in `always` mode, and hands out the entry.
    /// `created` is `None` when nothing was created (a new link).
    fn finish_create(
        &self,
        req: &Request,
        fd: OwnedFd,
        created: Option<Created>,
        parent: &NodeRef,
        sync_new: bool,
        name: Option<&OsStr>,
    ) -> Result<Entry> {
        let mut st = stat_fd(fd.as_fd())?;
        let kind = FileKind::from_mode(st.stx_mode.into()).unwrap_or(FileKind::File);
        if let Some(created) = created.filter(|_| kind != FileKind::Symlink) {
            st = self.restore_mode(req, fd.as_fd(), st, created)?;
        }
        self.sync_change(sync_new.then_some((fd.as_fd(), kind)), &[parent])?;
        Ok(self.entry(fd, &st, name.map(|n| (&parent.fd, n))))
    }

    /// The caller's mode arrives already masked by the caller's umask; the host process's
    /// umask masks it a second time, so the bits (`0o777` only) it took away are put back.
    ///
    /// Why not set the umask to 0 instead: the umask belongs to the whole host process
    /// (threads share it), so other plugins and the host itself would create files with
    /// modes they never asked for while it is changed. And `mkdirat`/`mknodat` give no
    /// descriptor of what they made, so the fix-up cannot be atomic with the creation.
    /// Instead it is made safe against the name being swapped in between by a process
    /// working directly in the backing directory:
    ///
    /// - it changes the inode behind `fd`, an `O_PATH | O_NOFOLLOW` descriptor opened right
    ///   after the creation (through `/proc/self/fd`, so it is that inode whatever happens
    ///   to the name later);
    /// - when `fd` was opened by name ([`Created::verify`]), only if that inode looks like
    ///   the one just created: the same kind, owned by the creator, and no permission bit
    ///   beyond the requested mode;
    /// - and as the caller, so the kernel refuses it unless the caller owns the inode: a
    ///   swapped-in object of somebody else can never be changed.
    fn restore_mode(&self, req: &Request, fd: BorrowedFd<'_>, st: Statx, created: Created) -> Result<Statx> {
        let perm = u32::from(st.stx_mode) & 0o7777;
        let missing = created.mode & 0o777 & !perm;
        if missing == 0 {
            return Ok(st);
        }
        if let Some(kind) = created.verify {
            let creator = if self.as_caller { req.uid } else { rustix::process::geteuid().as_raw() };
            let same_kind = FileKind::from_mode(st.stx_mode.into()) == Some(kind);
            if !same_kind || st.stx_uid != creator || perm & 0o777 & !created.mode != 0 {
                tracing::warn!(
                    uid = st.stx_uid,
                    mode = format_args!("{:o}", st.stx_mode),
                    "durable-io: the name of a new {kind:?} was replaced before its mode was set; left as it is"
                );
                return Ok(st);
            }
        }
        {
            let _caller = self.as_caller(req)?;
            rustix::fs::chmodat(
                self.proc.dir(),
                ProcFd::name(fd),
                Mode::from_raw_mode(perm | missing),
                AtFlags::empty(),
            )
            .map_err(err)?;
        }
        stat_fd(fd)
    }

    /// The open(2) flags of a backing file for the caller's `flags`, and whether it is
    /// opened for writing. Only flags that mean something for a regular file pass; the
    /// rest (`O_CREAT`, `O_NOFOLLOW`, `O_PATH`, `O_TMPFILE`, ...) never reach the backing
    /// open, and `O_NOATIME` is dropped because a non-owner may not use it.
    fn file_flags(&self, flags: i32) -> Result<(OFlags, bool)> {
        let writable = match flags & open_flags::O_ACCMODE {
            open_flags::O_RDONLY => false,
            open_flags::O_WRONLY | open_flags::O_RDWR => true,
            _ => return Err(Errno::EINVAL.into()),
        };
        if (writable || flags & open_flags::O_TRUNC != 0) && self.read_only {
            return Err(Errno::EROFS.into());
        }
        let keep = open_flags::O_ACCMODE
            | open_flags::O_APPEND
            | open_flags::O_TRUNC
            | open_flags::O_DSYNC
            | open_flags::O_SYNC
            | open_flags::O_DIRECT
            | libc::O_NONBLOCK;
        let mut oflags = OFlags::from_bits_retain((flags & keep) as u32);
        if writable {
            oflags |= self.durability.write_flags();
        }
        Ok((oflags, writable))
    }

    /// Files a new open file in the handle table and answers `open`/`create` with it,
    /// handing its descriptor over for the kernel's passthrough where the durability
    /// setting allows (see [`Durability::passthrough`]).
    fn file_handle(&self, fd: OwnedFd, flags: i32, writable: bool) -> Opened {
        let truncated = flags & open_flags::O_TRUNC != 0;
        let passthrough = self.passthrough;
        let backing_fd = passthrough.then(|| fd.as_raw_fd());
        let handle = self.handles.insert(Open::File(Arc::new(FileHandle {
            fd,
            dirty: AtomicBool::new(truncated),
            direct: flags & open_flags::O_DIRECT != 0,
            writable,
            unseen_writes: passthrough && writable,
            replace: None,
        })));
        // Only `close` mode does anything in `flush`.
        Opened { handle, backing_fd, no_flush: !self.durability.sync_on_close(), ..Opened::default() }
    }

    /// Syncs a handle's data if it was written since its last sync (`close` mode). A
    /// handle whose writes may bypass us (passthrough) counts as always written.
    fn sync_if_dirty(&self, fh: &FileHandle) -> Result<()> {
        let dirty = fh.dirty.swap(false, Ordering::AcqRel) || fh.unseen_writes;
        if !self.durability.sync_on_close() || !dirty {
            return Ok(());
        }
        self.sync_open(fh.fd.as_fd(), FileKind::File, true).inspect_err(|_| fh.dirty.store(true, Ordering::Release))
    }

    /// Writes that must be durable on return in `always` mode but did not go through the
    /// `O_DSYNC` fd (fallocate, copy_file_range, truncating opens).
    fn sync_data_change(&self, fd: BorrowedFd<'_>) -> Result<()> {
        if self.durability.sync_changes() { self.sync_open(fd, FileKind::File, false) } else { Ok(()) }
    }

    /// Opens the node `id` (a regular file, `n`) for an atomic replace, if that applies:
    /// its name is known and still names it, it has one link, and the caller may create
    /// the temporary file in its directory and rename over it. `None`: truncate in place.
    fn open_replacing(&self, req: &Request, id: NodeId, n: &NodeRef, oflags: OFlags) -> Result<Option<Opened>> {
        let Some((dir, name)) = self.nodes.name_of(id) else { return Ok(None) };
        let st = stat_fd(n.fd.as_fd())?;
        if st.stx_nlink != 1 {
            return Ok(None);
        }
        let creator = if self.as_caller { req.uid } else { rustix::process::geteuid().as_raw() };
        let tmp = {
            let _caller = self.as_caller(req)?;
            // The permission check of the open it stands for (write access to the target).
            drop(self.proc.reopen(n.fd.as_fd(), oflags & !OFlags::TRUNC)?);
            let named: Option<InodeKey> =
                rustix::fs::statx(&*dir, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW, StatxFlags::BASIC_STATS)
                    .ok()
                    .map(|now| inode_key(&now));
            if named != Some(inode_key(&st)) {
                return Ok(None);
            }
            // In a sticky directory only the owner of the file or of the directory may
            // rename over it (the temporary file gets the target's owner).
            let dir_st = stat_fd(dir.as_fd())?;
            if u32::from(dir_st.stx_mode) & 0o1000 != 0
                && creator != 0
                && creator != st.stx_uid
                && creator != dir_st.stx_uid
            {
                return Ok(None);
            }
            match rustix::fs::openat(&*dir, c".", temp_flags(oflags), Mode::from_raw_mode(0o600)) {
                Ok(fd) => fd,
                Err(
                    e @ (rustix::io::Errno::OPNOTSUPP
                    | rustix::io::Errno::ISDIR
                    | rustix::io::Errno::INVAL
                    | rustix::io::Errno::ACCESS
                    | rustix::io::Errno::PERM),
                ) => {
                    tracing::debug!("durable-io: no O_TMPFILE for an atomic replace ({e}); truncating in place");
                    return Ok(None);
                }
                Err(e) => return Err(err(e)),
            }
        };
        // The target's owner and mode, as the host: the caller may not be the owner.
        let tmp_st = stat_fd(tmp.as_fd())?;
        if (tmp_st.stx_uid, tmp_st.stx_gid) != (st.stx_uid, st.stx_gid) {
            let chown = rustix::fs::fchown(
                &tmp,
                Some(rustix::fs::Uid::from_raw(st.stx_uid)),
                Some(rustix::fs::Gid::from_raw(st.stx_gid)),
            );
            if let Err(e) = chown
                && self.as_caller
            {
                return Err(err(e));
            }
        }
        // As a write in place would (the kernel's file_remove_privs): a caller without
        // CAP_FSETID loses set-user-ID, and set-group-ID on a group-executable file.
        let mut mode = u32::from(st.stx_mode) & 0o7777;
        if creator != 0 {
            mode &= !0o4000;
            if mode & 0o010 != 0 {
                mode &= !0o2000;
            }
        }
        rustix::fs::fchmod(&tmp, Mode::from_raw_mode(mode)).map_err(err)?;
        let groups = if self.as_caller && req.uid != 0 { caller_groups(req) } else { Vec::new() };
        let handle = self.handles.insert(Open::File(Arc::new(FileHandle {
            fd: tmp,
            dirty: AtomicBool::new(true),
            direct: oflags.contains(OFlags::DIRECT),
            writable: true,
            unseen_writes: false,
            replace: Some(Replace { dir, name, old: id, req: *req, groups }),
        })));
        // Direct IO: the new content must not enter the page cache of the kernel inode that
        // readers of the old file still use.
        let no_flush = !self.durability.sync_on_close();
        Ok(Some(Opened { handle, direct_io: true, no_flush, ..Opened::default() }))
    }

    /// The last release of an atomic-replace handle: sync the new file, give it a hidden
    /// name, rename it over the target (as the caller who opened it), sync the directory.
    fn commit_replace(&self, fh: &FileHandle, rep: &Replace) -> Result<()> {
        // Until the link the new file has no name: a failure or crash leaves the old file.
        self.sync_open(fh.fd.as_fd(), FileKind::File, false)?;
        let mut tries = 0;
        let temp = loop {
            let temp = temp_name();
            match rustix::fs::linkat(
                self.proc.dir(),
                ProcFd::name(fh.fd.as_fd()),
                &*rep.dir,
                &temp,
                AtFlags::SYMLINK_FOLLOW,
            ) {
                Ok(()) => break temp,
                Err(rustix::io::Errno::EXIST) if tries < 8 => tries += 1,
                Err(e) => return Err(err(e)),
            }
        };
        // What the name holds now: usually the old file, but a concurrent replace may have
        // put another file there since this handle was opened.
        let replaced = rustix::fs::statx(&*rep.dir, &rep.name, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::BASIC_STATS)
            .ok()
            .map(|st| inode_key(&st));
        let renamed = {
            let _caller = AsCaller::enter_with(self.as_caller, &rep.req, Some(&rep.groups))?;
            rustix::fs::renameat(&*rep.dir, &temp, &*rep.dir, &rep.name)
        };
        if let Err(e) = renamed {
            let _ = rustix::fs::unlinkat(&*rep.dir, &temp, AtFlags::empty());
            tracing::warn!(name = ?rep.name, "durable-io: atomic replace failed, the old content stays: {e}");
            return Err(err(e));
        }
        self.nodes.supersede(rep.old);
        if let Some(key) = replaced {
            self.nodes.supersede_key(key);
        }
        self.sync_path(rep.dir.as_fd(), FileKind::Directory)
    }

    fn remove(&self, req: &Request, parent: NodeId, name: &OsStr, flags: AtFlags) -> Result<()> {
        self.check_writable()?;
        check_name(name)?;
        let p = self.node(parent)?;
        {
            let _caller = self.as_caller(req)?;
            rustix::fs::unlinkat(p.fd.as_fd(), name, flags).map_err(err)?;
        }
        self.sync_change(None, &[&p])
    }

    /// The changes of one `setattr`, in order. Ownership first: chown clears setuid/setgid,
    /// which a mode set in the same call must be able to put back.
    fn change_attrs(&self, n: &NodeRef, set: &SetAttr) -> Result<()> {
        if set.uid.is_some() || set.gid.is_some() {
            rustix::fs::chownat(
                n.fd.as_fd(),
                c"",
                set.uid.map(rustix::fs::Uid::from_raw),
                set.gid.map(rustix::fs::Gid::from_raw),
                AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(err)?;
        }
        if let Some(mode) = set.mode {
            // Linux has no symlink permissions (lchmod is ENOTSUP); going through the magic
            // link would change the bits the kernel ignores anyway.
            if n.kind == FileKind::Symlink {
                return Err(Errno::EOPNOTSUPP.into());
            }
            rustix::fs::chmodat(
                self.proc.dir(),
                ProcFd::name(n.fd.as_fd()),
                Mode::from_raw_mode(mode & 0o7777),
                AtFlags::empty(),
            )
            .map_err(err)?;
        }
        if let Some(size) = set.size {
            self.truncate(n, set.handle, size)?;
        }
        if set.atime.is_some() || set.mtime.is_some() {
            self.set_times(n, set.atime, set.mtime)?;
        }
        Ok(())
    }

    fn set_times(&self, n: &NodeRef, atime: Option<SetTime>, mtime: Option<SetTime>) -> Result<()> {
        fn spec(t: Option<SetTime>) -> Timespec {
            match t {
                None => Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT },
                Some(SetTime::Now) => Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_NOW },
                Some(SetTime::At(ts)) => Timespec { tv_sec: ts.secs, tv_nsec: ts.nanos.into() },
            }
        }
        let times = Timestamps { last_access: spec(atime), last_modification: spec(mtime) };
        // AT_EMPTY_PATH works on the O_PATH fd itself, symlinks included (Linux 5.8+).
        match rustix::fs::utimensat(n.fd.as_fd(), c"", &times, AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::INVAL) if n.kind != FileKind::Symlink => {
                rustix::fs::utimensat(self.proc.dir(), ProcFd::name(n.fd.as_fd()), &times, AtFlags::empty())
                    .map_err(err)
            }
            Err(e) => Err(err(e)),
        }
    }

    fn truncate(&self, n: &NodeRef, handle: Option<Handle>, size: u64) -> Result<()> {
        match n.kind {
            FileKind::File => {}
            FileKind::Directory => return Err(Errno::EISDIR.into()),
            _ => return Err(Errno::EINVAL.into()),
        }
        if let Some(fh) = handle.and_then(|h| self.handles.file(h).ok()).filter(|fh| fh.writable) {
            fh.dirty.store(true, Ordering::Release);
            return rustix::fs::ftruncate(&fh.fd, size).map_err(err);
        }
        let fd = self.proc.reopen(n.fd.as_fd(), OFlags::WRONLY)?;
        rustix::fs::ftruncate(&fd, size).map_err(err)
    }
}

/// A buffer aligned for `O_DIRECT`, carved out of an over-allocated vector (no unsafe).
struct Aligned {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let buf = vec![0u8; len + DIRECT_ALIGN];
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN).min(DIRECT_ALIGN);
        Aligned { buf, start, len }
    }
    fn slice(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

fn misaligned(direct: bool, ptr: *const u8) -> bool {
    direct && ptr.align_offset(DIRECT_ALIGN) != 0
}

fn pread_full(fd: BorrowedFd<'_>, offset: u64, buf: &mut [u8]) -> Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let at = offset.checked_add(done as u64).ok_or(Errno::EINVAL)?;
        match rustix::io::pread(fd, &mut buf[done..], at) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) if done > 0 => break,
            Err(e) => return Err(err(e)),
        }
    }
    Ok(done)
}

fn pwrite_full(fd: BorrowedFd<'_>, offset: u64, data: &[u8]) -> Result<usize> {
    let mut done = 0;
    while done < data.len() {
        let at = offset.checked_add(done as u64).ok_or(Errno::EINVAL)?;
        // On an O_APPEND fd Linux ignores `at` and appends, which is what makes appends
        // land at the end however the caller computed the offset.
        match rustix::io::pwrite(fd, &data[done..], at) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) if done > 0 => break,
            Err(e) => return Err(err(e)),
        }
    }
    Ok(done)
}

fn dirent_kind(t: FileType) -> Option<FileKind> {
    Some(match t {
        FileType::RegularFile => FileKind::File,
        FileType::Directory => FileKind::Directory,
        FileType::Symlink => FileKind::Symlink,
        FileType::Fifo => FileKind::Fifo,
        FileType::Socket => FileKind::Socket,
        FileType::CharacterDevice => FileKind::CharDevice,
        FileType::BlockDevice => FileKind::BlockDevice,
        _ => return None,
    })
}

impl FileSystem for DurableIo {
    fn capabilities(&self) -> Option<Capabilities> {
        Some(self.caps)
    }

    fn lookup(&self, req: &Request, parent: NodeId, name: &OsStr) -> Result<Entry> {
        let p = self.node(parent)?;
        // As the caller: looking up needs search permission on the parent.
        let fd = {
            let _caller = self.as_caller(req)?;
            if is_replace_temp(name) {
                return Err(Errno::ENOENT.into());
            }
            open_beneath(p.fd.as_fd(), name, OFlags::PATH, Mode::empty())?
        };
        let st = stat_fd(fd.as_fd())?;
        Ok(self.entry(fd, &st, Some((&p.fd, name))))
    }

    fn forget(&self, node: NodeId, nlookup: u64) {
        self.nodes.forget(node, nlookup);
    }

    fn getattr(&self, _req: &Request, node: NodeId, handle: Option<Handle>) -> Result<AttrOut> {
        let st = match handle.and_then(|h| self.handles.get(h).ok()) {
            Some(open) => stat_fd(open.fd())?,
            None => stat_fd(self.node(node)?.fd.as_fd())?,
        };
        Ok(AttrOut { attr: attr_from_statx(&st), ttl: self.ttl })
    }

    fn setattr(&self, req: &Request, node: NodeId, set: &SetAttr) -> Result<AttrOut> {
        let n = self.node(node)?;
        let changes = set.mode.is_some()
            || set.uid.is_some()
            || set.gid.is_some()
            || set.size.is_some()
            || set.atime.is_some()
            || set.mtime.is_some();
        if changes {
            self.check_writable()?;
        }
        if changes && self.clears_set_id_bits_for_a_writer(req, &n, set)? {
            // The kernel's "kill priv" after a write by someone else: on a local filesystem
            // the write itself clears the bits, with no chmod right needed, so do it as the
            // host (only ever removing bits, only for a caller who may write the file).
            self.change_attrs(&n, set)?;
        } else if changes {
            // Every change as the caller: the kernel then applies its own rules (only the
            // owner may chmod or set times, only root may give a file away, chgrp only to
            // one of the caller's groups, truncation needs write permission).
            let _caller = self.as_caller(req)?;
            self.change_attrs(&n, set)?;
        }
        if changes {
            self.sync_change(Some((n.fd.as_fd(), n.kind)), &[])?;
        }
        self.getattr(req, node, set.handle)
    }

    fn readlink(&self, _req: &Request, node: NodeId, buf: &mut [u8]) -> Result<usize> {
        let n = self.node(node)?;
        if n.kind != FileKind::Symlink {
            return Err(Errno::EINVAL.into());
        }
        let len = rustix::fs::readlinkat_raw(n.fd.as_fd(), c"", &mut *buf).map_err(err)?;
        // readlink truncates silently; a full buffer may mean the target did not fit.
        if len == buf.len() && stat_fd(n.fd.as_fd())?.stx_size != len as u64 {
            return Err(Errno::ERANGE.into());
        }
        Ok(len)
    }

    fn mknod(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32, rdev: u32) -> Result<Entry> {
        self.check_writable()?;
        check_name(name)?;
        let file_type = match FileKind::from_mode(mode) {
            None if mode & 0o170000 == 0 => FileType::RegularFile,
            Some(FileKind::File) => FileType::RegularFile,
            Some(FileKind::Fifo) => FileType::Fifo,
            Some(FileKind::Socket) => FileType::Socket,
            Some(FileKind::CharDevice) => FileType::CharacterDevice,
            Some(FileKind::BlockDevice) => FileType::BlockDevice,
            Some(FileKind::Directory) => return Err(Errno::EPERM.into()),
            Some(FileKind::Symlink) | None => return Err(Errno::EINVAL.into()),
        };
        let p = self.node(parent)?;
        let (major, minor) = decode_dev(rdev);
        {
            let _caller = self.as_caller(req)?;
            rustix::fs::mknodat(
                p.fd.as_fd(),
                name,
                file_type,
                Mode::from_raw_mode(mode & 0o7777),
                rustix::fs::makedev(major, minor),
            )
            .map_err(err)?;
        }
        let fd = {
            let _caller = self.as_caller(req)?;
            open_beneath(p.fd.as_fd(), name, OFlags::PATH, Mode::empty())?
        };
        let kind = FileKind::from_mode(mode).unwrap_or(FileKind::File);
        self.finish_create(req, fd, Some(Created { mode, verify: Some(kind) }), &p, true, None)
    }

    fn mkdir(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32) -> Result<Entry> {
        self.check_writable()?;
        check_name(name)?;
        let p = self.node(parent)?;
        {
            let _caller = self.as_caller(req)?;
            rustix::fs::mkdirat(p.fd.as_fd(), name, Mode::from_raw_mode(mode & 0o7777)).map_err(err)?;
        }
        let fd = {
            let _caller = self.as_caller(req)?;
            open_beneath(p.fd.as_fd(), name, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())?
        };
        self.finish_create(req, fd, Some(Created { mode, verify: Some(FileKind::Directory) }), &p, true, None)
    }

    fn unlink(&self, req: &Request, parent: NodeId, name: &OsStr) -> Result<()> {
        self.remove(req, parent, name, AtFlags::empty())
    }

    fn rmdir(&self, req: &Request, parent: NodeId, name: &OsStr) -> Result<()> {
        self.remove(req, parent, name, AtFlags::REMOVEDIR)
    }

    fn symlink(&self, req: &Request, parent: NodeId, name: &OsStr, target: &OsStr) -> Result<Entry> {
        self.check_writable()?;
        check_name(name)?;
        let p = self.node(parent)?;
        {
            let _caller = self.as_caller(req)?;
            rustix::fs::symlinkat(target, p.fd.as_fd(), name).map_err(err)?;
        }
        let fd = open_beneath(p.fd.as_fd(), name, OFlags::PATH, Mode::empty())?;
        self.finish_create(req, fd, None, &p, true, None)
    }

    fn link(&self, req: &Request, node: NodeId, new_parent: NodeId, new_name: &OsStr) -> Result<Entry> {
        self.check_writable()?;
        check_name(new_name)?;
        let n = self.node(node)?;
        if n.kind == FileKind::Directory {
            return Err(Errno::EPERM.into());
        }
        let p = self.node(new_parent)?;
        {
            let _caller = self.as_caller(req)?;
            // Through the magic link, which lands on the inode itself (symlinks included);
            // AT_EMPTY_PATH would need CAP_DAC_READ_SEARCH, which the fsuid switch drops.
            rustix::fs::linkat(
                self.proc.dir(),
                ProcFd::name(n.fd.as_fd()),
                p.fd.as_fd(),
                new_name,
                AtFlags::SYMLINK_FOLLOW,
            )
            .map_err(err)?;
        }
        let fd = open_beneath(p.fd.as_fd(), new_name, OFlags::PATH, Mode::empty())?;
        self.finish_create(req, fd, None, &p, true, None)
    }

    fn rename(
        &self,
        req: &Request,
        parent: NodeId,
        name: &OsStr,
        new_parent: NodeId,
        new_name: &OsStr,
        flags: RenameFlags,
    ) -> Result<()> {
        if flags.0 & !(RenameFlags::NOREPLACE | RenameFlags::EXCHANGE) != 0 {
            return Err(Errno::EINVAL.into());
        }
        self.check_writable()?;
        check_name(name)?;
        check_name(new_name)?;
        let p = self.node(parent)?;
        let np = self.node(new_parent)?;
        {
            let _caller = self.as_caller(req)?;
            rustix::fs::renameat_with(
                p.fd.as_fd(),
                name,
                np.fd.as_fd(),
                new_name,
                rustix::fs::RenameFlags::from_bits_retain(flags.0),
            )
            .map_err(err)?;
        }
        // Where the file now lives, for an atomic replace of it later.
        if self.atomic_replace
            && let Ok(st) =
                rustix::fs::statx(np.fd.as_fd(), new_name, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::BASIC_STATS)
        {
            self.nodes.renamed(inode_key(&st), &np.fd, new_name);
        }
        self.sync_change(None, &[&p, &np])
    }

    fn open(&self, req: &Request, node: NodeId, flags: i32) -> Result<Opened> {
        let n = self.node(node)?;
        match n.kind {
            FileKind::File => {}
            FileKind::Directory => return Err(Errno::EISDIR.into()),
            FileKind::Symlink => return Err(Errno::ELOOP.into()),
            // FUSE never sends opens of special files (the kernel serves them itself), and
            // opening a device node as the host would reach real hardware.
            _ => return Err(Errno::ENXIO.into()),
        }
        if self.nodes.is_superseded(node) {
            // An atomic replace put a new file under its name: the kernel retries the open
            // after looking the name up again.
            return Err(Error::with_message(Errno::ESTALE, "durable-io: the file was replaced"));
        }
        let (oflags, writable) = self.file_flags(flags)?;
        if self.atomic_replace
            && writable
            && flags & open_flags::O_TRUNC != 0
            && let Some(opened) = self.open_replacing(req, node, &n, oflags)?
        {
            return Ok(opened);
        }
        // As the caller: the kernel checks read/write permission on the inode.
        let fd = {
            let _caller = self.as_caller(req)?;
            self.proc.reopen(n.fd.as_fd(), oflags)?
        };
        if flags & open_flags::O_TRUNC != 0 {
            self.sync_data_change(fd.as_fd())?;
        }
        Ok(self.file_handle(fd, flags, writable))
    }

    fn create(&self, req: &Request, parent: NodeId, name: &OsStr, mode: u32, flags: i32) -> Result<(Entry, Opened)> {
        self.check_writable()?;
        check_name(name)?;
        let p = self.node(parent)?;
        let (oflags, writable) = self.file_flags(flags)?;
        let exclusive = flags & open_flags::O_EXCL != 0;
        let mut tries = 0;
        // Always create with O_EXCL, so an existing FIFO or device under this name is never
        // opened by accident (it would block, or reach hardware). Without the caller's
        // O_EXCL, an existing name is then pinned with O_PATH, checked to be a regular
        // file, and reopened: the check and the open see the same inode.
        let (fd, created) = loop {
            let attempt = {
                let _caller = self.as_caller(req)?;
                open_beneath(
                    p.fd.as_fd(),
                    name,
                    oflags | OFlags::CREATE | OFlags::EXCL,
                    Mode::from_raw_mode(mode & 0o7777),
                )
            };
            match attempt {
                Ok(fd) => break (fd, true),
                Err(e) if e.errno() == Errno::EEXIST && !exclusive => {}
                Err(e) => return Err(e),
            }
            let existing = {
                let _caller = self.as_caller(req)?;
                open_beneath(p.fd.as_fd(), name, OFlags::PATH, Mode::empty())
            };
            let existing = match existing {
                Ok(fd) => fd,
                Err(e) if e.errno() == Errno::ENOENT && tries < CREATE_RETRIES => {
                    tries += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match FileKind::from_mode(stat_fd(existing.as_fd())?.stx_mode.into()) {
                Some(FileKind::File) => {}
                Some(FileKind::Directory) => return Err(Errno::EISDIR.into()),
                Some(FileKind::Symlink) => return Err(Errno::ELOOP.into()),
                _ => return Err(Errno::ENXIO.into()),
            }
            if self.atomic_replace && writable && flags & open_flags::O_TRUNC != 0 {
                let entry = self.finish_create(req, existing, None, &p, false, Some(name))?;
                let replaced = self.node(entry.node).and_then(|n| self.open_replacing(req, entry.node, &n, oflags));
                match replaced {
                    Ok(Some(opened)) => return Ok((entry, opened)),
                    Ok(None) => {}
                    Err(e) => {
                        self.nodes.forget(entry.node, 1);
                        return Err(e);
                    }
                }
                let n = self.node(entry.node)?;
                let opened = {
                    let _caller = self.as_caller(req)?;
                    self.proc.reopen(n.fd.as_fd(), oflags)
                };
                match opened {
                    Ok(fd) => {
                        self.sync_data_change(fd.as_fd())?;
                        return Ok((entry, self.file_handle(fd, flags, writable)));
                    }
                    Err(e) => {
                        self.nodes.forget(entry.node, 1);
                        return Err(e);
                    }
                }
            }
            let _caller = self.as_caller(req)?;
            break (self.proc.reopen(existing.as_fd(), oflags)?, false);
        };
        if created || flags & open_flags::O_TRUNC != 0 {
            self.sync_data_change(fd.as_fd())?;
        }
        let node_fd = self.proc.reopen(fd.as_fd(), OFlags::PATH)?;
        // The descriptor is of the very file the O_EXCL open made: nothing to verify.
        let created = created.then_some(Created { mode, verify: None });
        let entry = self.finish_create(req, node_fd, created, &p, false, Some(name))?;
        let opened = self.file_handle(fd, flags, writable);
        Ok((entry, opened))
    }

    fn read(&self, _req: &Request, _node: NodeId, handle: Handle, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let fh = self.handles.file(handle)?;
        if misaligned(fh.direct, buf.as_ptr()) {
            let mut bounce = Aligned::new(buf.len());
            let n = pread_full(fh.fd.as_fd(), offset, bounce.slice())?;
            buf[..n].copy_from_slice(&bounce.slice()[..n]);
            return Ok(n);
        }
        pread_full(fh.fd.as_fd(), offset, buf)
    }

    fn write(
        &self,
        _req: &Request,
        _node: NodeId,
        handle: Handle,
        offset: u64,
        data: &[u8],
        _flags: i32,
    ) -> Result<usize> {
        self.check_writable()?;
        let fh = self.handles.file(handle)?;
        // Marked before writing, so a concurrent flush that misses this write's data can
        // only be one the caller did not order after it.
        fh.dirty.store(true, Ordering::Release);
        if misaligned(fh.direct, data.as_ptr()) {
            let mut bounce = Aligned::new(data.len());
            bounce.slice().copy_from_slice(data);
            return pwrite_full(fh.fd.as_fd(), offset, bounce.slice());
        }
        pwrite_full(fh.fd.as_fd(), offset, data)
    }

    fn flush(&self, _req: &Request, _node: NodeId, handle: Handle, _lock_owner: u64) -> Result<()> {
        match self.handles.get(handle)? {
            Open::File(fh) => self.sync_if_dirty(&fh),
            Open::Dir(_) => Ok(()),
        }
    }

    fn release(&self, _req: &Request, _node: NodeId, handle: Handle, _flags: i32, _flush: bool) -> Result<()> {
        match self.handles.remove(handle)? {
            Open::File(fh) => match &fh.replace {
                Some(rep) => self.commit_replace(&fh, rep),
                None => self.sync_if_dirty(&fh),
            },
            Open::Dir(_) => Ok(()),
        }
    }

    fn fsync(&self, _req: &Request, _node: NodeId, handle: Handle, datasync: bool) -> Result<()> {
        let open = self.handles.get(handle)?;
        if let Open::File(fh) = &open {
            let was_dirty = fh.dirty.swap(false, Ordering::AcqRel);
            return self.sync_open(fh.fd.as_fd(), FileKind::File, datasync).inspect_err(|_| {
                if was_dirty {
                    fh.dirty.store(true, Ordering::Release);
                }
            });
        }
        self.sync_open(open.fd(), FileKind::Directory, datasync)
    }

    fn opendir(&self, req: &Request, node: NodeId, _flags: i32) -> Result<Opened> {
        let n = self.node(node)?;
        if n.kind != FileKind::Directory {
            return Err(Errno::ENOTDIR.into());
        }
        // As the caller: listing needs read permission.
        let fd = {
            let _caller = self.as_caller(req)?;
            self.proc.reopen(n.fd.as_fd(), OFlags::RDONLY | OFlags::DIRECTORY)?
        };
        let handle = self.handles.insert(Open::Dir(Arc::new(DirHandle::new(fd, node == ROOT_ID))));
        Ok(Opened { handle, ..Opened::default() })
    }

    fn readdir(
        &self,
        _req: &Request,
        _node: NodeId,
        handle: Handle,
        cookie: u64,
        sink: &mut dyn DirSink,
    ) -> Result<()> {
        let dh = self.handles.dir(handle)?;
        let mut buf = dh.buf.lock().unwrap_or_else(|e| e.into_inner());
        // The getdents offset (d_off) of an entry is the directory position just after it,
        // so seeking to a cookie resumes exactly after the last entry the host accepted,
        // however the page before it ended.
        rustix::fs::seek(&dh.fd, SeekFrom::Start(cookie)).map_err(err)?;
        let mut dir = RawDir::new(&dh.fd, buf.spare_capacity_mut());
        while let Some(entry) = dir.next() {
            let entry = entry.map_err(err)?;
            let name = entry.file_name().to_bytes();
            let next = entry.next_entry_cookie();
            if next == 0 {
                return Err(Error::with_message(Errno::EIO, "durable-io: backing filesystem gave a zero d_off"));
            }
            if is_replace_temp(OsStr::from_bytes(name)) {
                continue;
            }
            let ino = if dh.is_root && name == b".." { self.root_ino } else { entry.ino() };
            let kind = match dirent_kind(entry.file_type()) {
                Some(kind) => kind,
                // DT_UNKNOWN: some filesystems do not record the type in the directory.
                None => match rustix::fs::statat(&dh.fd, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => FileKind::from_mode(st.st_mode).unwrap_or(FileKind::File),
                    Err(rustix::io::Errno::NOENT) => continue,
                    Err(e) => return Err(err(e)),
                },
            };
            if !sink.add(&DirEntry { ino, kind, name, cookie: next }) {
                break;
            }
        }
        Ok(())
    }

    fn releasedir(&self, _req: &Request, _node: NodeId, handle: Handle) -> Result<()> {
        self.handles.remove(handle).map(drop)
    }

    fn fsyncdir(&self, _req: &Request, _node: NodeId, handle: Handle, datasync: bool) -> Result<()> {
        let open = self.handles.get(handle)?;
        let kind = if matches!(open, Open::Dir(_)) { FileKind::Directory } else { FileKind::File };
        self.sync_open(open.fd(), kind, datasync)
    }

    fn statfs(&self, _req: &Request, node: NodeId) -> Result<StatFs> {
        let n = self.node(node)?;
        let st = rustix::fs::fstatvfs(n.fd.as_fd()).map_err(err)?;
        Ok(StatFs {
            blocks: st.f_blocks,
            bfree: st.f_bfree,
            bavail: st.f_bavail,
            files: st.f_files,
            ffree: st.f_ffree,
            bsize: u32::try_from(st.f_bsize).unwrap_or(u32::MAX),
            namelen: u32::try_from(st.f_namemax).unwrap_or(255),
            frsize: u32::try_from(st.f_frsize).unwrap_or(u32::MAX),
        })
    }

    // Extended attributes go through the magic-link path: the kernel resolves it to the very
    // inode the node's fd holds, for every kind (symlinks and special files included) and
    // without opening it. They are accessed as the caller, so the kernel's own rules apply:
    // EPERM for user.* on a symlink, write permission to set user.*, read permission to get
    // them, trusted.* and security.* changes only for root.
    fn setxattr(&self, req: &Request, node: NodeId, name: &OsStr, value: &[u8], flags: i32) -> Result<()> {
        self.check_writable()?;
        self.check_xattrs()?;
        let n = self.node(node)?;
        let flags = u32::try_from(flags).ok().and_then(XattrFlags::from_bits).ok_or(Errno::EINVAL)?;
        {
            let _caller = self.as_caller(req)?;
            rustix::fs::setxattr(ProcFd::path(n.fd.as_fd()), name, value, flags).map_err(err)?;
        }
        self.sync_change(Some((n.fd.as_fd(), n.kind)), &[])
    }

    fn getxattr(&self, req: &Request, node: NodeId, name: &OsStr, buf: &mut [u8]) -> Result<usize> {
        self.check_xattrs()?;
        let n = self.node(node)?;
        let path = ProcFd::path(n.fd.as_fd());
        let _caller = self.as_caller(req)?;
        // rustix does not treat an empty buffer as the size query the kernel does.
        if buf.is_empty() { rustix::fs::getxattr_query(path, name) } else { rustix::fs::getxattr(path, name, buf) }
            .map_err(err)
    }

    fn listxattr(&self, req: &Request, node: NodeId, buf: &mut [u8]) -> Result<usize> {
        self.check_xattrs()?;
        let n = self.node(node)?;
        let path = ProcFd::path(n.fd.as_fd());
        let _caller = self.as_caller(req)?;
        if buf.is_empty() { rustix::fs::listxattr_query(path) } else { rustix::fs::listxattr(path, buf) }.map_err(err)
    }

    fn removexattr(&self, req: &Request, node: NodeId, name: &OsStr) -> Result<()> {
        self.check_writable()?;
        self.check_xattrs()?;
        let n = self.node(node)?;
        {
            let _caller = self.as_caller(req)?;
            rustix::fs::removexattr(ProcFd::path(n.fd.as_fd()), name).map_err(err)?;
        }
        self.sync_change(Some((n.fd.as_fd(), n.kind)), &[])
    }

    fn fallocate(
        &self,
        _req: &Request,
        _node: NodeId,
        handle: Handle,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<()> {
        self.check_writable()?;
        if !self.caps.fallocate {
            return Err(Error::with_message(Errno::EOPNOTSUPP, "durable-io: the backing filesystem has no fallocate"));
        }
        let fh = self.handles.file(handle)?;
        let mode = u32::try_from(mode).map_err(|_| Errno::EINVAL)?;
        fh.dirty.store(true, Ordering::Release);
        rustix::fs::fallocate(&fh.fd, rustix::fs::FallocateFlags::from_bits_retain(mode), offset, length)
            .map_err(err)?;
        self.sync_data_change(fh.fd.as_fd())
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _node_in: NodeId,
        handle_in: Handle,
        offset_in: u64,
        _node_out: NodeId,
        handle_out: Handle,
        offset_out: u64,
        len: u64,
        flags: u32,
    ) -> Result<usize> {
        if flags != 0 {
            return Err(Errno::EINVAL.into());
        }
        self.check_writable()?;
        let fin = self.handles.file(handle_in)?;
        let fout = self.handles.file(handle_out)?;
        let (mut off_in, mut off_out) = (offset_in, offset_out);
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        fout.dirty.store(true, Ordering::Release);
        let n =
            rustix::fs::copy_file_range(&fin.fd, Some(&mut off_in), &fout.fd, Some(&mut off_out), len).map_err(err)?;
        self.sync_data_change(fout.fd.as_fd())?;
        Ok(n)
    }

    fn lseek(&self, _req: &Request, _node: NodeId, handle: Handle, offset: i64, whence: Whence) -> Result<u64> {
        let fh = self.handles.file(handle)?;
        let offset = u64::try_from(offset).map_err(|_| Errno::EINVAL)?;
        let pos = match whence {
            Whence::Data => SeekFrom::Data(offset),
            Whence::Hole => SeekFrom::Hole(offset),
            _ => {
                return Err(Error::with_message(Errno::EINVAL, "lseek: only SEEK_DATA and SEEK_HOLE reach a plugin"));
            }
        };
        rustix::fs::seek(&fh.fd, pos).map_err(err)
    }
}
