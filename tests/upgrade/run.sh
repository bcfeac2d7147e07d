#!/usr/bin/env bash
# Upgrade tests: every released version updates to the current one, and the result is the same as
# a fresh install.
#
# For each release in RELEASES:
#   1. its library is built from its commit and installed (the server runs the old binaries);
#      the install script it generates must equal the frozen sql/control_plane--X.sql;
#   2. a cluster with it preloaded gets data through its public API: profiles, subjects, recorded
#      usage (some with their reservation), reservations left open;
#   3. the cluster stops, the current library is installed, the cluster starts again: before the
#      update every call fails with 55000 and a hint (src/upgrade.rs);
#   4. ALTER EXTENSION control_plane UPDATE; then the catalog listing (tests/upgrade/catalog.sql)
#      must equal a fresh install's, every row must still be there, every quota total must be
#      the same, and admission must go on from those totals.
# Then, with the current library only: every released install script still installs (its
# symbols are exported, removed ones as stubs), updates, and equals a fresh install; and the
# listing does see a difference when there is one.
#
# Usage: tests/upgrade/run.sh   (scripts/test.sh runs it; needs the repository's git history)
set -euo pipefail
. "$(dirname "$0")/../../scripts/lib.sh"
cd "$CP_ROOT"

# version  commit it was released from
RELEASES=("0.1.0 4259436967d14562f0f5e72c1d7d59ae77d6c26e")
CURRENT="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
DIR=/tmp/cp-upgrade
PORT=55490
trap 'cp_cluster_stop "$DIR"' EXIT
psql_u() { cp_psql "$DIR" "$PORT" -v ON_ERROR_STOP=1 -X -At "$@"; }
fail() {
    echo "upgrade test FAILED: $*" >&2
    exit 1
}
passed=0
pass() {
    passed=$((passed + 1))
    echo "ok - $*"
}

# The catalog listing of database $1, into file $2.
listing() { psql_u -d "$1" -f tests/upgrade/catalog.sql >"$2"; }
same_listing() { # db_a db_b what
    listing "$1" /tmp/cp-upgrade-a.txt
    listing "$2" /tmp/cp-upgrade-b.txt
    [ -s /tmp/cp-upgrade-a.txt ] || fail "empty catalog listing"
    diff -u /tmp/cp-upgrade-b.txt /tmp/cp-upgrade-a.txt >&2 || fail "$3: schema differs from a fresh install of $CURRENT"
}

# What the data looks like: rows per table, ledger sums per subject, every quota's use.
state() { # db
    psql_u -d "$1" -c "
        SELECT 'profiles ' || count(*) FROM control_plane.profiles
        UNION ALL SELECT 'subjects ' || count(*) FROM control_plane.subjects
        UNION ALL SELECT format('usage %s %s: %s rows, %s in, %s out', tenant_id, subject_id, count(*),
                                sum(input_tokens), sum(output_tokens))
                    FROM control_plane.usage_events GROUP BY tenant_id, subject_id
        UNION ALL SELECT format('quota %s %s = %s', s, q.key, q.value->>'used')
                    FROM unnest(ARRAY['u_1', 'u_2', 'u_3']) s,
                         LATERAL jsonb_each(control_plane.cp_quota_status(s)->'quotas') q
        ORDER BY 1"
}

