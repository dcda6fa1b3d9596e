"""flowcraft-rq without a server: job data format, configuration, registration."""

from __future__ import annotations

import json
import zlib
from datetime import UTC, datetime
from typing import Any

import pytest

from flowcraft.app import App
from flowcraft.plugins import registry
from flowcraft.spi import Begin, Capabilities, Job, RunRecord
from flowcraft_redis import RedisCoordinationStore, RedisStatusStore, colocate, make_any_client, make_client
from flowcraft_rq import FUNC_NAME, RqAdapter, RqQueue, RqReceipt
from flowcraft_rq.jobs import decode_data, encode_data, run_job
from flowcraft_rq.queue import iso


def test_job_data_is_an_rq_json_call_tuple() -> None:
    job = Job("r:1/ü", "bp", "n", input={"a": [], "b": None}, has_input=True)
    data = encode_data(json.dumps(job.to_dict()))
    func, instance, args, kwargs = json.loads(data)
    assert (func, instance, kwargs) == (FUNC_NAME, None, {}) and Job.from_dict(args[0]) == job
    assert decode_data(data.encode()) == job.to_dict()
    assert decode_data(zlib.compress(data.encode())) == job.to_dict()  # as rq itself rewrites it


def test_job_function_is_importable_by_name() -> None:
    module, _, name = FUNC_NAME.rpartition(".")
    assert getattr(__import__(module, fromlist=[name]), name) is run_job


def test_iso_matches_rq_format() -> None:
    from rq.utils import str_to_date

    assert str_to_date(iso(1700000000.25)).timestamp() == 1700000000.25


@pytest.mark.parametrize("stamps", [
    (1700000000.25, 1700000000.75, 1700000001.5, 1700000000.5),  # the same second, the next, back
    (1700000005.9999996, 1700000005.0000004, 1700000006.0),  # rounded into the next second, as datetime does
])
def test_iso_is_datetimes_format_whatever_second_it_last_formatted(stamps: tuple[float, ...]) -> None:
    for stamp in stamps:
        assert iso(stamp) == datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_from_config_options_and_queue_name_defaults() -> None:
    shared: dict[object, object] = {}
    queue = RqQueue.from_config({"redis_url": "redis://127.0.0.1:1/0", "visibility_timeout": "5"}, shared)
    assert queue.queue_name == "flowcraft-queue" and queue.visibility_timeout == 5.0
    assert queue.queue_key == "rq:queue:flowcraft-queue" and queue.wip_key == "rq:wip:flowcraft-queue"
    other = RqQueue.from_config({"redis_url": "redis://127.0.0.1:1/0", "key_prefix": "app:"}, shared)
    assert other.queue_name == "app:queue" and other.redis is queue.redis  # one client per URL
    named = RqQueue.from_config({"key_prefix": "app:", "queue_name": "jobs"}, shared)
    assert named.queue_name == "jobs"


def test_preset_and_lazy_registration() -> None:
    reg = registry(refresh=True)
    preset = reg.preset("rq")
    assert preset.components() == {"queue": "rq", "context": "redis", "status": "redis", "coordination": "redis"}
    backend = reg.build("rq", {"redis_url": "redis://127.0.0.1:1/0", "key_prefix": "t:"})
    assert isinstance(backend.queue, RqQueue) and backend.coordination.applies_context


def _queue(backend: Any) -> RqQueue:
    assert isinstance(backend.queue, RqQueue)
    return backend.queue


def _coordination(backend: Any) -> RedisCoordinationStore:
    assert isinstance(backend.coordination, RedisCoordinationStore)
    return backend.coordination


def test_the_preset_factory_wires_every_fast_path_and_an_override_none() -> None:
    reg = registry()
    options = {"redis_url": "redis://127.0.0.1:1/0", "key_prefix": "w:"}
    full = reg.build("rq", options)
    queue, coordination = _queue(full), _coordination(full)
    assert queue.prefetching and coordination.applies_context
    assert coordination.dispatcher is not None and coordination.dispatcher is queue.commit_dispatcher()
    assert full.capabilities == Capabilities(applies_context=True, prefetches_status=True, dispatches=True,
                                             releases_lease=True, acks=True, continues=True, notifies=True,
                                             writes_context=True, starts=True, ends=True)
    assert full.name == "rq" and full.options["key_prefix"] == "w:"
    without = reg.build("rq", {**options, "continues": False}).capabilities
    assert without.acks and without.dispatches and not without.continues
    same_names = reg.build("rq", options, overrides={"queue": "rq"})  # naming the preset's own is no override
    assert same_names.capabilities == full.capabilities
    for kind in ("queue", "context", "status"):
        mixed = reg.build("rq", options, overrides={kind: "memory"})
        assert mixed.capabilities == Capabilities(releases_lease=True, notifies=True), kind  # both stores notify
        assert not _coordination(mixed).applies_context and _coordination(mixed).dispatcher is None


def test_prefetch_and_dispatch_can_be_turned_off() -> None:
    client = make_client("redis://127.0.0.1:1/0")
    queue = RqQueue(client, prefetch=False, dispatch=False)
    coordination = RedisCoordinationStore(client)
    colocate(queue, RedisStatusStore(client), coordination)
    assert not queue.prefetching and coordination.dispatcher is None


