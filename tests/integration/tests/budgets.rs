//! Money budgets over real connections: concurrent admissions never overspend, an expired cost
//! reservation is charged its estimate (and a late record takes it back), and an overshoot is
//! recorded and seen by the next admission.

use control_plane_integration::*;
use postgres::Client;
use std::time::{Duration, Instant};

fn ledger_cost(c: &mut Client, subject: &str) -> i64 {
    c.query_one(
        "SELECT coalesce(sum(cost_micros), 0)::bigint FROM control_plane.usage_events WHERE subject_id = $1",
        &[&subject],
    )
    .unwrap()
    .get(0)
}

#[test]
fn many_connections_admit_exactly_what_a_budget_holds_and_never_spend_more() {
    // 1 micro-unit per input token; 10 cents a day = 100,000 micro-units; each request reserves
    // and then records 1,000 tokens = 1,000 micro-units: exactly 100 fit.
    let s = format!("{}_budget_race", run_id());
    let model = format!("{}-m1", run_id());
    let mut admin = connect();
    shared_price(&mut admin, &model, 1_000_000, 0);
    enroll(&mut admin, &s, "unlimited", r#"{"daily_budget_cents": 10}"#);
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let (s, model) = (s.clone(), model.clone());
            std::thread::spawn(move || {
                let (admitted, refused) = spend_until_refused(&s, 1_000, &model, 1_000);
                assert_eq!(refused.reason.as_deref(), Some("budget_exceeded"));
                admitted
            })
        })
        .collect();
    let admitted: i64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(admitted, 100, "exactly what the budget holds");
    assert_eq!(ledger_cost(&mut admin, &s), 100_000, "never more than the budget");
    assert_eq!(day_money_of(&mut admin, &s, ""), (100_000, 100_000, 0, 0));
}

