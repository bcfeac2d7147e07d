//! Every SPI query against the extension's own tables.
//!
//! Reads that feed shared memory or the policy cache run against the *latest* snapshot (not the
//! transaction's), so that a REPEATABLE READ caller never installs stale totals or a stale policy
//! for everybody else.

use crate::error::{CpError, CpResult};
use crate::quota::Totals;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CStr;

/// Microseconds between 1970-01-01 and 2000-01-01 (the PostgreSQL epoch).
pub const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

pub fn now_unix_us() -> i64 {
    unsafe { pg_sys::GetCurrentTimestamp() }.saturating_add(PG_EPOCH_OFFSET_US)
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
/// `Spi::connect`.
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

/// Runs a read-only query against a fresh snapshot and maps each row with `f`.
pub fn query_latest<R>(sql: &'static CStr, args: &[Arg], f: impl FnMut(&Row) -> R) -> CpResult<Vec<R>> {
    Spi::connect(|_client| unsafe { run_plan(sql, args, Mode::ReadLatest, f) })
}

/// Runs a prepared write (INSERT ... RETURNING, or a SELECT whose CTEs write) in the caller's
/// transaction, at its snapshot.
fn write<R>(sql: &'static CStr, args: &[Arg], f: impl FnMut(&Row) -> R) -> CpResult<Vec<R>> {
    Spi::connect(|_client| unsafe { run_plan(sql, args, Mode::Write, f) })
}

/// A subject's row joined with its profile (the tenant's own profile of that name, else the
/// shared preset).
pub struct SubjectRow {
    pub profile_name: String,
    pub active: bool,
    pub overrides: Option<String>,
    pub org_id: Option<String>,
    /// `profiles.id` of the profile it resolves to; None when that profile does not exist.
    pub profile_id: Option<i32>,
}

pub fn load_subject(tenant: &str, subject: &str) -> CpResult<Option<SubjectRow>> {
    let rows = query_latest(
        c"SELECT s.profile, s.active, nullif(s.overrides, '{}')::text, s.org_id, p.id::bigint
            FROM control_plane.subjects s
            LEFT JOIN LATERAL (
                 SELECT p.id FROM control_plane.profiles p
                  WHERE p.name OPERATOR(pg_catalog.=) s.profile
                    AND p.tenant_id IN (s.tenant_id, '*')
                  ORDER BY p.tenant_id OPERATOR(pg_catalog.=) '*'
                  LIMIT 1) p ON true
           WHERE s.tenant_id OPERATOR(pg_catalog.=) $1 AND s.subject_id OPERATOR(pg_catalog.=) $2",
        &[Arg::Text(Some(tenant)), Arg::Text(Some(subject))],
        |r| SubjectRow {
            profile_name: r.text(1).unwrap_or_default(),
            active: r.bool(2).unwrap_or(false),
            overrides: r.text(3),
            org_id: r.text(4),
            profile_id: r.i64_opt(5).map(|v| v as i32),
        },
    )?;
    Ok(rows.into_iter().next())
}

/// The time zone of a tenant's row in `control_plane.tenants` (None: no row, so UTC).
pub fn tenant_zone(tenant: &str) -> CpResult<Option<String>> {
    let rows = query_latest(
        c"SELECT control_plane._tenant_time_zone($1)",
        &[Arg::Text(Some(tenant))],
        |r| r.text(1),
    )?;
    Ok(rows.into_iter().next().flatten())
}

/// A model's rows in `control_plane.model_prices` for a tenant: its own and the shared ones.
pub fn model_prices(tenant: &str, model: &str) -> CpResult<Vec<crate::money::PriceRow>> {
    query_latest(
        c"SELECT shared, effective_from, input_micros_per_million, output_micros_per_million
            FROM control_plane._model_prices($1, $2)",
        &[Arg::Text(Some(tenant)), Arg::Text(Some(model))],
        |r| crate::money::PriceRow {
            shared: r.bool(1).unwrap_or(true),
            effective_from: r.unix_us(2).unwrap_or(i64::MAX),
            price: crate::money::Price {
                input_per_million: r.i64(3),
                output_per_million: r.i64(4),
            },
        },
    )
}

/// One profile row as JSON, by id.
pub fn load_profile(id: i32) -> CpResult<Option<String>> {
    let rows = query_latest(
        c"SELECT to_jsonb(p)::text FROM control_plane.profiles p WHERE p.id OPERATOR(pg_catalog.=) $1",
        &[Arg::Int(id as i64)],
        |r| r.text(1),
    )?;
    Ok(rows.into_iter().next().flatten())
}

/// The profile a tenant's new subjects get, as JSON: the tenant's own default, else the shared one.
pub fn default_profile(tenant: &str) -> CpResult<Option<(String, String)>> {
    let rows = query_latest(
        c"SELECT p.name, to_jsonb(p)::text FROM control_plane.profiles p
           WHERE p.is_default AND p.tenant_id IN ($1, '*')
           ORDER BY p.tenant_id OPERATOR(pg_catalog.=) '*' LIMIT 1",
        &[Arg::Text(Some(tenant))],
        |r| (r.text(1).unwrap_or_default(), r.text(2).unwrap_or_default()),
    )?;
    Ok(rows.into_iter().next())
}

/// Enrolls an unknown subject in the tenant's default profile. Returns false when the tenant has
/// no default profile.
pub fn enroll(tenant: &str, subject: &str) -> CpResult<bool> {
    let Some((profile, _)) = default_profile(tenant)? else {
        return Ok(false);
    };
    Spi::connect_mut(|c| {
        c.update(
            "INSERT INTO control_plane.subjects (tenant_id, subject_id, profile) VALUES ($1, $2, $3)
             ON CONFLICT (tenant_id, subject_id) DO NOTHING",
            None,
            &[tenant.into(), subject.into(), profile.as_str().into()],
        )
        .map(|_| ())
    })
    .map_err(|e| CpError::Internal(format!("enrolling subject: {e}")))?;
    Ok(true)
}

/// Committed usage of a subject in one day and its month, read from the ledger.
pub fn ledger_totals(tenant: &str, subject: &str, day: (i64, i64), month: (i64, i64)) -> CpResult<Totals> {
    let rows = query_latest(
        c"SELECT coalesce(sum(requests) FILTER (WHERE created_at >= $3 AND created_at < $4), 0)::bigint,
                 coalesce(sum(input_tokens) FILTER (WHERE created_at >= $3 AND created_at < $4), 0)::bigint,
                 coalesce(sum(output_tokens) FILTER (WHERE created_at >= $3 AND created_at < $4), 0)::bigint,
                 coalesce(sum(requests), 0)::bigint,
                 coalesce(sum(input_tokens), 0)::bigint,
                 coalesce(sum(output_tokens), 0)::bigint,
                 -- Spend saturates like the shared-memory totals do (a row may cost up to 2 * 10^18).
                 least(coalesce(sum(cost_micros) FILTER (WHERE created_at >= $3 AND created_at < $4), 0),
                       9223372036854775807)::bigint,
                 least(coalesce(sum(cost_micros), 0), 9223372036854775807)::bigint
            FROM control_plane.usage_events
           WHERE tenant_id OPERATOR(pg_catalog.=) $1 AND subject_id OPERATOR(pg_catalog.=) $2
             AND created_at >= $5 AND created_at < $6",
        &[
            Arg::Text(Some(tenant)),
            Arg::Text(Some(subject)),
            Arg::TimestampUnixUs(day.0),
            Arg::TimestampUnixUs(day.1),
            Arg::TimestampUnixUs(month.0),
            Arg::TimestampUnixUs(month.1),
        ],
        |r| Totals {
            day_requests: r.i64(1),
            day_input: r.i64(2),
            day_output: r.i64(3),
            month_requests: r.i64(4),
            month_input: r.i64(5),
            month_output: r.i64(6),
            day_cost: r.i64(7),
            month_cost: r.i64(8),
            ..Totals::default()
        },
    )?;
    rows.into_iter()
        .next()
        .ok_or_else(|| CpError::Internal("ledger aggregate returned no row".into()))
}

/// A new ledger row.
pub struct UsageRow<'a> {
    pub tenant: &'a str,
    pub subject: &'a str,
    pub org_id: Option<&'a str>,
    pub model: Option<&'a str>,
    pub feature: Option<&'a str>,
    pub input: i64,
    pub output: i64,
    pub reservation_id: Option<pgrx::Uuid>,
    pub idempotency_key: Option<&'a str>,
    /// The caller's jsonb datum, stored as it came.
    pub metadata: Option<pg_sys::Datum>,
    pub at_unix_us: i64,
    /// What the usage cost at the model's price in force at `at_unix_us`; None when unpriced.
    pub cost_micros: Option<i64>,
}

