//! The rules a ledger row obeys (checked by the table's BEFORE INSERT trigger
//! `usage_events_row_valid`).
//!
//! Pure Rust. A `usage` row (recorded) and an `expired` row (charged by the extension) count
//! requests and tokens, never negative; an `expired_reversed` row takes one expired charge back:
//! exactly one request and the tokens it charged, as negative amounts, and no output.

/// Kinds of ledger rows.
pub const KINDS: [&str; 3] = ["usage", "expired", "expired_reversed"];

pub fn row_valid(kind: &str, requests: i64, input: i64, output: i64, cost: Option<i64>, duration: Option<i64>) -> bool {
    let amounts = match kind {
        "usage" | "expired" => requests >= 0 && input >= 0 && output >= 0,
        "expired_reversed" => requests == -1 && input <= 0 && output == 0,
        _ => false,
    };
    amounts && cost.is_none_or(|c| c >= 0) && duration.is_none_or(|d| d >= 0)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn rows_count_forward_and_reversals_take_back_one_charge() {
        assert!(row_valid("usage", 1, 10, 5, Some(0), None));
        assert!(row_valid("expired", 3, 900, 0, None, None));
        assert!(row_valid("expired_reversed", -1, -300, 0, None, None));
        assert!(!row_valid("usage", 1, -1, 0, None, None));
        assert!(!row_valid("usage", -1, 1, 0, None, None));
        assert!(!row_valid("expired", 1, 1, -1, None, None));
        assert!(!row_valid("expired_reversed", -2, -300, 0, None, None));
        assert!(!row_valid("expired_reversed", -1, 300, 0, None, None));
        assert!(!row_valid("expired_reversed", -1, -300, 1, None, None));
        assert!(!row_valid("usage", 1, 1, 1, Some(-1), None));
        assert!(!row_valid("usage", 1, 1, 1, None, Some(-1)));
        assert!(!row_valid("refund", 1, 1, 1, None, None));
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
