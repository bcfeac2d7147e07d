//! Money across connections: a committed price change is obeyed by the next call in every
//! backend, like a profile change.

use control_plane_integration::*;
use postgres::Client;

fn cost(c: &mut Client, subject: &str, model: &str) -> Option<i64> {
    c.query_one(
        "SELECT cost_micros FROM control_plane.cp_record_usage($1, 1000, 1000, $2)",
        &[&subject, &model],
    )
    .unwrap()
    .get(0)
}

#[test]
fn a_committed_price_change_is_obeyed_by_the_next_record_in_every_backend() {
    let s = format!("{}_price", run_id());
    let model = format!("{}-model", run_id());
    let mut admin = connect();
    enroll(&mut admin, &s, "unlimited", "{}");
    let mut backends: Vec<Client> = (0..3).map(|_| connect()).collect();
    // Unpriced at first; every backend has looked the model up (and remembers that).
    for b in &mut backends {
        assert_eq!(cost(b, &s, &model), None);
    }
    shared_price(&mut admin, &model, 150_000, 600_000);
    for b in &mut backends {
        assert_eq!(cost(b, &s, &model), Some(750), "the shared price, at once");
    }
    // A new price from now on, in an open transaction: not yet for anybody else.
    let mut tx = admin.transaction().unwrap();
    tx.execute(
        "INSERT INTO control_plane.model_prices (tenant_id, model, input_micros_per_million, output_micros_per_million)
         VALUES ('default', $1, 1000000, 2000000)",
        &[&model],
    )
    .unwrap();
    for b in &mut backends {
        assert_eq!(cost(b, &s, &model), Some(750), "an uncommitted price is not in force");
    }
    tx.commit().unwrap();
    for b in &mut backends {
        assert_eq!(cost(b, &s, &model), Some(3_000), "the committed price, at once");
    }
    admin
        .execute(
            "DELETE FROM control_plane.model_prices WHERE tenant_id = 'default' AND model = $1",
            &[&model],
        )
        .unwrap();
    for b in &mut backends {
        assert_eq!(cost(b, &s, &model), Some(750), "back to the shared price");
    }
    let (rows, total): (i64, i64) = {
        let r = admin
            .query_one(
                "SELECT count(*), sum(cost_micros)::bigint FROM control_plane.usage_events
                  WHERE subject_id = $1 AND cost_micros IS NOT NULL",
                &[&s],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((rows, total), (12, 3 * (750 + 750 + 3_000 + 750)));
}
