//! Money alerts over real connections: a `LISTEN control_plane_alerts` connection hears exactly
//! one warning, one emergency and one limit alert as spend crosses them, also when many
//! connections spend at once; an alert of a transaction that rolls back is never heard, and is
//! raised again by the next crossing.

use control_plane_integration::*;
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;
use std::time::Duration;

/// A connection listening on `control_plane_alerts`.
fn listener() -> Client {
    let mut l = connect();
    l.batch_execute("LISTEN control_plane_alerts").expect("LISTEN");
    l
}

/// The levels of the notifications `l` has received (until none came for two seconds) whose
/// payload names `who` (a subject or an organisation) in `scope`, in the order they came.
fn heard(l: &mut Client, scope: &str, who: &str) -> Vec<String> {
    let mut levels = Vec::new();
    let mut notifications = l.notifications();
    let mut it = notifications.timeout_iter(Duration::from_secs(2));
    let key = match scope {
        "subject" => "subject_id",
        _ => "org_id",
    };
    while let Some(n) = it.next().expect("notifications") {
        assert_eq!(n.channel(), "control_plane_alerts");
        let p = n.payload();
        if !p.contains(&format!("\"{key}\" : \"{who}\"")) || !p.contains(&format!("\"scope\" : \"{scope}\"")) {
            continue;
        }
        for level in ["warning", "emergency", "limit"] {
            if p.contains(&format!("\"level\" : \"{level}\"")) {
                levels.push(level.to_string());
            }
        }
    }
    levels
}

