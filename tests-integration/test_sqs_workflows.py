"""End-to-end runs on the ``sqs`` backend against real servers (SQS on moto, DynamoDB on dynalite):
``flowcraft.Engine`` + ``flowcraft.Worker`` + ``flowcraft.client.Client`` on ``registry().build("sqs", ...)``
(diamond all-join, any-join of three, conditional branches, a loop, retries, a sleep longer than one SQS delay
hop), and the seed-style API (``SqsAdapter``, ``create_sqs_reconciler``) on explicit aiobotocore clients."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from flowcraft import App, Flow, NodeContext, NodeResult
from flowcraft.client import Client
from flowcraft.plugins import registry
from flowcraft.spi import Backend
from flowcraft.testing import InProcessWorkers
from flowcraft_sqs import DynamoDbCoordinationStore, SqsAdapter, create_sqs_reconciler

pytestmark = pytest.mark.asyncio

EXECUTIONS: Counter[str] = Counter()


def _count(ctx: NodeContext) -> None:
    EXECUTIONS[f"{ctx.run_id}/{ctx.node_id}/{ctx.visit}"] += 1


def executions(run_id: str) -> dict[str, int]:
    prefix = run_id + "/"
    return {k[len(prefix):]: v for k, v in EXECUTIONS.items() if k.startswith(prefix)}


def flows() -> list[Flow]:
    async def value(ctx: NodeContext) -> Any:
        _count(ctx)
        await asyncio.sleep(float(ctx.params.get("sleep", 0)))
        return ctx.node_id

    async def joined(ctx: NodeContext) -> Any:
        _count(ctx)
        return {"got": ctx.input}

    diamond = Flow("diamond", version="1")
    diamond.node("a", value).node("b", value).node("c", value).node("d", joined)
    diamond.edge("a", "b").edge("a", "c").edge("b", "d").edge("c", "d")

    any3 = Flow("any3", version="1")
    any3.node("s", value)
    for index, name in enumerate(("p1", "p2", "p3")):
        any3.node(name, value, params={"sleep": 0.2 * index}).edge("s", name).edge(name, "j")
    any3.node("j", joined, join="any").node("after", value).edge("j", "after")

    async def sign(ctx: NodeContext) -> NodeResult:
        _count(ctx)
        return NodeResult(output=ctx.input, action="pos" if ctx.input > 0 else "neg")

    branches = Flow("branches", version="1")
    branches.node("r", sign).node("positive", value).node("negative", value).node("after-neg", value)
    branches.node("big", value).node("end", joined)
    branches.edge("r", "positive", action="pos").edge("r", "negative", action="neg")
    branches.edge("negative", "after-neg").edge("r", "big", action="pos", condition="result.output > 100")
    branches.edge("positive", "end").edge("after-neg", "end")

    async def bump(ctx: NodeContext) -> int:
        _count(ctx)
        count = int(await ctx.context.get("count", 0)) + 1
        await ctx.context.set("count", count)
        return count

    loop = Flow("loop", version="1")
    loop.node("start", value).node("body", bump).node("done", value).edge("start", "body")
    loop.loop("again", start="body", end="body", condition="context.count < 5").edge("again", "done")

    async def flaky(ctx: NodeContext) -> str:
        _count(ctx)
        if ctx.attempt < 3:
            raise ConnectionError(f"attempt {ctx.attempt} failed")
        return f"ok on {ctx.attempt}"

    async def broken(ctx: NodeContext) -> str:
        _count(ctx)
        raise ValueError("always")

    retries = Flow("retries", version="1")
    retries.node("f", flaky, retries=2, retry_delay=0.3).node("after", value).edge("f", "after")

    failing = Flow("failing", version="1")
    failing.node("f", broken, retries=1, retry_delay=0.1).node("never", value).edge("f", "never")

    sleepy = Flow("sleepy", version="1")
    sleepy.node("s", value).sleep("nap", 3.0).node("woke", value).edge("s", "nap").edge("nap", "woke")

    async def huge(ctx: NodeContext) -> str:
        _count(ctx)
        return "x" * 500_000  # more than one DynamoDB item holds

    oversized = Flow("oversized", version="1")
    oversized.node("s", value).node("huge", huge).node("never", value).edge("s", "huge").edge("huge", "never")
    return [diamond, any3, branches, loop, retries, failing, sleepy, oversized]


APP = App(flows=flows())


@pytest.fixture
def sqs_options(sqs_options: dict[str, Any]) -> dict[str, Any]:
    return {**sqs_options, "visibility_timeout": 5}


@pytest_asyncio.fixture
async def backend(sqs_options: dict[str, Any]) -> AsyncIterator[Backend]:
    built = registry().build("sqs", sqs_options)
    await built.setup()
    try:
        yield built
    finally:
        await built.close()


async def test_diamond_all_join(backend: Backend) -> None:
    async with InProcessWorkers(backend, app=APP) as w:
        results = await asyncio.gather(*(w.run("diamond") for _ in range(5)))
    for result in results:
        assert result.status == "completed", result.errors
        assert result.outputs["d"] == {"got": {"b": "b", "c": "c"}}
        assert executions(result.run_id) == {"a/0": 1, "b/0": 1, "c/0": 1, "d/0": 1}


async def test_any_join_of_three_runs_once(backend: Backend) -> None:
    async with InProcessWorkers(backend, app=APP) as w:
        result = await w.run("any3")
    assert result.status == "completed", result.errors
    (winner,) = result.outputs["j"]["got"]
    assert winner in ("p1", "p2", "p3")
    counts = executions(result.run_id)
    assert counts["j/0"] == 1 and counts["after/0"] == 1


@pytest.mark.parametrize(("value", "taken", "untaken"), [
    (5, {"positive", "end"}, {"negative", "after-neg", "big"}),
    (-5, {"negative", "after-neg", "end"}, {"positive", "big"}),
    (500, {"positive", "big", "end"}, {"negative", "after-neg"}),
])
async def test_conditional_branches(backend: Backend, value: int, taken: set[str], untaken: set[str]) -> None:
    async with InProcessWorkers(backend, app=APP) as w:
        result = await w.run("branches", value)
    assert result.status == "completed", result.errors
    assert taken <= set(result.outputs) and not untaken & set(result.outputs)
    assert not untaken & {k.split("/")[0] for k in executions(result.run_id)}


async def test_loop(backend: Backend) -> None:
    async with InProcessWorkers(backend, app=APP) as w:
        result = await w.run("loop")
    assert result.status == "completed", result.errors
    assert result.context["count"] == 5 and result.outputs["done"] == "done"
    assert sorted(k for k in executions(result.run_id) if k.startswith("body/")) == [f"body/{i}" for i in range(5)]


async def test_retries_then_success_and_final_failure(backend: Backend) -> None:
    async with InProcessWorkers(backend, app=APP) as w:
        ok = await w.run("retries")
        bad = await w.run("failing")
        await asyncio.sleep(0.5)
        later = await w.client.status(bad.run_id)
    assert ok.status == "completed" and ok.outputs["f"] == "ok on 3"
    assert executions(ok.run_id)["f/0"] == 3
    assert bad.status == "failed" and later.status == "failed" and "never" not in later.outputs
    assert executions(bad.run_id)["f/0"] == 2 and "always" in bad.errors[0]["message"]


async def test_an_output_too_large_for_dynamodb_fails_the_run_with_the_reason(backend: Backend) -> None:
    """A 500 KB output cannot be stored (400 KB per item): the run fails at once with a one-line reason and
    the job goes to the dead-letter queue with it — not redelivered until the redrive gives up."""
    async with InProcessWorkers(backend, app=APP) as w:
        result = await w.run("oversized", timeout=30)
    assert result.status == "failed"
    message = result.errors[0]["message"]
    assert "a DynamoDB item holds at most 400 KB" in message and result.errors[0]["node_id"] == "huge"
    assert executions(result.run_id) == {"s/0": 1, "huge/0": 1}
    letters = [d for d in await backend.queue.dead_letters() if d.job is not None and d.job.run_id == result.run_id]
    assert [d.job.node_id for d in letters if d.job] == ["huge"] and "400 KB" in letters[0].reason


async def test_sleep_longer_than_one_delay_hop_is_chained(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQS delays a message at most 900 s; longer sleeps hop. Here one hop is capped at 1 s, so the
    3 s sleep needs several hops (each receive of an early job is released again) and still wakes on time."""
    import flowcraft_sqs.queue as sqs_queue

    monkeypatch.setattr(sqs_queue, "MAX_DELAY_SECONDS", 1)
    async with InProcessWorkers(backend, count=1, app=APP) as w:
        started = time.monotonic()
        result = await w.run("sleepy", timeout=30)
    assert result.status == "completed", result.errors
    assert 2.9 <= time.monotonic() - started < 15
    assert executions(result.run_id) == {"s/0": 1, "woke/0": 1}


