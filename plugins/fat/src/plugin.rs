//! The plugin glue: [`FatPlugin`] opens a [`Volume`] from the config table, and [`FatFs`]
//! answers the host's calls with it. Everything about FAT lives in the engine; this file
//! maps ids, reference counts, attributes and errnos, the way Linux's vfat presents a FAT
//! volume (owner and modes from mount options, the read-only attribute as the write bits).

use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use plugfs_plugin_api::open_flags::{O_ACCMODE, O_APPEND, O_RDONLY, O_TRUNC};
use plugfs_plugin_api::refs::NodeRefs;
use plugfs_plugin_api::{
    Attr, AttrOut, Capabilities, ConfigTable, DirEntry, DirSink, Entry, Errno, Error, FileKind, FileSystem, Handle,
    MountOptions, NodeId, OpenError, Opened, Plugin, PluginInfo, RenameFlags, Request, Result, SetAttr, SetTime,
    StatFs, Timestamp,
};

use crate::engine::dir::ATTR_READ_ONLY;
use crate::engine::time::{self, FatTime};
use crate::engine::{self, Ino, Meta, OpenOptions, Volume, mkfs};

/// How long the kernel may cache names and attributes: every change goes through here.
const TTL: Duration = Duration::from_secs(1);
/// Readdir cookies 1 and 2 resume after `.` and `..`; entry at slot s has cookie s + 3.
const FIRST_ENTRY_COOKIE: u64 = 3;

/// What FAT can and cannot represent.
const CAPABILITIES: Capabilities = Capabilities {
    writable: true,
    rename_noreplace: true,
    case_sensitive: false,
    case_preserving: true,
    max_name_len: 255,
    max_file_size: engine::MAX_FILE_SIZE,
    // `FatPlugin::format` makes new images.
    format: true,
    // No symlinks, hard links, special files, xattrs, permissions, fallocate, holes,
    // rename exchange or nanosecond times: FAT cannot store them.
    ..Capabilities::NONE
};

/// The fat plugin.
pub struct FatPlugin;

#[derive(Debug, serde::Deserialize)]
struct Settings {
    image: PathBuf,
    #[serde(default)]
    read_only: bool,
    uid: Option<u32>,
    gid: Option<u32>,
    umask: Option<u32>,
    fmask: Option<u32>,
    dmask: Option<u32>,
    tz: Option<String>,
    #[serde(default)]
    quiet: bool,
    /// Only for `format` (`plugfs volume create --label`): the new volume's label.
    label: Option<String>,
}

/// Owner and modes as vfat's mount options give them.
#[derive(Clone, Copy, Debug)]
struct Presentation {
    uid: u32,
    gid: u32,
    fmask: u32,
    dmask: u32,
    quiet: bool,
    tz_offset: i64,
}

fn mask(settings_value: Option<u32>, key: &str, default: u32) -> Result<u32, OpenError> {
    match settings_value {
        Some(m) if m > 0o777 => Err(OpenError::config(key, format!("{m:#o} is not a permission mask (0 to 0o777)"))),
        Some(m) => Ok(m),
        None => Ok(default),
    }
}

impl Plugin for FatPlugin {
    type Fs = FatFs;

    fn info() -> PluginInfo {
        PluginInfo {
            name: "fat",
            version: env!("CARGO_PKG_VERSION"),
            description: "FAT12/16/32 images, read-write, with VFAT long names",
            config_help: "image = \"fat.img\"  # the image file or block device (required)\n\
                          read_only = false   # never write to the image\n\
                          uid = 1000          # owner of every file (default: the host's user)\n\
                          gid = 1000          # group of every file (default: the host's group)\n\
                          umask = 0o022       # permission bits to clear (default 0o022)\n\
                          fmask = 0o133       # for files only (default: umask)\n\
                          dmask = 0o022       # for directories only (default: umask)\n\
                          tz = \"local\"        # \"local\" or \"UTC\": the clock FAT times are in\n\
                          quiet = false       # chmod/chown that FAT cannot store succeed silently",
            capabilities: CAPABILITIES,
        }
    }

