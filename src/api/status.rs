//! `cp_quota_status`: what a subject has used, holds and has left, as jsonb.

use super::{full_index, ledger_totals, locate, totals_of, zones};
use crate::args;
use crate::calendar::{iso_utc, Now, Window};
use crate::catalog::Whose;
use crate::catalog::{self, now_unix_us};
use crate::error::{CpError, CpResult};
use crate::money::Thresholds;
use crate::policy::{Limit, Policy};
use crate::policy_cache::{self, Cached};
use crate::quota::{self, Totals, QUOTA_LIMITS};
use crate::shmem::{self, Shared};
use crate::zone::Span;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{json, Map, Value};

/// The tenant's calendar at one instant: its time zone, and the day and month that contain it.
pub struct Period {
    pub zone: String,
    pub now: i64,
    pub day: Span,
    pub month: Span,
}

impl Period {
    pub fn of(sh: &Shared, zone: u16, now: i64) -> Period {
        Period {
            zone: sh.zone_name(zone),
            now,
            day: sh.span_at(zone, Window::Day, now),
            month: sh.span_at(zone, Window::Month, now),
        }
    }

    fn json(&self, w: Window) -> Value {
        let s = match w {
            Window::Day => &self.day,
            Window::Month => &self.month,
        };
        let ms = Now::with_ends(self.now, self.day.end, self.month.end).ms_until_end(w);
        json!({"start": iso_utc(s.start), "end": iso_utc(s.end), "resets_in_ms": ms})
    }
}

pub fn status_json(
    tenant: &str,
    subject: &str,
    enrolled: Option<&Cached>,
    policy: &Policy,
    profile: &str,
    t: &Totals,
    period: &Period,
) -> Value {
    let mut quotas = Map::new();
    for l in QUOTA_LIMITS.into_iter().filter(|l| !quota::is_budget(*l)) {
        let limit = policy.limit(l);
        let used = t.committed(l);
        let held = t.held(l);
        let remaining = limit.map(|c| c.saturating_sub(t.used(l)).max(0));
        let percent = limit.map(|c| {
            if c == 0 {
                100.0
            } else {
                ((t.used(l) as f64) * 1000.0 / (c as f64)).round() / 10.0
            }
        });
        quotas.insert(
            l.name().into(),
            json!({"limit": limit, "used": used, "held": held, "remaining": remaining, "percent": percent,
                   "window": quota::window_of(l).map(|w| w.name())}),
        );
    }
    let lim = |l: Limit| json!(policy.limit(l));
    json!({
        "tenant": tenant,
        "subject": subject,
        "enrolled": enrolled.is_some(),
        "profile": profile,
        "active": enrolled.is_none_or(|c| c.active),
        "profile_active": policy.profile_active,
        "org_id": enrolled.and_then(|c| c.org_id.clone()),
        "period": {"time_zone": period.zone, "day": period.json(Window::Day), "month": period.json(Window::Month)},
        "quotas": quotas,
        "held": {"requests": t.held_requests, "tokens": t.held_tokens, "cost_micros": t.held_cost},
        "rate_limits": {
            "requests_per_second": lim(Limit::RequestsPerSecond),
            "requests_per_minute": lim(Limit::RequestsPerMinute),
            "requests_per_hour": lim(Limit::RequestsPerHour),
            "tokens_per_minute": lim(Limit::TokensPerMinute),
            "max_concurrent": lim(Limit::MaxConcurrent),
            "in_flight": t.held_requests,
        },
        "budgets": {
            "daily_budget_cents": lim(Limit::DailyBudgetCents),
            "monthly_budget_cents": lim(Limit::MonthlyBudgetCents),
        },
        "money": money_json(policy, t, crate::gucs::subject_thresholds()),
        "models": {"allowed": policy.allowed_models, "blocked": policy.blocked_models,
                   "default": policy.default_model, "fallback": policy.fallback_model},
        "grants": [],
    })
}

