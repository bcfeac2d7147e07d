//! Sealing the ledger into buckets, so that a rebuild reads a bounded number of rows.
//!
//! `cp_cleanup` sums the ledger rows of each closed bucket (a quarter-hour of UTC by default, or
//! any divisor of it: `control_plane.ledger_bucket_seconds`) into one bucket per subject and one
//! per organisation (`control_plane.usage_buckets`) and moves the seal, `[from, until)`,
//! forward: inside it, a rebuild reads buckets instead of rows. A quarter-hour divides every time
//! zone's day, so the day and month windows of any tenant are unions of buckets, whatever widths
//! the buckets were sealed with (a window whose edge is not on a quarter-hour reads rows only).
//!
//! Rows may still arrive inside the seal after it moved: a transaction that inserted a row and
//! commits later, or a row dated in the past (an expired charge written late, a reversal at its
//! charge's time, a correction by hand). The rules that keep every bucket exact:
//!
//! - A row dated at most a third of the seal delay before its insertion (the usual row: dated
//!   now) takes the fast path: its backend publishes the row's time in shared memory until its
//!   transaction ends, and a sealing never goes past the oldest time published (nor past
//!   `now - delay`). So the seal never passes a row that is not yet committed.
//! - An older row takes the slow path: its transaction holds the seal lock (shared) until it
//!   ends, so no sealing runs meanwhile, and just before it commits it adds the rows it inserted
//!   inside the seal to their buckets.
//!
//! The decisions of both paths, of how far a sealing goes, and of which part of a window a
//! rebuild reads as buckets are here; the SQL mirrors [`split`].

use crate::calendar::{US_PER_DAY, US_PER_SEC};

/// The widest bucket: every bucket width divides it, and every window edge that buckets serve is
/// on it.
pub const GRAIN_US: i64 = 15 * 60 * US_PER_SEC;

/// The bucket width for a setting of `seconds`: the largest divisor of a quarter-hour not above
/// it (at least one second), in µs.
pub fn width_us(seconds: i64) -> i64 {
    let grain_s = GRAIN_US / US_PER_SEC;
    let s = seconds.clamp(1, grain_s);
    (1..=s).rev().find(|d| grain_s % d == 0).unwrap_or(1) * US_PER_SEC
}
/// Buckets older than this are deleted and the seal starts there: no day or month window of any
/// time zone reaches back this far (a month is at most 31 days, plus an hour of summer time).
pub const KEEP_US: i64 = 35 * US_PER_DAY;
/// How far one sealing moves the seal at most: a backlog (a new installation, a cleanup that
/// did not run for days) is worked off over successive runs.
pub const MAX_STEP_US: i64 = US_PER_DAY;
/// The default of `control_plane.ledger_seal_delay`: how long after its quarter-hour ends a
/// bucket is sealed.
pub const DEFAULT_DELAY_S: i64 = 15 * 60;

/// The start of the bucket of width `width` that holds `t` (µs since the Unix epoch).
pub fn bucket_floor(t: i64, width: i64) -> i64 {
    t.div_euclid(width) * width
}

/// True when `t` is on a quarter-hour (and so starts a bucket of every width).
pub fn aligned(t: i64) -> bool {
    t.rem_euclid(GRAIN_US) == 0
}

/// True when a row dated `t`, inserted at `now`, takes the fast path (see the module's text):
/// no sealing can have passed it, as long as its time is published before `now` is read.
pub fn fast_path(t: i64, now: i64, delay_us: i64) -> bool {
    t >= now.saturating_sub(delay_us / 3)
}

/// The seal: buckets hold every committed row dated in `[from, until)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seal {
    pub from: i64,
    pub until: i64,
}

/// What one sealing does: delete the buckets before `from` (kept too long), sum the rows of
/// `[start, until)` into buckets, and store `Seal { from, until }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    pub from: i64,
    pub start: i64,
    pub until: i64,
}

