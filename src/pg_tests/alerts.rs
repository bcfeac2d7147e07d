//! Money thresholds: one alert per budget, level and window; `warn`, `degrade` and the emergency
//! `deny` of an organisation. Expected amounts are worked out by hand.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use crate::pg_tests::tests::{enroll, json, price, run, set_overrides, sqlstate};
    use pgrx::prelude::*;
    use serde_json::Value;

    /// `cp_admit(subject, tokens, model, max_output_tokens => 0)` as jsonb.
    fn admit(subject: &str, tokens: i64, model: &str) -> Value {
        json(&format!(
            "SELECT to_jsonb(a) FROM control_plane.cp_admit('{subject}', {tokens}, '{model}', max_output_tokens => 0) a"
        ))
    }

    /// The alerts of a subject or an organisation (`who` matched against both), oldest first:
    /// "scope/limit_name/level/used_micros".
    fn alerts(who: &str) -> Vec<String> {
        let v = json(&format!(
            "SELECT coalesce(jsonb_agg(scope || '/' || limit_name || '/' || level || '/' || used_micros ORDER BY id), '[]')
               FROM control_plane.alerts
              WHERE (scope = 'subject' AND subject_id = '{who}') OR (scope = 'organization' AND org_id = '{who}')"
        ));
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    }

    /// A profile of the current tenant with a fallback model and no limits.
    fn profile_with_fallback(name: &str, fallback: &str) {
        run(&format!(
            "INSERT INTO control_plane.profiles (name, fallback_model) VALUES ('{name}', '{fallback}')"
        ));
    }

    /// `subject` with 1 cent a day (10,000 micro-units), and 15 admissions of 500 tokens of
    /// `model` (1 micro-unit each) open: 7,500 reserved, just below the warning threshold.
    fn three_quarters_reserved(subject: &str, model: &str) {
        price("*", model, 1_000_000, 0, "'-infinity'");
        set_overrides(subject, r#"{"daily_budget_cents": 1}"#);
        for i in 0..15 {
            assert_eq!(admit(subject, 500, model)["decision"], "allow", "admission {i}");
        }
    }

    #[pg_test]
    fn each_level_of_a_subject_budget_is_alerted_once_per_window() {
        // 1 micro-unit per input token; 1 cent a day (10,000), so one admission reserves at most
        // 1,000. Each admission of 500 tokens reserves 500.
        price("*", "pgt-al1", 1_000_000, 0, "'-infinity'");
        set_overrides("pgt_al_a", r#"{"daily_budget_cents": 1}"#);
        let mut ids = Vec::new();
        for i in 1..=15 {
            let a = admit("pgt_al_a", 500, "pgt-al1");
            assert_eq!(a["decision"], "allow", "admission {i} ({} reserved): {a}", i * 500);
            ids.push(a["reservation_id"].as_str().unwrap().to_string());
        }
        assert!(alerts("pgt_al_a").is_empty());
        // The 16th reaches 8,000 (80 %): a warning.
        let a = admit("pgt_al_a", 500, "pgt-al1");
        assert_eq!(
            (a["decision"].clone(), a["reason"].clone()),
            ("warn".into(), "quota_warning".into())
        );
        assert_eq!(alerts("pgt_al_a"), ["subject/daily_budget_cents/warning/8000"]);
        // Back under the threshold and over it again: nothing new.
        run(&format!("SELECT control_plane.cp_release('{}')", ids.pop().unwrap()));
        assert_eq!(admit("pgt_al_a", 500, "pgt-al1")["decision"], "warn");
        assert_eq!(alerts("pgt_al_a").len(), 1);
        // The 17th takes it to 8,500; the 18th to 9,000 (90 %): the emergency zone. Without a
        // fallback model it is admitted with a warning that says so.
        admit("pgt_al_a", 500, "pgt-al1");
        let a = admit("pgt_al_a", 500, "pgt-al1");
        assert_eq!(
            (a["decision"].clone(), a["reason"].clone()),
            ("warn".into(), "emergency_threshold".into())
        );
        assert_eq!(a["model"], "pgt-al1");
        // Up to 10,000 (the limit), then refused: the limit once.
        admit("pgt_al_a", 500, "pgt-al1");
        assert_eq!(admit("pgt_al_a", 500, "pgt-al1")["allowed"], true);
        let denied = admit("pgt_al_a", 500, "pgt-al1");
        assert_eq!(denied["reason"], "budget_exceeded", "{denied}");
        assert_eq!(admit("pgt_al_a", 1, "pgt-al1")["reason"], "budget_exceeded");
        assert_eq!(
            alerts("pgt_al_a"),
            [
                "subject/daily_budget_cents/warning/8000",
                "subject/daily_budget_cents/emergency/9000",
                "subject/daily_budget_cents/limit/10000"
            ]
        );
        // The rows name the window (the tenant's day, UTC here) and the budget.
        let row = json(
            "SELECT to_jsonb(a) - 'id' - 'created_at' FROM control_plane.alerts a
              WHERE subject_id = 'pgt_al_a' AND level = 'limit'",
        );
        assert_eq!(row["budget_micros"], 10_000);
        assert_eq!(row["org_id"], Value::Null);
        let same_day = Spi::get_one::<bool>(
            "SELECT window_start = date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
               FROM control_plane.alerts WHERE subject_id = 'pgt_al_a' AND level = 'limit'",
        );
        assert_eq!(same_day, Ok(Some(true)));
        // The status shows the level.
        let day = json("SELECT control_plane.cp_quota_status('pgt_al_a')->'money'");
        assert_eq!(day["day"]["level"], "limit");
        assert_eq!(
            (day["warning_pct"].clone(), day["emergency_pct"].clone()),
            (80.into(), 90.into())
        );
        assert_eq!(day["month"]["level"], Value::Null, "no monthly budget");
    }

    #[pg_test]
    fn a_record_that_spends_past_its_reservation_raises_what_it_reaches() {
        price("*", "pgt-al2", 1_000_000, 0, "'-infinity'");
        set_overrides("pgt_al_b", r#"{"daily_budget_cents": 1}"#);
        // A reservation of 100 recorded at 9,500: spent plus reserved is 9,500 once it commits,
        // past the warning and the emergency thresholds at once (both raised, lowest first).
        let a = admit("pgt_al_b", 100, "pgt-al2");
        assert_eq!(a["decision"], "allow", "{a}");
        assert!(alerts("pgt_al_b").is_empty());
        run(&format!(
            "SELECT control_plane.cp_record_usage('pgt_al_b', 9500, 0, 'pgt-al2', '{}')",
            a["reservation_id"].as_str().unwrap()
        ));
        assert_eq!(
            alerts("pgt_al_b"),
            [
                "subject/daily_budget_cents/warning/9500",
                "subject/daily_budget_cents/emergency/9500"
            ]
        );
        // A record within its reservation owes nothing.
        let b = admit("pgt_al_b", 100, "pgt-al2");
        run(&format!(
            "SELECT control_plane.cp_record_usage('pgt_al_b', 100, 0, 'pgt-al2', '{}')",
            b["reservation_id"].as_str().unwrap()
        ));
        assert_eq!(alerts("pgt_al_b").len(), 2);
    }

    #[pg_test]
    fn degrade_compares_whole_estimates_when_both_reservations_hit_the_cap() {
        // The same input price; the primary's output costs 100 times the fallback's.
        price("*", "pgt-al-cbig", 1_000_000, 100_000_000, "'-infinity'");
        price("*", "pgt-al-csmall", 1_000_000, 1_000_000, "'-infinity'");
        profile_with_fallback("pgt_al_cfb", "pgt-al-csmall");
        enroll("pgt_al_c", "pgt_al_cfb", r#"{"daily_budget_cents": 1}"#);
        for i in 0..15 {
            assert_eq!(
                admit("pgt_al_c", 500, "pgt-al-cbig")["decision"],
                "allow",
                "admission {i}"
            );
        }
        // 100 in and 10,000 expected out: 1,000,100 for the primary, 10,100 for the fallback;
        // both reserve 100 + the cap (1,000 of the 10,000 budget) = 1,100. 7,500 + 1,100 is below
        // 90 %; the next would reach 9,700: degraded, since the fallback is cheaper.
        let ask = || {
            json(
                "SELECT to_jsonb(a) FROM control_plane.cp_admit('pgt_al_c', 100, 'pgt-al-cbig',
                                                                max_output_tokens => 10000) a",
            )
        };
        assert_eq!(ask()["decision"], "warn");
        let a = ask();
        assert_eq!(
            (a["decision"].clone(), a["model"].clone()),
            ("degrade".into(), "pgt-al-csmall".into()),
            "{a}"
        );
    }

    #[pg_test]
    fn an_organisation_degrades_to_the_fallback_model_in_its_emergency_zone() {
        // The primary model costs 1 micro-unit per input token, the fallback a tenth of that.
        price("*", "pgt-al-big", 1_000_000, 0, "'-infinity'");
        price("*", "pgt-al-small", 100_000, 0, "'-infinity'");
        profile_with_fallback("pgt_al_fb", "pgt-al-small");
        run("INSERT INTO control_plane.organizations (org_id, daily_budget_cents) VALUES ('pgt_al_org', 1)");
        run("INSERT INTO control_plane.subjects (subject_id, profile, org_id) VALUES ('pgt_al_m', 'pgt_al_fb', 'pgt_al_org')");
        // 17 admissions of 500: 8,500 reserved (a warning at the 16th).
        for i in 1..=17 {
            let a = admit("pgt_al_m", 500, "pgt-al-big");
            assert_eq!(a["model"], "pgt-al-big", "admission {i}: {a}");
        }
        // The 18th would reach 9,000: degraded to the fallback, which reserves 50.
        let a = admit("pgt_al_m", 500, "pgt-al-big");
        assert_eq!(a["decision"], "degrade", "{a}");
        assert_eq!(a["reason"], "emergency_threshold");
        assert_eq!(a["model"], "pgt-al-small");
        assert_eq!(a["limit_name"], "org_daily_budget_cents");
        assert_eq!(a["remaining"], 1_450, "10,000 - 8,500 - 50");
        let o = json("SELECT control_plane.cp_quota_status('pgt_al_m')->'organization'->'money'->'day'");
        assert_eq!(o["reserved_micros"], 8_550);
        assert_eq!(o["level"], "warning", "the degraded request stays below 90 %");
        assert_eq!(
            alerts("pgt_al_org"),
            [
                "organization/org_daily_budget_cents/warning/8000",
                "organization/org_daily_budget_cents/emergency/8550"
            ],
            "the emergency action is alerted when it starts"
        );
        let who = Spi::get_one::<String>(
            "SELECT subject_id FROM control_plane.alerts WHERE level = 'emergency' AND org_id = 'pgt_al_org'",
        );
        assert_eq!(who, Ok(Some("pgt_al_m".into())), "the subject whose request reached it");
        // Recording a degraded admission with the fallback model settles it.
        run(&format!(
            "SELECT control_plane.cp_record_usage('pgt_al_m', 500, 0, 'pgt-al-small', '{}')",
            a["reservation_id"].as_str().unwrap()
        ));
        // Degraded requests go on until even the fallback no longer fits: 1,450 / 50 = 29 more.
        for i in 0..29 {
            assert_eq!(
                admit("pgt_al_m", 500, "pgt-al-big")["decision"],
                "degrade",
                "degraded {i}"
            );
        }
        let denied = admit("pgt_al_m", 500, "pgt-al-big");
        assert_eq!(
            (denied["reason"].clone(), denied["limit_name"].clone()),
            ("budget_exceeded".into(), "org_daily_budget_cents".into())
        );
        assert_eq!(
            alerts("pgt_al_org")[2],
            "organization/org_daily_budget_cents/limit/10000"
        );
        assert!(alerts("pgt_al_m").is_empty(), "the subject has no budget of its own");
    }

    #[pg_test]
    fn an_organisation_that_denies_refuses_its_emergency_zone() {
        price("*", "pgt-al3", 1_000_000, 0, "'-infinity'");
        profile_with_fallback("pgt_al_fb3", "pgt-al3-free");
        price("*", "pgt-al3-free", 0, 0, "'-infinity'");
        run(
            "INSERT INTO control_plane.organizations (org_id, daily_budget_cents, emergency_action)
             VALUES ('pgt_al_org3', 1, 'deny')",
        );
        run("INSERT INTO control_plane.subjects (subject_id, profile, org_id) VALUES ('pgt_al_d', 'pgt_al_fb3', 'pgt_al_org3')");
        for _ in 0..17 {
            assert_eq!(admit("pgt_al_d", 500, "pgt-al3")["allowed"], true);
        }
        let a = admit("pgt_al_d", 500, "pgt-al3");
        assert_eq!(a["decision"], "deny", "{a}");
        assert_eq!(a["reason"], "emergency_threshold");
        assert_eq!(a["limit_name"], "org_daily_budget_cents");
        assert_eq!(a["remaining"], 1_500);
        assert!(a["retry_after_ms"].as_i64().unwrap() > 0);
        // Smaller requests that stay below 90 % still fit; a free model is never refused by money.
        assert_eq!(admit("pgt_al_d", 499, "pgt-al3")["allowed"], true);
        assert_eq!(admit("pgt_al_d", 500, "pgt-al3-free")["allowed"], true);
        assert_eq!(
            alerts("pgt_al_org3"),
            [
                "organization/org_daily_budget_cents/warning/8000",
                "organization/org_daily_budget_cents/emergency/8500"
            ]
        );
        let denied = Spi::get_one::<i64>("SELECT value FROM control_plane.stats WHERE name = 'denied_budget'");
        assert!(denied.unwrap().unwrap() >= 1);
    }

    #[pg_test]
    fn an_admission_that_owes_an_alert_in_a_read_only_transaction_fails_and_holds_nothing() {
        three_quarters_reserved("pgt_al_ro", "pgt-al5");
        assert_eq!(sqlstate("SELECT 1"), "ok");
        run("SET LOCAL transaction_read_only = on");
        let reserved = || json("SELECT control_plane.cp_quota_status('pgt_al_ro')->'money'->'day'->'reserved_micros'");
        assert_eq!(reserved(), 7_500);
        // (sqlstate_of, which `sqlstate` created above, runs the call in a subtransaction.)
        let code = Spi::get_one::<String>(
            "SELECT pg_temp.sqlstate_of($$SELECT control_plane.cp_admit('pgt_al_ro', 500, 'pgt-al5', max_output_tokens => 0)$$)",
        );
        assert_eq!(code, Ok(Some("25006".into())));
        assert_eq!(reserved(), 7_500, "the reservation was given back");
        // Below the threshold nothing is owed: admitted as usual.
        assert_eq!(admit("pgt_al_ro", 1, "pgt-al5")["decision"], "allow");
    }

    #[pg_test]
    fn an_aborted_alert_is_raised_again() {
        // A subtransaction that reached the warning rolls back: its alert row is gone, and the next
        // admission past the threshold writes it again.
        three_quarters_reserved("pgt_al_e", "pgt-al4");
        run("DO $$ BEGIN
                 PERFORM control_plane.cp_admit('pgt_al_e', 500, 'pgt-al4', max_output_tokens => 0);
                 RAISE EXCEPTION 'roll back';
             EXCEPTION WHEN raise_exception THEN NULL;
             END $$");
        assert!(alerts("pgt_al_e").is_empty(), "the subtransaction's alert is gone");
        // (The rolled-back admission still holds its reservation: admissions are not transactional.)
        assert_eq!(admit("pgt_al_e", 500, "pgt-al4")["decision"], "warn");
        assert_eq!(alerts("pgt_al_e"), ["subject/daily_budget_cents/warning/8500"]);
    }
}
