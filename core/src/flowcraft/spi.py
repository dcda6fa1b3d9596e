"""The component interfaces a backend implements: queue, context store, status store, coordination store.

All methods are async. The engine (``flowcraft.engine``) is the only caller; it holds the protocol, so a
backend adapts storage operations and never re-implements joins, routing or completion.

Per run, the coordination store keeps:

* a **jobs map** ``job key -> (state, job)`` with state ``pending`` (scheduled, not finished), ``done``,
  ``skipped`` (dead path) or ``parked`` (waiting for a resume). Inserting a key is first-writer-wins, so
  firing a successor is exactly-once, and a pending entry is what the reconciler re-enqueues;
* **completion records** ``job key -> Completion``, first-writer-wins;
* **join arrivals** ``target job key -> {predecessor node id -> Arrival}`` (set membership, never a counter);
* **leases** ``job key -> (owner, expiry)`` and the run's last activity time.

``commit`` applies one job's whole transition. A backend whose pieces share one store does it atomically
(one Lua script, one SQL transaction); otherwise it must be *idempotent*, because after a crash the engine
replays the same transition (``recovery=True``) and expects the same outcome.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field, fields, replace
from typing import Any, ClassVar, Literal, Protocol, Self, TypeVar

from flowcraft.errors import FlowcraftError, PluginError, UnsupportedError

# what a component declares its options with (``Component.Options``), re-exported for backend authors
from flowcraft.options import NoOptions as NoOptions
from flowcraft.options import QueueOptions as QueueOptions
from flowcraft.options import option as option
from flowcraft.options import parse_options as parse_options

SPI_VERSION = 2
"""The version of this interface. It is bumped when a change would break a backend written for the previous
one: an abstract method added, a signature or a meaning changed, a field removed (additions with defaults
do not bump it). A plugin module may declare ``SPI_VERSION`` (the version it was written for); the plugin
registry leaves out a plugin that declares another version, with a message saying which."""

_log = logging.getLogger("flowcraft.queue")


def _one_line(exc: BaseException) -> str:
    """An error for a log line: one line, secrets (URLs' passwords, keys) masked."""
    from flowcraft.config import redact_text  # config imports this module

    return redact_text(" ".join(str(exc).split()) or type(exc).__name__)


RunStatus = Literal["running", "awaiting", "completed", "failed", "cancelled"]
FINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "cancelled"})
ACTIVE_STATUSES: frozenset[str] = frozenset({"running", "awaiting"})
JobState = Literal["pending", "done", "skipped", "parked"]


SlotSetter = Callable[[Any, Any], None]


_new = object.__new__  # what a record's ``_of`` makes the instance with


def slot_setters(cls: type, names: str) -> tuple[SlotSetter, ...]:
    """The ``__set__`` of each of ``names`` (space-separated slots of a frozen, slotted dataclass), in order: what
    the hand-written ``__init__`` of the engine's hottest records sets their fields with. Setting a slot through
    its descriptor costs about half of the ``object.__setattr__`` call the generated ``__init__`` makes per field
    (the frozen class's way round its own ``__setattr__``): a Job is built in ~1.2 us instead of ~1.9, and the
    engine builds several such records per node. ``flowcraft`` core's tests check that each hand-written
    ``__init__`` has the signature and sets the values the generated one would."""
    return tuple(cls.__dict__[name].__set__ for name in names.split())


def job_key(node_id: str, visit: int = 0, item: int | None = None) -> str:
    """Key of a job within its run: visit first so any node id (':' '/' spaces unicode) stays unambiguous."""
    return f"{visit}:{node_id}" if item is None else f"{visit}:{item}:{node_id}"


@dataclass(frozen=True, slots=True, init=False)
class Job:
    """One unit of queued work: run a node (or one item of a map node) at a visit.

    ``run_id``, ``blueprint_id`` and ``node_id`` may be passed positionally; every other field is keyword-only.
    """

    run_id: str
    blueprint_id: str
    node_id: str
    _: KW_ONLY
    visit: int = 0
    attempt: int = 1
    item: int | None = None
    version: str | None = None
    input: Any = None
    has_input: bool = False
    due_at: float | None = None
    payload: Mapping[str, Any] | None = None
    bounces: int = 0
    #: ``job_key(node_id, visit, item)``, computed once with the job (the engine and the stores ask for it several
    #: times per job); not a constructor argument, nor compared
    key: str = field(init=False, repr=False, compare=False)

    def __init__(self, run_id: str, blueprint_id: str, node_id: str, *, visit: int = 0, attempt: int = 1,
                 item: int | None = None, version: str | None = None, input: Any = None, has_input: bool = False,
                 due_at: float | None = None, payload: Mapping[str, Any] | None = None, bounces: int = 0) -> None:
        _fill_job(self, run_id, blueprint_id, node_id, visit, attempt, item, version, input, has_input, due_at, payload,
                  bounces)

    @staticmethod
    def _of(run_id: str, blueprint_id: str, node_id: str, visit: int, attempt: int, item: int | None,
            version: str | None, input: Any, has_input: bool, due_at: float | None, payload: Mapping[str, Any] | None,
            bounces: int) -> Job:
        """``Job(...)`` with every argument positional, in field order: what routing builds each fired job with (a
        class called with keywords costs a dict of them)."""
        job: Job = _new(Job)
        _fill_job(job, run_id, blueprint_id, node_id, visit, attempt, item, version, input, has_input, due_at, payload,
                  bounces)
        return job

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"run_id": self.run_id, "blueprint_id": self.blueprint_id, "node_id": self.node_id}
        if self.visit:
            data["visit"] = self.visit
        if self.attempt != 1:
            data["attempt"] = self.attempt
        if self.item is not None:
            data["item"] = self.item
        if self.version is not None:
            data["version"] = self.version
        if self.has_input:
            data["input"] = self.input
        if self.due_at is not None:
            data["due_at"] = self.due_at
        if self.payload is not None:
            data["payload"] = dict(self.payload)
        if self.bounces:
            data["bounces"] = self.bounces
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Job:
        return cls(
            run_id=data["run_id"],
            blueprint_id=data["blueprint_id"],
            node_id=data["node_id"],
            visit=int(data.get("visit", 0)),
            attempt=int(data.get("attempt", 1)),
            item=data.get("item"),
            version=data.get("version"),
            input=data.get("input"),
            has_input="input" in data,
            due_at=data.get("due_at"),
            payload=data.get("payload"),
            bounces=int(data.get("bounces", 0)),
        )

    def evolve(self, **changes: Any) -> Job:
        """A copy with ``changes`` (``dataclasses.replace`` without its per-call inspection of the fields: a join's
        fired job and every retry are made so)."""
        values = {name: getattr(self, name) for name in _JOB_FIELDS}
        values.update(changes)
        return Job(**values)


#: the fields ``Job`` takes (all but ``key``), for ``Job.evolve``
_JOB_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Job) if f.init)
_JOB_SLOTS = slot_setters(Job, "run_id blueprint_id node_id visit attempt item version input has_input due_at payload "
                               "bounces key")


def _fill_job(job: Job, run_id: str, blueprint_id: str, node_id: str, visit: int, attempt: int, item: int | None,
              version: str | None, input: Any, has_input: bool, due_at: float | None,
              payload: Mapping[str, Any] | None, bounces: int) -> None:
    (set_run_id, set_blueprint_id, set_node_id, set_visit, set_attempt, set_item, set_version, set_input,
     set_has_input, set_due_at, set_payload, set_bounces, set_key) = _JOB_SLOTS  # (see ``slot_setters``)
    set_run_id(job, run_id)
    set_blueprint_id(job, blueprint_id)
    set_node_id(job, node_id)
    set_visit(job, visit)
    set_attempt(job, attempt)
    set_item(job, item)
    set_version(job, version)
    set_input(job, input)
    set_has_input(job, has_input)
    set_due_at(job, due_at)
    set_payload(job, payload)
    set_bounces(job, bounces)
    set_key(job, job_key(node_id, visit, item))


