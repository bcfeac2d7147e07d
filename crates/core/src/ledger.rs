//! The rules a ledger row obeys (checked by the table's BEFORE INSERT trigger
//! `usage_events_row_valid`).
//!
//! Pure Rust. A `usage` row (recorded: one call, one request at most, no more tokens than one call
//! may record) and an `expired` row (charged by the extension) count requests and tokens, never
//! negative; an `expired_reversed` row takes one expired charge back:
//! exactly one request and the tokens and cost it charged, as negative amounts, and no output. A `rollup`
//! row (written by `cp_cleanup` past `control_plane.ledger_retention`) sums the rows of one
//! subject and day: never negative either, since a reversal sits on the day of its charge.

/// Kinds of ledger rows.
pub const KINDS: [&str; 4] = ["usage", "expired", "expired_reversed", "rollup"];

pub fn row_valid(kind: &str, requests: i64, input: i64, output: i64, cost: Option<i64>, duration: Option<i64>) -> bool {
    let amounts = match kind {
        // One request, and no more tokens than one call may record (`crate::MAX_TOKENS`).
        "usage" => {
            (0..=1).contains(&requests)
                && (0..=crate::MAX_TOKENS).contains(&input)
                && (0..=crate::MAX_TOKENS).contains(&output)
                && cost.is_none_or(|c| c >= 0)
        }
        "expired" | "rollup" => requests >= 0 && input >= 0 && output >= 0 && cost.is_none_or(|c| c >= 0),
        "expired_reversed" => requests == -1 && input <= 0 && output == 0 && cost.is_none_or(|c| c <= 0),
        _ => false,
    };
    amounts && duration.is_none_or(|d| d >= 0)
}

/// Ledger rows younger than this are never compacted, whatever `control_plane.ledger_retention`
/// says: a late record looks for an expired reservation's charge up to the longest reservation
/// timeout (7 days) after the admission.
pub const MIN_RETENTION_S: i64 = 8 * 86_400;

/// Where compaction stops (µs since the epoch, a UTC midnight): rows before it may be rolled up.
/// None when `retention_s` is 0 or less (keep every row). Whole days only, so that a rollup of a
/// subject's day keeps every day and month window's sums exact; retention under
/// `MIN_RETENTION_S` counts as that.
pub fn retention_cutoff(now_us: i64, retention_s: i64) -> Option<i64> {
    if retention_s <= 0 {
        return None;
    }
    let keep = retention_s
        .max(MIN_RETENTION_S)
        .saturating_mul(crate::calendar::US_PER_SEC);
    Some(crate::calendar::day_start(crate::calendar::day_index(
        now_us.saturating_sub(keep),
    )))
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::calendar::{US_PER_DAY, US_PER_SEC};
    use proptest::prelude::*;

    #[test]
    fn retention_keeps_whole_days_and_at_least_eight_of_them() {
        let now = 20_000 * US_PER_DAY + 5 * 3_600 * US_PER_SEC; // 05:00 UTC
        assert_eq!(retention_cutoff(now, 0), None);
        assert_eq!(retention_cutoff(now, -5), None);
        assert_eq!(retention_cutoff(now, 30 * 86_400), Some((20_000 - 30) * US_PER_DAY));
        assert_eq!(retention_cutoff(now, 86_400), Some((20_000 - 8) * US_PER_DAY));
        assert_eq!(
            retention_cutoff(now, 8 * 86_400 + 6 * 3_600),
            Some((20_000 - 9) * US_PER_DAY)
        );
    }

    proptest! {
        #[test]
        fn the_cutoff_is_the_midnight_at_or_before_now_minus_retention(
            now in 0i64..4_000_000_000 * US_PER_SEC, retention in 1i64..400 * 86_400
        ) {
            let c = retention_cutoff(now, retention).unwrap();
            let keep = retention.max(MIN_RETENTION_S) * US_PER_SEC;
            prop_assert_eq!(c.rem_euclid(US_PER_DAY), 0);
            prop_assert!(c <= now - keep);
            prop_assert!(c > now - keep - US_PER_DAY);
        }
    }

    #[test]
    fn rows_count_forward_and_reversals_take_back_one_charge() {
        assert!(row_valid("usage", 1, 10, 5, Some(0), None));
        assert!(row_valid("expired", 3, 900, 0, None, None));
        assert!(row_valid("expired_reversed", -1, -300, 0, None, None));
        assert!(row_valid("rollup", 120, 9000, 4000, Some(17), None));
        assert!(!row_valid("rollup", -1, 0, 0, None, None));
        assert!(!row_valid("rollup", 1, 0, -1, None, None));
        assert!(!row_valid("usage", 1, -1, 0, None, None));
        assert!(!row_valid("usage", -1, 1, 0, None, None));
        assert!(!row_valid("expired", 1, 1, -1, None, None));
        assert!(!row_valid("expired_reversed", -2, -300, 0, None, None));
        assert!(!row_valid("expired_reversed", -1, 300, 0, None, None));
        assert!(!row_valid("expired_reversed", -1, -300, 1, None, None));
        assert!(!row_valid("usage", 1, 1, 1, Some(-1), None));
        assert!(!row_valid("expired", 1, 1, 0, Some(-1), None));
        assert!(row_valid("expired_reversed", -1, -300, 0, Some(-4_500), None));
        assert!(!row_valid("expired_reversed", -1, -300, 0, Some(1), None));
        assert!(!row_valid("usage", 1, 1, 1, None, Some(-1)));
        assert!(!row_valid("refund", 1, 1, 1, None, None));
        // A usage row is one call's: one request at most, tokens within what one call records.
        assert!(row_valid("usage", 1, crate::MAX_TOKENS, crate::MAX_TOKENS, None, None));
        assert!(!row_valid("usage", 2, 1, 1, None, None));
        assert!(!row_valid("usage", 1, crate::MAX_TOKENS + 1, 0, None, None));
        assert!(!row_valid("usage", 1, 0, i64::MAX, None, None));
        assert!(row_valid("expired", 40, 4 * crate::MAX_TOKENS, 0, None, None));
        for k in KINDS {
            assert!(row_valid(
                k,
                if k == "expired_reversed" { -1 } else { 0 },
                0,
                0,
                None,
                None
            ));
        }
    }
}
