//! WinFSP end to end: memfs mounted through WinFSP and used with `std::fs`. Runs on
//! Windows with WinFSP installed (.github/workflows/windows.yml); from Linux it is only
//! type-checked (scripts/check-windows.sh).

#![cfg(all(windows, any(feature = "winfsp", feature = "cross-check")))]

#[path = "../../windows-core/tests/common/windows_scenario.rs"]
mod scenario;

use plugfs_windows_core::VolumeOptions;

#[test]
fn memfs_through_winfsp_behaves_as_windows_programs_expect() {
    assert!(plugfs_winfsp::is_installed(), "WinFSP must be installed to run this test");
    let dir = tempfile::tempdir().unwrap();
    // WinFSP mounts on a directory that does not exist yet and creates it.
    let mountpoint = dir.path().join("mnt");
    let (fs, caps) = scenario::memfs();
    let mount = plugfs_winfsp::mount(fs, caps, &mountpoint, "plugfs-test", VolumeOptions::default()).unwrap();
    scenario::run(&mountpoint);
    mount.unmount();
    assert!(!mountpoint.join("hello.txt").exists(), "unmounted");
}
