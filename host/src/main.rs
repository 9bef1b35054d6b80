//! `plugfs`: mounts filesystems whose implementations are plugins loaded at run time.

mod config;
mod frontend;
mod registry;
mod supervisor;

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
  plugfs unmount demo/mnt                       recover a mount left by a killed host

A config file has an optional [host] table and one [[mount]] table per mount:

  [host]
  plugin_dirs = [\"/usr/lib/plugfs\"]   # searched by plugin name, then plugfs's own directory
  log = \"info\"                        # used when RUST_LOG is not set
  shutdown_timeout = 10               # seconds to wait for requests in flight on SIGTERM

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
    /// Detach a mount left behind by a plugfs that was killed.
    ///
    /// A killed host can leave its mount point answering "Transport endpoint is not
    /// connected". This detaches it (fusermount3 -u -z, or umount -l as root) so the
    /// directory can be used again.
    Unmount {
        /// The mount point.
        mountpoint: PathBuf,
    },
    /// Internal: the watchdog `plugfs mount` starts, which unmounts what the host told it
    /// about if the host dies without doing so. Reads the host's messages on stdin.
    #[command(hide = true)]
    Watchdog,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Mount { config } => load_config(&config).and_then(supervisor::run),
        Command::Check { config } => load_config(&config).and_then(supervisor::check),
        Command::Plugins { dir, config, verbose } => list_plugins(dir, config, verbose),
        Command::Watchdog => run_watchdog(),
        Command::Unmount { mountpoint } => {
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
