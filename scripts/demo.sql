-- The control_plane walk-through printed by scripts/demo.sh.
\pset pager off
\pset null '(null)'
\set ON_ERROR_STOP on
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS control_plane;

\echo
\echo '== 1. The plans (presets installed with the extension; NULL = unlimited) =='
SELECT name, is_default, requests_per_second AS rps, requests_per_minute AS rpm, requests_per_day AS rpd,
       input_tokens_per_month AS in_tok_month, output_tokens_per_month AS out_tok_month,
       daily_budget_cents AS daily_cents, max_concurrent
  FROM control_plane.profiles ORDER BY requests_per_day NULLS LAST;

\echo
\echo '== 2. user_123 (unknown so far) asks to call gpt-4o-mini with about 1500 tokens =='
\echo '   The demo gives user_123 a daily quota of 5 requests, 10 requests a second and 10 in flight on top of the free plan.'
INSERT INTO control_plane.subjects (subject_id, profile, overrides)
VALUES ('user_123', 'free', '{"requests_per_day": 5, "requests_per_second": 10, "max_concurrent": 10}');
SELECT allowed, decision, reason, limit_name, remaining, retry_after_ms, reservation_id
  FROM control_plane.cp_admit('user_123', 1500, model => 'gpt-4o-mini') \gset
SELECT :'allowed' AS allowed, :'decision' AS decision, :'limit_name' AS limit_name,
       :'remaining' AS remaining, :'reservation_id' AS reservation_id;

\echo
\echo '== 3. The app called the model; it records what the call really used =='
SELECT * FROM control_plane.cp_record_usage('user_123', 1200, 340, model => 'gpt-4o-mini',
         reservation_id => :'reservation_id', metadata => '{"route": "/chat"}');

\echo
\echo '== 4. More requests arrive: admitted until the daily quota denies one =='
-- (the "+ 0 * n" makes the call depend on the row: a function in FROM whose arguments are
--  constant is called once and its row reused for every row of generate_series)
SELECT n AS request, a.allowed, a.decision, a.reason, a.limit_name, a.remaining,
       a.retry_after_ms, (a.retry_after_ms || ' milliseconds')::interval AS retry_after
  FROM generate_series(2, 6) n
 CROSS JOIN LATERAL control_plane.cp_admit('user_123', 1500 + 0 * n, model => 'gpt-4o-mini') a;

\echo
\echo '== 5. Rate limits: the free plan allows one request per second; the retry time is exact =='
SELECT allowed, decision, reason FROM control_plane.cp_admit('user_789', 100, model => 'gpt-4o-mini');
SELECT allowed, decision, reason, limit_name, retry_after_ms
  FROM control_plane.cp_admit('user_789', 100, model => 'gpt-4o-mini') \gset
SELECT :'allowed' AS allowed, :'reason' AS reason, :'limit_name' AS limit_name, :'retry_after_ms' AS retry_after_ms;
\echo '   ... waiting retry_after_ms, then asking again:'
SELECT pg_sleep(:retry_after_ms / 1000.0) \gset
SELECT allowed, decision, limit_name, remaining FROM control_plane.cp_admit('user_789', 100, model => 'gpt-4o-mini');

\echo
\echo '== 6. A model the free plan does not include =='
SELECT allowed, decision, reason FROM control_plane.cp_admit('user_456', 100, model => 'gpt-4o');

\echo
\echo '== 7. cp_quota_status(''user_123''): used = recorded, held = admitted and not yet recorded =='
SELECT jsonb_pretty(control_plane.cp_quota_status('user_123')) AS quota_status;

\echo
\echo '== 8. An admin moves user_123 to the pro plan; the very next admission obeys =='
UPDATE control_plane.subjects SET profile = 'pro', overrides = '{}' WHERE subject_id = 'user_123';
SELECT allowed, decision, limit_name, remaining FROM control_plane.cp_admit('user_123', 1500, model => 'gpt-4o');

