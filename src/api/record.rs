//! `cp_record_usage` and `cp_release`: what happens after the model call.

use super::alerts;
use super::{composite_datum, database, ledger_lock, locate, tenant_fingerprint, tenant_of};
use crate::args::{self, optional_name, required};
use crate::catalog::{self, now_unix_us};
use crate::error::{CpError, CpResult};
use crate::gucs;
use crate::key::Key;
use crate::org::Scope;
use crate::policy_cache;
use crate::shmem::{self, Taken};
use crate::xact::{self, Reversal, Settles};
use pgrx::pg_sys;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::Uuid;

pub struct Recorded {
    pub event_id: i64,
    /// None when the model has no price at the time of the event (or none was named).
    pub cost_micros: Option<i64>,
    pub settled: bool,
}

#[allow(clippy::too_many_arguments)]
pub fn record(
    subject: Option<&str>,
    input: Option<i64>,
    output: Option<i64>,
    model: Option<&str>,
    reservation_id: Option<Uuid>,
    idempotency_key: Option<&str>,
    metadata: Option<pg_sys::Datum>,
    feature: Option<&str>,
) -> CpResult<Recorded> {
    let sh = shmem::shared()?;
    let subject = args::name("subject", subject)?;
    let input = args::tokens("input_tokens", input)?;
    let output = args::tokens("output_tokens", output)?;
    optional_name("model", model)?;
    optional_name("idempotency_key", idempotency_key)?;
    optional_name("feature", feature)?;
    let (tenant, db, key) = locate(subject)?;
    let (_, _, tenant_slot) = tenant_of(sh, db, &tenant)?;
    let pol = policy_cache::get(&key, &tenant, subject, true)?
        .ok_or_else(|| CpError::Internal("enrolled subject has no policy".into()))?;

    let named_model = model;
    // A call that names no model used the profile's default.
    let model = pol.policy.model_for(model);
    if let Some(k) = idempotency_key {
        // Calls with the same key wait for each other (until the first one's transaction ends),
        // then find its row: a retry records nothing and settles nothing.
        key_lock(db, &tenant, k);
        if let Some(u) = catalog::usage_by_key(&tenant, k)? {
            return retried(
                sh,
                db,
                key,
                k,
                u,
                (subject, input, output, named_model, feature),
                reservation_id,
            );
        }
    }

    // Read before a reservation is taken: from the take to the queuing below nothing may fail.
    let prices = model.map(|m| super::prices::rows_of(sh, db, &tenant, m)).transpose()?;

    let mut held = None;
    let mut reversal = None;
    if let Some(rid) = reservation_id {
        // Another subject's reservation is as unknown as one that never existed.
        match sh.take_reservation(rid.as_bytes(), db, now_unix_us(), true, |k, _| *k == key) {
            Taken::Held(h) => held = Some(h),
            Taken::Busy => {
                return Err(CpError::state(
                    format!("reservation {rid} is being settled by another transaction"),
                    None,
                    Some("Each reservation is settled once; wait for the other transaction to end."),
                ))
            }
            Taken::Expired => return Err(CpError::Internal("an expired reservation was not taken".into())),
            Taken::Unknown => {
                // Expired, and its charge already in the ledger? Then this record replaces it: a
                // reversal row takes the charge back (once per reservation), and the usage row
                // counts the request and the actual tokens.
                if let Some(c) = catalog::expired_charge(&tenant, subject, &rid)? {
                    let org = c.org_id.as_deref().map(|o| Key::org(db, &tenant, o));
                    ledger_lock(db, &key, pg_sys::ShareLock, true);
                    if let Some(o) = &org {
                        ledger_lock(db, o, pg_sys::ShareLock, true);
                    }
                    if catalog::insert_reversal(&tenant, subject, rid, &c)? {
                        reversal = Some(Reversal {
                            at: c.at,
                            tokens: c.tokens,
                            cost: c.cost,
                            org,
                        });
                    }
                }
            }
        }
    }
    let now = now_unix_us();
    let cost_micros = prices
        .and_then(|rows| crate::money::price_at(&rows, now))
        .map(|p| crate::money::cost(p, input, output));
    let org = pol.org_id.as_deref().map(|o| Key::org(db, &tenant, o));
    // Queued before anything that can fail, so that an abort gives the reservation back.
    xact::push(xact::Pending {
        subid: xact::current_subid(),
        key,
        org,
        db,
        tenant_slot,
        at_unix_us: now,
        input,
        output,
        cost: cost_micros.unwrap_or(0),
        reservation: held.map(|h| match h.expired {
            None => Settles::Hold {
                index: h.index,
                tokens: h.tokens,
                cost: h.cost,
                org: h.org,
            },
            Some(e) => Settles::Charge {
                index: h.index,
                tokens: e.tokens,
                cost: e.cost,
                at: e.at,
                org: h.org,
            },
        }),
        reversal,
    });
    // Rebuilds of the subject's entry and of its organisation's wait for this transaction.
    ledger_lock(db, &key, pg_sys::ShareLock, true);
    if let Some(o) = &org {
        ledger_lock(db, o, pg_sys::ShareLock, true);
    }
    let event_id = catalog::insert_usage(catalog::UsageRow {
        tenant: &tenant,
        subject,
        org_id: pol.org_id.as_deref(),
        model,
        feature,
        input,
        output,
        reservation_id,
        idempotency_key,
        metadata,
        at_unix_us: now,
        cost_micros,
    })?;
    // Spent beyond what this row settles (its reservation's estimate, or the charge it replaces)
    // may take a budget past a threshold: the alerts are written in this transaction.
    let settled_cost = held
        .map(|h| h.expired.map_or(h.cost, |e| e.cost))
        .or(reversal.map(|r| r.cost))
        .unwrap_or(0);
    let over = cost_micros.unwrap_or(0).saturating_sub(settled_cost);
    if over > 0 {
        overspend_alerts(sh, db, &tenant, subject, &key, &pol, over, now)?;
    }
    Ok(Recorded {
        event_id,
        cost_micros,
        settled: held.is_some() || reversal.is_some(),
    })
}

