//! Idempotent usage: a retried `cp_record_usage` with the same key records nothing new.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use crate::pg_tests::tests::{price, run, set_overrides, sqlstate};
    use pgrx::prelude::*;

    /// cp_record_usage(subject, input, 0, 'pgt-idem', idempotency_key => key): (event_id, cost,
    /// settled).
    fn record(subject: &str, input: i64, key: &str) -> (i64, Option<i64>, bool) {
        let (id, cost, settled) = Spi::get_three::<i64, i64, bool>(&format!(
            "SELECT event_id, cost_micros, reservation_settled FROM control_plane.cp_record_usage('{subject}', {input}, 0,
                 'pgt-idem', idempotency_key => '{key}')"
        ))
        .unwrap();
        (id.unwrap(), cost, settled.unwrap())
    }

    fn rows_with(key: &str) -> i64 {
        Spi::get_one::<i64>(&format!(
            "SELECT count(*) FROM control_plane.usage_events WHERE idempotency_key = '{key}'"
        ))
        .unwrap()
        .unwrap()
    }

    #[pg_test]
    fn a_retry_with_the_same_key_returns_the_original_event_and_records_nothing() {
        price("*", "pgt-idem", 3_000_000, 0, "'-infinity'");
        set_overrides("pgt_idem_a", "{}");
        let (id, cost, settled) = record("pgt_idem_a", 10, "pgt-key-1");
        assert_eq!((cost, settled), (Some(30), false));
        assert_eq!(rows_with("pgt-key-1"), 1);
        // The same call again returns the original.
        let (again, cost_again, _) = record("pgt_idem_a", 10, "pgt-key-1");
        assert_eq!((again, cost_again), (id, Some(30)));
        // The key names one event: other amounts, another model or a feature are refused.
        for call in [
            "'pgt_idem_a', 999, 0, 'pgt-idem'",
            "'pgt_idem_a', 10, 1, 'pgt-idem'",
            "'pgt_idem_a', 10, 0, 'pgt-idem-other'",
            "'pgt_idem_a', 10, 0, 'pgt-idem', feature => 'f'",
        ] {
            assert_eq!(
                sqlstate(&format!(
                    "SELECT control_plane.cp_record_usage({call}, idempotency_key => 'pgt-key-1')"
                )),
                "23505",
                "{call}"
            );
        }
        assert_eq!(rows_with("pgt-key-1"), 1);
        // Another key is another event.
        let (other, _, _) = record("pgt_idem_a", 10, "pgt-key-2");
        assert_ne!(other, id);
        // The same key in another tenant is another event too.
        run("SET LOCAL control_plane.tenant = 'pgt_idem_other'");
        set_overrides("pgt_idem_a", "{}");
        let (elsewhere, _, _) = record("pgt_idem_a", 10, "pgt-key-1");
        assert_ne!(elsewhere, id);
        run("RESET control_plane.tenant");
        assert_eq!(rows_with("pgt-key-1"), 2);
    }

    #[pg_test]
    fn a_key_of_another_subject_is_refused_and_a_direct_duplicate_violates_the_index() {
        set_overrides("pgt_idem_b", "{}");
        set_overrides("pgt_idem_c", "{}");
        run("SELECT control_plane.cp_record_usage('pgt_idem_b', 1, 1, idempotency_key => 'pgt-key-3')");
        assert_eq!(
            sqlstate("SELECT control_plane.cp_record_usage('pgt_idem_c', 1, 1, idempotency_key => 'pgt-key-3')"),
            "23505"
        );
        assert_eq!(
            sqlstate(
                "INSERT INTO control_plane.usage_events (tenant_id, subject_id, input_tokens, output_tokens, idempotency_key)
                 VALUES ('default', 'pgt_idem_b', 1, 1, 'pgt-key-3')"
            ),
            "23505"
        );
    }

    #[pg_test]
    fn a_retry_with_a_new_reservation_gives_that_reservation_back() {
        // Two places: the first record settles its reservation when the transaction commits (a
        // pg_test's never does), so the first place stays taken here.
        set_overrides("pgt_idem_d", r#"{"max_concurrent": 2}"#);
        let first = Spi::get_one::<pgrx::Uuid>("SELECT reservation_id FROM control_plane.cp_admit('pgt_idem_d', 5)")
            .unwrap()
            .unwrap();
        run(&format!(
            "SELECT control_plane.cp_record_usage('pgt_idem_d', 5, 5, reservation_id => '{first}', idempotency_key => 'pgt-key-4')"
        ));
        // The caller retried with a new admission: the call it stands for is already recorded.
        let second = Spi::get_one::<pgrx::Uuid>("SELECT reservation_id FROM control_plane.cp_admit('pgt_idem_d', 5)")
            .unwrap()
            .unwrap();
        let settled = Spi::get_one::<bool>(&format!(
            "SELECT reservation_settled FROM control_plane.cp_record_usage('pgt_idem_d', 5, 5,
                 reservation_id => '{second}', idempotency_key => 'pgt-key-4')"
        ))
        .unwrap();
        assert_eq!(settled, Some(false));
        // Given back: the second place is free again, and the id is unknown.
        let released = Spi::get_one::<bool>(&format!("SELECT control_plane.cp_release('{second}')")).unwrap();
        assert_eq!(released, Some(false));
        let again = Spi::get_one::<bool>("SELECT allowed FROM control_plane.cp_admit('pgt_idem_d', 5)").unwrap();
        assert_eq!(again, Some(true));
    }

    #[pg_test]
    fn a_retry_that_names_no_model_matches_after_the_default_changed() {
        run("INSERT INTO control_plane.profiles (name, default_model) VALUES ('pgt_idem_plan', 'pgt-m1')");
        crate::pg_tests::tests::enroll("pgt_idem_e", "pgt_idem_plan", "{}");
        let call =
            "SELECT event_id FROM control_plane.cp_record_usage('pgt_idem_e', 3, 3, idempotency_key => 'pgt-key-5')";
        let first = Spi::get_one::<i64>(call).unwrap();
        run("UPDATE control_plane.profiles SET default_model = 'pgt-m2' WHERE name = 'pgt_idem_plan'");
        assert_eq!(Spi::get_one::<i64>(call).unwrap(), first);
        // Naming a model other than the recorded one is another call.
        assert_eq!(
            sqlstate(
                "SELECT control_plane.cp_record_usage('pgt_idem_e', 3, 3, 'pgt-m2', idempotency_key => 'pgt-key-5')"
            ),
            "23505"
        );
    }
}
