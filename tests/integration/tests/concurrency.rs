//! Exactness under many real concurrent connections, commit-only counting, and admin changes
//! seen by other backends at once.

use control_plane_integration::*;
use std::sync::{Arc, Barrier};
use std::thread;

/// Opens `threads` connections, releases them together, and runs `work` on each; returns what
/// each returned.
fn together<T: Send + 'static>(
    threads: usize,
    work: impl Fn(&mut postgres::Client) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let barrier = Arc::new(Barrier::new(threads));
    let work = Arc::new(work);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (b, work) = (barrier.clone(), work.clone());
            thread::spawn(move || {
                let mut c = connect();
                b.wait();
                work(&mut c)
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().expect("worker")).collect()
}

/// `threads` connections, released together, each calling `cp_admit(subject, tokens)` `per`
/// times. Returns the admissions (allowed ones keep their reservation).
fn hammer(subject: &str, tokens: i64, threads: usize, per: usize) -> Vec<Admission> {
    let s = subject.to_string();
    together(threads, move |c| {
        (0..per).map(|_| admit(c, &s, tokens)).collect::<Vec<_>>()
    })
    .into_iter()
    .flatten()
    .collect()
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
    enroll(
        &mut c,
        &s,
        "unlimited",
        r#"{"requests_per_day": 40, "output_tokens_per_day": 100000}"#,
    );
    let subject = s.clone();
    let per_connection = together(32, move |c| {
        let mut admitted = 0i64;
        for _ in 0..5 {
            let a = admit(c, &subject, 10);
            if a.allowed {
                admitted += 1;
                let id = a.reservation_id.expect("reservation id");
                assert!(record(c, &subject, 7, 3, &id));
            }
        }
        admitted
    });
    let admitted: i64 = per_connection.iter().sum();
    assert_eq!(admitted, 40);
    let ledger: i64 = c
        .query_one(
            "SELECT count(*) FROM control_plane.usage_events WHERE subject_id = $1",
            &[&s],
        )
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
    tx.query_one(
        "SELECT * FROM control_plane.cp_record_usage($1, 50, 5, reservation_id => $2::text::uuid)",
        &[&s, &id],
    )
    .unwrap();
    tx.rollback().unwrap();
    assert_eq!(
        quota(&mut c, &s, "requests_per_day"),
        (0, 1),
        "rolled back: nothing used, still held"
    );
    let mut tx = c.transaction().unwrap();
    tx.query_one(
        "SELECT * FROM control_plane.cp_record_usage($1, 50, 5, reservation_id => $2::text::uuid)",
        &[&s, &id],
    )
    .unwrap();
    tx.execute("SAVEPOINT sp", &[]).unwrap();
    tx.query_one("SELECT * FROM control_plane.cp_record_usage($1, 1000, 1000)", &[&s])
        .unwrap();
    tx.execute("ROLLBACK TO SAVEPOINT sp", &[]).unwrap();
    tx.commit().unwrap();
    assert_eq!(quota(&mut c, &s, "requests_per_day"), (1, 0));
    assert_eq!(quota(&mut c, &s, "input_tokens_per_day"), (50, 0));
    let released: bool = release(&mut c, &id);
    assert!(!released, "settled reservations cannot be released");
}

