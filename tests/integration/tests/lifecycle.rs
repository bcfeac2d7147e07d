//! The admission lifecycle: nothing leaks when a call fails half-way, metadata reaches the ledger
//! as sent, plans with nothing to hold claim no reservation, the reservation table is used to its
//! last slot, and an admin change costs only what it touches.

use control_plane_integration::*;
use postgres::Client;

#[test]
fn a_timed_out_rebuild_leaves_shared_memory_as_it_was() {
    let s = format!("{}_slow", run_id());
    let mut c = connect();
    enroll(&mut c, &s, "unlimited", r#"{"requests_per_day": 1000000000}"#);
    // A subject whose ledger holds 400,000 rows this month and that shared memory has never seen:
    // its first admission rebuilds its totals with one aggregate over them.
    c.execute(
        "INSERT INTO control_plane.usage_events (tenant_id, subject_id, input_tokens, output_tokens, created_at)
         SELECT 'default', $1, 1, 1, now() FROM generate_series(1, 400000)",
        &[&s],
    )
    .unwrap();
    let before = stat(&mut c, "reservations_in_use");
    c.batch_execute("SET statement_timeout = '5ms'").unwrap();
    let mut timed_out = 0;
    for _ in 0..40 {
        match c.query_one("SELECT allowed FROM control_plane.cp_admit($1)", &[&s]) {
            Err(e) => {
                assert_eq!(e.code().map(|c| c.code()), Some("57014"), "{e}");
                timed_out += 1;
            }
            Ok(_) => break, // the rebuild finished within the timeout once: nothing more to test
        }
    }
    c.batch_execute("RESET statement_timeout").unwrap();
    assert!(timed_out >= 20, "the rebuild must time out ({timed_out} times)");
    assert_eq!(
        stat(&mut c, "reservations_in_use"),
        before,
        "no reservation slot leaked"
    );
    let a = admit(&mut c, &s, 0);
    assert!(a.allowed);
    assert_eq!(quota(&mut c, &s, "requests_per_day"), (400_000, 1));
    assert!(release(&mut c, &a.reservation_id.unwrap()));
}

#[test]
fn metadata_reaches_the_ledger_exactly_as_sent() {
    let s = format!("{}_meta", run_id());
    let mut c = connect();
    let sent = r#"{"order": 123456789012345678901234567890, "price": 0.1000000000000000055511151231257827, "a": [1, {"b": null}]}"#;
    let (id,): (i64,) = {
        let r = c
            .query_one(
                "SELECT event_id FROM control_plane.cp_record_usage($1, 1, 1, metadata => $2::text::jsonb)",
                &[&s, &sent],
            )
            .unwrap();
        (r.get(0),)
    };
    let r = c
        .query_one(
            "SELECT metadata::text = $2::text::jsonb::text, metadata->>'order'
               FROM control_plane.usage_events WHERE id = $1",
            &[&id, &sent],
        )
        .unwrap();
    assert!(r.get::<_, bool>(0));
    assert_eq!(r.get::<_, String>(1), "123456789012345678901234567890");
}

#[test]
fn a_plan_with_nothing_to_hold_claims_no_reservation() {
    let s = format!("{}_nohold", run_id());
    let mut c = connect();
    enroll(
        &mut c,
        &s,
        "unlimited",
        r#"{"requests_per_minute": 1000, "tokens_per_minute": 100000, "output_tokens_per_day": 50}"#,
    );
    let before = stat(&mut c, "reservations_in_use");
    let mut ids = Vec::new();
    for _ in 0..50 {
        let a = admit(&mut c, &s, 100);
        assert!(a.allowed);
        ids.push(a.reservation_id.expect("an id even when nothing is held"));
    }
    assert_eq!(stat(&mut c, "reservations_in_use"), before);
    assert!(!release(&mut c, &ids[0]), "nothing to release");
    assert!(!record(&mut c, &s, 90, 10, &ids[1]));
    assert_eq!(quota(&mut c, &s, "output_tokens_per_day"), (10, 0));
    // a request estimate against an input token quota does hold
    enroll(&mut c, &s, "unlimited", r#"{"input_tokens_per_day": 1000}"#);
    let a = admit(&mut c, &s, 100);
    assert_eq!(stat(&mut c, "reservations_in_use"), before + 1);
    assert!(release(&mut c, &a.reservation_id.unwrap()));
}

#[test]
fn every_reservation_slot_is_used_before_any_expires_early() {
    let s = format!("{}_slots", run_id());
    let mut c = connect();
    let cap = stat(&mut c, "reservations_capacity");
    let in_use = stat(&mut c, "reservations_in_use");
    let early = stat(&mut c, "reservations_expired_early");
    enroll(&mut c, &s, "unlimited", r#"{"max_concurrent": 1000000}"#);
    let fill = |c: &mut Client, n: i64| -> Vec<String> {
        c.query(
            "SELECT a.reservation_id::text FROM generate_series(1, $2::bigint) g,
                    LATERAL control_plane.cp_admit($1, 0 * g) a WHERE a.allowed",
            &[&s, &n],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    let held = fill(&mut c, cap - in_use);
    assert_eq!(held.len() as i64, cap - in_use, "every free slot is used");
    assert_eq!(stat(&mut c, "reservations_in_use"), cap);
    assert_eq!(
        stat(&mut c, "reservations_expired_early"),
        early,
        "none expired early meanwhile"
    );
    // The table is full: the next admission expires the oldest ones early instead of failing.
    let more = fill(&mut c, 1);
    assert_eq!(more.len(), 1);
    let expired_early = stat(&mut c, "reservations_expired_early") - early;
    assert!((1..=64).contains(&expired_early), "{expired_early}");
    // A released slot is reused before anything else expires early.
    let open = held
        .iter()
        .rposition(|id| release(&mut c, id))
        .expect("an open reservation");
    let reused = fill(&mut c, 1);
    assert_eq!(reused.len(), 1);
    assert_eq!(stat(&mut c, "reservations_expired_early") - early, expired_early);
    let released = held[..open].iter().filter(|id| release(&mut c, id)).count() as i64;
    assert_eq!(released + 1, cap - in_use - expired_early, "the rest were still open");
    assert!(release(&mut c, &more[0]) && release(&mut c, &reused[0]));
}

#[test]
fn an_admin_change_makes_only_what_it_touched_read_again() {
    let id = run_id();
    let (p1, p2) = (format!("{id}_p1"), format!("{id}_p2"));
    let mut admin = connect();
    let mut app = connect();
    for p in [&p1, &p2] {
        admin
            .execute(
                "INSERT INTO control_plane.profiles (name, requests_per_day) VALUES ($1, 1000)",
                &[p],
            )
            .unwrap();
    }
    // 10 subjects on each profile, each with overrides (so each has its own cached policy).
    let subjects: Vec<(String, &String)> = (0..20)
        .map(|i| (format!("{id}_s{i}"), if i < 10 { &p1 } else { &p2 }))
        .collect();
    for (s, p) in &subjects {
        enroll(&mut admin, s, p, r#"{"input_tokens_per_day": 1000000}"#);
    }
    let admit_all = |app: &mut Client| {
        subjects
            .iter()
            .map(|(s, _)| {
                let a = admit(app, s, 0);
                if let Some(id) = &a.reservation_id {
                    release(app, id);
                }
                a
            })
            .collect::<Vec<_>>()
    };
    admit_all(&mut app); // read and cached by the app backend
    let reads = |c: &mut Client| (stat(c, "subject_reads"), stat(c, "profile_reads"));
    let r0 = reads(&mut app);
    assert!(admit_all(&mut app).iter().all(|a| a.allowed));
    assert_eq!(reads(&mut app), r0, "nothing changed: nothing is read again");

    // One subject's row: that subject alone is read again, and its change is obeyed.
    admin
        .execute(
            "UPDATE control_plane.subjects SET overrides = '{\"requests_per_day\": 0}' WHERE subject_id = $1",
            &[&subjects[3].0],
        )
        .unwrap();
    let after = admit_all(&mut app);
    assert_eq!(
        reads(&mut app),
        (r0.0 + 1, r0.1),
        "one subject changed, one subject read"
    );
    assert_eq!(after[3].reason.as_deref(), Some("quota_exceeded"));
    assert!(after.iter().enumerate().all(|(i, a)| i == 3 || a.allowed));

    // One profile's limits: that profile alone is read again (its subjects' rows are not), and
    // the new limit is obeyed by its subjects only.
    let r1 = reads(&mut app);
    admin
        .execute(
            "UPDATE control_plane.profiles SET is_active = false WHERE name = $1",
            &[&p2],
        )
        .unwrap();
    let after = admit_all(&mut app);
    assert_eq!(
        reads(&mut app),
        (r1.0, r1.1 + 1),
        "one profile changed, one profile read"
    );
    for (i, a) in after.iter().enumerate() {
        if i >= 10 {
            assert_eq!(a.reason.as_deref(), Some("profile_inactive"), "subject {i}");
        } else {
            assert_eq!(a.allowed, i != 3, "subject {i}");
        }
    }
}
