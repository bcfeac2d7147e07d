#!/usr/bin/env bash
# Benchmarks cp_admit against SELECT 1 and against the limiters applications write today, all in
# one run, same client count, pgbench prepared protocol, release build, throwaway cluster.
# Prints each run's TPS and its ratio to SELECT 1, then the server CPU per cp_admit call.
#
# Usage: bench/run.sh [seconds per run (15)] [clients (8)]
# Env:   SUBJECTS (1000) "many" subjects; SCALE (1000000) subjects of the scale run (0 skips it).
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"
SECS="${1:-15}"
CLIENTS="${2:-8}"
SUBJECTS="${SUBJECTS:-1000}"
SCALE="${SCALE:-1000000}"
DIR=/tmp/cp-bench
PORT=55460
REDIS_PORT=56379
B="$CP_ROOT/bench"

bash "$CP_ROOT/scripts/setup.sh"
redis_pid=""
cleanup() {
    cp_cluster_stop "$DIR"
    [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null || true
}
trap cleanup EXIT
cp_cluster_stop "$DIR"
cp_install
max_subjects=$((SCALE + 2 * SUBJECTS + 100000))
# Production durability (fsync on, synchronous commit): what the PL/pgSQL bucket costs for real.
cp_cluster_start "$DIR" "$PORT" "fsync = on" "synchronous_commit = on" "shared_buffers = 256MB" \
    "control_plane.max_subjects = $max_subjects" "control_plane.max_reservations = 1048576"
psql_b() { cp_psql "$DIR" "$PORT" -d bench -v ON_ERROR_STOP=1 "$@"; }
cp_psql "$DIR" "$PORT" -q -c "CREATE DATABASE bench"
psql_b -q -c "CREATE EXTENSION control_plane"
psql_b -q -v subjects="$SUBJECTS" -f "$B/setup.sql"

# Admissions are not recorded in this benchmark: reservations expire after 1 s.
export PGOPTIONS="-c control_plane.reservation_timeout=1"
pgb() { # script [subjects]
    "$PG_BIN/pgbench" -n -M prepared -h "$DIR" -p "$PORT" -U postgres -c "$CLIENTS" -j 2 -T "$SECS" \
        -D subjects="${2:-$SUBJECTS}" -f "$B/$1" bench 2>&1 | sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}

declare -A tps
order=()
record() { tps[$1]="$2"; order+=("$1"); printf '  %-60s %10.0f tps\n' "$1" "$2"; }

log "warming up"
pgb admit_rate_many.sql >/dev/null
pgb plpgsql_many.sql >/dev/null

log "pgbench: $CLIENTS clients, ${SECS}s each"
record "SELECT 1" "$(pgb select1.sql)"
record "SELECT of 7 constants (cp_admit's row shape)" "$(pgb select_row.sql)"
record "cp_admit, rate limits, $SUBJECTS subjects" "$(pgb admit_rate_many.sql)"
record "cp_admit, rate limits, one hot subject" "$(pgb admit_rate_hot.sql)"
record "cp_admit, every dimension, $SUBJECTS subjects" "$(pgb admit_all_many.sql)"
record "cp_admit, every dimension, one hot subject" "$(pgb admit_all_hot.sql)"
record "PL/pgSQL token bucket, $SUBJECTS keys" "$(pgb plpgsql_many.sql)"
record "PL/pgSQL token bucket, one hot key" "$(pgb plpgsql_hot.sql)"

if command -v redis-server >/dev/null; then
    log "Redis Lua token bucket (redis-benchmark, $CLIENTS clients)"
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
        >/tmp/cp-bench-redis.log 2>&1 &
    redis_pid=$!
    for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
    sha=$(redis-cli -p "$REDIS_PORT" SCRIPT LOAD "$(cat "$B/token_bucket.lua")")
    rb() { # key
        local n=$((SECS * 40000))
        redis-benchmark -p "$REDIS_PORT" -c "$CLIENTS" --threads 2 -n "$n" -r "$SUBJECTS" -q \
            EVALSHA "$sha" 1 "$1" 1000000000 1000000000 2>/dev/null | tr '\r' '\n' \
            | sed -n 's/.*: \([0-9.]*\) requests per second.*/\1/p' | tail -1
    }
    record "Redis Lua token bucket, $SUBJECTS keys" "$(rb 'bk:__rand_int__')"
    record "Redis Lua token bucket, one hot key" "$(rb 'bk:hot')"
fi

if [ "$SCALE" -gt 0 ]; then
    log "scale: $SCALE subjects (enrolling and loading every one into shared memory first)"
    psql_b -q -c "INSERT INTO control_plane.subjects (subject_id, profile)
                  SELECT 'm_' || g, 'bench_rate' FROM generate_series(1, $SCALE) g"
    half=$((SCALE / 2))
    pids=()
    for range in "1 $half" "$((half + 1)) $SCALE"; do
        set -- $range
        psql_b -q -c "SET control_plane.reservation_timeout = 1" \
            -c "SELECT count(*) FROM generate_series($1, $2) g, LATERAL control_plane.cp_admit('m_' || g, 0) a" \
            >/dev/null &
        pids+=("$!")
    done
    wait "${pids[@]}"
    # Alternate the two shapes three times and keep each one's median: on a small machine one
    # run's noise (about 10 %) is as large as the difference being measured.
    small=() large=()
    for _ in 1 2 3; do
        small+=("$(pgb admit_scale.sql 1000)")
        large+=("$(pgb admit_scale.sql "$SCALE")")
    done
    median() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
    echo "  runs: 1000 subjects ${small[*]}; $SCALE subjects ${large[*]}"
    record "cp_admit, rate limits, 1000 of the m_ subjects (median of 3)" "$(median "${small[@]}")"
    record "cp_admit, rate limits, $SCALE subjects (median of 3)" "$(median "${large[@]}")"
    psql_b -At -c "SELECT name || ' = ' || value FROM control_plane.stats
                   WHERE name IN ('entries_in_use', 'entries_capacity', 'evictions', 'denied_capacity')"
fi

log "results ($(nproc) cores; ratio = TPS / TPS of SELECT 1 in this run)"
base="${tps[SELECT 1]}"
printf '%-62s %10s %8s\n' "run" "tps" "ratio"
for name in "${order[@]}"; do
    awk -v n="$name" -v t="${tps[$name]}" -v b="$base" 'BEGIN { printf "%-62s %10.0f %8.3f\n", n, t, t / b }'
done

log "server CPU per call, one statement of 1,000,000 calls (no network)"
loop() { # expression
    psql_b -q -c "SET control_plane.reservation_timeout = 1" -c '\timing on' \
        -c "SELECT count(*) FROM generate_series(1, 1000000) g, LATERAL $1 a" \
        | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p'
}
t_trivial=$(loop "abs(g::bigint)")
t_rate=$(loop "control_plane.cp_admit('r_hot', 0 * g)")
t_all=$(loop "control_plane.cp_admit('a_hot', 0 * g)")
awk -v a="$t_trivial" -v r="$t_rate" -v x="$t_all" 'BEGIN {
    printf "  trivial function (abs)            %8.3f us/call\n", a / 1000
    printf "  cp_admit, rate limits             %8.3f us/call (+%.3f)\n", r / 1000, (r - a) / 1000
    printf "  cp_admit, every dimension         %8.3f us/call (+%.3f)\n", x / 1000, (x - a) / 1000
}'
