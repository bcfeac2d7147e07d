//! Every SPI query against the extension's own tables: the plumbing here, the queries by table
//! family in `policy` (subjects, profiles, tenants, prices), `ledger` (usage_events) and `alerts`.
//!
//! Reads that feed shared memory or the policy cache run against the *latest* snapshot (not the
//! transaction's), so that a REPEATABLE READ caller never installs stale totals or a stale policy
//! for everybody else.

use crate::error::{CpError, CpResult};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CStr;

mod alerts;
mod guard;
mod ledger;
mod policy;
mod seal;

pub use alerts::*;
#[cfg(any(test, feature = "pg_test"))]
pub use guard::unqualified_names;
pub use guard::{as_owner, by_extension, pinned};
pub use ledger::*;
pub use policy::*;
pub use seal::*;

/// Microseconds between 1970-01-01 and 2000-01-01 (the PostgreSQL epoch).
pub const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

pub fn now_unix_us() -> i64 {
    unsafe { pg_sys::GetCurrentTimestamp() }.saturating_add(PG_EPOCH_OFFSET_US)
}

/// SQL text built with `concat!` (ending in a NUL) as the C string SPI takes.
const fn sql_text(s: &'static str) -> &'static CStr {
    match CStr::from_bytes_with_nul(s.as_bytes()) {
        Ok(c) => c,
        Err(_) => panic!("SQL text without its one final NUL"),
    }
}

/// An instant (µs since the Unix epoch) as a `timestamptz`; None outside its range.
pub fn timestamptz(unix_us: i64) -> Option<TimestampWithTimeZone> {
    TimestampWithTimeZone::try_from(unix_us.saturating_sub(PG_EPOCH_OFFSET_US)).ok()
}

/// A query argument. `None` is SQL NULL of the argument's type.
pub enum Arg<'a> {
    Text(Option<&'a str>),
    Int(i64),
    OptInt(Option<i64>),
    TimestampUnixUs(i64),
    Uuid(Option<pgrx::Uuid>),
    /// A datum passed through as it came (no parsing), with its type.
    Raw(pg_sys::Oid, Option<pg_sys::Datum>),
}

impl Arg<'_> {
    fn type_oid(&self) -> pg_sys::Oid {
        match self {
            Arg::Text(_) => pg_sys::TEXTOID,
            Arg::Int(_) | Arg::OptInt(_) => pg_sys::INT8OID,
            Arg::TimestampUnixUs(_) => pg_sys::TIMESTAMPTZOID,
            Arg::Uuid(_) => pg_sys::UUIDOID,
            Arg::Raw(t, _) => *t,
        }
    }

    fn datum(&self) -> Option<pg_sys::Datum> {
        match self {
            Arg::Text(s) => s.and_then(|s| s.into_datum()),
            Arg::Int(v) => Some(pg_sys::Datum::from(*v)),
            Arg::OptInt(v) => v.map(pg_sys::Datum::from),
            Arg::TimestampUnixUs(t) => Some(pg_sys::Datum::from(t.saturating_sub(PG_EPOCH_OFFSET_US))),
            Arg::Uuid(u) => u.and_then(|u| u.into_datum()),
            Arg::Raw(_, d) => *d,
        }
    }
}

/// One row of a query result, read while SPI is still connected.
pub struct Row {
    tuple: pg_sys::HeapTuple,
    desc: pg_sys::TupleDesc,
}

impl Row {
    fn datum(&self, col: i32) -> Option<pg_sys::Datum> {
        let mut isnull = false;
        let d = unsafe { pg_sys::SPI_getbinval(self.tuple, self.desc, col, &mut isnull) };
        (!isnull).then_some(d)
    }
    pub fn i64(&self, col: i32) -> i64 {
        self.i64_opt(col).unwrap_or(0)
    }
    pub fn i64_opt(&self, col: i32) -> Option<i64> {
        self.datum(col).map(|d| d.value() as i64)
    }
    pub fn bool(&self, col: i32) -> Option<bool> {
        self.datum(col).map(|d| d.value() != 0)
    }
    /// A `timestamptz` as µs since the Unix epoch (`-infinity` and `infinity` as `i64::MIN` and
    /// `i64::MAX`).
    pub fn unix_us(&self, col: i32) -> Option<i64> {
        self.datum(col).map(|d| match d.value() as i64 {
            i @ (i64::MIN | i64::MAX) => i,
            t => t.saturating_add(PG_EPOCH_OFFSET_US),
        })
    }
    pub fn text(&self, col: i32) -> Option<String> {
        self.datum(col).and_then(|d| unsafe { String::from_datum(d, false) })
    }
}

