//! `cp_cleanup`, `cp_stats`, and the helpers that triggers and constraints call.

use super::database;
use crate::catalog::now_unix_us;
use crate::error::CpError;
use crate::key::Key;
use crate::policy_cache;
use crate::shmem;
use crate::xact;
use pgrx::pg_sys;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::json;

/// Expires reservations past their time (charged as at their timeout; the flushers write them at
/// once) and, past `control_plane.ledger_retention`, rolls old ledger rows up into one row per
/// subject and day (`crate::compaction`), and seals the ledger into quarter-hour buckets that
/// rebuilds read (`crate::sealing`). Safe to run concurrently with itself and with traffic
/// (each reservation expires exactly once; one compaction and one sealing at a time; nothing
/// blocks admission);
/// meant for pg_cron. Returns what it did.
#[pg_extern(volatile, parallel_unsafe)]
fn cp_cleanup() -> Result<JsonB, ErrorReport> {
    let sh = shmem::shared()?;
    crate::upgrade::check_schema()?;
    let (expired, _) = sh.expire_reservations(now_unix_us(), None, None, false);
    sh.want_slots(); // the flushers write what expired now
    let ledger = crate::compaction::run()?;
    // It holds the seal lock until this transaction ends.
    let seal = crate::sealing::run()?;
    // Where no flusher can run, the charges are written here (after sealing: a charge dated
    // inside the seal just made is added to its bucket at commit, as any row dated in the past).
    let written = crate::flusher::write_in_transaction(sh, unsafe { pg_sys::MyDatabaseId }.to_u32())?;
    Ok(JsonB(json!({
        "reservations_expired": expired,
        "charges_written": written,
        "ledger": ledger,
        "seal": seal,
    })))
}

/// Run by `CREATE EXTENSION` (the end of the install script): shared memory forgets what an
/// earlier installation in this database left there (entries, reservations, cached policies), so
/// that the new one starts from its empty ledger. Nothing without the preload. Not executable by
/// PUBLIC.
#[pg_extern(volatile, parallel_unsafe)]
fn _forget_database_state() -> i64 {
    let Ok(sh) = shmem::shared() else { return 0 };
    let db = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let n = sh.remove_database_entries(db) + sh.forget_reservations(db);
    sh.bump_policy_generation();
    n as i64
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

/// Per-tenant counters since server start, of every database (read by the `tenant_stats` view):
/// the tenant's database and name (NULL for the tenants beyond the capacity of the per-tenant
/// counters, counted together), admission outcomes, committed usage, expiries.
#[pg_extern(volatile, parallel_safe)]
#[allow(clippy::type_complexity)]
fn cp_tenant_stats() -> Result<
    TableIterator<
        'static,
        (
            name!(database_oid, pg_sys::Oid),
            name!(tenant, Option<String>),
            name!(admitted, i64),
            name!(denied_quota, i64),
            name!(denied_rate, i64),
            name!(denied_concurrency, i64),
            name!(denied_model_or_feature, i64),
            name!(denied_inactive, i64),
            name!(denied_capacity, i64),
            name!(denied_budget, i64),
            name!(recorded, i64),
            name!(recorded_input_tokens, i64),
            name!(recorded_output_tokens, i64),
            name!(expired, i64),
            name!(expired_tokens, i64),
        ),
    >,
    ErrorReport,
> {
    let sh = shmem::shared()?;
    let rows: Vec<_> = sh
        .tenant_counts()
        .into_iter()
        .map(|t| {
            let c = t.counts;
            (
                pg_sys::Oid::from(t.db),
                t.tenant,
                c[0],
                c[1],
                c[2],
                c[3],
                c[4],
                c[5],
                c[6],
                c[7],
                c[8],
                c[9],
                c[10],
                c[11],
                c[12],
            )
        })
        .collect();
    Ok(TableIterator::new(rows))
}

/// Trigger helper: a change that may touch any subject's policy (profiles added, removed or
/// renamed; a table truncated). Every backend reads policies again after commit.
#[pg_extern(volatile, parallel_unsafe)]
fn _policy_changed() {
    xact::policy_changed(xact::Change::All);
}

/// Trigger helper: one subject's row changed; after commit, only that subject's policy is read
/// again.
#[pg_extern(volatile, parallel_unsafe)]
fn _subject_changed(tenant: Option<&str>, subject: Option<&str>) {
    if policy_cache::enrolling() {
        return; // cp_admit enrolling a new subject: nobody has read its row yet
    }
    if let (Some(t), Some(s)) = (tenant, subject) {
        xact::policy_changed(xact::Change::Subject(Key::of(database(), t, s)));
    }
}

/// Trigger helper: one profile's limits changed (same id, tenant and name); after commit, only
/// that profile, and the subjects that override it, are read again.
#[pg_extern(volatile, parallel_unsafe)]
fn _profile_changed(id: Option<i32>) {
    match id {
        Some(id) => xact::policy_changed(xact::Change::Profile(id)),
        None => xact::policy_changed(xact::Change::All),
    }
}

/// The text of a jsonb argument, parsed with serde_json's depth limit (128): too deep a value,
/// or a number no float holds, is refused with 22023 (pgrx's own jsonb argument would parse it
/// first, and fail with XX000). `what` names the column for messages.
///
/// # Safety
/// `fcinfo` is a version-1 call whose argument 0 is a jsonb (or NULL).
unsafe fn jsonb_arg(fcinfo: pg_sys::FunctionCallInfo, what: &str) -> Result<Option<serde_json::Value>, CpError> {
    let arg = unsafe { pgrx::fcinfo::pg_getarg_datum(fcinfo, 0) };
    let Some(d) = arg else { return Ok(None) };
    let text = unsafe {
        let (mut out_fn, mut varlena) = (pg_sys::InvalidOid, false);
        pg_sys::getTypeOutputInfo(pg_sys::JSONBOID, &mut out_fn, &mut varlena);
        let c = pg_sys::OidOutputFunctionCall(out_fn, d);
        std::ffi::CStr::from_ptr(c).to_string_lossy().into_owned()
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        CpError::invalid_with(
            format!("{what} holds a value control_plane cannot read"),
            e.to_string(),
            Some("Values may nest at most 128 levels, and numbers must fit a double precision."),
        )
    })
}

