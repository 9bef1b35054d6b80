//! `plugfs`: mounts filesystems whose implementations are plugins loaded at run time.

mod config;
#[cfg(windows)]
mod console;
mod control;
mod frontend;
mod metered;
mod metrics;
#[cfg(unix)]
mod mount_helper;
mod notify;
mod registry;
mod supervisor;
mod swap;
mod volume;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::registry::Registry;

const AFTER_HELP: &str = "\
Examples:
  plugfs mount --config config/default.toml     serve every [[mount]] until Ctrl-C
  plugfs check --config /etc/plugfs/plugfs.toml validate a config without mounting
  plugfs plugins                                list plugins next to the plugfs binary
  plugfs status --config config/default.toml    what the running host serves
  plugfs reload --config config/default.toml    apply an edited config (or: kill -HUP)
  plugfs unmount --config config/default.toml demo   unmount one mount of a running host
  plugfs unmount demo/mnt                       recover a mount left by a killed host
  plugfs volume create photos --plugin fat --size 1G   a new named image

A config file has an optional [host] table and one [[mount]] table per mount:

  [host]
  plugin_dirs = [\"/usr/lib/plugfs\"]   # searched by plugin name, then plugfs's own directory
  log = \"info\"                        # used when RUST_LOG is not set
  shutdown_timeout = 10               # seconds to wait for requests in flight on SIGTERM
  drain_timeout = 30                  # seconds a removed mount serves its open files
  control_socket = \"/run/plugfs/data.sock\"   # default: beside the config, NAME.sock
  metrics_listen = \"127.0.0.1:9464\"  # Prometheus metrics at /metrics; off by default
  volumes_dir = \"/var/lib/plugfs/volumes\"  # named volumes (plugfs volume ...)

  [[mount]]
  name = \"data\"
  plugin = \"durable-io\"               # a plugin name, or a path to a library file
  mountpoint = \"/mnt/data\"
  create_mountpoint = true
  frontend = \"auto\"                   # fuse | winfsp | dokan | auto
  read_only = false
  [mount.options]                     # frontend options
  allow_other = false
  auto_unmount = true
  threads = 4
  [mount.config]                      # the plugin's own settings: see `plugfs plugins`
  root = \"/srv/data\"

  [[mount]]                           # a named volume: its plugin and image come with it
  name = \"photos\"
  volume = \"photos\"
  mountpoint = \"/mnt/photos\"

Relative paths anywhere in the file, plugin settings included, are relative to the file's
directory. Logs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) for more.
See docs/config.md for every key.";

