//! The host config file: `[host]` settings and one `[[mount]]` table per mount.
//!
//! Every error names the file, the line and column, and the key, including errors that a
//! plugin reports about a key inside its own `[mount.config]` table.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::de::{DeTable, DeValue};

/// A config problem, located in the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{column}: {}{message}", file.display(), key_prefix(key))]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// The key at fault as a path (`mount[0].config.root`), empty for syntax errors.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

fn key_prefix(key: &str) -> String {
    if key.is_empty() { String::new() } else { format!("key `{key}`: ") }
}

/// `[host]`: settings of the host process.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HostSection {
    /// Directories searched for plugins by name, before the directory of the `plugfs`
    /// executable. Relative paths are relative to the config file's directory.
    #[serde(default)]
    pub plugin_dirs: Vec<PathBuf>,
    /// Log filter used when `RUST_LOG` is not set (e.g. `"info"`, `"plugfs=debug"`).
    #[serde(default)]
    pub log: Option<String>,
    /// Seconds a shutdown waits for the requests in flight before it releases the open
    /// files anyway and unmounts (default 10).
    #[serde(default)]
    pub shutdown_timeout: Option<u64>,
    /// The Unix socket `plugfs status`, `reload` and `unmount NAME` use to reach the host
    /// (default: the config file's name with `.sock`, beside it). Created with mode 0600.
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
    /// Seconds a mount removed by a reload (or `plugfs unmount NAME`) keeps serving the
    /// files still open on it before it is unmounted anyway (default 30).
    #[serde(default)]
    pub drain_timeout: Option<u64>,
    /// Where to serve Prometheus metrics over HTTP (`"127.0.0.1:9464"`); off when unset.
    /// Read once at start.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// Where named volumes live (`plugfs volume`, `volume = "NAME"`); default
    /// `/var/lib/plugfs/volumes`.
    #[serde(default)]
    pub volumes_dir: Option<PathBuf>,
}

impl HostSection {
    /// How long a shutdown waits for the requests in flight.
    pub fn shutdown_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.shutdown_timeout.unwrap_or(10))
    }

    /// The metrics address, once validated.
    pub fn metrics_listen(&self) -> Option<std::net::SocketAddr> {
        self.metrics_listen.as_deref().and_then(|a| a.parse().ok())
    }

    /// How long a removed mount waits for its open files to be closed.
    pub fn drain_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.drain_timeout.unwrap_or(30))
    }
}

/// Which frontend presents a mount to the operating system.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Frontend {
    /// FUSE on Linux and macOS, WinFSP (then Dokan) on Windows.
    #[default]
    Auto,
    /// FUSE through `fuser`.
    Fuse,
    /// WinFSP (Windows only).
    Winfsp,
    /// Dokan (Windows only).
    Dokan,
}

/// Options for the frontend (`[mount.options]`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct FrontendOptions {
    /// Let users other than the one running plugfs use the mount. Off by default: FUSE
    /// needs `user_allow_other` in /etc/fuse.conf for non-root hosts.
    pub allow_other: bool,
    /// Have the kernel unmount when the host dies (FUSE `auto_unmount`).
    pub auto_unmount: bool,
    /// Worker threads serving requests (default: two per core, 4 to 64).
    pub threads: usize,
    /// Let the kernel check permissions from the mode bits (FUSE `default_permissions`).
    pub default_permissions: bool,
    /// The source name shown in `mount` and `/proc/mounts` (default `plugfs:<name>`).
    pub fsname: Option<String>,
    /// Use the kernel's FUSE passthrough for files the plugin hands a backing file for
    /// (where the kernel and the host's privileges allow it).
    pub passthrough: bool,
    /// Windows frontends: show names starting with `.` as hidden. FUSE ignores it.
    pub hide_dot_files: bool,
    /// Windows frontends: a replacing rename replaces a target that is open too, as
    /// `FILE_RENAME_POSIX_SEMANTICS` asks (the default when a program does not say).
    /// FUSE ignores it: POSIX renames always do.
    pub posix_rename: bool,
}

