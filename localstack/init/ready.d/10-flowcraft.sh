#!/bin/bash
# Provisions what Flowcraft's SQS backend expects, inside LocalStack (runs from
# /etc/localstack/init/ready.d once LocalStack is ready).
#
# It runs `flowcraft setup --backend sqs`: the queues and tables are the flowcraft-sqs package's own
# definitions (one source of truth), never a copy kept here. Idempotent, like `flowcraft setup`.
#
# Which flowcraft: $INIT_FLOWCRAFT_CLI if set; else `flowcraft` on PATH; else one installed into
# /tmp/flowcraft-venv from the sources the compose file mounts at /flowcraft-src (core, packages/sqs),
# or from PyPI (`flowcraft-sqs`) when nothing is mounted. Installing needs PyPI (for aiobotocore).
#
# Names and settings: the backend's options from the environment, e.g. FLOWCRAFT_OPT_QUEUE_NAME,
# FLOWCRAFT_OPT_TABLE_PREFIX, FLOWCRAFT_OPT_MAX_RECEIVE_COUNT (see packages/sqs/README.md), the same
# variables the workers read. Endpoint: $INIT_ENDPOINT_URL (default http://localhost:4566, LocalStack
# inside its container). Outside LocalStack, point it at any SQS/DynamoDB endpoint (e.g. moto_server):
#   INIT_ENDPOINT_URL=http://127.0.0.1:5000 INIT_FLOWCRAFT_CLI=.venv/bin/flowcraft \
#     bash localstack/init/ready.d/10-flowcraft.sh
set -euo pipefail

ENDPOINT=${INIT_ENDPOINT_URL:-http://localhost:4566}
SOURCES=${INIT_FLOWCRAFT_SOURCES:-/flowcraft-src}
VENV=/tmp/flowcraft-venv
# LocalStack accepts any credentials; a real endpoint gets the caller's own
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-test} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-test}

log() { echo "flowcraft-init: $*"; }

cli=${INIT_FLOWCRAFT_CLI:-}
if [ -z "$cli" ] && command -v flowcraft >/dev/null 2>&1; then cli=flowcraft; fi
if [ -z "$cli" ]; then
  if [ ! -x "$VENV/bin/flowcraft" ]; then
    if [ -d "$SOURCES/core" ] && [ -d "$SOURCES/packages/sqs" ]; then
      packages=("$SOURCES/core" "$SOURCES/packages/sqs")
    else
      packages=(flowcraft-sqs)
    fi
    log "installing ${packages[*]} into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check "${packages[@]}"
  fi
  cli=$VENV/bin/flowcraft
fi

"$cli" setup --backend sqs --option "endpoint_url=$ENDPOINT"
log "flowcraft setup --backend sqs done on $ENDPOINT"
