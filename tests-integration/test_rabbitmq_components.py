"""The ``rabbitmq`` backend against real servers beyond the contract suite: provisioning is idempotent, bad
input is dead-lettered or refused with its reason, wrong credentials are one clear line, a PostgreSQL restart
mid-run loses nothing (the broker restart is in test_rabbitmq_chaos.py), the seed-style API, and the PostgreSQL
stores under the rq queue."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import psycopg
import pytest
import pytest_asyncio
from click.testing import CliRunner
from psycopg_pool import AsyncConnectionPool
from test_rabbitmq_support import rabbitmq_options_fixture, unique_names  # noqa: F401  # fixture rabbitmq_options

from flowcraft import App, Flow, NodeContext
from flowcraft.cli import cli
from flowcraft.errors import ConfigError, ServerUnreachableError, StoreLimitError
from flowcraft.plugins import registry
from flowcraft.spi import Backend, Job, RunRecord
from flowcraft.testing import InProcessWorkers
from flowcraft_rabbitmq import PgClient, PostgresStatusStore, RabbitMqAdapter, RabbitMqQueue, create_rabbitmq_reconciler
from flowcraft_redis import RedisCoordinationStore, make_client
from servers import PostgresServer

OUTPUTS = {"n0": 1, "n1": 2, "n2": 3, "n3": 4}


async def step(ctx: NodeContext) -> Any:
    await asyncio.sleep(float(ctx.params.get("sleep", 0)))
    return (ctx.input or 0) + 1 if isinstance(ctx.input, int) else 1


async def nul(ctx: NodeContext) -> str:
    return "a\u0000b"


def app() -> App:
    chain = Flow("chain4", version="1")
    for i in range(4):
        chain.node(f"n{i}", step, params={"sleep": 0.2})
        if i:
            chain.edge(f"n{i - 1}", f"n{i}")
    bad = Flow("nul", version="1")
    bad.node("x", nul)
    return App(flows=[chain, bad])


@pytest_asyncio.fixture
async def backend(rabbitmq_options: dict[str, Any]) -> AsyncIterator[Backend]:
    built = registry().build("rabbitmq", {**rabbitmq_options, "visibility_timeout": 5})
    await built.setup()
    try:
        yield built
    finally:
        await built.close()


async def _run_chains(backend: Backend, runs: int, disrupt: Any) -> None:
    """Start ``runs`` chain4 runs, call ``disrupt()`` (in a thread) while they run, and check every result."""
    async with InProcessWorkers(backend, count=2, concurrency=8, app=app()) as workers:
        run_ids = [await workers.client.start("chain4", None) for _ in range(runs)]
        await asyncio.sleep(0.5)
        await asyncio.to_thread(disrupt)
        results = await asyncio.gather(*(workers.client.wait(run_id, timeout=120) for run_id in run_ids))
    assert [(r.status, r.outputs) for r in results] == [("completed", OUTPUTS)] * runs


# ------------------------------------------------------------------------------------------ provisioning
@pytest.mark.asyncio
async def test_setup_is_idempotent_and_declares_everything(backend: Backend, rabbitmq_options: dict[str, Any],
                                                           postgres_url: str) -> None:
    await backend.setup()  # a second time changes nothing and raises nothing
    queue = backend.queue
    assert isinstance(queue, RabbitMqQueue)
    connection = await aio_pika.connect(rabbitmq_options["amqp_url"])
    try:
        channel = await connection.channel()
        names = [queue.queue_name, queue.dead_letter_queue] + [f"{queue.queue_name}.delay.{10 * 2 ** k}"
                                                                for k in range(24)]
        for name in names:
            await channel.declare_queue(name, passive=True)  # raises when missing
    finally:
        await connection.close()
    async with await psycopg.AsyncConnection.connect(postgres_url) as conn:
        cursor = await conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = %s",
                                    [rabbitmq_options["status_table"]])
        indexes = [row[0] for row in await cursor.fetchall()]
    assert any("(status, updated_at, run_id)" in index for index in indexes)
    # other settings on an existing queue: one clear ConfigError, not a closed channel
    other = registry().build("rabbitmq", {**rabbitmq_options, "delivery_limit": 3})
    try:
        with pytest.raises(ConfigError, match="exists on the broker with other settings"):
            await other.queue.setup()
    finally:
        await other.close()


def test_cli_setup_and_a_wrong_password_is_one_line(rabbitmq_options: dict[str, Any]) -> None:
    options = {**rabbitmq_options, **unique_names()}
    args = ["setup", "--backend", "rabbitmq"]
    for key in ("amqp_url", "postgres_dsn", "redis_url", "queue_name", "context_table", "status_table", "key_prefix"):
        args += ["-o", f"{key}={options[key]}"]
    env = {"NO_COLOR": "1", "COLUMNS": "200"}
    done = CliRunner().invoke(cli, args, env=env)
    assert done.exit_code == 0, done.output
    assert "backend rabbitmq is set up" in done.stdout  # a second setup: test_setup_is_idempotent...
    wrong = options["amqp_url"].replace("guest:guest@", "guest:s3cret-pw@")
    args[args.index(f"amqp_url={options['amqp_url']}")] = f"amqp_url={wrong}"
    done = CliRunner().invoke(cli, args, env=env)
    assert done.exit_code != 0
    assert "s3cret-pw" not in done.output
    assert "Traceback" not in done.output and "refused the login" in done.stderr
    assert len([line for line in done.stderr.splitlines() if line.strip()]) <= 2  # the error and its hint


@pytest.mark.asyncio
async def test_unreachable_servers_are_one_line_with_the_password_masked(rabbitmq_options: dict[str, Any]) -> None:
    queue = RabbitMqQueue("amqp://guest:s3cret@127.0.0.1:1/", queue_name="x", connect_timeout=2)
    with pytest.raises(ServerUnreachableError) as caught:
        await queue.enqueue([Job("r", "bp", "n")])
    assert "s3cret" not in str(caught.value) and "\n" not in caught.value.args[0]
    built = registry().build("rabbitmq", {**rabbitmq_options,
                                          "postgres_dsn": "postgresql://flowcraft:s3cret@127.0.0.1:1/flowcraft",
                                          "connect_timeout": 2})
    try:
        with pytest.raises(ServerUnreachableError) as pg_caught:
            await built.status.get("r")
    finally:
        await built.close()
    assert "s3cret" not in str(pg_caught.value) and "127.0.0.1:1" in str(pg_caught.value)


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.asyncio
async def test_a_malformed_message_is_dead_lettered_with_its_reason(backend: Backend,
                                                                    rabbitmq_options: dict[str, Any]) -> None:
    queue = backend.queue
    assert isinstance(queue, RabbitMqQueue)
    connection = await aio_pika.connect(rabbitmq_options["amqp_url"])
    try:
        channel = await connection.channel()
        for body in (b"not json", b'{"run_id": "r"}', b"[1, 2]"):
            await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue.queue_name)
    finally:
        await connection.close()
    await queue.enqueue([Job("good", "bp", "n")])
    got = []
    for _ in range(20):
        got += await queue.dequeue(5, 0.5)
        if got:
            break
    assert [d.job.run_id for d in got] == ["good"]  # the queue goes on past the bad messages
    await queue.ack(got[0])
    letters = await queue.dead_letters()
    assert len(letters) == 3 and all(letter.job is None for letter in letters)
    reasons = " | ".join(letter.reason for letter in letters)
    assert "not a Flowcraft job" in reasons and "missing field 'blueprint_id'" in reasons


@pytest.mark.asyncio
async def test_values_over_the_limits_are_store_limit_errors(backend: Backend,
                                                             rabbitmq_options: dict[str, Any]) -> None:
    with pytest.raises(StoreLimitError, match="U\\+0000"):
        await backend.context.apply("run", {"k": "a\u0000b"})
    small = registry().build("rabbitmq", {**rabbitmq_options, "max_message_bytes": 2048})
    try:
        with pytest.raises(StoreLimitError, match="max_message_bytes"):
            await small.queue.enqueue([Job("run", "bp", "n", input="x" * 5000, has_input=True)])
    finally:
        await small.close()
    # a node whose output PostgreSQL cannot keep fails its run with the reason
    async with InProcessWorkers(backend, count=1, app=app()) as workers:
        result = await workers.run("nul", None)
    assert result.status == "failed"
    assert "U+0000" in json.dumps(result.errors)


@pytest.mark.asyncio
async def test_the_broker_dead_letters_past_the_delivery_limit(rabbitmq_options: dict[str, Any]) -> None:
    built = registry().build("rabbitmq", {**rabbitmq_options, "delivery_limit": 1, "visibility_timeout": 0.3})
    await built.setup()
    try:
        await built.queue.enqueue([Job("looping", "bp", "n")])
        seen = 0
        for _ in range(30):  # never acked: handed back by the visibility timer until the broker gives up
            seen += len(await built.queue.dequeue(1, 0.5))
            letters = await built.queue.dead_letters()
            if letters:
                break
        assert seen >= 2
        assert len(letters) == 1 and letters[0].job is not None and letters[0].job.run_id == "looping"
        assert "delivery_limit" in letters[0].reason
    finally:
        await built.close()


# ------------------------------------------------------------------------------------------ restarts
@pytest.mark.asyncio
async def test_a_postgres_restart_mid_run_loses_nothing(start_server: Any, rabbitmq_url: str, redis_url: str) -> None:
    database: PostgresServer = start_server(PostgresServer)
    options = {"amqp_url": rabbitmq_url, "postgres_dsn": database.url, "redis_url": redis_url, "visibility_timeout": 5,
               **unique_names()}
    built = registry().build("rabbitmq", options)
    await built.setup()
    try:
        await _run_chains(built, 12, database.restart)
    finally:
        await built.close()


# ------------------------------------------------------------------------------------------ seed-style API
@pytest.mark.asyncio
async def test_seed_style_adapter_and_reconciler(rabbitmq_options: dict[str, Any]) -> None:
    names = unique_names()
    connection = await aio_pika.connect_robust(rabbitmq_options["amqp_url"])
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(rabbitmq_options["postgres_dsn"], min_size=1, max_size=4,
                                                         kwargs={"autocommit": True}, open=False)
    await pool.open()
    redis = make_client(rabbitmq_options["redis_url"])
    adapter = RabbitMqAdapter(amqp_connection=connection, pg_client=pool, context_table_name=names["context_table"],
                              status_table_name=names["status_table"], queue_name=names["queue_name"],
                              coordination_store=RedisCoordinationStore(redis, key_prefix=names["key_prefix"]),
                              runtime_options=app(), concurrency=4)
    try:
        await adapter.setup()
        # a run whose start message is lost: the reconciler finds it through the status index and resumes it
        enqueue = adapter.queue.enqueue

        async def drop(jobs: Any, delay: float = 0.0) -> None:
            return None

        adapter.queue.enqueue = drop  # type: ignore[method-assign]
        stalled_id = await adapter.client.start("chain4")
        adapter.queue.enqueue = enqueue  # type: ignore[method-assign]
        async with adapter:
            healthy = await adapter.client.run("chain4", timeout=30)
            assert (healthy.status, healthy.outputs) == ("completed", OUTPUTS)
            await asyncio.sleep(1.2)
            reconciler = create_rabbitmq_reconciler(adapter=adapter, pg_client=pool,
                                                    status_table_name=names["status_table"],
                                                    stalled_threshold_seconds=1)
            stats = await reconciler.run()
            assert stats.scanned_rows >= 1 and stats.stalled_runs == 1
            assert (stats.reconciled_runs, stats.failed_runs, stats.requeued_jobs) == (1, 0, 1)
            resumed = await adapter.client.wait(stalled_id, 30)
            assert (resumed.status, resumed.outputs) == ("completed", OUTPUTS)
            assert (await reconciler.run()).stalled_runs == 0
    finally:
        await adapter.close()
        await connection.close()
        await pool.close()
        await redis.aclose()


# ------------------------------------------------------------------------------------------ mixing
@pytest.mark.asyncio
async def test_postgres_stores_under_the_rq_queue(rabbitmq_options: dict[str, Any]) -> None:
    options = {key: rabbitmq_options[key] for key in ("postgres_dsn", "redis_url", "context_table", "status_table",
                                                      "key_prefix")}
    built = registry().build("rq", {**options, "visibility_timeout": 5},
                             overrides={"context": "postgres", "status": "postgres"})
    assert (type(built.context).__name__, type(built.status).__name__) == ("PostgresContext", "PostgresStatusStore")
    await built.setup()
    try:
        async with InProcessWorkers(built, count=1, app=app()) as workers:
            result = await workers.run("chain4", None)
        assert (result.status, result.outputs) == ("completed", OUTPUTS)
    finally:
        await built.close()


class _LostReply(PgClient):
    """Runs each statement twice, returning the second answer: a first attempt that committed but whose reply
    was lost (the server restarted), then the retry."""

    async def run(self, fn: Any) -> Any:
        await super().run(fn)
        return await super().run(fn)


@pytest.mark.asyncio
async def test_a_retried_status_write_still_reports_its_own_win(postgres_url: str) -> None:
    names = unique_names()
    client, other = _LostReply(postgres_url), PgClient(postgres_url)
    status = PostgresStatusStore(client, names["status_table"])
    try:
        await status.setup()
        assert await status.create(RunRecord("r1", "bp"))
        assert not await PostgresStatusStore(other, names["status_table"]).create(RunRecord("r1", "bp"))
        won = await status.transition("r1", ["running"], "completed", {})
        assert won is not None and won.status == "completed"
        assert await status.transition("r1", ["running"], "failed", {}) is None  # a real loss stays a loss
    finally:
        await client.close()
        await other.close()


@pytest.mark.asyncio
async def test_keys_values_and_statuses_as_text_array_literals_round_trip(postgres_url: str) -> None:
    """The stores pass lists as ``text[]`` literals (``_pg.text_array``): keys, values and run ids with quotes,
    backslashes, commas, braces and the word NULL come back unchanged."""
    from flowcraft_rabbitmq import PostgresContext

    names = unique_names()
    client = PgClient(postgres_url)
    context = PostgresContext(client, names["context_table"])
    status = PostgresStatusStore(client, names["status_table"])
    odd = ['q"uote', "back\\slash", "x,y", "{b}", "NULL", " sp ", "é"]
    try:
        await context.setup()
        await status.setup()
        values = {key: {"v": key, "n": [1, None, key]} for key in odd}
        await asyncio.gather(*(context.apply(run_id, values) for run_id in odd))
        for run_id in odd:
            assert await context.get_many(run_id, [*odd, "missing"]) == values
            assert await status.create(RunRecord(run_id, "bp"))
        assert set(await status.get_many([*odd, "missing"])) == set(odd)
        for run_id in odd:
            won = await status.transition(run_id, ['pen"ding', "running"], "completed", {})
            assert won is not None and won.status == "completed"
    finally:
        await client.close()