/// Appends a row to the ledger (one prepared statement per backend) and returns its id.
pub fn insert_usage(u: UsageRow) -> CpResult<i64> {
    let ids = write(
        c"INSERT INTO control_plane.usage_events
              (tenant_id, subject_id, org_id, model, feature, input_tokens, output_tokens,
               reservation_id, idempotency_key, metadata, created_at, cost_micros)
          VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
        &[
            Arg::Text(Some(u.tenant)),
            Arg::Text(Some(u.subject)),
            Arg::Text(u.org_id),
            Arg::Text(u.model),
            Arg::Text(u.feature),
            Arg::Int(u.input),
            Arg::Int(u.output),
            Arg::Uuid(u.reservation_id),
            Arg::Text(u.idempotency_key),
            Arg::Raw(pg_sys::JSONBOID, u.metadata),
            Arg::TimestampUnixUs(u.at_unix_us),
            Arg::OptInt(u.cost_micros),
        ],
        |r| r.i64(1),
    )?;
    ids.into_iter()
        .next()
        .ok_or_else(|| CpError::Internal("INSERT ... RETURNING gave no id".into()))
}

/// The charge of an expired reservation, if the flusher wrote it: (its time, tokens charged).
/// Looks at the subject's expired rows since the admission (a partial index holds only those).
pub fn expired_charge(tenant: &str, subject: &str, id: &pgrx::Uuid, admitted_at: i64) -> CpResult<Option<(i64, i64)>> {
    let key = id.to_string();
    let rows = query_latest(
        c"SELECT (extract(epoch FROM created_at) * 1000000)::bigint,
                 (metadata->'expired_reservations'->>$3)::bigint
            FROM control_plane.usage_events
           WHERE tenant_id OPERATOR(pg_catalog.=) $1 AND subject_id OPERATOR(pg_catalog.=) $2
             AND kind OPERATOR(pg_catalog.=) 'expired' AND created_at >= $4
             AND metadata->'expired_reservations' ? $3
           LIMIT 1",
        &[
            Arg::Text(Some(tenant)),
            Arg::Text(Some(subject)),
            Arg::Text(Some(&key)),
            Arg::TimestampUnixUs(admitted_at - 1_000_000),
        ],
        |r| (r.i64(1), r.i64(2)),
    )?;
    Ok(rows.into_iter().next())
}

