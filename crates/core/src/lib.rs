//! The decisions of control_plane, in plain Rust with no PostgreSQL in sight: calendar windows,
//! GCRA rates, policy merging, quota and admission decisions, subject keys and the rules of a
//! ledger row. The extension (the crate at the repository root) calls them and keeps its own
//! code to shared memory, SPI and the SQL surface. Their unit and property tests build and run
//! in seconds (`cargo test` in `crates/core`), which is also what makes mutation testing of them
//! practical.

pub mod admission;
pub mod alerts;
pub mod bounded;
pub mod calendar;
pub mod emergency;
pub mod index;
pub mod key;
pub mod ledger;
pub mod money;
pub mod org;
pub mod policy;
pub mod price_names;
pub mod quota;
pub mod rate;
pub mod seal;
pub mod zone;

/// The longest subject, tenant, model, feature or idempotency key accepted, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Largest token count one call accepts (a trillion): beyond it the input is refused as absurd.
pub const MAX_TOKENS: i64 = 1_000_000_000_000;
