//! Calendar-quota decisions: checking one request against a policy and the running totals.
//!
//! Pure Rust. The totals come from the shared-memory index of the usage ledger; this module only
//! decides. Rules (documented in the README):
//! - a request counts as one request against `requests_per_day` / `requests_per_month`;
//! - its token estimate is held against `input_tokens_per_day` / `input_tokens_per_month`, and at
//!   least one input token must remain (a request with no estimate still sends a prompt);
//! - at least one output token must remain under `output_tokens_per_day` / `_per_month`;
//! - what earlier admissions hold (requests and tokens not yet recorded or released) counts as used;
//! - money budgets (`daily_budget_cents`, `monthly_budget_cents`, compared in micro-units) are
//!   checked only for a request that costs money: its cost estimate is held against them, and at
//!   least one micro-unit must remain. A request whose model costs nothing is never refused by money.

use crate::calendar::{Now, Window};
use crate::policy::{Limit, Policy};

/// Running totals of one subject: committed usage in the current windows plus open holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Totals {
    pub day_requests: i64,
    pub day_input: i64,
    pub day_output: i64,
    pub month_requests: i64,
    pub month_input: i64,
    pub month_output: i64,
    pub held_requests: i64,
    pub held_tokens: i64,
    /// Committed spend in the day and month windows, in micro-units (`money`).
    pub day_cost: i64,
    pub month_cost: i64,
    /// Cost estimates held by open admissions, in micro-units.
    pub held_cost: i64,
}

/// The quota dimensions, each with its limit, window and how it is measured.
pub const QUOTA_LIMITS: [Limit; 8] = [
    Limit::RequestsPerDay,
    Limit::RequestsPerMonth,
    Limit::InputTokensPerDay,
    Limit::InputTokensPerMonth,
    Limit::OutputTokensPerDay,
    Limit::OutputTokensPerMonth,
    Limit::DailyBudgetCents,
    Limit::MonthlyBudgetCents,
];

/// True for the money budgets, whose limits are set in cents and compared in micro-units.
pub fn is_budget(l: Limit) -> bool {
    matches!(l, Limit::DailyBudgetCents | Limit::MonthlyBudgetCents)
}

/// A limit's value in the unit its dimension is counted in (micro-units for budgets).
pub fn cap_of(policy: &Policy, l: Limit) -> Option<i64> {
    let cap = policy.limit(l)?;
    Some(if is_budget(l) {
        crate::money::cents_to_micros(cap)
    } else {
        cap
    })
}

/// What one request asks for: its input token estimate and, when it costs money under a budget,
/// its cost estimate in micro-units (`None`: no budget applies, or its model costs nothing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ask {
    pub tokens: i64,
    pub cost: Option<i64>,
}

impl From<i64> for Ask {
    fn from(tokens: i64) -> Ask {
        Ask { tokens, cost: None }
    }
}

pub fn window_of(l: Limit) -> Option<Window> {
    match l {
        Limit::RequestsPerDay | Limit::InputTokensPerDay | Limit::OutputTokensPerDay | Limit::DailyBudgetCents => {
            Some(Window::Day)
        }
        Limit::RequestsPerMonth
        | Limit::InputTokensPerMonth
        | Limit::OutputTokensPerMonth
        | Limit::MonthlyBudgetCents => Some(Window::Month),
        _ => None,
    }
}

impl Totals {
    /// Committed usage plus holds in one quota dimension.
    pub fn used(&self, l: Limit) -> i64 {
        match l {
            Limit::RequestsPerDay => self.day_requests.saturating_add(self.held_requests),
            Limit::RequestsPerMonth => self.month_requests.saturating_add(self.held_requests),
            Limit::InputTokensPerDay => self.day_input.saturating_add(self.held_tokens),
            Limit::InputTokensPerMonth => self.month_input.saturating_add(self.held_tokens),
            Limit::OutputTokensPerDay => self.day_output,
            Limit::OutputTokensPerMonth => self.month_output,
            Limit::DailyBudgetCents => self.day_cost.saturating_add(self.held_cost),
            Limit::MonthlyBudgetCents => self.month_cost.saturating_add(self.held_cost),
            _ => 0,
        }
    }

    /// What open admissions hold in one quota dimension.
    pub fn held(&self, l: Limit) -> i64 {
        match l {
            Limit::RequestsPerDay | Limit::RequestsPerMonth => self.held_requests,
            Limit::InputTokensPerDay | Limit::InputTokensPerMonth => self.held_tokens,
            Limit::DailyBudgetCents | Limit::MonthlyBudgetCents => self.held_cost,
            _ => 0,
        }
    }

