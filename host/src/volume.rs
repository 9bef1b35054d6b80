//! Named volumes: images made by a plugin's `format`, kept in `[host] volumes_dir` as
//! `NAME.img` with their metadata beside them in `NAME.toml`, and mounted by name
//! (`volume = "NAME"` in a `[[mount]]`).
//!
//! A host that mounts a volume holds an exclusive lock on `NAME.lock` (`flock`; on Windows
//! `LockFileEx`) and writes its mountpoint to `NAME.mountpoint`: `volume rm` refuses a
//! volume whose lock is held, and `volume inspect` asks the mounted filesystem for its free
//! space there. (The mountpoint is not in the lock file itself because a Windows lock is
//! mandatory: nobody else could read it.)

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use plugfs_plugin_api::{FileSystem, MountOptions, Request};
use serde::{Deserialize, Serialize};

use crate::registry::Registry;

/// Where volumes live when neither `--dir` nor `[host] volumes_dir` says.
pub const DEFAULT_DIR: &str = "/var/lib/plugfs/volumes";

/// `NAME.toml`: what `plugfs volume create` recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Metadata {
    /// The plugin that made the image and serves it.
    pub plugin: String,
    /// Size in bytes.
    pub size: u64,
    /// When it was made, in seconds since the Unix epoch.
    pub created: u64,
    /// The label given at creation, if any.
    #[serde(default)]
    pub label: String,
}

/// The files of volume `name` in `dir`.
pub struct Volume {
    /// The image.
    pub image: PathBuf,
    meta: PathBuf,
    lock: PathBuf,
    /// Where the holder of the lock mounted it; meaningful only while the lock is held.
    mountpoint: PathBuf,
    name: String,
}

impl Volume {
    /// Volume `name` of `dir`; the name must be a plain file name.
    pub fn new(dir: &Path, name: &str) -> anyhow::Result<Volume> {
        let valid = !name.is_empty()
            && !name.starts_with('.')
            && name.len() <= 128
            && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !valid {
            bail!("`{name}` is not a volume name: use letters, digits, `.`, `_` and `-`, not starting with `.`");
        }
        Ok(Volume {
            image: dir.join(format!("{name}.img")),
            meta: dir.join(format!("{name}.toml")),
            lock: dir.join(format!("{name}.lock")),
            mountpoint: dir.join(format!("{name}.mountpoint")),
            name: name.into(),
        })
    }

    /// Its metadata; an error saying so if the volume does not exist.
    pub fn metadata(&self) -> anyhow::Result<Metadata> {
        let text = std::fs::read_to_string(&self.meta).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow::anyhow!(
                "no volume `{}` in {} (`plugfs volume list` shows them)",
                self.name,
                self.meta.parent().unwrap_or(Path::new("")).display()
            ),
            _ => anyhow::anyhow!("cannot read {}: {e}", self.meta.display()),
        })?;
        toml::from_str(&text).with_context(|| format!("{} is damaged", self.meta.display()))
    }

    /// Takes the volume for a mount at `mountpoint`; held until the returned file is
    /// dropped. Fails if another mount holds it.
    pub fn lock(&self, mountpoint: &Path) -> anyhow::Result<File> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)
            .with_context(|| format!("cannot open {}", self.lock.display()))?;
        file.try_lock()
            .map_err(|_| anyhow::anyhow!("volume `{}` is mounted already (by another mount or host)", self.name))?;
        // Written only while holding the lock, so whoever sees the lock held reads ours.
        std::fs::write(&self.mountpoint, mountpoint.as_os_str().as_encoded_bytes())
            .with_context(|| format!("cannot write {}", self.mountpoint.display()))?;
        Ok(file)
    }

    /// The mountpoint of the mount holding the volume, if one does. The lock alone says
    /// whether it is mounted; the path is empty when it cannot be read (the holder has not
    /// written it yet, or is an older plugfs that kept it in the lock file).
    fn mounted_at(&self) -> Option<PathBuf> {
        let file = File::open(&self.lock).ok()?;
        match file.try_lock_shared() {
            Ok(()) => None,
            Err(_) => {
                let bytes = std::fs::read(&self.mountpoint).unwrap_or_default();
                #[cfg(unix)]
                let path = PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(bytes));
                #[cfg(not(unix))]
                let path = PathBuf::from(String::from_utf8_lossy(&bytes).into_owned());
                Some(path)
            }
        }
    }
}

