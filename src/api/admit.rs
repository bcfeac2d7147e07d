//! `cp_admit`: one admission decision across every limit that applies.

use super::alerts::{self, Owed};
use super::{composite_datum, locate, rebuild, tenant_of};
use crate::admission::{DenyKind, Verdict};
use crate::args::{self, optional_name};
use crate::calendar::US_PER_SEC;
use crate::catalog::{now_unix_us, Whose};
use crate::emergency::{self, Fallback};
use crate::error::CpResult;
use crate::gucs;
use crate::money;
use crate::org::{self, OrgSide, Organization};
use crate::policy_cache;
use crate::quota::Ask;
use crate::shmem::{self, Grant, Hold, Owner, Seen, Stat};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::Uuid;
use std::panic::AssertUnwindSafe;

/// One admission decision, as returned to SQL.
pub struct Decision {
    pub allowed: bool,
    pub decision: &'static str,
    pub reason: Option<&'static str>,
    pub limit_name: Option<&'static str>,
    pub remaining: Option<i64>,
    pub retry_after_ms: Option<i64>,
    pub reservation_id: Option<Uuid>,
    /// The model to call: the requested one, or the profile's default.
    pub model: Option<String>,
}

impl Decision {
    fn deny(
        reason: &'static str,
        limit_name: Option<&'static str>,
        remaining: Option<i64>,
        retry: Option<i64>,
    ) -> Self {
        Decision {
            allowed: false,
            decision: "deny",
            reason: Some(reason),
            limit_name,
            remaining,
            retry_after_ms: retry,
            reservation_id: None,
            model: None,
        }
    }
}

/// What an admission reserves against the budgets that apply (the subject's and its
/// organisation's), and its whole estimate: None when none applies or the model costs nothing;
/// Err(denial) when the model has no price and unpriced models are denied.
#[allow(clippy::too_many_arguments)]
fn cost_estimate(
    sh: &shmem::Shared,
    db: u32,
    tenant: &str,
    policy: &crate::policy::Policy,
    org: Option<&Organization>,
    model: Option<&str>,
    tokens: i64,
    max_output_tokens: Option<i64>,
    now: i64,
) -> CpResult<Result<Option<money::Estimate>, Decision>> {
    let Some(smallest) = org::smallest_budget_micros(policy, org) else {
        return Ok(Ok(None));
    };
    let price = match model {
        Some(m) => money::price_at(&super::prices::rows_of(sh, db, tenant, m)?, now),
        None => None,
    };
    Ok(match price {
        Some(p) if p.is_free() => Ok(None),
        Some(p) => {
            let output = max_output_tokens.unwrap_or(gucs::DEFAULT_MAX_OUTPUT_TOKENS.get() as i64);
            let cap = money::reservation_cap(smallest, gucs::MAX_RESERVATION_PCT.get() as i64);
            Ok(Some(money::estimate(p, tokens, output, Some(cap))))
        }
        None if gucs::UNPRICED_MODELS.get() == gucs::UnpricedModels::Allow => Ok(None),
        None => Err(Decision::deny("unpriced_model", None, None, None)),
    })
}

/// How long an admission waits for the flushers to free a reservation slot when every slot is
/// taken (the oldest were expired early to make room) before it is denied `capacity`.
const CLAIM_WAIT_MS: u32 = 2_000;