/// How far a sealing at `now` with buckets of `width` goes, from the stored seal (None before the
/// first one) and the oldest row time published by a transaction still open (None when there is
/// none).
pub fn plan(now: i64, delay_us: i64, width: i64, current: Option<Seal>, oldest_open: Option<i64>) -> Plan {
    let keep_from = bucket_floor(now.saturating_sub(KEEP_US), GRAIN_US);
    let cur = current.unwrap_or(Seal {
        from: keep_from,
        until: keep_from,
    });
    let from = cur.from.max(keep_from);
    let start = cur.until.max(from);
    let limit = now
        .saturating_sub(delay_us)
        .min(oldest_open.unwrap_or(i64::MAX))
        .min(start.saturating_add(MAX_STEP_US));
    Plan {
        from,
        start,
        until: start.max(bucket_floor(limit, width)),
    }
}

/// True when every edge of the month and of the day is on a quarter-hour: a rebuild of these
/// windows may read buckets.
pub fn buckets_usable(month: (i64, i64), day: (i64, i64)) -> bool {
    [month.0, month.1, day.0, day.1].into_iter().all(aligned)
}

/// The part `[b0, b1)` of a month window that a rebuild reads as buckets; the rest of the month,
/// `[month.0, b0)` and `[b1, month.1)`, it reads as rows. Buckets only when every edge of the
/// month and of the day is on a quarter-hour (else `b0 = b1 = month.1`). The SQL of the rebuild
/// computes the same: `b0 = greatest(ms, least(from, me))`, `b1 = greatest(b0, least(until, me))`.
pub fn split(month: (i64, i64), day: (i64, i64), seal: Option<Seal>) -> (i64, i64) {
    let s = match seal {
        Some(s) if buckets_usable(month, day) => s,
        _ => Seal {
            from: month.1,
            until: month.1,
        },
    };
    let b0 = month.0.max(s.from.min(month.1));
    let b1 = b0.max(s.until.min(month.1));
    (b0, b1)
}

#[cfg(test)]
mod unit {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const MIN: i64 = 60 * US_PER_SEC;
    const NOW: i64 = 1_779_999_300 * US_PER_SEC; // a quarter-hour boundary in 2026

    const Q: i64 = GRAIN_US;

    #[test]
    fn buckets_are_quarter_hours_of_utc_or_divisors_of_one() {
        assert!(aligned(NOW));
        assert_eq!(bucket_floor(NOW + 14 * MIN + 59 * US_PER_SEC, Q), NOW);
        assert_eq!(bucket_floor(NOW - 1, Q), NOW - Q);
        assert_eq!(bucket_floor(-1, Q), -Q);
        assert!(!aligned(NOW + 1));
        assert_eq!(width_us(900), Q);
        assert_eq!(width_us(100_000), Q);
        assert_eq!(width_us(60), MIN);
        assert_eq!(width_us(7), 6 * US_PER_SEC);
        assert_eq!(width_us(0), US_PER_SEC);
        assert_eq!(bucket_floor(NOW + 61 * US_PER_SEC, MIN), NOW + MIN);
    }

    #[test]
    fn a_row_dated_now_is_fast_and_an_old_one_is_not() {
        let delay = DEFAULT_DELAY_S * US_PER_SEC;
        assert!(fast_path(NOW, NOW, delay));
        assert!(fast_path(NOW - 5 * MIN, NOW, delay));
        assert!(!fast_path(NOW - 5 * MIN - 1, NOW, delay));
        assert!(
            fast_path(NOW + US_PER_DAY, NOW, delay),
            "a future row is never sealed before it is due"
        );
        assert!(fast_path(i64::MIN + 1, i64::MIN + 1, delay), "no overflow");
    }

    #[test]
    fn the_first_sealing_starts_where_windows_can_reach_and_moves_a_day() {
        let delay = DEFAULT_DELAY_S * US_PER_SEC;
        let p = plan(NOW, delay, Q, None, None);
        assert_eq!(p.from, NOW - KEEP_US);
        assert_eq!(p.start, p.from);
        assert_eq!(p.until, p.from + MAX_STEP_US);
    }

