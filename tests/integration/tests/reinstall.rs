//! What outlives a table row: a dropped and re-created extension starts from empty shared
//! memory in its database, and a profile cannot go while a subject is being enrolled into it.

use control_plane_integration::*;
use std::time::Duration;

#[test]
fn a_new_installation_starts_from_empty_shared_memory() {
    let mut su = connect();
    let db = format!("{}_reinstall", run_id());
    let mut c = new_database(&mut su, &db);
    let plan = r#"{"requests_per_day": 100, "max_concurrent": 10}"#;
    enroll(&mut c, "s", "unlimited", plan);
    for _ in 0..3 {
        let a = admit(&mut c, "s", 10);
        assert!(record(&mut c, "s", 10, 1, a.reservation_id.as_deref().unwrap()));
    }
    // One reservation left open (it would expire in a second), then the extension goes and comes
    // back.
    c.batch_execute("SET control_plane.reservation_timeout = 1").unwrap();
    assert!(admit(&mut c, "s", 10).allowed);
    assert_eq!(quota(&mut c, "s", "requests_per_day"), (3, 1));
    c.batch_execute("DROP EXTENSION control_plane; CREATE EXTENSION control_plane")
        .unwrap();
    enroll(&mut c, "s", "unlimited", plan);
    assert_eq!(quota(&mut c, "s", "requests_per_day"), (0, 0));
    // The old reservation is not charged into the new ledger.
    std::thread::sleep(Duration::from_millis(2500));
    let rows: i64 = c
        .query_one("SELECT count(*) FROM control_plane.usage_events", &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
    assert_eq!(quota(&mut c, "s", "requests_per_day"), (0, 0));
    drop(c);
    drop_database(&mut su, &db);
}

/// Runs `sql` in a new connection on another thread: its SQLSTATE ("ok" when it succeeded).
fn in_thread(sql: String) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut c = connect();
        sqlstate(&mut c, &sql)
    })
}

#[test]
fn a_profile_cannot_be_deleted_while_a_subject_is_enrolled_into_it() {
    let mut admin = connect();
    let id = run_id();
    let (p1, p2) = (format!("{id}_p1"), format!("{id}_p2"));
    admin
        .batch_execute(&format!(
            "INSERT INTO control_plane.profiles (name) VALUES ('{p1}'), ('{p2}')"
        ))
        .unwrap();
    // The subject's insert first: the delete waits for it, then finds the subject.
    admin
        .batch_execute(&format!(
            "BEGIN; INSERT INTO control_plane.subjects (subject_id, profile) VALUES ('{id}_s1', '{p1}')"
        ))
        .unwrap();
    let delete = in_thread(format!("DELETE FROM control_plane.profiles WHERE name = '{p1}'"));
    std::thread::sleep(Duration::from_millis(500));
    assert!(!delete.is_finished(), "the delete did not wait for the enrolment");
    admin.batch_execute("COMMIT").unwrap();
    assert_eq!(delete.join().unwrap(), "23503");
    // The delete first: the enrolment waits for it, then finds no profile.
    admin
        .batch_execute(&format!(
            "BEGIN; DELETE FROM control_plane.profiles WHERE name = '{p2}'"
        ))
        .unwrap();
    let insert = in_thread(format!(
        "INSERT INTO control_plane.subjects (subject_id, profile) VALUES ('{id}_s2', '{p2}')"
    ));
    std::thread::sleep(Duration::from_millis(500));
    assert!(!insert.is_finished(), "the enrolment did not wait for the delete");
    admin.batch_execute("COMMIT").unwrap();
    assert_eq!(insert.join().unwrap(), "23503");
    let dangling: i64 = admin
        .query_one(
            "SELECT count(*) FROM control_plane.subjects s
              WHERE NOT EXISTS (SELECT 1 FROM control_plane.profiles p
                                 WHERE p.name = s.profile AND p.tenant_id IN (s.tenant_id, '*'))",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(dangling, 0);
    admin
        .batch_execute(&format!(
            "DELETE FROM control_plane.subjects WHERE subject_id = '{id}_s1';
             DELETE FROM control_plane.profiles WHERE name = '{p1}'"
        ))
        .unwrap();
}