\echo
\echo '== 9. A worker that crashes after the model call never records: its admission still counts =='
\echo '   user_321 has 2 requests a day and 5000 input tokens; its reservations expire after 1 second here.'
INSERT INTO control_plane.subjects (subject_id, profile, overrides)
VALUES ('user_321', 'unlimited', '{"requests_per_day": 2, "input_tokens_per_day": 5000}');
SET control_plane.reservation_timeout = 1;
SELECT allowed FROM control_plane.cp_admit('user_321', 1000);
SELECT reservation_id AS late_id FROM control_plane.cp_admit('user_321', 2000) \gset
\echo '   ... 3 seconds later: both expired, unrecorded; their requests and estimates are charged, not given back'
SELECT pg_sleep(3);
SELECT allowed, reason, limit_name FROM control_plane.cp_admit('user_321', 100);
\echo '   the background flusher wrote the charge to the ledger:'
SELECT kind, requests, input_tokens, jsonb_pretty(metadata) AS metadata
  FROM control_plane.usage_events WHERE subject_id = 'user_321' ORDER BY id;
\echo '   one of them records late (it used 700 tokens): its charge of 2000 is replaced, not added to'
SELECT reservation_settled FROM control_plane.cp_record_usage('user_321', 700, 50, reservation_id => :'late_id');
SELECT kind, requests, input_tokens FROM control_plane.usage_events WHERE subject_id = 'user_321' ORDER BY id;
SELECT s->'quotas'->'requests_per_day'->'used' AS requests_used,
       s->'quotas'->'input_tokens_per_day'->'used' AS input_tokens_used
  FROM control_plane.cp_quota_status('user_321') s;
RESET control_plane.reservation_timeout;

\echo
\echo '== 10. The ledger is append-only: nobody edits or deletes usage that limits were enforced on =='
SET client_min_messages = notice;
DO $$
BEGIN
    DELETE FROM control_plane.usage_events WHERE subject_id = 'user_321';
EXCEPTION WHEN object_not_in_prerequisite_state THEN
    RAISE NOTICE 'refused (SQLSTATE %): %', SQLSTATE, SQLERRM;
END $$;
SET client_min_messages = warning;

\echo
\echo '== 11. Retention: cp_cleanup rolls old rows up into one row per subject and day, sums unchanged =='
\echo '   (forty days of history for user_999, written straight into the ledger)'
INSERT INTO control_plane.usage_events (tenant_id, subject_id, input_tokens, output_tokens, created_at)
SELECT 'default', 'user_999', 100, 10, now() - interval '40 days' + g * interval '1 hour'
  FROM generate_series(1, 48) g;
SELECT kind, count(*) AS rows, sum(requests) AS requests, sum(input_tokens) AS input_tokens
  FROM control_plane.usage_events WHERE subject_id = 'user_999' GROUP BY kind;
SET control_plane.ledger_retention = '30d';
SELECT jsonb_pretty(control_plane.cp_cleanup()) AS cp_cleanup;
SELECT kind, count(*) AS rows, sum(requests) AS requests, sum(input_tokens) AS input_tokens
  FROM control_plane.usage_events WHERE subject_id = 'user_999' GROUP BY kind;
RESET control_plane.ledger_retention;

\echo
\echo '== 12. A tenant in Tokyo: its days start at midnight in Tokyo, and a zone change applies at once =='
\echo '   (tenant acme_jp; user_jp used 3 requests yesterday evening, Tokyo time, and 2 this morning)'
SET control_plane.tenant = 'acme_jp';
INSERT INTO control_plane.subjects (subject_id, profile, overrides)
VALUES ('user_jp', 'unlimited', '{"requests_per_day": 10}');
INSERT INTO control_plane.usage_events (tenant_id, subject_id, input_tokens, output_tokens, created_at)
SELECT 'acme_jp', 'user_jp', 100, 10, t
  FROM unnest(ARRAY[date_trunc('day', now(), 'Asia/Tokyo') - interval '3 hours',
                    date_trunc('day', now(), 'Asia/Tokyo') - interval '2 hours',
                    date_trunc('day', now(), 'Asia/Tokyo') - interval '1 hour',
                    least(now(), date_trunc('day', now(), 'Asia/Tokyo') + interval '1 hour'),
                    least(now(), date_trunc('day', now(), 'Asia/Tokyo') + interval '2 hours')]) t;
\echo '   on UTC (no row in control_plane.tenants), the day is the UTC day:'
SELECT s->'period'->>'time_zone' AS time_zone, s->'period'->'day'->>'start' AS day_start,
       s->'quotas'->'requests_per_day'->'used' AS used_today
  FROM control_plane.cp_quota_status('user_jp') s;
