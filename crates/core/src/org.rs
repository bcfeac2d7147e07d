//! Organisations: the budgets that all of an organisation's subjects draw on together, its
//! thresholds and its switches (`control_plane.organizations`).
//!
//! An organisation's spend is an entry of the same shared-memory index as its subjects' (under
//! `Key::org`), and an admission of one of its subjects must fit the subject's limits and the
//! organisation's budgets at once (`decide_with_org`, on top of `admission::decide`).

use crate::admission::{decide, later, needs_hold, DenyKind, State, Verdict};
use crate::calendar::Now;
use crate::policy::{Limit, Policy};
use crate::quota::{self, Ask, QuotaVerdict, Totals};

/// What happens at an organisation's emergency threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmergencyAction {
    /// Admit with the profile's cheaper `fallback_model` (`decision = 'degrade'`); with no
    /// fallback that fits, admit with a warning (see `emergency`).
    Degrade,
    Deny,
}

impl EmergencyAction {
    pub fn from_name(s: &str) -> Option<EmergencyAction> {
        match s {
            "degrade" => Some(EmergencyAction::Degrade),
            "deny" => Some(EmergencyAction::Deny),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            EmergencyAction::Degrade => "degrade",
            EmergencyAction::Deny => "deny",
        }
    }
}

/// One organisation's row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Organization {
    /// A policy with the organisation's budgets as its only limits (cents, NULL = none).
    pub budgets: Policy,
    /// Percent of a budget (spent plus reserved) from which admissions warn, and from which the
    /// emergency action applies.
    pub warning_pct: i64,
    pub emergency_pct: i64,
    pub action: EmergencyAction,
    /// Tripped by an admin: every admission of the organisation's subjects is refused.
    pub emergency_stop: bool,
    pub active: bool,
}

impl Organization {
    pub fn new(daily_budget_cents: Option<i64>, monthly_budget_cents: Option<i64>) -> Organization {
        let mut pairs = Vec::new();
        if let Some(d) = daily_budget_cents {
            pairs.push((Limit::DailyBudgetCents, d));
        }
        if let Some(m) = monthly_budget_cents {
            pairs.push((Limit::MonthlyBudgetCents, m));
        }
        Organization {
            budgets: Policy::with_limits(&pairs),
            warning_pct: 80,
            emergency_pct: 90,
            action: EmergencyAction::Degrade,
            emergency_stop: false,
            active: true,
        }
    }

    pub fn has_budget(&self) -> bool {
        self.budgets.has_budget()
    }

    /// The smallest of its budgets, in micro-units.
    pub fn smallest_budget_micros(&self) -> Option<i64> {
        self.budgets.smallest_budget_micros()
    }

    /// The thresholds of its budgets.
    pub fn thresholds(&self) -> crate::money::Thresholds {
        crate::money::Thresholds {
            warning_pct: self.warning_pct,
            emergency_pct: self.emergency_pct,
        }
    }
}

/// The smallest budget of a subject and its organisation, in micro-units (what caps one
/// reservation).
pub fn smallest_budget_micros(policy: &Policy, org: Option<&Organization>) -> Option<i64> {
    let o = org.and_then(Organization::smallest_budget_micros);
    match (policy.smallest_budget_micros(), o) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whether an admission must hold anything (`admission::needs_hold`), for a subject that may
/// belong to an organisation: a cost estimate is held against the organisation's budgets too.
pub fn needs_hold_with_org(policy: &Policy, org: Option<&Organization>, ask: impl Into<Ask>) -> bool {
    let ask = ask.into();
    needs_hold(policy, ask) || (ask.cost.is_some_and(|c| c > 0) && org.is_some_and(Organization::has_budget))
}

/// Whose limit a verdict names: the subject's, or its organisation's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Subject,
    Organization,
}

/// The `limit_name` of a limit in a scope: an organisation's budgets are `org_daily_budget_cents`
/// and `org_monthly_budget_cents`.
pub fn limit_name(l: Limit, scope: Scope) -> &'static str {
    match (scope, l) {
        (Scope::Organization, Limit::DailyBudgetCents) => "org_daily_budget_cents",
        (Scope::Organization, Limit::MonthlyBudgetCents) => "org_monthly_budget_cents",
        _ => l.name(),
    }
}

/// The organisation's side of an admission: its budgets, the totals of its entry, the percents
/// from which it warns and from which its emergency action applies, and that action.
#[derive(Clone, Copy, Debug)]
pub struct OrgSide<'a> {
    pub budgets: &'a Policy,
    pub totals: &'a Totals,
    pub warn_pct: i64,
    pub emergency_pct: i64,
    pub action: EmergencyAction,
}

impl<'a> OrgSide<'a> {
    /// The side of `org` with the totals of its entry.
    pub fn of(org: &'a Organization, totals: &'a Totals) -> OrgSide<'a> {
        OrgSide {
            budgets: &org.budgets,
            totals,
            warn_pct: org.warning_pct,
            emergency_pct: org.emergency_pct,
            action: org.action,
        }
    }
}

