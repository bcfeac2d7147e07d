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
    // Last: it holds the seal lock until this transaction ends.
    let seal = crate::sealing::run()?;
    Ok(JsonB(
        json!({"reservations_expired": expired, "ledger": ledger, "seal": seal}),
    ))
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