impl Default for FrontendOptions {
    fn default() -> Self {
        FrontendOptions {
            allow_other: false,
            auto_unmount: true,
            threads: default_threads(),
            default_permissions: true,
            fsname: None,
            passthrough: true,
            hide_dot_files: false,
            posix_rename: false,
        }
    }
}

/// Two worker threads per core (a worker waits in the plugin's IO as often as it
/// computes), at least 4 and at most 64.
fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(4, |n| n.get() * 2).clamp(4, 64)
}

/// One `[[mount]]` table.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MountSection {
    /// A name for logs; unique in the file.
    pub name: String,
    /// The plugin: a name (`"durable-io"`) looked up in the plugin directories, or a path
    /// to a library file (anything containing `/`). May be left out with `volume`: the
    /// volume's own plugin serves it.
    #[serde(default)]
    pub plugin: String,
    /// A named volume (`plugfs volume create`) to mount: its image is passed to the plugin
    /// as `image`.
    #[serde(default)]
    pub volume: Option<String>,
    /// Where to mount. Relative paths are relative to the config file's directory.
    pub mountpoint: PathBuf,
    /// Create the mountpoint directory if it does not exist.
    #[serde(default)]
    pub create_mountpoint: bool,
    /// The frontend.
    #[serde(default)]
    pub frontend: Frontend,
    /// Mount read-only.
    #[serde(default)]
    pub read_only: bool,
    /// Frontend options.
    #[serde(default)]
    pub options: FrontendOptions,
    /// The plugin's own settings, passed to it as they are.
    #[serde(default)]
    pub config: toml::Table,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    #[serde(default)]
    host: HostSection,
    #[serde(default)]
    mount: Vec<MountSection>,
}

