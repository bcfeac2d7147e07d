//! Calendar windows (UTC days and months) computed from the clock.
//!
//! Pure Rust, no pgrx types. Times are microseconds since the Unix epoch, UTC.
//! Nothing has to run at midnight: a window is a function of the current time.

pub const US_PER_MS: i64 = 1_000;
pub const US_PER_SEC: i64 = 1_000_000;
pub const US_PER_DAY: i64 = 86_400 * US_PER_SEC;

/// The two calendar windows that quotas use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    Day,
    Month,
}

/// Days since 1970-01-01 of a proleptic Gregorian civil date (H. Hinnant's algorithm).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = month as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date (year, month 1-12, day 1-31) of a day number since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Day number (days since 1970-01-01, UTC) of an instant.
pub fn day_index(unix_us: i64) -> i64 {
    unix_us.div_euclid(US_PER_DAY)
}

/// Month number (`year * 12 + month - 1`) of an instant.
pub fn month_index(unix_us: i64) -> i64 {
    let (y, m, _) = civil_from_days(day_index(unix_us));
    y * 12 + (m as i64 - 1)
}

/// The instant a day starts.
pub fn day_start(day: i64) -> i64 {
    day.saturating_mul(US_PER_DAY)
}

/// The instant a month (as numbered by [`month_index`]) starts.
pub fn month_start(month: i64) -> i64 {
    let y = month.div_euclid(12);
    let m = (month.rem_euclid(12) + 1) as u32;
    day_start(days_from_civil(y, m, 1))
}

impl Window {
    /// Index of the window that contains `unix_us`.
    pub fn index(self, unix_us: i64) -> i64 {
        match self {
            Window::Day => day_index(unix_us),
            Window::Month => month_index(unix_us),
        }
    }

    /// Start of the window with this index.
    pub fn start_of(self, index: i64) -> i64 {
        match self {
            Window::Day => day_start(index),
            Window::Month => month_start(index),
        }
    }

    /// `[start, end)` of the window that contains `unix_us`.
    pub fn bounds(self, unix_us: i64) -> (i64, i64) {
        let i = self.index(unix_us);
        (self.start_of(i), self.start_of(i + 1))
    }

    /// Milliseconds from `unix_us` to the end of its window, rounded up, at least 1.
    pub fn ms_until_end(self, unix_us: i64) -> i64 {
        Now::utc(unix_us).ms_until_end(self)
    }

    pub fn name(self) -> &'static str {
        match self {
            Window::Day => "day",
            Window::Month => "month",
        }
    }
}

/// An instant, and the ends of the day and the month that contain it in the time zone whose
/// calendar applies (see `crate::zone`); in UTC they are computed only when asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    pub us: i64,
    /// (end of the day, end of the month); None: those of UTC.
    ends: Option<(i64, i64)>,
}

impl Now {
    /// `us` in the UTC calendar.
    pub fn utc(us: i64) -> Now {
        Now { us, ends: None }
    }

    /// `us` in a calendar whose day and month containing it end at `day_end` and `month_end`.
    pub fn with_ends(us: i64, day_end: i64, month_end: i64) -> Now {
        Now {
            us,
            ends: Some((day_end, month_end)),
        }
    }

    /// Milliseconds to the end of the window of kind `w`, rounded up, at least 1.
    pub fn ms_until_end(&self, w: Window) -> i64 {
        let end = match (self.ends, w) {
            (Some((day, _)), Window::Day) => day,
            (Some((_, month)), Window::Month) => month,
            (None, w) => w.start_of(w.index(self.us) + 1),
        };
        (end.saturating_sub(self.us).saturating_add(US_PER_MS - 1) / US_PER_MS).max(1)
    }
}

/// An instant as ISO 8601 text in UTC, to the second: `2026-11-24T00:00:00Z`.
pub fn iso_utc(unix_us: i64) -> String {
    let secs = unix_us.rem_euclid(US_PER_DAY) / US_PER_SEC;
    let (y, m, d) = civil_from_days(day_index(unix_us));
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod unit {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn instants_print_in_utc_to_the_second() {
        assert_eq!(iso_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_utc(ts(20_415, 86_399) + 999_999), "2025-11-23T23:59:59Z");
        assert_eq!(iso_utc(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn the_last_day_of_a_400_year_era_round_trips() {
        for (y, m, d) in [(2000, 2, 29), (2400, 2, 29), (1600, 2, 29), (2000, 3, 1), (2100, 2, 28)] {
            assert_eq!(civil_from_days(days_from_civil(y, m, d)), (y, m, d));
        }
        assert_eq!(Window::Day.name(), "day");
        assert_eq!(Window::Month.name(), "month");
    }

    const fn ts(days: i64, secs: i64) -> i64 {
        days * US_PER_DAY + secs * US_PER_SEC
    }

    #[test]
    fn known_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29)), (2024, 2, 29));
        // 2026-11-22 12:00:00 UTC
        let now = ts(days_from_civil(2026, 11, 22), 12 * 3600);
        assert_eq!(Window::Day.bounds(now).0, ts(days_from_civil(2026, 11, 22), 0));
        assert_eq!(
            Window::Month.bounds(now),
            (ts(days_from_civil(2026, 11, 1), 0), ts(days_from_civil(2026, 12, 1), 0))
        );
        assert_eq!(Window::Day.ms_until_end(now), 12 * 3600 * 1000);
    }

    #[test]
    fn month_ends_cross_years_and_leap_days() {
        let dec31 = ts(days_from_civil(2026, 12, 31), 86_399);
        assert_eq!(Window::Month.bounds(dec31).1, ts(days_from_civil(2027, 1, 1), 0));
        assert_eq!(Window::Month.ms_until_end(dec31), 1000);
        let feb = ts(days_from_civil(2028, 2, 10), 0);
        assert_eq!(
            Window::Month.bounds(feb).1 - Window::Month.bounds(feb).0,
            29 * US_PER_DAY
        );
        let feb = ts(days_from_civil(2100, 2, 10), 0);
        assert_eq!(
            Window::Month.bounds(feb).1 - Window::Month.bounds(feb).0,
            28 * US_PER_DAY
        );
    }

    #[test]
    fn last_microsecond_of_window_waits_one_ms() {
        let end = ts(days_from_civil(2026, 1, 2), 0);
        assert_eq!(Window::Day.ms_until_end(end - 1), 1);
        assert_eq!(Window::Day.ms_until_end(end), 86_400_000);
    }

    proptest! {
        #[test]
        fn civil_round_trip(d in -1_000_000i64..1_000_000) {
            let (y, m, dd) = civil_from_days(d);
            prop_assert!((1..=12).contains(&m));
            prop_assert!((1..=31).contains(&dd));
            prop_assert_eq!(days_from_civil(y, m, dd), d);
        }

        #[test]
        fn instant_lies_in_its_windows(t in -4_000_000_000_000_000i64..8_000_000_000_000_000) {
            for w in [Window::Day, Window::Month] {
                let (s, e) = w.bounds(t);
                prop_assert!(s <= t && t < e);
                prop_assert_eq!(w.index(s), w.index(t));
                prop_assert_eq!(w.index(e), w.index(t) + 1);
                prop_assert!(w.ms_until_end(t) >= 1);
                prop_assert!(w.ms_until_end(t) <= 31 * 86_400_000);
            }
            // a day never straddles two months
            let (ds, de) = Window::Day.bounds(t);
            prop_assert_eq!(month_index(ds), month_index(de - 1));
        }
    }
}
