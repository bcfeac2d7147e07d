//! The flusher: one background worker per database that makes expired reservations durable.
//!
//! A backend that opens a reservation makes sure its database has a flusher (started on demand
//! with `RegisterDynamicBackgroundWorker`, so the extension may live in several databases of one
//! server without any setting). Every 100 ms, or when woken, the flusher expires the reservations
//! of its database that are past their time; every second (sooner when its unwritten charges hold
//! an eighth of the reservation slots, at once when an admission waits for a slot) it writes every
//! expired charge to the ledger, in one statement per batch: one
//! `kind = 'expired'` row per subject, organisation and day (of its tenant's time zone), with each
//! reservation's charge in its metadata.
//! At a clean shutdown it expires every reservation still open and writes them too, so nothing
//! admitted is lost. It exits after a minute with nothing open in its database.
//!
//! Should it fail (the extension dropped, say), it exits; the charges stay in shared memory, still
//! counted, and the next reservation in that database starts a new flusher (at most once a
//! second). Its registry slot is freed when it exits (`shmem::flushers`). Where no flusher can
//! run (no free registry or `max_worker_processes` slot), `cp_cleanup` writes the charges of its
//! database in its own transaction (`write_in_transaction`).

use crate::catalog::{self, now_unix_us};
use crate::shmem::{self, Charge, Shared, Stat};
use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::fmt::Write;
use std::time::Duration;

/// How often the flusher looks for reservations past their time.
const TICK: Duration = Duration::from_millis(100);
/// How often it writes the charges of what expired (µs): more often, fewer charges per row.
/// It writes at once when an admission waits for a reservation slot, and at shutdown.
const FLUSH_EVERY_US: i64 = 1_000_000;
/// A flusher exits after this long with nothing open in its database (µs).
const IDLE_EXIT_US: i64 = 60_000_000;
/// Charges written per transaction.
const BATCH: usize = 50_000;
/// Reservations per ledger row: more would make the row's metadata too large to stay in the row
/// (TOAST), fewer means more rows.
const ROW_CHARGES: usize = 24;

/// Makes sure database `db` has a flusher: starts one when none runs (at most once a second).
/// Called by a backend that has just opened a reservation there.
pub fn ensure(sh: &Shared, db: u32, now: i64) {
    if sh.flusher_start_due(db, now) && !start(db) {
        sh.flusher_not_started(db);
    }
}

/// Registers a flusher for database `db`. False when no worker slot is free
/// (`max_worker_processes`).
fn start(db: u32) -> bool {
    BackgroundWorkerBuilder::new(&format!("control_plane flusher for database {db}"))
        .set_type("control_plane flusher")
        .set_library("control_plane")
        .set_function("cp_flusher_main")
        .set_argument(Some(pg_sys::Datum::from(db)))
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .load_dynamic()
        .is_ok()
}

#[pg_guard]
unsafe extern "C-unwind" fn on_exit(_code: i32, arg: pg_sys::Datum) {
    let db = arg.value() as u32;
    if let Ok(sh) = shmem::shared() {
        sh.abandon_flush(db);
        sh.flusher_stopped(db, unsafe { pg_sys::MyLatch });
    }
}

/// The worker's entry point (named by `start`).
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn cp_flusher_main(arg: pg_sys::Datum) {
    let db = arg.value() as u32;
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let Ok(sh) = shmem::shared() else { return };
    // Before connecting: a database dropped meanwhile ends the worker there, and its slot must
    // be freed all the same.
    unsafe { pg_sys::on_shmem_exit(Some(on_exit), pg_sys::Datum::from(db)) };
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(db)), None);
    // Not the database's default search path (its owner may set one): every statement is pinned
    // to this one anyway (`catalog::pinned`), and runs as the extension's owner.
    unsafe {
        pg_sys::SetConfigOption(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucSource::PGC_S_OVERRIDE,
        );
    }
    if !sh.flusher_running(db, unsafe { pg_sys::MyLatch }) {
        return;
    }
    let mut busy_at = now_unix_us();
    let (mut flushed_at, mut wanted) = (busy_at, sh.slots_wanted());
    // Expired charges keep their reservation slots until written: write early when they fill
    // an eighth of the table, before admissions have to wait for slots.
    let (mut unwritten, soon) = (0i64, (sh.capacity().1 / 8).max(1));
    loop {
        let alive = BackgroundWorker::wait_latch(Some(TICK));
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let now = now_unix_us();
        // At shutdown every open reservation is charged and written: nothing admitted is lost.
        let (expired, next) = sh.expire_reservations(now, Some(db), None, !alive);
        let w = sh.slots_wanted();
        let mut written = 0;
        unwritten += expired;
        if !alive || w != wanted || unwritten >= soon || now - flushed_at >= FLUSH_EVERY_US {
            written = flush(sh, db);
            (flushed_at, wanted, unwritten) = (now, w, 0);
        }
        if !alive {
            return;
        }
        // One scan a tick: reservations still open (`next`) or just expired or written keep the
        // flusher busy; only a flusher about to exit counts everything of its database.
        if expired > 0 || next != i64::MAX || written > 0 {
            busy_at = now;
        } else if now - busy_at > IDLE_EXIT_US {
            sh.flusher_stopped(db, unsafe { pg_sys::MyLatch });
            // A reservation opened meanwhile saw this flusher running and started none.
            let (open, expired) = sh.reservations_of(db);
            if open + expired == 0 || !sh.flusher_running(db, unsafe { pg_sys::MyLatch }) {
                return;
            }
            busy_at = now;
        }
    }
}