pub fn admit(
    subject: Option<&str>,
    tokens: Option<i64>,
    model: Option<&str>,
    feature: Option<&str>,
    max_output_tokens: Option<i64>,
) -> CpResult<Decision> {
    let sh = shmem::shared()?;
    let subject = args::name("subject", subject)?;
    let tokens = args::tokens("tokens", tokens)?;
    let max_output_tokens = max_output_tokens
        .map(|m| args::tokens("max_output_tokens", Some(m)))
        .transpose()?;
    optional_name("model", model)?;
    optional_name("feature", feature)?;
    let (tenant, db, key) = locate(subject)?;
    let (t, tenant_fp, tenant_slot) = tenant_of(sh, db, &tenant)?;
    let zone = t.zone;
    let (pol, stamp) = policy_cache::for_admission(&key, db, &tenant, subject, crate::xact::has_policy_changes())?;

    if !pol.active {
        sh.bump_outcome(tenant_slot, Stat::DeniedInactive);
        return Ok(Decision::deny("inactive", None, None, None));
    }
    if !pol.policy.profile_active {
        sh.bump_outcome(tenant_slot, Stat::DeniedInactive);
        return Ok(Decision::deny("profile_inactive", None, None, None));
    }
    let model = pol.policy.model_for(model);
    if let Some(g) = pol.policy.gate(model, feature) {
        sh.bump_outcome(tenant_slot, Stat::DeniedModel);
        return Ok(Decision::deny(g.reason(), None, None, None));
    }

    let org = pol
        .org_id
        .as_deref()
        .map(|o| policy_cache::org(db, &tenant, o))
        .transpose()?;
    if let Some(o) = &org {
        if !o.org.active {
            sh.bump_outcome(tenant_slot, Stat::DeniedInactive);
            return Ok(Decision::deny("org_inactive", None, None, None));
        }
        if o.org.emergency_stop {
            sh.bump_outcome(tenant_slot, Stat::DeniedBudget);
            return Ok(Decision::deny("emergency_stop", None, None, None));
        }
    }
    let org_row = org.as_ref().map(|o| &o.org);

    let now = now_unix_us();
    let cost = match cost_estimate(
        sh,
        db,
        &tenant,
        &pol.policy,
        org_row,
        model,
        tokens,
        max_output_tokens,
        now,
    )? {
        Ok(c) => c,
        Err(denied) => {
            sh.bump_outcome(tenant_slot, Stat::DeniedBudget);
            return Ok(denied);
        }
    };
    let ask = Ask {
        tokens,
        cost: cost.map(|e| e.reserved),
    };
    // The cheaper model to degrade to past an emergency threshold: the profile's fallback, when
    // the request costs money, the fallback is allowed and it is priced (or free).
    let fallback = match (cost, pol.policy.fallback_model.as_deref()) {
        (Some(c), Some(f)) if c.reserved > 0 && Some(f) != model && pol.policy.gate(Some(f), feature).is_none() => {
            match cost_estimate(
                sh,
                db,
                &tenant,
                &pol.policy,
                org_row,
                Some(f),
                tokens,
                max_output_tokens,
                now,
            )? {
                // Without an estimate under a budget the fallback is free, or has no price and
                // unpriced models are allowed: the latter is no fallback (its calls would never
                // count against the budget it is to spare).
                Ok(None) if money::price_at(&super::prices::rows_of(sh, db, &tenant, f)?, now).is_none() => None,
                Ok(fc) => Some((
                    f,
                    Fallback {
                        ask: Ask {
                            tokens,
                            cost: fc.map(|e| e.reserved),
                        },
                        // Compared before the cap: two capped estimates may be equal.
                        cheaper: fc.map_or(0, |e| e.full) < c.full,
                    },
                )),
                Err(_) => None,
            }
        }
        _ => None,
    };
    // The ends of the tenant's day and month, for when a quota refuses.
    let at = sh.now_in(zone, now);
    let expires_at = now.saturating_add(gucs::RESERVATION_TIMEOUT.get() as i64 * US_PER_SEC);
    let thresholds = gucs::subject_thresholds();
    // A plan with nothing to hold (no concurrency limit, no request quota, no token estimate
    // against a token quota, no cost estimate against a budget) claims no reservation slot.
    let hold_for = |ask: Ask| {
        org::needs_hold_with_org(&pol.policy, org_row, ask).then_some(Hold {
            tokens,
            cost: ask.cost.unwrap_or(0),
            expires_at,
        })
    };
    let hold = hold_for(ask);
    let fallback_hold = fallback.and_then(|(_, f)| hold_for(f.ask));
    let org_key = org.as_ref().map(|o| o.key);
    let mut expired_once = false;
    for _ in 0..4 {
        // From the claim of a reservation slot to its publication nothing can raise an error:
        // the ledger rebuild runs with no slot claimed, and the guard gives the slot back on
        // every other way out. (A degraded admission holds what the fallback reserves, in the
        // slot claimed for the request.)
        let claim = match hold {
            None => None,
            Some(_) => match sh.claim_reservation(now, CLAIM_WAIT_MS) {
                Some(c) => Some(c),
                None => {
                    sh.bump_outcome(tenant_slot, Stat::DeniedCapacity);
                    return Ok(Decision::deny("capacity", Some("max_reservations"), Some(0), None));
                }
            },
        };
        let seen = sh.admit(
            &key,
            org_key.as_ref(),
            db,
            now,
            zone,
            stamp,
            |state, org_totals| {
                let side = org.as_ref().zip(org_totals).map(|(o, t)| OrgSide::of(&o.org, t));
                let d = emergency::decide_money(&pol.policy, state, side, ask, fallback.map(|f| f.1), at, thresholds);
                let grant = match d.verdict {
                    Verdict::Allow { tat, .. } => Some(Grant {
                        tat,
                        hold: if d.degraded { fallback_hold } else { hold },
                    }),
                    Verdict::Deny { .. } => None,
                };
                (d, grant)
            },
            |a, s, o| {
                let org = o.zip(org.as_ref()).map(|(slot, g)| (g.key, &g.org, slot));
                alerts::owed_by_admission(&a.verdict, (key, &pol.policy, thresholds, s), org)
            },
        );
        let (a, owed) = match seen {
            Seen::Found(a) => a,
            Seen::Missing | Seen::Moved => {
                drop(claim);
                let installed = rebuild(sh, &key, db, &tenant, Whose::Subject(subject), zone)?
                    && match &org {
                        Some(o) => rebuild(sh, &o.key, db, &tenant, Whose::Org(&o.name), zone)?,
                        None => true,
                    };
                if !installed {
                    sh.bump_outcome(tenant_slot, Stat::DeniedCapacity);
                    return Ok(Decision::deny("capacity", Some("max_subjects"), Some(0), None));
                }
                continue;
            }
        };
        let origin = alerts::Origin {
            db,
            tenant: &tenant,
            subject,
            org_id: pol.org_id.as_deref(),
            zone,
            now,
        };
        let d = a.verdict;
        match d.verdict {
            Verdict::Allow { tightest, warn, .. } => {
                let (id, published) = match (claim, a.held) {
                    (Some(c), Some(h)) => {
                        let id = c.id();
                        let owner = Owner {
                            db,
                            key,
                            tenant_fp,
                            tenant_slot,
                            zone,
                            tenant: &tenant,
                            subject,
                            org: org.as_ref().map(|o| (o.key, &*o.name)),
                        };
                        c.publish(&owner, &h);
                        crate::flusher::ensure(sh, db, now);
                        (id, true)
                    }
                    _ => (shmem::random_id(), false),
                };
                if alerts::any(&owed) {
                    raise_admitted(sh, &origin, &owed, published.then_some(id))?;
                }
                sh.bump_outcome(tenant_slot, Stat::Allowed);
                let (decision, reason) = match (d.degraded, d.emergency.any(), warn) {
                    (true, _, _) => ("degrade", Some("emergency_threshold")),
                    (false, true, _) => ("warn", Some("emergency_threshold")),
                    (false, false, true) => ("warn", Some("quota_warning")),
                    (false, false, false) => ("allow", None),
                };
                let model = match (d.degraded, fallback) {
                    (true, Some((f, _))) => Some(f),
                    _ => model,
                };
                return Ok(Decision {
                    allowed: true,
                    decision,
                    reason,
                    limit_name: tightest.map(|(l, _)| org::limit_name(l, d.scope)),
                    remaining: tightest.map(|(_, r)| r),
                    retry_after_ms: None,
                    reservation_id: Some(Uuid::from_bytes(id)),
                    model: model.map(str::to_string),
                });
            }
            Verdict::Deny {
                kind,
                limit,
                remaining,
                mut retry_after_ms,
            } => {
                drop(claim);
                let holds = a.totals.held_requests > 0 || a.totals.held_tokens > 0;
                if holds && !expired_once && a.next_expiry != 0 && a.next_expiry <= now && kind != DenyKind::Rate {
                    // Some of what blocks us may be reservations past their time: give them back.
                    // (Alerts marked meanwhile are owed still: the next pass sees them marked.)
                    if alerts::any(&owed) {
                        alerts::raise(sh, &origin, &owed)?;
                    }
                    expired_once = true;
                    sh.expire_reservations(now, Some(db), Some(&key), false);
                    continue;
                }
                sh.bump_outcome(
                    tenant_slot,
                    match kind {
                        DenyKind::Quota => Stat::DeniedQuota,
                        DenyKind::Budget | DenyKind::Emergency => Stat::DeniedBudget,
                        DenyKind::Rate => Stat::DeniedRate,
                        DenyKind::Concurrency => Stat::DeniedConcurrency,
                    },
                );
                if alerts::any(&owed) {
                    alerts::raise(sh, &origin, &owed)?;
                }
                if kind == DenyKind::Concurrency && a.next_expiry > now {
                    // At the latest, the oldest open request expires then.
                    retry_after_ms = Some(((a.next_expiry - now) + 999) / 1_000);
                }
                return Ok(Decision::deny(
                    kind.reason(),
                    Some(org::limit_name(limit, d.scope)),
                    Some(remaining),
                    retry_after_ms,
                ));
            }
        }
    }
    // The subject's entry was evicted between its rebuild and the decision, four times over: the
    // index is too small for the traffic. Fail closed.
    sh.bump_outcome(tenant_slot, Stat::DeniedCapacity);
    Ok(Decision::deny("capacity", Some("max_subjects"), Some(0), None))
}

