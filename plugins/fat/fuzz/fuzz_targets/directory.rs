//! Arbitrary bytes as a directory's entries (short, long-name, label, deleted).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    plugfs_fat::fuzzing::directory(data);
});
