//! The SQL surface: thin wrappers that validate arguments, call the pure decision code and move
//! shared memory.
//!
//! - `admit`: `cp_admit`;
//! - `alerts`: writing the money alerts an admission or a record owes;
//! - `record`: `cp_record_usage` and `cp_release`;
//! - `status`: `cp_quota_status`;
//! - `admin`: `cp_cleanup`, `cp_stats` and the helpers of triggers and constraints;
//! - `prices`: model prices, cached per backend;
//! - `zones`: the time zone of each tenant's calendar, and its SQL helpers;
//! - here: what they share (the database, the ledger lock, rebuilding an entry, forming a row).

mod admin;
mod admit;
mod alerts;
mod prices;
mod record;
mod status;
mod zones;

use crate::calendar::Window;
use crate::catalog::{self, now_unix_us, Whose};
use crate::error::{CpError, CpResult};
use crate::gucs;
use crate::key::Key;
use crate::quota::Totals;
use crate::shmem::{self, Seen, Shared, Stat};
use pgrx::pg_sys;

fn database() -> u32 {
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}

/// The caller's tenant, the database, and the subject's key in shared memory. Fails while the
/// extension's SQL objects are older than the library (`crate::upgrade`).
fn locate(subject: &str) -> CpResult<(String, u32, Key)> {
    crate::upgrade::check_schema()?;
    let tenant = gucs::tenant()?;
    let db = database();
    let key = Key::of(db, &tenant, subject);
    Ok((tenant, db, key))
}

fn tenant_fingerprint(db: u32, tenant: &str) -> u64 {
    Key::of(db, tenant, "").hi
}

thread_local! {
    /// The last tenant this backend served: (database, name, counted, fingerprint, counters' slot).
    static TENANT: std::cell::RefCell<(u32, String, bool, u64, usize)> =
        const { std::cell::RefCell::new((0, String::new(), false, 0, 0)) };
}

/// The tenant's fingerprint and the slot of its counters (`control_plane.tenant_stats`),
/// remembered while the backend keeps serving the same tenant. Only a tenant with a row in
/// `control_plane.tenants` (or the default one) claims a slot: the names callers make up count
/// together in the overflow slot and cannot use up the slots of the tenants an admin made.
fn tenant_of(sh: &Shared, db: u32, tenant: &str) -> CpResult<(zones::Tenant, u64, usize)> {
    let t = zones::tenant_of(sh, db, tenant)?;
    Ok(TENANT.with_borrow_mut(|c| {
        if c.0 != db || c.1 != tenant || c.2 != t.counted || c.3 == 0 {
            let fp = tenant_fingerprint(db, tenant);
            let slot = if t.counted {
                sh.tenant_slot(db, fp, tenant)
            } else {
                shmem::TENANT_OVERFLOW
            };
            *c = (db, tenant.to_string(), t.counted, fp, slot);
        }
        (t, c.3, c.4)
    }))
}

