"""Unit tests of flowcraft-sqs that need no server: options, key encoding, completion records, batching,
and the commit plan against the reference (memory) store."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import pytest

from flowcraft.backends.memory import MemoryCoordinationStore
from flowcraft.errors import ConfigError
from flowcraft.spi import Arrival, Completion, Job, Transition, apply_transition
from flowcraft_sqs._aws import AwsClients, ItemTooLargeError, KeyTooLongError, SqsOptions, check_item_size
from flowcraft_sqs._batch import Coalescer, Entry
from flowcraft_sqs.coordination import (
    INLINE_BYTES,
    DynamoDbCoordinationStore,
    _arrival_key,
    _completion_from,
    _completion_text,
    _context_changes,
    _Plan,
    _RunState,
    _split_arrival_key,
)
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


def test_dynamodb_may_have_its_own_endpoint() -> None:
    both = SqsOptions.parse({"endpoint_url": "http://127.0.0.1:5000"})
    assert both.endpoint("sqs") == both.endpoint("dynamodb") == "http://127.0.0.1:5000"
    split = SqsOptions.parse({"endpoint_url": "http://127.0.0.1:5000", "dynamodb_endpoint_url": "http://127.0.0.1:8000"})
    assert (split.endpoint("sqs"), split.endpoint("dynamodb")) == ("http://127.0.0.1:5000", "http://127.0.0.1:8000")
    assert SqsOptions.parse({}).endpoint("dynamodb") is None  # AWS's own
    shared: dict[str, Any] = {}
    assert AwsClients.shared(shared, split) is AwsClients.shared(shared, split)
    assert AwsClients.shared(shared, split) is not AwsClients.shared(shared, both)


def test_plugin_lists_without_importing_aiobotocore() -> None:
    code = ("import sys; from flowcraft.plugins import registry; r = registry(); "
            "p = r.presets()['sqs']; assert (p.queue, p.context, p.status, p.coordination) == "
            "('sqs', 'dynamodb', 'dynamodb', 'dynamodb'); assert 'aiobotocore' not in sys.modules, 'imported'; "
            "assert r.component('coordination', 'dynamodb').__name__ == 'DynamoDbCoordinationStore'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_arrival_keys_are_unambiguous_for_any_ids() -> None:
    keys = {(t, m): _arrival_key(t, m) for t in TRICKY for m in TRICKY}
    assert len(set(keys.values())) == len(keys)
    for (target, member), key in keys.items():
        assert _split_arrival_key(key) == (target, member)


def test_completion_record_round_trip_stores_the_output_once() -> None:
    output = {"big": "x" * 1000}
    completion = Completion("n", output=output, action="go", token="tok",
                            context_updates={"_outputs.n": output, "k": 1}, context_deletes=("gone",), fallback="fb",
                            due_at=12.5)
    text = _completion_text(completion, "job")
    assert text.count("x" * 1000) == 1
    assert _completion_from(text) == completion
    # True is not 1: no confusion when the values merely compare equal
    odd = Completion("n", output=1, action=None, token="t", context_updates={"_outputs.n": True})
    assert _completion_from(_completion_text(odd, "job")).context_updates == {"_outputs.n": True}
    none = Completion("n", output=None, token="t", context_updates={"_outputs.n": None})
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


async def test_coalescer_lingers_only_while_more_entries_are_expected() -> None:
    calls: list[list[int]] = []

    async def call(entries: list[Entry]) -> list[Any]:
        calls.append([e.request["i"] for e in entries])
        return [None] * len(entries)

    expected = {1, 2}
    coalescer = Coalescer(call, max_entries=3, linger=5.0, expect=lambda: bool(expected))

    async def later(i: int, delay: float) -> None:
        await asyncio.sleep(delay)
        expected.discard(i)
        await coalescer.submit([({"i": i}, 0)])

    started = time.monotonic()
    await asyncio.gather(coalescer.submit([({"i": 0}, 0)]), later(1, 0.02), later(2, 0.04))
    assert calls == [[0, 1, 2]] and time.monotonic() - started < 1  # left once nothing more was expected
    calls.clear()
    expected.update({7, 8, 9})
    await asyncio.gather(*(coalescer.submit([({"i": i}, 0)]) for i in range(3)))
    assert calls == [[0, 1, 2]]  # full: no wait for the expected ones
    calls.clear()
    started = time.monotonic()
    await Coalescer(call, linger=0.05, expect=lambda: True).submit([({"i": 5}, 0)])
    assert calls == [[5]] and 0.04 <= time.monotonic() - started < 1  # never more than the linger


# ---------------------------------------------------------------------------------------------- the plan
def _job(node: str, **kwargs: Any) -> Job:
    return Job("r", "bp", node, **kwargs)


def _mirror(memory: MemoryCoordinationStore) -> _RunState:
    """The memory store's state of run "r" as a run item (contributions inline)."""
    run = memory._run("r")
    jobs = {key: state for key, (state, _) in run.jobs.items()}
    docs = {key: json.dumps(job.to_dict()) for key, (state, job) in run.jobs.items()
            if job is not None and state in ("pending", "parked")}
    arrivals = {(target, member): json.dumps([arrived, contribution])
                for target, found in run.arrivals.items() for member, (arrived, contribution) in found.items()}
    done = {key: _completion_text(completion, key) for key, completion in run.completions.items()}
    return _RunState(1, jobs, docs, done, arrivals)