/// Decides a request of a subject that may belong to an organisation: all-or-nothing across the
/// subject's limits and the organisation's budgets (the request's cost estimate must fit both).
/// When both refuse, the denial that frees last is reported; when both admit, the tighter of
/// the two tightest dimensions, and a warning if either side warns.
pub fn decide_with_org(
    policy: &Policy,
    state: &State,
    org: Option<OrgSide>,
    ask: impl Into<Ask>,
    now: Now,
    warn_pct: i64,
) -> (Verdict, Scope) {
    let ask = ask.into();
    let v = decide(policy, state, ask, now, warn_pct);
    let Some(o) = org else {
        return (v, Scope::Subject);
    };
    let ov = quota::check(o.budgets, o.totals, ask, now, o.warn_pct);
    let org_deny = |limit, remaining, retry_after_ms| Verdict::Deny {
        kind: DenyKind::Budget,
        limit,
        remaining,
        retry_after_ms,
    };
    match (v, ov) {
        (
            Verdict::Deny { retry_after_ms: r, .. },
            QuotaVerdict::Deny {
                limit,
                remaining,
                retry_after_ms,
            },
        ) if later(retry_after_ms, r) => (org_deny(limit, remaining, retry_after_ms), Scope::Organization),
        (Verdict::Deny { .. }, _) => (v, Scope::Subject),
        (
            Verdict::Allow { .. },
            QuotaVerdict::Deny {
                limit,
                remaining,
                retry_after_ms,
            },
        ) => (org_deny(limit, remaining, retry_after_ms), Scope::Organization),
        (Verdict::Allow { tightest, warn, tat }, QuotaVerdict::Allow { tightest: ot, warn: ow }) => {
            let share = |p: &Policy, (l, r): (Limit, i64)| (l, r, quota::cap_of(p, l).unwrap_or(1));
            let (tightest, scope) = match (tightest.map(|t| share(policy, t)), ot.map(|t| share(o.budgets, t))) {
                (Some((_, a, c)), Some((ol, oa, oc))) if quota::tighter(oa, oc, a, c) => {
                    (Some((ol, oa)), Scope::Organization)
                }
                (None, Some((ol, oa, _))) => (Some((ol, oa)), Scope::Organization),
                (t, _) => (t.map(|(l, a, _)| (l, a)), Scope::Subject),
            };
            (
                Verdict::Allow {
                    tightest,
                    warn: warn || ow,
                    tat,
                },
                scope,
            )
        }
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

    fn budgets(daily_cents: i64) -> Policy {
        policy(&[(Limit::DailyBudgetCents, daily_cents)])
    }

    fn ask(cost: i64) -> Ask {
        Ask {
            tokens: 0,
            cost: Some(cost),
        }
    }

    #[test]
    fn an_organisation_budget_refuses_what_the_subject_would_admit() {
        let p = policy(&[(Limit::RequestsPerDay, 10), (Limit::DailyBudgetCents, 100)]);
        let org = budgets(1); // 10,000 micro-units
        let s = State::default();
        let spent = Totals {
            day_cost: 9_000,
            held_cost: 500,
            ..Totals::default()
        };
        let side = |t| {
            Some(OrgSide {
                budgets: &org,
                totals: t,
                warn_pct: 80,
                emergency_pct: 90,
                action: EmergencyAction::Degrade,
            })
        };
        // 500 fit (9,500 + 500 = 10,000) and warn (the organisation is at 100 %).
        match decide_with_org(&p, &s, side(&spent), ask(500), Now::utc(NOON), 80) {
            (Verdict::Allow { tightest, warn, .. }, Scope::Organization) => {
                assert_eq!(tightest, Some((Limit::DailyBudgetCents, 0)));
                assert!(warn);
            }
            other => panic!("{other:?}"),
        }
        // 501 do not: the organisation's budget refuses, named as the organisation's.
        let (v, scope) = decide_with_org(&p, &s, side(&spent), ask(501), Now::utc(NOON), 80);
        assert_eq!(scope, Scope::Organization);
        match v {
            Verdict::Deny {
                kind: DenyKind::Budget,
                limit,
                remaining: 500,
                retry_after_ms: Some(_),
            } => assert_eq!(limit_name(limit, scope), "org_daily_budget_cents"),
            other => panic!("{other:?}"),
        }
        // A request that costs nothing never meets the organisation's budget.
        let broke = Totals {
            day_cost: 20_000,
            ..Totals::default()
        };
        assert!(matches!(
            decide_with_org(&p, &s, side(&broke), 0, Now::utc(NOON), 80),
            (Verdict::Allow { warn: false, .. }, Scope::Subject)
        ));
        // No organisation: the subject's verdict as it is.
        assert_eq!(
            decide_with_org(&p, &s, None, ask(501), Now::utc(NOON), 80),
            (decide(&p, &s, ask(501), Now::utc(NOON), 80), Scope::Subject)
        );
        assert_eq!(
            limit_name(Limit::DailyBudgetCents, Scope::Subject),
            "daily_budget_cents"
        );
    }

    #[test]
    fn a_cost_under_an_organisation_budget_alone_is_held() {
        let none = Policy::with_limits(&[]);
        let org = Organization::new(Some(1), None);
        assert!(!needs_hold(&none, ask(5)));
        assert!(needs_hold_with_org(&none, Some(&org), ask(5)));
        assert!(!needs_hold_with_org(&none, Some(&org), ask(0)));
        assert!(!needs_hold_with_org(
            &none,
            Some(&Organization::new(None, None)),
            ask(5)
        ));
        assert!(!needs_hold_with_org(&none, None, ask(5)));
    }

    #[test]
    fn when_both_refuse_the_denial_that_frees_last_is_reported() {
        // The subject is rate limited (frees in 1 s); the organisation's day is spent (frees at
        // midnight): the organisation's denial is the one to wait for.
        let p = policy(&[(Limit::RequestsPerSecond, 1)]);
        let mut s = State::default();
        match decide(&p, &s, 0, Now::utc(NOON), 80) {
            Verdict::Allow { tat, .. } => s.tat = tat,
            other => panic!("{other:?}"),
        }
        let org = budgets(1);
        let spent = Totals {
            day_cost: 10_000,
            ..Totals::default()
        };
        let side = Some(OrgSide {
            budgets: &org,
            totals: &spent,
            warn_pct: 80,
            emergency_pct: 90,
            action: EmergencyAction::Degrade,
        });
        let (v, scope) = decide_with_org(&p, &s, side, ask(1), Now::utc(NOON), 80);
        assert_eq!(scope, Scope::Organization);
        assert!(matches!(v, Verdict::Deny { kind: DenyKind::Budget, retry_after_ms: Some(ms), .. } if ms > 1_000));
        // A subject denial that never frees (a request larger than its quota) wins.
        let q = policy(&[(Limit::InputTokensPerDay, 10)]);
        let big = Ask {
            tokens: 11,
            cost: Some(1),
        };
        let (v, scope) = decide_with_org(&q, &State::default(), side, big, Now::utc(NOON), 80);
        assert_eq!(scope, Scope::Subject);
        assert!(matches!(
            v,
            Verdict::Deny {
                kind: DenyKind::Quota,
                retry_after_ms: None,
                ..
            }
        ));
    }

    proptest! {
        #[test]
        fn subjects_of_one_organisation_never_spend_more_than_its_budget(
            org_cents in 0i64..50, subject_cents in 0i64..80,
            steps in proptest::collection::vec((0usize..4, 0i64..4_000, 0i64..5_000, any::<bool>()), 1..200),
        ) {
            // Four subjects, each with its own budget, draw on one organisation's. Each step admits
            // (holding its estimate on both entries) or records an earlier admission's actual cost,
            // never more than it reserved.
            let p = budgets(subject_cents);
            let org = budgets(org_cents);
            let mut subjects = [State::default(); 4];
            let mut o = Totals::default();
            let mut open: Vec<(usize, i64)> = vec![];
            for (who, estimate, actual, record) in steps {
                if record && !open.is_empty() {
                    let (w, est) = open.remove(0);
                    let spent = actual.min(est);
                    for t in [&mut subjects[w].totals, &mut o] {
                        t.held_cost -= est;
                        t.day_cost += spent;
                    }
                    continue;
                }
                let side = Some(OrgSide { budgets: &org, totals: &o, warn_pct: 80, emergency_pct: 90, action: EmergencyAction::Degrade });
                if let (Verdict::Allow { .. }, _) = decide_with_org(&p, &subjects[who], side, ask(estimate), Now::utc(NOON), 80) {
                    subjects[who].totals.held_cost += estimate;
                    o.held_cost += estimate;
                    open.push((who, estimate));
                }
                prop_assert!(o.day_cost + o.held_cost <= org_cents * 10_000);
                for s in &subjects {
                    prop_assert!(s.totals.day_cost + s.totals.held_cost <= subject_cents * 10_000);
                }
            }
        }

    }

    #[test]
    fn an_organisation_has_only_budgets_and_the_smallest_of_both_sides_caps() {
        let o = Organization::new(Some(500), None);
        assert!(o.has_budget());
        assert_eq!(o.budgets.limit(Limit::DailyBudgetCents), Some(500));
        assert_eq!(o.budgets.limit(Limit::MonthlyBudgetCents), None);
        assert_eq!(o.budgets.limit(Limit::RequestsPerDay), None);
        assert_eq!(o.smallest_budget_micros(), Some(5_000_000));
        assert!(!Organization::new(None, None).has_budget());

        let p = Policy::with_limits(&[(Limit::MonthlyBudgetCents, 100)]);
        assert_eq!(smallest_budget_micros(&p, Some(&o)), Some(1_000_000));
        assert_eq!(smallest_budget_micros(&Policy::default(), Some(&o)), Some(5_000_000));
        assert_eq!(smallest_budget_micros(&p, None), Some(1_000_000));
        assert_eq!(smallest_budget_micros(&Policy::default(), None), None);
        assert_eq!(EmergencyAction::from_name("degrade"), Some(EmergencyAction::Degrade));
        assert_eq!(
            EmergencyAction::from_name(EmergencyAction::Deny.name()),
            Some(EmergencyAction::Deny)
        );
        assert_eq!(EmergencyAction::from_name("stop"), None);
    }
}
