//! Money: prices and the cost `cp_record_usage` computes from them. Expected costs are worked out
//! by hand in the tests (integers, rounded up), not by the extension's arithmetic.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use crate::pg_tests::tests::{price, run, set_overrides, sqlstate};
    use pgrx::prelude::*;

    /// `cp_record_usage` of `input` and `output` tokens for `subject` with `model` (SQL text):
    /// (cost_micros, the cost stored in its ledger row).
    fn record_cost(subject: &str, input: i64, output: i64, model: &str) -> (Option<i64>, Option<i64>) {
        let (id, cost) = Spi::get_two::<i64, i64>(&format!(
            "SELECT event_id, cost_micros FROM control_plane.cp_record_usage('{subject}', {input}, {output}, {model})"
        ))
        .unwrap();
        let stored = Spi::get_one::<i64>(&format!(
            "SELECT cost_micros FROM control_plane.usage_events WHERE id = {}",
            id.unwrap()
        ))
        .unwrap();
        (cost, stored)
    }

    #[pg_test]
    fn a_family_prices_the_dated_names_it_prefixes_and_a_models_own_name_comes_first() {
        set_overrides("pgt_price_f", r#"{"daily_budget_cents": 100}"#);
        // 1 and 10 micro-units per token for the family; 2 for its longer family; 3 for one name.
        price("*", "pgt-fam*", 1_000_000, 10_000_000, "'-infinity'");
        price("*", "pgt-fam-mini*", 2_000_000, 0, "'-infinity'");
        price("*", "pgt-fam-2024", 3_000_000, 0, "'-infinity'");
        assert_eq!(
            record_cost("pgt_price_f", 100, 10, "'pgt-fam-2025-08-06'"),
            (Some(200), Some(200))
        );
        assert_eq!(
            record_cost("pgt_price_f", 100, 0, "'pgt-fam-mini-0718'"),
            (Some(200), Some(200))
        );
        assert_eq!(
            record_cost("pgt_price_f", 100, 0, "'pgt-fam-2024'"),
            (Some(300), Some(300))
        );
        assert_eq!(
            record_cost("pgt_price_f", 100, 0, "'pgt-fa'"),
            (None, None),
            "no family prefixes it"
        );
        // Admitted under a budget: the dated name is priced, not refused as unpriced.
        let allowed = Spi::get_one::<bool>(
            "SELECT allowed FROM control_plane.cp_admit('pgt_price_f', 100, 'pgt-fam-2099', max_output_tokens => 0)",
        )
        .unwrap();
        assert_eq!(allowed, Some(true));
        // '*' elsewhere than at the end, or alone, is refused.
        for bad in ["pgt*fam", "*", "**"] {
            assert_eq!(
                sqlstate(&format!(
                    "INSERT INTO control_plane.model_prices (tenant_id, model, input_micros_per_million,
                         output_micros_per_million) VALUES ('*', '{bad}', 1, 1)"
                )),
                "23514",
                "{bad}"
            );
        }
    }

    #[pg_test]
    fn a_recorded_cost_uses_the_price_in_force_and_the_tenants_own_row_first() {
        set_overrides("pgt_price_a", "{}");
        // Shared price since always; 0.15 and 0.60 per million.
        price("*", "pgt-mini", 150_000, 600_000, "'-infinity'");
        // 1,000 in + 1,000 out = 150 + 600 micro-units.
        assert_eq!(
            record_cost("pgt_price_a", 1_000, 1_000, "'pgt-mini'"),
            (Some(750), Some(750))
        );
        // 3 in + 1 out = 0.45 + 0.60 = 1.05 micro-units: rounded up to 2.
        assert_eq!(record_cost("pgt_price_a", 3, 1, "'pgt-mini'"), (Some(2), Some(2)));
        // The tenant's own row, once in force, wins; one not yet in force does not.
        price(
            "default",
            "pgt-mini",
            1_000_000,
            2_000_000,
            "clock_timestamp() - interval '1 hour'",
        );
        price(
            "default",
            "pgt-mini",
            9_000_000,
            9_000_000,
            "clock_timestamp() + interval '1 hour'",
        );
        assert_eq!(
            record_cost("pgt_price_a", 1_000, 1_000, "'pgt-mini'"),
            (Some(3_000), Some(3_000))
        );
        // A newer shared row does not beat the tenant's row in force.
        price("*", "pgt-mini", 5, 5, "clock_timestamp() - interval '1 minute'");
        assert_eq!(
            record_cost("pgt_price_a", 1_000, 1_000, "'pgt-mini'"),
            (Some(3_000), Some(3_000))
        );
        // Another tenant sees only the shared rows.
        run("SET LOCAL control_plane.tenant = 'pgt_price_other'");
        set_overrides("pgt_price_b", "{}");
        assert_eq!(
            record_cost("pgt_price_b", 1_000_000, 0, "'pgt-mini'"),
            (Some(5), Some(5))
        );
        run("RESET control_plane.tenant");
    }

    #[pg_test]
    fn an_unpriced_or_unnamed_model_records_no_cost_and_a_free_one_records_zero() {
        set_overrides("pgt_price_c", "{}");
        assert_eq!(record_cost("pgt_price_c", 10, 10, "'pgt-unpriced'"), (None, None));
        assert_eq!(record_cost("pgt_price_c", 10, 10, "NULL"), (None, None));
        // A price that starts later leaves the model unpriced until then.
        price("*", "pgt-later", 1, 1, "clock_timestamp() + interval '1 day'");
        assert_eq!(record_cost("pgt_price_c", 10, 10, "'pgt-later'"), (None, None));
        price("*", "pgt-free", 0, 0, "'-infinity'");
        assert_eq!(record_cost("pgt_price_c", 10, 10, "'pgt-free'"), (Some(0), Some(0)));
    }

    #[pg_test]
    fn the_largest_price_and_token_counts_cost_what_128_bit_arithmetic_says() {
        set_overrides("pgt_price_d", "{}");
        price("*", "pgt-max", 1_000_000_000_000, 1_000_000_000_000, "'-infinity'");
        // One whole unit per token, 10^12 tokens each way (the most a call accepts): the products
        // are 10^24, far past bigint, and the cost is exactly 2 * 10^18 micro-units.
        assert_eq!(
            record_cost("pgt_price_d", 1_000_000_000_000, 1_000_000_000_000, "'pgt-max'"),
            (Some(2_000_000_000_000_000_000), Some(2_000_000_000_000_000_000))
        );
        assert_eq!(
            record_cost("pgt_price_d", 7, 0, "'pgt-max'"),
            (Some(7_000_000), Some(7_000_000))
        );
    }

    #[pg_test]
    fn a_bad_price_is_refused_with_a_clean_sqlstate() {
        let ins = |tenant: &str, model: &str, i: &str, o: &str| {
            sqlstate(&format!(
                "INSERT INTO control_plane.model_prices (tenant_id, model, input_micros_per_million, output_micros_per_million)
                 VALUES ('{tenant}', '{model}', {i}, {o})"
            ))
        };
        assert_eq!(ins("*", "pgt-bad", "-1", "0"), "23514", "negative input price");
        assert_eq!(ins("*", "pgt-bad", "0", "-1"), "23514", "negative output price");
        assert_eq!(
            ins("*", "pgt-bad", "1000000000001", "0"),
            "23514",
            "more than one unit per token"
        );
        assert_eq!(ins("*", "", "1", "1"), "23514", "empty model");
        assert_eq!(ins("", "pgt-bad", "1", "1"), "23514", "empty tenant");
        assert_eq!(ins("*", "pgt-bad", "NULL", "1"), "23502", "no price");
        assert_eq!(ins("*", "pgt-bad", "1", "1"), "ok");
        assert_eq!(ins("*", "pgt-bad", "1", "1"), "23505", "two rows for the same instant");
    }
}
