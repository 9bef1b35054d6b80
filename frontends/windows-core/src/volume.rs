//! [`Volume`]: the operations a Windows binding calls, over one mounted plugin filesystem.
//!
//! A binding maps its callbacks one to one: WinFSP's `Create`/`Open` and Dokan's
//! `CreateFile` to [`Volume::create`], `Cleanup` to [`Volume::cleanup`], `Close` to
//! [`Volume::close`], `ReadDirectory`/`FindFilesWithPattern` to [`Volume::read_directory`],
//! `SetDisposition`/`CanDelete`/`DeleteFile` to [`Volume::set_delete_on_close`], `Rename`/
//! `MoveFile` to [`Volume::rename`], and so on. Every answer is an NTSTATUS from
//! [`crate::ntstatus`].
//!
//! Namespace operations (create, cleanup, rename, delete) run under one lock per volume, so
//! their checks (share modes, delete-pending, open descendants) and the plugin call that
//! follows are atomic for this mount. Reads and writes run outside it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::warn;

use plugfs_plugin_api::open_flags::{O_APPEND, O_DSYNC, O_EXCL, O_RDONLY, O_RDWR, O_WRONLY};
use plugfs_plugin_api::{
    Attr, Capabilities, DirEntry, DirPlusSink, DirSink, Entry, Errno, FileKind, FileSystem, Handle, NodeId, ROOT_ID,
    RenameFlags, Request, SetAttr, SetTime,
};

use crate::access::*;
use crate::attributes::{FileInfo, VolumeInfo, is_read_only, mode_for_attributes, mode_for_new};
use crate::name::{check_new_name, os, parse_path, to_windows_name};
use crate::nodes::Nodes;
use crate::ntstatus::*;
use crate::security::{DELETE, SidMap, sddl};
use crate::time::settable;

/// An open handle, as the binding keeps it in its file context.
pub type FileId = u64;

/// Settings of one Windows mount.
#[derive(Clone, Copy, Debug)]
pub struct VolumeOptions {
    /// Refuse every change, whatever the plugin could do.
    pub read_only: bool,
    /// Show names starting with `.` as hidden.
    pub hide_dot_files: bool,
    /// Permission bits taken away from new files and directories.
    pub umask: u32,
    /// Replacing rename replaces a target that is open too (Windows 10's
    /// `FILE_RENAME_POSIX_SEMANTICS`, which the binding passes per call; this is the
    /// default when it does not).
    pub posix_rename: bool,
    /// The credentials plugin calls carry (a binding maps the caller's SID to them).
    pub request: Request,
    /// How many names the cache keeps before it drops those no open file needs. Each
    /// holds a lookup reference, which can cost the plugin memory or a descriptor.
    pub cache_capacity: usize,
}

impl Default for VolumeOptions {
    fn default() -> Self {
        VolumeOptions {
            read_only: false,
            hide_dot_files: false,
            umask: 0o022,
            posix_rename: false,
            request: Request::default(),
            cache_capacity: 65_536,
        }
    }
}

/// A create request, as `IRP_MJ_CREATE` carries it.
#[derive(Clone, Copy, Debug)]
pub struct CreateRequest<'a> {
    /// The path inside the volume, UTF-16, `\`-separated.
    pub path: &'a [u16],
    /// Desired access (generic rights allowed).
    pub access: u32,
    /// `FILE_SHARE_*` bits.
    pub share: u32,
    /// `FILE_SUPERSEDE` .. `FILE_OVERWRITE_IF`.
    pub disposition: u32,
    /// `FILE_DIRECTORY_FILE`, `FILE_NON_DIRECTORY_FILE`, `FILE_DELETE_ON_CLOSE`,
    /// `FILE_WRITE_THROUGH`; others are ignored.
    pub options: u32,
    /// `FILE_ATTRIBUTE_*` for a new file (only read-only has an effect).
    pub attributes: u32,
}

/// What [`Volume::create`] answers.
#[derive(Clone, Copy, Debug)]
pub struct Created {
    /// The new handle.
    pub id: FileId,
    /// What was done.
    pub action: CreateAction,
    /// The file's information after it.
    pub info: FileInfo,
}

/// One directory entry of a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirInfo {
    /// The name as Windows shows it.
    pub name: String,
    /// Its information.
    pub info: FileInfo,
}

/// One open handle.
struct OpenHandle {
    node: NodeId,
    kind: FileKind,
    plugin: Option<Handle>,
    access: u32,
    share: u32,
    delete_on_close: bool,
    write_through: bool,
    cleaned_up: bool,
    /// The sorted listing of a directory query, kept between resumed queries.
    listing: Option<Vec<DirInfo>>,
}