#[test]
fn two_phase_commit_with_pending_usage_is_refused() {
    let s = format!("{}_2pc", run_id());
    let mut c = connect();
    c.batch_execute("BEGIN").unwrap();
    c.query_one("SELECT * FROM control_plane.cp_record_usage($1, 1, 1)", &[&s])
        .unwrap();
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
        .execute(
            "INSERT INTO control_plane.profiles (name, requests_per_day) VALUES ($1, 1000)",
            &[&plan],
        )
        .unwrap();
    enroll(&mut admin, &s, &plan, "{}");
    for _ in 0..3 {
        assert!(admit(&mut app, &s, 0).allowed); // the app backend now caches the policy
    }
    admin
        .execute(
            "UPDATE control_plane.profiles SET requests_per_day = 3 WHERE name = $1",
            &[&plan],
        )
        .unwrap();
    let d = admit(&mut app, &s, 0);
    assert!(!d.allowed, "profile limit change");
    assert_eq!(d.limit_name.as_deref(), Some("requests_per_day"));
    admin
        .execute(
            "UPDATE control_plane.subjects SET overrides = '{\"requests_per_day\": 10}' WHERE subject_id = $1",
            &[&s],
        )
        .unwrap();
    assert!(admit(&mut app, &s, 0).allowed, "override change");
    admin
        .execute(
            "UPDATE control_plane.subjects SET active = false WHERE subject_id = $1",
            &[&s],
        )
        .unwrap();
    assert_eq!(admit(&mut app, &s, 0).reason.as_deref(), Some("inactive"));
    admin.execute("UPDATE control_plane.subjects SET active = true, overrides = '{}', profile = 'unlimited' WHERE subject_id = $1", &[&s]).unwrap();
    assert!(admit(&mut app, &s, 0).allowed, "profile assignment change");
    // an uncommitted change is not obeyed elsewhere
    let mut tx = admin.transaction().unwrap();
    tx.execute(
        "UPDATE control_plane.subjects SET active = false WHERE subject_id = $1",
        &[&s],
    )
    .unwrap();
    assert!(admit(&mut app, &s, 0).allowed);
    tx.rollback().unwrap();
    assert!(admit(&mut app, &s, 0).allowed);
}

#[test]
fn a_full_index_evicts_only_what_loses_nothing_then_follows_on_full() {
    // A cluster of its own, with control_plane.max_subjects = 1024 (a few thousand slots): the
    // test leaves it full of entries whose rate state refills only in an hour.
    let id = run_id();
    let tenant = format!("{id}_cap");
    let mut c = connect_to("CP_SMALL_DSN");
    let cap = stat(&mut c, "entries_capacity");
    assert!(
        cap < 4000,
        "the test cluster must run with a small control_plane.max_subjects, got {cap}"
    );
    // A tenant whose default plan has quotas only (no rate state): entries without open
    // reservations are evictable.
    c.batch_execute(&format!(
        "SET control_plane.tenant = '{tenant}';
         INSERT INTO control_plane.profiles (name, requests_per_day, is_default) VALUES ('quota_only', 100, true);
         INSERT INTO control_plane.profiles (name, requests_per_hour) VALUES ('rated', 10);"
    ))
    .unwrap();
    let e0 = stat(&mut c, "entries_in_use");
    let mut held = Vec::new();
    let mut denied = 0;
    for i in 0..(cap + 600) {
        let s = format!("{id}_cap{i}");
        let a = admit(&mut c, &s, 0);
        if a.allowed {
            held.push((s, a.reservation_id.unwrap()));
        } else {
            assert_eq!(a.reason.as_deref(), Some("capacity"));
            assert_eq!(a.limit_name.as_deref(), Some("max_subjects"));
            denied += 1;
        }
    }
    assert!(denied > 0, "a table full of entries with open reservations must deny");
    // Every admitted subject has its entry (none with an open reservation was evicted).
    assert_eq!(stat(&mut c, "entries_in_use"), e0 + held.len() as i64);
    assert!(held.len() as i64 <= cap);
    assert!(stat(&mut c, "denied_capacity") >= denied);
    // Each request is recorded (one request, 10 input tokens): these entries now hold usage
    // that only the ledger keeps once they are evicted.
    for (s, r) in &held {
        assert!(record(&mut c, s, 10, 1, r));
    }
    // Reservations ended and no rate state: eviction makes room and loses nothing.
    let ev0 = stat(&mut c, "evictions");
    let (mut admitted, mut refused) = (Vec::new(), Vec::new());
    for i in 0..(cap + 600) {
        let s = format!("{id}_rated{i}");
        c.execute(
            "INSERT INTO control_plane.subjects (subject_id, profile) VALUES ($1, 'rated')",
            &[&s],
        )
        .unwrap();
        let a = admit(&mut c, &s, 0);
        if a.allowed {
            release(&mut c, &a.reservation_id.unwrap());
            admitted.push(s);
        } else {
            // a partition full of entries whose rate state has not refilled: nothing to evict
            assert_eq!(a.reason.as_deref(), Some("capacity"), "{:?}", a.limit_name);
            refused.push(s);
        }
    }
    let evicted = stat(&mut c, "evictions") - ev0;
    assert!(evicted > 0, "idle entries were evicted");
    assert!(
        !refused.is_empty(),
        "more subjects than capacity, none idle: control_plane.on_full = deny must refuse"
    );
    // The status of an evicted subject whose partition is now full of entries that cannot be
    // evicted fails with 55000 (shared memory has no room to rebuild it), never XX000.
    let mut no_room = 0;
    for (s, _) in &held {
        match c.query_one("SELECT control_plane.cp_quota_status($1)", &[s]) {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.code().map(|c| c.code()), Some("55000"), "{e}");
                no_room += 1;
            }
        }
    }
    assert!(
        no_room > 0,
        "some evicted subjects' partitions are full of rated entries"
    );
    // No entry with rate state was evicted: each admitted rated subject still remembers its one
    // request of the hour (10 an hour: 8 left after a second one).
    for s in &admitted {
        let a = admit(&mut c, s, 0);
        assert_eq!(a.remaining, Some(8), "{s} lost its rate state");
        release(&mut c, &a.reservation_id.unwrap());
    }
    // With on_full = evict_lru, the least recently used entry goes (its rate state restarts).
    c.batch_execute("ALTER SYSTEM SET control_plane.on_full = 'evict_lru'")
        .unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let mut c = connect_to("CP_SMALL_DSN");
    c.batch_execute(&format!("SET control_plane.tenant = '{tenant}'"))
        .unwrap();
    let on_full: String = c.query_one("SHOW control_plane.on_full", &[]).unwrap().get(0);
    assert_eq!(on_full, "evict_lru");
    let ev1 = stat(&mut c, "evictions");
    for s in &refused {
        let a = admit(&mut c, s, 0);
        assert!(a.allowed, "evict_lru makes room: {:?}", a.reason);
        release(&mut c, &a.reservation_id.unwrap());
    }
    // Each of them took the place of exactly one entry.
    assert_eq!(stat(&mut c, "evictions") - ev1, refused.len() as i64);
    // An evicted rated subject's rate state restarts full: 9 of 10 left after one more request.
    let restarted = admitted
        .iter()
        .filter(|s| {
            let a = admit(&mut c, s, 0);
            release(&mut c, &a.reservation_id.unwrap());
            a.remaining == Some(9)
        })
        .count();
    assert!(
        restarted > 0,
        "evict_lru evicted rated entries: their rate state restarts"
    );
    // Nothing was lost: every evicted subject's usage comes back from the ledger, exactly.
    for (s, _) in &held {
        assert_eq!(quota(&mut c, s, "requests_per_day"), (1, 0), "{s}");
    }
    c.batch_execute("ALTER SYSTEM RESET control_plane.on_full").unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
}

