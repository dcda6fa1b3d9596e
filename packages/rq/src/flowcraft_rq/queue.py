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
import time
import uuid
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from os import urandom
from typing import Any, Self, cast

from redis.crc import key_slot

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
    DEFAULT_GROUPS,
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

#: on a Redis Cluster, the longest a receive leaves a queue group's dequeue script (its recoveries: due scheduled
#: jobs, lapsed deliveries, dead claim lists) unrun when the group gets no share of the jobs asked for (seconds)
RECOVERY_INTERVAL = 0.1


#: on a Redis Cluster, the same for a group on which this worker's blocking wait is outstanding (it was idle there
#: lately): its recoveries then go at about the pace of an idle worker's on one Redis, whose receives, ``poll_wait``
#: apart (1 s by default), each run the dequeue script once (seconds)
IDLE_RECOVERY_INTERVAL = 1.0


#: on a Redis Cluster, a receive shares its jobs over the groups of the worker's home primary first, except every
#: this many receives, which share them over every group (``RqQueue._dequeue_groups``)
HOME_TURNS = 4

#: on a Redis Cluster, the least a worker's blocking wait on a queue group lasts (it is kept across receives, so an
#: idle worker renews its waits about once per this many seconds rather than once per receive); at most 0.8 of the
#: client's socket timeout, which would otherwise end the wait with an error (seconds)
BLOCK_SECONDS = 2.0


def _shares(groups: Sequence[QueueGroup], wanted: int, ready: Sequence[int]) -> list[tuple[QueueGroup, int]]:
    """``wanted`` jobs asked of ``groups`` in their order, each up to the ids it is known to have ready (``ready``
    by group; one whose count is unknown, -1, is asked the rest), so a receive runs as few dequeue scripts as
    the known counts allow; what those leave is asked of the first group as well (more may have come since)."""
    out: list[tuple[QueueGroup, int]] = []
    left = wanted
    for group in groups:
        if left <= 0:
            break
        known = ready[group.index]
        take = left if known < 0 else min(known, left)
        out.append((group, take))
        left -= take
    if left > 0 and out:
        out[0] = (out[0][0], out[0][1] + left)
    return out


def rq_prefix_default() -> str:
    """rq's key prefix (``rq``, or ``$RQ_KEY_PREFIX`` as rq reads it)."""
    try:
        from rq.defaults import RQ_KEY_PREFIX

        return str(RQ_KEY_PREFIX)
    except ImportError:  # pragma: no cover - rq is a dependency
        return "rq"


#: the last whole second ``iso`` formatted and its text up to the fraction's dot (one strftime per second)
_iso_second: tuple[int, str] = (-1, "")


def iso(timestamp: float) -> str:
    """rq's timestamp format (``rq.utils.utcformat``): ``datetime.fromtimestamp(timestamp, UTC)
    .strftime("%Y-%m-%dT%H:%M:%S.%fZ")``, with the text of the seconds kept from the last call in the same second."""
    global _iso_second
    second = int(timestamp)  # the timestamps here are positive: int() is the floor
    micros = round((timestamp - second) * 1e6)
    if micros >= 1_000_000:  # rounded up into the next second, as datetime.fromtimestamp rounds
        second, micros = second + 1, micros - 1_000_000
    cached, head = _iso_second
    if cached != second:
        head = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _iso_second = (second, head)
    return f"{head}{micros:06d}Z"


def new_id() -> str:
    """A new rq job id: 32 random hex digits (as ``uuid.uuid4().hex``; 128 random bits, read in one call)."""
    return urandom(16).hex()


def new_ids(count: int, head: str = "") -> list[str]:
    """``count`` new rq job ids after ``head``, as ``new_id`` makes them, from one read of random bytes."""
    if count == 1:
        return [head + urandom(16).hex()]
    digits = urandom(16 * count).hex()
    return [head + digits[at : at + 32] for at in range(0, 32 * count, 32)]


