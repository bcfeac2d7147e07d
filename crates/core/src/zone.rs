//! Calendar windows in a tenant's time zone: the local day and month that contain an instant, as
//! `[start, end)` in microseconds since the Unix epoch, with their indices.
//!
//! The rules come from the IANA tz database bundled with `jiff` (the same on every server). A day
//! starts at the first instant of its local date: local midnight, or, where a transition skips
//! midnight, the instant of that transition; where midnight happens twice, the earlier one. So a
//! day lasts 23, 24 or 25 hours around daylight-saving changes (or whatever the zone's history
//! says), and the windows of one zone tile time without gap or overlap.
//!
//! Indices are the same numbers as the UTC ones of `crate::calendar` (days since 1970-01-01 of
//! the local date; `year * 12 + month - 1`), so UTC gives exactly the UTC windows.

use crate::calendar::{civil_from_days, days_from_civil, Window};
use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// A time zone of the tz database.
#[derive(Clone, Debug)]
pub struct Zone {
    tz: TimeZone,
}

/// One calendar window of a zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub index: i64,
    pub start: i64,
    pub end: i64,
}

impl Zone {
    pub fn utc() -> Zone {
        Zone { tz: TimeZone::UTC }
    }

    /// The zone of an IANA name (`Europe/Paris`, `UTC`, ...); None when the database has no such
    /// zone.
    pub fn named(name: &str) -> Option<Zone> {
        TimeZone::get(name).ok().map(|tz| Zone { tz })
    }

    /// The zone's name as the tz database spells it (`europe/paris` gives `Europe/Paris`).
    pub fn name(&self) -> &str {
        self.tz.iana_name().unwrap_or("UTC")
    }

    /// True for UTC itself, whose windows `crate::calendar` computes without the tz rules.
    pub fn is_utc(&self) -> bool {
        self.name() == "UTC"
    }

    fn date_of(&self, unix_us: i64) -> Date {
        let ts =
            Timestamp::from_microsecond(unix_us).unwrap_or(if unix_us < 0 { Timestamp::MIN } else { Timestamp::MAX });
        self.tz.to_datetime(ts).date()
    }

    /// The first instant (µs) whose local date is `date`.
    fn first_instant(&self, date: Date) -> i64 {
        let Ok(candidate) = date.to_zoned(self.tz.clone()) else {
            return if date.year() < 0 { i64::MIN } else { i64::MAX };
        };
        let c = candidate.timestamp().as_microsecond();
        // Midnight was skipped and the day began at a transition before the instant that
        // "compatible" resolution picked (a gap that straddles midnight).
        if self.date_of(c - 1) == date {
            if let Some(t) = self.tz.preceding(candidate.timestamp()).next() {
                let t = t.timestamp().as_microsecond();
                if self.date_of(t) == date && self.date_of(t - 1) != date {
                    return t;
                }
            }
        }
        c
    }

    /// The local day or month that contains `unix_us`.
    pub fn span(&self, w: Window, unix_us: i64) -> Span {
        let d = self.date_of(unix_us);
        let (y, m) = (d.year() as i64, d.month() as u32);
        match w {
            Window::Day => {
                let index = days_from_civil(y, m, d.day() as u32);
                let next = d.tomorrow().map(|n| self.first_instant(n)).unwrap_or(i64::MAX);
                Span {
                    index,
                    start: self.first_instant(d),
                    end: next,
                }
            }
            Window::Month => {
                let first = d.first_of_month();
                let next = first
                    .last_of_month()
                    .tomorrow()
                    .map(|n| self.first_instant(n))
                    .unwrap_or(i64::MAX);
                Span {
                    index: y * 12 + (m as i64 - 1),
                    start: self.first_instant(first),
                    end: next,
                }
            }
        }
    }

    /// The start of the window with this index (as numbered by `span`).
    pub fn start_of(&self, w: Window, index: i64) -> i64 {
        let (y, m, d) = match w {
            Window::Day => civil_from_days(index),
            Window::Month => (index.div_euclid(12), (index.rem_euclid(12) + 1) as u32, 1),
        };
        match Date::new(y as i16, m as i8, d as i8) {
            Ok(date) => self.first_instant(date),
            Err(_) => {
                if y < 0 {
                    i64::MIN
                } else {
                    i64::MAX
                }
            }
        }
    }
}