/// The levels of the alert rows of a subject or an organisation, oldest first.
fn rows(c: &mut Client, scope: &str, who: &str) -> Vec<String> {
    c.query(
        "SELECT level FROM control_plane.alerts
          WHERE scope = $1 AND CASE WHEN $1 = 'subject' THEN subject_id ELSE org_id END = $2 ORDER BY id",
        &[&scope, &who],
    )
    .expect("alerts")
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[test]
fn a_listener_hears_each_threshold_of_an_organisation_once_while_sixteen_connections_spend() {
    // 1 micro-unit per input token; an organisation with 10 cents a day (100,000) and eight
    // subjects without budgets of their own. Sixteen connections admit and record 1,000 at a time
    // until refused: 80,000 is the warning, 90,000 the emergency (no fallback model: admitted with
    // a warning), 100,000 the limit.
    let id = run_id();
    let (org, model) = (format!("{id}_al_org"), format!("{id}-al1"));
    let subjects: Vec<String> = (0..8).map(|i| format!("{id}_al_org_{i}")).collect();
    let mut admin = connect();
    shared_price(&mut admin, &model, 1_000_000, 0);
    for s in &subjects {
        enroll(&mut admin, s, "unlimited", "{}");
    }
    join_org(&mut admin, &org, Some(10), &subjects);
    let mut l = listener();
    let workers: Vec<_> = (0..16)
        .map(|w| {
            let (s, model) = (subjects[w % 8].clone(), model.clone());
            std::thread::spawn(move || spend_until_refused(&s, 1_000, &model, 1_000).0)
        })
        .collect();
    let admitted: i64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(admitted, 100);
    // Exactly one of each. Not necessarily in this order: the connections that crossed the
    // thresholds commit in any order, and a notification is delivered at its commit.
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(
        sorted(heard(&mut l, "organization", &org)),
        ["emergency", "limit", "warning"],
        "exactly one of each"
    );
    assert_eq!(
        sorted(rows(&mut admin, "organization", &org)),
        ["emergency", "limit", "warning"]
    );
    for s in &subjects {
        assert!(
            rows(&mut admin, "subject", s).is_empty(),
            "no subject budget, no subject alert"
        );
    }
    let used: Vec<i64> = admin
        .query(
            "SELECT used_micros FROM control_plane.alerts WHERE org_id = $1 AND scope = 'organization' ORDER BY id",
            &[&org],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Spent plus reserved only grows, 1,000 at a time (each record costs what it reserved): each
    // alert was raised by the admission that reached its threshold exactly.
    assert_eq!(used, [80_000, 90_000, 100_000]);
}

#[test]
fn a_rolled_back_alert_is_never_heard_and_the_next_crossing_raises_it() {
    // A subject's own budget of 1 cent (10,000); each admission of 1,000 input tokens reserves
    // 1,000 of it.
    let id = run_id();
    let (s, model) = (format!("{id}_al_subject"), format!("{id}-al2"));
    let mut c = connect();
    shared_price(&mut c, &model, 1_000_000, 0);
    enroll(&mut c, &s, "unlimited", r#"{"daily_budget_cents": 1}"#);
    let mut l = listener();

    // A record that spends 8,500 on a reservation of 1,000 reaches the warning, then rolls back.
    c.batch_execute("BEGIN").unwrap();
    let a = admit_priced(&mut c, &s, 1_000, &model);
    assert_eq!(a.remaining, Some(9_000), "1,000 input tokens reserve 1,000");
    let rid = a.reservation_id.unwrap();
    assert_eq!(record_priced(&mut c, &s, 8_500, &model, Some(&rid)), Some(8_500));
    assert_eq!(
        rows(&mut c, "subject", &s),
        ["warning"],
        "written in the transaction that reached it"
    );
    c.batch_execute("ROLLBACK").unwrap();
    assert!(
        release(&mut c, &rid),
        "the rolled-back record left the reservation open"
    );
    assert!(
        heard(&mut l, "subject", &s).is_empty(),
        "nothing is sent for a rollback"
    );
    assert!(rows(&mut c, "subject", &s).is_empty());

    // The same spend committed: the warning, once.
    let a = admit_priced(&mut c, &s, 1_000, &model);
    record_priced(&mut c, &s, 8_500, &model, a.reservation_id.as_deref());
    // 8,500 spent + 1,000 reserved = 9,500: the emergency zone (no fallback: a warning).
    let a = admit_priced(&mut c, &s, 1_000, &model);
    assert_eq!(a.reason.as_deref(), Some("emergency_threshold"));
    record_priced(&mut c, &s, 500, &model, a.reservation_id.as_deref());
    // 9,000 spent + 1,000 reserved = the limit.
    let a = admit_priced(&mut c, &s, 1_000, &model);
    assert!(a.allowed);
    record_priced(&mut c, &s, 1_000, &model, a.reservation_id.as_deref());
    let refused = admit_priced(&mut c, &s, 1, &model);
    assert_eq!(refused.reason.as_deref(), Some("budget_exceeded"));
    assert_eq!(heard(&mut l, "subject", &s), ["warning", "emergency", "limit"]);
    assert_eq!(rows(&mut c, "subject", &s), ["warning", "emergency", "limit"]);
}

#[test]
fn a_transaction_that_wrote_an_alert_cannot_be_prepared() {
    // A prepared alert row would make every admission owing the same alert wait on its unique
    // index until COMMIT PREPARED: PREPARE TRANSACTION is refused, and the alert is raised again.
    let id = run_id();
    let (s, model) = (format!("{id}_al_2pc"), format!("{id}-al3"));
    let mut c = connect();
    shared_price(&mut c, &model, 1_000_000, 0);
    enroll(&mut c, &s, "unlimited", r#"{"daily_budget_cents": 1}"#);
    c.batch_execute("BEGIN").unwrap();
    for _ in 0..8 {
        assert!(admit_priced(&mut c, &s, 1_000, &model).allowed);
    }
    assert_eq!(rows(&mut c, "subject", &s), ["warning"]);
    let e = c.batch_execute(&format!("PREPARE TRANSACTION '{s}'")).unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("0A000"), "{e}");
    c.batch_execute("ROLLBACK").ok();
    assert!(rows(&mut c, "subject", &s).is_empty());
    // (The eight admissions still hold their 8,000: admissions are not transactional.)
    assert!(admit_priced(&mut c, &s, 1_000, &model).allowed);
    assert_eq!(rows(&mut c, "subject", &s), ["warning", "emergency"]);
}

#[test]
fn an_alert_is_written_and_its_record_commits_while_the_notify_queue_is_full() {
    // Any role can fill the server's NOTIFY queue (a listener that never reads); a transaction
    // that notifies then fails at commit. PostgreSQL 17 and later size the queue
    // (`max_notify_queue_pages`, 64 pages of 8 kB on this cluster); before 17 it holds 8 GB,
    // which no test fills.
    let mut c = connect_to("CP_TINY_DSN");
    let pages: Option<String> = c
        .query_opt(
            "SELECT setting FROM pg_settings WHERE name = 'max_notify_queue_pages'",
            &[],
        )
        .unwrap()
        .map(|r| r.get(0));
    let Some(pages) = pages else {
        eprintln!("skipped: this PostgreSQL has no max_notify_queue_pages (before 17: an 8 GB queue)");
        return;
    };
    assert_eq!(pages, "64", "scripts/test.sh starts this cluster with a small queue");
    let id = run_id();
    let (s, model) = (format!("{id}_full_queue"), format!("{id}-fq"));
    shared_price(&mut c, &model, 1_000_000, 0);
    enroll(&mut c, &s, "unlimited", r#"{"daily_budget_cents": 10}"#);
    let mut l = connect_to("CP_TINY_DSN");
    l.batch_execute("LISTEN control_plane_alerts").unwrap();
    l.batch_execute("BEGIN; SELECT 1").unwrap();
    let mut filler = connect_to("CP_TINY_DSN");
    let mut full = None;
    for _ in 0..1_000 {
        if let Err(e) = filler.batch_execute("SELECT pg_notify('control_plane_alerts', repeat('x', 7000))") {
            full = Some(e.code().map(|c| c.code().to_string()));
            break;
        }
    }
    assert_eq!(full, Some(Some("54000".to_string())), "the queue did not fill");
    // 85,000 of 100,000 micro-units: the warning is owed, and the record commits.
    let a = admit_priced(&mut c, &s, 85_000, &model);
    assert!(a.allowed, "{:?}", a.reason);
    assert_eq!(
        record_priced(&mut c, &s, 85_000, &model, a.reservation_id.as_deref()),
        Some(85_000)
    );
    assert_eq!(rows(&mut c, "subject", &s), ["warning"]);
    assert_eq!(spent_today(&mut c, &s), 85_000);
    l.batch_execute("ROLLBACK; UNLISTEN *").unwrap();
}
