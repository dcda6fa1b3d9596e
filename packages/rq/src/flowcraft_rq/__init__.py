"""flowcraft-rq: the ``rq`` backend — an rq queue served by a non-forking asyncio worker, with Redis context,
status and coordination from ``flowcraft-redis``."""

from flowcraft_redis import RedisContext, RedisCoordinationStore, RedisReconcileStats, RedisStatusStore
from flowcraft_rq.adapter import RqAdapter, create_rq_reconciler
from flowcraft_rq.jobs import FUNC_NAME, run_job
from flowcraft_rq.queue import DEFAULT_QUEUE, RqQueue, RqReceipt

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_QUEUE",
    "FUNC_NAME",
    "RedisContext",
    "RedisCoordinationStore",
    "RedisReconcileStats",
    "RedisStatusStore",
    "RqAdapter",
    "RqQueue",
    "RqReceipt",
    "create_rq_reconciler",
    "run_job",
]