async def test_worker_processes_share_the_backend(backend: Backend, sqs_options: dict[str, Any]) -> None:
    """Two worker processes (python -m flowcraft.testing.worker) run the contract app's diamond."""
    import json
    import subprocess
    import sys

    from flowcraft.testing.apps import app as contract_app

    processes = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "flowcraft.testing.worker", "--backend", "sqs", "--options", json.dumps(sqs_options),
        "--concurrency", "4", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    try:
        client = Client(backend, contract_app)
        ids = [await client.start("contract-diamond", {"value": i}) for i in range(4)]
        results = [await client.wait(run_id, 60) for run_id in ids]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            await asyncio.wait_for(process.wait(), 30)
    assert all(r.status == "completed" for r in results), [r.errors for r in results]
    assert all(set(r.outputs["j"]["received"]) == {"p1", "p2", "p3"} for r in results)


# ============================================================================================== seed-style API
@pytest_asyncio.fixture
async def clients(sqs_options: dict[str, Any]) -> AsyncIterator[tuple[Any, Any]]:
    from aiobotocore.session import get_session

    session = get_session()
    region = sqs_options["region"]
    async with (session.create_client("sqs", endpoint_url=sqs_options["endpoint_url"], region_name=region) as sqs,
                session.create_client("dynamodb", endpoint_url=sqs_options["dynamodb_endpoint_url"],
                                      region_name=region) as ddb):
        yield sqs, ddb


