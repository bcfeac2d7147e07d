//! `control_plane.alerts`: one row per money threshold reached, with its notification.

use super::{as_owner, write, Arg};
use crate::error::CpResult;

/// One alert row.
pub struct AlertRow<'a> {
    pub tenant: &'a str,
    /// `subject` or `organization`.
    pub scope: &'static str,
    pub subject: &'a str,
    pub org_id: Option<&'a str>,
    pub limit_name: &'static str,
    pub level: &'static str,
    pub window_start_unix_us: i64,
    pub budget_micros: i64,
    pub used_micros: i64,
}

/// Inserts an alert unless its (tenant, budget, level, window) already has one, and notifies
/// `control_plane_alerts` with the row as JSON when it was inserted (both take effect at commit).
/// No notification while the server's NOTIFY queue is half full or more: a full queue fails the
/// commit of every transaction that notifies, and any role can fill it (a listener that never
/// reads), so the admission would fail with it. The row is written either way; listeners catch
/// up from `control_plane.alerts` (ids above the last one heard).
/// Runs as the extension's owner, like the flushers' writes: application roles need no grant on
/// `alerts`, and cannot write one themselves. True when a row was inserted.
pub fn insert_alert(a: &AlertRow) -> CpResult<bool> {
    let rows = as_owner(|| {
        write(
            c"WITH a AS (
              INSERT INTO control_plane.alerts
                     (tenant_id, scope, subject_id, org_id, limit_name, level, window_start,
                      budget_micros, used_micros)
              VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
              ON CONFLICT DO NOTHING
              RETURNING *)
          SELECT CASE WHEN pg_catalog.pg_notification_queue_usage() OPERATOR(pg_catalog.<) 0.5
                      THEN pg_catalog.pg_notify('control_plane_alerts', pg_catalog.json_build_object(
                     'id', id, 'tenant_id', tenant_id, 'scope', scope, 'subject_id', subject_id,
                     'org_id', org_id, 'limit_name', limit_name, 'level', level,
                     'window_start', window_start, 'budget_micros', budget_micros,
                     'used_micros', used_micros, 'created_at', created_at)::pg_catalog.text) END
            FROM a",
            &[
                Arg::Text(Some(a.tenant)),
                Arg::Text(Some(a.scope)),
                Arg::Text(Some(a.subject)),
                Arg::Text(a.org_id),
                Arg::Text(Some(a.limit_name)),
                Arg::Text(Some(a.level)),
                Arg::TimestampUnixUs(a.window_start_unix_us),
                Arg::Int(a.budget_micros),
                Arg::Int(a.used_micros),
            ],
            |_| (),
        )
    })?;
    Ok(!rows.is_empty())
}
