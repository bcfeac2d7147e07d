//! Exactness under many real concurrent connections, commit-only counting, and admin changes
//! seen by other backends at once.

use control_plane_integration::*;
use std::sync::{Arc, Barrier};
use std::thread;

/// `threads` connections, released together, each calling `cp_admit(subject, tokens)` `per`
/// times. Returns the admissions (allowed ones keep their reservation).
fn hammer(subject: &str, tokens: i64, threads: usize, per: usize) -> Vec<Admission> {
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let b = barrier.clone();
            let s = subject.to_string();
            thread::spawn(move || {
                let mut c = connect();
                b.wait();
                (0..per).map(|_| admit(&mut c, &s, tokens)).collect::<Vec<_>>()
            })
        })
        .collect();
    handles.into_iter().flat_map(|h| h.join().expect("worker")).collect()
}

#[test]
fn exactly_n_requests_are_admitted_on_a_daily_quota_of_n() {
    let s = format!("{}_rpd", run_id());
    let mut c = connect();
    enroll(&mut c, &s, "unlimited", r#"{"requests_per_day": 50}"#);
    let all = hammer(&s, 0, 48, 8);
    let allowed = all.iter().filter(|a| a.allowed).count();
    assert_eq!(allowed, 50, "384 concurrent attempts on a quota of 50");
    for d in all.iter().filter(|a| !a.allowed) {
        assert_eq!(d.reason.as_deref(), Some("quota_exceeded"));
        assert_eq!(d.limit_name.as_deref(), Some("requests_per_day"));
    }
    assert_eq!(quota(&mut c, &s, "requests_per_day"), (0, 50));
}

#[test]
fn exactly_the_tokens_that_fit_are_admitted() {
    let s = format!("{}_tok", run_id());
    let mut c = connect();
    enroll(&mut c, &s, "unlimited", r#"{"input_tokens_per_month": 1000}"#);
    let all = hammer(&s, 30, 40, 5);
    assert_eq!(all.iter().filter(|a| a.allowed).count(), 33, "floor(1000 / 30)");
    assert_eq!(quota(&mut c, &s, "input_tokens_per_month"), (0, 990));
}

#[test]
fn admit_and_record_from_many_connections_matches_the_ledger() {
    let s = format!("{}_rec", run_id());
    let mut c = connect();
    enroll(&mut c, &s, "unlimited", r#"{"requests_per_day": 40, "output_tokens_per_day": 100000}"#);
    let threads = 32;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let b = barrier.clone();
            let s = s.clone();
            thread::spawn(move || {
                let mut c = connect();
                b.wait();
                let mut admitted = 0;
                for _ in 0..5 {
                    let a = admit(&mut c, &s, 10);
                    if a.allowed {
                        admitted += 1;
                        let id = a.reservation_id.expect("reservation id");
                        let r = c
                            .query_one(
                                "SELECT reservation_settled FROM control_plane.cp_record_usage($1, 7, 3, reservation_id => $2::text::uuid)",
                                &[&s, &id],
                            )
                            .expect("record");
                        assert!(r.get::<_, bool>(0));
                    }
                }
                admitted
            })
        })
        .collect();
    let admitted: i64 = handles.into_iter().map(|h| h.join().expect("worker")).sum();
    assert_eq!(admitted, 40);
    let ledger: i64 = c
        .query_one("SELECT count(*) FROM control_plane.usage_events WHERE subject_id = $1", &[&s])
        .unwrap()
        .get(0);
    assert_eq!(ledger, 40);
    assert_eq!(quota(&mut c, &s, "requests_per_day"), (40, 0));
    assert_eq!(quota(&mut c, &s, "input_tokens_per_day"), (280, 0));
    assert_eq!(quota(&mut c, &s, "output_tokens_per_day"), (120, 0));
    assert!(!admit(&mut c, &s, 0).allowed);
}

#[test]
fn only_committed_usage_counts_and_a_rolled_back_record_keeps_its_reservation() {
    let s = format!("{}_tx", run_id());
    let mut c = connect();
    enroll(&mut c, &s, "unlimited", r#"{"requests_per_day": 5}"#);
    let a = admit(&mut c, &s, 100);
    let id = a.reservation_id.unwrap();
    let mut tx = c.transaction().unwrap();
    tx.query_one("SELECT * FROM control_plane.cp_record_usage($1, 50, 5, reservation_id => $2::text::uuid)", &[&s, &id])
        .unwrap();
    tx.rollback().unwrap();
    assert_eq!(quota(&mut c, &s, "requests_per_day"), (0, 1), "rolled back: nothing used, still held");
    let mut tx = c.transaction().unwrap();
    tx.query_one("SELECT * FROM control_plane.cp_record_usage($1, 50, 5, reservation_id => $2::text::uuid)", &[&s, &id])
        .unwrap();
    tx.execute("SAVEPOINT sp", &[]).unwrap();
    tx.query_one("SELECT * FROM control_plane.cp_record_usage($1, 1000, 1000)", &[&s]).unwrap();
    tx.execute("ROLLBACK TO SAVEPOINT sp", &[]).unwrap();
    tx.commit().unwrap();
    assert_eq!(quota(&mut c, &s, "requests_per_day"), (1, 0));
    assert_eq!(quota(&mut c, &s, "input_tokens_per_day"), (50, 0));
    let released: bool = c.query_one("SELECT control_plane.cp_release($1::text::uuid)", &[&id]).unwrap().get(0);
    assert!(!released, "settled reservations cannot be released");
}

#[test]
fn two_phase_commit_with_pending_usage_is_refused() {
    let s = format!("{}_2pc", run_id());
    let mut c = connect();
    c.batch_execute("BEGIN").unwrap();
    c.query_one("SELECT * FROM control_plane.cp_record_usage($1, 1, 1)", &[&s]).unwrap();
    let e = c.batch_execute(&format!("PREPARE TRANSACTION '{s}'")).unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("0A000"), "{e}");
    c.batch_execute("ROLLBACK").ok();
}

#[test]
fn committed_admin_changes_are_obeyed_by_the_next_admit_in_other_backends() {
    let id = run_id();
    let s = format!("{id}_admin");
    let plan = format!("{id}_plan");
    let mut app = connect();
    let mut admin = connect();
    admin
        .execute("INSERT INTO control_plane.profiles (name, requests_per_day) VALUES ($1, 1000)", &[&plan])
        .unwrap();
    enroll(&mut admin, &s, &plan, "{}");
    for _ in 0..3 {
        assert!(admit(&mut app, &s, 0).allowed); // the app backend now caches the policy
    }
    admin.execute("UPDATE control_plane.profiles SET requests_per_day = 3 WHERE name = $1", &[&plan]).unwrap();
    let d = admit(&mut app, &s, 0);
    assert!(!d.allowed, "profile limit change");
    assert_eq!(d.limit_name.as_deref(), Some("requests_per_day"));
    admin.execute("UPDATE control_plane.subjects SET overrides = '{\"requests_per_day\": 10}' WHERE subject_id = $1", &[&s]).unwrap();
    assert!(admit(&mut app, &s, 0).allowed, "override change");
    admin.execute("UPDATE control_plane.subjects SET active = false WHERE subject_id = $1", &[&s]).unwrap();
    assert_eq!(admit(&mut app, &s, 0).reason.as_deref(), Some("inactive"));
    admin.execute("UPDATE control_plane.subjects SET active = true, overrides = '{}', profile = 'unlimited' WHERE subject_id = $1", &[&s]).unwrap();
    assert!(admit(&mut app, &s, 0).allowed, "profile assignment change");
    // an uncommitted change is not obeyed elsewhere
    let mut tx = admin.transaction().unwrap();
    tx.execute("UPDATE control_plane.subjects SET active = false WHERE subject_id = $1", &[&s]).unwrap();
    assert!(admit(&mut app, &s, 0).allowed);
    tx.rollback().unwrap();
    assert!(admit(&mut app, &s, 0).allowed);
}

#[test]
fn a_full_index_denies_with_capacity_and_evicts_once_reservations_end() {
    // The integration cluster runs with control_plane.max_subjects = 1024 (a few thousand slots).
    let id = run_id();
    let mut c = connect();
    let cap: i64 = c
        .query_one("SELECT value FROM control_plane.stats WHERE name = 'entries_capacity'", &[])
        .unwrap()
        .get(0);
    assert!(cap < 4000, "the test cluster must run with a small control_plane.max_subjects, got {cap}");
    let mut held = Vec::new();
    let mut denied = 0;
    for i in 0..(cap + 600) {
        let a = admit(&mut c, &format!("{id}_cap{i}"), 0);
        if a.allowed {
            held.push(a.reservation_id.unwrap());
        } else {
            assert_eq!(a.reason.as_deref(), Some("capacity"));
            assert_eq!(a.limit_name.as_deref(), Some("max_subjects"));
            denied += 1;
        }
    }
    assert!(denied > 0, "a table full of entries with open reservations must deny");
    let in_use: i64 = c.query_one("SELECT value FROM control_plane.stats WHERE name = 'entries_in_use'", &[]).unwrap().get(0);
    assert!(in_use <= cap);
    for r in &held {
        let ok: bool = c.query_one("SELECT control_plane.cp_release($1::text::uuid)", &[r]).unwrap().get(0);
        assert!(ok);
    }
    let ev0: i64 = c.query_one("SELECT value FROM control_plane.stats WHERE name = 'evictions'", &[]).unwrap().get(0);
    for i in 0..200 {
        let a = admit(&mut c, &format!("{id}_after{i}"), 0);
        assert!(a.allowed, "after release, eviction makes room: {:?}", a.reason);
        let _: bool = c.query_one("SELECT control_plane.cp_release($1::text::uuid)", &[&a.reservation_id.unwrap()]).unwrap().get(0);
    }
    let ev1: i64 = c.query_one("SELECT value FROM control_plane.stats WHERE name = 'evictions'", &[]).unwrap().get(0);
    assert!(ev1 > ev0, "evictions counted");
}

#[test]
fn without_the_preload_the_first_call_says_what_to_do() {
    let dsn = env("CP_NOPRELOAD_DSN");
    let mut c = postgres::Client::connect(&dsn, postgres::NoTls).expect("connect to the cluster without preload");
    c.batch_execute("DROP EXTENSION IF EXISTS control_plane; CREATE EXTENSION control_plane").unwrap();
    let e = c.query_one("SELECT * FROM control_plane.cp_admit('u')", &[]).unwrap_err();
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "55000");
    assert!(db.message().contains("shared_preload_libraries"), "{}", db.message());
    assert!(db.hint().unwrap_or("").contains("shared_preload_libraries"), "{:?}", db.hint());
}