/// Mount filesystems whose implementations are plugins, as a TOML config says.
///
/// plugfs loads each plugin (a shared library built against plugfs-plugin-api) from the
/// plugin directories, hands it its settings, and presents the result through a frontend:
/// FUSE on Linux and macOS, WinFSP or Dokan on Windows.
#[derive(Parser, Debug)]
#[command(name = "plugfs", version, about, long_about, after_long_help = AFTER_HELP, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Mount every [[mount]] of a config file and serve them in the foreground.
    ///
    /// Stays in the foreground, logging to stderr. On SIGINT (Ctrl-C) or SIGTERM it
    /// refuses new requests, waits up to [host] shutdown_timeout seconds for those in
    /// flight, releases through the plugin every file still open (so the plugin syncs it
    /// as on close), unmounts everything and exits 0; a second signal exits 1 at once. If
    /// any mount fails to start, the ones already started are unmounted and plugfs exits
    /// 1. With auto_unmount, a watchdog process unmounts if plugfs is killed.
    Mount {
        /// The config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Serve only the mount of this name (as mount.plugfs does). Its control socket is
        /// then the config's name with .NAME.sock.
        #[arg(long, value_name = "NAME")]
        only: Option<String>,
        /// With --only: mount there instead of at the config's mountpoint.
        #[arg(long, value_name = "DIR", requires = "only")]
        mountpoint: Option<PathBuf>,
    },
    /// Validate a config: parse it, load each plugin, open each backend. Mounts nothing.
    ///
    /// Prints one line per mount and exits 0 if every mount would start, 1 otherwise.
    /// Errors name the file, line, column and key.
    Check {
        /// The config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// List the plugins found: file, name, version, ABI version and capabilities.
    ///
    /// Searches the given directories (or, with --config, the config's plugin_dirs) and the
    /// directory of the plugfs executable. Files that are not loadable plugins are listed
    /// with the reason.
    Plugins {
        /// A directory to search (repeatable).
        #[arg(long, value_name = "DIR")]
        dir: Vec<PathBuf>,
        /// Take plugin directories from this config file.
        #[arg(short, long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Also print each plugin's config keys.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Unmount one mount of a running host by name, or detach a mount left by a killed host.
    ///
    /// With --config or --socket, TARGET is a mount's name: the running host stops serving
    /// it once its open files are closed (at most [host] drain_timeout seconds, then it
    /// releases them and unmounts anyway). A later reload mounts it again if the config
    /// still has it.
    ///
    /// Without them, TARGET is a mount point left behind by a plugfs that was killed
    /// ("Transport endpoint is not connected"): it is detached (fusermount3 -u -z, or
    /// umount -l as root) so the directory can be used again.
    Unmount {
        /// A mount's name (with --config or --socket), or a mount point.
        target: PathBuf,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Show every mount of a running host: plugin, version, frontend, state, open files,
    /// uptime, requests and errors.
    ///
    /// States: mounted; draining (removed or changed by a reload, serving its open files
    /// until they are closed); pending (waiting for the mount it replaces to go); failed
    /// (could not start after a reload; the reason is shown).
    Status {
        #[command(flatten)]
        control: ControlArgs,
        /// Print JSON (an object with a `mounts` array) for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Make a running host re-read its config and apply the difference (as SIGHUP does).
    ///
    /// Mounts that did not change are not touched (their open files carry on); removed
    /// ones are unmounted once their open files are closed; changed ones are remounted
    /// the same way; added ones are mounted. A config with an error is refused whole:
    /// the error (file:line:column: key) is printed, exit status 1, and nothing changes.
    Reload {
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Create, list, inspect and remove named volumes: images a plugin made, kept in
    /// [host] volumes_dir and mounted with `volume = "NAME"` in a [[mount]].
    #[command(subcommand)]
    Volume(VolumeCommand),
    /// Internal: the watchdog `plugfs mount` starts, which unmounts what the host told it
    /// about if the host dies without doing so. Reads the host's messages on stdin.
    #[command(hide = true)]
    Watchdog,
}

/// `plugfs volume ...`.
#[derive(Subcommand, Debug)]
enum VolumeCommand {
    /// Make a new volume: the plugin formats an image of SIZE bytes.
    ///
    /// Only plugins with the format capability can (`plugfs plugins` lists it). The image
    /// is NAME.img in the volumes directory, its metadata (plugin, size, created, label)
    /// NAME.toml beside it.
    Create {
        /// The volume's name: letters, digits, `.`, `_` and `-`.
        name: String,
        /// The plugin that formats and serves it (fat, wfs, ...).
        #[arg(long)]
        plugin: String,
        /// Its size: a number of bytes, or with K, M, G or T (binary units), e.g. 64M.
        #[arg(long, value_parser = volume::parse_size)]
        size: u64,
        /// A label, passed to the plugin as `label` and kept in the metadata.
        #[arg(long)]
        label: Option<String>,
        #[command(flatten)]
        place: VolumePlace,
    },
    /// List the volumes: name, plugin, size, whether mounted, label.
    List {
        #[command(flatten)]
        place: VolumePlace,
    },
    /// Show a volume's metadata and its free space as the filesystem reports it.
    Inspect {
        /// The volume's name.
        name: String,
        #[command(flatten)]
        place: VolumePlace,
    },
    /// Delete a volume's image and metadata. Refused while it is mounted.
    Rm {
        /// The volume's name.
        name: String,
        #[command(flatten)]
        place: VolumePlace,
    },
}

/// Where the volumes and plugins are.
#[derive(clap::Args, Debug)]
struct VolumePlace {
    /// Take [host] volumes_dir and plugin_dirs from this config file.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The volumes directory (default: the config's volumes_dir, else
    /// /var/lib/plugfs/volumes).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

impl VolumePlace {
    fn resolve(&self) -> anyhow::Result<(PathBuf, Registry)> {
        let config = match &self.config {
            Some(c) => Some(Config::load(c).map_err(|e| anyhow::anyhow!("{e}"))?),
            None => None,
        };
        let dir = match (&self.dir, &config) {
            (Some(d), _) => d.clone(),
            (None, Some(c)) => c.volumes_dir(),
            (None, None) => PathBuf::from(volume::DEFAULT_DIR),
        };
        let plugin_dirs: Vec<PathBuf> =
            config.map(|c| c.host.plugin_dirs.iter().map(|d| c.resolve(d)).collect()).unwrap_or_default();
        Ok((dir, Registry::new(plugin_dirs)))
    }
}

fn volume_command(command: VolumeCommand) -> anyhow::Result<ExitCode> {
    init_logging(None);
    match command {
        VolumeCommand::Create { name, plugin, size, label, place } => {
            let (dir, mut registry) = place.resolve()?;
            volume::create(&dir, &mut registry, &name, &plugin, size, label.as_deref())
        }
        VolumeCommand::List { place } => volume::list(&place.resolve()?.0),
        VolumeCommand::Inspect { name, place } => {
            let (dir, mut registry) = place.resolve()?;
            volume::inspect(&dir, &mut registry, &name)
        }
        VolumeCommand::Rm { name, place } => volume::remove(&place.resolve()?.0, &name),
    }
}

/// How a command finds the running host.
#[derive(clap::Args, Debug)]
struct ControlArgs {
    /// The config the host was started with; its [host] control_socket (or the default,
    /// the config's name with .sock beside it) is used.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The host's control socket itself.
    #[arg(long, value_name = "PATH", conflicts_with = "config")]
    socket: Option<PathBuf>,
}

impl ControlArgs {
    fn socket(&self) -> Option<PathBuf> {
        match (&self.socket, &self.config) {
            (Some(s), _) => Some(s.clone()),
            (None, Some(c)) => Some(control::socket_for_client(c)),
            (None, None) => None,
        }
    }

    fn require_socket(&self) -> anyhow::Result<PathBuf> {
        self.socket().ok_or_else(|| anyhow::anyhow!("say which host: --config FILE or --socket PATH"))
    }
}

fn main() -> ExitCode {
    // Installed (or linked) as /sbin/mount.plugfs, this binary is mount(8)'s helper.
    #[cfg(unix)]
    if std::path::Path::new(&std::env::args_os().next().unwrap_or_default())
        .file_name()
        .is_some_and(|n| n == "mount.plugfs")
    {
        return mount_helper::main(std::env::args_os().skip(1).collect());
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Mount { config, only, mountpoint } => load_config(&config).and_then(|mut c| {
            if let Some(name) = only
                && let Err(e) = c.restrict(&name, mountpoint.as_deref())
            {
                eprintln!("plugfs: {e}");
                return Ok(ExitCode::from(2));
            }
            supervisor::run(c)
        }),
        Command::Check { config } => load_config(&config).and_then(supervisor::check),
        Command::Plugins { dir, config, verbose } => list_plugins(dir, config, verbose),
        Command::Watchdog => run_watchdog(),
        Command::Volume(v) => volume_command(v),
        Command::Status { control, json } => control.require_socket().and_then(|s| status(&s, json)),
        Command::Reload { control } => control.require_socket().and_then(|s| ask(&s, &control::Request::Reload)),
        Command::Unmount { target, control } if control.socket().is_some() => {
            let name = target.to_string_lossy().into_owned();
            control.require_socket().and_then(|s| ask(&s, &control::Request::Unmount(name)))
        }
        Command::Unmount { target: mountpoint, .. } => {
            init_logging(None);
            frontend::force_unmount(&mountpoint)
                .map(|()| {
                    println!("unmounted {}", mountpoint.display());
                    ExitCode::SUCCESS
                })
                .map_err(|e| anyhow::anyhow!("cannot unmount {}: {e}", mountpoint.display()))
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("plugfs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Sends `request` to the host and prints its answer; exit status 1 if it failed.
fn ask(socket: &std::path::Path, request: &control::Request) -> anyhow::Result<ExitCode> {
    let reply = control::call(socket, request)?;
    if reply.ok {
        if !reply.message.is_empty() {
            println!("{}", reply.message);
        }
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("plugfs: {}", reply.message);
        Ok(ExitCode::FAILURE)
    }
}

/// `plugfs status`.
fn status(socket: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    let reply = control::call(socket, &control::Request::Status)?;
    if !reply.ok {
        anyhow::bail!("{}", reply.message);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "mounts": reply.mounts }))?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16} {:<12} {:<10} {:<8} {:<9} {:>5} {:>9} {:>9} {:>7}  MOUNTPOINT",
        "NAME", "PLUGIN", "VERSION", "FRONTEND", "STATE", "OPEN", "UPTIME", "REQUESTS", "ERRORS"
    );
    for m in &reply.mounts {
        println!(
            "{:<16} {:<12} {:<10} {:<8} {:<9} {:>5} {:>8}s {:>9} {:>7}  {}",
            m.name,
            m.plugin,
            m.version,
            m.frontend,
            m.state,
            m.open_handles,
            m.uptime_secs,
            m.requests,
            m.errors,
            m.mountpoint.display()
        );
        if !m.detail.is_empty() {
            println!("  {}", m.detail);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_watchdog() -> anyhow::Result<ExitCode> {
    init_logging(None);
    #[cfg(unix)]
    {
        plugfs_fuse::watchdog::serve(std::io::stdin().lock())?;
        Ok(ExitCode::SUCCESS)
    }
    #[cfg(not(unix))]
    anyhow::bail!("the watchdog is only needed for FUSE mounts")
}

/// Loads the config and sets up logging from it. A config error exits with status 2.
fn load_config(path: &std::path::Path) -> anyhow::Result<Config> {
    match Config::load(path) {
        Ok(c) => {
            init_logging(c.host.log.as_deref());
            Ok(c)
        }
        Err(e) => {
            eprintln!("plugfs: {e}");
            std::process::exit(2);
        }
    }
}

/// Logs go to stderr; `RUST_LOG` wins over the config's `log`, which wins over `info`.
fn init_logging(config_filter: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| config_filter.map(str::to_string))
        .unwrap_or_else(|| "info".into());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("plugfs: ignoring log filter `{filter}`: {e}");
        EnvFilter::new("info")
    });
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

fn list_plugins(dirs: Vec<PathBuf>, config: Option<PathBuf>, verbose: bool) -> anyhow::Result<ExitCode> {
    init_logging(None);
    let mut search = dirs;
    if let Some(path) = config {
        let c = Config::load(&path)?;
        search.extend(c.host.plugin_dirs.iter().map(|d| c.resolve(d)));
    }
    let mut registry = Registry::new(search);
    let found = registry.scan();
    println!("searched: {}", registry.dirs().iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "));
    if found.is_empty() {
        println!("no plugin libraries found");
        return Ok(ExitCode::SUCCESS);
    }
    for (path, result) in found {
        match result {
            Ok(lib) => {
                let i = lib.info();
                println!("{}", path.display());
                println!("  name:         {}", i.name);
                println!("  version:      {}", i.version);
                println!("  ABI:          {}", i.abi);
                println!("  description:  {}", i.description);
                println!("  capabilities: {}", supervisor::describe_capabilities(&i.capabilities));
                if verbose {
                    println!("  config:");
                    for line in i.config_help.lines() {
                        println!("    {line}");
                    }
                }
            }
            Err(e) => println!("{}\n  not loadable: {e}", path.display()),
        }
    }
    Ok(ExitCode::SUCCESS)
}
