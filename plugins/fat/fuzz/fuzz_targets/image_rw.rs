//! Arbitrary bytes as a whole image, mounted read-write and changed: every file read,
//! written and truncated, a file made, moved into a new directory and one unlinked in each
//! directory, then unmounted. Reaches the write paths over damage (the ownership scan,
//! allocation, freeing, directory growth) that the read-only `image` target cannot.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    plugfs_fat::fuzzing::image_rw(data);
});
