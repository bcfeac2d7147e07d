//! Money budgets at admission: cost reservations, the cap of their expected output, settling, unpriced and free models,
//! the model to call. Expected amounts are worked out by hand (integers, rounded up).

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use crate::pg_tests::tests::{enroll, json, price, run, set_overrides, sqlstate};
    use pgrx::prelude::*;
    use serde_json::Value;

    /// `cp_admit` with every argument (SQL texts), as jsonb.
    fn admit(subject: &str, tokens: i64, model: &str, max_output: &str) -> Value {
        json(&format!(
            "SELECT to_jsonb(a) FROM control_plane.cp_admit('{subject}', {tokens}, {model}, NULL, {max_output}) a"
        ))
    }

    fn money(subject: &str, window: &str) -> Value {
        json(&format!(
            "SELECT control_plane.cp_quota_status('{subject}')->'money'->'{window}'"
        ))
    }

    /// A shared price in force since always.
    fn shared_price(model: &str, input: i64, output: i64) {
        price("*", model, input, output, "'-infinity'");
    }

    #[pg_test]
    fn a_budget_holds_each_estimate_and_refuses_what_no_longer_fits() {
        // 1 and 2 micro-units per input and output token; 10 cents a day = 100,000 micro-units,
        // so the expected output of one admission is reserved up to 10 % of it: 10,000.
        shared_price("pgt-b1", 1_000_000, 2_000_000);
        set_overrides("pgt_budget_a", r#"{"daily_budget_cents": 10}"#);
        // 1,000 in + 2,000 expected out = 5,000 micro-units each: 20 fit.
        for i in 0..20 {
            let a = admit("pgt_budget_a", 1_000, "'pgt-b1'", "2000");
            assert_eq!(a["allowed"], true, "admission {i}: {a}");
            assert_eq!(a["model"], "pgt-b1");
        }
        let denied = admit("pgt_budget_a", 1_000, "'pgt-b1'", "2000");
        assert_eq!(denied["decision"], "deny", "{denied}");
        assert_eq!(denied["reason"], "budget_exceeded");
        assert_eq!(denied["limit_name"], "daily_budget_cents");
        assert_eq!(denied["remaining"], 0, "in micro-units");
        assert!(denied["retry_after_ms"].as_i64().unwrap() > 0, "frees at midnight");
        let day = money("pgt_budget_a", "day");
        assert_eq!(day["budget_micros"], 100_000);
        assert_eq!(day["reserved_micros"], 100_000);
        assert_eq!(day["remaining_micros"], 0);
        assert_eq!(day["percent"], 100);
        assert_eq!(day["budget"], "0.10 USD");
    }

    #[pg_test]
    fn a_record_settles_the_reservation_to_the_actual_cost_and_an_overshoot_counts() {
        shared_price("pgt-b2", 1_000_000, 2_000_000);
        set_overrides("pgt_budget_b", r#"{"daily_budget_cents": 10}"#);
        let a = admit("pgt_budget_b", 100, "'pgt-b2'", "400");
        assert_eq!(money("pgt_budget_b", "day")["reserved_micros"], 900);
        let rid = a["reservation_id"].as_str().unwrap().to_string();
        // (Totals move when the recording transaction commits, which a pg_test's never does: the
        // integration tests check what the next admission sees.)
        let cost = Spi::get_one::<i64>(&format!(
            "SELECT cost_micros FROM control_plane.cp_record_usage('pgt_budget_b', 100, 50, 'pgt-b2', '{rid}')"
        ))
        .unwrap();
        assert_eq!(cost, Some(200), "100 + 2 * 50");
        // A record above what was reserved is recorded as it is (money spent is never hidden).
        let cost = Spi::get_one::<i64>(
            "SELECT cost_micros FROM control_plane.cp_record_usage('pgt_budget_b', 60000, 60000, 'pgt-b2')",
        )
        .unwrap();
        assert_eq!(cost, Some(180_000));
    }

    #[pg_test]
    fn only_the_expected_output_is_capped_and_a_known_input_past_the_budget_is_refused() {
        shared_price("pgt-b3", 1_000_000, 1_000_000);
        // Smallest budget: 5 cents a day = 50,000; the expected output is reserved up to 10 % of
        // it (5,000), the input (known before the call) in full.
        set_overrides(
            "pgt_budget_c",
            r#"{"daily_budget_cents": 5, "monthly_budget_cents": 1000}"#,
        );
        let a = admit("pgt_budget_c", 1_000, "'pgt-b3'", "1000000");
        assert_eq!(a["allowed"], true, "{a}");
        assert_eq!(money("pgt_budget_c", "day")["reserved_micros"], 6_000, "1,000 + 5,000");
        assert_eq!(money("pgt_budget_c", "month")["reserved_micros"], 6_000);
        // 45,000 input tokens are known to cost 45,000: more than the 44,000 left.
        let d = admit("pgt_budget_c", 45_000, "'pgt-b3'", "0");
        assert_eq!(
            (d["reason"].clone(), d["limit_name"].clone(), d["remaining"].clone()),
            ("budget_exceeded".into(), "daily_budget_cents".into(), 44_000.into()),
            "{d}"
        );
        assert_eq!(admit("pgt_budget_c", 44_000, "'pgt-b3'", "0")["allowed"], true);
        assert_eq!(money("pgt_budget_c", "day")["reserved_micros"], 50_000);
        // A dollar of input against a budget of 10 cents (2.5 per million input tokens): refused,
        // however many times it is asked (it was admitted at the cap, 10 of 12 times).
        shared_price("pgt-b3-big", 2_500_000, 10_000_000);
        set_overrides("pgt_budget_d", r#"{"daily_budget_cents": 10}"#);
        for i in 0..12 {
            let d = admit("pgt_budget_d", 400_000, "'pgt-b3-big'", "0");
            assert_eq!(d["reason"], "budget_exceeded", "admission {i}: {d}");
        }
        assert_eq!(money("pgt_budget_d", "day")["reserved_micros"], 0);
        // Without max_output_tokens, control_plane.default_max_output_tokens (1024) is expected.
        set_overrides("pgt_budget_c2", r#"{"monthly_budget_cents": 1000}"#);
        admit("pgt_budget_c2", 10, "'pgt-b3'", "NULL");
        assert_eq!(money("pgt_budget_c2", "month")["reserved_micros"], 1_034);
        run("SET LOCAL control_plane.default_max_output_tokens = 0");
        admit("pgt_budget_c2", 10, "'pgt-b3'", "NULL");
        assert_eq!(money("pgt_budget_c2", "month")["reserved_micros"], 1_044);
    }

    #[pg_test]
    fn unpriced_models_are_denied_under_a_budget_and_free_ones_are_never_blocked_by_money() {
        // A budget of nothing: no request that costs money fits.
        set_overrides("pgt_budget_d", r#"{"daily_budget_cents": 0}"#);
        let a = admit("pgt_budget_d", 10, "'pgt-unpriced'", "NULL");
        assert_eq!(
            (a["decision"].as_str(), a["reason"].as_str()),
            (Some("deny"), Some("unpriced_model"))
        );
        let a = admit("pgt_budget_d", 10, "NULL", "NULL");
        assert_eq!(a["reason"], "unpriced_model", "no model named and no default");
        shared_price("pgt-b4", 1_000_000, 1_000_000);
        let a = admit("pgt_budget_d", 0, "'pgt-b4'", "0");
        assert_eq!(
            a["reason"], "budget_exceeded",
            "a priced model needs a micro-unit left: {a}"
        );
        // A free model is admitted, and holds nothing against the budget.
        shared_price("pgt-free", 0, 0);
        let a = admit("pgt_budget_d", 10, "'pgt-free'", "NULL");
        assert_eq!(a["allowed"], true, "{a}");
        assert_eq!(money("pgt_budget_d", "day")["reserved_micros"], 0);
        // Without a budget, an unpriced model is admitted (nothing to protect).
        set_overrides("pgt_budget_e", "{}");
        let a = admit("pgt_budget_e", 10, "'pgt-unpriced'", "NULL");
        assert_eq!(
            (a["allowed"].as_bool(), a["model"].as_str()),
            (Some(true), Some("pgt-unpriced"))
        );
    }

    #[pg_test]
    fn a_request_without_a_model_calls_the_profiles_default_and_is_priced_for_it() {
        shared_price("pgt-b5", 2_000_000, 0);
        run(
            "INSERT INTO control_plane.profiles (name, daily_budget_cents, default_model)
             VALUES ('pgt_budget_plan', 100, 'pgt-b5')",
        );
        enroll("pgt_budget_f", "pgt_budget_plan", "{}");
        let a = admit("pgt_budget_f", 50, "NULL", "0");
        assert_eq!(
            (a["allowed"].as_bool(), a["model"].as_str()),
            (Some(true), Some("pgt-b5")),
            "{a}"
        );
        assert_eq!(money("pgt_budget_f", "day")["reserved_micros"], 100);
        // A named model is called as named.
        let a = admit("pgt_budget_f", 50, "'pgt-unpriced'", "0");
        assert_eq!(a["reason"], "unpriced_model");
        // cp_record_usage without a model records the default, at its price.
        let (id, cost) = Spi::get_two::<i64, i64>(
            "SELECT event_id, cost_micros FROM control_plane.cp_record_usage('pgt_budget_f', 7, 0)",
        )
        .unwrap();
        let model = Spi::get_one::<String>(&format!(
            "SELECT model FROM control_plane.usage_events WHERE id = {}",
            id.unwrap()
        ))
        .unwrap();
        assert_eq!((model.as_deref(), cost), (Some("pgt-b5"), Some(14)));
    }

    #[pg_test]
    fn bad_max_output_tokens_is_refused_with_a_clean_sqlstate() {
        set_overrides("pgt_budget_g", "{}");
        assert_eq!(
            sqlstate("SELECT control_plane.cp_admit('pgt_budget_g', 1, NULL, NULL, -1)"),
            "22023"
        );
        assert_eq!(
            sqlstate("SELECT control_plane.cp_admit('pgt_budget_g', 1, NULL, NULL, 1000000000001)"),
            "22023"
        );
        assert_eq!(
            sqlstate("SELECT control_plane.cp_admit('pgt_budget_g', 1, NULL, NULL, 1000000000000)"),
            "ok"
        );
    }
}