/// Writes the alerts that `over` micro-units spent beyond what a record settles owe, for the
/// subject's budgets and its organisation's.
#[allow(clippy::too_many_arguments)]
fn overspend_alerts(
    sh: &shmem::Shared,
    db: u32,
    tenant: &str,
    subject: &str,
    key: &Key,
    pol: &policy_cache::Cached,
    over: i64,
    now: i64,
) -> CpResult<()> {
    let org = pol
        .org_id
        .as_deref()
        .map(|o| policy_cache::org(db, tenant, o))
        .transpose()?;
    let mut entries = vec![alerts::Budgets {
        scope: Scope::Subject,
        key: *key,
        budgets: &pol.policy,
        thresholds: gucs::subject_thresholds(),
    }];
    if let Some(o) = &org {
        entries.push(alerts::Budgets {
            scope: Scope::Organization,
            key: o.key,
            budgets: &o.org.budgets,
            thresholds: o.org.thresholds(),
        });
    }
    let owed = alerts::owed_by_overspend(sh, db, now, over, &entries);
    if !alerts::any(&owed) {
        return Ok(());
    }
    let origin = alerts::Origin {
        db,
        tenant,
        subject,
        org_id: pol.org_id.as_deref(),
        zone: super::zones::zone_of(sh, db, tenant)?,
        now,
    };
    alerts::raise(sh, &origin, &owed)
}

/// Transaction-level lock on (database, tenant, idempotency key), so that calls with the same key
/// run one after the other. (A hash collision only makes two keys wait for each other.)
fn key_lock(db: u32, tenant: &str, idempotency_key: &str) {
    let h = Key::of(db, tenant, idempotency_key);
    let tag = pg_sys::LOCKTAG {
        locktag_field1: db,
        locktag_field2: h.hi as u32,
        locktag_field3: h.lo as u32,
        locktag_field4: 0x4351,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    };
    unsafe {
        pg_sys::LockAcquire(&tag, pg_sys::ExclusiveLock as i32, false, false);
    }
}

/// `pg_finfo` record of `cp_record_usage_fast` (version-1 calling convention).
#[no_mangle]
pub extern "C" fn pg_finfo_cp_record_usage_fast() -> &'static pg_sys::Pg_finfo_record {
    static V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// `control_plane.cp_record_usage(subject, input_tokens, output_tokens, model, reservation_id,
