//! Starting, watching and stopping the mounts of one config file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use plugfs_plugin_api::host::LoadedFs;
use plugfs_plugin_api::{Capabilities, MountOptions};
use tracing::{error, info, warn};

use crate::config::{Config, ConfigError, KeySeg, MountSection};
use crate::control::{self, Incoming, MountStatus, Reply, Request};
use crate::frontend::Mounted;
use crate::metered::{Metered, MountStats};
use crate::notify;
use crate::registry::Registry;
use crate::swap::{Backend, Swap};
use crate::volume::Volume;

/// A mount that is ready to start: its plugin is loaded and its backend opened.
struct Prepared {
    index: usize,
    mountpoint: PathBuf,
    fs: Arc<LoadedFs>,
    plugin: String,
    version: String,
    description: String,
    /// The lock on the volume it mounts, held while mounted.
    volume_lock: Option<std::fs::File>,
}

/// Loads the plugin of every mount and opens its backend, reporting config problems at
/// their line. Nothing is mounted.
fn prepare(config: &Config) -> Result<Vec<Prepared>, ConfigError> {
    let mut registry = enter(config)?;
    (0..config.mounts.len()).map(|index| prepare_one(config, &mut registry, index)).collect()
}

/// Enters the config's directory (relative paths in plugin settings are relative to the
/// config file, like ours) and makes the registry of its plugin directories.
fn enter(config: &Config) -> Result<Registry, ConfigError> {
    if let Err(e) = std::env::set_current_dir(&config.base_dir) {
        return Err(
            config.error_at(&[], format!("cannot enter the config's directory {}: {e}", config.base_dir.display()))
        );
    }
    Ok(Registry::new(config.host.plugin_dirs.iter().map(|d| config.resolve(d))))
}

