"""flowcraft-rq without a server: job data format, configuration, registration."""

from __future__ import annotations

import json
import zlib

from flowcraft.plugins import registry
from flowcraft.spi import Job
from flowcraft_rq import FUNC_NAME, RqQueue
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
