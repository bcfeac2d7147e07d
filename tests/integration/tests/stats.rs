//! The `control_plane.stats` view: exact capacities from the settings, and the exact change each
//! call makes to the counters (the tests of this cluster run one at a time, so nothing else
//! moves them meanwhile).

use control_plane_integration::*;
use std::collections::HashMap;

fn stats(c: &mut postgres::Client) -> HashMap<String, i64> {
    c.query("SELECT name, value FROM control_plane.stats", &[])
        .expect("stats")
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Counters that moved between `before` and `after`, with how much.
fn moved(before: &HashMap<String, i64>, after: &HashMap<String, i64>) -> Vec<(String, i64)> {
    let mut m: Vec<_> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(v))
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .collect();
    m.sort();
    m
}

fn pairs(v: &[(&str, i64)]) -> Vec<(String, i64)> {
    let mut m: Vec<_> = v.iter().map(|(k, n)| (k.to_string(), *n)).collect();
    m.sort();
    m
}

#[test]
fn stats_report_exact_capacities_and_the_change_each_call_makes() {
    // The main test cluster, default sizes: max_subjects = 100000 -> 64 partitions of
    // ceil(125000 / 64) = 1954 slots, 1758 usable (90 %); max_reservations = 32768.
    let mut c = connect();
    let s = format!("{}_stats", run_id());
    enroll(&mut c, &s, "unlimited", r#"{"requests_per_day": 3}"#);
    admit(&mut c, &s, 0); // first sight: the ledger rebuild and the policy read happen here
    let id0 = admit(&mut c, &s, 0).reservation_id.unwrap();
    assert!(release(&mut c, &id0));
    let b = stats(&mut c);
    assert_eq!(b["entries_capacity"], 64 * 1758);
    assert_eq!(b["reservations_capacity"], 32768);
    assert_eq!(b["lock_partitions"], 64);

    // An admission that holds a request: one allowed, one more reservation in use.
    let a = admit(&mut c, &s, 0);
    assert!(a.allowed);
    let after = stats(&mut c);
    assert_eq!(
        moved(&b, &after),
        pairs(&[("admits_allowed", 1), ("reservations_in_use", 1)])
    );

    // Its release gives the slot back.
    assert!(release(&mut c, a.reservation_id.as_ref().unwrap()));
    let b = after;
    let after = stats(&mut c);
    assert_eq!(
        moved(&b, &after),
        pairs(&[("reservations_released", 1), ("reservations_in_use", -1)])
    );

    // With the first admission still open, two more use the quota of 3; the next is denied.
    let x = admit(&mut c, &s, 0);
    let y = admit(&mut c, &s, 0);
    let b = stats(&mut c);
    let z = admit(&mut c, &s, 0);
    assert!(x.allowed && y.allowed && !z.allowed);
    let after = stats(&mut c);
    assert_eq!(moved(&b, &after), pairs(&[("denied_quota", 1)]));

    // A record settles one reservation.
    assert!(record(&mut c, &s, 10, 5, x.reservation_id.as_ref().unwrap()));
    let b = after;
    let after = stats(&mut c);
    assert_eq!(
        moved(&b, &after),
        pairs(&[("reservations_settled", 1), ("reservations_in_use", -1)])
    );

    // An inactive subject is denied as such; the change (committed by another backend) makes its
    // row, and nothing else, be read again.
    connect()
        .execute(
            "UPDATE control_plane.subjects SET active = false WHERE subject_id = $1",
            &[&s],
        )
        .unwrap();
    let b = after;
    assert_eq!(admit(&mut c, &s, 0).reason.as_deref(), Some("inactive"));
    let after = stats(&mut c);
    assert_eq!(
        moved(&b, &after),
        pairs(&[("denied_inactive", 1), ("subject_reads", 1)])
    );

    // An admission with a 1-second timeout on a fresh subject expires and is charged; the flusher
    // expires what is due every 100 ms (so cp_cleanup finds nothing left), and cp_cleanup has it
    // write the charge at once.
    let t = format!("{}_stats_exp", run_id());
    enroll(&mut c, &t, "unlimited", r#"{"requests_per_day": 5}"#);
    admit(&mut c, &t, 0); // first sight; stays open (600 s)
    let b = stats(&mut c);
    c.batch_execute("SET control_plane.reservation_timeout = 1").unwrap();
    assert!(admit(&mut c, &t, 0).allowed);
    c.batch_execute("RESET control_plane.reservation_timeout").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1300));
    let cleaned: i64 = c
        .query_one(
            "SELECT (control_plane.cp_cleanup()->>'reservations_expired')::bigint",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(cleaned, 0);
    let start = std::time::Instant::now();
    while stat(&mut c, "expired_charges_written") == b["expired_charges_written"] {
        assert!(start.elapsed().as_secs() < 5, "the charge was not written");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let after = stats(&mut c);
    assert_eq!(
        moved(&b, &after),
        pairs(&[
            ("admits_allowed", 1),
            ("reservations_expired", 1),
            ("expired_charges_written", 1),
        ])
    );
    // used: the expired one; held: the first, still open.
    assert_eq!(quota(&mut c, &t, "requests_per_day"), (1, 1));
    let _ = y;
}