/// Writes every expired charge of `db` to the ledger, a batch per transaction. Returns how many.
fn flush(sh: &Shared, db: u32) -> usize {
    let mut written = 0;
    loop {
        let mut charges = sh.take_charges(db, BATCH);
        if charges.is_empty() {
            return written;
        }
        sort_for_rows(sh, &mut charges);
        // An error raised inside ends the worker; on_exit puts the charges back.
        let result = BackgroundWorker::transaction(std::panic::AssertUnwindSafe(|| write(sh, &charges)));
        sh.end_flush(db, &charges, result.is_ok(), now_unix_us());
        if let Err(e) = result {
            pgrx::warning!("control_plane: could not write expired reservations: {e:?}");
            return written;
        }
        sh.bump_by(Stat::ChargesWritten, charges.len() as u64);
        written += charges.len();
        if charges.len() < BATCH {
            return written;
        }
    }
}

/// Where no flusher runs for database `db` (none could start: every registry slot or every
/// `max_worker_processes` slot taken), writes its expired charges in the caller's transaction
/// (`cp_cleanup`'s): their slots are freed when it commits, and wait for the next writer if it
/// does not. Returns how many it wrote.
pub fn write_in_transaction(sh: &Shared, db: u32) -> crate::error::CpResult<usize> {
    if sh.flusher_alive(db) {
        return Ok(0);
    }
    let mut charges = sh.take_charges(db, BATCH);
    if charges.is_empty() {
        return Ok(0);
    }
    sort_for_rows(sh, &mut charges);
    let n = charges.len();
    // Queued before anything can fail: the transaction's end settles them either way.
    crate::xact::charges_taken(db, charges.clone());
    write(sh, &charges)?;
    Ok(n)
}

/// One row per (tenant, subject, organisation, day) and up to ROW_CHARGES charges (sorted that
/// way): their sum, at the latest one's time; one statement for the whole batch.
fn write(sh: &Shared, charges: &[Charge]) -> crate::error::CpResult<()> {
    let same_row = |a: &Charge, b: &Charge| a.key == b.key && a.org == b.org && local_day(sh, a) == local_day(sh, b);
    let mut rows = catalog::ChargeRows::default();
    for cs in charges.chunk_by(same_row).flat_map(|g| g.chunks(ROW_CHARGES)) {
        let (tenant, subject, org) = sh.charge_names(&cs[0]);
        rows.tenants.push(tenant);
        rows.subjects.push(subject);
        rows.orgs.push(org);
        rows.requests.push(cs.len() as i64);
        rows.tokens.push(cs.iter().map(|c| c.tokens).sum::<i64>());
        rows.costs
            .push(cs.iter().fold(0i64, |sum, c| sum.saturating_add(c.cost)));
        rows.at.push(cs.iter().map(|c| c.at).max().unwrap_or_default());
        rows.charges.push(charges_json(cs, |c| c.tokens));
        rows.charge_costs
            .push(cs.iter().any(|c| c.cost != 0).then(|| charges_json(cs, |c| c.cost)));
    }
    // As the extension's owner, not as the bootstrap superuser this worker connected as.
    catalog::as_owner(|| catalog::insert_charges(&rows))?;
    Ok(())
}

/// `{"<reservation id>": <amount>, ...}` for the charges of one row.
fn charges_json(cs: &[Charge], amount: impl Fn(&Charge) -> i64) -> String {
    let mut j = String::with_capacity(2 + cs.len() * 48);
    j.push('{');
    for (i, c) in cs.iter().enumerate() {
        if i > 0 {
            j.push(',');
        }
        j.push('"');
        push_uuid(&mut j, &c.id);
        let _ = write!(j, "\":{}", amount(c));
    }
    j.push('}');
    j
}

/// A subject's charges of one organisation and day (in its tenant's time zone) side by side, as
/// `write` makes one row per `ROW_CHARGES` of them.
fn sort_for_rows(sh: &Shared, charges: &mut [Charge]) {
    charges.sort_unstable_by_key(|c| (c.key.hi, c.key.lo, c.org.hi, c.org.lo, local_day(sh, c)));
}

/// The day of a charge in its tenant's time zone: a row, written at its latest charge's time,
/// must not move an earlier charge into the next day.
fn local_day(sh: &Shared, c: &Charge) -> i64 {
    sh.windows_at(c.zone, c.at).0
}

/// Appends the canonical text form of a UUID (what `uuid_out` prints).
fn push_uuid(s: &mut String, id: &[u8; 16]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in id.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
}

#[cfg(test)]
mod unit {
    #[test]
    fn uuids_print_as_postgres_prints_them() {
        let id = [
            0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xf0, 0x0f, 0x10, 0x20, 0x30, 0x40, 0x50, 0xff,
        ];
        let mut s = String::new();
        super::push_uuid(&mut s, &id);
        assert_eq!(s, "01234567-89ab-cdef-f00f-1020304050ff");
        assert_eq!(s, pgrx::Uuid::from_bytes(id).to_string());
    }
}
