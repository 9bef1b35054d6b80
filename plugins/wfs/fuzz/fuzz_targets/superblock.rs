//! Arbitrary bytes as a superblock body, with a valid magic and checksum around them.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    plugfs_wfs::fuzzing::superblock(data);
});
