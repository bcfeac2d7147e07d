-- control_plane schema: plans (profiles), subjects, the usage ledger, triggers and the stats view.
-- Loaded by extension_sql_file!(.., finalize): the functions it names already exist.
--
-- Every table carries tenant_id. Shared presets have tenant_id '*' and are visible to every
-- tenant; a tenant's own profile of the same name takes precedence for that tenant.

-- ------------------------------------------------------------------------------------ profiles

-- CHECK helpers (C, version 1: they read the jsonb themselves, so that a value nested too deep or
-- a number no float holds is refused with 22023).
CREATE FUNCTION control_plane."_check_overrides"("overrides" jsonb) RETURNS bool
IMMUTABLE PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', '_check_overrides_wrapper';
CREATE FUNCTION control_plane._check_features(features jsonb) RETURNS bool
IMMUTABLE PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', '_check_features';

CREATE TABLE control_plane.profiles (
    id                      integer     GENERATED ALWAYS AS IDENTITY UNIQUE,
    tenant_id               text        NOT NULL DEFAULT pg_catalog.current_setting('control_plane.tenant'),
    name                    text        NOT NULL CHECK (name OPERATOR(pg_catalog.<>) ''),
    description             text,
    requests_per_second     bigint      CHECK (requests_per_second >= 0),
    requests_per_minute     bigint      CHECK (requests_per_minute >= 0),
    requests_per_hour       bigint      CHECK (requests_per_hour >= 0),
    requests_per_day        bigint      CHECK (requests_per_day >= 0),
    requests_per_month      bigint      CHECK (requests_per_month >= 0),
    tokens_per_minute       bigint      CHECK (tokens_per_minute >= 0),
    input_tokens_per_day    bigint      CHECK (input_tokens_per_day >= 0),
    output_tokens_per_day   bigint      CHECK (output_tokens_per_day >= 0),
    input_tokens_per_month  bigint      CHECK (input_tokens_per_month >= 0),
    output_tokens_per_month bigint      CHECK (output_tokens_per_month >= 0),
    max_concurrent          bigint      CHECK (max_concurrent >= 0),
    daily_budget_cents      bigint      CHECK (daily_budget_cents >= 0),
    monthly_budget_cents    bigint      CHECK (monthly_budget_cents >= 0),
    allowed_models          text[],
    blocked_models          text[],
    default_model           text,
    fallback_model          text,
    features                jsonb       NOT NULL DEFAULT '{}'
                                        CHECK (pg_catalog.jsonb_typeof(features) OPERATOR(pg_catalog.=) 'object')
                                        CONSTRAINT profiles_features_valid CHECK (control_plane._check_features(features)),
    is_default              boolean     NOT NULL DEFAULT false,
    is_active               boolean     NOT NULL DEFAULT true,
    created_at              timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at              timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (tenant_id, name)
);
COMMENT ON TABLE control_plane.profiles IS
    'Plans. NULL limits mean unlimited. tenant_id ''*'' rows are presets shared by every tenant.';

-- At most one default profile per tenant (and one shared default).
CREATE UNIQUE INDEX profiles_one_default ON control_plane.profiles (tenant_id) WHERE is_default;

-- The presets set no money budget: the extension ships no prices, and a budget needs the prices
-- of the models called under it (see README, "Money"). Set budgets in your own profiles.
INSERT INTO control_plane.profiles
    (tenant_id, name, description, is_default, requests_per_second,
     requests_per_minute, requests_per_hour, requests_per_day, requests_per_month,
     tokens_per_minute, input_tokens_per_day, output_tokens_per_day,
     input_tokens_per_month, output_tokens_per_month, max_concurrent,
     daily_budget_cents, monthly_budget_cents, allowed_models)