    #[test]
    fn a_sealing_stops_at_the_delay_and_at_open_rows() {
        let delay = DEFAULT_DELAY_S * US_PER_SEC;
        let cur = Seal {
            from: NOW - KEEP_US,
            until: NOW - 2 * Q,
        };
        assert_eq!(plan(NOW + 7 * MIN, delay, Q, Some(cur), None).until, NOW - Q);
        // Minute buckets seal up to the last minute before the delay.
        assert_eq!(
            plan(NOW + 7 * MIN + 1, delay, MIN, Some(cur), None).until,
            NOW - 8 * MIN
        );
        // An open transaction's row at NOW - 20 min: its bucket stays open.
        let p = plan(NOW + 7 * MIN, delay, Q, Some(cur), Some(NOW - 20 * MIN));
        assert_eq!(p.until, NOW - 2 * Q);
        // A row older than the seal (the slow path's): the seal stays.
        assert_eq!(plan(NOW, delay, Q, Some(cur), Some(NOW - US_PER_DAY)).until, cur.until);
    }

    #[test]
    fn old_buckets_are_dropped_and_a_long_pause_restarts_the_seal() {
        let delay = DEFAULT_DELAY_S * US_PER_SEC;
        let cur = Seal {
            from: NOW - 50 * US_PER_DAY,
            until: NOW - 40 * US_PER_DAY,
        };
        let p = plan(NOW, delay, Q, Some(cur), None);
        assert_eq!(p.from, NOW - KEEP_US);
        assert_eq!(p.start, NOW - KEEP_US);
        assert_eq!(p.until, NOW - KEEP_US + MAX_STEP_US);
    }

    #[test]
    fn a_window_off_the_quarter_hour_reads_rows_only() {
        let seal = Some(Seal {
            from: NOW - 10 * US_PER_DAY,
            until: NOW,
        });
        let month = (NOW - 20 * US_PER_DAY, NOW + 10 * US_PER_DAY);
        let day = (NOW - US_PER_DAY / 2, NOW + US_PER_DAY / 2);
        assert_eq!(split(month, day, seal), (NOW - 10 * US_PER_DAY, NOW));
        let odd = (day.0 + MIN, day.1 + MIN);
        assert_eq!(split(month, odd, seal), (month.1, month.1));
        assert_eq!(split(month, day, None), (month.1, month.1));
    }

    /// A row: its time and amounts.
    type Row = (i64, [i64; 4]);

    fn add(acc: &mut [i64; 4], a: [i64; 4]) {
        acc.iter_mut().zip(a).for_each(|(x, y)| *x += y);
    }

    /// What a rebuild reads: the rows outside `[b0, b1)` and the buckets inside (by start, of any
    /// width), summed over the day and the month.
    fn rebuilt(
        rows: &[Row],
        buckets: &BTreeMap<(i64, i64), [i64; 4]>,
        month: (i64, i64),
        day: (i64, i64),
        seal: Option<Seal>,
    ) -> ([i64; 4], [i64; 4]) {
        let (b0, b1) = split(month, day, seal);
        let (mut d, mut m) = ([0; 4], [0; 4]);
        let raw = rows
            .iter()
            .filter(|(t, _)| *t >= month.0 && *t < month.1 && (*t < b0 || *t >= b1));
        let sealed = buckets.iter().filter(|((b, _), _)| *b >= b0 && *b < b1);
        for (t, a) in raw.map(|(t, a)| (*t, *a)).chain(sealed.map(|((b, _), a)| (*b, *a))) {
            add(&mut m, a);
            if t >= day.0 && t < day.1 {
                add(&mut d, a);
            }
        }
        (d, m)
    }

    fn truth(rows: &[Row], month: (i64, i64), day: (i64, i64)) -> ([i64; 4], [i64; 4]) {
        let (mut d, mut m) = ([0; 4], [0; 4]);
        for (t, a) in rows {
            if *t >= month.0 && *t < month.1 {
                add(&mut m, *a);
            }
            if *t >= day.0 && *t < day.1 {
                add(&mut d, *a);
            }
        }
        (d, m)
    }

