"""Rerun a failed run from a node (issue 18, item 4): ``client.retry(run_id, from_node=...)`` through the public
API on the memory and sqlite backends; the timeline keeps the failed attempt and the rerun."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from flowcraft import Flow, FlowRuntime, NodeContext
from flowcraft.errors import InvalidStateError
from flowcraft.spi import Backend, Committed, RunRecord, Transition

calls: dict[str, int] = {}
broken: set[str] = set()


def node(name: str) -> Any:
    async def run(ctx: NodeContext) -> Any:
        calls[name] = calls.get(name, 0) + 1
        if name in broken:
            raise ValueError(f"{name} is broken")
        return {"node": name, "input": ctx.input}

    run.__name__ = name
    return run


def diamond() -> Flow:
    """a -> b, a -> c; (b, c) -> d -> e. d joins b and c."""
    flow = Flow("diamond")
    for name in "abcde":
        flow.node(name, node(name))
    return flow.edge("a", "b").edge("a", "c").edge("b", "d").edge("c", "d").edge("d", "e")


@pytest.fixture(autouse=True)
def reset() -> None:
    calls.clear()
    broken.clear()


@pytest.mark.parametrize("backend_name", ["memory", "sqlite"])
async def test_retry_from_a_node_keeps_upstream_and_history(backend_name: str, sqlite: Backend) -> None:
    broken.add("d")
    async with FlowRuntime(flows=[diamond()], backend=sqlite if backend_name == "sqlite" else None) as rt:
        failed = await rt.run("diamond", {"x": 1}, timeout=10)
        assert failed.status == "failed" and failed.errors[0]["node_id"] == "d"
        d_input = {"b": {"node": "b", "input": {"node": "a", "input": {"x": 1}}},
                   "c": {"node": "c", "input": {"node": "a", "input": {"x": 1}}}}
        broken.clear()  # the fix
        with pytest.raises(InvalidStateError, match="has no node 'zz'"):
            await rt.client.retry(failed.run_id, from_node="zz")
        assert await rt.client.retry(failed.run_id, from_node="d") == 1
        result = await rt.wait(failed.run_id, timeout=10)
        with pytest.raises(InvalidStateError, match="only failed runs can be retried"):
            await rt.client.retry(failed.run_id)
        (record,) = await rt.client.retries(failed.run_id)
    assert result.status == "completed" and result.errors == []
    assert result.outputs["d"] == {"node": "d", "input": d_input}  # re-fired with the inputs it had
    assert result.output == {"node": "e", "input": result.outputs["d"]}
    assert calls == {"a": 1, "b": 1, "c": 1, "d": 2, "e": 1}  # upstream kept, d and downstream rerun
    states = [(v.node_id, v.state) for v in result.timeline]
    assert ("d", "failed") in states and states.count(("d", "done")) == 1 and ("e", "done") in states
    old_d, new_d = sorted((v for v in result.timeline if v.node_id == "d"), key=lambda v: v.visit)
    assert old_d.visit == 0 and new_d.visit > old_d.visit and old_d.error == "ValueError: d is broken"
    assert record.generation == 1 and record.from_node == "d" and record.errors[0]["node_id"] == "d"
    assert not any(k.startswith("_retry.") for k in result.context)


async def test_a_retry_queues_each_fresh_job_once_on_a_dispatching_store(sqlite: Backend) -> None:
    from flowcraft.client import Client

    broken.add("d")
    async with FlowRuntime(flows=[diamond()], backend=sqlite) as rt:
        failed = await rt.run("diamond", {"x": 1}, timeout=10)
        app = rt.app
    assert sqlite.capabilities.dispatches and await sqlite.queue.depth() == 0
    # no worker now: the retry's commit fires d (b and c arrive from outside the rerun), which sqlite queues
    # in the same transaction; the retry must not queue it a second time
    await Client(sqlite, app).retry(failed.run_id, from_node="d")
    assert await sqlite.queue.depth() == 1


async def test_a_retry_queues_only_what_it_inserted_not_jobs_a_worker_fired_meanwhile(sqlite: Backend) -> None:
    """A worker may run the rerun while the retry finishes the failed generation, and fire (and queue) more of its
    jobs: the retry queues its own start and fired jobs, never the new generation's pending jobs read back, which
    delivered such a job twice (the second delivery's prefetched lease then refused a retry of the run)."""
    from flowcraft.client import Client
    from flowcraft.spi import Job

    broken.add("e")
    async with FlowRuntime(flows=[diamond()], backend=sqlite) as rt:
        failed = await rt.run("diamond", 3, timeout=10)
        app = rt.app
    assert sqlite.capabilities.dispatches and await sqlite.queue.depth() == 0
    coordination, commit = sqlite.coordination, sqlite.coordination.commit
    fired_elsewhere: list[str] = []

    async def worker_fires_e_meanwhile(transition: Transition) -> Committed:
        committed = await commit(transition)
        if transition.finish and transition.owner is None and transition.job_key == "0:e":  # the old generation's
            job = Job(failed.run_id, "diamond", "e", visit=1_000_000)  # the rerun's e, as a worker's commit fires it
            fired_elsewhere.extend(j.key for j in await coordination.schedule(failed.run_id, [job]))
        return committed

    coordination.commit = worker_fires_e_meanwhile  # type: ignore[method-assign]
    try:
        await Client(sqlite, app).retry(failed.run_id, from_node="b")
    finally:
        coordination.commit = commit  # type: ignore[method-assign]
    assert fired_elsewhere == ["1000000:e"]
    # b, fired by the retry's own commit and queued by the store in it; not e, whose firing commit queues it
    assert await sqlite.queue.depth() == 1


@pytest.mark.parametrize("backend_name", ["memory", "sqlite"])
async def test_a_run_is_retryable_as_soon_as_it_is_failed(backend_name: str, sqlite: Backend) -> None:
    """The worker drops its lease on the failed job before the run's status says failed: a retry is refused while
    a lease is held, so a user who retries the moment they see the failure must not be refused."""
    broken.add("d")
    leases_when_failed: list[list[str]] = []
    async with FlowRuntime(flows=[diamond()], backend=sqlite if backend_name == "sqlite" else None) as rt:
        status, coordination = rt.backend.status, rt.backend.coordination
        transition = status.transition

        async def watched(run_id: str, from_statuses: Sequence[str], to_status: str,
                          changes: Mapping[str, Any]) -> RunRecord | None:
            won = await transition(run_id, from_statuses, to_status, changes)
            if to_status == "failed":
                held = await coordination.jobs(run_id, "pending")
                leases_when_failed.append([h.job.key for h in held if h.leased])
            return won

        status.transition = watched  # type: ignore[method-assign]
        failed = await rt.run("diamond", 2, timeout=10)
        broken.clear()
        assert await rt.client.retry(failed.run_id, from_node="d") == 1
        result = await rt.wait(failed.run_id, timeout=10)
    assert leases_when_failed == [[]] and result.status == "completed"


@pytest.mark.parametrize("backend_name", ["memory", "sqlite"])
async def test_a_rerun_that_ends_before_the_old_generation_is_finished_still_completes(backend_name: str,
                                                                                      sqlite: Backend) -> None:
    """A dispatching store queues the rerun as the retry inserts it, so a worker can run the whole new generation
    before the retry finishes the failed one: the rerun's last commit still saw the old job pending and did not
    end the run, and the retry's own finish must (a worker under load did this in CI, the run hung)."""
    broken.add("d")
    async with FlowRuntime(flows=[diamond()], backend=sqlite if backend_name == "sqlite" else None) as rt:
        failed = await rt.run("diamond", 5, timeout=10)
        broken.clear()
        coordination = rt.backend.coordination
        assert rt.backend.capabilities.dispatches
        commit = coordination.commit
        held_back: list[str] = []

        async def rerun_first(transition: Transition) -> Committed:
            if transition.finish and transition.owner is None and transition.job_key == "0:d":
                held_back.append(transition.job_key)
                for _ in range(500):  # the worker runs d and e of the new generation meanwhile
                    if "_outputs.e" in await rt.backend.context.get_many(failed.run_id, ["_outputs.e"]):
                        break
                    await asyncio.sleep(0.01)
            return await commit(transition)

        coordination.commit = rerun_first  # type: ignore[method-assign]
        await rt.client.retry(failed.run_id, from_node="d")
        result = await rt.wait(failed.run_id, timeout=10)
    assert held_back == ["0:d"] and calls["e"] == 1
    assert result.status == "completed" and result.output == {"node": "e", "input": result.outputs["d"]}


@pytest.mark.parametrize("backend_name", ["memory", "sqlite"])
async def test_retry_without_from_reruns_the_failed_node_and_cut_branches(backend_name: str,
                                                                         sqlite: Backend) -> None:
    broken.add("b")
    async with FlowRuntime(flows=[diamond()], backend=sqlite if backend_name == "sqlite" else None) as rt:
        failed = await rt.run("diamond", 7, timeout=10)
        assert failed.status == "failed"
        broken.clear()
        await rt.client.retry(failed.run_id)
        result = await rt.wait(failed.run_id, timeout=10)
    assert result.status == "completed"
    assert calls["a"] == 1 and calls["b"] == 2 and calls["d"] == 1 and calls["e"] == 1
    assert result.outputs["d"]["input"]["b"]["input"] == {"node": "a", "input": 7}


async def test_retry_from_an_upstream_node_and_a_second_retry(sqlite: Backend) -> None:
    broken.add("e")
    async with FlowRuntime(flows=[diamond()], backend=sqlite) as rt:
        failed = await rt.run("diamond", 1, timeout=10)
        assert await rt.client.retry(failed.run_id, from_node="b") == 1
        again = await rt.wait(failed.run_id, timeout=10)
        assert again.status == "failed"  # e still broken: fails again, in generation 1
        broken.clear()
        assert await rt.client.retry(failed.run_id, from_node="b") == 2
        result = await rt.wait(failed.run_id, timeout=10)
        assert [r.generation for r in await rt.client.retries(failed.run_id)] == [1, 2]
    assert result.status == "completed"
    assert calls == {"a": 1, "c": 1, "b": 3, "d": 3, "e": 3}
    assert [v.state for v in result.timeline if v.node_id == "e"] == ["failed", "failed", "done"]


async def test_retry_from_a_start_node_uses_the_run_input() -> None:
    broken.add("a")
    async with FlowRuntime(flows=[diamond()]) as rt:
        failed = await rt.run("diamond", "in", timeout=10)
        broken.clear()
        await rt.client.retry(failed.run_id, from_node="a")
        result = await rt.wait(failed.run_id, timeout=10)
    assert result.status == "completed" and result.outputs["a"] == {"node": "a", "input": "in"}


async def test_retry_of_a_map_a_loop_a_subflow_and_a_parked_wait() -> None:
    """The failed node's kind does not matter: a map reruns all its items, a loop restarts from its first
    node, a subflow starts a new child run, a wait parked when the run failed waits again."""
    failing = {"item": True, "body": True, "child": True, "bad": True}

    async def items(ctx: NodeContext) -> Any:
        return [1, 2, 3]

    async def item(ctx: NodeContext) -> Any:
        if failing["item"] and ctx.input == 2:
            raise ValueError("item 2")
        return ctx.input * 10

    async def body(ctx: NodeContext) -> Any:
        if failing["body"] and ctx.visit == 2:
            raise ValueError("body at iteration 2")
        return ctx.visit

    async def child(ctx: NodeContext) -> Any:
        if failing["child"]:
            raise ValueError("child broken")
        return "child ok"

    async def bad(ctx: NodeContext) -> Any:
        if failing["bad"]:
            raise ValueError("bad")
        return "fine"

    mapped = Flow("m").node("src", items).map("each", item).node("after", node("after"))
    mapped.edge("src", "each").edge("each", "after")
    looped = Flow("l").node("first", node("first")).node("body", body).node("end", node("end")).edge("first", "body")
    looped.loop("ctl", start="body", end="body", condition="iteration < 4").edge("ctl", "end")
    parent = Flow("p").subflow("s", "c").node("z", node("z")).edge("s", "z")
    waits = Flow("w").node("a", node("a")).wait("gate").node("bad", bad).edge("a", "gate").edge("a", "bad")
    async with FlowRuntime(flows=[mapped, looped, Flow("c").node("k", child), parent, waits]) as rt:
        results = {}
        for blueprint, key in (("m", "item"), ("l", "body"), ("p", "child"), ("w", "bad")):
            failed = await rt.run(blueprint, 0, timeout=10)
            assert failed.status == "failed", blueprint
            failing[key] = False
            await rt.client.retry(failed.run_id)
            results[blueprint] = await rt.wait(failed.run_id, timeout=10)
        await rt.resume(results["w"].run_id, output="go")
        waited = await rt.wait(results["w"].run_id, timeout=10)
    assert results["m"].outputs["each"] == [10, 20, 30] and results["m"].status == "completed"
    body_visits = [v.visit for v in results["l"].timeline if v.node_id == "body"]
    assert body_visits == [0, 1, 2, 1_000_000, 1_000_001, 1_000_002, 1_000_003]
    assert results["l"].status == "completed"
    assert results["p"].status == "completed" and results["p"].outputs["s"] == "child ok"
    assert results["w"].status == "awaiting" and waited.status == "completed"
    assert waited.outputs["bad"] == "fine" and waited.outputs["gate"] == "go"


async def test_concurrent_retries_have_one_winner(sqlite: Backend) -> None:
    broken.add("d")
    async with FlowRuntime(flows=[diamond()], backend=sqlite) as rt:
        failed = await rt.run("diamond", 3, timeout=10)
        broken.clear()
        outcomes = await asyncio.gather(*(rt.client.retry(failed.run_id, from_node="d") for _ in range(3)),
                                        return_exceptions=True)
        result = await rt.wait(failed.run_id, timeout=10)
        await asyncio.sleep(0.2)  # a duplicate would run now
    assert sorted(type(o).__name__ for o in outcomes) == ["InvalidStateError", "InvalidStateError", "int"]
    assert result.status == "completed" and calls["d"] == 2 and calls["e"] == 1
