//! The usage ledger: the totals a rebuild reads, and every row the extension appends (recorded
//! usage, expired charges, their reversals, compaction's rollups).

use super::{as_owner, query_latest, sql_text, timestamptz, write, Arg};
use crate::error::{CpError, CpResult};
use crate::quota::Totals;
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CStr;

/// Whose usage a ledger sum is for.
#[derive(Clone, Copy, Debug)]
pub enum Whose<'a> {
    Subject(&'a str),
    /// Every row recorded (or charged) for the organisation, whichever subject it was for.
    Org(&'a str),
}

/// The sums of the totals of one subject or one organisation ($2, rows by `$col`, buckets by
/// `$scope`) in a tenant ($1), in a month ($5 to $6) and its day ($3 to $4). Inside the seal
/// (`[b0, b1)`, see `seal::split`; none unless $7) it reads the buckets, plus this transaction's
/// own rows there that are not in a bucket until it commits (ids $8); outside it, the rows. One
/// statement, so one snapshot for the seal, the buckets and the rows. Spend saturates like the
/// shared-memory totals do (a row may cost up to 2 * 10^18).
macro_rules! totals_sql {
    ($col:literal, $scope:literal) => {
        concat!(
            "WITH s AS (
                 SELECT greatest($5, least(f, $6)) AS b0,
                        greatest($5, least(f, $6), least(u, $6)) AS b1
                   FROM (SELECT CASE WHEN $7 THEN sealed_from END AS f, CASE WHEN $7 THEN sealed_until END AS u
                           FROM control_plane.ledger_state) x
             ), bounds AS (
                 SELECT coalesce((SELECT b0 FROM s), $6) AS b0, coalesce((SELECT b1 FROM s), $6) AS b1
             ), r AS (
                 SELECT requests, input_tokens, output_tokens, cost_micros::numeric AS cost, created_at AS t
                   FROM control_plane.usage_events
                  WHERE tenant_id OPERATOR(pg_catalog.=) $1 AND ",
            $col,
            " OPERATOR(pg_catalog.=) $2
                    AND created_at OPERATOR(pg_catalog.>=) $5 AND created_at OPERATOR(pg_catalog.<) (SELECT b0 FROM bounds)
                 UNION ALL
                 SELECT requests, input_tokens, output_tokens, cost_micros, created_at
                   FROM control_plane.usage_events
                  WHERE tenant_id OPERATOR(pg_catalog.=) $1 AND ",
            $col,
            " OPERATOR(pg_catalog.=) $2
                    AND created_at OPERATOR(pg_catalog.>=) (SELECT b1 FROM bounds) AND created_at OPERATOR(pg_catalog.<) $6
                 UNION ALL
                 SELECT requests, input_tokens, output_tokens, cost_micros, created_at
                   FROM control_plane.usage_events
                  WHERE id OPERATOR(pg_catalog.=) ANY ($8) AND tenant_id OPERATOR(pg_catalog.=) $1
                    AND ",
            $col,
            " OPERATOR(pg_catalog.=) $2
                    AND created_at OPERATOR(pg_catalog.>=) (SELECT b0 FROM bounds)
                    AND created_at OPERATOR(pg_catalog.<) (SELECT b1 FROM bounds)
                 UNION ALL
                 SELECT requests, input_tokens, output_tokens, cost_micros, bucket_start
                   FROM control_plane.usage_buckets
                  WHERE tenant_id OPERATOR(pg_catalog.=) $1 AND scope OPERATOR(pg_catalog.=) '",
            $scope,
            "'
                    AND who OPERATOR(pg_catalog.=) $2
                    AND bucket_start OPERATOR(pg_catalog.>=) (SELECT b0 FROM bounds)
                    AND bucket_start OPERATOR(pg_catalog.<) (SELECT b1 FROM bounds)
             )
             SELECT least(coalesce(pg_catalog.sum(requests) FILTER (WHERE d), 0), 9223372036854775807)::bigint,
                    least(coalesce(pg_catalog.sum(input_tokens) FILTER (WHERE d), 0), 9223372036854775807)::bigint,
                    least(coalesce(pg_catalog.sum(output_tokens) FILTER (WHERE d), 0), 9223372036854775807)::bigint,
                    least(coalesce(pg_catalog.sum(requests), 0), 9223372036854775807)::bigint,
                    least(coalesce(pg_catalog.sum(input_tokens), 0), 9223372036854775807)::bigint,
                    least(coalesce(pg_catalog.sum(output_tokens), 0), 9223372036854775807)::bigint,
                    least(coalesce(pg_catalog.sum(cost) FILTER (WHERE d), 0), 9223372036854775807)::bigint,
                    least(coalesce(pg_catalog.sum(cost), 0), 9223372036854775807)::bigint
               FROM (SELECT requests::numeric, input_tokens::numeric, output_tokens::numeric, cost,
                            t OPERATOR(pg_catalog.>=) $3 AND t OPERATOR(pg_catalog.<) $4 AS d FROM r) r\0"
        )
    };
}

