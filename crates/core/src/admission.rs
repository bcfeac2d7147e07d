//! One admission decision across every dimension: calendar quotas, rates and concurrency.
//!
//! Pure Rust. All-or-nothing: the verdict says what to store (new rate states, one more hold)
//! only when every dimension admits; a denial changes nothing.

use crate::calendar::Now;
use crate::policy::{Limit, Policy};
use crate::quota::{self, Ask, QuotaVerdict, Totals};
use crate::rate::{self, Period, RateCheck};

/// The rate dimensions held per key, in the order of `Slot::tat`.
pub const RATE_LIMITS: [(Limit, Period); 4] = [
    (Limit::RequestsPerSecond, Period::Second),
    (Limit::RequestsPerMinute, Period::Minute),
    (Limit::RequestsPerHour, Period::Hour),
    (Limit::TokensPerMinute, Period::Minute),
];

/// What the shared-memory entry holds for one subject.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct State {
    pub totals: Totals,
    /// GCRA theoretical arrival times (ns since the Unix epoch), one per `RATE_LIMITS` entry.
    pub tat: [i64; 4],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyKind {
    Quota,
    Budget,
    Rate,
    Concurrency,
    /// An organisation whose emergency action is `deny`, at its emergency threshold
    /// (`emergency::decide_money`).
    Emergency,
}

impl DenyKind {
    pub fn reason(self) -> &'static str {
        match self {
            DenyKind::Quota => "quota_exceeded",
            DenyKind::Budget => "budget_exceeded",
            DenyKind::Rate => "rate_limited",
            DenyKind::Concurrency => "concurrency_limit",
            DenyKind::Emergency => "emergency_threshold",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted: store `tat`, hold one request and the tokens. `tightest` is the dimension with
    /// the smallest share left after this admission.
    Allow {
        tightest: Option<(Limit, i64)>,
        warn: bool,
        tat: [i64; 4],
    },
    /// Refused by `limit`. `retry_after_ms` is exact for rates, the end of the window for quotas,
    /// and `None` when waiting cannot help (or, for concurrency, depends on other requests).
    Deny {
        kind: DenyKind,
        limit: Limit,
        remaining: i64,
        retry_after_ms: Option<i64>,
    },
}

/// Which denial to report when several dimensions refuse: the one that frees last
/// (`None` = never, or unknown, counts as last).
pub(crate) fn later(a: Option<i64>, b: Option<i64>) -> bool {
    match (a, b) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(x), Some(y)) => x > y,
    }
}

fn ceil_ms(ns: i64) -> i64 {
    (ns / 1_000_000 + i64::from(ns % 1_000_000 != 0)).max(1)
}

/// Whether an admission under `policy` must hold anything until it is settled: a place among
/// `max_concurrent`, a request against a request quota, a token estimate against an input
/// token quota, or a cost estimate against a budget. Rate limits are consumed at admission and
/// hold nothing.
pub fn needs_hold(policy: &Policy, ask: impl Into<Ask>) -> bool {
    let ask = ask.into();
    let set = |l: Limit| policy.limit(l).is_some();
    set(Limit::MaxConcurrent)
        || set(Limit::RequestsPerDay)
        || set(Limit::RequestsPerMonth)
        || (ask.tokens > 0 && (set(Limit::InputTokensPerDay) || set(Limit::InputTokensPerMonth)))
        || (ask.cost.is_some_and(|c| c > 0) && (set(Limit::DailyBudgetCents) || set(Limit::MonthlyBudgetCents)))
}

