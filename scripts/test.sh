#!/usr/bin/env bash
# Sets everything up and runs every test layer on every supported PostgreSQL major (15, 16, 18):
#   0. formatting, no change to a released SQL script (scripts/check-released.sh), and the unit
#      and property tests of the pure decisions (crates/core, cargo test: no server) — once;
# then on each major, one after another:
#   1. the #[pg_test]s                                      (cargo pgrx test)
#   2. golden SQL tests with pg_regress                     (tests/pg_regress)
#   3. integration tests over real connections              (tests/integration)
#   4. upgrade tests: every release updates to this version (tests/upgrade)
# Each layer that needs a server gets a throwaway cluster with control_plane preloaded.
# Usage: scripts/test.sh [--bless]   (--bless copies pg_regress results over expected/)
# Env:   PG_MAJORS="15"  only these majors (default: every supported one)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bless="${1:-}"

if [ -z "${CP_TEST_ONE_MAJOR:-}" ]; then
    bash "$CP_ROOT/scripts/setup.sh"
    cd "$CP_ROOT"
    SUMMARY="$(mktemp /tmp/cp-test-summary.XXXXXX)"
    log "0/4 formatting; released SQL scripts unchanged; the Dockerfile copies what the build needs; unit and property tests (crates/core)"
    bash "$CP_ROOT/scripts/check-released.sh"
    bash "$CP_ROOT/scripts/check-docker.sh"
    cargo fmt --check
    (cd tests/integration && cargo fmt --check)
    (cd crates/core && cargo fmt --check)
    CARGO_TARGET_DIR="$CP_ROOT/target/core" cargo test --manifest-path crates/core/Cargo.toml 2>&1 | tee -a "$SUMMARY"
    timings=()
    for major in ${PG_MAJORS:-$CP_MAJORS}; do
        started=$SECONDS
        PG_MAJOR="$major" CP_TEST_ONE_MAJOR=1 CP_SUMMARY="$SUMMARY" bash "$0" "$bless"
        timings+=("PostgreSQL $major: every layer in $((SECONDS - started)) s")
    done
    echo
    printf '%s\n' "${timings[@]}"
    # One closing line over every layer and major: cargo's "N passed; M failed", pg_regress's
    # "All N tests passed", and the upgrade tests' "N passed, M failed".
    awk '/test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i - 1); if ($(i) ~ /^failed;?$/) f += $(i - 1) } }
         /All [0-9]+ tests passed/ { for (i = 1; i <= NF; i++) if ($(i) == "All") p += $(i + 1) }
         /^upgrade tests: [0-9]+ passed/ { p += $3; f += $5 }
         END { printf "all layers: %d passed, %d failed\n", p, f }' "$SUMMARY"
    rm -f "$SUMMARY"
    exit 0
fi

# One major (PG_MAJOR), run by the loop above.
cd "$CP_ROOT"
SUMMARY="$CP_SUMMARY"
REGRESS_DIR=/tmp/cp-regress
IT_DIR=/tmp/cp-it
SMALL_DIR=/tmp/cp-small
NOPRELOAD_DIR=/tmp/cp-nopreload
TINY_DIR=/tmp/cp-tiny
CRON_DIR=/tmp/cp-cron
cleanup() {
    for d in "$REGRESS_DIR" "$IT_DIR" "$SMALL_DIR" "$NOPRELOAD_DIR" "$TINY_DIR" "$CRON_DIR"; do cp_cluster_stop "$d"; done
}
trap cleanup EXIT

log "1/4 #[pg_test] tests on PostgreSQL $PG_MAJOR ($PG_CONFIG)"
PGTEST_DIR="/tmp/control_plane-pgtest-$PG_MAJOR"
install -d -o postgres -g postgres "$PGTEST_DIR" 2>/dev/null || install -d "$PGTEST_DIR"
runas=()
[ "$(id -u)" = 0 ] && runas=(--runas postgres)
cargo pgrx test "pg${PG_MAJOR}" "${runas[@]}" --pgdata "$PGTEST_DIR" 2>&1 | tee -a "$SUMMARY"

cleanup
cp_install