def test_adapter_colocates_only_what_is_on_its_client_and_prefix() -> None:
    client = make_client("redis://127.0.0.1:1/0")
    adapter = RqAdapter(runtime_options=App(), connection=client, key_prefix="ad:")
    assert adapter.queue.prefetching and adapter.coordination.applies_context
    assert adapter.coordination.dispatcher is adapter.queue.commit_dispatcher()
    foreign = RedisCoordinationStore(make_client("redis://127.0.0.1:1/0"), key_prefix="ad:")
    mixed = RqAdapter(runtime_options=App(), coordination_store=foreign, connection=client, key_prefix="ad:")
    assert not mixed.queue.prefetching and foreign.dispatcher is None and not foreign.applies_context


def test_deliveries_from_dequeue_replies() -> None:
    job = Job("r", "bp", "n")
    data = encode_data(json.dumps(job.to_dict())).encode()
    record = [b"status", b"running", b"run_id", b'"r"', b"blueprint_id", b'"bp"']
    done = b'tok {"node_id":"n","output":7,"token":"tok"}'
    plain = RqQueue._delivery([b"id", b"id:e1", data, 2, None, -1, None, None], None, {})
    assert plain.job == job and plain.deliveries == 2 and not plain.prefetched
    assert plain.receipt == RqReceipt("id", "id:e1") and plain.record is None and plain.begin is None
    records: dict[str, RunRecord | None] = {}
    taken = RqQueue._delivery([b"id", b"id:e1", data, 1, record, 1, b"p{}", done], "w1", records)
    assert taken.prefetched and taken.record is not None and taken.record.status == "running"
    assert taken.begin is not None and taken.begin.lease and taken.begin.state == "pending"
    assert taken.begin.completion is not None and taken.begin.completion.output == 7
    assert taken.receipt.lease_owner == "w1"
    held = RqQueue._delivery([b"id", b"id:e1", data, 1, 1, 0, b"p{}", None], "w1", records)  # the record again
    assert held.begin == Begin(lease=False, state="pending", completion=None) and held.receipt.lease_owner is None
    assert held.record is taken.record
    lean = RqQueue._delivery([b"id", b"id:3:r0:n", json.dumps(job.to_dict()).encode(), 1, 1, 1, b"p{}", None, 1],
                             "w1", records)
    assert lean.job == job and lean.receipt == RqReceipt("id", "id:3:r0:n", "w1", lean=True)
    missing = RqQueue._delivery([b"id", b"id:e1", data, 1, [], -1, None, None], "w1", {})
    # no run record, so no lease either: the engine reads the status itself (and dead-letters the job)
    assert not missing.prefetched and missing.record is None and missing.begin is None


def test_on_a_cluster_the_queue_is_split_into_groups_in_the_slots_of_their_runs() -> None:
    import pytest
    from redis.cluster import key_slot

    from flowcraft.errors import ConfigError
    from flowcraft_redis import RedisCoordinationStore

    backend = registry().build("rq", {"redis_url": "redis+cluster://127.0.0.1:1", "queue_name": "jobs:a"})
    queue = backend.queue
    assert isinstance(queue, RqQueue) and queue.clustered and len(queue.groups) == 12
    capabilities = backend.capabilities
    assert capabilities.dispatches and capabilities.acks and capabilities.continues  # the run's group's queue
    assert capabilities.prefetches_status and capabilities.applies_context
    coordination = backend.coordination
    assert isinstance(coordination, RedisCoordinationStore)
    starts = [g * 16384 // 12 for g in range(13)]
    for group in queue.groups:  # every group's keys in one slot, of its twelfth of the slot range
        job_key = queue._job_key(group.new_job_id())
        slots = {key_slot(key.encode()) for key in (group.queue_key, group.wip_key, group.scheduled_key,
                                                     group.claims_key, group.claim_key, group.failed_key,
                                                     group.inflight_key, group.held_key, job_key)}
        assert len(slots) == 1 and starts[group.index] <= slots.pop() < starts[group.index + 1]
        assert ":" not in group.new_job_id()  # started-registry entries are <job id>:<execution id>
    for run_id in ("r1", "run-2", "x" * 40):
        group = queue.groups[queue.group_of(run_id)]
        run_slots = {key_slot(key.encode()) for key in (
            coordination.keys.run(run_id), coordination.keys.status(run_id), coordination.keys.ctx(run_id))}
        assert run_slots == {key_slot(group.queue_key.encode())}
        dispatcher = queue.commit_dispatcher()
        assert dispatcher is not None and dispatcher.for_run(run_id).keys[0] == group.queue_key
    assert {queue.group_of(f"run-{i}") for i in range(200)} == set(range(12))
    with pytest.raises(ConfigError, match="braces"):
        RqQueue(make_any_client("redis+cluster://127.0.0.1:1"), queue_name="a{b}")
    small = registry().build("rq", {"redis_url": "redis+cluster://127.0.0.1:1", "cluster_queue_groups": 3})
    assert isinstance(small.queue, RqQueue) and len(small.queue.groups) == 3


def test_one_redis_keeps_run_id_hash_tags_and_one_queue() -> None:
    backend = registry().build("rq", {"redis_url": "redis://127.0.0.1:1/0"})
    queue = backend.queue
    assert isinstance(queue, RqQueue) and len(queue.groups) == 1 and queue.groups[0].tag == ""
    assert queue.queue_key == "rq:queue:flowcraft-queue" and ":" not in queue.new_job_id("r1")
    assert backend.coordination.keys.run("r1") == "flowcraft:run:{r1}"  # type: ignore[attr-defined]
