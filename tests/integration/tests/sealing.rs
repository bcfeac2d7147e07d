//! Sealing the ledger into (one-second) buckets under real traffic: sixteen connections record
//! (some in transactions that stay open past the seal delay), one inserts rows dated in the past
//! (some rolled back) and one seals in a loop. Then every sealed bucket holds exactly its rows,
//! and after a crash (immediate stop) the rebuilt totals, read from buckets and rows, equal the
//! ledger.

use control_plane_integration::*;
use postgres::Client;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The seal delay of this test (seconds): a row dated more than a third of it before its insert
/// takes the slow path; a transaction that stays open longer than it must hold the seal back.
const DELAY_S: i64 = 3;

/// Seals one-second buckets `seconds` after their end (server-start settings: restarts); resets
/// both and restarts again when dropped.
struct SealDelay;

impl SealDelay {
    fn set(seconds: i64) -> SealDelay {
        let mut c = connect();
        c.batch_execute(&format!("ALTER SYSTEM SET control_plane.ledger_seal_delay = {seconds}"))
            .unwrap();
        c.batch_execute("ALTER SYSTEM SET control_plane.ledger_bucket_seconds = 1")
            .unwrap();
        drop(c);
        pg_ctl(&["restart", "-m", "fast"]);
        SealDelay
    }
}

impl Drop for SealDelay {
    fn drop(&mut self) {
        let mut c = connect_retrying();
        let _ = c.batch_execute("ALTER SYSTEM RESET control_plane.ledger_seal_delay");
        let _ = c.batch_execute("ALTER SYSTEM RESET control_plane.ledger_bucket_seconds");
        drop(c);
        pg_ctl(&["restart", "-m", "fast"]);
    }
}

