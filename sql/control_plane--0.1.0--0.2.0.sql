-- control_plane 0.1.0 -> 0.2.0: admissions count whether recorded or not, expired reservations
-- are charged to the ledger, admin changes re-read only what they touch, the ledger is
-- append-only against DELETE and TRUNCATE too, per-tenant counters for monitoring, tenants with
-- their time zones, prices, budgets, idempotency keys and organisations. See CHANGELOG.md.
--
-- Never edit this file once 0.2.0 is released (scripts/check-released.sh): every later change is
-- a new script.

\echo Use "ALTER EXTENSION control_plane UPDATE TO '0.2.0'" to load this file. \quit

-- ------------------------------------------------------------------- admin changes, per object

CREATE FUNCTION control_plane."_profile_changed"(
    "id" INT
) RETURNS void
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_profile_changed_wrapper';

CREATE FUNCTION control_plane."_subject_changed"(
    "tenant" TEXT,
    "subject" TEXT
) RETURNS void
VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_subject_changed_wrapper';

DROP TRIGGER profiles_policy_changed ON control_plane.profiles;
DROP TRIGGER subjects_policy_changed ON control_plane.subjects;

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

CREATE TRIGGER profiles_truncated AFTER TRUNCATE ON control_plane.profiles
    FOR EACH STATEMENT EXECUTE FUNCTION control_plane._policy_changed_trigger();
CREATE TRIGGER subjects_truncated AFTER TRUNCATE ON control_plane.subjects
    FOR EACH STATEMENT EXECUTE FUNCTION control_plane._policy_changed_trigger();

-- ------------------------------------------------------------------------------- usage_events

-- Every 0.1.0 row is one recorded request: the defaults say so without rewriting the table.
ALTER TABLE control_plane.usage_events
    ADD COLUMN kind     text   NOT NULL DEFAULT 'usage',
    ADD COLUMN requests bigint NOT NULL DEFAULT 1;

-- The row rule moves from CHECK constraints to a C trigger (it allows reversal rows).
ALTER TABLE control_plane.usage_events
    DROP CONSTRAINT usage_events_input_tokens_check,
    DROP CONSTRAINT usage_events_output_tokens_check,
    DROP CONSTRAINT usage_events_cost_micros_check,
    DROP CONSTRAINT usage_events_duration_ms_check;

CREATE INDEX usage_events_expired ON control_plane.usage_events (tenant_id, subject_id, created_at)
    WHERE kind = 'expired';
-- Where cp_cleanup finds the rows to seal, and those to roll up past ledger_retention, oldest first.
CREATE INDEX usage_events_time ON control_plane.usage_events (created_at);
CREATE UNIQUE INDEX usage_events_reversed ON control_plane.usage_events (reservation_id)
    WHERE kind = 'expired_reversed';

CREATE FUNCTION control_plane."_ledger_compacting"() RETURNS bool
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_ledger_compacting_wrapper';

CREATE FUNCTION control_plane._usage_events_row_check() RETURNS trigger
LANGUAGE c AS 'MODULE_PATHNAME', '_usage_events_row_check';
CREATE TRIGGER usage_events_row_valid BEFORE INSERT ON control_plane.usage_events
    FOR EACH ROW EXECUTE FUNCTION control_plane._usage_events_row_check();

CREATE OR REPLACE FUNCTION control_plane._usage_events_append_only() RETURNS trigger
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
DROP TRIGGER usage_events_append_only ON control_plane.usage_events;
CREATE TRIGGER usage_events_append_only BEFORE UPDATE OR DELETE ON control_plane.usage_events
    FOR EACH ROW EXECUTE FUNCTION control_plane._usage_events_append_only();
CREATE TRIGGER usage_events_no_truncate BEFORE TRUNCATE ON control_plane.usage_events
    FOR EACH STATEMENT EXECUTE FUNCTION control_plane._usage_events_append_only();

-- ---------------------------------------------------------------------------- cp_record_usage

-- 0.1.0 returned a table; 0.2.0 returns one composite row and takes a feature.
DROP FUNCTION control_plane.cp_record_usage(text, bigint, bigint, text, uuid, text, jsonb);

CREATE TYPE control_plane.usage_record AS (
    event_id            bigint,
    cost_micros         bigint,
    reservation_settled boolean
);
COMMENT ON TYPE control_plane.usage_record IS 'What cp_record_usage recorded.';

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

-- ------------------------------------------------------------------------------- tenant_stats

