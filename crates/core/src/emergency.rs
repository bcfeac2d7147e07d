//! What an admission does when it would take a money budget into its emergency zone (spent plus
//! reserved at or past the emergency threshold): degrade to the profile's cheaper fallback model,
//! deny, or go on with a warning.
//!
//! Rules (documented in the README, "Thresholds, alerts and degrade"):
//! - only a request that costs money is concerned;
//! - an organisation whose emergency action is `deny` refuses a request that would take one of its
//!   budgets into the zone (`emergency_threshold`, naming that budget), and never degrades;
//! - otherwise a request that would take a budget (the subject's or its organisation's) into the
//!   zone, or that does not fit a budget at all, is tried with the fallback ask (the profile's
//!   `fallback_model`, when it is allowed and cheaper: its whole estimate, before any cap, is
//!   lower): admitted that way it is a `degrade`;
//! - without a fallback that fits, a request that fits is admitted with a warning, and one that
//!   does not is refused by the budget as usual.

use crate::admission::{DenyKind, State, Verdict};
use crate::alerts::reaching;
use crate::calendar::Now;
use crate::money::Thresholds;
use crate::org::{decide_with_org, EmergencyAction, OrgSide, Scope};
use crate::policy::{Limit, Policy};
use crate::quota::{window_of, Ask};

/// The budgets (daily or monthly) that a request takes, or would take, into their emergency
/// zone: the subject's own, and its organisation's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Zone {
    pub subject: Option<Limit>,
    pub org: Option<Limit>,
}

impl Zone {
    pub fn any(&self) -> bool {
        self.subject.is_some() || self.org.is_some()
    }

    /// The budget of one side.
    pub fn of(&self, scope: Scope) -> Option<Limit> {
        match scope {
            Scope::Subject => self.subject,
            Scope::Organization => self.org,
        }
    }

    fn only(scope: Scope, l: Limit) -> Zone {
        match scope {
            Scope::Subject => Zone {
                subject: Some(l),
                org: None,
            },
            Scope::Organization => Zone {
                subject: None,
                org: Some(l),
            },
        }
    }
}

/// An admission decision with the money thresholds applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decided {
    pub verdict: Verdict,
    /// Whose limit the verdict names.
    pub scope: Scope,
    /// Admitted with the fallback ask: the caller is to use the fallback model.
    pub degraded: bool,
    /// The budgets in their emergency zone with this request (for a request refused by a budget
    /// and admitted with the fallback: the budget that refused it).
    pub emergency: Zone,
}

/// The same request with the profile's fallback model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fallback {
    pub ask: Ask,
    /// Its whole estimate (input and expected output, before the cap) is lower than the
    /// primary's: two capped reservations may be equal while one model costs far less.
    pub cheaper: bool,
}

