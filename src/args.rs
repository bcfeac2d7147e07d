//! Checks of the arguments that SQL callers pass: NULLs, names and token counts.

use crate::error::{CpError, CpResult};

/// Longest tenant, subject, model, feature or idempotency key, in bytes; largest token count.
pub use control_plane_core::{MAX_NAME_BYTES, MAX_TOKENS};

pub fn check_name(what: &str, s: &str) -> CpResult<()> {
    if s.is_empty() {
        return Err(CpError::invalid(format!("{what} must not be empty")));
    }
    if s.len() > MAX_NAME_BYTES {
        return Err(CpError::invalid_with(
            format!("{what} is too long"),
            format!("it has {} bytes; at most {MAX_NAME_BYTES} are allowed", s.len()),
            None,
        ));
    }
    Ok(())
}

pub fn required<T>(what: &'static str, v: Option<T>) -> CpResult<T> {
    v.ok_or(CpError::NullValue { what })
}

pub fn check_tokens(what: &str, v: i64) -> CpResult<()> {
    if !(0..=MAX_TOKENS).contains(&v) {
        return Err(CpError::invalid_with(
            format!("{what} must be between 0 and {MAX_TOKENS}"),
            format!("got {v}"),
            None,
        ));
    }
    Ok(())
}

pub fn optional_name(what: &str, v: Option<&str>) -> CpResult<()> {
    v.map_or(Ok(()), |s| check_name(what, s))
}

/// A required, well-formed name (subject, ...).
pub fn name<'a>(what: &'static str, v: Option<&'a str>) -> CpResult<&'a str> {
    let s = required(what, v)?;
    check_name(what, s)?;
    Ok(s)
}

/// A required token count within 0 ..= `MAX_TOKENS`.
pub fn tokens(what: &'static str, v: Option<i64>) -> CpResult<i64> {
    let n = required(what, v)?;
    check_tokens(what, n)?;
    Ok(n)
}