CREATE FUNCTION control_plane."cp_tenant_stats"() RETURNS TABLE (
    "database_oid" oid,
    "tenant" TEXT,
    "admitted" bigint,
    "denied_quota" bigint,
    "denied_rate" bigint,
    "denied_concurrency" bigint,
    "denied_model_or_feature" bigint,
    "denied_inactive" bigint,
    "denied_capacity" bigint,
    "denied_budget" bigint,
    "recorded" bigint,
    "recorded_input_tokens" bigint,
    "recorded_output_tokens" bigint,
    "expired" bigint,
    "expired_tokens" bigint
)
STRICT VOLATILE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'cp_tenant_stats_wrapper';

CREATE VIEW control_plane.tenant_stats AS
SELECT d.datname AS database, s.tenant, s.admitted, s.denied_quota, s.denied_rate, s.denied_concurrency,
       s.denied_model_or_feature, s.denied_inactive, s.denied_capacity, s.denied_budget, s.recorded, s.recorded_input_tokens,
       s.recorded_output_tokens, s.expired, s.expired_tokens
  FROM control_plane.cp_tenant_stats() s
  LEFT JOIN pg_catalog.pg_database d ON d.oid OPERATOR(pg_catalog.=) s.database_oid
 WHERE d.oid IS NOT NULL OR s.tenant IS NULL;
COMMENT ON VIEW control_plane.tenant_stats IS
    'Per-tenant admission outcomes, committed usage and expiries since server start (tenant and database NULL: tenants without a row in control_plane.tenants, of every database, and those beyond the first 1024, together).';

REVOKE ALL ON FUNCTION control_plane.cp_tenant_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION control_plane.cp_tenant_stats() TO pg_monitor;
GRANT SELECT ON control_plane.tenant_stats TO pg_monitor;

-- ------------------------------------------------------------------------------------ tenants

CREATE FUNCTION control_plane."_check_time_zone"(
    "zone" TEXT
) RETURNS bool
IMMUTABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_check_time_zone_wrapper';

CREATE FUNCTION control_plane."_local_day_start"(
    "zone" TEXT,
    "at" timestamp with time zone
) RETURNS timestamp with time zone
STRICT STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_local_day_start_wrapper';

CREATE FUNCTION control_plane."_local_day_end"(
    "zone" TEXT,
    "at" timestamp with time zone
) RETURNS timestamp with time zone
STRICT STABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_local_day_end_wrapper';

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

CREATE TRIGGER tenants_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON control_plane.tenants
    FOR EACH STATEMENT EXECUTE FUNCTION control_plane._policy_changed_trigger();

-- The tenant's time zone, for the extension's functions whatever the caller may read (an
-- application role needs no grant on tenants).
CREATE FUNCTION control_plane._tenant_time_zone(tenant text) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ SELECT t.time_zone FROM control_plane.tenants t WHERE t.tenant_id OPERATOR(pg_catalog.=) tenant $$;
SELECT pg_catalog.pg_extension_config_dump('control_plane.tenants', '');

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
SELECT pg_catalog.pg_extension_config_dump('control_plane.model_prices', '');

-- ---------------------------------------------------------------------- budgets and cp_admit

-- The presets set no money budget any more: the extension ships no prices, and a budget is
-- enforced only with the prices of the models called under it. Preset rows an admin changed keep
-- their values.
UPDATE control_plane.profiles p
   SET daily_budget_cents = NULL, monthly_budget_cents = NULL
  FROM (VALUES ('free', 10, 100), ('starter', 100, 2000), ('pro', 1000, 20000),
               ('business', 10000, 200000), ('enterprise', 100000, 2000000)) AS shipped(name, daily, monthly)
 WHERE p.tenant_id OPERATOR(pg_catalog.=) '*' AND p.name OPERATOR(pg_catalog.=) shipped.name
   AND p.daily_budget_cents OPERATOR(pg_catalog.=) shipped.daily
   AND p.monthly_budget_cents OPERATOR(pg_catalog.=) shipped.monthly;

-- The model to call, last in the admission row.
ALTER TYPE control_plane.admission ADD ATTRIBUTE model text;

-- cp_admit gains max_output_tokens: the function is created again, with the privileges the old
-- one had.
CREATE TEMPORARY TABLE cp_admit_acl ON COMMIT DROP AS
SELECT proacl AS acl FROM pg_catalog.pg_proc
 WHERE oid OPERATOR(pg_catalog.=) 'control_plane.cp_admit(text, bigint, text, text)'::pg_catalog.regprocedure;
DROP FUNCTION control_plane.cp_admit(text, bigint, text, text);
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
DO $$
DECLARE
    g record;
