#!/usr/bin/env bash
# Benchmarks control_plane against its floors and against the limiters applications write today,
# all in one run, same client count, pgbench prepared protocol, release build, throwaway cluster:
#   - cp_admit against a no-op C function of its exact signature and result type (bench/noop)
#     and against SELECT 1;
#   - cp_record_usage, and the admit -> record cycle (also under money budgets with a priced
#     model, and for subjects of one organisation with budgets), against a ledger-shaped INSERT +
#     commit (and the cycle against the same two
#     statements with the no-op and the INSERT);
#   - cp_admit on 10,000 subjects while another client commits 50 single-subject changes a second,
#     against the same run without them;
#   - a hand-written PL/pgSQL token bucket and a Redis Lua token bucket.
# The pgbench scenarios run in ROUNDS interleaved rounds; each is reported as the median of its
# rounds, and each target ratio both as the ratio of medians and as the median of the per-round
# ratios. Then the server CPU per cp_admit call inside one statement.
#
# Usage: bench/run.sh [seconds per run (10)] [clients (8)]
# Env:   ROUNDS (3); SUBJECTS (1000) "many" subjects; SCALE (1000000) subjects of the scale run
#        (0 skips it).
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"
SECS="${1:-10}"
CLIENTS="${2:-8}"
ROUNDS="${ROUNDS:-3}"
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
log "building the no-op floor function (bench/noop, PGXS)"
make -s -C "$B/noop" PG_CONFIG="$PG_CONFIG" install >/dev/null
make -s -C "$B/noop" PG_CONFIG="$PG_CONFIG" clean >/dev/null
max_subjects=$((SCALE + 2 * SUBJECTS + 200000))
# Production durability (fsync on, synchronous commit): what every commit costs for real.
cp_cluster_start "$DIR" "$PORT" "fsync = on" "synchronous_commit = on" "shared_buffers = 256MB" \
    "control_plane.max_subjects = $max_subjects" "control_plane.max_reservations = 131072"
psql_b() { cp_psql "$DIR" "$PORT" -d bench -v ON_ERROR_STOP=1 "$@"; }
cp_psql "$DIR" "$PORT" -q -c "CREATE DATABASE bench"
psql_b -q -c "CREATE EXTENSION control_plane"
psql_b -q -v subjects="$SUBJECTS" -f "$B/setup.sql"

