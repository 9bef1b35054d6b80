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
use crate::engine::names::Codepage;
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
    /// The OEM code page of short names (vfat's `codepage=`): 437 by default.
    codepage: Option<u32>,
    /// Never update access dates on reads (vfat's `noatime`; the default is `relatime`).
    #[serde(default)]
    noatime: bool,
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

/// vfat's `fat_sanitize_mode`: the permission bits a chmod to `mode` leaves on a node whose
/// bits are now `cur` and whose mask is `mask`, or None when FAT cannot hold them. The read
/// and execute bits must stay as they are (after the mask); the write bits are all (after
/// the mask) or none when the node can hold the read-only attribute (a file whose mask
/// leaves a write bit), else they must stay all. Directories cannot hold it (vfat without
/// `rodir`): their write bits never change.
fn sanitize_mode(mode: u32, cur: u32, mask: u32, is_file: bool) -> Option<u32> {
    let perm = mode & 0o777 & !mask;
    if perm & 0o555 != cur & 0o555 {
        return None;
    }
    let (write, all_write) = (perm & 0o222, 0o222 & !mask);
    let can_hold_ro = is_file && all_write != 0;
    let ok = if can_hold_ro { write == 0 || write == all_write } else { write == all_write };
    ok.then_some(perm)
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
                          quiet = false       # chmod/chown that FAT cannot store succeed silently\n\
                          codepage = 437      # OEM code page of short names (437, 850, ...)\n\
                          noatime = false     # true: reads never update the access date",
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
        let codepage = match s.codepage {
            None => Codepage::default(),
            Some(n) => u16::try_from(n).ok().and_then(Codepage::new).ok_or_else(|| {
                let known: Vec<String> = Codepage::supported().iter().map(u16::to_string).collect();
                OpenError::config("codepage", format!("{n} is not a supported OEM code page ({})", known.join(", ")))
            })?,
        };
        let read_only = s.read_only || options.read_only;
        let vol = Volume::open(&s.image, OpenOptions { read_only, tz_offset, codepage, noatime: s.noatime })
            .map_err(|e| OpenError::other(format!("{}: {e}", s.image.display())))?;
        tracing::info!(
            image = %s.image.display(),
            fat = %vol.bpb().fat_type,
            read_only = vol.is_read_only(),
            "mounted a FAT volume"
        );
        Ok(FatFs::new(vol, presentation))
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
/// **Locking.** The engine's [`Volume`] locks itself, per file, for the namespace and for
/// the FAT (its lock order is written down in `engine/volume.rs`), so calls reach it in
/// parallel: reads and writes of different files overlap. The glue has two locks of its
/// own, in this order around the engine's:
///
/// 1. `names`: taken shared by calls that find or create a node and count a lookup
///    reference on it (lookup, create, mkdir, mknod), exclusively by calls that take a name
///    away and may free its node at once (unlink, rmdir, rename), so a lookup never counts
///    a reference on a node being freed. Reads, writes and the rest do not take it.
/// 2. (the engine's locks)
/// 3. `tracking`: the reference counts, a leaf, never held across an engine call.
pub struct FatFs {
    vol: Volume,
    names: RwLock<()>,
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
    fn new(vol: Volume, presentation: Presentation) -> FatFs {
        FatFs {
            vol,
            names: RwLock::new(()),
            tracking: Mutex::new(NodeRefs::default()),
            presentation,
            next_handle: AtomicU64::new(1),
        }
    }

    fn names_shared(&self) -> Result<RwLockReadGuard<'_, ()>> {
        self.names.read().map_err(|_| poisoned())
    }

    fn names_exclusive(&self) -> Result<RwLockWriteGuard<'_, ()>> {
        self.names.write().map_err(|_| poisoned())
    }

    fn tracking(&self) -> Result<MutexGuard<'_, NodeRefs>> {
        self.tracking.lock().map_err(|_| poisoned())
    }

    /// Lets the engine free an unlinked node once nothing refers to it.
    fn maybe_evict(&self, ino: Ino) -> Result<()> {
        if self.tracking()?.remove_if_unused(ino) {
            self.vol.evict(ino).map_err(errno)?;
        }
        Ok(())
    }

    fn attr(&self, m: &Meta) -> Attr {
        let p = &self.presentation;
        let tz = self.vol.tz_offset();
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
            // FAT keeps no link count: a directory's is 2 + its subdirectories, as Linux
            // vfat counts them, kept per directory by the engine; a file's is 1.
            nlink: m.nlink,
            uid: p.uid,
            gid: p.gid,
            rdev: 0,
            blksize: self.vol.bpb().cluster_size(),
        }
    }

    /// The entry for `ino`, counting one lookup reference.
    fn entry(&self, ino: Ino) -> Result<Entry> {
        let m = self.vol.stat(ino).map_err(errno)?;
        let attr = self.attr(&m);
        self.tracking()?.looked_up(ino);
        Ok(Entry { node: ino, generation: 0, attr, entry_ttl: TTL, attr_ttl: TTL })
    }

    fn attr_out(&self, ino: Ino) -> Result<AttrOut> {
        let m = self.vol.stat(ino).map_err(errno)?;
        Ok(AttrOut { attr: self.attr(&m), ttl: TTL })
    }

    fn open_handle(&self, ino: Ino, flags: i32) -> Result<Opened> {
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        self.tracking()?.opened(handle, ino, flags);
        Ok(Opened { handle, ..Opened::default() })
    }

    fn close_handle(&self, handle: Handle) -> Result<()> {
        let closed = self.tracking()?.closed(handle);
        if let Some(ino) = closed {
            self.maybe_evict(ino)?;
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
        let _names = self.names_shared()?;
        let ino = self.vol.create(parent, name_str(name)?, is_dir).map_err(errno)?;
        let entry = self.entry(ino)?;
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
        let _names = self.names_shared()?;
        let ino = self.vol.lookup(parent, name).map_err(errno)?;
        self.entry(ino)
    }

    fn forget(&self, node: NodeId, nlookup: u64) {
        if let Ok(mut t) = self.tracking() {
            t.forgotten(node, nlookup);
        }
        if let Err(e) = self.maybe_evict(node) {
            tracing::error!(node, "freeing an unlinked file failed: {e}");
        }
    }

    fn getattr(&self, _req: &Request, node: NodeId, _handle: Option<Handle>) -> Result<AttrOut> {
        self.attr_out(node)
    }

    fn setattr(&self, _req: &Request, node: NodeId, set: &SetAttr) -> Result<AttrOut> {
        let vol = &self.vol;
        let p = self.presentation;
        let cur = self.attr_out(node)?.attr;
        // As vfat's `fat_setattr`: another owner or group, or mode bits beyond 0o777
        // (set-user-ID, set-group-ID, sticky), are EPERM, or with `quiet` end the call
        // successfully with nothing changed.
        let foreign_owner = set.uid.is_some_and(|u| u != cur.uid) || set.gid.is_some_and(|g| g != cur.gid);
        if foreign_owner || set.mode.is_some_and(|m| m & 0o7777 & !0o777 != 0) {
            self.refuse("an owner, group or set-user-ID, set-group-ID or sticky bit")?;
            return Ok(AttrOut { attr: cur, ttl: TTL });
        }
        if let Some(mode) = set.mode {
            let is_dir = cur.kind == FileKind::Directory;
            let mask = if is_dir { p.dmask } else { p.fmask };
            // A mode FAT cannot hold is ignored, successfully, as vfat does ("We don't
            // return -EPERM here. Yes, strange, but this is too old behavior."). A
            // directory's mode it can hold is the one it has: nothing to store.
            if let Some(perm) = sanitize_mode(mode, cur.perm as u32, mask, !is_dir)
                && !is_dir
            {
                let m = vol.stat(node).map_err(errno)?;
                let attr = if perm & 0o222 == 0 { m.attr | ATTR_READ_ONLY } else { m.attr & !ATTR_READ_ONLY };
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
        self.attr_out(node)
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
        let _names = self.names_exclusive()?;
        let ino = self.vol.unlink(parent, name_str(name)?).map_err(errno)?;
        self.maybe_evict(ino)
    }

    fn rmdir(&self, _req: &Request, parent: NodeId, name: &OsStr) -> Result<()> {
        let _names = self.names_exclusive()?;
        let ino = self.vol.rmdir(parent, name_str(name)?).map_err(errno)?;
        self.maybe_evict(ino)
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
        let _names = self.names_exclusive()?;
        let replaced = self
            .vol
            .rename(parent, name_str(name)?, new_parent, name_str(new_name)?, flags.noreplace())
            .map_err(errno)?;
        match replaced {
            Some(ino) => self.maybe_evict(ino),
            None => Ok(()),
        }
    }

    fn open(&self, _req: &Request, node: NodeId, flags: i32) -> Result<Opened> {
        if self.vol.stat(node).map_err(errno)?.is_dir {
            return Err(Errno::EISDIR.into());
        }
        if flags & O_TRUNC != 0 && flags & O_ACCMODE != O_RDONLY {
            self.vol.truncate(node, 0).map_err(errno)?;
        }
        self.open_handle(node, flags)
    }

    fn create(&self, _req: &Request, parent: NodeId, name: &OsStr, _mode: u32, flags: i32) -> Result<(Entry, Opened)> {
        let (entry, opened) = self.create_node(parent, name, false, Some(flags))?;
        Ok((entry, opened.unwrap_or_default()))
    }

    fn read(&self, _req: &Request, node: NodeId, _handle: Handle, offset: u64, buf: &mut [u8]) -> Result<usize> {
        self.vol.read(node, offset, buf).map_err(errno)
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
        let append = self.tracking()?.flags(handle).is_some_and(|f| f & O_APPEND != 0);
        if append { self.vol.append(node, data) } else { self.vol.write(node, offset, data) }.map_err(errno)
    }

    fn release(&self, _req: &Request, _node: NodeId, handle: Handle, _flags: i32, _flush: bool) -> Result<()> {
        self.close_handle(handle)
    }

    fn fsync(&self, _req: &Request, _node: NodeId, _handle: Handle, _datasync: bool) -> Result<()> {
        self.vol.sync().map_err(errno)
    }

    fn opendir(&self, _req: &Request, node: NodeId, _flags: i32) -> Result<Opened> {
        if !self.vol.stat(node).map_err(errno)?.is_dir {
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
        let parent = self.vol.parent(node).map_err(errno)?;
        if cookie < 2 && !sink.add(&dot(b"..", parent, 2)) {
            return Ok(());
        }
        let mut after = cookie.checked_sub(FIRST_ENTRY_COOKIE).map(|s| s as u32);
        loop {
            let page = self.vol.list(node, after, 128).map_err(errno)?;
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
        self.vol.sync().map_err(errno)
    }

    fn statfs(&self, _req: &Request, _node: NodeId) -> Result<StatFs> {
        let space = self.vol.space();
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
        Some(Capabilities { writable: !self.vol.is_read_only(), ..CAPABILITIES })
    }
}

impl Drop for FatFs {
    fn drop(&mut self) {
        if let Err(e) = self.vol.unmount() {
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
        for (extra, key) in [
            ("umask = 0o1777", "umask"),
            ("tz = \"Mars\"", "tz"),
            ("colour = 1", "colour"),
            ("codepage = 1234", "codepage"),
            ("codepage = 70000", "codepage"),
        ] {
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
        // A mode FAT cannot hold is ignored, successfully, as on vfat.
        let set = SetAttr { mode: Some(0o600), ..SetAttr::default() };
        assert_eq!(fs.setattr(&req, f.node, &set).unwrap().attr.perm, 0o640);
        let set = SetAttr { mode: Some(0o4640), ..SetAttr::default() };
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

    /// Two files A and B on a floppy image, served by a `FatFs` whose IO layer stops any
    /// write whose data starts with `STUCK` until the test lets it go.
    struct Gated {
        fs: std::sync::Arc<FatFs>,
        entered: std::sync::mpsc::Receiver<()>,
        release: std::sync::mpsc::Sender<()>,
        img: PathBuf,
        _dir: tempfile::TempDir,
    }

    fn gated() -> Gated {
        use std::sync::mpsc;
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path());
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let (entered_tx, release_rx) = (Mutex::new(entered_tx), Mutex::new(release_rx));
        let hook: engine::io::WriteHook = std::sync::Arc::new(move |_offset, data: &[u8]| {
            if data.starts_with(b"STUCK") {
                let _ = entered_tx.lock().unwrap().send(());
                // Bounded, so a broken test fails instead of hanging.
                let _ = release_rx.lock().unwrap().recv_timeout(Duration::from_secs(30));
            }
        });
        let file = std::fs::OpenOptions::new().read(true).write(true).open(&img).unwrap();
        let disk = engine::io::Disk::new(file).with_write_hook(hook);
        let vol = Volume::from_disk(disk, OpenOptions::default()).unwrap();
        let presentation = Presentation { uid: 0, gid: 0, fmask: 0o022, dmask: 0o022, quiet: false, tz_offset: 0 };
        let fs = std::sync::Arc::new(FatFs::new(vol, presentation));
        Gated { fs, entered, release, img, _dir: dir }
    }

    /// Runs `f` on another thread and fails (after letting the gate go) when it does not
    /// finish within 10 seconds.
    fn within_timeout(g: &Gated, what: &str, f: impl FnOnce() + Send + 'static) {
        let (done_tx, done) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            f();
            let _ = done_tx.send(());
        });
        if done.recv_timeout(Duration::from_secs(10)).is_err() {
            let _ = g.release.send(());
            panic!("{what} was blocked by a write to another file stuck in the IO layer");
        }
        t.join().unwrap();
    }

    /// The parallelism is real: while a write to file B is stuck inside the IO layer (an
    /// overwrite inside B's clusters, then a write that allocated clusters for B), reads,
    /// overwrites and allocating writes of file A, stat, lookup, create and unlink in the
    /// same directory, listing, statfs and fsync all finish. With the volume behind one
    /// lock (as before per-file locks) the first read of A waits for B's write and fails.
    #[test]
    fn io_to_one_file_is_not_blocked_by_a_write_to_another_stuck_in_the_io_layer() {
        let g = gated();
        let req = Request::default();
        let root = plugfs_plugin_api::ROOT_ID;
        let mut a_data = (0..10_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>();
        let (a, ha) = g.fs.create(&req, root, OsStr::new("file a.txt"), 0o644, 0o2).unwrap();
        g.fs.write(&req, a.node, ha.handle, 0, &a_data, 0).unwrap();
        let (b, hb) = g.fs.create(&req, root, OsStr::new("file b.txt"), 0o644, 0o2).unwrap();
        g.fs.write(&req, b.node, hb.handle, 0, &[7u8; 10_000], 0).unwrap();
        // First an overwrite inside B's chain, then a write far past B's end (allocating).
        for (round, b_offset) in [(0u32, 100u64), (1, 30_000)] {
            let fs = g.fs.clone();
            let (b_node, b_handle) = (b.node, hb.handle);
            let stuck = std::thread::spawn(move || {
                let mut data = b"STUCK".to_vec();
                data.extend_from_slice(&[round as u8; 3000]);
                fs.write(&Request::default(), b_node, b_handle, b_offset, &data, 0)
            });
            g.entered.recv_timeout(Duration::from_secs(10)).expect("the write to B never reached the IO layer");
            let fs = g.fs.clone();
            let (a_node, a_handle, want) = (a.node, ha.handle, a_data.clone());
            within_timeout(&g, "reading file A", move || {
                let mut buf = vec![0u8; want.len()];
                let n = fs.read(&Request::default(), a_node, a_handle, 0, &mut buf).unwrap();
                assert!(n == want.len() && buf == want, "file A reads differently");
            });
            let fs = g.fs.clone();
            within_timeout(&g, "writing file A", move || {
                let req = Request::default();
                fs.write(&req, a_node, a_handle, 5, b"overwritten", 0).unwrap();
                // Allocates a cluster: the FAT's lock is not held by B's write.
                fs.write(&req, a_node, a_handle, 20_000 + round as u64 * 1000, b"appended", 0).unwrap();
                assert!(fs.getattr(&req, a_node, None).unwrap().attr.size > 20_000);
            });
            let fs = g.fs.clone();
            within_timeout(&g, "namespace operations in the same directory", move || {
                let req = Request::default();
                let root = plugfs_plugin_api::ROOT_ID;
                assert_eq!(fs.lookup(&req, root, OsStr::new("FILE A.TXT")).unwrap().node, a_node);
                let name = format!("c{round}.txt");
                let (c, hc) = fs.create(&req, root, OsStr::new(&name), 0o644, 0o2).unwrap();
                fs.write(&req, c.node, hc.handle, 0, b"c", 0).unwrap();
                fs.release(&req, c.node, hc.handle, 0, false).unwrap();
                fs.unlink(&req, root, OsStr::new(&name)).unwrap();
                // The kernel's lookup reference goes too: the clusters are freed.
                fs.forget(c.node, 1);
                fs.mkdir(&req, root, OsStr::new(&format!("d{round}")), 0o755).unwrap();
                struct Count(usize);
                impl DirSink for Count {
                    fn add(&mut self, _: &DirEntry<'_>) -> bool {
                        self.0 += 1;
                        true
                    }
                }
                let mut count = Count(0);
                fs.readdir(&req, root, 0, 0, &mut count).unwrap();
                assert!(count.0 >= 4);
                fs.statfs(&req, root).unwrap();
                fs.fsync(&req, a_node, a_handle, true).unwrap();
            });
            a_data[5..16].copy_from_slice(b"overwritten");
            g.release.send(()).unwrap();
            assert_eq!(stuck.join().unwrap().unwrap(), 3005);
        }
        let mut buf = vec![0u8; 40_000];
        let n = g.fs.read(&req, b.node, hb.handle, 0, &mut buf).unwrap();
        assert_eq!(n, 33_005);
        assert_eq!(&buf[100..105], b"STUCK");
        assert_eq!(&buf[30_000..30_005], b"STUCK");
        assert_eq!(buf[10_000..30_000].iter().filter(|&&x| x != 0).count(), 0, "the gap is zeroes");
        g.fs.release(&req, a.node, ha.handle, 0, false).unwrap();
        g.fs.release(&req, b.node, hb.handle, 0, false).unwrap();
        let Gated { fs, img, _dir, .. } = g;
        drop(std::sync::Arc::into_inner(fs).expect("no thread holds the volume"));
        let out = std::process::Command::new("fsck.fat").args(["-n", img.to_str().unwrap()]).output().unwrap();
        assert!(out.status.success(), "fsck.fat: {}", String::from_utf8_lossy(&out.stdout));
    }
}