/// Total bytes, free bytes and free file slots of the filesystem mounted at `mountpoint`.
#[cfg(unix)]
fn space_of(mountpoint: &Path) -> anyhow::Result<(u64, u64, u64)> {
    let s = rustix::fs::statvfs(mountpoint).with_context(|| format!("statfs {}", mountpoint.display()))?;
    Ok((s.f_blocks * s.f_frsize, s.f_bavail * s.f_frsize, s.f_ffree))
}

/// Total bytes, free bytes and free file slots of the volume mounted at `mountpoint`.
/// Windows does not say how many more files fit, so that is `u64::MAX` ("no limit known").
#[cfg(windows)]
fn space_of(mountpoint: &Path) -> anyhow::Result<(u64, u64, u64)> {
    use std::os::windows::ffi::OsStrExt;
    use windows_sys::Win32::Storage::FileSystem::GetDiskFreeSpaceExW;
    let mut dir: Vec<u16> = mountpoint.as_os_str().encode_wide().collect();
    if dir.last() != Some(&u16::from(b'\\')) {
        dir.push(u16::from(b'\\'));
    }
    dir.push(0);
    let (mut free, mut total) = (0u64, 0u64);
    // SAFETY: `dir` is NUL-terminated and the out-pointers are valid for the call.
    let ok = unsafe { GetDiskFreeSpaceExW(dir.as_ptr(), &mut free, &mut total, std::ptr::null_mut()) };
    if ok == 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("free space of {}", mountpoint.display()));
    }
    Ok((total, free, u64::MAX))
}

/// Parses `64M`, `1G`, `512K`, `1048576` (binary units; a trailing `B`/`iB` is allowed).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix('B')).unwrap_or(t);
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("`{s}` is not a size: use a number with K, M, G or T (e.g. 64M)")),
    };
    let n: u64 =
        digits.parse().map_err(|_| format!("`{s}` is not a size: use a number with K, M, G or T (e.g. 64M)"))?;
    n.checked_mul(1 << shift).filter(|&b| b > 0).ok_or_else(|| format!("`{s}` is out of range"))
}

fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", units[u]) }
}

/// The plugin table that serves `image`, plus `extra` keys.
fn plugin_table(image: &Path, label: Option<&str>) -> String {
    let mut t = toml::Table::new();
    t.insert("image".into(), toml::Value::String(image.display().to_string()));
    if let Some(l) = label {
        t.insert("label".into(), toml::Value::String(l.into()));
    }
    toml::to_string(&t).unwrap_or_default()
}

