//! A generated hostile suite: thousands of calls of every function, and writes to every table an
//! admin edits, with arguments drawn from a pool of hostile values (empty, over-long and
//! non-ASCII names, tokens out of range, jsonb nested thousands deep or with numbers beyond any
//! float, unknown and foreign reservation ids, odd tenants). The seed is printed (set
//! `CP_FUZZ_SEED` to replay one) with the histogram of SQLSTATEs per call. No call may end in
//! XX000 or lose its connection, the server must not restart, and afterwards every subject's
//! totals must equal its ledger.

use control_plane_integration::*;
use postgres::types::ToSql;
use postgres::{Client, NoTls};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// xorshift64*: enough to draw from the pools, replayable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn pick<T: Clone>(&mut self, v: &[T]) -> T {
        v[(self.next() % v.len() as u64) as usize].clone()
    }
    /// From `pool`, whose first `valid` values are ordinary ones: those 9 times in 10, so that
    /// calls get far enough to reach what follows the argument checks.
    fn draw<T: Clone>(&mut self, pool: &(usize, Vec<T>)) -> T {
        let (valid, v) = pool;
        if self.next() % 10 < 9 {
            self.pick(&v[..*valid])
        } else {
            self.pick(&v[*valid..])
        }
    }
}

fn nested(depth: usize, open: &str, close: &str, inner: &str) -> String {
    format!("{}{}{}", open.repeat(depth), inner, close.repeat(depth))
}

/// The SQLSTATE of a failed call ("ok" when it succeeded); panics when the connection broke.
fn outcome(r: Result<u64, postgres::Error>, what: &str) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => match e.code() {
            Some(c) => c.code().to_string(),
            None => panic!("{what}: the connection broke: {e}"),
        },
    }
}