@dataclass(slots=True)
class Delivery:
    """A job as received from a queue; ``receipt`` is the backend's handle, ``deliveries`` counts from 1.

    ``record`` and ``begin`` are filled only by ``Queue.receive`` of a queue that shares one store with the
    status and coordination stores (``Capabilities.prefetches_status``): the run record and
    ``CoordinationStore.begin`` for the receiving owner, read in the same round trip as the dequeue.
    ``begin`` is set when the lease was taken with the dequeue (``prefetched``), never for a settled run's job (the
    engine only acks it, and a lease held meanwhile would refuse a retry of the run: a ``PrefetchingQueue`` hands
    back one it took beside the record read); ``record`` is set with it unless the
    store that took the lease cannot read run records (a job handed over by a commit whose coordination store does
    not hold the status: ``CoordinationStore.continues``). What is not set (e.g. no such run) the engine reads.
    The engine never changes ``record``: a store may give deliveries of one run one shared record object while
    the stored record is unchanged (the memory, sqlite and rq presets do).

    ``job`` and ``receipt`` may be passed positionally; every other field is keyword-only.
    """

    job: Job
    receipt: Any
    _: KW_ONLY
    deliveries: int = 1
    record: RunRecord | None = None
    begin: Begin | None = None

    @property
    def prefetched(self) -> bool:
        """Whether ``receive`` read the run record and took the lease with the dequeue (``begin`` is set)."""
        return self.begin is not None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message the queue could not deliver as a job (``job`` is None when it did not parse), and why.

    ``id``: the queue's handle on the dead letter, what ``Queue.replay_dead_letters`` and
    ``Queue.delete_dead_letters`` take (a row id, a message id, a topic offset); "" when the queue cannot
    address its dead letters one by one. ``dead_at``: when it was dead-lettered (epoch seconds), if known.

    ``job`` may be passed positionally; every other field is keyword-only.
    """

    job: Job | None
    _: KW_ONLY
    reason: str
    raw: Any = None
    id: str = ""
    dead_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``raw`` as it is when it is JSON, else its repr)."""
        raw = self.raw if self.raw is None or isinstance(self.raw, str | int | float | bool | dict | list) \
            else repr(self.raw)
        return {"id": self.id, "job": None if self.job is None else self.job.to_dict(), "reason": self.reason,
                "dead_at": self.dead_at, "raw": raw}


@dataclass(frozen=True, slots=True, init=False)
class Completion:
    """A node's completion record for one visit: its output, its action, the context writes it made.

    ``node_id`` may be passed positionally; every other field is keyword-only.
    """

    node_id: str
    _: KW_ONLY
    output: Any = None
    action: str | None = None
    token: str = ""
    context_updates: Mapping[str, Any] = field(default_factory=dict)
    context_deletes: tuple[str, ...] = ()
    fallback: str | None = None
    due_at: float | None = None

    def __init__(self, node_id: str, *, output: Any = None, action: str | None = None, token: str = "",
                 context_updates: Mapping[str, Any] | None = None, context_deletes: tuple[str, ...] = (),
                 fallback: str | None = None, due_at: float | None = None) -> None:
        _fill_completion(self, node_id, output, action, token, {} if context_updates is None else context_updates,
                         context_deletes, fallback, due_at)

    @staticmethod
    def _of(node_id: str, output: Any, action: str | None, token: str, context_updates: Mapping[str, Any],
            context_deletes: tuple[str, ...], fallback: str | None, due_at: float | None) -> Completion:
        """``Completion(...)`` with every argument positional, in field order (see ``Job._of``)."""
        completion: Completion = _new(Completion)
        _fill_completion(completion, node_id, output, action, token, context_updates, context_deletes, fallback, due_at)
        return completion

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"node_id": self.node_id, "output": self.output, "token": self.token}
        if self.action is not None:
            data["action"] = self.action
        if self.context_updates:
            data["context_updates"] = dict(self.context_updates)
        if self.context_deletes:
            data["context_deletes"] = list(self.context_deletes)
        if self.fallback is not None:
            data["fallback"] = self.fallback
        if self.due_at is not None:
            data["due_at"] = self.due_at
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Completion:
        return cls(
            node_id=data["node_id"],
            output=data.get("output"),
            action=data.get("action"),
            token=data.get("token", ""),
            context_updates=data.get("context_updates") or {},
            context_deletes=tuple(data.get("context_deletes") or ()),
            fallback=data.get("fallback"),
            due_at=data.get("due_at"),
        )


@dataclass(frozen=True, slots=True, init=False)
class Arrival:
    """A predecessor reaching a target: ``arrived`` (edge taken, carrying ``contribution``) or skipped.

    ``expected`` are the predecessor node ids the target waits for. With one expected member the store
    decides at once; otherwise it records the member and decides by ``strategy``:

    Members are always among ``expected`` (the engine guarantees it), so a store may count members
    instead of comparing sets.

    * ``all``: when every expected member is recorded — fire if at least one arrived, else skip;
    * ``any``: fire on the first arrived member; skip when all are recorded and none arrived.

    Firing inserts ``job`` as pending (first-writer-wins). For several expected members the fired job's
    input is ``{member: contribution}`` over the arrived members recorded at that moment.

    ``job`` and ``member`` may be passed positionally; every other field is keyword-only.
    """

    job: Job
    member: str
    _: KW_ONLY
    arrived: bool
    contribution: Any
    expected: tuple[str, ...]
    strategy: Literal["all", "any"] = "all"

    def __init__(self, job: Job, member: str, *, arrived: bool, contribution: Any, expected: tuple[str, ...],
                 strategy: Literal["all", "any"] = "all") -> None:
        _fill_arrival(self, job, member, arrived, contribution, expected, strategy)

    @staticmethod
    def _of(job: Job, member: str, arrived: bool, contribution: Any, expected: tuple[str, ...],
            strategy: Literal["all", "any"]) -> Arrival:
        """``Arrival(...)`` with every argument positional, in field order (see ``Job._of``)."""
        arrival: Arrival = _new(Arrival)
        _fill_arrival(arrival, job, member, arrived, contribution, expected, strategy)
        return arrival

    @property
    def target_key(self) -> str:
        return self.job.key


@dataclass(frozen=True, slots=True, kw_only=True)
class RunEnd:
    """The run's end, given with a finishing commit to a store that declares ``ends`` (``Transition.end``): if the
    commit leaves nothing pending or parked and the run's record is in an active status (``ACTIVE_STATUSES``),
    the store moves it to ``completed`` in the same atomic step, as ``StatusStore.transition_with_context(run_id,
    ACTIVE_STATUSES, "completed", fields, context={"_result": result})`` would (``Committed.ended``).

    ``result``: the run's result, written as the context key ``_result``. ``fields``: the record fields set with
    the status (the engine gives ``{"awaiting": []}``; only ``CHANGEABLE_RECORD_FIELDS``). All fields are
    keyword-only."""

    result: Any
    fields: Mapping[str, Any] = field(default_factory=dict)

    #: the statuses a run may end from, and the status it ends in
    FROM_STATUSES: ClassVar[tuple[str, ...]] = tuple(sorted(ACTIVE_STATUSES))
    TO_STATUS: ClassVar[RunStatus] = "completed"
    #: the context key the result is written to
    RESULT_KEY: ClassVar[str] = "_result"


@dataclass(frozen=True, slots=True, init=False)
class Transition:
    """Everything one handled job changes, applied by ``CoordinationStore.commit``.

    ``owner``: the worker holding the job's lease; a store that declares ``releases_lease`` drops that lease
    in a finishing commit, which saves the engine a ``release`` round trip.

    ``receipt``: the ``Delivery.receipt`` of the job being committed, given only to a store that declares
    ``acks`` (with ``finish``): it acks that delivery in the same atomic step when jobs remain pending after it,
    or when the commit ends the run (``end``, a store declaring ``ends``).
    ``continue_up_to``: how many of the jobs this commit fires the committing worker can take at once, given
    only to a store that declares ``continues`` (never in recovery), with ``lease_seconds``, the lease the
    owner takes on each: see ``Committed.continued``.
    ``end``: the run's end (``RunEnd``), given only to a store that declares ``ends``, with ``finish``, when the
    engine knows the run's result before the commit (the job is the graph's only terminal node): a commit that
    leaves nothing pending or parked then ends the run in the same atomic step (``Committed.ended``).

    ``run_id`` and ``job_key`` may be passed positionally; every other field is keyword-only.
    """

    run_id: str
    job_key: str
    _: KW_ONLY
    completion: Completion | None = None
    arrivals: tuple[Arrival, ...] = ()
    finish: bool = False
    recovery: bool = False
    owner: str | None = None
    receipt: Any = None
    continue_up_to: int = 0
    lease_seconds: float = 0.0
    end: RunEnd | None = None

    def __init__(self, run_id: str, job_key: str, *, completion: Completion | None = None,
                 arrivals: tuple[Arrival, ...] = (), finish: bool = False, recovery: bool = False,
                 owner: str | None = None, receipt: Any = None, continue_up_to: int = 0,
                 lease_seconds: float = 0.0, end: RunEnd | None = None) -> None:
        _fill_transition(self, run_id, job_key, completion, arrivals, finish, recovery, owner, receipt, continue_up_to,
                         lease_seconds, end)

    @staticmethod
    def _of(run_id: str, job_key: str, completion: Completion | None, arrivals: tuple[Arrival, ...], finish: bool,
            recovery: bool, owner: str | None, receipt: Any, continue_up_to: int, lease_seconds: float,
            end: RunEnd | None = None) -> Transition:
        """``Transition(...)`` with every argument positional, in field order (see ``Job._of``)."""
        transition: Transition = _new(Transition)
        _fill_transition(transition, run_id, job_key, completion, arrivals, finish, recovery, owner, receipt,
                         continue_up_to, lease_seconds, end)
        return transition


