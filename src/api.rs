//! The SQL surface: thin wrappers that validate arguments, call the pure decision code and move
//! shared memory.

use crate::admission::{self, DenyKind, Verdict};
use crate::calendar::{civil_from_days, Window, US_PER_DAY, US_PER_SEC};
use crate::catalog::{self, now_unix_us};
use crate::error::{CpError, CpResult};
use crate::gucs;
use crate::key::Key;
use crate::policy::{Limit, Policy};
use crate::policy_cache::{self, Cached};
use crate::quota::{self, Totals, QUOTA_LIMITS};
use crate::shmem::{self, Seen, Shared, Stat, Taken};
use crate::xact;
use pgrx::pg_sys;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::{JsonB, Uuid};
use serde_json::{json, Map, Value};
use std::cell::Cell;

/// Largest token count one call accepts (a trillion): beyond it the input is refused as absurd.
pub const MAX_TOKENS: i64 = 1_000_000_000_000;
/// Longest tenant, subject, model, feature or idempotency key, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

pub fn check_name(what: &str, s: &str) -> CpResult<()> {
    if s.is_empty() {
        return Err(CpError::invalid(format!("{what} must not be empty")));
    }
    if s.len() > MAX_NAME_BYTES {
        return Err(CpError::invalid_with(
            format!("{what} is too long"),
            format!("it has {} bytes; at most {MAX_NAME_BYTES} are allowed", s.len()),
            None,
        ));
    }
    Ok(())
}

fn required<T>(what: &'static str, v: Option<T>) -> CpResult<T> {
    v.ok_or(CpError::NullValue { what })
}

fn check_tokens(what: &str, v: i64) -> CpResult<()> {
    if !(0..=MAX_TOKENS).contains(&v) {
        return Err(CpError::invalid_with(
            format!("{what} must be between 0 and {MAX_TOKENS}"),
            format!("got {v}"),
            None,
        ));
    }
    Ok(())
}

fn optional_name(what: &str, v: Option<&str>) -> CpResult<()> {
    v.map_or(Ok(()), |s| check_name(what, s))
}

fn database() -> u32 {
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}

fn tenant_fingerprint(db: u32, tenant: &str) -> u64 {
    Key::of(db, tenant, "").hi
}

// ------------------------------------------------------------------------------- cp_admit

/// One admission decision, as returned to SQL.
pub struct Decision {
    pub allowed: bool,
    pub decision: &'static str,
    pub reason: Option<&'static str>,
    pub limit_name: Option<&'static str>,
    pub remaining: Option<i64>,
    pub retry_after_ms: Option<i64>,
    pub reservation_id: Option<Uuid>,
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
        }
    }
}

thread_local! {
    static RNG: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// xorshift128+ seeded once per backend from pg_strong_random.
fn random_u64() -> u64 {
    RNG.with(|c| {
        let (mut s0, mut s1) = c.get();
        if s0 == 0 && s1 == 0 {
            let mut buf = [0u8; 16];
            let ok = unsafe { pg_sys::pg_strong_random(buf.as_mut_ptr().cast(), 16) };
            s0 = u64::from_le_bytes(buf[..8].try_into().unwrap_or([1; 8]));
            s1 = u64::from_le_bytes(buf[8..].try_into().unwrap_or([2; 8]));
            if !ok || (s0 == 0 && s1 == 0) {
                s0 = (unsafe { pg_sys::MyProcPid } as u64) ^ now_unix_us() as u64 ^ 0x9e37_79b9_7f4a_7c15;
                s1 = s0.rotate_left(17) | 1;
            }
        }
        let mut x = s0;
        let y = s1;
        x ^= x << 23;
        let s1n = x ^ y ^ (x >> 17) ^ (y >> 26);
        c.set((y, s1n));
        s1n.wrapping_add(y)
    })
}

/// A version-4 UUID whose first four bytes are the reservation slot.
fn reservation_uuid(slot: usize) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&(slot as u32).to_be_bytes());
    b[4..12].copy_from_slice(&random_u64().to_le_bytes());
    b[12..].copy_from_slice(&random_u64().to_le_bytes()[..4]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    b
}

