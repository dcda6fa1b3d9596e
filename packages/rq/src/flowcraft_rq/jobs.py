"""The rq job function and the job data format.

An rq job's ``data`` field holds the call tuple ``[func_name, instance, args, kwargs]``; ours is
``["flowcraft_rq.jobs.run_job", null, [<flowcraft job>], {}]`` serialised with rq's JSON serializer and left
uncompressed (rq's ``Job.restore`` accepts uncompressed data; data that rq itself rewrote is zlib-compressed,
and both are read here). The Flowcraft worker reads it directly; ``run_job`` exists so that a plain
``rq worker --serializer json`` could run the same jobs (one forked work horse per node: much slower).
"""

from __future__ import annotations

import asyncio
import json
import os
import zlib
from typing import Any

FUNC_NAME = "flowcraft_rq.jobs.run_job"
DATA_HEAD = '["' + FUNC_NAME + '",null,['
DATA_TAIL = "],{}]"


def encode_data(job_json: str) -> str:
    """rq ``data`` for a job document (JSON text of ``flowcraft.spi.Job.to_dict()``)."""
    return DATA_HEAD + job_json + DATA_TAIL


def decode_data(raw: bytes) -> dict[str, Any]:
    """The job document inside rq ``data`` (uncompressed JSON, or zlib-compressed as rq writes it)."""
    if raw[:1] != b"[":
        raw = zlib.decompress(raw)
    call = json.loads(raw)
    document: dict[str, Any] = call[2][0]  # args[0] of the call tuple
    return document


class _RqManaged:
    """Receipt of a job run by a plain rq worker: rq acknowledges it; a dead letter fails the rq job."""

    dead_reason: str | None = None


def run_job(job: dict[str, Any]) -> None:
    """Handle one Flowcraft job inside a plain rq worker.

    Configuration from the environment: ``FLOWCRAFT_APP`` (``module:attribute`` of the ``flowcraft.App``),
    ``FLOWCRAFT_REDIS_URL``, ``FLOWCRAFT_KEY_PREFIX``, ``FLOWCRAFT_QUEUE_NAME``. The Flowcraft worker
    (``flowcraft worker`` / ``RqAdapter.start``) does not use this function.
    """
    asyncio.run(_run_job(job))


async def _run_job(document: dict[str, Any]) -> None:
    from flowcraft.app import load_app
    from flowcraft.engine.core import Engine
    from flowcraft.plugins import registry
    from flowcraft.spi import Delivery, Job

    options = {name: os.environ[env] for name, env in (("redis_url", "FLOWCRAFT_REDIS_URL"),
                                                       ("key_prefix", "FLOWCRAFT_KEY_PREFIX"),
                                                       ("queue_name", "FLOWCRAFT_QUEUE_NAME")) if env in os.environ}
    app = load_app(os.environ["FLOWCRAFT_APP"])
    backend = registry().build("rq", options)
    receipt = _RqManaged()
    try:
        await Engine(app, backend).handle(Delivery(Job.from_dict(document), receipt))
    finally:
        await backend.close()
    if receipt.dead_reason is not None:
        raise RuntimeError(receipt.dead_reason)
