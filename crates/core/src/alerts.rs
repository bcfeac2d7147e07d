//! Where a budget stands against its thresholds, and which alerts an entry of the index still
//! owes in its current windows.
//!
//! Each money budget (daily, monthly) of a subject or an organisation raises at most one alert per
//! level (warning, emergency, limit) and window. The entry keeps one bit per (budget, level) in its
//! `alert_marks`; a window rolling forward clears that window's bits. A level is due when the
//! budget's spent plus reserved is at or past it (or when an admission was refused at it) and its
//! bit is not set: every level up to it is raised at once, lowest first. The ledger of alerts has
//! a unique key of its own, so a mark lost with shared memory (a restart, an eviction) never
//! writes a second row.

use crate::money::{self, Level, Thresholds};
use crate::policy::{Limit, Policy};
use crate::quota::{cap_of, Totals};

/// The money budgets, in the order their marks are kept.
pub const BUDGETS: [Limit; 2] = [Limit::DailyBudgetCents, Limit::MonthlyBudgetCents];

/// The levels that raise an alert.
pub const LEVELS: [Level; 3] = [Level::Warning, Level::Emergency, Level::Limit];

/// The marks of the daily budget (cleared when the day rolls) and of the monthly one.
pub const DAY_MARKS: u8 = 0b000_111;
pub const MONTH_MARKS: u8 = 0b111_000;

/// The bit of one (budget, level); 0 for anything else.
pub fn mark(l: Limit, level: Level) -> u8 {
    let base = match l {
        Limit::DailyBudgetCents => 0,
        Limit::MonthlyBudgetCents => 3,
        _ => return 0,
    };
    match level {
        Level::Normal => 0,
        Level::Warning => 1 << base,
        Level::Emergency => 2 << base,
        Level::Limit => 4 << base,
    }
}

/// One alert to raise: a budget (micro-units) reached `level`, with `used` (spent plus reserved)
/// at that moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Alert {
    pub limit: Limit,
    pub level: Level,
    pub budget: i64,
    pub used: i64,
}

/// The alerts owed by an entry whose budgets are those of `budgets`, with `totals` (after what the
/// admission holds) and `marks`: for each budget, every level from warning up to where it stands
/// (or to the level of a refusal by it, `refused`) whose mark is not set. Sets their marks.
pub fn due(
    budgets: &Policy,
    totals: &Totals,
    t: Thresholds,
    refused: Option<(Limit, Level)>,
    marks: &mut u8,
) -> Vec<Alert> {
    let mut out = Vec::new();
    for l in BUDGETS {
        let Some(budget) = cap_of(budgets, l) else { continue };
        let used = totals.used(l);
        let mut reached = money::level(used, budget, t);
        if let Some((rl, level)) = refused.filter(|(rl, _)| *rl == l) {
            debug_assert_eq!(rl, l);
            reached = reached.max(level);
        }
        for level in LEVELS.into_iter().filter(|v| *v <= reached) {
            let bit = mark(l, level);
            if *marks & bit == 0 {
                *marks |= bit;
                out.push(Alert {
                    limit: l,
                    level,
                    budget,
                    used,
                });
            }
        }
    }
    out
}

/// The first budget of `budgets` that `cost` more (on top of spent and reserved) takes to `pct`
/// percent or past, with what remains of it before: the budget an admission would push into its
/// emergency zone. None for a request that costs nothing.
pub fn reaching(budgets: &Policy, totals: &Totals, cost: i64, pct: i64) -> Option<(Limit, i64)> {
    if cost <= 0 {
        return None;
    }
    BUDGETS.into_iter().find_map(|l| {
        let budget = cap_of(budgets, l)?;
        let used = totals.used(l);
        money::reaches(used.saturating_add(cost), budget, pct).then(|| (l, budget.saturating_sub(used).max(0)))
    })
}

#[cfg(test)]
mod unit {
    use super::*;
    use proptest::prelude::*;

    fn budgets(daily_cents: i64, monthly_cents: Option<i64>) -> Policy {
        let mut pairs = vec![(Limit::DailyBudgetCents, daily_cents)];
        pairs.extend(monthly_cents.map(|m| (Limit::MonthlyBudgetCents, m)));
        Policy::with_limits(&pairs)
    }

    fn spent(day: i64, month: i64, held: i64) -> Totals {
        Totals {
            day_cost: day,
            month_cost: month,
            held_cost: held,
            ..Totals::default()
        }
    }

    const T: Thresholds = Thresholds {
        warning_pct: 80,
        emergency_pct: 90,
    };

    #[test]
    fn marks_are_distinct_bits_split_by_window() {
        let all: Vec<u8> = BUDGETS
            .iter()
            .flat_map(|l| LEVELS.iter().map(move |v| mark(*l, *v)))
            .collect();
        assert_eq!(all.iter().fold(0, |a, b| a | b), DAY_MARKS | MONTH_MARKS);
        assert_eq!(all.iter().map(|b| b.count_ones()).sum::<u32>(), 6);
        assert!(LEVELS
            .iter()
            .all(|v| mark(Limit::DailyBudgetCents, *v) & MONTH_MARKS == 0));
        assert_eq!(mark(Limit::RequestsPerDay, Level::Limit), 0);
        assert_eq!(mark(Limit::DailyBudgetCents, Level::Normal), 0);
    }

