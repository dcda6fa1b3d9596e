#!/usr/bin/env bash
# The whole test suite, servers included: sets up .venv and the real servers (every backend's), then runs
# unit tests of every distribution, the contract suite on each backend and the integration tests.
# Servers are started by the tests on free loopback ports and stopped by PID.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
"$ROOT/scripts/setup-venv.sh" --test
SERVERS="redis moto dynalite postgres rabbitmq azurite cosmos kafka cassandra chromium"
# shellcheck disable=SC2086  # one word per server
"$ROOT/scripts/install-servers.sh" $SERVERS
export FLOWCRAFT_TEST_SERVERS=${FLOWCRAFT_TEST_SERVERS:-$SERVERS}
"$ROOT/.venv/bin/ruff" check .
"$ROOT/.venv/bin/mypy" core/src/flowcraft packages/*/src/*/  # strict (pyproject.toml) on every distribution
suites=(core/tests)
for tests in packages/*/tests; do [ -d "$tests" ] && suites+=("$tests"); done
# in parallel: each xdist worker starts its own servers; every test has its own key prefix, queue or table
"$ROOT/.venv/bin/pytest" -q -p no:cacheprovider --timeout 300 --durations 15 -n "${FLOWCRAFT_TEST_WORKERS:-4}" \
  "${suites[@]}" benchmarks tests-integration "$@"