/// What all open handles of one node share (Windows' FCB).
struct OpenFile {
    /// Where it is, as this mount last named it: parent (pinned) and name.
    parent: NodeId,
    name: String,
    /// Its path from the root, for the "open below a directory being renamed" check.
    path: Vec<String>,
    /// Handles not yet cleaned up: these take part in share checks.
    active: Vec<FileId>,
    /// Handles not yet closed.
    open: usize,
    delete_pending: bool,
    /// Removed (deleted, or replaced by a rename): nothing to delete any more.
    unlinked: bool,
}

#[derive(Default)]
struct State {
    nodes: Nodes,
    files: HashMap<NodeId, OpenFile>,
    handles: HashMap<FileId, OpenHandle>,
    next_id: FileId,
}

/// A plugin filesystem as Windows sees it. See the module documentation.
pub struct Volume {
    fs: Arc<dyn FileSystem>,
    caps: Capabilities,
    opts: VolumeOptions,
    state: Mutex<State>,
    /// Calls being served now ([`Volume::in_flight`]).
    busy: AtomicUsize,
    /// Set by [`Volume::begin_shutdown`]: new opens are refused.
    closing: AtomicBool,
}

/// Counts a call as in flight while it lives.
struct Busy<'a>(&'a AtomicUsize);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What [`Volume::release_all`] gave back to the plugin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Open files and directories released.
    pub released: usize,
    /// Of those, the releases the plugin failed.
    pub failed: usize,
}

fn st(errno: Errno) -> u32 {
    from_errno(errno)
}

fn err(e: plugfs_plugin_api::Error) -> u32 {
    from_errno(e.errno())
}

impl Volume {
    /// A volume over `fs`, with the capabilities of this mount (`LoadedFs::mount_capabilities`).
    pub fn new(fs: Arc<dyn FileSystem>, caps: Capabilities, opts: VolumeOptions) -> Volume {
        let state = State { nodes: Nodes::new(caps.case_sensitive), next_id: 1, ..State::default() };
        Volume { fs, caps, opts, state: Mutex::new(state), busy: AtomicUsize::new(0), closing: AtomicBool::new(false) }
    }

