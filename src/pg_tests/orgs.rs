//! Organisations: the budgets all their subjects draw on together, their switches, and the rules
//! of their rows. Expected amounts are worked out by hand.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use crate::pg_tests::tests::{json, price, run, sqlstate};
    use pgrx::prelude::*;
    use serde_json::Value;

    /// An organisation of the current tenant with a daily budget (cents, SQL text).
    fn org(name: &str, daily_cents: &str) {
        run(&format!(
            "INSERT INTO control_plane.organizations (org_id, daily_budget_cents) VALUES ('{name}', {daily_cents})"
        ));
    }

    /// `subject` on the `unlimited` preset (no limit of its own) in organisation `org`.
    fn member(subject: &str, org: &str) {
        run(&format!(
            "INSERT INTO control_plane.subjects (subject_id, profile, org_id) VALUES ('{subject}', 'unlimited', '{org}')"
        ));
    }

    /// `cp_admit(subject, tokens, model, max_output_tokens => 0)` as jsonb.
    fn admit(subject: &str, tokens: i64, model: &str) -> Value {
        json(&format!(
            "SELECT to_jsonb(a) FROM control_plane.cp_admit('{subject}', {tokens}, '{model}', max_output_tokens => 0) a"
        ))
    }

    #[pg_test]
    fn the_subjects_of_an_organisation_share_its_budget_all_or_nothing() {
        // 1 micro-unit per input token; the organisation has 1 cent a day (10,000 micro-units),
        // its subjects none of their own. Each admission reserves 100: exactly 100 fit, whichever
        // subject asks.
        price("*", "pgt-o1", 1_000_000, 0, "'-infinity'");
        org("pgt_org1", "1");
        for s in ["pgt_org1_a", "pgt_org1_b", "pgt_org1_c"] {
            member(s, "pgt_org1");
        }
        let first = admit("pgt_org1_a", 100, "pgt-o1");
        assert_eq!(first["allowed"], true, "{first}");
        assert_eq!(
            first["limit_name"], "org_daily_budget_cents",
            "the tightest dimension is the organisation's"
        );
        assert_eq!(first["remaining"], 9_900);
        for i in 1..100 {
            let s = ["pgt_org1_a", "pgt_org1_b", "pgt_org1_c"][i % 3];
            let a = admit(s, 100, "pgt-o1");
            assert_eq!(a["allowed"], true, "admission {i}: {a}");
        }
        let denied = admit("pgt_org1_c", 100, "pgt-o1");
        assert_eq!(denied["decision"], "deny", "{denied}");
        assert_eq!(denied["reason"], "budget_exceeded");
        assert_eq!(denied["limit_name"], "org_daily_budget_cents");
        assert_eq!(denied["remaining"], 0);
        assert!(denied["retry_after_ms"].as_i64().unwrap() > 0, "frees at midnight");
        // A model that costs nothing is never refused by money.
        price("*", "pgt-o1-free", 0, 0, "'-infinity'");
        assert_eq!(admit("pgt_org1_c", 100, "pgt-o1-free")["allowed"], true);

        let o = json("SELECT control_plane.cp_quota_status('pgt_org1_b')->'organization'");
        assert_eq!(o["org_id"], "pgt_org1");
        assert_eq!(o["money"]["day"]["budget_micros"], 10_000);
        assert_eq!(o["money"]["day"]["reserved_micros"], 10_000);
        assert_eq!(o["money"]["day"]["remaining_micros"], 0);
        assert_eq!(o["money"]["day"]["percent"], 100);
        assert_eq!(o["money"]["month"]["budget_micros"], Value::Null);
        assert_eq!(o["held"]["cost_micros"], 10_000);
        assert_eq!(
            (o["warning_pct"].clone(), o["emergency_pct"].clone()),
            (80.into(), 90.into())
        );
        assert_eq!(o["emergency_action"], "degrade");
        assert_eq!(o["emergency_stop"], false);
        // Each subject's own money shows only what it holds.
        let b = json("SELECT control_plane.cp_quota_status('pgt_org1_b')");
        assert_eq!(b["org_id"], "pgt_org1");
        assert_eq!(b["held"]["cost_micros"], 3_300, "33 of the 100 admissions");
    }

    #[pg_test]
    fn a_release_gives_back_to_the_organisation_too() {
        price("*", "pgt-o2", 1_000_000, 0, "'-infinity'");
        org("pgt_org2", "1");
        member("pgt_org2_a", "pgt_org2");
        member("pgt_org2_b", "pgt_org2");
        // 1,000 input tokens: 1,000 reserved on the organisation too.
        let a = admit("pgt_org2_a", 1_000, "pgt-o2");
        assert_eq!(a["allowed"], true, "{a}");
        assert_eq!(
            json("SELECT control_plane.cp_quota_status('pgt_org2_b')->'organization'->'money'->'day'")
                ["reserved_micros"],
            1_000
        );
        let id = a["reservation_id"].as_str().unwrap();
        assert_eq!(
            Spi::get_one::<bool>(&format!("SELECT control_plane.cp_release('{id}')")).unwrap(),
            Some(true)
        );
        let day = json("SELECT control_plane.cp_quota_status('pgt_org2_b')->'organization'->'money'->'day'");
        assert_eq!(
            (day["reserved_micros"].clone(), day["remaining_micros"].clone()),
            (0.into(), 10_000.into())
        );
    }

    #[pg_test]
    fn a_subject_budget_and_an_organisation_budget_both_apply() {
        // The subject has 1 cent a day (10,000 micro-units) of its own, its organisation 10 cents:
        // the subject's budget is the tighter one, and refuses first.
        price("*", "pgt-o3", 1_000_000, 0, "'-infinity'");
        org("pgt_org3", "10");
        run(
            "INSERT INTO control_plane.subjects (subject_id, profile, org_id, overrides)
             VALUES ('pgt_org3_a', 'unlimited', 'pgt_org3', '{\"daily_budget_cents\": 1}')",
        );
        member("pgt_org3_b", "pgt_org3");
        // 1,000 input tokens each (1,000 micro-units): ten fit its 10,000.
        for i in 0..10 {
            let a = admit("pgt_org3_a", 1_000, "pgt-o3");
            assert_eq!(a["allowed"], true, "admission {i}: {a}");
            assert_eq!(a["limit_name"], "daily_budget_cents");
        }
        let denied = admit("pgt_org3_a", 1_000, "pgt-o3");
        assert_eq!(
            denied["limit_name"], "daily_budget_cents",
            "the subject's own budget refuses"
        );
        // Its organisation still has 90,000 for the others.
        let b = admit("pgt_org3_b", 5_000, "pgt-o3");
        assert_eq!(b["allowed"], true, "{b}");
        assert_eq!(b["remaining"], 85_000);
    }

    #[pg_test]
    fn inactive_and_stopped_organisations_refuse_and_an_admin_resets_them() {
        price("*", "pgt-o4", 1_000_000, 0, "'-infinity'");
        org("pgt_org4", "NULL");
        member("pgt_org4_a", "pgt_org4");
        assert_eq!(admit("pgt_org4_a", 10, "pgt-o4")["allowed"], true);
        run("UPDATE control_plane.organizations SET emergency_stop = true WHERE org_id = 'pgt_org4'");
        let stopped = admit("pgt_org4_a", 10, "pgt-o4");
        assert_eq!(
            (stopped["decision"].clone(), stopped["reason"].clone()),
            ("deny".into(), "emergency_stop".into())
        );
        assert_eq!(
            json("SELECT control_plane.cp_quota_status('pgt_org4_a')->'organization'")["emergency_stop"],
            true
        );
        run("UPDATE control_plane.organizations SET emergency_stop = false, active = false WHERE org_id = 'pgt_org4'");
        assert_eq!(admit("pgt_org4_a", 10, "pgt-o4")["reason"], "org_inactive");
        run("UPDATE control_plane.organizations SET active = true WHERE org_id = 'pgt_org4'");
        assert_eq!(admit("pgt_org4_a", 10, "pgt-o4")["allowed"], true);
        // Without a budget anywhere an unpriced model is admitted; with the organisation's, not.
        assert_eq!(admit("pgt_org4_a", 10, "pgt-o4-unpriced")["allowed"], true);
        run("UPDATE control_plane.organizations SET monthly_budget_cents = 100 WHERE org_id = 'pgt_org4'");
        assert_eq!(admit("pgt_org4_a", 10, "pgt-o4-unpriced")["reason"], "unpriced_model");
        // A subject moved out of the organisation is free of it at its next admission.
        run("UPDATE control_plane.organizations SET emergency_stop = true WHERE org_id = 'pgt_org4'");
        run("UPDATE control_plane.subjects SET org_id = NULL WHERE subject_id = 'pgt_org4_a'");
        assert_eq!(admit("pgt_org4_a", 10, "pgt-o4")["allowed"], true);
    }

    #[pg_test]
    fn organisation_rows_are_checked_and_references_to_them_too() {
        org("pgt_org5", "NULL");
        let insert = |cols: &str, vals: &str| {
            sqlstate(&format!(
                "INSERT INTO control_plane.organizations (org_id, {cols}) VALUES ('pgt_org5_x', {vals})"
            ))
        };
        assert_eq!(insert("daily_budget_cents", "-1"), "23514");
        assert_eq!(insert("monthly_budget_cents", "-1"), "23514");
        assert_eq!(insert("warning_pct", "0"), "23514");
        assert_eq!(insert("emergency_pct", "101"), "23514");
        assert_eq!(insert("warning_pct, emergency_pct", "95, 90"), "23514");
        assert_eq!(insert("emergency_action", "'stop'"), "23514");
        assert_eq!(insert("active", "NULL"), "23502");
        assert_eq!(
            sqlstate("INSERT INTO control_plane.organizations (org_id) VALUES ('')"),
            "23514"
        );
        assert_eq!(
            sqlstate("INSERT INTO control_plane.organizations (org_id) VALUES (repeat('x', 257))"),
            "23514"
        );
        // A subject names an existing organisation of its own tenant.
        assert_eq!(
            sqlstate("INSERT INTO control_plane.subjects (subject_id, profile, org_id) VALUES ('pgt_org5_a', 'free', 'nope')"),
            "23503"
        );
        assert_eq!(
            sqlstate(
                "INSERT INTO control_plane.subjects (tenant_id, subject_id, profile, org_id)
                 VALUES ('pgt_other_tenant', 'pgt_org5_a', 'free', 'pgt_org5')"
            ),
            "23503"
        );
        member("pgt_org5_a", "pgt_org5");
        // An organisation in use cannot go (nor be renamed).
        assert_eq!(
            sqlstate("DELETE FROM control_plane.organizations WHERE org_id = 'pgt_org5'"),
            "23503"
        );
        assert_eq!(
            sqlstate("UPDATE control_plane.organizations SET org_id = 'pgt_org5_renamed' WHERE org_id = 'pgt_org5'"),
            "23503"
        );
    }
}