/// Heavyweight lock that orders a ledger rebuild of a subject against transactions recording
/// usage for it (see README, "How totals stay exact").
pub(crate) fn ledger_lock(db: u32, key: &Key, mode: u32, acquire: bool) {
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

/// Committed usage of a subject or an organisation in the day and month of `zone` that contain
/// `now`, from the ledger.
fn ledger_totals(sh: &Shared, tenant: &str, whose: Whose, zone: u16, now: i64) -> CpResult<Totals> {
    let (d, m) = (sh.span_at(zone, Window::Day, now), sh.span_at(zone, Window::Month, now));
    let own = catalog::own_rows(&crate::xact::dated_rows())?;
    catalog::ledger_totals(tenant, whose, (d.start, d.end), (m.start, m.end), &own)
}

/// What a rebuild installs: the ledger's totals without the rows this transaction recorded for
/// the entry and has not committed (its commit adds them to the entry; counting them here too
/// would count them twice, and a rollback would leave them counted).
fn rebuilt_totals(
    sh: &Shared,
    key: &Key,
    db: u32,
    tenant: &str,
    whose: Whose,
    zone: u16,
    now: i64,
) -> CpResult<Totals> {
    let totals = ledger_totals(sh, tenant, whose, zone, now)?;
    let own = crate::xact::uncommitted_rows(key, db);
    if own.is_empty() {
        return Ok(totals);
    }
    let mut s = crate::index::Slot::new(*key, db, zone, totals, now, sh);
    for (at, [requests, input, output, cost]) in own {
        s.add_row(at, [-requests, -input, -output, -cost], sh);
    }
    Ok(s.totals)
}

/// Loads the totals of a subject's entry (or of an organisation's: `key` is then `Key::org`) from
/// the ledger into shared memory unless they are there already, counted in the tenant's time zone
/// `zone`; an entry that counts in another zone (the tenant's zone changed) reads its committed
/// totals again for the new windows. Returns false when the index is full and nothing can be
/// evicted.
fn rebuild(sh: &Shared, key: &Key, db: u32, tenant: &str, whose: Whose, zone: u16) -> CpResult<bool> {
    // Present already (in its tenant's zone): nothing to read, and no lock that would wait for
    // the entry's recorders (an organisation has many).
    if let Seen::Found(()) = sh.with_entry_in(key, db, zone, now_unix_us(), |_| ()) {
        return Ok(true);
    }
    let evict_busy = gucs::ON_FULL.get() == gucs::OnFull::EvictLru;
    ledger_lock(db, key, pg_sys::ExclusiveLock, true);
    let now = now_unix_us();
    let result = match sh.rezone_begin(key, db, zone, now) {
        Seen::Found(false) | Seen::Moved => Ok(true),
        Seen::Found(true) => rebuilt_totals(sh, key, db, tenant, whose, zone, now).map(|totals| {
            sh.bump(Stat::Rebuilds);
            // A reservation that expired meanwhile leaves the entry as it was: the caller
            // finds it moved and comes back.
            sh.rezone_end(key, db, zone, totals, now);
            true
        }),
        Seen::Missing => rebuilt_totals(sh, key, db, tenant, whose, zone, now).map(|totals| {
            sh.bump(Stat::Rebuilds);
            sh.install(key, db, zone, totals, now, evict_busy).is_ok()
        }),
    };
    ledger_lock(db, key, pg_sys::ExclusiveLock, false);
    result
}

/// The current totals of a subject's (or an organisation's) entry in its tenant's time zone
/// `zone`, rebuilt from the ledger if shared memory lacks them; None when the index is full.
fn totals_of(sh: &Shared, key: &Key, db: u32, tenant: &str, whose: Whose, zone: u16) -> CpResult<Option<Totals>> {
    for _ in 0..3 {
        if let Seen::Found(t) = sh.with_entry_in(key, db, zone, now_unix_us(), |s| s.totals) {
            return Ok(Some(t));
        }
        if !rebuild(sh, key, db, tenant, whose, zone)? {
            return Ok(None);
        }
    }
    // Evicted again before it could be read, three times: the index is too small for the traffic.
    Err(full_index(whose))
}

/// The error of a call that cannot get its subject (or organisation) into a full index (55000).
fn full_index(whose: Whose) -> CpError {
    let (what, name) = match whose {
        Whose::Subject(s) => ("subject", s),
        Whose::Org(o) => ("organization", o),
    };
    CpError::state(
        format!("shared memory has no room for {what} \"{name}\""),
        Some("Every entry of its lock partition is in use and none can be evicted without loss.".into()),
        Some("Raise control_plane.max_subjects (server restart) or set control_plane.on_full = 'evict_lru'."),
    )
}

/// Forms a row of the function's declared composite result type from `cols` (None = NULL).
/// The raw calling convention with a named composite type is the cheapest way PostgreSQL has to
/// return a row: no per-call result descriptor from the catalog, no set-returning machinery.
unsafe fn composite_datum(fcinfo: pg_sys::FunctionCallInfo, cols: &[Option<pg_sys::Datum>]) -> CpResult<pg_sys::Datum> {
    unsafe {
        let flinfo = (*fcinfo).flinfo;
        let mut typid = pg_sys::get_fn_expr_rettype(flinfo);
        if typid == pg_sys::InvalidOid {
            typid = pg_sys::get_func_rettype((*flinfo).fn_oid);
        }
        let desc = pg_sys::lookup_rowtype_tupdesc(typid, -1);
        if (*desc).natts as usize != cols.len() {
            pg_sys::DecrTupleDescRefCount(desc);
            return Err(CpError::state(
                format!("result type {} does not have {} attributes", typid.to_u32(), cols.len()),
                Some("The extension's result types were altered.".into()),
                Some("Reinstall the extension (DROP EXTENSION control_plane; CREATE EXTENSION control_plane)."),
            ));
        }
        let mut values: Vec<pg_sys::Datum> = cols.iter().map(|c| c.unwrap_or(pg_sys::Datum::from(0usize))).collect();
        let mut nulls: Vec<bool> = cols.iter().map(Option::is_none).collect();
        let tuple = pg_sys::heap_form_tuple(desc, values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::DecrTupleDescRefCount(desc);
        Ok(pg_sys::HeapTupleHeaderGetDatum((*tuple).t_data))
    }
}
