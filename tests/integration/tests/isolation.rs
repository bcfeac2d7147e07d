//! What separates callers: a role with only the grants the README documents, reservation ids
//! that are capabilities, and two databases of one server.

use control_plane_integration::*;
use postgres::{Client, NoTls};

#[test]
fn a_role_with_only_the_documented_grants_can_use_every_function() {
    let mut su = connect();
    let role = format!("{}_app", run_id());
    su.batch_execute(&format!("CREATE ROLE {role} LOGIN")).unwrap();
    grant_app(&mut su, &role);
    let mut app = Client::connect(&dsn_with("user", &role), NoTls).unwrap();
    // Enrolment of an unknown subject (written as the extension's owner) and its first ledger
    // rebuild (SELECT on usage_events).
    let a = admit(&mut app, &format!("{role}_new"), 0);
    assert!(a.allowed, "{:?}", a.reason);
    assert!(release(&mut app, &a.reservation_id.unwrap()));
    // A record (written as the extension's owner), a release, the status and the stats view.
    let s = format!("{role}_s");
    enroll(&mut su, &s, "unlimited", r#"{"requests_per_day": 10}"#);
    let a = admit(&mut app, &s, 10);
    assert!(a.allowed, "{:?}", a.reason);
    assert!(record(&mut app, &s, 10, 5, a.reservation_id.as_ref().unwrap()));
    let b = admit(&mut app, &s, 10);
    assert!(release(&mut app, b.reservation_id.as_ref().unwrap()));
    assert_eq!(quota(&mut app, &s, "requests_per_day"), (1, 0));
    assert!(stat(&mut app, "admits_allowed") >= 3);
    // What the grants do not allow stays refused.
    assert_eq!(
        sqlstate(&mut app, "UPDATE control_plane.profiles SET requests_per_day = 1"),
        "42501"
    );
    assert_eq!(sqlstate(&mut app, "DELETE FROM control_plane.usage_events"), "42501");

    // Without SELECT on the ledger, a subject's first sight (a rebuild) and the status of a
    // subject shared memory does not hold fail with a privilege error, not an internal one: the
    // README's SELECT is needed.
    su.batch_execute(&format!("REVOKE SELECT ON control_plane.usage_events FROM {role}"))
        .unwrap();
    let mut app = Client::connect(&dsn_with("user", &role), NoTls).unwrap();
    let t = format!("{role}_t");
    assert_eq!(
        sqlstate(&mut app, &format!("SELECT * FROM control_plane.cp_admit('{t}')")),
        "42501"
    );
    assert_eq!(
        sqlstate(
            &mut app,
            &format!("SELECT control_plane.cp_quota_status('{role}_unknown')")
        ),
        "42501"
    );
    drop(app);
    su.batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role};"))
        .unwrap();
}

