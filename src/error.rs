//! One error type for the extension, each variant with its SQLSTATE, message, detail and hint.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::PgSqlErrorCode;

#[derive(Debug, Clone)]
pub enum CpError {
    /// The library was not loaded through `shared_preload_libraries`.
    NotPreloaded,
    /// 22004: a required argument is NULL.
    NullValue { what: &'static str },
    /// 22023: an argument is out of range or malformed.
    InvalidParameter {
        message: String,
        detail: Option<String>,
        hint: Option<String>,
    },
    /// 55000: the catalog is not in a state that allows the call (no default profile, ...).
    NotInPrerequisiteState {
        message: String,
        detail: Option<String>,
        hint: Option<String>,
    },
    /// 23514: a row breaks a rule of its table.
    CheckViolation { message: String, detail: String },
    /// 40001: a concurrent change made the call impossible to complete; retrying it succeeds.
    Retry { message: String },
    /// 0A000: a feature the extension refuses (two-phase commit with pending usage).
    NotSupported { message: String, hint: Option<String> },
    /// 54000: a fixed limit of the server is reached.
    LimitExceeded(String),
    /// 25006: the call must write (an alert it owes) in a read-only transaction.
    ReadOnly { message: String, detail: String },
    /// 42501: the caller lacks a privilege the call needs.
    Privilege { message: String, hint: String },
    /// 23505: an idempotency key already names a usage event with other values.
    KeyConflict { message: String, detail: String },
    /// XX000: an invariant broke; never expected.
    Internal(String),
}

impl CpError {
    pub fn invalid(message: impl Into<String>) -> Self {
        CpError::InvalidParameter {
            message: message.into(),
            detail: None,
            hint: None,
        }
    }
    pub fn invalid_with(message: impl Into<String>, detail: impl Into<String>, hint: Option<&str>) -> Self {
        CpError::InvalidParameter {
            message: message.into(),
            detail: Some(detail.into()),
            hint: hint.map(str::to_string),
        }
    }
    pub fn state(message: impl Into<String>, detail: Option<String>, hint: Option<&str>) -> Self {
        CpError::NotInPrerequisiteState {
            message: message.into(),
            detail,
            hint: hint.map(str::to_string),
        }
    }

    pub fn sqlstate(&self) -> PgSqlErrorCode {
        match self {
            CpError::NotPreloaded => PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            CpError::NullValue { .. } => PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            CpError::InvalidParameter { .. } => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            CpError::NotInPrerequisiteState { .. } => PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            CpError::NotSupported { .. } => PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            CpError::Retry { .. } => PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
            CpError::CheckViolation { .. } => PgSqlErrorCode::ERRCODE_CHECK_VIOLATION,
            CpError::LimitExceeded(_) => PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            CpError::ReadOnly { .. } => PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
            CpError::Privilege { .. } => PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            CpError::KeyConflict { .. } => PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION,
            CpError::Internal(_) => PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        }
    }
}

impl From<CpError> for ErrorReport {
    fn from(e: CpError) -> ErrorReport {
        let code = e.sqlstate();
        let (msg, detail, hint): (String, Option<String>, Option<String>) = match e {
            CpError::NotPreloaded => (
                "control_plane is not loaded through shared_preload_libraries".into(),
                Some(
                    "control_plane keeps its counters in shared memory, which only a preloaded library can allocate."
                        .into(),
                ),
                Some("Add control_plane to shared_preload_libraries in postgresql.conf and restart the server.".into()),
            ),
            CpError::NullValue { what } => (format!("{what} must not be null"), None, None),
            CpError::InvalidParameter { message, detail, hint } => (message, detail, hint),
            CpError::NotInPrerequisiteState { message, detail, hint } => (message, detail, hint),
            CpError::NotSupported { message, hint } => (message, None, hint),
            CpError::Retry { message } => (message, None, Some("Retry the call.".into())),
            CpError::CheckViolation { message, detail } => (message, Some(detail), None),
            CpError::LimitExceeded(m) => (m, None, None),
            CpError::Privilege { message, hint } => (message, None, Some(hint)),
            CpError::KeyConflict { message, detail } => (
                message,
                Some(detail),
                Some("An idempotency key names one usage event: retry with the same values, or use a new key.".into()),
            ),
            CpError::ReadOnly { message, detail } => (
                message,
                Some(detail),
                Some("Call cp_admit and cp_record_usage in read-write transactions.".into()),
            ),
            CpError::Internal(m) => (
                format!("control_plane internal error: {m}"),
                None,
                Some("This is a bug; please report it with the server log.".into()),
            ),
        };
        let mut r = ErrorReport::new(code, msg, "control_plane");
        if let Some(d) = detail {
            r = r.set_detail(d);
        }
        if let Some(h) = hint {
            r = r.set_hint(h);
        }
        r
    }
}

pub type CpResult<T> = Result<T, CpError>;

/// Raises the error (does not return).
pub fn raise(e: CpError) -> ! {
    ErrorReport::from(e).report(pgrx::PgLogLevel::ERROR);
    unreachable!("ERROR-level reports do not return")
}