/// An organisation's switches, thresholds and money per window.
fn org_json(o: &policy_cache::Org, t: &Totals) -> Value {
    let r = &o.org;
    json!({
        "org_id": &*o.name,
        "active": r.active,
        "emergency_stop": r.emergency_stop,
        "warning_pct": r.warning_pct,
        "emergency_pct": r.emergency_pct,
        "emergency_action": r.action.name(),
        "budgets": {
            "daily_budget_cents": r.budgets.limit(Limit::DailyBudgetCents),
            "monthly_budget_cents": r.budgets.limit(Limit::MonthlyBudgetCents),
        },
        "money": money_json(&r.budgets, t, r.thresholds()),
        "held": {"requests": t.held_requests, "cost_micros": t.held_cost},
    })
}

/// Spend per window against the budget: in micro-units, and as display strings. `spent` is
/// recorded (and expired) usage, `reserved` what open admissions hold; `remaining`, `percent` and
/// `level` (normal, warning, emergency or limit, against `th`) count both, like the admission does.
fn money_json(policy: &Policy, t: &Totals, th: Thresholds) -> Value {
    let currency = crate::gucs::currency();
    let show = |micros: i64| crate::money::display(micros, &currency);
    let window = |l: Limit| {
        let budget = quota::cap_of(policy, l);
        let (spent, reserved, used) = (t.committed(l), t.held(l), t.used(l));
        let remaining = budget.map(|b| b.saturating_sub(used).max(0));
        json!({
            "budget_micros": budget, "budget": budget.map(show),
            "spent_micros": spent, "spent": show(spent),
            "reserved_micros": reserved, "reserved": show(reserved),
            "remaining_micros": remaining, "remaining": remaining.map(show),
            "percent": budget.map(|b| crate::money::percent(used, b)),
            "level": budget.map(|b| crate::money::level(used, b, th).name()),
        })
    };
    json!({"currency": currency, "warning_pct": th.warning_pct, "emergency_pct": th.emergency_pct,
           "day": window(Limit::DailyBudgetCents), "month": window(Limit::MonthlyBudgetCents)})
}

pub fn quota_status(subject: Option<&str>) -> CpResult<Value> {
    let sh = shmem::shared()?;
    let subject = args::name("subject", subject)?;
    let (tenant, db, key) = locate(subject)?;
    let zone = zones::zone_of(sh, db, &tenant)?;
    let period = Period::of(sh, zone, now_unix_us());
    match policy_cache::get(&key, &tenant, subject, false)? {
        Some(c) => {
            let whose = Whose::Subject(subject);
            let t = totals_of(sh, &key, db, &tenant, whose, zone)?.ok_or_else(|| full_index(whose))?;
            let mut v = status_json(&tenant, subject, Some(&c), &c.policy, &c.profile, &t, &period);
            if let Some(name) = c.org_id.as_deref() {
                let o = policy_cache::org(db, &tenant, name)?;
                let whose = Whose::Org(name);
                let ot = totals_of(sh, &o.key, db, &tenant, whose, zone)?.ok_or_else(|| full_index(whose))?;
                v["organization"] = org_json(&o, &ot);
            }
            Ok(v)
        }
        None => {
            // Not enrolled: show what the default profile would give, with what the ledger holds.
            let Some((name, pj)) = catalog::default_profile(&tenant)? else {
                return Err(CpError::state(
                    format!("tenant \"{tenant}\" has no default profile"),
                    None,
                    None,
                ));
            };
            let v: Value = serde_json::from_str(&pj).map_err(|e| {
                CpError::state(
                    format!("profile \"{name}\" holds a value control_plane cannot read"),
                    Some(e.to_string()),
                    None,
                )
            })?;
            let policy = Policy::from_profile(&v).map_err(|e| CpError::state(e.message, Some(e.detail), None))?;
            let t = ledger_totals(sh, &tenant, Whose::Subject(subject), zone, period.now)?;
            Ok(status_json(&tenant, subject, None, &policy, &name, &t, &period))
        }
    }
}

/// The subject's profile, period, and for each quota its limit, used, held, remaining and
/// percentage; rate limits and budgets as configured. Does not enroll an unknown subject.
#[pg_extern(volatile, parallel_unsafe)]
fn cp_quota_status(subject: Option<&str>) -> Result<JsonB, ErrorReport> {
    Ok(JsonB(quota_status(subject)?))
}
