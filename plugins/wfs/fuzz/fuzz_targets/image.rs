//! Arbitrary bytes as a whole image: checked with fsck, opened read-only and walked. When
//! the first byte is odd the checksums are recomputed first, so damage reaches the code
//! behind them (plugfs_wfs::fuzzing::fix_checksums).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((first, rest)) = data.split_first() else { return };
    let mut image = rest.to_vec();
    if first & 1 == 1 {
        plugfs_wfs::fuzzing::fix_checksums(&mut image);
    }
    plugfs_wfs::fuzzing::image(&image);
});