/// A parsed, validated config file.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file, as given.
    pub path: PathBuf,
    /// The directory relative paths are resolved against.
    pub base_dir: PathBuf,
    /// `[host]`.
    pub host: HostSection,
    /// The `[[mount]]` tables, in file order.
    pub mounts: Vec<MountSection>,
    /// Set by [`Config::restrict`]: the one mount served, and its mountpoint if overridden.
    pub only: Option<(String, Option<PathBuf>)>,
    text: String,
}

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySeg {
    /// A table key.
    Key(String),
    /// An array index.
    Index(usize),
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.into(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read config file: {e}"),
        })?;
        let mut config = Config::parse(path, text)?;
        // Resolve against an absolute directory so paths stay right whatever the cwd is.
        if let Ok(abs) = config.base_dir.canonicalize() {
            config.base_dir = abs;
        }
        Ok(config)
    }

    /// Parses and validates config `text`, reporting errors against `path`.
    pub fn parse(path: &Path, text: String) -> Result<Config, ConfigError> {
        let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base_dir = if base_dir.as_os_str().is_empty() { PathBuf::from(".") } else { base_dir };
        let shell =
            Config { path: path.into(), base_dir, host: HostSection::default(), mounts: Vec::new(), only: None, text };

        let de = toml::Deserializer::parse(&shell.text).map_err(|e| shell.syntax_error(&e))?;
        let shape: FileShape = serde_path_to_error::deserialize(de).map_err(|e| {
            // The path includes an unknown field's own name, so it points at that line.
            let key = path_segments(&e.path().to_string());
            shell.error_at(&key, e.inner().message().to_string())
        })?;
        let config = Config { host: shape.host, mounts: shape.mount, ..shell };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(addr) = &self.host.metrics_listen
            && let Err(e) = addr.parse::<std::net::SocketAddr>()
        {
            let key = [KeySeg::Key("host".into()), KeySeg::Key("metrics_listen".into())];
            return Err(
                self.error_at(&key, format!("`{addr}` is not an address and port like \"127.0.0.1:9464\": {e}"))
            );
        }
        if self.mounts.is_empty() {
            return Err(self.error_at(&[], "no [[mount]] tables: nothing to mount".into()));
        }
        for (i, m) in self.mounts.iter().enumerate() {
            let at = |field: &str| [KeySeg::Key("mount".into()), KeySeg::Index(i), KeySeg::Key(field.into())];
            if m.name.trim().is_empty() {
                return Err(self.error_at(&at("name"), "must not be empty".into()));
            }
            if let Some(j) = self.mounts[..i].iter().position(|o| o.name == m.name) {
                return Err(
                    self.error_at(&at("name"), format!("mount name `{}` is already used by mount[{j}]", m.name))
                );
            }
            if m.volume.is_some() && m.config.contains_key("image") {
                let key = [
                    KeySeg::Key("mount".into()),
                    KeySeg::Index(i),
                    KeySeg::Key("config".into()),
                    KeySeg::Key("image".into()),
                ];
                return Err(self.error_at(&key, "the mount names a volume, which is its image; remove one".into()));
            }
            if m.plugin.trim().is_empty() && m.volume.is_none() {
                return Err(self.error_at(
                    &at("plugin"),
                    if m.plugin.is_empty() {
                        "missing field `plugin`: name a plugin, a library path, or a `volume`".into()
                    } else {
                        "must name a plugin or a library path".into()
                    },
                ));
            }
            if m.mountpoint.as_os_str().is_empty() {
                return Err(self.error_at(&at("mountpoint"), "must not be empty".into()));
            }
            if let Some(j) =
                self.mounts[..i].iter().position(|o| self.resolve(&o.mountpoint) == self.resolve(&m.mountpoint))
            {
                return Err(self.error_at(&at("mountpoint"), format!("mount[{j}] already mounts there")));
            }
            if !(1..=256).contains(&m.options.threads) {
                let key = [
                    KeySeg::Key("mount".into()),
                    KeySeg::Index(i),
                    KeySeg::Key("options".into()),
                    KeySeg::Key("threads".into()),
                ];
                return Err(self.error_at(&key, "must be between 1 and 256".into()));
            }
            if let Err(why) = crate::frontend::check_available(m.frontend) {
                return Err(self.error_at(&at("frontend"), why));
            }
        }
        Ok(())
    }

    /// Keeps only mount `name`, mounted at `mountpoint` if given (`mount.plugfs`).
    pub fn restrict(&mut self, name: &str, mountpoint: Option<&Path>) -> Result<(), ConfigError> {
        let Some(i) = self.mounts.iter().position(|m| m.name == name) else {
            let names: Vec<&str> = self.mounts.iter().map(|m| m.name.as_str()).collect();
            return Err(self.error_at(&[], format!("no mount named `{name}` (it has: {})", names.join(", "))));
        };
        let mut m = self.mounts.swap_remove(i);
        if let Some(p) = mountpoint {
            m.mountpoint = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        }
        self.mounts = vec![m];
        self.only = Some((name.to_string(), mountpoint.map(Path::to_path_buf)));
        Ok(())
    }

    /// Resolves a path from the config against the config file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        lexically_normal(&if p.is_absolute() { p.to_path_buf() } else { self.base_dir.join(p) })
    }

    /// The plugin's table of mount `index` as TOML text, with `image` added when the
    /// mount names a volume whose image is there.
    pub fn plugin_table_text(&self, index: usize, image: Option<&Path>) -> String {
        let mut table = self.mounts[index].config.clone();
        if let Some(image) = image {
            table.insert("image".into(), toml::Value::String(image.display().to_string()));
        }
        toml::to_string(&table).unwrap_or_default()
    }

    /// The directory of named volumes.
    pub fn volumes_dir(&self) -> PathBuf {
        match &self.host.volumes_dir {
            Some(d) => self.resolve(d),
            None => PathBuf::from(crate::volume::DEFAULT_DIR),
        }
    }

    /// An error about the key at `key` (a path inside the mount's plugin table, as the
    /// plugin reported it) of mount `index`.
    pub fn plugin_key_error(&self, index: usize, plugin_key: Option<&str>, message: String) -> ConfigError {
        let mut key = vec![KeySeg::Key("mount".into()), KeySeg::Index(index), KeySeg::Key("config".into())];
        if let Some(k) = plugin_key {
            key.extend(path_segments(k));
        }
        self.error_at(&key, message)
    }

    /// An error about mount `index`'s field `field`.
    pub fn mount_error(&self, index: usize, field: &str, message: String) -> ConfigError {
        self.error_at(&[KeySeg::Key("mount".into()), KeySeg::Index(index), KeySeg::Key(field.into())], message)
    }

    fn syntax_error(&self, e: &toml::de::Error) -> ConfigError {
        let (line, column) = e.span().map(|s| self.line_col(s.start)).unwrap_or((1, 1));
        ConfigError {
            file: self.path.clone(),
            line,
            column,
            key: String::new(),
            message: e.message().trim().to_string(),
        }
    }

    /// Locates `key` in the file: the deepest part of the path that exists there (a
    /// missing key is reported at the table that lacks it).
    pub fn error_at(&self, key: &[KeySeg], message: String) -> ConfigError {
        let offset = DeTable::parse(&self.text).ok().map(|doc| locate(doc.get_ref(), key)).unwrap_or(0);
        let (line, column) = self.line_col(offset);
        ConfigError { file: self.path.clone(), line, column, key: display_key(key), message }
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
        (line, column)
    }
}