#[test]
fn thousands_of_hostile_calls_end_in_no_internal_error_and_leave_the_totals_exact() {
    let seed: u64 = std::env::var("CP_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("fuzz seed {seed} (CP_FUZZ_SEED={seed} replays it)");
    let mut rng = Rng(seed);
    let mut su = connect();
    let db = format!("{}_fuzz", run_id());
    let mut admin = new_database(&mut su, &db);
    admin.batch_execute(
"INSERT INTO control_plane.model_prices (tenant_id, model, input_micros_per_million, output_micros_per_million, effective_from)
                 VALUES ('*', 'm', 1000000, 2000000, '-infinity');
             INSERT INTO control_plane.profiles (name, requests_per_day, input_tokens_per_day, daily_budget_cents, default_model, is_default)
                 VALUES ('fz', 1000000, 1000000000000, 100000000, 'm', false);
             INSERT INTO control_plane.profiles (tenant_id, name, requests_per_day, is_default)
                 VALUES ('t2', 'fz2', 1000000, true);
             INSERT INTO control_plane.subjects (subject_id, profile)
                 SELECT 's' || g, 'fz' FROM generate_series(1, 5) g;",
        )
        .unwrap();
    let started: String = admin
        .query_one("SELECT pg_postmaster_start_time()::text", &[])
        .unwrap()
        .get(0);
    let mut app = Client::connect(&dsn_with("dbname", &db), NoTls).unwrap();

    let long = |c: char, n: usize| Some(c.to_string().repeat(n));
    let names: (usize, Vec<Option<String>>) = (
        6,
        vec![
            Some("s1".into()),
            Some("s2".into()),
            Some("s3".into()),
            Some("s4".into()),
            Some("s5".into()),
            Some("new_one".into()),
            None,
            Some(String::new()),
            long('x', 256),
            long('x', 257),
            long('é', 200),
            Some("名前😀".into()),
            Some("a'b\"c\\d%_".into()),
            Some(" ".into()),
        ],
    );
    let keys: (usize, Vec<Option<String>>) = (
        3,
        vec![None, None, Some("k1".into()), Some(String::new()), long('k', 257)],
    );
    let tokens: (usize, Vec<Option<i64>>) = (
        4,
        vec![
            Some(0),
            Some(1),
            Some(500),
            Some(100_000),
            Some(-1),
            Some(1_000_000_000_000),
            Some(1_000_000_000_001),
            Some(i64::MAX),
            Some(i64::MIN),
            None,
        ],
    );
    let models: (usize, Vec<Option<String>>) = (
        3,
        vec![
            None,
            Some("m".into()),
            Some("unpriced".into()),
            Some(String::new()),
            long('y', 300),
        ],
    );
    let features: (usize, Vec<Option<String>>) = (2, vec![None, Some("f".into()), Some(String::new()), long('z', 300)]);
    let jsons: (usize, Vec<Option<String>>) = (
        6,
        vec![
            None,
            Some("{}".into()),
            Some(r#"{"a": 1}"#.into()),
            Some(r#"{"requests_per_day": 5}"#.into()),
            Some(r#"{"video": false}"#.into()),
            Some(r#"{"blocked_models": ["m"]}"#.into()),
            Some(nested(100, "[", "]", "1")),
            Some(nested(3000, "[", "]", "1")),
            Some(nested(2000, r#"{"a":"#, "}", "1")),
            Some("1e400".into()),
            Some(r#"{"requests_per_day": 1e400}"#.into()),
            Some(r#"{"requests_per_day": -1e400}"#.into()),
            Some(r#"{"requests_per_day": 1.5}"#.into()),
            Some(r#"{"requests_per_day": 99999999999999999999999}"#.into()),
            Some(r#"{"allowed_models": [[["m"]]]}"#.into()),
            Some(format!(r#"{{"requests_per_day": {}}}"#, nested(200, "[", "]", "1"))),
            Some(format!(r#""{}""#, "q".repeat(100_000))),
            Some("[1, 2, 3]".into()),
            Some("null".into()),
        ],
    );
    let tenants: (usize, Vec<Option<String>>) = (
        2,
        vec![
            Some("default".into()),
            Some("t2".into()),
            Some(String::new()),
            long('t', 300),
            Some("ténant".into()),
        ],
    );
    let zones: (usize, Vec<Option<String>>) = (
        1,
        vec![
            Some("Asia/Kolkata".into()),
            Some("Nowhere/Else".into()),
            Some(String::new()),
            Some("UTC+5".into()),
            long('Z', 1000),
            None,
        ],
    );
    let mut ids: Vec<Option<String>> = vec![
        None,
        Some("00000000-0000-0000-0000-000000000000".into()),
        Some("ffffffff-ffff-4fff-bfff-ffffffffffff".into()),
    ];

    let mut histogram: BTreeMap<(String, String), usize> = BTreeMap::new();
    let calls = 5000;
    for _ in 0..calls {
        let tenant = rng.draw(&tenants);
        let _ = app.execute(
            "SELECT pg_catalog.set_config('control_plane.tenant', $1, false)",
            &[&tenant],
        );
        let (what, sql, params): (&str, &str, Vec<Box<dyn ToSql + Sync>>) = match rng.next() % 12 {
            0..=2 => (
                "cp_admit",
                "SELECT control_plane.cp_admit($1, $2, $3, $4, $5)",
                vec![
                    Box::new(rng.draw(&names)),
                    Box::new(rng.draw(&tokens)),
                    Box::new(rng.draw(&models)),
                    Box::new(rng.draw(&features)),
                    Box::new(rng.draw(&tokens)),
                ],
            ),
            3..=5 => (
                "cp_record_usage",
                "SELECT control_plane.cp_record_usage($1, $2, $3, $4, $5::text::uuid, $6, $7::text::jsonb, $8)",
                vec![
                    Box::new(rng.draw(&names)),
                    Box::new(rng.draw(&tokens)),
                    Box::new(rng.draw(&tokens)),
                    Box::new(rng.draw(&models)),
                    Box::new(rng.pick(&ids)),
                    Box::new(rng.draw(&keys)),
                    Box::new(rng.draw(&jsons)),
                    Box::new(rng.draw(&features)),
                ],
            ),
            6 => (
                "cp_release",
                "SELECT control_plane.cp_release($1::text::uuid)",
                vec![Box::new(rng.pick(&ids))],
            ),
            7 => (
                "cp_quota_status",
                "SELECT control_plane.cp_quota_status($1)",
                vec![Box::new(rng.draw(&names))],
            ),
            8 => (
                "subjects",
                "INSERT INTO control_plane.subjects (tenant_id, subject_id, profile, overrides)
                 VALUES (coalesce($1, 'default'), 'z' || coalesce($2, ''), 'free', $3::text::jsonb)
                 ON CONFLICT (tenant_id, subject_id) DO UPDATE SET overrides = EXCLUDED.overrides",
                vec![Box::new(rng.draw(&tenants)), Box::new(rng.draw(&names)), Box::new(rng.draw(&jsons))],
            ),
            9 => (
                "profiles",
                "UPDATE control_plane.profiles SET features = coalesce($1::text::jsonb, '{}') WHERE name = 'free'",
                vec![Box::new(rng.draw(&jsons))],
            ),
            10 => (
                "tenants",
                "INSERT INTO control_plane.tenants (tenant_id, time_zone) VALUES ('tz_' || coalesce($1, ''), $2)
                 ON CONFLICT (tenant_id) DO UPDATE SET time_zone = EXCLUDED.time_zone",
                vec![Box::new(rng.draw(&names)), Box::new(rng.draw(&zones))],
            ),
            _ => (
                "model_prices",
                "INSERT INTO control_plane.model_prices (tenant_id, model, input_micros_per_million, output_micros_per_million, effective_from)
                 VALUES ('*', coalesce($1, 'p'), $2, $3, now() + (random() * 1000)::int * interval '1 second')",
                vec![Box::new(rng.draw(&models)), Box::new(rng.draw(&tokens)), Box::new(rng.draw(&tokens))],
            ),
        };
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|b| b.as_ref()).collect();
        let client = if matches!(what, "subjects" | "profiles" | "tenants" | "model_prices") {
            &mut admin
        } else {
            &mut app
        };
        let state = if what == "cp_admit" {
            match client.query_opt(
                "SELECT a.reservation_id::text FROM control_plane.cp_admit($1, $2, $3, $4, $5) a",
                &refs,
            ) {
                Ok(r) => {
                    if let Some(id) = r.and_then(|r| r.get::<_, Option<String>>(0)) {
                        ids.push(Some(id));
                    }
                    "ok".to_string()
                }
                Err(e) => outcome(Err(e), what),
            }
        } else {
            outcome(client.execute(sql, &refs), what)
        };
        *histogram.entry((what.to_string(), state)).or_default() += 1;
    }
    println!("SQLSTATEs of {calls} calls (seed {seed}):");
    for ((what, state), n) in &histogram {
        println!("  {what:16} {state:6} {n}");
    }
    let internal: Vec<_> = histogram.iter().filter(|((_, s), _)| s == "XX000").collect();
    assert!(internal.is_empty(), "XX000 (seed {seed}): {internal:?}");
    let now: String = admin
        .query_one("SELECT pg_postmaster_start_time()::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(now, started, "the server restarted (seed {seed})");

    // Every reservation given back (or already settled), every charge written: the totals of
    // the subjects equal their ledger.
    let _ = app.batch_execute("RESET control_plane.tenant");
    for id in ids.iter().flatten() {
        for t in ["default", "t2"] {
            app.execute("SELECT pg_catalog.set_config('control_plane.tenant', $1, false)", &[&t])
                .unwrap();
            let _ = app.execute("SELECT control_plane.cp_release($1::text::uuid)", &[id]);
        }
    }
    app.batch_execute("RESET control_plane.tenant").unwrap();
    let start = Instant::now();
    for s in ["s1", "s2", "s3", "s4", "s5"] {
        loop {
            let (used, held): (i64, i64) = quota(&mut app, s, "requests_per_day");
            let ledger: i64 = admin
                .query_one(
                    "SELECT coalesce(sum(requests), 0)::bigint FROM control_plane.usage_events
                      WHERE tenant_id = 'default' AND subject_id = $1
                        AND created_at >= date_trunc('day', now(), 'UTC')",
                    &[&s],
                )
                .unwrap()
                .get(0);
            if held == 0 && used == ledger {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{s}: totals {used} used, {held} held; ledger {ledger} (seed {seed})"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    drop((app, admin));
    drop_database(&mut su, &db);
}

#[test]
fn a_database_that_is_not_utf8_is_refused_at_create_extension() {
    let mut su = connect();
    for enc in ["SQL_ASCII", "LATIN1"] {
        let db = format!("{}_{}", run_id(), enc.to_lowercase());
        su.batch_execute(&format!(
            "CREATE DATABASE {db} ENCODING '{enc}' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
        ))
        .unwrap();
        let mut c = Client::connect(&dsn_with("dbname", &db), NoTls).unwrap();
        assert_eq!(sqlstate(&mut c, "CREATE EXTENSION control_plane"), "0A000", "{enc}");
        drop(c);
        su.batch_execute(&format!("DROP DATABASE {db}")).unwrap();
    }
}
