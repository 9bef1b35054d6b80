//! Starting, watching and stopping the mounts of one config file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use plugfs_plugin_api::host::LoadedFs;
use plugfs_plugin_api::{Capabilities, MountOptions};
use tracing::{debug, error, info, warn};

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

/// `plugfs mount`: start every mount, serve until SIGINT/SIGTERM, then shut down without
/// losing anything (see [`shutdown`]). A second signal exits at once.
pub fn run(config: Config) -> anyhow::Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    let mountpoints: Arc<Mutex<Vec<PathBuf>>> = Arc::default();
    #[cfg(unix)]
    watch_signals(Arc::clone(&stop), Arc::clone(&mountpoints))?;
    #[cfg(unix)]
    raise_open_file_limit();

    let prepared = match prepare(&config) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("plugfs: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut watchdog = Watchdog::start(&config);
    let mut live: Vec<(String, Mounted)> = Vec::new();
    for p in prepared {
        let section = &config.mounts[p.index];
        if section.options.auto_unmount {
            watchdog.watch(&p.mountpoint);
        }
        lock(&mountpoints).push(p.mountpoint.clone());
        match Mounted::start(p.fs, &p.mountpoint, section) {
            Ok(m) => {
                info!("{}", p.description);
                live.push((section.name.clone(), m));
            }
            Err(e) => {
                error!(mount = %section.name, "cannot mount at {}: {e:#}", p.mountpoint.display());
                watchdog.unwatch(&p.mountpoint);
                shutdown(live, config.host.shutdown_timeout(), &mut watchdog);
                watchdog.disarm();
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
                watchdog.unwatch(m.mountpoint());
            }
            !done
        });
        if live.is_empty() {
            info!("no mounts left; exiting");
            watchdog.disarm();
            return Ok(ExitCode::SUCCESS);
        }
    }
    info!("signal received; shutting down (a second signal exits at once)");
    shutdown(live, config.host.shutdown_timeout(), &mut watchdog);
    watchdog.disarm();
    Ok(ExitCode::SUCCESS)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The first SIGINT or SIGTERM sets `stop`, for a clean shutdown. The second one ends the
/// process at once, from the signal thread, whatever the shutdown is waiting for (a plugin
/// call that never returns, say): every mount is detached lazily first, so none is left
/// dead, and plugfs exits with status 1.
#[cfg(unix)]
fn watch_signals(stop: Arc<AtomicBool>, mountpoints: Arc<Mutex<Vec<PathBuf>>>) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
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
        debug!(limit = ?limit.current, "RLIMIT_NOFILE soft limit is already the hard limit");
        return;
    }
    match setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum }) {
        Ok(()) => debug!(from = ?limit.current, to = ?limit.maximum, "raised the RLIMIT_NOFILE soft limit"),
        Err(e) => warn!(soft = ?limit.current, hard = ?limit.maximum, "cannot raise the RLIMIT_NOFILE soft limit: {e}"),
    }
}

/// Shuts the mounts down without losing anything: refuses new requests on every mount,
/// waits up to `timeout` for the ones in flight, releases through the plugin every file
/// and directory the kernel still holds open (so the plugin syncs and closes them as on
/// a last `close`), then unmounts; a mount still busy is detached lazily.
fn shutdown(live: Vec<(String, Mounted)>, timeout: Duration, watchdog: &mut Watchdog) {
    for (_, m) in &live {
        m.begin_shutdown();
    }
    let in_flight = || live.iter().map(|(_, m)| m.in_flight()).sum::<usize>();
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
    for (name, m) in live.into_iter().rev() {
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
        #[cfg(unix)]
        {
            let spawned = std::env::current_exe().and_then(|exe| {
                let mut command = std::process::Command::new(exe);
                command.arg("watchdog");
                plugfs_fuse::watchdog::Watchdog::spawn(command)
            });
            match spawned {
                Ok(w) => {
                    debug!(pid = w.pid(), "started the watchdog");
                    Watchdog(Some(w))
                }
                Err(e) => {
                    warn!("cannot start the watchdog ({e}); a killed plugfs may leave its mounts behind");
                    Watchdog(None)
                }
            }
        }
        #[cfg(not(unix))]
        Watchdog(None)
    }

    fn watch(&mut self, mountpoint: &Path) {
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
