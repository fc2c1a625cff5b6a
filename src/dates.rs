//! Wall-clock time as text, UTC, in the forms the proxy writes: log lines
//! (RFC 3339), the HTTP `Date` header (IMF-fixdate), the access log (Common
//! Log Format) and quarantined file names. Pure: the time is passed in.

use std::time::{SystemTime, UNIX_EPOCH};

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
/// 1970-01-01 was a Thursday.
const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];

/// Milliseconds since the Unix epoch now (0 for a clock before it).
pub fn wall_ms() -> u64 {
    ms_of(SystemTime::now())
}

/// `t` in milliseconds since the Unix epoch (0 before it).
fn ms_of(t: SystemTime) -> u64 {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// `t` in seconds since the Unix epoch, with its fraction.
pub fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The calendar parts of one instant, UTC.
struct Utc {
    /// Days since 1970-01-01.
    days: u64,
    year: i64,
    month: u32,
    day: u32,
    hour: u64,
    minute: u64,
    second: u64,
    millis: u64,
}

impl Utc {
    fn of_ms(ms: u64) -> Utc {
        let secs = ms / 1000;
        let days = secs / 86_400;
        let (year, month, day) = civil_from_days(i64::try_from(days).unwrap_or(i64::MAX));
        let rem = secs % 86_400;
        Utc {
            days,
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem % 3600 / 60,
            second: rem % 60,
            millis: ms % 1000,
        }
    }

    fn month_name(&self) -> &'static str {
        let index = usize::try_from(self.month).unwrap_or(0).wrapping_sub(1);
        MONTHS.get(index).copied().unwrap_or("Jan")
    }

    fn weekday_name(&self) -> &'static str {
        let index = usize::try_from(self.days % 7).unwrap_or(0);
        WEEKDAYS.get(index).copied().unwrap_or("Thu")
    }
}

/// RFC 3339 with milliseconds, for log lines: `2026-11-27T22:10:11.123Z`.
pub fn rfc3339_ms(t: SystemTime) -> String {
    let u = Utc::of_ms(ms_of(t));
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        u.year, u.month, u.day, u.hour, u.minute, u.second, u.millis
    )
}

/// IMF-fixdate for the HTTP `Date` header: `Fri, 27 Nov 2026 22:10:11 GMT`.
pub fn http_date(t: SystemTime) -> String {
    let u = Utc::of_ms(ms_of(t));
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        u.weekday_name(),
        u.day,
        u.month_name(),
        u.year,
        u.hour,
        u.minute,
        u.second
    )
}

/// The Common Log Format time, without its brackets:
/// `27/Nov/2026:22:10:11 +0000`.
pub fn clf(t: SystemTime) -> String {
    let u = Utc::of_ms(ms_of(t));
    format!(
        "{:02}/{}/{:04}:{:02}:{:02}:{:02} +0000",
        u.day,
        u.month_name(),
        u.year,
        u.hour,
        u.minute,
        u.second
    )
}

/// A compact form that sorts by time, for file names:
/// `20260127T221011.123Z`.
pub fn compact_ms(wall_ms: u64) -> String {
    let u = Utc::of_ms(wall_ms);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z",
        u.year, u.month, u.day, u.hour, u.minute, u.second, u.millis
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z.saturating_add(719_468);
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at_ms(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn every_form_of_one_instant() {
        let t = at_ms(1_795_817_411_123);
        assert_eq!(rfc3339_ms(t), "2026-11-27T22:10:11.123Z");
        assert_eq!(http_date(t), "Fri, 27 Nov 2026 22:10:11 GMT");
        assert_eq!(clf(t), "27/Nov/2026:22:10:11 +0000");
        assert_eq!(compact_ms(1_795_817_411_123), "20261127T221011.123Z");
        assert_eq!(unix_secs(t), 1_795_817_411.123);
    }

    #[test]
    fn the_epoch_and_a_leap_day() {
        assert_eq!(rfc3339_ms(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        // A clock before the epoch reads as the epoch, never a panic.
        let before = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(compact_ms(ms_of(before)), "19700101T000000.000Z");
    }
}