INSERT INTO control_plane.tenants (tenant_id, time_zone) VALUES ('acme_jp', 'Asia/Tokyo');
\echo '   after INSERT INTO control_plane.tenants (tenant_id, time_zone) VALUES (''acme_jp'', ''Asia/Tokyo''):'
SELECT s->'period'->>'time_zone' AS time_zone, s->'period'->'day'->>'start' AS day_start,
       s->'quotas'->'requests_per_day'->'used' AS used_today
  FROM control_plane.cp_quota_status('user_jp') s;
\echo '   and a denial says when the day ends in Tokyo:'
SELECT count(*) FILTER (WHERE allowed) AS admitted
  FROM generate_series(1, 8) g, LATERAL control_plane.cp_admit('user_jp' || left(g::text, 0)) a;
SELECT reason, retry_after_ms,
       to_char((clock_timestamp() + retry_after_ms * interval '1 ms') AT TIME ZONE 'Asia/Tokyo',
               'YYYY-MM-DD HH24:MI:SS') AS retry_at_tokyo_time
  FROM control_plane.cp_admit('user_jp');
RESET control_plane.tenant;

\echo
\echo '== 13. Prices: what each recorded call cost, in integer micro-units (1e-6 of the currency) =='
\echo '   a shared price for every tenant, and acme_eu''s own, cheaper one from today on:'
INSERT INTO control_plane.model_prices
    (tenant_id, model, input_micros_per_million, output_micros_per_million, effective_from)
VALUES ('*', 'gpt-4o-mini', 150000, 600000, '-infinity'),
       ('acme_eu', 'gpt-4o-mini', 120000, 480000, date_trunc('day', now()));
SELECT tenant_id, model, input_micros_per_million, output_micros_per_million, effective_from
  FROM control_plane.model_prices ORDER BY tenant_id, effective_from;
\echo '   user_777 (tenant default) and user_eu (tenant acme_eu) each record 1200 input and 350 output tokens,'
\echo '   then 3 and 1 (0.45 + 0.60 = 1.05 micro-units at the shared price: rounded up, never down):'
INSERT INTO control_plane.subjects (subject_id, profile) VALUES ('user_777', 'unlimited');
SELECT 'user_777' AS subject, cost_micros FROM control_plane.cp_record_usage('user_777', 1200, 350, model => 'gpt-4o-mini')
UNION ALL
SELECT 'user_777', cost_micros FROM control_plane.cp_record_usage('user_777', 3, 1, model => 'gpt-4o-mini');
SET control_plane.tenant = 'acme_eu';
INSERT INTO control_plane.subjects (subject_id, profile) VALUES ('user_eu', 'unlimited');
SELECT 'user_eu' AS subject, cost_micros FROM control_plane.cp_record_usage('user_eu', 1200, 350, model => 'gpt-4o-mini');
RESET control_plane.tenant;
\echo '   a model with no price records no cost (NULL), never a made-up zero:'
SELECT cost_micros IS NULL AS no_cost FROM control_plane.cp_record_usage('user_777', 10, 10, model => 'some-new-model');
\echo '   a retry with the same idempotency key records nothing new: it returns the original event and cost:'
SELECT 'first call' AS call, event_id, cost_micros
  FROM control_plane.cp_record_usage('user_777', 100, 10, model => 'gpt-4o-mini', idempotency_key => 'order-42-call-1');
SELECT 'retry' AS call, event_id, cost_micros
  FROM control_plane.cp_record_usage('user_777', 100, 10, model => 'gpt-4o-mini', idempotency_key => 'order-42-call-1');
SELECT count(*) AS ledger_rows_with_that_key FROM control_plane.usage_events WHERE idempotency_key = 'order-42-call-1';
\echo '   the same key with other amounts is refused (23505): a retry loop cannot hide spend under an old key:'
SET client_min_messages = notice;
DO $$
BEGIN
    PERFORM control_plane.cp_record_usage('user_777', 100000, 10, model => 'gpt-4o-mini',
                                          idempotency_key => 'order-42-call-1');
EXCEPTION WHEN unique_violation THEN
    RAISE NOTICE 'refused (SQLSTATE %): %', SQLSTATE, SQLERRM;
END $$;
SET client_min_messages = warning;
\echo '   a family price (gpt-4o*) prices the dated names providers answer with:'
INSERT INTO control_plane.model_prices
    (tenant_id, model, input_micros_per_million, output_micros_per_million, effective_from)