/// Loads the plugin of mount `index` and opens its backend.
fn prepare_one(config: &Config, registry: &mut Registry, index: usize) -> Result<Prepared, ConfigError> {
    let m = &config.mounts[index];
    let mountpoint = config.resolve(&m.mountpoint);
    let volume = match &m.volume {
        None => None,
        Some(name) => {
            let at_volume = |e: anyhow::Error| config.mount_error(index, "volume", format!("{e:#}"));
            let v = Volume::new(&config.volumes_dir(), name).map_err(at_volume)?;
            let meta = v.metadata().map_err(at_volume)?;
            if !m.plugin.is_empty() && !m.plugin.contains('/') && m.plugin != meta.plugin {
                return Err(config.mount_error(
                    index,
                    "plugin",
                    format!("volume `{name}` was made by plugin `{}`, not `{}`", meta.plugin, m.plugin),
                ));
            }
            Some((v, meta))
        }
    };
    let plugin = match (&volume, m.plugin.is_empty()) {
        (Some((_, meta)), true) => meta.plugin.clone(),
        _ => m.plugin.clone(),
    };
    let plugin_spec =
        if plugin.contains('/') { config.resolve(Path::new(&plugin)).display().to_string() } else { plugin };
    let lib = registry.find(&plugin_spec).map_err(|e| config.mount_error(index, "plugin", e.to_string()))?;
    check_mountpoint(&mountpoint, m.create_mountpoint, crate::frontend::resolve(m.frontend))
        .map_err(|why| config.mount_error(index, "mountpoint", why))?;
    let volume_lock = match &volume {
        Some((v, _)) => Some(v.lock(&mountpoint).map_err(|e| config.mount_error(index, "volume", format!("{e:#}")))?),
        None => None,
    };
    let options = MountOptions { read_only: m.read_only };
    let image = volume.as_ref().map(|(v, _)| v.image.as_path());
    let fs = lib.open(&config.plugin_table_text(index, image), &options).map_err(|e| {
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
    Ok(Prepared {
        index,
        mountpoint,
        fs: Arc::new(fs),
        plugin: i.name.clone(),
        version: i.version.clone(),
        description,
        volume_lock,
    })
}

/// Whether a mount changed from `old` to `new` can keep its mountpoint and switch its
/// backend in place; the reason to remount instead if not.
///
/// Only the plugin and its settings may differ: the frontend, its options and
/// `read_only` are fixed when the kernel mounts (mount options, FUSE init), and another
/// mountpoint is another mount anyway. A volume's lock and image belong to one backend at
/// a time. And the new settings must name no existing file or directory the old ones name
/// (`base_dir` resolves relative ones): the old backend goes
/// on serving the files open on it, and two backends on one image or directory at once
/// could corrupt it (the remount opens the new one only after the old one is gone).
fn swappable(old: &MountSection, new: &MountSection, base_dir: &Path) -> Result<(), String> {
    if old.volume.is_some() || new.volume.is_some() {
        return Err("it mounts a volume, whose image and lock belong to one backend at a time".into());
    }
    let only_backend = MountSection { plugin: new.plugin.clone(), config: new.config.clone(), ..old.clone() };
    if only_backend != *new {
        let mut what = Vec::new();
        if old.mountpoint != new.mountpoint {
            what.push("mountpoint");
        }
        if old.frontend != new.frontend {
            what.push("frontend");
        }
        if old.read_only != new.read_only {
            what.push("read_only");
        }
        if old.options != new.options {
            what.push("frontend options");
        }
        if what.is_empty() {
            what.push("keys other than plugin and [mount.config]");
        }
        return Err(format!("its {} changed, which only a new mount can apply", what.join(", ")));
    }
    // Every string of the settings that names an existing file or directory, as the
    // plugin would resolve it (relative to the config's directory).
    fn paths(v: &toml::Value, base: &Path, out: &mut Vec<PathBuf>) {
        match v {
            toml::Value::String(s) if !s.is_empty() => {
                if let Ok(p) = std::fs::canonicalize(base.join(s)) {
                    out.push(p);
                }
            }
            toml::Value::Array(a) => a.iter().for_each(|v| paths(v, base, out)),
            toml::Value::Table(t) => t.values().for_each(|v| paths(v, base, out)),
            _ => {}
        }
    }
    let (mut before, mut after) = (Vec::new(), Vec::new());
    old.config.values().for_each(|v| paths(v, base_dir, &mut before));
    new.config.values().for_each(|v| paths(v, base_dir, &mut after));
    if let Some(shared) = after.iter().find(|p| before.contains(p)) {
        return Err(format!(
            "the old and new settings both name {}: the old backend keeps serving the files open on it, \
             and two backends must not share an image or directory",
            shared.display()
        ));
    }
    Ok(())
}

/// On Windows, a free drive letter (`X:`), or a directory: an empty one for Dokan (created
/// when asked), and for WinFSP one that does not exist or is empty (WinFSP makes it itself
/// and removes it at unmount, so an empty one is removed just before mounting).
#[cfg(windows)]
fn check_mountpoint(path: &Path, create: bool, frontend: crate::config::Frontend) -> Result<(), String> {
    if let Some(letter) = path.to_str().and_then(crate::frontend::drive_letter) {
        // SAFETY: no arguments; a bit per drive letter that names a drive, with media or not.
        let drives = unsafe { windows_sys::Win32::Storage::FileSystem::GetLogicalDrives() };
        if drives & (1 << (letter as u32 - 'A' as u32)) != 0 {
            return Err(format!("drive {letter}: is in use; pick a free drive letter"));
        }
        return Ok(());
    }
    let empty = |p: &Path| std::fs::read_dir(p).map(|mut d| d.next().is_none());
    match std::fs::metadata(path) {
        Ok(m) if !m.is_dir() => Err(format!("{} is not a directory", path.display())),
        Ok(_) if !empty(path).unwrap_or(false) => Err(format!("{} is not empty", path.display())),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match frontend {
            crate::config::Frontend::Winfsp => match path.parent() {
                Some(parent) if create => {
                    std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))
                }
                Some(parent) if parent.is_dir() => Ok(()),
                _ => Err(format!("the directory {} is to be in does not exist", path.display())),
            },
            _ if create => {
                std::fs::create_dir_all(path).map_err(|e| format!("cannot create mountpoint {}: {e}", path.display()))
            }
            _ => Err(format!("{}: {e} (set create_mountpoint = true to create it)", path.display())),
        },
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The mountpoint must be a directory; it is created first when asked.
#[cfg(not(windows))]
fn check_mountpoint(path: &Path, create: bool, _frontend: crate::config::Frontend) -> Result<(), String> {
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

/// `plugfs mount`: start every mount, serve until SIGINT/SIGTERM, then shut down without
/// losing anything (see [`shutdown`]). A second signal exits at once. SIGHUP and the
/// control socket's `reload` re-read the config and apply the difference (see
/// [`Host::reload`]).
pub fn run(config: Config) -> anyhow::Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    let mountpoints: Arc<Mutex<Vec<PathBuf>>> = Arc::default();
    let (to_host, requests) = mpsc::channel::<Incoming>();
    #[cfg(unix)]
    watch_signals(Arc::clone(&stop), Arc::clone(&mountpoints), to_host.clone())?;
    #[cfg(windows)]
    let _console = crate::console::watch(Arc::clone(&stop))?;
    #[cfg(unix)]
    raise_open_file_limit();

    let prepared = match prepare(&config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("plugfs: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut host = Host {
        watchdog: Watchdog::start(&config),
        config: Arc::new(config),
        live: Vec::new(),
        waiting: Vec::new(),
        failed: Vec::new(),
        mountpoints,
        metrics: Arc::default(),
    };
    if let Some(addr) = host.config.host.metrics_listen()
        && let Err(e) = crate::metrics::serve(addr, Arc::clone(&host.metrics))
    {
        error!("cannot serve metrics at {addr}: {e}");
    }
    // Listening before the first mount appears, so that a client that sees a mountpoint
    // mounted can reach the host; requests wait in the channel until the loop below.
    let socket = control::socket_path(&host.config);
    let _server = match control::serve(&socket, to_host) {
        Ok(server) => {
            info!("control socket {} (plugfs status / reload / unmount NAME)", socket.display());
            Some(server)
        }
        Err(e) => {
            warn!("no control socket, so no `plugfs status`, `reload` or `unmount NAME`: {e:#}");
            None
        }
    };
    for p in prepared {
        let config = Arc::clone(&host.config);
        if let Err(e) = host.start(&config, p) {
            error!("{e:#}");
            let live = std::mem::take(&mut host.live);
            shutdown(live, host.config.host.shutdown_timeout(), &mut host.watchdog);
            host.watchdog.disarm();
            return Ok(ExitCode::FAILURE);
        }
    }
    info!("serving {} mount(s); Ctrl-C or SIGTERM unmounts and exits, SIGHUP reloads the config", host.live.len());
    notify::notify(&format!("READY=1\nSTATUS=serving {} mount(s)", host.live.len()));

    while !stop.load(Ordering::Relaxed) {
        match requests.recv_timeout(Duration::from_millis(100)) {
            Ok(incoming) => {
                let reply = host.handle(&incoming.request);
                if let Some(to) = incoming.reply {
                    let _ = to.send(reply);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(Duration::from_millis(100)),
        }
        host.tick();
        if host.live.is_empty() && host.waiting.is_empty() {
            info!("no mounts left; exiting");
            host.watchdog.disarm();
            return Ok(ExitCode::SUCCESS);
        }
    }
    info!("signal received; shutting down (a second signal exits at once)");
    notify::notify("STOPPING=1");
    let live = std::mem::take(&mut host.live);
    shutdown(live, host.config.host.shutdown_timeout(), &mut host.watchdog);
    host.watchdog.disarm();
    Ok(ExitCode::SUCCESS)
}

/// A mount being served.
struct Live {
    name: String,
    /// Its table and the plugin directories its plugin was looked up in, to tell whether
    /// a reload changes it.
    section: MountSection,
    plugin_dirs: Vec<PathBuf>,
    plugin: String,
    version: String,
    mounted: Mounted,
    started: Instant,
    stats: Arc<MountStats>,
    /// Routes requests to its backend, and to earlier ones after a backend swap.
    swap: Arc<Swap>,
    /// The capabilities of the backend it was mounted with: the frontend fixed some things
    /// from them when it mounted (its data path; on Windows, volume properties).
    first_caps: Capabilities,
    /// The lock on its volume; released when it is dropped, after the unmount.
    _volume_lock: Option<std::fs::File>,
    /// Set once it is to be unmounted: when to stop waiting for its open files.
    draining: Option<Instant>,
}

/// A mount of the current config waiting for its mountpoint to be free (the mount it
/// replaces is draining).
struct Waiting {
    config: Arc<Config>,
    index: usize,
}

/// A mount of the current config that could not be started after a reload.
struct Failed {
    name: String,
    mountpoint: PathBuf,
    error: String,
}

/// The running host: its config and every mount.
struct Host {
    config: Arc<Config>,
    live: Vec<Live>,
    waiting: Vec<Waiting>,
    failed: Vec<Failed>,
    watchdog: Watchdog,
    /// Every mountpoint ever started, for the second signal's lazy detach.
    mountpoints: Arc<Mutex<Vec<PathBuf>>>,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Host {
    /// Mounts `p` (of `config`), counting its requests.
    fn start(&mut self, config: &Config, p: Prepared) -> anyhow::Result<()> {
        let section = &config.mounts[p.index];
        if section.options.auto_unmount {
            self.watchdog.watch(&p.mountpoint);
        }
        lock(&self.mountpoints).push(p.mountpoint.clone());
        let stats = Arc::new(MountStats::default());
        let first_caps = p.fs.mount_capabilities();
        let swap = Arc::new(Swap::new(p.fs, format!("{} {}", p.plugin, p.version)));
        let fs = Arc::new(Metered::new(Arc::clone(&swap), Arc::clone(&stats)));
        match Mounted::start(fs, &first_caps, &p.mountpoint, section) {
            Ok(mounted) => {
                info!("{}", p.description);
                self.metrics.add_mount(&section.name, &p.plugin, &stats);
                self.live.push(Live {
                    name: section.name.clone(),
                    section: section.clone(),
                    plugin_dirs: config.host.plugin_dirs.clone(),
                    plugin: p.plugin,
                    version: p.version,
                    mounted,
                    started: Instant::now(),
                    stats,
                    swap,
                    first_caps,
                    _volume_lock: p.volume_lock,
                    draining: None,
                });
                Ok(())
            }
            Err(e) => {
                self.watchdog.unwatch(&p.mountpoint);
                Err(e.context(format!("mount `{}`: cannot mount at {}", section.name, p.mountpoint.display())))
            }
        }
    }

    fn handle(&mut self, request: &Request) -> Reply {
        let reply = match request {
            Request::Status => Reply { ok: true, message: String::new(), mounts: self.status() },
            Request::Reload => self.reload(),
            Request::Unmount(name) => self.unmount(name),
        };
        // Whatever can finish at once (a drain without open files) does before the answer.
        self.tick();
        reply
    }

    fn status(&self) -> Vec<MountStatus> {
        let mut out: Vec<MountStatus> = self
            .live
            .iter()
            .map(|l| MountStatus {
                name: l.name.clone(),
                plugin: l.plugin.clone(),
                version: l.version.clone(),
                frontend: crate::frontend::resolve(l.section.frontend).to_string(),
                state: if l.draining.is_some() { "draining" } else { "mounted" }.into(),
                mountpoint: l.mounted.mountpoint().to_path_buf(),
                open_handles: l.mounted.open_handles(),
                uptime_secs: l.started.elapsed().as_secs(),
                requests: l.stats.requests(),
                errors: l.stats.errors(),
                backends: l.swap.backends(),
                swaps: l.swap.swaps(),
                detail: match l.swap.backends() {
                    1 => String::new(),
                    n => {
                        let (nodes, handles) = l.swap.earlier_holds();
                        format!(
                            "{} earlier backend(s) still serve {handles} open file(s) or directories and {nodes} \
                             node(s) the kernel looked up before a swap",
                            n - 1
                        )
                    }
                },
            })
            .collect();
        for w in &self.waiting {
            let m = &w.config.mounts[w.index];
            out.push(MountStatus {
                name: m.name.clone(),
                plugin: m.plugin.clone(),
                frontend: crate::frontend::resolve(m.frontend).to_string(),
                state: "pending".into(),
                mountpoint: w.config.resolve(&m.mountpoint),
                detail: "waiting for the mount it replaces to be unmounted".into(),
                ..MountStatus::default()
            });
        }
        for f in &self.failed {
            out.push(MountStatus {
                name: f.name.clone(),
                state: "failed".into(),
                mountpoint: f.mountpoint.clone(),
                detail: f.error.clone(),
                ..MountStatus::default()
            });
        }
        out
    }

    /// Re-reads the config and applies the difference. A config that does not parse or
    /// validate, or a new mount that cannot start, changes nothing at all.
    ///
    /// - a mount whose table (and plugin directories) did not change is not touched;
    /// - a removed mount drains: it serves its open files until they are closed, at most
    ///   `[host] drain_timeout`, then is unmounted;
    /// - a changed mount drains the same way, then is mounted again as the config now says;
    /// - an added mount is mounted.
    fn reload(&mut self) -> Reply {
        notify::reloading();
        let reply = self.apply_reload();
        notify::notify(&format!("READY=1\nSTATUS=serving {} mount(s)", self.live.len()));
        reply
    }

    fn apply_reload(&mut self) -> Reply {
        info!("reloading {}", self.config.path.display());
        let loaded = Config::load(&self.config.path).and_then(|mut c| match &self.config.only {
            Some((name, mountpoint)) => c.restrict(name, mountpoint.as_deref()).map(|()| c),
            None => Ok(c),
        });
        let config = match loaded {
            Ok(c) => Arc::new(c),
            Err(e) => {
                error!("reload refused, nothing changed: {e}");
                self.metrics.reloads_refused.fetch_add(1, Ordering::Relaxed);
                return Reply::failed(format!("reload refused, nothing changed: {e}"));
            }
        };
        let unchanged = |l: &Live, m: &MountSection| {
            l.section == *m && (m.plugin.contains('/') || l.plugin_dirs == config.host.plugin_dirs)
        };
        let kept: Vec<String> = self
            .live
            .iter()
            .filter(|l| l.draining.is_none() && config.mounts.iter().any(|m| m.name == l.name && unchanged(l, m)))
            .map(|l| l.name.clone())
            .collect();
        // Changed mounts whose backend can be swapped in place: (live index, config index).
        let mut swaps: Vec<(usize, usize)> = Vec::new();
        let mut remount_why: Vec<(String, String)> = Vec::new();
        for (i, l) in self.live.iter().enumerate() {
            if l.draining.is_some() || kept.contains(&l.name) {
                continue;
            }
            let Some(index) = config.mounts.iter().position(|m| m.name == l.name) else { continue };
            match swappable(&l.section, &config.mounts[index], &config.base_dir) {
                Ok(()) => swaps.push((i, index)),
                Err(why) => remount_why.push((l.name.clone(), why)),
            }
        }
        let swapping = |name: &str| swaps.iter().any(|&(i, _)| self.live[i].name == name);
        let gone: Vec<usize> = (0..self.live.len())
            .filter(|&i| {
                self.live[i].draining.is_none() && !kept.contains(&self.live[i].name) && !swapping(&self.live[i].name)
            })
            .collect();
        let new: Vec<usize> = (0..config.mounts.len())
            .filter(|&i| !kept.contains(&config.mounts[i].name) && !swapping(&config.mounts[i].name))
            .collect();

        // Open every new mount whose mountpoint is free now, before anything changes, so a
        // mount that cannot start rejects the whole reload.
        let busy = |mountpoint: &Path| self.live.iter().any(|l| l.mounted.mountpoint() == mountpoint);
        let mut registry = match enter(&config) {
            Ok(r) => r,
            Err(e) => {
                self.metrics.reloads_refused.fetch_add(1, Ordering::Relaxed);
                return Reply::failed(format!("reload refused, nothing changed: {e}"));
            }
        };
        let mut ready = Vec::new();
        let mut later = Vec::new();
        let mut later_extra = Vec::new();
        for &index in &new {
            let mountpoint = config.resolve(&config.mounts[index].mountpoint);
            if busy(&mountpoint) {
                later.push(index);
                continue;
            }
            match prepare_one(&config, &mut registry, index) {
                Ok(p) => ready.push(p),
                Err(e) => {
                    error!("reload refused, nothing changed: {e}");
                    self.metrics.reloads_refused.fetch_add(1, Ordering::Relaxed);
                    return Reply::failed(format!("reload refused, nothing changed: {e}"));
                }
            }
        }

        // The new backend of every swap is opened before anything changes too: a plugin
        // that refuses its new settings refuses the reload, and the old backend serves on
        // untouched.
        let mut swap_ready = Vec::new();
        for &(i, index) in &swaps {
            match prepare_one(&config, &mut registry, index) {
                Ok(p) => swap_ready.push((i, p)),
                Err(e) => {
                    error!(mount = %self.live[i].name, "reload refused, nothing changed (the old backend serves on): {e}");
                    self.metrics.reloads_refused.fetch_add(1, Ordering::Relaxed);
                    return Reply::failed(format!("reload refused, nothing changed: {e}"));
                }
            }
        }

        let mut lines = Vec::new();
        let mut gone = gone;
        for (i, p) in swap_ready {
            match self.swap_backend(i, &config, p) {
                Ok(line) => lines.push(line),
                Err((why, index)) => {
                    // Not swapped after all: remounted like any other change.
                    remount_why.push((self.live[i].name.clone(), why));
                    gone.push(i);
                    later_extra.push(index);
                }
            }
        }
        let timeout = config.host.drain_timeout();
        for &i in &gone {
            let l = &mut self.live[i];
            let changed = config.mounts.iter().any(|m| m.name == l.name);
            l.draining = Some(Instant::now() + timeout);
            let what = if changed { "changed: remounting" } else { "removed: unmounting" };
            match remount_why.iter().find(|(n, _)| *n == l.name) {
                Some((_, why)) => info!(
                    mount = %l.name,
                    "{what} rather than swapping its backend in place, because {why}; once its {} open file(s) are closed (at most {}s)",
                    l.mounted.open_handles(),
                    timeout.as_secs()
                ),
                None => {
                    info!(mount = %l.name, "{what} once its {} open file(s) are closed (at most {}s)", l.mounted.open_handles(), timeout.as_secs())
                }
            }
            lines.push(format!("{}: {what}", l.name));
        }
        for name in &kept {
            lines.push(format!("{name}: unchanged"));
        }
        self.failed.clear();
        // Mounts still waiting from an earlier reload are in `new` again if still wanted.
        self.waiting.clear();
        for p in ready {
            let name = config.mounts[p.index].name.clone();
            match self.start(&config, p) {
                Ok(()) => {
                    if !lines.iter().any(|l| l.starts_with(&format!("{name}: changed"))) {
                        lines.push(format!("{name}: added"));
                    }
                }
                Err(e) => {
                    error!("{e:#}");
                    lines.push(format!("{name}: failed: {e:#}"));
                }
            }
        }
        for index in later.into_iter().chain(later_extra) {
            self.waiting.push(Waiting { config: Arc::clone(&config), index });
        }
        if config.host.control_socket != self.config.host.control_socket {
            warn!("[host] control_socket changes only when plugfs restarts");
        }
        if config.host.metrics_listen != self.config.host.metrics_listen {
            warn!("[host] metrics_listen changes only when plugfs restarts");
        }
        self.config = config;
        self.metrics.reloads.fetch_add(1, Ordering::Relaxed);
        info!("reload applied");
        Reply::ok(lines.join("\n"))
    }

    /// Switches live mount `i` to the backend `p` (of `config`) under its mountpoint. On
    /// failure nothing was switched: the reason, and the config index to remount.
    fn swap_backend(&mut self, i: usize, config: &Config, p: Prepared) -> Result<String, (String, usize)> {
        let section = config.mounts[p.index].clone();
        let l = &mut self.live[i];
        let kernel = match l.mounted.kernel() {
            Ok(kernel) => kernel,
            Err(why) => return Err((why, p.index)),
        };
        let from = format!("{} {}", l.plugin, l.version);
        let caps = p.fs.mount_capabilities();
        if let Some(why) = crate::frontend::swap_refusal(section.frontend, &l.first_caps, &caps) {
            return Err((why, p.index));
        }
        let backend = Backend { fs: p.fs, label: format!("{} {}", p.plugin, p.version) };
        if let Err(e) = l.swap.swap(backend, kernel) {
            return Err((e.to_string(), p.index));
        }
        info!(
            mount = %l.name,
            "changed: backend swapped in place, {from} -> {} {} (files open and nodes looked up before keep the old \
             backend until closed and forgotten; the kernel's entries under the root were invalidated)",
            p.plugin,
            p.version,
        );
        info!("{}", p.description);
        if caps.backing_files && !l.first_caps.backing_files && section.options.passthrough {
            info!(
                mount = %l.name,
                "data path: the daemon for the swapped-in backend too; kernel passthrough is chosen when the kernel \
                 mounts, and the first backend had no backing files (a remount would use them)"
            );
        }
        self.metrics.relabel_mount(&l.stats, &p.plugin);
        self.metrics.swaps.fetch_add(1, Ordering::Relaxed);
        l.section = section;
        l.plugin_dirs = config.host.plugin_dirs.clone();
        l.plugin = p.plugin;
        l.version = p.version;
        Ok(format!("{}: changed: backend swapped in place", l.name))
    }

    fn unmount(&mut self, name: &str) -> Reply {
        let timeout = self.config.host.drain_timeout();
        let Some(l) = self.live.iter_mut().find(|l| l.name == name && l.draining.is_none()) else {
            return Reply::failed(format!("no mount named `{name}` is being served"));
        };
        l.draining = Some(Instant::now() + timeout);
        info!(mount = %name, "unmounting on request once its {} open file(s) are closed (at most {}s)", l.mounted.open_handles(), timeout.as_secs());
        Reply::ok(format!("{name}: unmounting"))
    }

    /// Finishes drains that can finish, starts the mounts that were waiting for them, and
    /// forgets mounts unmounted from outside.
    fn tick(&mut self) {
        for l in &self.live {
            if l.swap.swaps() > 0
                && let Ok(kernel) = l.mounted.kernel()
            {
                for b in l.swap.collect(kernel).released {
                    info!(mount = %l.name, "released the earlier backend {}: nothing opened or looked up before the swap is held any more", b.label);
                    // Dropping the plugin instance closes it, which may sync to a store
                    // that no longer answers: not on this thread, which serves every mount.
                    let spawned = std::thread::Builder::new().name("swap-release".into()).spawn(move || drop(b));
                    if let Err(e) = spawned {
                        warn!(mount = %l.name, "cannot start a thread to close the earlier backend ({e}); it stays open");
                    }
                }
            }
        }
        let mut i = 0;
        while i < self.live.len() {
            let l = &self.live[i];
            if l.mounted.is_finished() {
                warn!(mount = %l.name, "unmounted from outside plugfs; no longer serving it");
                let l = self.live.remove(i);
                self.watchdog.unwatch(l.mounted.mountpoint());
                self.metrics.remove_mount(&l.stats);
                continue;
            }
            let Some(deadline) = l.draining else {
                i += 1;
                continue;
            };
            let open = l.mounted.open_handles();
            if open > 0 && Instant::now() < deadline {
                i += 1;
                continue;
            }
            if open > 0 {
                warn!(mount = %l.name, "{open} file(s) still open after the drain timeout; releasing them and unmounting anyway");
            }
            let l = self.live.remove(i);
            self.metrics.remove_mount(&l.stats);
            let timeout = self.config.host.shutdown_timeout();
            shutdown(vec![l], timeout, &mut self.watchdog);
        }
        let waiting = std::mem::take(&mut self.waiting);
        for w in waiting {
            let m = &w.config.mounts[w.index];
            let mountpoint = w.config.resolve(&m.mountpoint);
            if self.live.iter().any(|l| l.mounted.mountpoint() == mountpoint) {
                self.waiting.push(w);
                continue;
            }
            let started = enter(&w.config)
                .and_then(|mut registry| prepare_one(&w.config, &mut registry, w.index))
                .map_err(|e| anyhow::anyhow!("{e}"))
                .and_then(|p| self.start(&w.config, p));
            if let Err(e) = started {
                error!(mount = %m.name, "cannot start after the reload: {e:#}");
                self.failed.push(Failed { name: m.name.clone(), mountpoint, error: format!("{e:#}") });
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The first SIGINT or SIGTERM sets `stop`, for a clean shutdown. The second one ends the
/// process at once, from the signal thread, whatever the shutdown is waiting for (a plugin
/// call that never returns, say): every mount is detached lazily first, so none is left
/// dead, and plugfs exits with status 1.
#[cfg(unix)]
fn watch_signals(
    stop: Arc<AtomicBool>,
    mountpoints: Arc<Mutex<Vec<PathBuf>>>,
    to_host: mpsc::Sender<Incoming>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut hangups = signal_hook::iterator::Signals::new([SIGHUP]).context("installing the SIGHUP handler")?;
    std::thread::Builder::new()
        .name("sighup".into())
        .spawn(move || {
            for _ in hangups.forever() {
                info!("SIGHUP: reloading the config");
                if to_host.send(Incoming { request: Request::Reload, reply: None }).is_err() {
                    break;
                }
            }
        })
        .context("starting the SIGHUP thread")?;
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if !stop.swap(true, Ordering::SeqCst) {
                    continue;
                }
                error!(signal, "second signal: exiting now, without waiting for the shutdown to finish");
                let paths: Vec<PathBuf> = lock(&mountpoints).clone();
                for path in paths.iter().rev() {
                    // Not mounted any more is fine: that mount was already shut down.
                    if crate::frontend::force_unmount(path).is_ok() {
                        warn!("detached {} lazily", path.display());
                    }
                }
                // Not `exit`: other threads are still inside plugins, and atexit handlers
                // and destructors must not run under them.
                // SAFETY: _exit ends the process at once; it has no preconditions.
                unsafe { libc::_exit(1) };
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// Raises the soft limit on open files to the hard limit. Plugins hold descriptors per
/// node and per open file (durable-io: one per node the kernel remembers), so the usual
/// soft limit of 1024 runs out on a tree of a few thousand files with `EMFILE`.
#[cfg(unix)]
fn raise_open_file_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        tracing::debug!(limit = ?limit.current, "RLIMIT_NOFILE soft limit is already the hard limit");
        return;
    }
    match setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum }) {
        Ok(()) => tracing::debug!(from = ?limit.current, to = ?limit.maximum, "raised the RLIMIT_NOFILE soft limit"),
        Err(e) => warn!(soft = ?limit.current, hard = ?limit.maximum, "cannot raise the RLIMIT_NOFILE soft limit: {e}"),
    }
}

/// Shuts the mounts down without losing anything: refuses new requests on every mount,
/// waits up to `timeout` for the ones in flight, releases through the plugin every file
/// and directory the kernel still holds open (so the plugin syncs and closes them as on
/// a last `close`), then unmounts; a mount still busy is detached lazily.
fn shutdown(live: Vec<Live>, timeout: Duration, watchdog: &mut Watchdog) {
    for l in &live {
        l.mounted.begin_shutdown();
    }
    let in_flight = || live.iter().map(|l| l.mounted.in_flight()).sum::<usize>();
    let start = Instant::now();
    let mut next_log = start;
    while in_flight() > 0 {
        let waited = start.elapsed();
        if waited >= timeout {
            warn!(
                "{} request(s) still in flight after {}s; releasing open files anyway",
                in_flight(),
                timeout.as_secs()
            );
            break;
        }
        if Instant::now() >= next_log {
            info!(
                "waiting up to {}s for {} request(s) in flight (a second signal exits at once)",
                timeout.saturating_sub(waited).as_secs(),
                in_flight()
            );
            next_log += Duration::from_secs(2);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for Live { name, mounted: m, .. } in live.into_iter().rev() {
        let mountpoint = m.mountpoint().to_path_buf();
        let (released, unmounted) = m.finish_shutdown();
        if released.released > 0 {
            info!(
                mount = %name,
                "released {} file(s) and directories still open ({} failed)",
                released.released,
                released.failed
            );
        }
        match unmounted {
            Ok(()) => info!(mount = %name, "unmounted {}", mountpoint.display()),
            // Busy (files still open): the frontend has detached it lazily, so nothing is
            // left mounted once those files are closed.
            Err(e) => warn!(mount = %name, "{}: {e}", mountpoint.display()),
        }
        watchdog.unwatch(&mountpoint);
    }
}

/// The host's watchdog, if it could be started: a `plugfs watchdog` child process that
/// lazily unmounts every mount with `auto_unmount` should this process die without
/// unmounting it. Failures to talk to it are logged, never fatal.
struct Watchdog(Option<WatchdogProcess>);

#[cfg(unix)]
type WatchdogProcess = plugfs_fuse::watchdog::Watchdog;
#[cfg(not(unix))]
type WatchdogProcess = std::convert::Infallible;

impl Watchdog {
    fn start(config: &Config) -> Watchdog {
        if !config.mounts.iter().any(|m| m.options.auto_unmount) {
            return Watchdog(None);
        }
        Watchdog(Self::spawn())
    }

    fn spawn() -> Option<WatchdogProcess> {
        #[cfg(unix)]
        {
            let spawned = std::env::current_exe().and_then(|exe| {
                let mut command = std::process::Command::new(exe);
                command.arg("watchdog");
                plugfs_fuse::watchdog::Watchdog::spawn(command)
            });
            match spawned {
                Ok(w) => {
                    tracing::debug!(pid = w.pid(), "started the watchdog");
                    Some(w)
                }
                Err(e) => {
                    warn!("cannot start the watchdog ({e}); a killed plugfs may leave its mounts behind");
                    None
                }
            }
        }
        #[cfg(not(unix))]
        None
    }

    /// Has the watchdog unmount `mountpoint` should plugfs die; starts the watchdog if
    /// none runs yet (a reload added the first mount with `auto_unmount`).
    fn watch(&mut self, mountpoint: &Path) {
        if self.0.is_none() {
            self.0 = Self::spawn();
        }
        #[cfg(unix)]
        if let Some(w) = &mut self.0
            && let Err(e) = w.watch(mountpoint)
        {
            warn!("cannot tell the watchdog about {}: {e}", mountpoint.display());
        }
        let _ = mountpoint;
    }

    fn unwatch(&mut self, mountpoint: &Path) {
        #[cfg(unix)]
        if let Some(w) = &mut self.0
            && let Err(e) = w.unwatch(mountpoint)
        {
            warn!("cannot tell the watchdog about {}: {e}", mountpoint.display());
        }
        let _ = mountpoint;
    }

    /// Everything is unmounted: let the watchdog go without doing anything.
    fn disarm(&mut self) {
        #[cfg(unix)]
        if let Some(w) = self.0.take()
            && let Err(e) = w.disarm()
        {
            warn!("stopping the watchdog: {e}");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(table: &str) -> MountSection {
        let text = format!("[[mount]]\nname = \"m\"\nmountpoint = \"mnt\"\n{table}");
        Config::parse(Path::new("/nonexistent/test.toml"), text).unwrap().mounts.remove(0)
    }

    #[test]
    fn only_a_change_of_plugin_or_its_settings_is_swapped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::create_dir(dir.path().join("b")).unwrap();
        let base = dir.path();
        let memfs = mount("plugin = \"memfs\"\n");
        let durable = |root: &str, extra: &str| {
            mount(&format!(
                "plugin = \"durable-io\"\n{extra}[mount.config]\nroot = \"{root}\"\ndurability = \"always\"\n"
            ))
        };
        assert_eq!(swappable(&memfs, &durable("a", ""), base), Ok(()));
        assert_eq!(swappable(&durable("a", ""), &durable("b", ""), base), Ok(()), "a shared non-path string is fine");
        let why = swappable(&durable("a", ""), &durable("./a", ""), base).unwrap_err();
        assert!(why.contains("both name") && why.ends_with("share an image or directory"), "{why}");
        let why = swappable(&memfs, &durable("a", "read_only = true\n"), base).unwrap_err();
        assert!(why.contains("read_only changed"), "{why}");
        let why = swappable(&memfs, &mount("plugin = \"memfs\"\n[mount.options]\nthreads = 2\n"), base).unwrap_err();
        assert!(why.contains("frontend options changed"), "{why}");
        let why = swappable(&memfs, &mount("volume = \"v\"\n"), base).unwrap_err();
        assert!(why.contains("volume"), "{why}");
    }
}
