//! The Prometheus queries (`contrib/prometheus/queries.yaml`) through the real exporter
//! (Debian's prometheus-postgres-exporter, `CP_EXPORTER`): its `/metrics` shows control_plane's
//! counters, shared-memory use and per-tenant figures with the values the database holds.

use control_plane_integration::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The exporter process; killed when dropped.
struct Exporter(Child);

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_exporter(port: u16) -> Exporter {
    let queries = concat!(env!("CARGO_MANIFEST_DIR"), "/../../contrib/prometheus/queries.yaml");
    let child = Command::new(env("CP_EXPORTER"))
        .env("DATA_SOURCE_NAME", format!("{} sslmode=disable", env("CP_DSN")))
        .args([
            "--disable-default-metrics",
            "--disable-settings-metrics",
            &format!("--extend.query-path={queries}"),
            &format!("--web.listen-address=127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus-postgres-exporter");
    Exporter(child)
}

/// GET /metrics, retrying while the exporter starts.
fn scrape(port: u16) -> String {
    let start = Instant::now();
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                .unwrap();
            let mut body = String::new();
            s.read_to_string(&mut body).unwrap();
            assert!(
                body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
                "{body}"
            );
            return body;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the exporter did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of the series `name` whose labels include every one of `labels`.
fn series(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
}

#[test]
fn the_exporter_shows_counters_shared_memory_and_tenant_figures_as_the_database_holds_them() {
    let mut c = connect();
    let tenant = format!("{}_prom", run_id());
    // A tenant with a row has counters of its own.
    c.batch_execute(&format!(
        "INSERT INTO control_plane.tenants (tenant_id) VALUES ('{tenant}'); SET control_plane.tenant = '{tenant}'"
    ))
    .unwrap();
    enroll(&mut c, "user_1", "unlimited", r#"{"requests_per_day": 3}"#);
    // 3 admitted, 2 denied by the quota; 2 recorded (100 + 10 tokens each), 1 released.
    let ids: Vec<String> = (0..5)
        .filter_map(|_| admit(&mut c, "user_1", 100).reservation_id)
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(record(&mut c, "user_1", 100, 10, &ids[0]));
    assert!(record(&mut c, "user_1", 100, 10, &ids[1]));
    assert!(release(&mut c, &ids[2]));
    let row = c
        .query_one(
            "SELECT database, admitted, denied_quota, denied_rate, recorded, recorded_input_tokens,
                    recorded_output_tokens, expired
               FROM control_plane.tenant_stats WHERE tenant = $1",
            &[&tenant],
        )
        .expect("tenant_stats");
    let db: String = row.get(0);
    let sql: Vec<i64> = (1..8).map(|i| row.get(i)).collect();
    assert_eq!(sql, [3, 2, 0, 2, 200, 20, 0], "tenant_stats of {tenant}");

    // A port nobody listens on now.
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _exporter = start_exporter(port);
    let allowed = stat(&mut c, "admits_allowed");
    let capacity = stat(&mut c, "reservations_capacity");
    let body = scrape(port);
    let t = [("database", db.as_str()), ("tenant", tenant.as_str())];
    let got = |name: &str, extra: &[(&str, &str)]| {
        let labels: Vec<(&str, &str)> = t.iter().chain(extra).copied().collect();
        series(&body, name, &labels).unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{body}"))
    };
    assert_eq!(got("control_plane_tenant_admitted_total", &[]), 3.0);
    assert_eq!(got("control_plane_tenant_denials_total", &[("reason", "quota")]), 2.0);
    assert_eq!(got("control_plane_tenant_denials_total", &[("reason", "rate")]), 0.0);
    assert_eq!(got("control_plane_tenant_recorded_total", &[]), 2.0);
    assert_eq!(got("control_plane_tenant_input_tokens_total", &[]), 200.0);
    assert_eq!(got("control_plane_tenant_output_tokens_total", &[]), 20.0);
    assert_eq!(got("control_plane_tenant_expired_total", &[]), 0.0);
    assert_eq!(
        series(&body, "control_plane_events_total", &[("counter", "admits_allowed")]),
        Some(allowed as f64)
    );
    assert_eq!(
        series(
            &body,
            "control_plane_shared_memory_capacity",
            &[("resource", "reservations")]
        ),
        Some(capacity as f64)
    );
    assert!(series(&body, "control_plane_shared_memory_in_use", &[("resource", "entries")]).is_some());
}

#[test]
fn tenant_stats_are_for_monitoring_roles_only() {
    let mut c = connect();
    let role = format!("{}_mon", run_id());
    c.batch_execute(&format!("CREATE ROLE {role}")).unwrap();
    let denied = c
        .batch_execute(&format!(
            "SET ROLE {role}; SELECT * FROM control_plane.tenant_stats; RESET ROLE"
        ))
        .unwrap_err();
    assert_eq!(denied.code().map(|s| s.code()), Some("42501"), "{denied}");
    c.batch_execute("RESET ROLE").unwrap();
    c.batch_execute(&format!(
        "GRANT pg_monitor TO {role}; SET ROLE {role}; SELECT * FROM control_plane.tenant_stats; RESET ROLE"
    ))
    .unwrap();
}

#[test]
fn made_up_tenants_count_together_and_leave_the_slots_to_tenants_with_a_row() {
    // 1,100 tenants without a row (more than the 1,024 slots): each admitted once. They would
    // have taken every slot, and a tenant made by an admin afterwards would have had none.
    let mut c = connect();
    let id = run_id();
    let overflow = |c: &mut postgres::Client| -> i64 {
        c.query_one(
            "SELECT coalesce(sum(admitted), 0)::bigint FROM control_plane.tenant_stats WHERE tenant IS NULL",
            &[],
        )
        .unwrap()
        .get(0)
    };
    let before = overflow(&mut c);
    c.batch_execute(&format!(
        "DO $$ BEGIN
           FOR i IN 1..1100 LOOP
             PERFORM pg_catalog.set_config('control_plane.tenant', '{id}_junk_' || i, false);
             PERFORM control_plane.cp_release((control_plane.cp_admit('u', 1)).reservation_id);
           END LOOP;
         END $$;
         RESET control_plane.tenant"
    ))
    .unwrap();
    assert!(
        overflow(&mut c) >= before + 1_100,
        "made-up tenants count in the NULL row"
    );
    let named: i64 = c
        .query_one(
            "SELECT count(*) FROM control_plane.tenant_stats WHERE tenant LIKE $1",
            &[&format!("{id}_junk_%")],
        )
        .unwrap()
        .get(0);
    assert_eq!(named, 0, "no made-up tenant has a row of its own");
    let real = format!("{id}_real");
    c.batch_execute(&format!(
        "INSERT INTO control_plane.tenants (tenant_id) VALUES ('{real}');
         SET control_plane.tenant = '{real}'"
    ))
    .unwrap();
    assert!(admit(&mut c, "u", 1).allowed);
    let admitted: i64 = c
        .query_one(
            "SELECT admitted FROM control_plane.tenant_stats WHERE tenant = $1",
            &[&real],
        )
        .expect("the tenant with a row has its own counters")
        .get(0);
    assert_eq!(admitted, 1);
    c.batch_execute("RESET control_plane.tenant").unwrap();
}