/// Heavyweight lock that orders a ledger rebuild of a subject against transactions recording
/// usage for it (see README, "How totals stay exact").
fn ledger_lock(db: u32, key: &Key, mode: u32, acquire: bool) {
    let tag = pg_sys::LOCKTAG {
        locktag_field1: db,
        locktag_field2: key.bucket(shmem::LOCK_BUCKETS),
        locktag_field3: 0x6370_5f71,
        locktag_field4: 0x4350,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    };
    unsafe {
        if acquire {
            pg_sys::LockAcquire(&tag, mode as i32, false, false);
        } else {
            pg_sys::LockRelease(&tag, mode as i32, false);
        }
    }
}

/// Loads a subject's totals from the ledger into shared memory unless they are there already.
/// Returns false when the index is full and nothing can be evicted.
fn rebuild(sh: &Shared, key: &Key, db: u32, tenant: &str, subject: &str) -> CpResult<bool> {
    let evict_busy = gucs::ON_FULL.get() == gucs::OnFull::EvictLru;
    ledger_lock(db, key, pg_sys::ExclusiveLock, true);
    let now = now_unix_us();
    let result = match sh.with_entry(key, db, now, |_| ()) {
        Seen::Found(()) => Ok(true),
        Seen::Missing => catalog::ledger_totals(tenant, subject, Window::Day.bounds(now), Window::Month.bounds(now))
            .map(|totals| {
                sh.bump(Stat::Rebuilds);
                sh.install(key, db, totals, now, evict_busy).is_ok()
            }),
    };
    ledger_lock(db, key, pg_sys::ExclusiveLock, false);
    result
}

/// The subject's current totals, rebuilt from the ledger if shared memory lacks them.
fn totals_of(sh: &Shared, key: &Key, db: u32, tenant: &str, subject: &str) -> CpResult<Option<Totals>> {
    for _ in 0..3 {
        if let Seen::Found(t) = sh.with_entry(key, db, now_unix_us(), |s| s.totals) {
            return Ok(Some(t));
        }
        if !rebuild(sh, key, db, tenant, subject)? {
            return Ok(None);
        }
    }
    Err(CpError::Internal("subject entry keeps disappearing".into()))
}

