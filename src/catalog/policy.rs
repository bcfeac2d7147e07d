//! Reads of the policy tables: subjects, profiles, tenants' time zones and model prices (and the
//! enrolment of a new subject).

use super::{query_latest, Arg};
use crate::error::CpResult;
/// A subject's row joined with its profile (the tenant's own profile of that name, else the
/// shared preset).
pub struct SubjectRow {
    pub profile_name: String,
    pub active: bool,
    pub overrides: Option<String>,
    pub org_id: Option<String>,
    /// `profiles.id` of the profile it resolves to; None when that profile does not exist.
    pub profile_id: Option<i32>,
}

pub fn load_subject(tenant: &str, subject: &str) -> CpResult<Option<SubjectRow>> {
    let rows = query_latest(
        c"SELECT s.profile, s.active,
                 CASE WHEN s.overrides OPERATOR(pg_catalog.=) '{}'::pg_catalog.jsonb THEN NULL
                      ELSE s.overrides::pg_catalog.text END,
                 s.org_id, p.id::bigint
            FROM control_plane.subjects s
            LEFT JOIN LATERAL (
                 SELECT p.id FROM control_plane.profiles p
                  WHERE p.name OPERATOR(pg_catalog.=) s.profile
                    AND (p.tenant_id OPERATOR(pg_catalog.=) s.tenant_id OR p.tenant_id OPERATOR(pg_catalog.=) '*')
                  ORDER BY p.tenant_id OPERATOR(pg_catalog.=) '*'
                  LIMIT 1) p ON true
           WHERE s.tenant_id OPERATOR(pg_catalog.=) $1 AND s.subject_id OPERATOR(pg_catalog.=) $2",
        &[Arg::Text(Some(tenant)), Arg::Text(Some(subject))],
        |r| SubjectRow {
            profile_name: r.text(1).unwrap_or_default(),
            active: r.bool(2).unwrap_or(false),
            overrides: r.text(3),
            org_id: r.text(4),
            profile_id: r.i64_opt(5).map(|v| v as i32),
        },
    )?;
    Ok(rows.into_iter().next())
}

/// The time zone of a tenant's row in `control_plane.tenants` (None: no row, so UTC). The three
/// readers of rows applications have no grant on (a tenant's zone, a model's prices, an
/// organisation) run as the extension's owner: their SQL helpers are not executable by PUBLIC,
/// so no role reads another tenant's rows through them.
pub fn tenant_zone(tenant: &str) -> CpResult<Option<String>> {
    let rows = super::as_owner(|| {
        query_latest(
            c"SELECT control_plane._tenant_time_zone($1)",
            &[Arg::Text(Some(tenant))],
            |r| r.text(1),
        )
    })?;
    Ok(rows.into_iter().next().flatten())
}

/// The model names with a price row for a tenant: its own and the shared ones.
pub fn priced_models(tenant: &str) -> CpResult<Vec<String>> {
    let rows = super::as_owner(|| {
        query_latest(
            c"SELECT DISTINCT p.model FROM control_plane.model_prices p
               WHERE p.tenant_id OPERATOR(pg_catalog.=) $1 OR p.tenant_id OPERATOR(pg_catalog.=) '*'",
            &[Arg::Text(Some(tenant))],
            |r| r.text(1),
        )
    })?;
    Ok(rows.into_iter().flatten().collect())
}

/// A model's rows in `control_plane.model_prices` for a tenant: its own and the shared ones.
pub fn model_prices(tenant: &str, model: &str) -> CpResult<Vec<crate::money::PriceRow>> {
    super::as_owner(|| {
        query_latest(
            c"SELECT shared, effective_from, input_micros_per_million, output_micros_per_million
            FROM control_plane._model_prices($1, $2)",
            &[Arg::Text(Some(tenant)), Arg::Text(Some(model))],
            |r| crate::money::PriceRow {
                shared: r.bool(1).unwrap_or(true),
                effective_from: r.unix_us(2).unwrap_or(i64::MAX),
                price: crate::money::Price {
                    input_per_million: r.i64(3),
                    output_per_million: r.i64(4),
                },
            },
        )
    })
}

/// One profile row as JSON, by id.
pub fn load_profile(id: i32) -> CpResult<Option<String>> {
    let rows = query_latest(
        c"SELECT pg_catalog.to_jsonb(p)::pg_catalog.text FROM control_plane.profiles p
           WHERE p.id OPERATOR(pg_catalog.=) $1",
        &[Arg::Int(id as i64)],
        |r| r.text(1),
    )?;
    Ok(rows.into_iter().next().flatten())
}

/// The profile a tenant's new subjects get, as JSON: the tenant's own default, else the shared one.
pub fn default_profile(tenant: &str) -> CpResult<Option<(String, String)>> {
    let rows = query_latest(
        c"SELECT p.name, pg_catalog.to_jsonb(p)::pg_catalog.text FROM control_plane.profiles p
           WHERE p.is_default AND (p.tenant_id OPERATOR(pg_catalog.=) $1 OR p.tenant_id OPERATOR(pg_catalog.=) '*')
           ORDER BY p.tenant_id OPERATOR(pg_catalog.=) '*' LIMIT 1",
        &[Arg::Text(Some(tenant))],
        |r| (r.text(1).unwrap_or_default(), r.text(2).unwrap_or_default()),
    )?;
    Ok(rows.into_iter().next())
}

/// Enrolls an unknown subject in the tenant's default profile. Returns false when the tenant has
/// no default profile. Runs as the extension's owner: application roles have no INSERT on
/// `subjects` (choosing a profile, overrides, an organisation or `active` is an admin's act).
pub fn enroll(tenant: &str, subject: &str) -> CpResult<bool> {
    let Some((profile, _)) = default_profile(tenant)? else {
        return Ok(false);
    };
    super::as_owner(|| {
        super::write(
            c"INSERT INTO control_plane.subjects (tenant_id, subject_id, profile) VALUES ($1, $2, $3)
              ON CONFLICT (tenant_id, subject_id) DO NOTHING RETURNING 1",
            &[
                Arg::Text(Some(tenant)),
                Arg::Text(Some(subject)),
                Arg::Text(Some(&profile)),
            ],
            |_| (),
        )
    })?;
    Ok(true)
}

/// An organisation's row (through `control_plane._organization`), None when it has none.
pub fn load_org(tenant: &str, org: &str) -> CpResult<Option<crate::org::Organization>> {
    use crate::org::{EmergencyAction, Organization};
    let rows = super::as_owner(|| {
        query_latest(
            c"SELECT daily_budget_cents, monthly_budget_cents, warning_pct::bigint, emergency_pct::bigint,
                 emergency_action, emergency_stop, active
            FROM control_plane._organization($1, $2)",
            &[Arg::Text(Some(tenant)), Arg::Text(Some(org))],
            |r| {
                let mut o = Organization::new(r.i64_opt(1), r.i64_opt(2));
                o.warning_pct = r.i64(3);
                o.emergency_pct = r.i64(4);
                o.action = r
                    .text(5)
                    .as_deref()
                    .and_then(EmergencyAction::from_name)
                    .unwrap_or(EmergencyAction::Deny);
                o.emergency_stop = r.bool(6).unwrap_or(true);
                o.active = r.bool(7).unwrap_or(false);
                o
            },
        )
    })?;
    Ok(rows.into_iter().next())
}