    fn open(config: &ConfigTable, options: &MountOptions) -> Result<FatFs, OpenError> {
        let s: Settings = config.parse()?;
        if s.label.is_some() {
            return Err(OpenError::config("label", "only for creating a volume; relabel with `plugfs-fat label`"));
        }
        let umask = mask(s.umask, "umask", 0o022)?;
        let tz_offset = match s.tz.as_deref() {
            None | Some("local") => time::local_offset(),
            Some("UTC") | Some("utc") => 0,
            Some(other) => return Err(OpenError::config("tz", format!("{other:?}: use \"UTC\" or \"local\""))),
        };
        let presentation = Presentation {
            uid: s.uid.unwrap_or_else(|| rustix::process::getuid().as_raw()),
            gid: s.gid.unwrap_or_else(|| rustix::process::getgid().as_raw()),
            fmask: mask(s.fmask, "fmask", umask)?,
            dmask: mask(s.dmask, "dmask", umask)?,
            quiet: s.quiet,
            tz_offset,
        };
        let read_only = s.read_only || options.read_only;
        let vol = Volume::open(&s.image, OpenOptions { read_only, tz_offset })
            .map_err(|e| OpenError::other(format!("{}: {e}", s.image.display())))?;
        tracing::info!(
            image = %s.image.display(),
            fat = %vol.bpb().fat_type,
            read_only = vol.is_read_only(),
            "mounted a FAT volume"
        );
        Ok(FatFs {
            vol: RwLock::new(vol),
            tracking: Mutex::new(NodeRefs::default()),
            presentation,
            next_handle: AtomicU64::new(1),
        })
    }

    /// Creates the image file `image` names (refusing an existing file) as
    /// `plugfs-fat mkfs IMAGE --size SIZE` does: the FAT type and cluster size chosen by
    /// size, 512-byte sectors. The other mount keys are checked but do not matter here.
    fn format(config: &ConfigTable, size: u64) -> Result<(), OpenError> {
        let s: Settings = config.parse()?;
        let format = mkfs::Format {
            size,
            fat_type: None,
            sector_size: 512,
            cluster_size: None,
            label: s.label.clone(),
            volume_id: mkfs::volume_id_now(),
        };
        let bpb = mkfs::create_image(&s.image, &format, false, |_, _| {}).map_err(|e| match e {
            engine::Error::Exists => OpenError::config("image", format!("{}: the file exists", s.image.display())),
            engine::Error::Invalid(m) => OpenError::other(format!("cannot make a FAT volume of {size} bytes: {m}")),
            e => OpenError::other(format!("{}: {e}", s.image.display())),
        })?;
        tracing::info!(
            image = %s.image.display(),
            fat = %bpb.fat_type,
            clusters = bpb.cluster_count,
            cluster_size = bpb.cluster_size(),
            "created a FAT volume"
        );
        Ok(())
    }
}

/// A mounted FAT volume.
///
/// **Locking.** The volume sits behind a read-write lock: reads of files whose cluster
/// chain is cached, `getattr`, and lookups and listings of directories already read run
/// under the shared lock, in parallel (the image is read with `pread`); everything that
/// changes the volume or fills a cache takes it exclusively. Reference counts have their
/// own small lock, always taken after the volume's.
pub struct FatFs {
    vol: RwLock<Volume>,
    tracking: Mutex<NodeRefs>,
    presentation: Presentation,
    next_handle: AtomicU64,
}

fn errno(e: engine::Error) -> Error {
    let n = e.errno();
    Error::with_message(Errno(n), e.to_string())
}

fn name_str(name: &OsStr) -> Result<&str> {
    name.to_str().ok_or_else(|| Error::with_message(Errno::EINVAL, "FAT names are Unicode; this one is not UTF-8"))
}

fn timestamp((secs, nanos): (i64, u32)) -> Timestamp {
    Timestamp::new(secs, nanos)
}

fn poisoned() -> Error {
    Error::with_message(Errno::EIO, "fat: a lock was poisoned by a panic")
}

