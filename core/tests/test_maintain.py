"""Dead letters visible and replayable, retry from a node, retention (issue 18, items 3-5): through the client
and the real `flowcraft` command (click's runner on ``flowcraft.cli.cli``) on the sqlite backend."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from flowcraft import App, Flow, FlowRuntime, NodeContext
from flowcraft.cli import cli
from flowcraft.client import Client
from flowcraft.engine.core import Engine, EngineOptions
from flowcraft.errors import UnsupportedError
from flowcraft.plugins import registry
from flowcraft.spi import Backend, Job

FLAG: dict[str, bool] = {"broken": True}


async def first(ctx: NodeContext) -> Any:
    return {"n": ctx.input}


async def second(ctx: NodeContext) -> Any:
    if FLAG["broken"]:
        raise ValueError("second is broken")
    return {"got": ctx.input}


def chain() -> Flow:
    return Flow("chain").node("first", first).node("second", second).edge("first", "second")


def invoke(tmp_path: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "--backend", "sqlite", "-o", f"path={tmp_path / 'runs.db'}"],
                              catch_exceptions=False)


def backend_at(tmp_path: Path) -> Backend:
    return registry().build("sqlite", {"path": str(tmp_path / "runs.db")})


async def dead_letter_a_job(tmp_path: Path) -> str:
    """A run whose first job is dead-lettered: the only worker does not load its blueprint."""
    backend = backend_at(tmp_path)
    await backend.setup()
    async with Client(backend, App(flows=[chain()])) as client:
        run_id = await client.start("chain", 1)
        worker = Engine(App(), backend, options=EngineOptions(max_bounces=1))
        (delivery,) = await backend.queue.dequeue(1, 1.0)
        await worker.handle(delivery)
    return run_id


def test_dead_letters_listed_flagged_replayed_and_purged(tmp_path: Path) -> None:
    FLAG["broken"] = False
    run_id = asyncio.run(dead_letter_a_job(tmp_path))

    listed = json.loads(invoke(tmp_path, "dead-letters", "--json").output)
    assert len(listed) == 1 and listed[0]["job"]["run_id"] == run_id and listed[0]["id"]
    assert "is not loaded by this worker" in listed[0]["reason"]
    table = invoke(tmp_path, "dead-letters")
    assert run_id in table.output and "first" in table.output

    async def status() -> Any:
        async with Client(backend_at(tmp_path), App(flows=[chain()])) as client:
            return await client.status(run_id)

    flagged = asyncio.run(status())
    assert flagged.status == "running" and flagged.dead_letters[0]["node_id"] == "first"
    assert "replay" in flagged.dead_letters[0]["reason"] and not any("_dead_letter" in k for k in flagged.context)

    shown = json.loads(invoke(tmp_path, "status", run_id, "--json").output)
    assert shown["status"] == "running" and shown["dead_letters"][0]["node_id"] == "first"
    assert "dead letter" in invoke(tmp_path, "status", run_id).output
    missing = invoke(tmp_path, "dead-letters", "--replay", "999999")
    assert missing.exit_code != 0 and "no dead letter with id '999999'" in missing.output
    replayed = invoke(tmp_path, "dead-letters", "--replay", listed[0]["id"])
    assert replayed.exit_code == 0 and "replayed 1 dead letter(s)" in replayed.output
    assert json.loads(invoke(tmp_path, "dead-letters", "--json").output) == []

    async def finish() -> Any:  # a worker that has the blueprint now runs the replayed job
        async with FlowRuntime(flows=[chain()], backend=backend_at(tmp_path)) as rt:
            return await rt.wait(run_id, timeout=10)

    result = asyncio.run(finish())
    assert result.status == "completed" and result.output == {"got": {"n": 1}} and result.dead_letters == []

    asyncio.run(dead_letter_a_job(tmp_path))
    assert invoke(tmp_path, "dead-letters", "--purge").output.strip() == "purged 1 dead letter(s)"
    assert "no dead letters" in invoke(tmp_path, "dead-letters").output
    assert invoke(tmp_path, "dead-letters", "--all", "--purge").exit_code == 2  # one action at a time


async def test_a_queue_without_removal_says_so(sqlite: Backend) -> None:
    from flowcraft.backends.memory import MemoryQueue
    from flowcraft.spi import Queue

    class Plain(MemoryQueue):
        delete_dead_letters = Queue.delete_dead_letters  # type: ignore[assignment]

    queue = Plain()
    await queue.enqueue([Job("r", "b", "n")])
    (delivery,) = await queue.dequeue(1, 0.1)
    await queue.dead_letter(delivery, "why")
    assert not queue.manages_dead_letters and MemoryQueue().manages_dead_letters
    with pytest.raises(UnsupportedError, match="cannot remove dead letters"):
        await queue.replay_dead_letters()
    assert len(await queue.dead_letters()) == 1  # nothing was enqueued nor lost


def test_retry_from_a_node_through_the_cli(tmp_path: Path) -> None:
    FLAG["broken"] = True

    async def fail() -> str:
        async with FlowRuntime(flows=[chain()], backend=backend_at(tmp_path)) as rt:
            return (await rt.run("chain", 5, timeout=10)).run_id

    run_id = asyncio.run(fail())
    bad = invoke(tmp_path, "retry", run_id, "--from", "nope", "--app", f"{__name__}:APP")
    assert bad.exit_code != 0 and "has no node 'nope'" in bad.output
    FLAG["broken"] = False
    done = invoke(tmp_path, "retry", run_id, "--from", "second", "--app", f"{__name__}:APP")
    assert done.exit_code == 0, done.output
    assert "retried run" in done.output

    async def finish() -> Any:
        async with FlowRuntime(flows=[chain()], backend=backend_at(tmp_path)) as rt:
            return await rt.wait(run_id, timeout=10)

    result = asyncio.run(finish())
    assert result.status == "completed" and result.output == {"got": {"n": 5}}
    assert [v.state for v in result.timeline if v.node_id == "second"] == ["failed", "done"]
    assert [v.generation for v in result.timeline if v.node_id == "second"] == [0, 1]
    assert "(retry 1)" in invoke(tmp_path, "status", run_id).output
    again = invoke(tmp_path, "retry", run_id, "--app", f"{__name__}:APP")
    assert again.exit_code != 0 and "only failed runs can be retried" in again.output


APP = App(flows=[chain()])


def test_purge_and_retention(tmp_path: Path) -> None:
    FLAG["broken"] = False

    async def runs() -> list[str]:
        async with FlowRuntime(flows=[chain()], backend=backend_at(tmp_path)) as rt:
            return [(await rt.run("chain", n, timeout=10)).run_id for n in range(3)]

    run_ids = asyncio.run(runs())
    assert "deleted 0 of 3" in invoke(tmp_path, "purge", "--older-than", "1h").output
    time.sleep(1.1)
    dry = json.loads(invoke(tmp_path, "purge", "--older-than", "1s", "--dry-run", "--json").output)
    assert sorted(dry["run_ids"]) == sorted(run_ids) and dry["dry_run"] is True
    assert "deleted 0 of 0" in invoke(tmp_path, "purge", "--older-than", "1s", "--status", "failed").output
    assert invoke(tmp_path, "purge", "--older-than", "soon").exit_code == 2

    async def purge_one_by_retention() -> tuple[Any, Any, list[str]]:
        backend = backend_at(tmp_path)
        async with Client(backend, APP) as client:
            stats = await client.reconcile(retention={"completed": 1.0})
            left = await client.runs()
            context = await backend.context.get_all(run_ids[0])
            return stats, left, list(context)

    stats, (left, _), context = asyncio.run(purge_one_by_retention())
    assert stats.purged_runs == 3 and left == [] and context == []
    assert invoke(tmp_path, "purge", "--older-than", "1s").output.startswith("deleted 0 of 0")


def test_retention_setting_applied_by_flowcraft_reconcile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FLAG["broken"] = True

    async def fail_one() -> str:
        async with FlowRuntime(flows=[chain()], backend=backend_at(tmp_path)) as rt:
            return (await rt.run("chain", 0, timeout=10)).run_id

    run_id = asyncio.run(fail_one())
    monkeypatch.setenv("FLOWCRAFT_RETENTION", "1h")
    assert invoke(tmp_path, "reconcile").output.strip().endswith("purged_runs=0")
    monkeypatch.setenv("FLOWCRAFT_RETENTION", "not an age")
    bad = invoke(tmp_path, "reconcile")
    assert bad.exit_code != 0 and "retention" in bad.output and "cannot read" in bad.output
    time.sleep(0.05)
    (tmp_path / "flowcraft.toml").write_text('[retention]\nfailed = "10ms"\n', encoding="utf-8")
    monkeypatch.delenv("FLOWCRAFT_RETENTION")
    monkeypatch.chdir(tmp_path)
    assert invoke(tmp_path, "reconcile").output.strip().endswith("purged_runs=1")

    async def gone() -> Any:
        backend = backend_at(tmp_path)
        async with Client(backend, APP):
            return await backend.status.get(run_id)

    assert asyncio.run(gone()) is None


def test_the_cli_says_when_a_queue_cannot_remove_dead_letters(monkeypatch: pytest.MonkeyPatch) -> None:
    from flowcraft.backends.memory import MemoryQueue
    from flowcraft.spi import Queue

    monkeypatch.setattr(MemoryQueue, "delete_dead_letters", Queue.delete_dead_letters)
    for args in (["--all"], ["--purge"], ["--replay", "1"]):
        result = CliRunner().invoke(cli, ["dead-letters", *args, "--backend", "memory"])
        assert result.exit_code == 1 and "cannot remove dead letters" in result.output, result.output
        assert len(result.output.strip().splitlines()) <= 2  # one line, and its hint
    assert "no dead letters" in CliRunner().invoke(cli, ["dead-letters", "--backend", "memory"]).output
