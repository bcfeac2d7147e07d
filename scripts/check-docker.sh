#!/usr/bin/env bash
# Checks that docker/Dockerfile copies everything the build needs: the manifests, the control
# file, src/, sql/, and the directory of every path dependency of Cargo.toml. (No Docker engine
# runs on the test machines, so the image itself is not built here.)
set -euo pipefail
cd "$(dirname "$0")/.."
needed=(Cargo.toml Cargo.lock control_plane.control src sql)
while read -r dir; do
    needed+=("${dir%%/*}")
done < <(sed -n 's/.*path *= *"\([^"]*\)".*/\1/p' Cargo.toml)
copied="$(sed -n 's/^COPY \(--[^ ]* \)*//p' docker/Dockerfile | grep -v '^--from' || true)"
status=0
for path in "${needed[@]}"; do
    if ! grep -Eq "(^| )${path}( |$)" <<<"$copied"; then
        echo "docker/Dockerfile does not copy ${path}, which the build needs" >&2
        status=1
    fi
done
exit $status
