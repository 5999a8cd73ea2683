//! Times as the report prints them: UTC dates (converted here, without a date crate) and
//! durations in the unit that suits them.

/// `2024-05-01 12:34:56 UTC` for a time in µs since the Unix epoch.
pub(super) fn format_utc(us: i64) -> String {
    let seconds = us.div_euclid(1_000_000);
    let (days, of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    let (h, m, s) = (of_day / 3600, of_day / 60 % 60, of_day % 60);
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02} UTC")
}

/// The proleptic Gregorian (year, month, day) of a day number counted from 1970-01-01: Howard
/// Hinnant's `civil_from_days`, which counts in 400-year eras starting on March 1st.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097); // [0, 146096]
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153; // [0, 11], 0 = March
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A duration given in µs, with three significant digits in µs, ms, s, min or h.
pub(super) fn format_duration(us: f64) -> String {
    let (value, unit) = match us.abs() {
        a if a < 1e3 => (us, "µs"),
        a if a < 1e6 => (us / 1e3, "ms"),
        a if a < 60e6 => (us / 1e6, "s"),
        a if a < 3600e6 => (us / 60e6, "min"),
        _ => (us / 3600e6, "h"),
    };
    let digits = match value.abs() {
        a if a >= 100.0 => 0,
        a if a >= 10.0 => 1,
        _ => 2,
    };
    format!("{value:.digits$} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(-1), "1969-12-31 23:59:59 UTC");
        assert_eq!(format_utc(951_782_400_000_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_700_000_000_123_456), "2023-11-14 22:13:20 UTC");
        assert_eq!(format_utc(4_107_542_399_000_000), "2100-02-28 23:59:59 UTC");
    }

    #[test]
    fn civil_dates_follow_day_by_day() {
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let month_days = |y: i64, m: u32| match m {
            2 if leap(y) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let (mut y, mut m, mut d) = (1900, 1, 1);
        for days in -25_567..150_000 {
            assert_eq!(civil_from_days(days), (y, m, d), "day {days}");
            d += 1;
            if d > month_days(y, m) {
                (m, d) = (m + 1, 1);
            }
            if m > 12 {
                (y, m) = (y + 1, 1);
            }
        }
    }

    #[test]
    fn formats_durations() {
        assert_eq!(format_duration(12.0), "12.0 µs");
        assert_eq!(format_duration(1_500.0), "1.50 ms");
        assert_eq!(format_duration(2_500_000.0), "2.50 s");
        assert_eq!(format_duration(90e6), "1.50 min");
        assert_eq!(format_duration(7_200e6), "2.00 h");
    }
}
