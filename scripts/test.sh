#!/usr/bin/env bash
# Sets everything up and runs every test layer:
#   1. unit and property tests of the pure decisions    (crates/core, cargo test: no server)
#      and the #[pg_test]s                              (cargo pgrx test)
#   2. golden SQL tests with pg_regress                  (tests/pg_regress)
#   3. integration tests over real connections           (tests/integration)
#   4. upgrade tests: every release updates to this version (tests/upgrade)
# Before them: formatting, and no change to a released SQL script (scripts/check-released.sh).
# Each layer that needs a server gets a throwaway cluster with control_plane preloaded.
# Usage: scripts/test.sh [--bless]   (--bless copies pg_regress results over expected/)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
bless="${1:-}"

bash "$CP_ROOT/scripts/setup.sh"
cd "$CP_ROOT"
SUMMARY="$(mktemp /tmp/cp-test-summary.XXXXXX)"

REGRESS_DIR=/tmp/cp-regress
IT_DIR=/tmp/cp-it
SMALL_DIR=/tmp/cp-small
NOPRELOAD_DIR=/tmp/cp-nopreload
TINY_DIR=/tmp/cp-tiny
cleanup() {
    for d in "$REGRESS_DIR" "$IT_DIR" "$SMALL_DIR" "$NOPRELOAD_DIR" "$TINY_DIR"; do cp_cluster_stop "$d"; done
}
trap cleanup EXIT

log "0/4 formatting; released SQL scripts unchanged"
bash "$CP_ROOT/scripts/check-released.sh"
cargo fmt --check
(cd tests/integration && cargo fmt --check)
(cd crates/core && cargo fmt --check)

log "1/4 unit and property tests (crates/core), then #[pg_test] tests"
CARGO_TARGET_DIR="$CP_ROOT/target/core" cargo test --manifest-path crates/core/Cargo.toml 2>&1 | tee -a "$SUMMARY"
install -d -o postgres -g postgres /tmp/control_plane-pgtest 2>/dev/null || install -d /tmp/control_plane-pgtest
runas=()
[ "$(id -u)" = 0 ] && runas=(--runas postgres)
cargo pgrx test "pg${PG_MAJOR}" "${runas[@]}" --pgdata /tmp/control_plane-pgtest 2>&1 | tee -a "$SUMMARY"

cleanup
cp_install

log "2/4 golden SQL tests (pg_regress)"
cp_cluster_start "$REGRESS_DIR" 55432
OUT="$(mktemp -d /tmp/cp-regress-out.XXXXXX)"
tests=$(cd tests/pg_regress/sql && ls ./*.sql | sed 's|^\./||; s|\.sql$||' | grep -v '^setup$' | sort)
if [ "$bless" = "--bless" ]; then
    for t in setup $tests; do touch "tests/pg_regress/expected/$t.out"; done
fi
if ! "/usr/lib/postgresql/${PG_MAJOR}/lib/pgxs/src/test/regress/pg_regress" \
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

log "3/4 integration tests (many real connections, restarts, crash recovery)"
cp_cluster_start "$IT_DIR" 55434 "max_prepared_transactions = 10"
cp_cluster_start "$SMALL_DIR" 55436 "control_plane.max_subjects = 1024" "control_plane.max_reservations = 8192"
cp_cluster_start "$NOPRELOAD_DIR" 55435 "shared_preload_libraries = ''"
cp_cluster_start "$TINY_DIR" 55437 "control_plane.max_reservations = 1024"
for c in "$IT_DIR 55434" "$SMALL_DIR 55436" "$TINY_DIR 55437"; do
    # shellcheck disable=SC2086
    cp_psql $c -q -c "CREATE DATABASE cp_it" -c "\\c cp_it" -c "CREATE EXTENSION control_plane"
done
cp_psql "$NOPRELOAD_DIR" 55435 -q -c "CREATE DATABASE cp_it"
export CP_DSN="host=$IT_DIR port=55434 user=postgres dbname=cp_it"
export CP_SMALL_DSN="host=$SMALL_DIR port=55436 user=postgres dbname=cp_it"
export CP_NOPRELOAD_DSN="host=$NOPRELOAD_DIR port=55435 user=postgres dbname=cp_it"
export CP_TINY_DSN="host=$TINY_DIR port=55437 user=postgres dbname=cp_it"
export CP_PGDATA="$IT_DIR" CP_PG_BIN="$PG_BIN"
CARGO_TARGET_DIR="$CP_ROOT/target/integration" cargo test --manifest-path tests/integration/Cargo.toml --tests -- --test-threads=1 2>&1 | tee -a "$SUMMARY"

cleanup
log "4/4 upgrade tests (each release's library and data, updated to this version)"
bash tests/upgrade/run.sh 2>&1 | tee -a "$SUMMARY"

# One closing line over every layer: cargo's "N passed; M failed" and pg_regress's "All N tests passed".
awk '/test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i - 1); if ($(i) ~ /^failed;?$/) f += $(i - 1) } }
     /All [0-9]+ tests passed/ { for (i = 1; i <= NF; i++) if ($(i) == "All") p += $(i + 1) }
     /^upgrade tests: [0-9]+ passed/ { p += $3; f += $5 }
     END { printf "\nall layers: %d passed, %d failed\n", p, f }' "$SUMMARY"
rm -f "$SUMMARY"
