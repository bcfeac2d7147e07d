//! `control_plane.usage_buckets` and `control_plane.ledger_state`: the seal of the ledger (see
//! `crate::sealing` and `control_plane_core::seal`). Every statement here runs as the extension's
//! owner (`as_owner`): application roles have no grant on these tables.

use super::{as_owner, query_latest, sql_text, write, Arg};
use crate::error::CpResult;
use crate::seal::{Plan, Seal};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CStr;

/// Sums rows of `control_plane.usage_events` selected by `$where` into their buckets ($4 µs wide), one per subject and one per organisation, added to what the buckets hold. The
/// statement's first column counts the rows, its second the buckets written.
macro_rules! buckets_sql {
    ($where:literal, $more:literal, $counts:literal) => {
        concat!(
            "WITH rows AS (
                 SELECT tenant_id, subject_id, org_id, requests, input_tokens, output_tokens, cost_micros,
                        pg_catalog.date_bin($4 OPERATOR(pg_catalog.*) interval '1 microsecond', created_at,
                                            '2000-01-01 00:00:00+00') AS b
                   FROM control_plane.usage_events
                  WHERE ",
            $where,
            "), sums AS (
                 SELECT tenant_id, 'subject' AS scope, subject_id AS who, b, pg_catalog.sum(requests) AS r,
                        pg_catalog.sum(input_tokens) AS i, pg_catalog.sum(output_tokens) AS o,
                        coalesce(pg_catalog.sum(cost_micros), 0) AS c
                   FROM rows GROUP BY tenant_id, subject_id, b
                 UNION ALL
                 SELECT tenant_id, 'organization', org_id, b, pg_catalog.sum(requests), pg_catalog.sum(input_tokens),
                        pg_catalog.sum(output_tokens), coalesce(pg_catalog.sum(cost_micros), 0)
                   FROM rows WHERE org_id IS NOT NULL GROUP BY tenant_id, org_id, b
             ), written AS (
                 INSERT INTO control_plane.usage_buckets AS k
                        (tenant_id, scope, who, bucket_start, requests, input_tokens, output_tokens, cost_micros)
                 SELECT tenant_id, scope, who, b, greatest(least(r, 9223372036854775807), -9223372036854775808),
                        greatest(least(i, 9223372036854775807), -9223372036854775808),
                        greatest(least(o, 9223372036854775807), -9223372036854775808), c
                   FROM sums
                 ON CONFLICT (tenant_id, scope, who, bucket_start) DO UPDATE
                    SET requests = greatest(least(k.requests::numeric OPERATOR(pg_catalog.+) excluded.requests,
                                                  9223372036854775807), -9223372036854775808)::bigint,
                        input_tokens = greatest(least(k.input_tokens::numeric OPERATOR(pg_catalog.+) excluded.input_tokens,
                                                      9223372036854775807), -9223372036854775808)::bigint,
                        output_tokens = greatest(least(k.output_tokens::numeric OPERATOR(pg_catalog.+) excluded.output_tokens,
                                                       9223372036854775807), -9223372036854775808)::bigint,
                        cost_micros = k.cost_micros OPERATOR(pg_catalog.+) excluded.cost_micros
                 RETURNING 1
             )",
            $more,
            " SELECT (SELECT pg_catalog.count(*) FROM rows), (SELECT pg_catalog.count(*) FROM written)",
            $counts,
            "\0"
        )
    };
}

/// The seal and the compaction mark, committed (latest snapshot): (seal, compacted_before).
pub fn ledger_state() -> CpResult<(Option<Seal>, Option<i64>)> {
    let rows = as_owner(|| {
        query_latest(
            c"SELECT sealed_from, sealed_until, compacted_before FROM control_plane.ledger_state",
            &[],
            |r| {
                let seal = match (r.unix_us(1), r.unix_us(2)) {
                    (Some(from), Some(until)) => Some(Seal { from, until }),
                    _ => None,
                };
                (seal, r.unix_us(3))
            },
        )
    })?;
    Ok(rows.into_iter().next().unwrap_or((None, None)))
}

/// What one sealing did.
#[derive(Default)]
pub struct Sealed {
    pub rows: i64,
    pub buckets_written: i64,
    pub buckets_dropped: i64,
}