/// `pg_finfo` records of the raw CHECK helpers (version-1 calling convention).
#[no_mangle]
pub extern "C" fn pg_finfo__check_overrides_wrapper() -> &'static pg_sys::Pg_finfo_record {
    static V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}
#[no_mangle]
pub extern "C" fn pg_finfo__check_features() -> &'static pg_sys::Pg_finfo_record {
    static V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// A CHECK helper over jsonb argument 0 (named `what`): true, or the error (22023) of `validate`
/// with `hint`.
///
/// # Safety
/// `fcinfo` is a version-1 call whose argument 0 is a jsonb (or NULL).
unsafe fn check_jsonb(
    fcinfo: pg_sys::FunctionCallInfo,
    what: &str,
    validate: fn(&serde_json::Value) -> Result<(), crate::policy::PolicyError>,
    hint: &str,
) -> pg_sys::Datum {
    let checked = unsafe { jsonb_arg(fcinfo, what) }.and_then(|v| match v {
        None => Ok(()),
        Some(v) => validate(&v).map_err(|e| CpError::invalid_with(e.message, e.detail, Some(hint))),
    });
    if let Err(e) = checked {
        crate::error::raise(e);
    }
    pg_sys::Datum::from(true)
}

/// `control_plane._check_overrides(overrides jsonb) RETURNS boolean` (declared in
/// `src/sql/schema.sql`; the symbol is the one 0.1.0 named): the CHECK of `subjects.overrides`,
/// which raises 22023 naming the bad key.
///
/// # Safety
/// Called by PostgreSQL's function manager only.
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn _check_overrides_wrapper(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        check_jsonb(
            fcinfo,
            "overrides",
            crate::policy::validate_overrides,
            "overrides maps limit names (as in control_plane.profiles) to non-negative integers or null.",
        )
    }
}

/// `control_plane._check_features(features jsonb) RETURNS boolean` (declared in
/// `src/sql/schema.sql`): the CHECK of `profiles.features`, an object of booleans (22023).
///
/// # Safety
/// Called by PostgreSQL's function manager only.
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn _check_features(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        check_jsonb(
            fcinfo,
            "features",
            crate::policy::validate_features,
            "features maps feature names to true or false (false switches one off).",
        )
    }
}
