#!/usr/bin/env bash
# The demo on the embedded SQLite backend (no servers): sets up .venv, then runs `flowcraft demo`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/setup-venv.sh" --core
cd "$ROOT"
exec "$ROOT/.venv/bin/flowcraft" demo "$@"
