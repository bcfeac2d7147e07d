//! Every path of the extension that runs SQL, under a hostile `search_path`.
//!
//! An application role that owns a database (and so may set its default `search_path`) fills a
//! schema of its own and `pg_temp` with shadows of the operators, functions, aggregates and types
//! the extension's queries use; each shadow counts its calls in a sequence (not transactional, so
//! a call counts even when its transaction fails) and tries to make the role a superuser. Then
//! the role, a superuser session and the flusher (which connects under the database's default
//! `search_path`) drive every path: enrolment, policy reads, rebuilds from the ledger, recording,
//! idempotent retries, releases, status, cost reservations, money alerts, expiry charges written
//! by the flusher, late records that reverse them, sealing, rows bucketed at commit, compaction
//! and admin changes through the triggers. No shadow may ever be called, the role must stay an
//! ordinary one, and what a hostile session reads must not change what the next admission
//! enforces.

use control_plane_integration::*;
use postgres::{Client, NoTls};
use std::time::{Duration, Instant};

/// Shadows in schema `evil` (owned by the attacker): every pg_catalog operator on the types the
/// extension's queries use, aggregates, functions and domains (`tests/shadows.sql`).
const SHADOWS: &str = include_str!("../../shadows.sql");

/// The same in the session's own `pg_temp` (searched first for types unless the path names it
/// later, and for functions when the path names it).
const TEMP_SHADOWS: &str = r#"
CREATE DOMAIN pg_temp.text AS pg_catalog.text CHECK (evil.hit());
CREATE DOMAIN pg_temp.jsonb AS pg_catalog.jsonb CHECK (evil.hit());
CREATE DOMAIN pg_temp.timestamptz AS pg_catalog.timestamptz CHECK (evil.hit());
CREATE DOMAIN pg_temp.uuid AS pg_catalog.uuid CHECK (evil.hit());
CREATE FUNCTION pg_temp.now() RETURNS timestamptz LANGUAGE plpgsql AS
    $b$ BEGIN PERFORM evil.hit(); RETURN pg_catalog.now(); END $b$;
CREATE FUNCTION pg_temp.to_jsonb(v anyelement) RETURNS jsonb LANGUAGE plpgsql AS
    $b$ BEGIN PERFORM evil.hit(); RETURN pg_catalog.to_jsonb(v); END $b$;
"#;

/// The path of every hostile session.
const HOSTILE_PATH: &str = "SET search_path = pg_temp, evil, pg_catalog, public";

fn dsn(user: &str, db: &str) -> String {
    dsn_for(user, db)
}

fn calls(c: &mut Client) -> i64 {
    let r = c
        .query_one(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM evil.calls",
            &[],
        )
        .unwrap();
    r.get(0)
}

/// A hostile session: the attacker's path, its `pg_temp` shadows.
fn hostile(user: &str, db: &str) -> Client {
    let mut c = Client::connect(&dsn(user, db), NoTls).unwrap();
    c.batch_execute(TEMP_SHADOWS).unwrap();
    c.batch_execute(HOSTILE_PATH).unwrap();
    c
}

