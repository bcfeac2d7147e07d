//! The flushers' registry (64 databases at once): a database's slot is freed when its flusher
//! exits, dropped databases included, so that more databases than slots over a server's life all
//! get their expired charges written.

use control_plane_integration::*;
use std::time::{Duration, Instant};

#[test]
fn more_databases_than_registry_slots_over_time_all_get_a_flusher() {
    let mut su = connect();
    let id = run_id();
    // 70 databases, one after the other: each opens a reservation (which starts its flusher),
    // gives it back, and is dropped (which ends its flusher).
    for i in 0..70 {
        let db = format!("{id}_f{i}");
        let mut c = new_database(&mut su, &db);
        let a = admit(&mut c, "s", 1);
        assert!(a.allowed, "{db}: {:?}", a.reason);
        assert!(release(&mut c, a.reservation_id.as_deref().unwrap()));
        drop(c);
        drop_database(&mut su, &db);
    }
    // The next database's expired reservation is still charged in its ledger by a flusher.
    let db = format!("{id}_flast");
    let mut c = new_database(&mut su, &db);
    c.batch_execute("SET control_plane.reservation_timeout = 1").unwrap();
    assert!(admit(&mut c, "s", 1).allowed);
    let start = Instant::now();
    loop {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM control_plane.usage_events WHERE kind = 'expired'",
                &[],
            )
            .unwrap()
            .get(0);
        if n == 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no flusher wrote the charge of a database created after 70 dropped ones"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(c);
    drop_database(&mut su, &db);
}