impl FatFs {
    fn shared(&self) -> Result<RwLockReadGuard<'_, Volume>> {
        self.vol.read().map_err(|_| poisoned())
    }

    fn exclusive(&self) -> Result<RwLockWriteGuard<'_, Volume>> {
        self.vol.write().map_err(|_| poisoned())
    }

    fn tracking(&self) -> Result<MutexGuard<'_, NodeRefs>> {
        self.tracking.lock().map_err(|_| poisoned())
    }

    /// Answers from the shared lock when `fast` can (it returns None when it needs a cache
    /// filled), else from the exclusive lock with `slow`.
    fn shared_or_exclusive<T>(
        &self,
        fast: impl FnOnce(&Volume) -> Option<engine::Result<T>>,
        slow: impl FnOnce(&mut Volume) -> engine::Result<T>,
    ) -> Result<T> {
        if let Some(r) = fast(&*self.shared()?) {
            return r.map_err(errno);
        }
        slow(&mut *self.exclusive()?).map_err(errno)
    }

    /// Lets the engine free an unlinked node once nothing refers to it.
    fn maybe_evict(&self, vol: &mut Volume, ino: Ino) -> Result<()> {
        if self.tracking()?.remove_if_unused(ino) {
            vol.evict(ino).map_err(errno)?;
        }
        Ok(())
    }

    fn attr(&self, vol: &Volume, m: &Meta) -> Attr {
        let p = &self.presentation;
        let tz = vol.tz_offset();
        let (kind, mut perm) =
            if m.is_dir { (FileKind::Directory, 0o777 & !p.dmask) } else { (FileKind::File, 0o777 & !p.fmask) };
        if !m.is_dir && m.attr & ATTR_READ_ONLY != 0 {
            perm &= !0o222;
        }
        let mtime = timestamp(m.modified.to_unix(tz));
        Attr {
            ino: m.ino,
            size: m.size,
            blocks: m.allocated.div_ceil(512),
            atime: timestamp(FatTime { date: m.access_date, time: 0, tenths: 0 }.to_unix(tz)),
            mtime,
            ctime: mtime,
            crtime: timestamp(m.created.to_unix(tz)),
            kind,
            perm: perm as u16,
            // FAT keeps no link count. A directory's would be 2 + its subdirectories, which
            // means reading it whole on every stat; 1 is the documented "not counted" answer
            // (btrfs gives it too), which tells find(1) not to use link counts as a shortcut.
            nlink: 1,
            uid: p.uid,
            gid: p.gid,
            rdev: 0,
            blksize: vol.bpb().cluster_size(),
        }
    }

    /// The entry for `ino`, counting one lookup reference.
    fn entry(&self, vol: &Volume, ino: Ino) -> Result<Entry> {
        let m = vol.stat(ino).map_err(errno)?;
        let attr = self.attr(vol, &m);
        self.tracking()?.looked_up(ino);
        Ok(Entry { node: ino, generation: 0, attr, entry_ttl: TTL, attr_ttl: TTL })
    }

    fn attr_out(&self, vol: &Volume, ino: Ino) -> Result<AttrOut> {
        let m = vol.stat(ino).map_err(errno)?;
        Ok(AttrOut { attr: self.attr(vol, &m), ttl: TTL })
    }

    fn open_handle(&self, ino: Ino, flags: i32) -> Result<Opened> {
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.tracking()?.opened(handle, ino, flags);
        Ok(Opened { handle, ..Opened::default() })
    }

    fn close_handle(&self, handle: Handle) -> Result<()> {
        let mut vol = self.exclusive()?;
        let closed = self.tracking()?.closed(handle);
        if let Some(ino) = closed {
            self.maybe_evict(&mut vol, ino)?;
        }
        Ok(())
    }

    fn refuse(&self, what: &str) -> Result<()> {
        if self.presentation.quiet {
            Ok(())
        } else {
            Err(Error::with_message(Errno::EPERM, format!("FAT cannot store {what}")))
        }
    }

    /// Creates a node; with `open_flags`, opens it before anyone else can remove it.
    fn create_node(
        &self,
        parent: NodeId,
        name: &OsStr,
        is_dir: bool,
        open_flags: Option<i32>,
    ) -> Result<(Entry, Option<Opened>)> {
        let mut vol = self.exclusive()?;
        let ino = vol.create(parent, name_str(name)?, is_dir).map_err(errno)?;
        let entry = self.entry(&vol, ino)?;
        let opened = open_flags.map(|f| self.open_handle(ino, f)).transpose()?;
        Ok((entry, opened))
    }
}

impl FileSystem for FatFs {
    fn lookup(&self, _req: &Request, parent: NodeId, name: &OsStr) -> Result<Entry> {
        let name = name_str(name)?;
        // A name no directory can hold is ENAMETOOLONG, as on vfat, not "not found".
        if name.encode_utf16().count() > 255 {
            return Err(Errno::ENAMETOOLONG.into());
        }
        {
            let vol = self.shared()?;
            if let Some(r) = vol.lookup_loaded(parent, name) {
                let ino = r.map_err(errno)?;
                return self.entry(&vol, ino);
            }
        }
        let mut vol = self.exclusive()?;
        let ino = vol.lookup(parent, name).map_err(errno)?;
        self.entry(&vol, ino)
    }

