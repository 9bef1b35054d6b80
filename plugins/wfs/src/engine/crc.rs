//! CRC-32C (Castagnoli), the checksum of every block pointer.
//!
//! Every data block is checksummed when written and again when read, so this sits on the
//! data path of every read and write. The `crc32c` crate uses the CPU's CRC-32C
//! instruction (SSE 4.2 on x86-64, the CRC extension on aarch64) with interleaved lanes,
//! and a table elsewhere; a byte-at-a-time table ran at about 0.5 GB/s, slower than the
//! disk writes it guarded.

/// The CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

#[cfg(test)]
mod tests {
    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(super::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(super::crc32c(b""), 0);
    }

    #[test]
    fn the_fast_path_matches_the_definition_at_every_length_and_alignment() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for start in 0..9 {
            for len in [0, 1, 7, 8, 9, 63, 64, 100, 4079, 4080, 4096, 8165] {
                let d = &data[start..start + len];
                // The byte-at-a-time definition (reflected polynomial 0x82f63b78).
                let mut c = !0u32;
                for &b in d {
                    c ^= u32::from(b);
                    for _ in 0..8 {
                        c = if c & 1 != 0 { (c >> 1) ^ 0x82f6_3b78 } else { c >> 1 };
                    }
                }
                assert_eq!(super::crc32c(d), !c, "start {start}, len {len}");
            }
        }
    }
}
