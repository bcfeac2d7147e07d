//! What a caller sends does not grow a backend's memory: model names without a price are
//! answered from the set of priced names (what admins wrote), with no lookup and no entry each;
//! the caches that do hold what callers name (tenants, subjects) are bounded in bytes.

use control_plane_integration::*;

/// The resident memory of a backend, in KiB (`/proc/<pid>/status`; the server runs here).
fn rss_kib(pid: i32) -> i64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

#[test]
fn a_hundred_thousand_unpriced_model_names_grow_no_backend_memory() {
    let mut c = connect();
    let s = format!("{}_names", run_id());
    let priced = format!("{s}_m");
    shared_price(&mut c, &priced, 1_000_000, 1_000_000);
    enroll(&mut c, &s, "unlimited", r#"{"daily_budget_cents": 100000}"#);
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let calls = |c: &mut postgres::Client, n: i64, offset: i64| -> (i64, i64) {
        let r = c
            .query_one(
                "SELECT count(*) FILTER (WHERE a.reason = 'unpriced_model'), count(*)
                   FROM generate_series($2::bigint + 1, $2::bigint + $3::bigint) g,
                        LATERAL control_plane.cp_admit($1, 10, 'no_such_model_' || g) a",
                &[&s, &offset, &n],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    // Warmed up: the backend's caches and the statement's plan exist.
    assert_eq!(calls(&mut c, 2_000, 0), (2_000, 2_000));
    let before = rss_kib(pid);
    assert_eq!(calls(&mut c, 100_000, 2_000), (100_000, 100_000));
    let grown = rss_kib(pid) - before;
    assert!(
        grown < 4 * 1024,
        "100,000 unpriced names grew the backend by {grown} KiB"
    );
    // A priced name is still priced.
    let a = admit_priced(&mut c, &s, 1_000, &priced);
    assert!(a.allowed, "{:?}", a.reason);
    assert!(release(&mut c, a.reservation_id.as_deref().unwrap()));
}

#[test]
fn sixty_thousand_made_up_tenants_of_250_bytes_grow_a_backend_by_less_than_its_cache_bound() {
    let mut c = connect();
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let prefix = format!("{}_t{}", run_id(), "x".repeat(200));
    // Each tenant a session can name is looked up once and remembered (its zone, and whether it
    // has a row): 60,000 of them took about 20 MiB under the count bound of 100,000 entries.
    let calls = |c: &mut postgres::Client, from: i32, to: i32| {
        c.batch_execute(&format!(
            "DO $$ BEGIN
               FOR i IN {from}..{to} LOOP
                 PERFORM pg_catalog.set_config('control_plane.tenant', '{prefix}' || i, false);
                 PERFORM control_plane.cp_quota_status('nobody');
               END LOOP;
             END $$"
        ))
        .unwrap();
    };
    calls(&mut c, 1, 2_000);
    let before = rss_kib(pid);
    calls(&mut c, 2_001, 62_000);
    let grown = rss_kib(pid) - before;
    eprintln!("60,000 made-up tenants: the backend grew by {grown} KiB");
    assert!(
        grown < 6 * 1024,
        "60,000 tenants grew the backend by {grown} KiB (the cache holds 4 MiB)"
    );
    c.batch_execute("RESET control_plane.tenant").unwrap();
}
