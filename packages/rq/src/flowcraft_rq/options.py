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
                                   "room (Capabilities.continues; one Redis only)")
    lean_handover: bool = option(False, "a job a commit hands to its worker (continues) gets no rq job hash, only "
                                        "an entry in the queue's lean in-flight set: less Redis work per node, "
                                        "but rq's tools do not see handed jobs while they run")