/// Writes the alerts an admission owes, after its reservation (`reservation`) was published. If
/// writing fails, the admission does not stand: its reservation is given back before the error
/// goes on (and the transaction's abort clears the marks).
fn raise_admitted(
    sh: &shmem::Shared,
    origin: &alerts::Origin,
    owed: &[Owed],
    reservation: Option<[u8; 16]>,
) -> CpResult<()> {
    let db = origin.db;
    let give_back = move || {
        if let (Some(id), Ok(sh)) = (reservation, shmem::shared()) {
            let now = now_unix_us();
            if let shmem::Taken::Held(h) = sh.take_reservation(&id, db, now, false, |_, _| true) {
                sh.release_taken(&h, db, now);
            }
        }
    };
    let r = PgTryBuilder::new(AssertUnwindSafe(|| alerts::raise(sh, origin, owed)))
        .catch_others(move |e| {
            give_back();
            e.rethrow()
        })
        .execute();
    if r.is_err() {
        give_back();
    }
    r
}

/// `pg_finfo` record of `cp_admit_fast` (version-1 calling convention).
#[no_mangle]
pub extern "C" fn pg_finfo_cp_admit_fast() -> &'static pg_sys::Pg_finfo_record {
    static V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// `control_plane.cp_admit(subject, tokens, model, feature, max_output_tokens) RETURNS
