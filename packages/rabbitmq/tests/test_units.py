"""Unit tests of flowcraft-rabbitmq that need no server: the message encoding (job body, delivery count, due
header, delay ladder), the row encoding of run records, cursors, options and what is masked."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from flowcraft.errors import ConfigError, StoreLimitError
from flowcraft.spi import Job, RunRecord
from flowcraft_rabbitmq._pg import PgClient, check_text, dumps, text_array
from flowcraft_rabbitmq.options import PostgresOptions, RabbitMqOptions
from flowcraft_rabbitmq.queue import (
    DELAY_LADDER_MS,
    RabbitMqQueue,
    decode_job,
    delay_route,
    deliveries_of,
    due_header,
    due_of,
    encode_job,
)
from flowcraft_rabbitmq.status import change_data, decode_cursor, encode_cursor, record_row, row_record

TRICKY = ["", "a:b", "ü/x y", "ключ", '"quoted"', "a\\b", "\ud83d\ude00"]


@pytest.mark.parametrize("node", [*TRICKY, "n"])
def test_job_body_round_trips(node: str) -> None:
    job = Job("run:ü/1", "bp", node or "n", visit=2, attempt=3, item=1, input=None, has_input=True,
              payload={"x": [1, "two"]}, due_at=12.5, bounces=1)
    assert decode_job(encode_job(job, 1 << 20)) == job


def test_a_job_over_the_message_limit_is_a_store_limit_error() -> None:
    job = Job("r", "bp", "n", input="x" * 5000, has_input=True)
    with pytest.raises(StoreLimitError, match="max_message_bytes"):
        encode_job(job, 2048)


@pytest.mark.parametrize(("body", "why"), [
    (b"not json", "JSONDecodeError"), (b"[1]", "a JSON list"), (b'{"run_id": "r"}', "missing field 'blueprint_id'"),
    (b'{"run_id": 1, "blueprint_id": "b", "node_id": "n"}', "run_id is not a string"), (b"\xff\xfe", "Unicode"),
])
def test_a_body_that_is_not_a_job_says_why(body: bytes, why: str) -> None:
    with pytest.raises(ValueError, match="not a Flowcraft job") as caught:
        decode_job(body)
    assert why in str(caught.value)


def test_deliveries_count_the_quorum_header_and_earlier_copies() -> None:
    assert deliveries_of(None, False) == 1
    assert deliveries_of({}, True) == 2  # a classic queue: only the redelivered flag
    assert deliveries_of({"x-delivery-count": 0}, False) == 1
    assert deliveries_of({"x-delivery-count": 2}, True) == 3
    assert deliveries_of({"x-delivery-count": 1, "flowcraft-deliveries": 4}, True) == 6
    assert deliveries_of({"flowcraft-deliveries": "junk"}, False) == 1


def test_delay_ladder_routes_to_the_longest_queue_not_longer_than_the_delay() -> None:
    assert DELAY_LADDER_MS[0] == 10 and DELAY_LADDER_MS[-1] == 10 * 2 ** 23 and len(DELAY_LADDER_MS) == 24
    assert delay_route("q", 0) == "q" and delay_route("q", 0.005) == "q"
    assert delay_route("q", 0.011) == "q.delay.10"
    assert delay_route("q", 1.5) == "q.delay.1280"
    assert delay_route("q", 2.56) == "q.delay.2560"
    assert delay_route("q", 10 ** 7) == f"q.delay.{10 * 2 ** 23}"  # longer than the ladder: hops at its top
    # the hops of a delay add up to it: each rung is at most what remains
    remaining, hops = 1.5, 0
    while (route := delay_route("q", remaining)) != "q":
        remaining -= int(route.rsplit(".", 1)[-1]) / 1000
        hops += 1
    assert 0 <= remaining <= 0.01 and hops == 4


def test_due_header_is_whole_milliseconds_never_early() -> None:
    due = 1764000000.1234
    header = due_header(due)
    assert isinstance(header, int) and due_of({"flowcraft-due": header}) is not None
    assert due <= due_of({"flowcraft-due": header}) <= due + 0.002  # type: ignore[operator]
    assert due_of({}) is None and due_of({"flowcraft-due": "x"}) is None


def test_run_record_row_round_trip() -> None:
    record = RunRecord("run ü:1", "bp", status="awaiting", version="2", blueprint_hash="h", input={"a": [1, None]},
                       created_at=1.5, updated_at=2.25, errors=[{"message": "m"}], awaiting=[{"node": "w"}],
                       parent={"run_id": "p"})
    run_id, status, blueprint_id, data, created, updated = record_row(record)
    assert (run_id, status, blueprint_id, created, updated) == ("run ü:1", "awaiting", "bp", 1.5, 2.25)
    assert row_record((run_id, status, blueprint_id, json.loads(data), created, updated)) == record


def test_transition_changes_split_into_columns_and_data() -> None:
    assert change_data({"errors": [1], "awaiting": [], "blueprint_id": "b2"}) == ("b2", {"errors": [1],
                                                                                         "awaiting": []})
    with pytest.raises(ConfigError, match="no field 'status_x'"):
        change_data({"status_x": 1})


def test_cursor_round_trip_and_a_bad_one_is_one_line() -> None:
    assert decode_cursor(encode_cursor(1764000000.123456, "r:ü")) == (1764000000.123456, "r:ü")
    with pytest.raises(ConfigError, match="invalid cursor"):
        decode_cursor("not-a-cursor")


def test_values_postgres_cannot_hold_are_refused_in_one_line() -> None:
    assert dumps({"ü": None}, "v") == '{"ü":null}'
    with pytest.raises(StoreLimitError, match="U\\+0000"):
        dumps({"k": "a\u0000b"}, "context value 'k'")
    with pytest.raises(StoreLimitError, match="not JSON"):
        dumps(float("nan"), "v")
    with pytest.raises(StoreLimitError, match="NUL"):
        check_text("a\x00b", "run id")


def test_options_defaults_and_checks() -> None:
    q = RabbitMqOptions.parse({})
    assert (q.queue_name, q.prefetch, q.delivery_limit, q.visibility_timeout) == ("flowcraft-jobs", 0, 20, 30.0)
    p = PostgresOptions.parse({"pool_max_size": "4"})
    assert (p.context_table, p.status_table, p.pool_max_size) == ("flowcraft_contexts", "flowcraft_statuses", 4)
    bad: list[tuple[type[Any], dict[str, Any], str]] = [
        (RabbitMqOptions, {"queue_name": "amq.x"}, "reserved"), (RabbitMqOptions, {"queue_name": "x" * 250}, "bytes"),
        (RabbitMqOptions, {"delivery_limit": 0}, "delivery_limit"), (RabbitMqOptions, {"prefetch": -1}, "prefetch"),
        (PostgresOptions, {"context_table": 'x"; drop'}, "identifier"),
        (PostgresOptions, {"context_table": "t", "status_table": "t"}, "different"),
        (PostgresOptions, {"pool_min_size": 5, "pool_max_size": 2}, "pool"),
    ]
    for schema, values, message in bad:
        with pytest.raises(ConfigError, match=message):
            schema.parse(values)


def test_passwords_are_masked_in_reprs() -> None:
    queue = RabbitMqQueue("amqp://user:s3cret@host:5672/vh")
    client = PgClient("postgresql://user:s3cret@host/db")
    assert "s3cret" not in repr(queue) and "s3cret" not in repr(client) and "s3cret" not in queue.link.where


def test_listing_plugins_imports_no_client_library() -> None:
    code = ("import sys; from flowcraft.plugins import registry; r = registry(); r.preset('rabbitmq'); "
            "print(sorted(m for m in ('aio_pika', 'psycopg', 'psycopg_pool') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


class _FakeConnection:
    def __init__(self, log: list[tuple[str, list[Any]]], refuse: str | None) -> None:
        self.log, self.refuse = log, refuse

    async def execute(self, query: Any, params: list[Any]) -> None:
        text = str(query)
        self.log.append((text, params))
        if self.refuse is not None and any(self.refuse in str(p) for p in params):
            import psycopg

            raise psycopg.DataError("refused")


class _FakeClient(PgClient):
    """A PgClient whose statements are recorded instead of sent."""

    def __init__(self, refuse: str | None = None) -> None:
        super().__init__("postgresql://fake@127.0.0.1/x")
        self.log: list[tuple[str, list[Any]]] = []
        self.refuse = refuse

    async def run(self, fn: Any) -> Any:
        import psycopg

        try:
            return await fn(_FakeConnection(self.log, self.refuse))
        except psycopg.DataError as exc:
            from flowcraft_rabbitmq._pg import ValueRefusedError

            raise ValueRefusedError(str(exc)) from None


def test_context_writes_of_one_iteration_are_one_statement_and_a_repeated_row_waits() -> None:
    import asyncio

    from flowcraft_rabbitmq.context import PostgresContext

    client = _FakeClient()
    store = PostgresContext(client)

    async def main() -> None:
        await asyncio.gather(store.apply("r1", {"a": 1}), store.apply("r2", {"a": 2, "b": 3}),
                             store.apply("r1", {"a": 4}), store.apply("r3", {"c": None}))

    asyncio.run(main())
    assert len(client.log) == 2  # r1/a twice: the second write goes in the next statement, after the first
    (first, first_params), (_, second_params) = client.log
    arrays = [text_array(v) for v in (["r1", "r2", "r2"], ["a", "a", "b"], ["1", "2", "3"])]
    assert "unnest" in first and first_params == arrays
    # order kept: r3's write waited too
    assert second_params == [text_array(v) for v in (["r1", "r3"], ["a", "c"], ["4", "null"])]


def test_text_array_literals_quote_every_element() -> None:
    assert text_array([]) == "{}"
    assert text_array(["a", "NULL", "x,y", 'q"uote', "back\\slash", "{}", " "]) == (
        '{"a","NULL","x,y","q\\"uote","back\\\\slash","{}"," "}')


def test_a_refused_value_fails_only_its_own_coalesced_write() -> None:
    import asyncio

    from flowcraft_rabbitmq.context import PostgresContext

    client = _FakeClient(refuse="bad")
    store = PostgresContext(client)

    async def main() -> list[Any]:
        return list(await asyncio.gather(store.apply("r1", {"a": 1}), store.apply("r2", {"a": "bad"}),
                                         store.apply("r3", {"a": 3}), return_exceptions=True))

    results = asyncio.run(main())
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], StoreLimitError)


def test_handover_options_wire_the_hand_over_unless_turned_off() -> None:
    """continues (default on) gives the queue and the Redis coordination store one hand-over set, whose
    visibility is handover_visibility_timeout or else visibility_timeout; a bad value is one line."""
    from flowcraft_rabbitmq.backend import build_backend

    q = RabbitMqOptions.parse({"visibility_timeout": 7})
    assert q.continues and q.handover_visibility_timeout is None and q.handed_visibility == 7
    assert RabbitMqOptions.parse({"handover_visibility_timeout": "2.5"}).handed_visibility == 2.5
    for bad in (0, -1, 1e9):
        with pytest.raises(ConfigError, match=r"^option handover_visibility_timeout: must be between") as info:
            RabbitMqOptions.parse({"handover_visibility_timeout": bad})
        assert "\n" not in str(info.value)
    options = {"redis_url": "redis://127.0.0.1:1/0", "key_prefix": "k:", "queue_name": "jobs",
               "visibility_timeout": 9}
    backend = build_backend(options)
    queue = backend.queue
    assert isinstance(queue, RabbitMqQueue) and queue.handover is not None
    assert backend.coordination.dispatcher is queue.handover  # type: ignore[attr-defined]
    assert queue.handover.key == "k:handover:jobs" and queue.handover.visibility_timeout == 9
    capabilities = backend.capabilities
    assert capabilities.continues and not capabilities.dispatches and not capabilities.acks
    off = build_backend({**options, "continues": "false"})
    assert isinstance(off.queue, RabbitMqQueue) and off.queue.handover is None
    assert not off.capabilities.continues
    clustered = build_backend({**options, "redis_url": "redis+cluster://127.0.0.1:1"})  # the set is in no run's slot
    assert isinstance(clustered.queue, RabbitMqQueue) and clustered.queue.handover is None
    assert not clustered.capabilities.continues
