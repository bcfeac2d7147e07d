#!/usr/bin/env bash
# Installs everything control_plane needs on Debian 12 (run as root, with Rust installed):
# PostgreSQL 15 with server headers, clang, sudo, pgbench, redis (benchmarks), cargo-pgrx at the
# exact pgrx version of Cargo.toml, and `cargo pgrx init` against the system's pg_config.
# Idempotent: a second run only checks.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

packages=(postgresql-15 postgresql-server-dev-15 postgresql-contrib libclang-dev clang pkg-config sudo redis-server)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    if [ "$(id -u)" != 0 ]; then echo "run as root (apt-get is needed)" >&2; exit 1; fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q "${missing[@]}"
fi
# Debian starts a default cluster on port 5432; nothing here uses it.

if ! cargo pgrx --version 2>/dev/null | grep -qx "cargo-pgrx ${PGRX_VERSION}"; then
    log "installing cargo-pgrx ${PGRX_VERSION} (about 5 minutes on 2 cores)"
    cargo install cargo-pgrx --version "${PGRX_VERSION}" --locked
fi

if ! grep -qs "pg${PG_MAJOR} = \"${PG_CONFIG}\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
    log "cargo pgrx init --pg${PG_MAJOR}=${PG_CONFIG}"
    cargo pgrx init "--pg${PG_MAJOR}=${PG_CONFIG}"
fi
log "setup complete: cargo-pgrx ${PGRX_VERSION}, PostgreSQL $("$PG_CONFIG" --version)"