SCENARIOS: list[tuple[str, list[Transition]]] = [
    ("chain",
     [Transition("r", "0:a", completion=Completion("a", output=1, token="t"),
                 arrivals=(Arrival(_job("b"), "a", arrived=True, contribution=1, expected=("a",)),),
                 finish=True)]),
    ("all-join", [
        Transition("r", "0:p1", completion=None,
                   arrivals=(Arrival(_job("j"), "p1", arrived=True, contribution=1, expected=("p1", "p2")),),
                   finish=True),
        Transition("r", "0:p2", completion=None,
                   arrivals=(Arrival(_job("j"), "p2", arrived=True, contribution=2, expected=("p1", "p2")),),
                   finish=True),
        Transition("r", "0:p2", completion=None,
                   arrivals=(Arrival(_job("j"), "p2", arrived=True, contribution=2, expected=("p1", "p2")),),
                   finish=True, recovery=True),
    ]),
    ("any-join", [
        Transition("r", "0:p1", completion=None,
                   arrivals=(Arrival(_job("j"), "p1", arrived=False, contribution=None, expected=("p1", "p2", "p3"),
                                     strategy="any"),), finish=True),
        Transition("r", "0:p2", completion=None,
                   arrivals=(Arrival(_job("j"), "p2", arrived=True, contribution=2, expected=("p1", "p2", "p3"),
                                     strategy="any"),), finish=True),
        Transition("r", "0:p3", completion=None,
                   arrivals=(Arrival(_job("j"), "p3", arrived=True, contribution=3, expected=("p1", "p2", "p3"),
                                     strategy="any"),), finish=True),
    ]),
    ("cascade-two-skips-into-one-join", [
        Transition("r", "0:x", completion=None,
                   arrivals=(Arrival(_job("j"), "a", arrived=False, contribution=None, expected=("a", "b")),
                             Arrival(_job("j"), "b", arrived=False, contribution=None, expected=("a", "b"))),
                   finish=True),
        Transition("r", "0:x", completion=None,
                   arrivals=(Arrival(_job("j"), "a", arrived=False, contribution=None, expected=("a", "b")),
                             Arrival(_job("j"), "b", arrived=False, contribution=None, expected=("a", "b"))),
                   finish=True, recovery=True),
    ]),
    ("conflict", [
        Transition("r", "0:a", completion=Completion("a", output=1, token="t1"), arrivals=(), finish=True),
        Transition("r", "0:a", completion=Completion("a", output=2, token="t2"), arrivals=(), finish=True),
    ]),
]