VALUES
    ('*', 'free',       'Free tier',        true,     1,
        5,    40,     100,      2000,     10000,     20000,     10000,      100000,      50000,    2,   NULL,    NULL,
        ARRAY['gpt-4o-mini', 'claude-3-5-haiku', 'gemini-1.5-flash']),
    ('*', 'starter',    'Starter plan',     false,    2,
       20,   300,    1000,     20000,     40000,    200000,    100000,     2000000,    1000000,    4,   NULL,    NULL, NULL),
    ('*', 'pro',        'Pro plan',         false,    5,
       60,  1500,    5000,    100000,    150000,   1000000,    500000,    20000000,   10000000,   10,   NULL,    NULL, NULL),
    ('*', 'business',   'Business plan',    false,   20,
      300, 10000,   50000,   1000000,   1000000,  10000000,   5000000,   200000000,  100000000,   50,   NULL,    NULL, NULL),
    ('*', 'enterprise', 'Enterprise plan',  false,   50,
     1000, 50000,  500000,  10000000,   5000000, 100000000,  50000000,  2000000000, 1000000000,  200,   NULL,    NULL, NULL),
    ('*', 'unlimited',  'No limits',        false, NULL,
     NULL,  NULL,    NULL,      NULL,      NULL,      NULL,      NULL,        NULL,       NULL, NULL,   NULL,    NULL, NULL);

-- ------------------------------------------------------------------------------- organizations

CREATE TABLE control_plane.organizations (
    tenant_id            text        NOT NULL DEFAULT pg_catalog.current_setting('control_plane.tenant')
                                     CHECK (tenant_id OPERATOR(pg_catalog.<>) '' AND pg_catalog.octet_length(tenant_id) <= 256),
    org_id               text        NOT NULL
                                     CHECK (org_id OPERATOR(pg_catalog.<>) '' AND pg_catalog.octet_length(org_id) <= 256),
    daily_budget_cents   bigint      CHECK (daily_budget_cents >= 0),
    monthly_budget_cents bigint      CHECK (monthly_budget_cents >= 0),
    warning_pct          integer     NOT NULL DEFAULT 80 CHECK (warning_pct BETWEEN 1 AND 100),
    emergency_pct        integer     NOT NULL DEFAULT 90 CHECK (emergency_pct BETWEEN 1 AND 100),
    emergency_action     text        NOT NULL DEFAULT 'degrade'
                                     CHECK (emergency_action IN ('degrade', 'deny')),
    emergency_stop       boolean     NOT NULL DEFAULT false,
    active               boolean     NOT NULL DEFAULT true,
    created_at           timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at           timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (tenant_id, org_id),
    CONSTRAINT organizations_thresholds_ordered CHECK (warning_pct <= emergency_pct)
);
COMMENT ON TABLE control_plane.organizations IS
    'Organisations: budgets that all their subjects draw on together (NULL: none), thresholds, an emergency stop, an active flag.';

-- ------------------------------------------------------------------------------------ subjects

CREATE TABLE control_plane.subjects (
    tenant_id  text        NOT NULL DEFAULT pg_catalog.current_setting('control_plane.tenant'),
    subject_id text        NOT NULL CHECK (subject_id OPERATOR(pg_catalog.<>) ''
                                           AND pg_catalog.octet_length(subject_id) <= 256),
    profile    text        NOT NULL,
    org_id     text,
    overrides  jsonb       NOT NULL DEFAULT '{}'
                           CONSTRAINT subjects_overrides_valid CHECK (control_plane._check_overrides(overrides)),
    active     boolean     NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (tenant_id, subject_id),
    -- An organisation must exist in the subject's tenant (and cannot go while subjects name it).
    CONSTRAINT subjects_org_fkey FOREIGN KEY (tenant_id, org_id) REFERENCES control_plane.organizations (tenant_id, org_id)
);
COMMENT ON TABLE control_plane.subjects IS
    'Who is limited: a profile, an optional organisation, per-subject overrides of any limit, an active flag.';
CREATE INDEX subjects_profile ON control_plane.subjects (profile);
CREATE INDEX subjects_org ON control_plane.subjects (tenant_id, org_id) WHERE org_id IS NOT NULL;