for release in "${RELEASES[@]}"; do
    read -r version commit <<<"$release"
    log "upgrade from $version (commit ${commit:0:7}) to $CURRENT"
    git cat-file -e "$commit^{commit}" 2>/dev/null \
        || fail "commit $commit of release $version is not in this clone (a shallow clone? fetch the history)"
    src="$CP_ROOT/target/release-$version/src"
    rm -rf "$src" && mkdir -p "$src"
    git archive "$commit" | tar -x -C "$src"
    log "building the $version library (its own target dir; the first build takes a few minutes)"
    (cd "$src" && CARGO_TARGET_DIR="$CP_ROOT/target/release-$version/target" \
        cargo pgrx install --pg-config "$PG_CONFIG" >/dev/null)
    sharedir="$("$PG_CONFIG" --sharedir)/extension"
    diff -q "$sharedir/control_plane--$version.sql" "sql/control_plane--$version.sql" >/dev/null \
        || fail "commit $commit generates an install script that differs from sql/control_plane--$version.sql"
    pass "$version: its commit generates exactly the frozen sql/control_plane--$version.sql"

    cp_cluster_start "$DIR" "$PORT"
    psql_u -q -c "CREATE DATABASE up" -c "CREATE DATABASE fresh"
    psql_u -d up -q -c "CREATE EXTENSION control_plane VERSION '$version'"
    [ "$(psql_u -d up -c "SELECT extversion FROM pg_extension WHERE extname = 'control_plane'")" = "$version" ] \
        || fail "the $version library did not install version $version"
    # Data through the public API of that release: three subjects on a plan with daily quotas (two
    # of them naming an organisation, a free-text column then), usage recorded with and without
    # reservations, and reservations left open.
    psql_u -d up -q -c "
        INSERT INTO control_plane.profiles (name, requests_per_day, input_tokens_per_day, max_concurrent)
        VALUES ('up_plan', 10, 100000, 50);
        INSERT INTO control_plane.subjects (subject_id, profile, org_id)
        VALUES ('u_1', 'up_plan', 'acme'), ('u_2', 'up_plan', 'acme'), ('u_3', 'pro', NULL);
        SET control_plane.tenant = 'other';
        INSERT INTO control_plane.subjects (subject_id, profile, org_id) VALUES ('u_1', 'free', 'acme');
        SELECT control_plane.cp_record_usage('u_1', 100, 10);
        RESET control_plane.tenant;" \
        -c "SELECT control_plane.cp_record_usage('u_1', 1000, 100, 'gpt-4o-mini')" \
        -c "SELECT control_plane.cp_record_usage('u_1', 2000, 200, metadata => '{\"order\": 7}')" \
        -c "SELECT control_plane.cp_record_usage('u_3', 5, 5)" \
        -c "SELECT control_plane.cp_record_usage('u_2', 300, 30, reservation_id => reservation_id)
              FROM control_plane.cp_admit('u_2', 500)" \
        -c "SELECT count(*) FROM generate_series(1, 3) g, LATERAL control_plane.cp_admit('u_1', 50 + 0 * g)" >/dev/null
    # A database where that release recorded one idempotency key twice (it did not deduplicate).
    psql_u -q -c "CREATE DATABASE dup"
    psql_u -d dup -q -c "CREATE EXTENSION control_plane VERSION '$version'" \
        -c "SELECT control_plane.cp_record_usage('d_1', 1, 1, idempotency_key => 'k-twice') FROM generate_series(1, 2)" >/dev/null
    # With the grants that release documented for an application role.
    psql_u -d dup -q -c "DO \$\$ BEGIN CREATE ROLE up_app; EXCEPTION WHEN duplicate_object THEN NULL; END \$\$" \
        -c "GRANT SELECT, INSERT ON control_plane.subjects, control_plane.usage_events TO up_app"
    # And one where a subject names an organisation by an empty name (free text then).
    psql_u -q -c "CREATE DATABASE badorg"
    psql_u -d badorg -q -c "CREATE EXTENSION control_plane VERSION '$version'" \
        -c "INSERT INTO control_plane.subjects (subject_id, profile, org_id) VALUES ('b_1', 'free', '')"
    # A database owned by an application role, which fills a schema of its own with shadows of
    # the operators, aggregates, functions and types statements use (tests/shadows.sql) and points
    # the database's default search_path at them: the superuser's update runs under that path.
    psql_u -q -c "DO \$\$ BEGIN CREATE ROLE up_mallory LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END \$\$" \
        -c "CREATE DATABASE hostile OWNER up_mallory"
    psql_u -d hostile -q -c "CREATE EXTENSION control_plane VERSION '$version'" \
        -c "INSERT INTO control_plane.profiles (name, requests_per_day) VALUES ('h_plan', 10)" \
        -c "INSERT INTO control_plane.subjects (subject_id, profile, org_id) VALUES ('h_1', 'h_plan', 'acme')" \
        -c "SELECT control_plane.cp_record_usage('h_1', 10, 1)" >/dev/null
    { echo "CREATE SCHEMA evil;"; sed "s/@ROLE@/up_mallory/g" tests/shadows.sql
      echo "ALTER DATABASE hostile SET search_path = evil, pg_catalog, public;"; } \
        | "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U up_mallory -d hostile -f - >/dev/null
    open_id="$(psql_u -d up -c "SELECT reservation_id FROM control_plane.cp_admit('u_2', 40)")"
    [ -n "$open_id" ] || fail "$version admitted nothing"
    state up >/tmp/cp-upgrade-before.txt
    rows_before="$(psql_u -d up -c "SELECT count(*) FROM control_plane.usage_events")"

    log "installing the $CURRENT library over it (server restart), then ALTER EXTENSION UPDATE"
    cp_cluster_stop "$DIR"
    cp_install
    cp_cluster_start_existing "$DIR"
    out="$(cp_psql "$DIR" "$PORT" -X -d up -c "\\set VERBOSITY sqlstate" \
        -c "SELECT * FROM control_plane.cp_admit('u_1', 1)" 2>&1 || true)"
    [ "$out" = "ERROR:  55000" ] || fail "before the update, cp_admit should fail with 55000; it printed: $out"
    out="$(cp_psql "$DIR" "$PORT" -X -d up -c "SELECT * FROM control_plane.cp_record_usage('u_1', 1, 1)" 2>&1 || true)"
    grep -q "HINT:  Run ALTER EXTENSION control_plane UPDATE" <<<"$out" \
        || fail "before the update, cp_record_usage should fail with the update hint; it printed: $out"
    pass "$version: with the $CURRENT library and the $version objects, calls fail with 55000 and the update hint"

    psql_u -d up -q -c "ALTER EXTENSION control_plane UPDATE"
    [ "$(psql_u -d up -c "SELECT extversion FROM pg_extension WHERE extname = 'control_plane'")" = "$CURRENT" ] \
        || fail "ALTER EXTENSION UPDATE did not reach $CURRENT"
    psql_u -d fresh -q -c "CREATE EXTENSION control_plane"
    same_listing up fresh "$version updated to $CURRENT"
    pass "$version updated to $CURRENT: catalog listing equals a fresh install ($(wc -l </tmp/cp-upgrade-a.txt) lines)"

    # The update under the hostile default path: no shadow called, the role still an ordinary one,
    # and the updated extension admits there; then the shadows are shown to work (an unqualified
    # query of the superuser calls them, and makes the role a superuser).
    calls() { psql_u -d hostile -c "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM evil.calls"; }
    psql_u -d hostile -q -c "ALTER EXTENSION control_plane UPDATE"
    [ "$(psql_u -d hostile -c "SELECT pg_catalog.current_setting('search_path')")" = "evil, pg_catalog, public" ] \
        || fail "the hostile database's default search_path is not in force"
    [ "$(psql_u -d hostile -c "SELECT a.allowed AND control_plane.cp_release(a.reservation_id)
                               FROM control_plane.cp_admit('h_1', 1) a")" = t ] \
        || fail "$version updated under a hostile search_path does not admit"
    [ "$(calls)" = 0 ] || fail "$version: the update under a hostile search_path called $(calls) shadows"
    [ "$(psql_u -c "SELECT rolsuper FROM pg_roles WHERE rolname = 'up_mallory'")" = f ] \
        || fail "$version: the update under a hostile search_path made the database owner a superuser"
    psql_u -d hostile -q -c "SELECT count(*) FROM pg_catalog.pg_class WHERE relname::text = 'x'" >/dev/null
    [ "$(calls)" -gt 0 ] && [ "$(psql_u -c "SELECT rolsuper FROM pg_roles WHERE rolname = 'up_mallory'")" = t ] \
        || fail "the shadows do not work: an unqualified query did not call them"
    psql_u -q -c "DROP DATABASE hostile WITH (FORCE)" -c "DROP ROLE up_mallory"
    pass "$version: updated under a database owner's hostile search_path, no shadow called, the owner not made a superuser"

    # Where a key was recorded twice, the update stops (it never changes ledger rows itself) and
    # says how to go on; after the maintenance path of the README, it goes through.
    out="$(cp_psql "$DIR" "$PORT" -X -d dup -c "\\set VERBOSITY verbose" -c "ALTER EXTENSION control_plane UPDATE" 2>&1 || true)"
    grep -q "ERROR:  23505: control_plane.usage_events has 1 idempotency keys recorded more than once" <<<"$out" \
        || fail "$version: an update over a duplicated idempotency key should fail with 23505; it printed: $out"
    grep -q "HINT:  List them with" <<<"$out" || fail "$version: the duplicate-key refusal has no hint: $out"
    psql_u -d dup -q -c "ALTER TABLE control_plane.usage_events DISABLE TRIGGER usage_events_append_only" \
        -c "UPDATE control_plane.usage_events SET idempotency_key = NULL
             WHERE id = (SELECT max(id) FROM control_plane.usage_events WHERE idempotency_key = 'k-twice')" \
        -c "ALTER TABLE control_plane.usage_events ENABLE TRIGGER usage_events_append_only"
    out="$(psql_u -d dup -c "ALTER EXTENSION control_plane UPDATE" 2>&1)"
    [ "$(psql_u -d dup -c "SELECT extversion FROM pg_extension WHERE extname = 'control_plane'")" = "$CURRENT" ] \
        || fail "$version: the update did not go through once the duplicate key was cleared"
    pass "$version: an update over an idempotency key recorded twice stops with 23505 and a hint, then goes through"
    for t in subjects usage_events; do
        grep -q "WARNING:  roles with INSERT on control_plane.$t: up_app" <<<"$out" \
            || fail "$version: the update should name the roles with INSERT on $t; it printed: $out"
    done
    pass "$version: the update names the roles that hold the INSERT grants applications no longer need"

    # Every organisation the subjects named gets a row (per tenant), without budgets; a name no
    # row can hold stops the update until it is fixed.
    [ "$(psql_u -d up -c "SELECT string_agg(format('%s/%s/%s/%s', tenant_id, org_id, daily_budget_cents IS NULL,
                                                  monthly_budget_cents IS NULL), ' ' ORDER BY tenant_id)
                          FROM control_plane.organizations")" = "default/acme/t/t other/acme/t/t" ] \
        || fail "$version: the update should create one organization row per (tenant, org_id) named by subjects"
    [ "$(psql_u -d up -c "SELECT control_plane.cp_quota_status('u_2')->'organization'->>'org_id' = 'acme'
                             AND (SELECT sum(requests) FROM control_plane.usage_events
                                   WHERE tenant_id = 'default' AND org_id = 'acme')
                                 = (SELECT sum(requests) FROM control_plane.usage_events
                                     WHERE tenant_id = 'default' AND subject_id IN ('u_1', 'u_2'))")" = t ] \
        || fail "$version: the status should show the organisation, whose rows the old ledger names"
    out="$(cp_psql "$DIR" "$PORT" -X -d badorg -c "\\set VERBOSITY verbose" -c "ALTER EXTENSION control_plane UPDATE" 2>&1 || true)"
    grep -q "ERROR:  23514: control_plane.subjects has 1 subjects whose org_id is empty" <<<"$out" \
        || fail "$version: an update over an empty org_id should fail with 23514; it printed: $out"
    psql_u -d badorg -q -c "UPDATE control_plane.subjects SET org_id = NULL WHERE org_id = ''" \
        -c "ALTER EXTENSION control_plane UPDATE"
    [ "$(psql_u -d badorg -c "SELECT extversion FROM pg_extension WHERE extname = 'control_plane'")" = "$CURRENT" ] \
        || fail "$version: the update did not go through once the empty org_id was cleared"
    pass "$version: organisations named by subjects get rows; an org_id no row can hold stops the update with 23514"

    state up >/tmp/cp-upgrade-after.txt
    diff -u /tmp/cp-upgrade-before.txt /tmp/cp-upgrade-after.txt >&2 || fail "$version: data or totals changed"
    [ "$(psql_u -d up -c "SELECT count(*) FROM control_plane.usage_events
                          WHERE kind = 'usage' AND requests = 1")" = "$rows_before" ] \
        || fail "$version: old ledger rows are not one recorded request each"
    [ "$(psql_u -d up -c "SELECT metadata::text FROM control_plane.usage_events WHERE metadata ? 'order'")" \
        = '{"order": 7}' ] || fail "$version: metadata changed"
    pass "$version: every row, ledger sum and quota total is the same after the update"

    # u_1 used 2 of its 10 requests today (recorded; the 3 admissions never recorded were lost
    # with the $version library's shared memory): 8 more are admitted, then the quota denies.
    admitted="$(psql_u -d up -c "SELECT string_agg(a.allowed::text, ' ' ORDER BY g)
                                  FROM generate_series(1, 9) g, LATERAL control_plane.cp_admit('u_1', 1 + 0 * g) a")"
    [ "$admitted" = "true true true true true true true true false" ] \
        || fail "$version: after the update u_1 should get exactly 8 more admissions; got: $admitted"
    settled="$(psql_u -d up -c "SELECT reservation_settled FROM control_plane.cp_record_usage('u_2', 10, 1,
                                  reservation_id => '$open_id')")"
    [ "$settled" = "f" ] || fail "$version: a reservation of the old library's shared memory was settled"
    [ "$(psql_u -d up -c "SELECT count(*) FROM control_plane.usage_events
                          WHERE subject_id = 'u_2' AND reservation_id = '$open_id'")" = 1 ] \
        || fail "$version: usage recorded with a reservation of the old library was not appended"
    pass "$version: admission goes on from the same totals (8 more of 10, then denied); an old reservation id records without settling"
    cp_cluster_stop "$DIR"
