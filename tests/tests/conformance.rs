//! The conformance suite run directly through the loader, against each first-party plugin.
//! (Through a real mount made by `plugfs mount`, see `host.rs`.)

use plugfs_conformance::run_direct;
use plugfs_tests::plugin_library;

#[test]
fn memfs_passes_the_conformance_suite_directly() {
    let report = run_direct(&plugin_library("plugfs-memfs"), "").unwrap();
    assert!(report.ok(), "{}", report.summary());
    // Checks of the kernel's part and those made as a second user cannot run directly:
    // they are reported as skipped, with the reason, never as passed.
    for name in
        ["symlink_loops_and_o_nofollow_are_eloop", "sticky_directories_keep_other_users_from_removing_or_renaming"]
    {
        assert!(report.skipped_names().contains(&name), "{name} not skipped:\n{}", report.summary());
        assert!(!report.passed.contains(&name), "{}", report.summary());
    }
    assert!(report.summary().contains("skip sticky_directories_keep_other_users_from_removing_or_renaming: needs"));
}

#[test]
fn durable_io_passes_the_conformance_suite_directly_in_every_durability_mode() {
    for mode in ["kernel", "close", "always"] {
        let dir = tempfile::tempdir().unwrap();
        let config = format!("root = {:?}\ndurability = {mode:?}\n", dir.path().to_str().unwrap());
        let report = run_direct(&plugin_library("plugfs-durable-io"), &config).unwrap();
        assert!(report.ok(), "durability = {mode}: {}", report.summary());
        // It declares every capability, so only the check for lacking xattrs is left out,
        // besides those that need a kernel or a second user.
        let declared: Vec<_> = report.skipped.iter().filter(|(_, why)| why.contains("capabilities")).collect();
        assert_eq!(declared.len(), 1, "{}", report.summary());
        assert_eq!(declared[0].0, "xattrs_are_refused_when_unsupported", "{}", report.summary());
    }
}

#[test]
fn the_suite_fails_a_broken_plugin() {
    // Its readdir and read panic: the suite must say so, not pass it.
    let report = run_direct(&plugin_library("plugfs-fixture-panics"), "").unwrap();
    assert!(!report.ok(), "{}", report.summary());
    assert!(report.failed.iter().any(|(name, _)| *name == "root_is_a_directory"), "{}", report.summary());
}

#[test]
fn a_read_only_plugin_written_in_c_passes_the_checks_it_declares() {
    // plugins/hello-c: no CAP_WRITABLE, so only the read-only checks run.
    let report = run_direct(&plugin_library("plugfs-hello-c"), "").unwrap();
    assert!(report.ok(), "{}", report.summary());
    assert!(report.skipped_names().contains(&"written_data_reads_back"), "a read-only plugin skips write checks");
    assert_eq!(report.passed, ["root_is_a_directory", "missing_names_are_enoent", "statfs_reports_the_name_limit"]);
}