/// Decides `primary` for a subject (with `t`, the thresholds of its own budgets) that may belong
/// to an organisation, applying the emergency rules above; `fallback` is the same request with
/// the fallback model, when the profile has one that may be used.
pub fn decide_money(
    policy: &Policy,
    state: &State,
    org: Option<OrgSide>,
    primary: Ask,
    fallback: Option<Fallback>,
    now: Now,
    t: Thresholds,
) -> Decided {
    let (verdict, scope) = decide_with_org(policy, state, org, primary, now, t.warning_pct);
    let plain = Decided {
        verdict,
        scope,
        degraded: false,
        emergency: Zone::default(),
    };
    let cost = primary.cost.unwrap_or(0);
    if cost <= 0 {
        return plain;
    }
    // The budget of an organisation that denies in its emergency zone, that `c` more reaches.
    let org_denies = |c: i64| {
        org.filter(|o| o.action == EmergencyAction::Deny)
            .and_then(|o| reaching(o.budgets, o.totals, c, o.emergency_pct))
    };
    let degrade = |emergency: Zone| {
        let f = fallback.filter(|f| f.cheaper)?.ask;
        match decide_with_org(policy, state, org, f, now, t.warning_pct) {
            (Verdict::Allow { tightest, tat, .. }, scope) if org_denies(f.cost.unwrap_or(0)).is_none() => {
                Some(Decided {
                    verdict: Verdict::Allow {
                        tightest,
                        warn: true,
                        tat,
                    },
                    scope,
                    degraded: true,
                    emergency,
                })
            }
            _ => None,
        }
    };
    match verdict {
        Verdict::Allow { tightest, tat, .. } => {
            if let Some((limit, remaining)) = org_denies(cost) {
                return Decided {
                    verdict: Verdict::Deny {
                        kind: DenyKind::Emergency,
                        limit,
                        remaining,
                        retry_after_ms: window_of(limit).map(|w| now.ms_until_end(w)),
                    },
                    scope: Scope::Organization,
                    degraded: false,
                    emergency: Zone::only(Scope::Organization, limit),
                };
            }
            let zone = Zone {
                subject: reaching(policy, &state.totals, cost, t.emergency_pct).map(|(l, _)| l),
                org: org.and_then(|o| reaching(o.budgets, o.totals, cost, o.emergency_pct).map(|(l, _)| l)),
            };
            if !zone.any() {
                return plain;
            }
            degrade(zone).unwrap_or(Decided {
                verdict: Verdict::Allow {
                    tightest,
                    warn: true,
                    tat,
                },
                scope,
                degraded: false,
                emergency: zone,
            })
        }
        Verdict::Deny {
            kind: DenyKind::Budget,
            limit,
            ..
        } => {
            let org_action_deny = org.is_some_and(|o| o.action == EmergencyAction::Deny);
            if scope == Scope::Organization && org_action_deny {
                return plain;
            }
            degrade(Zone::only(scope, limit)).unwrap_or(plain)
        }
        Verdict::Deny { .. } => plain,
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::admission::decide;
    use crate::calendar::US_PER_DAY;
    use crate::policy::Limit;
    use crate::quota::Totals;
    use proptest::prelude::*;

    const NOON: i64 = 20_414 * US_PER_DAY + US_PER_DAY / 2;
    const T: Thresholds = Thresholds {
        warning_pct: 80,
        emergency_pct: 90,
    };

    fn ask(cost: i64) -> Ask {
        Ask {
            tokens: 0,
            cost: Some(cost),
        }
    }

    fn spent(day: i64) -> State {
        State {
            totals: Totals {
                day_cost: day,
                ..Totals::default()
            },
            ..State::default()
        }
    }

    fn one_cent() -> Policy {
        Policy::with_limits(&[(Limit::DailyBudgetCents, 1)]) // 10,000 micro-units
    }

    /// With uncapped estimates: the fallback is cheaper when its estimate is lower.
    fn run(p: &Policy, s: &State, org: Option<OrgSide>, primary: i64, fallback: Option<i64>) -> Decided {
        let f = fallback.map(|f| Fallback {
            ask: ask(f),
            cheaper: f < primary,
        });
        decide_money(p, s, org, ask(primary), f, Now::utc(NOON), T)
    }

    #[test]
    fn a_fallback_cheaper_by_its_whole_estimate_is_used_even_when_both_reserve_the_cap() {
        // Both reservations hit the cap (1,000); the fallback's whole estimate is lower.
        let p = one_cent();
        let f = Fallback {
            ask: ask(1_000),
            cheaper: true,
        };
        let d = decide_money(&p, &spent(8_000), None, ask(1_000), Some(f), Now::utc(NOON), T);
        assert!(d.degraded);
        let f = Fallback { cheaper: false, ..f };
        let d = decide_money(&p, &spent(8_000), None, ask(1_000), Some(f), Now::utc(NOON), T);
        assert!(!d.degraded && d.emergency.subject.is_some());
    }

    #[test]
    fn below_the_zone_nothing_changes() {
        let p = one_cent();
        let d = run(&p, &spent(7_000), None, 1_000, Some(10));
        assert_eq!(
            (d.verdict, d.scope),
            decide_with_org(&p, &spent(7_000), None, ask(1_000), Now::utc(NOON), 80)
        );
        assert!(!d.degraded && !d.emergency.any());
        // (8,000 after: a warning, but not the emergency zone.)
        assert!(matches!(d.verdict, Verdict::Allow { warn: true, .. }));
    }

    #[test]
    fn into_the_zone_a_subject_degrades_to_a_cheaper_fallback() {
        let p = one_cent();
        let d = run(&p, &spent(8_000), None, 1_000, Some(100));
        assert!(d.degraded && d.emergency.subject == Some(Limit::DailyBudgetCents));
        // The fallback's estimate is what is left after it.
        assert!(matches!(
            d.verdict,
            Verdict::Allow {
                tightest: Some((Limit::DailyBudgetCents, 1_900)),
                warn: true,
                ..
            }
        ));
        // No fallback, or one no cheaper: admitted with a warning.
        for f in [None, Some(1_000), Some(5_000)] {
            let d = run(&p, &spent(8_000), None, 1_000, f);
            assert!(
                !d.degraded && d.emergency.subject.is_some() && d.emergency.org.is_none(),
                "{f:?}"
            );
            assert!(matches!(
                d.verdict,
                Verdict::Allow {
                    tightest: Some((_, 1_000)),
                    warn: true,
                    ..
                }
            ));
        }
        // A request that no longer fits is tried with the fallback.
        let d = run(&p, &spent(9_500), None, 1_000, Some(400));
        assert!(d.degraded);
        let d = run(&p, &spent(9_800), None, 1_000, Some(400));
        assert!(!d.degraded);
        assert!(matches!(
            d.verdict,
            Verdict::Deny {
                kind: DenyKind::Budget,
                remaining: 200,
                ..
            }
        ));
        // A free fallback (no cost to hold) always fits the money.
        let free = Fallback {
            ask: Ask { tokens: 0, cost: None },
            cheaper: true,
        };
        let d = decide_money(&p, &spent(10_000), None, ask(1_000), Some(free), Now::utc(NOON), T);
        assert!(d.degraded);
        // A free request is never concerned.
        let d = run(&p, &spent(9_999), None, 0, Some(0));
        assert!(!d.degraded && !d.emergency.any());
    }

    #[test]
    fn an_organisation_that_denies_refuses_its_emergency_zone_and_never_degrades() {
        let p = Policy::default();
        let org = one_cent();
        let totals = Totals {
            day_cost: 8_500,
            ..Totals::default()
        };
        let side = |action| {
            Some(OrgSide {
                budgets: &org,
                totals: &totals,
                warn_pct: 80,
                emergency_pct: 90,
                action,
            })
        };
        let s = State::default();
        let d = run(&p, &s, side(EmergencyAction::Deny), 500, Some(10));
        assert_eq!(d.scope, Scope::Organization);
        match d.verdict {
            Verdict::Deny {
                kind: DenyKind::Emergency,
                limit: Limit::DailyBudgetCents,
                remaining: 1_500,
                retry_after_ms: Some(ms),
            } => assert_eq!(ms, US_PER_DAY / 2 / 1_000),
            v => panic!("{v:?}"),
        }
        assert_eq!(DenyKind::Emergency.reason(), "emergency_threshold");
        // Below its zone it admits.
        let d = run(&p, &s, side(EmergencyAction::Deny), 499, Some(10));
        assert!(matches!(d.verdict, Verdict::Allow { .. }) && !d.emergency.any());
        // With `degrade` the same request degrades.
        let d = run(&p, &s, side(EmergencyAction::Degrade), 500, Some(10));
        assert!(d.degraded && d.scope == Scope::Organization);
        assert_eq!(d.emergency, Zone::only(Scope::Organization, Limit::DailyBudgetCents));
        // A refusal by the denying organisation's budget stays a budget refusal.
        let full = Totals {
            day_cost: 10_000,
            ..Totals::default()
        };
        let d = run(
            &p,
            &s,
            Some(OrgSide {
                budgets: &org,
                totals: &full,
                warn_pct: 80,
                emergency_pct: 90,
                action: EmergencyAction::Deny,
            }),
            500,
            Some(0),
        );
        assert!(
            matches!(
                d.verdict,
                Verdict::Deny {
                    kind: DenyKind::Budget,
                    ..
                }
            ) && !d.degraded
        );
    }

    #[test]
    fn other_refusals_are_left_alone() {
        let p = Policy::with_limits(&[(Limit::RequestsPerDay, 0), (Limit::DailyBudgetCents, 1)]);
        let d = run(&p, &spent(9_500), None, 1_000, Some(0));
        assert!(!d.degraded);
        assert_eq!(d.verdict, decide(&p, &spent(9_500), ask(1_000), Now::utc(NOON), 80));
    }

    proptest! {
        /// Degrading never lets spent plus reserved pass a budget, and happens only in the zone.
        #[test]
        fn degrade_keeps_every_budget(
            subject_spent in 0i64..12_000, org_spent in 0i64..12_000,
            primary in 1i64..3_000, fallback in proptest::option::of(0i64..3_000), deny in any::<bool>(),
        ) {
            let p = one_cent();
            let org = Policy::with_limits(&[(Limit::DailyBudgetCents, 1)]);
            let ot = Totals { day_cost: org_spent, ..Totals::default() };
            let side = OrgSide {
                budgets: &org, totals: &ot, warn_pct: 80, emergency_pct: 90,
                action: if deny { EmergencyAction::Deny } else { EmergencyAction::Degrade },
            };
            let d = run(&p, &spent(subject_spent), Some(side), primary, fallback);
            if let Verdict::Allow { .. } = d.verdict {
                let held = if d.degraded { fallback.unwrap() } else { primary };
                prop_assert!(subject_spent + held <= 10_000 && org_spent + held <= 10_000);
                if deny {
                    prop_assert!(org_spent + held < 9_000, "a denying organisation never enters its zone");
                }
            }
            if d.degraded {
                prop_assert!(d.emergency.any());
                prop_assert!(fallback.unwrap() < primary);
                prop_assert!(subject_spent + primary >= 9_000 || org_spent + primary >= 9_000);
            }
        }
    }
}
