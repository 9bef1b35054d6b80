//! Finding plugins: by path, or by name in the plugin directories.
//!
//! Plugins are loaded only from directories the operator configured, the directory of the
//! `plugfs` executable (so plain `cargo build` output works), or explicit paths. A name is
//! first tried as the conventional file name (`durable-io` -> `libplugfs_durable_io.so`),
//! then by asking every library in the directories for its name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use plugfs_plugin_api::host::{LoadError, PluginLibrary, plugin_files};

/// The plugin directories and the libraries loaded from them so far.
pub struct Registry {
    dirs: Vec<PathBuf>,
    loaded: HashMap<PathBuf, PluginLibrary>,
}

/// Why a plugin could not be found or loaded.
#[derive(Debug, thiserror::Error)]
pub enum FindError {
    /// No library in the directories has that name.
    #[error("no plugin named `{name}` in {}{}", list(.searched), list_failures(.failures))]
    NotFound {
        /// The name asked for.
        name: String,
        /// The directories searched.
        searched: Vec<PathBuf>,
        /// Libraries there that failed to load, with why.
        failures: Vec<String>,
    },
    /// The library was found but is not a loadable plugin.
    #[error(transparent)]
    Load(#[from] LoadError),
}

fn list(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        return "no plugin directories".into();
    }
    dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
}

fn list_failures(f: &[String]) -> String {
    if f.is_empty() { String::new() } else { format!(" (libraries there that did not load: {})", f.join("; ")) }
}

/// The conventional library file name of a plugin called `name`.
pub fn conventional_file_name(name: &str) -> String {
    format!("{}plugfs_{}{}", std::env::consts::DLL_PREFIX, name.replace('-', "_"), std::env::consts::DLL_SUFFIX)
}

/// The directory of the running executable.
pub fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe().ok()?.parent().map(Path::to_path_buf)
}

impl Registry {
    /// A registry over `dirs` (searched in order), then the executable's directory.
    pub fn new(dirs: impl IntoIterator<Item = PathBuf>) -> Registry {
        let mut all: Vec<PathBuf> = dirs.into_iter().collect();
        if let Some(d) = exe_dir()
            && !all.contains(&d)
        {
            all.push(d);
        }
        Registry { dirs: all, loaded: HashMap::new() }
    }

    /// The directories searched, in order.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// Loads the library at `path` (once per file).
    pub fn load_path(&mut self, path: &Path) -> Result<PluginLibrary, LoadError> {
        let key = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        if let Some(lib) = self.loaded.get(&key) {
            return Ok(lib.clone());
        }
        let lib = PluginLibrary::load(path)?;
        self.loaded.insert(key, lib.clone());
        Ok(lib)
    }

    /// Finds a plugin by `spec`: a path if it contains a path separator, otherwise a name.
    pub fn find(&mut self, spec: &str) -> Result<PluginLibrary, FindError> {
        if spec.contains('/') || spec.contains(std::path::MAIN_SEPARATOR) {
            return Ok(self.load_path(Path::new(spec))?);
        }
        for dir in self.dirs.clone() {
            let candidate = dir.join(conventional_file_name(spec));
            if candidate.is_file() {
                let lib = self.load_path(&candidate)?;
                if lib.info().name == spec {
                    return Ok(lib);
                }
            }
        }
        let mut failed = Vec::new();
        for (path, result) in self.scan() {
            match result {
                Ok(lib) if lib.info().name == spec => return Ok(lib),
                Ok(_) => {}
                Err(e) => failed.push(format!("{}: {}", path.display(), short(&e))),
            }
        }
        Err(FindError::NotFound { name: spec.to_string(), searched: self.dirs.clone(), failures: failed })
    }

    /// Every library file in the directories, loaded or with its error.
    pub fn scan(&mut self) -> Vec<(PathBuf, Result<PluginLibrary, LoadError>)> {
        let mut out = Vec::new();
        for dir in self.dirs.clone() {
            let Ok(files) = plugin_files(&dir) else { continue };
            for file in files {
                let result = self.load_path(&file);
                out.push((file, result));
            }
        }
        out
    }
}

fn short(e: &LoadError) -> String {
    match e {
        LoadError::NotAPlugin { reason, .. } => format!("not a plugin: {reason}"),
        LoadError::Incompatible { plugin, .. } => format!("incompatible ABI {plugin}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conventional_names_follow_the_crate_names() {
        assert_eq!(
            conventional_file_name("durable-io"),
            format!("{}plugfs_durable_io{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX)
        );
    }

    #[test]
    fn an_unknown_name_lists_the_directories_searched() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(conventional_file_name("junk")), "not a library").unwrap();
        let mut r = Registry { dirs: vec![dir.path().to_path_buf()], loaded: HashMap::new() };
        let e = r.find("nothing-here").unwrap_err().to_string();
        assert!(e.contains("no plugin named `nothing-here`") && e.contains(&dir.path().display().to_string()), "{e}");
        assert!(e.contains("not a plugin"), "libraries that failed are listed: {e}");
        let e = r.find("junk").unwrap_err().to_string();
        assert!(e.contains("not a plugfs plugin"), "{e}");
    }
}