    fn forget(&self, node: NodeId, nlookup: u64) {
        let Ok(mut vol) = self.exclusive() else { return };
        if let Ok(mut t) = self.tracking() {
            t.forgotten(node, nlookup);
        }
        if let Err(e) = self.maybe_evict(&mut vol, node) {
            tracing::error!(node, "freeing an unlinked file failed: {e}");
        }
    }

    fn getattr(&self, _req: &Request, node: NodeId, _handle: Option<Handle>) -> Result<AttrOut> {
        let vol = self.shared()?;
        self.attr_out(&vol, node)
    }

    fn setattr(&self, _req: &Request, node: NodeId, set: &SetAttr) -> Result<AttrOut> {
        let mut vol = self.exclusive()?;
        let p = self.presentation;
        let cur = self.attr_out(&vol, node)?.attr;
        if set.uid.is_some_and(|u| u != cur.uid) || set.gid.is_some_and(|g| g != cur.gid) {
            self.refuse("an owner or group")?;
        }
        if let Some(mode) = set.mode {
            let mode = mode & 0o7777;
            let is_dir = cur.kind == FileKind::Directory;
            let allowed = 0o777 & !if is_dir { p.dmask } else { p.fmask };
            // Like vfat: only the write bits may change (they map to the read-only
            // attribute), and only all of them at once.
            let write = mode & 0o222;
            if mode & !0o222 != allowed & !0o222 || (write != 0 && write != allowed & 0o222) {
                self.refuse("these permission bits")?;
            } else if !is_dir {
                let m = vol.stat(node).map_err(errno)?;
                let attr = if write == 0 { m.attr | ATTR_READ_ONLY } else { m.attr & !ATTR_READ_ONLY };
                if attr != m.attr {
                    vol.set_attributes(node, attr).map_err(errno)?;
                }
            }
        }
        if let Some(size) = set.size {
            vol.truncate(node, size).map_err(errno)?;
        }
        let tz = self.presentation.tz_offset;
        let to_fat = |t: SetTime| match t {
            SetTime::Now => time::now(tz),
            SetTime::At(ts) => FatTime::from_unix(ts.secs, ts.nanos, tz),
        };
        if set.mtime.is_some() || set.atime.is_some() {
            vol.set_times(node, set.mtime.map(to_fat), set.atime.map(to_fat)).map_err(errno)?;
        }
        self.attr_out(&vol, node)
    }

    fn mknod(&self, _req: &Request, parent: NodeId, name: &OsStr, mode: u32, _rdev: u32) -> Result<Entry> {
        if FileKind::from_mode(mode) != Some(FileKind::File) {
            return Err(Error::with_message(Errno::EPERM, "FAT holds only files and directories"));
        }
        Ok(self.create_node(parent, name, false, None)?.0)
    }

    fn mkdir(&self, _req: &Request, parent: NodeId, name: &OsStr, _mode: u32) -> Result<Entry> {
        Ok(self.create_node(parent, name, true, None)?.0)
    }

    fn unlink(&self, _req: &Request, parent: NodeId, name: &OsStr) -> Result<()> {
        let mut vol = self.exclusive()?;
        let ino = vol.unlink(parent, name_str(name)?).map_err(errno)?;
        self.maybe_evict(&mut vol, ino)
    }

    fn rmdir(&self, _req: &Request, parent: NodeId, name: &OsStr) -> Result<()> {
        let mut vol = self.exclusive()?;
        let ino = vol.rmdir(parent, name_str(name)?).map_err(errno)?;
        self.maybe_evict(&mut vol, ino)
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
        if flags.0 & !RenameFlags::NOREPLACE != 0 {
            return Err(Error::with_message(Errno::EINVAL, "FAT supports only RENAME_NOREPLACE"));
        }
        let mut vol = self.exclusive()?;
        let replaced =
            vol.rename(parent, name_str(name)?, new_parent, name_str(new_name)?, flags.noreplace()).map_err(errno)?;
        match replaced {
            Some(ino) => self.maybe_evict(&mut vol, ino),
            None => Ok(()),
        }
    }

