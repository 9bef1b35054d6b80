//! FILETIME (100-nanosecond intervals since 1601-01-01 UTC, as Windows stores times) to
//! and from the plugin API's [`Timestamp`] (seconds and nanoseconds since 1970).
//!
//! Windows keeps times to 100 ns, so the nanoseconds below that are dropped on the way to
//! Windows (rounded toward the past). Times before 1601 become 0 and times after the last
//! FILETIME a signed 64-bit `LARGE_INTEGER` holds (year 30828) become that maximum.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use plugfs_plugin_api::Timestamp;

/// Seconds from 1601-01-01 to 1970-01-01.
pub const UNIX_EPOCH_SECS: i64 = 11_644_473_600;
/// FILETIME ticks per second.
const TICKS_PER_SEC: i64 = 10_000_000;
/// The largest FILETIME Windows accepts (a non-negative `LARGE_INTEGER`).
pub const MAX_FILETIME: u64 = i64::MAX as u64;

/// A plugin time as a FILETIME, clamped to `0..=MAX_FILETIME`.
pub fn to_filetime(t: Timestamp) -> u64 {
    let secs = t.secs as i128 + UNIX_EPOCH_SECS as i128;
    let ticks = secs * TICKS_PER_SEC as i128 + (t.nanos / 100) as i128;
    ticks.clamp(0, MAX_FILETIME as i128) as u64
}

/// A FILETIME as a plugin time. Values above [`MAX_FILETIME`] are clamped to it.
pub fn from_filetime(ft: u64) -> Timestamp {
    let ft = ft.min(MAX_FILETIME) as i64;
    let secs = ft / TICKS_PER_SEC - UNIX_EPOCH_SECS;
    let nanos = (ft % TICKS_PER_SEC) as u32 * 100;
    Timestamp::new(secs, nanos)
}

/// A time from a "set basic information" request: 0 means "leave it", and the special
/// values -1 and -2 (`0xFFFF_FFFF_FFFF_FFFF`, `..FFFE`: stop and resume automatic updates
/// on this handle) also change nothing here, so all of them are `None`.
pub fn settable(ft: u64) -> Option<Timestamp> {
    if ft == 0 || ft > MAX_FILETIME { None } else { Some(from_filetime(ft)) }
}

/// A FILETIME as a [`SystemTime`] (Dokan's wrapper speaks `SystemTime`).
pub fn filetime_to_system_time(ft: u64) -> SystemTime {
    let ft = ft.min(MAX_FILETIME);
    let since_1601 = Duration::new(ft / TICKS_PER_SEC as u64, (ft % TICKS_PER_SEC as u64) as u32 * 100);
    let epoch_offset = Duration::from_secs(UNIX_EPOCH_SECS as u64);
    match since_1601.checked_sub(epoch_offset) {
        Some(after) => UNIX_EPOCH + after,
        // SystemTime reaches back to 1601 on Windows; elsewhere this is also fine.
        None => UNIX_EPOCH - (epoch_offset - since_1601),
    }
}

/// A [`SystemTime`] as a FILETIME, clamped to `0..=MAX_FILETIME`.
pub fn system_time_to_filetime(t: SystemTime) -> u64 {
    let ticks = match t.duration_since(UNIX_EPOCH) {
        Ok(after) => after.as_nanos() as i128 / 100 + (UNIX_EPOCH_SECS * TICKS_PER_SEC) as i128,
        Err(before) => (UNIX_EPOCH_SECS * TICKS_PER_SEC) as i128 - before.duration().as_nanos().div_ceil(100) as i128,
    };
    ticks.clamp(0, MAX_FILETIME as i128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unix_epoch_is_the_known_filetime() {
        assert_eq!(to_filetime(Timestamp::EPOCH), 116_444_736_000_000_000);
        assert_eq!(from_filetime(116_444_736_000_000_000), Timestamp::EPOCH);
    }

    #[test]
    fn times_round_trip_at_100ns_and_lose_only_the_nanoseconds_below() {
        for t in [Timestamp::new(1_700_000_000, 123_456_700), Timestamp::new(-1, 999_999_900), Timestamp::new(-5, 0)] {
            assert_eq!(from_filetime(to_filetime(t)), t);
        }
        assert_eq!(from_filetime(to_filetime(Timestamp::new(10, 123_456_789))), Timestamp::new(10, 123_456_700));
    }

    #[test]
    fn times_outside_the_filetime_range_are_clamped() {
        assert_eq!(to_filetime(Timestamp::new(-UNIX_EPOCH_SECS - 1, 0)), 0);
        assert_eq!(to_filetime(Timestamp::new(i64::MIN, 0)), 0);
        assert_eq!(to_filetime(Timestamp::new(i64::MAX, 999_999_999)), MAX_FILETIME);
        assert_eq!(from_filetime(0), Timestamp::new(-UNIX_EPOCH_SECS, 0));
        assert_eq!(from_filetime(u64::MAX), from_filetime(MAX_FILETIME));
    }

    #[test]
    fn zero_and_the_special_values_change_nothing() {
        assert_eq!(settable(0), None);
        assert_eq!(settable(u64::MAX), None);
        assert_eq!(settable(u64::MAX - 1), None);
        assert_eq!(settable(116_444_736_000_000_000), Some(Timestamp::EPOCH));
    }

    #[test]
    fn system_times_round_trip_through_filetime() {
        let epoch = to_filetime(Timestamp::EPOCH);
        assert_eq!(filetime_to_system_time(epoch), UNIX_EPOCH);
        assert_eq!(system_time_to_filetime(UNIX_EPOCH), epoch);
        let later = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_700);
        assert_eq!(filetime_to_system_time(system_time_to_filetime(later)), later);
        assert_eq!(system_time_to_filetime(later), to_filetime(Timestamp::new(1_700_000_000, 123_456_700)));
        // Before 1970, and the clamp at 1601.
        let earlier = UNIX_EPOCH - Duration::new(86_400, 500);
        assert_eq!(system_time_to_filetime(earlier), epoch - 864_000_000_000 - 5);
        assert_eq!(filetime_to_system_time(epoch - 864_000_000_000 - 5), earlier);
        assert_eq!(system_time_to_filetime(UNIX_EPOCH - Duration::from_secs(UNIX_EPOCH_SECS as u64 + 1)), 0);
    }
}
