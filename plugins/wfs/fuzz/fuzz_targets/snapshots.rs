//! Arbitrary bytes as a snapshot table.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    plugfs_wfs::fuzzing::snapshots(data);
});
