//! Money in integers: prices, the cost of a request, the estimate an admission reserves, budgets
//! and their thresholds, and how an amount is shown.
//!
//! Every amount is an `i64` of micro-units of the currency (1e-6); budgets may be set in cents
//! (10,000 micro-units each). Products are formed in `i128`, so no intermediate overflows, and
//! results saturate at `i64::MAX` rather than wrap. There is no floating point anywhere here.
//!
//! Rounding (documented in the README): a request's cost is rounded **up** to a whole micro-unit.
//! Each request pays at most one micro-unit more than its exact price and never less, so across
//! many calls the rounding never adds up in the caller's favour.

/// Micro-units in one cent.
pub const MICROS_PER_CENT: i64 = 10_000;
/// Prices are per this many tokens.
pub const TOKENS_PER_PRICE: i64 = 1_000_000;
/// The highest accepted price: one whole currency unit per token (1e12 micro-units per million
/// tokens). Anything above is a typing error, refused by the table's CHECK constraint.
pub const MAX_PRICE_MICROS: i64 = 1_000_000_000_000;

/// The price of a model: micro-units per million input and output tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Price {
    pub input_per_million: i64,
    pub output_per_million: i64,
}

impl Price {
    /// A price whose tokens cost nothing: never blocked by money.
    pub fn is_free(&self) -> bool {
        self.input_per_million == 0 && self.output_per_million == 0
    }
}

/// One row of `model_prices` for a model: whose it is, and from when it applies (µs since the
/// epoch; `i64::MIN` for `-infinity`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PriceRow {
    /// A `'*'` row, shared by every tenant.
    pub shared: bool,
    pub effective_from: i64,
    pub price: Price,
}

/// The price in force at `at`: among the rows already in effect then, the tenant's own row that
/// took effect last; else the shared row that took effect last; else none (the model is unpriced
/// at that instant).
pub fn price_at(rows: &[PriceRow], at: i64) -> Option<Price> {
    let latest = |shared: bool| {
        rows.iter()
            .filter(|r| r.shared == shared && r.effective_from <= at)
            .max_by_key(|r| r.effective_from)
            .map(|r| r.price)
    };
    latest(false).or_else(|| latest(true))
}

fn saturate(x: i128) -> i64 {
    x.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// `ceil(n / d)` for `d > 0`.
fn div_ceil(n: i128, d: i128) -> i128 {
    n.div_euclid(d) + i128::from(n.rem_euclid(d) != 0)
}

/// The cost of `input` and `output` tokens at `price`, rounded up to a whole micro-unit.
/// Negative token counts count as zero (the ledger's reversals copy a cost, never compute one).
pub fn cost(price: Price, input: i64, output: i64) -> i64 {
    let exact = i128::from(input.max(0)) * i128::from(price.input_per_million.max(0))
        + i128::from(output.max(0)) * i128::from(price.output_per_million.max(0));
    saturate(div_ceil(exact, i128::from(TOKENS_PER_PRICE)))
}

/// A budget set in cents, in micro-units.
pub fn cents_to_micros(cents: i64) -> i64 {
    saturate(i128::from(cents) * i128::from(MICROS_PER_CENT))
}

/// The most of its expected output's cost one request may reserve against budgets whose smallest
/// is `budget`: `pct` percent of it, rounded down, and at least one micro-unit (a positive
/// estimate always reserves something).
pub fn reservation_cap(budget: i64, pct: i64) -> i64 {
    saturate(i128::from(budget.max(0)) * i128::from(pct.clamp(0, 100)) / 100).max(1)
}

/// What an admission reserves against the budgets, and what the call is expected to cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Estimate {
    /// The input at the input price, in full (it is known before the call), plus the expected
    /// output at the output price up to the cap.
    pub reserved: i64,
    /// Input and expected output, uncapped: what the call is expected to cost (degrade compares
    /// these).
    pub full: i64,
}

