//! Tenants' time zones: validation, windows, a change of zone, retry times and compaction by
//! local day. Expectations are computed by PostgreSQL's own time zone support (`date_trunc(...,
//! zone)`), independently of the tz rules the extension bundles; the zones used have had the
//! same rules for decades.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use crate::pg_tests::tests::{admit, enroll, json, run, sqlstate};
    use pgrx::prelude::*;
    use serde_json::Value;

    /// `expr` (a timestamptz) as the extension prints instants.
    fn iso(expr: &str) -> String {
        Spi::get_one::<String>(&format!(
            "SELECT to_char(({expr}) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
        ))
        .unwrap()
        .unwrap()
    }

    fn int(sql: &str) -> i64 {
        Spi::get_one::<i64>(sql).unwrap().unwrap()
    }

    fn status(subject: &str) -> Value {
        json(&format!("SELECT control_plane.cp_quota_status('{subject}')"))
    }

    /// Requests of `subject`'s ledger rows in the day and the month of `zone` that contain now.
    fn ledger_requests(subject: &str, zone: &str) -> (i64, i64) {
        let q = |unit: &str| {
            int(&format!(
                "SELECT coalesce(sum(requests), 0)::bigint FROM control_plane.usage_events
                  WHERE subject_id = '{subject}'
                    AND created_at >= date_trunc('{unit}', clock_timestamp(), '{zone}')
                    AND created_at < date_trunc('{unit}', clock_timestamp(), '{zone}') + interval '1 {unit}'"
            ))
        };
        (q("day"), q("month"))
    }

    fn used(s: &Value) -> (i64, i64) {
        (
            s["quotas"]["requests_per_day"]["used"].as_i64().unwrap(),
            s["quotas"]["requests_per_month"]["used"].as_i64().unwrap(),
        )
    }

    #[pg_test]
    fn a_tenant_time_zone_must_be_in_the_tz_database() {
        let ins = |t: &str, z: &str| {
            sqlstate(&format!(
                "INSERT INTO control_plane.tenants (tenant_id, time_zone) VALUES ('{t}', '{z}')"
            ))
        };
        assert_eq!(ins("pgt_tz_a", "Mars/Olympus_Mons"), "22023");
        assert_eq!(ins("pgt_tz_a", "+05:00"), "22023");
        assert_eq!(ins("", "UTC"), "23514");
        assert_eq!(ins("pgt_tz_a", "europe/paris"), "ok");
        assert_eq!(
            sqlstate("UPDATE control_plane.tenants SET time_zone = 'Nowhere' WHERE tenant_id = 'pgt_tz_a'"),
            "22023"
        );
        run("SET LOCAL control_plane.tenant = 'pgt_tz_a'");
        let s = status("pgt_tz_a_1");
        assert_eq!(s["period"]["time_zone"], "Europe/Paris", "{s}");
        // A tenant without a row follows UTC.
        run("SET LOCAL control_plane.tenant = 'pgt_tz_a_none'");
        assert_eq!(status("pgt_tz_a_1")["period"]["time_zone"], "UTC");
    }

    #[pg_test]
    fn a_tenants_days_and_months_follow_its_time_zone() {
        let z = "Asia/Kathmandu"; // UTC+05:45, no daylight saving time since 1986
        run(&format!(
            "INSERT INTO control_plane.tenants (tenant_id, time_zone) VALUES ('pgt_tz_b', '{z}')"
        ));
        run("SET LOCAL control_plane.tenant = 'pgt_tz_b'");
        enroll(
            "pgt_tz_b_1",
            "unlimited",
            r#"{"requests_per_day": 100, "requests_per_month": 1000}"#,
        );
        // One row a second before the local day began, one a second after, one at the UTC
        // midnight of that day (in the local day too: midnight UTC is 05:45 there).
        run(&format!(
            "INSERT INTO control_plane.usage_events (tenant_id, subject_id, requests, input_tokens, output_tokens, created_at)
             SELECT 'pgt_tz_b', 'pgt_tz_b_1', 1, 0, 0, t FROM unnest(ARRAY[
                 date_trunc('day', clock_timestamp(), '{z}') - interval '1 second',
                 date_trunc('day', clock_timestamp(), '{z}') + interval '1 second',
                 date_trunc('day', clock_timestamp(), 'UTC')]) t
              WHERE t <= clock_timestamp()"
        ));
        let s = status("pgt_tz_b_1");
        let p = &s["period"];
        assert_eq!(p["time_zone"], z, "{s}");
        assert_eq!(
            p["day"]["start"],
            iso(&format!("date_trunc('day', clock_timestamp(), '{z}')")),
            "{s}"
        );
        assert_eq!(
            p["day"]["end"],
            iso(&format!(
                "date_trunc('day', clock_timestamp(), '{z}') + interval '1 day'"
            )),
            "{s}"
        );
        assert_eq!(
            p["month"]["start"],
            iso(&format!("date_trunc('month', clock_timestamp(), '{z}')")),
            "{s}"
        );
        assert!(p["day"]["start"].as_str().unwrap().ends_with(":15:00Z"), "{s}");
        assert_eq!(used(&s), ledger_requests("pgt_tz_b_1", z), "{s}");
        assert!(used(&s).0 < 3, "the row before local midnight is yesterday's: {s}");
    }

    #[pg_test]
    fn changing_a_tenants_zone_moves_its_windows_at_once_and_keeps_what_is_held() {
        run("SET LOCAL control_plane.tenant = 'pgt_tz_c'");
        enroll(
            "pgt_tz_c_1",
            "unlimited",
            r#"{"requests_per_day": 100, "requests_per_month": 1000}"#,
        );
        // Rows every 3 hours over the last 45 hours: each zone's day holds a different number.
        run("INSERT INTO control_plane.usage_events (tenant_id, subject_id, requests, input_tokens, output_tokens, created_at)
             SELECT 'pgt_tz_c', 'pgt_tz_c_1', 1, 0, 0, clock_timestamp() - k * interval '3 hours'
               FROM generate_series(1, 15) k");
        let s = status("pgt_tz_c_1");
        assert_eq!(s["period"]["time_zone"], "UTC");
        assert_eq!(used(&s), ledger_requests("pgt_tz_c_1", "UTC"), "{s}");
        assert_eq!(admit("pgt_tz_c_1", 0, None)["allowed"], true);

        for zone in ["Pacific/Kiritimati", "America/Los_Angeles", "Asia/Kolkata"] {
            run(&format!(
                "INSERT INTO control_plane.tenants (tenant_id, time_zone) VALUES ('pgt_tz_c', '{zone}')
                 ON CONFLICT (tenant_id) DO UPDATE SET time_zone = EXCLUDED.time_zone"
            ));
            let s = status("pgt_tz_c_1");
            assert_eq!(s["period"]["time_zone"], zone, "{s}");
            assert_eq!(used(&s), ledger_requests("pgt_tz_c_1", zone), "{zone}: {s}");
            assert_eq!(
                s["quotas"]["requests_per_day"]["held"], 1,
                "the open admission is still held: {s}"
            );
        }
        run("DELETE FROM control_plane.tenants WHERE tenant_id = 'pgt_tz_c'");
        let s = status("pgt_tz_c_1");
        assert_eq!(s["period"]["time_zone"], "UTC");
        assert_eq!(used(&s), ledger_requests("pgt_tz_c_1", "UTC"), "{s}");
        // Admission counts in the zone too: 100 a day, of which the ledger's day and one held
        // request are used.
        let left = 100 - used(&s).0 - 1;
        for _ in 0..left {
            assert_eq!(admit("pgt_tz_c_1", 0, None)["allowed"], true);
        }
        assert_eq!(admit("pgt_tz_c_1", 0, None)["reason"], "quota_exceeded");
    }

    #[pg_test]
    fn a_quota_denial_waits_for_the_tenants_midnight() {
        let z = "Pacific/Kiritimati"; // UTC+14
        run(&format!(
            "INSERT INTO control_plane.tenants (tenant_id, time_zone) VALUES ('pgt_tz_d', '{z}')"
        ));
        run("SET LOCAL control_plane.tenant = 'pgt_tz_d'");
        enroll("pgt_tz_d_1", "unlimited", r#"{"requests_per_day": 1}"#);
        assert_eq!(admit("pgt_tz_d_1", 0, None)["allowed"], true);
        let d = admit("pgt_tz_d_1", 0, None);
        assert_eq!(d["reason"], "quota_exceeded", "{d}");
        let retry = d["retry_after_ms"].as_i64().unwrap();
        let expected = int(&format!(
            "SELECT (extract(epoch FROM date_trunc('day', clock_timestamp(), '{z}') + interval '1 day'
                     - clock_timestamp()) * 1000)::bigint"
        ));
        assert!(
            (retry - expected).abs() < 5_000,
            "retry {retry} ms, local midnight in {expected} ms"
        );
    }

    #[pg_test]
    fn compaction_rolls_up_the_tenants_local_days() {
        let z = "Asia/Kathmandu";
        run(&format!(
            "INSERT INTO control_plane.tenants (tenant_id, time_zone) VALUES ('pgt_tz_e', '{z}')"
        ));
        // Local day D (20 days ago) at 01:00 and 23:00, and D+1 at 01:00. By UTC days they would
        // group as {01:00} and {23:00, next 01:00}; by local days as {01:00, 23:00} and {next 01:00}.
        run(&format!(
            "INSERT INTO control_plane.subjects (tenant_id, subject_id, profile) VALUES ('pgt_tz_e', 'pgt_tz_e_1', 'pro');
             INSERT INTO control_plane.usage_events (tenant_id, subject_id, requests, input_tokens, output_tokens, created_at)
             SELECT 'pgt_tz_e', 'pgt_tz_e_1', 1, h, 0, date_trunc('day', now() - interval '20 days', '{z}') + h * interval '1 hour'
               FROM unnest(ARRAY[1, 23, 25]) h"
        ));
        run("SET LOCAL control_plane.ledger_retention = '9d'");
        json("SELECT control_plane.cp_cleanup()");
        let rollups = json(&format!(
            "SELECT jsonb_agg(jsonb_build_array(input_tokens, metadata->'rows',
                        created_at = date_trunc('day', now() - interval '20 days', '{z}') + interval '23 hours') ORDER BY created_at)
               FROM control_plane.usage_events WHERE subject_id = 'pgt_tz_e_1'"
        ));
        assert_eq!(rollups, serde_json::json!([[24, 2, true], [25, 1, false]]));
    }
}
