//! Helpers for the integration tests: connections to the cluster that scripts/test.sh starts.
//! These tests never link the extension; they talk to it over the wire like an application.

use postgres::{Client, NoTls};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run these tests through scripts/test.sh"))
}

pub fn connect() -> Client {
    connect_to("CP_DSN")
}

/// Connects to the cluster whose connection string is in the environment variable `var`.
pub fn connect_to(var: &str) -> Client {
    Client::connect(&env(var), NoTls).unwrap_or_else(|e| panic!("connect to {var}: {e}"))
}

/// The test cluster's connection string (`CP_DSN`) with another user or database.
pub fn dsn_with(key: &str, value: &str) -> String {
    env("CP_DSN")
        .split_whitespace()
        .map(|kv| {
            if kv.starts_with(&format!("{key}=")) {
                format!("{key}={value}")
            } else {
                kv.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The test cluster's connection string for `user` in database `db`.
pub fn dsn_for(user: &str, db: &str) -> String {
    dsn_with("user", user)
        .split_whitespace()
        .map(|kv| {
            if kv.starts_with("dbname=") {
                format!("dbname={db}")
            } else {
                kv.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Creates database `db` on the test cluster with control_plane installed, and connects to it
/// (as the cluster's superuser).
pub fn new_database(su: &mut Client, db: &str) -> Client {
    su.batch_execute(&format!("CREATE DATABASE {db}"))
        .expect("CREATE DATABASE");
    let mut c = Client::connect(&dsn_with("dbname", db), NoTls).expect("connect");
    c.batch_execute("CREATE EXTENSION control_plane")
        .expect("CREATE EXTENSION");
    c
}

/// Drops database `db`, ending its sessions (its flusher's too).
pub fn drop_database(su: &mut Client, db: &str) {
    su.batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .expect("DROP DATABASE");
}

/// Gives `role` the grants that the README ("Privileges") documents for an application role, in
/// the database of `c`: reads only (enrolment and recording write as the extension's owner).
pub fn grant_app(c: &mut Client, role: &str) {
    c.batch_execute(&format!(
        "GRANT SELECT ON control_plane.profiles, control_plane.subjects, control_plane.usage_events TO {role};"
    ))
    .expect("grant_app");
}

/// Gives `role` the grant that the README ("Privileges") documents for a job that imports usage
/// rows: INSERT on the ledger's columns of a usage row (not `id`, not `kind`).
pub fn grant_import(c: &mut Client, role: &str) {
    c.batch_execute(&format!(
        "GRANT INSERT (tenant_id, subject_id, org_id, model, feature, requests, input_tokens, output_tokens,
                       cost_micros, duration_ms, created_at, metadata, idempotency_key)
             ON control_plane.usage_events TO {role};"
    ))
    .expect("grant_import");
}

/// The SQLSTATE a statement fails with, or "ok".
pub fn sqlstate(c: &mut Client, sql: &str) -> String {
    match c.batch_execute(sql) {
        Ok(()) => "ok".into(),
        Err(e) => e.code().map(|s| s.code().to_string()).unwrap_or_else(|| format!("{e}")),
    }
}

/// Connects, retrying while the server restarts.
pub fn connect_retrying() -> Client {
    let start = Instant::now();
    loop {
        match Client::connect(&env("CP_DSN"), NoTls) {
            Ok(c) => return c,
            Err(e) if start.elapsed() < Duration::from_secs(60) => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("server did not come back: {e}"),
        }
    }
}

/// A prefix unique to this run, so the tests can run again against the same cluster.
pub fn run_id() -> String {
    let ns = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("it{}", ns % 1_000_000_000_000)
}

/// Puts `subject` on `profile` with `overrides` (JSON text).
pub fn enroll(c: &mut Client, subject: &str, profile: &str, overrides: &str) {
    c.execute(
        "INSERT INTO control_plane.subjects (subject_id, profile, overrides) VALUES ($1, $2, $3::text::jsonb)
         ON CONFLICT (tenant_id, subject_id) DO UPDATE SET profile = EXCLUDED.profile, overrides = EXCLUDED.overrides",
        &[&subject, &profile, &overrides],
    )
    .expect("enroll");
}

/// A shared price (tenant `'*'`, in force since always) for `model`: micro-units per million
/// input and output tokens.
pub fn shared_price(c: &mut Client, model: &str, input: i64, output: i64) {
    c.execute(
        "INSERT INTO control_plane.model_prices (tenant_id, model, input_micros_per_million, output_micros_per_million, effective_from)
         VALUES ('*', $1, $2, $3, '-infinity')",
        &[&model, &input, &output],
    )
    .expect("shared_price");
}

/// Creates organisation `org` (with `daily_budget_cents`, NULL when None) and puts `subjects` in it.
pub fn join_org(c: &mut Client, org: &str, daily_budget_cents: Option<i64>, subjects: &[String]) {
    c.execute(
        "INSERT INTO control_plane.organizations (org_id, daily_budget_cents) VALUES ($1, $2)",
        &[&org, &daily_budget_cents],
    )
    .expect("organization");
    c.execute(
        "UPDATE control_plane.subjects SET org_id = $1 WHERE subject_id = ANY($2)",
        &[&org, &subjects],
    )
    .expect("join organization");
}

/// (budget, spent, reserved, remaining) of today's money, in micro-units, of `subject` itself
/// (`scope` = "") or of its organisation (`scope` = "organization").
pub fn day_money_of(c: &mut Client, subject: &str, scope: &str) -> (i64, i64, i64, i64) {
    let r = c
        .query_one(
            "SELECT (m->>'budget_micros')::bigint, (m->>'spent_micros')::bigint,
                    (m->>'reserved_micros')::bigint, (m->>'remaining_micros')::bigint
               FROM (SELECT CASE WHEN $2 = '' THEN s->'money'->'day' ELSE s->$2->'money'->'day' END AS m
                       FROM control_plane.cp_quota_status($1) s) q",
            &[&subject, &scope],
        )
        .expect("cp_quota_status");
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

/// What `cp_quota_status` says `subject` spent today, in micro-units.
pub fn spent_today(c: &mut Client, subject: &str) -> i64 {
    c.query_one(
        "SELECT (control_plane.cp_quota_status($1)->'money'->'day'->>'spent_micros')::bigint",
        &[&subject],
    )
    .expect("spent_today")
    .get(0)
}

pub struct Admission {
    pub allowed: bool,
    pub reason: Option<String>,
    pub limit_name: Option<String>,
    pub remaining: Option<i64>,
    pub reservation_id: Option<String>,
}

impl Admission {
    /// From a row of (allowed, reason, limit_name, reservation_id::text, remaining).
    fn of(r: &postgres::Row) -> Admission {
        Admission {
            allowed: r.get(0),
            reason: r.get(1),
            limit_name: r.get(2),
            remaining: r.get(4),
            reservation_id: r.get(3),
        }
    }
}

pub fn admit(c: &mut Client, subject: &str, tokens: i64) -> Admission {
    let r = c
        .query_one(
            "SELECT allowed, reason, limit_name, reservation_id::text, remaining FROM control_plane.cp_admit($1, $2)",
            &[&subject, &tokens],
        )
        .expect("cp_admit");
    Admission::of(&r)
}

/// cp_admit(subject, tokens, model, max_output_tokens => 0): a cost estimate of the input tokens
/// alone.
pub fn admit_priced(c: &mut Client, subject: &str, tokens: i64, model: &str) -> Admission {
    let r = c
        .query_one(
            "SELECT allowed, reason, limit_name, reservation_id::text, remaining
               FROM control_plane.cp_admit($1, $2, $3, max_output_tokens => 0)",
            &[&subject, &tokens, &model],
        )
        .expect("cp_admit");
    Admission::of(&r)
}

/// One connection admits `tokens` input tokens of `model` for `subject` and records exactly that
/// (each record must cost `cost`), in a loop, until an admission is refused: how many were
/// admitted, and the refusal.
pub fn spend_until_refused(subject: &str, tokens: i64, model: &str, cost: i64) -> (i64, Admission) {
    let mut c = connect();
    let mut admitted = 0;
    loop {
        let a = admit_priced(&mut c, subject, tokens, model);
        if !a.allowed {
            return (admitted, a);
        }
        admitted += 1;
        let id = a.reservation_id.expect("a cost reservation");
        assert_eq!(record_priced(&mut c, subject, tokens, model, Some(&id)), Some(cost));
    }
}

/// cp_record_usage(subject, input, 0, model, reservation): its cost.
pub fn record_priced(c: &mut Client, subject: &str, input: i64, model: &str, id: Option<&str>) -> Option<i64> {
    c.query_one(
        "SELECT cost_micros FROM control_plane.cp_record_usage($1, $2, 0, $3, $4::text::uuid)",
        &[&subject, &input, &model, &id],
    )
    .expect("cp_record_usage")
    .get(0)
}

/// cp_record_usage(subject, input, output, reservation_id => id): whether it settled the
/// reservation.
pub fn record(c: &mut Client, subject: &str, input: i64, output: i64, id: &str) -> bool {
    c.query_one(
        "SELECT reservation_settled FROM control_plane.cp_record_usage($1, $2, $3, reservation_id => $4::text::uuid)",
        &[&subject, &input, &output, &id],
    )
    .expect("cp_record_usage")
    .get(0)
}

/// cp_release(id): true if the reservation was open.
pub fn release(c: &mut Client, id: &str) -> bool {
    c.query_one("SELECT control_plane.cp_release($1::text::uuid)", &[&id])
        .expect("cp_release")
        .get(0)
}

/// (used, held) of one quota dimension from cp_quota_status.
pub fn quota(c: &mut Client, subject: &str, dim: &str) -> (i64, i64) {
    let r = c
        .query_one(
            "SELECT (s->'quotas'->$2->>'used')::bigint, (s->'quotas'->$2->>'held')::bigint
               FROM control_plane.cp_quota_status($1) s",
            &[&subject, &dim],
        )
        .expect("cp_quota_status");
    (r.get(0), r.get(1))
}

/// One counter of the `control_plane.stats` view.
pub fn stat(c: &mut Client, name: &str) -> i64 {
    c.query_one("SELECT value FROM control_plane.stats WHERE name = $1", &[&name])
        .expect("stats")
        .get(0)
}

/// Runs pg_ctl against the test cluster (as the postgres OS user when we are root).
pub fn pg_ctl(args: &[&str]) {
    let bin = format!("{}/pg_ctl", env("CP_PG_BIN"));
    let data = env("CP_PGDATA");
    let mut cmd = if is_root() {
        let mut c = Command::new("sudo");
        c.args(["-u", "postgres", "--", &bin]);
        c
    } else {
        Command::new(&bin)
    };
    cmd.args(["-D", &data, "-l", &format!("{data}/server.log"), "-w", "-t", "60"])
        .args(args);
    let out = cmd.output().expect("run pg_ctl");
    assert!(
        out.status.success(),
        "pg_ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}