/// `plugfs volume create`.
pub fn create(
    dir: &Path,
    registry: &mut Registry,
    name: &str,
    plugin: &str,
    size: u64,
    label: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let v = Volume::new(dir, name)?;
    if v.meta.exists() || v.image.exists() {
        bail!("volume `{name}` exists already in {}", dir.display());
    }
    let lib = registry.find(plugin).map_err(|e| anyhow::anyhow!("{e}"))?;
    if !lib.info().capabilities.format {
        bail!("plugin `{}` cannot create images (it lacks the format capability)", lib.info().name);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if let Err(e) = lib.format(&plugin_table(&v.image, label), size) {
        let _ = std::fs::remove_file(&v.image);
        let key = e.key.map(|k| format!(" (key `{k}`)")).unwrap_or_default();
        bail!("plugin `{}` could not create {}{key}: {}", lib.info().name, v.image.display(), e.message);
    }
    let created = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let meta = Metadata { plugin: lib.info().name.clone(), size, created, label: label.unwrap_or_default().into() };
    std::fs::write(&v.meta, toml::to_string(&meta)?).with_context(|| format!("cannot write {}", v.meta.display()))?;
    println!("created volume `{name}`: {} {} at {}", meta.plugin, human(size), v.image.display());
    Ok(ExitCode::SUCCESS)
}

/// `plugfs volume list`.
pub fn list(dir: &Path) -> anyhow::Result<ExitCode> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".toml")).map(str::to_string))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => bail!("cannot list {}: {e}", dir.display()),
    };
    names.sort();
    println!("{:<20} {:<12} {:>10}  {:<8} LABEL", "NAME", "PLUGIN", "SIZE", "MOUNTED");
    for name in names {
        let Ok(v) = Volume::new(dir, &name) else { continue };
        match v.metadata() {
            Ok(m) => {
                let mounted = if v.mounted_at().is_some() { "yes" } else { "no" };
                println!("{name:<20} {:<12} {:>10}  {mounted:<8} {}", m.plugin, human(m.size), m.label);
            }
            Err(e) => println!("{name:<20} damaged: {e:#}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `plugfs volume inspect`: the metadata, and the filesystem's own view of its space.
pub fn inspect(dir: &Path, registry: &mut Registry, name: &str) -> anyhow::Result<ExitCode> {
    let v = Volume::new(dir, name)?;
    let m = v.metadata()?;
    println!("name:     {name}");
    println!("plugin:   {}", m.plugin);
    println!("size:     {} ({} bytes)", human(m.size), m.size);
    println!("created:  {} (seconds since the epoch)", m.created);
    println!("label:    {}", m.label);
    println!("image:    {}", v.image.display());
    let (total, free, files, source) = match v.mounted_at() {
        Some(mountpoint) if mountpoint.as_os_str().is_empty() => {
            println!("mounted:  yes (where is not known)");
            return Ok(ExitCode::SUCCESS);
        }
        Some(mountpoint) => {
            println!("mounted:  yes, at {}", mountpoint.display());
            let (total, free, files) = space_of(&mountpoint)?;
            (total, free, files, "the mount")
        }
        None => {
            println!("mounted:  no");
            let lib = registry.find(&m.plugin).map_err(|e| anyhow::anyhow!("{e}"))?;
            let fs = lib
                .open(&plugin_table(&v.image, None), &MountOptions { read_only: true })
                .map_err(|e| anyhow::anyhow!("plugin `{}` cannot open the image: {}", m.plugin, e.message))?;
            let s = fs.statfs(&Request::default(), 1).map_err(|e| anyhow::anyhow!("statfs: {e}"))?;
            (s.blocks * u64::from(s.frsize), s.bavail * u64::from(s.frsize), s.ffree, "the plugin")
        }
    };
    println!("space:    {} free of {} ({source}'s statfs)", human(free), human(total));
    if files == u64::MAX {
        println!("files:    no limit known");
    } else {
        println!("files:    {files} more can be created");
    }
    Ok(ExitCode::SUCCESS)
}

/// `plugfs volume rm`.
pub fn remove(dir: &Path, name: &str) -> anyhow::Result<ExitCode> {
    let v = Volume::new(dir, name)?;
    v.metadata()?;
    if let Some(at) = v.mounted_at() {
        let at = if at.as_os_str().is_empty() { "by a running plugfs".into() } else { format!("at {}", at.display()) };
        bail!(
            "volume `{name}` is mounted {at}; unmount it first (plugfs unmount, or remove it from the config and reload)"
        );
    }
    for p in [&v.image, &v.meta, &v.lock, &v.mountpoint] {
        match std::fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!("cannot remove {}: {e}", p.display()),
        }
    }
    println!("removed volume `{name}`");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn names_are_plain_file_names() {
        assert!(Volume::new(Path::new("/v"), "data-1.x").is_ok());
        for bad in ["", "../x", ".hidden", "a/b", "a b"] {
            assert!(Volume::new(Path::new("/v"), bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_held_lock_shows_the_volume_mounted_there() {
        let dir = tempfile::tempdir().unwrap();
        let v = Volume::new(dir.path(), "v").unwrap();
        assert_eq!(v.mounted_at(), None);
        let held = v.lock(Path::new("/mnt/v")).unwrap();
        assert_eq!(v.mounted_at(), Some(PathBuf::from("/mnt/v")));
        assert!(v.lock(Path::new("/elsewhere")).is_err());
        // Held, with the path unreadable: still mounted, so `volume rm` refuses.
        std::fs::remove_file(dir.path().join("v.mountpoint")).unwrap();
        assert_eq!(v.mounted_at(), Some(PathBuf::new()));
        drop(held);
        assert_eq!(v.mounted_at(), None);
    }
}
