//! What a caller sends does not grow a backend's memory: model names without a price are
//! answered from the set of priced names (what admins wrote), with no lookup and no entry each.

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
