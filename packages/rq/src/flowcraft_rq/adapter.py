"""The seed-style explicit API: ``RqAdapter`` and ``create_rq_reconciler``."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

from redis.asyncio import Redis

from flowcraft.app import App
from flowcraft.client import Client
from flowcraft.engine.core import Engine, EngineOptions
from flowcraft.engine.worker import Worker
from flowcraft.spi import Backend
from flowcraft_redis import (
    DEFAULT_PREFIX,
    DEFAULT_TTL,
    DEFAULT_URL,
    Colocation,
    RedisContext,
    RedisCoordinationStore,
    RedisReconciler,
    RedisStatusStore,
    colocate,
    make_client,
)
from flowcraft_rq.queue import DEFAULT_QUEUE, RqQueue


def _app_of(runtime_options: App | Mapping[str, Any]) -> App:
    if isinstance(runtime_options, App):
        return runtime_options
    app = runtime_options.get("app")
    if isinstance(app, App):
        return app
    return App(flows=runtime_options.get("flows", ()), blueprints=runtime_options.get("blueprints", ()),
               registry=runtime_options.get("registry"), dependencies=runtime_options.get("dependencies"),
               max_iterations=int(runtime_options.get("max_iterations", 1000)))


class RqAdapter:
    """Wire an rq worker by hand (what ``registry().build("rq", ...)`` + ``flowcraft.Worker`` do for you)::

        adapter = RqAdapter(runtime_options={"blueprints": [bp], "registry": {"fetch": fetch}},
                            coordination_store=RedisCoordinationStore(redis), connection=redis)
        await adapter.start()            # a worker loop in the current event loop
        run_id = await adapter.client.start("orders", {"id": 7})
        await adapter.close()

    ``runtime_options``: an ``App``, or a mapping with ``app`` or ``flows``/``blueprints``/``registry``/
    ``dependencies``, plus optional ``concurrency`` (default 32) and ``engine_options`` (``EngineOptions``).
    """

    def __init__(
        self,
        *,
        runtime_options: App | Mapping[str, Any],
        coordination_store: RedisCoordinationStore | None = None,
        connection: Redis | str | None = None,
        queue_name: str = DEFAULT_QUEUE,
        state_ttl_seconds: float = DEFAULT_TTL,
        key_prefix: str | None = None,
        visibility_timeout: float = 30.0,
        context: RedisContext | None = None,
        status_store: RedisStatusStore | None = None,
    ) -> None:
        options: Mapping[str, Any] = {} if isinstance(runtime_options, App) else runtime_options
        self.app = _app_of(runtime_options)
        if connection is None:
            redis = coordination_store.redis if coordination_store is not None else make_client(DEFAULT_URL)
        elif isinstance(connection, str):
            redis = make_client(connection)
        else:
            redis = connection
        prefix = key_prefix or (coordination_store.key_prefix if coordination_store is not None else DEFAULT_PREFIX)
        self.redis = redis
        self.queue = RqQueue(redis, queue_name=queue_name, key_prefix=prefix, visibility_timeout=visibility_timeout,
                             state_ttl_seconds=state_ttl_seconds)
        self.context = context or RedisContext(redis, key_prefix=prefix, state_ttl_seconds=state_ttl_seconds)
        self.status = status_store or RedisStatusStore(redis, key_prefix=prefix, state_ttl_seconds=state_ttl_seconds)
        self.coordination = coordination_store or RedisCoordinationStore(redis, key_prefix=prefix,
                                                                         state_ttl_seconds=state_ttl_seconds)
        # the fast paths only among the components on this client and key prefix (given ones may be elsewhere)
        colocation = Colocation(redis, prefix)
        for component in (self.queue, self.context, self.status, self.coordination):
            if colocation.accepts(component):
                colocation.add(component)
        self.backend = Backend(self.queue, self.context, self.status, self.coordination, name="rq")
        engine_options = options.get("engine_options")
        self.engine = Engine(self.app, self.backend,
                             options=engine_options if isinstance(engine_options, EngineOptions) else None)
        self.client = Client(self.backend, self.app)
        self.concurrency = int(options.get("concurrency", 32))
        self.worker: Worker | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start a worker loop (dequeue, handle, heartbeat) as a task of the running event loop."""
        if self._task is not None and not self._task.done():
            return
        self.worker = Worker(self.engine, concurrency=self.concurrency, poll_wait=1.0)
        self._task = asyncio.get_running_loop().create_task(self.worker.run())

    async def stop(self) -> None:
        """Stop the worker loop gracefully (in-flight jobs finish or go back to the queue)."""
        if self.worker is not None and self._task is not None:
            self.worker.stop()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.worker = self._task = None

    async def close(self) -> None:
        await self.stop()
        await self.backend.close()

    async def __aenter__(self) -> RqAdapter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def create_rq_reconciler(
    *,
    adapter: RqAdapter,
    redis: Redis | None = None,
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