/// control_plane.admission` (declared in `src/sql/schema.sql`). One admission decision for
/// `subject` in the current tenant: checks every limit that applies and, if admitted, holds the
/// request and its token and cost estimates until `cp_record_usage` or `cp_release` (or expiry).
///
/// Written against the raw calling convention and returning a named composite type: this is
/// the hot path, and a set-returning function with OUT parameters makes PostgreSQL rebuild the
/// result descriptor from the catalog on every call.
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn cp_admit_fast(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    let subject: Option<&str> = unsafe { pgrx::fcinfo::pg_getarg(fcinfo, 0) };
    let tokens: Option<i64> = unsafe { pgrx::fcinfo::pg_getarg(fcinfo, 1) };
    let model: Option<&str> = unsafe { pgrx::fcinfo::pg_getarg(fcinfo, 2) };
    let feature: Option<&str> = unsafe { pgrx::fcinfo::pg_getarg(fcinfo, 3) };
    // (A 0.1.0 declaration of cp_admit, before ALTER EXTENSION UPDATE, passes four arguments.)
    let max_output_tokens: Option<i64> = if unsafe { (*fcinfo).nargs } > 4 {
        unsafe { pgrx::fcinfo::pg_getarg(fcinfo, 4) }
    } else {
        None
    };
    let d = match admit(subject, tokens, model, feature, max_output_tokens) {
        Ok(d) => d,
        Err(e) => crate::error::raise(e),
    };
    unsafe { admission_datum(fcinfo, &d) }.unwrap_or_else(|e| crate::error::raise(e))
}

/// Forms the `control_plane.admission` row.
unsafe fn admission_datum(fcinfo: pg_sys::FunctionCallInfo, d: &Decision) -> CpResult<pg_sys::Datum> {
    let text = |s: Option<&str>| s.and_then(|s| s.into_datum());
    unsafe {
        composite_datum(
            fcinfo,
            &[
                d.allowed.into_datum(),
                text(Some(d.decision)),
                text(d.reason),
                text(d.limit_name),
                d.remaining.and_then(|v| v.into_datum()),
                d.retry_after_ms.and_then(|v| v.into_datum()),
                d.reservation_id.and_then(|u| u.into_datum()),
                text(d.model.as_deref()),
            ],
        )
    }
}
