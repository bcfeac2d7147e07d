//! `cp_cleanup` scheduled with pg_cron (Debian's postgresql-15-cron) in a real cluster
//! (`CP_CRON_DSN`): preloaded beside control_plane, `control_plane.ledger_retention = '9d'`, and
//! no worker slot left for flushers (`max_worker_processes = 1`, pg_cron's launcher takes it),
//! so only the scheduled cleanup can expire a reservation and write its charge. One run is
//! observed: it expires a reservation past its time, writes its charge to the ledger, and rolls
//! old ledger rows up.

use control_plane_integration::*;
use std::time::{Duration, Instant};

#[test]
fn cp_cleanup_under_pg_cron_expires_reservations_and_rolls_old_rows_up() {
    let mut c = connect_to("CP_CRON_DSN");
    let s = format!("{}_cron", run_id());
    enroll(&mut c, &s, "unlimited", r#"{"requests_per_day": 100}"#);
    c.batch_execute("SET control_plane.reservation_timeout = 1").unwrap();
    let id = admit(&mut c, &s, 40).reservation_id.expect("admitted");
    // Two rows of 20 days ago: one rollup after the run.
    c.execute(
        "INSERT INTO control_plane.usage_events (tenant_id, subject_id, input_tokens, output_tokens, created_at)
         VALUES ('default', $1, 100, 10, now() - interval '20 days'), ('default', $1, 200, 20, now() - interval '20 days')",
        &[&s],
    )
    .unwrap();
    let expired_before = stat(&mut c, "reservations_expired");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        stat(&mut c, "reservations_expired"),
        expired_before,
        "no flusher may run in this cluster: only the scheduled cleanup expires"
    );
    let flushers: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'control_plane flusher'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(flushers, 0);

    c.batch_execute(
        "CREATE TABLE IF NOT EXISTS cleanup_runs (at timestamptz NOT NULL DEFAULT now(), result jsonb NOT NULL);
         SELECT cron.schedule('control_plane cleanup', '* * * * *',
                              'INSERT INTO cleanup_runs (result) SELECT control_plane.cp_cleanup()')",
    )
    .unwrap();
    let start = Instant::now();
    let (expired, rollups, result): (i64, i64, String) = loop {
        let r = c
            .query_opt(
                "SELECT (result->>'reservations_expired')::bigint, (result->'ledger'->>'rollups_written')::bigint,
                        result::text
                   FROM cleanup_runs ORDER BY at LIMIT 1",
                &[],
            )
            .unwrap();
        if let Some(r) = r {
            break (r.get(0), r.get(1), r.get(2));
        }
        assert!(
            start.elapsed() < Duration::from_secs(75),
            "pg_cron ran no cleanup within 75 s: {:?}",
            c.query("SELECT status, return_message FROM cron.job_run_details", &[])
                .unwrap()
                .iter()
                .map(|r| (r.get::<_, String>(0), r.get::<_, Option<String>>(1)))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    c.batch_execute("SELECT cron.unschedule('control_plane cleanup')")
        .unwrap();

    assert!(expired >= 1, "{result}");
    assert!(rollups >= 1, "{result}");
    // No flusher can run here: the cleanup wrote the charge itself.
    let charges: i64 = c
        .query_one(
            "SELECT count(*) FROM control_plane.usage_events WHERE subject_id = $1 AND kind = 'expired'",
            &[&s],
        )
        .unwrap()
        .get(0);
    assert_eq!(charges, 1, "{result}");
    assert!(
        result.contains("\"charges_written\": 1") || result.contains("\"charges_written\":1"),
        "{result}"
    );
    assert_eq!(stat(&mut c, "reservations_expired"), expired_before + 1);
    assert!(!release(&mut c, &id), "the reservation expired: nothing to release");
    assert_eq!(
        quota(&mut c, &s, "requests_per_day"),
        (1, 0),
        "the expired request counts"
    );
    let rollup: (i64, i64, i64, String) = c
        .query_one(
            "SELECT requests, input_tokens, output_tokens, kind FROM control_plane.usage_events
              WHERE subject_id = $1 AND created_at < now() - interval '15 days'",
            &[&s],
        )
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .unwrap();
    assert_eq!(rollup, (2, 300, 30, "rollup".to_string()));
}