#[test]
fn two_databases_of_one_server_count_separately() {
    let mut su = connect();
    let db = format!("{}_db2", run_id());
    let mut other = new_database(&mut su, &db);
    // The same tenant and subject name in both, one request a day each.
    let s = format!("{db}_s");
    for c in [&mut su, &mut other] {
        enroll(c, &s, "unlimited", r#"{"requests_per_day": 1}"#);
    }
    let mine = admit(&mut su, &s, 0);
    assert!(mine.allowed);
    assert!(admit(&mut other, &s, 0).allowed, "the other database has its own quota");
    assert!(!admit(&mut su, &s, 0).allowed);
    assert!(!admit(&mut other, &s, 0).allowed);
    assert_eq!(quota(&mut su, &s, "requests_per_day"), (0, 1));
    assert_eq!(quota(&mut other, &s, "requests_per_day"), (0, 1));
    // A reservation of one database is unknown in the other.
    let a = {
        enroll(&mut other, &format!("{s}2"), "unlimited", r#"{"max_concurrent": 5}"#);
        admit(&mut other, &format!("{s}2"), 0)
    };
    assert!(!release(&mut su, a.reservation_id.as_ref().unwrap()));
    assert!(release(&mut other, a.reservation_id.as_ref().unwrap()));
    assert!(release(&mut su, &mine.reservation_id.unwrap()));
    drop(other);
    // The other database's flusher may still be connected to it.
    drop_database(&mut su, &db);
}

/// The answers of `cp_release` and of `cp_record_usage`'s settlement for `id`, in `c`.
fn answers(c: &mut Client, subject: &str, id: &str) -> (bool, bool) {
    let settled: bool = c
        .query_one(
            "SELECT reservation_settled FROM control_plane.cp_record_usage($1, 1, 1, reservation_id => $2::text::uuid)",
            &[&subject, &id],
        )
        .unwrap()
        .get(0);
    (release(c, id), settled)
}

#[test]
fn a_reservation_id_is_a_capability_that_tells_nothing() {
    let mut su = connect();
    let s = format!("{}_cap", run_id());
    enroll(&mut su, &s, "unlimited", r#"{"max_concurrent": 5000}"#);
    // 2,000 ids: every byte but the version and variant bits takes about every value (a slot
    // number or a clock in them would not).
    let ids: Vec<String> = su
        .query(
            "SELECT a.reservation_id::text FROM generate_series(1, 2000) g,
                    LATERAL control_plane.cp_admit($1, 0 * g) a",
            &[&s],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let bytes: Vec<Vec<u8>> = ids
        .iter()
        .map(|id| {
            let hex = id.replace('-', "");
            (0..16)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
                .collect()
        })
        .collect();
    for pos in 0..16 {
        let mut seen = std::collections::HashSet::new();
        for b in &bytes {
            let v = match pos {
                6 => b[6] & 0x0f,
                8 => b[8] & 0x3f,
                _ => b[pos],
            };
            seen.insert(v);
        }
        let want = match pos {
            6 => 16,
            8 => 64,
            _ => 200,
        };
        assert!(seen.len() >= want, "byte {pos} of the ids takes {} values", seen.len());
        if pos == 6 {
            assert!(bytes.iter().all(|b| b[6] >> 4 == 4), "version 4");
        }
    }
    for id in &ids {
        assert!(release(&mut su, id));
    }

    // Another subject's, another tenant's, an unknown and a settled id: one answer.
    let other = format!("{s}_other");
    enroll(&mut su, &other, "unlimited", "{}");
    let mut tenant_b = connect();
    tenant_b.batch_execute("SET control_plane.tenant = 'cap_b'").unwrap();
    tenant_b
        .batch_execute(&format!(
            "INSERT INTO control_plane.subjects (tenant_id, subject_id, profile) VALUES ('cap_b', '{s}', 'unlimited')"
        ))
        .unwrap();
    let open = admit(&mut su, &s, 0).reservation_id.unwrap();
    let unknown = "6f1c2a3b-4d5e-4f60-8a7b-8c9d0e1f2a3b";
    assert_eq!(
        answers(&mut su, &other, &open),
        (true, false),
        "another subject may release, not settle"
    );
    let open = admit(&mut su, &s, 0).reservation_id.unwrap();
    let want = (false, false);
    assert_eq!(answers(&mut tenant_b, &s, &open), want, "another tenant's id");
    assert_eq!(answers(&mut su, &s, unknown), want, "an unknown id");
    // Being settled by an open transaction of its owner: no 55000 for anyone else.
    let mut owner = connect();
    owner
        .batch_execute(&format!(
            "BEGIN; SELECT control_plane.cp_record_usage('{s}', 1, 1, reservation_id => '{open}')"
        ))
        .unwrap();
    assert_eq!(
        answers(&mut tenant_b, &s, &open),
        want,
        "another tenant's id being settled"
    );
    owner.batch_execute("COMMIT").unwrap();
    assert_eq!(answers(&mut su, &s, &open), want, "a settled id");
}