pub fn admit(
    subject: Option<&str>,
    tokens: Option<i64>,
    model: Option<&str>,
    feature: Option<&str>,
) -> CpResult<Decision> {
    let sh = shmem::shared()?;
    let subject = required("subject", subject)?;
    check_name("subject", subject)?;
    let tokens = required("tokens", tokens)?;
    check_tokens("tokens", tokens)?;
    optional_name("model", model)?;
    optional_name("feature", feature)?;
    let tenant = gucs::tenant()?;
    let db = database();
    let key = Key::of(db, &tenant, subject);
    let (pol, stamp) = policy_cache::for_admission(&key, db, &tenant, subject)?;

    if !pol.active {
        sh.bump(Stat::DeniedInactive);
        return Ok(Decision::deny("inactive", None, None, None));
    }
    if !pol.policy.profile_active {
        sh.bump(Stat::DeniedInactive);
        return Ok(Decision::deny("profile_inactive", None, None, None));
    }
    if let Some(g) = pol.policy.gate(model, feature) {
        sh.bump(Stat::DeniedModel);
        return Ok(Decision::deny(g.reason(), None, None, None));
    }

    let now = now_unix_us();
    let expires_at = now.saturating_add(gucs::RESERVATION_TIMEOUT.get() as i64 * US_PER_SEC);
    let Some(slot) = sh.claim_reservation(now) else {
        sh.bump(Stat::DeniedCapacity);
        return Ok(Decision::deny("capacity", Some("max_reservations"), Some(0), None));
    };
    let warn_pct = gucs::WARN_THRESHOLD.get() as i64;
    let mut expired_once = false;
    for _ in 0..4 {
        let seen = sh.admit(&key, db, now, tokens, expires_at, stamp, |state| {
            let v = admission::decide(&pol.policy, state, tokens, now, warn_pct);
            let tat = match v {
                Verdict::Allow { tat, .. } => Some(tat),
                Verdict::Deny { .. } => None,
            };
            (v, tat)
        });
        let a = match seen {
            Seen::Found(a) => a,
            Seen::Missing => match rebuild(sh, &key, db, &tenant, subject) {
                Ok(true) => continue,
                Ok(false) => {
                    sh.unclaim(slot);
                    sh.bump(Stat::DeniedCapacity);
                    return Ok(Decision::deny("capacity", Some("max_subjects"), Some(0), None));
                }
                Err(e) => {
                    sh.unclaim(slot);
                    return Err(e);
                }
            },
        };
        match a.verdict {
            Verdict::Allow { tightest, warn, .. } => {
                let id = reservation_uuid(slot);
                sh.publish(slot, id, db, key, tenant_fingerprint(db, &tenant), tokens, expires_at);
                sh.bump(Stat::Allowed);
                return Ok(Decision {
                    allowed: true,
                    decision: if warn { "warn" } else { "allow" },
                    reason: warn.then_some("quota_warning"),
                    limit_name: tightest.map(|(l, _)| l.name()),
                    remaining: tightest.map(|(_, r)| r),
                    retry_after_ms: None,
                    reservation_id: Some(Uuid::from_bytes(id)),
                });
            }
            Verdict::Deny {
                kind,
                limit,
                remaining,
                mut retry_after_ms,
            } => {
                let holds = a.totals.held_requests > 0 || a.totals.held_tokens > 0;
                if holds && !expired_once && a.next_expiry != 0 && a.next_expiry <= now && kind != DenyKind::Rate {
                    // Some of what blocks us may be reservations past their time: give them back.
                    expired_once = true;
                    sh.expire_reservations(now, Some((&key, db)));
                    continue;
                }
                sh.unclaim(slot);
                sh.bump(match kind {
                    DenyKind::Quota => Stat::DeniedQuota,
                    DenyKind::Rate => Stat::DeniedRate,
                    DenyKind::Concurrency => Stat::DeniedConcurrency,
                });
                if kind == DenyKind::Concurrency && a.next_expiry > now {
                    // At the latest, the oldest open request expires then.
                    retry_after_ms = Some(((a.next_expiry - now) + 999) / 1_000);
                }
                return Ok(Decision::deny(
                    kind.reason(),
                    Some(limit.name()),
                    Some(remaining),
                    retry_after_ms,
                ));
            }
        }
    }
    sh.unclaim(slot);
    Err(CpError::Internal("admission did not settle".into()))
}

/// `pg_finfo` record of `cp_admit_fast` (version-1 calling convention).
#[no_mangle]
pub extern "C" fn pg_finfo_cp_admit_fast() -> &'static pg_sys::Pg_finfo_record {
    static V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// `control_plane.cp_admit(subject, tokens, model, feature) RETURNS control_plane.admission`
/// (declared in `src/sql/schema.sql`). One admission decision for `subject` in the current
/// tenant: checks every limit that applies and, if admitted, holds the request and its token
/// estimate until `cp_record_usage` or `cp_release` (or expiry).
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
    let d = match admit(subject, tokens, model, feature) {
        Ok(d) => d,
        Err(e) => crate::error::raise(e),
    };
    unsafe { admission_datum(fcinfo, &d) }.unwrap_or_else(|e| crate::error::raise(e))
}

