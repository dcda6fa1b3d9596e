"""RqQueue: ``flowcraft.spi.Queue`` on an rq queue, without rq's forking worker.

Jobs are rq jobs (``<R>:job:<id>`` hashes with the fields rq reads) in the rq queue list
``<R>:queue:<name>``. A dequeue moves ids from the list into rq's started registry ``<R>:wip:<name>`` scored by
a visibility deadline; ``extend`` pushes the deadline, ``ack`` removes the entry and deletes the job,
``release`` re-queues it (now, or later through rq's ``<R>:scheduled:<name>``), ``dead_letter`` fails it into
rq's ``FailedJobRegistry`` with the reason. Each dequeue first moves due scheduled jobs to the queue and
expired deliveries back to its front, so delayed jobs and the jobs of dead workers come back without rq's
scheduler.

``receive`` (what workers call) is the same script; when the status and coordination stores are colocated
(same client and key prefix, see ``flowcraft_redis.colocation``) it also returns each job's run record and
takes its lease for the worker (``Delivery.record``/``begin``: ``prefetches_status``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
import uuid
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Self, cast

from flowcraft.errors import ConfigError
from flowcraft.spi import Begin, DeadLetter, Delivery, Job, Queue, RunRecord, WorkerInfo, parse_options
from flowcraft_redis import (
    Colocated,
    Colocation,
    Dispatcher,
    Packed,
    RedisClient,
    batcher_for,
    fast_packing,
    is_cluster,
    shared_any_client,
)
from flowcraft_redis.layout import (
    DEFAULT_PREFIX,
    DEFAULT_TTL,
    Keys,
    dumps,
    loads,
    parse_completion,
    parse_state,
    record_from_hash,
    text,
)
from flowcraft_rq import scripts, workers
from flowcraft_rq.jobs import _RqManaged, decode_data, encode_data
from flowcraft_rq.options import RqQueueOptions
from flowcraft_rq.scripts import RQ_STATIC_FIELDS

DEFAULT_QUEUE = "flowcraft-queue"


def rq_prefix_default() -> str:
    """rq's key prefix (``rq``, or ``$RQ_KEY_PREFIX`` as rq reads it)."""
    try:
        from rq.defaults import RQ_KEY_PREFIX

        return str(RQ_KEY_PREFIX)
    except ImportError:  # pragma: no cover - rq is a dependency
        return "rq"


def iso(timestamp: float) -> str:
    """rq's timestamp format (``rq.utils.utcformat``)."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, slots=True)
class RqReceipt:
    """A delivery's handle: the rq job id and its started-registry entry ``<job id>:<execution id>``.

    ``lease_owner``: the owner ``receive`` took the job's coordination lease for (None: it took none). The
    engine may give a delivery back before it uses ``Delivery.begin`` (an early or unknown-version job, a
    stopping worker), so ``release`` and ``dead_letter`` drop that owner's lease in the same script.

    ``lean``: a job of the lean layout (``queue_layout = "lean"``: pushed or handed over by a commit): it has no
    rq job hash, and ``entry`` (``<job id>:<len(run id)>:<run id><job key>``) is in the queue's lean in-flight
    set instead of rq's started registry."""

    job_id: str
    entry: str
    lease_owner: str | None = None
    lean: bool = False


