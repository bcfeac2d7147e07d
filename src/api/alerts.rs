//! Money alerts: the ones an admission or a record owes are marked on the entry under its lock
//! (`alerts::due` in the core crate), then written here to `control_plane.alerts`, with their
//! notification, in the caller's transaction.

use crate::alerts::Alert;
use crate::catalog::{self, AlertRow};
use crate::emergency::Decided;
use crate::error::{CpError, CpResult};
use crate::index::Slot;
use crate::key::Key;
use crate::money::{Level, Thresholds};
use crate::org::{self, Organization, Scope};
use crate::policy::Limit;
use crate::quota::window_of;
use crate::shmem::Shared;
use crate::xact;
use pgrx::pg_sys;

/// The alerts owed by one entry: the subject's or its organisation's.
pub struct Owed {
    pub scope: Scope,
    pub key: Key,
    pub alerts: Vec<Alert>,
}

/// Where the alerts were raised: the tenant, the subject whose request reached them, its
/// organisation, the tenant's time zone and the instant (which set the window).
pub struct Origin<'a> {
    pub db: u32,
    pub tenant: &'a str,
    pub subject: &'a str,
    pub org_id: Option<&'a str>,
    pub zone: u16,
    pub now: i64,
}

/// The bits of an entry's marks that its owed alerts set.
fn bits(alerts: &[Alert]) -> u8 {
    alerts.iter().fold(0, |b, a| b | crate::alerts::mark(a.limit, a.level))
}

/// Writes what is owed. The marks are registered first, so that an abort of this transaction
/// (an error here included) clears them and the next admission past the threshold tries again.
pub fn raise(sh: &Shared, at: &Origin, owed: &[Owed]) -> CpResult<()> {
    for o in owed.iter().filter(|o| !o.alerts.is_empty()) {
        xact::alerts_marked(o.key, at.db, bits(&o.alerts));
    }
    if unsafe { pg_sys::XactReadOnly } {
        let a = owed
            .iter()
            .flat_map(|o| o.alerts.iter().map(move |a| (o.scope, a)))
            .next();
        let what = a.map_or_else(String::new, |(scope, a)| {
            format!("{} {}", org::limit_name(a.limit, scope), a.level.name())
        });
        return Err(CpError::ReadOnly {
            message: "a money alert cannot be written in a read-only transaction".into(),
            detail: format!(
                "subject \"{}\" in tenant \"{}\" reached {what}; the alert is written in the transaction that reached it",
                at.subject, at.tenant
            ),
        });
    }
    for o in owed {
        for a in &o.alerts {
            let window = window_of(a.limit).unwrap_or(crate::calendar::Window::Day);
            catalog::insert_alert(&AlertRow {
                tenant: at.tenant,
                scope: match o.scope {
                    Scope::Subject => "subject",
                    Scope::Organization => "organization",
                },
                subject: at.subject,
                org_id: at.org_id,
                limit_name: org::limit_name(a.limit, o.scope),
                level: a.level.name(),
                window_start_unix_us: sh.span_at(at.zone, window, at.now).start,
                budget_micros: a.budget,
                used_micros: a.used,
            })?;
        }
    }
    Ok(())
}

/// True when anything is owed.
pub fn any(owed: &[Owed]) -> bool {
    owed.iter().any(|o| !o.alerts.is_empty())
}

/// The limit a refusal names and the level it refused at, for `alerts::due`.
fn refusal(v: &crate::admission::Verdict) -> Option<(Limit, Level)> {
    use crate::admission::{DenyKind, Verdict};
    match *v {
        Verdict::Deny {
            kind: DenyKind::Budget,
            limit,
            ..
        } => Some((limit, Level::Limit)),
        Verdict::Deny {
            kind: DenyKind::Emergency,
            limit,
            ..
        } => Some((limit, Level::Emergency)),
        _ => None,
    }
}

/// One entry's budgets for `owed_by_overspend`: its key, its budgets and their thresholds.
pub struct Budgets<'a> {
    pub scope: Scope,
    pub key: Key,
    pub budgets: &'a crate::policy::Policy,
    pub thresholds: Thresholds,
}

/// The alerts a record owes when it costs `over` more than what it settles (its reservation's
/// estimate, or the charge it replaces): each entry, which still counts what is settled, is looked
/// at as if `over` more were spent. Marked under each entry's lock in turn.
pub fn owed_by_overspend(sh: &Shared, db: u32, now: i64, over: i64, entries: &[Budgets]) -> Vec<Owed> {
    entries
        .iter()
        .filter(|b| b.budgets.has_budget())
        .map(|b| Owed {
            scope: b.scope,
            key: b.key,
            alerts: sh
                .with_marks(&b.key, db, now, |totals, marks| {
                    let mut t = *totals;
                    t.held_cost = t.held_cost.saturating_add(over);
                    crate::alerts::due(b.budgets, &t, b.thresholds, None, marks)
                })
                .unwrap_or_default(),
        })
        .collect()
}

/// The alerts an admission owes, marked under the locks of its entries (the subject's, with its
/// policy and thresholds; its organisation's): where each budget stands after it, and the level
/// of a refusal or of the emergency zone it entered.
pub fn owed_by_admission(
    d: &Decided,
    subject: (Key, &crate::policy::Policy, Thresholds, &mut Slot),
    org: Option<(Key, &Organization, &mut Slot)>,
) -> Vec<Owed> {
    let reached = |scope: Scope| {
        refusal(&d.verdict)
            .filter(|_| d.scope == scope)
            .or(d.emergency.of(scope).map(|l| (l, Level::Emergency)))
    };
    let mut owed = Vec::new();
    let (key, policy, thresholds, s) = subject;
    if policy.has_budget() {
        owed.push(Owed {
            scope: Scope::Subject,
            key,
            alerts: crate::alerts::due(
                policy,
                &s.totals,
                thresholds,
                reached(Scope::Subject),
                &mut s.alert_marks,
            ),
        });
    }
    if let Some((key, o, slot)) = org.filter(|(_, o, _)| o.has_budget()) {
        let t = o.thresholds();
        owed.push(Owed {
            scope: Scope::Organization,
            key,
            alerts: crate::alerts::due(
                &o.budgets,
                &slot.totals,
                t,
                reached(Scope::Organization),
                &mut slot.alert_marks,
            ),
        });
    }
    owed
}