    proptest! {
        /// Rows, sealed by successive sealings with buckets of any width that divides a
        /// quarter-hour (changing between sealings) while more rows arrive (late ones inside the
        /// seal added to their buckets, as the slow path does), read back through `split` for
        /// the day and month of any zone offset on the quarter-hour: the same sums as the rows.
        #[test]
        fn buckets_and_rows_sum_to_the_rows(
            batches in proptest::collection::vec(
                (proptest::collection::vec((0i64..40 * 96, 0i64..Q, -3i64..50), 0..30),
                 prop_oneof![Just(900i64), Just(60), Just(1), Just(450), Just(7)]), 1..6),
            offset_q in -48i64..=56,
            now_q in 35i64 * 96..40 * 96,
            day_len_q in prop_oneof![Just(96i64), Just(92), Just(100)],
        ) {
            let base = NOW - 40 * US_PER_DAY;
            let delay = DEFAULT_DELAY_S * US_PER_SEC;
            let mut rows: Vec<Row> = Vec::new();
            // By (start, width): buckets of different widths may start at the same time.
            let mut buckets: BTreeMap<(i64, i64), [i64; 4]> = BTreeMap::new();
            let mut seal: Option<Seal> = None;
            let end = base + now_q * Q + 17 * US_PER_SEC;
            for (i, (batch, width_s)) in batches.iter().enumerate() {
                let width = width_us(*width_s);
                let now = end - (batches.len() - 1 - i) as i64 * 3 * Q;
                for (q, within, n) in batch {
                    let t = base + q * Q + within;
                    let a = [n.signum(), *n, 2 * n, 7 * n];
                    rows.push((t, a));
                    if let Some(s) = seal {
                        if t >= s.from && t < s.until {
                            add(buckets.entry((bucket_floor(t, width), width)).or_default(), a);
                        }
                    }
                }
                // Every row is committed here: nothing open holds the seal.
                let p = plan(now, delay, width, seal, None);
                prop_assert!(p.from <= p.start && p.start <= p.until && p.until <= now - delay);
                if let Some(s) = seal {
                    prop_assert!(p.from >= s.from && p.until >= s.until);
                }
                buckets.retain(|(b, _), _| *b >= p.from);
                for (t, a) in &rows {
                    if *t >= p.start && *t < p.until {
                        add(buckets.entry((bucket_floor(*t, width), width)).or_default(), *a);
                    }
                }
                seal = Some(Seal { from: p.from, until: p.until });
            }
            // The tenant's day that holds `end`, and a month of 28 to 31 days around it; the
            // day may be shorter or longer (summer time).
            let off = offset_q * Q;
            let day0 = (end + off).div_euclid(US_PER_DAY) * US_PER_DAY - off;
            let day = (day0, day0 + day_len_q * Q);
            let month = (day0 - 20 * US_PER_DAY, day0 + 8 * US_PER_DAY);
            prop_assert_eq!(rebuilt(&rows, &buckets, month, day, seal), truth(&rows, month, day));
        }

        /// However it is called, a sealing keeps the seal on the quarter-hour, never goes past
        /// `now - delay` or an open row, and never moves back.
        #[test]
        fn a_sealing_is_bounded(
            now_q in 0i64..100_000, now_rest in 0i64..Q,
            from_q in 0i64..100_000, len_q in 0i64..10_000,
            open in proptest::option::of(0i64..100_000 * Q),
            delay_s in 1i64..10_000,
            width_s in 1i64..1000,
        ) {
            let width = width_us(width_s);
            let now = NOW + now_q * Q + now_rest;
            let cur = Seal { from: NOW + from_q * Q - KEEP_US, until: NOW + (from_q + len_q) * Q - KEEP_US };
            let open = open.map(|o| NOW + o - KEEP_US);
            let p = plan(now, delay_s * US_PER_SEC, width, Some(cur), open);
            prop_assert!(aligned(p.from) && aligned(p.start));
            prop_assert!(p.until % width == 0 && GRAIN_US % width == 0);
            prop_assert!(p.from >= cur.from && p.until >= cur.until && p.start >= p.from && p.until >= p.start);
            prop_assert!(p.until - p.start <= MAX_STEP_US);
            if p.until > p.start {
                prop_assert!(p.until <= now - delay_s * US_PER_SEC);
                if let Some(o) = open {
                    prop_assert!(p.until <= o);
                }
            }
        }
    }
}
