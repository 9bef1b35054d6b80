//! Support for the end-to-end tests: finding the plugin libraries and binaries that
//! `cargo build --workspace` produced.
//!
//! The tests load plugins the way the host does, from built shared libraries, so the
//! workspace must be built before they run; `scripts/test.sh` does both.

use std::path::{Path, PathBuf};

pub mod moto;

pub use plugfs_conformance::is_fuse_mount;

/// The cargo output directory these tests were built into (`target/debug` or similar).
pub fn target_dir() -> PathBuf {
    // The test binary lives in `<target>/<profile>/deps/`.
    let exe = std::env::current_exe().expect("path of the test binary");
    exe.parent().and_then(Path::parent).expect("test binary is inside <target>/<profile>/deps").to_path_buf()
}

/// Where the fixture plugins (examples of this crate) are built.
pub fn fixtures_dir() -> PathBuf {
    target_dir().join("examples")
}

/// The built shared library of workspace crate `crate_name` (dashes or underscores), or of
/// a fixture plugin (`plugfs-fixture-*`, built into [`fixtures_dir`]). Panics with the fix
/// when it has not been built.
pub fn plugin_library(crate_name: &str) -> PathBuf {
    let file =
        format!("{}{}{}", std::env::consts::DLL_PREFIX, crate_name.replace('-', "_"), std::env::consts::DLL_SUFFIX);
    let dir = if crate_name.starts_with("plugfs-fixture") { fixtures_dir() } else { target_dir() };
    let path = dir.join(file);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace and the fixtures first (`cargo build --workspace --all-targets`, or \
         run scripts/test.sh)",
        path.display()
    );
    path
}

/// A built binary of this workspace, e.g. `plugfs`.
pub fn binary(name: &str) -> PathBuf {
    let path = target_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} is missing: build the workspace first (`cargo build --workspace`, or run scripts/test.sh)",
        path.display()
    );
    path
}

/// A `plugfs mount` running as a child process. Dropping it stops it (SIGTERM, then
/// SIGKILL) and detaches anything it left mounted, so a failing test leaves no mounts.
pub struct Host {
    child: Option<std::process::Child>,
    mountpoints: Vec<PathBuf>,
    stderr_path: PathBuf,
}

impl Host {
    /// Starts `plugfs mount --config config` with stderr going to a file, and waits until
    /// every mountpoint in `mountpoints` is a FUSE mount.
    pub fn start(config: &Path, mountpoints: &[&Path]) -> Host {
        Host::start_with(config, mountpoints, |_| {})
    }

    /// [`Host::start`], with `customize` applied to the command first (environment,
    /// resource limits through `pre_exec`, ...).
    pub fn start_with(
        config: &Path,
        mountpoints: &[&Path],
        customize: impl FnOnce(&mut std::process::Command),
    ) -> Host {
        let stderr_path = config.with_extension("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr log file");
        let mut command = std::process::Command::new(binary("plugfs"));
        command.args(["mount", "--config"]).arg(config).env("RUST_LOG", "info").stderr(stderr);
        customize(&mut command);
        let child = command.spawn().expect("start plugfs");
        let host = Host {
            child: Some(child),
            mountpoints: mountpoints.iter().map(|p| p.to_path_buf()).collect(),
            stderr_path,
        };
        for m in mountpoints {
            if !wait_until(std::time::Duration::from_secs(20), || is_fuse_mount(m)) {
                panic!("{} was not mounted in time; plugfs said:\n{}", m.display(), host.stderr());
            }
        }
        host
    }

    /// The child's pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Everything the host logged so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends `signal` and waits for the exit status (None if it did not exit in 20 s).
    pub fn signal_and_wait(&mut self, signal: i32) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        unsafe { libc::kill(child.id() as i32, signal) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    /// Waits up to `timeout` for the host to exit, without signalling it, and returns its
    /// exit status (None if it is still running).
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        None
    }

    /// Whether the host process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal_and_wait(libc::SIGTERM);
        }
        for m in &self.mountpoints {
            if is_fuse_mount(m) || std::fs::metadata(m).is_err() {
                let _ = std::process::Command::new("fusermount3").args(["-u", "-z"]).arg(m).status();
            }
        }
    }
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Runs the `plugfs` binary with `args` and returns (exit code, stdout, stderr).
pub fn plugfs(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(binary("plugfs")).args(args).output().expect("run plugfs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// durable-io served through the FUSE frontend inside the test process (no `plugfs`
/// binary), over a fresh temporary directory: `data/` is the backing root and `mnt/` the
/// mountpoint, reachable by the conformance suite's unprivileged user. Unmounts when
/// dropped.
pub struct DurableMount {
    mount: Option<plugfs_fuse::FuseMount>,
    dir: tempfile::TempDir,
    lib: plugfs_plugin_api::host::PluginLibrary,
}

impl DurableMount {
    /// Mounts durable-io with `config_lines` (settings beside `root`, one per line) and the
    /// frontend's `passthrough` option.
    pub fn new(config_lines: &str, passthrough: bool) -> DurableMount {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let (data, mnt) = (dir.path().join("data"), dir.path().join("mnt"));
        std::fs::create_dir(&data).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        let lib = plugfs_plugin_api::host::PluginLibrary::load(&plugin_library("plugfs-durable-io")).unwrap();
        let config = format!("root = {:?}\n{config_lines}\n", data.to_str().unwrap());
        let fs = lib.open(&config, &plugfs_plugin_api::MountOptions::default()).unwrap();
        let options = plugfs_fuse::FuseOptions { allow_other: true, passthrough, ..Default::default() };
        let mount = plugfs_fuse::mount(std::sync::Arc::new(fs), &mnt, &options).unwrap();
        DurableMount { mount: Some(mount), dir, lib }
    }

    /// `rel` under the mountpoint.
    pub fn mnt(&self, rel: &str) -> PathBuf {
        self.dir.path().join("mnt").join(rel)
    }

    /// `rel` under the backing directory.
    pub fn data(&self, rel: &str) -> PathBuf {
        self.dir.path().join("data").join(rel)
    }

    /// The plugin library it was loaded from (its info and capabilities).
    pub fn library(&self) -> &plugfs_plugin_api::host::PluginLibrary {
        &self.lib
    }

    /// The frontend's mount (request counters, open handles).
    pub fn mount(&self) -> &plugfs_fuse::FuseMount {
        self.mount.as_ref().unwrap()
    }

    /// Waits for the kernel's asynchronous releases to reach the frontend.
    pub fn wait_released(&self) {
        let released = wait_until(std::time::Duration::from_secs(10), || self.mount().open_handles() == 0);
        assert!(released, "{} handle(s) left open", self.mount().open_handles());
    }
}

impl Drop for DurableMount {
    fn drop(&mut self) {
        if let Some(m) = self.mount.take() {
            let _ = m.unmount();
        }
    }
}
