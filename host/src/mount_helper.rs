//! `mount.plugfs`: the helper `mount(8)` runs for `mount -t plugfs CONFIG:NAME DIR` and for
//! an fstab line of type `plugfs`. It starts `plugfs mount --config CONFIG --only NAME
//! --mountpoint DIR` in the background (a session of its own, logging to a file) and
//! returns once DIR is mounted, or fails with the host's log if the host gave up.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// `mount.plugfs SOURCE DIR [-sfnv] [-o OPTIONS] [-t TYPE]`, as mount(8) calls it.
pub fn main(args: Vec<OsString>) -> ExitCode {
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mount.plugfs: {e:#}");
            // mount(8)'s "mount failure".
            ExitCode::from(32)
        }
    }
}

fn run(args: Vec<OsString>) -> anyhow::Result<()> {
    let mut positional = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        match a.to_str() {
            // Options are the config's; mount(8)'s own (rw, defaults, noauto, nofail,
            // _netdev, x-systemd.*) need nothing from plugfs.
            Some("-o") | Some("-t") => {
                it.next();
            }
            Some(flag) if flag.starts_with('-') => {}
            _ => positional.push(PathBuf::from(a)),
        }
    }
    let [source, dir] = positional.as_slice() else {
        anyhow::bail!(
            "usage: mount.plugfs CONFIG:NAME DIR [-o OPTIONS] (e.g. mount -t plugfs /etc/plugfs/a.toml:data /mnt)"
        );
    };
    let source = source.to_string_lossy();
    let Some((config, name)) = source.rsplit_once(':').filter(|(c, n)| !c.is_empty() && !n.is_empty()) else {
        anyhow::bail!("the source `{source}` must be CONFIG:NAME, a config file and the name of one of its mounts");
    };
    let log = std::env::temp_dir().join(format!("plugfs-{name}.log"));
    let log_file = std::fs::File::create(&log).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", log.display()))?;
    let exe = std::env::current_exe()?;
    let mut command = Command::new(exe);
    command
        .args(["mount", "--config", config, "--only", name, "--mountpoint"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file);
    // A session of its own, so it outlives mount(8) and the terminal.
    // SAFETY: setsid is async-signal-safe and touches nothing of the parent.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if is_mounted(dir) {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            anyhow::bail!("plugfs exited ({status}) without mounting {}:\n{text}", dir.display());
        }
        if Instant::now() >= deadline {
            anyhow::bail!("{} was not mounted after 60s; see {}", dir.display(), log.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether `dir` is a FUSE mount now.
fn is_mounted(dir: &Path) -> bool {
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts.lines().any(|l| {
        let mut f = l.split(' ');
        let (_, at, kind) = (f.next(), f.next(), f.next().unwrap_or(""));
        at.map(|a| a.replace("\\040", " ")) == Some(dir.display().to_string()) && kind.starts_with("fuse")
    })
}