done

log "released install scripts against the $CURRENT library"
cp_cluster_start "$DIR" "$PORT"
psql_u -q -c "CREATE DATABASE fresh" -c "CREATE DATABASE probe"
psql_u -d fresh -q -c "CREATE EXTENSION control_plane"
for release in "${RELEASES[@]}"; do
    read -r version _ <<<"$release"
    db="chain_${version//./_}"
    psql_u -q -c "CREATE DATABASE $db"
    psql_u -d "$db" -q -c "CREATE EXTENSION control_plane VERSION '$version'" -c "ALTER EXTENSION control_plane UPDATE"
    same_listing "$db" fresh "$version installed with the $CURRENT library and updated"
    pass "$version: its install script runs against the $CURRENT library, and updates to a fresh install's schema"
done
# The listing is not blind: a changed default and a comment are differences.
psql_u -d probe -q -c "CREATE EXTENSION control_plane" \
    -c "ALTER TABLE control_plane.usage_events ALTER COLUMN requests SET DEFAULT 2"
listing probe /tmp/cp-upgrade-a.txt
listing fresh /tmp/cp-upgrade-b.txt
! diff -q /tmp/cp-upgrade-a.txt /tmp/cp-upgrade-b.txt >/dev/null || fail "the listing misses a changed default"
pass "the catalog listing sees a changed column default"
echo "upgrade tests: $passed passed, 0 failed"