/// Appends the reversal of an expired reservation's charge (at the charge's time, so that it
/// lands in the same windows). False when it was reversed already (by another record).
pub fn insert_reversal(tenant: &str, subject: &str, id: pgrx::Uuid, tokens: i64, at: i64) -> CpResult<bool> {
    let ids = write(
        c"INSERT INTO control_plane.usage_events
              (tenant_id, subject_id, kind, requests, input_tokens, output_tokens, reservation_id, created_at)
          VALUES ($1, $2, 'expired_reversed', -1, -$3, 0, $4, $5)
          ON CONFLICT (reservation_id) WHERE kind = 'expired_reversed' DO NOTHING
          RETURNING id",
        &[
            Arg::Text(Some(tenant)),
            Arg::Text(Some(subject)),
            Arg::Int(tokens),
            Arg::Uuid(Some(id)),
            Arg::TimestampUnixUs(at),
        ],
        |r| r.i64(1),
    )?;
    Ok(!ids.is_empty())
}

/// Appends expired charges, one row per element of the arrays: `requests` requests and `tokens`
/// tokens of a subject at `at` (µs), with each reservation's charge in
/// `metadata.expired_reservations` (JSON object texts). One statement for the whole batch.
pub fn insert_charges(
    tenants: &[String],
    subjects: &[String],
    requests: &[i64],
    tokens: &[i64],
    at: &[i64],
    charges: &[String],
) -> CpResult<usize> {
    let texts = |v: &[String]| v.iter().map(String::as_str).collect::<Vec<_>>().into_datum();
    let ints = |v: &[i64]| v.to_vec().into_datum();
    let times = at
        .iter()
        .map(|t| timestamptz(*t))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| CpError::Internal("charge time out of range".into()))?;
    let ids = write(
        c"INSERT INTO control_plane.usage_events
              (tenant_id, subject_id, kind, requests, input_tokens, output_tokens, metadata, created_at)
          SELECT t, s, 'expired', r, n, 0, pg_catalog.jsonb_build_object('expired_reservations', c::jsonb), a
            FROM ROWS FROM (pg_catalog.unnest($1::text[]), pg_catalog.unnest($2::text[]),
                            pg_catalog.unnest($3::bigint[]), pg_catalog.unnest($4::bigint[]),
                            pg_catalog.unnest($5::timestamptz[]), pg_catalog.unnest($6::text[]))
                 AS u(t, s, r, n, a, c)
          RETURNING id",
        &[
            Arg::Raw(pg_sys::TEXTARRAYOID, texts(tenants)),
            Arg::Raw(pg_sys::TEXTARRAYOID, texts(subjects)),
            Arg::Raw(pg_sys::INT8ARRAYOID, ints(requests)),
            Arg::Raw(pg_sys::INT8ARRAYOID, ints(tokens)),
            Arg::Raw(pg_sys::TIMESTAMPTZARRAYOID, times.into_datum()),
            Arg::Raw(pg_sys::TEXTARRAYOID, texts(charges)),
        ],
        |r| r.i64(1),
    )?;
    Ok(ids.len())
}