log "2/4 golden SQL tests (pg_regress) on PostgreSQL $PG_MAJOR"
cp_cluster_start "$REGRESS_DIR" 55432
OUT="$(mktemp -d /tmp/cp-regress-out.XXXXXX)"
tests=$(cd tests/pg_regress/sql && ls ./*.sql | sed 's|^\./||; s|\.sql$||' | grep -v '^setup$' | sort)
if [ "$bless" = "--bless" ]; then
    for t in setup $tests; do touch "tests/pg_regress/expected/$t.out"; done
fi
if ! "$("$PG_CONFIG" --pkglibdir)/pgxs/src/test/regress/pg_regress" \
        --host="$REGRESS_DIR" --port=55432 --user=postgres --dbname=cp_regress \
        --inputdir=tests/pg_regress --outputdir="$OUT" --bindir="$PG_BIN" \
        setup $tests 2>&1 | tee -a "$SUMMARY"; then
    if [ "$bless" = "--bless" ]; then
        cp "$OUT"/results/*.out tests/pg_regress/expected/
        echo "blessed: copied results into tests/pg_regress/expected/"
    else
        cat "$OUT/regression.diffs" || true
        exit 1
    fi
fi

log "3/4 integration tests (many real connections, restarts, crash recovery) on PostgreSQL $PG_MAJOR"
cp_cluster_start "$IT_DIR" 55434 "max_prepared_transactions = 10"
cp_cluster_start "$SMALL_DIR" 55436 "control_plane.max_subjects = 1024" "control_plane.max_reservations = 8192"
cp_cluster_start "$NOPRELOAD_DIR" 55435 "shared_preload_libraries = ''"
# PostgreSQL 17 and later size the NOTIFY queue: a small one, which a test fills (alerts.rs).
tiny_notify=()
[ "$PG_MAJOR" -ge 17 ] && tiny_notify=("max_notify_queue_pages = 64")
cp_cluster_start "$TINY_DIR" 55437 "control_plane.max_reservations = 1024" "${tiny_notify[@]}"
for c in "$IT_DIR 55434" "$SMALL_DIR 55436" "$TINY_DIR 55437"; do
    # shellcheck disable=SC2086
    cp_psql $c -q -c "CREATE DATABASE cp_it" -c "\\c cp_it" -c "CREATE EXTENSION control_plane"
done
cp_psql "$NOPRELOAD_DIR" 55435 -q -c "CREATE DATABASE cp_it"
# pg_cron beside control_plane (Debian ships it for PostgreSQL 15 only), and no worker slot left
# for flushers: only the scheduled cp_cleanup can expire reservations there.
skip=()
if [ "$PG_MAJOR" = 15 ]; then
    cp_cluster_start "$CRON_DIR" 55438 "shared_preload_libraries = 'control_plane,pg_cron'" \
        "cron.database_name = 'cp_it'" "max_worker_processes = 1" "max_logical_replication_workers = 0" \
        "control_plane.ledger_retention = '9d'" "cron.host = '$CRON_DIR'"
    cp_psql "$CRON_DIR" 55438 -q -c "CREATE DATABASE cp_it" -c "\\c cp_it" \
        -c "CREATE EXTENSION control_plane" -c "CREATE EXTENSION pg_cron"
    cp_cluster_stop "$CRON_DIR" # pg_cron's launcher starts with its database there
    cp_cluster_start_existing "$CRON_DIR"
    export CP_CRON_DSN="host=$CRON_DIR port=55438 user=postgres dbname=cp_it"
else
    skip=(--skip cp_cleanup_under_pg_cron)
    echo "skipping the pg_cron test on PostgreSQL $PG_MAJOR: Debian ships pg_cron for PostgreSQL 15 only"
fi
export CP_DSN="host=$IT_DIR port=55434 user=postgres dbname=cp_it"
export CP_SMALL_DSN="host=$SMALL_DIR port=55436 user=postgres dbname=cp_it"
export CP_NOPRELOAD_DSN="host=$NOPRELOAD_DIR port=55435 user=postgres dbname=cp_it"
export CP_TINY_DSN="host=$TINY_DIR port=55437 user=postgres dbname=cp_it"
export CP_PGDATA="$IT_DIR" CP_PG_BIN="$PG_BIN" CP_EXPORTER=/usr/bin/prometheus-postgres-exporter
CARGO_TARGET_DIR="$CP_ROOT/target/integration" cargo test --manifest-path tests/integration/Cargo.toml --tests -- --test-threads=1 "${skip[@]}" 2>&1 | tee -a "$SUMMARY"

cleanup
log "4/4 upgrade tests on PostgreSQL $PG_MAJOR (each release's library and data, updated to this version)"
bash tests/upgrade/run.sh 2>&1 | tee -a "$SUMMARY"
