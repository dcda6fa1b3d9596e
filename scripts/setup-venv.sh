#!/usr/bin/env bash
# Create .venv (Python >= 3.11) and install core and every backend package in editable mode.
# usage: scripts/setup-venv.sh [--test|--core]
#        --test adds the test and lint tools; --core installs flowcraft-core only (enough for the demo);
#        without --core, core's uvloop extra too (the workers' event loop)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for candidate in python3.11 python3.12 python3.13 python3; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      PY=$candidate; break
    fi
  done
fi
[ -n "$PY" ] || { echo "setup-venv: Python >= 3.11 is required" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip_install() { "$VENV/bin/pip" install -q --disable-pip-version-check "$@"; }
targets=(-e "$ROOT/core")
if [ "${1:-}" != "--core" ]; then
  targets=(-e "$ROOT/core[uvloop]")  # workers (tests, benchmarks) run on uvloop, as event_loop = "auto" does
  for package in "$ROOT"/packages/*/; do
    [ -f "$package/pyproject.toml" ] && targets+=(-e "$package")
  done
fi
if [ "${1:-}" = "--test" ]; then
  targets+=(-r "$ROOT/requirements-test.txt")
fi
pip_install "${targets[@]}"