    fn busy(&self) -> Busy<'_> {
        self.busy.fetch_add(1, Ordering::SeqCst);
        Busy(&self.busy)
    }

    /// The host is unmounting: from now on every new open or create answers
    /// `STATUS_VOLUME_DISMOUNTED`, while handles already open go on working until they are
    /// closed or [`Volume::release_all`] releases them.
    pub fn begin_shutdown(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    /// Calls of the binding being served right now: the host waits for these to finish
    /// before it unmounts.
    pub fn in_flight(&self) -> usize {
        self.busy.load(Ordering::SeqCst)
    }

    /// Releases through the plugin every handle still open and forgets every reference,
    /// as the last close of each would: what a shutdown does after the framework stopped
    /// calling (so that plugins sync and close what Windows programs left open). Handles
    /// closed later by the binding are unknown by then and ignored.
    pub fn release_all(&self) -> Released {
        let mut s = self.lock();
        let mut out = Released::default();
        for (_, h) in s.handles.drain() {
            if let Some(p) = h.plugin {
                out.released += 1;
                let r = if h.kind == FileKind::Directory {
                    self.fs.releasedir(&self.opts.request, h.node, p)
                } else {
                    self.fs.release(&self.opts.request, h.node, p, 0, true)
                };
                if let Err(e) = r {
                    out.failed += 1;
                    warn!(node = h.node, "releasing a handle left open at unmount: {e}");
                }
            }
        }
        s.files.clear();
        s.nodes.clear(&*self.fs);
        out
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves counts that are still consistent enough to
        // give references back; keep going rather than poison the mount.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn req(&self) -> &Request {
        &self.opts.request
    }

    /// Whether names differ by case here.
    pub fn case_sensitive(&self) -> bool {
        self.caps.case_sensitive
    }

    /// Walks the directories `dirs` from the root; a missing or non-directory one is
    /// `STATUS_OBJECT_PATH_NOT_FOUND`.
    fn walk(&self, s: &mut State, dirs: &[String]) -> Result<NodeId, u32> {
        let mut cur = ROOT_ID;
        for d in dirs {
            match s.nodes.lookup(&*self.fs, self.req(), cur, d).map_err(from_errno_on_path)? {
                Some((node, FileKind::Directory)) => cur = node,
                _ => return Err(STATUS_OBJECT_PATH_NOT_FOUND),
            }
        }
        Ok(cur)
    }

    fn getattr(&self, node: NodeId, handle: Option<Handle>) -> Result<Attr, u32> {
        self.fs.getattr(self.req(), node, handle).map(|a| a.attr).map_err(err)
    }

    fn info(&self, attr: &Attr, name: &str) -> FileInfo {
        FileInfo::from_attr(attr, name, self.opts.hide_dot_files)
    }

    fn writable(&self) -> Result<(), u32> {
        if self.opts.read_only { Err(STATUS_MEDIA_WRITE_PROTECTED) } else { Ok(()) }
    }

    /// Opens or creates a file or directory: `NtCreateFile`'s semantics for every
    /// disposition and the options that matter. See docs/windows.md for the table.
    pub fn create(&self, r: &CreateRequest<'_>) -> Result<Created, u32> {
        let _busy = self.busy();
        if self.closing.load(Ordering::SeqCst) {
            return Err(STATUS_VOLUME_DISMOUNTED);
        }
        let comps = parse_path(r.path)?;
        let dir_only = r.options & FILE_DIRECTORY_FILE != 0;
        let file_only = r.options & FILE_NON_DIRECTORY_FILE != 0;
        let delete_on_close = r.options & FILE_DELETE_ON_CLOSE != 0;
        let write_through = r.options & FILE_WRITE_THROUGH != 0;
        if r.disposition > FILE_OVERWRITE_IF
            || (dir_only && file_only)
            || (dir_only && !matches!(r.disposition, FILE_CREATE | FILE_OPEN | FILE_OPEN_IF))
        {
            return Err(STATUS_INVALID_PARAMETER);
        }
        let truncating = matches!(r.disposition, FILE_SUPERSEDE | FILE_OVERWRITE | FILE_OVERWRITE_IF);
        let mut s = self.lock();
        let s = &mut *s;
        let (parent, name, found) = match comps.split_last() {
            None => (ROOT_ID, String::new(), Some((ROOT_ID, FileKind::Directory))),
            Some((last, dirs)) => {
                let parent = self.walk(s, dirs)?;
                let found = s.nodes.lookup(&*self.fs, self.req(), parent, last).map_err(st)?;
                (parent, last.clone(), found)
            }
        };
        let (node, kind, action, plugin, attr) = match found {
            Some((node, kind)) => {
                if r.disposition == FILE_CREATE {
                    return Err(STATUS_OBJECT_NAME_COLLISION);
                }
                let is_dir = kind == FileKind::Directory;
                if dir_only && !is_dir {
                    return Err(STATUS_NOT_A_DIRECTORY);
                }
                if is_dir && (file_only || truncating) {
                    return Err(STATUS_FILE_IS_A_DIRECTORY);
                }
                let attr = self.getattr(node, None)?;
                let access = map_generic(r.access, is_read_only(&attr));
                if let Some(f) = s.files.get(&node) {
                    if f.delete_pending {
                        return Err(STATUS_DELETE_PENDING);
                    }
                    let open: Vec<ShareEntry> = f
                        .active
                        .iter()
                        .filter_map(|id| s.handles.get(id))
                        .map(|h| ShareEntry { access: h.access, share: h.share })
                        .collect();
                    if conflicts(&open, ShareEntry { access, share: r.share }) {
                        return Err(STATUS_SHARING_VIOLATION);
                    }
                }
                if is_read_only(&attr) && (writes(access) || truncating) {
                    return Err(STATUS_ACCESS_DENIED);
                }
                if delete_on_close {
                    if access & DELETE == 0 {
                        return Err(STATUS_INVALID_PARAMETER);
                    }
                    self.check_delete(node, kind, &attr, access)?;
                }
                let mut attr = attr;
                let action = match r.disposition {
                    FILE_SUPERSEDE | FILE_OVERWRITE | FILE_OVERWRITE_IF => {
                        self.writable()?;
                        let set = SetAttr { size: Some(0), ..SetAttr::default() };
                        attr = self.fs.setattr(self.req(), node, &set).map_err(err)?.attr;
                        if r.disposition == FILE_SUPERSEDE {
                            CreateAction::Superseded
                        } else {
                            CreateAction::Overwritten
                        }
                    }
                    _ => CreateAction::Opened,
                };
                let plugin = self.open_plugin(node, kind, access, write_through)?;
                (node, kind, action, plugin, attr)
            }
            None => {
                if matches!(r.disposition, FILE_OPEN | FILE_OVERWRITE) {
                    return Err(STATUS_OBJECT_NAME_NOT_FOUND);
                }
                if s.files.get(&parent).is_some_and(|f| f.delete_pending) {
                    return Err(STATUS_DELETE_PENDING);
                }
                self.writable()?;
                check_new_name(&name, self.caps.max_name_len)?;
                let access = map_generic(r.access, false);
                if delete_on_close && access & DELETE == 0 {
                    return Err(STATUS_INVALID_PARAMETER);
                }
                let mode = mode_for_new(r.attributes, dir_only, self.opts.umask);
                let (entry, plugin): (Entry, Option<Handle>) = if dir_only {
                    let entry = self.fs.mkdir(self.req(), parent, &os(&name), mode).map_err(err)?;
                    s.nodes.insert(&*self.fs, parent, &name, &entry);
                    let opened = self.fs.opendir(self.req(), entry.node, O_RDONLY);
                    (entry, Some(opened.map_err(err)?.handle))
                } else {
                    let flags = open_flags(access, write_through) | O_EXCL;
                    let (entry, opened) = self.fs.create(self.req(), parent, &os(&name), mode, flags).map_err(err)?;
                    s.nodes.insert(&*self.fs, parent, &name, &entry);
                    (entry, Some(opened.handle))
                };
                (entry.node, entry.attr.kind, CreateAction::Created, plugin, entry.attr)
            }
        };
        let access = map_generic(r.access, is_read_only(&attr));
        if delete_on_close && access & DELETE == 0 {
            self.release_plugin(node, kind, plugin);
            return Err(STATUS_INVALID_PARAMETER);
        }
        let id = s.next_id;
        s.next_id += 1;
        s.nodes.pin(node);
        let handle = OpenHandle {
            node,
            kind,
            plugin,
            access,
            share: r.share,
            delete_on_close,
            write_through,
            cleaned_up: false,
            listing: None,
        };
        s.handles.insert(id, handle);
        let nodes = &mut s.nodes;
        let file = s.files.entry(node).or_insert_with(|| {
            nodes.pin(parent);
            OpenFile {
                parent,
                name: name.clone(),
                path: comps.clone(),
                active: Vec::new(),
                open: 0,
                delete_pending: false,
                unlinked: false,
            }
        });
        file.active.push(id);
        file.open += 1;
        s.nodes.trim(&*self.fs, self.opts.cache_capacity);
        let info = self.info(&attr, &name);
        Ok(Created { id, action, info })
    }

    /// Opens the plugin's handle a Windows handle needs: a directory handle always, a file
    /// handle when it reads or writes data, none for attribute-only access or other kinds.
    fn open_plugin(
        &self,
        node: NodeId,
        kind: FileKind,
        access: u32,
        write_through: bool,
    ) -> Result<Option<Handle>, u32> {
        match kind {
            FileKind::Directory => self.fs.opendir(self.req(), node, O_RDONLY).map(|o| Some(o.handle)).map_err(err),
            FileKind::File if reads(access) || writes(access) => {
                if writes(access) {
                    self.writable()?;
                }
                self.fs.open(self.req(), node, open_flags(access, write_through)).map(|o| Some(o.handle)).map_err(err)
            }
            _ => Ok(None),
        }
    }

    fn release_plugin(&self, node: NodeId, kind: FileKind, plugin: Option<Handle>) {
        if let Some(h) = plugin {
            // Release cannot fail in a way Windows could report: Close has no status.
            let _ = if kind == FileKind::Directory {
                self.fs.releasedir(self.req(), node, h)
            } else {
                self.fs.release(self.req(), node, h, 0, true)
            };
        }
    }

    /// Whether the node may be deleted by a handle with `access`.
    fn check_delete(&self, node: NodeId, kind: FileKind, attr: &Attr, access: u32) -> Result<(), u32> {
        if access & DELETE == 0 {
            return Err(STATUS_ACCESS_DENIED);
        }
        if node == ROOT_ID || is_read_only(attr) {
            return Err(STATUS_CANNOT_DELETE);
        }
        self.writable()?;
        if kind == FileKind::Directory && !self.is_empty_dir(node)? {
            return Err(STATUS_DIRECTORY_NOT_EMPTY);
        }
        Ok(())
    }

    fn is_empty_dir(&self, node: NodeId) -> Result<bool, u32> {
        struct AnyName(bool);
        impl DirSink for AnyName {
            fn add(&mut self, e: &DirEntry<'_>) -> bool {
                if e.name == b"." || e.name == b".." {
                    return true;
                }
                self.0 = true;
                false
            }
        }
        let h = self.fs.opendir(self.req(), node, O_RDONLY).map_err(err)?.handle;
        let mut sink = AnyName(false);
        let r = self.fs.readdir(self.req(), node, h, 0, &mut sink);
        let _ = self.fs.releasedir(self.req(), node, h);
        r.map_err(err)?;
        Ok(!sink.0)
    }

    /// Marks the file to be deleted when its last handle is cleaned up, or clears the mark
    /// (`FileDispositionInformation`; Dokan's `DeleteFile`/`DeleteDirectory`).
    pub fn set_delete_on_close(&self, id: FileId, delete: bool) -> Result<(), u32> {
        let _busy = self.busy();
        let mut s = self.lock();
        let h = s.handles.get(&id).ok_or(STATUS_INVALID_HANDLE)?;
        let (node, kind, access) = (h.node, h.kind, h.access);
        if delete {
            let attr = self.getattr(node, None)?;
            self.check_delete(node, kind, &attr, access)?;
        }
        if let Some(f) = s.files.get_mut(&node) {
            f.delete_pending = delete;
        }
        Ok(())
    }

    /// The last user handle closed (`IRP_MJ_CLEANUP`): its share mode no longer counts, and
    /// if the file is marked for deletion and this was its last handle, it is deleted.
    pub fn cleanup(&self, id: FileId) -> Result<(), u32> {
        let _busy = self.busy();
        let mut s = self.lock();
        let s = &mut *s;
        let h = s.handles.get_mut(&id).ok_or(STATUS_INVALID_HANDLE)?;
        if h.cleaned_up {
            return Ok(());
        }
        h.cleaned_up = true;
        let (node, kind, doc) = (h.node, h.kind, h.delete_on_close);
        let Some(f) = s.files.get_mut(&node) else { return Ok(()) };
        f.active.retain(|x| *x != id);
        if doc {
            f.delete_pending = true;
        }
        if !(f.active.is_empty() && f.delete_pending && !f.unlinked) {
            return Ok(());
        }
        f.delete_pending = false;
        let (parent, name) = (f.parent, f.name.clone());
        let r = if kind == FileKind::Directory {
            self.fs.rmdir(self.req(), parent, &os(&name))
        } else {
            self.fs.unlink(self.req(), parent, &os(&name))
        };
        r.map_err(err)?;
        f.unlinked = true;
        s.nodes.remove(&*self.fs, parent, &name);
        Ok(())
    }

    /// The handle is gone (`IRP_MJ_CLOSE`): the plugin's handle is released and the
    /// references it pinned given back. Cleans up first if the binding did not.
    pub fn close(&self, id: FileId) {
        let _busy = self.busy();
        let _ = self.cleanup(id);
        let mut s = self.lock();
        let s = &mut *s;
        let Some(h) = s.handles.remove(&id) else { return };
        self.release_plugin(h.node, h.kind, h.plugin);
        if let Some(f) = s.files.get_mut(&h.node) {
            f.open -= 1;
            if f.open == 0 {
                let parent = f.parent;
                s.files.remove(&h.node);
                s.nodes.unpin(&*self.fs, parent);
            }
        }
        s.nodes.unpin(&*self.fs, h.node);
    }

    /// Renames the file open as `id` to `new_path` (`FileRenameInformation`, `MoveFileEx`).
    /// Without `replace`, an existing target is `STATUS_OBJECT_NAME_COLLISION`. With it, a
    /// target directory, a read-only target, or (unless `posix`) an open target is
    /// `STATUS_ACCESS_DENIED`, as NTFS answers. A directory with open files below it does
    /// not move. A rename that changes only case is a rename of the file onto itself.
    pub fn rename(&self, id: FileId, new_path: &[u16], replace: bool, posix: bool) -> Result<(), u32> {
        let _busy = self.busy();
        let comps = parse_path(new_path)?;
        let Some((new_name, dirs)) = comps.split_last() else { return Err(STATUS_ACCESS_DENIED) };
        let mut s = self.lock();
        let s = &mut *s;
        let h = s.handles.get(&id).ok_or(STATUS_INVALID_HANDLE)?;
        let (node, kind) = (h.node, h.kind);
        if h.access & DELETE == 0 || node == ROOT_ID {
            return Err(STATUS_ACCESS_DENIED);
        }
        self.writable()?;
        let f = s.files.get(&node).ok_or(STATUS_INVALID_HANDLE)?;
        if f.delete_pending || f.unlinked {
            return Err(STATUS_DELETE_PENDING);
        }
        let (old_parent, old_name, old_path) = (f.parent, f.name.clone(), f.path.clone());
        if kind == FileKind::Directory {
            let old_keys: Vec<String> = old_path.iter().map(|c| s.nodes.key(c)).collect();
            let below = s.files.iter().any(|(n, other)| {
                *n != node
                    && other.path.len() > old_keys.len()
                    && other.path.iter().zip(&old_keys).all(|(a, b)| s.nodes.key(a) == *b)
            });
            if below {
                return Err(STATUS_ACCESS_DENIED);
            }
        }
        let new_parent = self.walk(s, dirs)?;
        check_new_name(new_name, self.caps.max_name_len)?;
        if new_parent == old_parent && *new_name == old_name {
            return Ok(());
        }
        let target = s.nodes.lookup(&*self.fs, self.req(), new_parent, new_name).map_err(st)?;
        let mut flags = RenameFlags::empty();
        let mut replaced = None;
        match target {
            Some((t, _)) if t == node => {}
            Some((t, tkind)) => {
                if !replace {
                    return Err(STATUS_OBJECT_NAME_COLLISION);
                }
                if tkind == FileKind::Directory || kind == FileKind::Directory {
                    return Err(STATUS_ACCESS_DENIED);
                }
                if !(posix || self.opts.posix_rename) && s.files.get(&t).is_some_and(|f| f.open > 0) {
                    return Err(STATUS_ACCESS_DENIED);
                }
                if is_read_only(&self.getattr(t, None)?) {
                    return Err(STATUS_ACCESS_DENIED);
                }
                replaced = Some(t);
            }
            None if !replace && self.caps.rename_noreplace => flags = RenameFlags(RenameFlags::NOREPLACE),
            None => {}
        }
        let same_name = new_parent == old_parent && s.nodes.key(new_name) == s.nodes.key(&old_name);
        if target.is_some_and(|(t, _)| t == node) && !same_name {
            // Another hard link of this very file. POSIX rename leaves both names; Windows
            // replaces the target, which leaves only the new name: remove the old one.
            if !replace {
                return Err(STATUS_OBJECT_NAME_COLLISION);
            }
            self.fs.unlink(self.req(), old_parent, &os(&old_name)).map_err(err)?;
        } else {
            self.fs.rename(self.req(), old_parent, &os(&old_name), new_parent, &os(new_name), flags).map_err(err)?;
        }
        s.nodes.remove(&*self.fs, old_parent, &old_name);
        if let Some(t) = replaced {
            s.nodes.remove(&*self.fs, new_parent, new_name);
            if let Some(tf) = s.files.get_mut(&t) {
                tf.unlinked = true;
            }
        }
        if new_parent != old_parent {
            s.nodes.pin(new_parent);
            s.nodes.unpin(&*self.fs, old_parent);
        }
        if let Some(f) = s.files.get_mut(&node) {
            f.parent = new_parent;
            f.name = new_name.clone();
            f.path = comps.clone();
        }
        Ok(())
    }

    /// Reads at `offset`; `STATUS_END_OF_FILE` at or past the end.
    pub fn read(&self, id: FileId, offset: u64, buf: &mut [u8]) -> Result<usize, u32> {
        let _busy = self.busy();
        let (node, plugin) = {
            let s = self.lock();
            let h = s.handles.get(&id).ok_or(STATUS_INVALID_HANDLE)?;
            if h.kind == FileKind::Directory {
                return Err(STATUS_INVALID_DEVICE_REQUEST);
            }
            if !reads(h.access) {
                return Err(STATUS_ACCESS_DENIED);
            }
            (h.node, h.plugin.ok_or(STATUS_ACCESS_DENIED)?)
        };
        let n = self.fs.read(self.req(), node, plugin, offset, buf).map_err(err)?;
        if n == 0 && !buf.is_empty() {
            return Err(STATUS_END_OF_FILE);
        }
        Ok(n)
    }

    /// Writes `data` at `offset`, or at the end of the file when `offset` is `None`
    /// (`FILE_WRITE_TO_END_OF_FILE`). A `constrained` write (paging IO) never extends the
    /// file. A write-through handle's data is durable when this returns.
    pub fn write(&self, id: FileId, offset: Option<u64>, data: &[u8], constrained: bool) -> Result<usize, u32> {
        let _busy = self.busy();
        let (node, plugin, write_through) = {
            let s = self.lock();
            let h = s.handles.get(&id).ok_or(STATUS_INVALID_HANDLE)?;
            if h.kind == FileKind::Directory {
                return Err(STATUS_INVALID_DEVICE_REQUEST);
            }
            if !writes(h.access) {
                return Err(STATUS_ACCESS_DENIED);
            }
            (h.node, h.plugin.ok_or(STATUS_ACCESS_DENIED)?, h.write_through)
        };
        self.writable()?;
        let mut data = data;
        let offset = match offset {
            Some(o) if !constrained => o,
            _ => {
                let size = self.getattr(node, Some(plugin))?.size;
                let o = offset.unwrap_or(size);
                if constrained {
                    let room = size.saturating_sub(o);
                    data = &data[..data.len().min(room as usize)];
                    if data.is_empty() {
                        return Ok(0);
                    }
                }
                o
            }
        };
        let flags = if write_through { O_DSYNC } else { 0 };
        let n = self.fs.write(self.req(), node, plugin, offset, data, flags).map_err(err)?;
        if write_through {
            self.fs.fsync(self.req(), node, plugin, true).map_err(err)?;
        }
        Ok(n)
    }

    /// Makes the file's data durable (`FlushFileBuffers`).
    pub fn flush(&self, id: FileId) -> Result<(), u32> {
        let _busy = self.busy();
        let (node, plugin, kind) = self.handle_parts(id)?;
        match plugin {
            Some(h) if kind == FileKind::Directory => self.fs.fsyncdir(self.req(), node, h, false).map_err(err),
            Some(h) => self.fs.fsync(self.req(), node, h, false).map_err(err),
            None => Ok(()),
        }
    }

    fn handle_parts(&self, id: FileId) -> Result<(NodeId, Option<Handle>, FileKind), u32> {
        let s = self.lock();
        let h = s.handles.get(&id).ok_or(STATUS_INVALID_HANDLE)?;
        Ok((h.node, h.plugin, h.kind))
    }

    fn name_of(&self, node: NodeId) -> String {
        self.lock().files.get(&node).map(|f| f.name.clone()).unwrap_or_default()
    }

    /// The file's information (`GetFileInformationByHandle`).
    pub fn file_info(&self, id: FileId) -> Result<FileInfo, u32> {
        let _busy = self.busy();
        let (node, plugin, kind) = self.handle_parts(id)?;
        let attr = self.getattr(node, plugin.filter(|_| kind != FileKind::Directory))?;
        Ok(self.info(&attr, &self.name_of(node)))
    }

    /// The file's path as this mount last named it (`\dir\name`), for `GetFileNameInformation`.
    pub fn path(&self, id: FileId) -> Result<String, u32> {
        let s = self.lock();
        let h = s.handles.get(&id).ok_or(STATUS_INVALID_HANDLE)?;
        let f = s.files.get(&h.node).ok_or(STATUS_INVALID_HANDLE)?;
        let shown: Vec<String> = f.path.iter().map(|c| to_windows_name(c.as_bytes()).unwrap_or_default()).collect();
        Ok(format!("\\{}", shown.join("\\")))
    }

    /// Sets attributes and times (`FileBasicInformation`); 0 leaves a value as it is.
    /// The creation time cannot be set through the plugin API and is ignored.
    pub fn set_basic_info(
        &self,
        id: FileId,
        attributes: u32,
        last_access: u64,
        last_write: u64,
    ) -> Result<FileInfo, u32> {
        let _busy = self.busy();
        let (node, plugin, _) = self.handle_parts(id)?;
        let attr = self.getattr(node, None)?;
        let set = SetAttr {
            mode: mode_for_attributes(&attr, attributes, self.opts.umask),
            atime: settable(last_access).map(SetTime::At),
            mtime: settable(last_write).map(SetTime::At),
            handle: plugin,
            ..SetAttr::default()
        };
        if set == (SetAttr { handle: plugin, ..SetAttr::default() }) {
            return Ok(self.info(&attr, &self.name_of(node)));
        }
        self.writable()?;
        let attr = self.fs.setattr(self.req(), node, &set).map_err(err)?.attr;
        Ok(self.info(&attr, &self.name_of(node)))
    }

    /// Sets the file size (`FileEndOfFileInformation`), or with `allocation` the allocation
    /// size (`FileAllocationInformation`), which only ever shrinks a larger file.
    pub fn set_file_size(&self, id: FileId, size: u64, allocation: bool) -> Result<FileInfo, u32> {
        let _busy = self.busy();
        let (node, plugin, kind) = self.handle_parts(id)?;
        if kind == FileKind::Directory {
            return Err(STATUS_INVALID_DEVICE_REQUEST);
        }
        self.writable()?;
        let attr = self.getattr(node, plugin)?;
        if allocation && size >= attr.size {
            return Ok(self.info(&attr, &self.name_of(node)));
        }
        let set = SetAttr { size: Some(size), handle: plugin, ..SetAttr::default() };
        let attr = self.fs.setattr(self.req(), node, &set).map_err(err)?.attr;
        Ok(self.info(&attr, &self.name_of(node)))
    }

    /// The volume's sizes and parameters.
    pub fn volume_info(&self) -> Result<VolumeInfo, u32> {
        let _busy = self.busy();
        let stat = self.fs.statfs(self.req(), ROOT_ID).map_err(err)?;
        Ok(VolumeInfo::new(&stat, &self.caps, self.opts.read_only))
    }

    /// The file's security descriptor as SDDL.
    pub fn security(&self, id: FileId, sids: &dyn SidMap) -> Result<String, u32> {
        let _busy = self.busy();
        let (node, _, kind) = self.handle_parts(id)?;
        let attr = self.getattr(node, None)?;
        Ok(sddl(attr.uid, attr.gid, attr.perm as u32, kind == FileKind::Directory, sids))
    }

    /// Lists the directory open as `id`: the names matching `pattern` (UTF-16, wildcards
    /// as in [`crate::pattern`]; empty for all) that come after `marker` (the last name a
    /// previous query returned), `.` and `..` first (not in the root), then by name in the
    /// mount's case rule. A query without a marker reads the directory afresh; queries with
    /// one continue the same listing, so a name removed in between does not lose the place.
    pub fn read_directory(&self, id: FileId, pattern: &[u16], marker: Option<&[u16]>) -> Result<Vec<DirInfo>, u32> {
        let _busy = self.busy();
        let (node, plugin, kind) = self.handle_parts(id)?;
        if kind != FileKind::Directory {
            return Err(STATUS_NOT_A_DIRECTORY);
        }
        let plugin = plugin.ok_or(STATUS_INVALID_HANDLE)?;
        let cached = if marker.is_some() { self.lock().handles.get(&id).and_then(|h| h.listing.clone()) } else { None };
        let listing = match cached {
            Some(l) => l,
            None => {
                let l = self.list(node, plugin)?;
                if let Some(h) = self.lock().handles.get_mut(&id) {
                    h.listing = Some(l.clone());
                }
                l
            }
        };
        let pattern = String::from_utf16_lossy(pattern);
        let ignore_case = !self.caps.case_sensitive;
        let start = match marker.map(String::from_utf16_lossy) {
            None => 0,
            Some(m) if m == "." || m == ".." => listing.iter().position(|d| d.name == m).map_or(0, |i| i + 1),
            Some(m) => {
                let k = crate::name::key(&m, self.caps.case_sensitive);
                listing
                    .iter()
                    .position(|d| {
                        d.name != "." && d.name != ".." && crate::name::key(&d.name, self.caps.case_sensitive) > k
                    })
                    .unwrap_or(listing.len())
            }
        };
        Ok(listing[start..]
            .iter()
            .filter(|d| {
                crate::pattern::matches_all(&pattern) || crate::pattern::matches(&pattern, &d.name, ignore_case)
            })
            .cloned()
            .collect())
    }

    /// Reads a whole directory through `readdirplus`, giving each entry's reference back.
    fn list(&self, node: NodeId, handle: Handle) -> Result<Vec<DirInfo>, u32> {
        struct Page<'a> {
            fs: &'a dyn FileSystem,
            items: Vec<(Vec<u8>, Entry)>,
            cookie: u64,
        }
        impl DirPlusSink for Page<'_> {
            fn add(&mut self, d: &DirEntry<'_>, e: &Entry) -> bool {
                if d.name != b"." && d.name != b".." {
                    // The listing does not keep nodes: give the reference back now.
                    self.fs.forget(e.node, 1);
                    self.items.push((d.name.to_vec(), *e));
                }
                self.cookie = d.cookie;
                true
            }
        }
        let mut items = Vec::new();
        let mut cookie = 0;
        loop {
            let mut page = Page { fs: &*self.fs, items: Vec::new(), cookie };
            self.fs.readdirplus(self.req(), node, handle, cookie, &mut page).map_err(err)?;
            if page.cookie == cookie {
                break;
            }
            cookie = page.cookie;
            items.extend(page.items);
        }
        let cs = self.caps.case_sensitive;
        let mut out: Vec<DirInfo> = items
            .into_iter()
            .filter_map(|(name, e)| {
                let shown = to_windows_name(&name)?;
                Some(DirInfo { info: self.info(&e.attr, &shown), name: shown })
            })
            .collect();
        out.sort_by_cached_key(|d| crate::name::key(&d.name, cs));
        if node != ROOT_ID {
            let me = self.getattr(node, None)?;
            let parent = self.lock().files.get(&node).map(|f| f.parent).unwrap_or(ROOT_ID);
            let up = self.getattr(parent, None).unwrap_or(me);
            out.insert(0, DirInfo { name: "..".into(), info: self.info(&up, "..") });
            out.insert(0, DirInfo { name: ".".into(), info: self.info(&me, ".") });
        }
        Ok(out)
    }

    /// How many names the cache holds (tests, metrics).
    pub fn cached_names(&self) -> usize {
        self.lock().nodes.len()
    }

    /// How many nodes this volume holds lookup references on (tests, metrics).
    pub fn held_nodes(&self) -> usize {
        self.lock().nodes.held_count()
    }

    /// How many handles are open.
    pub fn open_handles(&self) -> usize {
        self.lock().handles.len()
    }

    /// How many handles programs still hold: open and not yet cleaned up. Windows may hold
    /// back the final close of a handle a program closed long after (the cache manager and
    /// scanners keep files open), so this, not [`Volume::open_handles`], says whether a
    /// mount is still in use.
    pub fn active_handles(&self) -> usize {
        self.lock().handles.values().filter(|h| !h.cleaned_up).count()
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        self.release_all();
    }
}

/// The open(2) flags for a Windows access mask.
fn open_flags(access: u32, write_through: bool) -> i32 {
    let append_only = access & FILE_APPEND_DATA != 0 && access & FILE_WRITE_DATA == 0;
    let mut flags = match (reads(access), writes(access)) {
        (true, true) => O_RDWR,
        (false, true) => O_WRONLY,
        _ => O_RDONLY,
    };
    if append_only {
        flags |= O_APPEND;
    }
    if write_through {
        flags |= O_DSYNC;
    }
    flags
}