VALUES ('*', 'gpt-4o*', 2500000, 10000000, '-infinity');
SELECT cost_micros FROM control_plane.cp_record_usage('user_777', 1000, 100, model => 'gpt-4o-2024-08-06');
\echo '   spend is part of the totals, per day and month:'
SELECT jsonb_pretty(control_plane.cp_quota_status('user_777')->'money') AS money;

\echo
\echo '== 14. Money budgets: each admission reserves its estimated cost, and the budget refuses what no longer fits =='
\echo '   a plan with a daily budget of 1 cent (10,000 micro-units) that calls gpt-4o-mini unless told otherwise:'
INSERT INTO control_plane.profiles (name, daily_budget_cents, default_model) VALUES ('team_small', 1, 'gpt-4o-mini');
INSERT INTO control_plane.subjects (subject_id, profile) VALUES ('user_budget', 'team_small');
\echo '   4000 input tokens and at most 500 output tokens: 600 + 300 = 900 micro-units reserved (the model column says what to call):'
SELECT allowed, decision, model, reservation_id FROM control_plane.cp_admit('user_budget', 4000, max_output_tokens => 500) \gset
SELECT :'allowed' AS allowed, :'decision' AS decision, :'model' AS model;
\echo '   the call answered 200 tokens: it is settled at its actual cost, 600 + 120 = 720:'
SELECT cost_micros, reservation_settled
  FROM control_plane.cp_record_usage('user_budget', 4000, 200, reservation_id => :'reservation_id');
\echo '   10,000 - 720 = 9,280 left: ten more reservations of 900 fit, the eleventh is refused (remaining in micro-units):'
SELECT n AS request, a.allowed, a.decision, a.reason, a.limit_name, a.remaining
  FROM generate_series(1, 11) n
 CROSS JOIN LATERAL control_plane.cp_admit('user_budget', 4000 + 0 * n, max_output_tokens => 500) a;
\echo '   the input is known before the call, so it is reserved in full: 100,000 input tokens (15,000) never fit 1 cent;'
\echo '   a long expected output is reserved only up to 10 % of the budget (150 + 1,000 of its 60,000):'
INSERT INTO control_plane.subjects (subject_id, profile) VALUES ('user_budget2', 'team_small');
SELECT allowed, reason, remaining FROM control_plane.cp_admit('user_budget2', 100000, max_output_tokens => 0);
SELECT allowed, decision, remaining FROM control_plane.cp_admit('user_budget2', 1000, max_output_tokens => 100000);
\echo '   a model without a price is refused under a budget (never free by accident):'
SELECT allowed, reason FROM control_plane.cp_admit('user_budget', 10, model => 'some-new-model');
\echo '   the day''s money: budget, spent (recorded), reserved (admitted, not yet recorded), remaining:'
SELECT jsonb_pretty(control_plane.cp_quota_status('user_budget')->'money'->'day') AS day;

\echo
\echo '== 15. Organisations: one budget for all of an organisation''s subjects, and an emergency stop =='
\echo '   organisation acme_corp has 1 cent a day (10,000 micro-units); alice and bob have no budget of their own:'
INSERT INTO control_plane.profiles (name, default_model) VALUES ('team_member', 'gpt-4o-mini');
INSERT INTO control_plane.organizations (org_id, daily_budget_cents) VALUES ('acme_corp', 1);
INSERT INTO control_plane.subjects (subject_id, profile, org_id)
VALUES ('alice', 'team_member', 'acme_corp'), ('bob', 'team_member', 'acme_corp');
\echo '   they take turns reserving 900 each: eleven fit together (9,900), the twelfth is refused by the organisation:'
SELECT n AS request, s.subject, a.allowed, a.reason, a.limit_name, a.remaining
  FROM generate_series(1, 12) n
 CROSS JOIN LATERAL (SELECT CASE WHEN n % 2 = 1 THEN 'alice' ELSE 'bob' END AS subject) s
 CROSS JOIN LATERAL control_plane.cp_admit(s.subject, 4000 + 0 * n, max_output_tokens => 500) a;
\echo '   the organisation''s day, as the status of either member shows it:'
SELECT o->>'org_id' AS org_id, o->'money'->'day'->>'budget' AS budget, o->'money'->'day'->>'reserved' AS reserved,
       o->'money'->'day'->>'remaining' AS remaining, o->'money'->'day'->>'percent' AS percent
  FROM (SELECT control_plane.cp_quota_status('bob')->'organization' AS o) s;