/// The estimate of `input` tokens and `output` expected output tokens at `price`, rounded up as a
/// whole (`cost`). Only the speculative part, the expected output, is capped at `cap` (None: no
/// budget applies, no cap): a call whose known input alone costs more than a budget allows is
/// refused, and what a call can cost beyond its reservation is at most `full - reserved`.
pub fn estimate(price: Price, input: i64, output: i64, cap: Option<i64>) -> Estimate {
    let full = cost(price, input, output);
    let reserved = match cap {
        Some(cap) => {
            let known = cost(price, input, 0);
            known.saturating_add((full - known).min(cap.max(0)))
        }
        None => full,
    };
    Estimate { reserved, full }
}

/// Where spending stands against a budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Normal,
    /// At or past the warning threshold.
    Warning,
    /// At or past the emergency threshold.
    Emergency,
    /// The budget is used up: nothing more that costs money fits.
    Limit,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Normal => "normal",
            Level::Warning => "warning",
            Level::Emergency => "emergency",
            Level::Limit => "limit",
        }
    }
}

/// Percent thresholds of a budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    pub warning_pct: i64,
    pub emergency_pct: i64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            warning_pct: 80,
            emergency_pct: 90,
        }
    }
}

/// True when `used` is at least `pct` percent of `budget` (no division, no rounding).
pub fn reaches(used: i64, budget: i64, pct: i64) -> bool {
    i128::from(used) * 100 >= i128::from(budget) * i128::from(pct)
}

/// The level of `used` (spent plus reserved) against `budget`.
pub fn level(used: i64, budget: i64, t: Thresholds) -> Level {
    if used >= budget {
        Level::Limit
    } else if reaches(used, budget, t.emergency_pct) {
        Level::Emergency
    } else if reaches(used, budget, t.warning_pct) {
        Level::Warning
    } else {
        Level::Normal
    }
}

/// Whole percent of `budget` that `used` is, rounded down (a budget of 0 is 100 % used).
pub fn percent(used: i64, budget: i64) -> i64 {
    if budget <= 0 {
        return 100;
    }
    saturate(i128::from(used) * 100 / i128::from(budget))
}

/// An amount in micro-units as a decimal string in `currency`, exact: at least two decimals, and
/// as many more as the amount has (`12.50 USD`, `0.000125 USD`, `-3.00 USD`).
pub fn display(micros: i64, currency: &str) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let m = micros.unsigned_abs();
    let (whole, frac) = (m / 1_000_000, m % 1_000_000);
    let mut f = format!("{frac:06}");
    while f.len() > 2 && f.ends_with('0') {
        f.pop();
    }
    if currency.is_empty() {
        format!("{sign}{whole}.{f}")
    } else {
        format!("{sign}{whole}.{f} {currency}")
    }
}

#[cfg(test)]
mod unit {
    use super::*;
    use proptest::prelude::*;

    const MINI: Price = Price {
        input_per_million: 150_000,
        output_per_million: 600_000,
    };

    #[test]
    fn the_tenants_own_price_in_force_wins_over_the_shared_one() {
        let p = |i| Price {
            input_per_million: i,
            output_per_million: 0,
        };
        let row = |shared, effective_from, i| PriceRow {
            shared,
            effective_from,
            price: p(i),
        };
        let rows = [
            row(true, i64::MIN, 1),
            row(true, 100, 2),
            row(false, 50, 3),
            row(false, 200, 4),
        ];
        assert_eq!(price_at(&rows, 10), Some(p(1)), "only the shared rows are in force yet");
        assert_eq!(price_at(&rows, 50), Some(p(3)), "a row applies from its instant on");
        assert_eq!(
            price_at(&rows, 150),
            Some(p(3)),
            "the tenant's row beats a newer shared one"
        );
        assert_eq!(price_at(&rows, 250), Some(p(4)));
        assert_eq!(price_at(&rows[2..], 10), None, "before any row: unpriced");
        assert_eq!(price_at(&[], 10), None);
    }