@dataclass(frozen=True, slots=True, kw_only=True, init=False)
class Committed:
    """What a commit decided.

    ``conflict``: another attempt's completion record won; nothing was applied, route with that one.
    ``fired``: jobs to enqueue (newly inserted; in recovery also those already pending).
    ``skipped``: target job keys newly decided as skipped (in recovery also those already skipped); the
    engine propagates the dead path from them. ``pending``/``parked``: counts after the commit.
    ``continued``: deliveries of fired jobs (also in ``fired``) that a store declaring ``continues`` handed
    straight to ``Transition.owner`` instead of the queue's ready list, at most ``Transition.continue_up_to``.
    ``ended``: the run's record after the end this commit applied (``Transition.end``, a store declaring
    ``ends``); None when it did not end the run: jobs left pending or parked, no ``end`` given, a conflict, the
    record not in an active status (cancelled, failed, completed...), which also makes a replay of a commit that
    ended the run already end it no second time (exactly-once).
    What a store does besides (puts ``fired`` on the queue, drops the lease, acks) is declared once, by the
    store (``Capabilities``), never per result. All fields are keyword-only.
    """

    conflict: Completion | None = None
    fired: tuple[Job, ...] = ()
    continued: tuple[Delivery, ...] = ()
    skipped: tuple[str, ...] = ()
    pending: int = 1
    parked: int = 0
    ended: RunRecord | None = None

    def __init__(self, *, conflict: Completion | None = None, fired: tuple[Job, ...] = (),
                 continued: tuple[Delivery, ...] = (), skipped: tuple[str, ...] = (), pending: int = 1,
                 parked: int = 0, ended: RunRecord | None = None) -> None:
        _fill_committed(self, conflict, fired, continued, skipped, pending, parked, ended)

    @staticmethod
    def _of(conflict: Completion | None, fired: tuple[Job, ...], continued: tuple[Delivery, ...],
            skipped: tuple[str, ...], pending: int, parked: int, ended: RunRecord | None = None) -> Committed:
        """``Committed(...)`` with every argument positional, in field order (see ``Job._of``)."""
        committed: Committed = _new(Committed)
        _fill_committed(committed, conflict, fired, continued, skipped, pending, parked, ended)
        return committed

    def with_end(self, record: RunRecord) -> Committed:
        """This commit as one that ended the run, leaving it with ``record`` (``ends_the_run``)."""
        return Committed._of(None, self.fired, self.continued, self.skipped, 0, 0, record)


@dataclass(frozen=True, slots=True, kw_only=True)
class Begin:
    """State of a job when a worker picks it up. All fields are keyword-only."""

    lease: bool
    state: JobState | None
    completion: Completion | None


_COMPLETION_SLOTS = slot_setters(Completion, "node_id output action token context_updates context_deletes fallback "
                                             "due_at")
_ARRIVAL_SLOTS = slot_setters(Arrival, "job member arrived contribution expected strategy")
_TRANSITION_SLOTS = slot_setters(Transition, "run_id job_key completion arrivals finish recovery owner receipt "
                                             "continue_up_to lease_seconds end")


def _fill_completion(completion: Completion, node_id: str, output: Any, action: str | None, token: str,
                     context_updates: Mapping[str, Any], context_deletes: tuple[str, ...], fallback: str | None,
                     due_at: float | None) -> None:
    (set_node_id, set_output, set_action, set_token, set_context_updates, set_context_deletes, set_fallback,
     set_due_at) = _COMPLETION_SLOTS  # (see ``slot_setters``)
    set_node_id(completion, node_id)
    set_output(completion, output)
    set_action(completion, action)
    set_token(completion, token)
    set_context_updates(completion, context_updates)
    set_context_deletes(completion, context_deletes)
    set_fallback(completion, fallback)
    set_due_at(completion, due_at)


def _fill_arrival(arrival: Arrival, job: Job, member: str, arrived: bool, contribution: Any,
                  expected: tuple[str, ...], strategy: Literal["all", "any"]) -> None:
    set_job, set_member, set_arrived, set_contribution, set_expected, set_strategy = _ARRIVAL_SLOTS
    set_job(arrival, job)
    set_member(arrival, member)
    set_arrived(arrival, arrived)
    set_contribution(arrival, contribution)
    set_expected(arrival, expected)
    set_strategy(arrival, strategy)


def _fill_transition(transition: Transition, run_id: str, job_key: str, completion: Completion | None,
                     arrivals: tuple[Arrival, ...], finish: bool, recovery: bool, owner: str | None, receipt: Any,
                     continue_up_to: int, lease_seconds: float, end: RunEnd | None) -> None:
    (set_run_id, set_job_key, set_completion, set_arrivals, set_finish, set_recovery, set_owner, set_receipt,
     set_continue_up_to, set_lease_seconds, set_end) = _TRANSITION_SLOTS
    set_run_id(transition, run_id)
    set_job_key(transition, job_key)
    set_completion(transition, completion)
    set_arrivals(transition, arrivals)
    set_finish(transition, finish)
    set_recovery(transition, recovery)
    set_owner(transition, owner)
    set_receipt(transition, receipt)
    set_continue_up_to(transition, continue_up_to)
    set_lease_seconds(transition, lease_seconds)
    set_end(transition, end)


_COMMITTED_SLOTS = slot_setters(Committed, "conflict fired continued skipped pending parked ended")


def _fill_committed(committed: Committed, conflict: Completion | None, fired: tuple[Job, ...],
                    continued: tuple[Delivery, ...], skipped: tuple[str, ...], pending: int, parked: int,
                    ended: RunRecord | None) -> None:
    set_conflict, set_fired, set_continued, set_skipped, set_pending, set_parked, set_ended = _COMMITTED_SLOTS
    set_conflict(committed, conflict)
    set_fired(committed, fired)
    set_continued(committed, continued)
    set_skipped(committed, skipped)
    set_pending(committed, pending)
    set_parked(committed, parked)
    set_ended(committed, ended)


@dataclass(frozen=True, slots=True)
class PendingJob:
    """A job the coordination store holds as pending, and whether a worker holds its lease.

    ``job`` may be passed positionally; every other field is keyword-only.
    """

    job: Job
    _: KW_ONLY
    leased: bool


