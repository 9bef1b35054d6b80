//! Arbitrary bytes as a whole image: mounted read-only and walked (lists, lookups, stats,
//! reads), so cluster chains, FAT entries and directories of every kind get parsed.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    plugfs_fat::fuzzing::image(data);
});
