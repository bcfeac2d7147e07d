//! Sealing the ledger into buckets (a quarter-hour by default), so that a rebuild of a subject's or an
//! organisation's totals reads a bounded number of rows whatever the size of its month (the
//! rules are in `control_plane_core::seal`; the SQL in `catalog::seal`):
//!
//! - `cp_cleanup` seals (`run`): under the seal lock (exclusive, or it skips), it reads the clock,
//!   then the oldest row time published by any open transaction, then sums the rows up to there
//!   into buckets and moves the seal, in one statement.
//! - Every ledger row goes through the row trigger `usage_events_row_valid` (`row_check`): after
//!   the row rule, a row dated about now publishes its time until its transaction ends (fast
//!   path, no lock); an older one takes the seal lock (shared) until its transaction ends, and
//!   its id is kept: just before the commit, the rows of those ids dated inside the seal are
//!   added to their buckets (`bucket_dated_rows`).
//! - Compaction's rollups skip both: its rows and rollups swap in one transaction, every day it
//!   compacts ends inside the seal or before it, and the buckets already hold those rows.

use crate::catalog::{self, now_unix_us};
use crate::error::{CpError, CpResult};
use crate::gucs;
use crate::seal::{self, Seal};
use crate::shmem;
use pgrx::pg_sys;
use pgrx::prelude::*;
use serde_json::{json, Value};

/// The seal lock of the database (`xact::advisory_xact_lock`), held until the transaction ends.
fn seal_lock(mode: u32, wait: bool) -> bool {
    crate::xact::advisory_xact_lock(crate::xact::SEAL_LOCK, mode, wait)
}

/// Takes the seal lock shared without waiting (compaction); false when a sealing holds it.
pub fn try_share_lock() -> bool {
    seal_lock(pg_sys::ShareLock, false)
}

/// Seals what can be sealed (at most `seal::MAX_STEP_US` of the ledger) and says what it did.
pub fn run() -> CpResult<Value> {
    if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
        // Its snapshot may predate rows that committed after their time was published.
        return Ok(json!({"skipped": "sealing needs READ COMMITTED"}));
    }
    if crate::xact::inserted_ledger_rows() {
        return Ok(json!({"skipped": "this transaction inserted ledger rows"}));
    }
    let sh = shmem::shared()?;
    if !seal_lock(pg_sys::ExclusiveLock, false) {
        return Ok(json!({"skipped": "another transaction holds the seal lock"}));
    }
    // The clock, then the published rows, then (below) the snapshot: a row that is not in the
    // snapshot either was published when read, or is dated after `now - delay / 3`.
    let now = now_unix_us();
    let oldest_open = sh.oldest_open_row(unsafe { pg_sys::MyDatabaseId }.to_u32());
    let (current, _) = catalog::ledger_state()?;
    let width = gucs::bucket_us();
    let plan = seal::plan(now, gucs::seal_delay_us(), width, current, oldest_open);
    let iso = crate::calendar::iso_utc;
    let caught_up = plan.until >= seal::bucket_floor(now - gucs::seal_delay_us(), width);
    let unchanged = current
        == Some(Seal {
            from: plan.from,
            until: plan.until,
        });
    let done = if unchanged {
        catalog::Sealed::default()
    } else {
        catalog::seal(&plan, width)?
    };
    Ok(json!({
        "from": iso(plan.from),
        "until": iso(plan.until),
        "rows_sealed": done.rows,
        "buckets_written": done.buckets_written,
        "buckets_dropped": done.buckets_dropped,
        "caught_up": caught_up,
    }))
}

/// Before a commit: adds this transaction's rows dated in the past (ids `dated`) that lie inside
/// the seal to their buckets. Its seal lock (shared) keeps the seal still meanwhile; the seal is
/// read at the latest snapshot (a REPEATABLE READ snapshot may predate the last sealing).
pub fn bucket_dated_rows(dated: &[i64]) -> CpResult<()> {
    // (No portal is active before a commit: SPI needs a snapshot of ours. An error leaves it to
    // the abort, which clears the stack.)
    unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot()) };
    let r = match catalog::ledger_state() {
        Ok((Some(s), _)) if s.from < s.until => {
            catalog::own_rows(dated).and_then(|own| catalog::bucket_rows(&own, s, gucs::bucket_us()).map(|_| ()))
        }
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    };
    unsafe { pg_sys::PopActiveSnapshot() };
    r
}

/// `pg_finfo` record of `_usage_events_row_check` (version-1 calling convention).
#[no_mangle]
pub extern "C" fn pg_finfo__usage_events_row_check() -> &'static pg_sys::Pg_finfo_record {
    static V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// The columns the row trigger reads, in the order of `ROW_COLUMNS`.
const COLUMN_NAMES: [&std::ffi::CStr; 11] = [
    c"kind",
    c"requests",
    c"input_tokens",
    c"output_tokens",
    c"cost_micros",
    c"duration_ms",
    c"created_at",
    c"id",
    c"tenant_id",
    c"subject_id",
    c"org_id",
];

thread_local! {
    /// Attribute numbers of the columns the rule reads, by relation (looked up once).
    static ROW_COLUMNS: std::cell::Cell<Option<(pg_sys::Oid, [i32; 11])>> = const { std::cell::Cell::new(None) };
}