async def test_sqs_adapter_and_reconciler(backend: Backend, clients: tuple[Any, Any],
                                          sqs_options: dict[str, Any]) -> None:
    sqs, ddb = clients
    prefix = sqs_options["table_prefix"]
    queue_url = (await sqs.get_queue_url(QueueName=sqs_options["queue_name"]))["QueueUrl"]
    store = DynamoDbCoordinationStore(client=ddb, table_name=prefix + "coordination")
    adapter = SqsAdapter(runtime_options={"flows": flows()}, coordination_store=store, sqs_client=sqs,
                         dynamodb_client=ddb, queue_url=queue_url, context_table_name=prefix + "contexts",
                         status_table_name=prefix + "statuses", poll_wait=0.2)
    # a run whose start message is lost: the reconciler finds it through the status index and resumes it
    lost = adapter.engine.queue.enqueue

    async def drop(jobs: Any, delay: float = 0.0) -> None:
        return None

    adapter.engine.queue.enqueue = drop  # type: ignore[method-assign]
    stalled_id = await adapter.client.start("diamond")
    adapter.engine.queue.enqueue = lost  # type: ignore[method-assign]
    await adapter.start()
    try:
        healthy = await adapter.client.run("diamond", timeout=30)
        assert healthy.status == "completed" and healthy.outputs["d"] == {"got": {"b": "b", "c": "c"}}
        await asyncio.sleep(1.2)
        reconciler = create_sqs_reconciler(adapter=adapter, dynamodb_client=ddb,
                                           status_table_name=prefix + "statuses", stalled_threshold_seconds=1)
        stats = await reconciler.run()
        assert stats.scanned_items >= 1 and stats.stalled_runs == 1
        assert stats.reconciled_runs == 1 and stats.failed_runs == 0 and stats.requeued_jobs == 1
        resumed = await adapter.client.wait(stalled_id, 30)
        assert resumed.status == "completed", resumed.errors
        assert (await reconciler.run()).stalled_runs == 0
    finally:
        await adapter.stop()