    /// Committed usage only (no holds).
    pub fn committed(&self, l: Limit) -> i64 {
        match l {
            Limit::RequestsPerDay => self.day_requests,
            Limit::RequestsPerMonth => self.month_requests,
            Limit::InputTokensPerDay => self.day_input,
            Limit::InputTokensPerMonth => self.month_input,
            Limit::OutputTokensPerDay => self.day_output,
            Limit::OutputTokensPerMonth => self.month_output,
            Limit::DailyBudgetCents => self.day_cost,
            Limit::MonthlyBudgetCents => self.month_cost,
            _ => 0,
        }
    }
}

/// What one admission needs in a dimension, and what it holds there if admitted; `None` when the
/// dimension does not apply to it (a budget, for a request that costs nothing).
fn need(l: Limit, ask: Ask) -> Option<(i64, i64)> {
    match l {
        Limit::RequestsPerDay | Limit::RequestsPerMonth => Some((1, 1)),
        Limit::InputTokensPerDay | Limit::InputTokensPerMonth => Some((ask.tokens.max(1), ask.tokens)),
        Limit::OutputTokensPerDay | Limit::OutputTokensPerMonth => Some((1, 0)),
        Limit::DailyBudgetCents | Limit::MonthlyBudgetCents => ask.cost.map(|c| (c.max(1), c.max(0))),
        _ => Some((0, 0)),
    }
}