def execution_prefix() -> str:
    """The head of the execution ids of one dequeue's entries in rq's started registry (``<job id>:<execution
    id>``, scored by a float deadline): 32 random hex digits and a dash (the script appends the item's number).

    Redis keeps a sorted set whose members are all at most 64 bytes (``zset-max-listpack-value``) as a listpack
    until it has 128, and an insert there parses every score before its place with ``strtod`` (deadlines grow, so
    all of them): ~42k instructions per ``ZADD`` + ``ZREM`` with 16 entries in flight, ~78k with 40, against ~14k
    in a skiplist. Execution ids this long (and a hand-over's, ``c`` and the job id: lua/dispatch.lua) make every
    entry longer than 64 bytes, so the registry is a skiplist from its first entry."""
    return urandom(16).hex() + "-"


@dataclass(frozen=True, slots=True)
class RqReceipt:
    """A delivery's handle: the rq job id and its started-registry entry ``<job id>:<execution id>``.

    ``lease_owner``: the owner ``receive`` took the job's coordination lease for (None: it took none). The
    engine may give a delivery back before it uses ``Delivery.begin`` (an early or unknown-version job, a
    stopping worker), so ``release`` and ``dead_letter`` drop that owner's lease in the same script.

    ``lean``: a job of the lean layout (``queue_layout = "lean"``: pushed or handed over by a commit): it has no
    rq job hash, and ``entry`` (``<job id>:<len(run id)>:<run id><job key>``) is in the queue's lean in-flight
    set instead of rq's started registry.

    ``group``: on a Redis Cluster, the queue group of the job's run, whose keys the delivery's are."""

    job_id: str
    entry: str
    lease_owner: str | None = None
    lean: bool = False
    #: the queue group the delivery came from (always 0 on one Redis; see ``RqQueue.groups``)
    group: int = 0


@dataclass(frozen=True, slots=True)
class QueueGroup:
    """The keys of one rq queue of an ``RqQueue``: the whole queue on one Redis; on a Redis Cluster one of its
    ``cluster_queue_groups`` groups, the rq queue ``<name>{<group tag>}`` whose keys (and job ids, claim lists,
    lean sets) carry the group's hash tag, the slot of the runs of that group (``flowcraft_redis.layout.Keys``)."""

    index: int
    #: the group's hash tag ('' on one Redis)
    tag: str
    #: rq's name of the queue (the jobs' ``origin``)
    queue_name: str
    queue_key: str
    wip_key: str
    scheduled_key: str
    failed_key: str
    #: in-flight entries of the lean layout's jobs, scored by their deadline
    inflight_key: str
    #: lean in-flight entry -> the JSON of its job, kept by a run's last commit, which marks the job done without
    #: acking its delivery (the engine acks it after the run's end): what a lapsed entry comes back as
    held_key: str
    #: where this worker's blocking wait moves the next pushed job id (see ``RqQueue._take``)
    claim_key: str
    claims_key: str

    @classmethod
    def of(cls, index: int, tag: str, name: str, rq_prefix: str, worker_name: str) -> QueueGroup:
        if tag:
            name += "{" + tag + "}"
        r = rq_prefix
        return cls(index, tag, name, f"{r}:queue:{name}", f"{r}:wip:{name}", f"{r}:scheduled:{name}",
                   f"{r}:failed:{name}", f"{r}:fc-inflight:{name}", f"{r}:fc-held:{name}",
                   f"{r}:claim:{name}:{worker_name}", f"{r}:claims:{name}")

    @property
    def id_head(self) -> str:
        """What its job ids start with: on a cluster the group's hash tag (their hashes are in the group's slot)."""
        return "{" + self.tag + "}" if self.tag else ""

    def new_job_id(self) -> str:
        return self.id_head + new_id()


