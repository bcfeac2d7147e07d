//! Idempotent usage over real connections: the same key recorded from many connections at once
//! gives one ledger row, one event id for everybody, and totals that count it once.

use control_plane_integration::*;
use std::sync::{Arc, Barrier};
use std::time::Duration;

#[test]
fn the_same_key_recorded_from_many_connections_at_once_is_one_ledger_row() {
    let s = format!("{}_idem", run_id());
    let key = format!("{}-key", run_id());
    let mut admin = connect();
    enroll(&mut admin, &s, "unlimited", r#"{"requests_per_day": 1000}"#);
    let n = 16;
    let barrier = Arc::new(Barrier::new(n));
    let workers: Vec<_> = (0..n)
        .map(|i| {
            let (s, key, barrier) = (s.clone(), key.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut c = connect();
                let mut tx = c.transaction().unwrap();
                barrier.wait();
                let row = tx
                    .query_one(
                        "SELECT event_id, reservation_settled FROM control_plane.cp_record_usage($1, 100, 10, idempotency_key => $2)",
                        &[&s, &key],
                    )
                    .expect("cp_record_usage");
                // Hold the transaction open a moment: the others must wait for it, not record.
                if i % 2 == 0 {
                    std::thread::sleep(Duration::from_millis(20));
                }
                tx.commit().unwrap();
                row.get::<_, i64>(0)
            })
        })
        .collect();
    let ids: Vec<i64> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one event id for every call: {ids:?}"
    );
    let rows: i64 = admin
        .query_one(
            "SELECT count(*) FROM control_plane.usage_events WHERE idempotency_key = $1",
            &[&key],
        )
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
    assert_eq!(quota(&mut admin, &s, "requests_per_day"), (1, 0), "counted once");
}

#[test]
fn a_retry_after_the_first_call_rolled_back_records_it() {
    let s = format!("{}_idem_rb", run_id());
    let key = format!("{}-key-rb", run_id());
    let mut admin = connect();
    enroll(&mut admin, &s, "unlimited", "{}");
    let mut c = connect();
    let mut tx = c.transaction().unwrap();
    tx.execute(
        "SELECT control_plane.cp_record_usage($1, 5, 5, idempotency_key => $2)",
        &[&s, &key],
    )
    .unwrap();
    tx.rollback().unwrap();
    let id: i64 = c
        .query_one(
            "SELECT event_id FROM control_plane.cp_record_usage($1, 5, 5, idempotency_key => $2)",
            &[&s, &key],
        )
        .unwrap()
        .get(0);
    let stored: i64 = admin
        .query_one(
            "SELECT id FROM control_plane.usage_events WHERE idempotency_key = $1",
            &[&key],
        )
        .unwrap()
        .get(0);
    assert_eq!(id, stored);
}