const SUBJECT_TOTALS: &CStr = sql_text(totals_sql!("subject_id", "subject"));
const ORG_TOTALS: &CStr = sql_text(totals_sql!("org_id", "organization"));

/// Committed usage of a subject or an organisation in one day and its month, read from the ledger
/// (its buckets inside the seal, when every edge of the windows is on a quarter-hour). `own` are
/// the ids of rows this transaction inserted dated in the past (`crate::sealing`): they are in no
/// bucket before it commits. Runs as the extension's owner (application roles have no grant on
/// the buckets), once the caller is found to have the privilege the README asks for: `SELECT` on
/// the ledger.
pub fn ledger_totals(tenant: &str, whose: Whose, day: (i64, i64), month: (i64, i64), own: &[i64]) -> CpResult<Totals> {
    require_ledger_select()?;
    let (sql, name) = match whose {
        Whose::Subject(s) => (SUBJECT_TOTALS, s),
        Whose::Org(o) => (ORG_TOTALS, o),
    };
    let buckets = crate::seal::buckets_usable(month, day);
    let rows = as_owner(|| {
        query_latest(
            sql,
            &[
                Arg::Text(Some(tenant)),
                Arg::Text(Some(name)),
                Arg::TimestampUnixUs(day.0),
                Arg::TimestampUnixUs(day.1),
                Arg::TimestampUnixUs(month.0),
                Arg::TimestampUnixUs(month.1),
                Arg::Raw(pg_sys::BOOLOID, Some(pg_sys::Datum::from(buckets))),
                Arg::Raw(pg_sys::INT8ARRAYOID, own.to_vec().into_datum()),
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
        )
    })?;
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

/// Appends a row to the ledger (one prepared statement per backend) and returns its id. Runs as
/// the extension's owner: application roles have no INSERT on the ledger.
pub fn insert_usage(u: UsageRow) -> CpResult<i64> {
    let ids = as_owner(|| {
        write(
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
        )
    })?;
    ids.into_iter()
        .next()
        .ok_or_else(|| CpError::Internal("INSERT ... RETURNING gave no id".into()))
}

/// The usage row an idempotency key names: what a retry must repeat.
pub struct KeyedUsage {
    pub subject: String,
    pub event_id: i64,
    pub cost_micros: Option<i64>,
    pub input: i64,
    pub output: i64,
    pub model: Option<String>,
    pub feature: Option<String>,
}

/// The usage row recorded with an idempotency key in a tenant, committed or this transaction's.
pub fn usage_by_key(tenant: &str, key: &str) -> CpResult<Option<KeyedUsage>> {
    let rows = query_latest(
        c"SELECT subject_id, id, cost_micros, input_tokens, output_tokens, model, feature
            FROM control_plane.usage_events
           WHERE tenant_id OPERATOR(pg_catalog.=) $1 AND idempotency_key OPERATOR(pg_catalog.=) $2
             AND kind OPERATOR(pg_catalog.=) 'usage'",
        &[Arg::Text(Some(tenant)), Arg::Text(Some(key))],
        |r| KeyedUsage {
            subject: r.text(1).unwrap_or_default(),
            event_id: r.i64(2),
            cost_micros: r.i64_opt(3),
            input: r.i64(4),
            output: r.i64(5),
            model: r.text(6),
            feature: r.text(7),
        },
    )?;
    Ok(rows.into_iter().next())
}

/// The charge of an expired reservation, if the flusher wrote it: its time, tokens and micro-units
/// charged, and the organisation it was charged to.
/// Found by the reservation's id among the subject's expired rows, newest first (the partial
/// index `usage_events_expired` holds only those; the id carries no time to start from).
pub fn expired_charge(tenant: &str, subject: &str, id: &pgrx::Uuid) -> CpResult<Option<ExpiredCharge>> {
    let key = id.to_string();
    let rows = query_latest(
        c"SELECT created_at,
                 ((metadata OPERATOR(pg_catalog.->) 'expired_reservations') OPERATOR(pg_catalog.->>) $3)::bigint,
                 coalesce(((metadata OPERATOR(pg_catalog.->) 'expired_costs') OPERATOR(pg_catalog.->>) $3)::bigint, 0),
                 org_id
            FROM control_plane.usage_events
           WHERE tenant_id OPERATOR(pg_catalog.=) $1 AND subject_id OPERATOR(pg_catalog.=) $2
             AND kind OPERATOR(pg_catalog.=) 'expired'
             AND (metadata OPERATOR(pg_catalog.->) 'expired_reservations') OPERATOR(pg_catalog.?) $3
           ORDER BY created_at DESC
           LIMIT 1",
        &[Arg::Text(Some(tenant)), Arg::Text(Some(subject)), Arg::Text(Some(&key))],
        |r| ExpiredCharge {
            at: r.unix_us(1).unwrap_or_default(),
            tokens: r.i64(2),
            cost: r.i64(3),
            org_id: r.text(4),
        },
    )?;
    Ok(rows.into_iter().next())
}

/// An expired reservation's charge in the ledger.
pub struct ExpiredCharge {
    /// µs since the epoch.
    pub at: i64,
    pub tokens: i64,
    /// Micro-units.
    pub cost: i64,
    pub org_id: Option<String>,
}

/// Appends the reversal of an expired reservation's charge (at the charge's time and to its
/// organisation, so that it lands in the same windows of the same entries). False when it was
/// reversed already (by another record).
pub fn insert_reversal(tenant: &str, subject: &str, id: pgrx::Uuid, charge: &ExpiredCharge) -> CpResult<bool> {
    let ids = as_owner(|| {
        write(
            c"INSERT INTO control_plane.usage_events
              (tenant_id, subject_id, kind, requests, input_tokens, output_tokens, reservation_id, created_at,
               cost_micros, org_id)
          VALUES ($1, $2, 'expired_reversed', -1, OPERATOR(pg_catalog.-) $3, 0, $4, $5,
                  CASE WHEN $6 OPERATOR(pg_catalog.=) 0 THEN NULL ELSE OPERATOR(pg_catalog.-) $6 END, $7)
          ON CONFLICT (reservation_id) WHERE kind OPERATOR(pg_catalog.=) 'expired_reversed' DO NOTHING
          RETURNING id",
            &[
                Arg::Text(Some(tenant)),
                Arg::Text(Some(subject)),
                Arg::Int(charge.tokens),
                Arg::Uuid(Some(id)),
                Arg::TimestampUnixUs(charge.at),
                Arg::Int(charge.cost),
                Arg::Text(charge.org_id.as_deref()),
            ],
            |r| r.i64(1),
        )
    })?;
    Ok(!ids.is_empty())
}

/// Rows of expired charges, one per element of each vector.
#[derive(Default)]
pub struct ChargeRows {
    pub tenants: Vec<String>,
    pub subjects: Vec<String>,
    /// The organisation each reservation held its estimate on, if any.
    pub orgs: Vec<Option<String>>,
    pub requests: Vec<i64>,
    pub tokens: Vec<i64>,
    /// Micro-units (a row whose charges cost nothing gets a NULL cost).
    pub costs: Vec<i64>,
    /// µs since the epoch.
    pub at: Vec<i64>,
    /// Each reservation's tokens, as the text of a JSON object keyed by reservation id.
    pub charges: Vec<String>,
    /// Each reservation's cost, likewise; None when none of the row's charges cost anything.
    pub charge_costs: Vec<Option<String>>,
}

/// Appends expired charges: each row's requests, tokens and cost of a subject at its time, with
/// each reservation's charge in `metadata.expired_reservations` (tokens) and
/// `metadata.expired_costs` (micro-units, when any). One statement for the whole batch.
pub fn insert_charges(rows: &ChargeRows) -> CpResult<usize> {
    let texts = |v: &[String]| v.iter().map(String::as_str).collect::<Vec<_>>().into_datum();
    let ints = |v: &[i64]| v.to_vec().into_datum();
    let opt_texts = |v: &[Option<String>]| v.iter().map(Option::as_deref).collect::<Vec<_>>().into_datum();
    let times = rows
        .at
        .iter()
        .map(|t| timestamptz(*t))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| CpError::Internal("charge time out of range".into()))?;
    let ids = write(
        c"INSERT INTO control_plane.usage_events
              (tenant_id, subject_id, kind, requests, input_tokens, output_tokens, cost_micros, metadata, created_at,
               org_id)
          SELECT t, s, 'expired', r, n, 0, CASE WHEN m OPERATOR(pg_catalog.=) 0 THEN NULL ELSE m END,
                 CASE WHEN k IS NULL THEN pg_catalog.jsonb_build_object('expired_reservations', c::pg_catalog.jsonb)
                      ELSE pg_catalog.jsonb_build_object('expired_reservations', c::pg_catalog.jsonb,
                                                         'expired_costs', k::pg_catalog.jsonb)
                 END, a, o
            FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]), pg_catalog.unnest($2::pg_catalog.text[]),
                            pg_catalog.unnest($3::bigint[]), pg_catalog.unnest($4::bigint[]),
                            pg_catalog.unnest($5::pg_catalog.timestamptz[]), pg_catalog.unnest($6::pg_catalog.text[]),
                            pg_catalog.unnest($7::bigint[]), pg_catalog.unnest($8::pg_catalog.text[]),
                            pg_catalog.unnest($9::pg_catalog.text[]))
                 AS u(t, s, r, n, a, c, m, k, o)
          RETURNING id",
        &[
            Arg::Raw(pg_sys::TEXTARRAYOID, texts(&rows.tenants)),
            Arg::Raw(pg_sys::TEXTARRAYOID, texts(&rows.subjects)),
            Arg::Raw(pg_sys::INT8ARRAYOID, ints(&rows.requests)),
            Arg::Raw(pg_sys::INT8ARRAYOID, ints(&rows.tokens)),
            Arg::Raw(pg_sys::TIMESTAMPTZARRAYOID, times.into_datum()),
            Arg::Raw(pg_sys::TEXTARRAYOID, texts(&rows.charges)),
            Arg::Raw(pg_sys::INT8ARRAYOID, ints(&rows.costs)),
            Arg::Raw(pg_sys::TEXTARRAYOID, opt_texts(&rows.charge_costs)),
            Arg::Raw(pg_sys::TEXTARRAYOID, opt_texts(&rows.orgs)),
        ],
        |r| r.i64(1),
    )?;
    Ok(ids.len())
}