/// True when `after` left of `cap` is a smaller share than `a` left of `c` (no division).
pub fn tighter(after: i64, cap: i64, a: i64, c: i64) -> bool {
    (after as i128) * (c.max(1) as i128) < (a as i128) * (cap.max(1) as i128)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaVerdict {
    /// Admitted. `tightest` is the dimension with the smallest share left after this admission,
    /// with what remains in it; `warn` when that share used reaches the warning threshold.
    Allow { tightest: Option<(Limit, i64)>, warn: bool },
    /// Refused by `limit`; `retry_after_ms` is the time to the end of its window, or `None` when
    /// the request can never fit (it asks for more than the limit itself).
    Deny {
        limit: Limit,
        remaining: i64,
        retry_after_ms: Option<i64>,
    },
}

/// Checks a request (its token estimate, or an [`Ask`] with its cost) against every calendar
/// quota and budget. All-or-nothing: the caller holds only after an `Allow`. When several
/// dimensions refuse, the one that frees last is reported. Budget amounts (`remaining`) are in
/// micro-units.
pub fn check(policy: &Policy, totals: &Totals, ask: impl Into<Ask>, now: Now, warn_pct: i64) -> QuotaVerdict {
    let ask = ask.into();
    let mut deny: Option<(Limit, i64, Option<i64>)> = None;
    let mut tightest: Option<(Limit, i64, i64)> = None; // (limit, remaining after, limit value)
    for l in QUOTA_LIMITS {
        let Some(cap) = cap_of(policy, l) else { continue };
        let Some((needed, held)) = need(l, ask) else { continue };
        let used = totals.used(l);
        let remaining = cap.saturating_sub(used).max(0);
        if needed > remaining {
            let retry = if needed > cap {
                None
            } else {
                window_of(l).map(|w| now.ms_until_end(w))
            };
            let later = match (&deny, retry) {
                (None, _) => true,
                (Some((_, _, None)), _) => false,
                (Some(_), None) => true,
                (Some((_, _, Some(a))), Some(b)) => b > *a,
            };
            if later {
                deny = Some((l, remaining, retry));
            }
            continue;
        }
        let after = remaining - held;
        if tightest.is_none_or(|(_, a, c)| tighter(after, cap, a, c)) {
            tightest = Some((l, after, cap));
        }
    }
    if let Some((limit, remaining, retry_after_ms)) = deny {
        return QuotaVerdict::Deny {
            limit,
            remaining,
            retry_after_ms,
        };
    }
    // (A quota of 0 denies every request, so it is never the tightest of an admission.)
    let warn = tightest.is_some_and(|(_, after, cap)| {
        let used_after = (cap - after) as i128;
        used_after * 100 >= (cap as i128) * (warn_pct as i128)
    });
    QuotaVerdict::Allow {
        tightest: tightest.map(|(l, a, _)| (l, a)),
        warn,
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::calendar::{days_from_civil, US_PER_DAY};
    use proptest::prelude::*;

    fn policy(pairs: &[(Limit, i64)]) -> Policy {
        Policy::with_limits(pairs)
    }

    fn noon() -> i64 {
        days_from_civil(2026, 11, 22) * US_PER_DAY + US_PER_DAY / 2
    }

    #[test]
    fn a_denial_waits_for_the_end_of_the_window_of_its_zone() {
        // A local day that ends five hours after noon UTC (say, UTC+7), and a month 9 days on.
        let p = policy(&[(Limit::RequestsPerDay, 1), (Limit::RequestsPerMonth, 1)]);
        let now = Now::with_ends(noon(), noon() + 5 * 3_600_000_000, noon() + 9 * US_PER_DAY);
        let day_only = Totals {
            day_requests: 1,
            ..Totals::default()
        };
        match check(&policy(&[(Limit::RequestsPerDay, 1)]), &day_only, 0, now, 80) {
            QuotaVerdict::Deny { retry_after_ms, .. } => assert_eq!(retry_after_ms, Some(5 * 3_600_000)),
            v => panic!("{v:?}"),
        }
        // Both windows refuse: the one that frees last (the month) is reported.
        let both = Totals {
            day_requests: 1,
            month_requests: 1,
            ..Totals::default()
        };
        match check(&p, &both, 0, now, 80) {
            QuotaVerdict::Deny {
                limit, retry_after_ms, ..
            } => {
                assert_eq!((limit, retry_after_ms), (Limit::RequestsPerMonth, Some(9 * 86_400_000)))
            }
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn unlimited_allows() {
        let v = check(&Policy::default(), &Totals::default(), 1_000_000, Now::utc(noon()), 80);
        assert_eq!(
            v,
            QuotaVerdict::Allow {
                tightest: None,
                warn: false
            }
        );
    }

    #[test]
    fn request_quota_denies_at_limit_until_midnight() {
        let p = policy(&[(Limit::RequestsPerDay, 3)]);
        let t = Totals {
            day_requests: 2,
            ..Totals::default()
        };
        assert_eq!(
            check(&p, &t, 0, Now::utc(noon()), 80),
            QuotaVerdict::Allow {
                tightest: Some((Limit::RequestsPerDay, 0)),
                warn: true
            }
        );
        let t = Totals {
            day_requests: 2,
            held_requests: 1,
            ..Totals::default()
        };
        assert_eq!(
            check(&p, &t, 0, Now::utc(noon()), 80),
            QuotaVerdict::Deny {
                limit: Limit::RequestsPerDay,
                remaining: 0,
                retry_after_ms: Some(43_200_000)
            }
        );
    }

    #[test]
    fn month_wins_over_day_when_both_refuse() {
        let p = policy(&[(Limit::RequestsPerDay, 1), (Limit::RequestsPerMonth, 1)]);
        let t = Totals {
            day_requests: 1,
            month_requests: 1,
            ..Totals::default()
        };
        match check(&p, &t, 0, Now::utc(noon()), 80) {
            QuotaVerdict::Deny { limit, .. } => assert_eq!(limit, Limit::RequestsPerMonth),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn a_month_quota_frees_at_the_end_of_the_month() {
        let p = policy(&[(Limit::RequestsPerMonth, 1)]);
        let t = Totals {
            month_requests: 1,
            ..Totals::default()
        };
        // 2026-11-22 12:00 to 2026-12-01 00:00: 8.5 days.
        assert_eq!(
            check(&p, &t, 0, Now::utc(noon()), 80),
            QuotaVerdict::Deny {
                limit: Limit::RequestsPerMonth,
                remaining: 0,
                retry_after_ms: Some(734_400_000)
            }
        );
    }

    #[test]
    fn on_equal_retry_times_the_first_quota_is_reported() {
        let p = policy(&[(Limit::RequestsPerDay, 1), (Limit::InputTokensPerDay, 10)]);
        let t = Totals {
            day_requests: 1,
            day_input: 10,
            ..Totals::default()
        };
        match check(&p, &t, 0, Now::utc(noon()), 80) {
            QuotaVerdict::Deny { limit, .. } => assert_eq!(limit, Limit::RequestsPerDay),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn committed_usage_leaves_holds_out() {
        let t = Totals {
            day_requests: 1,
            day_input: 2,
            day_output: 3,
            month_requests: 4,
            month_input: 5,
            month_output: 6,
            held_requests: 100,
            held_tokens: 1000,
            ..Totals::default()
        };
        let got: Vec<i64> = QUOTA_LIMITS.iter().map(|l| t.committed(*l)).collect();
        assert_eq!(got, [1, 4, 2, 5, 3, 6, 0, 0]);
        let used: Vec<i64> = QUOTA_LIMITS.iter().map(|l| t.used(*l)).collect();
        assert_eq!(used, [101, 104, 1002, 1005, 3, 6, 0, 0]);
        assert_eq!(t.committed(Limit::MaxConcurrent), 0);
    }

    #[test]
    fn shares_compare_without_division_and_warn_at_the_threshold() {
        assert!(tighter(1, 10, 1, 2), "10 % left is tighter than 50 %");
        assert!(!tighter(5, 10, 1, 2), "equal shares are not tighter");
        let p = policy(&[(Limit::RequestsPerDay, 10)]);
        let at = |used: i64| {
            let t = Totals {
                day_requests: used,
                ..Totals::default()
            };
            check(&p, &t, 0, Now::utc(noon()), 80)
        };
        // 7 of 10 used after this admission: 70 %, no warning; 8 of 10: 80 %, a warning.
        assert!(matches!(at(6), QuotaVerdict::Allow { warn: false, .. }));
        assert!(matches!(at(7), QuotaVerdict::Allow { warn: true, .. }));
    }

    #[test]
    fn too_large_never_fits() {
        let p = policy(&[(Limit::InputTokensPerDay, 100)]);
        assert_eq!(
            check(&p, &Totals::default(), 101, Now::utc(noon()), 80),
            QuotaVerdict::Deny {
                limit: Limit::InputTokensPerDay,
                remaining: 100,
                retry_after_ms: None
            }
        );
        assert!(matches!(
            check(&p, &Totals::default(), 100, Now::utc(noon()), 80),
            QuotaVerdict::Allow { .. }
        ));
    }

    #[test]
    fn exhausted_tokens_deny_even_without_estimate() {
        let p = policy(&[(Limit::InputTokensPerDay, 100), (Limit::OutputTokensPerMonth, 50)]);
        let t = Totals {
            day_input: 100,
            ..Totals::default()
        };
        assert!(matches!(
            check(&p, &t, 0, Now::utc(noon()), 80),
            QuotaVerdict::Deny {
                limit: Limit::InputTokensPerDay,
                ..
            }
        ));
        let t = Totals {
            month_output: 50,
            ..Totals::default()
        };
        assert!(matches!(
            check(&p, &t, 0, Now::utc(noon()), 80),
            QuotaVerdict::Deny {
                limit: Limit::OutputTokensPerMonth,
                ..
            }
        ));
        let p0 = policy(&[(Limit::RequestsPerDay, 0)]);
        assert!(matches!(
            check(&p0, &Totals::default(), 0, Now::utc(noon()), 80),
            QuotaVerdict::Deny {
                retry_after_ms: None,
                ..
            }
        ));
    }

    #[test]
    fn budgets_hold_the_cost_estimate_in_micro_units() {
        // 1 cent a day = 10,000 micro-units; 4,000 already spent, 5,000 held by open admissions.
        let p = policy(&[(Limit::DailyBudgetCents, 1)]);
        let t = Totals {
            day_cost: 4_000,
            held_cost: 5_000,
            ..Totals::default()
        };
        let ask = |cost| Ask { tokens: 0, cost };
        assert_eq!(
            check(&p, &t, ask(Some(1_000)), Now::utc(noon()), 80),
            QuotaVerdict::Allow {
                tightest: Some((Limit::DailyBudgetCents, 0)),
                warn: true
            }
        );
        assert_eq!(
            check(&p, &t, ask(Some(1_001)), Now::utc(noon()), 80),
            QuotaVerdict::Deny {
                limit: Limit::DailyBudgetCents,
                remaining: 1_000,
                retry_after_ms: Some(43_200_000)
            }
        );
        // More than the whole budget never fits.
        assert!(matches!(
            check(&p, &Totals::default(), ask(Some(10_001)), Now::utc(noon()), 80),
            QuotaVerdict::Deny {
                retry_after_ms: None,
                ..
            }
        ));
        // A priced request with a zero estimate still needs one micro-unit left.
        let spent = Totals {
            day_cost: 10_000,
            ..Totals::default()
        };
        assert!(matches!(
            check(&p, &spent, ask(Some(0)), Now::utc(noon()), 80),
            QuotaVerdict::Deny {
                limit: Limit::DailyBudgetCents,
                remaining: 0,
                ..
            }
        ));
        // A request that costs nothing is never refused by money, even past the budget.
        let over = Totals {
            day_cost: 50_000,
            ..Totals::default()
        };
        assert_eq!(
            check(&p, &over, ask(None), Now::utc(noon()), 80),
            QuotaVerdict::Allow {
                tightest: None,
                warn: false
            }
        );
        assert_eq!(over.used(Limit::DailyBudgetCents), 50_000);
        assert_eq!(t.held(Limit::MonthlyBudgetCents), 5_000);
        assert_eq!(t.committed(Limit::DailyBudgetCents), 4_000);
    }

    #[test]
    fn a_month_budget_counts_the_month_and_the_holds() {
        let p = policy(&[(Limit::DailyBudgetCents, 100), (Limit::MonthlyBudgetCents, 2)]);
        let t = Totals {
            day_cost: 0,
            month_cost: 15_000,
            held_cost: 4_000,
            ..Totals::default()
        };
        match check(
            &p,
            &t,
            Ask {
                tokens: 0,
                cost: Some(2_000),
            },
            Now::utc(noon()),
            80,
        ) {
            QuotaVerdict::Deny { limit, remaining, .. } => {
                assert_eq!((limit, remaining), (Limit::MonthlyBudgetCents, 1_000))
            }
            v => panic!("{v:?}"),
        }
    }

    proptest! {
        /// Admitting one request at a time and holding what the verdict says never exceeds a limit,
        /// and admits exactly the number the limit allows.
        #[test]
        fn sequential_admissions_are_exact(cap in 0i64..200, tokens in 0i64..50, tcap in proptest::option::of(0i64..5_000)) {
            let mut pairs = vec![(Limit::RequestsPerDay, cap)];
            if let Some(tc) = tcap { pairs.push((Limit::InputTokensPerMonth, tc)); }
            let p = policy(&pairs);
            let mut t = Totals::default();
            let mut admitted = 0;
            for _ in 0..400 {
                match check(&p, &t, tokens, Now::utc(noon()), 80) {
                    QuotaVerdict::Allow { .. } => { admitted += 1; t.held_requests += 1; t.held_tokens += tokens; }
                    QuotaVerdict::Deny { .. } => {}
                }
            }
            let by_tokens = match tcap { None => i64::MAX, Some(tc) if tokens == 0 => if tc > 0 { i64::MAX } else { 0 }, Some(tc) => tc / tokens };
            prop_assert_eq!(admitted, cap.min(by_tokens).min(400));
        }

        /// Holding each admitted cost estimate never lets spent plus held pass a budget, and
        /// admits exactly as many as the budget holds.
        #[test]
        fn budgets_admit_exactly_what_fits(cents in 0i64..50, cost in 0i64..30_000, spent in 0i64..100_000) {
            let p = policy(&[(Limit::DailyBudgetCents, cents)]);
            let mut t = Totals { day_cost: spent, ..Totals::default() };
            let mut admitted = 0i64;
            for _ in 0..600 {
                if let QuotaVerdict::Allow { .. } = check(&p, &t, Ask { tokens: 0, cost: Some(cost) }, Now::utc(noon()), 80) {
                    admitted += 1;
                    t.held_cost += cost;
                }
            }
            let left = (cents * 10_000 - spent).max(0);
            let expected = if cost == 0 { if left > 0 { 600 } else { 0 } } else { (left / cost).min(600) };
            prop_assert_eq!(admitted, expected);
            prop_assert!(cost == 0 || spent >= cents * 10_000 || t.day_cost + t.held_cost <= cents * 10_000);
        }

        #[test]
        fn extreme_values_do_not_overflow(cap in proptest::num::i64::ANY, used in proptest::num::i64::ANY, held in proptest::num::i64::ANY, tokens in 0i64..i64::MAX) {
            let p = policy(&[(Limit::InputTokensPerDay, cap.max(0)), (Limit::RequestsPerDay, cap.max(0))]);
            let p = Policy { limits: { let mut l = p.limits; l[Limit::DailyBudgetCents as usize] = Some(cap.max(0)); l }, ..p };
            let t = Totals { day_input: used, held_tokens: held, day_requests: used, held_requests: held, day_cost: used, held_cost: held, ..Totals::default() };
            let _ = check(&p, &t, Ask { tokens, cost: Some(tokens) }, Now::utc(noon()), 80);
        }
    }
}
