//! Dokan end to end: memfs mounted through Dokan and used with `std::fs`. Runs on Windows
//! with Dokan installed (.github/workflows/windows.yml); from Linux it is only
//! type-checked (scripts/check-windows.sh).

#![cfg(windows)]

#[path = "../../windows-core/tests/common/windows_scenario.rs"]
mod scenario;

use plugfs_windows_core::VolumeOptions;

#[test]
fn memfs_through_dokan_behaves_as_windows_programs_expect() {
    assert!(plugfs_dokan::is_installed(), "Dokan must be installed to run this test");
    // Dokan mounts on an empty directory that exists.
    let dir = tempfile::tempdir().unwrap();
    let mountpoint = dir.path().join("mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    let (fs, caps) = scenario::memfs();
    let mount = plugfs_dokan::mount(fs, caps, &mountpoint, "plugfs-test", VolumeOptions::default()).unwrap();
    scenario::run(&mountpoint);
    mount.unmount();
    assert!(!mountpoint.join("hello.txt").exists(), "unmounted");
}
