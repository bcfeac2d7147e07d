//! Between new binaries and `ALTER EXTENSION control_plane UPDATE`.
//!
//! A server runs this library with the SQL objects of an older release until the update script
//! runs (the library is preloaded: new binaries take effect at the restart, the schema at the
//! update). In that window:
//!
//! - the SQL surface refuses to work, with 55000 and a hint to update, instead of running this
//!   library's queries against tables of another shape (`check_schema`, once per backend);
//! - every C symbol that a released install script names stays exported, so that such a script
//!   still installs and its functions fail with the same clear error rather than "could not find
//!   function" (the stubs below; `tests/upgrade` installs every released script against this
//!   library).

use crate::error::{CpError, CpResult};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::Cell;

/// The library's version: the SQL objects must be at this version too.
pub const LIBRARY_VERSION: &str = env!("CARGO_PKG_VERSION");

thread_local! {
    static SCHEMA_CHECKED: Cell<bool> = const { Cell::new(false) };
}

/// The error of a call that meets SQL objects of another version (55000).
fn outdated(message: String) -> CpError {
    CpError::state(
        message,
        Some("New binaries are installed and loaded, but the extension's SQL objects were not updated.".into()),
        Some("Run ALTER EXTENSION control_plane UPDATE in this database."),
    )
}

/// Fails unless the extension in this database is at the library's version. Reads the catalog
/// once per backend; a match is remembered (an update only ever moves to this version).
pub fn check_schema() -> CpResult<()> {
    if SCHEMA_CHECKED.get() {
        return Ok(());
    }
    let installed = crate::catalog::query_latest(
        c"SELECT e.extversion FROM pg_catalog.pg_extension e WHERE e.extname OPERATOR(pg_catalog.=) 'control_plane'",
        &[],
        |r| r.text(1),
    )?
    .into_iter()
    .next()
    .flatten()
    .unwrap_or_default();
    if installed != LIBRARY_VERSION {
        return Err(outdated(format!(
            "control_plane's SQL objects are at version {installed} and its library at {LIBRARY_VERSION}"
        )));
    }
    SCHEMA_CHECKED.set(true);
    Ok(())
}

/// Keeps a removed C function's symbol (and its version-1 info record) exported; calling it
/// raises `outdated`.
macro_rules! removed {
    ($symbol:ident, $finfo:ident, $function:literal, $release:literal) => {
        #[no_mangle]
        pub extern "C" fn $finfo() -> &'static pg_sys::Pg_finfo_record {
            static V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
            &V1
        }

        #[no_mangle]
        #[pg_guard]
        pub unsafe extern "C-unwind" fn $symbol(_fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
            crate::error::raise(outdated(format!(
                "{} of control_plane {} is not in its library at version {LIBRARY_VERSION}",
                $function, $release
            )))
        }
    };
}

// 0.1.0: cp_record_usage returned a table through pgrx's wrapper (0.2.0: cp_record_usage_fast).
removed!(
    cp_record_usage_wrapper,
    pg_finfo_cp_record_usage_wrapper,
    "cp_record_usage",
    "0.1.0"
);
