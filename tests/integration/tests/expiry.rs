//! Admissions that are never recorded: they count, their estimates are charged when they expire,
//! the charges reach the ledger without the application's help, and a late record replaces the
//! charge instead of adding to it.

use control_plane_integration::*;
use postgres::Client;
use std::time::{Duration, Instant};

/// (requests, input tokens) of the subject's expired charges in the ledger.
fn charged(c: &mut Client, s: &str) -> (i64, i64) {
    let r = c
        .query_one(
            "SELECT coalesce(sum(requests), 0)::bigint, coalesce(sum(input_tokens), 0)::bigint
               FROM control_plane.usage_events WHERE subject_id = $1 AND kind <> 'usage'",
            &[&s],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

/// Waits (up to 10 s) until the subject's expired charges in the ledger reach `requests`.
fn wait_charged(c: &mut Client, s: &str, requests: i64) -> (i64, i64) {
    let start = Instant::now();
    loop {
        let got = charged(c, s);
        if got.0 >= requests || start.elapsed() > Duration::from_secs(10) {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A new subject on `unlimited` with `overrides`, and a connection whose reservations expire
/// after one second.
fn subject_with_1s_timeout(tag: &str, overrides: &str) -> (Client, String) {
    let s = format!("{}_{tag}", run_id());
    let mut c = connect();
    enroll(&mut c, &s, "unlimited", overrides);
    c.batch_execute("SET control_plane.reservation_timeout = 1").unwrap();
    (c, s)
}

#[test]
fn an_admit_only_client_gets_exactly_its_daily_quota_across_timeouts() {
    let (mut c, s) = subject_with_1s_timeout("admitonly", r#"{"requests_per_day": 5}"#);
    let start = Instant::now();
    let mut allowed = 0;
    while start.elapsed() < Duration::from_millis(3500) {
        let a = admit(&mut c, &s, 0);
        if a.allowed {
            allowed += 1;
        } else {
            assert_eq!(a.reason.as_deref(), Some("quota_exceeded"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(allowed, 5, "three reservation timeouts give no request back");
    assert_eq!(wait_charged(&mut c, &s, 5), (5, 0), "the ledger counts them");
    assert_eq!(quota(&mut c, &s, "requests_per_day"), (5, 0));
}

#[test]
fn expired_estimates_are_charged_in_the_ledger_and_in_quota_status() {
    let (mut c, s) = subject_with_1s_timeout("estimate", r#"{"input_tokens_per_day": 1000}"#);
    let id = admit(&mut c, &s, 300).reservation_id.unwrap();
    assert_eq!(quota(&mut c, &s, "input_tokens_per_day"), (0, 300));
    assert_eq!(wait_charged(&mut c, &s, 1), (1, 300));
    assert_eq!(quota(&mut c, &s, "input_tokens_per_day"), (300, 0));
    let r = c
        .query_one(
            "SELECT (metadata->'expired_reservations'->>$2)::bigint, reservation_id IS NULL
               FROM control_plane.usage_events WHERE subject_id = $1 AND kind = 'expired'",
            &[&s, &id],
        )
        .unwrap();
    assert_eq!(r.get::<_, Option<i64>>(0), Some(300), "the row names the reservation");
    // An expired reservation cannot be released: it was charged.
    assert!(!release(&mut c, &id));
    // 700 left: a request for 800 is refused
    assert!(!admit(&mut c, &s, 800).allowed);
}

#[test]
fn a_late_record_replaces_the_charge_instead_of_adding_to_it() {
    let (mut c, s) = subject_with_1s_timeout("late", r#"{"input_tokens_per_day": 1000, "requests_per_day": 10}"#);
    let id = admit(&mut c, &s, 300).reservation_id.unwrap();
    assert_eq!(wait_charged(&mut c, &s, 1), (1, 300));
    assert!(
        record(&mut c, &s, 120, 30, &id),
        "the late record settles the expired reservation"
    );
    assert_eq!(
        quota(&mut c, &s, "input_tokens_per_day"),
        (120, 0),
        "actual, not estimate + actual"
    );
    assert_eq!(quota(&mut c, &s, "requests_per_day"), (1, 0), "one request");
    assert_eq!(charged(&mut c, &s), (0, 0), "charge and reversal cancel in the ledger");
    // The index agrees with the ledger after a rebuild from it.
    let ledger: (i64, i64) = {
        let r = c
            .query_one(
                "SELECT sum(requests)::bigint, sum(input_tokens)::bigint FROM control_plane.usage_events WHERE subject_id = $1",
                &[&s],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(ledger, (1, 120));
    // A second record of the same reservation settles nothing more: it is usage of its own.
    assert!(!record(&mut c, &s, 120, 30, &id));
    assert_eq!(quota(&mut c, &s, "requests_per_day"), (2, 0));
}

#[test]
fn the_lenient_setting_charges_the_request_but_not_the_estimate() {
    let (mut c, s) = subject_with_1s_timeout("lenient", r#"{"input_tokens_per_day": 1000, "requests_per_day": 10}"#);
    c.batch_execute("ALTER SYSTEM SET control_plane.on_expiry = 'release_estimate'")
        .unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    admit(&mut c, &s, 400);
    let got = wait_charged(&mut c, &s, 1);
    c.batch_execute("ALTER SYSTEM RESET control_plane.on_expiry").unwrap();
    c.batch_execute("SELECT pg_reload_conf()").unwrap();
    assert_eq!(got, (1, 0));
    assert_eq!(quota(&mut c, &s, "input_tokens_per_day"), (0, 0));
    assert_eq!(quota(&mut c, &s, "requests_per_day"), (1, 0));
}

#[test]
fn admit_only_traffic_of_100_times_max_reservations_is_never_denied_capacity() {
    // The tiny cluster has control_plane.max_reservations = 1024 (and the default timeout of
    // ten minutes: every admission below holds its request until its slot is needed again).
    let s = format!("{}_wall", run_id());
    let mut c = connect_to("CP_TINY_DSN");
    let cap = stat(&mut c, "reservations_capacity");
    assert_eq!(cap, 1024);
    enroll(&mut c, &s, "unlimited", r#"{"requests_per_day": 1000000000}"#);
    let n = 100 * cap;
    let r = c
        .query_one(
            "SELECT count(*) FILTER (WHERE a.allowed), count(*) FILTER (WHERE a.reason = 'capacity')
               FROM generate_series(1, $2::bigint) g, LATERAL control_plane.cp_admit($1, 0 * g) a",
            &[&s, &n],
        )
        .unwrap();
    assert_eq!((r.get::<_, i64>(0), r.get::<_, i64>(1)), (n, 0));
    let (used, held) = quota(&mut c, &s, "requests_per_day");
    assert_eq!(used + held, n, "every admission counted once");
    assert!(held <= cap);
    let early = stat(&mut c, "reservations_expired_early");
    assert!(early >= n - cap, "{early} expired early");
    assert_eq!(
        wait_charged(&mut c, &s, used).0,
        used,
        "the early charges reach the ledger"
    );
}

#[test]
fn when_every_slot_is_being_settled_an_admission_is_denied_capacity_after_two_seconds() {
    // Only open reservations can be expired early. Here one transaction admits and records (and
    // so takes, until it ends) reservation after reservation until every one of the tiny
    // cluster's 1024 slots is being settled: the next admission waits for a slot, in vain, and
    // is denied with reason capacity, max_reservations.
    let s = format!("{}_settling", run_id());
    let mut c = connect_to("CP_TINY_DSN");
    enroll(&mut c, &s, "unlimited", r#"{"requests_per_day": 1000000000}"#);
    c.batch_execute("BEGIN").unwrap();
    let mut recorded = 0;
    let denied = loop {
        let a = admit(&mut c, &s, 0);
        if !a.allowed {
            break a;
        }
        // A slot expired early by this loop is charged; a record of it replaces the charge.
        record(&mut c, &s, 1, 1, a.reservation_id.as_ref().unwrap());
        recorded += 1;
        assert!(recorded <= 4 * 1024, "slots kept coming free");
    };
    assert_eq!(denied.reason.as_deref(), Some("capacity"));
    assert_eq!(denied.limit_name.as_deref(), Some("max_reservations"));
    assert!(recorded >= 1024, "{recorded}");
    c.batch_execute("COMMIT").unwrap();
    // Settled at commit: the slots are free again.
    let a = admit(&mut c, &s, 0);
    assert!(a.allowed, "{:?}", a.reason);
    assert!(release(&mut c, a.reservation_id.as_ref().unwrap()));
}

#[test]
fn cp_cleanup_expires_and_charges_what_is_due() {
    // The flusher expires what is due within 100 ms, and so does cp_cleanup called in a tight
    // loop from the reservation's due time: whichever gets there first expires it. With five
    // tries this test missed in about one run of six (the flusher wins roughly 0.7 of the races),
    // so it gets twenty (0.7^20: about one run in 1,000). What cp_cleanup expires is charged like
    // any expiry.
    let (mut c, s) = subject_with_1s_timeout("cleanup", r#"{"requests_per_day": 100, "input_tokens_per_day": 1000}"#);
    let mut tries = 0;
    let expired_by_cleanup = loop {
        tries += 1;
        assert!(tries <= 20, "the flusher expired it first twenty times in a row");
        let admitted = Instant::now();
        assert!(admit(&mut c, &s, 30).allowed);
        std::thread::sleep(Duration::from_millis(990));
        let mut expired = 0;
        while expired == 0 && admitted.elapsed() < Duration::from_millis(1500) {
            expired = c
                .query_one(
                    "SELECT (control_plane.cp_cleanup()->>'reservations_expired')::bigint",
                    &[],
                )
                .unwrap()
                .get::<_, i64>(0);
        }
        if expired > 0 {
            break expired;
        }
    };
    assert_eq!(expired_by_cleanup, 1);
    // Every admission of this subject is charged now: its request and its estimate.
    assert_eq!(quota(&mut c, &s, "requests_per_day"), (tries, 0));
    assert_eq!(quota(&mut c, &s, "input_tokens_per_day"), (30 * tries, 0));
    assert_eq!(wait_charged(&mut c, &s, tries).0, tries, "the charges reach the ledger");
}

#[test]
fn a_record_right_after_expiry_replaces_the_charge_before_it_is_written() {
    // The flusher expires a reservation within 100 ms of its time and writes the charge within
    // a second: a record that arrives in between takes the charge out of shared memory, and no
    // reversal row is needed. (Should the flusher write first, the reversal path gives the same
    // totals: the assertions hold either way.)
    let (mut c, s) = subject_with_1s_timeout("inslot", r#"{"input_tokens_per_day": 1000, "requests_per_day": 10}"#);
    let id = admit(&mut c, &s, 400).reservation_id.unwrap();
    let start = Instant::now();
    while quota(&mut c, &s, "input_tokens_per_day") != (400, 0) {
        assert!(start.elapsed() < Duration::from_secs(5), "not charged");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(record(&mut c, &s, 150, 20, &id));
    assert_eq!(quota(&mut c, &s, "input_tokens_per_day"), (150, 0));
    assert_eq!(quota(&mut c, &s, "requests_per_day"), (1, 0));
    std::thread::sleep(Duration::from_millis(1500)); // past the next flush
    let r = c
        .query_one(
            "SELECT sum(requests)::bigint, sum(input_tokens)::bigint,
                    count(*) FILTER (WHERE kind = 'expired_reversed')
               FROM control_plane.usage_events WHERE subject_id = $1",
            &[&s],
        )
        .unwrap();
    assert_eq!(
        (r.get::<_, i64>(0), r.get::<_, i64>(1)),
        (1, 150),
        "the ledger holds the actual usage once"
    );
    eprintln!(
        "late record path: {}",
        if r.get::<_, i64>(2) == 0 {
            "in shared memory"
        } else {
            "reversal row"
        }
    );
    assert_eq!(quota(&mut c, &s, "input_tokens_per_day"), (150, 0));
}
