-- Organisations: what a bad row gets, what a subject naming one needs, and an organisation's
-- budget shared by its subjects (the whole budget spent by two of them, then refused).
-- bad rows: negative budget, thresholds out of range or out of order, an unknown action
\set VERBOSITY terse
INSERT INTO control_plane.organizations (org_id, daily_budget_cents) VALUES ('o-bad', -1);
INSERT INTO control_plane.organizations (org_id, warning_pct) VALUES ('o-bad', 0);
INSERT INTO control_plane.organizations (org_id, warning_pct, emergency_pct) VALUES ('o-bad', 95, 90);
INSERT INTO control_plane.organizations (org_id, emergency_action) VALUES ('o-bad', 'stop');
-- a subject naming an organisation that does not exist in its tenant
INSERT INTO control_plane.subjects (subject_id, profile, org_id) VALUES ('olga', 'unlimited', 'o-acme');
\set VERBOSITY default

-- 1 micro-unit per input token; 1 cent a day (10,000 micro-units) for two subjects together
INSERT INTO control_plane.model_prices
    (tenant_id, model, input_micros_per_million, output_micros_per_million, effective_from)
VALUES ('*', 'm-org', 1000000, 0, '-infinity');
INSERT INTO control_plane.organizations (org_id, daily_budget_cents) VALUES ('o-acme', 1);
INSERT INTO control_plane.subjects (subject_id, profile, org_id)
VALUES ('olga', 'unlimited', 'o-acme'), ('oscar', 'unlimited', 'o-acme');
SELECT tenant_id, org_id, daily_budget_cents, monthly_budget_cents, warning_pct, emergency_pct,
       emergency_action, emergency_stop, active
  FROM control_plane.organizations WHERE org_id LIKE 'o-%' ORDER BY org_id;

-- each admission of 1,000 input tokens reserves 1,000 (the input is known: reserved in full)
SELECT allowed, decision, limit_name, remaining, model
  FROM control_plane.cp_admit('olga', 1000, 'm-org', max_output_tokens => 0);
SELECT count(*) FILTER (WHERE allowed) AS admitted
  FROM generate_series(1, 8) g, LATERAL control_plane.cp_admit('oscar', 1000 + 0 * g, 'm-org', max_output_tokens => 0);
-- 9,000 of 10,000 reserved: the next 1,000 fit, then nothing does
SELECT allowed, reason, limit_name, remaining
  FROM control_plane.cp_admit('olga', 1000, 'm-org', max_output_tokens => 0);
SELECT allowed, reason, limit_name, remaining, retry_after_ms > 0 AS retry_later
  FROM control_plane.cp_admit('oscar', 1, 'm-org', max_output_tokens => 0);
SELECT m->>'budget' AS budget, m->>'reserved' AS reserved, m->>'remaining' AS remaining, m->>'percent' AS percent
  FROM (SELECT control_plane.cp_quota_status('oscar')->'organization'->'money'->'day' AS m) s;

-- the emergency stop refuses everything, an inactive organisation too
UPDATE control_plane.organizations SET daily_budget_cents = NULL, emergency_stop = true WHERE org_id = 'o-acme';
SELECT allowed, reason FROM control_plane.cp_admit('olga', 1, 'm-org');
UPDATE control_plane.organizations SET emergency_stop = false, active = false WHERE org_id = 'o-acme';
SELECT allowed, reason FROM control_plane.cp_admit('olga', 1, 'm-org');
UPDATE control_plane.organizations SET active = true WHERE org_id = 'o-acme';
SELECT allowed, reason FROM control_plane.cp_admit('olga', 1, 'm-org');

-- an organisation its subjects name cannot go
\set VERBOSITY terse
DELETE FROM control_plane.organizations WHERE org_id = 'o-acme';
\set VERBOSITY default