    #[test]
    fn each_level_is_raised_once_per_window() {
        let p = budgets(1, None); // 10,000 micro-units
        let mut marks = 0;
        assert!(due(&p, &spent(7_999, 7_999, 0), T, None, &mut marks).is_empty());
        let a = due(&p, &spent(7_000, 7_000, 1_000), T, None, &mut marks);
        assert_eq!(
            a,
            vec![Alert {
                limit: Limit::DailyBudgetCents,
                level: Level::Warning,
                budget: 10_000,
                used: 8_000
            }],
            "reserved counts as used"
        );
        // Back under the threshold (a release) and over it again: nothing new.
        assert!(due(&p, &spent(7_000, 7_000, 0), T, None, &mut marks).is_empty());
        assert!(due(&p, &spent(8_500, 8_500, 0), T, None, &mut marks).is_empty());
        let a = due(&p, &spent(10_000, 10_000, 0), T, None, &mut marks);
        assert_eq!(
            a.iter().map(|a| a.level).collect::<Vec<_>>(),
            vec![Level::Emergency, Level::Limit],
            "a jump past two thresholds raises both, lowest first"
        );
        assert!(due(&p, &spent(20_000, 20_000, 0), T, None, &mut marks).is_empty());
        // A new day clears the day's marks (the entry does this when it rolls).
        marks &= !DAY_MARKS;
        assert_eq!(due(&p, &spent(9_000, 9_000, 0), T, None, &mut marks).len(), 2);
    }

    #[test]
    fn a_refusal_raises_the_level_it_refused_at() {
        let p = budgets(1, Some(100));
        let mut marks = 0;
        // 50 % used, refused by the daily budget (the estimate did not fit): the limit is
        // reached for that request, and the levels below it are raised with it.
        let a = due(
            &p,
            &spent(5_000, 5_000, 0),
            T,
            Some((Limit::DailyBudgetCents, Level::Limit)),
            &mut marks,
        );
        assert_eq!(
            a.iter().map(|a| (a.limit, a.level)).collect::<Vec<_>>(),
            vec![
                (Limit::DailyBudgetCents, Level::Warning),
                (Limit::DailyBudgetCents, Level::Emergency),
                (Limit::DailyBudgetCents, Level::Limit)
            ]
        );
        assert_eq!(marks, DAY_MARKS, "the monthly budget (0.5 % used) owes nothing");
        // A refusal at the emergency threshold of the monthly budget.
        let a = due(
            &p,
            &spent(5_000, 5_000, 0),
            T,
            Some((Limit::MonthlyBudgetCents, Level::Emergency)),
            &mut marks,
        );
        assert_eq!(
            a.iter().map(|a| (a.limit, a.level)).collect::<Vec<_>>(),
            vec![
                (Limit::MonthlyBudgetCents, Level::Warning),
                (Limit::MonthlyBudgetCents, Level::Emergency)
            ]
        );
    }

    #[test]
    fn no_budget_owes_nothing() {
        let mut marks = 0;
        assert!(due(&Policy::default(), &spent(1 << 40, 1 << 40, 0), T, None, &mut marks).is_empty());
        assert_eq!(marks, 0);
    }

    #[test]
    fn reaching_names_the_budget_a_cost_takes_into_its_emergency_zone() {
        let p = budgets(1, Some(2));
        assert_eq!(reaching(&p, &spent(8_000, 8_000, 0), 999, 90), None);
        assert_eq!(
            reaching(&p, &spent(8_000, 8_000, 0), 1_000, 90),
            Some((Limit::DailyBudgetCents, 2_000))
        );
        // Only the monthly budget (20,000) reaches 90 %.
        let t = spent(1_000, 17_000, 500);
        assert_eq!(reaching(&p, &t, 500, 90), Some((Limit::MonthlyBudgetCents, 2_500)));
        assert_eq!(reaching(&p, &t, 0, 90), None, "a free request never reaches anything");
        assert_eq!(reaching(&Policy::default(), &t, 1 << 40, 90), None);
    }

    proptest! {
        /// However spending moves (up, down, refused), each (budget, level) is raised at most once
        /// while the marks are kept, and a level is raised only once reached.
        #[test]
        fn at_most_one_alert_per_level_and_window(
            steps in proptest::collection::vec((0i64..30_000, 0i64..5_000, proptest::option::of(0usize..2)), 1..60),
        ) {
            let p = budgets(1, Some(2));
            let mut marks = 0u8;
            let mut seen = std::collections::HashSet::new();
            for (spent_day, held, refused) in steps {
                let totals = spent(spent_day, spent_day, held);
                let refusal = refused.map(|i| (BUDGETS[i], Level::Limit));
                for a in due(&p, &totals, T, refusal, &mut marks) {
                    prop_assert!(seen.insert((a.limit, a.level)), "{a:?} raised twice");
                    let reached = money::level(a.used, a.budget, T);
                    prop_assert!(a.level <= reached || refusal.is_some_and(|(l, _)| l == a.limit));
                }
            }
        }
    }
}
