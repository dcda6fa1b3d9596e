"""The options of the rq queue: the Redis ones it shares with the stores (``flowcraft_redis.options``), the
queue's ``visibility_timeout`` (``flowcraft.spi.QueueOptions``), and its own."""

from __future__ import annotations

from dataclasses import dataclass

from flowcraft.spi import QueueOptions, option
from flowcraft_redis.options import RedisOptions


@dataclass(frozen=True)
class RqQueueOptions(RedisOptions, QueueOptions):
    """What ``RqQueue.from_config`` reads."""

    queue_name: str | None = option(None, "the rq queue (default flowcraft-queue; with another key_prefix, "
                                          "<key_prefix>queue)")
    rq_key_prefix: str | None = option(None, "prefix of rq's own keys (default rq's: rq, or $RQ_KEY_PREFIX)")
    continues: bool = option(True, "a commit hands the jobs it fires straight to its worker, up to the worker's "
                                   "room (Capabilities.continues)")
    queue_layout: str = option("rq", "rq: every job is an rq job (rq info and rq's registries see it); lean: the "
                                     "jobs commits fire that are due now (pushed or handed to the worker) are "
                                     "entries naming their run's pending job, with no rq job hash: less Redis work "
                                     "per node, rq's tools do not see those jobs and no plain rq worker may serve "
                                     "the queue")
