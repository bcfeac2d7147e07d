//! What separates callers: a role with only the grants the README documents, and two databases
//! of one server.

use control_plane_integration::*;
use postgres::{Client, NoTls};

#[test]
fn a_role_with_only_the_documented_grants_can_use_every_function() {
    let mut su = connect();
    let role = format!("{}_app", run_id());
    su.batch_execute(&format!("CREATE ROLE {role} LOGIN")).unwrap();
    grant_app(&mut su, &role);
    let mut app = Client::connect(&dsn_with("user", &role), NoTls).unwrap();
    // Enrolment of an unknown subject (INSERT into subjects) and its first ledger rebuild (SELECT
    // on usage_events).
    let a = admit(&mut app, &format!("{role}_new"), 0);
    assert!(a.allowed, "{:?}", a.reason);
    assert!(release(&mut app, &a.reservation_id.unwrap()));
    // A record (INSERT), a release, the status and the stats view.
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
    su.batch_execute(&format!("CREATE DATABASE {db}")).unwrap();
    let mut other = Client::connect(&dsn_with("dbname", &db), NoTls).unwrap();
    other.batch_execute("CREATE EXTENSION control_plane").unwrap();
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
    su.batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)")).unwrap();
}