BEGIN
    IF (SELECT acl FROM cp_admit_acl) IS NULL THEN
        RETURN;  -- the default: EXECUTE for PUBLIC
    END IF;
    REVOKE ALL ON FUNCTION control_plane.cp_admit(text, bigint, text, text, bigint) FROM PUBLIC;
    FOR g IN SELECT e.grantee, e.is_grantable
               FROM cp_admit_acl a, pg_catalog.aclexplode(a.acl) e
              WHERE e.privilege_type OPERATOR(pg_catalog.=) 'EXECUTE'
    LOOP
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION control_plane.cp_admit(text, bigint, text, text, bigint) TO %s%s',
                                  CASE WHEN g.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                                       ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(g.grantee)) END,
                                  CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
    END LOOP;
END $$;
DROP TABLE cp_admit_acl;

-- ------------------------------------------------------------------------ idempotency keys

-- 0.1.0 stored idempotency keys without deduplicating them: a key recorded twice in a tenant
-- stops the update, which never changes ledger rows on its own.
DO $$
DECLARE
    dup bigint;
BEGIN
    SELECT count(*) INTO dup FROM (
        SELECT 1 FROM control_plane.usage_events
         WHERE idempotency_key IS NOT NULL
         GROUP BY tenant_id, idempotency_key HAVING count(*) > 1) d;
    IF dup > 0 THEN
        RAISE EXCEPTION 'control_plane.usage_events has % idempotency keys recorded more than once', dup
            USING ERRCODE = 'unique_violation',
                  DETAIL = 'control_plane 0.1.0 stored idempotency keys without deduplicating them; 0.2.0 makes them unique per tenant.',
                  HINT = 'List them with: SELECT tenant_id, idempotency_key, array_agg(id ORDER BY id) FROM control_plane.usage_events WHERE idempotency_key IS NOT NULL GROUP BY 1, 2 HAVING count(*) > 1; then clear the key of all but one row of each through the maintenance path in the README ("The ledger is append-only"), and update again.';
    END IF;