@pytest.mark.parametrize(("name", "transitions"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
async def test_plan_decides_like_the_reference_store(name: str, transitions: list[Transition]) -> None:
    """Run each transition on the memory store and, from a mirror of the same state, as a DynamoDB plan:
    same outcome, same counts."""
    memory = MemoryCoordinationStore()
    await memory.schedule("r", [_job(n) for n in ("a", "x", "p1", "p2", "p3")])
    for tx in transitions:
        plan = _Plan(_mirror(memory))
        planned = apply_transition(plan, tx)
        expected = await memory.commit(tx)
        assert planned.conflict == expected.conflict
        assert planned.fired == expected.fired and planned.skipped == expected.skipped
        assert plan.counts("r") == memory.counts("r")


def test_large_documents_and_contributions_move_to_blob_items() -> None:
    store = DynamoDbCoordinationStore(client=object(), table_name="t")
    big = "x" * (INLINE_BYTES + 1)
    plan = _Plan(_RunState(1, {"0:a": "pending"}))
    plan.insert_job("r", "0:b", "pending", _job("b", input=big, has_input=True))
    plan.insert_job("r", "0:c", "pending", _job("c", input="small", has_input=True))
    assert plan.add_arrival("r", "0:j", "a", True, big) == (1, 1)
    assert plan.add_arrival("r", "0:j", "b", False, None) == (2, 1)
    plan.put_completion("r", "0:a", Completion("a", output=big, token="t"))
    encoded, blobs = store._encode("r", plan, None)
    docs, arrivals = encoded["docs"], {_split_arrival_key(k): v for k, v in encoded["arrivals"].items()}
    assert len(blobs) == 3 and all(item["sk"]["S"].startswith("blob#") for item in blobs)
    assert encoded["done"]["0:a"].startswith("@blob#")
    assert docs["0:b"].startswith("@blob#") and json.loads(docs["0:c"])["node_id"] == "c"
    assert arrivals[("0:j", "a")].startswith("@1blob#") and json.loads(arrivals[("0:j", "b")]) == [False, None]
    # read back through a plan over the written state, with the blob items at hand
    bodies = {item["sk"]["S"]: item["body"]["S"] for item in blobs}
    again = _Plan(_RunState(2, plan.jobs, docs, encoded["done"], arrivals), blobs=bodies)
    assert again.completion("r", "0:a") == Completion("a", output=big, token="t")
    assert again.job("r", "0:b") == _job("b", input=big, has_input=True)
    assert again.arrivals("r", "0:j") == {"a": (True, big), "b": (False, None)}


async def test_a_run_state_past_the_item_limit_is_a_clear_error() -> None:
    """Checked before anything is sent (the client here could not send anything)."""
    store = DynamoDbCoordinationStore(client=object(), table_name="t")
    plan = _Plan(_RunState(1, {f"{i}:node-with-a-long-name": "done" for i in range(20000)}))
    plan.insert_job("r", "one-more", "pending", _job("x"))
    with pytest.raises(ItemTooLargeError, match="coordination state of run 'r'"):
        await store._write(object(), "r", plan, 0.0, None)


def test_the_plan_writes_a_new_records_context_with_it() -> None:
    """applies_context: a new record's context goes into ``ctx`` (large values in blob items, the delete of a
    key also set wins); a replay of the same record writes none; a marked record (context written apart)
    reads back as the same completion."""
    store = DynamoDbCoordinationStore(client=object(), table_name="t", applies_context=True)
    assert store.applies_context and not DynamoDbCoordinationStore(client=object()).applies_context
    big = "x" * (INLINE_BYTES + 1)
    completion = Completion("a", output=1, token="t", context_updates={"k": 1, "big": big, "both": 2},
                            context_deletes=("both", "old"))
    plan = _Plan(_RunState(1, {"0:a": "pending"}, ctx={"old": "0", "keep": "3"}, has_ctx=True))
    apply_transition(plan, Transition("r", "0:a", completion=completion, finish=True), applies_context=True)
    assert plan.ctx_set == {"k": 1, "big": big} and plan.ctx_del == {"both", "old"}
    encoded, blobs = store._encode("r", plan, None)
    assert encoded["ctx"]["k"] == "1" and encoded["ctx"]["big"].startswith("@blob#") and len(blobs) == 2
    assert set(encoded["ctx"]) == {"keep", "k", "big"}
    written = _RunState(2, plan.jobs, done=encoded["done"], ctx=encoded["ctx"], has_ctx=True)
    replay = _Plan(written, blobs={item["sk"]["S"]: item["body"]["S"] for item in blobs})
    apply_transition(replay, Transition("r", "0:a", completion=completion, finish=True, recovery=True),
                     applies_context=True)
    assert not replay.ctx_set and not replay.ctx_del and not replay.changed
    marked = _Plan(_RunState(2, plan.jobs, done={"0:a": "!" + _completion_text(completion, "a")}))
    assert marked.completion("r", "0:a") == completion


def test_context_state_of_the_run_item() -> None:
    item = {"runId": {"S": "r"}, "sk": {"S": "run"}, "ctx": {"M": {"k": {"S": "1"}}}}
    assert _RunState.parse(item, 0.0) == _RunState(ctx={"k": "1"}, has_ctx=True)  # context only, not scheduled
    assert _RunState.parse({**item, "v": {"N": "1"}}, 0.0).version == 1
    assert _RunState.parse({**item, "ttl": {"N": "5"}}, 10.0) == _RunState(stale=True)
    assert _context_changes({"a": 1, "b": 2}, ["b", "", "b"]) == ({"a": 1}, ["b"])
    with pytest.raises(KeyTooLongError):
        _context_changes({"": 1}, [])


def test_the_run_item_carries_the_record_mirror_and_the_mark() -> None:
    record = {"runId": {"S": "r"}, "status": {"S": "running"}, "lastUpdated": {"N": "1"}}
    item = {"runId": {"S": "r"}, "sk": {"S": "run"}, "v": {"N": "1"}, "rec": {"M": record}}
    state = _RunState.parse(item, 0.0)
    assert state.record == record and not state.marked
    marked = _RunState.parse({**item, "chk": {"BOOL": True}}, 0.0)
    assert marked.record == record and marked.marked
    assert _RunState.parse({**item, "ttl": {"N": "5"}}, 10.0).record is None  # expired: nothing of it counts


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