\echo '   an admin trips the emergency stop: every member is refused from the next call on, until it is reset:'
UPDATE control_plane.organizations SET emergency_stop = true WHERE org_id = 'acme_corp';
SELECT allowed, reason FROM control_plane.cp_admit('alice', 1, model => 'free-model');
UPDATE control_plane.organizations SET emergency_stop = false WHERE org_id = 'acme_corp';
\echo
\echo '== 16. Thresholds, alerts and degrade: a cheaper model past the emergency threshold, one alert per level =='
\echo '   organisation acme_labs has 1 cent a day, warns at 80 % and degrades at 90 % (the defaults);'
\echo '   its members'' plan falls back to gpt-4o-mini-lite, at half the price. This session listens for alerts:'
INSERT INTO control_plane.model_prices
    (tenant_id, model, input_micros_per_million, output_micros_per_million, effective_from)
VALUES ('*', 'gpt-4o-mini-lite', 75000, 300000, '-infinity');
INSERT INTO control_plane.profiles (name, default_model, fallback_model)
VALUES ('lab_member', 'gpt-4o-mini', 'gpt-4o-mini-lite');
INSERT INTO control_plane.organizations (org_id, daily_budget_cents) VALUES ('acme_labs', 1);
INSERT INTO control_plane.subjects (subject_id, profile, org_id) VALUES ('carol', 'lab_member', 'acme_labs');
LISTEN control_plane_alerts;
\echo '   900 micro-units each: the 9th reaches 8,100 (warn); from the 10th, 900 more would reach 90 %, so each'
\echo '   request is degraded to the fallback (450); the 14th fits neither. The notifications follow the result:'
SELECT n AS request, a.decision, a.reason, a.model, a.remaining
  FROM generate_series(1, 14) n
 CROSS JOIN LATERAL control_plane.cp_admit('carol', 4000 + 0 * n, max_output_tokens => 500) a;
\echo '   control_plane.alerts keeps one row per budget, level and window (a second crossing writes nothing):'
SELECT scope, org_id, subject_id, limit_name, level, used_micros FROM control_plane.alerts ORDER BY id;
UNLISTEN control_plane_alerts;
\echo '   the status shows where each budget stands:'
SELECT o->'money'->'day'->>'level' AS level, o->'money'->'day'->>'percent' AS percent,
       o->>'emergency_action' AS emergency_action
  FROM (SELECT control_plane.cp_quota_status('carol')->'organization' AS o) s;

\echo
\echo '== 17. Sealing: cp_cleanup sums closed quarter-hours of the ledger into buckets, which rebuilds read =='
\echo '   (user_sealed, not enrolled: 20,000 calls over the last ten days, written straight into the ledger)'
RESET control_plane.tenant;
INSERT INTO control_plane.usage_events (tenant_id, subject_id, input_tokens, output_tokens, created_at)
SELECT 'default', 'user_sealed', 10, 1, now() - interval '10 days' + g * interval '43 seconds'
  FROM generate_series(1, 20000) g;
\echo '   36 runs (pg_cron would run them a minute apart) seal the last 35 days, a day per run:'
SELECT count(*) AS runs, bool_or((c->'seal'->>'caught_up')::boolean) AS caught_up,
       sum((c->'seal'->>'rows_sealed')::bigint) AS rows_sealed
  FROM (SELECT control_plane.cp_cleanup() AS c FROM generate_series(1, 36)) x;
SELECT count(*) AS buckets, sum(requests) AS requests_in_buckets,
       (SELECT count(*) FROM control_plane.usage_events, control_plane.ledger_state
         WHERE subject_id = 'user_sealed' AND created_at >= sealed_until) AS rows_after_the_seal
  FROM control_plane.usage_buckets WHERE who = 'user_sealed';
\echo '   its totals, read from those buckets and the rows after them, count every row:'
SELECT (control_plane.cp_quota_status('user_sealed')->'quotas'->'input_tokens_per_month'->>'used')::bigint AS used_this_month,
       (SELECT sum(input_tokens) FROM control_plane.usage_events
         WHERE subject_id = 'user_sealed' AND created_at >= date_trunc('month', now(), 'UTC')) AS ledger_this_month;

\echo
\echo '== 18. Shared-memory use and decision counters (control_plane.stats), and per tenant (tenant_stats) =='
SELECT name, value FROM control_plane.stats;
SELECT * FROM control_plane.tenant_stats ORDER BY database, tenant;
