//! control_plane: usage limits for AI/LLM applications, enforced inside PostgreSQL.
//!
//! Pure decision logic lives in the crate `control_plane_core` (`crates/core`: calendar windows,
//! rates, policies, quotas, admissions, keys, ledger rules); this crate is the glue: settings,
//! shared memory, SPI, transaction callbacks, the flusher and the SQL surface.

// pgrx reports SQL errors as `ErrorReport` values, which are large by design.
#![allow(clippy::result_large_err)]

use pgrx::prelude::*;

#[cfg(not(panic = "unwind"))]
compile_error!("control_plane must be built with panic = \"unwind\"");

::pgrx::pg_module_magic!(name, version);

/// The pure decision modules live in `crates/core`; re-exported so that they read as part of
/// this crate.
pub use control_plane_core::{
    admission, alerts, calendar, emergency, index, key, ledger, money, org, policy, quota, rate, seal, zone,
};

mod api;
mod args;
mod catalog;
mod compaction;
mod error;
mod flusher;
mod gucs;
mod policy_cache;
mod sealing;
mod shmem;
mod upgrade;
mod xact;

#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;

// First: refuse a schema named control_plane that another role owns.
extension_sql_file!("sql/bootstrap.sql", name = "bootstrap", bootstrap);
// Tables, presets, triggers and the stats view; they reference the functions above.
extension_sql_file!("sql/schema.sql", name = "schema", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    if unsafe { pg_sys::IsBinaryUpgrade } {
        return;
    }
    // Loaded without the preload (for example by CREATE EXTENSION): the SQL functions then
    // refuse to run with an error whose hint says to preload the library.
    let preloading = unsafe { pg_sys::process_shared_preload_libraries_in_progress };
    gucs::init(preloading);
    if preloading {
        shmem::init();
    }
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![
            "shared_preload_libraries = 'control_plane'",
            "control_plane.max_subjects = 20000",
        ]
    }
}
