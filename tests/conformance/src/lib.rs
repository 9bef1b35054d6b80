//! # plugfs conformance suite
//!
//! POSIX-semantics checks for any plugfs plugin, chosen by the capabilities it declares,
//! run two ways:
//!
//! - **directly**, through the host's loader ([`run_direct`]): the plugin library is
//!   loaded as `plugfs` loads it and called without a kernel in the loop;
//! - **through a mount** ([`run_mounted`]): real system calls on a directory where the
//!   plugin is mounted (by [`mount_and_run`], or by a running `plugfs mount`), followed by
//!   permission checks made as an unprivileged user ([`permission_checks`]).
//!
//! Pointing it at a new plugin takes one call, or one command:
//!
//! ```text
//! plugfs-conformance --plugin target/debug/libplugfs_memfs.so --config 'max_bytes = 1000000000'
//! ```

pub mod checks;
pub mod client;
pub mod permissions;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plugfs_plugin_api::host::PluginLibrary;
use plugfs_plugin_api::{Capabilities, FileSystem, MountOptions, Request};

pub use crate::client::{Client, DirectClient, MountClient};

/// What one run found.
#[derive(Debug, Default)]
pub struct Report {
    /// How the filesystem was reached.
    pub via: String,
    /// Checks that passed.
    pub passed: Vec<&'static str>,
    /// Checks that failed, with why.
    pub failed: Vec<(&'static str, String)>,
    /// Checks left out because the plugin does not declare what they need.
    pub skipped: Vec<&'static str>,
}

impl Report {
    /// Whether every check that ran passed (and at least one ran).
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && !self.passed.is_empty()
    }

    /// A readable summary: one line per failure, then the counts.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        for (name, why) in &self.failed {
            s.push_str(&format!("FAIL {name} ({}): {why}\n", self.via));
        }
        s.push_str(&format!(
            "{} passed, {} failed, {} skipped ({})",
            self.passed.len(),
            self.failed.len(),
            self.skipped.len(),
            self.via
        ));
        s
    }
}

/// Runs every check that `caps` calls for through `client`, each in its own directory
/// `conformance-<name>` under the root (removed afterwards where it can be).
pub fn run_checks(client: &dyn Client, caps: &Capabilities) -> Report {
    let mut report = Report { via: client.describe(), ..Report::default() };
    for check in checks::all() {
        if !(check.applies)(caps) {
            report.skipped.push(check.name);
            continue;
        }
        let dir = format!("conformance-{}", check.name);
        if caps.writable
            && let Err(e) = client.mkdir(&dir, 0o755)
        {
            report.failed.push((check.name, format!("cannot make its directory {dir}: {e:?}")));
            continue;
        }
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (check.run)(client, &dir, caps)));
        match outcome {
            Ok(Ok(())) => report.passed.push(check.name),
            Ok(Err(why)) => report.failed.push((check.name, why)),
            Err(_) => report.failed.push((check.name, "the check panicked".into())),
        }
        if caps.writable {
            remove_tree(client, &dir);
        }
    }
    report
}

/// Best-effort recursive removal, so a run leaves the filesystem as it found it.
fn remove_tree(client: &dyn Client, dir: &str) {
    if let Ok(entries) = client.readdir(dir) {
        for (name, kind) in entries {
            if name == b"." || name == b".." {
                continue;
            }
            let path = format!("{dir}/{}", String::from_utf8_lossy(&name));
            if kind == plugfs_plugin_api::FileKind::Directory {
                remove_tree(client, &path);
            } else {
                let _ = client.unlink(&path);
            }
        }
    }
    let _ = client.rmdir(dir);
}

/// Loads the plugin at `library`, opens it with `config` (TOML text) and runs the checks
/// directly through the plugin API, as root.
pub fn run_direct(library: &Path, config: &str) -> Result<Report, String> {
    let lib = PluginLibrary::load(library).map_err(|e| e.to_string())?;
    let caps = lib.info().capabilities;
    let fs = lib.open(config, &MountOptions::default()).map_err(|e| e.to_string())?;
    let fs: Arc<dyn FileSystem> = Arc::new(fs);
    let client = DirectClient::new(fs, Request { uid: 0, gid: 0, pid: std::process::id() });
    Ok(run_checks(&client, &caps))
}

/// Runs the checks through the filesystem mounted at `mountpoint`, which a plugin with
/// capabilities `caps` serves; then, if `unprivileged` names a user and the plugin keeps
/// permissions, the permission checks as that user (see [`permission_checks`]).
pub fn run_mounted(mountpoint: &Path, caps: &Capabilities, unprivileged: Option<(u32, u32)>) -> Report {
    let client = MountClient::new(mountpoint);
    let mut report = run_checks(&client, caps);
    if let Some((uid, gid)) = unprivileged {
        if caps.writable && caps.permissions {
            match permission_checks(mountpoint, uid, gid) {
                Ok(()) => report.passed.push("permissions_are_enforced_for_an_unprivileged_user"),
                Err(why) => report.failed.push(("permissions_are_enforced_for_an_unprivileged_user", why)),
            }
        } else {
            report.skipped.push("permissions_are_enforced_for_an_unprivileged_user");
        }
    }
    report
}

/// Mounts the plugin at `library` through the FUSE frontend (with `allow_other`, so the
/// unprivileged user may enter), runs [`run_mounted`], and unmounts.
pub fn mount_and_run(
    library: &Path,
    config: &str,
    mountpoint: &Path,
    unprivileged: Option<(u32, u32)>,
) -> Result<Report, String> {
    let lib = PluginLibrary::load(library).map_err(|e| e.to_string())?;
    let caps = lib.info().capabilities;
    let fs = lib.open(config, &MountOptions::default()).map_err(|e| e.to_string())?;
    let options = plugfs_fuse::FuseOptions {
        allow_other: true,
        fsname: format!("conformance:{}", lib.info().name),
        ..plugfs_fuse::FuseOptions::default()
    };
    let mount = plugfs_fuse::mount(Arc::new(fs), mountpoint, &options).map_err(|e| format!("mount: {e}"))?;
    let report = run_mounted(mountpoint, &caps, unprivileged);
    mount.unmount().map_err(|e| format!("unmount: {e}"))?;
    Ok(report)
}

/// The permission checks, made by a child process running as `uid`:`gid` against the
/// mount at `mountpoint`. Needs root (to set up files owned by root and to switch user).
pub fn permission_checks(mountpoint: &Path, uid: u32, gid: u32) -> Result<(), String> {
    permissions::setup(mountpoint).map_err(|e| format!("setting up as root: {e}"))?;
    let exe = permissions::helper_binary()?;
    use std::os::unix::process::CommandExt;
    let out = std::process::Command::new(&exe)
        .arg("--permission-checks-as-user")
        .arg(mountpoint)
        .uid(uid)
        .gid(gid)
        .output()
        .map_err(|e| format!("running {} as {uid}:{gid}: {e}", exe.display()))?;
    let result = if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "as {uid}:{gid}: {}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    };
    permissions::cleanup(mountpoint);
    result
}

/// Waits until `path` is a FUSE mount (or `timeout` passes).
pub fn wait_for_mount(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if is_fuse_mount(path) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Whether `path` is the root of a FUSE mount.
pub fn is_fuse_mount(path: &Path) -> bool {
    const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
    let Ok(c) = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str())) else { return false };
    let mut s: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut s) == 0 && s.f_type as i64 == FUSE_SUPER_MAGIC }
}
