"""Unit tests of flowcraft-sqs that need no server: options, key encoding, completion records, batching,
and the commit plan against the reference (memory) store."""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
from typing import Any

import pytest

from flowcraft.backends.memory import MemoryCoordinationStore
from flowcraft.backends.transition import apply_transition
from flowcraft.errors import ConfigError
from flowcraft.spi import Arrival, Completion, Job, Transition
from flowcraft_sqs._aws import ItemTooLargeError, SqsOptions, check_item_size
from flowcraft_sqs._batch import Coalescer, Entry
from flowcraft_sqs.coordination import _arrival_sk, _arrivals_prefix, _completion_from, _completion_text, _Item, _Plan
from flowcraft_sqs.queue import _seconds

TRICKY = ["", "a", "a:b", 'a"', 'a"b', "a\\", "a\\\"", "ü", "a#b", "0:a", "0:a:b", '"', "\\", " ", "a/b c"]


def test_options_defaults_and_string_values() -> None:
    o = SqsOptions.parse({})
    assert (o.region, o.queue_name, o.table_prefix, o.visibility_timeout, o.wait_time_seconds) == (
        "us-east-1", "flowcraft-queue", "flowcraft-", 30.0, 20)
    assert o.table("contexts") == "flowcraft-contexts" and o.table("coordination") == "flowcraft-coordination"
    assert o.dlq_name == "flowcraft-queue-dlq"
    o = SqsOptions.parse({"visibility_timeout": "2.5", "fifo": "true", "queue_name": "jobs", "wait_time_seconds": "3",
                          "status_table": "runs", "unrelated": object()})
    assert o.visibility_timeout == 2.5 and o.fifo and o.wait_time_seconds == 3 and o.table("statuses") == "runs"
    assert o.main_queue_name == "jobs.fifo" and o.dlq_name == "jobs-dlq.fifo"
    o = SqsOptions.parse({"queue_url": "http://h/123/work"})
    assert o.main_queue_name == "work" and o.dlq_name == "work-dlq"
    with pytest.raises(ConfigError, match="wait_time_seconds"):
        SqsOptions.parse({"wait_time_seconds": 25})
    with pytest.raises(ConfigError, match="visibility_timeout"):
        SqsOptions.parse({"visibility_timeout": "soon"})


