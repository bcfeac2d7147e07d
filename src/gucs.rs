//! Every setting of the extension. All names start with `control_plane.`; the prefix is reserved,
//! so a misspelt `SET control_plane.x` fails.

use pgrx::prelude::*;
use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::{CStr, CString};

/// `control_plane.max_subjects` (postmaster): how many (database, tenant, subject) entries the
/// shared-memory index holds at least. Each costs 230 bytes of shared memory (1.25 slots of 184
/// bytes per subject; a lock partition holds at most 90 % of its slots).
pub static MAX_SUBJECTS: GucSetting<i32> = GucSetting::<i32>::new(100_000);

/// `control_plane.max_reservations` (postmaster): reservations (admitted requests that hold
/// something, not yet recorded, released or written to the ledger as expired) held at once across
/// the server. 644 bytes each.
pub static MAX_RESERVATIONS: GucSetting<i32> = GucSetting::<i32>::new(32_768);

/// `control_plane.reservation_timeout` (seconds, superuser): how long an admission holds its request
/// and tokens before it expires and is charged.
pub static RESERVATION_TIMEOUT: GucSetting<i32> = GucSetting::<i32>::new(600);

/// `control_plane.ledger_retention` (seconds, superuser): `cp_cleanup` rolls ledger rows older
/// than this up into one row per subject and day; 0 (the default) keeps every row.
pub static LEDGER_RETENTION: GucSetting<i32> = GucSetting::<i32>::new(0);

/// `control_plane.ledger_seal_delay` (seconds, postmaster): how long after its quarter-hour
/// ends `cp_cleanup` seals a bucket of the ledger. A third of it is how old a new ledger row may
/// be dated and still take the fast path of sealing; the same value in every backend, hence
/// fixed at server start.
pub static LEDGER_SEAL_DELAY: GucSetting<i32> = GucSetting::<i32>::new(crate::seal::DEFAULT_DELAY_S as i32);

/// `control_plane.ledger_bucket_seconds` (postmaster): the width of the ledger's sealed
/// buckets, a divisor of a quarter-hour (rounded down to one).
pub static LEDGER_BUCKET_SECONDS: GucSetting<i32> = GucSetting::<i32>::new(900);

/// The bucket width in µs.
pub fn bucket_us() -> i64 {
    crate::seal::width_us(LEDGER_BUCKET_SECONDS.get() as i64)
}

/// The seal delay in µs.
pub fn seal_delay_us() -> i64 {
    LEDGER_SEAL_DELAY.get().max(1) as i64 * crate::calendar::US_PER_SEC
}

/// `control_plane.warn_threshold` (percent, superuser): an admission that leaves a quota at or above
/// this share used is returned with decision `warn` (still allowed).
pub static WARN_THRESHOLD: GucSetting<i32> = GucSetting::<i32>::new(80);

/// `control_plane.emergency_threshold` (percent, superuser): the emergency threshold of a subject's
/// own money budgets (an organisation has its own `emergency_pct`). An admission that would take
/// a budget there is degraded to the profile's `fallback_model` when it has one, else warned.
pub static EMERGENCY_THRESHOLD: GucSetting<i32> = GucSetting::<i32>::new(90);

/// The thresholds of a subject's own money budgets: `warn_threshold` and `emergency_threshold`.
pub fn subject_thresholds() -> crate::money::Thresholds {
    crate::money::Thresholds {
        warning_pct: WARN_THRESHOLD.get() as i64,
        emergency_pct: EMERGENCY_THRESHOLD.get() as i64,
    }
}

/// What `cp_admit` does when a new subject's lock partition is full and no entry can be evicted
/// without losing anything (every entry holds open reservations or rate state that has not
/// refilled yet).
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum OnFull {
    /// Deny the new subject with reason `capacity` (fail closed).
    #[name = c"deny"]
    Deny,
    /// Evict the least recently used entry without open reservations, forgetting its rate state
    /// (its buckets restart full).
    #[name = c"evict_lru"]
    EvictLru,
}

/// What an expired reservation's token estimate becomes. Its request always counts.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum OnExpiry {
    /// Charged as used (fail closed): the request may have run and spent it.
    #[name = c"charge"]
    Charge,
    /// Given back: only the request counts.
    #[name = c"release_estimate"]
    ReleaseEstimate,
}

