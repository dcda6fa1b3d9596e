"""The Azure Storage Queue and Cosmos DB stores of flowcraft-azure against real servers (Azurite,
@vercel/cosmosdb-server, Redis; no mocks): setup, the message encoding other tools read, dead letters with
their reason (malformed messages, poison messages), visibility (extend, release), size limits, encoded item
ids, no lost context updates, status compare-and-set, bad configuration, a backend mixing components, and
the seed-style API (``AzureQueueAdapter``, ``create_azure_reconciler``) on explicit clients."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from test_azure_support import azure_names, azure_options  # noqa: F401  # fixtures

from flowcraft import App, Flow, NodeContext
from flowcraft.errors import ConfigError, StoreLimitError
from flowcraft.plugins import registry
from flowcraft.spi import Backend, Job, RunRecord
from flowcraft.testing import InProcessWorkers
from flowcraft_azure import (
    AzureQueueAdapter,
    ItemTooLargeError,
    MessageTooLargeError,
    RedisCoordinationStore,
    create_azure_reconciler,
)

CLI = str(Path(sys.executable).with_name("flowcraft"))


@pytest.fixture
def options(azure_options: dict[str, Any]) -> dict[str, Any]:  # noqa: F811
    return {**azure_options, "visibility_timeout": 2, "max_dequeue_count": 2}


@pytest_asyncio.fixture
async def backend(options: dict[str, Any]) -> AsyncIterator[Backend]:
    built = registry().build("azure", options)
    await built.setup()
    try:
        yield built
    finally:
        await built.close()


@pytest_asyncio.fixture
async def raw(options: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """The SDK's own clients on the same servers, to look behind the stores."""
    from azure.cosmos.aio import CosmosClient
    from azure.storage.queue.aio import QueueServiceClient

    service = QueueServiceClient.from_connection_string(options["azure_storage_connection_string"])
    cosmos = CosmosClient(options["cosmos_endpoint"], credential=options["cosmos_key"])
    async with service, cosmos:
        yield {"queue": service.get_queue_client(options["queue_name"]),
               "dlq": service.get_queue_client(options["queue_name"] + "-dlq"),
               "database": cosmos.get_database_client(options["cosmos_database"]), "cosmos": cosmos}


async def receive(backend: Backend, count: int, timeout: float = 10.0) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += await backend.queue.dequeue(count - len(got), 0.5)
    return got


# ============================================================================================== queue
async def test_setup_is_idempotent_and_creates_what_the_readme_says(backend: Backend, raw: dict[str, Any]) -> None:
    await backend.setup()  # a second time: nothing fails
    await raw["queue"].get_queue_properties()
    await raw["dlq"].get_queue_properties()
    for name in ("flowcraft-contexts", "flowcraft-statuses"):
        properties = await raw["database"].get_container_client(name).read()
        assert properties["partitionKey"]["paths"] == ["/runId"]
    statuses = await raw["database"].get_container_client("flowcraft-statuses").read()
    composite = statuses["indexingPolicy"]["compositeIndexes"]
    assert [p["path"] for p in composite[0]] == ["/status", "/lastUpdated", "/runId"]


async def test_messages_are_base64_json_that_other_tools_read(backend: Backend, raw: dict[str, Any],
                                                              options: dict[str, Any]) -> None:
    await backend.queue.enqueue([Job("r/1 ü", "bp", "n", input={"x": 1}, has_input=True)])
    (message,) = await raw["queue"].peek_messages()
    assert json.loads(base64.b64decode(message.content)) == {"run_id": "r/1 ü", "blueprint_id": "bp",
                                                             "node_id": "n", "input": {"x": 1}}
    # a producer that writes plain JSON (message_encoding=json) is read too
    plain = registry().build("azure", {**options, "message_encoding": "json"})
    try:
        await plain.queue.enqueue([Job("r2", "bp", "n")])
        got = await receive(backend, 2)
        assert sorted(d.job.run_id for d in got) == ["r/1 ü", "r2"]
        assert all(d.deliveries == 1 for d in got)
    finally:
        await plain.close()


async def test_malformed_message_goes_to_the_dead_letter_queue_with_its_reason(backend: Backend,
                                                                                raw: dict[str, Any]) -> None:
    await raw["queue"].send_message("not a job at all")
    await raw["queue"].send_message(base64.b64encode(b'{"no": "run id"}').decode())
    assert await receive(backend, 1, timeout=1.5) == []
    letters = await backend.queue.dead_letters()
    assert len(letters) == 2 and all(d.job is None for d in letters)
    reasons = [d.reason for d in letters]
    assert all(r.startswith("unreadable message ") for r in reasons)
    assert any("KeyError" in r for r in reasons) and any("neither JSON nor base64" in r for r in reasons)
    assert await raw["queue"].peek_messages() == []