    fn open(&self, _req: &Request, node: NodeId, flags: i32) -> Result<Opened> {
        let mut vol = self.exclusive()?;
        if vol.stat(node).map_err(errno)?.is_dir {
            return Err(Errno::EISDIR.into());
        }
        if flags & O_TRUNC != 0 && flags & O_ACCMODE != O_RDONLY {
            vol.truncate(node, 0).map_err(errno)?;
        }
        self.open_handle(node, flags)
    }

    fn create(&self, _req: &Request, parent: NodeId, name: &OsStr, _mode: u32, flags: i32) -> Result<(Entry, Opened)> {
        let (entry, opened) = self.create_node(parent, name, false, Some(flags))?;
        Ok((entry, opened.unwrap_or_default()))
    }

    fn read(&self, _req: &Request, node: NodeId, _handle: Handle, offset: u64, buf: &mut [u8]) -> Result<usize> {
        {
            let vol = self.shared()?;
            if let Some(r) = vol.read_cached(node, offset, buf) {
                return r.map_err(errno);
            }
        }
        self.exclusive()?.read(node, offset, buf).map_err(errno)
    }

    fn write(
        &self,
        _req: &Request,
        node: NodeId,
        handle: Handle,
        offset: u64,
        data: &[u8],
        _flags: i32,
    ) -> Result<usize> {
        let mut vol = self.exclusive()?;
        let append = self.tracking()?.flags(handle).is_some_and(|f| f & O_APPEND != 0);
        let offset = if append { vol.stat(node).map_err(errno)?.size } else { offset };
        vol.write(node, offset, data).map_err(errno)
    }

    fn release(&self, _req: &Request, _node: NodeId, handle: Handle, _flags: i32, _flush: bool) -> Result<()> {
        self.close_handle(handle)
    }

    fn fsync(&self, _req: &Request, _node: NodeId, _handle: Handle, _datasync: bool) -> Result<()> {
        self.exclusive()?.sync().map_err(errno)
    }

    fn opendir(&self, _req: &Request, node: NodeId, _flags: i32) -> Result<Opened> {
        if !self.shared()?.stat(node).map_err(errno)?.is_dir {
            return Err(Errno::ENOTDIR.into());
        }
        Ok(Opened::default())
    }

    fn readdir(
        &self,
        _req: &Request,
        node: NodeId,
        _handle: Handle,
        cookie: u64,
        sink: &mut dyn DirSink,
    ) -> Result<()> {
        let dot = |name: &'static [u8], ino, cookie| DirEntry { ino, kind: FileKind::Directory, name, cookie };
        if cookie < 1 && !sink.add(&dot(b".", node, 1)) {
            return Ok(());
        }
        let parent = self.shared()?.parent(node).map_err(errno)?;
        if cookie < 2 && !sink.add(&dot(b"..", parent, 2)) {
            return Ok(());
        }
        let mut after = cookie.checked_sub(FIRST_ENTRY_COOKIE).map(|s| s as u32);
        loop {
            let page =
                self.shared_or_exclusive(|vol| vol.list_loaded(node, after, 128), |vol| vol.list(node, after, 128))?;
            if page.is_empty() {
                return Ok(());
            }
            for e in page {
                let kind = if e.is_dir { FileKind::Directory } else { FileKind::File };
                let cookie = e.slot as u64 + FIRST_ENTRY_COOKIE;
                if !sink.add(&DirEntry { ino: e.ino, kind, name: e.name.as_bytes(), cookie }) {
                    return Ok(());
                }
                after = Some(e.slot);
            }
        }
    }

    fn fsyncdir(&self, _req: &Request, _node: NodeId, _handle: Handle, _datasync: bool) -> Result<()> {
        self.exclusive()?.sync().map_err(errno)
    }

    fn statfs(&self, _req: &Request, _node: NodeId) -> Result<StatFs> {
        let space = self.shared()?.space();
        Ok(StatFs {
            blocks: space.clusters as u64,
            bfree: space.free_clusters as u64,
            bavail: space.free_clusters as u64,
            files: 0,
            ffree: 0,
            bsize: space.cluster_size,
            namelen: CAPABILITIES.max_name_len,
            frsize: space.cluster_size,
        })
    }

    fn capabilities(&self) -> Option<Capabilities> {
        let ro = self.vol.read().map(|vol| vol.is_read_only()).unwrap_or(true);
        Some(Capabilities { writable: !ro, ..CAPABILITIES })
    }
}