# Admissions that are not recorded expire after 1 s; the flusher charges them and writes the
# charges to the ledger in the background (its work is part of what these runs measure).
export PGOPTIONS="-c control_plane.reservation_timeout=1"
pgb() { # script [subjects] [extra pgbench options...]
    local script="$1" n="${2:-$SUBJECTS}"
    shift $(($# < 2 ? $# : 2))
    "$PG_BIN/pgbench" -n -M prepared -h "$DIR" -p "$PORT" -U postgres -c "$CLIENTS" -j 2 -T "$SECS" \
        -D subjects="$n" "$@" -f "$B/$script" bench 2>&1 | sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}
# The admin client: 50 single-subject changes a second, for as long as one run.
admin_stream() {
    "$PG_BIN/pgbench" -n -M prepared -h "$DIR" -p "$PORT" -U postgres -c 1 -j 1 -R 50 -T "$SECS" \
        -f "$B/admin_change.sql" bench 2>&1 | sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}

declare -A runs
order=()
add() { # name tps
    [ -n "${runs[$1]+x}" ] || order+=("$1")
    runs[$1]="${runs[$1]:-} $2"
    printf '  %-58s %10.0f tps\n' "$1" "$2"
}
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

N_SEL="SELECT 1"
N_NOOP="no-op of cp_admit's shape (bench/noop)"
N_ALL="cp_admit, every dimension, $SUBJECTS subjects"
N_ALL_HOT="cp_admit, every dimension, one hot subject"
N_RATE="cp_admit, rate limits, $SUBJECTS subjects"
N_RATE_HOT="cp_admit, rate limits, one hot subject"
N_INS="ledger-shaped INSERT + commit"
N_REC="cp_record_usage"
N_CYCLE="cp_admit -> cp_record_usage (two transactions)"
N_FLOOR_CYCLE="no-op admit -> ledger INSERT (two transactions)"
N_CYCLE_MONEY="cp_admit -> cp_record_usage with budgets (two transactions)"
N_CYCLE_ORG="the same, subjects of one organisation with budgets"
N_CALM="cp_admit, 10,000 subjects"
N_STORM="cp_admit, 10,000 subjects, 50 subject changes/s"
N_PL="PL/pgSQL token bucket, $SUBJECTS keys"
N_PL_HOT="PL/pgSQL token bucket, one hot key"

log "warming up"
pgb admit_all_many.sql >/dev/null
pgb admit_changed.sql >/dev/null
pgb plpgsql_many.sql >/dev/null

for round in $(seq "$ROUNDS"); do
    log "round $round of $ROUNDS: pgbench, $CLIENTS clients, ${SECS}s each"
    add "$N_SEL" "$(pgb select1.sql)"
    add "$N_NOOP" "$(pgb noop_admit.sql)"
    add "$N_ALL" "$(pgb admit_all_many.sql)"
    add "$N_ALL_HOT" "$(pgb admit_all_hot.sql)"
    add "$N_RATE" "$(pgb admit_rate_many.sql)"
    add "$N_RATE_HOT" "$(pgb admit_rate_hot.sql)"
    add "$N_INS" "$(pgb ledger_insert.sql)"
    add "$N_REC" "$(pgb record_many.sql)"
    add "$N_CYCLE" "$(pgb admit_record.sql)"
    add "$N_FLOOR_CYCLE" "$(pgb floor_cycle.sql)"
    add "$N_CYCLE_MONEY" "$(pgb admit_record_money.sql)"
    add "$N_CYCLE_ORG" "$(pgb admit_record_org.sql)"
    add "$N_CALM" "$(pgb admit_changed.sql)"
    admin_out="$(mktemp)"
    admin_stream >"$admin_out" &
    add "$N_STORM" "$(pgb admit_changed.sql)"
    wait
    printf '  %-58s %10.1f tps\n' "(the admin client's changes)" "$(cat "$admin_out")"
    rm -f "$admin_out"
    add "$N_PL" "$(pgb plpgsql_many.sql)"
    add "$N_PL_HOT" "$(pgb plpgsql_hot.sql)"
done

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
    add "Redis Lua token bucket, $SUBJECTS keys" "$(rb 'bk:__rand_int__')"
    add "Redis Lua token bucket, one hot key" "$(rb 'bk:hot')"
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
    # Alternate the two shapes: on a small machine one run's noise (about 10 %) is as large as the
    # difference being measured.
    for _ in $(seq "$ROUNDS"); do
        add "cp_admit, rate limits, 1000 of the m_ subjects" "$(pgb admit_scale.sql 1000)"
        add "cp_admit, rate limits, $SCALE subjects" "$(pgb admit_scale.sql "$SCALE")"
    done
    psql_b -At -c "SELECT name || ' = ' || value FROM control_plane.stats
                   WHERE name IN ('entries_in_use', 'entries_capacity', 'evictions', 'denied_capacity')"
fi

log "results ($(nproc) cores; median of $ROUNDS rounds; ratio = median TPS / median TPS of SELECT 1)"
declare -A med
printf '%-60s %10s %8s   %s\n' "run" "tps" "ratio" "rounds"
for name in "${order[@]}"; do
    # shellcheck disable=SC2086
    med[$name]="$(median ${runs[$name]})"
    awk -v n="$name" -v t="${med[$name]}" -v b="${med[$N_SEL]}" -v r="${runs[$name]}" \
        'BEGIN { printf "%-60s %10.0f %8.3f  %s\n", n, t, t / b, r }'
done

log "targets (ratio of medians; median of the per-round ratios)"
target() { # name numerator denominator floor
    local per=()
    read -r -a a <<<"${runs[$2]}"
    read -r -a b <<<"${runs[$3]}"
    for i in "${!a[@]}"; do per+=("$(awk -v x="${a[$i]}" -v y="${b[$i]}" 'BEGIN { printf "%.3f", x / y }')"); done
    awk -v n="$1" -v x="${med[$2]}" -v y="${med[$3]}" -v m="$(median "${per[@]}")" -v f="$4" -v r="${per[*]}" \
        'BEGIN { printf "  %-52s %6.3f  %6.3f  (target >= %s; rounds %s)\n", n, x / y, m, f, r }'
}
target "cp_admit every dimension / no-op" "$N_ALL" "$N_NOOP" 0.9
target "cp_admit every dimension, hot subject / no-op" "$N_ALL_HOT" "$N_NOOP" 0.9
target "cp_admit rate limits / no-op" "$N_RATE" "$N_NOOP" 0.9
target "cp_record_usage / ledger INSERT" "$N_REC" "$N_INS" 0.8
target "admit -> record cycle / ledger INSERT" "$N_CYCLE" "$N_INS" 0.8
target "admit -> record cycle / no-op admit -> INSERT" "$N_CYCLE" "$N_FLOOR_CYCLE" 0.8
target "cycle with budgets / ledger INSERT" "$N_CYCLE_MONEY" "$N_INS" 0.8
target "cycle with budgets / cycle without" "$N_CYCLE_MONEY" "$N_CYCLE" "-"
target "cycle with budgets and an organisation / ledger INSERT" "$N_CYCLE_ORG" "$N_INS" 0.8
target "cycle with an organisation / cycle with budgets only" "$N_CYCLE_ORG" "$N_CYCLE_MONEY" "-"
target "cp_admit with 50 subject changes/s / without" "$N_STORM" "$N_CALM" 0.9
target "cp_admit hot subject / PL/pgSQL hot key" "$N_ALL_HOT" "$N_PL_HOT" 10
target "no-op / SELECT 1 (the shape's own cost)" "$N_NOOP" "$N_SEL" "-"
if [ "$SCALE" -gt 0 ]; then
    target "cp_admit, $SCALE subjects / 1000 of them" "cp_admit, rate limits, $SCALE subjects" \
        "cp_admit, rate limits, 1000 of the m_ subjects" 0.9
fi

log "reservations (admissions of plans that hold something, not recorded: expired and charged)"
psql_b -At -c "SELECT name || ' = ' || value FROM control_plane.stats
               WHERE name IN ('admits_allowed', 'reservations_expired', 'reservations_expired_early',
                              'expired_charges_written', 'denied_capacity')"
psql_b -At -c "SELECT 'ledger rows written by the flusher = ' || count(*) || ', requests charged = ' || sum(requests)
                 FROM control_plane.usage_events WHERE kind = 'expired'"

# 100,000 calls: every one of the "every dimension" plan holds a reservation, and 100,000 fit in
# the table (a million would measure early expiry and the flusher instead).
log "server CPU per call, one statement of 100,000 calls (no network)"
loop() { # expression
    psql_b -q -c '\timing on' -c "SELECT count(*) FROM generate_series(1, 100000) g, LATERAL $1 a" \
        | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p'
}
t_trivial=$(loop "abs(g::bigint)")
t_rate=$(loop "control_plane.cp_admit('r_hot', 0 * g)")
t_all=$(loop "control_plane.cp_admit('a_hot', 0 * g)")
# 100,000 ledger rows in one transaction (the totals move at its commit). Every expression names
# g: an uncorrelated function in LATERAL is called once and its row reused.
t_rec=$(loop "control_plane.cp_record_usage('r_hot', 1 + 0 * g, 1)")
awk -v a="$t_trivial" -v r="$t_rate" -v x="$t_all" -v w="$t_rec" 'BEGIN {
    printf "  trivial function (abs)            %8.3f us/call\n", a / 100
    printf "  cp_admit, rate limits             %8.3f us/call (+%.3f)\n", r / 100, (r - a) / 100
    printf "  cp_admit, every dimension         %8.3f us/call (+%.3f)\n", x / 100, (x - a) / 100
    printf "  cp_record_usage                   %8.3f us/call (+%.3f)\n", w / 100, (w - a) / 100
}'
