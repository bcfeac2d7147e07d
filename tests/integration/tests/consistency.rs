//! Totals against the ledger in the corners: a rebuild racing a recorder, a rebuild inside the
//! recording transaction, REPEATABLE READ callers, admissions inside a transaction that rolls back.

use control_plane_integration::*;
use std::time::Duration;

#[test]
fn a_rebuild_waits_for_an_uncommitted_record_and_then_counts_it() {
    let s = format!("{}_race", run_id());
    let mut admin = connect();
    enroll(&mut admin, &s, "unlimited", r#"{"requests_per_day": 5}"#);
    // The recorder's transaction stays open: shared memory has no entry for the subject yet.
    let mut recorder = connect();
    recorder.batch_execute("BEGIN").unwrap();
    recorder
        .query_one("SELECT * FROM control_plane.cp_record_usage($1, 7, 3)", &[&s])
        .unwrap();
    // Another backend's first admission must rebuild the subject from the ledger: it waits for
    // the recorder (the ledger lock of its bucket) instead of missing its row.
    let subject = s.clone();
    let admitter = std::thread::spawn(move || {
        let mut c = connect();
        admit(&mut c, &subject, 0)
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !admitter.is_finished(),
        "the rebuild must wait for the uncommitted record"
    );
    recorder.batch_execute("COMMIT").unwrap();
    let a = admitter.join().unwrap();
    assert!(a.allowed);
    // One recorded, one held: the record was counted once, not lost and not twice.
    assert_eq!(quota(&mut admin, &s, "requests_per_day"), (1, 1));
    // (Later tests count the reservations left open.)
    assert!(release(&mut admin, &a.reservation_id.unwrap()));
}

#[test]
fn a_rebuild_inside_the_recording_transaction_counts_its_records_once_at_commit_and_not_after_a_rollback() {
    let id = run_id();
    let model = format!("{id}-own");
    let mut c = connect();
    shared_price(&mut c, &model, 1_000_000, 1_000_000);
    for (n, end) in [("commit", "COMMIT"), ("rollback", "ROLLBACK")] {
        let s = format!("{id}_own_{n}");
        enroll(&mut c, &s, "unlimited", r#"{"requests_per_day": 100}"#);
        // Shared memory has no entry for the subject: the status call and the admission inside
        // the transaction rebuild it from a ledger that shows this transaction's own rows.
        c.batch_execute("BEGIN").unwrap();
        for _ in 0..3 {
            c.query_one(
                "SELECT * FROM control_plane.cp_record_usage($1, 10, 5, $2)",
                &[&s, &model],
            )
            .unwrap();
        }
        assert_eq!(
            quota(&mut c, &s, "requests_per_day"),
            (0, 0),
            "not counted before commit"
        );
        assert_eq!(spent_today(&mut c, &s), 0);
        let a = admit(&mut c, &s, 0);
        assert!(a.allowed);
        c.batch_execute(end).unwrap();
        let recorded = if end == "COMMIT" { 3 } else { 0 };
        assert_eq!(
            quota(&mut c, &s, "requests_per_day"),
            (recorded, 1),
            "{n}: counted once"
        );
        assert_eq!(spent_today(&mut c, &s), recorded * 15, "{n}: spend counted once");
        assert!(release(&mut c, &a.reservation_id.unwrap()));
    }
}

#[test]
fn a_repeatable_read_caller_never_rebuilds_stale_totals() {
    let s = format!("{}_rr", run_id());
    let mut admin = connect();
    enroll(&mut admin, &s, "unlimited", r#"{"requests_per_day": 2}"#);
    // The caller's snapshot is taken before the usage below is committed.
    let mut caller = connect();
    caller.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ").unwrap();
    caller.query_one("SELECT 1", &[]).unwrap();
    for _ in 0..2 {
        admin
            .query_one("SELECT * FROM control_plane.cp_record_usage($1, 1, 1)", &[&s])
            .unwrap();
    }
    // The subject's first sight in shared memory happens in the old snapshot: the rebuild reads
    // the latest one, so the quota is already used up.
    let a = admit(&mut caller, &s, 0);
    assert_eq!(a.reason.as_deref(), Some("quota_exceeded"));
    caller.batch_execute("COMMIT").unwrap();
}

#[test]
fn an_admission_counts_even_if_the_callers_transaction_rolls_back() {
    let s = format!("{}_rollback", run_id());
    let mut c = connect();
    enroll(
        &mut c,
        &s,
        "unlimited",
        r#"{"requests_per_day": 3, "requests_per_minute": 2}"#,
    );
    c.batch_execute("BEGIN").unwrap();
    let (a, b) = (admit(&mut c, &s, 0), admit(&mut c, &s, 0));
    assert!(a.allowed && b.allowed);
    c.batch_execute("ROLLBACK").unwrap();
    // Both admissions still hold their requests, and the rate limit remembers them.
    assert_eq!(quota(&mut c, &s, "requests_per_day"), (0, 2));
    let d = admit(&mut c, &s, 0);
    assert_eq!(d.reason.as_deref(), Some("rate_limited"));
    assert_eq!(d.limit_name.as_deref(), Some("requests_per_minute"));
    for r in [a, b] {
        assert!(release(&mut c, &r.reservation_id.unwrap()));
    }
}
