//! CRC-32C (Castagnoli), the checksum of every block pointer.
//!
//! Every data block is checksummed when written and again when read, so this sits on the
//! data path of every read and write: the CPU's CRC-32C instruction (SSE 4.2 on x86-64, the
//! CRC extension on aarch64) is used when the CPU has it, a slicing-by-8 table otherwise.
//! A byte-at-a-time table ran at about 0.5 GB/s, slower than the disk writes it guarded.

const fn tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0x82f6_3b78 } else { c >> 1 };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut j = 1;
    while j < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[j - 1][i];
            t[j][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        j += 1;
    }
    t
}

static TABLES: [[u32; 256]; 8] = tables();

/// The portable path: slicing-by-8 over the running (uninverted) state.
fn software(mut c: u32, data: &[u8]) -> u32 {
    let t = &TABLES;
    let mut chunks = data.chunks_exact(8);
    for ch in &mut chunks {
        let lo = u32::from_le_bytes([ch[0], ch[1], ch[2], ch[3]]) ^ c;
        let hi = u32::from_le_bytes([ch[4], ch[5], ch[6], ch[7]]);
        c = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][(hi & 0xff) as usize]
            ^ t[2][((hi >> 8) & 0xff) as usize]
            ^ t[1][((hi >> 16) & 0xff) as usize]
            ^ t[0][(hi >> 24) as usize];
    }
    for &b in chunks.remainder() {
        c = t[0][((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    c
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
/// Bytes per lane of the three-way interleaved hardware path: three lanes cover 4080 bytes
/// of a 4096-byte block. The CRC instruction has a latency of three cycles and a
/// throughput of one, so three independent lanes run about three times as fast as one.
const LANE: usize = 1360;

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
/// `SHIFT[k][b]`: the state after `LANE` zero bytes, from the state `b << 8k`. Running the
/// state over zeroes is linear, so four lookups move any state past a lane.
fn shift_tables() -> &'static [[u32; 256]; 4] {
    static SHIFT: std::sync::OnceLock<[[u32; 256]; 4]> = std::sync::OnceLock::new();
    SHIFT.get_or_init(|| {
        let zeros = [0u8; LANE];
        let mut t = [[0u32; 256]; 4];
        for (k, row) in t.iter_mut().enumerate() {
            for (b, e) in row.iter_mut().enumerate() {
                *e = software((b as u32) << (8 * k), &zeros);
            }
        }
        t
    })
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn shift(t: &[[u32; 256]; 4], c: u32) -> u32 {
    t[0][(c & 0xff) as usize]
        ^ t[1][((c >> 8) & 0xff) as usize]
        ^ t[2][((c >> 16) & 0xff) as usize]
        ^ t[3][(c >> 24) as usize]
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[inline(always)]
fn word(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
fn hardware(c: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u8, _mm_crc32_u64};
    let mut c = c;
    let mut rest = data;
    if rest.len() >= 3 * LANE {
        let t = shift_tables();
        while rest.len() >= 3 * LANE {
            let (a, tail) = rest.split_at(LANE);
            let (b, tail) = tail.split_at(LANE);
            let (d, tail) = tail.split_at(LANE);
            let (mut ca, mut cb, mut cd) = (u64::from(c), 0u64, 0u64);
            for ((x, y), z) in a.chunks_exact(8).zip(b.chunks_exact(8)).zip(d.chunks_exact(8)) {
                ca = _mm_crc32_u64(ca, word(x));
                cb = _mm_crc32_u64(cb, word(y));
                cd = _mm_crc32_u64(cd, word(z));
            }
            // The state after a||b is the state after a moved past b, xor b's from zero.
            c = shift(t, ca as u32) ^ cb as u32;
            c = shift(t, c) ^ cd as u32;
            rest = tail;
        }
    }
    let mut c = u64::from(c);
    let mut chunks = rest.chunks_exact(8);
    for ch in &mut chunks {
        c = _mm_crc32_u64(c, word(ch));
    }
    let mut c = c as u32;
    for &b in chunks.remainder() {
        c = _mm_crc32_u8(c, b);
    }
    c
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "crc")]
fn hardware(mut c: u32, data: &[u8]) -> u32 {
    use std::arch::aarch64::{__crc32cb, __crc32cd};
    let mut chunks = data.chunks_exact(8);
    for ch in &mut chunks {
        c = __crc32cd(c, word(ch));
    }
    for &b in chunks.remainder() {
        c = __crc32cb(c, b);
    }
    c
}

fn update(c: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU has SSE 4.2, the only feature `hardware` is compiled for.
        return unsafe { hardware(c, data) };
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("crc") {
        // SAFETY: the CPU has the CRC extension, the only feature `hardware` is compiled for.
        return unsafe { hardware(c, data) };
    }
    software(c, data)
}

/// CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    !update(!0, data)
}

#[cfg(test)]
mod tests {
    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(super::crc32c(b"123456789"), 0xe306_9283);
        assert_eq!(super::crc32c(b""), 0);
    }

    #[test]
    fn the_table_and_the_cpu_agree_on_every_length_and_alignment() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for start in 0..9 {
            for len in [0, 1, 7, 8, 9, 63, 64, 100, 4079, 4080, 4096, 8165] {
                let d = &data[start..start + len];
                // The byte-at-a-time definition, against both fast paths.
                let mut c = !0u32;
                for &b in d {
                    c ^= u32::from(b);
                    for _ in 0..8 {
                        c = if c & 1 != 0 { (c >> 1) ^ 0x82f6_3b78 } else { c >> 1 };
                    }
                }
                assert_eq!(!super::software(!0, d), !c, "software, start {start} len {len}");
                assert_eq!(super::crc32c(d), !c, "crc32c, start {start} len {len}");
            }
        }
    }
}