#[test]
fn a_rate_limit_admits_exactly_the_burst_plus_the_refill_under_concurrency() {
    // 60 per minute: a burst of 60, then one every second after the first admission. 32
    // connections keep the limiter saturated for 2.5 s from a barrier: exactly 62 admissions,
    // the 61st no sooner than 1 s after the first and the 62nd no sooner than 2 s after it (and,
    // at saturation, not much later).
    let s = format!("{}_rate", run_id());
    let mut c = connect();
    enroll(&mut c, &s, "unlimited", r#"{"requests_per_minute": 60}"#);
    let subject = s.clone();
    let results = together(32, move |c| {
        let t0 = std::time::Instant::now();
        let (mut stamps, mut tries) = (Vec::new(), 0i64);
        while t0.elapsed() < std::time::Duration::from_millis(2500) {
            tries += 1;
            // The server's clock just before the decision (cp_admit's argument depends on it,
            // so it is read first) and just after it.
            let r = c
                .query_one(
                    "SELECT a.allowed, (extract(epoch FROM b.t) * 1000000)::bigint,
                            (extract(epoch FROM clock_timestamp()) * 1000000)::bigint
                       FROM (SELECT clock_timestamp() AS t) b,
                            LATERAL control_plane.cp_admit($1, 0 * extract(epoch FROM b.t)::bigint) a",
                    &[&subject],
                )
                .expect("cp_admit");
            if r.get::<_, bool>(0) {
                stamps.push((r.get::<_, i64>(1), r.get::<_, i64>(2)));
            }
        }
        (stamps, tries)
    });
    let tries: i64 = results.iter().map(|r| r.1).sum();
    let stamps: Vec<(i64, i64)> = results.into_iter().flat_map(|r| r.0).collect();
    assert!(
        tries > 1000,
        "the connections must keep the limiter saturated ({tries} tries)"
    );
    assert_eq!(stamps.len(), 62, "admissions in 2.5 s of saturation: {stamps:?}");
    // Bounds that hold whatever the scheduling: the first admission was decided no sooner than
    // the earliest "before" stamp of an admitted call; the 61st and 62nd were decided no later
    // than the 61st and 62nd smallest "after" stamps (at least 62 - k + 1 calls end after the
    // k-th decision). So a refill admitted early shows as less than due, with no tolerance.
    let first_no_sooner = stamps.iter().map(|s| s.0).min().unwrap();
    let mut after: Vec<i64> = stamps.iter().map(|s| s.1).collect();
    after.sort_unstable();
    for (k, t) in after[60..].iter().enumerate() {
        let after_ms = (t - first_no_sooner) as f64 / 1000.0;
        let due_ms = 1000.0 * (k + 1) as f64;
        // 0.002 ms: the stamps are rounded to microseconds.
        assert!(
            after_ms >= due_ms - 0.002,
            "refill {} admitted early: decided no later than {after_ms} ms after the first",
            k + 1
        );
        assert!(
            after_ms <= due_ms + 300.0,
            "refill {} admitted late: {after_ms} ms after the first",
            k + 1
        );
    }
}

#[test]
fn max_concurrent_holds_under_concurrency() {
    let s = format!("{}_conc", run_id());
    let mut c = connect();
    enroll(&mut c, &s, "unlimited", r#"{"max_concurrent": 5}"#);
    let all = hammer(&s, 0, 40, 5);
    let allowed: Vec<_> = all.iter().filter(|a| a.allowed).collect();
    assert_eq!(allowed.len(), 5);
    assert!(all
        .iter()
        .filter(|a| !a.allowed)
        .all(|a| a.reason.as_deref() == Some("concurrency_limit")));
    for a in allowed {
        release(&mut c, &a.reservation_id.as_ref().unwrap());
    }
    assert!(admit(&mut c, &s, 0).allowed);
}

#[test]
fn rate_changes_are_obeyed_at_once_by_other_backends() {
    let s = format!("{}_ratechg", run_id());
    let mut app = connect();
    let mut admin = connect();
    enroll(&mut admin, &s, "unlimited", "{}");
    for _ in 0..5 {
        assert!(admit(&mut app, &s, 0).allowed);
    }
    admin
        .execute(
            "UPDATE control_plane.subjects SET overrides = '{\"requests_per_hour\": 1}' WHERE subject_id = $1",
            &[&s],
        )
        .unwrap();
    assert!(
        admit(&mut app, &s, 0).allowed,
        "the first request of the new hour budget"
    );
    let d = admit(&mut app, &s, 0);
    assert_eq!(d.reason.as_deref(), Some("rate_limited"));
    assert_eq!(d.limit_name.as_deref(), Some("requests_per_hour"));
    admin
        .execute(
            "UPDATE control_plane.subjects SET overrides = '{}' WHERE subject_id = $1",
            &[&s],
        )
        .unwrap();
    assert!(admit(&mut app, &s, 0).allowed);
}

#[test]
fn without_the_preload_the_first_call_says_what_to_do() {
    let dsn = env("CP_NOPRELOAD_DSN");
    let mut c = postgres::Client::connect(&dsn, postgres::NoTls).expect("connect to the cluster without preload");
    c.batch_execute("DROP EXTENSION IF EXISTS control_plane; CREATE EXTENSION control_plane")
        .unwrap();
    let e = c
        .query_one("SELECT * FROM control_plane.cp_admit('u')", &[])
        .unwrap_err();
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "55000");
    assert!(db.message().contains("shared_preload_libraries"), "{}", db.message());
    assert!(
        db.hint().unwrap_or("").contains("shared_preload_libraries"),
        "{:?}",
        db.hint()
    );
}
