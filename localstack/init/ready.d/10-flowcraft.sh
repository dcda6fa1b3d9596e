#!/bin/bash
# Provisions what Flowcraft's SQS backend expects, inside LocalStack (runs from
# /etc/localstack/init/ready.d once LocalStack is ready; awslocal = aws CLI pointed at LocalStack).
#
# The authoritative schema is the flowcraft-sqs package's `flowcraft setup --backend sqs`: keep the
# names, keys and attribute types below identical to what it creates.
#
# Idempotent: existing queues and tables are left as they are.
# Outside LocalStack, point it at any SQS/DynamoDB endpoint (e.g. moto_server):
#   AWSLOCAL="aws --endpoint-url http://127.0.0.1:5000" bash localstack/init/ready.d/10-flowcraft.sh
set -euo pipefail

read -r -a AWS <<<"${AWSLOCAL:-awslocal}"
awslocal() { "${AWS[@]}" "$@"; }

QUEUE=${FLOWCRAFT_QUEUE:-flowcraft-queue}
DLQ=${FLOWCRAFT_DLQ:-flowcraft-queue-dlq}
MAX_RECEIVE_COUNT=${FLOWCRAFT_MAX_RECEIVE_COUNT:-5}
CONTEXTS_TABLE=${FLOWCRAFT_CONTEXTS_TABLE:-flowcraft-contexts}
STATUSES_TABLE=${FLOWCRAFT_STATUSES_TABLE:-flowcraft-statuses}
COORDINATION_TABLE=${FLOWCRAFT_COORDINATION_TABLE:-flowcraft-coordination}
STATUS_INDEX=${FLOWCRAFT_STATUS_INDEX:-status-lastUpdated-index}
# Type of the statuses table's lastUpdated attribute (N = epoch number, S = ISO-8601 string).
LAST_UPDATED_TYPE=${FLOWCRAFT_LAST_UPDATED_TYPE:-N}

log() { echo "flowcraft-init: $*"; }

# ---- SQS: dead-letter queue first, then the work queue redriving to it
awslocal sqs create-queue --queue-name "$DLQ" >/dev/null
dlq_url=$(awslocal sqs get-queue-url --queue-name "$DLQ" --query QueueUrl --output text)
dlq_arn=$(awslocal sqs get-queue-attributes --queue-url "$dlq_url" --attribute-names QueueArn \
  --query Attributes.QueueArn --output text)
attributes=$(printf '{"RedrivePolicy": "{\\"deadLetterTargetArn\\":\\"%s\\",\\"maxReceiveCount\\":\\"%s\\"}"}' \
  "$dlq_arn" "$MAX_RECEIVE_COUNT")
if queue_url=$(awslocal sqs get-queue-url --queue-name "$QUEUE" --query QueueUrl --output text 2>/dev/null); then
  awslocal sqs set-queue-attributes --queue-url "$queue_url" --attributes "$attributes"
else
  awslocal sqs create-queue --queue-name "$QUEUE" --attributes "$attributes" >/dev/null
fi
log "queue $QUEUE -> dead-letter queue $DLQ after $MAX_RECEIVE_COUNT receives"

# ---- DynamoDB
table_exists() { awslocal dynamodb describe-table --table-name "$1" >/dev/null 2>&1; }

if ! table_exists "$CONTEXTS_TABLE"; then
  awslocal dynamodb create-table --table-name "$CONTEXTS_TABLE" \
    --attribute-definitions AttributeName=runId,AttributeType=S \
    --key-schema AttributeName=runId,KeyType=HASH \
    --billing-mode PAY_PER_REQUEST >/dev/null
fi
log "table $CONTEXTS_TABLE (runId S)"

if ! table_exists "$STATUSES_TABLE"; then
  awslocal dynamodb create-table --table-name "$STATUSES_TABLE" \
    --attribute-definitions AttributeName=runId,AttributeType=S AttributeName=status,AttributeType=S \
      "AttributeName=lastUpdated,AttributeType=$LAST_UPDATED_TYPE" \
    --key-schema AttributeName=runId,KeyType=HASH \
    --global-secondary-indexes "[{\"IndexName\": \"$STATUS_INDEX\",
        \"KeySchema\": [{\"AttributeName\": \"status\", \"KeyType\": \"HASH\"},
                        {\"AttributeName\": \"lastUpdated\", \"KeyType\": \"RANGE\"}],
        \"Projection\": {\"ProjectionType\": \"ALL\"}}]" \
    --billing-mode PAY_PER_REQUEST >/dev/null
fi
log "table $STATUSES_TABLE (runId S; index $STATUS_INDEX on status S + lastUpdated $LAST_UPDATED_TYPE)"

if ! table_exists "$COORDINATION_TABLE"; then
  awslocal dynamodb create-table --table-name "$COORDINATION_TABLE" \
    --attribute-definitions AttributeName=coordinationKey,AttributeType=S \
    --key-schema AttributeName=coordinationKey,KeyType=HASH \
    --billing-mode PAY_PER_REQUEST >/dev/null
fi
awslocal dynamodb update-time-to-live --table-name "$COORDINATION_TABLE" \
  --time-to-live-specification Enabled=true,AttributeName=ttl >/dev/null 2>&1 || true  # already enabled
log "table $COORDINATION_TABLE (coordinationKey S, TTL attribute ttl)"
