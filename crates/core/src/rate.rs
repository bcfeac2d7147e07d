//! Rate limits with GCRA (the generic cell rate algorithm): one theoretical arrival time (TAT)
//! per limit and key, in nanoseconds since the Unix epoch.
//!
//! A limit of `L` per period `P` spaces requests by `T = ceil(P / L)` and tolerates a burst of
//! `L`: a request of weight `n` is admitted when `max(TAT, now) + n*T - now <= L*T`, and then
//! `TAT := max(TAT, now) + n*T`. Rounding `T` up to the nanosecond never admits more than the
//! limit. A denied request changes nothing, and its `retry_after` is exact: at `now + retry_after`
//! the same request fits, one nanosecond earlier it does not.
//!
//! Conventions (documented in the README):
//! - a limit of 0 denies everything, with no retry time;
//! - a request heavier than the limit itself (`n > L`) can never fit: denied, no retry time;
//! - a clock that goes backwards never admits more: the TAT stays where it was;
//! - all arithmetic is in i128 and saturates, so extreme limits and weights cannot overflow.

pub const NS_PER_SEC: i64 = 1_000_000_000;

/// The rate dimensions, each with its period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Second,
    Minute,
    Hour,
}

impl Period {
    pub fn nanos(self) -> i64 {
        match self {
            Period::Second => NS_PER_SEC,
            Period::Minute => 60 * NS_PER_SEC,
            Period::Hour => 3_600 * NS_PER_SEC,
        }
    }
}

/// Outcome of checking one rate limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateCheck {
    /// Fits. `new_tat` is what to store if every other dimension admits too; `remaining` is how
    /// many more unit requests would fit right after this one.
    Fits { new_tat: i64, remaining: i64 },
    /// Does not fit; `retry_after_ns` is `None` when it never can.
    Denied {
        retry_after_ns: Option<i64>,
        remaining: i64,
    },
}

/// Spacing between unit requests for `limit` per `period`.
pub fn interval(limit: i64, period: Period) -> i64 {
    if limit <= 0 {
        return i64::MAX;
    }
    let p = period.nanos() as i128;
    let l = limit as i128;
    div(p + l - 1, l).max(1) as i64
}

/// `a / b` for `b > 0`, in 64-bit arithmetic when both fit (a 128-bit division is a library call
/// several times slower, and the operands nearly always fit).
fn div(a: i128, b: i128) -> i128 {
    match (i64::try_from(a), i64::try_from(b)) {
        (Ok(x), Ok(y)) if y > 0 => (x / y) as i128,
        _ => a / b,
    }
}