    #[test]
    fn a_cost_is_exact_when_it_can_be_and_rounded_up_when_not() {
        // 1,000 input tokens at 0.15 per million: 150 micro-units exactly.
        assert_eq!(cost(MINI, 1_000, 0), 150);
        assert_eq!(cost(MINI, 1_000, 1_000), 750);
        // One input token: 0.15 micro-units, rounded up to 1.
        assert_eq!(cost(MINI, 1, 0), 1);
        assert_eq!(cost(MINI, 0, 0), 0);
        assert_eq!(cost(Price::default(), 1_000_000, 1_000_000), 0);
        // Rounding is applied once to the sum, not per side.
        assert_eq!(cost(MINI, 3, 1), 2); // 0.45 + 0.6 = 1.05 -> 2
    }

    #[test]
    fn extreme_amounts_saturate_instead_of_wrapping() {
        let max = Price {
            input_per_million: MAX_PRICE_MICROS,
            output_per_million: MAX_PRICE_MICROS,
        };
        assert_eq!(cost(max, i64::MAX, i64::MAX), i64::MAX);
        assert_eq!(cost(max, 1, 0), 1_000_000);
        assert_eq!(cents_to_micros(i64::MAX), i64::MAX);
        assert_eq!(cents_to_micros(1_234), 12_340_000);
        assert_eq!(percent(i64::MAX, 1), i64::MAX);
        assert_eq!(cost(MINI, -5, -5), 0);
    }

    #[test]
    fn only_the_expected_output_is_capped_and_the_cap_is_never_zero() {
        assert_eq!(reservation_cap(1_000_000, 10), 100_000);
        assert_eq!(reservation_cap(5, 10), 1);
        assert_eq!(reservation_cap(0, 10), 1);
        assert_eq!(reservation_cap(i64::MAX, 100), i64::MAX);
        let e = |i, o, cap| estimate(MINI, i, o, cap);
        // 1,000 in (150) and 4,000 out (2,400).
        assert_eq!(
            e(1_000, 4_000, None),
            Estimate {
                reserved: 2_550,
                full: 2_550
            }
        );
        assert_eq!(
            e(1_000, 4_000, Some(1_000)),
            Estimate {
                reserved: 1_150,
                full: 2_550
            }
        );
        assert_eq!(
            e(1_000, 4_000, Some(10_000)),
            Estimate {
                reserved: 2_550,
                full: 2_550
            }
        );
        // The input is known: reserved in full, whatever the cap (a dollar of input against a
        // cap of 10,000 micro-units).
        let big = Price {
            input_per_million: 2_500_000,
            output_per_million: 10_000_000,
        };
        assert_eq!(
            estimate(big, 400_000, 0, Some(10_000)),
            Estimate {
                reserved: 1_000_000,
                full: 1_000_000
            }
        );
        assert_eq!(
            estimate(Price::default(), 1_000, 4_000, Some(1)),
            Estimate { reserved: 0, full: 0 }
        );
    }

    #[test]
    fn levels_follow_the_thresholds_inclusively() {
        let t = Thresholds::default();
        assert_eq!(level(0, 1_000, t), Level::Normal);
        assert_eq!(level(799, 1_000, t), Level::Normal);
        assert_eq!(level(800, 1_000, t), Level::Warning);
        assert_eq!(level(900, 1_000, t), Level::Emergency);
        assert_eq!(level(999, 1_000, t), Level::Emergency);
        assert_eq!(level(1_000, 1_000, t), Level::Limit);
        assert_eq!(level(5_000, 1_000, t), Level::Limit);
        assert_eq!(level(0, 0, t), Level::Limit);
        // 80 % of 7 is 5.6: 5 is below, 6 is past.
        assert_eq!(level(5, 7, t), Level::Normal);
        assert_eq!(level(6, 7, t), Level::Warning);
    }

    #[test]
    fn amounts_are_shown_exactly() {
        assert_eq!(display(12_500_000, "USD"), "12.50 USD");
        assert_eq!(display(125, "USD"), "0.000125 USD");
        assert_eq!(display(0, "EUR"), "0.00 EUR");
        assert_eq!(display(-3_000_000, "USD"), "-3.00 USD");
        assert_eq!(display(1_234_567, ""), "1.234567");
        assert_eq!(display(i64::MIN, "X"), "-9223372036854.775808 X");
    }

