"""A join on the sqs backend fires exactly once, with every member, while many writers commit arrivals to one
run at the same moment — the property a DynamoDB server whose conditional writes are not atomic breaks.

Members' arrivals are committed by several processes, each of which spreads its commits over several
coordination stores (each with its own HTTP client, cache and per-run lock), so the
commits reach DynamoDB as truly concurrent ``UpdateItem``s on one item conditioned on one version. The
tests run on ``dynamodb_endpoint`` (dynalite unless an endpoint is given). moto's DynamoDB lets two writers
pass one version condition (the second test fails there, ``FLOWCRAFT_TEST_DYNAMODB_ENDPOINT=<moto url>``);
the join hammer passed on moto in the runs made so far, its race needing larger items and more load.

This file is also the hammering process: ``python test_sqs_join_race.py '<json>'`` prints its commits'
firings as JSON.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

from flowcraft.spi import Arrival, Completion, Job, Transition

RUNS = 6  # runs hammered at once
MEMBERS = 24  # predecessors of each run's join
PROCESSES = 3
STORES_PER_PROCESS = 4
JOIN = "join"


def _member(index: int) -> str:
    return f"m{index:02d}"


def _contribution(run_id: str, member: str) -> dict[str, str]:
    return {"from": member, "run": run_id}


def _transition(run_id: str, member: str, members: tuple[str, ...]) -> Transition:
    target = Job(run_id, "race", JOIN)
    arrival = Arrival(target, member, arrived=True, contribution=_contribution(run_id, member), expected=members)
    completion = Completion(member, output=member, token=f"token-{member}")  # a redelivery carries the same
    return Transition(run_id, Job(run_id, "race", member).key, completion=completion, arrivals=(arrival,), finish=True)


async def _hammer(options: dict[str, Any], commits: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Connect, say ``ready``, wait for a line on stdin, then commit ``(run, member)`` arrivals all at once over
    several stores; what each commit fired."""
    from flowcraft_sqs import DynamoDbCoordinationStore

    members = tuple(_member(i) for i in range(MEMBERS))
    stores = [DynamoDbCoordinationStore.from_config(options, {}) for _ in range(STORES_PER_PROCESS)]
    try:
        for store in stores:  # open each store's client before the start
            await store.activity(commits[0][0])
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        results = await asyncio.gather(*(
            stores[i % len(stores)].commit(_transition(run_id, member, members))
            for i, (run_id, member) in enumerate(commits)))
    finally:
        for store in stores:
            await store.close()
    return [{"run": run_id, "member": member, "conflict": committed.conflict is not None,
             "fired": [{"key": job.key, "input": job.input} for job in committed.fired]}
            for (run_id, member), committed in zip(commits, results, strict=True)]