fn clamp(x: i128) -> i64 {
    x.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// Checks a request of weight `n` (>= 0) against `limit` per `period`, with the key's stored
/// `tat` (0 for a fresh key) at time `now` (ns).
pub fn check(limit: i64, period: Period, tat: i64, now: i64, n: i64) -> RateCheck {
    let n = n.max(0);
    if limit <= 0 || n > limit {
        return RateCheck::Denied {
            retry_after_ns: None,
            remaining: 0,
        };
    }
    let t = interval(limit, period) as i128;
    let burst = t * limit as i128; // L*T >= P
    let base = (tat as i128).max(now as i128);
    let new_tat = base + t * n as i128;
    let ahead = new_tat - now as i128; // how far the schedule runs ahead of now
    if ahead <= burst {
        let remaining = div(burst - ahead, t) as i64;
        RateCheck::Fits {
            new_tat: clamp(new_tat),
            remaining,
        }
    } else {
        let remaining = div((burst - (base - now as i128)).max(0), t) as i64;
        RateCheck::Denied {
            retry_after_ns: Some(clamp(ahead - burst)),
            remaining,
        }
    }
}

/// True when the key's bucket is full again at `now` (its state can be forgotten).
pub fn is_idle(tat: i64, now: i64) -> bool {
    tat <= now
}

#[cfg(test)]
mod unit {
    use super::*;
    use proptest::prelude::*;

    const NOW: i64 = 1_795_000_000 * NS_PER_SEC;

    fn fits(c: RateCheck) -> Option<i64> {
        match c {
            RateCheck::Fits { new_tat, .. } => Some(new_tat),
            RateCheck::Denied { .. } => None,
        }
    }

    fn retry(c: RateCheck) -> Option<i64> {
        match c {
            RateCheck::Denied { retry_after_ns, .. } => retry_after_ns,
            RateCheck::Fits { .. } => panic!("expected a denial, got {c:?}"),
        }
    }

    #[test]
    fn burst_up_to_the_limit_then_spacing() {
        let mut tat = 0;
        for i in 0..10 {
            tat = fits(check(10, Period::Minute, tat, NOW, 1)).unwrap_or_else(|| panic!("request {i}"));
        }
        let d = check(10, Period::Minute, tat, NOW, 1);
        assert_eq!(retry(d), Some(6 * NS_PER_SEC), "one request per 6 s after the burst");
        // exactly at the retry time it fits; a nanosecond earlier it does not
        assert!(fits(check(10, Period::Minute, tat, NOW + 6 * NS_PER_SEC, 1)).is_some());
        assert!(fits(check(10, Period::Minute, tat, NOW + 6 * NS_PER_SEC - 1, 1)).is_none());
    }

    #[test]
    fn a_bucket_is_idle_once_its_schedule_is_not_ahead() {
        assert!(is_idle(NOW, NOW));
        assert!(is_idle(NOW - 1, NOW));
        assert!(!is_idle(NOW + 1, NOW));
    }

    #[test]
    fn remaining_counts_down() {
        let c = check(3, Period::Second, 0, NOW, 1);
        assert!(matches!(c, RateCheck::Fits { remaining: 2, .. }), "{c:?}");
        let RateCheck::Fits { new_tat, .. } = c else {
            unreachable!()
        };
        let c = check(3, Period::Second, new_tat, NOW, 2);
        assert!(matches!(c, RateCheck::Fits { remaining: 0, .. }), "{c:?}");
    }

    #[test]
    fn weighted_requests_draw_their_weight() {
        // 1000 tokens per minute: 600 then 400 fit, one more token waits 60 ms
        let t1 = fits(check(1000, Period::Minute, 0, NOW, 600)).unwrap();
        let t2 = fits(check(1000, Period::Minute, t1, NOW, 400)).unwrap();
        assert_eq!(retry(check(1000, Period::Minute, t2, NOW, 1)), Some(60_000_000));
        assert_eq!(
            retry(check(1000, Period::Minute, 0, NOW, 1001)),
            None,
            "heavier than the limit"
        );
        assert!(
            fits(check(1000, Period::Minute, t2, NOW, 0)).is_some(),
            "weight 0 always fits when not ahead"
        );
    }

    #[test]
    fn zero_limit_denies_everything_without_retry() {
        assert_eq!(retry(check(0, Period::Second, 0, NOW, 1)), None);
        assert_eq!(retry(check(0, Period::Hour, 0, NOW, 0)), None);
    }

    #[test]
    fn a_clock_going_backwards_never_admits_more() {
        let mut tat = 0;
        for _ in 0..5 {
            tat = fits(check(5, Period::Second, tat, NOW, 1)).unwrap();
        }
        for back in [1, 1_000, NS_PER_SEC, 3_600 * NS_PER_SEC] {
            assert!(fits(check(5, Period::Second, tat, NOW - back, 1)).is_none(), "{back}");
        }
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        for limit in [1, 7, i64::MAX / 2, i64::MAX] {
            for now in [0, NOW, i64::MAX - 1, i64::MIN / 2] {
                for tat in [0, now, i64::MAX, i64::MIN] {
                    for n in [0, 1, limit] {
                        for p in [Period::Second, Period::Minute, Period::Hour] {
                            let _ = check(limit, p, tat, now, n);
                        }
                    }
                }
            }
        }
        assert_eq!(interval(i64::MAX, Period::Hour), 1);
        assert_eq!(interval(7, Period::Minute), 8_571_428_572);
    }

    proptest! {
        /// Over any window, admissions never exceed burst + elapsed / interval, and a caller that
        /// waits exactly retry_after is admitted.
        #[test]
        fn never_more_than_the_rate_allows(
            limit in 1i64..500,
            period in prop_oneof![Just(Period::Second), Just(Period::Minute), Just(Period::Hour)],
            steps in proptest::collection::vec((0i64..2_000_000_000, 0i64..5), 1..300),
        ) {
            let t = interval(limit, period);
            let mut now = NOW;
            let mut tat = 0i64;
            let mut admitted_weight: i128 = 0;
            for (dt, n) in steps {
                now += dt;
                match check(limit, period, tat, now, n) {
                    RateCheck::Fits { new_tat, .. } => { tat = new_tat; admitted_weight += n as i128; }
                    RateCheck::Denied { retry_after_ns: Some(r), .. } => {
                        prop_assert!(r > 0);
                        prop_assert!(fits(check(limit, period, tat, now + r, n)).is_some());
                        prop_assert!(fits(check(limit, period, tat, now + r - 1, n)).is_none());
                    }
                    RateCheck::Denied { retry_after_ns: None, .. } => prop_assert!(n > limit),
                }
                let elapsed = (now - NOW) as i128;
                prop_assert!(admitted_weight <= limit as i128 + elapsed / t as i128);
            }
        }
    }
}