async def test_a_poison_message_is_dead_lettered_after_max_dequeue_count(backend: Backend) -> None:
    """Received and never acked (its worker died) more than max_dequeue_count (2) times: dead letter.
    Releases (sleeps, backoff) do not count towards it."""
    await backend.queue.enqueue([Job("poison", "bp", "n")])
    (first,) = await receive(backend, 1)
    await backend.queue.release(first)  # a release: the count starts again
    for expected in (2, 3):
        (delivery,) = await receive(backend, 1)
        assert delivery.deliveries == expected
        await backend.queue.extend(delivery, 1)  # then "dies": visible again after 1 s
    assert await receive(backend, 1, timeout=3) == []
    (letter,) = await backend.queue.dead_letters()
    assert letter.job is not None and letter.job.run_id == "poison"
    assert "received 3 times without being handled (max_dequeue_count=2)" in letter.reason


async def test_extend_keeps_a_message_invisible_and_ack_after_extend_deletes_it(backend: Backend,
                                                                                raw: dict[str, Any]) -> None:
    await backend.queue.enqueue([Job("ext", "bp", "n")])
    (delivery,) = await receive(backend, 1)
    await backend.queue.extend(delivery, 4)
    await asyncio.sleep(2.5)  # past the 2 s visibility timeout
    assert await backend.queue.dequeue(1, 0) == []
    await backend.queue.ack(delivery)  # with the pop receipt extend got
    await asyncio.sleep(1.6)
    assert await raw["queue"].peek_messages() == []


async def test_a_late_delivery_cannot_delete_or_move_its_message_once_received_again(backend: Backend) -> None:
    """What a queue server stalled past the visibility timeout leads to (Azurite in memory, README): the
    message is received again with a new pop receipt; the first delivery's late extend, release and ack are
    no-ops (PopReceiptMismatch), so the message stays with its second receiver, whose ack deletes it."""
    await backend.queue.enqueue([Job("twice", "bp", "n")])
    (first,) = await receive(backend, 1)
    await asyncio.sleep(2.2)  # past the 2 s visibility timeout
    (second,) = await receive(backend, 1, timeout=5)
    assert second.job == first.job and (first.deliveries, second.deliveries) == (1, 2)
    await backend.queue.extend(first, 30)
    await backend.queue.release(first, 0)
    await backend.queue.ack(first)
    assert await backend.queue.dequeue(1, 0) == []  # still hidden for the second receiver
    assert await backend.queue.depth() == 1
    await backend.queue.ack(second)
    assert await backend.queue.depth() == 0


async def test_release_with_delay_and_enqueue_with_delay(backend: Backend) -> None:
    await backend.queue.enqueue([Job("later", "bp", "n")], delay=1.5)
    assert await backend.queue.dequeue(1, 0.5) == []
    (delivery,) = await receive(backend, 1, timeout=5)
    await backend.queue.release(delivery, 1.0)
    assert await backend.queue.dequeue(1, 0.3) == []
    (again,) = await receive(backend, 1, timeout=5)
    assert again.job.run_id == "later" and again.deliveries == 2
    await backend.queue.ack(again)


async def test_a_job_over_64_kb_is_refused(backend: Backend) -> None:
    big = Job("big", "bp", "n", input="x" * 60_000, has_input=True)  # 80 KB in base64
    with pytest.raises(MessageTooLargeError, match="at most 64 KB"):
        await backend.queue.enqueue([big])
    assert issubclass(MessageTooLargeError, StoreLimitError)


