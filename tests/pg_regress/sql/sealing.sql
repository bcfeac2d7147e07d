-- Sealing: cp_cleanup sums the closed quarter-hours of the ledger into usage_buckets (one per
-- subject and one per organisation); a rebuild of totals reads the buckets inside the seal and
-- the rows outside it. Rows dated inside the seal later are added to their buckets at commit.
INSERT INTO control_plane.subjects (subject_id, profile, overrides)
VALUES ('seal_1', 'starter', '{"input_tokens_per_month": 1000000000}');
-- 400 rows each over the two days before the last full hour, and three rows now.
INSERT INTO control_plane.usage_events
       (tenant_id, subject_id, org_id, requests, input_tokens, output_tokens, cost_micros, created_at)
SELECT 'default', 'seal_' || s, 'o-seal', 1, g, 2 * g, 3 * g,
       date_trunc('hour', now()) - interval '1 hour' - g * interval '7 minutes'
  FROM generate_series(1, 2) s, generate_series(1, 400) g
UNION ALL
SELECT 'default', 'seal_' || s, 'o-seal', 1, 1000, 0, NULL, now() FROM generate_series(1, 2) s, generate_series(1, 3) g;

-- What the rebuilt totals must be: the rows of this UTC month and day ('default' counts in UTC).
CREATE VIEW seal_truth AS
SELECT subject_id,
       sum(input_tokens) FILTER (WHERE created_at >= date_trunc('month', now(), 'UTC')) AS month_input,
       sum(requests) FILTER (WHERE created_at >= date_trunc('day', now(), 'UTC')) AS day_requests
  FROM control_plane.usage_events WHERE subject_id LIKE 'seal\_%' GROUP BY subject_id;
-- Every sealed quarter-hour of these subjects and their organisation, against its rows.
CREATE VIEW seal_check AS
WITH st AS (SELECT sealed_from AS f, sealed_until AS u FROM control_plane.ledger_state),
rows AS (
    SELECT e.*, date_bin('15 minutes', e.created_at, '2000-01-01 00:00:00+00') AS b
      FROM control_plane.usage_events e, st
     WHERE (e.subject_id LIKE 'seal\_%' OR e.org_id = 'o-seal') AND e.created_at >= st.f AND e.created_at < st.u
), raw AS (
    SELECT 'subject' AS scope, subject_id AS who, b, sum(requests) AS r, sum(input_tokens) AS i,
           sum(output_tokens) AS o, coalesce(sum(cost_micros), 0) AS c
      FROM rows GROUP BY subject_id, b
    UNION ALL
    SELECT 'organization', org_id, b, sum(requests), sum(input_tokens), sum(output_tokens), coalesce(sum(cost_micros), 0)
      FROM rows WHERE org_id IS NOT NULL GROUP BY org_id, b
), bk AS (
    SELECT scope, who, bucket_start, requests::numeric, input_tokens::numeric, output_tokens::numeric, cost_micros
      FROM control_plane.usage_buckets WHERE who LIKE 'seal\_%' OR who = 'o-seal'
)
SELECT (SELECT count(*) FROM raw) AS buckets,
       (SELECT count(*) FROM ((TABLE raw EXCEPT ALL TABLE bk) UNION ALL (TABLE bk EXCEPT ALL TABLE raw)) d) AS differ;

-- Sealing moves at most a day per run, from 35 days back (older buckets could serve no window).
SELECT bool_or((c->'seal'->>'caught_up')::boolean) AS caught_up,
       sum((c->'seal'->>'rows_sealed')::bigint) >= 800 AS sealed_these_rows
  FROM (SELECT control_plane.cp_cleanup() AS c FROM generate_series(1, 40)) x;
SELECT sealed_from <= now() - interval '840 hours' AS from_35_days_back,
       sealed_until <= now() - interval '15 minutes' AS until_the_delay,
       sealed_until > now() - interval '31 minutes' AS caught_up
  FROM control_plane.ledger_state;
SELECT * FROM seal_check;
-- A sealing with nothing new to seal.
SELECT c->'seal'->'rows_sealed' AS rows_sealed FROM control_plane.cp_cleanup() c;

-- Rebuilt from buckets and rows: the same totals as the rows (seal_1 enters shared memory now;
-- seal_2 is not enrolled and is read from the ledger at every call).
SELECT t.subject_id,
       (s->'quotas'->'input_tokens_per_month'->>'used')::numeric = t.month_input AS month_exact,
       (s->'quotas'->'requests_per_day'->>'used')::numeric = t.day_requests AS day_exact
  FROM seal_truth t, control_plane.cp_quota_status(t.subject_id) s ORDER BY 1;

-- Rows dated inside the seal after it moved: committed, rolled back, in a rolled-back
-- subtransaction, skipped by ON CONFLICT. Only the two committed ones (5 and 13 input tokens)
-- reach the buckets.
SELECT sum(input_tokens) AS seal_2_bucketed FROM control_plane.usage_buckets WHERE who = 'seal_2';
INSERT INTO control_plane.usage_events (tenant_id, subject_id, org_id, input_tokens, output_tokens, cost_micros, created_at)
VALUES ('default', 'seal_2', 'o-seal', 5, 5, 5, date_trunc('hour', now()) - interval '3 hours');
BEGIN;
INSERT INTO control_plane.usage_events (tenant_id, subject_id, input_tokens, output_tokens, created_at)
VALUES ('default', 'seal_2', 7, 7, date_trunc('hour', now()) - interval '4 hours');
ROLLBACK;
BEGIN;
SAVEPOINT a;
INSERT INTO control_plane.usage_events (tenant_id, subject_id, input_tokens, output_tokens, created_at)
VALUES ('default', 'seal_2', 11, 11, date_trunc('hour', now()) - interval '5 hours');
ROLLBACK TO a;
INSERT INTO control_plane.usage_events (tenant_id, subject_id, org_id, input_tokens, output_tokens, created_at, idempotency_key)
VALUES ('default', 'seal_2', 'o-seal', 13, 13, date_trunc('hour', now()) - interval '6 hours', 'seal-key');
COMMIT;
INSERT INTO control_plane.usage_events (tenant_id, subject_id, input_tokens, output_tokens, created_at, idempotency_key)
VALUES ('default', 'seal_2', 17, 17, date_trunc('hour', now()) - interval '7 hours', 'seal-key')
ON CONFLICT DO NOTHING;
SELECT sum(input_tokens) AS seal_2_bucketed FROM control_plane.usage_buckets WHERE who = 'seal_2';
SELECT * FROM seal_check;
SELECT t.subject_id,
       (s->'quotas'->'input_tokens_per_month'->>'used')::numeric = t.month_input AS month_exact
  FROM seal_truth t, control_plane.cp_quota_status(t.subject_id) s WHERE t.subject_id = 'seal_2';

-- A transaction that inserted ledger rows cannot be prepared (a prepared row could commit after
-- a sealing passed its time).
BEGIN;
INSERT INTO control_plane.usage_events (tenant_id, subject_id, input_tokens, output_tokens)
VALUES ('default', 'seal_2', 1, 1);
PREPARE TRANSACTION 'seal_prepared';
SELECT * FROM seal_check;

DROP VIEW seal_check;
DROP VIEW seal_truth;
