"""Against real servers (the repository's server fixtures): what the queue and the status store send in one
event-loop iteration — acks coalesced into ``basic.ack(multiple=True)`` only over settled delivery tags, status
creates in one statement — and that each caller still gets its own outcome."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from test_rabbitmq_components import _LostReply, backend  # noqa: F401  # fixture backend
from test_rabbitmq_support import rabbitmq_options_fixture, unique_names  # noqa: F401  # fixture rabbitmq_options

from flowcraft.spi import Backend, Job, RunRecord
from flowcraft_rabbitmq import PgClient, PostgresContext, PostgresStatusStore, RabbitMqQueue


@pytest.mark.asyncio
async def test_acks_of_one_iteration_go_out_as_one_multiple_ack_only_over_settled_tags(
        backend: Backend) -> None:  # noqa: F811  # the imported fixture
    """Acks asked for in one event-loop iteration: those below the lowest delivery still unsettled become one
    ``basic.ack(multiple=True)``; one above it is acked alone, and a nack sent in between is not swallowed by
    a later multiple ack (its job comes back, the acked ones never do)."""
    queue = backend.queue
    assert isinstance(queue, RabbitMqQueue)
    await queue.enqueue([Job(f"r{i}", "bp", "n") for i in range(6)])
    got: list[Any] = []
    for _ in range(40):
        got += await queue.dequeue(6 - len(got), 0.5)
        if len(got) == 6:
            break
    by_run = {d.job.run_id: d for d in got}
    assert sorted(by_run) == [f"r{i}" for i in range(6)]
    tags = [d.receipt.tag for d in got]
    assert tags == sorted(tags)
    frames = queue.settle_frames
    await asyncio.gather(*(queue.ack(got[i]) for i in (0, 1, 2, 4)))  # got[3] still held
    await asyncio.sleep(0.05)
    assert queue.settle_frames - frames == 2  # ack(tag of got[2], multiple) + ack(tag of got[4])
    frames = queue.settle_frames
    await asyncio.gather(queue.release(got[3]), queue.ack(got[5]))  # nack(requeue) first, then an ack
    await asyncio.sleep(0.05)
    assert queue.settle_frames - frames == 2
    again: list[Any] = []
    for _ in range(20):
        again += await queue.dequeue(6, 0.3)
        if again:
            break
    await asyncio.sleep(0.5)
    again += await queue.dequeue(6, 0.3)
    assert [d.job.run_id for d in again] == [got[3].job.run_id]  # only the released job comes back
    await queue.ack(again[0])


class _CountingClient(PgClient):
    """Counts the statements sent (each ``run``)."""

    statements = 0

    async def run(self, fn: Any) -> Any:
        self.statements += 1
        return await super().run(fn)


@pytest.mark.asyncio
async def test_creates_of_one_iteration_are_one_statement_and_each_learns_its_own_outcome(postgres_url: str) -> None:
    names = unique_names()
    client = _CountingClient(postgres_url)
    status = PostgresStatusStore(client, names["status_table"])
    lost = PostgresStatusStore(_LostReply(postgres_url), names["status_table"])
    try:
        await status.setup()
        assert await status.create(RunRecord("old", "bp"))
        client.statements = 0
        records = [RunRecord(run_id, "bp", input={"q": run_id}) for run_id in ('a"1', "b\\2", "c,3", "old")]
        twins = [RunRecord("twin", "bp", input=1), RunRecord("twin", "bp", input=2)]
        outcomes = await asyncio.gather(*(status.create(record) for record in [*records, *twins]))
        assert outcomes[:4] == [True, True, True, False]  # "old" existed
        assert sorted(outcomes[4:]) == [False, True]  # of the same run id exactly one wins
        assert client.statements == 2  # the four distinct ones and one twin, then the other twin
        for record in records[:3]:
            found = await status.get(record.run_id)
            assert found is not None and found.input == record.input and found.updated_at == record.updated_at
        twin = await status.get("twin")
        assert twin is not None and twin.input == (1 if outcomes[4] else 2)
        # a batch whose reply was lost (the server restarted) and that is sent again still reports its wins
        again = await asyncio.gather(*(lost.create(RunRecord(f"l{i}", "bp")) for i in range(3)),
                                     lost.create(RunRecord("old", "bp")))
        assert again == [True, True, True, False]
    finally:
        await client.close()
        await lost.close()


@pytest.mark.asyncio
async def test_reads_of_one_iteration_are_one_statement_and_each_gets_its_own_keys(postgres_url: str) -> None:
    names = unique_names()
    client = _CountingClient(postgres_url)
    context = PostgresContext(client, names["context_table"])
    try:
        await context.setup()
        for run_id in ("a", "b", 'c"'):
            await context.apply(run_id, {"k1": f"{run_id}1", "k2": f"{run_id}2", "k3": None})
        client.statements = 0
        got = await asyncio.gather(context.get_many("a", ["k1"]), context.get_many("b", ["k2", "k3", "none"]),
                                   context.get_many('c"', ["k1", "k2"]), context.get_many("missing", ["k1"]))
        assert got == [{"k1": "a1"}, {"k2": "b2", "k3": None}, {"k1": 'c"1', "k2": 'c"2'}, {}]
        assert client.statements == 1
        assert await context.get_many("a", ["k2", "k1"]) == {"k2": "a2", "k1": "a1"}  # alone: the one-run statement
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_status_gets_of_one_iteration_are_one_statement_and_each_gets_its_own_record(
        postgres_url: str) -> None:
    """The engine reads the record of each job a commit handed over (``get``): the reads of one event-loop
    iteration are one statement, each caller gets a record of its own (the same run twice: two objects), a
    missing run is None, and a failed statement fails every read that joined it."""
    names = unique_names()
    client = _CountingClient(postgres_url)
    status = PostgresStatusStore(client, names["status_table"])
    try:
        await status.setup()
        for run_id in ("a", 'b"', "c,"):
            assert await status.create(RunRecord(run_id, "bp", input={"q": run_id}))
        client.statements = 0
        got = await asyncio.gather(status.get("a"), status.get('b"'), status.get("missing"), status.get("a"),
                                   status.get("c,"))
        assert [None if r is None else (r.run_id, r.input) for r in got] == [
            ("a", {"q": "a"}), ('b"', {"q": 'b"'}), None, ("a", {"q": "a"}), ("c,", {"q": "c,"})]
        assert got[0] is not got[3] and client.statements == 1
        alone = await status.get("c,")  # alone: the one-run statement
        assert alone is not None and alone.input == {"q": "c,"} and client.statements == 2
        run = client.run

        async def refuse(fn: Any) -> Any:
            raise ConnectionError("server gone")

        client.run = refuse  # type: ignore[method-assign]
        failed = await asyncio.gather(status.get("a"), status.get('b"'), return_exceptions=True)
        assert [type(error) for error in failed] == [ConnectionError, ConnectionError]
        client.run = run  # type: ignore[method-assign]
        assert await status.get("a") is not None
    finally:
        await client.close()