/// Runs a call of the extension in a hostile session; its statement has no operator, function
/// or type name of its own, so only the extension can call a shadow.
fn call(c: &mut Client, sql: &str) -> postgres::Row {
    c.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn hostile_admit(c: &mut Client, subject: &str, extra: &str) -> (bool, Option<String>, String) {
    let r = call(
        c,
        &format!("SELECT allowed, reservation_id::pg_catalog.text, decision FROM control_plane.cp_admit('{subject}', 100{extra})"),
    );
    (r.get(0), r.get(1), r.get(2))
}

#[test]
fn no_shadow_is_ever_called_by_any_path() {
    let mut su = connect();
    let slots_in_use = stat(&mut su, "reservations_in_use");
    let id = run_id();
    let (role, db) = (format!("{id}_mallory"), format!("{id}_hostile"));
    su.batch_execute(&format!("CREATE ROLE {role} LOGIN")).unwrap();
    su.batch_execute(&format!("CREATE DATABASE {db} OWNER {role}")).unwrap();
    // The extension as the superuser installs it, with the README's grants to the application.
    let mut admin = Client::connect(&dsn("postgres", &db), NoTls).unwrap();
    admin
        .batch_execute(&format!(
            "CREATE EXTENSION control_plane;
             ALTER ROLE {role} IN DATABASE {db} SET control_plane.reservation_timeout = 1;
             ALTER ROLE postgres IN DATABASE {db} SET control_plane.ledger_retention = '9d';
             INSERT INTO control_plane.model_prices (tenant_id, model, input_micros_per_million,
                     output_micros_per_million, effective_from)
                 VALUES ('*', 'm', 1000000, 1000000, '-infinity');
             INSERT INTO control_plane.profiles (name, requests_per_day, daily_budget_cents, default_model)
                 VALUES ('metered', 1000, 100, 'm');
             INSERT INTO control_plane.profiles (name, requests_per_day, is_default) VALUES ('house', 100000, true);
             INSERT INTO control_plane.subjects (subject_id, profile, overrides)
                 VALUES ('capped', 'unlimited', '{{\"requests_per_day\": 2}}'),
                        ('blocked', 'unlimited', '{{\"blocked_models\": [\"x\"]}}'),
                        ('payer', 'metered', '{{}}');"
        ))
        .unwrap();
    grant_app(&mut admin, &role);
    // The attacker's shadows, and the database's default path pointed at them (the database
    // owner may): every later session, the flusher's included, starts with it.
    let mut attacker = Client::connect(&dsn(&role, &db), NoTls).unwrap();
    attacker
        .batch_execute(&format!("CREATE SCHEMA evil; {}", SHADOWS.replace("@ROLE@", &role)))
        .unwrap();
    attacker
        .batch_execute(&format!(
            "ALTER DATABASE {db} SET search_path = evil, pg_catalog, public"
        ))
        .unwrap();
    // The shadows work: an unqualified `=`, `count`, `::text` and `now()` in a hostile session
    // call them.
    let mut m = hostile(&role, &db);
    m.batch_execute("SELECT count(*) FROM pg_catalog.pg_class WHERE 'a'::text = 'a' AND now() IS NOT NULL")
        .unwrap();
    let control = calls(&mut m);
    assert!(
        control >= 4,
        "the shadows were not called by a query that names them: {control}"
    );
    m.batch_execute("SELECT pg_catalog.setval('evil.calls', 1, false)")
        .unwrap();
    assert_eq!(calls(&mut m), 0);

    // ---- the application role, in its hostile session
    // Enrolment, the first rebuild, policy reads, a reservation and its record.
    let (ok, rid, _) = hostile_admit(&mut m, "newcomer", "");
    assert!(ok);
    call(
        &mut m,
        &format!("SELECT event_id FROM control_plane.cp_record_usage('newcomer', 10, 5, reservation_id => '{}', metadata => '{{\"a\": 1}}')", rid.unwrap()),
    );
    // Idempotent retry, release, status.
    for _ in 0..2 {
        call(
            &mut m,
            "SELECT event_id FROM control_plane.cp_record_usage('newcomer', 1, 1, idempotency_key => 'k1')",
        );
    }
    let (_, rid, _) = hostile_admit(&mut m, "newcomer", "");
    call(&mut m, &format!("SELECT control_plane.cp_release('{}')", rid.unwrap()));
    call(&mut m, "SELECT control_plane.cp_quota_status('newcomer')");
    // A subject's overrides, read in this session, are what every session enforces.
    assert!(hostile_admit(&mut m, "capped", "").0);
    assert!(hostile_admit(&mut m, "capped", "").0);
    assert!(
        !hostile_admit(&mut m, "capped", "").0,
        "requests_per_day = 2 admitted a third request"
    );
    assert!(
        !hostile_admit(&mut m, "blocked", ", model => 'x'").0,
        "a blocked model was admitted"
    );
    // Money: cost reservations to the budget, its alerts (warning, emergency, limit), records.
    for _ in 0..30 {
        let (ok, rid, _) = hostile_admit(&mut m, "payer", ", max_output_tokens => 50000");
        let Some(rid) = rid.filter(|_| ok) else { break };
        call(
            &mut m,
            &format!("SELECT cost_micros FROM control_plane.cp_record_usage('payer', 100, 50000, model => 'm', reservation_id => '{rid}')"),
        );
    }
    // Admissions never recorded: the flusher charges them (under the database's hostile path),
    // and a late record reverses one charge.
    let (_, late, _) = hostile_admit(&mut m, "newcomer", "");
    let late = late.unwrap();
    let mut clean = Client::connect(&dsn("postgres", &db), NoTls).unwrap();
    clean.batch_execute("SET search_path = pg_catalog").unwrap();
    let start = Instant::now();
    while clean
        .query_one(
            "SELECT count(*) FROM control_plane.usage_events WHERE kind = 'expired' AND metadata -> 'expired_reservations' ? $1",
            &[&late],
        )
        .unwrap()
        .get::<_, i64>(0)
        == 0
    {
        assert!(start.elapsed() < Duration::from_secs(30), "the flusher wrote no charge");
        std::thread::sleep(Duration::from_millis(200));
    }
    call(
        &mut m,
        &format!("SELECT event_id FROM control_plane.cp_record_usage('newcomer', 3, 3, reservation_id => '{late}')"),
    );
    assert_eq!(
        calls(&mut clean),
        0,
        "a shadow ran in the application's paths or the flusher's"
    );

    // ---- a superuser session under the hostile path: sealing, rows bucketed at commit,
    // compaction, and admin changes through the triggers.
    let mut s = hostile("postgres", &db);
    // A row old enough to be compacted (ledger_retention is 9 days here), then sealing and
    // compaction until caught up, then a row dated inside the seal (bucketed at its commit).
    let insert_dated = |s: &mut Client, age: &str| {
        s.batch_execute(&format!(
            "INSERT INTO control_plane.usage_events (tenant_id, subject_id, input_tokens, output_tokens, created_at)
                 VALUES ('default', 'newcomer', 7, 0, pg_catalog.now() OPERATOR(pg_catalog.-) interval '{age}')"
        ))
        .unwrap()
    };
    insert_dated(&mut s, "20 days");
    for _ in 0..40 {
        call(&mut s, "SELECT control_plane.cp_cleanup()");
    }
    insert_dated(&mut s, "2 hours");
    call(&mut s, "SELECT control_plane.cp_cleanup()");
    s.batch_execute(
        "UPDATE control_plane.profiles SET requests_per_day = 999 WHERE name OPERATOR(pg_catalog.=) 'metered';
         UPDATE control_plane.subjects SET overrides = '{\"requests_per_day\": 3}' WHERE subject_id OPERATOR(pg_catalog.=) 'capped';
         INSERT INTO control_plane.profiles (name) VALUES ('another');
         DELETE FROM control_plane.profiles WHERE name OPERATOR(pg_catalog.=) 'another';",
    )
    .unwrap();
    // The new override is obeyed, read under the hostile path.
    assert!(hostile_admit(&mut m, "capped", "").0);
    assert!(!hostile_admit(&mut m, "capped", "").0);
    // A rebuild from the ledger and its buckets, for a subject shared memory does not hold.
    call(&mut s, "SELECT control_plane.cp_quota_status('never_admitted')");

    assert_eq!(calls(&mut clean), 0, "a shadow ran in a superuser's paths");
    let superuser: bool = clean
        .query_one("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = $1", &[&role])
        .unwrap()
        .get(0);
    assert!(!superuser, "the application role became a superuser");
    let rollups: i64 = clean
        .query_one(
            "SELECT count(*) FROM control_plane.usage_events WHERE kind = 'rollup'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(rollups >= 1, "compaction did not run");
    let alerts: i64 = clean
        .query_one(
            "SELECT count(*) FROM control_plane.alerts WHERE subject_id = 'payer'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(alerts >= 1, "no money alert was written");

    // Every reservation of this database expired and was written before it is dropped: nothing
    // is left in the server's reservation table for the tests that count its slots.
    let start = Instant::now();
    while stat(&mut su, "reservations_in_use") > slots_in_use {
        assert!(start.elapsed() < Duration::from_secs(30), "reservations left behind");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop((m, s, clean, attacker, admin));
    drop_database(&mut su, &db);
    su.batch_execute(&format!("DROP ROLE {role}")).unwrap();
}

/// A role that may create schemas in a database made `control_plane` first: the extension
/// refuses to install into it.
#[test]
fn a_squatted_schema_is_refused() {
    let mut su = connect();
    let id = run_id();
    let (role, db) = (format!("{id}_squatter"), format!("{id}_squatted"));
    su.batch_execute(&format!("CREATE ROLE {role} LOGIN")).unwrap();
    su.batch_execute(&format!("CREATE DATABASE {db} OWNER {role}")).unwrap();
    let mut squatter = Client::connect(&dsn(&role, &db), NoTls).unwrap();
    squatter.batch_execute("CREATE SCHEMA control_plane").unwrap();
    let mut admin = Client::connect(&dsn("postgres", &db), NoTls).unwrap();
    let err = admin.batch_execute("CREATE EXTENSION control_plane").unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err}");
    // Dropped, the schema is the extension's own when it creates it.
    squatter.batch_execute("DROP SCHEMA control_plane").unwrap();
    admin.batch_execute("CREATE EXTENSION control_plane").unwrap();
    let owner_is_installer: bool = admin
        .query_one(
            "SELECT nspowner = (SELECT oid FROM pg_roles WHERE rolname = current_user)
               FROM pg_namespace WHERE nspname = 'control_plane'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(owner_is_installer);
    drop((squatter, admin));
    drop_database(&mut su, &db);
    su.batch_execute(&format!("DROP ROLE {role}")).unwrap();
}

/// What only the extension and its admins may touch: the trigger helpers, cp_cleanup, the
/// enforcement settings, and the locks of cp_cleanup (which no SQL lock function can take).
#[test]
fn internals_are_out_of_an_application_roles_reach() {
    let mut su = connect();
    let role = format!("{}_app", run_id());
    su.batch_execute(&format!("CREATE ROLE {role} LOGIN")).unwrap();
    grant_app(&mut su, &role);
    let mut app = Client::connect(&dsn_with("user", &role), NoTls).unwrap();
    for sql in [
        "SELECT control_plane._policy_changed()",
        "SELECT control_plane._subject_changed('default', 'x')",
        "SELECT control_plane._profile_changed(1)",
        "SELECT control_plane.cp_cleanup()",
        "SELECT control_plane._tenant_time_zone('other')",
        "SELECT * FROM control_plane._model_prices('other', 'm')",
        "SELECT * FROM control_plane._organization('other', 'acme')",
        "SET control_plane.warn_threshold = 1",
        "SET control_plane.emergency_threshold = 1",
        "SET control_plane.default_max_output_tokens = 0",
        "SET control_plane.reservation_timeout = 1",
    ] {
        assert_eq!(sqlstate(&mut app, sql), "42501", "{sql}");
    }
    // No trigger function of the extension can be attached to a table of the role's own (a
    // SECURITY DEFINER one would run there as the extension's owner, casts of the role's types
    // included).
    for (i, f) in [
        "_subjects_profile_exists",
        "_profiles_in_use",
        "_subjects_changed",
        "_profiles_changed",
        "_policy_changed_trigger",
        "_usage_events_row_check",
        "_usage_events_append_only",
        "_touch_updated_at",
    ]
    .iter()
    .enumerate()
    {
        app.batch_execute(&format!("CREATE TEMP TABLE t{i} (tenant_id text, subject_id text)"))
            .unwrap();
        let sql = format!("CREATE TRIGGER t{i} AFTER INSERT ON t{i} FOR EACH ROW EXECUTE FUNCTION control_plane.{f}()");
        assert_eq!(sqlstate(&mut app, &sql), "42501", "{sql}");
    }
    // An admin's change still reaches every backend through the triggers (which run as the
    // extension's owner).
    let s = format!("{role}_s");
    enroll(&mut su, &s, "unlimited", r#"{"requests_per_day": 1}"#);
    let first = admit(&mut app, &s, 0);
    assert!(first.allowed);
    assert!(!admit(&mut app, &s, 0).allowed);
    enroll(&mut su, &s, "unlimited", r#"{"requests_per_day": 2}"#);
    let second = admit(&mut app, &s, 0);
    assert!(second.allowed);
    // Nothing stays held for the tests that count reservation slots.
    for a in [first, second] {
        assert!(release(&mut app, a.reservation_id.as_deref().unwrap()));
    }
    // The advisory locks SQL can take do not stop sealing or compaction.
    app.batch_execute(
        "SELECT pg_advisory_lock(1668243311, 2), pg_advisory_lock(1668243311, 3);
         SELECT pg_advisory_lock(1668243311::bigint << 32 | 3)",
    )
    .unwrap();
    su.batch_execute("SET control_plane.ledger_retention = '9d'").unwrap();
    let r: String = su
        .query_one("SELECT control_plane.cp_cleanup()::text", &[])
        .unwrap()
        .get(0);
    su.batch_execute("RESET control_plane.ledger_retention").unwrap();
    assert!(!r.contains("skipped") && !r.contains("\"retention\": \"off\""), "{r}");
    app.batch_execute("SELECT pg_advisory_unlock_all()").unwrap();
    drop(app);
    su.batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .unwrap();
}

/// Runs cp_cleanup in `c` until its seal is caught up (true) or `runs` runs did not get there.
fn seal_catches_up(c: &mut Client, runs: usize) -> bool {
    (0..runs).any(|_| {
        let r: String = c
            .query_one("SELECT control_plane.cp_cleanup() -> 'seal' ->> 'caught_up'", &[])
            .unwrap()
            .get::<_, Option<String>>(0)
            .unwrap_or_default();
        r == "true"
    })
}

/// A ledger row dated in the past publishes its time before it waits for the seal lock: a
/// statement cancelled in that wait must not leave it behind (sealing would stop there for
/// good), and an open transaction of another database must not hold this one's sealing back.
#[test]
fn a_published_row_time_holds_back_only_its_own_open_transactions_database() {
    let mut su = connect();
    let db = format!("{}_seal", run_id());
    let mut a = new_database(&mut su, &db);
    a.query_one("SELECT control_plane.cp_cleanup()", &[]).unwrap();
    // Another database's open transaction with a row dated 30 days back.
    let mut other = connect();
    other
        .batch_execute(
            "BEGIN; INSERT INTO control_plane.usage_events (tenant_id, subject_id, input_tokens, output_tokens, created_at)
                    VALUES ('default', 'held', 1, 0, now() - interval '30 days')",
        )
        .unwrap();
    // This database: a row dated 30 days back, cancelled while it waits for the seal lock that
    // a sealing holds.
    a.batch_execute("BEGIN; SELECT control_plane.cp_cleanup()").unwrap();
    let mut b = Client::connect(&dsn("postgres", &db), NoTls).unwrap();
    let err = b
        .batch_execute(
            "SET statement_timeout = 300;
             INSERT INTO control_plane.usage_events (tenant_id, subject_id, input_tokens, output_tokens, created_at)
                 VALUES ('default', 'late', 1, 0, now() - interval '30 days')",
        )
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    a.batch_execute("COMMIT").unwrap();
    // b stays connected and idle; other's transaction stays open.
    assert!(seal_catches_up(&mut a, 45), "sealing stopped at a row time left behind");
    other.batch_execute("ROLLBACK").unwrap();
    drop((a, b, other));
    drop_database(&mut su, &db);
}