class RqDispatcher(Dispatcher):
    """Lets ``RedisCoordinationStore.commit`` push fired jobs into this queue in the same script, ack the
    committed delivery there (``acks``: the started-registry entry removed and the rq job hash deleted, as
    ``RqQueue.ack`` does) and hand fired jobs to the committing worker (``continues``: their rq job written as
    started by this queue's worker and put in the started registry with the visibility deadline, as the
    dequeue script would leave them; in the lean layout no rq jobs: entries naming the run's pending jobs, on
    the queue list or, handed over, in the lean in-flight set)."""

    lua = scripts.DISPATCH
    acks = True

    def __init__(self, queue: RqQueue) -> None:
        self.queue = queue
        q = queue
        self.continues = q.continues
        self.keys = (q.queue_key, q.scheduled_key, q.wip_key, q.inflight_key, q.held_key)
        self.lean = q.lean
        constant: list[Any] = [q.job_prefix, q.queue_name, q.worker_name, q.state_ttl_seconds,
                               "1" if q.lean else "0"]
        self._constant: list[Any] = [Packed.of(*constant)] if fast_packing(q.redis) else constant

    def args(self, count: int, now: float) -> list[Any]:
        return [*self._constant, iso(now), repr(now + self.queue.visibility_timeout),
                *(uuid.uuid4().hex for _ in range(count))]

    def ack_args(self, receipt: Any) -> tuple[list[str], list[Any]] | None:
        if not isinstance(receipt, RqReceipt):
            return None  # run by a plain rq worker (rq finishes the job)
        if receipt.lean:
            return [self.queue.inflight_key], [receipt.entry]
        return [self.queue.wip_key, self.queue.job_prefix + receipt.job_id], [receipt.entry]

    def delivery(self, job: Job, reply: list[Any], owner: str, record: RunRecord | None, begin: Begin) -> Delivery:
        job_id, entry = reply
        return Delivery(job, RqReceipt(text(job_id), text(entry), owner, self.lean), deliveries=1, record=record,
                        begin=begin)