class RqDispatcher(Dispatcher):
    """Lets ``RedisCoordinationStore.commit`` push fired jobs into this queue in the same script, ack the
    committed delivery there (``acks``: the started-registry entry removed and the rq job hash deleted, as
    ``RqQueue.ack`` does) and hand fired jobs to the committing worker (``continues``: their rq job written as
    started by this queue's worker and put in the started registry with the visibility deadline, as the
    dequeue script would leave them; in the lean layout no rq jobs: entries naming the run's pending jobs, on
    the queue list or, handed over, in the lean in-flight set). One per queue group: on a Redis Cluster a commit
    uses the one of its run's group (``for_run``), whose keys share the run's slot."""

    acks = True

    def __init__(self, queue: RqQueue, group: QueueGroup) -> None:
        self.queue = queue
        self.group = group
        q = queue
        self.continues = q.continues
        self.keys = (group.queue_key, group.scheduled_key, group.wip_key, group.inflight_key, group.held_key)
        self.lean = q.lean
        self._id_head = group.id_head  # read once: args runs for every commit that fires jobs
        #: a run's start (``CoordinationStore.start``) adds the queue to rq's set of queues, as ``enqueue`` does; on a
        #: cluster the set is in another slot than the group: the queue registers its groups in ``setup``
        self.registry = q.queues_key if not q.clustered else None
        #: the same text for every group (the store builds its scripts from the queue's first dispatcher)
        self.lua = scripts.dispatch(q.job_prefix, q.lean)
        constant: list[Any] = [group.queue_name, q.worker_name]
        self._constant: list[Any] = [Packed.of(*constant)] if fast_packing(q.redis) else constant

    def for_run(self, run_id: str) -> Dispatcher:
        queue = self.queue
        return queue.dispatchers[queue.group_of(run_id)] if len(queue.dispatchers) > 1 else self

    def args(self, count: int, now: float) -> list[Any]:
        return [*self._constant, iso(now), repr(now + self.queue.visibility_timeout), *new_ids(count, self._id_head)]

    def ack_args(self, receipt: Any) -> tuple[list[str], list[Any]] | None:
        if not isinstance(receipt, RqReceipt):
            return None  # run by a plain rq worker (rq finishes the job)
        group = self.queue.groups[receipt.group]
        if receipt.lean:
            return [group.inflight_key], [receipt.entry]
        return [group.wip_key, self.queue.job_prefix + receipt.job_id], [receipt.entry]

    def delivery(self, job: Job, reply: list[Any], owner: str, record: RunRecord | None, begin: Begin) -> Delivery:
        job_id, entry = reply
        return Delivery(job, RqReceipt(text(job_id), text(entry), owner, self.lean, self.group.index), deliveries=1,
                        record=record, begin=begin)


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
                 prefetch: bool = True, continues: bool = True, lean: bool = False,
                 cluster_queue_groups: int = DEFAULT_GROUPS) -> None:
        self.redis = redis
        self.key_prefix = key_prefix
        self.rq_prefix = rq_prefix or rq_prefix_default()
        #: on a Redis Cluster the queue is ``cluster_queue_groups`` rq queues (``groups``), one per hash tag of the
        #: keyspace's queue groups: a run's jobs go to the group its keys are tagged with (``Keys``)
        self.clustered = is_cluster(redis)
        if self.clustered and any(c in text for text in (queue_name, self.rq_prefix) for c in "{}"):
            raise ConfigError(f"on a Redis Cluster the queue name ({queue_name!r}) and rq_key_prefix "
                              f"({self.rq_prefix!r}) cannot contain braces: the queue's keys get a hash tag")
        self._keys = Keys(key_prefix, int(cluster_queue_groups) if self.clustered else 0)
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
        #: the queue's rq queues: one on one Redis, one per queue group on a cluster (``QueueGroup``)
        self.groups = tuple(QueueGroup.of(g, tag, queue_name, r, self.worker_name)
                            for g, tag in enumerate(self._keys.tags or ("",)))
        first = self.groups[0]
        #: rq's name of the queue (on a cluster: of its first group; ``groups`` has them all)
        self.queue_name = first.queue_name
        self.queue_key, self.wip_key, self.scheduled_key = first.queue_key, first.wip_key, first.scheduled_key
        self.failed_key, self.inflight_key, self.held_key = first.failed_key, first.inflight_key, first.held_key
        self.claim_key, self.claims_key = first.claim_key, first.claims_key
        self.queues_key = f"{r}:queues"
        self.job_prefix = f"{r}:job:"
        #: one per group; a commit dispatches with its run's (``RqDispatcher.for_run``)
        self.dispatchers = tuple(RqDispatcher(self, group) for group in self.groups)
        self._dispatcher = self.dispatchers[0] if dispatch else None
        self._registered = False  # on a cluster: the groups are in rq's set of queues (written once per process)
        self._rotation = 0  # on a cluster: the group a receive starts at
        self._turns = 0  # on a cluster: receives so far (every HOME_TURNS-th shares over every group)
        self._shared_rotation = 0  # on a cluster: the group such a receive starts at
        #: on a cluster: per group, this worker's outstanding blocking wait (``_wait_groups``)
        self._waits: dict[int, asyncio.Task[Any]] = {}
        #: on a cluster: per group, when (``time.monotonic``) this worker last ran its dequeue script there
        self._scripted = [float("-inf")] * len(self.groups)
        #: on a cluster: per group, the ids this worker last learned are ready there (-1: unknown)
        self._ready = [-1] * len(self.groups)
        #: on a cluster: per group, when its earliest scheduled or lapsing entry falls due, as its last dequeue
        #: script that found nothing reported (None: nothing, or not known)
        self._due: list[float | None] = [None] * len(self.groups)
        #: on a cluster: the groups of this worker's home primary (``_home_groups``; None: not known yet)
        self._home: frozenset[int] | None = None
        #: on a cluster: per group, until when its last dequeue script registered this worker's claim list
        self._registered_until = [float("-inf")] * len(self.groups)
        self.batcher = batcher_for(redis)
        batcher = self.batcher
        self._dequeue = batcher.script(scripts.DEQUEUE)
        self._release = batcher.script(scripts.RELEASE)
        self._extend = batcher.script(scripts.EXTEND)
        self._enqueue = batcher.script(scripts.ENQUEUE)
        self._drop = batcher.script(scripts.DROP_LEASE)

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
                   lean=options.queue_layout == "lean", cluster_queue_groups=options.cluster_queue_groups)

    def colocated(self, colocation: Colocation) -> None:
        self.prefetching = self.prefetch and colocation.status is not None and colocation.coordination is not None

    def commit_dispatcher(self) -> Dispatcher | None:
        return self._dispatcher

    @property
    def prefetches_status(self) -> bool:
        return self.prefetching

    def group_of(self, run_id: str) -> int:
        """The queue group of a run's jobs (0 on one Redis)."""
        return self._keys.group(run_id)

    async def setup(self) -> None:
        """Checks connectivity (rq queues need no provisioning); on a cluster also puts the groups' queues in rq's
        set of queues (``rq info`` lists them), which a run's start cannot do there (another slot)."""
        await self.redis.ping()
        await self._register_groups()

    async def _register_groups(self) -> None:
        """On a cluster, once per process: the groups' queues in rq's set of queues (in another slot than theirs)."""
        if self.clustered and not self._registered:
            await self.batcher.call("SADD", self.queues_key, *(group.queue_key for group in self.groups))
            self._registered = True

    async def close(self) -> None:
        waits, self._waits = list(self._waits.values()), {}
        for task in waits:
            task.cancel()
        if waits:
            await asyncio.gather(*waits, return_exceptions=True)
        await self.redis.aclose()

    def _job_key(self, job_id: str) -> str:
        return self.job_prefix + job_id

    # ------------------------------------------------------------------ producing
    async def enqueue(self, jobs: Sequence[Job], delay: float = 0.0) -> None:
        if not jobs:
            return
        now = time.time()
        due = repr(now + delay) if delay > 0 else ""
        lean = "1" if self.lean else "0"
        by_group: dict[int, list[Any]] = {}
        for job in jobs:
            group = self.groups[self.group_of(job.run_id)]
            by_group.setdefault(group.index, []).extend(
                (group.new_job_id(), job.run_id, job.key, dumps(job.to_dict())))
        await self._register_groups()
        calls = []
        for index, tail in by_group.items():
            group = self.groups[index]
            keys = [group.queue_key, group.scheduled_key]
            if not self.clustered:
                keys.append(self.queues_key)
            calls.append(self.batcher.call_script(
                self._enqueue, keys, self.job_prefix, group.queue_name, iso(now), due, self.key_prefix, lean,
                group.tag, *tail))
        await asyncio.gather(*calls)

    def new_job_id(self, run_id: str = "") -> str:
        """A new rq job id for a job of ``run_id`` (on a cluster it starts with the hash tag of the run's group:
        its hash is in the group's slot)."""
        return self.groups[self.group_of(run_id)].new_job_id()

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
        grouped = len(self.groups) > 1
        max_jobs = max(1, max_jobs)
        while True:
            now = time.time()
            # the claim list stays registered past the longest block, so only a dead worker's is taken back
            claim_until = now + max(0.0, end - time.monotonic()) + self.visibility_timeout
            if grouped:
                next_due, items = await self._dequeue_groups(max_jobs, now, claim_until, owner, lease_seconds)
            else:
                next_due, items, _ = await self._dequeue_group(self.groups[0], max_jobs, claimed, now, claim_until,
                                                               owner, lease_seconds)
            claimed = False
            if items:
                records: dict[str, RunRecord | None] = {}  # run id -> its record, parsed once per reply
                return [self._delivery(item, owner, records, group) for group, item in items]
            remaining = end - time.monotonic()
            if remaining <= 0:
                return []
            timeout = remaining
            if next_due is not None:
                timeout = min(timeout, max(0.0, next_due - time.time()))
            if timeout < 0.01:
                await asyncio.sleep(0.005)
                continue
            # wake up as soon as something is pushed, taking it into this worker's claim list: one push wakes
            # one worker (see lua/dequeue.lua)
            if grouped:
                await self._wait_groups(timeout)
                continue
            # redis-py annotates the timeout as int, BLMOVE takes fractions
            moved = await self.redis.blmove(self.queue_key, self.claim_key, timeout,  # type: ignore[arg-type]
                                            "LEFT", "RIGHT")
            claimed = moved is not None

    async def _dequeue_group(self, group: QueueGroup, count: int, claimed: bool, now: float, claim_until: float,
                             owner: str | None, lease_seconds: float
                             ) -> tuple[float | None, list[tuple[int, list[Any]]], int]:
        """The dequeue script on one group for up to ``count`` jobs (0: only its recoveries): when something
        falls due next (None: nothing), the items (with the group) and how many ids the group has left ready."""
        next_due, items, left = await self.batcher.call_script(
            self._dequeue, (group.queue_key, group.wip_key, group.scheduled_key, group.claims_key, group.claim_key,
                            group.inflight_key, group.held_key),
            self.job_prefix, repr(now), iso(now),
            repr(now + self.visibility_timeout), count, execution_prefix(),
            self.worker_name, self.key_prefix, "1" if owner is not None else "0", owner or "",
            repr(now + lease_seconds), self.state_ttl_seconds, "1" if claimed else "0",
            repr(claim_until), group.queue_name, group.tag,
        )
        return float(next_due) if next_due else None, [(group.index, item) for item in items], int(left)

    async def _dequeue_groups(self, max_jobs: int, now: float, claim_until: float, owner: str | None,
                              lease_seconds: float) -> tuple[float | None, list[tuple[int, list[Any]]]]:
        """On a cluster: the dequeue scripts of the groups that may have jobs, in one pipeline (the batcher sends
        each primary its part, the parts at once), and a plain ``LLEN`` of the other groups' queues.

        The worker keeps, per group, how many ids it last learned are ready there (``_ready``: the script's
        ``left``, an ``LLEN``, an id one of its blocking waits moved, even one kept from an earlier receive;
        unknown at first). ``max_jobs`` is asked of the groups not known to be empty from a rotating one, each
        up to the ids it is known to have ready (``_shares``: as few scripts as those counts allow), only those
        of the worker's home primary if it has any (``_home_groups``), except at every
        ``HOME_TURNS``-th receive (then over all of them, from a rotation of their own: no group waits for the
        home primary's to run out). A group known to be empty gets its script only when its recoveries are due
        (this worker last ran its script there ``RECOVERY_INTERVAL`` ago or more, or the earliest scheduled or
        lapsing entry it reported is due now); otherwise an ``LLEN``, which costs the shard a fraction of an empty
        script, tells whether something was pushed there since (none while this worker's blocking wait there is
        outstanding: a push ends the wait, which marks the group ready). If the scripts come short, the rest is asked
        again over the groups with ids ready, the home primary's first (at most three rounds). With nothing
        found, every group whose recoveries are due or whose registration of this worker's claim list would lapse
        during the wait runs its script before the worker blocks, so a worker never blocks on a group with an
        unregistered claim list, and its wait ends when the earliest entry it knows of falls due."""
        groups = self.groups
        self._turns += 1
        # every HOME_TURNS-th receive shares over every group, from a rotation of its own, so no group's jobs wait
        # for a home primary's to run out (2 workers on 3 primaries leave one no one's home)
        shared = self._turns % HOME_TURNS == 0
        start = self._shared_rotation if shared else self._rotation
        if shared:
            self._shared_rotation = (start + 1) % len(groups)
        else:
            self._rotation = (start + 1) % len(groups)
        order = [groups[(start + i) % len(groups)] for i in range(len(groups))]
        ready, last, due, registered = self._ready, self._scripted, self._due, self._registered_until
        waits = self._waits
        for index, task in list(waits.items()):  # a wait kept from an earlier receive may have moved an id since
            if task.done():
                del waits[index]
                self._moved(index, task)
        clock = time.monotonic()
        stale, idle = clock - RECOVERY_INTERVAL, clock - IDLE_RECOVERY_INTERVAL
        likely = [group for group in order if ready[group.index] != 0]
        home = frozenset() if shared else self._home_groups()
        preferred = [group for group in likely if group.index in home] or likely
        shares = {group.index: count for group, count in _shares(preferred, max_jobs, ready)}
        batch: list[tuple[QueueGroup, int]] = []
        probes: list[QueueGroup] = []
        for group in order:
            g = group.index
            count, when = shares.get(g, 0), due[g]
            if count or last[g] <= (idle if g in waits else stale) or (when is not None and when <= now):
                batch.append((group, count))
            elif ready[g] == 0 and g not in waits:
                # a group with this worker's blocking wait outstanding needs no LLEN: an id pushed there ends a
                # wait (this worker's, which marks it ready at the next receive, or another worker's, who takes it)
                probes.append(group)
        items: list[tuple[int, list[Any]]] = []
        ran: set[int] = set()
        before_blocking = True
        for _ in range(3):
            replies, lengths = await asyncio.gather(
                asyncio.gather(*(self._dequeue_group(group, count, True, now, claim_until, owner, lease_seconds)
                                 for group, count in batch)),
                self.batcher.call_many(*(("LLEN", group.queue_key) for group in probes)) if probes
                else asyncio.sleep(0, ()))
            for group, length in zip(probes, lengths, strict=True):
                ready[group.index] = int(length)
            for (group, _), (next_due, got, left) in zip(batch, replies, strict=True):
                g = group.index
                last[g] = clock
                ran.add(g)
                items += got
                ready[g] = left
                due[g] = next_due
                if not got:  # the script registered this worker's claim list of the group until claim_until
                    registered[g] = claim_until
            probes = []
            wanted = max_jobs - len(items)
            if wanted <= 0:
                break
            candidates = [group for group in order if ready[group.index] > 0]
            if not candidates and not items and before_blocking:
                # nothing found: the worker will block; first the groups whose recoveries are due or whose claim
                # list's registration would lapse during the wait or a blocking wait started now (claim_until is
                # the wait's end + the visibility timeout)
                before_blocking = False
                until = max(claim_until - self.visibility_timeout, time.time() + self._block_seconds(0.0))
                batch = [(group, 0) for group in order if group.index not in ran
                         and (last[group.index] <= (idle if group.index in waits else stale)
                              or registered[group.index] < until)]
                if not batch:
                    break
                continue
            if not candidates:
                break
            candidates = [group for group in candidates if group.index in home] or candidates
            batch = [(group, count) for group, count in _shares(candidates, wanted, ready) if count]
        known = [when for when in due if when is not None]
        return (min(known) if known else None), items

    def _home_groups(self) -> frozenset[int]:
        """On a cluster, the groups of this worker's home primary (empty while the client knows no slot map): a
        receive shares its jobs out over those first, so the runs a worker takes (and the jobs their commits hand
        it over) are mostly on one primary and each batch it sends goes to fewer primaries (fewer, larger requests
        per shard). Which primary is the home one follows from the worker's name, so workers spread over them."""
        home = self._home
        if home is not None:
            return home
        slots = getattr(self.redis, "nodes_manager", None)
        cache = getattr(slots, "slots_cache", None) if slots is not None else None
        if not cache:
            return frozenset()
        owners: dict[int, str] = {}
        for group in self.groups:
            nodes = cache.get(key_slot(group.queue_key.encode()))
            if not nodes:
                return frozenset()
            owners[group.index] = nodes[0].name
        names = sorted(set(owners.values()))
        name = names[zlib.crc32(self.worker_name.encode()) % len(names)]
        self._home = home = frozenset(index for index, owner in owners.items() if owner == name)
        return home

    async def _wait_groups(self, timeout: float) -> None:
        """On a cluster, with nothing found: one blocking ``BLMOVE <group queue> <this worker's claim list of that
        group>`` per group outstanding (each on a connection of its own, lasting ``_block_seconds``), until one
        moves an id or ``timeout`` (a wait that ends empty before is started again). The waits still outstanding
        are kept for the next receive; an id one moves later sits in this worker's claim list of that group, taken
        by its next dequeue there or, if it dies, put back once the claim lapses (lua/dequeue.lua). A wait that
        moved an id marks its group ready (``_ready``), so the next receive runs that group's script."""
        waits = self._waits
        end = time.monotonic() + timeout
        while (remaining := end - time.monotonic()) > 0.01:
            for group in self.groups:
                task = waits.get(group.index)
                if task is None or task.done():
                    if task is not None:
                        self._moved(group.index, task)
                    waits[group.index] = asyncio.ensure_future(self.redis.blmove(
                        group.queue_key, group.claim_key, self._block_seconds(remaining),  # type: ignore[arg-type]
                        "LEFT", "RIGHT"))
            done, _ = await asyncio.wait(list(waits.values()), timeout=remaining,
                                         return_when=asyncio.FIRST_COMPLETED)
            moved = False
            for index, task in list(waits.items()):
                if task in done:
                    del waits[index]
                    # a failed wait is the receive's error; one that moved an id ends the wait
                    moved = self._moved(index, task, raising=True) or moved
            if moved:
                return

    def _block_seconds(self, remaining: float) -> float:
        """How long a blocking wait started now lasts: ``remaining`` (the receive's wait), at least
        ``BLOCK_SECONDS``, at most 0.8 of the client's socket timeout."""
        block = max(remaining, BLOCK_SECONDS)
        socket_timeout = getattr(self.redis, "connection_kwargs", {}).get("socket_timeout")
        return min(block, 0.8 * float(socket_timeout)) if socket_timeout else block

    def _moved(self, index: int, task: asyncio.Task[Any], raising: bool = False) -> bool:
        """Whether a finished blocking wait of group ``index`` moved an id into this worker's claim list (then
        the group is marked ready); its error is raised with ``raising``, otherwise only retrieved."""
        if task.cancelled():
            return False
        error = task.exception()
        if error is not None:
            if raising:
                raise error
            return False
        if task.result() is None:
            return False
        self._ready[index] = max(1, self._ready[index])
        return True

    @staticmethod
    def _delivery(item: list[Any], owner: str | None, records: dict[str, RunRecord | None], group: int = 0
                  ) -> Delivery:
        """The delivery of one item of the dequeue script's reply; ``records`` are the run records its earlier
        items brought (a record comes once per run and reply; the engine only reads ``Delivery.record``, so the
        deliveries of one run share it)."""
        job_id, entry, data, deliveries, record, lease, state, completion = item[:8]
        lean = len(item) > 8  # a lean entry: data is the job's JSON, not rq's call tuple
        job = Job.from_dict(loads(data) if lean else decode_data(data))
        if record is None:  # not prefetched (plain dequeue, or a job hash without flowcraft_run/_key)
            return Delivery(job, RqReceipt(text(job_id), text(entry), lean=lean, group=group),
                            deliveries=int(deliveries))
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
        return Delivery(job, RqReceipt(text(job_id), text(entry), owner if lease == 1 else None, lean, group),
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
        group = self.groups[receipt.group]
        if receipt.lean:
            await self.batcher.call_many(("ZREM", group.inflight_key, receipt.entry),
                                         ("HDEL", group.held_key, receipt.entry))
            return
        await self.batcher.call_many(("ZREM", group.wip_key, receipt.entry), ("DEL", self._job_key(receipt.job_id)))

    async def release(self, delivery: Delivery, delay: float = 0.0) -> None:
        receipt = delivery.receipt
        if isinstance(receipt, _RqManaged):
            await self.enqueue([delivery.job], delay)
            return
        now = time.time()
        lease_keys, lease_args = self._lease_of(delivery)  # the run's keys share the group's slot
        job = delivery.job
        group = self.groups[receipt.group]
        await self.batcher.call_script(
            self._release, (group.inflight_key if receipt.lean else group.wip_key, self._job_key(receipt.job_id),
                            group.queue_key, group.scheduled_key, group.held_key, *lease_keys),
            receipt.job_id, receipt.entry, repr(now + delay) if delay > 0 else "", iso(now),
            dumps(job.to_dict()) if receipt.lean else "", group.queue_name, job.run_id, job.key, *lease_args[1:],
        )

    async def extend(self, delivery: Delivery, seconds: float) -> None:
        receipt = delivery.receipt
        if isinstance(receipt, _RqManaged):
            return
        now = time.time()
        group = self.groups[receipt.group]
        keys = (group.inflight_key,) if receipt.lean else (group.wip_key, self._job_key(receipt.job_id))
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
        group = self.groups[receipt.group]
        fields: dict[str, Any] = {"status": "failed", "ended_at": iso(now), "exc_info": packed,
                                  "flowcraft_reason": reason, "failure_ttl": ttl}
        if receipt.lean:  # a lean job: no job hash yet, so the whole rq job is written
            job = delivery.job
            fields.update({"data": encode_data(dumps(job.to_dict())), "created_at": iso(now),
                           "origin": group.queue_name, "description": f"flowcraft {job.run_id} {job.key}",
                           "flowcraft_run": job.run_id, "flowcraft_key": job.key, "flowcraft_deliveries": 1,
                           **dict(zip(RQ_STATIC_FIELDS[::2], RQ_STATIC_FIELDS[1::2], strict=True))})
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(group.inflight_key if receipt.lean else group.wip_key, receipt.entry)
            if receipt.lean:
                pipe.hdel(group.held_key, receipt.entry)
            pipe.hset(key, mapping=cast(Any, fields))
            pipe.expire(key, ttl)
            pipe.zadd(group.failed_key, {receipt.job_id: now + ttl})
            pipe.xadd(results, {"type": 2, "worker_name": self.worker_name,
                                "exc_string": base64.b64encode(packed).decode()}, maxlen=10)
            pipe.expire(results, ttl)
            await pipe.execute()

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        last = max(0, limit - 1)
        if len(self.groups) == 1:
            ids = cast(list[bytes], await self.redis.zrange(self.failed_key, 0, last))
        else:  # the groups' registries merged, by expiry as in each
            async with self.redis.pipeline(transaction=False) as pipe:
                for group in self.groups:
                    pipe.zrange(group.failed_key, 0, last, withscores=True)
                scored = [row for rows in await pipe.execute() for row in rows]
            ids = [job_id for job_id, _ in sorted(scored, key=lambda row: (row[1], row[0]))[:limit]]
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
        groups = self.groups
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                for group in groups:  # the id's group is in its hash tag, never parsed: each group is asked
                    pipe.zrem(group.failed_key, job_id)
                pipe.delete(self._job_key(job_id))
                pipe.delete(f"{self.rq_prefix}:results:{job_id}")
            replies = await pipe.execute()
        step = len(groups) + 2
        return sum(1 for at in range(0, len(replies), step) if any(replies[at : at + len(groups)]))

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
            for group in self.groups:
                pipe.llen(group.queue_key)
                pipe.zcard(group.scheduled_key)
                pipe.zcard(group.wip_key)
                pipe.zcard(group.inflight_key)
            counts = await pipe.execute()
        return int(sum(counts))

    async def depth(self) -> int:
        """Jobs waiting to be delivered: rq's queue list plus the scheduled (delayed) set, not those in flight."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for group in self.groups:
                pipe.llen(group.queue_key)
                pipe.zcard(group.scheduled_key)
            counts = await pipe.execute()
        return int(sum(counts))