@dataclass(slots=True)
class RunRecord:
    """The run's status record (status store).

    ``run_id`` and ``blueprint_id`` may be passed positionally; every other field is keyword-only.
    """

    run_id: str
    blueprint_id: str
    _: KW_ONLY
    status: RunStatus = "running"
    version: str | None = None
    blueprint_hash: str | None = None
    input: Any = None
    created_at: float = 0.0
    updated_at: float = 0.0
    errors: list[dict[str, Any]] = field(default_factory=list)
    awaiting: list[dict[str, Any]] = field(default_factory=list)
    parent: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "blueprint_id": self.blueprint_id,
            "status": self.status,
            "version": self.version,
            "blueprint_hash": self.blueprint_hash,
            "input": self.input,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "errors": list(self.errors),
            "awaiting": list(self.awaiting),
            "parent": self.parent,
        }

    def copy(self) -> RunRecord:
        return replace(self, errors=list(self.errors), awaiting=list(self.awaiting),
                       parent=dict(self.parent) if self.parent is not None else None)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        return cls(
            run_id=data["run_id"],
            blueprint_id=data["blueprint_id"],
            status=data.get("status", "running"),
            version=data.get("version"),
            blueprint_hash=data.get("blueprint_hash"),
            input=data.get("input"),
            created_at=float(data.get("created_at", 0.0)),
            updated_at=float(data.get("updated_at", 0.0)),
            errors=list(data.get("errors") or []),
            awaiting=list(data.get("awaiting") or []),
            parent=data.get("parent"),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerInfo:
    """A live worker as it announces itself (``flowcraft.presence``): who it is, where, what it loads and how
    busy it is. ``heartbeat_at``/``interval``: when it last said so and how often it does; it counts as dead
    once ``expires_at`` has passed. ``blueprints``: ``{"id", "version", "hash"}`` of each blueprint it loads.
    ``protocol``: its coordination store's ``CoordinationStore.protocol``; None for an entry written by a worker
    from before protocol versions (unknown: such a worker cannot check, so a versioned worker waits for it).
    All fields are keyword-only."""

    worker_id: str
    host: str = ""
    pid: int = 0
    backend: str = ""
    concurrency: int = 0
    in_flight: int = 0
    handled: int = 0
    failed: int = 0
    state: str = "ready"
    started_at: float = 0.0
    heartbeat_at: float = 0.0
    interval: float = 10.0
    blueprints: tuple[Mapping[str, Any], ...] = ()
    protocol: str | None = None

    #: how many heartbeat intervals may pass without a heartbeat before a worker counts as dead
    EXPIRY_INTERVALS: ClassVar[float] = 3.0

    @property
    def expires_at(self) -> float:
        return self.heartbeat_at + self.EXPIRY_INTERVALS * self.interval

    def live(self, now: float) -> bool:
        return now < self.expires_at and self.state != "stopped"

    def to_dict(self) -> dict[str, Any]:
        return {"worker_id": self.worker_id, "host": self.host, "pid": self.pid, "backend": self.backend,
                "concurrency": self.concurrency, "in_flight": self.in_flight, "handled": self.handled,
                "failed": self.failed, "state": self.state, "started_at": self.started_at,
                "heartbeat_at": self.heartbeat_at, "interval": self.interval,
                "blueprints": [dict(entry) for entry in self.blueprints], "protocol": self.protocol}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkerInfo:
        return cls(worker_id=str(data["worker_id"]), host=str(data.get("host", "")), pid=int(data.get("pid", 0)),
                   backend=str(data.get("backend", "")), concurrency=int(data.get("concurrency", 0)),
                   in_flight=int(data.get("in_flight", 0)), handled=int(data.get("handled", 0)),
                   failed=int(data.get("failed", 0)), state=str(data.get("state", "ready")),
                   started_at=float(data.get("started_at", 0.0)), heartbeat_at=float(data.get("heartbeat_at", 0.0)),
                   interval=float(data.get("interval", 10.0)),
                   blueprints=tuple(dict(entry) for entry in data.get("blueprints") or ()),
                   protocol=None if data.get("protocol") is None else str(data["protocol"]))

    def evolve(self, **changes: Any) -> WorkerInfo:
        return replace(self, **changes)


#: The record fields ``StatusStore.transition`` may change (``changes``); ``run_id`` never changes and
#: ``updated_at`` is the store's to set.
CHANGEABLE_RECORD_FIELDS: frozenset[str] = frozenset(RunRecord("x", "x").to_dict()) - {"run_id", "updated_at"}

#: How the TypeScript seeds' status documents name the record's fields (a DynamoDB item, a Cosmos item): field ->
#: (attribute name, encoding: "s" plain string, "n" number, "j" JSON text).
SEED_RECORD_ATTRIBUTES: dict[str, tuple[str, str]] = {
    "blueprint_id": ("blueprintId", "s"),
    "version": ("version", "s"),
    "blueprint_hash": ("blueprintHash", "s"),
    "input": ("input", "j"),
    "created_at": ("createdAt", "n"),
    "errors": ("errors", "j"),
    "awaiting": ("awaiting", "j"),
    "parent": ("parent", "j"),
}


def check_record_changes(changes: Mapping[str, Any]) -> None:
    """Raise ValueError naming the fields of ``changes`` that ``StatusStore.transition`` must not change."""
    unknown = set(changes) - CHANGEABLE_RECORD_FIELDS
    if unknown:
        raise ValueError(f"cannot change run record field(s) {sorted(unknown)}")


class Component(ABC):  # noqa: B024  # a marker base: every component carries a registry name
    """Base of every component; ``name`` is what config selects it by."""

    name: ClassVar[str] = ""
    #: The component's options: a frozen dataclass of ``option(default, help)`` fields (``flowcraft.options``),
    #: checked before the backend is built. None: keys are passed through unchecked, for every component.
    Options: ClassVar[type[Any] | None] = None

    @classmethod
    def from_config(cls, options: Mapping[str, Any], shared: dict[str, Any]) -> Self:
        """Build from resolved config options; components of one backend share clients through ``shared``
        (e.g. ``shared.setdefault(f"redis:{url}", ...)``)."""
        return cls()

    async def close(self) -> None:  # noqa: B027  # optional hook
        """Release connections."""

    async def setup(self) -> None:  # noqa: B027  # optional hook
        """Create queues/tables/containers; idempotent."""


class Queue(Component):
    """At-least-once job delivery with leases (visibility timeout), delay and a dead letter.

    A backend must implement the abstract methods; ``receive`` is derived from ``dequeue`` (a queue that
    shares a store with the status and coordination stores overrides it: ``prefetches_status``)."""

    visibility_timeout: float = 30.0

    @property
    def prefetches_status(self) -> bool:
        """True when ``receive`` reads each delivery's run record and takes its lease in the dequeue's round trip
        (``Delivery.record``/``begin``). Decided when the queue is built, never changed afterwards; the engine
        reads it through ``Backend.capabilities``. A subclass overrides it (a property or a class attribute)."""
        return False

    @abstractmethod
    async def enqueue(self, jobs: Sequence[Job], delay: float = 0.0) -> None:
        """Make jobs deliverable, after ``delay`` seconds."""

    @abstractmethod
    async def dequeue(self, max_jobs: int, wait: float) -> list[Delivery]:
        """Receive up to ``max_jobs``, waiting at most ``wait`` seconds for the first one."""

    async def receive(self, max_jobs: int, wait: float, owner: str, lease_seconds: float) -> list[Delivery]:
        """What workers call: ``dequeue``, unless the queue shares a store with the status and coordination
        stores and can also prefetch each job's run record and lease for ``owner`` (see ``Delivery``)."""
        return await self.dequeue(max_jobs, wait)

    @abstractmethod
    async def ack(self, delivery: Delivery) -> None:
        """Remove a handled job for good."""

    @abstractmethod
    async def release(self, delivery: Delivery, delay: float = 0.0) -> None:
        """Give a job back so it is delivered again after ``delay`` seconds."""

    @abstractmethod
    async def extend(self, delivery: Delivery, seconds: float) -> None:
        """Keep a job invisible to other consumers for ``seconds`` more (heartbeat)."""

    @abstractmethod
    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move a job that cannot be processed to the dead letter, keeping ``reason``."""

    @abstractmethod
    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Read (without removing) dead-lettered jobs."""

    async def depth(self) -> int | None:
        """How many jobs are waiting to be delivered (ready or delayed; not those in flight where the server can
        tell them apart), approximate where the server only estimates (SQS, Azure Storage queues, Kafka lag).
        Optional, for the ``flowcraft.queue.depth`` gauge and operators: the default returns None, "this queue
        cannot say"; each backend's README says what its depth counts."""
        return None

    # -- dead letters: one optional primitive, the rest derived ---------------------------------------------
    #: How many dead letters the derived methods read to find those asked for by id.
    DEAD_LETTER_SCAN: ClassVar[int] = 10_000

    async def delete_dead_letters(self, ids: Sequence[str]) -> int:
        """Remove the dead letters with these ids (``DeadLetter.id``) for good; return how many were removed
        (ids no longer there are ignored). Optional: the default raises ``UnsupportedError``
        (``manages_dead_letters`` is then False and the CLI says the queue cannot do it); a queue overrides it
        to make its dead letters replayable and purgeable."""
        raise UnsupportedError(f"the {self.name or type(self).__name__} queue cannot remove dead letters",
                               hint="use the queue server's own tools to inspect and move them")

    @property
    def manages_dead_letters(self) -> bool:
        """Whether this queue removes dead letters (overrides ``delete_dead_letters``), so that
        ``replay_dead_letters`` and ``purge_dead_letters`` work."""
        return type(self).delete_dead_letters is not Queue.delete_dead_letters

    async def replay_dead_letters(self, ids: Sequence[str] | None = None) -> list[DeadLetter]:
        """Put dead-lettered jobs back on the queue (all of them when ``ids`` is None) and remove their dead
        letters; return those replayed. Derived: ``enqueue`` (with a fresh delivery count, the job unchanged)
        first, then ``delete_dead_letters``, so a crash in between replays a job twice at worst, never loses it
        (the engine handles a job's duplicates once). Letters whose job did not parse are left in place."""
        if not self.manages_dead_letters:
            await self.delete_dead_letters([])  # raises UnsupportedError before anything is enqueued
        letters = await self._dead_letters_by_id(ids)
        replayable = [letter for letter in letters if letter.job is not None and letter.id]
        if replayable:
            await self.enqueue([letter.job.evolve(due_at=None, bounces=0) for letter in replayable
                                if letter.job is not None])
            await self.delete_dead_letters([letter.id for letter in replayable])
        return replayable

    async def purge_dead_letters(self, ids: Sequence[str] | None = None) -> int:
        """Remove dead letters without replaying them (all of them when ``ids`` is None); return how many.
        Derived from ``dead_letters`` and ``delete_dead_letters``."""
        if not self.manages_dead_letters:
            await self.delete_dead_letters([])  # raises UnsupportedError
        letters = await self._dead_letters_by_id(ids)
        chosen = [letter.id for letter in letters if letter.id]
        return await self.delete_dead_letters(chosen) if chosen else 0

    async def _dead_letters_by_id(self, ids: Sequence[str] | None) -> list[DeadLetter]:
        letters = await self.dead_letters(self.DEAD_LETTER_SCAN)
        if ids is None:
            return letters
        wanted = {str(i) for i in ids}
        return [letter for letter in letters if letter.id in wanted]

    # -- optional, with a default that does nothing ------------------------------------------------------
    async def register_worker(self, worker: WorkerInfo) -> None:  # optional hook
        """Show a live worker in the queue server's own tooling (rq's worker registry, so ``rq info`` lists it).
        Called when the worker is ready and on every presence heartbeat (``flowcraft.presence``), so an entry
        the server expires stays fresh while the worker lives. Flowcraft's own list of workers is kept in the
        context store whatever this does; the default does nothing."""

    async def unregister_worker(self, worker: WorkerInfo) -> None:  # optional hook
        """Remove what ``register_worker`` showed (a worker stopping); the default does nothing."""



class RecordReader(Protocol):
    """What ``PrefetchingQueue`` needs of a status store: the records of several runs in one request (runs
    without a record left out)."""

    async def get_many(self, run_ids: Sequence[str]) -> Mapping[str, RunRecord]: ...


class PrefetchingQueue(Queue):
    """A queue whose status and coordination stores live in other servers but can be read per batch: once
    ``prefetch_with`` wired them (the preset's factory does, when the backend is built), ``receive`` reads the
    batch's run records in one request while it takes the jobs' leases (concurrent calls, which a pipelining
    coordination store sends together), so a job starts without those two round trips
    (``prefetches_status``). A delivery whose record or lease could not be had comes without them: the engine
    reads both itself, and a lease taken without its record is handed back, as is one taken on a settled run's
    job (which comes with its record only).

    A queue whose coordination store can bring a job's run record with its lease overrides ``_take_lease`` and
    sets ``records_after_leases``: then only the records the leases did not bring are read, after them."""

    _prefetch: tuple[RecordReader, CoordinationStore] | None = None
    #: read the batch's records after its leases, only those the leases did not bring (see ``_take_lease``)
    records_after_leases: ClassVar[bool] = False

    def prefetch_with(self, status: RecordReader, coordination: CoordinationStore) -> None:
        self._prefetch = (status, coordination)

    @property
    def prefetches_status(self) -> bool:
        return self._prefetch is not None

    async def _take_lease(self, job: Job, owner: str, lease_seconds: float) -> tuple[Begin, RunRecord | None]:
        """Take the job's lease for ``owner`` (``CoordinationStore.begin``) and return the job's run record if it
        came with it (None: ``receive`` reads it)."""
        assert self._prefetch is not None
        return await self._prefetch[1].begin(job, owner, lease_seconds), None

    async def receive(self, max_jobs: int, wait: float, owner: str, lease_seconds: float) -> list[Delivery]:
        deliveries = await self.dequeue(max_jobs, wait)
        if self._prefetch is None or not deliveries:
            return deliveries
        status, coordination = self._prefetch

        async def read_records(run_ids: list[str]) -> Mapping[str, RunRecord]:
            try:
                return await status.get_many(run_ids)
            except Exception as exc:  # the engine reads each record itself (and reports what is wrong)
                _log.debug("prefetching run records failed: %s", _one_line(exc))
                return {}

        async def take(job: Job) -> tuple[Begin, RunRecord | None] | None:
            try:
                return await self._take_lease(job, owner, lease_seconds)
            except Exception as exc:  # the engine takes the lease itself
                _log.debug("prefetching a lease failed: %s", _one_line(exc))
                return None

        reading = None if self.records_after_leases else asyncio.ensure_future(
            read_records([d.job.run_id for d in deliveries]))
        try:
            if len(deliveries) == 1:  # one delivery: its lease taken in this task, no second one to gather
                taken = [await take(deliveries[0].job)]
            else:
                taken = list(await asyncio.gather(*(take(d.job) for d in deliveries)))
        finally:
            records = {} if reading is None else await reading
        if reading is None:
            unknown = [d.job.run_id for d, got in zip(deliveries, taken, strict=True) if got and got[1] is None]
            if unknown:
                records = await read_records(unknown)
        out: list[Delivery] = []
        for delivery, got in zip(deliveries, taken, strict=True):
            if got is not None:
                begin, record = got
                record = record or records.get(delivery.job.run_id)
                # a settled run's job comes with its record and no lease (the engine only acks it; a lease held
                # meanwhile would refuse a retry of the run)
                settled = record is not None and record.status not in ACTIVE_STATUSES
                if record is not None:
                    delivery = Delivery(delivery.job, delivery.receipt, deliveries=delivery.deliveries,
                                        record=record, begin=None if settled else begin)
                if begin.lease and (record is None or settled):
                    try:  # no record to go with it (the engine reads both itself) or settled: hand the lease back
                        await coordination.release(delivery.job.run_id, delivery.job.key, owner)
                    except Exception as exc:  # it expires by itself; the engine's own begin takes it again
                        _log.debug("releasing a prefetched lease failed: %s", _one_line(exc))
            out.append(delivery)
        return out


class ContextStore(Component):
    """A run's state: key -> JSON value, stored per key so concurrent writers never lose updates.

    A backend must implement ``get_all`` and ``apply``; ``get_many`` and ``delete_run`` are derived (override
    them to read only the keys asked for, to delete a run's keys in one statement)."""

    @abstractmethod
    async def get_all(self, run_id: str) -> dict[str, Any]:
        """The whole context of a run."""

    @abstractmethod
    async def apply(self, run_id: str, updates: Mapping[str, Any], deletes: Sequence[str] = ()) -> None:
        """Set and delete keys (idempotent)."""

    # -- derived: everything below is written over the methods above --------------------------------------
    async def get_many(self, run_id: str, keys: Sequence[str]) -> dict[str, Any]:
        """Values of the keys that exist."""
        context = await self.get_all(run_id)
        return {key: context[key] for key in keys if key in context}

    async def delete_run(self, run_id: str) -> None:
        """Forget the run's context."""
        keys = list(await self.get_all(run_id))
        if keys:
            await self.apply(run_id, {}, keys)


class StatusStore(Component):
    """Run records with compare-and-set status transitions.

    A backend must implement ``create``, ``get``, ``transition`` and ``list``; ``stalled`` is derived from ``list``
    (override it with a query on an index of (status, updated_at)), ``wait_for_change`` sleeps (a store that can
    be notified overrides it and sets ``notifies``)."""

    #: True when ``wait_for_change`` returns as soon as a record changes (no polling needed).
    notifies: ClassVar[bool] = False

    @abstractmethod
    async def create(self, record: RunRecord) -> bool:
        """Insert the record if no run with that id exists; False if one does."""

    @abstractmethod
    async def get(self, run_id: str) -> RunRecord | None:
        """The record, or None."""

    @abstractmethod
    async def transition(
        self, run_id: str, from_statuses: Sequence[str], to_status: str, changes: Mapping[str, Any]
    ) -> RunRecord | None:
        """Atomically: if status is in ``from_statuses``, set ``to_status`` plus ``changes`` (record fields)
        and ``updated_at``; return the new record. Otherwise None. Exactly one caller wins a transition."""

    @property
    def writes_context(self) -> bool:
        """Whether ``transition_with_context`` writes the context in the transition's atomic step (a store sharing
        its storage with the backend's context store, wired so by its preset). Default False: the engine then
        writes a run's ``_result`` with ``ContextStore.apply`` before the transition publishes the end."""
        return False

    async def transition_with_context(
        self, run_id: str, from_statuses: Sequence[str], to_status: str, changes: Mapping[str, Any], *,
        context: Mapping[str, Any],
    ) -> RunRecord | None:
        """``transition``, and in the same atomic step, only if it wins, the ``context`` writes (as
        ``ContextStore.apply(run_id, context)`` makes them) to the run's context: a run's end (``_result`` and
        the final status) in one round trip, and no client sees the final status without the result. Only for
        a store that declares ``writes_context`` (else ``UnsupportedError``); such a store implements
        ``_transition_writing_context``."""
        if not self.writes_context:
            raise UnsupportedError(f"the {self.name or type(self).__name__} status store cannot write the context",
                                   hint="call transition_with_context only when the store declares writes_context")
        return await self._transition_writing_context(run_id, from_statuses, to_status, changes, context)

    async def _transition_writing_context(
        self, run_id: str, from_statuses: Sequence[str], to_status: str, changes: Mapping[str, Any],
        context: Mapping[str, Any],
    ) -> RunRecord | None:
        """The primitive behind ``transition_with_context``, written by a store that declares ``writes_context``
        (called only while it does)."""
        raise NotImplementedError(f"{type(self).__name__} declares writes_context without _transition_writing_context")

    async def stalled(
        self, older_than: float, limit: int = 100, *, after: tuple[float, str] | None = None
    ) -> list[RunRecord]:
        """Up to ``limit`` active (running/awaiting) runs whose ``updated_at`` is older than the timestamp,
        ordered by ``(updated_at, run_id)`` and strictly after the ``after`` cursor (the last record of the
        previous page), so a caller can page through every candidate.

        Derived: pages through every active run with ``list``, so each call reads them all; a store with an
        index of (status, updated_at) overrides it with one query."""
        found: list[RunRecord] = []
        for status in sorted(ACTIVE_STATUSES):
            cursor: str | None = None
            while True:
                page, cursor = await self.list(status=status, limit=500, cursor=cursor)
                found += [record for record in page if record.updated_at < older_than
                          and (after is None or (record.updated_at, record.run_id) > after)]
                if cursor is None:
                    break
        found.sort(key=lambda record: (record.updated_at, record.run_id))
        return found[:limit]

    async def delete(self, run_id: str) -> bool:
        """Remove the run's record for good (retention: ``flowcraft purge``); False if there was none. Only
        finished runs are deleted, after their context and coordination data. Optional: no sound default
        exists over the methods above, so the default raises ``UnsupportedError``; every bundled backend
        implements it (``deletes`` says whether a store does)."""
        raise UnsupportedError(f"the {self.name or type(self).__name__} status store cannot delete runs",
                               hint="upgrade the backend package, or delete old runs with the server's tools")

    @property
    def deletes(self) -> bool:
        """Whether this store implements ``delete``."""
        return type(self).delete is not StatusStore.delete

    async def wait_for_change(self, run_id: str, timeout: float) -> None:
        """Return when the run's record may have changed, or after ``timeout``; stores that can be
        notified override this (the default sleeps, and clients poll with bounded backoff)."""
        await asyncio.sleep(timeout)

    async def watch(self, run_id: str) -> None:
        """Make every change of the run from now on end the next ``wait_for_change`` on it at once, so a caller
        that watches, then reads the record, then waits misses no change made after its read. A store that must
        set something up first overrides it (a Redis subscription: returns once it is confirmed); one whose
        ``wait_for_change`` already covers the changes since the caller's last read keeps this, which does
        nothing. ``Client.wait`` watches before its first read, which saves the read a store would otherwise need
        after its first wait (``flowcraft_redis``: after the subscription)."""

    @abstractmethod
    async def list(
        self,
        status: str | None = None,
        blueprint_id: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[RunRecord], str | None]:
        """A page of records, newest first, and the cursor of the next page."""


class CoordinationStore(Component):
    """Atomic per-run coordination: jobs map, completion records, join arrivals, leases.

    A backend implements every method here, or subclasses ``TablesCoordinationStore`` (end of this module)
    and implements ONE primitive, ``atomically``, from which all of them are derived."""

    # What ``commit`` does besides the rules, each decided when the store is built (by the backend's factory),
    # never changed afterwards; the engine reads them through ``Backend.capabilities``. A subclass overrides
    # them (a property or a class attribute); each has a contract test.

    @property
    def applies_context(self) -> bool:
        """True when ``commit`` also writes a new completion's context updates (coordination and context share
        one store), which saves the engine a separate ``ContextStore.apply`` round trip."""
        return False

    @property
    def protocol(self) -> str:
        """The version of what this store writes and expects other workers' writes to be: a store whose stored
        data changes meaning (a worker of the version before would misread it or not update it) declares a new
        one. Workers whose stores declare different protocols never take jobs from one store at the same time:
        each announces it in its presence entry (``WorkerInfo.protocol``) and takes no jobs while a live worker
        of another protocol that started before it, or of none (a version before protocols), is there
        (``flowcraft.presence.protocol_blockers``). "1" for a store that declares none.

        Not in ``Capabilities``: those are fast paths the engine takes within one worker, read on the job path;
        this is an agreement between workers, read only by presence, and compared for equality, not tested."""
        return "1"

    @property
    def dispatches(self) -> bool:
        """True when ``commit`` puts the jobs it fires (``Committed.fired``) on the backend's queue itself,
        honouring each job's ``due_at``, so the engine does not enqueue them."""
        return False

    @property
    def releases_lease(self) -> bool:
        """True when a finishing commit (``Transition.finish``) that is not a conflict leaves
        ``Transition.owner`` holding no lease on the job, so the engine need not call ``release``."""
        return False

    @property
    def acks(self) -> bool:
        """True when a finishing commit given ``Transition.receipt`` that is not a conflict and leaves jobs
        pending (``Committed.pending > 0``) also acks that delivery, in the same atomic step as the transition,
        so the engine does not call ``Queue.ack``. Only a store that ``dispatches`` may declare it: once the
        delivery is gone, nothing but the queue holds the jobs it fired. A commit that leaves nothing pending
        never acks (the engine still publishes the run's end, then acks) unless it ends the run (``ends``)."""
        return False

    @property
    def ends(self) -> bool:
        """True when a finishing commit given ``Transition.end`` that is not a conflict and leaves nothing pending
        or parked also ends the run, in the same atomic step: the ``RunEnd.result`` written to the run's context
        as ``_result`` and its record moved from an active status to ``completed`` with ``RunEnd.fields`` (as
        ``StatusStore.transition_with_context`` would, ``updated_at`` set), the change notified as a status
        transition's is (``StatusStore.wait_for_change`` and ``watch`` wake), and, with ``acks``, the committed
        delivery acked; ``Committed.ended`` is then the new record. A store whose run record is not in an active
        status ends nothing (exactly-once: a replay of a commit that ended the run finds it completed). Only a
        store that ``dispatches`` and holds the backend's status and context (co-located in one Redis or
        database, decided when the backend is built) may declare it; the engine otherwise publishes the end
        itself after the commit (a status transition, then an ack)."""
        return False

    @property
    def continues(self) -> bool:
        """True when a commit hands up to ``Transition.continue_up_to`` of the jobs it fires, due now, straight
        to ``Transition.owner`` (``Committed.continued``): each is put in the queue's in-flight set as a
        ``receive`` by that owner would leave it — invisible for the queue's visibility timeout, its lease taken
        for the owner (``Delivery.begin``) and its run record read (``Delivery.record``; left unset by a store
        that does not hold the status, and then the engine reads it) — so the worker runs it without a queue
        hop, and if the worker dies the job comes back when its visibility lapses, as any delivery would. The
        job is still recorded as pending, so a crash loses nothing. The other fired jobs go on the queue as
        ``dispatches`` says: a store that does not dispatch hands jobs into the in-flight set the queue gives it
        (e.g. ``flowcraft_redis.colocation.Dispatcher``), and the engine enqueues the fired jobs it did not hand
        over."""
        return False

    @property
    def starts(self) -> bool:
        """True when ``start`` creates a run's record, schedules its first jobs and queues them in one atomic
        step: a store that holds the backend's status store and queue too (co-located in one Redis or database,
        decided when the backend is built) and ``dispatches``."""
        return False

    async def start(self, record: RunRecord, jobs: Sequence[Job]) -> bool:
        """Create ``record`` (as ``StatusStore.create``: its ``created_at``/``updated_at`` set when the run is
        created), schedule ``jobs`` as pending (as ``schedule``, which also records the run's activity) and queue
        them (as a dispatching ``commit`` queues what it fires, honouring each job's ``due_at``), as one atomic
        step: all of it happens, or none does. False, and nothing written, when a run with ``record.run_id``
        exists. Called only when ``starts`` is declared (the engine otherwise makes the three calls itself)."""
        raise NotImplementedError(f"coordination store {type(self).__name__} does not start runs "
                                  "(it does not declare starts)")

    @abstractmethod
    async def schedule(self, run_id: str, jobs: Sequence[Job]) -> list[Job]:
        """Insert jobs as pending where absent (first-writer-wins); return those inserted."""

    @abstractmethod
    async def begin(self, job: Job, owner: str, lease_seconds: float) -> Begin:
        """Take the job's lease (unless another owner holds a live one) and read its state and completion."""

    @abstractmethod
    async def renew(self, run_id: str, job_key: str, owner: str, lease_seconds: float) -> bool:
        """Extend a lease this owner holds; False if lost."""

    @abstractmethod
    async def release(self, run_id: str, job_key: str, owner: str) -> None:
        """Drop this owner's lease."""

    @abstractmethod
    async def commit(self, transition: Transition) -> Committed:
        """Apply a transition (see module docstring and ``Arrival``); also refreshes the run's activity."""

    @abstractmethod
    async def park(self, run_id: str, job_key: str) -> Committed:
        """Move a pending job to parked (waiting for a resume); return the counts."""

    @abstractmethod
    async def unpark(self, run_id: str, job_key: str, job: Job) -> bool:
        """Move a parked job back to pending with ``job`` as its document; False if it was not parked."""

    @abstractmethod
    async def jobs(self, run_id: str, state: JobState = "pending") -> list[PendingJob]:
        """A run's jobs in ``state`` (pending or parked) and whether each has a live lease."""

    @abstractmethod
    async def activity(self, run_id: str) -> float | None:
        """When the run last committed or renewed a lease (epoch seconds); None while nothing was ever
        written for the run (reads create no activity): the reconciler takes that as a start that died
        before its first jobs were scheduled."""

    @abstractmethod
    async def delete_run(self, run_id: str) -> None:
        """Forget the run's coordination data."""


@dataclass(slots=True, kw_only=True)
class ReconcileStats:
    """What one reconciler pass did (the seeds' fields). All fields are keyword-only."""

    scanned: int = 0
    stalled_runs: int = 0
    reconciled_runs: int = 0
    failed_runs: int = 0
    requeued_jobs: int = 0
    #: finished runs deleted by the ``retention`` setting in this pass
    purged_runs: int = 0

    def to_dict(self) -> dict[str, int]:
        return {
            "scanned": self.scanned,
            "stalled_runs": self.stalled_runs,
            "reconciled_runs": self.reconciled_runs,
            "failed_runs": self.failed_runs,
            "requeued_jobs": self.requeued_jobs,
            "purged_runs": self.purged_runs,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Capabilities:
    """The fast paths a backend's components take together, which the engine and clients rely on.

    Each is False unless the components were built to take it (a preset's factory wires co-located
    components through one client or database); every one has a contract test
    (``flowcraft.testing.BackendContract``, skipped when not declared). The default is the safe one: no fast
    path, the engine does every step itself.

    * ``applies_context``: ``CoordinationStore.commit`` writes the completion's context updates in the same
      atomic step as its record, so the engine does not write them (``CoordinationStore.applies_context``);
    * ``prefetches_status``: ``Queue.receive`` reads each delivery's run record and takes its lease in the same
      round trip (``Delivery.prefetched``, ``record``, ``begin``);
    * ``dispatches``: ``commit`` puts the jobs it fires on the queue itself;
    * ``releases_lease``: a finishing ``commit`` drops the finishing worker's lease (no ``release`` call);
    * ``acks``: a finishing ``commit`` that leaves jobs pending (or ends the run: ``ends``) acks the committed
      job's delivery (no ``ack``);
    * ``continues``: ``commit`` hands fired jobs straight to the committing worker, already received
      (``Committed.continued``), so they skip the queue hop;
    * ``notifies``: ``StatusStore.wait_for_change`` returns soon after a record changes, so clients need not
      poll (``StatusStore.notifies``);
    * ``writes_context``: ``StatusStore.transition_with_context`` writes context values in the same atomic
      step as a status transition (``StatusStore.writes_context``): a run's ``_result`` goes with its final
      status, one step instead of a context write and then the transition;
    * ``starts``: ``CoordinationStore.start`` creates a run's record, schedules its first jobs and queues them
      in one atomic step (``CoordinationStore.starts``): a client's start is one step instead of three;
    * ``ends``: a finishing ``CoordinationStore.commit`` given ``Transition.end`` that leaves nothing pending or
      parked ends the run in the same atomic step: the run's ``_result`` written to its context and its record
      moved from an active status to ``completed`` (as ``StatusStore.transition_with_context`` would), the
      change notified as a transition's is, and (with ``acks``) the committed delivery acked
      (``Committed.ended``, ``CoordinationStore.ends``): a run's end is one step instead of three.

    All fields are keyword-only.
    """

    applies_context: bool = False
    prefetches_status: bool = False
    dispatches: bool = False
    releases_lease: bool = False
    acks: bool = False
    continues: bool = False
    notifies: bool = False
    writes_context: bool = False
    starts: bool = False
    ends: bool = False

    @classmethod
    def of(cls, queue: Queue, context: ContextStore, status: StatusStore,
           coordination: CoordinationStore) -> Capabilities:
        """What the components, as they were built, declare: the one place a backend's fast paths are decided."""
        if coordination.acks and not coordination.dispatches:
            raise PluginError(f"coordination store {type(coordination).__name__} declares acks without dispatches: "
                              "a store that acks deliveries must also queue what they fired")
        if coordination.starts and not coordination.dispatches:
            raise PluginError(f"coordination store {type(coordination).__name__} declares starts without "
                              "dispatches: a store that starts runs queues their first jobs, so it must also "
                              "queue what its commits fire")
        if coordination.ends and not coordination.dispatches:
            raise PluginError(f"coordination store {type(coordination).__name__} declares ends without dispatches: "
                              "a store that ends runs in a commit must also queue what its commits fire")
        return cls(applies_context=coordination.applies_context,
                   prefetches_status=queue.prefetches_status,
                   dispatches=coordination.dispatches,
                   releases_lease=coordination.releases_lease,
                   acks=coordination.acks,
                   continues=coordination.continues,
                   notifies=status.notifies,
                   writes_context=status.writes_context,
                   starts=coordination.starts,
                   ends=coordination.ends)


@dataclass(slots=True)
class Backend:
    """The components a worker and a client use together, and what they can do together
    (``capabilities``: read from the components when the backend is built, never changed afterwards).

    The four components may be passed positionally; every other field is keyword-only.
    """

    queue: Queue
    context: ContextStore
    status: StatusStore
    coordination: CoordinationStore
    _: KW_ONLY
    name: str = "custom"
    options: dict[str, Any] = field(default_factory=dict, repr=False)  # may hold secrets
    capabilities: Capabilities = field(init=False)

    def __post_init__(self) -> None:
        self.capabilities = Capabilities.of(self.queue, self.context, self.status, self.coordination)

    async def setup(self) -> None:
        for component in self._unique_components():
            await component.setup()

    async def close(self) -> None:
        for component in self._unique_components():
            await component.close()

    def _unique_components(self) -> list[Component]:
        seen: dict[int, Component] = {}
        for component in (self.queue, self.context, self.status, self.coordination):
            seen.setdefault(id(component), component)
        return list(seen.values())


# The coordination rules every ``CoordinationStore.commit`` follows, public here (implemented in
# flowcraft.backends.transition). Imported last: that module imports this one's names back.
from flowcraft.backends.transition import CoordinationTables as CoordinationTables  # noqa: E402
from flowcraft.backends.transition import apply_transition as apply_transition  # noqa: E402


class LeaseTables(CoordinationTables, Protocol):
    """``CoordinationTables`` plus the leases, what ``TablesCoordinationStore`` derives every method from."""

    @property
    def now(self) -> float:
        """The time (epoch seconds) the atomic section runs at."""
        ...

    def set_job_state(self, run_id: str, key: str, state: JobState, job: Job | None = None) -> None:
        """Change an existing job's state (and its document, when ``job`` is given: ``unpark``)."""
        ...

    def lease(self, run_id: str, key: str) -> tuple[str, float] | None:
        """``(owner, expires_at)`` of the job's lease, or None."""
        ...

    def put_lease(self, run_id: str, key: str, owner: str, expires_at: float) -> None: ...

    def drop_lease(self, run_id: str, key: str) -> None: ...

    def jobs_in_state(self, run_id: str, state: JobState) -> list[tuple[Job, float | None]]:
        """The run's jobs in ``state`` that have a document, with their lease's expiry (None: no lease)."""
        ...

    def last_activity(self, run_id: str) -> float | None:
        """The time of the run's last ``touch``; None if it was never touched (reads must not create it)."""
        ...

    def forget_run(self, run_id: str) -> None: ...


T = TypeVar("T")


def split_hand_over(transition: Transition, fired: Sequence[Job], now: float) -> tuple[list[Job], list[Job]]:
    """Which of a commit's ``fired`` jobs a store that ``continues`` hands to ``transition.owner`` and which it
    queues: up to ``continue_up_to`` of those due at ``now`` (none in recovery, none without an owner); the
    rest, in order, go on the queue (each honouring its ``due_at``). The rule every such store follows."""
    room = transition.continue_up_to if transition.owner is not None and not transition.recovery else 0
    if room <= 0:
        return [], list(fired)
    handed: list[Job] = []
    queued: list[Job] = []
    for job in fired:
        if len(handed) < room and (job.due_at is None or job.due_at <= now):
            handed.append(job)
        else:
            queued.append(job)
    return handed, queued


def ends_the_run(transition: Transition, committed: Committed) -> bool:
    """Whether a store that ``ends`` runs ends the run with this commit (``committed``: what it decided for
    ``transition``): the transition finishes its job with an end given (``Transition.end``), no other attempt's
    completion won, and nothing is left pending or parked. The store then moves the record, from an active status
    only (so once), in the same atomic step (``Committed.with_end``). The rule every such store follows."""
    return (transition.end is not None and transition.finish and committed.conflict is None
            and committed.pending == 0 and committed.parked == 0)


def take_lease(tables: LeaseTables, job: Job, owner: str, lease_seconds: float) -> Begin:
    """``CoordinationStore.begin`` over tables already open (inside the caller's atomic section): take the job's
    lease unless another owner holds a live one, and read its state and completion."""
    run_id, key = job.run_id, job.key
    holder = tables.lease(run_id, key)
    if holder is not None and holder[0] != owner and holder[1] > tables.now:
        return Begin(lease=False, state=tables.job_state(run_id, key), completion=None)
    tables.put_lease(run_id, key, owner, tables.now + lease_seconds)
    tables.touch(run_id)
    return Begin(lease=True, state=tables.job_state(run_id, key), completion=tables.completion(run_id, key))


class TablesCoordinationStore(CoordinationStore):
    """A ``CoordinationStore`` derived from ONE primitive: ``atomically(run_id, fn)``, which runs ``fn`` over
    the run's ``LeaseTables`` as one atomic section (a transaction, a lock, the event loop) and returns what
    it returns. Every ``CoordinationStore`` method below is written over it with the shared rules
    (``apply_transition``); a store overrides any of them with a faster version (e.g. a read outside a
    transaction) without changing what it returns.

    ``applies_context`` is decided when the store is built (the backend's factory passes it): with it,
    a commit also writes the completion's context updates through ``LeaseTables.apply_context``.
    """

    def __init__(self, *, applies_context: bool = False) -> None:
        self._applies_context = applies_context

    @property
    def applies_context(self) -> bool:
        return self._applies_context

    @abstractmethod
    async def atomically(self, run_id: str, fn: Callable[[LeaseTables], T]) -> T:
        """Run ``fn`` over the tables as one atomic section: all its writes happen, or none do."""

    async def schedule(self, run_id: str, jobs: Sequence[Job]) -> list[Job]:
        def insert(tables: LeaseTables) -> list[Job]:
            inserted = [job for job in jobs if tables.insert_job(run_id, job.key, "pending", job)]
            tables.touch(run_id)
            return inserted

        return await self.atomically(run_id, insert)

    async def begin(self, job: Job, owner: str, lease_seconds: float) -> Begin:
        return await self.atomically(job.run_id, lambda tables: take_lease(tables, job, owner, lease_seconds))

    async def renew(self, run_id: str, job_key: str, owner: str, lease_seconds: float) -> bool:
        def extend(tables: LeaseTables) -> bool:
            holder = tables.lease(run_id, job_key)
            if holder is None or holder[0] != owner:
                return False
            tables.put_lease(run_id, job_key, owner, tables.now + lease_seconds)
            tables.touch(run_id)
            return True

        return await self.atomically(run_id, extend)

    async def release(self, run_id: str, job_key: str, owner: str) -> None:
        def drop(tables: LeaseTables) -> None:
            holder = tables.lease(run_id, job_key)
            if holder is not None and holder[0] == owner:
                tables.drop_lease(run_id, job_key)

        await self.atomically(run_id, drop)

    async def commit(self, transition: Transition) -> Committed:
        applies_context = self.applies_context
        return await self.atomically(
            transition.run_id, lambda tables: apply_transition(tables, transition, applies_context=applies_context))

    async def park(self, run_id: str, job_key: str) -> Committed:
        def move(tables: LeaseTables) -> Committed:
            if tables.job_state(run_id, job_key) == "pending":
                tables.set_job_state(run_id, job_key, "parked")
            tables.touch(run_id)
            pending, parked = tables.counts(run_id)
            return Committed(pending=pending, parked=parked)

        return await self.atomically(run_id, move)

    async def unpark(self, run_id: str, job_key: str, job: Job) -> bool:
        def move(tables: LeaseTables) -> bool:
            if tables.job_state(run_id, job_key) != "parked":
                return False
            tables.set_job_state(run_id, job_key, "pending", job)
            return True

        return await self.atomically(run_id, move)

    async def jobs(self, run_id: str, state: JobState = "pending") -> list[PendingJob]:
        def read(tables: LeaseTables) -> list[PendingJob]:
            return [PendingJob(job, leased=expires is not None and expires > tables.now)
                    for job, expires in tables.jobs_in_state(run_id, state)]

        return await self.atomically(run_id, read)

    async def activity(self, run_id: str) -> float | None:
        return await self.atomically(run_id, lambda tables: tables.last_activity(run_id))

    async def delete_run(self, run_id: str) -> None:
        await self.atomically(run_id, lambda tables: tables.forget_run(run_id))



# ---------------------------------------------------------------------------------------------------------------
# ``DocumentCoordinationStore``: a backend whose server stores one JSON document per key and replaces it only if
# it is unchanged (an etag, a version column, a conditional put) writes two methods, ``load`` and ``store``; every
# ``CoordinationStore`` method is derived from them through ``TablesCoordinationStore`` and ``apply_transition``,
# run over ``DocumentTables``. A write that lost the race is re-run over the newer document, so each transition
# is one atomic step (optimistic concurrency).

#: How often ``atomically`` re-runs a section whose write lost the race before giving up (the job is then
#: redelivered and handled again).
MAX_ATTEMPTS = 50


class DocumentTables:
    """``LeaseTables`` over one run's JSON document::

        {"jobs": {key: [state, job dict or None]}, "done": {key: completion dict},
         "arrivals": {target: {member: [arrived, contribution]}}, "leases": {key: [owner, expires_at]},
         "activity": epoch seconds}

    ``changed`` says whether anything was written (a read-only section stores nothing)."""

    def __init__(self, document: dict[str, Any] | None, now: float) -> None:
        self.document: dict[str, Any] | None = document
        self.changed = False
        self._now = now

    @property
    def now(self) -> float:
        return self._now

    def _read(self, part: str) -> dict[str, Any]:
        return {} if self.document is None else self.document.get(part, {})

    def _write(self, part: str) -> dict[str, Any]:
        self.changed = True
        if self.document is None:
            self.document = {}
        return self.document.setdefault(part, {})  # type: ignore[no-any-return]

    def job_state(self, run_id: str, key: str) -> JobState | None:
        entry = self._read("jobs").get(key)
        return None if entry is None else entry[0]

    def job(self, run_id: str, key: str) -> Job | None:
        entry = self._read("jobs").get(key)
        return None if entry is None or entry[1] is None else Job.from_dict(entry[1])

    def insert_job(self, run_id: str, key: str, state: JobState, job: Job | None) -> bool:
        if key in self._read("jobs"):
            return False
        self._write("jobs")[key] = [state, None if job is None else job.to_dict()]
        return True

    def set_job_state(self, run_id: str, key: str, state: JobState, job: Job | None = None) -> None:
        jobs = self._write("jobs")
        jobs[key] = [state, jobs[key][1] if job is None else job.to_dict()]

    def completion(self, run_id: str, key: str) -> Completion | None:
        data = self._read("done").get(key)
        return None if data is None else Completion.from_dict(data)

    def put_completion(self, run_id: str, key: str, completion: Completion) -> None:
        self._write("done")[key] = completion.to_dict()

    def add_arrival(self, run_id: str, target: str, member: str, arrived: bool, contribution: Any) -> tuple[int, int]:
        if member not in self._read("arrivals").get(target, {}):
            self._write("arrivals").setdefault(target, {})[member] = [arrived, contribution]
        members = self._read("arrivals")[target]
        return len(members), sum(1 for entry in members.values() if entry[0])

    def arrivals(self, run_id: str, target: str) -> dict[str, tuple[bool, Any]]:
        return {member: (entry[0], entry[1]) for member, entry in self._read("arrivals").get(target, {}).items()}

    def counts(self, run_id: str) -> tuple[int, int]:
        states = [entry[0] for entry in self._read("jobs").values()]
        return states.count("pending"), states.count("parked")

    def touch(self, run_id: str) -> None:
        self.changed = True
        if self.document is None:
            self.document = {}
        self.document["activity"] = self._now

    def apply_context(self, run_id: str, completion: Completion) -> None:
        raise NotImplementedError("a DocumentCoordinationStore keeps no context: the engine writes it")

    def lease(self, run_id: str, key: str) -> tuple[str, float] | None:
        entry = self._read("leases").get(key)
        return None if entry is None else (entry[0], float(entry[1]))

    def put_lease(self, run_id: str, key: str, owner: str, expires_at: float) -> None:
        self._write("leases")[key] = [owner, expires_at]

    def drop_lease(self, run_id: str, key: str) -> None:
        if key in self._read("leases"):
            del self._write("leases")[key]

    def jobs_in_state(self, run_id: str, state: JobState) -> list[tuple[Job, float | None]]:
        leases = self._read("leases")
        return [(Job.from_dict(entry[1]), float(leases[key][1]) if key in leases else None)
                for key, entry in self._read("jobs").items() if entry[0] == state and entry[1] is not None]

    def last_activity(self, run_id: str) -> float | None:
        return None if self.document is None else self.document.get("activity")

    def forget_run(self, run_id: str) -> None:
        self.changed = self.document is not None
        self.document = None


class DocumentCoordinationStore(TablesCoordinationStore):
    """A ``CoordinationStore`` derived from TWO primitives over one JSON document per run: ``load`` and a
    compare-and-set ``store``. Fine for runs of up to a few thousand jobs (each transition rewrites the run's
    document); a store that can do better overrides any method (see ``TablesCoordinationStore``)."""

    def __init__(self) -> None:
        super().__init__(applies_context=False)

    @abstractmethod
    async def load(self, run_id: str) -> tuple[dict[str, Any] | None, Any]:
        """The run's document (None: there is none) and its version: any value ``store`` can compare, e.g.
        an etag or a counter (the version of a missing document too, e.g. None)."""

    @abstractmethod
    async def store(self, run_id: str, document: dict[str, Any] | None, version: Any) -> bool:
        """Replace the run's document with ``document`` (None: delete it) if its version is still ``version``
        (as ``load`` returned it; for a missing document: if it is still missing); False if another writer
        changed it first. Atomic: a conditional put, an etag match, ``UPDATE ... WHERE version = %s``."""

    async def atomically(self, run_id: str, fn: Callable[[LeaseTables], T]) -> T:
        for attempt in range(MAX_ATTEMPTS):
            document, version = await self.load(run_id)
            tables = DocumentTables(copy.deepcopy(document), time.time())
            result = fn(tables)
            if not tables.changed or await self.store(run_id, tables.document, version):
                return result
            # another writer moved the document on: run the section again over the newer one
            await asyncio.sleep(random.uniform(0, min(0.05, 0.002 * 2 ** min(attempt, 5))))
        raise FlowcraftError(f"coordination writes of run {run_id!r} kept conflicting; gave up after "
                             f"{MAX_ATTEMPTS} attempts", hint="the job is redelivered and handled again")
