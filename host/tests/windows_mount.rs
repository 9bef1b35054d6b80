//! The plugfs binary on Windows, end to end: a config mounting memfs (the plugin library
//! built beside the binary) through each Windows frontend this build has, a Windows
//! program's file operations through it, then `plugfs status` and `plugfs unmount NAME`
//! over the control socket, after which the host exits 0 by itself.
//!
//! Runs on Windows with WinFSP and Dokan installed (.github/workflows/windows.yml builds
//! `plugfs-memfs` first); from Linux it is only type-checked (scripts/check-windows.sh).

#![cfg(windows)]

#[path = "../../frontends/windows-core/tests/common/windows_scenario.rs"]
mod scenario;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Where cargo put the binary and the plugin libraries (`target/<profile>`).
fn build_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_plugfs")).parent().unwrap().to_path_buf()
}

fn plugfs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_plugfs")).args(args).output().unwrap()
}

/// Mounts memfs on a directory through `frontend`, runs the scenario, unmounts by name.
fn mount_use_and_unmount(frontend: &str) {
    assert!(build_dir().join("plugfs_memfs.dll").is_file(), "build the plugin first: cargo build -p plugfs-memfs");
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().join("mnt");
    let config = dir.path().join("plugfs.toml");
    std::fs::write(
        &config,
        format!(
            "[host]\nplugin_dirs = ['{}']\n# Below the test's wait for the exit, whatever Windows keeps open.\ndrain_timeout = 10\n\n[[mount]]\nname = \"scratch\"\nplugin = \"memfs\"\n\
             mountpoint = '{}'\ncreate_mountpoint = true\nfrontend = \"{frontend}\"\n",
            build_dir().display(),
            mountpoint.display()
        ),
    )
    .unwrap();
    let config_arg = config.to_str().unwrap();
    let mut host = Command::new(env!("CARGO_BIN_EXE_plugfs"))
        .args(["mount", "--config", config_arg])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let out = plugfs(&["status", "--config", config_arg]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && text.contains("mounted") {
            break text;
        }
        if let Some(exit) = host.try_wait().unwrap() {
            panic!("plugfs exited ({exit}) before mounting through {frontend}");
        }
        assert!(Instant::now() < deadline, "not mounted through {frontend} after 60 s");
        std::thread::sleep(Duration::from_millis(200));
    };
    let named = match frontend {
        "auto" => status.contains("winfsp") || status.contains("dokan"),
        f => status.contains(f),
    };
    assert!(named, "`plugfs status` names the frontend: {status}");

    scenario::run(&mountpoint);

    let unmount = plugfs(&["unmount", "scratch", "--config", config_arg]);
    assert!(unmount.status.success(), "{}", String::from_utf8_lossy(&unmount.stderr));
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = host.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "plugfs did not exit after its only mount was unmounted");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(exit.success(), "plugfs exited with {exit}");
    assert!(!mountpoint.join("hello.txt").exists(), "unmounted");
}

#[test]
fn plugfs_mounts_memfs_through_dokan() {
    mount_use_and_unmount("dokan");
}

#[test]
#[cfg(feature = "winfsp")]
fn plugfs_mounts_memfs_through_winfsp() {
    mount_use_and_unmount("winfsp");
}

#[test]
fn plugfs_mounts_memfs_through_whatever_auto_finds() {
    mount_use_and_unmount("auto");
}

#[test]
fn a_frontend_left_out_of_this_build_is_refused_at_its_line() {
    if cfg!(any(feature = "winfsp", feature = "winfsp-cross-check")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("plugfs.toml");
    std::fs::write(&config, "[[mount]]\nname = \"x\"\nplugin = \"memfs\"\nmountpoint = 'X:'\nfrontend = \"winfsp\"\n")
        .unwrap();
    let out = plugfs(&["check", "--config", config.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("plugfs.toml:5:") && err.contains("--features winfsp"), "{err}");
}
