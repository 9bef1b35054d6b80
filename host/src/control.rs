//! The control socket: how `plugfs status`, `plugfs reload` and `plugfs unmount NAME`
//! reach a running host. A Unix socket (mode 0600) that takes one request line and answers
//! with one JSON document; no network listener is ever opened for control.
//!
//! On Windows it is an AF_UNIX socket too (Windows 10 1803 and later), through
//! `uds_windows`, which has std's API. There is no mode to set: the socket file takes the
//! access list of its directory, as every file created there does.

use std::io::{BufRead, BufReader, Read, Write};
#[cfg(unix)]
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

#[cfg(windows)]
use uds_windows::{UnixListener, UnixStream};

use crate::config::Config;

/// What a client asks the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Every mount and its state.
    Status,
    /// Re-read the config and apply the difference.
    Reload,
    /// Unmount the mount of this name.
    Unmount(String),
}

impl Request {
    fn to_line(&self) -> String {
        match self {
            Request::Status => "status".into(),
            Request::Reload => "reload".into(),
            Request::Unmount(name) => format!("unmount {name}"),
        }
    }

    fn parse(line: &str) -> Option<Request> {
        let line = line.trim_end_matches(['\r', '\n']);
        match line.split_once(' ') {
            None if line == "status" => Some(Request::Status),
            None if line == "reload" => Some(Request::Reload),
            Some(("unmount", name)) if !name.is_empty() => Some(Request::Unmount(name.into())),
            _ => None,
        }
    }
}

/// The host's answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Reply {
    /// Whether the request succeeded.
    pub ok: bool,
    /// What happened, for people (one or more lines).
    pub message: String,
    /// For `status`: every mount.
    #[serde(default)]
    pub mounts: Vec<MountStatus>,
}

impl Reply {
    /// A successful reply with `message`.
    pub fn ok(message: impl Into<String>) -> Reply {
        Reply { ok: true, message: message.into(), mounts: Vec::new() }
    }

    /// A failed reply with `message`.
    pub fn failed(message: impl Into<String>) -> Reply {
        Reply { ok: false, message: message.into(), mounts: Vec::new() }
    }
}

/// One mount as `plugfs status` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct MountStatus {
    /// The mount's name in the config.
    pub name: String,
    /// The plugin's name.
    pub plugin: String,
    /// The plugin's version.
    pub version: String,
    /// The frontend serving it (`fuse`, ...).
    pub frontend: String,
    /// `mounted`, `draining` (removed or changed; waiting for its open files to be
    /// closed), `pending` (waiting for its mountpoint to be free) or `failed`.
    pub state: String,
    /// Where it is mounted.
    pub mountpoint: PathBuf,
    /// Files and directories open on it.
    pub open_handles: usize,
    /// Seconds since it was mounted.
    pub uptime_secs: u64,
    /// Requests the plugin answered.
    pub requests: u64,
    /// Requests the plugin answered with an error.
    pub errors: u64,
    /// Backends serving it: 1; more while earlier ones still serve what was opened or
    /// looked up before a backend swap; 0 when not mounted.
    #[serde(default)]
    pub backends: usize,
    /// Backend swaps under its live mountpoint since it was mounted.
    #[serde(default)]
    pub swaps: u64,
    /// Why it failed or what it waits for, if anything.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// A request from a client, with the way back to it (none for a SIGHUP).
pub struct Incoming {
    /// What is asked.
    pub request: Request,
    /// Where the answer goes.
    pub reply: Option<mpsc::Sender<Reply>>,
}

/// The socket of the host serving `config`: `[host] control_socket`, or by default the
/// config file's name with `.sock` for `.toml`, beside it.
pub fn socket_path(config: &Config) -> PathBuf {
    let file = config.base_dir.join(config.path.file_name().unwrap_or_default());
    match (&config.host.control_socket, &config.only) {
        // A host serving one mount of a config (mount.plugfs) has its own socket.
        (_, Some((name, _))) => file.with_extension(format!("{name}.sock")),
        (Some(p), None) => config.resolve(p),
        (None, None) => default_socket(&file),
    }
}

fn default_socket(config_file: &Path) -> PathBuf {
    config_file.with_extension("sock")
}

/// The socket of the host serving the config file `path`, for a client: read without
/// validating the rest of the file (the host may be running an older version of it).
pub fn socket_for_client(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let configured = std::fs::read_to_string(&abs).ok().and_then(|text| {
        let table: toml::Table = toml::from_str(&text).ok()?;
        let socket = table.get("host")?.get("control_socket")?.as_str()?.to_string();
        Some(PathBuf::from(socket))
    });
    match configured {
        Some(p) if p.is_absolute() => p,
        Some(p) => abs.parent().unwrap_or(Path::new("/")).join(p),
        None => default_socket(&abs),
    }
}

/// The listening socket; dropping it removes the socket file.
pub struct Server {
    path: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Listens on `path` (mode 0600) and forwards every request to `to_host`. A stale socket
/// left by a killed host is replaced; a live one (another host serving the same config)
/// is an error.
pub fn serve(path: &Path, to_host: mpsc::Sender<Incoming>) -> anyhow::Result<Server> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            anyhow::bail!("{} is in use: another plugfs is serving this config", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
    }
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        if let Err(e) = answer(stream, &to_host) {
                            debug!("control connection: {e}");
                        }
                    }
                    Err(e) => warn!("control socket: {e}"),
                }
            }
        })
        .context("starting the control thread")?;
    Ok(Server { path: path.to_path_buf() })
}

fn answer(stream: UnixStream, to_host: &mpsc::Sender<Incoming>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = String::new();
    BufReader::new(stream.try_clone()?.take(4096)).read_line(&mut line)?;
    let reply = match Request::parse(&line) {
        None => Reply::failed(format!("unknown request {:?}", line.trim())),
        Some(request) => {
            let (tx, rx) = mpsc::channel();
            if to_host.send(Incoming { request, reply: Some(tx) }).is_err() {
                Reply::failed("the host is shutting down")
            } else {
                rx.recv().unwrap_or_else(|_| Reply::failed("the host is shutting down"))
            }
        }
    };
    let mut stream = stream;
    let json = serde_json::to_string(&reply).map_err(std::io::Error::other)?;
    stream.write_all(json.as_bytes())?;
    stream.write_all(b"\n")
}

/// Sends `request` to the host listening on `socket` and returns its reply.
pub fn call(socket: &Path, request: &Request) -> anyhow::Result<Reply> {
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!("cannot reach a running plugfs at {} (is `plugfs mount` running with this config?)", socket.display())
    })?;
    stream.write_all(format!("{}\n", request.to_line()).as_bytes())?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut text = String::new();
    stream.read_to_string(&mut text).with_context(|| format!("reading the answer from {}", socket.display()))?;
    serde_json::from_str(&text).with_context(|| format!("an answer plugfs does not understand: {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_through_their_line() {
        for r in [Request::Status, Request::Reload, Request::Unmount("data".into())] {
            assert_eq!(Request::parse(&format!("{}\n", r.to_line())), Some(r));
        }
        assert_eq!(Request::parse("unmount \n"), None);
        assert_eq!(Request::parse("format /"), None);
    }

    #[test]
    fn the_client_finds_the_socket_the_config_names_or_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("a.toml");
        std::fs::write(&config, "[host]\ncontrol_socket = \"run/x.sock\"\n").unwrap();
        assert_eq!(socket_for_client(&config), dir.path().join("run/x.sock"));
        std::fs::write(&config, "[[mount]\nbroken").unwrap();
        assert_eq!(socket_for_client(&config), dir.path().join("a.sock"));
    }
}