/// Folds `.` and `name/..` without touching the filesystem, so logs show `/srv/demo/mnt`
/// rather than `/srv/config/../demo/mnt`.
fn lexically_normal(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// The byte offset of the deepest key of `path` found in `table`.
fn locate(table: &DeTable<'_>, path: &[KeySeg]) -> usize {
    let Some((KeySeg::Key(first), rest)) = path.split_first() else { return 0 };
    let Some((k, v)) = table.iter().find(|(k, _)| k.get_ref().as_ref() == first.as_str()) else { return 0 };
    let here = k.span().start;
    let deeper = locate_value(v.get_ref(), rest);
    if deeper == 0 { here } else { deeper }
}

fn locate_value(value: &DeValue<'_>, path: &[KeySeg]) -> usize {
    match (value, path.first()) {
        (DeValue::Table(t), Some(KeySeg::Key(_))) => locate(t, path),
        (DeValue::Array(items), Some(KeySeg::Index(i))) => match items.get(*i) {
            Some(item) => {
                let deeper = locate_value(item.get_ref(), &path[1..]);
                if deeper == 0 { item.span().start } else { deeper }
            }
            None => 0,
        },
        _ => 0,
    }
}

/// Parses `a.b[3].c` (serde_path_to_error's and the plugin API's key format).
fn path_segments(path: &str) -> Vec<KeySeg> {
    let mut out = Vec::new();
    if path == "." {
        return out;
    }
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let mut rest = part;
        if let Some(bracket) = rest.find('[') {
            if bracket > 0 {
                out.push(KeySeg::Key(rest[..bracket].to_string()));
            }
            rest = &rest[bracket..];
            while let Some(stripped) = rest.strip_prefix('[') {
                let Some(end) = stripped.find(']') else { break };
                if let Ok(i) = stripped[..end].parse() {
                    out.push(KeySeg::Index(i));
                }
                rest = &stripped[end + 1..];
            }
        } else {
            out.push(KeySeg::Key(rest.to_string()));
        }
    }
    out
}

