#!/usr/bin/env bash
# Runs the test suite against real services: starts redis-server and SeaweedFS on free
# loopback ports in a temporary folder, runs pytest, and stops them on any exit.
# A server that cannot start fails the run (set -e); nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=.venv/bin/python
dir=$(mktemp -d -t bbp-services.XXXXXX)
cleanup() {
    "$py" infra/dev/services.py stop --dir "$dir" >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM
"$py" infra/dev/services.py start --dir "$dir"
BBP_TEST_SERVICES_DIR="$dir" "$py" -m pytest "$@"