thread_local! {
    /// Prepared plans by query text (static strings), kept for the life of the backend
    /// (PostgreSQL re-plans them when the tables change).
    static PLANS: std::cell::RefCell<std::collections::HashMap<usize, pg_sys::SPIPlanPtr>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// How a prepared statement runs.
#[derive(Clone, Copy)]
enum Mode {
    /// A read at a fresh snapshot (after this statement's own earlier writes).
    ReadLatest,
    /// A write in the caller's transaction, at its snapshot.
    Write,
}

/// Runs a prepared statement and maps each returned row with `f`. Must be called inside
/// `Spi::connect`, with the search path `pinned`; a text is checked (`guard::check_qualified`)
/// before its first preparation in the backend.
unsafe fn run_plan<R>(sql: &'static CStr, args: &[Arg], mode: Mode, mut f: impl FnMut(&Row) -> R) -> CpResult<Vec<R>> {
    unsafe {
        let mut types: Vec<pg_sys::Oid> = args.iter().map(Arg::type_oid).collect();
        let mut values: Vec<pg_sys::Datum> = Vec::with_capacity(args.len());
        let mut nulls: Vec<std::ffi::c_char> = Vec::with_capacity(args.len());
        for a in args {
            let d = a.datum();
            values.push(d.unwrap_or(pg_sys::Datum::from(0usize)));
            nulls.push(if d.is_some() { b' ' } else { b'n' } as std::ffi::c_char);
        }
        let cache_key = sql.as_ptr() as usize;
        let plan = match PLANS.with_borrow(|p| p.get(&cache_key).copied()) {
            Some(plan) => plan,
            None => {
                guard::check_qualified(sql)?;
                let plan = pg_sys::SPI_prepare(sql.as_ptr(), args.len() as i32, types.as_mut_ptr());
                if plan.is_null() || pg_sys::SPI_keepplan(plan) != 0 {
                    return Err(CpError::Internal(format!("SPI_prepare failed for {sql:?}")));
                }
                PLANS.with_borrow_mut(|p| p.insert(cache_key, plan));
                plan
            }
        };
        let rc = match mode {
            Mode::ReadLatest => {
                // Make this statement's earlier writes visible, then read at the latest snapshot.
                pg_sys::CommandCounterIncrement();
                let snap = pg_sys::GetLatestSnapshot();
                pg_sys::SPI_execute_snapshot(
                    plan,
                    values.as_mut_ptr(),
                    nulls.as_ptr(),
                    snap,
                    std::ptr::null_mut(),
                    true,
                    false,
                    0,
                )
            }
            Mode::Write => pg_sys::SPI_execute_plan(plan, values.as_mut_ptr(), nulls.as_ptr(), false, 0),
        };
        let ok = match mode {
            Mode::ReadLatest => rc == pg_sys::SPI_OK_SELECT as i32,
            Mode::Write => rc == pg_sys::SPI_OK_INSERT_RETURNING as i32 || rc == pg_sys::SPI_OK_SELECT as i32,
        };
        if !ok {
            return Err(CpError::Internal(format!("SPI returned {rc} for {sql:?}")));
        }
        let tt = pg_sys::SPI_tuptable;
        let n = pg_sys::SPI_processed as usize;
        let mut out = Vec::with_capacity(n);
        if !tt.is_null() {
            for i in 0..n {
                let row = Row {
                    tuple: *(*tt).vals.add(i),
                    desc: (*tt).tupdesc,
                };
                out.push(f(&row));
            }
        }
        Ok(out)
    }
}

/// Runs a read-only query against a fresh snapshot and maps each row with `f` (prepared and run
/// with the search path `pinned`).
pub fn query_latest<R>(sql: &'static CStr, args: &[Arg], f: impl FnMut(&Row) -> R) -> CpResult<Vec<R>> {
    pinned(|| Spi::connect(|_client| unsafe { run_plan(sql, args, Mode::ReadLatest, f) }))
}

/// Runs a prepared write (INSERT ... RETURNING, or a SELECT whose CTEs write) in the caller's
/// transaction, at its snapshot.
fn write<R>(sql: &'static CStr, args: &[Arg], f: impl FnMut(&Row) -> R) -> CpResult<Vec<R>> {
    pinned(|| Spi::connect(|_client| unsafe { run_plan(sql, args, Mode::Write, f) }))
}