END $$;
-- A retried cp_record_usage with the same idempotency key records nothing new (per tenant).
CREATE UNIQUE INDEX usage_events_idempotency ON control_plane.usage_events (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL AND kind = 'usage';

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

-- 0.1.0 stored subjects.org_id as free text: every organisation it names gets a row without
-- budgets (nothing changes for its subjects until an admin sets some). A name no row can hold
-- stops the update.
DO $$
DECLARE
    bad bigint;
BEGIN
    SELECT count(*) INTO bad FROM control_plane.subjects
     WHERE org_id IS NOT NULL AND (org_id OPERATOR(pg_catalog.=) '' OR pg_catalog.octet_length(org_id) > 256);
    IF bad > 0 THEN
        RAISE EXCEPTION 'control_plane.subjects has % subjects whose org_id is empty or longer than 256 bytes', bad
            USING ERRCODE = 'check_violation',
                  DETAIL = 'control_plane 0.2.0 makes org_id a reference to control_plane.organizations, whose names are 1 to 256 bytes.',
                  HINT = 'Set those subjects'' org_id to NULL or to a valid name, and update again.';
    END IF;
END $$;
INSERT INTO control_plane.organizations (tenant_id, org_id)
SELECT DISTINCT tenant_id, org_id FROM control_plane.subjects WHERE org_id IS NOT NULL;

ALTER TABLE control_plane.subjects
    ADD CONSTRAINT subjects_org_fkey FOREIGN KEY (tenant_id, org_id)
        REFERENCES control_plane.organizations (tenant_id, org_id);
CREATE INDEX subjects_org ON control_plane.subjects (tenant_id, org_id) WHERE org_id IS NOT NULL;

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

SELECT pg_catalog.pg_extension_config_dump('control_plane.organizations', '');

-- Where an organisation's entry is rebuilt from.
CREATE INDEX usage_events_org_time ON control_plane.usage_events (tenant_id, org_id, created_at)
    WHERE org_id IS NOT NULL;

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
SELECT pg_catalog.pg_extension_config_dump('control_plane.alerts', '');

-- -------------------------------------------------------------------------------------- security

-- The trigger functions run as the extension's owner: the helpers they call are not executable
-- by PUBLIC (no role can flush every backend's policy cache at will), nor is cp_cleanup (the
-- extension's owner and whoever it grants EXECUTE to; see the README).
ALTER FUNCTION control_plane._subjects_changed() SECURITY DEFINER;
ALTER FUNCTION control_plane._profiles_changed() SECURITY DEFINER;
ALTER FUNCTION control_plane._policy_changed_trigger() SECURITY DEFINER;
REVOKE ALL ON FUNCTION control_plane._policy_changed() FROM PUBLIC;
REVOKE ALL ON FUNCTION control_plane._subject_changed(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION control_plane._profile_changed(integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION control_plane.cp_cleanup() FROM PUBLIC;

-- Applications write nothing directly any more (enrolment and recording write as the extension's
-- owner). The INSERT grants that 0.1.0 documented for them are theirs to revoke: the upgrade
-- cannot tell an application role from an admin or an import job, so it names them.
DO $grants$
DECLARE g record;
BEGIN
    FOR g IN SELECT c.relname, pg_catalog.string_agg(a.grantee::pg_catalog.regrole::pg_catalog.text, ', ') AS roles
               FROM pg_catalog.pg_class c,
                    LATERAL pg_catalog.aclexplode(c.relacl) a
              WHERE c.relnamespace OPERATOR(pg_catalog.=) 'control_plane'::pg_catalog.regnamespace
                AND c.relname OPERATOR(pg_catalog.=) ANY (ARRAY['subjects', 'usage_events']::pg_catalog.name[])
                AND a.privilege_type OPERATOR(pg_catalog.=) 'INSERT'
                AND a.grantee OPERATOR(pg_catalog.<>) c.relowner
                AND a.grantee OPERATOR(pg_catalog.<>) 0
              GROUP BY c.relname
    LOOP
        RAISE WARNING 'roles with INSERT on control_plane.%: %', g.relname, g.roles
            USING HINT = 'Since 0.2.0 applications need no INSERT (cp_admit enrols and cp_record_usage records as the extension''s owner): revoke it from application roles; an import job needs only the column grant in the README (Privileges).';
    END LOOP;
END $grants$;

-- A profile's features are an object of booleans (a nested value made every admission on the
-- profile fail); the CHECK helpers read their jsonb themselves (22023 for a value nested too deep
-- or a number no float holds). A row that breaks the rule stops the update with 22023 naming it.
CREATE FUNCTION control_plane._check_features(features jsonb) RETURNS bool
IMMUTABLE PARALLEL SAFE
LANGUAGE c AS 'MODULE_PATHNAME', '_check_features';
ALTER TABLE control_plane.profiles
    ADD CONSTRAINT profiles_features_valid CHECK (control_plane._check_features(features));

-- A subject's profile row is locked while the subject is written (a concurrent DELETE of the
-- profile waits, then is refused), as the extension's owner.
CREATE OR REPLACE FUNCTION control_plane._subjects_profile_exists() RETURNS trigger
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

-- A new installation starts from empty shared memory (run by CREATE EXTENSION only).
CREATE FUNCTION control_plane."_forget_database_state"() RETURNS bigint
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_forget_database_state_wrapper';
REVOKE ALL ON FUNCTION control_plane._forget_database_state() FROM PUBLIC;

-- The SECURITY DEFINER trigger functions refuse tables outside the schema, and no trigger
-- function can be attached by another role to a table of its own.
CREATE OR REPLACE FUNCTION control_plane._policy_changed_trigger() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_TABLE_SCHEMA OPERATOR(pg_catalog.<>) 'control_plane' THEN
        RAISE EXCEPTION '% is a trigger function of control_plane''s own tables', TG_NAME
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    PERFORM control_plane._policy_changed();
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION control_plane._subjects_profile_exists() FROM PUBLIC;
REVOKE ALL ON FUNCTION control_plane._profiles_in_use() FROM PUBLIC;
REVOKE ALL ON FUNCTION control_plane._subjects_changed() FROM PUBLIC;
REVOKE ALL ON FUNCTION control_plane._profiles_changed() FROM PUBLIC;
REVOKE ALL ON FUNCTION control_plane._policy_changed_trigger() FROM PUBLIC;

-- updated_at follows every change of an admin's row (it never moved before).
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
REVOKE ALL ON FUNCTION control_plane._touch_updated_at() FROM PUBLIC;
REVOKE ALL ON FUNCTION control_plane._usage_events_row_check() FROM PUBLIC;
REVOKE ALL ON FUNCTION control_plane._usage_events_append_only() FROM PUBLIC;

-- Names are UTF-8 throughout: an installation in a database of another encoding stops here.
DO $$
BEGIN
    IF pg_catalog.getdatabaseencoding() OPERATOR(pg_catalog.<>) 'UTF8' THEN
        RAISE EXCEPTION 'control_plane needs a UTF8 database; this one is %', pg_catalog.getdatabaseencoding()
            USING ERRCODE = 'feature_not_supported',
                  HINT = 'Dump the control_plane tables, and restore them into a UTF8 database with control_plane installed.';
    END IF;
END $$;

-- Readers of any tenant's rows, for the extension's own queries (run as the extension's owner):
-- not for PUBLIC, so that no role reads another tenant's zone, prices or budgets through them.
REVOKE ALL ON FUNCTION control_plane._tenant_time_zone(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION control_plane._model_prices(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION control_plane._organization(text, text) FROM PUBLIC;