class RqQueue(Colocated, Queue):
    """The queue of the ``rq`` backend (see the module docstring and the package README).

    What it does beyond a queue is wired at construction (``flowcraft_redis.colocate``; the ``rq`` preset's
    factory, ``flowcraft_rq.backend.build_backend``, does it):

    * ``prefetch``: when the backend's status and coordination stores are Redis stores on this client and key
      prefix, ``receive`` also reads each job's run record and takes its lease in the dequeue script
      (``Delivery.record``/``begin``). ``dequeue`` never does.
    * ``dispatch``: the colocated coordination store's commits push the jobs they fire into this queue
      (``CoordinationStore.dispatches``), ack the committed delivery (``acks``) and, with ``continues``, hand
      fired jobs straight to the committing worker (``continues``).

    Each can be turned off with the constructor flag of the same name (``continues`` also as an option).

    ``lean`` (``queue_layout = "lean"``): a job a commit fires that is due now gets no rq job hash. Pushed, the
    queue list gets an entry ``<job id>:<len(run id)>:<run id><job key>`` naming the run's pending job, which the
    dequeue reads from the run's coordination hash (``enqueue`` pushes such an entry too for a job due now that is
    its run's pending job as it stands, e.g. a run's start jobs); handed over or delivered, the entry is in the
    queue's lean in-flight set ``<R>:fc-inflight:<name>`` (not rq's started registry); if its worker dies, the next
    dequeue makes it an rq job again from the run's pending job (or, for the job a run's last commit marked done
    without acking it, from ``<R>:fc-held:<name>``, where that commit kept it). Delayed jobs, and jobs that differ
    from their run's pending job (a retry, a bounce), stay rq jobs. rq's tools do not see lean jobs, and a plain rq
    worker must not serve the queue.
    """

    name = "rq"
    Options = RqQueueOptions

    def __init__(self, redis: RedisClient, *, queue_name: str = DEFAULT_QUEUE, key_prefix: str = DEFAULT_PREFIX,
                 rq_prefix: str | None = None, visibility_timeout: float = 30.0,
                 state_ttl_seconds: float = DEFAULT_TTL, worker_name: str | None = None, dispatch: bool = True,
                 prefetch: bool = True, continues: bool = True, lean: bool = False) -> None:
        self.redis = redis
        self.key_prefix = key_prefix
        self.rq_prefix = rq_prefix or rq_prefix_default()
        #: on a Redis Cluster: the queue's keys, its job hashes and its workers' claim lists share the hash tag
        #: ``slot_tag`` (one slot per queue, so its scripts run there); rq sees the queue as ``<name><tag>``
        self.clustered = is_cluster(redis)
        self.slot_tag = ""
        if self.clustered:
            if any(c in text for text in (queue_name, self.rq_prefix) for c in "{}"):
                raise ConfigError(f"on a Redis Cluster the queue name ({queue_name!r}) and rq_key_prefix "
                                  f"({self.rq_prefix!r}) cannot contain braces: the queue's keys get a hash tag")
            self.slot_tag = "{" + hashlib.sha1(queue_name.encode()).hexdigest()[:16] + "}"
            queue_name += self.slot_tag
        self.queue_name = queue_name
        self.visibility_timeout = float(visibility_timeout)
        self.state_ttl_seconds = int(state_ttl_seconds)
        self.worker_name = worker_name or f"flowcraft-{uuid.uuid4().hex[:12]}"
        self.dispatch = dispatch
        self.prefetch = prefetch
        #: with dispatch: commits hand fired jobs straight to the committing worker (``Capabilities.continues``)
        self.continues = continues
        #: the lean layout (see the class docstring)
        self.lean = lean
        #: decided by colocation: ``receive`` prefetches records and leases
        self.prefetching = False
        r = self.rq_prefix
        self.queue_key = f"{r}:queue:{queue_name}"
        self.wip_key = f"{r}:wip:{queue_name}"
        self.scheduled_key = f"{r}:scheduled:{queue_name}"
        self.failed_key = f"{r}:failed:{queue_name}"
        self.queues_key = f"{r}:queues"
        #: in-flight entries of the lean layout's jobs, scored by their deadline
        self.inflight_key = f"{r}:fc-inflight:{queue_name}"
        #: lean in-flight entry -> the JSON of its job, kept by a run's last commit, which marks the job done
        #: without acking its delivery (the engine acks it after the run's end): what a lapsed entry comes back as
        self.held_key = f"{r}:fc-held:{queue_name}"
        self.job_prefix = f"{r}:job:"
        #: where this worker's blocking wait moves the next pushed job id (see ``_take``)
        self.claim_key = f"{r}:claim:{queue_name}:{self.worker_name}"
        self.claims_key = f"{r}:claims:{queue_name}"
        # a commit on a cluster runs in its run's slot, not the queue's: no dispatch there (nor prefetch)
        self._dispatcher = RqDispatcher(self) if dispatch and not self.clustered else None
        self._registered = False  # on a cluster: the queue is in rq's set of queues (written once per process)
        self.batcher = batcher_for(redis)
        batcher = self.batcher
        self._dequeue = batcher.script(scripts.DEQUEUE)
        self._release = batcher.script(scripts.RELEASE)
        self._extend = batcher.script(scripts.EXTEND)
        self._enqueue = batcher.script(scripts.ENQUEUE)
        self._drop = batcher.script(scripts.DROP_LEASE)
        self._prefetch = batcher.script(scripts.PREFETCH)
        self._keys = Keys(key_prefix)

    @classmethod
    def from_config(cls, options: Mapping[str, Any], shared: dict[str, Any]) -> Self:
        """Built alone (a backend overriding a component): it takes no fast path with the other components."""
        return cls.build(shared_any_client(options, shared), parse_options(RqQueueOptions, options))

    @classmethod
    def build(cls, redis: RedisClient, options: RqQueueOptions) -> Self:
        """The queue its options describe, on ``redis``."""
        prefix = options.key_prefix
        if options.queue_layout not in ("rq", "lean"):
            raise ConfigError(f"queue_layout must be 'rq' or 'lean', not {options.queue_layout!r}")
        default_queue = DEFAULT_QUEUE if prefix == DEFAULT_PREFIX else f"{prefix}queue"
        return cls(redis, queue_name=options.queue_name or default_queue, key_prefix=prefix,
                   rq_prefix=options.rq_key_prefix, visibility_timeout=options.visibility_timeout,
                   state_ttl_seconds=options.state_ttl_seconds, continues=options.continues,
                   lean=options.queue_layout == "lean")

    def colocated(self, colocation: Colocation) -> None:
        self.prefetching = self.prefetch and colocation.status is not None and colocation.coordination is not None

    def commit_dispatcher(self) -> Dispatcher | None:
        return self._dispatcher

    @property
    def prefetches_status(self) -> bool:
        return self.prefetching

    async def setup(self) -> None:
        """Only checks connectivity: rq queues need no provisioning."""
        await self.redis.ping()

    async def close(self) -> None:
        await self.redis.aclose()

    def _job_key(self, job_id: str) -> str:
        return self.job_prefix + job_id

    # ------------------------------------------------------------------ producing
    async def enqueue(self, jobs: Sequence[Job], delay: float = 0.0) -> None:
        if not jobs:
            return
        now = time.time()
        args: list[Any] = [self.job_prefix, self.queue_name, iso(now), repr(now + delay) if delay > 0 else "",
                           self.state_ttl_seconds, self.key_prefix, "1" if self.lean and not self.clustered else "0"]
        for job in jobs:
            args += (self.new_job_id(), job.run_id, job.key, dumps(job.to_dict()))
        keys = [self.queue_key, self.scheduled_key]
        if not self.clustered:
            keys.append(self.queues_key)
        elif not self._registered:  # rq's set of queues is in another slot than the queue
            await self.batcher.call("SADD", self.queues_key, self.queue_key)
            self._registered = True
        await self.batcher.call_script(self._enqueue, keys, *args)

    def new_job_id(self) -> str:
        """A new rq job id (on a cluster it starts with the queue's hash tag: its hash is in the queue's slot)."""
        return self.slot_tag + uuid.uuid4().hex

    # ------------------------------------------------------------------ consuming
    async def dequeue(self, max_jobs: int, wait: float) -> list[Delivery]:
        return await self._take(max_jobs, wait, None, 0.0)

    async def receive(self, max_jobs: int, wait: float, owner: str, lease_seconds: float) -> list[Delivery]:
        """``dequeue``, plus (when ``prefetching``) each job's run record and its lease for ``owner`` read and
        taken in the same script: ``Delivery.record`` and ``Delivery.begin``."""
        if not self.prefetching:
            return await self._take(max_jobs, wait, None, 0.0)
        return await self._take(max_jobs, wait, owner, lease_seconds)

    async def _take(self, max_jobs: int, wait: float, owner: str | None, lease_seconds: float) -> list[Delivery]:
        end = time.monotonic() + wait
        claimed = False
        while True:
            now = time.time()
            # the claim list stays registered past the longest block, so only a dead worker's is taken back
            claim_until = now + max(0.0, end - time.monotonic()) + self.visibility_timeout
            in_script = owner is not None and not self.clustered
            next_due, items = await self.batcher.call_script(
                self._dequeue, (self.queue_key, self.wip_key, self.scheduled_key, self.claims_key, self.claim_key,
                                self.inflight_key, self.held_key),
                self.job_prefix, repr(now), iso(now),
                repr(now + self.visibility_timeout), max(1, max_jobs), f"{uuid.uuid4().hex[:12]}-",
                self.worker_name, self.key_prefix, "1" if in_script else "0", owner or "",
                repr(now + lease_seconds), self.state_ttl_seconds, "1" if claimed else "0",
                repr(claim_until), self.queue_name,
            )
            claimed = False
            if items:
                if owner is not None and not in_script:
                    await self._prefetch_each(items, owner, now + lease_seconds)
                records: dict[str, RunRecord | None] = {}  # run id -> its record, parsed once per reply
                return [self._delivery(item, owner, records) for item in items]
            remaining = end - time.monotonic()
            if remaining <= 0:
                return []
            timeout = remaining
            if next_due:
                timeout = min(timeout, max(0.0, float(next_due) - time.time()))
            if timeout < 0.01:
                await asyncio.sleep(0.005)
                continue
            # wake up as soon as something is pushed, taking it into this worker's claim list: one push wakes
            # one worker (see lua/dequeue.lua); redis-py annotates the timeout as int, BLMOVE takes fractions
            moved = await self.redis.blmove(self.queue_key, self.claim_key, timeout,  # type: ignore[arg-type]
                                            "LEFT", "RIGHT")
            claimed = moved is not None

    async def _prefetch_each(self, items: list[list[Any]], owner: str, expiry: float) -> None:
        """On a cluster: what the dequeue script prefetches on one Redis, one script per job on its run's slot
        (``lua/prefetch.lua``), all in one pipeline; fills each item's record, lease, state and completion."""
        now = repr(time.time())
        calls = []
        for item in items:
            job = Job.from_dict(decode_data(item[2]))
            calls.append(self.batcher.call_script(
                self._prefetch, (self._keys.status(job.run_id), self._keys.run(job.run_id)), job.key, owner, now,
                repr(expiry), self.state_ttl_seconds))
        for item, got in zip(items, await asyncio.gather(*calls), strict=True):
            item[4:8] = got

    @staticmethod
    def _delivery(item: list[Any], owner: str | None, records: dict[str, RunRecord | None]) -> Delivery:
        """The delivery of one item of the dequeue script's reply; ``records`` are the run records its earlier
        items brought (a record comes once per run and reply; the engine only reads ``Delivery.record``, so the
        deliveries of one run share it)."""
        job_id, entry, data, deliveries, record, lease, state, completion = item[:8]
        lean = len(item) > 8  # a lean entry: data is the job's JSON, not rq's call tuple
        job = Job.from_dict(loads(data) if lean else decode_data(data))
        if record is None:  # not prefetched (plain dequeue, or a job hash without flowcraft_run/_key)
            return Delivery(job, RqReceipt(text(job_id), text(entry), lean=lean), deliveries=int(deliveries))
        begin: Begin | None = None
        lease = int(lease)
        if lease >= 0:  # an active run: the lease was taken (1) or is another owner's (0)
            begin = Begin(lease=lease == 1, state=parse_state(state),
                          completion=parse_completion(completion) if lease == 1 else None)
        if isinstance(record, int):
            parsed = records[job.run_id]
        else:
            flat = {record[i]: record[i + 1] for i in range(0, len(record), 2)}
            parsed = records[job.run_id] = record_from_hash(flat) if flat else None
        return Delivery(job, RqReceipt(text(job_id), text(entry), owner if lease == 1 else None, lean),
                        deliveries=int(deliveries), record=parsed, begin=begin)

    def _lease_of(self, delivery: Delivery) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV tails of the release scripts that drop the lease ``receive`` took (nothing if it took
        none): the run's coordination hash; the job key and owner."""
        owner = delivery.receipt.lease_owner
        if owner is None:
            return [], []
        return [self._keys.run(delivery.job.run_id)], [delivery.job.key, owner]

    async def ack(self, delivery: Delivery) -> None:
        receipt = delivery.receipt
        if isinstance(receipt, _RqManaged):
            return  # run by a plain rq worker: rq finishes the job
        if receipt.lean:
            await self.batcher.call_many(("ZREM", self.inflight_key, receipt.entry),
                                         ("HDEL", self.held_key, receipt.entry))
            return
        await self.batcher.call_many(("ZREM", self.wip_key, receipt.entry), ("DEL", self._job_key(receipt.job_id)))

    async def release(self, delivery: Delivery, delay: float = 0.0) -> None:
        receipt = delivery.receipt
        if isinstance(receipt, _RqManaged):
            await self.enqueue([delivery.job], delay)
            return
        now = time.time()
        lease_keys, lease_args = self._lease_of(delivery)
        if lease_keys and self.clustered:  # the run's slot is not the queue's: the lease is dropped on its own
            await self.batcher.call_script(self._drop, lease_keys, *lease_args)
            lease_keys, lease_args = [], []
        job = delivery.job
        await self.batcher.call_script(
            self._release, (self.inflight_key if receipt.lean else self.wip_key, self._job_key(receipt.job_id),
                            self.queue_key, self.scheduled_key, self.held_key, *lease_keys),
            receipt.job_id, receipt.entry, repr(now + delay) if delay > 0 else "", iso(now),
            dumps(job.to_dict()) if receipt.lean else "", self.queue_name, job.run_id, job.key,
            self.state_ttl_seconds, *lease_args[1:],
        )

    async def extend(self, delivery: Delivery, seconds: float) -> None:
        receipt = delivery.receipt
        if isinstance(receipt, _RqManaged):
            return
        now = time.time()
        keys = (self.inflight_key,) if receipt.lean else (self.wip_key, self._job_key(receipt.job_id))
        await self.batcher.call_script(self._extend, keys, receipt.entry, repr(now + seconds), iso(now))

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Fail the rq job into rq's FailedJobRegistry (``<R>:failed:<name>``) with ``reason``, as rq does:
        status ``failed``, ``exc_info`` on the job, a failure result in ``<R>:results:<id>``."""
        receipt = delivery.receipt
        if isinstance(receipt, _RqManaged):
            receipt.dead_reason = reason
            return
        lease_keys, lease_args = self._lease_of(delivery)
        if lease_keys:
            await self.batcher.call_script(self._drop, lease_keys, *lease_args)
        now = time.time()
        ttl = self.state_ttl_seconds
        packed = zlib.compress(reason.encode())
        key = self._job_key(receipt.job_id)
        results = f"{self.rq_prefix}:results:{receipt.job_id}"
        fields: dict[str, Any] = {"status": "failed", "ended_at": iso(now), "exc_info": packed,
                                  "flowcraft_reason": reason, "failure_ttl": ttl}
        if receipt.lean:  # a lean job: no job hash yet, so the whole rq job is written
            job = delivery.job
            fields.update({"data": encode_data(dumps(job.to_dict())), "created_at": iso(now),
                           "origin": self.queue_name, "description": f"flowcraft {job.run_id} {job.key}",
                           "flowcraft_run": job.run_id, "flowcraft_key": job.key, "flowcraft_deliveries": 1,
                           **dict(zip(RQ_STATIC_FIELDS[::2], RQ_STATIC_FIELDS[1::2], strict=True))})
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(self.inflight_key if receipt.lean else self.wip_key, receipt.entry)
            if receipt.lean:
                pipe.hdel(self.held_key, receipt.entry)
            pipe.hset(key, mapping=cast(Any, fields))
            pipe.expire(key, ttl)
            pipe.zadd(self.failed_key, {receipt.job_id: now + ttl})
            pipe.xadd(results, {"type": 2, "worker_name": self.worker_name,
                                "exc_string": base64.b64encode(packed).decode()}, maxlen=10)
            pipe.expire(results, ttl)
            await pipe.execute()

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        ids = cast(list[bytes], await self.redis.zrange(self.failed_key, 0, max(0, limit - 1)))
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(self._job_key(text(job_id)), "data", "flowcraft_reason", "exc_info")
            rows = await pipe.execute()
        out: list[DeadLetter] = []
        for job_id, (data, reason, exc_info) in zip(ids, rows, strict=True):
            job: Job | None = None
            if data:
                try:
                    job = Job.from_dict(decode_data(data))
                except (ValueError, KeyError, IndexError, TypeError, zlib.error):
                    job = None
            if reason is not None:
                why = text(reason)
            elif exc_info:
                try:
                    why = zlib.decompress(exc_info).decode(errors="replace")
                except zlib.error:
                    why = text(exc_info)
            else:
                why = "unknown (the job expired)"
            out.append(DeadLetter(job, reason=why, raw=text(job_id), id=text(job_id)))
        return out

    async def delete_dead_letters(self, ids: Sequence[str]) -> int:
        """Remove failed jobs from rq's FailedJobRegistry with their job hash and result stream (as
        ``rq``'s ``FailedJobRegistry.remove(delete_job=True)``); ids are rq job ids (``DeadLetter.id``)."""
        if not ids:
            return 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.zrem(self.failed_key, job_id)
                pipe.delete(self._job_key(job_id), f"{self.rq_prefix}:results:{job_id}")
            replies = await pipe.execute()
        return sum(1 for reply in replies[::2] if reply)

    # ------------------------------------------------------------------ rq's worker registry
    async def register_worker(self, worker: WorkerInfo) -> None:
        """Show the worker in rq's worker registry, so ``rq info`` lists it (``flowcraft_rq.workers``)."""
        await workers.register(self, worker)

    async def unregister_worker(self, worker: WorkerInfo) -> None:
        await workers.unregister(self, worker)

    # ------------------------------------------------------------------ inspection
    async def size(self) -> int:
        """Jobs queued, scheduled or in flight."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.llen(self.queue_key)
            pipe.zcard(self.scheduled_key)
            pipe.zcard(self.wip_key)
            pipe.zcard(self.inflight_key)
            counts = await pipe.execute()
        return int(sum(counts))

    async def depth(self) -> int:
        """Jobs waiting to be delivered: rq's queue list plus the scheduled (delayed) set, not those in flight."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.llen(self.queue_key)
            pipe.zcard(self.scheduled_key)
            counts = await pipe.execute()
        return int(sum(counts))