async def test_a_sleep_longer_than_one_delay_hop_is_chained(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """A visibility delay lasts at most 7 days; longer sleeps hop (the engine releases an early job again).
    Here one hop is capped at 1 s, so a 3 s sleep takes several hops and still wakes on time."""
    import flowcraft_azure.queue as azure_queue

    monkeypatch.setattr(azure_queue, "MAX_DELAY_SECONDS", 1)
    flow = Flow("sleepy", version="1")
    flow.node("s", _value).sleep("nap", 3.0).node("woke", _value).edge("s", "nap").edge("nap", "woke")
    async with InProcessWorkers(backend, count=1, app=App(flows=[flow])) as w:
        started = time.monotonic()
        result = await w.run("sleepy", timeout=30)
    assert result.status == "completed", result.errors
    assert 2.9 <= time.monotonic() - started < 20


async def test_an_output_too_large_for_a_cosmos_item_fails_the_run_with_the_reason(backend: Backend) -> None:
    async def huge(ctx: NodeContext) -> str:
        return "x" * (2 * 1024 * 1024 + 10)

    flow = Flow("oversized", version="1")
    flow.node("s", _value).node("huge", huge).node("never", _value).edge("s", "huge").edge("huge", "never")
    async with InProcessWorkers(backend, count=1, app=App(flows=[flow])) as w:
        result = await w.run("oversized", timeout=30)
    assert result.status == "failed"
    assert "a Cosmos DB item holds at most 2048 KB" in result.errors[0]["message"]
    assert result.errors[0]["node_id"] == "huge"
    letters = [d for d in await backend.queue.dead_letters() if d.job is not None and d.job.run_id == result.run_id]
    assert [d.job.node_id for d in letters if d.job] == ["huge"] and "2048 KB" in letters[0].reason


async def _value(ctx: NodeContext) -> Any:
    return ctx.node_id


# ============================================================================================== Cosmos
async def test_context_keys_and_run_ids_cosmos_forbids_in_ids(backend: Backend) -> None:
    run = "run/with\\odd?chars#ü " + "x" * 300
    keys = {"a/b": 1, "c\\d": [2], "e?f": {"g": None}, "h#i": "ü", "k" * 400: True, " padded ": None}
    await backend.context.apply(run, keys)
    assert await backend.context.get_all(run) == keys
    assert await backend.context.get_many(run, ["a/b", "missing", "k" * 400]) == {"a/b": 1, "k" * 400: True}
    await backend.context.apply(run, {}, ["a/b"])
    assert "a/b" not in await backend.context.get_all(run)
    await backend.context.delete_run(run)
    assert await backend.context.get_all(run) == {}
    record = RunRecord(run, "bp/1")
    assert await backend.status.create(record)
    got = await backend.status.get(run)
    assert got is not None and got.run_id == run and got.blueprint_id == "bp/1"


async def test_no_lost_update_under_concurrent_writers(options: dict[str, Any], backend: Backend) -> None:
    others = [registry().build("azure", options) for _ in range(3)]
    try:
        await asyncio.gather(*(store.context.apply("busy", {f"k{w}-{i}": i for i in range(10)})
                               for w, store in enumerate([backend, *others])))
    finally:
        for other in others:
            await other.close()
    assert len(await backend.context.get_all("busy")) == 40


async def test_a_value_over_2_mb_is_refused(backend: Backend) -> None:
    with pytest.raises(ItemTooLargeError, match="a Cosmos DB item holds at most 2048 KB"):
        await backend.context.apply("huge", {"v": "x" * (2 * 1024 * 1024)})


async def test_status_compare_and_set_has_one_winner(backend: Backend, options: dict[str, Any]) -> None:
    await backend.status.create(RunRecord("cas", "bp"))
    others = [registry().build("azure", options) for _ in range(4)]
    try:
        results = await asyncio.gather(*(b.status.transition("cas", ["running"], status, {"errors": [{"by": status}]})
                                         for b, status in zip([backend, *others], ["completed", "failed", "cancelled",
                                                                                   "completed", "failed"],
                                                              strict=True)))
    finally:
        for other in others:
            await other.close()
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    final = await backend.status.get("cas")
    assert final is not None and final.status == winners[0].status and final.errors == winners[0].errors


async def test_a_transition_from_a_remembered_record_that_went_stale(backend: Backend,
                                                                      options: dict[str, Any]) -> None:
    """A store starts a transition from the record it last read (no read first); another writer's change since
    makes it fail the etag check or read again, never win on the old status or lose on it."""
    await backend.status.create(RunRecord("stale", "bp"))
    assert (await backend.status.get("stale")) is not None  # remembered: status running
    other = registry().build("azure", options)
    try:
        assert await other.status.transition("stale", ["running"], "awaiting", {"awaiting": [{"node_id": "n"}]})
        # remembered "running" is stale: the replace fails (412), the record is read again, awaiting does not allow it
        assert await backend.status.transition("stale", ["running"], "completed", {}) is None
        assert await other.status.transition("stale", ["awaiting"], "running", {"awaiting": []})
        # remembered "awaiting" (read above) forbids the transition: read again before refusing, then win
        won = await backend.status.transition("stale", ["running"], "completed", {})
        assert won is not None and won.status == "completed"
    finally:
        await other.close()
    final = await backend.status.get("stale")
    assert final is not None and final.status == "completed" and final.awaiting == []


async def test_context_writes_of_one_step_with_deletes_of_missing_keys(backend: Backend) -> None:
    await backend.context.apply("steps", {"a": 1, "b": {"x": [1, 2]}, "c": "three"})
    await backend.context.apply("steps", {"a": 2, "d": None}, deletes=["c", "never-written"])
    assert await backend.context.get_all("steps") == {"a": 2, "b": {"x": [1, 2]}, "d": None}
    assert getattr(backend.context, "batches", None) is True  # the emulator took the batches, no fallback


# ============================================================================================== config
def test_a_bad_connection_string_is_one_clear_line(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="azure_storage_connection_string") as caught:
        registry().build("azure", {**options, "azure_storage_connection_string": "nonsense;AccountKey=s3cret"})
    assert "\n" not in str(caught.value) and "s3cret" not in str(caught.value)
    with pytest.raises(ConfigError, match="queue_name"):
        registry().build("azure", {**options, "queue_name": "Bad_Name"})
    with pytest.raises(ConfigError, match="message_encoding"):
        registry().build("azure", {**options, "message_encoding": "xml"})


def test_flowcraft_setup_cli_masks_secrets(options: dict[str, Any]) -> None:
    env = {**os.environ, **{f"FLOWCRAFT_OPT_{k.upper()}": str(v) for k, v in options.items()}}
    done = subprocess.run([CLI, "setup", "--backend", "azure"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    shown = subprocess.run([CLI, "config", "--backend", "azure"], env=env,
                           capture_output=True, text=True, timeout=60)
    key = options["cosmos_key"]
    account_key = options["azure_storage_connection_string"].split("AccountKey=")[1].split(";")[0]
    for output in (done.stdout + done.stderr, shown.stdout + shown.stderr):
        assert key not in output and account_key not in output


async def test_components_are_selectable_alone(options: dict[str, Any]) -> None:
    """The azure queue with Redis context and status (each component built on its own)."""
    mixed = registry().build("azure", options, overrides={"context": "redis", "status": "redis"})
    await mixed.setup()
    try:
        assert type(mixed.context).__name__ == "RedisContext"
        async with InProcessWorkers(mixed) as w:
            result = await w.run("contract-diamond", {"value": 1})
        assert result.status == "completed", result.errors
    finally:
        await mixed.close()


# ============================================================================================== seed-style API
def _flows() -> list[Flow]:
    async def value(ctx: NodeContext) -> Any:
        return ctx.node_id

    async def joined(ctx: NodeContext) -> Any:
        return {"got": ctx.input}

    diamond = Flow("diamond", version="1")
    diamond.node("a", value).node("b", value).node("c", value).node("d", joined)
    diamond.edge("a", "b").edge("a", "c").edge("b", "d").edge("c", "d")
    return [diamond]


async def test_azure_queue_adapter_and_reconciler(raw: dict[str, Any], options: dict[str, Any]) -> None:
    from flowcraft_redis import make_client

    store = RedisCoordinationStore(make_client(options["redis_url"]), key_prefix=options["key_prefix"])
    adapter = AzureQueueAdapter(runtime_options={"flows": _flows()}, queue_client=raw["queue"],
                                cosmos_client=raw["cosmos"], cosmos_database_name=options["cosmos_database"],
                                context_container_name="ctx", status_container_name="st",
                                coordination_store=store, poll_wait=0.2)
    await adapter.setup()
    lost = adapter.engine.queue.enqueue

    async def drop(jobs: Any, delay: float = 0.0) -> None:
        return None

    adapter.engine.queue.enqueue = drop  # type: ignore[method-assign]
    stalled_id = await adapter.client.start("diamond")  # its start message is lost
    adapter.engine.queue.enqueue = lost  # type: ignore[method-assign]
    await adapter.start()
    try:
        healthy = await adapter.client.run("diamond", timeout=30)
        assert healthy.status == "completed" and healthy.outputs["d"] == {"got": {"b": "b", "c": "c"}}
        await asyncio.sleep(1.2)
        reconciler = create_azure_reconciler(adapter=adapter, cosmos_client=raw["cosmos"],
                                             cosmos_database_name=options["cosmos_database"],
                                             status_container_name="st", stalled_threshold_seconds=1)
        stats = await reconciler.run()
        assert stats.stalled_runs == 1 and stats.reconciled_runs == 1 and stats.failed_runs == 0
        assert stats.requeued_jobs == 1 and stats.to_dict()["stalled_runs"] == 1
        resumed = await adapter.client.wait(stalled_id, 30)
        assert resumed.status == "completed", resumed.errors
        assert (await reconciler.run()).stalled_runs == 0
    finally:
        await adapter.stop()
        await store.close()