fn display_key(key: &[KeySeg]) -> String {
    let mut s = String::new();
    for seg in key {
        match seg {
            KeySeg::Key(k) => {
                if !s.is_empty() {
                    s.push('.');
                }
                s.push_str(k);
            }
            KeySeg::Index(i) => s.push_str(&format!("[{i}]")),
        }
    }
    s
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Frontend::Auto => "auto",
            Frontend::Fuse => "fuse",
            Frontend::Winfsp => "winfsp",
            Frontend::Dokan => "dokan",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[host]
plugin_dirs = ["plugins"]

[[mount]]
name = "data"
plugin = "durable-io"
mountpoint = "mnt"

[mount.config]
root = "data"
durability = "always"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/plugfs/test.toml"), text.to_string())
    }

    #[test]
    fn a_good_file_parses_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.mounts.len(), 1);
        let m = &c.mounts[0];
        assert_eq!(m.frontend, Frontend::Auto);
        assert!(!m.options.allow_other && m.options.default_permissions && !m.read_only);
        assert_eq!(c.resolve(&m.mountpoint), PathBuf::from("/etc/plugfs/mnt"));
        assert!(c.plugin_table_text(0, None).contains("durability = \"always\""));
    }

    #[test]
    fn an_unknown_key_names_file_line_column_and_key() {
        let text = GOOD.replace("mountpoint = \"mnt\"", "mountpoint = \"mnt\"\nmount_point = \"x\"");
        let e = parse(&text).unwrap_err();
        assert_eq!((e.line, e.column), (9, 1), "{e}");
        assert_eq!(e.key, "mount[0].mount_point");
        assert!(
            e.to_string().starts_with("/etc/plugfs/test.toml:9:1: key `mount[0].mount_point`: unknown field"),
            "{e}"
        );
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        let e = parse(&GOOD.replace("name = \"data\"", "name = \"data\"\nread_only = \"yes\"")).unwrap_err();
        assert_eq!(e.key, "mount[0].read_only", "{e}");
        assert_eq!(e.line, 7, "{e}");
        assert!(e.message.contains("invalid type"), "{e}");
    }

    #[test]
    fn a_missing_key_points_at_its_table() {
        let e = parse(&GOOD.replace("plugin = \"durable-io\"\n", "")).unwrap_err();
        assert!(e.message.contains("missing field `plugin`"), "{e}");
        assert_eq!(e.line, 5, "{e}");
    }

    #[test]
    fn a_syntax_error_has_a_line() {
        let e = parse("[[mount]\nname = 1").unwrap_err();
        assert_eq!(e.line, 1, "{e}");
    }

    #[test]
    fn an_unknown_frontend_is_refused() {
        let e = parse(&GOOD.replace("mountpoint = \"mnt\"", "mountpoint = \"mnt\"\nfrontend = \"nfs\"")).unwrap_err();
        assert_eq!(e.key, "mount[0].frontend", "{e}");
        assert_eq!(e.line, 9, "{e}");
    }

    #[cfg(not(windows))]
    #[test]
    fn a_windows_frontend_is_refused_elsewhere() {
        let e =
            parse(&GOOD.replace("mountpoint = \"mnt\"", "mountpoint = \"mnt\"\nfrontend = \"winfsp\"")).unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("mount[0].frontend", 9), "{e}");
        assert!(e.message.contains("Windows"), "{e}");
    }

    #[test]
    fn duplicate_names_and_mountpoints_are_refused() {
        let twice = format!("{GOOD}\n[[mount]]\nname = \"data\"\nplugin = \"x\"\nmountpoint = \"other\"\n");
        let e = parse(&twice).unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("mount[1].name", 15), "{e}");
        let twice = format!("{GOOD}\n[[mount]]\nname = \"two\"\nplugin = \"x\"\nmountpoint = \"./mnt/../mnt\"\n");
        // The same directory spelled differently is the same mountpoint: paths are folded
        // before they are compared.
        let e = parse(&twice).unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("mount[1].mountpoint", 17), "{e}");
        assert!(e.message.contains("mount[0] already mounts there"), "{e}");
    }

    #[test]
    fn a_plugin_reported_key_is_located_inside_its_table() {
        let c = parse(GOOD).unwrap();
        let e = c.plugin_key_error(0, Some("durability"), "unknown variant".into());
        assert_eq!((e.line, e.column), (12, 1), "{e}");
        assert_eq!(e.key, "mount[0].config.durability");
        let e = c.plugin_key_error(0, Some("missing"), "required".into());
        assert_eq!(e.line, 10, "a missing key is reported at its table: {e}");
    }

    #[test]
    fn resolved_paths_fold_dot_dot() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.resolve(Path::new("../demo/./mnt")), PathBuf::from("/etc/demo/mnt"));
        assert_eq!(c.resolve(Path::new("/x/../y")), PathBuf::from("/y"));
    }

    #[test]
    fn key_paths_parse() {
        assert_eq!(
            path_segments("mount[2].config.limits.max"),
            vec![
                KeySeg::Key("mount".into()),
                KeySeg::Index(2),
                KeySeg::Key("config".into()),
                KeySeg::Key("limits".into()),
                KeySeg::Key("max".into())
            ]
        );
        assert_eq!(path_segments("."), vec![]);
    }
}