/// `control_plane.on_expiry` (reload).
pub static ON_EXPIRY: GucSetting<OnExpiry> = GucSetting::<OnExpiry>::new(OnExpiry::Charge);

/// What `cp_admit` does when a money budget applies and the model to call has no price (or no
/// model is named and the profile has no default).
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum UnpricedModels {
    /// Deny with reason `unpriced_model` (fail closed).
    #[name = c"deny"]
    Deny,
    /// Admit without a cost reservation: the usage is recorded with cost NULL and never counts
    /// against a budget.
    #[name = c"allow"]
    Allow,
}

/// `control_plane.unpriced_models` (reload).
pub static UNPRICED_MODELS: GucSetting<UnpricedModels> = GucSetting::<UnpricedModels>::new(UnpricedModels::Deny);

/// `control_plane.default_max_output_tokens` (superuser): the output a cost reservation expects when
/// `cp_admit`'s `max_output_tokens` is NULL.
pub static DEFAULT_MAX_OUTPUT_TOKENS: GucSetting<i32> = GucSetting::<i32>::new(1_024);

/// `control_plane.max_reservation_pct` (percent, reload): the most of its expected output's cost
/// one admission may reserve, as a share of the smallest budget that applies to it.
pub static MAX_RESERVATION_PCT: GucSetting<i32> = GucSetting::<i32>::new(10);

/// `control_plane.on_full` (reload).
pub static ON_FULL: GucSetting<OnFull> = GucSetting::<OnFull>::new(OnFull::Deny);

/// `control_plane.currency` (user): the currency code shown beside amounts (`cp_quota_status`'s
/// display strings). A label only: every amount is in micro-units of the one currency the prices
/// and budgets are set in.
pub static CURRENCY: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"USD"));

/// `control_plane.tenant` (user): the tenant every function acts in.
pub static TENANT: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c"default"));
/// The tenant of a session that sets none.
pub const DEFAULT_TENANT: &str = "default";

/// Defines the settings. Server-start settings exist only when the library is preloaded
/// (PostgreSQL refuses to create them later).
pub fn init(preloading: bool) {
    if preloading {
        define_startup_gucs();
    }
    define_session_gucs();
    unsafe {
        pg_sys::MarkGUCPrefixReserved(c"control_plane".as_ptr());
    }
}

fn define_startup_gucs() {
    GucRegistry::define_int_guc(
        c"control_plane.max_subjects",
        c"Subjects the shared-memory index holds at least (server start).",
        c"Each subject takes 230 bytes of shared memory (1.25 slots of 184 bytes; a lock partition holds at most 90 % of its slots). When a lock partition is full, the least recently used entry that loses nothing is evicted (its totals are rebuilt from the ledger); if none can be, control_plane.on_full decides.",
        &MAX_SUBJECTS,
        1_024,
        50_000_000,
        GucContext::Postmaster,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"control_plane.ledger_bucket_seconds",
        c"Width of the sealed buckets of the ledger: a divisor of 900 s, rounded down to one (server start).",
        c"Narrower buckets are sealed sooner after their end (with control_plane.ledger_seal_delay), so a rebuild reads fewer of today's rows, at the cost of more bucket rows.",
        &LEDGER_BUCKET_SECONDS,
        1,
        900,
        GucContext::Postmaster,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"control_plane.ledger_seal_delay",
        c"How long after its quarter-hour ends cp_cleanup seals a bucket of the ledger (server start).",
        c"Rebuilds of totals read sealed buckets instead of ledger rows. A new ledger row dated more than a third of this before its insertion takes the slow path: its transaction holds the seal lock and adds the row to its bucket at commit.",
        &LEDGER_SEAL_DELAY,
        1,
        86_400,
        GucContext::Postmaster,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"control_plane.max_reservations",
        c"Open reservations held at once across the server (server start).",
        c"When every slot is taken, the oldest open reservations are expired early (charged, as at their timeout) to make room.",
        &MAX_RESERVATIONS,
        1_024,
        10_000_000,
        GucContext::Postmaster,
        GucFlags::default(),
    );
}