#[test]
fn an_expired_cost_reservation_is_charged_its_estimate_and_a_late_record_takes_it_back() {
    let s = format!("{}_budget_expiry", run_id());
    let model = format!("{}-m2", run_id());
    let mut admin = connect();
    shared_price(&mut admin, &model, 2_000_000, 0);
    enroll(&mut admin, &s, "unlimited", r#"{"daily_budget_cents": 100}"#);
    let mut c = connect();
    c.batch_execute("SET control_plane.reservation_timeout = 1").unwrap();
    let a = admit_priced(&mut c, &s, 300, &model);
    assert!(a.allowed);
    let id = a.reservation_id.unwrap();
    assert_eq!(day_money_of(&mut c, &s, "").2, 600, "300 tokens at 2 each, reserved");
    // Never recorded: it expires and its estimate is charged, in the ledger too.
    let start = Instant::now();
    let (cost, per_reservation) = loop {
        let r = admin
            .query_opt(
                "SELECT cost_micros, (metadata->'expired_costs'->>$2)::bigint FROM control_plane.usage_events
                  WHERE subject_id = $1 AND kind = 'expired'",
                &[&s, &id],
            )
            .unwrap();
        if let Some(r) = r {
            break (r.get::<_, Option<i64>>(0), r.get::<_, Option<i64>>(1));
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the charge never reached the ledger"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!((cost, per_reservation), (Some(600), Some(600)));
    assert_eq!(day_money_of(&mut c, &s, ""), (1_000_000, 600, 0, 999_400));
    // The request did run after all: its record replaces the charge (one reversal row).
    assert_eq!(record_priced(&mut c, &s, 100, &model, Some(&id)), Some(200));
    let reversed: Option<i64> = admin
        .query_one(
            "SELECT cost_micros FROM control_plane.usage_events WHERE subject_id = $1 AND kind = 'expired_reversed'",
            &[&s],
        )
        .unwrap()
        .get(0);
    assert_eq!(reversed, Some(-600));
    assert_eq!(ledger_cost(&mut admin, &s), 200);
    assert_eq!(day_money_of(&mut c, &s, "").1, 200, "spent is what the request cost");
}

#[test]
fn a_record_that_costs_more_than_its_reservation_is_counted_and_the_next_admission_sees_it() {
    let s = format!("{}_budget_over", run_id());
    let model = format!("{}-m3", run_id());
    let mut admin = connect();
    shared_price(&mut admin, &model, 1_000_000, 0);
    // 1 cent = 10,000 micro-units; one admission reserves 1,000 and the call costs 50,000.
    enroll(&mut admin, &s, "unlimited", r#"{"daily_budget_cents": 1}"#);
    let mut c = connect();
    let a = admit_priced(&mut c, &s, 1_000, &model);
    assert!(a.allowed);
    assert_eq!(
        record_priced(&mut c, &s, 50_000, &model, a.reservation_id.as_deref()),
        Some(50_000)
    );
    assert_eq!(day_money_of(&mut c, &s, ""), (10_000, 50_000, 0, 0));
    let a = admit_priced(&mut c, &s, 1, &model);
    assert_eq!((a.allowed, a.reason.as_deref()), (false, Some("budget_exceeded")));
    // In another backend too.
    let mut other = connect();
    let a = admit_priced(&mut other, &s, 1, &model);
    assert_eq!((a.allowed, a.reason.as_deref()), (false, Some("budget_exceeded")));
    assert_eq!(ledger_cost(&mut admin, &s), 50_000);
}

/// Sets a reload setting server-wide for the life of the guard (and resets it when dropped, even
/// when the test fails).
struct ServerSetting(&'static str, String);

impl ServerSetting {
    fn set(name: &'static str, value: &str) -> ServerSetting {
        let mut c = connect();
        // (Two statements: ALTER SYSTEM refuses to run in the implicit block of a multi-statement query.)
        c.batch_execute(&format!("ALTER SYSTEM SET {name} = '{value}'"))
            .unwrap();
        c.batch_execute("SELECT pg_reload_conf()").unwrap();
        // A new backend reads the reloaded file at start; wait until one sees the value.
        let start = Instant::now();
        loop {
            let now: String = connect().query_one(&format!("SHOW {name}"), &[]).unwrap().get(0);
            if now == value {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "{name} never became {value}");
            std::thread::sleep(Duration::from_millis(20));
        }
        ServerSetting(name, value.to_string())
    }
}

impl Drop for ServerSetting {
    fn drop(&mut self) {
        let mut c = connect();
        let _ = c.batch_execute(&format!("ALTER SYSTEM RESET {}", self.0));
        let _ = c.batch_execute("SELECT pg_reload_conf()");
        // Later tests must not see it: wait (a little) until new backends do not.
        for _ in 0..500 {
            match connect().query_one(&format!("SHOW {}", self.0), &[]) {
                Ok(r) if r.get::<_, String>(0) != self.1 => return,
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

#[test]
fn with_unpriced_models_allowed_an_unpriced_call_is_admitted_without_a_cost_and_counts_nothing() {
    let s = format!("{}_budget_unpriced", run_id());
    let model = format!("{}-unpriced", run_id());
    let mut admin = connect();
    enroll(&mut admin, &s, "unlimited", r#"{"daily_budget_cents": 1}"#);
    let a = admit_priced(&mut connect(), &s, 10, &model);
    assert_eq!(
        (a.allowed, a.reason.as_deref()),
        (false, Some("unpriced_model")),
        "the default: deny"
    );
    let _allow = ServerSetting::set("control_plane.unpriced_models", "allow");
    let mut c = connect();
    let a = admit_priced(&mut c, &s, 10, &model);
    assert!(a.allowed, "admitted without a price");
    assert_eq!(day_money_of(&mut c, &s, "").2, 0, "nothing reserved");
    assert_eq!(
        record_priced(&mut c, &s, 1_000_000, &model, a.reservation_id.as_deref()),
        None,
        "no cost"
    );
    assert_eq!(
        day_money_of(&mut c, &s, ""),
        (10_000, 0, 0, 10_000),
        "nothing counted against the budget"
    );
    // An unpriced fallback model is not free: past the emergency threshold the priced model is
    // admitted with a warning, never degraded to calls the budget would not see.
    let (s2, priced, plan) = (format!("{s}_fb"), format!("{model}-priced"), format!("{s}_plan"));
    shared_price(&mut admin, &priced, 1_000_000, 0);
    admin
        .execute(
            "INSERT INTO control_plane.profiles (name, fallback_model) VALUES ($1, $2)",
            &[&plan, &model],
        )
        .unwrap();
    enroll(&mut admin, &s2, &plan, r#"{"daily_budget_cents": 1}"#);
    let a = admit_priced(&mut c, &s2, 9_500, &priced);
    assert!(a.allowed);
    assert_eq!(a.reason.as_deref(), Some("emergency_threshold"));
    let r = c
        .query_one(
            "SELECT decision, model, reservation_id::text FROM control_plane.cp_admit($1, 100, $2, max_output_tokens => 0)",
            &[&s2, &priced],
        )
        .unwrap();
    let (decision, called): (String, String) = (r.get(0), r.get(1));
    assert_eq!(
        (decision.as_str(), called.as_str()),
        ("warn", priced.as_str()),
        "not degraded to {model}"
    );
    // Nothing left held in the server's reservation table.
    assert!(release(&mut c, &r.get::<_, String>(2)));
    assert!(release(&mut c, a.reservation_id.as_deref().unwrap()));
}
