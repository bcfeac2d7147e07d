//! Organisations: the budgets that all of an organisation's subjects draw on together, its
//! thresholds and its switches (`control_plane.organizations`).
//!
//! An organisation's spend is an entry of the same shared-memory index as its subjects' (under
//! `Key::org`), and an admission of one of its subjects must fit the subject's limits and the
//! organisation's budgets at once (`admission::decide_with_org`).

use crate::policy::{Limit, Policy};

/// What happens at an organisation's emergency threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmergencyAction {
    /// Admit with the profile's cheaper `fallback_model` (deny when the profile has none).
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

#[cfg(test)]
mod unit {
    use super::*;

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