/// BEFORE INSERT row trigger of `usage_events` (`usage_events_row_valid`): the kind is known and
/// the amounts have the signs it allows (`ledger::row_valid`), else 23514. A trigger rather than
/// a CHECK constraint because PostgreSQL parses a CHECK expression again for every execution of
/// an INSERT (stringToNode under ExecRelCheck), which cost more than the rule itself.
///
/// # Safety
/// Called by PostgreSQL's trigger manager only.
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn _usage_events_row_check(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    unsafe {
        if !pgrx::trigger_support::called_as_trigger(fcinfo) {
            crate::error::raise(CpError::state(
                "_usage_events_row_check is a trigger function",
                None,
                None,
            ));
        }
        let td = (*fcinfo).context as *mut pg_sys::TriggerData;
        let (tuple, rel) = ((*td).tg_trigtuple, (*td).tg_relation);
        let desc = (*rel).rd_att;
        let relid = (*rel).rd_id;
        let cols = match ROW_COLUMNS.get() {
            Some((id, cols)) if id == relid => cols,
            _ => {
                // Only the ledger itself (EXECUTE is not PUBLIC's, but a superuser could still
                // attach it elsewhere): the columns are read with the ledger's types.
                let ns = pg_sys::get_namespace_name((*(*rel).rd_rel).relnamespace);
                let name = std::ffi::CStr::from_ptr((*(*rel).rd_rel).relname.data.as_ptr());
                if ns.is_null() || std::ffi::CStr::from_ptr(ns) != c"control_plane" || name != c"usage_events" {
                    crate::error::raise(CpError::Privilege {
                        message: "_usage_events_row_check is the trigger of control_plane.usage_events only".into(),
                        hint: "Do not attach it to other tables.".into(),
                    });
                }
                let mut cols = [0i32; 11];
                for (c, n) in cols.iter_mut().zip(COLUMN_NAMES) {
                    *c = pg_sys::SPI_fnumber(desc, n.as_ptr());
                }
                ROW_COLUMNS.set(Some((relid, cols)));
                cols
            }
        };
        // A column missing from the table (altered by hand) reads as NULL: the row is refused.
        let get = |i: usize| {
            if cols[i] <= 0 {
                return None;
            }
            let mut isnull = false;
            let d = pg_sys::heap_getattr(tuple, cols[i], desc, &mut isnull);
            (!isnull).then_some(d)
        };
        let int = |i: usize| get(i).map(|d| d.value() as i64);
        let kind = get(0).and_then(|d| <&str>::from_datum(d, false));
        let valid = match (kind, int(1), int(2), int(3)) {
            (Some(k), Some(r), Some(i), Some(o)) => crate::ledger::row_valid(k, r, i, o, int(4), int(5)),
            _ => false,
        };
        if !valid {
            crate::error::raise(CpError::CheckViolation {
                message: "new row for relation \"usage_events\" violates usage_events_row_valid".into(),
                detail: format!(
                    "kind = {:?}, requests = {:?}, input_tokens = {:?}, output_tokens = {:?}, cost_micros = {:?}, duration_ms = {:?}",
                    kind, int(1), int(2), int(3), int(4), int(5)
                ),
            });
        }
        let by_extension = catalog::by_extension();
        if kind != Some("usage")
            && !by_extension
            && !pg_sys::has_privs_of_role(pg_sys::GetUserId(), (*(*rel).rd_rel).relowner)
        {
            crate::error::raise(CpError::Privilege {
                message: format!(
                    "only control_plane writes ledger rows of kind \"{}\"",
                    kind.unwrap_or_default()
                ),
                hint: "Usage is recorded with control_plane.cp_record_usage; expired charges and their reversals are the extension's.".into(),
            });
        }
        if !crate::compaction::compacting() {
            let at = get(6).map(|d| (d.value() as i64).saturating_add(catalog::PG_EPOCH_OFFSET_US));
            seal_path(at, int(7));
        }
        if !by_extension {
            let text = |i: usize| get(i).and_then(|d| <&str>::from_datum(d, false));
            direct_row(text(8), text(9), text(10));
        }
        pg_sys::Datum::from(tuple)
    }
}

/// A row inserted directly (not by the extension: an import job, an admin): the totals in shared
/// memory know nothing of it. Rebuilds of its subject's and organisation's entries wait for its
/// transaction (the ledger lock, shared), and when it ends, committed or not, those entries are
/// marked to read their totals again (`xact::direct_row`): a rebuild inside the transaction
/// counts the row, and what it installed is read again once the row is committed or gone.
fn direct_row(tenant: Option<&str>, subject: Option<&str>, org: Option<&str>) {
    let (Some(tenant), Some(subject)) = (tenant, subject) else {
        return;
    };
    let db = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let key = crate::key::Key::of(db, tenant, subject);
    let org = org.map(|o| crate::key::Key::org(db, tenant, o));
    for k in std::iter::once(&key).chain(org.as_ref()) {
        crate::api::ledger_lock(db, k, pg_sys::ShareLock, true);
    }
    crate::xact::direct_row(key, org, db);
}

/// The path of a new ledger row dated `at` with id `id` (see the module's text).
fn seal_path(at: Option<i64>, id: Option<i64>) {
    // The transaction's end clears what it publishes: registered before anything here can fail
    // (a wait for the seal lock below may be cancelled).
    crate::xact::ledger_row(true, None);
    // Published first, then the clock read: the order that `run` relies on.
    let db = unsafe { pg_sys::MyDatabaseId }.to_u32();
    let published = match (at, shmem::shared()) {
        (Some(t), Ok(sh)) => sh.publish_open_row(t, db),
        _ => false,
    };
    let fast = published && at.is_some_and(|t| seal::fast_path(t, now_unix_us(), gucs::seal_delay_us()));
    if !fast {
        seal_lock(pg_sys::ShareLock, true);
        crate::xact::ledger_row(false, id);
    }
}