    proptest! {
        /// The cost is the smallest whole number of micro-units not below the exact price.
        #[test]
        fn cost_is_the_exact_price_rounded_up(
            i in 0i64..1 << 40, o in 0i64..1 << 40,
            pi in 0i64..=MAX_PRICE_MICROS, po in 0i64..=MAX_PRICE_MICROS,
        ) {
            let c = cost(Price { input_per_million: pi, output_per_million: po }, i, o) as i128;
            let exact = i as i128 * pi as i128 + o as i128 * po as i128;
            prop_assert!(c * 1_000_000 >= exact);
            prop_assert!((c - 1) * 1_000_000 < exact || c == 0);
        }

        /// Summed over many requests, the rounding never favours the caller: the total charged is
        /// at least the exact total, and at most one micro-unit per request above it.
        #[test]
        fn rounding_never_adds_up_in_the_callers_favour(
            reqs in proptest::collection::vec((0i64..100_000, 0i64..100_000), 1..200),
            pi in 0i64..5_000_000, po in 0i64..20_000_000,
        ) {
            let p = Price { input_per_million: pi, output_per_million: po };
            let charged: i128 = reqs.iter().map(|(i, o)| cost(p, *i, *o) as i128).sum();
            let exact: i128 = reqs.iter().map(|(i, o)| *i as i128 * pi as i128 + *o as i128 * po as i128).sum();
            prop_assert!(charged * 1_000_000 >= exact);
            prop_assert!(charged * 1_000_000 < exact + 1_000_000 * reqs.len() as i128 + 1);
        }

        /// More tokens never cost less; the known input is always reserved in full, the
        /// expected output at most up to the cap, and what a call can cost beyond its reservation
        /// is what the cap left out of the expected output.
        #[test]
        fn cost_is_monotonic_and_the_cap_holds_on_the_output_alone(
            i in 0i64..1 << 50, o in 0i64..1 << 50, d in 0i64..1 << 20,
            pi in 0i64..=MAX_PRICE_MICROS, po in 0i64..=MAX_PRICE_MICROS, cap in 0i64..1 << 40,
        ) {
            let p = Price { input_per_million: pi, output_per_million: po };
            prop_assert!(cost(p, i + d, o) >= cost(p, i, o));
            prop_assert!(cost(p, i, o + d) >= cost(p, i, o));
            let e = estimate(p, i, o, Some(cap));
            let known = cost(p, i, 0);
            prop_assert_eq!(e.full, cost(p, i, o));
            prop_assert_eq!(estimate(p, i, o, None), Estimate { reserved: e.full, full: e.full });
            prop_assert!(known <= e.reserved && e.reserved <= e.full);
            prop_assert!(e.reserved - known <= cap);
            prop_assert!(e.reserved == e.full || e.reserved - known == cap);
            // Beyond the reservation: at most the expected output's own cost (with one
            // micro-unit of rounding) less the cap.
            prop_assert!(e.full - e.reserved <= cost(p, 0, o).saturating_add(1).saturating_sub(cap).max(0));
        }

        /// Levels only go up as spending grows.
        #[test]
        fn levels_are_monotonic(a in 0i64..1 << 40, b in 0i64..1 << 40, budget in 0i64..1 << 40,
                                w in 0i64..=100, e in 0i64..=100) {
            let t = Thresholds { warning_pct: w.min(e), emergency_pct: w.max(e) };
            let (lo, hi) = (a.min(b), a.max(b));
            prop_assert!(level(lo, budget, t) <= level(hi, budget, t));
        }

        /// A displayed amount reads back as the same number of micro-units.
        #[test]
        fn display_is_exact(m in any::<i64>()) {
            let s = display(m, "");
            let neg = s.starts_with('-');
            let (w, f) = s.trim_start_matches('-').split_once('.').unwrap();
            let micros = w.parse::<i128>().unwrap() * 1_000_000 + format!("{f:0<6}").parse::<i128>().unwrap();
            prop_assert_eq!(if neg { -micros } else { micros }, m as i128);
        }
    }
}
