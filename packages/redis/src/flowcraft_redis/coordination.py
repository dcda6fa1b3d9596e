"""RedisCoordinationStore: jobs map, completion records, join arrivals and leases, one Lua script per call."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from flowcraft.spi import (
    Arrival,
    Begin,
    Committed,
    Completion,
    CoordinationStore,
    Delivery,
    Job,
    JobState,
    PendingJob,
    RunEnd,
    RunRecord,
    Transition,
    check_record_changes,
)
from flowcraft_redis import scripts
from flowcraft_redis._client import RedisClient, is_cluster
from flowcraft_redis._store import RedisStateStore
from flowcraft_redis.colocation import Colocation, Dispatcher
from flowcraft_redis.layout import (
    ACTIVITY,
    DEFAULT_GROUPS,
    DEFAULT_PREFIX,
    DEFAULT_TTL,
    RECORD_FIELDS,
    STATE_LETTERS,
    dumps,
    loads,
    parse_completion,
    parse_state,
    record_from_hash,
    text,
)
from flowcraft_redis.status import RedisStatusStore

#: run records a coordination store keeps for its hand-overs (``RedisCoordinationStore._records``)
_RECORDS = 1024


#: a join of more members than this is counted (``lua/commit.lua``'s kind ``k``): a member's commit sends its own
#: arrival, and the script reads its field and the join's count (``layout.join_count_field``), not the join's every
#: member; only a join's first member (no count yet, also a join whose members an older version recorded) and the
#: member that fires it send the members (kind ``w``, which reads them all and writes the count), in a second call
#: when the first one answers ``members``. A smaller join sends its members with each arrival (kind ``j``): one call,
#: no count.
COUNTED_JOIN = 32


def _arrival_args(arrivals: Sequence[Arrival], members: bool) -> list[Any]:
    """The ARGV of a commit's arrivals, the kinds of ``lua/commit.lua``: what a one-member arrival needs only, and a
    counted join's members only with ``members``."""
    args: list[Any] = [len(arrivals)]
    for arrival in arrivals:
        job = arrival.job
        due = "" if job.due_at is None else f" {job.due_at!r}"
        expected = arrival.expected
        if len(expected) > 1:
            kind = "j" if len(expected) <= COUNTED_JOIN else "w" if members else "k"
            args += (arrival.target_key, kind + due, arrival.member, "1" if arrival.arrived else "0",
                     dumps(arrival.contribution), len(expected))
            if kind == "k":
                args.append(arrival.strategy)
            else:
                args += (*expected, arrival.strategy, dumps(job.to_dict()))
        elif arrival.arrived:
            args += (arrival.target_key, "1" + due, dumps(job.to_dict()))
        else:
            args += (arrival.target_key, "0")
    return args


