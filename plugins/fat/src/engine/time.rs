//! FAT dates and times: 2-second resolution for modification and creation times (creation
//! has an extra 10 ms field), day resolution for access dates, years 1980 to 2107, in local
//! time of whatever clock wrote them. The mount's tz policy gives the offset to UTC.

/// A FAT date and time as stored: (date, time, hundredths for creation times).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FatTime {
    pub date: u16,
    pub time: u16,
    /// 0..=199: tens of milliseconds past the 2-second `time`.
    pub tenths: u8,
}

// Days from 1970-01-01 to y-m-d (proleptic Gregorian), Howard Hinnant's algorithm.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

impl FatTime {
    /// Seconds and nanoseconds since the Unix epoch, for a clock `offset` seconds ahead of
    /// UTC. A zero or invalid date reads as 1980-01-01.
    pub fn to_unix(self, offset: i64) -> (i64, u32) {
        let year = 1980 + (self.date >> 9) as i64;
        let month = ((self.date >> 5) & 0xF).clamp(1, 12) as u32;
        let day = (self.date & 0x1F).max(1) as u32;
        let secs = ((self.time >> 11) as i64).min(23) * 3600
            + ((self.time >> 5) & 0x3F).min(59) as i64 * 60
            + ((self.time & 0x1F) as i64 * 2).min(58);
        let tenths = self.tenths.min(199) as i64;
        let total = days_from_civil(year, month, day) * 86400 + secs + tenths / 100 - offset;
        (total, ((tenths % 100) * 10_000_000) as u32)
    }

    /// The FAT time for a Unix time, clamped to 1980-01-01 .. 2107-12-31.
    pub fn from_unix(secs: i64, nanos: u32, offset: i64) -> FatTime {
        let min = days_from_civil(1980, 1, 1) * 86400;
        let max = days_from_civil(2107, 12, 31) * 86400 + 86399;
        let local = (secs + offset).clamp(min, max);
        let (y, m, d) = civil_from_days(local.div_euclid(86400));
        let s = local.rem_euclid(86400);
        let date = (((y - 1980) as u16) << 9) | ((m as u16) << 5) | d as u16;
        let time = (((s / 3600) as u16) << 11) | ((((s % 3600) / 60) as u16) << 5) | ((s % 60) / 2) as u16;
        let tenths = ((s % 2) * 100 + (nanos / 10_000_000) as i64) as u8;
        FatTime { date, time, tenths }
    }
}

/// The current time for a clock `offset` seconds ahead of UTC.
pub fn now(offset: i64) -> FatTime {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    FatTime::from_unix(d.as_secs() as i64, d.subsec_nanos(), offset)
}

/// The local time zone's offset from UTC now, in seconds.
pub fn local_offset() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    let t = now as libc::time_t;
    // SAFETY: localtime_r writes only into `tm`, which lives on this stack frame.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if ok { tm.tm_gmtoff } else { 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_at_fat_resolution() {
        let t = FatTime::from_unix(1_700_000_001, 250_000_000, 0);
        assert_eq!(t.to_unix(0), (1_700_000_001, 250_000_000));
        // 2023-11-14 22:13:20 UTC
        assert_eq!(t.date, ((2023 - 1980) << 9) | (11 << 5) | 14);
        assert_eq!(FatTime::from_unix(0, 0, 0).to_unix(0).0, days_from_civil(1980, 1, 1) * 86400);
        let local = FatTime::from_unix(1_700_000_000, 0, 3600);
        assert_eq!(local.to_unix(3600).0, 1_700_000_000);
        assert_ne!(local.time, FatTime::from_unix(1_700_000_000, 0, 0).time);
    }
}
