//! Who may write the ledger and the subjects, and what a direct write can do to the totals.
//!
//! An application role has the README's grants (reads only): enrolment and recording write as
//! the extension's owner. An import job has the README's column grant. A role that was given
//! more (INSERT on the whole table, as an install of 0.1.0 documented) still cannot write the
//! extension's kinds of rows, nor make sealing count another transaction's row, nor leave a
//! rolled-back row in the totals of shared memory.

use control_plane_integration::*;
use postgres::{Client, NoTls};

/// The database, its application role, import role and full-INSERT role; dropped by `done`.
struct Setup {
    db: String,
    app: String,
    import: String,
    writer: String,
    su: Client,
    admin: Client,
}

fn setup() -> Setup {
    let mut su = connect();
    let id = run_id();
    let db = format!("{id}_rights");
    let (app, import, writer) = (format!("{id}_app"), format!("{id}_import"), format!("{id}_writer"));
    for r in [&app, &import, &writer] {
        su.batch_execute(&format!("CREATE ROLE {r} LOGIN")).unwrap();
    }
    let mut admin = new_database(&mut su, &db);
    admin.batch_execute("SET control_plane.ledger_retention = 0").unwrap();
    grant_app(&mut admin, &app);
    grant_app(&mut admin, &import);
    grant_import(&mut admin, &import);
    grant_app(&mut admin, &writer);
    admin
        .batch_execute(&format!("GRANT INSERT ON control_plane.usage_events TO {writer}"))
        .unwrap();
    Setup {
        db,
        app,
        import,
        writer,
        su,
        admin,
    }
}

impl Setup {
    fn as_role(&self, role: &str) -> Client {
        Client::connect(&dsn_for(role, &self.db), NoTls).unwrap()
    }

    fn done(mut self) {
        drop(self.admin);
        drop_database(&mut self.su, &self.db);
        for r in [&self.app, &self.import, &self.writer] {
            self.su.batch_execute(&format!("DROP ROLE {r}")).unwrap();
        }
    }
}

/// Requests used today by `subject`, as `cp_quota_status` in `c` sees it.
fn used(c: &mut Client, subject: &str) -> i64 {
    c.query_one(
        "SELECT (control_plane.cp_quota_status($1)->'quotas'->'requests_per_day'->>'used')::bigint",
        &[&subject],
    )
    .unwrap()
    .get::<_, Option<i64>>(0)
    .unwrap_or(0)
}

/// Requests of `subject` in the ledger today (UTC, the default tenant's zone).
fn ledger_requests(c: &mut Client, subject: &str) -> i64 {
    c.query_one(
        "SELECT coalesce(sum(requests), 0)::bigint FROM control_plane.usage_events
          WHERE subject_id = $1 AND created_at >= date_trunc('day', now(), 'UTC')",
        &[&subject],
    )
    .unwrap()
    .get(0)
}