async def test_a_join_hammered_by_concurrent_commits_fires_once_with_every_member(
        sqs_options: dict[str, Any]) -> None:
    from flowcraft.plugins import registry

    backend = registry().build("sqs", sqs_options)
    await backend.setup()
    run_ids = [f"race-{i}" for i in range(RUNS)]
    members = [_member(i) for i in range(MEMBERS)]
    try:
        for run_id in run_ids:
            await backend.coordination.schedule(run_id, [Job(run_id, "race", m) for m in members])
        # every member of a run once (a lost join shows: a redelivery would re-decide and repair it), and of
        # every other run twice, the copies in different processes (a join fired twice shows)
        shares: list[list[tuple[str, str]]] = [[] for _ in range(PROCESSES)]
        index = 0
        for number, run_id in enumerate(run_ids):
            for member in members:
                shares[index % PROCESSES].append((run_id, member))
                if number % 2:
                    shares[(index + 1) % PROCESSES].append((run_id, member))
                index += 1
        processes = [await asyncio.create_subprocess_exec(
            sys.executable, __file__, json.dumps({"options": sqs_options, "commits": share}),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for share in shares]
        for process in processes:  # all connected: start them together
            assert process.stdout is not None
            assert await asyncio.wait_for(process.stdout.readline(), 60) == b"ready\n"
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(b"go\n")
        outputs = await asyncio.wait_for(asyncio.gather(*(process.communicate() for process in processes)), 120)
        for process, (_, err) in zip(processes, outputs, strict=True):
            assert process.returncode == 0, err.decode()[-3000:]
        reports = [entry for out, _ in outputs for entry in json.loads(out)]
        assert len(reports) == sum(len(share) for share in shares)
        assert not any(r["conflict"] for r in reports)  # a redelivery's completion has the same token

        for run_id in run_ids:
            everyone = {m: _contribution(run_id, m) for m in members}
            join_key = Job(run_id, "race", JOIN).key
            firings = [f for r in reports if r["run"] == run_id for f in r["fired"]]
            assert [f["key"] for f in firings] == [join_key], f"run {run_id}: the join fired {len(firings)} times"
            assert firings[0]["input"] == everyone
            (pending,) = await backend.coordination.jobs(run_id)  # the members are done, the join is pending
            assert pending.job.key == join_key and pending.job.input == everyone
    finally:
        for run_id in run_ids:
            await backend.coordination.delete_run(run_id)
        await backend.close()


def test_the_dynamodb_server_lets_one_writer_win_a_version_condition(sqs_options: dict[str, Any],
                                                                      aws_names: Any) -> None:
    """The server property the coordination store rests on, checked on the tests' DynamoDB server: threads
    race read-version-then-conditional-write on one large item (large items make moto's window between
    condition check and write wide enough to hit: there two writers can both pass one ``v = :v``, and the
    final version is lower than the number of writes that succeeded)."""
    import threading

    import boto3

    kwargs = {"endpoint_url": sqs_options["dynamodb_endpoint_url"], "region_name": sqs_options["region"]}
    client = boto3.client("dynamodb", **kwargs)
    table, key = aws_names.table("cas"), {"k": {"S": "item"}}
    client.create_table(TableName=table, KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                        AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
                        BillingMode="PAY_PER_REQUEST")
    try:
        client.get_waiter("table_exists").wait(TableName=table, WaiterConfig={"Delay": 1})
        filler = {f"filler{i}": {"S": "x" * 100} for i in range(800)}
        client.put_item(TableName=table, Item={**key, "v": {"N": "0"}, "m": {"M": filler}})
        wins: list[str] = []

        def writer(name: str) -> None:
            own = boto3.client("dynamodb", **kwargs)
            for attempt in range(25):
                version = int(own.get_item(TableName=table, Key=key, ConsistentRead=True)["Item"]["v"]["N"])
                try:
                    own.update_item(TableName=table, Key=key, UpdateExpression="SET v = :next, m.#entry = :mark",
                                    ConditionExpression="v = :seen", ExpressionAttributeNames={"#entry": name},
                                    ExpressionAttributeValues={":next": {"N": str(version + 1)},
                                                               ":seen": {"N": str(version)}, ":mark": {"S": "won"}})
                except own.exceptions.ConditionalCheckFailedException:
                    continue
                wins.append(name)
                name = f"{name.split('/')[0]}/{attempt}"

        threads = [threading.Thread(target=writer, args=(f"w{i}/start",)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        item = client.get_item(TableName=table, Key=key, ConsistentRead=True)["Item"]
        assert len(wins) >= 8  # not vacuous: many rounds were won
        assert int(item["v"]["N"]) == len(wins), f"{len(wins)} writes passed the condition of {item['v']['N']} versions"
        assert sorted(k for k in item["m"]["M"] if not k.startswith("filler")) == sorted(wins)
    finally:
        client.delete_table(TableName=table)


if __name__ == "__main__":
    request = json.loads(sys.argv[1])
    commits = [(run_id, member) for run_id, member in request["commits"]]
    print(json.dumps(asyncio.run(_hammer(request["options"], commits))))