/// Forms the `control_plane.admission` row.
unsafe fn admission_datum(fcinfo: pg_sys::FunctionCallInfo, d: &Decision) -> CpResult<pg_sys::Datum> {
    unsafe {
        let flinfo = (*fcinfo).flinfo;
        let mut typid = pg_sys::get_fn_expr_rettype(flinfo);
        if typid == pg_sys::InvalidOid {
            typid = pg_sys::get_func_rettype((*flinfo).fn_oid);
        }
        let desc = pg_sys::lookup_rowtype_tupdesc(typid, -1);
        if (*desc).natts != 7 {
            pg_sys::DecrTupleDescRefCount(desc);
            return Err(CpError::Internal(
                "control_plane.admission does not have 7 attributes".into(),
            ));
        }
        let text = |s: Option<&str>| s.and_then(|s| s.into_datum());
        let cols: [Option<pg_sys::Datum>; 7] = [
            d.allowed.into_datum(),
            text(Some(d.decision)),
            text(d.reason),
            text(d.limit_name),
            d.remaining.and_then(|v| v.into_datum()),
            d.retry_after_ms.and_then(|v| v.into_datum()),
            d.reservation_id.and_then(|u| u.into_datum()),
        ];
        let mut values = [pg_sys::Datum::from(0usize); 7];
        let mut nulls = [true; 7];
        for (i, c) in cols.into_iter().enumerate() {
            if let Some(v) = c {
                values[i] = v;
                nulls[i] = false;
            }
        }
        let tuple = pg_sys::heap_form_tuple(desc, values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::DecrTupleDescRefCount(desc);
        Ok(pg_sys::HeapTupleHeaderGetDatum((*tuple).t_data))
    }
}

// ------------------------------------------------------------------------ cp_record_usage

pub struct Recorded {
    pub event_id: i64,
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
    metadata: Option<JsonB>,
) -> CpResult<Recorded> {
    let sh = shmem::shared()?;
    let subject = required("subject", subject)?;
    check_name("subject", subject)?;
    let input = required("input_tokens", input)?;
    check_tokens("input_tokens", input)?;
    let output = required("output_tokens", output)?;
    check_tokens("output_tokens", output)?;
    optional_name("model", model)?;
    optional_name("idempotency_key", idempotency_key)?;
    let tenant = gucs::tenant()?;
    let db = database();
    let key = Key::of(db, &tenant, subject);
    let pol = policy_cache::get(&key, &tenant, subject, true)?
        .ok_or_else(|| CpError::Internal("enrolled subject has no policy".into()))?;

    let mut held = None;
    if let Some(rid) = reservation_id {
        match sh.take_reservation(rid.as_bytes(), db) {
            Taken::Held(h) if h.key != key => {
                sh.untake(h.index);
                return Err(CpError::invalid_with(
                    format!("reservation {rid} belongs to another subject"),
                    format!("usage was recorded for subject \"{subject}\" in tenant \"{tenant}\""),
                    Some("Record the usage for the subject that was admitted."),
                ));
            }
            Taken::Held(h) => held = Some(h),
            Taken::Busy => {
                return Err(CpError::state(
                    format!("reservation {rid} is being settled by another transaction"),
                    None,
                    Some("Each reservation is settled once; wait for the other transaction to end."),
                ))
            }
            Taken::Unknown => {}
        }
    }
    let now = now_unix_us();
    // Queued before anything that can fail, so that an abort gives the reservation back.
    xact::push(xact::Pending {
        subid: xact::current_subid(),
        key,
        db,
        at_unix_us: now,
        input,
        output,
        reservation: held.map(|h| (h.index, h.tokens)),
    });
    ledger_lock(db, &key, pg_sys::ShareLock, true);
    let event_id = catalog::insert_usage(catalog::UsageRow {
        tenant: &tenant,
        subject,
        org_id: pol.org_id.as_deref(),
        model,
        input,
        output,
        reservation_id,
        idempotency_key,
        metadata,
        at_unix_us: now,
    })?;
    Ok(Recorded {
        event_id,
        settled: held.is_some(),
    })
}

/// Records what a request actually used, in the append-only ledger, and settles its reservation.
/// Counters move when the transaction commits.
#[pg_extern(volatile, parallel_unsafe)]
#[allow(clippy::too_many_arguments)]
fn cp_record_usage(
    subject: Option<&str>,
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    model: default!(Option<&str>, "NULL"),
    reservation_id: default!(Option<Uuid>, "NULL"),
    idempotency_key: default!(Option<&str>, "NULL"),
    metadata: default!(Option<JsonB>, "NULL"),
) -> Result<
    TableIterator<
        'static,
        (
            name!(event_id, i64),
            name!(cost_micros, Option<i64>),
            name!(reservation_settled, bool),
        ),
    >,
    ErrorReport,
> {
    let r = record(
        subject,
        input_tokens,
        output_tokens,
        model,
        reservation_id,
        idempotency_key,
        metadata,
    )?;
    Ok(TableIterator::once((r.event_id, None, r.settled)))
}

// ----------------------------------------------------------------------------- cp_release

pub fn release(reservation_id: Option<Uuid>) -> CpResult<bool> {
    let sh = shmem::shared()?;
    let rid = required("reservation_id", reservation_id)?;
    let tenant = gucs::tenant()?;
    let db = database();
    match sh.take_reservation(rid.as_bytes(), db) {
        Taken::Held(h) if h.tenant_fp != tenant_fingerprint(db, &tenant) => {
            sh.untake(h.index);
            Ok(false)
        }
        Taken::Held(h) => {
            sh.release_taken(&h, db, now_unix_us());
            Ok(true)
        }
        Taken::Busy => Err(CpError::state(
            format!("reservation {rid} is being settled by another transaction"),
            None,
            None,
        )),
        Taken::Unknown => Ok(false),
    }
}

/// Gives back a reservation whose request never ran. True if it was open; false if it was
/// unknown, already settled, released or expired. Takes effect at once (not transactional).
#[pg_extern(volatile, parallel_unsafe)]
fn cp_release(reservation_id: Option<Uuid>) -> Result<bool, ErrorReport> {
    Ok(release(reservation_id)?)
}

// ------------------------------------------------------------------------ cp_quota_status

fn iso(unix_us: i64) -> String {
    let d = unix_us.div_euclid(US_PER_DAY);
    let secs = unix_us.rem_euclid(US_PER_DAY) / US_PER_SEC;
    let (y, m, dd) = civil_from_days(d);
    format!(
        "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn held_in(l: Limit, t: &Totals) -> i64 {
    match l {
        Limit::RequestsPerDay | Limit::RequestsPerMonth => t.held_requests,
        Limit::InputTokensPerDay | Limit::InputTokensPerMonth => t.held_tokens,
        _ => 0,
    }
}

pub fn status_json(
    tenant: &str,
    subject: &str,
    enrolled: Option<&Cached>,
    policy: &Policy,
    profile: &str,
    t: &Totals,
    now: i64,
) -> Value {
    let mut quotas = Map::new();
    for l in QUOTA_LIMITS {
        let limit = policy.limit(l);
        let used = t.committed(l);
        let held = held_in(l, t);
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
    let window = |w: Window| {
        let (s, e) = w.bounds(now);
        json!({"start": iso(s), "end": iso(e), "resets_in_ms": w.ms_until_end(now)})
    };
    let lim = |l: Limit| json!(policy.limit(l));
    json!({
        "tenant": tenant,
        "subject": subject,
        "enrolled": enrolled.is_some(),
        "profile": profile,
        "active": enrolled.is_none_or(|c| c.active),
        "profile_active": policy.profile_active,
        "org_id": enrolled.and_then(|c| c.org_id.clone()),
        "period": {"day": window(Window::Day), "month": window(Window::Month)},
        "quotas": quotas,
        "held": {"requests": t.held_requests, "tokens": t.held_tokens},
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
        "models": {"allowed": policy.allowed_models, "blocked": policy.blocked_models},
        "grants": [],
    })
}

pub fn quota_status(subject: Option<&str>) -> CpResult<Value> {
    let sh = shmem::shared()?;
    let subject = required("subject", subject)?;
    check_name("subject", subject)?;
    let tenant = gucs::tenant()?;
    let db = database();
    let key = Key::of(db, &tenant, subject);
    let now = now_unix_us();
    match policy_cache::get(&key, &tenant, subject, false)? {
        Some(c) => {
            let t = totals_of(sh, &key, db, &tenant, subject)?.ok_or_else(|| {
                CpError::state(
                    "the control_plane shared-memory index is full".to_string(),
                    Some("no entry could be evicted: every entry holds open reservations".into()),
                    Some("Raise control_plane.max_subjects and restart the server."),
                )
            })?;
            Ok(status_json(&tenant, subject, Some(&c), &c.policy, &c.profile, &t, now))
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
            let v: Value = serde_json::from_str(&pj).map_err(|e| CpError::Internal(e.to_string()))?;
            let policy = Policy::from_profile(&v).map_err(|e| CpError::state(e.message, Some(e.detail), None))?;
            let t = catalog::ledger_totals(&tenant, subject, Window::Day.bounds(now), Window::Month.bounds(now))?;
            Ok(status_json(&tenant, subject, None, &policy, &name, &t, now))
        }
    }
}

/// The subject's profile, period, and for each quota its limit, used, held, remaining and
/// percentage; rate limits and budgets as configured. Does not enroll an unknown subject.
#[pg_extern(volatile, parallel_unsafe)]
fn cp_quota_status(subject: Option<&str>) -> Result<JsonB, ErrorReport> {
    Ok(JsonB(quota_status(subject)?))
}

// ------------------------------------------------------------------- cleanup, stats, hooks

/// Expires reservations past their time and gives back what they held. Safe to run
/// concurrently (each reservation is expired exactly once); meant for pg_cron.
#[pg_extern(volatile, parallel_unsafe)]
fn cp_cleanup() -> Result<JsonB, ErrorReport> {
    let sh = shmem::shared()?;
    let (expired, _) = sh.expire_reservations(now_unix_us(), None);
    Ok(JsonB(json!({"reservations_expired": expired})))
}

/// Shared-memory use and decision counters since server start (read by the `stats` view).
#[pg_extern(volatile, parallel_safe)]
fn cp_stats() -> Result<TableIterator<'static, (name!(name, String), name!(value, i64))>, ErrorReport> {
    let sh = shmem::shared()?;
    let (cap, res_cap, parts) = sh.capacity();
    let mut rows = vec![
        ("entries_in_use".to_string(), sh.entries_in_use()),
        ("entries_capacity".to_string(), cap),
        ("reservations_in_use".to_string(), sh.reservations_in_use()),
        ("reservations_capacity".to_string(), res_cap),
        ("lock_partitions".to_string(), parts),
        ("policy_generation".to_string(), sh.policy_generation() as i64),
    ];
    rows.extend(sh.stat_values().into_iter().map(|(n, v)| (n.to_string(), v)));
    Ok(TableIterator::new(rows))
}

/// Trigger helper: a profile or subject changed; every backend reloads policies after commit.
#[pg_extern(volatile, parallel_unsafe)]
fn _policy_changed() {
    if !policy_cache::enrolling() {
        xact::policy_changed();
    }
}

/// CHECK-constraint helper: raises 22023 naming the bad key of a subject's `overrides`.
#[pg_extern(immutable, parallel_safe)]
fn _check_overrides(overrides: Option<JsonB>) -> Result<bool, ErrorReport> {
    let Some(JsonB(v)) = overrides else { return Ok(true) };
    crate::policy::validate_overrides(&v).map_err(|e| {
        CpError::invalid_with(
            e.message,
            e.detail,
            Some("overrides maps limit names (as in control_plane.profiles) to non-negative integers or null."),
        )
    })?;
    Ok(true)
}
