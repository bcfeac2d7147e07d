-- Money thresholds: a degrade to the profile's fallback model, an organisation's emergency deny,
-- and one alert row per budget, level and window.
-- 1 micro-unit per input token for a-big, a tenth of that for its fallback a-small
INSERT INTO control_plane.model_prices
    (tenant_id, model, input_micros_per_million, output_micros_per_million, effective_from)
VALUES ('*', 'a-big', 1000000, 0, '-infinity'), ('*', 'a-small', 100000, 0, '-infinity');
INSERT INTO control_plane.profiles (name, fallback_model) VALUES ('a-fallback', 'a-small');
-- two organisations of 1 cent a day (10,000 micro-units): one degrades, one denies
INSERT INTO control_plane.organizations (org_id, daily_budget_cents) VALUES ('a-degrade', 1);
INSERT INTO control_plane.organizations (org_id, daily_budget_cents, emergency_action) VALUES ('a-deny', 1, 'deny');
INSERT INTO control_plane.subjects (subject_id, profile, org_id)
VALUES ('ada', 'a-fallback', 'a-degrade'), ('dan', 'a-fallback', 'a-deny');

-- 500 each: allowed up to 7,500, a warning at 8,000 and 8,500; the 18th would reach 9,000 (90 %),
-- so it and the next ones call a-small, reserving 50
SELECT g AS request, a.decision, a.reason, a.model, a.limit_name, a.remaining
  FROM generate_series(1, 20) g,
       LATERAL control_plane.cp_admit('ada', 500 + 0 * g, 'a-big', max_output_tokens => 0) a;

-- under 'deny' the 18th is refused instead; a request that stays below 90 % still passes
SELECT count(*) FILTER (WHERE allowed) AS admitted
  FROM generate_series(1, 17) g,
       LATERAL control_plane.cp_admit('dan', 500 + 0 * g, 'a-big', max_output_tokens => 0) a;
SELECT allowed, decision, reason, limit_name, remaining, retry_after_ms > 0 AS retry_later
  FROM control_plane.cp_admit('dan', 500, 'a-big', max_output_tokens => 0);
SELECT allowed, decision, reason, remaining
  FROM control_plane.cp_admit('dan', 499, 'a-big', max_output_tokens => 0);

-- one row per organisation, level and day; the degrade started the emergency of a-degrade
SELECT scope, org_id, subject_id, limit_name, level, budget_micros, used_micros,
       window_start = date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS today
  FROM control_plane.alerts WHERE org_id IN ('a-degrade', 'a-deny') ORDER BY id;

-- where each organisation's day stands
SELECT s->'organization'->>'org_id' AS org_id, s->'organization'->'money'->'day'->>'level' AS level,
       s->'organization'->'money'->'day'->>'percent' AS percent, s->'models'->>'fallback' AS fallback
  FROM (VALUES ('ada'), ('dan')) v(subject), LATERAL control_plane.cp_quota_status(v.subject) s;
