#!/usr/bin/env bash
# Runs the test suite against real services: starts redis-server and SeaweedFS on free
# loopback ports in a temporary folder, runs pytest, and stops them on any exit.
# A server that cannot start fails the run (set -e); nothing is skipped.
#
# BBP_TEST_WORKERS=N (default 1) runs N pytest workers (pytest-xdist, a whole file per
# worker), each against its own set of servers in DIR/gw<i>: tests empty and restart
# Redis, so workers must not share one.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=.venv/bin/python
workers=${BBP_TEST_WORKERS:-1}
dir=$(mktemp -d -t bbp-services.XXXXXX)
sets=("$dir")
if [ "$workers" -gt 1 ]; then
    sets=()
    for ((i = 0; i < workers; i++)); do sets+=("$dir/gw$i"); done
fi
cleanup() {
    for set in "${sets[@]}"; do
        "$py" infra/dev/services.py stop --dir "$set" >/dev/null 2>&1 || true
    done
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM
for set in "${sets[@]}"; do
    "$py" infra/dev/services.py start --dir "$set"
done
if [ "$workers" -gt 1 ]; then
    BBP_TEST_SERVICES_DIR="$dir" "$py" -m pytest -n "$workers" --dist loadfile "$@"
else
    BBP_TEST_SERVICES_DIR="$dir" "$py" -m pytest "$@"
fi