-- A subject's profile must exist for its tenant (its own, or a shared preset).
-- The profile's row is locked (FOR KEY SHARE, until this transaction ends): a concurrent DELETE
-- of it waits, then finds the subject and is refused; one committed first leaves nothing to lock.
-- SECURITY DEFINER: a row lock needs more than the SELECT the inserting role has.
CREATE FUNCTION control_plane._subjects_profile_exists() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_TABLE_SCHEMA OPERATOR(pg_catalog.<>) 'control_plane' THEN
        RAISE EXCEPTION '% is a trigger function of control_plane''s own tables', TG_NAME
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    PERFORM FROM control_plane.profiles p
      WHERE p.name OPERATOR(pg_catalog.=) NEW.profile
        AND (p.tenant_id OPERATOR(pg_catalog.=) NEW.tenant_id OR p.tenant_id OPERATOR(pg_catalog.=) '*')
        FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'profile "%" does not exist', NEW.profile
            USING ERRCODE = 'foreign_key_violation',
                  DETAIL = format('subject "%s" of tenant "%s" names it', NEW.subject_id, NEW.tenant_id),
                  HINT = 'Use a preset (free, starter, pro, business, enterprise, unlimited) or a profile of the tenant.';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER subjects_profile_exists BEFORE INSERT OR UPDATE OF profile, tenant_id ON control_plane.subjects
    FOR EACH ROW EXECUTE FUNCTION control_plane._subjects_profile_exists();

-- A profile that subjects still use cannot be deleted or renamed (unless a shared preset of the
-- same name takes over for them).
CREATE FUNCTION control_plane._profiles_in_use() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint;
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.name = NEW.name AND OLD.tenant_id = NEW.tenant_id THEN
        RETURN NEW;
    END IF;
    SELECT count(*) INTO n FROM control_plane.subjects s
     WHERE s.profile = OLD.name
       AND (OLD.tenant_id = '*' OR s.tenant_id = OLD.tenant_id)
       AND NOT EXISTS (SELECT 1 FROM control_plane.profiles p
                        WHERE p.name = OLD.name AND p.tenant_id IN (s.tenant_id, '*')
                          AND (p.tenant_id, p.name) <> (OLD.tenant_id, OLD.name));
    IF n > 0 THEN
        RAISE EXCEPTION 'profile "%" is in use', OLD.name
            USING ERRCODE = 'foreign_key_violation',
                  DETAIL = format('%s subject(s) of tenant "%s" use it', n, OLD.tenant_id),
                  HINT = 'Move those subjects to another profile first.';
    END IF;
    IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER profiles_in_use BEFORE DELETE OR UPDATE OF name, tenant_id ON control_plane.profiles
    FOR EACH ROW EXECUTE FUNCTION control_plane._profiles_in_use();

-- A committed change to profiles or subjects is obeyed by the next cp_admit in every backend.
-- The trigger functions run as the extension's owner (SECURITY DEFINER, pinned search_path):
-- the helpers they call (_policy_changed, _subject_changed, _profile_changed) are not executable
-- by PUBLIC, so that no role can flush every backend's policy cache at will.
-- Each change names what it touched, so that only that is read again: one subject, one profile
-- (whose id, tenant and name stay), or everything (profiles added, removed or renamed, tables
-- truncated: these can change which profile a subject resolves to).
CREATE FUNCTION control_plane._subjects_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_TABLE_SCHEMA OPERATOR(pg_catalog.<>) 'control_plane' THEN
        RAISE EXCEPTION '% is a trigger function of control_plane''s own tables', TG_NAME
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM control_plane._subject_changed(OLD.tenant_id, OLD.subject_id);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM control_plane._subject_changed(NEW.tenant_id, NEW.subject_id);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER subjects_policy_changed AFTER INSERT OR UPDATE OR DELETE ON control_plane.subjects
    FOR EACH ROW EXECUTE FUNCTION control_plane._subjects_changed();

CREATE FUNCTION control_plane._profiles_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_TABLE_SCHEMA OPERATOR(pg_catalog.<>) 'control_plane' THEN
        RAISE EXCEPTION '% is a trigger function of control_plane''s own tables', TG_NAME
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.id = NEW.id AND OLD.tenant_id = NEW.tenant_id AND OLD.name = NEW.name THEN
        PERFORM control_plane._profile_changed(NEW.id);
    ELSE
        PERFORM control_plane._policy_changed();
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER profiles_policy_changed AFTER INSERT OR UPDATE OR DELETE ON control_plane.profiles
    FOR EACH ROW EXECUTE FUNCTION control_plane._profiles_changed();

CREATE FUNCTION control_plane._policy_changed_trigger() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_TABLE_SCHEMA OPERATOR(pg_catalog.<>) 'control_plane' THEN
        RAISE EXCEPTION '% is a trigger function of control_plane''s own tables', TG_NAME
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    PERFORM control_plane._policy_changed();
    RETURN NULL;