/// Decides a request (its token estimate, or an [`Ask`] with its cost) at `now` (whose day and
/// month ends set a quota denial's retry).
pub fn decide(policy: &Policy, state: &State, ask: impl Into<Ask>, now: Now, warn_pct: i64) -> Verdict {
    let ask = ask.into();
    let tokens = ask.tokens;
    let now_ns = now.us.saturating_mul(1_000);
    let mut deny: Option<(DenyKind, Limit, i64, Option<i64>)> = None;
    let mut note = |kind, limit, remaining, retry: Option<i64>| {
        if deny.is_none_or(|(_, _, _, r)| later(retry, r)) {
            deny = Some((kind, limit, remaining, retry));
        }
    };

    // Calendar quotas first: they also tell the tightest quota dimension.
    let (mut tightest, warn) = match quota::check(policy, &state.totals, ask, now, warn_pct) {
        QuotaVerdict::Allow { tightest, warn } => (
            tightest.map(|(l, r)| (l, r, quota::cap_of(policy, l).unwrap_or(1))),
            warn,
        ),
        QuotaVerdict::Deny {
            limit,
            remaining,
            retry_after_ms,
        } => {
            let kind = if quota::is_budget(limit) {
                DenyKind::Budget
            } else {
                DenyKind::Quota
            };
            note(kind, limit, remaining, retry_after_ms);
            (None, false)
        }
    };
    let consider = |l: Limit, after: i64, cap: i64, t: &mut Option<(Limit, i64, i64)>| {
        if t.is_none_or(|(_, a, c)| quota::tighter(after, cap, a, c)) {
            *t = Some((l, after, cap));
        }
    };

    if let Some(cap) = policy.limit(Limit::MaxConcurrent) {
        let held = state.totals.held_requests;
        if held.saturating_add(1) > cap {
            note(DenyKind::Concurrency, Limit::MaxConcurrent, (cap - held).max(0), None);
        } else {
            consider(Limit::MaxConcurrent, cap - held - 1, cap, &mut tightest);
        }
    }

    let mut tat = state.tat;
    for (i, (l, period)) in RATE_LIMITS.iter().enumerate() {
        let Some(cap) = policy.limit(*l) else { continue };
        let n = if *l == Limit::TokensPerMinute { tokens } else { 1 };
        match rate::check(cap, *period, state.tat[i], now_ns, n) {
            RateCheck::Fits { new_tat, remaining } => {
                tat[i] = new_tat;
                consider(*l, remaining, cap, &mut tightest);
            }
            RateCheck::Denied {
                retry_after_ns,
                remaining,
            } => {
                note(DenyKind::Rate, *l, remaining, retry_after_ns.map(ceil_ms));
            }
        }
    }

    if let Some((kind, limit, remaining, retry_after_ms)) = deny {
        return Verdict::Deny {
            kind,
            limit,
            remaining,
            retry_after_ms,
        };
    }
    // `warn` comes from the calendar quotas only: a rate bucket that is nearly empty is normal
    // spacing, not a reason to warn.
    Verdict::Allow {
        tightest: tightest.map(|(l, a, _)| (l, a)),
        warn,
        tat,
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::calendar::US_PER_DAY;
    use proptest::prelude::*;

    fn policy(pairs: &[(Limit, i64)]) -> Policy {
        Policy::with_limits(pairs)
    }

    const NOON: i64 = 20_414 * US_PER_DAY + US_PER_DAY / 2;

    fn apply(v: &Verdict, s: &mut State, tokens: i64) -> bool {
        match v {
            Verdict::Allow { tat, .. } => {
                s.tat = *tat;
                s.totals.held_requests += 1;
                s.totals.held_tokens += tokens;
                true
            }
            Verdict::Deny { .. } => false,
        }
    }

    #[test]
    fn rate_denial_is_exact_and_consumes_nothing() {
        let p = policy(&[(Limit::RequestsPerSecond, 2), (Limit::RequestsPerDay, 100)]);
        let mut s = State::default();
        assert!(apply(&decide(&p, &s, 0, Now::utc(NOON), 80), &mut s, 0));
        assert!(apply(&decide(&p, &s, 0, Now::utc(NOON), 80), &mut s, 0));
        let before = s;
        let v = decide(&p, &s, 0, Now::utc(NOON), 80);
        assert_eq!(
            v,
            Verdict::Deny {
                kind: DenyKind::Rate,
                limit: Limit::RequestsPerSecond,
                remaining: 0,
                retry_after_ms: Some(500)
            }
        );
        assert!(!apply(&v, &mut s, 0));
        assert_eq!(s, before);
        assert!(matches!(
            decide(&p, &s, 0, Now::utc(NOON + 499_999), 80),
            Verdict::Deny { .. }
        ));
        assert!(matches!(
            decide(&p, &s, 0, Now::utc(NOON + 500_000), 80),
            Verdict::Allow { .. }
        ));
    }

    #[test]
    fn a_quota_denial_leaves_rate_state_untouched() {
        let p = policy(&[(Limit::RequestsPerMinute, 10), (Limit::InputTokensPerDay, 100)]);
        let mut s = State::default();
        assert!(apply(&decide(&p, &s, 90, Now::utc(NOON), 80), &mut s, 90));
        let tat = s.tat;
        let v = decide(&p, &s, 20, Now::utc(NOON), 80);
        assert!(
            matches!(
                v,
                Verdict::Deny {
                    kind: DenyKind::Quota,
                    limit: Limit::InputTokensPerDay,
                    ..
                }
            ),
            "{v:?}"
        );
        assert!(!apply(&v, &mut s, 20));
        assert_eq!(s.tat, tat);
    }

    #[test]
    fn tokens_draw_on_tokens_per_minute() {
        let p = policy(&[(Limit::TokensPerMinute, 1000)]);
        let mut s = State::default();
        assert!(apply(&decide(&p, &s, 700, Now::utc(NOON), 80), &mut s, 700));
        let v = decide(&p, &s, 400, Now::utc(NOON), 80);
        assert_eq!(
            v,
            Verdict::Deny {
                kind: DenyKind::Rate,
                limit: Limit::TokensPerMinute,
                remaining: 300,
                retry_after_ms: Some(6_000)
            }
        );
        assert!(apply(&decide(&p, &s, 300, Now::utc(NOON), 80), &mut s, 300));
    }

    #[test]
    fn a_budget_refuses_as_budget_exceeded_and_holds_the_cost() {
        assert_eq!(DenyKind::Budget.reason(), "budget_exceeded");
        let p = policy(&[(Limit::DailyBudgetCents, 1), (Limit::RequestsPerMinute, 100)]);
        let ask = Ask {
            tokens: 10,
            cost: Some(6_000),
        };
        assert!(needs_hold(&p, ask), "a cost estimate is held");
        assert!(
            !needs_hold(&p, Ask { tokens: 10, cost: None }),
            "nothing to hold when it costs nothing"
        );
        let mut s = State::default();
        match decide(&p, &s, ask, Now::utc(NOON), 80) {
            Verdict::Allow { tightest, warn, .. } => {
                assert_eq!(tightest, Some((Limit::DailyBudgetCents, 4_000)));
                assert!(!warn, "60 % used");
            }
            v => panic!("{v:?}"),
        }
        s.totals.held_cost += 6_000;
        assert_eq!(
            decide(&p, &s, ask, Now::utc(NOON), 80),
            Verdict::Deny {
                kind: DenyKind::Budget,
                limit: Limit::DailyBudgetCents,
                remaining: 4_000,
                retry_after_ms: Some(43_200_000)
            }
        );
        // The same request on a model that costs nothing is admitted.
        assert!(matches!(
            decide(&p, &s, Ask { tokens: 10, cost: None }, Now::utc(NOON), 80),
            Verdict::Allow { .. }
        ));
    }

    #[test]
    fn concurrency_counts_open_holds() {
        // (the reasons as the SQL surface spells them)
        assert_eq!(DenyKind::Quota.reason(), "quota_exceeded");
        assert_eq!(DenyKind::Rate.reason(), "rate_limited");
        assert_eq!(DenyKind::Concurrency.reason(), "concurrency_limit");
        let p = policy(&[(Limit::MaxConcurrent, 2)]);
        let mut s = State::default();
        assert!(apply(&decide(&p, &s, 0, Now::utc(NOON), 80), &mut s, 0));
        assert!(apply(&decide(&p, &s, 0, Now::utc(NOON), 80), &mut s, 0));
        let v = decide(&p, &s, 0, Now::utc(NOON), 80);
        assert_eq!(
            v,
            Verdict::Deny {
                kind: DenyKind::Concurrency,
                limit: Limit::MaxConcurrent,
                remaining: 0,
                retry_after_ms: None
            }
        );
        s.totals.held_requests -= 1; // one request finished
        assert!(matches!(decide(&p, &s, 0, Now::utc(NOON), 80), Verdict::Allow { .. }));
        // As the tightest dimension, concurrency reports the places left after this admission.
        let p = policy(&[(Limit::MaxConcurrent, 5), (Limit::RequestsPerDay, 1000)]);
        let mut s = State::default();
        s.totals.held_requests = 2;
        assert_eq!(
            allowed(decide(&p, &s, 0, Now::utc(NOON), 80)).0,
            Some((Limit::MaxConcurrent, 2))
        );
    }

    #[test]
    fn on_equal_retry_times_the_first_dimension_checked_is_reported() {
        // One second before midnight: the day quota frees in 1000 ms, and so does the
        // per-second rate. Quotas are checked first.
        let p = policy(&[(Limit::RequestsPerDay, 1), (Limit::RequestsPerSecond, 1)]);
        let now = NOON + US_PER_DAY / 2 - 1_000_000;
        let mut s = State::default();
        assert!(apply(&decide(&p, &s, 0, Now::utc(now), 80), &mut s, 0));
        match decide(&p, &s, 0, Now::utc(now), 80) {
            Verdict::Deny {
                kind,
                limit,
                retry_after_ms,
                ..
            } => {
                assert_eq!(retry_after_ms, Some(1000));
                assert_eq!((kind, limit), (DenyKind::Quota, Limit::RequestsPerDay));
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn the_denial_that_frees_last_is_reported() {
        // per-second frees in 1 s, per-minute in 60 s: the minute is reported
        let p = policy(&[(Limit::RequestsPerSecond, 1), (Limit::RequestsPerMinute, 1)]);
        let mut s = State::default();
        assert!(apply(&decide(&p, &s, 0, Now::utc(NOON), 80), &mut s, 0));
        let v = decide(&p, &s, 0, Now::utc(NOON), 80);
        assert!(
            matches!(
                v,
                Verdict::Deny {
                    limit: Limit::RequestsPerMinute,
                    retry_after_ms: Some(60_000),
                    ..
                }
            ),
            "{v:?}"
        );
        // a quota that frees at midnight beats both
        let p = policy(&[(Limit::RequestsPerMinute, 1), (Limit::RequestsPerDay, 1)]);
        let mut s = State::default();
        assert!(apply(&decide(&p, &s, 0, Now::utc(NOON), 80), &mut s, 0));
        let v = decide(&p, &s, 0, Now::utc(NOON), 80);
        assert!(
            matches!(
                v,
                Verdict::Deny {
                    kind: DenyKind::Quota,
                    retry_after_ms: Some(43_200_000),
                    ..
                }
            ),
            "{v:?}"
        );
    }

    /// The tightest dimension and the warning of an admission; panics on a denial.
    fn allowed(v: Verdict) -> (Option<(Limit, i64)>, bool) {
        match v {
            Verdict::Allow { tightest, warn, .. } => (tightest, warn),
            other => panic!("denied: {other:?}"),
        }
    }

    #[test]
    fn tightest_dimension_and_warning() {
        let p = policy(&[(Limit::RequestsPerMinute, 10), (Limit::RequestsPerDay, 1000)]);
        assert_eq!(
            allowed(decide(&p, &State::default(), 0, Now::utc(NOON), 80)),
            (Some((Limit::RequestsPerMinute, 9)), false)
        );
        let p = policy(&[(Limit::RequestsPerMinute, 10)]);
        let mut s = State::default();
        for _ in 0..7 {
            assert!(apply(&decide(&p, &s, 0, Now::utc(NOON), 80), &mut s, 0));
        }
        assert_eq!(
            allowed(decide(&p, &s, 0, Now::utc(NOON), 80)),
            (Some((Limit::RequestsPerMinute, 2)), false)
        );
        let p = policy(&[(Limit::RequestsPerMinute, 10), (Limit::RequestsPerDay, 5)]);
        let s = State {
            totals: Totals {
                day_requests: 3,
                ..Totals::default()
            },
            ..State::default()
        };
        assert_eq!(
            allowed(decide(&p, &s, 0, Now::utc(NOON), 80)),
            (Some((Limit::RequestsPerDay, 1)), true)
        );
    }

    #[test]
    fn only_plans_with_something_to_hold_hold() {
        let rates = policy(&[(Limit::RequestsPerSecond, 5), (Limit::TokensPerMinute, 1000)]);
        assert!(!needs_hold(&rates, 0));
        assert!(!needs_hold(&rates, 500));
        let output_only = policy(&[(Limit::OutputTokensPerDay, 10)]);
        assert!(!needs_hold(&output_only, 500));
        let input = policy(&[(Limit::InputTokensPerMonth, 10)]);
        assert!(!needs_hold(&input, 0), "an estimate of 0 holds nothing");
        assert!(needs_hold(&input, 1));
        assert!(needs_hold(&policy(&[(Limit::RequestsPerDay, 10)]), 0));
        assert!(needs_hold(&policy(&[(Limit::RequestsPerMonth, 10)]), 0));
        assert!(needs_hold(&policy(&[(Limit::MaxConcurrent, 1)]), 0));
    }

    /// Whether dimension `l` alone has room for a request of `tokens` (a model of the rules that
    /// does not go through `decide`; rates through `rate::check`, tested on its own).
    fn room(p: &Policy, s: &State, tokens: i64, now_us: i64, l: Limit) -> bool {
        let Some(cap) = p.limit(l) else { return true };
        let t = &s.totals;
        match l {
            Limit::RequestsPerDay => t.day_requests + t.held_requests < cap,
            Limit::RequestsPerMonth => t.month_requests + t.held_requests < cap,
            Limit::InputTokensPerDay => t.day_input + t.held_tokens + tokens.max(1) <= cap,
            Limit::InputTokensPerMonth => t.month_input + t.held_tokens + tokens.max(1) <= cap,
            Limit::OutputTokensPerDay => t.day_output < cap,
            Limit::OutputTokensPerMonth => t.month_output < cap,
            Limit::MaxConcurrent => t.held_requests < cap,
            _ => {
                let i = RATE_LIMITS.iter().position(|(r, _)| *r == l).unwrap();
                let n = if l == Limit::TokensPerMinute { tokens } else { 1 };
                matches!(
                    rate::check(cap, RATE_LIMITS[i].1, s.tat[i], now_us * 1_000, n),
                    RateCheck::Fits { .. }
                )
            }
        }
    }

    /// Every limit `decide` looks at: the rates, the calendar quotas, concurrency.
    fn all_limits() -> Vec<Limit> {
        RATE_LIMITS
            .iter()
            .map(|(l, _)| *l)
            .chain(quota::QUOTA_LIMITS.into_iter().filter(|l| !quota::is_budget(*l)))
            .chain([Limit::MaxConcurrent])
            .collect()
    }

    proptest! {
        /// Any mix of limits (each set or not) and any sequence of admissions, records and
        /// releases: `decide` admits exactly when every dimension has room (so it neither lets
        /// too much through nor denies what fits), a denial names a dimension without room, a
        /// rate denial's retry time is exact to the millisecond, and no limit is ever exceeded.
        #[test]
        fn decide_admits_exactly_what_every_dimension_has_room_for(
            caps in proptest::collection::vec(proptest::option::of(1i64..40), 11),
            token_caps in proptest::collection::vec(proptest::option::of(1i64..2_000), 5),
            steps in proptest::collection::vec((0i64..90_000_000, 0i64..120, 0u8..4, 0i64..200), 1..150),
        ) {
            // Token limits take the second set of caps (they need larger values).
            let pairs: Vec<(Limit, i64)> = all_limits().iter().enumerate().filter_map(|(i, l)| {
                let cap = match l {
                    Limit::TokensPerMinute => token_caps[0],
                    Limit::InputTokensPerDay => token_caps[1],
                    Limit::InputTokensPerMonth => token_caps[2],
                    Limit::OutputTokensPerDay => token_caps[3],
                    Limit::OutputTokensPerMonth => token_caps[4],
                    _ => caps[i],
                };
                cap.map(|c| (*l, c))
            }).collect();
            let p = policy(&pairs);
            let mut s = State::default();
            let mut now = NOON;
            let mut open: Vec<i64> = vec![]; // token estimates of the requests in flight
            let mut admitted: Vec<(i64, i64)> = vec![];
            for (dt, tokens, action, actual) in steps {
                now += dt;
                // A request in flight completes: recorded (actual input and output) or released.
                if !open.is_empty() && action > 0 {
                    let est = open.remove(0);
                    s.totals.held_requests -= 1;
                    s.totals.held_tokens -= est;
                    if action < 3 {
                        let t = &mut s.totals;
                        t.day_requests += 1;
                        t.month_requests += 1;
                        t.day_input += actual;
                        t.month_input += actual;
                        t.day_output += actual / 2;
                        t.month_output += actual / 2;
                    }
                }
                let v = decide(&p, &s, tokens, Now::utc(now), 80);
                let fits: Vec<Limit> = all_limits().iter().copied().filter(|l| !room(&p, &s, tokens, now, *l)).collect();
                match v {
                    Verdict::Allow { .. } => prop_assert!(fits.is_empty(), "admitted without room in {fits:?}"),
                    Verdict::Deny { kind, limit, retry_after_ms, .. } => {
                        prop_assert!(fits.contains(&limit), "denied on {limit:?}, which has room");
                        let want = match limit {
                            Limit::MaxConcurrent => DenyKind::Concurrency,
                            l if RATE_LIMITS.iter().any(|(r, _)| *r == l) => DenyKind::Rate,
                            _ => DenyKind::Quota,
                        };
                        prop_assert_eq!(kind, want);
                        if let (DenyKind::Rate, Some(r)) = (kind, retry_after_ms) {
                            // A millisecond earlier the limit named still has no room (so the
                            // request is denied); at the retry time it has.
                            prop_assert!(!room(&p, &s, tokens, now + (r - 1) * 1_000, limit));
                            let earlier = decide(&p, &s, tokens, Now::utc(now + (r - 1) * 1_000), 80);
                            prop_assert!(matches!(earlier, Verdict::Deny { .. }), "admitted a millisecond early");
                            prop_assert!(room(&p, &s, tokens, now + r * 1_000, limit));
                        }
                    }
                }
                if apply(&v, &mut s, tokens) {
                    open.push(tokens);
                    admitted.push((now, tokens));
                }
                // Nothing is ever exceeded (recorded output may overshoot by one record).
                let t = s.totals;
                let cap = |l: Limit| p.limit(l).unwrap_or(i64::MAX);
                prop_assert!(t.held_requests <= cap(Limit::MaxConcurrent));
                prop_assert!(t.day_requests + t.held_requests <= cap(Limit::RequestsPerDay));
                prop_assert!(t.month_requests + t.held_requests <= cap(Limit::RequestsPerMonth));
                let count = |window: i64| admitted.iter().filter(|(a, _)| now - a < window).count() as i64;
                let weight = |window: i64| admitted.iter().filter(|(a, _)| now - a < window).map(|(_, n)| n).sum::<i64>();
                prop_assert!(count(1_000_000) <= 2 * cap(Limit::RequestsPerSecond).min(i64::MAX / 2));
                prop_assert!(count(60_000_000) <= 2 * cap(Limit::RequestsPerMinute).min(i64::MAX / 2));
                prop_assert!(count(3_600_000_000) <= 2 * cap(Limit::RequestsPerHour).min(i64::MAX / 2));
                prop_assert!(weight(60_000_000) <= 2 * cap(Limit::TokensPerMinute).min(i64::MAX / 2));
            }
        }
        /// Sequences of requests never exceed any configured limit, whatever the mix.
        #[test]
        fn all_dimensions_hold_together(
            rps in 1i64..5, rpm in 1i64..50, rpd in 1i64..100, tpm in 1i64..500, conc in 1i64..10,
            steps in proptest::collection::vec((0i64..400_000, 0i64..60, any::<bool>()), 1..200),
        ) {
            let p = policy(&[(Limit::RequestsPerSecond, rps), (Limit::RequestsPerMinute, rpm),
                             (Limit::RequestsPerDay, rpd), (Limit::TokensPerMinute, tpm), (Limit::MaxConcurrent, conc)]);
            let mut s = State::default();
            let mut now = NOON;
            let mut admitted: Vec<(i64, i64)> = vec![];
            for (dt, tokens, finish) in steps {
                now += dt;
                if finish && s.totals.held_requests > 0 {
                    s.totals.held_requests -= 1; // a request completes (its usage is recorded elsewhere)
                    s.totals.day_requests += 1;
                }
                let v = decide(&p, &s, tokens, Now::utc(now), 80);
                if apply(&v, &mut s, tokens) {
                    admitted.push((now, tokens));
                }
                prop_assert!(s.totals.held_requests <= conc);
                prop_assert!(s.totals.day_requests + s.totals.held_requests <= rpd);
                let in_last_sec = admitted.iter().filter(|(t, _)| now - t < 1_000_000).count() as i64;
                prop_assert!(in_last_sec <= 2 * rps, "{in_last_sec} in one second with rps {rps}");
                let tokens_last_min: i64 = admitted.iter().filter(|(t, _)| now - t < 60_000_000).map(|(_, n)| n).sum();
                prop_assert!(tokens_last_min <= 2 * tpm);
            }
        }
    }
}
