"""The batcher's connection (``_Wire``) with a socket timeout: a connection that stops answering is given up by its
watchdog (one timer per wire, not a timeout context per batch), the batches on it fail with a ``ConnectionError``,
and the client's retry policy sends them again on a new connection once the server answers."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio

from flowcraft_redis import batcher_for, make_client


async def test_a_connection_that_stops_answering_is_given_up_and_the_batch_sent_again(redis_url: str) -> None:
    client = make_client(redis_url + ("&" if "?" in redis_url else "?") + "socket_timeout=0.2")
    batcher = batcher_for(client)
    pauser = redis.asyncio.Redis.from_url(redis_url)
    try:
        assert await batcher.call("SET", "wire:t", "1")
        wire = batcher._wire
        assert wire is not None and wire.timeout == 0.2
        first = wire._writer
        await pauser.execute_command("CLIENT", "PAUSE", 1000, "ALL")
        began = time.monotonic()
        # answered only after the pause: the watchdog gives the first connection up, the retry policy reconnects
        assert await asyncio.wait_for(batcher.call("GET", "wire:t"), 10) == b"1"
        assert time.monotonic() - began >= 0.9
        assert wire._writer is not None and wire._writer is not first
        # the wire goes on answering, its watchdog at rest once nothing waits
        assert await batcher.call("GET", "wire:t") == b"1"
        await asyncio.sleep(0.5)
        assert wire._watch is None and wire._writer is not None
    finally:
        await pauser.execute_command("CLIENT", "UNPAUSE")
        await pauser.aclose()
        await client.aclose()