/// 42501 unless the current user may `SELECT` from `control_plane.usage_events`.
fn require_ledger_select() -> CpResult<()> {
    let ok = unsafe {
        let nsp = pg_sys::get_namespace_oid(c"control_plane".as_ptr(), true);
        let rel = pg_sys::get_relname_relid(c"usage_events".as_ptr(), nsp);
        rel != pg_sys::InvalidOid
            && pg_sys::pg_class_aclcheck(rel, pg_sys::GetUserId(), pg_sys::ACL_SELECT as pg_sys::AclMode)
                == pg_sys::AclResult::ACLCHECK_OK
    };
    if ok {
        return Ok(());
    }
    Err(CpError::Privilege {
        message: "permission denied for table usage_events".into(),
        hint: "Reading a subject's totals from the ledger needs SELECT on control_plane.usage_events (see Privileges in the control_plane README).".into(),
    })
}

// ---------------------------------------------------------------------------------- compaction

/// Compacts the oldest rows from `start` to before `cutoff` (µs) that are not rollups, `max_rows`
/// of them at most: each (tenant, subject, org, day of the tenant's time zone) they fall in becomes
/// one `rollup` row per model and feature with the sums of its rows (earlier rollups included), at
/// the latest one's time, so in the same day and month: a per-model report stays right. Only days that end by `cutoff` are compacted. Returns
/// (rows considered, rows removed, rollups written); fewer rows considered than `max_rows` means
/// none is left. Runs as the extension's owner: whoever may run `cp_cleanup` needs no grant on
/// the ledger.
pub fn compact_batch(start: i64, cutoff: i64, max_rows: i64) -> CpResult<(i64, i64, i64)> {
    let rows = as_owner(|| {
        write(
            c"WITH todo AS (
              SELECT e.tenant_id, e.subject_id, e.org_id, z.zone,
                     control_plane._local_day_start(z.zone, e.created_at) AS day
                FROM control_plane.usage_events e
               CROSS JOIN LATERAL (
                     SELECT coalesce((SELECT t.time_zone FROM control_plane.tenants t
                                       WHERE t.tenant_id OPERATOR(pg_catalog.=) e.tenant_id), 'UTC') AS zone) z
               WHERE e.kind OPERATOR(pg_catalog.<>) 'rollup' AND e.created_at OPERATOR(pg_catalog.>=) $3
                 AND e.created_at OPERATOR(pg_catalog.<) $1
                 AND e.created_at OPERATOR(pg_catalog.<) control_plane._local_day_start(z.zone, $1)
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
                 AND (e.org_id OPERATOR(pg_catalog.=) g.org_id OR (e.org_id IS NULL AND g.org_id IS NULL))
                 AND e.created_at OPERATOR(pg_catalog.>=) g.day AND e.created_at OPERATOR(pg_catalog.<) g.day_end
              RETURNING e.tenant_id, e.subject_id, e.org_id, e.model, e.feature, g.day, e.kind, e.requests,
                        e.input_tokens, e.output_tokens, e.cost_micros, e.metadata, e.created_at
          ), rolled AS (
              INSERT INTO control_plane.usage_events
                  (tenant_id, subject_id, org_id, model, feature, kind, requests, input_tokens, output_tokens,
                   cost_micros, metadata, created_at)
              SELECT tenant_id, subject_id, org_id, model, feature, 'rollup', pg_catalog.sum(requests),
                     pg_catalog.sum(input_tokens),
                     pg_catalog.sum(output_tokens), pg_catalog.sum(cost_micros),
                     pg_catalog.jsonb_build_object('rows', pg_catalog.sum(CASE WHEN kind OPERATOR(pg_catalog.=) 'rollup'
                         THEN coalesce((metadata OPERATOR(pg_catalog.->>) 'rows')::bigint, 1) ELSE 1 END)),
                     pg_catalog.max(created_at)
                FROM doomed
               GROUP BY tenant_id, subject_id, org_id, model, feature, day
              RETURNING 1
          )
          SELECT (SELECT pg_catalog.count(*) FROM todo), (SELECT pg_catalog.count(*) FROM doomed),
                 (SELECT pg_catalog.count(*) FROM rolled)",
            &[
                Arg::TimestampUnixUs(cutoff),
                Arg::Int(max_rows),
                Arg::TimestampUnixUs(start),
            ],
            |r| (r.i64(1), r.i64(2), r.i64(3)),
        )
    })?;
    Ok(rows.into_iter().next().unwrap_or((0, 0, 0)))
}
