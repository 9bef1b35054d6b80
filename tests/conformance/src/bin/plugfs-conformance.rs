//! `plugfs-conformance`: run the conformance suite against a plugin library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use plugfs_plugin_api::host::PluginLibrary;

/// Check a plugfs plugin against POSIX semantics.
///
/// Loads the plugin as plugfs does, opens it with the given config, and runs every check
/// its declared capabilities call for: directly through the plugin API, and through a real
/// FUSE mount, where the permission checks run as an unprivileged user. Needs root for the
/// mount and the user switch.
#[derive(Parser, Debug)]
#[command(name = "plugfs-conformance", version, about, long_about)]
struct Cli {
    /// The plugin library (.so).
    #[arg(long, value_name = "FILE", required_unless_present_any = ["permission_checks_as_user", "mounted"])]
    plugin: Option<PathBuf>,
    /// The plugin's config table as TOML text, e.g. 'root = "/tmp/x"'.
    #[arg(long, default_value = "")]
    config: String,
    /// Read the plugin's config table from a file instead.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    config_file: Option<PathBuf>,
    /// How to reach the plugin.
    #[arg(long, value_enum, default_value_t = Mode::Both)]
    mode: Mode,
    /// Check an existing mount (for example one made by `plugfs mount`) instead of mounting;
    /// --plugin is then only read for its capabilities.
    #[arg(long, value_name = "DIR")]
    mounted: Option<PathBuf>,
    /// The unprivileged user for the permission checks, as UID:GID.
    #[arg(long, default_value = "65534:65534", value_parser = parse_user)]
    user: (u32, u32),
    /// Internal: run the permission checks in this mount as the current user.
    #[arg(long, value_name = "DIR", hide = true)]
    permission_checks_as_user: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Direct,
    Fuse,
    Both,
}

fn parse_user(s: &str) -> Result<(u32, u32), String> {
    let (u, g) = s.split_once(':').ok_or("expected UID:GID")?;
    Ok((u.parse().map_err(|_| "bad UID")?, g.parse().map_err(|_| "bad GID")?))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(dir) = &cli.permission_checks_as_user {
        return match plugfs_conformance::permissions::run_as_user(dir) {
            Ok(outcomes) => {
                print!("{outcomes}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
    let config = match &cli.config_file {
        Some(f) => match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("plugfs-conformance: {}: {e}", f.display());
                return ExitCode::from(2);
            }
        },
        None => cli.config.clone(),
    };
    let mut reports = Vec::new();
    if let Some(dir) = &cli.mounted {
        let caps = match &cli.plugin {
            Some(p) => match PluginLibrary::load(p) {
                Ok(lib) => lib.info().capabilities,
                Err(e) => {
                    eprintln!("plugfs-conformance: {e}");
                    return ExitCode::from(2);
                }
            },
            None => plugfs_plugin_api::Capabilities::POSIX,
        };
        reports.push(Ok(plugfs_conformance::run_mounted(dir, &caps, Some(cli.user))));
    } else {
        let Some(plugin) = cli.plugin.as_deref() else { return ExitCode::from(2) };
        if cli.mode != Mode::Fuse {
            reports.push(plugfs_conformance::run_direct(plugin, &config));
        }
        if cli.mode != Mode::Direct {
            let dir = match tempfile::tempdir() {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("plugfs-conformance: temporary mountpoint: {e}");
                    return ExitCode::FAILURE;
                }
            };
            // The unprivileged user must be able to reach the mountpoint.
            let _ = std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755));
            reports.push(plugfs_conformance::mount_and_run(plugin, &config, dir.path(), Some(cli.user)));
        }
    }
    let mut ok = true;
    for r in reports {
        match r {
            Ok(report) => {
                println!("{}", report.summary());
                ok &= report.ok();
            }
            Err(e) => {
                println!("error: {e}");
                ok = false;
            }
        }
    }
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
