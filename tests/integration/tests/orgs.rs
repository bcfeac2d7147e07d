//! Organisation budgets over real connections: many subjects of one organisation admitting and
//! recording at once spend exactly its budget and never more; an expired reservation is charged
//! to the organisation too, and a late record takes it back from the organisation too.

use control_plane_integration::*;
use postgres::Client;
use std::time::{Duration, Instant};

fn org_ledger_cost(c: &mut Client, org: &str) -> i64 {
    c.query_one(
        "SELECT coalesce(sum(cost_micros), 0)::bigint FROM control_plane.usage_events WHERE org_id = $1",
        &[&org],
    )
    .unwrap()
    .get(0)
}

#[test]
fn many_subjects_of_one_organisation_spend_exactly_its_budget_and_never_more() {
    // 1 micro-unit per input token; the organisation has 10 cents a day (100,000 micro-units) and
    // its eight subjects none of their own. Sixteen connections admit 1,000 tokens and record
    // them, in a loop, over the eight subjects: exactly 100 requests fit.
    let id = run_id();
    let (org, model) = (format!("{id}_org_race"), format!("{id}-om1"));
    let subjects: Vec<String> = (0..8).map(|i| format!("{id}_org_race_{i}")).collect();
    let mut admin = connect();
    shared_price(&mut admin, &model, 1_000_000, 0);
    for s in &subjects {
        enroll(&mut admin, s, "unlimited", "{}");
    }
    join_org(&mut admin, &org, Some(10), &subjects);
    let workers: Vec<_> = (0..16)
        .map(|w| {
            let (s, model) = (subjects[w % 8].clone(), model.clone());
            std::thread::spawn(move || {
                let (admitted, refused) = spend_until_refused(&s, 1_000, &model, 1_000);
                assert_eq!(refused.reason.as_deref(), Some("budget_exceeded"));
                assert_eq!(refused.limit_name.as_deref(), Some("org_daily_budget_cents"));
                admitted
            })
        })
        .collect();
    let admitted: i64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(admitted, 100, "exactly what the organisation's budget holds");
    assert_eq!(org_ledger_cost(&mut admin, &org), 100_000, "never more than the budget");
    for s in &subjects {
        assert_eq!(day_money_of(&mut admin, s, "organization"), (100_000, 100_000, 0, 0));
    }
    let own: i64 = subjects.iter().map(|s| spent_today(&mut admin, s)).sum();
    assert_eq!(own, 100_000, "the subjects' own spend adds up to the organisation's");
}

#[test]
fn an_expired_reservation_is_charged_to_the_organisation_and_a_late_record_takes_it_back() {
    let id = run_id();
    let (org, model) = (format!("{id}_org_exp"), format!("{id}-om2"));
    let (s, t) = (format!("{id}_org_exp_a"), format!("{id}_org_exp_b"));
    let mut admin = connect();
    shared_price(&mut admin, &model, 2_000_000, 0);
    enroll(&mut admin, &s, "unlimited", "{}");
    enroll(&mut admin, &t, "unlimited", "{}");
    join_org(&mut admin, &org, Some(100), &[s.clone(), t.clone()]);
    let mut c = connect();
    c.batch_execute("SET control_plane.reservation_timeout = 1").unwrap();
    let a = admit_priced(&mut c, &s, 300, &model);
    assert!(a.allowed);
    let rid = a.reservation_id.unwrap();
    assert_eq!(
        day_money_of(&mut c, &t, "organization").2,
        600,
        "reserved on the organisation"
    );
    // Never recorded: it expires; the charge row names the organisation.
    let start = Instant::now();
    let (cost, charged_org) = loop {
        let r = admin
            .query_opt(
                "SELECT cost_micros, org_id FROM control_plane.usage_events WHERE subject_id = $1 AND kind = 'expired'",
                &[&s],
            )
            .unwrap();
        if let Some(r) = r {
            break (r.get::<_, Option<i64>>(0), r.get::<_, Option<String>>(1));
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the charge never reached the ledger"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!((cost, charged_org.as_deref()), (Some(600), Some(org.as_str())));
    assert_eq!(day_money_of(&mut c, &t, "organization"), (1_000_000, 600, 0, 999_400));
    // The late record replaces the charge, on the organisation too.
    assert_eq!(record_priced(&mut c, &s, 100, &model, Some(&rid)), Some(200));
    let reversal: (Option<i64>, Option<String>) = admin
        .query_one(
            "SELECT cost_micros, org_id FROM control_plane.usage_events WHERE subject_id = $1 AND kind = 'expired_reversed'",
            &[&s],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((reversal.0, reversal.1.as_deref()), (Some(-600), Some(org.as_str())));
    assert_eq!(org_ledger_cost(&mut admin, &org), 200);
    assert_eq!(day_money_of(&mut c, &t, "organization"), (1_000_000, 200, 0, 999_800));
    // A fresh backend rebuilds nothing different: the organisation's entry is the ledger's sum.
    let mut fresh = connect();
    assert_eq!(day_money_of(&mut fresh, &s, "organization").1, 200);
}