/// Sealed buckets of the run's subjects and organisation that differ from the sums of their rows
/// inside the seal (either way), and how many buckets there are.
fn bucket_differences(c: &mut Client, prefix: &str, org: &str) -> (i64, i64) {
    let r = c
        .query_one(
            "WITH st AS (SELECT sealed_from AS f, sealed_until AS u FROM control_plane.ledger_state),
             rows AS (
                 SELECT e.*, date_bin('1 second', e.created_at, '2000-01-01 00:00:00+00') AS b
                   FROM control_plane.usage_events e, st
                  WHERE (e.subject_id LIKE $1 || '%' OR e.org_id = $2) AND e.created_at >= st.f AND e.created_at < st.u
             ), raw AS (
                 SELECT 'subject' AS scope, subject_id AS who, b, sum(requests) AS r, sum(input_tokens) AS i,
                        sum(output_tokens) AS o, coalesce(sum(cost_micros), 0) AS c
                   FROM rows GROUP BY subject_id, b
                 UNION ALL
                 SELECT 'organization', org_id, b, sum(requests), sum(input_tokens), sum(output_tokens),
                        coalesce(sum(cost_micros), 0)
                   FROM rows WHERE org_id IS NOT NULL GROUP BY org_id, b
             ), bk AS (
                 SELECT scope, who, bucket_start, requests::numeric, input_tokens::numeric, output_tokens::numeric,
                        cost_micros
                   FROM control_plane.usage_buckets WHERE who LIKE $1 || '%' OR who = $2
             )
             SELECT (SELECT count(*) FROM ((TABLE raw EXCEPT ALL TABLE bk) UNION ALL (TABLE bk EXCEPT ALL TABLE raw)) d),
                    (SELECT count(*) FROM bk)",
            &[&prefix, &org],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

/// Today's (requests, input, output, cost) of a subject (or, with `org`, of an organisation)
/// in the ledger.
fn ledger_today(c: &mut Client, col: &str, who: &str) -> (i64, i64, i64, i64) {
    let r = c
        .query_one(
            &format!(
                "SELECT coalesce(sum(requests), 0)::bigint, coalesce(sum(input_tokens), 0)::bigint,
                        coalesce(sum(output_tokens), 0)::bigint, coalesce(sum(cost_micros), 0)::bigint
                   FROM control_plane.usage_events
                  WHERE {col} = $1 AND created_at >= date_trunc('day', now(), 'UTC')"
            ),
            &[&who],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

#[test]
fn buckets_stay_exact_under_concurrent_recording_late_rows_and_sealing_and_rebuild_after_a_crash() {
    let _delay = SealDelay::set(DELAY_S);
    let id = run_id();
    let prefix = format!("{id}_seal_");
    let org = format!("{id}_seal_org");
    let model = format!("{id}-seal-model");
    let subjects: Vec<String> = (0..8).map(|i| format!("{prefix}{i}")).collect();
    let mut c = connect_retrying();
    shared_price(&mut c, &model, 1_000_000, 2_000_000);
    let big = r#"{"requests_per_day": 1000000000, "input_tokens_per_day": 1000000000000, "output_tokens_per_day": 1000000000000}"#;
    for s in &subjects {
        enroll(&mut c, s, "unlimited", big);
    }
    join_org(&mut c, &org, Some(1_000_000_000), &subjects);
    // Nothing older than this run in the check's way: the seal is caught up before it starts.
    for _ in 0..40 {
        c.query_one("SELECT control_plane.cp_cleanup()", &[]).unwrap();
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for t in 0..16usize {
        let (stop, s, model) = (stop.clone(), subjects[t % 8].clone(), model.clone());
        threads.push(std::thread::spawn(move || {
            let mut c = connect();
            let mut n = 0i64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                if n % 25 == 0 {
                    // Recorded now, committed after the seal delay: the seal must wait for it.
                    let mut tx = c.transaction().unwrap();
                    tx.query_one(
                        "SELECT * FROM control_plane.cp_record_usage($1, $2, 3, $3)",
                        &[&s, &n, &model],
                    )
                    .unwrap();
                    tx.execute("SELECT pg_sleep($1)", &[&(DELAY_S as f64 + 1.0)]).unwrap();
                    tx.commit().unwrap();
                } else {
                    c.query_one(
                        "SELECT * FROM control_plane.cp_record_usage($1, $2, 3, $3)",
                        &[&s, &n, &model],
                    )
                    .unwrap();
                }
            }
            n
        }));
    }
    let late = {
        let (stop, subjects, org) = (stop.clone(), subjects.clone(), org.clone());
        std::thread::spawn(move || {
            let mut c = connect();
            let mut n = 0i64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                // Dated 20 s back: inside the seal once it moved, so on the slow path.
                let mut tx = c.transaction().unwrap();
                tx.execute(
                    "INSERT INTO control_plane.usage_events
                         (tenant_id, subject_id, org_id, input_tokens, output_tokens, cost_micros, created_at)
                     VALUES ('default', $1, $2, $3, 1, 7, now() - interval '20 seconds')",
                    &[&subjects[n as usize % 8], &org, &n],
                )
                .unwrap();
                if n % 3 == 0 {
                    tx.rollback().unwrap();
                } else {
                    tx.commit().unwrap();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            n
        })
    };
    let sealer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut c = connect();
            let (mut runs, mut sealed) = (0i64, 0i64);
            while !stop.load(Ordering::Relaxed) {
                let n: Option<i64> = c
                    .query_one(
                        "SELECT (control_plane.cp_cleanup()->'seal'->>'rows_sealed')::bigint",
                        &[],
                    )
                    .unwrap()
                    .get(0);
                runs += 1;
                sealed += n.unwrap_or(0);
                std::thread::sleep(Duration::from_millis(100));
            }
            (runs, sealed)
        })
    };
    std::thread::sleep(Duration::from_secs(12));
    stop.store(true, Ordering::Relaxed);
    let recorded: i64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let late_rows = late.join().unwrap();
    let (runs, sealed) = sealer.join().unwrap();
    assert!(
        recorded > 500 && late_rows > 50,
        "traffic: {recorded} records, {late_rows} late rows"
    );
    assert!(
        runs > 20 && sealed > 0,
        "sealing ran {runs} times and sealed {sealed} rows"
    );

    // Seal past everything recorded.
    std::thread::sleep(Duration::from_secs(DELAY_S as u64 + 1));
    c.query_one("SELECT control_plane.cp_cleanup()", &[]).unwrap();
    let (differ, buckets) = bucket_differences(&mut c, &prefix, &org);
    assert_eq!(
        differ, 0,
        "every sealed bucket holds exactly its rows ({buckets} buckets)"
    );
    assert!(
        buckets >= 9,
        "this run's subjects and organisation have sealed buckets: {buckets}"
    );
    let inside: i64 = c
        .query_one(
            "SELECT count(*) FROM control_plane.usage_events e, control_plane.ledger_state st
              WHERE e.org_id = $1 AND e.created_at >= st.sealed_from AND e.created_at < st.sealed_until",
            &[&org],
        )
        .unwrap()
        .get(0);
    assert!(inside > 0, "rows of this run are inside the seal");

    // A crash: every entry is rebuilt from buckets (inside the seal) and rows (after it).
    drop(c);
    pg_ctl(&["stop", "-m", "immediate"]);
    pg_ctl(&["start"]);
    let mut c = connect_retrying();
    for s in &subjects {
        let l = ledger_today(&mut c, "subject_id", s);
        let shown = (
            quota(&mut c, s, "requests_per_day").0,
            quota(&mut c, s, "input_tokens_per_day").0,
            quota(&mut c, s, "output_tokens_per_day").0,
            spent_today(&mut c, s),
        );
        assert_eq!(shown, l, "{s} after the crash");
    }
    let o = ledger_today(&mut c, "org_id", &org);
    assert_eq!(
        day_money_of(&mut c, &subjects[0], "organization").1,
        o.3,
        "the organisation after the crash"
    );
}