// ---------------------------------------------------------------------------------- compaction

/// Compacts the oldest rows before `cutoff` (µs) that are not rollups, `max_rows` of them at
/// most: each (tenant, subject, org, day of the tenant's time zone) they fall in becomes one
/// `rollup` row with the sums of all its rows (earlier rollups included), at the latest one's
/// time, so in the same day and month. Only days that end by `cutoff` are compacted. Returns
/// (rows considered, rows removed, rollups written); fewer rows considered than `max_rows` means
/// none is left.
pub fn compact_batch(cutoff: i64, max_rows: i64) -> CpResult<(i64, i64, i64)> {
    let rows = write(
        c"WITH todo AS (
              SELECT e.tenant_id, e.subject_id, e.org_id, z.zone,
                     control_plane._local_day_start(z.zone, e.created_at) AS day
                FROM control_plane.usage_events e
               CROSS JOIN LATERAL (
                     SELECT coalesce((SELECT t.time_zone FROM control_plane.tenants t
                                       WHERE t.tenant_id OPERATOR(pg_catalog.=) e.tenant_id), 'UTC') AS zone) z
               WHERE e.kind OPERATOR(pg_catalog.<>) 'rollup' AND e.created_at < $1
                 AND e.created_at < control_plane._local_day_start(z.zone, $1)
               ORDER BY e.created_at
               LIMIT $2
          ), groups AS (
              SELECT DISTINCT tenant_id, subject_id, org_id, day, control_plane._local_day_end(zone, day) AS day_end
                FROM todo
          ), doomed AS (
              DELETE FROM control_plane.usage_events e
               USING groups g
               WHERE e.tenant_id OPERATOR(pg_catalog.=) g.tenant_id
                 AND e.subject_id OPERATOR(pg_catalog.=) g.subject_id
                 AND e.org_id IS NOT DISTINCT FROM g.org_id
                 AND e.created_at >= g.day AND e.created_at < g.day_end
              RETURNING e.tenant_id, e.subject_id, e.org_id, g.day, e.kind, e.requests, e.input_tokens,
                        e.output_tokens, e.cost_micros, e.metadata, e.created_at
          ), rolled AS (
              INSERT INTO control_plane.usage_events
                  (tenant_id, subject_id, org_id, kind, requests, input_tokens, output_tokens, cost_micros,
                   metadata, created_at)
              SELECT tenant_id, subject_id, org_id, 'rollup', pg_catalog.sum(requests), pg_catalog.sum(input_tokens),
                     pg_catalog.sum(output_tokens), pg_catalog.sum(cost_micros),
                     pg_catalog.jsonb_build_object('rows', pg_catalog.sum(CASE WHEN kind OPERATOR(pg_catalog.=) 'rollup'
                         THEN coalesce((metadata OPERATOR(pg_catalog.->>) 'rows')::bigint, 1) ELSE 1 END)),
                     pg_catalog.max(created_at)
                FROM doomed
               GROUP BY tenant_id, subject_id, org_id, day
              RETURNING 1
          )
          SELECT (SELECT pg_catalog.count(*) FROM todo), (SELECT pg_catalog.count(*) FROM doomed),
                 (SELECT pg_catalog.count(*) FROM rolled)",
        &[Arg::TimestampUnixUs(cutoff), Arg::Int(max_rows)],
        |r| (r.i64(1), r.i64(2), r.i64(3)),
    )?;
    Ok(rows.into_iter().next().unwrap_or((0, 0, 0)))
}

/// Takes the transaction-level lock that one compaction holds at a time; false when another
/// transaction holds it.
pub fn try_compaction_lock() -> CpResult<bool> {
    let rows = write(
        c"SELECT pg_catalog.pg_try_advisory_xact_lock(1668243311, 2)",
        &[],
        |r| r.bool(1),
    )?;
    Ok(rows.into_iter().next().flatten().unwrap_or(false))
}
