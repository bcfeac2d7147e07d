-- Benchmark plans and subjects (psql variable :subjects = number of "many" subjects).
-- bench_rate: rate limits only; bench_all: every dimension (rates, concurrency, quotas).
-- Limits are checked on every call and never deny during a run.
INSERT INTO control_plane.profiles (name, requests_per_second, requests_per_minute, requests_per_hour, tokens_per_minute)
VALUES ('bench_rate', 1e12, 1e12, 1e12, 1e15);
INSERT INTO control_plane.profiles (name, requests_per_second, requests_per_minute, requests_per_hour, tokens_per_minute,
                                    max_concurrent, requests_per_day, requests_per_month, input_tokens_per_day,
                                    input_tokens_per_month, output_tokens_per_day, output_tokens_per_month)
VALUES ('bench_all', 1e12, 1e12, 1e12, 1e15, 1e9, 1e15, 1e15, 1e15, 1e15, 1e15, 1e15);
-- bench_money: every dimension of bench_all plus daily and monthly budgets (never denying during a
-- run) and a priced default model: each admission reserves a cost estimate, each record settles it.
INSERT INTO control_plane.model_prices (tenant_id, model, input_micros_per_million, output_micros_per_million, effective_from)
VALUES ('*', 'bench-model', 150000, 600000, '-infinity');
INSERT INTO control_plane.profiles (name, requests_per_second, requests_per_minute, requests_per_hour, tokens_per_minute,
                                    max_concurrent, requests_per_day, requests_per_month, input_tokens_per_day,
                                    input_tokens_per_month, output_tokens_per_day, output_tokens_per_month,
                                    daily_budget_cents, monthly_budget_cents, default_model)
VALUES ('bench_money', 1e12, 1e12, 1e12, 1e15, 1e9, 1e15, 1e15, 1e15, 1e15, 1e15, 1e15, 1e15, 1e15, 'bench-model');
INSERT INTO control_plane.subjects (subject_id, profile)
SELECT 'b_' || g, 'bench_money' FROM generate_series(1, :subjects) g;
-- The same plan for subjects that all belong to one organisation with its own budgets: every
-- admission checks and holds on the subject's entry and on the organisation's.
INSERT INTO control_plane.organizations (org_id, daily_budget_cents, monthly_budget_cents)
VALUES ('bench_org', 1e15, 1e15);
INSERT INTO control_plane.subjects (subject_id, profile, org_id)
SELECT 'o_' || g, 'bench_money', 'bench_org' FROM generate_series(1, :subjects) g;
INSERT INTO control_plane.subjects (subject_id, profile)
SELECT 'r_' || g, 'bench_rate' FROM generate_series(1, :subjects) g
UNION ALL SELECT 'a_' || g, 'bench_all' FROM generate_series(1, :subjects) g
UNION ALL VALUES ('r_hot', 'bench_rate'), ('a_hot', 'bench_all');

-- The hand-written limiter that applications write today: one row per key, SELECT ... FOR
-- UPDATE, refill, update, commit.
CREATE TABLE bench_bucket (key text PRIMARY KEY, tokens float8 NOT NULL, updated_at timestamptz NOT NULL);
INSERT INTO bench_bucket SELECT 'k_' || g, 1e9, clock_timestamp() FROM generate_series(1, :subjects) g;
INSERT INTO bench_bucket VALUES ('k_hot', 1e9, clock_timestamp());
CREATE FUNCTION bench_take(k text, rate float8, burst float8) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    b record;
    now_ts timestamptz := clock_timestamp();
    t float8;
BEGIN
    SELECT tokens, updated_at INTO b FROM bench_bucket WHERE key = k FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO bench_bucket VALUES (k, burst - 1, now_ts) ON CONFLICT (key) DO NOTHING;
        RETURN true;
    END IF;
    t := least(burst, b.tokens + extract(epoch FROM now_ts - b.updated_at) * rate);
    IF t >= 1 THEN
        UPDATE bench_bucket SET tokens = t - 1, updated_at = now_ts WHERE key = k;
        RETURN true;
    END IF;
    UPDATE bench_bucket SET tokens = t, updated_at = now_ts WHERE key = k;
    RETURN false;
END $$;

-- 10,000 subjects for the admin-change scenario (cp_admit while another client changes them), on
-- the rate-limit plan: nothing is held, so no expiry work blurs the comparison.
INSERT INTO control_plane.subjects (subject_id, profile) SELECT 'c_' || g, 'bench_rate' FROM generate_series(1, 10000) g;

-- The floor of a durable usage record: the same INSERT into a table shaped like the ledger
-- (same columns, defaults, identity and indexes), one row per transaction.
CREATE TABLE bench_ledger (LIKE control_plane.usage_events INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING INDEXES);

-- The floor of an admission: a no-op with cp_admit's signature and result type (bench/noop).
CREATE FUNCTION bench_noop_admit(subject text, tokens bigint DEFAULT 0, model text DEFAULT NULL, feature text DEFAULT NULL,
                                 max_output_tokens bigint DEFAULT NULL)
RETURNS control_plane.admission LANGUAGE c VOLATILE AS '$libdir/cp_bench_noop', 'bench_noop_admit';