END $$;
CREATE TRIGGER profiles_truncated AFTER TRUNCATE ON control_plane.profiles
    FOR EACH STATEMENT EXECUTE FUNCTION control_plane._policy_changed_trigger();
CREATE TRIGGER subjects_truncated AFTER TRUNCATE ON control_plane.subjects
    FOR EACH STATEMENT EXECUTE FUNCTION control_plane._policy_changed_trigger();

-- A committed change is obeyed by the next cp_admit in every backend.
CREATE TRIGGER organizations_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON control_plane.organizations
    FOR EACH STATEMENT EXECUTE FUNCTION control_plane._policy_changed_trigger();

-- An organisation's row, for the extension's functions whatever the caller may read (an
-- application role needs no grant on organizations).
CREATE FUNCTION control_plane._organization(for_tenant text, for_org text)
RETURNS TABLE (daily_budget_cents bigint, monthly_budget_cents bigint, warning_pct integer, emergency_pct integer,
               emergency_action text, emergency_stop boolean, active boolean)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ SELECT o.daily_budget_cents, o.monthly_budget_cents, o.warning_pct, o.emergency_pct, o.emergency_action,
             o.emergency_stop, o.active
        FROM control_plane.organizations o
       WHERE o.tenant_id OPERATOR(pg_catalog.=) for_tenant AND o.org_id OPERATOR(pg_catalog.=) for_org $$;

-- ------------------------------------------------------------------------------------- tenants

