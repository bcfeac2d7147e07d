#!/usr/bin/env bash
# Benchmarks cp_admit against SELECT 1 on a throwaway cluster (release build), same run, same
# client count, pgbench prepared protocol. Prints each script's TPS and its ratio to SELECT 1.
# Usage: bench/run.sh [seconds per run (default 15)] [clients (default 8)]
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"
SECS="${1:-15}"
CLIENTS="${2:-8}"
SUBJECTS="${SUBJECTS:-1000}"
DIR=/tmp/cp-bench
PORT=55460

bash "$CP_ROOT/scripts/setup.sh"
trap 'cp_cluster_stop "$DIR"' EXIT
cp_cluster_stop "$DIR"
cp_install
cp_cluster_start "$DIR" "$PORT" "shared_buffers = 256MB" "control_plane.max_subjects = 100000" \
    "control_plane.max_reservations = 262144" "synchronous_commit = off"
cp_psql "$DIR" "$PORT" -q -c "CREATE DATABASE bench"
cp_psql "$DIR" "$PORT" -q -d bench -c "CREATE EXTENSION control_plane"
cp_psql "$DIR" "$PORT" -q -d bench -v subjects="$SUBJECTS" -f "$CP_ROOT/bench/setup.sql"

# Reservations are not recorded in this benchmark: let them expire after 1 s.
export PGOPTIONS="-c control_plane.reservation_timeout=1"
run() { # name script
    "$PG_BIN/pgbench" -n -M prepared -h "$DIR" -p "$PORT" -U postgres -c "$CLIENTS" -j 2 -T "$SECS" \
        -D subjects="$SUBJECTS" -f "$CP_ROOT/bench/$2" bench 2>&1 | sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}
log "warming up"
run warmup admit_many.sql >/dev/null
declare -A tps
for name in select1 admit_many admit_hot; do
    tps[$name]=$(run "$name" "$name.sql")
done
log "results: $CLIENTS clients, ${SECS}s each, $SUBJECTS subjects, $(nproc) cores"
printf '%-40s %12s %10s\n' "script" "tps" "ratio"
for name in select1 admit_many admit_hot; do
    awk -v n="$name" -v t="${tps[$name]}" -v b="${tps[select1]}" 'BEGIN { printf "%-40s %12.0f %10.3f\n", n, t, t / b }'
done