impl Drop for FatFs {
    fn drop(&mut self) {
        if let Ok(mut vol) = self.vol.write()
            && let Err(e) = vol.unmount()
        {
            tracing::error!("unmounting the FAT volume: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::ffi::OsStrExt;

    use super::*;

    fn image(dir: &std::path::Path) -> PathBuf {
        let img = dir.join("fat.img");
        let out = std::process::Command::new("mkfs.fat")
            .args(["-C", img.to_str().unwrap(), "1440"])
            .output()
            .expect("mkfs.fat is missing: install dosfstools");
        assert!(out.status.success());
        img
    }

    fn open(config: &str) -> Result<FatFs, OpenError> {
        FatPlugin::open(&ConfigTable::from_toml(config), &MountOptions::default())
    }

    #[test]
    fn config_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path());
        let base = format!("image = {:?}\n", img.to_str().unwrap());
        for (extra, key) in [("umask = 0o1777", "umask"), ("tz = \"Mars\"", "tz"), ("colour = 1", "colour")] {
            let e = open(&format!("{base}{extra}\n")).err().expect("refused");
            assert_eq!(e.key.as_deref(), Some(key), "{e}");
        }
        let e = open("image = \"/nonexistent/fat.img\"\n").err().expect("refused");
        assert!(e.message.contains("/nonexistent/fat.img"), "{e}");
        assert!(open("").err().expect("refused").message.contains("image"));
    }

    #[test]
    fn an_image_without_write_permission_mounts_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path());
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o444)).unwrap();
        let fs = open(&format!("image = {:?}\n", img.to_str().unwrap())).unwrap();
        assert!(!fs.capabilities().unwrap().writable);
        let req = Request::default();
        let e = fs.mkdir(&req, plugfs_plugin_api::ROOT_ID, OsStr::new("d"), 0o755).unwrap_err();
        assert_eq!(e.errno(), Errno::EROFS);
        let fs = open(&format!("image = {:?}\nread_only = true\n", img.to_str().unwrap())).unwrap();
        assert!(!fs.capabilities().unwrap().writable);
    }

    #[test]
    fn masks_owner_and_the_read_only_attribute_make_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path());
        let fs =
            open(&format!("image = {:?}\nuid = 42\ngid = 43\nfmask = 0o137\ndmask = 0o027\n", img.to_str().unwrap()))
                .unwrap();
        let req = Request::default();
        let root = plugfs_plugin_api::ROOT_ID;
        let d = fs.mkdir(&req, root, OsStr::new("d"), 0o777).unwrap();
        assert_eq!((d.attr.perm, d.attr.uid, d.attr.gid), (0o750, 42, 43));
        let (f, h) = fs.create(&req, root, OsStr::new("f"), 0o644, 0o2).unwrap();
        assert_eq!(f.attr.perm, 0o640);
        fs.release(&req, f.node, h.handle, 0, false).unwrap();
        let set = SetAttr { mode: Some(0o440), ..SetAttr::default() };
        assert_eq!(fs.setattr(&req, f.node, &set).unwrap().attr.perm, 0o440);
        let set = SetAttr { mode: Some(0o640), ..SetAttr::default() };
        assert_eq!(fs.setattr(&req, f.node, &set).unwrap().attr.perm, 0o640);
        let set = SetAttr { mode: Some(0o600), ..SetAttr::default() };
        assert_eq!(fs.setattr(&req, f.node, &set).unwrap_err().errno(), Errno::EPERM);
        let set = SetAttr { uid: Some(42), gid: Some(43), ..SetAttr::default() };
        assert!(fs.setattr(&req, f.node, &set).is_ok(), "the owner it already has is fine");
        let bad = OsStr::from_bytes(b"\xff\xfe");
        assert_eq!(fs.mknod(&req, root, bad, 0o100644, 0).unwrap_err().errno(), Errno::EINVAL);
        assert_eq!(fs.mknod(&req, root, OsStr::new("fifo"), 0o010644, 0).unwrap_err().errno(), Errno::EPERM);
        let flags = RenameFlags(RenameFlags::EXCHANGE);
        let e = fs.rename(&req, root, OsStr::new("f"), root, OsStr::new("d"), flags).unwrap_err();
        assert_eq!(e.errno(), Errno::EINVAL);
    }
}
