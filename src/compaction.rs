//! Ledger compaction, run by `cp_cleanup` past `control_plane.ledger_retention`: the rows of a
//! subject's day older than the retention become one `rollup` row with their sums (and their org),
//! so every day and month window, and so every total in shared memory and `cp_quota_status`,
//! stays exactly what it was. The rows to compact are found through a partial index on
//! `created_at` of the rows that are not rollups, oldest first, wherever they sit in the table. Rows and rollups swap in one statement, so a concurrent ledger
//! rebuild sees either the rows or their rollup. One compaction runs at a time (a transaction
//! advisory lock; a second `cp_cleanup` skips it); it never blocks admission or recording, which
//! only insert.
//!
//! The ledger refuses DELETE (`usage_events_append_only`); the trigger lets through the deletes
//! of a compaction, which only this module can announce (`_ledger_compacting`).

use crate::catalog::{self, now_unix_us};
use crate::error::CpResult;
use crate::gucs;
use crate::ledger;
use pgrx::prelude::*;
use serde_json::{json, Value};
use std::cell::Cell;

/// Rows (not rollups) one compaction statement starts from.
const BATCH_ROWS: i64 = 20_000;
/// Rows one `cp_cleanup` compacts at most: a backlog is worked off over successive runs.
const MAX_ROWS_PER_RUN: i64 = 200_000;

thread_local! {
    static COMPACTING: Cell<bool> = const { Cell::new(false) };
}

/// Trigger helper: true while this backend's `cp_cleanup` is compacting the ledger.
#[pg_extern(volatile, parallel_unsafe)]
fn _ledger_compacting() -> bool {
    COMPACTING.get()
}

/// True while this backend compacts the ledger: its rollups skip sealing.
pub fn compacting() -> bool {
    COMPACTING.get()
}

/// Marks this backend as compacting until dropped (also when an error unwinds through it).
struct Compacting;

impl Compacting {
    fn start() -> Compacting {
        COMPACTING.set(true);
        Compacting
    }
}

impl Drop for Compacting {
    fn drop(&mut self) {
        COMPACTING.set(false);
    }
}

/// Compacts what the retention allows (at most `MAX_ROWS_PER_RUN` rows) and says what it did.
pub fn run() -> CpResult<Value> {
    let retention = gucs::LEDGER_RETENTION.get() as i64;
    let Some(cutoff) = ledger::retention_cutoff(now_unix_us(), retention) else {
        return Ok(json!({"retention": "off"}));
    };
    if !crate::xact::advisory_xact_lock(crate::xact::COMPACTION_LOCK, pgrx::pg_sys::ExclusiveLock, false) {
        return Ok(json!({"skipped": "another cp_cleanup is compacting"}));
    }
    if !crate::sealing::try_share_lock() {
        return Ok(json!({"skipped": "a cp_cleanup is sealing the ledger"}));
    }
    // Only days that end inside the seal or before it: the buckets hold their rows already, and
    // a rollup (dated inside its day) is in no bucket. Rows before the mark were compacted by an
    // earlier run (rows inserted there since, dated in the past, stay as they are).
    let (seal, compacted_before) = catalog::ledger_state()?;
    let cutoff = seal.map_or(cutoff, |s| cutoff.min(s.until));
    let start = compacted_before.unwrap_or(i64::MIN);
    let _compacting = Compacting::start();
    let (mut rows, mut rollups, mut done) = (0i64, 0i64, false);
    while !done && rows < MAX_ROWS_PER_RUN {
        let (considered, removed, written) = catalog::compact_batch(start, cutoff, BATCH_ROWS)?;
        rows += removed;
        rollups += written;
        done = considered < BATCH_ROWS;
    }
    if done {
        // Every day of every time zone that ends by `cutoff` is compacted: it starts after
        // `cutoff - 2 days`.
        catalog::set_compacted_before(cutoff.saturating_sub(2 * crate::calendar::US_PER_DAY))?;
    }
    Ok(json!({
        "before": crate::calendar::iso_utc(cutoff),
        "rows_compacted": rows,
        "rollups_written": rollups,
        "done": done,
    }))
}
