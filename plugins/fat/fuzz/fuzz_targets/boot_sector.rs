//! Arbitrary bytes as a boot sector.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    plugfs_fat::fuzzing::boot_sector(data);
});
