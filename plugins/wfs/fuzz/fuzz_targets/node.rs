//! Arbitrary bytes as a tree node, and its leaf items by kind.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    plugfs_wfs::fuzzing::node(data);
});
