//! Tenant time zones over real connections: a committed zone change is obeyed by the next call of
//! every backend, and totals stay exactly the ledger's sums over the new zone's windows while
//! other connections admit and record throughout.

use control_plane_integration::*;
use postgres::Client;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A connection serving `tenant`.
fn connect_as(tenant: &str) -> Client {
    let mut c = connect();
    c.batch_execute(&format!("SET control_plane.tenant = '{tenant}'"))
        .unwrap();
    c
}

fn set_zone(c: &mut Client, tenant: &str, zone: &str) {
    c.execute(
        "INSERT INTO control_plane.tenants (tenant_id, time_zone) VALUES ($1, $2)
         ON CONFLICT (tenant_id) DO UPDATE SET time_zone = EXCLUDED.time_zone",
        &[&tenant, &zone],
    )
    .unwrap();
}

/// The tenant's zone, and (used, held) of requests_per_day and used of requests_per_month, from
/// cp_quota_status.
fn status(c: &mut Client, subject: &str) -> (String, (i64, i64), i64) {
    let r = c
        .query_one(
            "SELECT s->'period'->>'time_zone', (s->'quotas'->'requests_per_day'->>'used')::bigint,
                    (s->'quotas'->'requests_per_day'->>'held')::bigint,
                    (s->'quotas'->'requests_per_month'->>'used')::bigint
               FROM control_plane.cp_quota_status($1) s",
            &[&subject],
        )
        .unwrap();
    (r.get(0), (r.get(1), r.get(2)), r.get(3))
}

/// Requests in the ledger of `subject` within the day and the month of `zone` that contain now
/// (computed by PostgreSQL's own time zone support).
fn ledger(c: &mut Client, tenant: &str, subject: &str, zone: &str) -> (i64, i64) {
    let r = c
        .query_one(
            "SELECT coalesce(sum(requests) FILTER (WHERE created_at >= date_trunc('day', clock_timestamp(), $3)
                                                 AND created_at < date_trunc('day', clock_timestamp(), $3) + interval '1 day'), 0)::bigint,
                    coalesce(sum(requests) FILTER (WHERE created_at >= date_trunc('month', clock_timestamp(), $3)
                                                 AND created_at < date_trunc('month', clock_timestamp(), $3) + interval '1 month'), 0)::bigint
               FROM control_plane.usage_events WHERE tenant_id = $1 AND subject_id = $2",
            &[&tenant, &subject, &zone],
        )
        .unwrap();
    (r.get(0), r.get(1))
}

#[test]
fn a_zone_change_is_obeyed_at_once_and_totals_stay_the_ledgers_under_traffic() {
    let tenant = format!("{}_tz", run_id());
    let subject = "tz_user";
    let mut admin = connect_as(&tenant);
    enroll(
        &mut admin,
        subject,
        "unlimited",
        r#"{"requests_per_day": 100000, "requests_per_month": 1000000}"#,
    );
    // History the subject's first sight reads: a row every 3 hours over the last 45 hours, so
    // that each zone's day holds a different share of it.
    admin
        .execute(
            "INSERT INTO control_plane.usage_events (tenant_id, subject_id, requests, input_tokens, output_tokens, created_at)
             SELECT $1, $2, 1, 0, 0, clock_timestamp() - k * interval '3 hours' FROM generate_series(1, 15) k",
            &[&tenant, &subject],
        )
        .unwrap();
    let mut watcher = connect_as(&tenant);
    assert_eq!(status(&mut watcher, subject).0, "UTC");

    // Four connections admit and record in a loop while the zone changes under them; after each
    // change they pause, so that totals can be compared with the ledger exactly.
    let pause = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let parked = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (tenant, pause, stop, parked) = (tenant.clone(), pause.clone(), stop.clone(), parked.clone());
            std::thread::spawn(move || {
                let mut c = connect_as(&tenant);
                let mut n = 0;
                while !stop.load(Ordering::Acquire) {
                    if pause.load(Ordering::Acquire) {
                        parked.fetch_add(1, Ordering::AcqRel);
                        while pause.load(Ordering::Acquire) {
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        parked.fetch_sub(1, Ordering::AcqRel);
                        continue;
                    }
                    let a = admit(&mut c, subject, 0);
                    assert!(a.allowed, "{:?}", a.reason);
                    assert!(record(&mut c, subject, 1, 1, &a.reservation_id.unwrap()));
                    n += 1;
                }
                n
            })
        })
        .collect();
    for zone in [
        "Pacific/Kiritimati",
        "America/Los_Angeles",
        "Asia/Kathmandu",
        "Europe/Paris",
    ] {
        std::thread::sleep(Duration::from_millis(200));
        // The change commits while the workers admit and record; they meet it on their next call.
        set_zone(&mut admin, &tenant, zone);
        std::thread::sleep(Duration::from_millis(200));
        pause.store(true, Ordering::Release);
        while parked.load(Ordering::Acquire) < 4 {
            std::thread::sleep(Duration::from_millis(2));
        }
        let (z, (day, held), month) = status(&mut watcher, subject);
        assert_eq!(z, zone);
        assert_eq!(held, 0);
        assert_eq!(
            (day, month),
            ledger(&mut admin, &tenant, subject, zone),
            "{zone}: totals against the ledger"
        );
        pause.store(false, Ordering::Release);
    }
    stop.store(true, Ordering::Release);
    let done: i64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(done >= 40, "the workers ran ({done} cycles)");
    // Quiet now: exactly the ledger's sums over the last zone's day and month, nothing held.
    let (z, (day, held), month) = status(&mut watcher, subject);
    assert_eq!((z.as_str(), held), ("Europe/Paris", 0));
    assert_eq!((day, month), ledger(&mut admin, &tenant, subject, "Europe/Paris"));
    // And back to UTC without a row.
    admin
        .execute("DELETE FROM control_plane.tenants WHERE tenant_id = $1", &[&tenant])
        .unwrap();
    let (z, (day, _), month) = status(&mut watcher, subject);
    assert_eq!(z, "UTC");
    assert_eq!((day, month), ledger(&mut admin, &tenant, subject, "UTC"));
}
