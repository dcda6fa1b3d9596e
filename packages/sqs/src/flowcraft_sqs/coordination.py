"""DynamoDB coordination store: one item per run, changed by single-item conditional writes; no transactions.

Table ``<prefix>coordination``: partition key ``runId`` (S), sort key ``sk`` (S). Items of one run:

* ``run``: the run's coordination state. ``jobs`` (M: job key -> ``pending``/``done``/``skipped``/``parked``),
  ``docs`` (M: job key -> job document JSON, kept while the job is pending or parked), ``done`` (M: job key
  -> completion record JSON, first writer wins), ``arrivals`` (M: JSON(target) + JSON(member) -> JSON
  ``[arrived, contribution]``; JSON string literals are prefix-free, so ids may hold any character),
  ``leases`` (M: job key -> M ``{o: owner, e: expires}``), ``ctx`` (M: context key -> value JSON; with
  ``applies_context``, the run's context), ``v`` (N, version), ``activity`` (N, epoch seconds), ``ttl`` (N);
  ``rec`` (M: the run's status item as created, when the status store mirrors into this store) and ``chk``
  (BOOL, the mark: written before any status transition, and by a write that leaves no job pending; never
  removed), see ``begin_prefetch``. The pending and parked counts are counted from ``jobs``, never stored apart.
* ``blob#<uuid>``: ``body`` (S), a document, completion or contribution too large to inline (> 2 KB, or any
  new value once the run item passes 64 KB); the map holds ``@`` + its sort key instead (arrivals:
  ``@`` + arrived flag + sort key).

``begin`` is one conditional UpdateItem (take the lease; the item comes back, so state and completion record
come with it, and the run's status record while ``rec`` is there without ``chk``). ``commit`` runs the rules
of :func:`flowcraft.spi.apply_transition` — the very function — over the run item and writes what they changed
(completion record and, with ``applies_context``, its context writes; states, arrivals, and dropping the
finishing worker's lease) in one UpdateItem conditioned on the version it read (optimistic concurrency: a
failed condition returns the current item and the rules run again). A replay after a crash converges: the
rules see what was applied. Leases do not change the version, so taking or renewing one never makes a commit
retry.

The last run item each process saw is cached (the version condition catches a stale copy), so a worker
usually writes without reading first. Every item carries ``ttl``; an item whose ``ttl`` has passed is treated
as absent by every read and condition (DynamoDB deletes expired items lazily).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Self, TypeVar

from flowcraft.errors import FlowcraftError
from flowcraft.spi import (
    Begin,
    Committed,
    Completion,
    CoordinationStore,
    Job,
    JobState,
    PendingJob,
    Transition,
    apply_transition,
)
from flowcraft_sqs._aws import (
    MAX_ITEM_BYTES,
    MAX_PARTITION_KEY_BYTES,
    MAX_SORT_KEY_BYTES,
    AwsClients,
    ClientSource,
    ItemTooLargeError,
    N,
    S,
    SqsOptions,
    backoff,
    batch_get,
    batch_write,
    check_item_size,
    check_key,
    dumps,
    expired,
    is_client_error,
    is_key,
    item_size,
    num,
    prune,
    source_of,
)

if TYPE_CHECKING:
    from types_aiobotocore_dynamodb import DynamoDBClient

T = TypeVar("T")

RUN = "run"
CTX = "ctx"
#: the run's status record as created (a map of the status item's attributes), mirrored for ``begin_prefetch``
REC = "rec"
#: present once a status transition was (or is being) made, or a write left no job pending; never removed
MARK = "chk"
#: a record larger than this (its input, mostly) is not mirrored: its jobs read it from the status table
MAX_MIRRORED_RECORD_BYTES = 2048
CACHED_RECORDS = 1024
#: a completion whose context writes are more entries than this is committed in steps (see ``commit``)
CONTEXT_ENTRIES_PER_WRITE = 100
#: a ``done`` value starting with it: the record's context was written apart from it (``commit``)
_APART = "!"
OUTPUTS_PREFIX = "_outputs."
MAX_ATTEMPTS = 100
#: values longer than this live in their own item; so does every new value once the run item is this big
INLINE_BYTES = 2048
SPILL_ALL_ABOVE = 64 * 1024
#: DynamoDB's limit for an UpdateExpression is 4 KB; beyond this many characters whole maps are written
MAX_EXPRESSION_CHARS = 3000
CACHED_RUNS = 4096
MAPS = ("jobs", "docs", "done", "arrivals")
_BLOB = "@"  # a map value starting with it names a blob item (JSON text never starts with it)
_NO_PATH = ("ConditionalCheckFailedException", "ValidationException")  # the run item or its lease map is absent


def _arrival_key(target: str, member: str) -> str:
    return json.dumps(target) + json.dumps(member)


def _split_arrival_key(flat: str) -> tuple[str, str]:
    target, end = json.JSONDecoder().raw_decode(flat)
    return str(target), str(json.loads(flat[end:]))


# ============================================================================================== run state
@dataclass(slots=True)
class _RunState:
    """The run item as read (version 0: absent or expired). ``leases``: job key -> (owner, expires)."""

    version: int = 0
    jobs: dict[str, str] = field(default_factory=dict)
    docs: dict[str, str] = field(default_factory=dict)
    done: dict[str, str] = field(default_factory=dict)
    arrivals: dict[tuple[str, str], str] = field(default_factory=dict)
    leases: dict[str, tuple[str, float]] = field(default_factory=dict)
    #: the run's context (key -> value JSON, or ``@`` + a blob's sort key) when the store holds it
    #: (``applies_context``); ``has_ctx``: the item has the ``ctx`` map; ``stale``: the item exists, ttl passed
    ctx: dict[str, str] = field(default_factory=dict)
    has_ctx: bool = False
    stale: bool = False
    #: the mirrored status record (``rec``) and whether the item carries the mark (``chk``)
    record: dict[str, Any] | None = None
    marked: bool = False

    @classmethod
    def parse(cls, item: Mapping[str, Any] | None, now: float) -> _RunState:
        if not item:
            return cls()
        if expired(item, now):
            return cls(stale=True)

        def strings(name: str) -> dict[str, str]:
            return {k: v["S"] for k, v in (item.get(name) or {}).get("M", {}).items()}

        ctx = strings(CTX)
        if "v" not in item:  # only context written so far (a run's start writes it before scheduling)
            return cls(ctx=ctx, has_ctx=CTX in item)
        leases = {k: (v["M"]["o"]["S"], num(v["M"].get("e")))
                  for k, v in (item.get("leases") or {}).get("M", {}).items()}
        arrivals = {_split_arrival_key(k): v for k, v in strings("arrivals").items()}
        return cls(int(num(item["v"])), strings("jobs"), strings("docs"), strings("done"), arrivals, leases,
                   ctx, CTX in item, record=(item.get(REC) or {}).get("M"), marked=MARK in item)

    def counts(self) -> tuple[int, int]:
        states = list(self.jobs.values())
        return states.count("pending"), states.count("parked")

    def size(self) -> int:
        """Roughly the item's size in bytes (what DynamoDB's 400 KB limit counts)."""
        total = sum(len(k) + len(v) for m in (self.jobs, self.docs, self.done) for k, v in m.items())
        total += sum(len(t) + len(m) + len(v) + 4 for (t, m), v in self.arrivals.items())
        total += sum(len(k) + len(v) for k, v in self.ctx.items())
        return total + sum(len(k) + len(o) + 20 for k, (o, _) in self.leases.items())


class _NeedBlobs(Exception):
    def __init__(self, keys: Iterable[str]) -> None:
        super().__init__("need to read blob items")
        self.keys = set(keys)


class _Plan:
    """``CoordinationTables`` over a copy of the run item; the store writes the difference afterwards."""

    def __init__(self, state: _RunState, blobs: Mapping[str, str] | None = None) -> None:
        self.before = state
        self.jobs = dict(state.jobs)
        self.docs = dict(state.docs)
        self.arrivals_by_target: dict[str, dict[str, str]] = {}
        for (target, member), value in state.arrivals.items():
            self.arrivals_by_target.setdefault(target, {})[member] = value
        self.new_docs: dict[str, Job] = {}
        self.new_done: dict[str, Completion] = {}
        self.new_arrivals: dict[tuple[str, str], tuple[bool, Any]] = {}
        self.ctx_set: dict[str, Any] = {}
        self.ctx_del: set[str] = set()
        self.apart: set[str] = set()  # new completion records whose context is written apart
        self.blobs = blobs or {}

    def text(self, value: str) -> str:
        """The JSON text a map value holds or names."""
        value = value.removeprefix(_APART)
        if value.startswith(_BLOB):
            sk = value[1:]
            if sk not in self.blobs:
                raise _NeedBlobs([sk])
            return self.blobs[sk]
        return value

    # -- CoordinationTables --------------------------------------------------------------------------
    def job_state(self, run_id: str, key: str) -> JobState | None:
        return self.jobs.get(key)  # type: ignore[return-value]

    def insert_job(self, run_id: str, key: str, state: JobState, job: Job | None) -> bool:
        if key in self.jobs:
            return False
        self.jobs[key] = state
        if job is not None and state in ("pending", "parked"):
            self.new_docs[key] = job
        return True

    def set_job_state(self, run_id: str, key: str, state: JobState) -> None:
        self.jobs[key] = state
        if state not in ("pending", "parked"):
            self.docs.pop(key, None)
            self.new_docs.pop(key, None)

    def replace_job(self, key: str, job: Job) -> None:
        self.new_docs[key] = job

    def job(self, run_id: str, key: str) -> Job | None:
        if key in self.new_docs:
            return self.new_docs[key]
        value = self.docs.get(key)
        return None if value is None else Job.from_dict(json.loads(self.text(value)))

    def completion(self, run_id: str, key: str) -> Completion | None:
        if key in self.new_done:
            return self.new_done[key]
        value = self.before.done.get(key)
        return None if value is None else _completion_from(self.text(value))

    def put_completion(self, run_id: str, key: str, completion: Completion) -> None:
        self.new_done[key] = completion

    def add_arrival(self, run_id: str, target: str, member: str, arrived: bool, contribution: Any) -> tuple[int, int]:
        members = self.arrivals_by_target.setdefault(target, {})
        if member not in members:
            members[member] = json.dumps([arrived, None])  # the flag; the contribution is in new_arrivals
            self.new_arrivals[(target, member)] = (arrived, contribution)
        flags = [value[1] == "1" if value.startswith(_BLOB) else bool(json.loads(value)[0])
                 for value in members.values()]
        return len(flags), sum(flags)

    def arrivals(self, run_id: str, target: str) -> dict[str, tuple[bool, Any]]:
        out: dict[str, tuple[bool, Any]] = {}
        for member, value in self.arrivals_by_target.get(target, {}).items():
            if (target, member) in self.new_arrivals:
                out[member] = self.new_arrivals[(target, member)]
            elif value.startswith(_BLOB):
                out[member] = (value[1] == "1", json.loads(self.text(_BLOB + value[2:])))
            else:
                arrived, contribution = json.loads(value)
                out[member] = (bool(arrived), contribution)
        return out

    def counts(self, run_id: str) -> tuple[int, int]:
        states = list(self.jobs.values())
        return states.count("pending"), states.count("parked")

    def touch(self, run_id: str) -> None:
        return None  # every write refreshes the run's activity

    def apply_context(self, run_id: str, completion: Completion) -> None:
        """The completion's context writes go into the run item's ``ctx`` map with the record."""
        updates, deletes = _context_changes(completion.context_updates, completion.context_deletes)
        for key in deletes:
            self.ctx_set.pop(key, None)
            self.ctx_del.add(key)
        for key, value in updates.items():
            self.ctx_set[key] = value
            self.ctx_del.discard(key)

    @property
    def changed(self) -> bool:
        return bool(self.jobs != self.before.jobs or self.new_docs or self.new_done or self.new_arrivals
                    or self.docs != self.before.docs or self.ctx_set or self.ctx_del)


@dataclass(frozen=True, slots=True)
class _Drop:
    """A lease the write removes if ``owner`` still holds it."""

    key: str
    owner: str


# ============================================================================================== the store
class DynamoDbCoordinationStore(CoordinationStore):
    name = "dynamodb"
    Options = SqsOptions
    releases_lease = True  # a finishing commit removes the owner's lease in its write (``_Drop``)

    def __init__(self, client: DynamoDBClient | None = None, table_name: str = "flowcraft-coordination", *,
                 ttl_seconds: int = 0, source: ClientSource[DynamoDBClient] | None = None,
                 applies_context: bool = False) -> None:
        """``applies_context``: the run's context lives in the run item too (``ctx``; read and written by
        :class:`flowcraft_sqs.context.RunItemContext`), so a commit writes a completion's context with its
        record in one UpdateItem; without it contexts live elsewhere and the engine applies them."""
        self._source = source_of(client, source)
        self.table_name = table_name
        self.ttl_seconds = int(ttl_seconds)
        self._applies_context = applies_context
        # one writer per run at a time in this process: concurrent ones would only fail each other's condition
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._runs: OrderedDict[str, _RunState] = OrderedDict()  # the newest run items this process saw
        # status records this process created, written into the run item by its first write (``offer_record``)
        self._records: OrderedDict[str, dict[str, Any]] = OrderedDict()
        # the run item a commit that left no pending or parked job returned: the run's end reads it (one shot)
        self._settled: OrderedDict[str, _RunState] = OrderedDict()

    @classmethod
    def from_config(cls, options: Mapping[str, Any], shared: dict[str, Any]) -> Self:
        parsed = SqsOptions.parse(options)
        return cls.build(parsed, AwsClients.shared(shared, parsed))

    @classmethod
    def build(cls, options: SqsOptions, clients: AwsClients, *, applies_context: bool = False) -> Self:
        """The store its options describe, on the backend's ``clients``."""
        return cls(table_name=options.table("coordination"), ttl_seconds=options.ttl_seconds,
                   source=clients.source("dynamodb"), applies_context=applies_context)

    @property
    def applies_context(self) -> bool:
        return self._applies_context

    async def setup(self) -> None:
        from flowcraft_sqs.provisioning import ensure_table

        await ensure_table(await self._source.get(), self.table_name,
                           keys=[("runId", "HASH", "S"), ("sk", "RANGE", "S")])

    async def close(self) -> None:
        await self._source.close()

    # ------------------------------------------------------------------------------------------ helpers
    def _ttl(self, now: float) -> int | None:
        return int(now + self.ttl_seconds) if self.ttl_seconds > 0 else None

    def _key(self, run_id: str, sk: str = RUN) -> dict[str, Any]:
        return {"runId": S(run_id), "sk": S(sk)}

    @staticmethod
    def _check(run_id: str, job_key: str | None = None) -> None:
        check_key(run_id, "run id", MAX_PARTITION_KEY_BYTES)
        if job_key is not None:
            check_key(job_key, "job key", MAX_SORT_KEY_BYTES)

    def _remember(self, run_id: str, state: _RunState) -> _RunState:
        if state.version > 0:  # the run item was written: the record it may mirror is no longer on offer
            self._records.pop(run_id, None)
        cached = self._runs.get(run_id)
        if cached is None or state.version >= cached.version or state.version == 0:
            self._runs[run_id] = state
        self._runs.move_to_end(run_id)
        while len(self._runs) > CACHED_RUNS:
            self._runs.popitem(last=False)
        return state

    @staticmethod
    def _keep(cache: OrderedDict[str, T], run_id: str, value: T, limit: int = CACHED_RECORDS) -> None:
        cache[run_id] = value
        cache.move_to_end(run_id)
        while len(cache) > limit:
            cache.popitem(last=False)

    # ------------------------------------------------------------------------------------------ the record mirror
    def offer_record(self, run_id: str, item: Mapping[str, Any]) -> None:
        """The status item of a run this process just created: the run item's first write (``schedule`` at
        the run's start) mirrors it (``rec``), unless it is larger than ``MAX_MIRRORED_RECORD_BYTES``. A copy
        of the run item cached before is of an earlier run with that id (purged since): forgotten."""
        self._runs.pop(run_id, None)
        self._settled.pop(run_id, None)
        if item_size(item) <= MAX_MIRRORED_RECORD_BYTES:
            self._keep(self._records, run_id, dict(item))

    async def mark(self, run_id: str, *, create: bool = True) -> None:
        """Write the mark (``chk``) on the run item — creating the item if there is none, unless not
        ``create`` — so ``begin_prefetch`` returns no record for the run from now on. The status store writes
        it before a transition (``create``: the run's first jobs may not be scheduled yet) and before a
        delete (a purge deletes the run items first: none is left to correct, and none is created)."""
        self._check(run_id)
        client = await self._source.get()
        names = {"#m": MARK}
        values: dict[str, Any] = {":t": {"BOOL": True}}
        update = "SET #m = :t"
        ttl = self._ttl(time.time())
        if ttl is not None and create:  # an item the mark creates expires like the others; one there keeps its ttl
            names["#ttl"] = "ttl"
            values[":ttl"] = N(ttl)
            update += ", #ttl = if_not_exists(#ttl, :ttl)"
        request: dict[str, Any] = {"TableName": self.table_name, "Key": self._key(run_id), "UpdateExpression": update,
                                   "ExpressionAttributeNames": names, "ExpressionAttributeValues": values}
        if not create:
            names["#r"] = "runId"
            request["ConditionExpression"] = "attribute_exists(#r)"
        try:
            await client.update_item(**request)
        except Exception as exc:
            if create or not is_client_error(exc, "ConditionalCheckFailedException"):
                raise
        self._records.pop(run_id, None)
        state = self._runs.get(run_id)
        if state is not None:
            state.marked = True

    def marked(self, run_id: str) -> bool:
        """Whether this process saw the run item with the mark (which stays until the item is deleted)."""
        state = self._runs.get(run_id)
        return state is not None and state.marked

    def _settled_ctx(self, run_id: str) -> dict[str, str] | None:
        """The context the commit that settled the run (no pending or parked job) returned, once, while it is
        still the newest copy of the run item this process has and no context write of this process came
        after it: as of that commit, what the run's end reads (the outputs of its terminal nodes)."""
        state = self._settled.pop(run_id, None)
        if state is None or self._runs.get(run_id) is not state or not state.has_ctx:
            return None
        return state.ctx

    async def _read_run(self, client: DynamoDBClient, run_id: str, now: float) -> _RunState:
        response = await client.get_item(TableName=self.table_name, Key=self._key(run_id), ConsistentRead=True)
        state = _RunState.parse(response.get("Item"), now)
        self._runs.pop(run_id, None)  # what was just read is the newest
        return self._remember(run_id, state)

    async def _item_of_failed_condition(self, client: DynamoDBClient, run_id: str, exc: BaseException, now: float
                                        ) -> _RunState:
        """The run item a failed condition returned (``ReturnValuesOnConditionCheckFailure``), now cached; read
        when the error carries none: the item is absent, or the endpoint does not return it (dynalite)."""
        item = getattr(exc, "response", {}).get("Item")
        if item is None:
            return await self._read_run(client, run_id, now)
        self._runs.pop(run_id, None)
        return self._remember(run_id, _RunState.parse(item, now))

    async def _read_blobs(self, client: DynamoDBClient, run_id: str, sks: Iterable[str]) -> dict[str, str]:
        wanted = list(dict.fromkeys(sks))
        items = await batch_get(client, self.table_name, [self._key(run_id, sk) for sk in wanted])
        found = {item["sk"]["S"]: item["body"]["S"] for item in items}
        missing = set(wanted) - set(found)
        if missing:
            raise FlowcraftError(f"run {run_id!r} refers to stored values that are gone ({len(missing)} missing)",
                                 hint="the run outlived the table's ttl_seconds; start it again")
        return found

    async def _decoded(self, client: DynamoDBClient, run_id: str, run: _RunState, read: Callable[[_Plan], T]) -> T:
        """``read`` over a plan of ``run``, reading the blob items it needs first."""
        blobs: dict[str, str] = {}
        while True:
            try:
                return read(_Plan(run, blobs))
            except _NeedBlobs as need:
                blobs.update(await self._read_blobs(client, run_id, need.keys))

    # ------------------------------------------------------------------------------------------ the plan runner
    @contextlib.asynccontextmanager
    async def _run_lock(self, run_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(run_id, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[run_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[run_id]
            if users <= 1:
                del self._locks[run_id]
            else:
                self._locks[run_id] = (lock, users - 1)

    async def _run(self, run_id: str, rules: Callable[[_Plan], T], drop: _Drop | None = None
                   ) -> tuple[T, _RunState]:
        """Run ``rules`` over the run item and write what they changed, conditioned on the version they saw;
        again over the current item while the condition fails (``drop``: the finishing owner's lease, removed
        in the same write unless another owner holds it). Returns the rules' result and the item after."""
        async with self._run_lock(run_id):
            client = await self._source.get()
            blobs: dict[str, str] = {}
            fresh = False  # whether the copy was read (or returned by a failed condition) during this call
            for attempt in range(MAX_ATTEMPTS):
                now = time.time()
                state = self._runs.get(run_id)
                if state is None:
                    state = await self._read_run(client, run_id, now)
                    fresh = True
                plan = _Plan(state, blobs)
                try:
                    result = rules(plan)
                except _NeedBlobs as need:
                    blobs.update(await self._read_blobs(client, run_id, need.keys))
                    continue
                if not fresh and not plan.changed:
                    # nothing to write by our copy, which another process may have left behind (a resumed
                    # job is pending again): decide over the current item
                    await self._read_run(client, run_id, now)
                    fresh = True
                    continue
                outcome = await self._write(client, run_id, plan, now, drop)
                if isinstance(outcome, _RunState):
                    return result, outcome
                if outcome == "lease":
                    drop = None  # the lease is not ours any more: leave it
                fresh = True  # the failed condition returned the current item
                if attempt >= 3:
                    await asyncio.sleep(backoff(attempt))
        raise FlowcraftError(f"coordination writes of run {run_id!r} kept conflicting; giving up after "
                             f"{MAX_ATTEMPTS} attempts", hint="the job is redelivered and replayed")

    async def _write(self, client: DynamoDBClient, run_id: str, plan: _Plan, now: float, drop: _Drop | None
                     ) -> _RunState | str:
        """Write the plan's changes to the run item. Returns the item after, or why the condition failed:
        "version" (the item moved on; the cache now holds it) or "lease" (``drop`` names another owner)."""
        ttl = self._ttl(now)
        names: dict[str, str] = {"#act": "activity", "#ttl": "ttl", "#v": "v", "#l": "leases"}
        values: dict[str, Any] = {":now": N(now)}
        sets = ["#act = :now"]
        removes: list[str] = []
        if ttl is not None:
            values[":ttl"] = N(ttl)
            sets.append("#ttl = :ttl")
        else:  # a ttl left by an earlier setting (or on a recreated expired item) must not expire it later
            removes.append("#ttl")
        conditions: list[str] = []
        blob_items: list[dict[str, Any]] = []
        after = plan.before
        if plan.changed:
            encoded, blob_items = self._encode(run_id, plan, ttl)
            after = _RunState(plan.before.version + 1, plan.jobs, encoded["docs"], encoded["done"],
                              {_split_arrival_key(k): v for k, v in encoded["arrivals"].items()}, plan.before.leases)
            if after.size() > MAX_ITEM_BYTES - 4096:
                raise ItemTooLargeError(
                    f"the coordination state of run {run_id!r} would be {after.size() / 1024:.0f} KB; a DynamoDB "
                    "item holds at most 400 KB",
                    hint="split the work into subflows (each child run has its own state item) or run fewer "
                         "loop iterations per run")
            after.ctx, after.has_ctx = encoded[CTX], True
            values[":v1"] = N(after.version)
            sets.append("#v = :v1")
            if "pending" not in plan.jobs.values():  # the run's end (or a wait) comes next: its transition
                names["#m"] = MARK                    # needs no mark of its own
                values[":t"] = {"BOOL": True}
                sets.append("#m = :t")
            before = {"jobs": plan.before.jobs, "docs": plan.before.docs, "done": plan.before.done,
                      "arrivals": {_arrival_key(*k): v for k, v in plan.before.arrivals.items()}}
            paths = _MapPaths(names, values)
            ctx_cost = self._ctx_clauses(plan, encoded[CTX], paths, sets, removes, conditions)
            if plan.before.version == 0:
                conditions.append("#ttl < :now" if plan.before.stale else "(attribute_not_exists(#v) OR #ttl < :now)")
                sets += [paths.whole(name, encoded[name]) for name in MAPS]
                sets.append(paths.whole("leases", {}))
                # the run's status record as this process created it, else none (an expired item's goes)
                names["#rec"] = REC
                record = self._records.get(run_id)
                if record is None:
                    removes.append("#rec")
                else:
                    values[":rec"] = {"M": record}
                    sets.append("#rec = :rec")
            else:
                conditions.append("#v = :v0")
                values[":v0"] = N(plan.before.version)
                changes = {name: ({k: v for k, v in encoded[name].items() if before[name].get(k) != v},
                                  [k for k in before[name] if k not in encoded[name]]) for name in MAPS}
                # entry by entry while the expression stays small (concurrent writers of other entries then
                # merge even on emulators whose conditions are not atomic), else whole maps (4 KB limit)
                whole = sum(paths.cost(*change) for change in changes.values()) + ctx_cost > MAX_EXPRESSION_CHARS
                for name, (changed, removed) in changes.items():
                    if whole and (changed or removed):
                        sets.append(paths.whole(name, encoded[name]))
                        continue
                    sets += [paths.set(name, key, value) for key, value in changed.items()]
                    removes += [paths.path(name, key) for key in removed]
        if drop is not None and plan.before.version > 0:
            names.update({"#dk": drop.key, "#o": "o"})
            values[":me"] = S(drop.owner)
            removes.append("#l.#dk")
            conditions.append("(attribute_not_exists(#l.#dk) OR #l.#dk.#o = :me)")
        if blob_items:
            await asyncio.gather(*(client.put_item(TableName=self.table_name, Item=item) for item in blob_items))
        request: dict[str, Any] = {
            "TableName": self.table_name, "Key": self._key(run_id),
            "UpdateExpression": "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else ""),
            "ExpressionAttributeNames": names, "ExpressionAttributeValues": values}
        if conditions:
            request["ConditionExpression"] = " AND ".join(conditions)
        try:
            response = await client.update_item(**prune(request), ReturnValues="ALL_NEW",
                                                ReturnValuesOnConditionCheckFailure="ALL_OLD")
        except Exception as exc:
            _raise_if_too_large(exc, run_id)  # context written outside commits made the item grow unseen
            if not is_client_error(exc, "ConditionalCheckFailedException"):
                raise
            current = await self._item_of_failed_condition(client, run_id, exc, now)
            if drop is not None and 0 < current.version == plan.before.version:
                lease = current.leases.get(drop.key)
                if lease is not None and lease[0] != drop.owner:
                    return "lease"
            return "version"
        # the item as stored (an emulator that merged a concurrent write shows it here)
        return self._remember(run_id, _RunState.parse(response.get("Attributes"), now))

    def _ctx_clauses(self, plan: _Plan, ctx: Mapping[str, str], paths: _MapPaths, sets: list[str],
                     removes: list[str], conditions: list[str]) -> int:
        """The clauses that write the plan's context changes (``applies_context``): entry by entry into the
        ``ctx`` map the item has, else the whole map where the item has none (or only an expired one).
        Returns their expression cost."""
        if not self._applies_context:
            return 0
        changed = {key: ctx[key] for key in plan.ctx_set}
        removed = [key for key in plan.ctx_del if key not in changed]
        if plan.before.stale or not plan.before.has_ctx:
            if plan.before.version == 0 or changed or removed:
                sets.append(paths.whole(CTX, ctx))
                if not plan.before.stale:  # unless another writer created it meanwhile
                    conditions.append(f"attribute_not_exists(#{CTX})")
            return 0
        if changed or removed:
            sets.extend(paths.set(CTX, key, value) for key, value in changed.items())
            removes.extend(paths.path(CTX, key) for key in removed)
            conditions.append(f"attribute_exists(#{CTX})")
        return paths.cost(changed, removed)

    def _inliner(self, run_id: str, ttl: int | None, spill_all: bool, blob_items: list[dict[str, Any]]
                 ) -> Callable[[str, str], str]:
        """A function that returns a map value for a JSON text: the text, or (too large to inline, or
        ``spill_all``) ``@`` + the sort key of a new blob item holding it, appended to ``blob_items``."""

        def inline(body: str, what: str) -> str:
            if len(body) <= INLINE_BYTES and not spill_all:
                return body
            sk = "blob#" + uuid.uuid4().hex
            item: dict[str, Any] = {**self._key(run_id, sk), "body": S(body)}
            if ttl is not None:
                item["ttl"] = N(ttl)
            check_item_size(item, what)
            blob_items.append(item)
            return _BLOB + sk

        return inline

    def _encode(self, run_id: str, plan: _Plan, ttl: int | None
                ) -> tuple[dict[str, dict[str, str]], list[dict[str, Any]]]:
        """The run item's maps after the plan (arrivals flat; and ``ctx``), with large values moved to blob
        items."""
        blob_items: list[dict[str, Any]] = []
        inline = self._inliner(run_id, ttl, plan.before.size() > SPILL_ALL_ABOVE, blob_items)

        docs = {k: v for k, v in plan.docs.items() if plan.jobs.get(k) in ("pending", "parked")}
        for key, job in plan.new_docs.items():
            what = f"job {key!r} of run {run_id!r}"
            docs[key] = inline(dumps(job.to_dict(), what), what)
        done = dict(plan.before.done)
        for key, completion in plan.new_done.items():
            what = f"completion of job {key!r} of run {run_id!r}"
            done[key] = (_APART if key in plan.apart else "") + inline(_completion_text(completion, what), what)
        ctx = dict(plan.before.ctx)
        for key in plan.ctx_del:
            ctx.pop(key, None)
        for key, value in plan.ctx_set.items():
            what = f"context value {key!r} of run {run_id!r}"
            ctx[key] = inline(dumps(value, what), what)
        arrivals = {_arrival_key(*k): v for k, v in plan.before.arrivals.items()}
        for (target, member), (arrived, contribution) in plan.new_arrivals.items():
            what = f"join arrival of {member!r} at {target!r} in run {run_id!r}"
            body = dumps([arrived, contribution], what)
            value = inline(body, what)
            if value.startswith(_BLOB):  # the blob holds the contribution; the flag stays in the run item
                blob_items[-1]["body"] = S(dumps(contribution, what))
                value = _BLOB + ("1" if arrived else "0") + value[1:]
            arrivals[_arrival_key(target, member)] = value
        return {"jobs": plan.jobs, "docs": docs, "done": done, "arrivals": arrivals, CTX: ctx}, blob_items

    # ------------------------------------------------------------------------------------------ CoordinationStore
    async def schedule(self, run_id: str, jobs: Sequence[Job]) -> list[Job]:
        self._check(run_id)
        for job in jobs:
            self._check(run_id, job.key)

        def rules(plan: _Plan) -> list[Job]:
            return [job for job in jobs if plan.insert_job(run_id, job.key, "pending", job)]

        inserted, _ = await self._run(run_id, rules)
        return inserted

    async def begin(self, job: Job, owner: str, lease_seconds: float) -> Begin:
        """One conditional UpdateItem: take the lease (absent, expired, or already ours) on the run item,
        which comes back with the job's state and completion record. A job of no run gets a lease on nothing
        (the engine dead-letters it)."""
        begin, _ = await self.begin_prefetch(job, owner, lease_seconds)
        return begin

    async def begin_prefetch(self, job: Job, owner: str, lease_seconds: float
                             ) -> tuple[Begin, dict[str, Any] | None]:
        """``begin``, and the run's status record as the status table held it when the lease was taken (its
        item's attributes), when the run item can tell: it mirrors the record as created (``rec``) and has no
        mark (``chk``), which every status transition writes first unless its store saw it already, and a
        write that leaves no job pending writes too (so a run's end needs no write of its own) — then no
        transition has happened yet and the record is the one created. Else None: read the status table."""
        self._check(job.run_id, job.key)
        client = await self._source.get()
        now = time.time()
        values: dict[str, Any] = {":lease": {"M": {"o": S(owner), "e": N(now + lease_seconds)}}, ":me": S(owner),
                                  ":now": N(now)}
        try:
            response = await client.update_item(
                TableName=self.table_name, Key=self._key(job.run_id), UpdateExpression="SET #l.#k = :lease",
                ConditionExpression=("attribute_exists(#v) AND (attribute_not_exists(#ttl) OR #ttl >= :now) AND "
                                     "(attribute_not_exists(#l.#k) OR #l.#k.#o = :me OR #l.#k.#e < :now)"),
                ExpressionAttributeNames={"#l": "leases", "#k": job.key, "#o": "o", "#e": "e", "#v": "v",
                                          "#ttl": "ttl"},
                ExpressionAttributeValues=values, ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except Exception as exc:
            if not is_client_error(exc, *_NO_PATH):
                raise
            held = await self._item_of_failed_condition(client, job.run_id, exc, now)
            if held.version == 0:
                return Begin(lease=True, state=None, completion=None), None
            return Begin(lease=False, state=held.jobs.get(job.key), completion=None), None  # type: ignore[arg-type]
        state = self._remember(job.run_id, _RunState.parse(response.get("Attributes"), now))
        completion = await self._decoded(client, job.run_id, state, lambda plan: plan.completion(job.run_id, job.key))
        record = None if state.marked else state.record
        return Begin(lease=True, state=state.jobs.get(job.key), completion=completion), record  # type: ignore[arg-type]

    async def renew(self, run_id: str, job_key: str, owner: str, lease_seconds: float) -> bool:
        self._check(run_id, job_key)
        client = await self._source.get()
        now = time.time()
        try:
            await client.update_item(
                TableName=self.table_name, Key=self._key(run_id), UpdateExpression="SET #l.#k.#e = :exp, #act = :now",
                ConditionExpression="#l.#k.#o = :me AND (attribute_not_exists(#ttl) OR #ttl >= :now)",
                ExpressionAttributeNames={"#l": "leases", "#k": job_key, "#o": "o", "#e": "e", "#ttl": "ttl",
                                          "#act": "activity"},
                ExpressionAttributeValues={":exp": N(now + lease_seconds), ":me": S(owner), ":now": N(now)},
            )
        except Exception as exc:
            if is_client_error(exc, *_NO_PATH):
                return False
            raise
        return True

    async def release(self, run_id: str, job_key: str, owner: str) -> None:
        self._check(run_id, job_key)
        client = await self._source.get()
        try:
            await client.update_item(
                TableName=self.table_name, Key=self._key(run_id), UpdateExpression="REMOVE #l.#k",
                ConditionExpression="#l.#k.#o = :me",
                ExpressionAttributeNames={"#l": "leases", "#k": job_key, "#o": "o"},
                ExpressionAttributeValues={":me": S(owner)})
        except Exception as exc:
            if not is_client_error(exc, *_NO_PATH):
                raise

    async def commit(self, transition: Transition) -> Committed:
        tx = transition
        self._check(tx.run_id, tx.job_key)
        for arrival in tx.arrivals:
            self._check(tx.run_id, arrival.target_key)
        if self._applies_context and tx.completion is not None:
            conflict = await self._context_apart(tx, tx.completion)
            if conflict is not None:
                return conflict
        drop = _Drop(tx.job_key, tx.owner) if tx.finish and tx.owner is not None else None
        committed, after = await self._run(
            tx.run_id, lambda plan: apply_transition(plan, tx, applies_context=self._applies_context), drop)
        if committed.conflict is not None:
            return committed
        pending, parked = after.counts()
        if pending == parked == 0:
            self._keep(self._settled, tx.run_id, after)
        return replace(committed, pending=pending, parked=parked)

    async def _context_apart(self, tx: Transition, completion: Completion) -> Committed | None:
        """The steps of a commit whose context does not go into the record's UpdateItem (``applies_context``).

        A completion with more than ``CONTEXT_ENTRIES_PER_WRITE`` context writes does not fit one update
        expression (4 KB): its record is written first, marked (``!``), then its context in as many writes as
        it takes, then the commit proper (docs/architecture.md §3.5, done by the store). A replay of a marked
        record whose job is still pending writes its context again (its worker may have died between the
        steps; no later node can have changed those keys, as none was fired yet). Returns the conflict when
        another attempt's record won."""
        run_id, key = tx.run_id, tx.job_key
        client = await self._source.get()
        state = self._runs.get(run_id) or await self._read_run(client, run_id, time.time())
        stored = state.done.get(key)
        if stored is None and not tx.recovery and (
                len(completion.context_updates) + len(completion.context_deletes) > CONTEXT_ENTRIES_PER_WRITE):
            def record(plan: _Plan) -> Completion | None:
                existing = plan.completion(run_id, key)
                if existing is None:
                    plan.put_completion(run_id, key, completion)
                    plan.apart.add(key)
                return existing

            existing, state = await self._run(run_id, record)
            if existing is not None and existing.token != completion.token:
                return Committed(conflict=existing)
            stored = state.done.get(key)
            if existing is None:
                await self.context_apply(run_id, completion.context_updates, completion.context_deletes)
                return None
        if stored is not None and stored.startswith(_APART) and state.jobs.get(key) == "pending":
            state = await self._read_run(client, run_id, time.time())  # not a cached copy: is it still pending?
            if state.jobs.get(key) == "pending" and state.done.get(key, "").startswith(_APART):
                mine = await self._decoded(client, run_id, state, lambda plan: plan.completion(run_id, key))
                if mine is not None:
                    await self.context_apply(run_id, mine.context_updates, mine.context_deletes)
        return None

    # ------------------------------------------------------------------------------------------ the run's context
    # (``applies_context``: read and written through flowcraft_sqs.context.RunItemContext)
    async def context_get_many(self, run_id: str, keys: Sequence[str]) -> dict[str, Any]:
        self._check(run_id)
        wanted = [k for k in dict.fromkeys(keys) if valid_context_key(k)]
        client = await self._source.get()
        settled = self._settled_ctx(run_id)
        if settled is not None:
            values = await self._context_values(client, run_id, {k: settled[k] for k in wanted if k in settled})
            return {k: values[k] for k in keys if k in values}
        found: dict[str, str] = {}
        for start in range(0, len(wanted), CONTEXT_ENTRIES_PER_WRITE):
            part = wanted[start:start + CONTEXT_ENTRIES_PER_WRITE]
            names = {"#c": CTX, "#ttl": "ttl"} | {f"#k{i}": k for i, k in enumerate(part)}
            found |= await self._read_ctx(client, run_id, ", ".join(f"#c.#k{i}" for i in range(len(part))) + ", #ttl",
                                          names)
        values = await self._context_values(client, run_id, found)
        return {k: values[k] for k in keys if k in values}

    async def context_get_all(self, run_id: str) -> dict[str, Any]:
        self._check(run_id)
        client = await self._source.get()
        settled = self._settled_ctx(run_id)
        if settled is not None:
            return await self._context_values(client, run_id, settled)
        return await self._context_values(client, run_id,
                                          await self._read_ctx(client, run_id, "#c, #ttl", {"#c": CTX, "#ttl": "ttl"}))

    async def _read_ctx(self, client: DynamoDBClient, run_id: str, projection: str, names: dict[str, str]
                        ) -> dict[str, str]:
        response = await client.get_item(TableName=self.table_name, Key=self._key(run_id), ConsistentRead=True,
                                         ProjectionExpression=projection, ExpressionAttributeNames=names)
        item = response.get("Item")
        if not item or expired(item, time.time()):
            return {}
        return {k: v["S"] for k, v in (item.get(CTX) or {}).get("M", {}).items()}

    async def _context_values(self, client: DynamoDBClient, run_id: str, stored: Mapping[str, str]) -> dict[str, Any]:
        blobs = [v[1:] for v in stored.values() if v.startswith(_BLOB)]
        bodies = await self._read_blobs(client, run_id, blobs) if blobs else {}
        return {k: json.loads(bodies[v[1:]] if v.startswith(_BLOB) else v) for k, v in stored.items()}

    async def context_apply(self, run_id: str, updates: Mapping[str, Any], deletes: Sequence[str] = ()) -> None:
        """Write context entries outside a commit: up to ``CONTEXT_ENTRIES_PER_WRITE`` per UpdateItem (the
        version is not changed, so no commit retries for them); the ``ctx`` map is created first where the run
        item has none (or only an expired one, whose state is then dropped)."""
        self._check(run_id)
        self._settled.pop(run_id, None)
        changed, removed = _context_changes(updates, deletes)
        entries: list[tuple[str, Any, bool]] = [(k, v, True) for k, v in changed.items()]
        entries += [(k, None, False) for k in removed]
        client = await self._source.get()
        for start in range(0, len(entries), CONTEXT_ENTRIES_PER_WRITE):
            part = entries[start:start + CONTEXT_ENTRIES_PER_WRITE]
            cached = self._runs.get(run_id)
            try:
                await self._ctx_write(client, run_id, part, cached is not None and cached.size() > SPILL_ALL_ABOVE)
            except ItemTooLargeError:
                # the item grew by writes this process did not see: every value of these in its own item
                await self._ctx_write(client, run_id, part, True)

    async def _ctx_write(self, client: DynamoDBClient, run_id: str, entries: Sequence[tuple[str, Any, bool]],
                         spill_all: bool) -> None:
        now = time.time()
        ttl = self._ttl(now)
        blob_items: list[dict[str, Any]] = []
        inline = self._inliner(run_id, ttl, spill_all, blob_items)
        names: dict[str, str] = {"#c": CTX, "#ttl": "ttl"}
        values: dict[str, Any] = {":now": N(now)}
        sets: list[str] = []
        removes: list[str] = []
        for i, (key, value, present) in enumerate(entries):
            names[f"#k{i}"] = key
            if present:
                what = f"context value {key!r} of run {run_id!r}"
                values[f":x{i}"] = S(inline(dumps(value, what), what))
                sets.append(f"#c.#k{i} = :x{i}")
            else:
                removes.append(f"#c.#k{i}")
        if ttl is not None:
            values[":ttl"] = N(ttl)
            sets.append("#ttl = :ttl")
        else:
            removes.append("#ttl")
        if blob_items:
            await asyncio.gather(*(client.put_item(TableName=self.table_name, Item=item) for item in blob_items))
        request = prune({
            "TableName": self.table_name, "Key": self._key(run_id),
            "UpdateExpression": ("SET " + ", ".join(sets) if sets else "") + (" REMOVE " + ", ".join(removes)
                                                                               if removes else ""),
            "ConditionExpression": "attribute_exists(#c) AND (attribute_not_exists(#ttl) OR #ttl >= :now)",
            "ExpressionAttributeNames": names, "ExpressionAttributeValues": values})
        for attempt in range(MAX_ATTEMPTS):
            try:
                await client.update_item(**request)
                return
            except Exception as exc:
                _raise_if_too_large(exc, run_id)
                if not is_client_error(exc, *_NO_PATH):
                    raise
            await self._create_ctx(client, run_id, time.time())
            if attempt >= 3:
                await asyncio.sleep(backoff(attempt))
        raise FlowcraftError(f"context writes of run {run_id!r} kept conflicting; giving up after {MAX_ATTEMPTS} "
                             "attempts")

    async def _create_ctx(self, client: DynamoDBClient, run_id: str, now: float) -> None:
        """An empty ``ctx`` map on a run item that has none; an expired run item is started afresh (its
        coordination state goes: the item counts as absent anyway)."""
        ttl = self._ttl(now)
        names = {"#c": CTX, "#ttl": "ttl", "#v": "v"}
        values: dict[str, Any] = {":empty": {"M": {}}, ":now": N(now)}
        refresh, forget = "", ""
        if ttl is not None:
            values[":ttl"] = N(ttl)
            refresh = ", #ttl = :ttl"
        else:
            forget = ", #ttl"
        live = "(attribute_not_exists(#ttl) OR #ttl >= :now)"
        for update, condition in (("SET #c = :empty" + refresh + (" REMOVE #ttl" if forget else ""),
                                   "attribute_not_exists(#c) AND " + live),
                                  ("SET #c = :empty" + refresh + " REMOVE #v" + forget, "#ttl < :now")):
            try:
                await client.update_item(**prune({
                    "TableName": self.table_name, "Key": self._key(run_id), "UpdateExpression": update,
                    "ConditionExpression": condition, "ExpressionAttributeNames": names,
                    "ExpressionAttributeValues": values}))
                self._runs.pop(run_id, None)  # the cached copy may say the item has no ctx map
                return
            except Exception as exc:
                if not is_client_error(exc, "ConditionalCheckFailedException"):
                    raise

    async def context_delete_run(self, run_id: str) -> None:
        """Drop the run's context (and the blob items it names)."""
        self._check(run_id)
        self._settled.pop(run_id, None)
        client = await self._source.get()
        stored = await self._read_ctx(client, run_id, "#c, #ttl", {"#c": CTX, "#ttl": "ttl"})
        try:
            await client.update_item(TableName=self.table_name, Key=self._key(run_id), UpdateExpression="REMOVE #c",
                                     ConditionExpression="attribute_exists(#c)", ExpressionAttributeNames={"#c": CTX})
        except Exception as exc:
            if not is_client_error(exc, "ConditionalCheckFailedException"):
                raise
        self._runs.pop(run_id, None)
        blobs = [{"DeleteRequest": {"Key": self._key(run_id, v[1:])}} for v in stored.values() if v.startswith(_BLOB)]
        await batch_write(client, self.table_name, blobs)

    async def park(self, run_id: str, job_key: str) -> Committed:
        self._check(run_id, job_key)

        def rules(plan: _Plan) -> None:
            if plan.job_state(run_id, job_key) == "pending":
                plan.set_job_state(run_id, job_key, "parked")

        _, after = await self._run(run_id, rules)
        pending, parked = after.counts()
        return Committed(pending=pending, parked=parked)

    async def unpark(self, run_id: str, job_key: str, job: Job) -> bool:
        self._check(run_id, job_key)

        def rules(plan: _Plan) -> bool:
            if plan.job_state(run_id, job_key) != "parked":
                return False
            plan.set_job_state(run_id, job_key, "pending")
            plan.replace_job(job_key, job)
            return True

        unparked, _ = await self._run(run_id, rules)
        return unparked

    async def jobs(self, run_id: str, state: JobState = "pending") -> list[PendingJob]:
        self._check(run_id)
        client = await self._source.get()
        now = time.time()
        run = await self._read_run(client, run_id, now)
        keys = [k for k, s in run.jobs.items() if s == state and k in run.docs]
        found = await self._decoded(client, run_id, run, lambda plan: [plan.job(run_id, k) for k in keys])
        return [PendingJob(job, leased=key in run.leases and run.leases[key][1] > now)
                for key, job in zip(keys, found, strict=True) if job is not None]

    async def activity(self, run_id: str) -> float | None:
        self._check(run_id)
        client = await self._source.get()
        response = await client.get_item(TableName=self.table_name, Key=self._key(run_id), ConsistentRead=True,
                                         ProjectionExpression="#act, #ttl, #v",
                                         ExpressionAttributeNames={"#act": "activity", "#ttl": "ttl", "#v": "v"})
        item = response.get("Item")
        # an item without a version holds only context (a start that died before scheduling): no activity
        return None if not item or "v" not in item or expired(item, time.time()) else num(item.get("activity"))

    async def delete_run(self, run_id: str) -> None:
        self._check(run_id)
        client = await self._source.get()
        kwargs: dict[str, Any] = {"TableName": self.table_name, "ConsistentRead": True,
                                  "KeyConditionExpression": "#r = :r", "ProjectionExpression": "#r, #sk",
                                  "ExpressionAttributeNames": {"#r": "runId", "#sk": "sk"},
                                  "ExpressionAttributeValues": {":r": S(run_id)}}
        requests: list[dict[str, Any]] = []
        while True:
            response = await client.query(**kwargs)
            requests += [{"DeleteRequest": {"Key": {"runId": i["runId"], "sk": i["sk"]}}}
                         for i in response.get("Items", [])]
            if not response.get("LastEvaluatedKey"):
                break
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]
        await batch_write(client, self.table_name, requests)
        self._runs.pop(run_id, None)
        self._settled.pop(run_id, None)
        self._records.pop(run_id, None)


class _MapPaths:
    """Builds ``SET``/``REMOVE`` clauses for entries of the run item's maps (names and values numbered)."""

    def __init__(self, names: dict[str, str], values: dict[str, Any]) -> None:
        self.names = names
        self.values = values
        self._count = 0

    @staticmethod
    def cost(changed: Mapping[str, str], removed: Sequence[str]) -> int:
        return 20 * (len(changed) + len(removed))

    def path(self, attribute: str, key: str) -> str:
        self._count += 1
        self.names["#" + attribute] = attribute
        self.names[f"#k{self._count}"] = key
        return f"#{attribute}.#k{self._count}"

    def set(self, attribute: str, key: str, value: str) -> str:
        path = self.path(attribute, key)
        self.values[f":x{self._count}"] = S(value)
        return f"{path} = :x{self._count}"

    def whole(self, attribute: str, entries: Mapping[str, str]) -> str:
        self._count += 1
        self.names["#" + attribute] = attribute
        self.values[f":x{self._count}"] = {"M": {k: S(v) for k, v in entries.items()}}
        return f"#{attribute} = :x{self._count}"


# ============================================================================================== completions
def valid_context_key(key: str) -> bool:
    """Whether DynamoDB can hold ``key`` as a context key (1 to 1024 bytes of UTF-8)."""
    return is_key(key, MAX_SORT_KEY_BYTES)


def _raise_if_too_large(exc: BaseException, run_id: str) -> None:
    """A one-line ``ItemTooLargeError`` for DynamoDB's refusal of a write that would pass 400 KB."""
    if is_client_error(exc, "ValidationException") and "item size" in str(exc).lower():
        raise ItemTooLargeError(f"the run item of run {run_id!r} (coordination state and context) would pass "
                                "DynamoDB's 400 KB item limit",
                                hint="keep large payloads in S3 (or another blob store) and put a reference in the "
                                     "context; split the work into subflows") from None


def _context_changes(updates: Mapping[str, Any], deletes: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """What a context write sets and removes: a key deleted in the same step is removed (the delete wins, as
    in the reference store); a key DynamoDB cannot hold is refused when set, ignored when deleted."""
    removed = [k for k in dict.fromkeys(deletes) if valid_context_key(k)]
    gone = set(deletes)
    changed: dict[str, Any] = {}
    for key, value in updates.items():
        if key not in gone:
            check_key(key, "context key", MAX_SORT_KEY_BYTES)
            changed[key] = value
    return changed, removed


def _completion_text(completion: Completion, what: str) -> str:
    """The completion record's JSON; the node's output is stored once even though the context update
    ``_outputs.<node>`` repeats it."""
    data = completion.to_dict()
    updates = data.get("context_updates")
    key = OUTPUTS_PREFIX + completion.node_id
    if updates and key in updates and _same(updates[key], completion.output):
        updates = dict(updates)
        del updates[key]
        data["context_updates"] = updates
        data["output_in_context"] = True
    return dumps(data, f"completion of {what}")


def _completion_from(raw: str) -> Completion:
    data = json.loads(raw)
    if data.pop("output_in_context", False):
        updates = dict(data.get("context_updates") or {})
        updates[OUTPUTS_PREFIX + data["node_id"]] = data.get("output")
        data["context_updates"] = updates
    return Completion.from_dict(data)


def _same(a: Any, b: Any) -> bool:
    return a is b or (type(a) is type(b) and a == b)