#[test]
fn an_application_writes_the_ledger_and_the_subjects_only_through_the_functions() {
    let mut s = setup();
    let mut app = s.as_role(&s.app);
    for sql in [
        "INSERT INTO control_plane.usage_events (tenant_id, subject_id, input_tokens, output_tokens)
             VALUES ('default', 'x', 1, 1)",
        "INSERT INTO control_plane.subjects (subject_id, profile) VALUES ('x', 'unlimited')",
        "UPDATE control_plane.subjects SET active = true",
    ] {
        assert_eq!(sqlstate(&mut app, sql), "42501", "{sql}");
    }
    // Enrolment (in the tenant's default profile) and recording need no write grant.
    let a = admit(&mut app, "newcomer", 10);
    assert!(a.allowed);
    assert!(record(
        &mut app,
        "newcomer",
        10,
        5,
        a.reservation_id.as_deref().unwrap()
    ));
    let profile: String = s
        .admin
        .query_one(
            "SELECT profile FROM control_plane.subjects WHERE subject_id = 'newcomer'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(profile, "free");
    assert_eq!(ledger_requests(&mut s.admin, "newcomer"), 1);
    drop(app);
    s.done();
}

#[test]
fn an_import_job_writes_usage_rows_only() {
    let s = setup();
    let mut import = s.as_role(&s.import);
    let mut writer = s.as_role(&s.writer);
    let row = "INSERT INTO control_plane.usage_events (tenant_id, subject_id, input_tokens, output_tokens)";
    // The column grant: usage rows, no id, no kind.
    assert_eq!(
        sqlstate(&mut import, &format!("{row} VALUES ('default', 'imp', 3, 4)")),
        "ok"
    );
    for sql in [
        "INSERT INTO control_plane.usage_events (id, tenant_id, subject_id, input_tokens, output_tokens)
             OVERRIDING SYSTEM VALUE VALUES (1000000, 'default', 'imp', 1, 1)",
        "INSERT INTO control_plane.usage_events (tenant_id, subject_id, kind, requests, input_tokens, output_tokens)
             VALUES ('default', 'imp', 'expired_reversed', -1, -1, 0)",
    ] {
        assert_eq!(sqlstate(&mut import, sql), "42501", "{sql}");
    }
    // INSERT on the whole table: still no row of the extension's kinds, and amounts bounded as
    // in the API.
    for (sql, want) in [
        (
            "INSERT INTO control_plane.usage_events (tenant_id, subject_id, kind, requests, input_tokens, output_tokens)
                 VALUES ('default', 'imp', 'expired_reversed', -1, -1, 0)",
            "42501",
        ),
        (
            "INSERT INTO control_plane.usage_events (tenant_id, subject_id, kind, requests, input_tokens, output_tokens)
                 VALUES ('default', 'imp', 'expired', 1, 1, 0)",
            "42501",
        ),
        (
            "INSERT INTO control_plane.usage_events (tenant_id, subject_id, kind, requests, input_tokens, output_tokens)
                 VALUES ('default', 'imp', 'rollup', 5, 1, 0)",
            "42501",
        ),
        (
            "INSERT INTO control_plane.usage_events (tenant_id, subject_id, input_tokens, output_tokens)
                 VALUES ('default', 'imp', 9223372036854775807, 0)",
            "23514",
        ),
        (
            "INSERT INTO control_plane.usage_events (tenant_id, subject_id, requests, input_tokens, output_tokens)
                 VALUES ('default', 'imp', 1000, 0, 0)",
            "23514",
        ),
    ] {
        assert_eq!(sqlstate(&mut writer, sql), want, "{sql}");
    }
    drop((import, writer));
    s.done();
}

/// A direct row counts in shared memory when its transaction commits, and never after a
/// rollback, even when a rebuild inside the transaction counted it.
#[test]
fn a_direct_row_reaches_the_totals_at_commit_and_never_after_a_rollback() {
    let mut s = setup();
    let mut app = s.as_role(&s.app);
    let mut import = s.as_role(&s.import);
    // One committed row of a subject that shared memory does not hold yet.
    enroll(&mut s.admin, "victim", "pro", "{}");
    s.admin
        .batch_execute(
            "INSERT INTO control_plane.usage_events (tenant_id, subject_id, input_tokens, output_tokens)
                 VALUES ('default', 'victim', 1, 1)",
        )
        .unwrap();
    // Rows inserted, counted by the rebuild of a call in the same transaction, rolled back.
    import
        .batch_execute(
            "BEGIN;
             INSERT INTO control_plane.usage_events (tenant_id, subject_id, input_tokens, output_tokens)
                 SELECT 'default', 'victim', 0, 0 FROM generate_series(1, 50);",
        )
        .unwrap();
    assert_eq!(used(&mut import, "victim"), 51, "the transaction sees its own rows");
    import.batch_execute("ROLLBACK").unwrap();
    assert_eq!(used(&mut app, "victim"), 1, "a rolled-back import stayed in the totals");
    // Committed, while shared memory holds the entry: every backend counts it at once, without
    // a restart or an eviction.
    let a = admit(&mut app, "victim", 0);
    assert!(record(&mut app, "victim", 1, 1, a.reservation_id.as_deref().unwrap()));
    assert_eq!(used(&mut app, "victim"), 2);
    import
        .batch_execute(
            "INSERT INTO control_plane.usage_events (tenant_id, subject_id, input_tokens, output_tokens)
                 SELECT 'default', 'victim', 0, 0 FROM generate_series(1, 5)",
        )
        .unwrap();
    assert_eq!(used(&mut app, "victim"), 7);
    assert_eq!(ledger_requests(&mut s.admin, "victim"), 7);
    drop((app, import));
    s.done();
}

/// A row dated inside the seal is added to its bucket at commit only if this transaction
/// inserted it and still holds it: an id named by an insert that was skipped or rolled back
/// belongs to another transaction's row, already in its bucket.
#[test]
fn sealing_counts_only_rows_the_transaction_inserted() {
    let mut s = setup();
    let mut writer = s.as_role(&s.writer);
    s.admin
        .batch_execute(
            "INSERT INTO control_plane.usage_events (tenant_id, subject_id, input_tokens, output_tokens, created_at)
                 VALUES ('default', 'sealed', 7, 0, now() - interval '2 hours')",
        )
        .unwrap();
    let caught_up = (0..60).any(|_| {
        s.admin
            .query_one("SELECT control_plane.cp_cleanup() -> 'seal' ->> 'caught_up'", &[])
            .unwrap()
            .get::<_, Option<String>>(0)
            .as_deref()
            == Some("true")
    });
    assert!(caught_up);
    let bucket = |c: &mut Client| -> i64 {
        c.query_one(
            "SELECT coalesce(sum(requests), 0)::bigint FROM control_plane.usage_buckets
              WHERE who = 'sealed' AND scope = 'subject'",
            &[],
        )
        .unwrap()
        .get(0)
    };
    assert_eq!(bucket(&mut s.admin), 1);
    let id: i64 = s
        .admin
        .query_one(
            "SELECT id FROM control_plane.usage_events WHERE subject_id = 'sealed'",
            &[],
        )
        .unwrap()
        .get(0);
    let named = format!(
        "INSERT INTO control_plane.usage_events (id, tenant_id, subject_id, input_tokens, output_tokens, created_at)
             OVERRIDING SYSTEM VALUE VALUES ({id}, 'default', 'sealed', 7, 0, now() - interval '2 hours')"
    );
    for _ in 0..3 {
        writer
            .batch_execute(&format!("{named} ON CONFLICT DO NOTHING"))
            .unwrap();
        writer.batch_execute("BEGIN; SAVEPOINT a;").unwrap();
        assert_eq!(sqlstate(&mut writer, &named), "23505");
        writer.batch_execute("ROLLBACK TO a; COMMIT").unwrap();
    }
    assert_eq!(bucket(&mut s.admin), 1, "a named id was counted again");
    // A row the transaction did insert is still bucketed.
    writer
        .batch_execute(
            "INSERT INTO control_plane.usage_events (tenant_id, subject_id, input_tokens, output_tokens, created_at)
                 VALUES ('default', 'sealed', 7, 0, now() - interval '2 hours')",
        )
        .unwrap();
    assert_eq!(bucket(&mut s.admin), 2);
    drop(writer);
    s.done();
}
