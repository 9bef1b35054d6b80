//! The [`Plugin`] trait (what [`crate::export_plugin!`] exports) and the plugin's view of
//! its config table.

use std::fmt;

use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::fs::FileSystem;
use crate::types::{MountOptions, PluginInfo};

/// A plugin: describes itself and opens filesystems from a config table.
///
/// ```
/// use plugfs_plugin_api::{Capabilities, ConfigTable, MountOptions, OpenError, Plugin, PluginInfo};
/// # use plugfs_plugin_api::*; use std::ffi::OsStr;
/// # struct MyFs;
/// # impl FileSystem for MyFs {
/// #   fn lookup(&self, _: &Request, _: NodeId, _: &OsStr) -> Result<Entry> { Err(Errno::ENOENT.into()) }
/// #   fn getattr(&self, _: &Request, _: NodeId, _: Option<Handle>) -> Result<AttrOut> { Err(Errno::ENOENT.into()) }
/// #   fn read(&self, _: &Request, _: NodeId, _: Handle, _: u64, _: &mut [u8]) -> Result<usize> { Ok(0) }
/// #   fn readdir(&self, _: &Request, _: NodeId, _: Handle, _: u64, _: &mut dyn DirSink) -> Result<()> { Ok(()) }
/// # }
/// #[derive(serde::Deserialize)]
/// struct Settings { greeting: String }
///
/// struct MyPlugin;
/// impl Plugin for MyPlugin {
///     type Fs = MyFs;
///     fn info() -> PluginInfo {
///         PluginInfo {
///             name: "my-plugin",
///             version: env!("CARGO_PKG_VERSION"),
///             description: "an example",
///             config_help: "greeting = \"hi\"  # what to say",
///             capabilities: Capabilities::NONE,
///         }
///     }
///     fn open(config: &ConfigTable, _options: &MountOptions) -> Result<MyFs, OpenError> {
///         let settings: Settings = config.parse()?;
///         let _ = settings.greeting;
///         Ok(MyFs)
///     }
/// }
/// ```
pub trait Plugin: 'static {
    /// The filesystem type `open` returns.
    type Fs: FileSystem;

    /// Describes the plugin. Called without mounting anything, possibly many times.
    fn info() -> PluginInfo;

    /// Opens one filesystem from this mount's config table. Refuse bad settings with
    /// [`OpenError::config`] naming the key, so the host can point at the line.
    fn open(config: &ConfigTable, options: &MountOptions) -> Result<Self::Fs, OpenError>;

    /// Creates a new, empty image of `size` bytes where `config` says (the same table a
    /// mount of it takes, e.g. its `image` path), for plugins that own an image format
    /// and declare [`crate::Capabilities::format`]. The host's `plugfs volume create` uses
    /// it. The default refuses.
    fn format(config: &ConfigTable, size: u64) -> Result<(), OpenError> {
        let _ = (config, size);
        Err(OpenError::other("this plugin does not create images"))
    }
}

/// The plugin's own table from the host config (`[mount.config]`), as TOML text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigTable {
    toml: String,
}

impl ConfigTable {
    /// Wraps TOML text (a table's body, `key = value` lines).
    pub fn from_toml(toml: impl Into<String>) -> Self {
        ConfigTable { toml: toml.into() }
    }

    /// The TOML text.
    pub fn as_toml(&self) -> &str {
        &self.toml
    }

    /// Deserializes the table into the plugin's settings type.
    ///
    /// Unknown keys are refused (a typo must not silently fall back to a default), and every
    /// error names the key it is about, as a dotted path.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, OpenError> {
        let mut unknown: Option<String> = None;
        let de = toml::Deserializer::parse(&self.toml).map_err(|e| OpenError {
            key: None,
            message: format!("the config table is not valid TOML: {}", e.message()),
        })?;
        let mut track = serde_path_to_error::Track::new();
        let tracked = serde_path_to_error::Deserializer::new(de, &mut track);
        let result: Result<T, _> = serde_ignored::deserialize(tracked, |path| {
            if unknown.is_none() {
                unknown = Some(path.to_string());
            }
        });
        match result {
            Ok(_) if unknown.is_some() => {
                let key = unknown.unwrap_or_default();
                Err(OpenError { message: format!("unknown key `{key}`"), key: Some(key) })
            }
            Ok(value) => Ok(value),
            Err(e) => {
                let path = track.path().to_string();
                let key = (path != "." && !path.is_empty()).then_some(path);
                Err(OpenError { key, message: e.message().to_string() })
            }
        }
    }
}

/// Why a plugin refused to open a filesystem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenError {
    /// The config key at fault, as a dotted path inside the plugin's table, if the problem
    /// is a setting.
    pub key: Option<String>,
    /// What is wrong, for a person to act on.
    pub message: String,
}

impl OpenError {
    /// A bad setting: `key` is a dotted path inside the plugin's table.
    pub fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        OpenError { key: Some(key.into()), message: message.into() }
    }

    /// Any other failure to open (a missing directory, a corrupt image, ...).
    pub fn other(message: impl Into<String>) -> Self {
        OpenError { key: None, message: message.into() }
    }
}

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(k) => write!(f, "key `{k}`: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for OpenError {}

impl From<Error> for OpenError {
    fn from(e: Error) -> Self {
        OpenError::other(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Settings {
        root: String,
        #[serde(default)]
        limits: Limits,
    }
    #[derive(serde::Deserialize, Debug, Default)]
    #[allow(dead_code)]
    struct Limits {
        #[serde(default)]
        max: u32,
    }

    #[test]
    fn parse_reads_a_valid_table() {
        let s: Settings = ConfigTable::from_toml("root = \"/x\"\n[limits]\nmax = 3\n").parse().unwrap();
        assert_eq!(s.root, "/x");
        assert_eq!(s.limits.max, 3);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = ConfigTable::from_toml("root = \"/x\"\n[limits]\nmaks = 3\n").parse::<Settings>().unwrap_err();
        assert_eq!(e.key.as_deref(), Some("limits.maks"));
        assert!(e.message.contains("unknown key"), "{e}");
    }

    #[test]
    fn type_errors_name_the_key() {
        let e = ConfigTable::from_toml("root = \"/x\"\n[limits]\nmax = \"many\"\n").parse::<Settings>().unwrap_err();
        assert_eq!(e.key.as_deref(), Some("limits.max"));
        assert!(e.message.contains("invalid type"), "{e}");
    }

    #[test]
    fn missing_keys_are_named() {
        let e = ConfigTable::from_toml("").parse::<Settings>().unwrap_err();
        assert!(e.message.contains("missing field `root`"), "{e}");
    }
}
