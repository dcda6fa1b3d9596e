#!/usr/bin/env bash
# Start the Cosmos DB (SQL API) emulator @vercel/cosmosdb-server on https://127.0.0.1, in memory.
#
# usage: azurite/start-cosmos.sh [-d|--detach]
#   COSMOS_PORT            port (default 8081, the real emulator's)
#   COSMOS_TLS_DIR         where the generated CA and server certificate go (default .servers/cosmos-tls)
#   FLOWCRAFT_SERVERS_DIR  where scripts/install-servers.sh put node_modules (default <repo>/.servers)
# The emulator's bundled certificate expired in 2021 and has no subjectAltName, so a private CA and a
# server certificate for 127.0.0.1/localhost are made with openssl on first use; clients verify with
# $COSMOS_TLS_DIR/ca.pem (flowcraft option cosmos_ca_cert). The wrapper tests-integration/servers/cosmos-server.js
# keeps connections alive and answers 404 (not 500) for a missing document.
# Foreground by default (Ctrl-C stops it). With -d it runs in the background: the script returns once the
# emulator is ready and prints the PID (also in .servers/cosmos-<port>.pid; log .servers/cosmos-<port>.log).
#
# The emulator accepts any key; the SDK wants base64, e.g. the public emulator key
#   C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw==
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SERVERS_DIR=${FLOWCRAFT_SERVERS_DIR:-$ROOT/.servers}
PORT=${COSMOS_PORT:-8081}
TLS=${COSMOS_TLS_DIR:-$SERVERS_DIR/cosmos-tls}
WRAPPER=$ROOT/tests-integration/servers/cosmos-server.js

detach=""
if [ "${1:-}" = "-d" ] || [ "${1:-}" = "--detach" ]; then detach=1; shift; fi

command -v node >/dev/null 2>&1 || { echo "node is not installed: run scripts/install-servers.sh cosmos" >&2; exit 1; }
[ -f "$SERVERS_DIR/node_modules/@vercel/cosmosdb-server/package.json" ] ||
  { echo "@vercel/cosmosdb-server is not installed in $SERVERS_DIR: run scripts/install-servers.sh cosmos" >&2; exit 1; }
command -v openssl >/dev/null 2>&1 || { echo "openssl is needed to make the emulator's certificate" >&2; exit 1; }

if [ ! -s "$TLS/cert.pem" ]; then
  mkdir -p "$TLS"
  openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=flowcraft cosmos emulator CA" \
    -keyout "$TLS/ca-key.pem" -out "$TLS/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$TLS/key.pem" -out "$TLS/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' \
    > "$TLS/server.ext"
  openssl x509 -req -in "$TLS/server.csr" -CA "$TLS/ca.pem" -CAkey "$TLS/ca-key.pem" -CAcreateserial -days 365 \
    -extfile "$TLS/server.ext" -out "$TLS/cert.pem" 2>/dev/null
  chmod 600 "$TLS/key.pem" "$TLS/ca-key.pem"
fi

export NODE_PATH=$SERVERS_DIR/node_modules
args=("$WRAPPER" "$PORT" "$TLS/cert.pem" "$TLS/key.pem")
if [ -z "$detach" ]; then
  echo "CA bundle for clients (option cosmos_ca_cert): $TLS/ca.pem" >&2
  exec node "${args[@]}"
fi

LOG=$SERVERS_DIR/cosmos-$PORT.log
PIDFILE=$SERVERS_DIR/cosmos-$PORT.pid
nohup node "${args[@]}" >"$LOG" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$PIDFILE"
for _ in $(seq 1 300); do
  if grep -q "Ready to accept" "$LOG" 2>/dev/null; then echo "$pid"; exit 0; fi
  if ! kill -0 "$pid" 2>/dev/null; then echo "the Cosmos emulator exited during startup:" >&2; tail -20 "$LOG" >&2; exit 1; fi
  sleep 0.1
done
echo "the Cosmos emulator was not ready on 127.0.0.1:$PORT after 30s; stopping pid $pid" >&2
kill "$pid" 2>/dev/null || true
exit 1