/// Carries out a sealing: drops the buckets before `plan.from`, sums the rows of
/// `[plan.start, plan.until)` into buckets and stores the new seal, in one statement.
pub fn seal(plan: &Plan, width_us: i64) -> CpResult<Sealed> {
    const SQL: &CStr = sql_text(buckets_sql!(
        "created_at OPERATOR(pg_catalog.>=) $2 AND created_at OPERATOR(pg_catalog.<) $3",
        ", dropped AS (
             DELETE FROM control_plane.usage_buckets WHERE bucket_start OPERATOR(pg_catalog.<) $1 RETURNING 1
         ), state AS (
             INSERT INTO control_plane.ledger_state AS s (only_row, sealed_from, sealed_until) VALUES (true, $1, $3)
             ON CONFLICT (only_row) DO UPDATE SET sealed_from = excluded.sealed_from, sealed_until = excluded.sealed_until
             RETURNING 1
         )",
        ", (SELECT pg_catalog.count(*) FROM dropped), (SELECT pg_catalog.count(*) FROM state)"
    ));
    let rows = as_owner(|| {
        write(
            SQL,
            &[
                Arg::TimestampUnixUs(plan.from),
                Arg::TimestampUnixUs(plan.start),
                Arg::TimestampUnixUs(plan.until),
                Arg::Int(width_us),
            ],
            |r| Sealed {
                rows: r.i64(1),
                buckets_written: r.i64(2),
                buckets_dropped: r.i64(3),
            },
        )
    })?;
    Ok(rows.into_iter().next().unwrap_or_default())
}

/// Adds the rows of this transaction with ids `ids` that are dated inside `seal` (and were
/// inserted: a row skipped by ON CONFLICT or rolled back with its subtransaction is not there)
/// to their buckets. Returns the rows added.
pub fn bucket_rows(ids: &[i64], seal: Seal, width_us: i64) -> CpResult<i64> {
    const SQL: &CStr = sql_text(buckets_sql!(
        "id OPERATOR(pg_catalog.=) ANY ($1) AND created_at OPERATOR(pg_catalog.>=) $2
         AND created_at OPERATOR(pg_catalog.<) $3",
        "",
        ""
    ));
    let rows = as_owner(|| {
        write(
            SQL,
            &[
                Arg::Raw(pg_sys::INT8ARRAYOID, ids.to_vec().into_datum()),
                Arg::TimestampUnixUs(seal.from),
                Arg::TimestampUnixUs(seal.until),
                Arg::Int(width_us),
            ],
            |r| r.i64(1),
        )
    })?;
    Ok(rows.into_iter().next().unwrap_or(0))
}

/// Of the ledger ids `ids`, those of rows this transaction inserted and still holds: a row
/// skipped by `ON CONFLICT DO NOTHING`, or rolled back with its savepoint, may have named the id
/// of another transaction's row, which must not be counted again.
pub fn own_rows(ids: &[i64]) -> CpResult<Vec<i64>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = as_owner(|| {
        query_latest(
            c"SELECT e.id, e.xmin FROM control_plane.usage_events e WHERE e.id OPERATOR(pg_catalog.=) ANY ($1)",
            &[Arg::Raw(pg_sys::INT8ARRAYOID, ids.to_vec().into_datum())],
            |r| (r.i64(1), r.i64_opt(2).map(|x| pg_sys::TransactionId::from(x as u32))),
        )
    })?;
    Ok(rows
        .into_iter()
        .filter(|(_, xmin)| xmin.is_some_and(|x| unsafe { pg_sys::TransactionIdIsCurrentTransactionId(x) }))
        .map(|(id, _)| id)
        .collect())
}

/// Stores where compaction starts next time.
pub fn set_compacted_before(t: i64) -> CpResult<()> {
    as_owner(|| {
        write(
            c"WITH u AS (UPDATE control_plane.ledger_state SET compacted_before = $1
                           WHERE compacted_before IS NULL OR compacted_before OPERATOR(pg_catalog.<) $1 RETURNING 1)
              SELECT pg_catalog.count(*) FROM u",
            &[Arg::TimestampUnixUs(t)],
            |_| (),
        )
    })?;
    Ok(())
}
