"""DynamoDB coordination store: conditional writes, TransactWriteItems, and no server-side scripting.

Table ``<prefix>coordination``: partition key ``runId`` (S), sort key ``sk`` (S). Items of one run:

* ``run``: ``pending`` / ``parked`` (N, counters), ``activity`` (N, epoch seconds);
* ``job#<job key>``: the jobs map entry ``state`` (S) with the job document ``job`` (S, JSON; absent for
  skipped jobs); once the job finished, its completion record ``completion`` (S, JSON) and ``token`` (S);
  while a worker handles it, its lease ``owner`` (S) and ``expires`` (N, epoch seconds). One item, so
  ``begin`` (take the lease, read state and completion) is one conditional UpdateItem, and finishing the job
  drops the lease in the same write;
* ``arr#<JSON target key><JSON member>``: one join arrival per (target, predecessor): ``target``, ``member``
  (S), ``arrived`` (BOOL), ``contribution`` (S, JSON). JSON string literals are prefix-free, so the arrivals
  of one target are one ``begins_with`` query whatever characters the ids contain;

Every item carries ``ttl`` (N, epoch seconds; DynamoDB's TTL deletes it lazily), and every condition treats
an item whose ``ttl`` has passed as absent: ``attribute_not_exists(runId) OR ttl < :now``.

``commit`` runs the rules of :func:`flowcraft.backends.transition.apply_transition` — the very function —
over a *plan*: reads come from consistent reads made before (the join's arrivals are written first, then
read, so the last of concurrent predecessors always sees them all), writes are collected as conditional
writes whose conditions are exactly the assumptions the rules relied on (completion absent or ours, target
job absent, own job still pending). The plan is applied with one TransactWriteItems that also ADDs the
pending/parked deltas to the ``run`` item, so the counters change atomically with the states. If a condition
fails, the failing item's current value (ReturnValuesOnConditionCheckFailure=ALL_OLD) replaces the
assumption and the rules run again; nothing was applied. A replay after a crash therefore converges:
inserts that happened fail their condition and are seen as existing, completions with the same token are
idempotent, finished jobs are not finished twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Self, TypeVar

from flowcraft.backends.transition import apply_transition
from flowcraft.errors import FlowcraftError
from flowcraft.spi import (
    Arrival,
    Begin,
    Committed,
    Completion,
    CoordinationStore,
    Job,
    JobState,
    PendingJob,
    Transition,
)
from flowcraft_sqs._aws import (
    MAX_PARTITION_KEY_BYTES,
    MAX_SORT_KEY_BYTES,
    AwsClients,
    ClientSource,
    N,
    S,
    SqsOptions,
    backoff,
    check_item_size,
    check_key,
    dumps,
    error_code,
    expired,
    is_client_error,
    log,
    num,
    prune,
    source_of,
    text,
)

T = TypeVar("T")

RUN = "run"
OUTPUTS_PREFIX = "_outputs."
MAX_TRANSACTION_ITEMS = 100
MAX_ATTEMPTS = 100
_COUNTED: dict[str, tuple[int, int]] = {"pending": (1, 0), "parked": (0, 1)}


def _job_sk(key: str) -> str:
    return "job#" + key


def _arrivals_prefix(target: str) -> str:
    return "arr#" + json.dumps(target)


def _arrival_sk(target: str, member: str) -> str:
    return _arrivals_prefix(target) + json.dumps(member)


class DynamoDbCoordinationStore(CoordinationStore):
    name = "dynamodb"
    applies_context = False  # contexts live in their own table; the engine applies them

    def __init__(self, client: Any = None, table_name: str = "flowcraft-coordination", *,
                 ttl_seconds: int = 30 * 24 * 3600, source: ClientSource | None = None) -> None:
        self._source = source_of(client, source)
        self.table_name = table_name
        self.ttl_seconds = int(ttl_seconds)
        # one writer per run at a time in this process: every commit of a run writes the run's counters, so
        # concurrent ones would only conflict (DynamoDB cancels one of two transactions on the same item)
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @classmethod
    def from_config(cls, options: Mapping[str, Any], shared: dict[str, Any]) -> Self:
        parsed = SqsOptions.parse(options)
        return cls(table_name=parsed.table("coordination"), ttl_seconds=parsed.ttl_seconds,
                   source=AwsClients.shared(shared, parsed).source("dynamodb"))

    async def setup(self) -> None:
        from flowcraft_sqs.provisioning import ensure_table

        await ensure_table(await self._source.get(), self.table_name,
                           keys=[("runId", "HASH", "S"), ("sk", "RANGE", "S")])

    async def close(self) -> None:
        await self._source.close()

    # ------------------------------------------------------------------------------------------ helpers
    def _ttl(self, now: float) -> int | None:
        return int(now + self.ttl_seconds) if self.ttl_seconds > 0 else None

    def _key(self, run_id: str, sk: str) -> dict[str, Any]:
        return {"runId": S(run_id), "sk": S(sk)}

    @staticmethod
    def _check(run_id: str, job_key: str | None = None) -> None:
        check_key(run_id, "run id", MAX_PARTITION_KEY_BYTES)
        if job_key is not None:
            check_key("job#" + job_key, "job key", MAX_SORT_KEY_BYTES)

    async def _get(self, client: Any, run_id: str, sk: str, now: float) -> dict[str, Any] | None:
        response = await client.get_item(TableName=self.table_name, Key=self._key(run_id, sk), ConsistentRead=True)
        item: dict[str, Any] | None = response.get("Item")
        return None if not item or expired(item, now) else item

    async def _read_jobs(self, client: Any, run_id: str, keys: Iterable[str], now: float) -> dict[str, _Item | None]:
        """Consistent reads of job items (absent or expired -> None)."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, _Item | None] = dict.fromkeys(wanted)
        for start in range(0, len(wanted), 100):
            by_sk = {_job_sk(k): k for k in wanted[start : start + 100]}
            request: dict[str, Any] = {self.table_name: {
                "Keys": [self._key(run_id, sk) for sk in by_sk], "ConsistentRead": True}}
            attempt = 0
            while request:
                response = await client.batch_get_item(RequestItems=request)
                for item in response.get("Responses", {}).get(self.table_name, []):
                    found[by_sk[item["sk"]["S"]]] = _Item.parse(item, now)
                request = response.get("UnprocessedKeys") or {}
                if request:
                    attempt += 1
                    await asyncio.sleep(backoff(attempt))
        return found

    async def _query(self, client: Any, run_id: str, prefix: str | None, *, filter_state: str | None = None,
                     projection: str | None = None) -> list[dict[str, Any]]:
        """All items of the run (whose sort key starts with ``prefix``), consistently, every page."""
        names = {"#r": "runId"}
        values: dict[str, Any] = {":r": S(run_id)}
        kwargs: dict[str, Any] = {"TableName": self.table_name, "ConsistentRead": True,
                                  "KeyConditionExpression": "#r = :r"}
        if prefix is not None:
            names["#sk"] = "sk"
            values[":p"] = S(prefix)
            kwargs["KeyConditionExpression"] = "#r = :r AND begins_with(#sk, :p)"
        if filter_state is not None:
            names["#state"] = "state"
            values[":state"] = S(filter_state)
            kwargs["FilterExpression"] = "#state = :state"
        if projection is not None:
            names["#sk"] = "sk"
            kwargs["ProjectionExpression"] = projection
        kwargs["ExpressionAttributeNames"] = names
        kwargs["ExpressionAttributeValues"] = values
        items: list[dict[str, Any]] = []
        while True:
            response = await client.query(**kwargs)
            items += response.get("Items", [])
            start = response.get("LastEvaluatedKey")
            if not start:
                return items
            kwargs["ExclusiveStartKey"] = start

    async def _counts(self, client: Any, run_id: str, now: float) -> tuple[int, int]:
        item = await self._get(client, run_id, RUN, now)
        if item is None:
            return 0, 0
        return int(num(item.get("pending"))), int(num(item.get("parked")))

    # ------------------------------------------------------------------------------------------ the plan runner
    async def _run(self, run_id: str, rules: Callable[[_Plan], T], *, own_key: str | None = None,
                   known: dict[str, _Item | None] | None = None,
                   members: dict[str, dict[str, tuple[bool, Any]]] | None = None,
                   newly: set[tuple[str, str]] | None = None, contested: set[str] | None = None,
                   claimer: str | None = None, lease_owner: str | None = None) -> tuple[T, float, bool]:
        """Run ``rules`` over a plan until its conditional writes apply; returns the rules' result.

        ``contested`` keys (join targets several predecessors may decide to fire at once) are first claimed
        by ``claimer`` with a single-item conditional write; only the claimer inserts them. So concurrent
        predecessors never make a transaction fail (which is also what keeps moto, whose failed transactions
        restore a snapshot of the whole table, from losing concurrent writes). ``lease_owner``'s lease on
        ``own_key`` is dropped by the write that finishes that job; the third value says it was."""
        async with self._run_lock(run_id):
            return await self._run_locked(run_id, rules, own_key=own_key, known=known, members=members,
                                          newly=newly, contested=contested, claimer=claimer, lease_owner=lease_owner)

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

    async def _run_locked(self, run_id: str, rules: Callable[[_Plan], T], *, own_key: str | None,
                          known: dict[str, _Item | None] | None, members: dict[str, dict[str, tuple[bool, Any]]] | None,
                          newly: set[tuple[str, str]] | None, contested: set[str] | None,
                          claimer: str | None, lease_owner: str | None) -> tuple[T, float, bool]:
        client = await self._source.get()
        known = {} if known is None else known
        ours: set[str] = set()  # inserted by an earlier transaction of this very call (a plan split in several)
        for attempt in range(MAX_ATTEMPTS):
            now = time.time()
            plan = _Plan(known, members or {}, newly or set(), own_key, lease_owner, claimer, ours)
            try:
                result = rules(plan)
            except _NeedRead as need:
                known.update(await self._read_jobs(client, run_id, need.keys, now))
                continue
            if isinstance(result, Committed) and result.conflict is not None:
                return result, now, False
            claims = [op.key for op in plan.ops.values()
                      if op.insert is not None and op.key in (contested or ()) and op.claimed_by is None]
            if claims and claimer is not None:
                await asyncio.gather(*(self._claim(client, run_id, key, claimer, now, known) for key in claims))
                continue
            outcome = await self._apply(client, run_id, plan, now, known, ours)
            if outcome == "applied":
                return result, now, any(op.drop_lease is not None for op in plan.ops.values())
            if outcome == "contended":
                await asyncio.sleep(backoff(attempt))
        raise FlowcraftError(f"coordination writes of run {run_id!r} kept conflicting; giving up after "
                             f"{MAX_ATTEMPTS} attempts", hint="the job is redelivered and replayed")

    async def _apply(self, client: Any, run_id: str, plan: _Plan, now: float,
                     known: dict[str, _Item | None], ours: set[str]) -> str:
        """Apply the plan's writes (one transaction per 99 items, completions first, own job last).
        Returns "applied", "stale" (a condition failed; ``known`` now holds the current items) or
        "contended" (a transaction conflict; try again)."""
        ttl = self._ttl(now)
        ops = list(plan.ops.values())
        if len(ops) >= MAX_TRANSACTION_ITEMS:
            ops = [part for op in ops for part in op.split()]
        ops.sort(key=lambda op: op.rank)
        if not ops:
            await client.update_item(**self._meta_update(run_id, 0, 0, now, ttl))
            return "applied"
        size = MAX_TRANSACTION_ITEMS - 1
        for start in range(0, len(ops), size):
            chunk = ops[start : start + size]
            pending = sum(op.pending for op in chunk)
            parked = sum(op.parked for op in chunk)
            items = [op.request(self.table_name, run_id, now, ttl) for op in chunk]
            items.append({"Update": self._meta_update(run_id, pending, parked, now, ttl)})
            try:
                await client.transact_write_items(TransactItems=items)
            except Exception as exc:
                if error_code(exc) != "TransactionCanceledException":
                    raise
                reasons = getattr(exc, "response", {}).get("CancellationReasons") or []
                log.debug("transaction of run %s cancelled: %s", run_id,
                          [(op.key, r.get("Code")) for op, r in zip(chunk, reasons, strict=False)])
                stale = False
                for op, reason in zip(chunk, reasons, strict=False):
                    if reason.get("Code") == "ConditionalCheckFailed":
                        old = reason.get("Item")
                        known[op.key] = _Item.parse(old, now) if old else None
                        stale = True
                if stale:
                    return "stale"
                codes = {r.get("Code") for r in reasons} - {"None", None}
                if codes & {"ValidationError", "ItemCollectionSizeLimitExceeded"}:
                    raise FlowcraftError(f"DynamoDB refused the coordination writes of run {run_id!r}: "
                                         f"{exc}") from None
                return "contended"
            for op in chunk:  # applied: later chunks (and a re-plan) see them
                if op.key in known or op.insert is not None or op.update_state is not None:
                    known[op.key] = op.after(known.get(op.key))
                if op.insert is not None:
                    ours.add(op.key)
        return "applied"

    async def _claim(self, client: Any, run_id: str, key: str, claimer: str, now: float,
                     known: dict[str, _Item | None]) -> None:
        """Claim the right to insert ``key`` (absent or expired item, or one without state claimed by
        nobody else); ``known`` gets the item as it is afterwards."""
        names = {"#state": "state", "#claim": "claim", "#ttl": "ttl", "#job": "job", "#c": "completion",
                 "#tok": "token"}
        values: dict[str, Any] = {":me": S(claimer), ":now": N(now)}
        sets = "#claim = :me"
        ttl = self._ttl(now)
        if ttl is not None:
            values[":ttl"] = N(ttl)
            sets += ", #ttl = :ttl"
        try:
            response = await client.update_item(
                TableName=self.table_name, Key=self._key(run_id, _job_sk(key)),
                UpdateExpression=f"SET {sets} REMOVE #state, #job, #c, #tok",
                ConditionExpression=("#ttl < :now OR (attribute_not_exists(#state) AND "
                                     "(attribute_not_exists(#claim) OR #claim = :me))"),
                ExpressionAttributeNames=names, ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW", ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
            known[key] = _Item.parse(response.get("Attributes") or {}, now)
            # confirm with a consistent read: costs one GetItem per join that fires, and keeps emulators whose
            # conditional writes are not atomic under concurrent requests (moto) from letting two claim it
            item = await self._get(client, run_id, _job_sk(key), now)
            known[key] = _Item.parse(item, now) if item else None
        except Exception as exc:
            if not is_client_error(exc, "ConditionalCheckFailedException"):
                raise
            old = getattr(exc, "response", {}).get("Item")
            known[key] = _Item.parse(old, now) if old else None

    def _meta_update(self, run_id: str, pending: int, parked: int, now: float, ttl: int | None) -> dict[str, Any]:
        names = {"#act": "activity", "#p": "pending", "#k": "parked"}
        values: dict[str, Any] = {":now": N(now), ":dp": N(pending), ":dk": N(parked)}
        sets = "#act = :now"
        if ttl is not None:
            names["#ttl"] = "ttl"
            values[":ttl"] = N(ttl)
            sets += ", #ttl = :ttl"
        return {"TableName": self.table_name, "Key": self._key(run_id, RUN),
                "UpdateExpression": f"SET {sets} ADD #p :dp, #k :dk",
                "ExpressionAttributeNames": names, "ExpressionAttributeValues": values}

    # ------------------------------------------------------------------------------------------ CoordinationStore
    async def schedule(self, run_id: str, jobs: Sequence[Job]) -> list[Job]:
        self._check(run_id)
        for job in jobs:
            self._check(run_id, job.key)

        def rules(plan: _Plan) -> list[Job]:
            inserted = [job for job in jobs if plan.insert_job(run_id, job.key, "pending", job)]
            plan.touch(run_id)
            return inserted

        inserted, _, _ = await self._run(run_id, rules)
        return inserted

    async def begin(self, job: Job, owner: str, lease_seconds: float) -> Begin:
        """One conditional UpdateItem on the job item: take the lease (absent, expired, or already ours)
        and get the state and completion back (ALL_NEW, or ALL_OLD when another owner holds it)."""
        self._check(job.run_id, job.key)
        client = await self._source.get()
        now = time.time()
        values: dict[str, Any] = {":me": S(owner), ":exp": N(now + lease_seconds), ":now": N(now)}
        update = "SET #owner = :me, #exp = :exp"
        ttl = self._ttl(now)
        if ttl is not None:  # an item created here (a job never scheduled) must not outlive the retention
            update += ", #ttl = if_not_exists(#ttl, :ttl)"
            values[":ttl"] = N(ttl)
        try:
            response = await client.update_item(
                TableName=self.table_name, Key=self._key(job.run_id, _job_sk(job.key)), UpdateExpression=update,
                ConditionExpression=("attribute_not_exists(#owner) OR #owner = :me OR #exp < :now "
                                     "OR #ttl < :now"),
                ExpressionAttributeNames={"#owner": "owner", "#exp": "expires", "#ttl": "ttl"},
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW", ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except Exception as exc:
            if not is_client_error(exc, "ConditionalCheckFailedException"):
                raise
            held = _Item.parse(getattr(exc, "response", {}).get("Item") or {}, now)
            return Begin(False, held.state if held else None, None)
        item = _Item.parse(response.get("Attributes") or {}, now)
        return Begin(True, item.state if item else None, item.completion if item else None)

    async def renew(self, run_id: str, job_key: str, owner: str, lease_seconds: float) -> bool:
        self._check(run_id, job_key)
        client = await self._source.get()
        now = time.time()
        try:
            await client.update_item(
                TableName=self.table_name, Key=self._key(run_id, _job_sk(job_key)),
                UpdateExpression="SET #exp = :exp",
                ConditionExpression="#owner = :me AND (attribute_not_exists(#ttl) OR #ttl >= :now)",
                ExpressionAttributeNames={"#exp": "expires", "#ttl": "ttl", "#owner": "owner"},
                ExpressionAttributeValues={":exp": N(now + lease_seconds), ":me": S(owner), ":now": N(now)},
            )
        except Exception as exc:
            if is_client_error(exc, "ConditionalCheckFailedException"):
                return False
            raise
        await client.update_item(**self._meta_update(run_id, 0, 0, now, self._ttl(now)))
        return True

    async def release(self, run_id: str, job_key: str, owner: str) -> None:
        self._check(run_id, job_key)
        client = await self._source.get()
        key = self._key(run_id, _job_sk(job_key))
        try:
            response = await client.update_item(
                TableName=self.table_name, Key=key, UpdateExpression="REMOVE #owner, #exp",
                ConditionExpression="#owner = :me", ExpressionAttributeNames={"#owner": "owner", "#exp": "expires"},
                ExpressionAttributeValues={":me": S(owner)}, ReturnValues="ALL_NEW",
            )
        except Exception as exc:
            if not is_client_error(exc, "ConditionalCheckFailedException"):
                raise
            return
        if not {"state", "completion"} & set(response.get("Attributes") or {}):
            # the item only held this lease (a job that was never scheduled): remove it
            with contextlib.suppress(Exception):
                await client.delete_item(
                    TableName=self.table_name, Key=key,
                    ConditionExpression="attribute_not_exists(#state) AND attribute_not_exists(#c) "
                                        "AND attribute_not_exists(#owner)",
                    ExpressionAttributeNames={"#state": "state", "#c": "completion", "#owner": "owner"})

    async def commit(self, transition: Transition) -> Committed:
        tx = transition
        self._check(tx.run_id, tx.job_key)
        client = await self._source.get()
        now = time.time()
        joins: dict[tuple[str, str], Arrival] = {}
        for arrival in tx.arrivals:
            self._check(tx.run_id, arrival.target_key)
            if len(arrival.expected) > 1:
                joins.setdefault((arrival.target_key, arrival.member), arrival)
        # 1. record join arrivals (first writer wins), then 2. read each join's members and the items the
        # rules will look at; the rules then run over what was read (see the module docstring)
        written = await asyncio.gather(*(self._record_arrival(client, tx.run_id, a, now) for a in joins.values()))
        newly = {key for key, ok in zip(joins, written, strict=True) if ok}
        targets = list(dict.fromkeys(target for target, _ in joins))
        reads: set[str] = set()  # join targets are not read: the one that fires claims its target first
        if tx.recovery:
            reads |= {tx.job_key, *(a.target_key for a in tx.arrivals)}
        known, found = await asyncio.gather(
            self._read_jobs(client, tx.run_id, reads, now),
            asyncio.gather(*(self._members(client, tx.run_id, target, now) for target in targets)),
        )
        members = dict(zip(targets, found, strict=True))
        committed, now, released = await self._run(
            tx.run_id, lambda plan: apply_transition(plan, tx), own_key=tx.job_key, known=known, members=members,
            newly=newly, contested=set(targets), claimer=tx.job_key, lease_owner=tx.owner)
        if committed.conflict is not None:
            return committed
        pending, parked = await self._counts(client, tx.run_id, now)
        return replace(committed, pending=pending, parked=parked, lease_released=released)

    async def _record_arrival(self, client: Any, run_id: str, arrival: Arrival, now: float) -> bool:
        item: dict[str, Any] = {
            **self._key(run_id, _arrival_sk(arrival.target_key, arrival.member)),
            "target": S(arrival.target_key), "member": S(arrival.member), "arrived": {"BOOL": arrival.arrived},
            "contribution": S(dumps(arrival.contribution, f"output of {arrival.member!r}")),
        }
        ttl = self._ttl(now)
        if ttl is not None:
            item["ttl"] = N(ttl)
        check_item_size(item, f"join arrival of {arrival.member!r} at {arrival.job.node_id!r}")
        try:
            await client.put_item(TableName=self.table_name, Item=item,
                                  ConditionExpression="attribute_not_exists(#r) OR #ttl < :now",
                                  ExpressionAttributeNames={"#r": "runId", "#ttl": "ttl"},
                                  ExpressionAttributeValues={":now": N(now)})
        except Exception as exc:
            if is_client_error(exc, "ConditionalCheckFailedException"):
                return False
            raise
        return True

    async def _members(self, client: Any, run_id: str, target: str, now: float) -> dict[str, tuple[bool, Any]]:
        found: dict[str, tuple[bool, Any]] = {}
        for item in await self._query(client, run_id, _arrivals_prefix(target)):
            if expired(item, now) or text(item.get("target")) != target:
                continue
            contribution = text(item.get("contribution"))
            found[item["member"]["S"]] = (bool(item.get("arrived", {}).get("BOOL")),
                                          None if contribution is None else json.loads(contribution))
        return found

    async def park(self, run_id: str, job_key: str) -> Committed:
        self._check(run_id, job_key)

        def rules(plan: _Plan) -> None:
            if plan.job_state(run_id, job_key) == "pending":
                plan.set_job_state(run_id, job_key, "parked")
            plan.touch(run_id)

        _, now, _ = await self._run(run_id, rules, own_key=job_key)
        pending, parked = await self._counts(await self._source.get(), run_id, now)
        return Committed(pending=pending, parked=parked)

    async def unpark(self, run_id: str, job_key: str, job: Job) -> bool:
        self._check(run_id, job_key)
        client = await self._source.get()
        async with self._run_lock(run_id):
            return await self._unpark(client, run_id, job_key, job)

    async def _unpark(self, client: Any, run_id: str, job_key: str, job: Job) -> bool:
        for attempt in range(MAX_ATTEMPTS):
            now = time.time()
            ttl = self._ttl(now)
            op = _Op(job_key, rank=1, update_state="pending", from_state="parked", job=job, pending=1, parked=-1)
            try:
                await client.transact_write_items(TransactItems=[
                    op.request(self.table_name, run_id, now, ttl),
                    {"Update": self._meta_update(run_id, 1, -1, now, ttl)},
                ])
            except Exception as exc:
                if error_code(exc) != "TransactionCanceledException":
                    raise
                reasons = getattr(exc, "response", {}).get("CancellationReasons") or []
                if any(r.get("Code") == "ConditionalCheckFailed" for r in reasons):
                    return False
                await asyncio.sleep(backoff(attempt))
                continue
            return True
        raise FlowcraftError(f"could not resume job {job_key!r} of run {run_id!r}: writes kept conflicting")

    async def jobs(self, run_id: str, state: JobState = "pending") -> list[PendingJob]:
        self._check(run_id)
        client = await self._source.get()
        now = time.time()
        out: list[PendingJob] = []
        for item in await self._query(client, run_id, "job#", filter_state=state):
            parsed = _Item.parse(item, now)
            if parsed is None or parsed.state != state or parsed.job is None:
                continue
            out.append(PendingJob(parsed.job, parsed.owner is not None and parsed.expires > now))
        return out

    async def activity(self, run_id: str) -> float | None:
        self._check(run_id)
        item = await self._get(await self._source.get(), run_id, RUN, time.time())
        return None if item is None else num(item.get("activity"))

    async def delete_run(self, run_id: str) -> None:
        self._check(run_id)
        client = await self._source.get()
        items = await self._query(client, run_id, None, projection="#r, #sk")
        requests = [{"DeleteRequest": {"Key": {"runId": i["runId"], "sk": i["sk"]}}} for i in items]
        for start in range(0, len(requests), 25):
            pending: dict[str, Any] = {self.table_name: requests[start : start + 25]}
            attempt = 0
            while pending:
                response = await client.batch_write_item(RequestItems=pending)
                pending = response.get("UnprocessedItems") or {}
                if pending:
                    attempt += 1
                    await asyncio.sleep(backoff(attempt))


# ============================================================================================== plan
@dataclass(slots=True)
class _Item:
    """A job item as read: jobs-map state (None if the item holds only a completion or a lease), document,
    completion, lease."""

    state: JobState | None
    job: Job | None
    completion: Completion | None
    owner: str | None = None
    expires: float = 0.0
    claim: str | None = None

    @classmethod
    def parse(cls, item: Mapping[str, Any], now: float) -> _Item | None:
        if not item or expired(item, now):
            return None
        job_text = text(item.get("job"))
        completion_text = text(item.get("completion"))
        return cls(
            state=text(item.get("state")),  # type: ignore[arg-type]
            job=Job.from_dict(json.loads(job_text)) if job_text else None,
            completion=_completion_from(completion_text) if completion_text else None,
            owner=text(item.get("owner")),
            expires=num(item.get("expires")),
            claim=text(item.get("claim")),
        )


@dataclass(slots=True)
class _Op:
    """The conditional write the plan makes to one job item.

    ``insert``: the jobs-map entry is created with this state (condition: the item is absent or expired —
    a Put of the whole item — or, for a live item holding only a completion record, has no state);
    ``update_state``: the state changes from ``from_state`` (condition: that state, not expired), with
    ``job`` as the new document if given; ``completion``: the completion record is set (condition: none
    yet, this very token, or expired). ``pending``/``parked``: the counter deltas the write causes."""

    key: str
    rank: int = 1
    insert: JobState | None = None
    insert_into_live: bool = False
    claimed_by: str | None = None
    update_state: JobState | None = None
    from_state: JobState | None = None
    job: Job | None = None
    completion: Completion | None = None
    drop_lease: str | None = None
    pending: int = 0
    parked: int = 0

    def split(self) -> list[_Op]:
        """A completion plus a state change as two writes (for plans too big for one transaction: the
        completion record must be stored before anything else)."""
        if self.completion is None or self.update_state is None or self.insert is not None:
            return [self]
        return [_Op(self.key, rank=0, completion=self.completion),
                _Op(self.key, rank=2, update_state=self.update_state, from_state=self.from_state, job=self.job,
                    drop_lease=self.drop_lease, pending=self.pending, parked=self.parked)]

    def request(self, table: str, run_id: str, now: float, ttl: int | None) -> dict[str, Any]:
        what = f"job {self.key!r} of run {run_id!r}"
        key = {"runId": S(run_id), "sk": S(_job_sk(self.key))}
        names: dict[str, str] = {"#ttl": "ttl"}
        values: dict[str, Any] = {":now": N(now)}
        if self.insert is not None and not self.insert_into_live:
            item: dict[str, Any] = {**key, "state": S(self.insert)}
            if self.job is not None:
                item["job"] = S(dumps(self.job.to_dict(), what))
            if self.completion is not None:
                item["completion"] = S(_completion_text(self.completion, what))
                item["token"] = S(self.completion.token)
            if ttl is not None:
                item["ttl"] = N(ttl)
            check_item_size(item, what)
            names["#r"] = "runId"
            return {"Put": {"TableName": table, "Item": item,
                            "ConditionExpression": "attribute_not_exists(#r) OR #ttl < :now",
                            "ExpressionAttributeNames": names, "ExpressionAttributeValues": values,
                            "ReturnValuesOnConditionCheckFailure": "ALL_OLD"}}
        sets: list[str] = []
        conditions: list[str] = []
        payload: dict[str, Any] = {}
        alive = "(attribute_not_exists(#ttl) OR #ttl >= :now)"
        if self.completion is not None:
            names.update({"#c": "completion", "#tok": "token"})
            values[":c"] = payload["completion"] = S(_completion_text(self.completion, what))
            values[":tok"] = S(self.completion.token)
            sets += ["#c = :c", "#tok = :tok"]
            conditions.append("(attribute_not_exists(#tok) OR #tok = :tok OR #ttl < :now)")
        state = self.insert if self.insert is not None else self.update_state
        if state is not None:
            names["#state"] = "state"
            values[":state"] = S(state)
            sets.append("#state = :state")
            if self.insert is not None and self.claimed_by is not None:
                names["#claim"] = "claim"
                values[":claim"] = S(self.claimed_by)
                conditions.append("attribute_not_exists(#state) AND #claim = :claim")
            elif self.insert is not None:
                conditions.append(f"attribute_not_exists(#state) AND {alive}")
            else:
                values[":from"] = S(self.from_state or "")
                conditions.append(f"#state = :from AND {alive}")
        if self.job is not None:
            names["#job"] = "job"
            values[":job"] = payload["job"] = S(dumps(self.job.to_dict(), what))
            sets.append("#job = :job")
        if ttl is not None:
            values[":ttl"] = N(ttl)
            sets.append("#ttl = :ttl")
        expression = "SET " + ", ".join(sets)
        if self.claimed_by is not None:
            expression += " REMOVE #claim"
        if self.drop_lease is not None:  # the job leaves its worker's hands: the lease goes with it
            names.update({"#owner": "owner", "#exp": "expires"})
            values[":owner"] = S(self.drop_lease)
            conditions.append("#owner = :owner")
            expression += " REMOVE #owner, #exp"
        check_item_size({**key, **payload}, what)
        return {"Update": prune({"TableName": table, "Key": key, "UpdateExpression": expression,
                                 "ConditionExpression": " AND ".join(conditions),
                                 "ExpressionAttributeNames": names, "ExpressionAttributeValues": values,
                                 "ReturnValuesOnConditionCheckFailure": "ALL_OLD"})}

    def after(self, before: _Item | None) -> _Item:
        """The item as this write leaves it."""
        fresh = self.insert is not None and not self.insert_into_live
        state = self.insert if self.insert is not None else (self.update_state or (before.state if before else None))
        job = self.job if (fresh or self.job is not None) else (before.job if before else None)
        completion = self.completion or (None if fresh or before is None else before.completion)
        owner = None if fresh or self.drop_lease or before is None else before.owner
        claim = None if self.insert is not None or before is None else before.claim
        return _Item(state, job, completion, owner, before.expires if owner and before else 0.0, claim)


class _NeedRead(Exception):
    def __init__(self, keys: Iterable[str]) -> None:
        super().__init__("need to read job items")
        self.keys = set(keys)


class _Plan:
    """``CoordinationTables`` over what was read, recording conditional writes instead of applying them.

    Unknown items are assumed absent where the rules insert (the write's condition checks it), the own
    job is assumed pending where the rules finish it (the write's condition checks it) and its completion
    absent where the rules record it (the write's condition checks it); any other unknown read asks for a
    consistent read first (``_NeedRead``)."""

    def __init__(self, known: Mapping[str, _Item | None], members: Mapping[str, Mapping[str, tuple[bool, Any]]],
                 newly: set[tuple[str, str]], own_key: str | None, lease_owner: str | None = None,
                 claimer: str | None = None, ours: set[str] | None = None) -> None:
        self.known = known
        self.ours = ours or set()  # keys this commit already inserted (an earlier part of a split plan)
        self.claimer = claimer  # who may insert targets that several predecessors race for
        self.own_key = own_key
        self.lease_owner = lease_owner  # Transition.owner: its lease goes with the write that finishes the job
        self.ops: dict[str, _Op] = {}
        self.local: dict[str, _Item | None] = {}
        # a join's members as the rules would see them applying this transition's arrivals in order: the
        # ones this commit wrote appear only once the rules record them
        self.stored = members
        self.view: dict[str, dict[str, tuple[bool, Any]]] = {
            target: {m: v for m, v in found.items() if (target, m) not in newly} for target, found in members.items()
        }
        self._assumed: dict[str, JobState] = {}
        self._completions: dict[str, Completion] = {}

    def _item(self, key: str) -> _Item | None:
        if key in self.local:
            return self.local[key]
        if key in self.known:
            return self.known[key]
        raise _NeedRead([key])

    # -- CoordinationTables --------------------------------------------------------------------------
    def job_state(self, run_id: str, key: str) -> JobState | None:
        if key not in self.local and key not in self.known and key == self.own_key:
            self._assumed[key] = "pending"  # the finishing write's condition checks it
            return "pending"
        item = self._item(key)
        return None if item is None else item.state

    def insert_job(self, run_id: str, key: str, state: JobState, job: Job | None) -> bool:
        if key in self.ours and key not in self.local:
            self.local[key] = self.known.get(key)
            return True  # this commit inserted it already, in an earlier transaction
        current = self.local.get(key, self.known.get(key))
        if current is not None and (current.state is not None or current.claim not in (None, self.claimer)):
            return False  # inserted, or another predecessor claimed it and inserts it
        delta = _COUNTED.get(state, (0, 0))
        op = self.ops.get(key)
        if op is None:
            op = self.ops[key] = _Op(key, rank=1)
        op.insert, op.job = state, job
        op.insert_into_live = current is not None  # a live item without state (a completion, a lease, a claim)
        op.claimed_by = current.claim if current is not None and current.claim == self.claimer else None
        op.pending += delta[0]
        op.parked += delta[1]
        self.local[key] = _Item(state, job, current.completion if current else None)
        return True

    def set_job_state(self, run_id: str, key: str, state: JobState) -> None:
        old = self.job_state(run_id, key)
        item = self.local.get(key, self.known.get(key))
        op = self.ops.get(key)
        if op is None:
            op = self.ops[key] = _Op(key, rank=2)
        if op.insert is not None:
            op.insert = state
        else:
            if op.update_state is None:
                op.from_state = old
            op.update_state = state
            op.rank = 2
        if key == self.own_key and self.lease_owner and old == "pending" and op.insert is None and (
                item is None or item.owner in (None, self.lease_owner)):
            # drop the lease with the state change, unless the item shows another owner took it over
            op.drop_lease = self.lease_owner if item is None or item.owner == self.lease_owner else None
        before, after = _COUNTED.get(old or "", (0, 0)), _COUNTED.get(state, (0, 0))
        op.pending += after[0] - before[0]
        op.parked += after[1] - before[1]
        self.local[key] = _Item(state, item.job if item else None, item.completion if item else None,
                                None if op.drop_lease else (item.owner if item else None))

    def job(self, run_id: str, key: str) -> Job | None:
        item = self._item(key)
        return None if item is None else item.job

    def completion(self, run_id: str, key: str) -> Completion | None:
        if key in self._completions:
            return self._completions[key]
        if key not in self.local and key not in self.known:
            return None  # assumed absent: the write's condition (absent, or this token) checks it
        item = self._item(key)
        return None if item is None else item.completion

    def put_completion(self, run_id: str, key: str, completion: Completion) -> None:
        op = self.ops.get(key)
        if op is None:
            op = self.ops[key] = _Op(key, rank=0)
        op.completion = completion
        op.rank = 0 if op.update_state is None else op.rank
        if key in self.local or key in self.known:
            item = self.local.get(key, self.known.get(key))
            self.local[key] = _Item(item.state if item else None, item.job if item else None, completion)
        self._completions[key] = completion

    def add_arrival(self, run_id: str, target: str, member: str, arrived: bool, contribution: Any) -> tuple[int, int]:
        stored = self.stored.get(target, {})
        members = self.view.setdefault(target, {})
        members.setdefault(member, stored.get(member, (arrived, contribution)))
        return len(members), sum(1 for was_arrived, _ in members.values() if was_arrived)

    def arrivals(self, run_id: str, target: str) -> dict[str, tuple[bool, Any]]:
        return dict(self.view.get(target, {}))

    def counts(self, run_id: str) -> tuple[int, int]:
        return 0, 0  # read after the writes applied

    def touch(self, run_id: str) -> None:
        return None  # every write batch refreshes the run's activity

    def apply_context(self, run_id: str, completion: Completion) -> None:
        raise NotImplementedError("the DynamoDB coordination store does not hold contexts")


# ============================================================================================== completions
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
