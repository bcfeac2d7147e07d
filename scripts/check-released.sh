#!/usr/bin/env bash
# Refuses a change to a released SQL script. sql/SHA256SUMS lists every script of a released
# version (its frozen install script and the upgrade script that reached it) with its checksum;
# every script of sql/ must be listed there, except the upgrade script to the version under
# development (Cargo.toml), which may change until that version is released.
# Releasing X: freeze X's generated install script as sql/control_plane--X.sql, add it and the
# upgrade script to X to SHA256SUMS, move Cargo.toml to the next version (see README, Releasing).
set -euo pipefail
cd "$(dirname "$0")/../sql"
current="$(sed -n 's/^version = "\(.*\)"/\1/p' ../Cargo.toml | head -1)"
sha256sum --quiet -c SHA256SUMS || {
    echo "a released SQL script changed (above): write a new upgrade script instead" >&2
    exit 1
}
status=0
for f in control_plane--*.sql; do
    grep -q "  $f\$" SHA256SUMS && continue
    case "$f" in
        control_plane--*--"$current".sql) ;;
        *)
            echo "$f is not in sql/SHA256SUMS: only the upgrade script to $current may be unreleased" >&2
            status=1
            ;;
    esac
done
if [ -e "control_plane--$current.sql" ]; then
    echo "control_plane--$current.sql must not exist: pgrx generates the install script of $current" >&2
    status=1
fi
exit $status