CREATE TABLE control_plane.tenants (
    tenant_id  text        PRIMARY KEY DEFAULT pg_catalog.current_setting('control_plane.tenant')
                           CHECK (tenant_id OPERATOR(pg_catalog.<>) '' AND pg_catalog.octet_length(tenant_id) <= 256),
    time_zone  text        NOT NULL DEFAULT 'UTC'
                           CONSTRAINT tenants_time_zone_valid CHECK (control_plane._check_time_zone(time_zone)),
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE control_plane.tenants IS
    'Settings of a tenant. time_zone (tz database name): where its days and months start. A tenant without a row uses UTC.';

-- A committed change is obeyed by the next call in every backend (the tenant's windows move).
CREATE TRIGGER tenants_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON control_plane.tenants
    FOR EACH STATEMENT EXECUTE FUNCTION control_plane._policy_changed_trigger();

-- ---------------------------------------------------------------------------------- updated_at

-- Every change of an admin's row moves its updated_at (whatever the UPDATE sets it to).
CREATE FUNCTION control_plane._touch_updated_at() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.updated_at := pg_catalog.now();
    RETURN NEW;
END $$;
CREATE TRIGGER profiles_touched BEFORE UPDATE ON control_plane.profiles
    FOR EACH ROW EXECUTE FUNCTION control_plane._touch_updated_at();
CREATE TRIGGER organizations_touched BEFORE UPDATE ON control_plane.organizations
    FOR EACH ROW EXECUTE FUNCTION control_plane._touch_updated_at();
CREATE TRIGGER subjects_touched BEFORE UPDATE ON control_plane.subjects
    FOR EACH ROW EXECUTE FUNCTION control_plane._touch_updated_at();
CREATE TRIGGER tenants_touched BEFORE UPDATE ON control_plane.tenants
    FOR EACH ROW EXECUTE FUNCTION control_plane._touch_updated_at();

-- The tenant's time zone, for the extension's functions whatever the caller may read (an
-- application role needs no grant on tenants).
CREATE FUNCTION control_plane._tenant_time_zone(tenant text) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ SELECT t.time_zone FROM control_plane.tenants t WHERE t.tenant_id OPERATOR(pg_catalog.=) tenant $$;

-- -------------------------------------------------------------------------------- model_prices

CREATE TABLE control_plane.model_prices (
    tenant_id                 text        NOT NULL DEFAULT pg_catalog.current_setting('control_plane.tenant')
                                          CHECK (tenant_id OPERATOR(pg_catalog.<>) '' AND pg_catalog.octet_length(tenant_id) <= 256),
    -- A model's name, or a family: a name ending in '*' prices every model name it prefixes
    -- (a model's own name first, else the longest family). No other '*', and not '*' alone.
    model                     text        NOT NULL
                                          CHECK (model OPERATOR(pg_catalog.<>) '' AND pg_catalog.octet_length(model) <= 256)
                                          CONSTRAINT model_prices_model_family
                                          CHECK (pg_catalog.strpos(pg_catalog.left(model, -1), '*') OPERATOR(pg_catalog.=) 0
                                                 AND model OPERATOR(pg_catalog.<>) '*'),
    -- Micro-units of the currency per million tokens: 150000 is 0.15 per million. At most one
    -- whole unit per token (10^12 per million): anything above is a typing error.
    input_micros_per_million  bigint      NOT NULL
                                          CONSTRAINT model_prices_input_range
                                          CHECK (input_micros_per_million >= 0 AND input_micros_per_million <= 1000000000000),
    output_micros_per_million bigint      NOT NULL
                                          CONSTRAINT model_prices_output_range
                                          CHECK (output_micros_per_million >= 0 AND output_micros_per_million <= 1000000000000),
    effective_from            timestamptz NOT NULL DEFAULT pg_catalog.now(),
    created_at                timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (tenant_id, model, effective_from)
);
COMMENT ON TABLE control_plane.model_prices IS
    'Prices per million tokens in micro-units, from effective_from on. tenant_id ''*'' rows are shared; a tenant''s own row in force wins.';

-- A committed change is obeyed by the next call in every backend.
CREATE TRIGGER model_prices_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON control_plane.model_prices
    FOR EACH STATEMENT EXECUTE FUNCTION control_plane._policy_changed_trigger();

-- A model's price rows for a tenant (its own and the shared ones), for the extension's functions
-- whatever the caller may read (an application role needs no grant on model_prices).
CREATE FUNCTION control_plane._model_prices(for_tenant text, for_model text)
RETURNS TABLE (shared boolean, effective_from timestamptz, input_micros_per_million bigint, output_micros_per_million bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ SELECT p.tenant_id OPERATOR(pg_catalog.=) '*', p.effective_from, p.input_micros_per_million, p.output_micros_per_million
        FROM control_plane.model_prices p
       WHERE p.tenant_id IN (for_tenant, '*') AND p.model OPERATOR(pg_catalog.=) for_model $$;

-- -------------------------------------------------------------------------------- usage_events

CREATE TABLE control_plane.usage_events (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       text        NOT NULL,
    subject_id      text        NOT NULL,
    org_id          text,
    model           text,
    feature         text,
    input_tokens    bigint      NOT NULL,
    output_tokens   bigint      NOT NULL,
    cost_micros     bigint,
    duration_ms     bigint,
    reservation_id  uuid,
    idempotency_key text,
    metadata        jsonb,
    created_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- (0.2.0; last, where an upgrade adds them.) 'usage': recorded by cp_record_usage; 'expired':
    -- reservations that expired unsettled, charged by the extension (one row per subject and
    -- flush, each reservation's charge in metadata.expired_reservations); 'expired_reversed': a
    -- late cp_record_usage took one such charge back (negative amounts, at the charge's time);
    -- 'rollup': the sums of one subject's day, written by cp_cleanup past ledger_retention.
    kind            text        NOT NULL DEFAULT 'usage',
    requests        bigint      NOT NULL DEFAULT 1
);
COMMENT ON TABLE control_plane.usage_events IS
    'The append-only usage ledger: the truth that the shared-memory totals index.';
CREATE INDEX usage_events_subject_time ON control_plane.usage_events (tenant_id, subject_id, created_at);
-- Where an organisation's entry is rebuilt from.
CREATE INDEX usage_events_org_time ON control_plane.usage_events (tenant_id, org_id, created_at)
    WHERE org_id IS NOT NULL;
-- Where cp_cleanup finds the rows to seal, and those to roll up past ledger_retention, oldest first.
CREATE INDEX usage_events_time ON control_plane.usage_events (created_at);
-- Where a late cp_record_usage finds the charge of its expired reservation.
CREATE INDEX usage_events_expired ON control_plane.usage_events (tenant_id, subject_id, created_at)
    WHERE kind = 'expired';
-- A charge is taken back at most once.
CREATE UNIQUE INDEX usage_events_reversed ON control_plane.usage_events (reservation_id)
    WHERE kind = 'expired_reversed';
-- A retried cp_record_usage with the same idempotency key records nothing new (per tenant).
CREATE UNIQUE INDEX usage_events_idempotency ON control_plane.usage_events (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL AND kind = 'usage';

-- Every row: kind is one of the four above; usage, expired and rollup rows count forward (no
-- negative amount), an expired_reversed row is exactly -1 request, <= 0 input tokens and no
-- output; cost and duration are never negative (crates/core/src/ledger.rs). A C trigger, not a
-- CHECK constraint: PostgreSQL parses CHECK expressions again for every execution of an INSERT.
CREATE FUNCTION control_plane._usage_events_row_check() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', '_usage_events_row_check';
CREATE TRIGGER usage_events_row_valid BEFORE INSERT ON control_plane.usage_events
    FOR EACH ROW EXECUTE FUNCTION control_plane._usage_events_row_check();

-- Append-only: the totals that cp_admit enforces are sums of this table, kept in shared memory.
CREATE FUNCTION control_plane._usage_events_append_only() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    -- The deletes of cp_cleanup's compaction, which rolls rows up without changing any sum.
    IF TG_OP = 'DELETE' AND control_plane._ledger_compacting() THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'control_plane.usage_events is append-only: % is refused', TG_OP
        USING ERRCODE = 'object_not_in_prerequisite_state',
              DETAIL = 'The totals that cp_admit enforces are sums of this ledger, kept in shared memory.',
              HINT = 'See "The ledger is append-only" in the control_plane README for the maintenance path.';
END $$;
CREATE TRIGGER usage_events_append_only BEFORE UPDATE OR DELETE ON control_plane.usage_events
    FOR EACH ROW EXECUTE FUNCTION control_plane._usage_events_append_only();
CREATE TRIGGER usage_events_no_truncate BEFORE TRUNCATE ON control_plane.usage_events
    FOR EACH STATEMENT EXECUTE FUNCTION control_plane._usage_events_append_only();

-- ------------------------------------------------------------------------------- usage_buckets

-- The ledger summed by quarter-hour (UTC), per subject and per organisation, inside the seal of
-- control_plane.ledger_state: a rebuild of a subject's or an organisation's totals reads these
-- instead of the rows they sum. Written by cp_cleanup (sealing) and by the commit of a
-- transaction that inserted rows dated inside the seal; derived from the ledger, so not dumped
-- (a restored database seals again). Application roles need no grant.
CREATE TABLE control_plane.usage_buckets (
    tenant_id     text        NOT NULL,
    scope         text        NOT NULL CHECK (scope IN ('subject', 'organization')),
    -- The subject_id, or the org_id, of the rows summed.
    who           text        NOT NULL,
    bucket_start  timestamptz NOT NULL,
    requests      bigint      NOT NULL,
    input_tokens  bigint      NOT NULL,
    output_tokens bigint      NOT NULL,
    -- numeric: a sum of rows of up to 2 * 10^18 micro-units each.
    cost_micros   numeric     NOT NULL,
    PRIMARY KEY (tenant_id, scope, who, bucket_start)
);
COMMENT ON TABLE control_plane.usage_buckets IS
    'The ledger summed by quarter-hour inside the seal: what a rebuild of the totals reads instead of the rows.';
-- Where cp_cleanup drops the buckets older than any window.
CREATE INDEX usage_buckets_time ON control_plane.usage_buckets (bucket_start);

-- One row: buckets hold every committed ledger row dated in [sealed_from, sealed_until) (NULL:
-- nothing sealed yet); cp_cleanup compacts no row dated before compacted_before again.
CREATE TABLE control_plane.ledger_state (
    only_row         boolean     PRIMARY KEY DEFAULT true CHECK (only_row),
    sealed_from      timestamptz,
    sealed_until     timestamptz,
    compacted_before timestamptz,
    CHECK (sealed_from <= sealed_until)
);
COMMENT ON TABLE control_plane.ledger_state IS
    'How far cp_cleanup has sealed the ledger into usage_buckets, and compacted it.';
INSERT INTO control_plane.ledger_state DEFAULT VALUES;

-- -------------------------------------------------------------------------------------- alerts

-- A money budget of a subject or an organisation reaching its warning or emergency threshold or
-- its limit: at most one row per budget, level and window, written by cp_admit or
-- cp_record_usage in the transaction that reached it, with NOTIFY control_plane_alerts (the row
-- as JSON). Written by the extension as its owner; application roles need no grant.
CREATE TABLE control_plane.alerts (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     text        NOT NULL,
    -- 'subject': the subject's own budget; 'organization': its organisation's (org_id).
    scope         text        NOT NULL CHECK (scope IN ('subject', 'organization')),
    -- The subject whose budget it is, or whose request reached the organisation's.
    subject_id    text        NOT NULL,
    org_id        text,
    limit_name    text        NOT NULL,
    level         text        NOT NULL CHECK (level IN ('warning', 'emergency', 'limit')),
    -- The start of the day or month (in the tenant's time zone) the budget counts.
    window_start  timestamptz NOT NULL,
    budget_micros bigint      NOT NULL,
    -- Spent plus reserved when it was raised (for a refusal: before it).
    used_micros   bigint      NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT alerts_org_named CHECK (scope OPERATOR(pg_catalog.=) 'subject' OR org_id IS NOT NULL)
);
COMMENT ON TABLE control_plane.alerts IS
    'Money thresholds reached: one row per budget, level (warning, emergency, limit) and window.';
CREATE UNIQUE INDEX alerts_subject_once ON control_plane.alerts (tenant_id, subject_id, limit_name, level, window_start)
    WHERE scope = 'subject';
CREATE UNIQUE INDEX alerts_org_once ON control_plane.alerts (tenant_id, org_id, limit_name, level, window_start)
    WHERE scope = 'organization';
CREATE INDEX alerts_time ON control_plane.alerts (tenant_id, created_at);

-- ------------------------------------------------------------------------------------- cp_admit

CREATE TYPE control_plane.admission AS (
    allowed        boolean,
    decision       text,
    reason         text,
    limit_name     text,
    remaining      bigint,
    retry_after_ms bigint,
    reservation_id uuid,
    model          text
);
COMMENT ON TYPE control_plane.admission IS 'One admission decision, returned by cp_admit.';

-- Implemented in Rust against the raw calling convention (src/api/admit.rs, cp_admit_fast).
CREATE FUNCTION control_plane.cp_admit(
    subject           text,
    tokens            bigint DEFAULT 0,
    model             text   DEFAULT NULL,
    feature           text   DEFAULT NULL,
    max_output_tokens bigint DEFAULT NULL
) RETURNS control_plane.admission
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'cp_admit_fast';
COMMENT ON FUNCTION control_plane.cp_admit(text, bigint, text, text, bigint) IS
    'One admission decision: checks every limit and budget and holds the request and its token and cost estimates if admitted.';

-- ------------------------------------------------------------------------------ cp_record_usage

CREATE TYPE control_plane.usage_record AS (
    event_id            bigint,
    cost_micros         bigint,
    reservation_settled boolean
);
COMMENT ON TYPE control_plane.usage_record IS 'What cp_record_usage recorded.';

-- Implemented in Rust against the raw calling convention (src/api.rs, cp_record_usage_fast).
CREATE FUNCTION control_plane.cp_record_usage(
    subject         text,
    input_tokens    bigint,
    output_tokens   bigint,
    model           text  DEFAULT NULL,
    reservation_id  uuid  DEFAULT NULL,
    idempotency_key text  DEFAULT NULL,
    metadata        jsonb DEFAULT NULL,
    feature         text  DEFAULT NULL
) RETURNS control_plane.usage_record
LANGUAGE c VOLATILE PARALLEL UNSAFE
AS 'MODULE_PATHNAME', 'cp_record_usage_fast';
COMMENT ON FUNCTION control_plane.cp_record_usage(text, bigint, bigint, text, uuid, text, jsonb, text) IS
    'Appends actual usage to the ledger and settles its reservation; totals move at commit.';

-- ---------------------------------------------------------------------------------------- stats

CREATE VIEW control_plane.stats AS SELECT name, value FROM control_plane.cp_stats();
COMMENT ON VIEW control_plane.stats IS 'Shared-memory use and decision counters since server start.';

-- Per-tenant counters since server start. They name the tenants of every database of the server,
-- so they are for monitoring roles (pg_monitor), not for PUBLIC.
CREATE VIEW control_plane.tenant_stats AS
SELECT d.datname AS database, s.tenant, s.admitted, s.denied_quota, s.denied_rate, s.denied_concurrency,
       s.denied_model_or_feature, s.denied_inactive, s.denied_capacity, s.denied_budget, s.recorded, s.recorded_input_tokens,
       s.recorded_output_tokens, s.expired, s.expired_tokens
  FROM control_plane.cp_tenant_stats() s
  LEFT JOIN pg_catalog.pg_database d ON d.oid OPERATOR(pg_catalog.=) s.database_oid
 WHERE d.oid IS NOT NULL OR s.tenant IS NULL;
COMMENT ON VIEW control_plane.tenant_stats IS
    'Per-tenant admission outcomes, committed usage and expiries since server start (tenant and database NULL: tenants without a row in control_plane.tenants, of every database, and those beyond the first 1024, together).';

-- ------------------------------------------------------------------------------ dump and grants

SELECT pg_catalog.pg_extension_config_dump('control_plane.profiles', $$WHERE tenant_id <> '*'$$);
SELECT pg_catalog.pg_extension_config_dump('control_plane.organizations', '');
SELECT pg_catalog.pg_extension_config_dump('control_plane.subjects', '');
SELECT pg_catalog.pg_extension_config_dump('control_plane.tenants', '');
SELECT pg_catalog.pg_extension_config_dump('control_plane.model_prices', '');
SELECT pg_catalog.pg_extension_config_dump('control_plane.usage_events', '');
SELECT pg_catalog.pg_extension_config_dump('control_plane.alerts', '');

GRANT USAGE ON SCHEMA control_plane TO PUBLIC;
-- Internal helpers of the triggers: no role calls them directly.
REVOKE ALL ON FUNCTION control_plane._policy_changed() FROM PUBLIC;
REVOKE ALL ON FUNCTION control_plane._subject_changed(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION control_plane._profile_changed(integer) FROM PUBLIC;
-- Maintenance: the extension's owner (pg_cron jobs scheduled by a superuser run as it), and
-- whoever it grants EXECUTE to (README, "Scheduling cleanup with pg_cron").
REVOKE ALL ON FUNCTION control_plane.cp_cleanup() FROM PUBLIC;
GRANT SELECT ON control_plane.stats TO PUBLIC;
REVOKE ALL ON FUNCTION control_plane.cp_tenant_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION control_plane.cp_tenant_stats() TO pg_monitor;
GRANT SELECT ON control_plane.tenant_stats TO pg_monitor;

-- Trigger functions: no role may attach them to a table of its own (CREATE TRIGGER needs EXECUTE;
-- firing does not), and the SECURITY DEFINER ones refuse any table outside this schema.
REVOKE ALL ON FUNCTION control_plane._subjects_profile_exists() FROM PUBLIC;
REVOKE ALL ON FUNCTION control_plane._profiles_in_use() FROM PUBLIC;
REVOKE ALL ON FUNCTION control_plane._subjects_changed() FROM PUBLIC;
REVOKE ALL ON FUNCTION control_plane._profiles_changed() FROM PUBLIC;
REVOKE ALL ON FUNCTION control_plane._policy_changed_trigger() FROM PUBLIC;
REVOKE ALL ON FUNCTION control_plane._usage_events_row_check() FROM PUBLIC;
REVOKE ALL ON FUNCTION control_plane._usage_events_append_only() FROM PUBLIC;
REVOKE ALL ON FUNCTION control_plane._touch_updated_at() FROM PUBLIC;

-- Readers of any tenant's rows, for the extension's own queries (run as the extension's owner):
-- not for PUBLIC, so that no role reads another tenant's zone, prices or budgets through them.
REVOKE ALL ON FUNCTION control_plane._tenant_time_zone(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION control_plane._model_prices(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION control_plane._organization(text, text) FROM PUBLIC;

-- A new installation starts from empty shared memory in this database (an earlier one, dropped,
-- may have left entries and reservations there).
REVOKE ALL ON FUNCTION control_plane._forget_database_state() FROM PUBLIC;
SELECT control_plane._forget_database_state();
