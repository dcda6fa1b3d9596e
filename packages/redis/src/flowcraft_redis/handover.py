"""An in-flight set on Redis for jobs a commit hands to the committing worker, for a queue that is not on Redis.

``CoordinationStore.continues`` lets a finishing commit hand fired jobs straight to the worker that committed,
already "received", so they skip the queue hop. A queue on the same Redis (``flowcraft_rq``) puts them in its own
in-flight set; a queue elsewhere (RabbitMQ: ``flowcraft_rabbitmq``) has no such set the commit script could
write, so :class:`Handover` gives it one beside the coordination state: a sorted set
``<key_prefix>handover:<queue name>``.

* **Hand-over** (``Handover`` is the ``Dispatcher`` given to ``RedisCoordinationStore(dispatcher=...)``;
  ``queues = False``, ``continues = True``, ``acks = False``): the commit script (``lua/commit.lua`` with
  ``lua/handover_dispatch.lua``) takes the job's lease for the committing worker and adds the job to the set in
  the same atomic step, scored by its visibility deadline (now + ``visibility_timeout``); the engine publishes
  the fired jobs it was not handed to the queue itself. A member is ``<token>.<position> <job JSON>``: the job
  as the queue encodes it (``Job.to_dict`` as compact JSON; the queue's ``decode_job`` reads it back), after a
  token unique to the commit and the job's position among the jobs it fired (``encode_member`` /
  ``decode_member``). The job also stays recorded as pending in the run's coordination hash, so a crash loses
  nothing: the commit's recovery path fires it again.
* **The queue serves the handed delivery** (``Delivery.receipt`` is a :class:`HandedReceipt`): ``ack`` removes
  the member (the removals asked for in one event-loop iteration go out as one ``ZREM`` on the client's shared
  auto-pipeline, not awaited: a removal that never lands only brings the job back through the sweep, and a
  duplicate delivery of a done job is harmless); ``extend`` moves the deadline, only while the member is still
  there (``ZADD XX``); a release or a dead letter publishes the job to the queue (or its dead-letter queue)
  first, confirmed, and ``remove`` drops the member afterwards.
* **Sweep**: every consuming worker's queue calls ``sweep`` periodically (every ``sweep_interval`` = min(1 s,
  visibility / 4)). One script (``lua/handover_sweep.lua``) claims the members whose deadline passed — their
  worker died, or stalled without a heartbeat — by moving their deadline one visibility timeout on, so no other
  sweeper takes them meanwhile, and returns them; the caller republishes each to its queue with publisher
  confirms and then removes it. A sweeper that dies between the two leaves the claim to lapse and the next sweep
  to take it again: a job may be published twice, never lost. A job a live worker holds within its visibility
  (deadline in the future, pushed on by the engine's heartbeat through ``extend``) is never taken.

So a dead worker's handed jobs are back on the queue within ``visibility_timeout`` + ``sweep_interval`` of its
last heartbeat (as long as some worker consumes the queue), where a job received from the broker comes back as
soon as the broker sees the connection close.

Only on one Redis: on a Redis Cluster the commit script runs in the run's slot and the set is in another, so
``Handover.supported`` is False there and the queue's factory wires no hand-over (the jobs all go through the
queue, as before).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flowcraft.spi import Begin, Delivery, Job, RunRecord
from flowcraft_redis._client import RedisClient, batcher_for, is_cluster
from flowcraft_redis.colocation import Dispatcher
from flowcraft_redis.layout import read_lua

log = logging.getLogger("flowcraft.redis.handover")

#: the hand-over's ``Dispatcher.lua``: defines ``dispatch`` for the commit script
DISPATCH_LUA = read_lua("flowcraft_redis", "handover_dispatch")
SWEEP_LUA = read_lua("flowcraft_redis", "handover_sweep")
#: the most handed jobs one sweep claims (the next sweep takes the rest)
SWEEP_BATCH = 100
#: the longest pause between two sweeps, in seconds
MAX_SWEEP_INTERVAL = 1.0


def encode_member(token: str, position: int, body: str | bytes) -> bytes:
    """The set member of a handed job: ``<token>.<position> <job JSON>`` (what ``lua/handover_dispatch.lua``
    writes; the token is unique to the commit and has no space)."""
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    return b"%s.%d %s" % (token.encode(), position, raw)


def decode_member(member: bytes) -> tuple[bytes, bytes]:
    """``(unique part, job body)`` of a set member; ValueError when it is not one."""
    unique, space, body = member.partition(b" ")
    if not space or b"." not in unique or not body:
        raise ValueError(f"not a handed job: {member[:60]!r}")
    return unique, body


@dataclass(eq=False, slots=True)
class HandedReceipt:
    """``Delivery.receipt`` of a job a commit handed over: its member in the in-flight set. ``settled`` is set
    once the queue acked, released or dead-lettered it (a second call does nothing)."""

    member: bytes
    settled: bool = False

    @property
    def body(self) -> bytes:
        """The job as the queue encodes it (the message body to publish)."""
        return decode_member(self.member)[1]


class Handover(Dispatcher):
    """The in-flight set of handed jobs of one queue (see the module docstring): the coordination store's
    dispatcher, and what the queue calls to ack, extend, release and sweep them."""

    lua = DISPATCH_LUA
    queues = False
    continues = True
    acks = False

    def __init__(self, redis: RedisClient, *, queue_name: str, key_prefix: str, visibility_timeout: float) -> None:
        if is_cluster(redis):
            raise ValueError("no hand-over on a Redis Cluster: the commit runs in the run's slot, not the set's "
                             "(check Handover.supported first)")
        if not visibility_timeout > 0:
            raise ValueError(f"visibility_timeout must be positive, got {visibility_timeout!r}")
        self.redis = redis
        self.key = f"{key_prefix}handover:{queue_name}"
        self.keys = (self.key,)
        self.visibility_timeout = float(visibility_timeout)
        #: how often a consuming queue sweeps: min(1 s, visibility / 4)
        self.sweep_interval = min(MAX_SWEEP_INTERVAL, self.visibility_timeout / 4)
        self.batcher = batcher_for(redis)
        self._sweep = self.batcher.script(SWEEP_LUA)
        self._removing: list[bytes] = []
        self._remover: asyncio.Task[None] | None = None
        #: jobs the sweeps took back, for measurements and tests
        self.swept = 0

    @staticmethod
    def supported(redis: RedisClient) -> bool:
        """Whether the commit script can write the set on ``redis`` (one Redis, not a cluster)."""
        return not is_cluster(redis)

    def __repr__(self) -> str:
        return f"Handover({self.key!r}, visibility_timeout={self.visibility_timeout})"

    # ------------------------------------------------------------------ Dispatcher (the commit script)
    def args(self, count: int, now: float) -> list[Any]:
        return [repr(now + self.visibility_timeout), uuid.uuid4().hex[:16]]

    def delivery(self, job: Job, reply: list[Any], owner: str, record: RunRecord | None, begin: Begin) -> Delivery:
        member = reply if isinstance(reply, bytes) else str(reply).encode("utf-8", "surrogatepass")
        return Delivery(job, HandedReceipt(member), deliveries=1, record=record, begin=begin)

    # ------------------------------------------------------------------ what the queue calls
    def ack(self, receipt: HandedReceipt) -> None:
        """Remove a handed job that is done with: queued for this event-loop iteration's one ``ZREM`` and not
        awaited (a removal that never lands only brings the job back through a sweep)."""
        self._removing.append(receipt.member)
        loop = asyncio.get_running_loop()
        if self._remover is None or self._remover.get_loop() is not loop:  # (a remover of a closed loop is gone)
            self._remover = loop.create_task(self._remove_queued())

    async def _remove_queued(self) -> None:
        try:
            await asyncio.sleep(0)  # the acks of this iteration join the batch
            while self._removing:
                members, self._removing = self._removing, []
                try:
                    await self.batcher.call("ZREM", self.key, *members)
                except Exception as exc:  # they come back through a sweep, as a delivery not acked would
                    log.warning("could not remove %d handed jobs from %s (%s); a sweep brings them back",
                                len(members), self.key, " ".join(str(exc).split()))
        finally:
            if self._remover is asyncio.current_task():
                self._remover = None

    async def flush(self) -> None:
        """Wait for the removals asked for so far (a queue closing calls it)."""
        remover = self._remover
        if remover is not None and remover.get_loop() is asyncio.get_running_loop():
            await asyncio.wait({remover})

    async def remove(self, members: Sequence[bytes]) -> None:
        """Remove members now (after their jobs were published to the queue): awaited."""
        if members:
            await self.batcher.call("ZREM", self.key, *members)

    async def extend(self, receipt: HandedReceipt, seconds: float) -> bool:
        """Move the job's visibility deadline to now + ``seconds`` if it is still in the set; False if it is not
        (acked, or swept back to the queue)."""
        changed = await self.batcher.call("ZADD", self.key, "XX", "CH", repr(time.time() + seconds), receipt.member)
        return bool(changed)

    async def sweep(self, limit: int = SWEEP_BATCH) -> list[bytes]:
        """Claim the handed jobs whose visibility deadline passed (each gets a new one, one visibility timeout on,
        so no other sweeper takes it) and return their members: republish each to the queue, then ``remove``."""
        now = time.time()
        claimed = await self.batcher.call_script(self._sweep, self.keys, repr(now),
                                                 repr(now + self.visibility_timeout), max(1, limit))
        self.swept += len(claimed)
        return [bytes(member) for member in claimed]

    async def deadlines(self) -> dict[bytes, float]:
        """Every handed job in the set and its visibility deadline (inspection and tests)."""
        raw = await self.batcher.call("ZRANGE", self.key, 0, -1, "WITHSCORES")
        pairs = raw if raw and isinstance(raw[0], list | tuple) else zip(raw[::2], raw[1::2], strict=True)
        return {bytes(member): float(score) for member, score in pairs}