/// idempotency_key, metadata, feature) RETURNS control_plane.usage_record` (declared in
/// `src/sql/schema.sql`). Appends what a request actually used to the ledger and settles its
/// reservation; the totals move when the transaction commits. `metadata` is stored as the caller
/// sent it (the jsonb datum is passed through, never parsed).
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn cp_record_usage_fast(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    use pgrx::fcinfo::{pg_getarg, pg_getarg_datum};
    let r = unsafe {
        record(
            pg_getarg::<&str>(fcinfo, 0),
            pg_getarg::<i64>(fcinfo, 1),
            pg_getarg::<i64>(fcinfo, 2),
            pg_getarg::<&str>(fcinfo, 3),
            pg_getarg::<Uuid>(fcinfo, 4),
            pg_getarg::<&str>(fcinfo, 5),
            pg_getarg_datum(fcinfo, 6),
            pg_getarg::<&str>(fcinfo, 7),
        )
    };
    let r = r.unwrap_or_else(|e| crate::error::raise(e));
    unsafe {
        composite_datum(
            fcinfo,
            &[
                r.event_id.into_datum(),
                r.cost_micros.and_then(|c| c.into_datum()),
                r.settled.into_datum(),
            ],
        )
    }
    .unwrap_or_else(|e| crate::error::raise(e))
}

// ----------------------------------------------------------------------------- cp_release

/// A call with an idempotency key its tenant has recorded: the same call again (same subject,
/// amounts, model when it names one, and feature) gets the original event and records nothing;
/// anything else is refused (23505), since a key names one event. A reservation the retry carries stood for the
/// call already recorded: it is given back at once (a NOTICE says so).
fn retried(
    sh: &shmem::Shared,
    db: u32,
    key: Key,
    k: &str,
    u: catalog::KeyedUsage,
    (subject, input, output, model, feature): (&str, i64, i64, Option<&str>, Option<&str>),
    reservation_id: Option<Uuid>,
) -> CpResult<Recorded> {
    if u.subject != subject {
        // Another subject's event: named, nothing more of it shown.
        return Err(CpError::KeyConflict {
            message: format!("idempotency key \"{k}\" was recorded for another subject"),
            detail: format!("subject \"{}\" recorded it (event {})", u.subject, u.event_id),
        });
    }
    let show = |v: Option<&str>| v.map_or("NULL".to_string(), |v| format!("\"{v}\""));
    let differs: Vec<String> = [
        (u.input != input).then(|| format!("input_tokens {} (this call: {input})", u.input)),
        (u.output != output).then(|| format!("output_tokens {} (this call: {output})", u.output)),
        // A retry that names no model matches whatever default its row was recorded with.
        (model.is_some() && u.model.as_deref() != model)
            .then(|| format!("model {} (this call: {})", show(u.model.as_deref()), show(model))),
        (u.feature.as_deref() != feature)
            .then(|| format!("feature {} (this call: {})", show(u.feature.as_deref()), show(feature))),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !differs.is_empty() {
        return Err(CpError::KeyConflict {
            message: format!("idempotency key \"{k}\" was recorded with other values"),
            detail: format!("event {} recorded {}", u.event_id, differs.join(", ")),
        });
    }
    if let Some(rid) = reservation_id {
        let now = now_unix_us();
        if let Taken::Held(h) = sh.take_reservation(rid.as_bytes(), db, now, false, |k2, _| *k2 == key) {
            sh.release_taken(&h, db, now);
            pgrx::notice!(
                "reservation {rid} released: idempotency key \"{k}\" was already recorded (event {})",
                u.event_id
            );
        }
    }
    Ok(Recorded {
        event_id: u.event_id,
        cost_micros: u.cost_micros,
        settled: false,
    })
}

pub fn release(reservation_id: Option<Uuid>) -> CpResult<bool> {
    let sh = shmem::shared()?;
    let rid = required("reservation_id", reservation_id)?;
    let tenant = gucs::tenant()?;
    let db = database();
    let now = now_unix_us();
    let fp = tenant_fingerprint(db, &tenant);
    match sh.take_reservation(rid.as_bytes(), db, now, false, |_, f| f == fp) {
        Taken::Held(h) => {
            sh.release_taken(&h, db, now);
            Ok(true)
        }
        Taken::Busy => Err(CpError::state(
            format!("reservation {rid} is being settled by another transaction"),
            None,
            None,
        )),
        Taken::Expired | Taken::Unknown => Ok(false),
    }
}

/// Gives back a reservation whose request never ran. True if it was open; false if it was
/// unknown, already settled, released, or past its time (expired: charged, or about to be). Takes effect at once (not transactional).
#[pg_extern(volatile, parallel_unsafe)]
fn cp_release(reservation_id: Option<Uuid>) -> Result<bool, ErrorReport> {
    Ok(release(reservation_id)?)
}
