//! `cp_cleanup`, `cp_stats`, and the helpers that triggers and constraints call.

use super::database;
use crate::catalog::now_unix_us;
use crate::error::CpError;
use crate::key::Key;
use crate::policy_cache;
use crate::shmem;
use crate::xact;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::json;

/// Expires reservations past their time and gives back what they held. Safe to run
/// concurrently (each reservation is expired exactly once); meant for pg_cron.
#[pg_extern(volatile, parallel_unsafe)]
fn cp_cleanup() -> Result<JsonB, ErrorReport> {
    let sh = shmem::shared()?;
    let (expired, _) = sh.expire_reservations(now_unix_us(), None, None, false);
    sh.want_slots(); // the flushers write what expired now

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

/// CHECK-constraint helper of `usage_events`: the kind is known and the amounts have the signs it
/// allows (one function call: cheaper per INSERT than the same rules as SQL expressions, which
/// PostgreSQL parses again for every statement).
#[pg_extern(immutable, parallel_safe)]
fn _ledger_row_valid(
    kind: Option<&str>,
    requests: Option<i64>,
    input: Option<i64>,
    output: Option<i64>,
    cost: Option<i64>,
    duration: Option<i64>,
) -> bool {
    match (kind, requests, input, output) {
        (Some(k), Some(r), Some(i), Some(o)) => crate::ledger::row_valid(k, r, i, o, cost, duration),
        _ => false,
    }
}
