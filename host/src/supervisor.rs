//! Starting, watching and stopping the mounts of one config file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use plugfs_plugin_api::host::LoadedFs;
use plugfs_plugin_api::{Capabilities, MountOptions};
use tracing::{error, info, warn};

use crate::config::{Config, ConfigError, KeySeg};
use crate::frontend::Mounted;
use crate::registry::Registry;

/// A mount that is ready to start: its plugin is loaded and its backend opened.
struct Prepared {
    index: usize,
    mountpoint: PathBuf,
    fs: Arc<LoadedFs>,
    description: String,
}

/// Loads the plugin of every mount and opens its backend, reporting config problems at
/// their line. Nothing is mounted.
fn prepare(config: &Config) -> Result<Vec<Prepared>, ConfigError> {
    // Relative paths in plugin settings are relative to the config file, like ours.
    if let Err(e) = std::env::set_current_dir(&config.base_dir) {
        return Err(
            config.error_at(&[], format!("cannot enter the config's directory {}: {e}", config.base_dir.display()))
        );
    }
    let mut registry = Registry::new(config.host.plugin_dirs.iter().map(|d| config.resolve(d)));
    let mut prepared = Vec::new();
    for (index, m) in config.mounts.iter().enumerate() {
        let plugin_spec = if m.plugin.contains('/') {
            config.resolve(Path::new(&m.plugin)).display().to_string()
        } else {
            m.plugin.clone()
        };
        let lib = registry.find(&plugin_spec).map_err(|e| config.mount_error(index, "plugin", e.to_string()))?;
        let mountpoint = config.resolve(&m.mountpoint);
        check_mountpoint(&mountpoint, m.create_mountpoint)
            .map_err(|why| config.mount_error(index, "mountpoint", why))?;
        let options = MountOptions { read_only: m.read_only };
        let fs = lib.open(&config.plugin_table_text(index), &options).map_err(|e| {
            config.plugin_key_error(
                index,
                e.key.as_deref(),
                format!("plugin `{}` refused its settings: {}", lib.info().name, e.message),
            )
        })?;
        let caps = fs.mount_capabilities();
        if !m.options.default_permissions && !caps.checks_permissions {
            let key = ["mount", "", "options", "default_permissions"]
                .iter()
                .map(|k| if k.is_empty() { KeySeg::Index(index) } else { KeySeg::Key(k.to_string()) })
                .collect::<Vec<_>>();
            return Err(config.error_at(
                &key,
                format!(
                    "plugin `{}` does not check permissions itself (it lacks the checks-permissions \
                     capability), so without the kernel's checks every caller could read and change \
                     everything; remove this key or set it to true",
                    lib.info().name
                ),
            ));
        }
        let i = lib.info();
        let description = format!(
            "mount `{}`: plugin {} {} (ABI {}, {}) at {}",
            m.name,
            i.name,
            i.version,
            i.abi,
            lib.path().display(),
            mountpoint.display()
        );
        prepared.push(Prepared { index, mountpoint, fs: Arc::new(fs), description });
    }
    Ok(prepared)
}

/// The mountpoint must be a directory; it is created first when asked.
fn check_mountpoint(path: &Path, create: bool) -> Result<(), String> {
    // Only a missing directory is created: a dead mount also fails `exists()`.
    let missing = matches!(std::fs::metadata(path), Err(e) if e.kind() == std::io::ErrorKind::NotFound);
    if create && missing {
        std::fs::create_dir_all(path).map_err(|e| format!("cannot create mountpoint {}: {e}", path.display()))?;
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(format!("{} is not a directory", path.display())),
        Err(e) if e.raw_os_error() == Some(107) => Err(format!(
            "{} is a dead mount (a killed plugfs left it); run `plugfs unmount {}` first",
            path.display(),
            path.display()
        )),
        Err(e) => Err(format!(
            "{}: {e}{}",
            path.display(),
            if create { "" } else { " (set create_mountpoint = true to create it)" }
        )),
    }
}

/// `plugfs check`.
pub fn check(config: Config) -> anyhow::Result<ExitCode> {
    match prepare(&config) {
        Ok(prepared) => {
            for p in &prepared {
                println!("ok: {}", p.description);
            }
            println!("{}: {} mount(s) ready", config.path.display(), prepared.len());
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("plugfs: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `plugfs mount`: start every mount, serve until SIGINT/SIGTERM, unmount everything.
pub fn run(config: Config) -> anyhow::Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    #[cfg(unix)]
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("installing signal handlers")?;
    }

    let prepared = match prepare(&config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("plugfs: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut live: Vec<(String, Mounted)> = Vec::new();
    for p in prepared {
        let section = &config.mounts[p.index];
        match Mounted::start(p.fs, &p.mountpoint, section) {
            Ok(m) => {
                info!("{}", p.description);
                live.push((section.name.clone(), m));
            }
            Err(e) => {
                error!(mount = %section.name, "cannot mount at {}: {e:#}", p.mountpoint.display());
                unmount_all(live);
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    info!("serving {} mount(s); Ctrl-C or SIGTERM unmounts and exits", live.len());

    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        live.retain(|(name, m)| {
            let done = m.is_finished();
            if done {
                warn!(mount = %name, "unmounted from outside plugfs; no longer serving it");
            }
            !done
        });
        if live.is_empty() {
            info!("no mounts left; exiting");
            return Ok(ExitCode::SUCCESS);
        }
    }
    info!("signal received; unmounting");
    unmount_all(live);
    Ok(ExitCode::SUCCESS)
}

fn unmount_all(live: Vec<(String, Mounted)>) {
    for (name, m) in live.into_iter().rev() {
        let mountpoint = match &m {
            #[cfg(unix)]
            Mounted::Fuse(f) => f.mountpoint().to_path_buf(),
        };
        match m.unmount() {
            Ok(()) => info!(mount = %name, "unmounted {}", mountpoint.display()),
            // Busy (files still open): the frontend has detached it lazily, so nothing is
            // left mounted once those files are closed.
            Err(e) => warn!(mount = %name, "{}: {e}", mountpoint.display()),
        }
    }
}

/// A one-line summary of what a plugin supports.
pub fn describe_capabilities(c: &Capabilities) -> String {
    let flags = [
        (c.writable, "writable"),
        (c.symlinks, "symlinks"),
        (c.hard_links, "hard-links"),
        (c.special_files, "special-files"),
        (c.xattrs, "xattrs"),
        (c.permissions, "permissions"),
        (c.fallocate, "fallocate"),
        (c.punch_hole, "punch-hole"),
        (c.rename_noreplace, "rename-noreplace"),
        (c.rename_exchange, "rename-exchange"),
        (c.sparse_files, "sparse-files"),
        (c.case_sensitive, "case-sensitive"),
        (c.case_preserving, "case-preserving"),
        (c.nanosecond_times, "ns-times"),
        (c.checks_permissions, "checks-permissions"),
    ];
    let mut parts: Vec<String> = flags.iter().filter(|(on, _)| *on).map(|(_, n)| n.to_string()).collect();
    parts.push(format!("names<={}B", c.max_name_len));
    parts.join(" ")
}
