"""localstack/'s provisioning script creates exactly what ``flowcraft setup --backend sqs`` creates: it is run
against moto (as LocalStack would run it from ``/etc/localstack/init/ready.d``), ``setup`` is run beside it
under other names, and the two sets of tables and queues are compared attribute by attribute."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from flowcraft.plugins import registry

SCRIPT = Path(__file__).resolve().parents[1] / "localstack" / "init" / "ready.d" / "10-flowcraft.sh"
TABLES = ("contexts", "statuses", "coordination")
#: queue attributes that name or date the queue itself
OWN_ATTRIBUTES = {"QueueArn", "CreatedTimestamp", "LastModifiedTimestamp"}


async def run_script(endpoint: str, queue_name: str, table_prefix: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWCRAFT_")}
    env.update(INIT_ENDPOINT_URL=endpoint, INIT_FLOWCRAFT_CLI=str(Path(sys.executable).parent / "flowcraft"),
               FLOWCRAFT_OPT_QUEUE_NAME=queue_name, FLOWCRAFT_OPT_TABLE_PREFIX=table_prefix)
    process = await asyncio.create_subprocess_exec("bash", str(SCRIPT), env=env, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, out.decode()
    return out.decode()


async def layout(ddb: Any, sqs: Any, queue_name: str, table_prefix: str) -> dict[str, Any]:
    """Everything about the tables and queues that is not their name."""
    found: dict[str, Any] = {}
    for kind in TABLES:
        table = (await ddb.describe_table(TableName=table_prefix + kind))["Table"]
        ttl = (await ddb.describe_time_to_live(TableName=table_prefix + kind))["TimeToLiveDescription"]
        found[kind] = {
            "keys": table["KeySchema"],
            "attributes": sorted(table["AttributeDefinitions"], key=lambda a: a["AttributeName"]),
            "billing": table.get("BillingModeSummary", {}).get("BillingMode"),
            "indexes": sorted(({"name": i["IndexName"], "keys": i["KeySchema"], "projection": i["Projection"]}
                               for i in table.get("GlobalSecondaryIndexes", [])), key=lambda i: i["name"]),
            "ttl": ttl,
        }
    for label, name in (("queue", queue_name), ("dead-letter queue", queue_name + "-dlq")):
        url = (await sqs.get_queue_url(QueueName=name))["QueueUrl"]
        attributes = (await sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"]))["Attributes"]
        attributes = {k: v for k, v in attributes.items() if k not in OWN_ATTRIBUTES}
        if "RedrivePolicy" in attributes:  # its target by name relative to the queue's
            policy = json.loads(attributes["RedrivePolicy"])
            target = policy["deadLetterTargetArn"].rsplit(":", 1)[-1]
            assert target == name + "-dlq"
            policy["deadLetterTargetArn"] = "<queue>-dlq"
            policy["maxReceiveCount"] = int(policy["maxReceiveCount"])
            attributes["RedrivePolicy"] = policy
        found[label] = attributes
    return found


@pytest.mark.asyncio
async def test_the_localstack_script_provisions_what_flowcraft_setup_does(
        moto_endpoint: str, aws_names: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from aiobotocore.session import get_session

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", os.environ.get("AWS_ACCESS_KEY_ID") or "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", os.environ.get("AWS_SECRET_ACCESS_KEY") or "test")
    region = os.environ.get("FLOWCRAFT_TEST_AWS_REGION") or "us-east-1"
    by_script = (aws_names.queue("script"), f"{aws_names.prefix}-script-")
    by_setup = (aws_names.queue("setup"), f"{aws_names.prefix}-setup-")

    output = await run_script(moto_endpoint, *by_script)
    assert "backend sqs is set up" in output
    await run_script(moto_endpoint, *by_script)  # idempotent, like setup
    backend = registry().build("sqs", {"endpoint_url": moto_endpoint, "region": region,
                                       "queue_name": by_setup[0], "table_prefix": by_setup[1]})
    try:
        await backend.setup()
    finally:
        await backend.close()

    session = get_session()
    async with (session.create_client("dynamodb", endpoint_url=moto_endpoint, region_name=region) as ddb,
                session.create_client("sqs", endpoint_url=moto_endpoint, region_name=region) as sqs):
        script_layout = await layout(ddb, sqs, *by_script)
        setup_layout = await layout(ddb, sqs, *by_setup)
    assert script_layout == setup_layout
    # and it is the layout flowcraft-sqs runs on (not the seeds' runId-only contexts or coordinationKey)
    assert [k["AttributeName"] for k in script_layout["contexts"]["keys"]] == ["runId", "key"]
    assert [k["AttributeName"] for k in script_layout["coordination"]["keys"]] == ["runId", "sk"]
    assert [i["name"] for i in script_layout["statuses"]["indexes"]] == ["status-lastUpdated"]
    assert script_layout["coordination"]["ttl"] == {"TimeToLiveStatus": "ENABLED", "AttributeName": "ttl"}