class RedisCoordinationStore(RedisStateStore, CoordinationStore):
    """Coordination on Redis: every operation is one Lua script (one round trip, atomic).

    ``commit`` ports ``flowcraft.spi.apply_transition`` to Lua (``lua/commit.lua``). What else it does is wired at
    construction (``flowcraft_redis.colocation``): with a ``RedisContext`` on the same client and key prefix
    it also writes the completion's context updates (``applies_context``); with a queue there that offers a
    dispatcher (``flowcraft_rq.RqQueue``) it also pushes the fired jobs into that queue
    (``dispatches``), acks the committed delivery when jobs remain pending (``acks``) and hands fired jobs
    straight to the committing worker (``continues``), as that dispatcher offers. A finishing commit with
    ``Transition.owner`` also drops that owner's lease (``releases_lease``). Every key it writes gets the TTL
    ``state_ttl_seconds``, refreshed when less than 7/8 of it may be left (the run hash's fields ``#ttl`` and
    ``#ctxttl`` hold the second of the last refresh of the run hash and of the context hash).

    ``applies_context`` / ``dispatcher`` given to the constructor override what colocation decides.
    """

    name = "redis"

    def __init__(self, redis: RedisClient, *, key_prefix: str = DEFAULT_PREFIX, state_ttl_seconds: float = DEFAULT_TTL,
                 applies_context: bool | None = None, dispatcher: Dispatcher | None = None,
                 cluster_queue_groups: int = DEFAULT_GROUPS) -> None:
        super().__init__(redis, key_prefix=key_prefix, state_ttl_seconds=state_ttl_seconds,
                         cluster_queue_groups=cluster_queue_groups)
        self._forced_context = applies_context
        self._forced_dispatcher = dispatcher
        self._applies_context = bool(applies_context)
        self._status_here = False  # a RedisStatusStore on this client and key prefix: the commit reads run records
        #: that status store (``starts``: ``start`` writes the run's record as it would)
        self._status: RedisStatusStore | None = None
        #: run id -> (status, updated_at as stored, record): the run records hand-overs returned (bounded, oldest
        #: first out); a commit that hands jobs over gets its run's record back only when it changed since
        self._records: dict[str, tuple[bytes, bytes, RunRecord]] = {}
        #: pushes fired jobs into a queue on the same Redis (None: the engine enqueues them)
        self.dispatcher = dispatcher
        batcher = self.batcher
        self._cluster = is_cluster(redis)
        self._commit: tuple[Dispatcher | None, str] = (
            None, batcher.script(scripts.commit("", self.state_ttl_seconds, self._cluster)))
        self._start: tuple[Dispatcher | None, str] = (None, "")
        self._begin = batcher.script(scripts.BEGIN)
        self._renew = batcher.script(scripts.RENEW)
        self._release = batcher.script(scripts.RELEASE)
        self._schedule = batcher.script(scripts.SCHEDULE)
        self._park = batcher.script(scripts.PARK)
        self._unpark = batcher.script(scripts.UNPARK)

    def colocated(self, colocation: Colocation) -> None:
        if self._forced_context is None:
            self._applies_context = colocation.context is not None
        self._status_here = colocation.status is not None
        self._status = colocation.status if isinstance(colocation.status, RedisStatusStore) else None
        if self._forced_dispatcher is None:
            self.dispatcher = colocation.queue.commit_dispatcher() if colocation.queue is not None else None

    @property
    def applies_context(self) -> bool:
        """True when a ``RedisContext`` on the same client and key prefix is the backend's context store."""
        return self._applies_context

    @property
    def dispatches(self) -> bool:
        """True when commits push the jobs they fire into the backend's queue (a ``Dispatcher`` that queues)."""
        return self.dispatcher is not None and self.dispatcher.queues

    @property
    def acks(self) -> bool:
        """True when the queue's dispatcher acks the committed delivery in the commit script (``Dispatcher.acks``)."""
        return self.dispatcher is not None and self.dispatcher.acks

    @property
    def continues(self) -> bool:
        """True when the queue's dispatcher hands fired jobs to the committing owner (``Dispatcher.continues``)."""
        return self.dispatcher is not None and self.dispatcher.continues

    @property
    def starts(self) -> bool:
        """True when ``start`` creates a run's record, schedules its first jobs and queues them in one script
        (``lua/start.lua``): the status store is a Redis store on this client and key prefix and commits push
        fired jobs into a queue there (``dispatches``)."""
        return self._status is not None and self.dispatches

    @property
    def ends(self) -> bool:
        """True when a finishing commit given ``Transition.end`` that leaves nothing pending or parked also ends the
        run (``lua/commit.lua`` with ``lua/status_change.lua``'s ``change_status``, the status transition's own Lua):
        the status store is a Redis store on this client and key prefix, the commit writes the context
        (``applies_context``) and pushes fired jobs into the queue (``dispatches``)."""
        return self._status is not None and self.applies_context and self.dispatches

    @property
    def releases_lease(self) -> bool:
        """Always: the commit script drops the finishing owner's lease (``lua/commit.lua``)."""
        return True

    @property
    def protocol(self) -> str:
        """"2": joins of more than ``COUNTED_JOIN`` members keep a count (run-hash field ``n<target>``), which a
        worker of protocol "1" does not update (a member it records is not counted)."""
        return "2"

    async def _call(self, sha: str, run_id: str, *args: Any) -> Any:
        """A script whose one key is the run's coordination hash."""
        return await self.batcher.call_script(sha, (self.keys.run(run_id),), *args)

    # ------------------------------------------------------------------ scheduling and leases
    async def schedule(self, run_id: str, jobs: Sequence[Job]) -> list[Job]:
        if not jobs:
            return []
        args: list[Any] = [repr(time.time()), self.state_ttl_seconds, len(jobs)]
        for job in jobs:
            args += (job.key, dumps(job.to_dict()))
        inserted = await self._call(self._schedule, run_id, *args)
        return [jobs[int(i) - 1] for i in inserted]

    async def start(self, record: RunRecord, jobs: Sequence[Job]) -> bool:
        """The record created as the status store's ``create`` writes it, the jobs scheduled as ``schedule`` and
        queued by the dispatcher as a commit queues what it fires, in one script (``lua/start.lua``)."""
        status, base = self._status, self.dispatcher
        if status is None or base is None or not base.queues:
            raise NotImplementedError(f"{type(self).__name__} does not start runs here (it does not declare starts)")
        run_id = record.run_id
        dispatcher = base.for_run(run_id)
        now = time.time()
        created = record.created_at or now
        data = record.to_dict()
        data["created_at"], data["updated_at"] = created, now
        items: list[Any] = []
        for name in RECORD_FIELDS:
            items += (name, dumps(data[name]))
        keys = [status.keys.status(run_id), status.keys.created_index(run_id),
                status.keys.status_index(record.status, run_id), self.keys.run(run_id), *dispatcher.keys]
        registry = dispatcher.registry
        if registry is not None:
            keys.append(registry)
        args: list[Any] = [len(items), run_id, status.state_ttl_seconds, record.status, repr(created), repr(now),
                           *items, self.state_ttl_seconds, "1" if registry is not None else "0", len(jobs)]
        for job in jobs:
            args += (job.key, dumps(job.to_dict()), "" if job.due_at is None else repr(job.due_at))
        args += dispatcher.args(len(jobs), now)
        if not await self.batcher.call_script(self._start_sha(base), keys, *args):
            return False
        record.created_at, record.updated_at = created, now
        return True

    async def begin(self, job: Job, owner: str, lease_seconds: float) -> Begin:
        now = time.time()
        lease, state, completion = await self._call(
            self._begin, job.run_id, repr(now), self.state_ttl_seconds, job.key, owner, repr(now + lease_seconds)
        )
        return Begin(lease=bool(lease), state=parse_state(state),
                     completion=parse_completion(completion) if lease else None)

    async def renew(self, run_id: str, job_key: str, owner: str, lease_seconds: float) -> bool:
        now = time.time()
        renewed = await self._call(self._renew, run_id, job_key, owner, repr(now), repr(now + lease_seconds),
                                   self.state_ttl_seconds)
        return bool(renewed)

    async def release(self, run_id: str, job_key: str, owner: str) -> None:
        await self._call(self._release, run_id, job_key, owner)

    # ------------------------------------------------------------------ the transition
    async def commit(self, transition: Transition) -> Committed:
        tx = transition
        now = time.time()
        completion = tx.completion
        apply_context = completion is not None and self.applies_context
        end = tx.end if tx.finish and tx.end is not None and self.ends else None
        flags = (f"{int(tx.recovery)}{int(tx.finish)}{int(completion is not None)}{int(apply_context)}"
                 f"{int(self._status_here)}{int(end is not None)}")
        owner = tx.owner or ""
        keys: list[str] = [self.keys.run(tx.run_id), self.keys.ctx(tx.run_id), self.keys.status(tx.run_id)]
        args: list[Any] = [tx.run_id, tx.job_key, repr(now), flags, "", owner]
        if end is not None:
            self._end(tx.run_id, end, keys, args)
        if apply_context and completion is not None and completion.context_updates:
            # each context value encoded once: the completion record holds the same texts
            encoded = [(key, dumps(value)) for key, value in completion.context_updates.items()]
            document = completion.to_dict()
            del document["context_updates"]
            head = dumps(document)
            record = (f"{completion.token} {head[:-1]},\"context_updates\":{{"
                      + ",".join([f"{dumps(key)}:{value}" for key, value in encoded]) + "}}")
        else:
            encoded = []
            record = f"{completion.token} {dumps(completion.to_dict())}" if completion is not None else ""
        args[4] = record
        if apply_context and completion is not None:
            args.append(len(encoded))
            for pair in encoded:
                args += pair
            args.append(len(completion.context_deletes))
            args += completion.context_deletes
        else:
            args += (0, 0)
        arrivals = tx.arrivals
        arrivals_at = len(args)
        args += _arrival_args(arrivals, False)
        arrivals_end = len(args)
        base = self.dispatcher
        dispatcher = base.for_run(tx.run_id) if base is not None else None
        ack = dispatcher.ack_args(tx.receipt) if dispatcher is not None and tx.receipt is not None and tx.finish \
            else None
        hand_up_to = tx.continue_up_to if dispatcher is not None and dispatcher.continues and arrivals else 0
        if dispatcher is not None and (arrivals or ack):
            keys += dispatcher.keys
        known = self._records.get(tx.run_id) if hand_up_to else None
        args += ("1" if dispatcher is not None and arrivals else "0", hand_up_to, repr(now + tx.lease_seconds),
                 *(known[:2] if known is not None else ("", "")))
        if ack:
            keys += ack[0]
            args.append(len(ack[1]))
            args += ack[1]
        else:
            args.append(0)
        if dispatcher is not None and arrivals:
            args += dispatcher.args(len(arrivals), now)
        sha = self._commit_sha(base)
        result = await self.batcher.call_script(sha, keys, *args)
        head = result[0]
        if head == b"members":  # a counted join without a count yet, or firing: again with its members
            args[arrivals_at:arrivals_end] = _arrival_args(arrivals, True)
            result = await self.batcher.call_script(sha, keys, *args)
            head = result[0]
        if (head == b"ok1" or head == b"ok2") and dispatcher is not None:  # one fired job, handed over
            job = arrivals[0].job if not result[3] else Job.from_dict(loads(result[3]))
            begin = Begin(lease=True, state="pending", completion=parse_completion(result[5]))
            reply = list(result[6:]) if head == b"ok1" else result[6]
            delivery = dispatcher.delivery(job, reply, owner, self._record(result[4], known, tx.run_id), begin)
            return Committed(fired=(job,), continued=(delivery,), skipped=(), pending=int(result[1]),
                             parked=int(result[2]))
        if head == b"conflict":
            return Committed(conflict=Completion.from_dict(loads(result[1])))
        ended = None
        if end is not None:  # the record after the run's end, last (0: not ended)
            flat = result[-1]
            if flat:
                ended = record_from_hash({flat[i]: flat[i + 1] for i in range(0, len(flat), 2)})
        pending, parked, _released, count = (int(v) for v in result[1:5])
        fired: list[Job] = []
        at = 5
        for _ in range(count):
            index, body = int(result[at]), result[at + 1]
            at += 2
            fired.append(arrivals[index - 1].job if not body else Job.from_dict(loads(body)))
        nskipped = int(result[at])
        skipped = tuple(text(key) for key in result[at + 1 : at + 1 + nskipped])
        at += 1 + nskipped
        continued: tuple[Delivery, ...] = ()
        if int(result[at]) and dispatcher is not None:
            continued = self._handed(dispatcher, fired, result, at, owner, tx.run_id, known)
        return Committed(fired=tuple(fired), continued=continued, skipped=skipped, pending=pending, parked=parked,
                         ended=ended)

    def _end(self, run_id: str, end: RunEnd, keys: list[str], args: list[Any]) -> None:
        """The KEYS (the run's status indexes) and ARGV of a commit's run end (``ends``; see ``lua/commit.lua``)."""
        status = self._status
        assert status is not None
        check_record_changes(end.fields)
        keys += [status.keys.status_index(name, run_id) for name in (*sorted(RunEnd.FROM_STATUSES), RunEnd.TO_STATUS)]
        args += (status.state_ttl_seconds, status.keys.changes(run_id), dumps(end.result), len(end.fields))
        for name, value in end.fields.items():
            args += (name, dumps(value))

    def _handed(self, dispatcher: Dispatcher, fired: list[Job], result: list[Any], at: int, owner: str, run_id: str,
                known: tuple[bytes, bytes, RunRecord] | None) -> tuple[Delivery, ...]:
        """The deliveries of the fired jobs the commit handed to ``owner`` (``continues``): the reply from ``at``
        is their count, the run record (flat; empty when the status is not on this Redis; 1: unchanged since
        ``known``, which the commit sent) and per job its position in ``fired``, the queue's reply and the job's
        completion record; the lease was taken for ``owner``. The engine only reads ``Delivery.record``, so
        deliveries share the record object."""
        count, record = int(result[at]), self._record(result[at + 1], known, run_id)
        out: list[Delivery] = []
        at += 2
        for _ in range(count):
            position, reply, completion = result[at : at + 3]
            at += 3
            begin = Begin(lease=True, state="pending", completion=parse_completion(completion))
            out.append(dispatcher.delivery(fired[int(position) - 1], reply, owner, record, begin))
        return tuple(out)

    def _record(self, flat: Any, known: tuple[bytes, bytes, RunRecord] | None, run_id: str) -> RunRecord | None:
        """The run record of a commit's hand-over reply: ``flat`` is the status hash (empty when the status is not
        on this Redis) or 1, unchanged since ``known`` (which the commit sent); a new one is kept for the run."""
        if isinstance(flat, int):
            assert known is not None
            return known[2]
        if not flat:
            return None
        raw = {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}
        record = record_from_hash(raw)
        records = self._records
        if len(records) >= _RECORDS:
            del records[next(iter(records))]
        records[run_id] = (raw[b"status"], raw.get(b"updated_at", b""), record)
        return record

    def _commit_sha(self, dispatcher: Dispatcher | None) -> str:
        """The SHA of the commit script for ``dispatcher`` (its Lua prepended), registered on first use."""
        if self._commit[0] is not dispatcher:
            lua = dispatcher.lua if dispatcher is not None else ""
            self._commit = (dispatcher, self.batcher.script(scripts.commit(lua, self.state_ttl_seconds, self._cluster)))
        return self._commit[1]

    def _start_sha(self, dispatcher: Dispatcher) -> str:
        """The SHA of the start script for ``dispatcher`` (its Lua prepended), registered on first use."""
        if self._start[0] is not dispatcher:
            self._start = (dispatcher, self.batcher.script(scripts.start(dispatcher.lua)))
        return self._start[1]

    # ------------------------------------------------------------------ waits
    async def park(self, run_id: str, job_key: str) -> Committed:
        pending, parked = await self._call(self._park, run_id, job_key, repr(time.time()), self.state_ttl_seconds)
        return Committed(pending=int(pending), parked=int(parked))

    async def unpark(self, run_id: str, job_key: str, job: Job) -> bool:
        done = await self._call(self._unpark, run_id, job_key, dumps(job.to_dict()), repr(time.time()),
                                self.state_ttl_seconds)
        return bool(done)

    # ------------------------------------------------------------------ inspection
    async def jobs(self, run_id: str, state: JobState = "pending") -> list[PendingJob]:
        letter = ord(STATE_LETTERS[state])
        raw = await self.batcher.call("HGETALL", self.keys.run(run_id))
        now = time.time()
        out: list[PendingJob] = []
        for field, value in raw.items():
            if field[:1] != b"j" or value[0] != letter or len(value) == 1:
                continue
            lease = raw.get(b"l" + field[1:])
            leased = bool(lease) and float(lease.split(b" ", 1)[0]) > now
            out.append(PendingJob(Job.from_dict(loads(value[1:])), leased=leased))
        return out

    async def activity(self, run_id: str) -> float | None:
        raw = await self.batcher.call("HGET", self.keys.run(run_id), ACTIVITY)
        return None if raw is None else float(raw)

    async def delete_run(self, run_id: str) -> None:
        await self.batcher.call("DEL", self.keys.run(run_id))

    async def close(self) -> None:
        await self.redis.aclose()

    async def setup(self) -> None:
        await self.redis.ping()
