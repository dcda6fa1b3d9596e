"""End-to-end runs on the ``rq`` backend (Engine + Worker + Client over a real redis-server), the seed-style
API (RqAdapter, create_rq_reconciler) and a Redis restart in the middle of runs."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from flowcraft import App, Engine, EngineOptions, Flow, NodeContext, NodeResult, Worker
from flowcraft.client import Client
from flowcraft.plugins import registry
from flowcraft.spi import Backend
from flowcraft.testing.apps import app as contract_app
from flowcraft_redis import RedisCoordinationStore, make_client
from flowcraft_rq import RqAdapter, create_rq_reconciler
from servers import RedisServer
from servers.base import free_port

EXECUTIONS: dict[str, int] = {}


def _count(ctx: NodeContext) -> None:
    key = f"{ctx.run_id}/{ctx.node_id}/{ctx.visit}"
    EXECUTIONS[key] = EXECUTIONS.get(key, 0) + 1


def flows() -> list[Flow]:
    async def value(ctx: NodeContext) -> Any:
        _count(ctx)
        return ctx.node_id

    async def joined(ctx: NodeContext) -> Any:
        _count(ctx)
        return {"got": ctx.input}

    diamond = Flow("diamond")
    diamond.node("a", value).node("b", value).node("c", value).node("d", joined)
    diamond.edge("a", "b").edge("a", "c").edge("b", "d").edge("c", "d")

    any3 = Flow("any3")
    any3.node("s", value)
    for name in ("p1", "p2", "p3"):
        any3.node(name, value).edge("s", name).edge(name, "j")
    any3.node("j", joined, join="any")

    async def sign(ctx: NodeContext) -> NodeResult:
        _count(ctx)
        return NodeResult(output=ctx.input, action="pos" if ctx.input > 0 else "neg")

    branches = Flow("branches")
    branches.node("r", sign).node("positive", value).node("negative", value).node("after-neg", value)
    branches.edge("r", "positive", action="pos").edge("r", "negative", action="neg")
    branches.edge("negative", "after-neg")

    async def bump(ctx: NodeContext) -> int:
        _count(ctx)
        count = int(await ctx.context.get("count", 0)) + 1
        await ctx.context.set("count", count)
        return count

    loop = Flow("loop")
    loop.node("s", value).node("body", bump).node("end", value).edge("s", "body")
    loop.loop("again", start="body", end="body", condition="context.count < 3").edge("again", "end")

    async def flaky(ctx: NodeContext) -> str:
        _count(ctx)
        if ctx.attempt < 3:
            raise ConnectionError(f"attempt {ctx.attempt}")
        return f"ok after {ctx.attempt}"

    retry = Flow("retry")
    retry.node("f", flaky, retries=3, retry_delay=0.2)

    async def slow(ctx: NodeContext) -> int:
        _count(ctx)
        await asyncio.sleep(0.02)
        return int(ctx.input or 0) + 1

    chain = Flow("chain")
    for i in range(30):
        chain.node(f"n{i}", slow, uses="slow")
        if i:
            chain.edge(f"n{i - 1}", f"n{i}")
    return [diamond, any3, branches, loop, retry, chain]


APP = App(flows=flows())


@pytest_asyncio.fixture
async def backend(redis_url: str, redis_prefix: str) -> AsyncIterator[Backend]:
    built = registry().build("rq", {"redis_url": redis_url, "key_prefix": redis_prefix, "visibility_timeout": 2})
    try:
        yield built
    finally:
        await built.close()


@pytest_asyncio.fixture
async def client(backend: Backend) -> AsyncIterator[Client]:
    worker = Worker(Engine(APP, backend, options=EngineOptions(lease_seconds=2)), concurrency=8, poll_wait=0.2)
    task = asyncio.create_task(worker.run())
    try:
        yield Client(backend, APP)
    finally:
        worker.stop()
        await task


def executions(run_id: str) -> dict[str, int]:
    return {k.split("/", 1)[1]: v for k, v in EXECUTIONS.items() if k.startswith(run_id + "/")}


async def test_diamond_all_join(client: Client) -> None:
    result = await client.run("diamond", None, timeout=20)
    assert result.status == "completed"
    assert result.output == {"got": {"b": "b", "c": "c"}}
    assert executions(result.run_id) == {"a/0": 1, "b/0": 1, "c/0": 1, "d/0": 1}


async def test_any_join_with_three_predecessors_runs_once(client: Client) -> None:
    result = await client.run("any3", None, timeout=20)
    assert result.status == "completed"
    assert executions(result.run_id)["j/0"] == 1
    assert len(result.output["got"]) == 1


@pytest.mark.parametrize(("value", "terminal"), [(5, "positive"), (-5, "after-neg")])
async def test_conditional_branches_to_different_terminals(client: Client, value: int, terminal: str) -> None:
    result = await client.run("branches", value, timeout=20)
    assert result.status == "completed"
    assert result.output == terminal
    assert set(result.outputs) == {"r", terminal} | ({"negative"} if value < 0 else set())


async def test_loop(client: Client) -> None:
    result = await client.run("loop", None, timeout=20)
    assert result.status == "completed" and result.context["count"] == 3
    assert result.output == "end"
    assert {k: v for k, v in executions(result.run_id).items() if k.startswith("body")} == {
        "body/0": 1, "body/1": 1, "body/2": 1}


async def test_retries_with_backoff(client: Client) -> None:
    result = await client.run("retry", None, timeout=20)
    assert result.status == "completed" and result.output == "ok after 3"
    assert executions(result.run_id) == {"f/0": 3}


async def test_many_runs_at_once(client: Client) -> None:
    run_ids = [await client.start("diamond") for _ in range(40)]
    results = await asyncio.gather(*(client.wait(run_id, timeout=30) for run_id in run_ids))
    assert all(r.status == "completed" and r.output == {"got": {"b": "b", "c": "c"}} for r in results)


async def test_adapter_and_reconciler(redis_url: str, redis_prefix: str) -> None:
    redis = make_client(redis_url)
    adapter = RqAdapter(runtime_options={"app": APP, "concurrency": 4},
                        coordination_store=RedisCoordinationStore(redis, key_prefix=redis_prefix),
                        connection=redis, queue_name=f"{redis_prefix}q", state_ttl_seconds=600, key_prefix=redis_prefix)
    try:
        run_id = await adapter.client.start("diamond")
        await redis.delete(adapter.queue.queue_key)  # the queued job is lost (e.g. a flushed queue)
        reconciler = create_rq_reconciler(adapter=adapter, redis=redis, stalled_threshold_seconds=0,
                                          key_prefix=redis_prefix, scan_count=100)
        await asyncio.sleep(0.05)
        stats = await reconciler.run()
        assert (stats.scanned_keys, stats.stalled_runs, stats.reconciled_runs, stats.failed_runs) == (1, 1, 1, 0)
        await adapter.start()
        result = await adapter.client.wait(run_id, timeout=20)
        assert result.status == "completed"
        assert (await reconciler.run()).stalled_runs == 0
    finally:
        await adapter.close()


async def test_runs_complete_across_a_redis_restart(start_server: Any) -> None:
    server = start_server(RedisServer, appendonly=True)
    prefix = f"fctest:{uuid.uuid4().hex}:"
    backend = registry().build("rq", {"redis_url": server.url, "key_prefix": prefix, "visibility_timeout": 2})
    worker = Worker(Engine(APP, backend, options=EngineOptions(lease_seconds=2)), concurrency=8, poll_wait=0.2)
    task = asyncio.create_task(worker.run())
    client = Client(backend, APP)
    try:
        run_ids = [await client.start("chain", 0) for _ in range(4)]
        await asyncio.sleep(0.3)  # mid-run
        await asyncio.to_thread(server.restart)
        results = await asyncio.gather(*(client.wait(run_id, timeout=60) for run_id in run_ids))
        assert [r.status for r in results] == ["completed"] * 4
        assert all(r.output == 30 for r in results)
    finally:
        worker.stop()
        await task
        await backend.close()


def _cli_worker(url: str, prefix: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as errors:
        return subprocess.Popen(
            [sys.executable, "-m", "flowcraft.cli", "worker", "--app", "flowcraft.testing.apps:app", "--backend",
             "rq", f"--option=redis_url={url}", f"--option=key_prefix={prefix}"],
            stdout=subprocess.DEVNULL, stderr=errors)


async def test_a_worker_started_before_its_redis_waits_for_it(start_server: Any, tmp_path: Path) -> None:
    """A worker (re)started while its Redis restarts keeps trying for a while instead of exiting."""
    port = free_port()
    url, prefix, log = f"redis://127.0.0.1:{port}/0", f"fctest:{uuid.uuid4().hex}:", tmp_path / "worker.log"
    worker = _cli_worker(url, prefix, log)
    try:
        deadline = time.monotonic() + 30
        while "trying again for up to 30s" not in log.read_text(encoding="utf-8"):  # it found no server
            assert worker.poll() is None, f"the worker exited while its Redis was not up yet: {log.read_text()}"
            assert time.monotonic() < deadline, "the worker never reported the server it could not reach"
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)  # and keeps trying
        assert worker.poll() is None, f"the worker exited while its Redis was not up yet: {log.read_text()}"
        start_server(RedisServer, port=port)
        backend = registry().build("rq", {"redis_url": url, "key_prefix": prefix})
        client = Client(backend, contract_app)
        try:
            result = await client.wait(await client.start("contract-none", {"value": 3}), timeout=60)
        finally:
            await backend.close()
        assert result.status == "completed" and result.outputs == {"s": 3, "n": None, "e": None}
    finally:
        worker.terminate()
        await asyncio.to_thread(worker.wait, 30)
    assert f"cannot connect to Redis at {url}" in log.read_text(encoding="utf-8")


async def test_two_engines_sharing_one_backend(backend: Backend) -> None:
    """Leases a dequeue takes for one engine never block the other engine of the same process."""
    engines = [Engine(APP, backend, options=EngineOptions(lease_seconds=30)) for _ in range(2)]
    workers = [Worker(engine, concurrency=4, poll_wait=0.2) for engine in engines]
    tasks = [asyncio.create_task(worker.run()) for worker in workers]
    client = Client(backend, APP)
    try:
        run_ids = [await client.start("diamond") for _ in range(20)]
        results = await asyncio.gather(*(client.wait(run_id, timeout=10) for run_id in run_ids))
        assert all(r.status == "completed" for r in results)
    finally:
        for worker in workers:
            worker.stop()
        await asyncio.gather(*tasks)
