#!/usr/bin/env bash
# Sets everything up, then walks through control_plane on a throwaway PostgreSQL 15 cluster
# (shared_preload_libraries = 'control_plane'), and stops the cluster when done.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

bash "$CP_ROOT/scripts/setup.sh"
DEMO_DIR=/tmp/cp-demo
PORT=55450
trap 'cp_cluster_stop "$DEMO_DIR"' EXIT
cp_cluster_stop "$DEMO_DIR"
cp_install
log "starting a throwaway cluster in $DEMO_DIR (port $PORT) with control_plane preloaded"
cp_cluster_start "$DEMO_DIR" "$PORT"
cp_psql "$DEMO_DIR" "$PORT" -q -c "CREATE DATABASE demo"
log "walk-through"
cp_psql "$DEMO_DIR" "$PORT" -q -d demo -f "$CP_ROOT/scripts/demo.sql"
log "done; stopping the cluster"