fn define_session_gucs() {
    GucRegistry::define_enum_guc(
        c"control_plane.on_full",
        c"What cp_admit does when shared memory is full: deny (default) or evict_lru.",
        c"An entry whose rate buckets are full again and that holds no reservation is always evicted first; this setting decides what happens when there is none.",
        &ON_FULL,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"control_plane.on_expiry",
        c"What an expired reservation's token estimate becomes: charge (default) or release_estimate.",
        c"An admitted request always counts against request quotas, whether or not it is recorded; a reservation that expires unsettled is charged its token estimate unless this is release_estimate.",
        &ON_EXPIRY,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"control_plane.unpriced_models",
        c"What cp_admit does when a money budget applies and the model has no price: deny (default) or allow.",
        c"deny refuses with reason unpriced_model; allow admits without a cost reservation, and the usage is recorded with cost NULL, never counted against a budget. A request that names no model uses the profile's default_model.",
        &UNPRICED_MODELS,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"control_plane.default_max_output_tokens",
        c"Output tokens a cost reservation expects when cp_admit's max_output_tokens is NULL.",
        c"The reservation is the input tokens at the input price, in full, plus this many output tokens at the output price up to control_plane.max_reservation_pct of the smallest budget, rounded up.",
        &DEFAULT_MAX_OUTPUT_TOKENS,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"control_plane.max_reservation_pct",
        c"The most of its expected output's cost one admission may reserve, in percent of the smallest money budget that applies.",
        c"So that one worst-case output estimate cannot block a whole budget; the input, known before the call, is reserved in full. What a request costs beyond its reservation is still recorded and counted.",
        &MAX_RESERVATION_PCT,
        1,
        100,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"control_plane.reservation_timeout",
        c"Seconds an admission holds its request and tokens before it expires.",
        c"An expired reservation is charged (its request, and its estimate unless control_plane.on_expiry = release_estimate) and written to the ledger by a background worker; recording it later replaces the charge with the actual usage.",
        &RESERVATION_TIMEOUT,
        1,
        7 * 86_400,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"control_plane.ledger_retention",
        c"Age past which cp_cleanup rolls ledger rows up into one row per subject and day (0: keep every row).",
        c"Whole UTC days only, and never less than 8 days: every quota window and cp_quota_status stay exact.",
        &LEDGER_RETENTION,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"control_plane.warn_threshold",
        c"Percent of a quota used at which an admission returns decision warn.",
        c"",
        &WARN_THRESHOLD,
        1,
        100,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"control_plane.emergency_threshold",
        c"Percent of a subject's money budget at which an admission degrades to the fallback model.",
        c"Without a fallback model the admission is allowed with decision warn. Organisations set their own (organizations.emergency_pct).",
        &EMERGENCY_THRESHOLD,
        1,
        100,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"control_plane.currency",
        c"The currency code shown beside amounts of money.",
        c"A label only: prices and budgets are integers in micro-units (cents for budgets) of one currency.",
        &CURRENCY,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"control_plane.tenant",
        c"The tenant that control_plane functions act in.",
        c"Set it per transaction (SET LOCAL or set_config(..., true)) in multi-tenant applications.",
        &TENANT,
        GucContext::Userset,
        GucFlags::default(),
    );
}

/// The current tenant, validated. Reads the GUC's C string in place (no allocation).
pub fn tenant() -> Result<String, crate::error::CpError> {
    use crate::error::CpError;
    let raw = unsafe { *TENANT.as_ptr() };
    if raw.is_null() {
        return Err(CpError::invalid_with(
            "control_plane.tenant is not set",
            "the tenant must be a non-empty name",
            Some("SET control_plane.tenant = 'name';"),
        ));
    }
    // SAFETY: the GUC machinery keeps the string alive until the setting changes, which cannot
    // happen during the function call that reads it.
    let s = unsafe { CStr::from_ptr(raw) }
        .to_str()
        .map_err(|_| CpError::invalid("control_plane.tenant is not valid UTF-8"))?;
    crate::args::check_name("control_plane.tenant", s)?;
    if s == "*" {
        return Err(CpError::invalid_with(
            "control_plane.tenant must not be \"*\"",
            "\"*\" marks the presets shared by every tenant",
            None,
        ));
    }
    Ok(s.to_string())
}

/// The currency label of displayed amounts (empty when unset).
pub fn currency() -> String {
    CURRENCY
        .get()
        .map(|c| c.to_string_lossy().chars().take(16).collect())
        .unwrap_or_default()
}
