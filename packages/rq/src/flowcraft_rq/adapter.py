"""The seed-style explicit API: ``RqAdapter`` and ``create_rq_reconciler``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flowcraft.adapters import WorkerAdapter
from flowcraft.app import App
from flowcraft.engine.core import EngineOptions
from flowcraft.spi import Backend
from flowcraft_redis import (
    DEFAULT_PREFIX,
    DEFAULT_TTL,
    DEFAULT_URL,
    Colocation,
    RedisClient,
    RedisContext,
    RedisCoordinationStore,
    RedisReconciler,
    RedisStatusStore,
    colocate,
    make_any_client,
    make_client,
)
from flowcraft_rq.queue import DEFAULT_QUEUE, RqQueue


class RqAdapter(WorkerAdapter):
    """Wire an rq worker by hand (what ``registry().build("rq", ...)`` + ``flowcraft.Worker`` do for you)::

        adapter = RqAdapter(runtime_options={"blueprints": [bp], "registry": {"fetch": fetch}},
                            coordination_store=RedisCoordinationStore(redis), connection=redis)
        await adapter.start()            # a worker loop in the current event loop
        run_id = await adapter.client.start("orders", {"id": 7})
        await adapter.close()

    ``runtime_options``: an ``App``, or a mapping with ``app`` or ``flows``/``blueprints``/``registry``/
    ``dependencies``, plus optional ``concurrency`` (default 32) and ``engine_options`` (``EngineOptions``).
    ``async with adapter:`` does not start the worker and closes the adapter at the end.
    """

    def __init__(
        self,
        *,
        runtime_options: App | Mapping[str, Any],
        coordination_store: RedisCoordinationStore | None = None,
        connection: RedisClient | str | None = None,
        queue_name: str = DEFAULT_QUEUE,
        state_ttl_seconds: float = DEFAULT_TTL,
        key_prefix: str | None = None,
        visibility_timeout: float = 30.0,
        context: RedisContext | None = None,
        status_store: RedisStatusStore | None = None,
    ) -> None:
        options: Mapping[str, Any] = {} if isinstance(runtime_options, App) else runtime_options
        if connection is None:
            redis = coordination_store.redis if coordination_store is not None else make_client(DEFAULT_URL)
        elif isinstance(connection, str):
            redis = make_any_client(connection)
        else:
            redis = connection
        prefix = key_prefix or (coordination_store.key_prefix if coordination_store is not None else DEFAULT_PREFIX)
        self.redis = redis
        queue = RqQueue(redis, queue_name=queue_name, key_prefix=prefix, visibility_timeout=visibility_timeout,
                        state_ttl_seconds=state_ttl_seconds)
        context = context or RedisContext(redis, key_prefix=prefix, state_ttl_seconds=state_ttl_seconds)
        status = status_store or RedisStatusStore(redis, key_prefix=prefix, state_ttl_seconds=state_ttl_seconds)
        coordination = coordination_store or RedisCoordinationStore(redis, key_prefix=prefix,
                                                                    state_ttl_seconds=state_ttl_seconds)
        # the fast paths only among the components on this client and key prefix (given ones may be elsewhere)
        colocation = Colocation(redis, prefix)
        for component in (queue, context, status, coordination):
            if colocation.accepts(component):
                colocation.add(component)
        engine_options = options.get("engine_options")
        super().__init__(Backend(queue, context, status, coordination, name="rq"), runtime_options=runtime_options,
                         concurrency=int(options.get("concurrency", 32)),
                         engine_options=engine_options if isinstance(engine_options, EngineOptions) else None)
        self.queue: RqQueue = queue
        self.coordination: RedisCoordinationStore = coordination

    async def __aenter__(self) -> RqAdapter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def create_rq_reconciler(
    *,
    adapter: RqAdapter,
    redis: RedisClient | None = None,
    stalled_threshold_seconds: float = 300.0,
    key_prefix: str | None = None,
    scan_count: int = 100,
) -> RedisReconciler:
    """A reconciler for an rq deployment: ``stats = await reconciler.run()`` has ``scanned_keys``,
    ``stalled_runs``, ``reconciled_runs``, ``failed_runs`` (and ``requeued_jobs``). Stalled runs are found
    through the status indexes (no KEYS); their pending jobs are re-enqueued on the adapter's queue.
    ``redis``/``key_prefix`` select other state than the adapter's (rarely needed)."""
    backend = adapter.backend
    if redis is not None or (key_prefix is not None and key_prefix != adapter.coordination.key_prefix):
        client = redis or adapter.redis
        prefix = key_prefix or adapter.coordination.key_prefix
        context, status = RedisContext(client, key_prefix=prefix), RedisStatusStore(client, key_prefix=prefix)
        coordination = RedisCoordinationStore(client, key_prefix=prefix)
        colocate(context, status, coordination)
        backend = Backend(adapter.queue, context, status, coordination, name="rq")
    return RedisReconciler(backend, stalled_threshold_seconds=stalled_threshold_seconds, scan_count=scan_count)