def test_plugin_lists_without_importing_aiobotocore() -> None:
    code = ("import sys; from flowcraft.plugins import registry; r = registry(); "
            "p = r.presets()['sqs']; assert (p.queue, p.context, p.status, p.coordination) == "
            "('sqs', 'dynamodb', 'dynamodb', 'dynamodb'); assert 'aiobotocore' not in sys.modules, 'imported'; "
            "assert r.component('coordination', 'dynamodb').__name__ == 'DynamoDbCoordinationStore'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_arrival_keys_are_unambiguous_for_any_ids() -> None:
    for target, other in itertools.product(TRICKY, repeat=2):
        for member in TRICKY:
            key = _arrival_sk(target, member)
            assert key.startswith(_arrivals_prefix(target))
            if other != target:
                assert not key.startswith(_arrivals_prefix(other)), (target, other, member)
    pairs = {(t, m): _arrival_sk(t, m) for t in TRICKY for m in TRICKY}
    assert len(set(pairs.values())) == len(pairs)


def test_completion_record_round_trip_stores_the_output_once() -> None:
    output = {"big": "x" * 1000}
    completion = Completion("n", output, "go", "tok", {"_outputs.n": output, "k": 1}, ("gone",), "fb", 12.5)
    text = _completion_text(completion, "job")
    assert text.count("x" * 1000) == 1
    assert _completion_from(text) == completion
    # True is not 1: no confusion when the values merely compare equal
    odd = Completion("n", 1, None, "t", {"_outputs.n": True})
    assert _completion_from(_completion_text(odd, "job")).context_updates == {"_outputs.n": True}
    none = Completion("n", None, token="t", context_updates={"_outputs.n": None})
    assert _completion_from(_completion_text(none, "job")) == none


def test_item_size_limit() -> None:
    check_item_size({"v": {"S": "x" * 400_000}}, "fits")
    with pytest.raises(ItemTooLargeError, match=r"value 'k' is 439 KB; a DynamoDB item holds at most 400 KB"):
        check_item_size({"v": {"S": "x" * 450_000}}, "value 'k'")


def test_delays_round_up_and_cap() -> None:
    assert [_seconds(v, 900) for v in (0, 0.2, 1.0, 1.5, 899.5, 3600)] == [0, 1, 1, 2, 900, 900]


async def test_coalescer_batches_concurrent_requests() -> None:
    calls: list[list[int]] = []

    async def call(entries: list[Entry]) -> list[Any]:
        calls.append([e.request["i"] for e in entries])
        await asyncio.sleep(0.01)
        return [e.request["i"] * 10 for e in entries]

    coalescer = Coalescer(call, max_bytes=100)
    results = await asyncio.gather(*(coalescer.submit([({"i": i}, 10)]) for i in range(25)))
    assert [r[0] for r in results] == [i * 10 for i in range(25)]
    assert sorted(len(c) for c in calls) == [5, 10, 10]  # one round: 25 waiting requests, 10 per call
    calls.clear()
    await coalescer.submit([({"i": i}, 60) for i in range(3)])
    assert calls == [[0], [1], [2]]  # max_bytes splits


async def test_coalescer_hands_errors_to_the_callers() -> None:
    async def call(entries: list[Entry]) -> list[Any]:
        return [ValueError("no") if e.request["i"] == 1 else "ok" for e in entries]

    coalescer = Coalescer(call)
    first = asyncio.ensure_future(coalescer.submit([({"i": 0}, 0)]))
    with pytest.raises(ValueError, match="no"):
        await coalescer.submit([({"i": 1}, 0)])
    assert await first == ["ok"]


# ---------------------------------------------------------------------------------------------- the plan
def _job(node: str, **kwargs: Any) -> Job:
    return Job("r", "bp", node, **kwargs)


def _mirror(memory: MemoryCoordinationStore) -> tuple[dict[str, _Item | None], dict[str, dict[str, tuple[bool, Any]]]]:
    run = memory._run("r")
    known: dict[str, _Item | None] = {}
    for key in set(run.jobs) | set(run.completions):
        state, job = run.jobs.get(key, (None, None))
        known[key] = _Item(state, job, run.completions.get(key))
    members = {target: dict(found) for target, found in run.arrivals.items()}
    return known, members


SCENARIOS: list[tuple[str, list[Transition]]] = [
    ("chain", [Transition("r", "0:a", Completion("a", 1, token="t"), (Arrival(_job("b"), "a", True, 1, ("a",)),),
                          True)]),
    ("all-join", [
        Transition("r", "0:p1", None, (Arrival(_job("j"), "p1", True, 1, ("p1", "p2")),), True),
        Transition("r", "0:p2", None, (Arrival(_job("j"), "p2", True, 2, ("p1", "p2")),), True),
        Transition("r", "0:p2", None, (Arrival(_job("j"), "p2", True, 2, ("p1", "p2")),), True, recovery=True),
    ]),
    ("any-join", [
        Transition("r", "0:p1", None, (Arrival(_job("j"), "p1", False, None, ("p1", "p2", "p3"), "any"),), True),
        Transition("r", "0:p2", None, (Arrival(_job("j"), "p2", True, 2, ("p1", "p2", "p3"), "any"),), True),
        Transition("r", "0:p3", None, (Arrival(_job("j"), "p3", True, 3, ("p1", "p2", "p3"), "any"),), True),
    ]),
    ("cascade-two-skips-into-one-join", [
        Transition("r", "0:x", None, (Arrival(_job("j"), "a", False, None, ("a", "b")),
                                      Arrival(_job("j"), "b", False, None, ("a", "b"))), True),
        Transition("r", "0:x", None, (Arrival(_job("j"), "a", False, None, ("a", "b")),
                                      Arrival(_job("j"), "b", False, None, ("a", "b"))), True, recovery=True),
    ]),
    ("conflict", [
        Transition("r", "0:a", Completion("a", 1, token="t1"), (), True),
        Transition("r", "0:a", Completion("a", 2, token="t2"), (), True),
    ]),
]


@pytest.mark.parametrize(("name", "transitions"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
async def test_plan_decides_like_the_reference_store(name: str, transitions: list[Transition]) -> None:
    """Run each transition on the memory store and, from a mirror of the same state, as a DynamoDB plan:
    same outcome, and the plan's writes carry the same counter changes."""
    memory = MemoryCoordinationStore()
    await memory.schedule("r", [_job(n) for n in ("a", "x", "p1", "p2", "p3")])
    for tx in transitions:
        known, members = _mirror(memory)
        # the plan sees arrivals of this transition as already written, exactly like the store does
        newly = {(a.target_key, a.member) for a in tx.arrivals if len(a.expected) > 1
                 and a.member not in members.get(a.target_key, {})}
        for a in tx.arrivals:
            if len(a.expected) > 1:
                members.setdefault(a.target_key, {}).setdefault(a.member, (a.arrived, a.contribution))
        plan = _Plan(known, members, newly, tx.job_key)
        before = memory.counts("r")
        planned = apply_transition(plan, tx)
        expected = await memory.commit(tx)
        assert planned.conflict == expected.conflict
        assert planned.fired == expected.fired and planned.skipped == expected.skipped
        after = memory.counts("r")
        ops = plan.ops.values()
        assert (sum(o.pending for o in ops), sum(o.parked for o in ops)) == (after[0] - before[0],
                                                                             after[1] - before[1])


def test_job_documents_are_json() -> None:
    job = _job("n", input={"a": [1, "ü"]}, has_input=True, payload={"p": None}, due_at=1.5)
    assert Job.from_dict(json.loads(json.dumps(job.to_dict()))) == job


def test_unused_expression_placeholders_are_pruned() -> None:
    from flowcraft_sqs._aws import prune

    request = prune({"UpdateExpression": "SET #a = :a", "ConditionExpression": "#b = :now",
                     "ExpressionAttributeNames": {"#a": "a", "#b": "b", "#ttl": "ttl"},
                     "ExpressionAttributeValues": {":a": {"S": "x"}, ":now": {"N": "1"}, ":ttl": {"N": "2"}}})
    assert request["ExpressionAttributeNames"] == {"#a": "a", "#b": "b"}
    assert set(request["ExpressionAttributeValues"]) == {":a", ":now"}
