#!/usr/bin/env bash
# Start Azurite's queue service (Azure Storage Queue emulator) on 127.0.0.1.
#
# usage: azurite/start.sh [-d|--detach] [extra azurite options...]
#   AZURITE_QUEUE_PORT   port (default 10001)
#   AZURITE_LOCATION     keep data in this directory (default: in memory, lost on exit)
#   FLOWCRAFT_SERVERS_DIR  where scripts/install-servers.sh put node_modules (default <repo>/.servers)
# Foreground by default (Ctrl-C stops it). With -d it runs in the background: the script returns once
# the port accepts connections and prints the PID (also written to $AZURITE_PIDFILE, default
# .servers/azurite-<port>.pid; log in .servers/azurite-<port>.log). Stop with: kill <pid>
#
# Connection string (well-known development account devstoreaccount1):
#   DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SERVERS_DIR=${FLOWCRAFT_SERVERS_DIR:-$ROOT/.servers}
PORT=${AZURITE_QUEUE_PORT:-10001}
MAIN=$SERVERS_DIR/node_modules/azurite/dist/src/queue/main.js

detach=""
if [ "${1:-}" = "-d" ] || [ "${1:-}" = "--detach" ]; then detach=1; shift; fi

command -v node >/dev/null 2>&1 || { echo "node is not installed: run scripts/install-servers.sh azurite" >&2; exit 1; }
[ -f "$MAIN" ] || { echo "azurite is not installed in $SERVERS_DIR: run scripts/install-servers.sh azurite" >&2; exit 1; }

if [ -n "${AZURITE_LOCATION:-}" ]; then
  mkdir -p "$AZURITE_LOCATION"
  storage=(--location "$AZURITE_LOCATION")
else
  storage=(--inMemoryPersistence)
fi
# --skipApiVersionCheck: the Python SDK sends an API version newer than Azurite knows.
# --loose: ignore headers/parameters Azurite does not support.
args=(--queueHost 127.0.0.1 --queuePort "$PORT" "${storage[@]}" --skipApiVersionCheck --loose --disableTelemetry)

if [ -z "$detach" ]; then
  exec node "$MAIN" "${args[@]}" "$@"
fi

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }
if port_open; then echo "127.0.0.1:$PORT is already in use" >&2; exit 1; fi
mkdir -p "$SERVERS_DIR"
LOG=${AZURITE_LOG:-$SERVERS_DIR/azurite-$PORT.log}
PIDFILE=${AZURITE_PIDFILE:-$SERVERS_DIR/azurite-$PORT.pid}
nohup node "$MAIN" "${args[@]}" "$@" >"$LOG" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$PIDFILE"
for _ in $(seq 1 300); do
  if port_open; then echo "$pid"; exit 0; fi
  if ! kill -0 "$pid" 2>/dev/null; then echo "azurite exited during startup:" >&2; tail -20 "$LOG" >&2; exit 1; fi
  sleep 0.1
done
echo "azurite not ready on 127.0.0.1:$PORT after 30s; stopping pid $pid" >&2
kill "$pid" 2>/dev/null || true
exit 1
