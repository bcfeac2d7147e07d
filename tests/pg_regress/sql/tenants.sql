-- Everything acts within control_plane.tenant; a tenant's own profile shadows the presets.
SET control_plane.tenant = 'acme';
INSERT INTO control_plane.profiles (name, description, requests_per_day, is_default)
VALUES ('acme-basic', 'acme''s own default', 1, true);
SELECT allowed, limit_name, remaining FROM control_plane.cp_admit('user_1');
SELECT allowed, reason, limit_name FROM control_plane.cp_admit('user_1');
SELECT tenant_id, subject_id, profile FROM control_plane.subjects WHERE tenant_id = 'acme';
SET control_plane.tenant = 'globex';
SELECT s->>'profile' AS profile, s->>'enrolled' AS enrolled,
       s->'quotas'->'requests_per_day'->>'held' AS held
  FROM control_plane.cp_quota_status('user_1') s;
SELECT allowed FROM control_plane.cp_admit('user_1');
SELECT tenant_id, subject_id, profile FROM control_plane.subjects WHERE subject_id = 'user_1' ORDER BY tenant_id;
RESET control_plane.tenant;

-- A tenant's days and months follow its time zone: a name of the tz database, in any case.
INSERT INTO control_plane.tenants (tenant_id, time_zone) VALUES ('acme', 'Mars/Olympus_Mons');
INSERT INTO control_plane.tenants (tenant_id, time_zone) VALUES ('acme', 'america/new_york');
SET control_plane.tenant = 'acme';
SELECT s->'period'->>'time_zone' AS time_zone FROM control_plane.cp_quota_status('user_1') s;
-- The day Paris moved its clocks forward lasted 23 hours; compaction groups rows by such days.
SET TimeZone = 'UTC';
SELECT control_plane._local_day_start('Europe/Paris', '2026-03-29 12:00+00') AS day_start,
       control_plane._local_day_end('Europe/Paris', '2026-03-29 12:00+00') AS day_end;
SELECT control_plane._local_day_start('Europe/Paris', 'infinity') AS forever;
RESET TimeZone;
RESET control_plane.tenant;