/// A zone with the day and month it last answered for: the windows of instants near each other
/// (the common case: one process, one clock) come from two comparisons, not from the tz rules.
#[derive(Clone, Debug)]
pub struct Clock {
    zone: Zone,
    day: Span,
    month: Span,
}

impl Clock {
    pub fn new(zone: Zone) -> Clock {
        let (day, month) = (zone.span(Window::Day, 0), zone.span(Window::Month, 0));
        Clock { zone, day, month }
    }

    pub fn zone(&self) -> &Zone {
        &self.zone
    }

    /// The window of kind `w` that contains `unix_us` (the same as `Zone::span`).
    pub fn span(&mut self, w: Window, unix_us: i64) -> Span {
        let cached = match w {
            Window::Day => &mut self.day,
            Window::Month => &mut self.month,
        };
        if !(cached.start <= unix_us && unix_us < cached.end) {
            *cached = self.zone.span(w, unix_us);
        }
        *cached
    }

    /// The indices of the day and the month that contain `unix_us`.
    pub fn indices(&mut self, unix_us: i64) -> (i64, i64) {
        (
            self.span(Window::Day, unix_us).index,
            self.span(Window::Month, unix_us).index,
        )
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::calendar::{US_PER_DAY, US_PER_SEC};
    use proptest::prelude::*;

    const H: i64 = 3_600 * US_PER_SEC;

    fn us(s: &str) -> i64 {
        s.parse::<Timestamp>().unwrap().as_microsecond()
    }

    /// Zones with every kind of history: DST in either hemisphere, half-hour and 45-minute
    /// offsets, a 30-minute DST, midnight skipped or repeated, a whole day skipped (Apia, 2011),
    /// far east and far west.
    const ZONES: [&str; 14] = [
        "UTC",
        "Europe/Paris",
        "America/New_York",
        "America/Sao_Paulo",
        "America/Havana",
        "America/Santiago",
        "Asia/Kolkata",
        "Asia/Kathmandu",
        "Australia/Lord_Howe",
        "Pacific/Chatham",
        "Pacific/Apia",
        "Pacific/Kiritimati",
        "Pacific/Pago_Pago",
        "Asia/Tehran",
    ];

    #[test]
    fn utc_windows_are_the_utc_calendar() {
        let z = Zone::utc();
        for t in [
            0,
            us("2024-02-29T23:59:59.999999Z"),
            us("2026-11-23T13:00:00Z"),
            -1,
            us("1969-12-31T00:00:00Z"),
        ] {
            for w in [Window::Day, Window::Month] {
                let s = z.span(w, t);
                assert_eq!((s.start, s.end), w.bounds(t), "{w:?} {t}");
                assert_eq!(s.index, w.index(t));
                assert_eq!(z.start_of(w, s.index), s.start);
            }
        }
    }

    #[test]
    fn daylight_saving_days_last_23_or_25_hours() {
        let paris = Zone::named("Europe/Paris").unwrap();
        // 2026-03-29: clocks go from 02:00 to 03:00; 2026-10-25: from 03:00 back to 02:00.
        let spring = paris.span(Window::Day, us("2026-03-29T12:00:00Z"));
        assert_eq!(
            (spring.start, spring.end - spring.start),
            (us("2026-03-28T23:00:00Z"), 23 * H)
        );
        let autumn = paris.span(Window::Day, us("2026-10-25T12:00:00Z"));
        assert_eq!(
            (autumn.start, autumn.end - autumn.start),
            (us("2026-10-24T22:00:00Z"), 25 * H)
        );
        // The month of October 2026 in Paris: from 2026-09-30T22:00Z to 2026-10-31T23:00Z.
        let oct = paris.span(Window::Month, us("2026-10-15T00:00:00Z"));
        assert_eq!(
            (oct.start, oct.end),
            (us("2026-09-30T22:00:00Z"), us("2026-10-31T23:00:00Z"))
        );
    }

    #[test]
    fn a_day_without_midnight_starts_at_its_transition() {
        // Sao Paulo, 2018-11-04: clocks went from 00:00 to 01:00; the day began at 03:00Z.
        let sp = Zone::named("America/Sao_Paulo").unwrap();
        let d = sp.span(Window::Day, us("2018-11-04T15:00:00Z"));
        assert_eq!((d.start, d.end - d.start), (us("2018-11-04T03:00:00Z"), 23 * H));
        // Apia skipped 2011-12-30 entirely: the 29th ends where the 31st begins.
        let apia = Zone::named("Pacific/Apia").unwrap();
        let d29 = apia.span(Window::Day, us("2011-12-30T09:00:00Z"));
        let d31 = apia.span(Window::Day, d29.end);
        assert_eq!(d31.index - d29.index, 2);
        assert_eq!(d29.end, d31.start);
    }

    #[test]
    fn a_gap_across_midnight_starts_the_day_at_the_transition() {
        // A made-up rule: UTC+1, and on the last Sunday of March clocks go from 23:30 to 00:30.
        // Monday 2026-03-30 has no midnight; it begins at the transition, Sunday 22:30Z (00:30
        // on Monday, local), half an hour before the instant that "compatible" resolution of
        // 00:00 gives.
        let z = Zone {
            tz: TimeZone::posix("AAA-1BBB-2,M3.5.0/23:30,M10.5.0/3").unwrap(),
        };
        let monday = z.span(Window::Day, us("2026-03-30T12:00:00Z"));
        assert_eq!(monday.start, us("2026-03-29T22:30:00Z"));
        let sunday = z.span(Window::Day, us("2026-03-29T12:00:00Z"));
        assert_eq!(
            (sunday.end, sunday.end - sunday.start),
            (monday.start, 23 * H + 30 * 60 * US_PER_SEC)
        );
    }

    #[test]
    fn unknown_zones_are_refused() {
        assert!(Zone::named("Mars/Olympus_Mons").is_none());
        assert!(Zone::named("").is_none());
        assert!(Zone::named("Asia/Tokyo").is_some());
        assert_eq!(Zone::named("europe/paris").unwrap().name(), "Europe/Paris");
        assert!(Zone::named("utc").unwrap().is_utc() && Zone::utc().is_utc());
        assert!(!Zone::named("Etc/UTC").unwrap().is_utc());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// A clock answers what its zone answers, in whatever order instants come (forward,
        /// backward, far apart, across transitions).
        #[test]
        fn a_clock_is_its_zone(
            z in 0..ZONES.len(),
            start in us("1970-01-01T00:00:00Z")..us("2040-01-01T00:00:00Z"),
            steps in proptest::collection::vec(-90 * US_PER_DAY..90 * US_PER_DAY, 1..40),
        ) {
            let zone = Zone::named(ZONES[z]).unwrap();
            let mut clock = Clock::new(zone.clone());
            let mut t = start;
            for dt in steps {
                t = t.saturating_add(dt / 7);
                for w in [Window::Day, Window::Month] {
                    prop_assert_eq!(clock.span(w, t), zone.span(w, t));
                }
                prop_assert_eq!(
                    clock.indices(t),
                    (zone.span(Window::Day, t).index, zone.span(Window::Month, t).index)
                );
            }
        }

        /// A window holds its instant, starts at the first instant of its local date (or month)
        /// and ends at the first instant of the next one; consecutive windows tile time.
        #[test]
        fn windows_are_the_local_calendar_without_gaps(
            z in 0..ZONES.len(),
            t in us("1970-01-01T00:00:00Z")..us("2040-01-01T00:00:00Z"),
        ) {
            let zone = Zone::named(ZONES[z]).unwrap();
            for w in [Window::Day, Window::Month] {
                let s = zone.span(w, t);
                prop_assert!(s.start <= t && t < s.end, "{} {:?} {} {:?}", ZONES[z], w, t, s);
                prop_assert_eq!(zone.span(w, s.start), s);
                prop_assert_eq!(zone.span(w, s.end - 1), s);
                prop_assert!(zone.span(w, s.start - 1).index < s.index);
                let next = zone.span(w, s.end);
                prop_assert!(next.index > s.index);
                prop_assert_eq!(next.start, s.end);
                prop_assert_eq!(zone.start_of(w, s.index), s.start);
                if w == Window::Day {
                    // A local day lasts a day, give or take the zone's shifts (at most a day
                    // skipped or repeated).
                    prop_assert!(s.end - s.start > 0 && s.end - s.start <= 2 * US_PER_DAY);
                }
            }
        }
    }
}
