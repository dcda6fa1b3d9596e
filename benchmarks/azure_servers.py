"""The azure backend in the harness (``python -m benchmarks --backend azure``): Azurite (Storage Queue), the
Cosmos DB emulator and Redis, and the raw Azure Storage Queue floor measured beside each trial.

Without ``azure_storage_connection_string``, ``cosmos_endpoint`` and ``redis_url`` in ``--backend-options`` the
three are started on free loopback ports (``tests-integration/servers``; ``scripts/install-servers.sh azurite
cosmos redis``). Each trial gets its own queue, Cosmos database and key prefix.

The raw floor (:func:`raw_floor`) is what the queue service alone does for the same shape of work, with the
Azure SDK: no-op JSON messages the size of a job, ``runs`` chains, at most the flowcraft workers' total
concurrency received and not yet deleted; each received message sends its successor and is deleted (two
requests: Azure queues have no batch send or delete); receives ask for up to 32 (the service's limit) whenever
there is room in that window.

The worker's hook counts its HTTP requests by service (Storage Queue, Cosmos DB) and method: Azure bills both
per operation.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Awaitable
from typing import Any

from benchmarks.backend_servers import COUNTS, BackendServers, ServerSpec, report_on_signal

RECEIVE_LIMIT = 32  # messages one Storage Queue receive may return


def _cosmos_options(server: Any) -> dict[str, Any]:
    return {"cosmos_endpoint": server.endpoint, "cosmos_key": server.key, "cosmos_ca_cert": str(server.ca_cert_path)}


class AzureServers(BackendServers):
    backend = "azure"
    # Azurite on disk, not in memory: in memory each message is an extent of its own, and Azurite's queue GC
    # (every 60 s) deletes those of the messages deleted since the last sweep with the event loop blocked,
    # for a time that grows faster than their number (3,000 messages: 25 s without an answer; a harness
    # trial stalled 160 s). On disk many messages share an extent file: the same churn, no pause above 0.5 s.
    specs = (ServerSpec("azurite", "AzuriteServer", ("azure_storage_connection_string",),
                        lambda s: {"azure_storage_connection_string": s.connection_string},
                        {"in_memory": False}),
             ServerSpec("cosmos", "CosmosServer", ("cosmos_endpoint", "cosmos_key", "cosmos_ca_cert"), _cosmos_options),
             ServerSpec("redis", "RedisServer", ("redis_url",), lambda s: {"redis_url": s.url}))
    hook = "benchmarks.azure_servers:count_requests"

    def fresh_options(self, tag: str) -> dict[str, Any]:
        name = re.sub(r"[^a-z0-9]+", "-", tag.lower())  # queue names: lower case, digits, single hyphens
        return {**self.urls, "queue_name": f"fcbench-{name}"[:63].rstrip("-"), "cosmos_database": f"fcbench-{name}",
                "key_prefix": f"fcbench:{tag}:", "visibility_timeout": 30}

    async def floor(self, chains: int, in_flight: int, hops: int = 10) -> float:
        return await raw_floor(self.urls["azure_storage_connection_string"], chains, in_flight, hops)


async def raw_floor(connection_string: str, chains: int, in_flight: int, hops: int = 10) -> float:
    """Azure Storage Queue alone for a chain workload (see the module docstring). Messages/s."""
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.queue.aio import QueueClient

    from flowcraft.spi import Job

    queue = QueueClient.from_connection_string(connection_string, f"bench-raw-{uuid.uuid4().hex[:8]}")
    async with queue:
        await queue.create_queue()

        def body(hop: int) -> str:
            return json.dumps({**Job("run", "bench", "node").to_dict(), "payload": {"hop": hop}})

        total, done, busy = chains * hops, 0, 0
        freed, finished = asyncio.Event(), asyncio.Event()
        tasks: set[asyncio.Task[None]] = set()

        async def delete(message: Any) -> None:
            try:
                await queue.delete_message(message.id, message.pop_receipt)
            except ResourceNotFoundError:  # seen once, on in-memory Azurite (see AzureServers.specs): a stall
                pass                       # longer than the visibility timeout hands a message out again

        async def handle(message: Any) -> None:
            nonlocal done, busy
            try:
                hop = json.loads(message.content)["payload"]["hop"] + 1
                work: list[Awaitable[Any]] = [delete(message)]
                if hop < hops:
                    work.append(queue.send_message(body(hop)))
                await asyncio.gather(*work)
            finally:
                busy -= 1
                done += 1
                freed.set()
                if done >= total:
                    finished.set()

        started = time.perf_counter()
        await asyncio.gather(*(queue.send_message(body(0)) for _ in range(chains)))
        while not finished.is_set():
            room = min(RECEIVE_LIMIT, max(1, in_flight) - busy)
            if room <= 0:
                freed.clear()
                await freed.wait()
                continue
            batch = [m async for m in queue.receive_messages(messages_per_page=room, max_messages=room,
                                                             visibility_timeout=30)]
            if not batch:
                await asyncio.sleep(0.01)
                continue
            busy += len(batch)
            for message in batch:
                task = asyncio.create_task(handle(message))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        elapsed = time.perf_counter() - started
        await asyncio.gather(*tasks)
        await queue.delete_queue()
    return total / elapsed


_patched = False


def count_requests(backend: Any) -> None:
    """``benchmarks.worker --hook``: count every HTTP request the process sends (aiohttp is the transport of
    both Azure SDKs) as "queue METHOD" or "cosmos METHOD" (Cosmos DB paths are ``/`` and ``/dbs/...``)."""
    global _patched
    if not _patched:
        import aiohttp
        from yarl import URL

        original = aiohttp.ClientSession._request

        async def request(self: Any, method: str, url: Any, *args: Any, **kwargs: Any) -> Any:
            path = URL(str(url)).path
            service = "cosmos" if path == "/" or path.startswith("/dbs") else "queue"
            COUNTS[f"{service} {method.upper()}"] += 1
            return await original(self, method, url, *args, **kwargs)

        aiohttp.ClientSession._request = request  # type: ignore[method-assign,assignment]
        _patched = True
    report_on_signal()
