#!/usr/bin/env bash
# How long the first admission after a restart takes when its subject and its organisation have
# millions of ledger rows this month, with the ledger sealed into quarter-hour buckets
# (cp_cleanup) and without, in the same run: two databases of the same cluster hold the same
# rows (`heavy`: ROWS rows; `member`: ROWS / 10; both in organisation `o-heavy`, which so has
# 1.1 x ROWS), and only one of them is sealed. Each round restarts the server (empty shared
# memory and buffers, warm OS cache) and times, in each database in turn:
#   - `heavy`'s first admission: rebuilds the subject's entry and the organisation's;
#   - `member`'s first admission: rebuilds the subject's entry only;
#   - the floor: one ledger row read by primary key (the cheapest query after a restart).
# Reported: the median over ROUNDS rounds of each, and sealed / unsealed.
#
# Usage: bench/rebuild.sh
# Env:   ROWS (1000000), ROUNDS (5)
set -euo pipefail
. "$(dirname "$0")/../scripts/lib.sh"
ROWS="${ROWS:-1000000}"
ROUNDS="${ROUNDS:-5}"
DIR=/tmp/cp-bench-rebuild
PORT=55461

bash "$CP_ROOT/scripts/setup.sh"
trap 'cp_cluster_stop "$DIR"' EXIT
cp_cluster_stop "$DIR"
cp_install
cp_cluster_start "$DIR" "$PORT" "shared_buffers = 256MB" "max_wal_size = 4GB"
q() { local db="$1"; shift; cp_psql "$DIR" "$PORT" -d "$db" -v ON_ERROR_STOP=1 -qAt "$@"; }
q postgres -c "CREATE DATABASE unsealed"
log "writing $ROWS + $((ROWS / 10)) ledger rows over this month (one database, then copied)"
q unsealed -c "CREATE EXTENSION control_plane" -c "
INSERT INTO control_plane.model_prices (tenant_id, model, input_micros_per_million, output_micros_per_million, effective_from)
VALUES ('*', 'bench-model', 150000, 600000, '-infinity');
INSERT INTO control_plane.profiles (name, requests_per_day, requests_per_month, input_tokens_per_month,
                                    daily_budget_cents, monthly_budget_cents, default_model)
VALUES ('bench_heavy', 1e15, 1e15, 1e15, 1e15, 1e15, 'bench-model');
INSERT INTO control_plane.organizations (org_id, daily_budget_cents, monthly_budget_cents) VALUES ('o-heavy', 1e15, 1e15);
INSERT INTO control_plane.subjects (subject_id, profile, org_id)
VALUES ('heavy', 'bench_heavy', 'o-heavy'), ('member', 'bench_heavy', 'o-heavy');
INSERT INTO control_plane.usage_events (tenant_id, subject_id, org_id, model, input_tokens, output_tokens, cost_micros, created_at)
SELECT 'default', CASE WHEN g % 11 = 0 THEN 'member' ELSE 'heavy' END, 'o-heavy', 'bench-model', 100, 50, 45,
       date_trunc('month', now()) + (now() - interval '20 minutes' - date_trunc('month', now())) * (g::float8 / $((ROWS * 11 / 10)))
  FROM generate_series(1, $((ROWS * 11 / 10))) g;" -c "VACUUM ANALYZE control_plane.usage_events"
q postgres -c "CREATE DATABASE sealed TEMPLATE unsealed"
log "sealing one of them"
q sealed -c "SELECT count(*) FILTER (WHERE (c->'seal'->>'caught_up')::boolean) > 0 AS caught_up,
                    sum((c->'seal'->>'rows_sealed')::bigint) AS rows_sealed
               FROM (SELECT control_plane.cp_cleanup() AS c FROM generate_series(1, 40)) x" \
  -c "VACUUM ANALYZE control_plane.usage_buckets"
q sealed -c "SELECT 'buckets: ' || count(*) FROM control_plane.usage_buckets"

ms() { # db sql: the server's time for one statement (psql \timing), in ms
    q "$1" -c '\timing on' -c "$2" | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p'
}
declare -A t
for r in $(seq "$ROUNDS"); do
    for db in unsealed sealed; do
        as_pg "$PG_BIN/pg_ctl" -D "$DIR" -w -m fast restart >/dev/null
        t[$db.floor]+="$(ms "$db" "SELECT id FROM control_plane.usage_events WHERE id = 1") "
        t[$db.heavy]+="$(ms "$db" "SELECT decision FROM control_plane.cp_admit('heavy', 100)") "
        t[$db.member]+="$(ms "$db" "SELECT decision FROM control_plane.cp_admit('member', 100)") "
    done
done
median() { tr ' ' '\n' | sed '/^$/d' | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
echo
printf '%-44s %12s %12s %9s\n' "first admission after a restart (median ms)" unsealed sealed ratio
for k in heavy member floor; do
    u=$(echo "${t[unsealed.$k]}" | median); s=$(echo "${t[sealed.$k]}" | median)
    case $k in
        heavy) what="heavy: subject ${ROWS} rows + org $((ROWS * 11 / 10))" ;;
        member) what="member: subject $((ROWS / 10)) rows (org in memory)" ;;
        floor) what="floor: one row by primary key" ;;
    esac
    printf '%-44s %12s %12s %9s\n' "$what" "$u" "$s" "$(awk -v a="$s" -v b="$u" 'BEGIN {printf "%.3f", a / b}')"
done
for k in unsealed.heavy sealed.heavy unsealed.member sealed.member unsealed.floor sealed.floor; do
    echo "rounds $k: ${t[$k]}"
done
