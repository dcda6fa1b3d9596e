"""A run's timeline: per node and visit, its state, its attempts (each with its worker, times and error).

Where it is stored: under reserved context keys ``_timeline.<visit>:<node id>`` (``TIMELINE_PREFIX``), one
JSON entry per node visit. The engine writes an entry

* with a node's completion, inside the completion's context writes (``Completion.context_updates``), which
  every backend stores atomically with the completion record or right after it (docs/architecture.md §3.5):
  no extra round trip on the hot path;
* when an attempt fails and a retry is scheduled (the failed attempts also travel in the retry job's payload
  under ``_attempts``, so the completion's entry lists them all without a read), when a node fails its run,
  and when nodes are skipped by dead-path elimination: only on those paths, one context write each.

What is not stored is derived when the timeline is read (``read_timeline``): jobs the coordination store
holds as pending are ``running`` (a worker holds the lease) or ``pending``; parked jobs are ``awaiting``; in a
cancelled or failed run whatever had not finished is ``cancelled``.

``NodeVisit`` and ``Attempt`` are the public shape (``RunResult.timeline``, ``Client.timeline``), each with
``to_dict``/``from_dict`` for JSON.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from flowcraft.engine.graph import VISITS_PER_GENERATION
from flowcraft.spi import Backend, PendingJob, job_key

TIMELINE_PREFIX = "_timeline."
#: Context keys the engine keeps for itself; ``RunResult.context`` leaves them out.
#: Context keys ``_dead_letter.<job key>``: a job of the run that was dead-lettered (``RunResult.dead_letters``).
DEAD_LETTER_PREFIX = "_dead_letter."
INTERNAL_PREFIXES = ("_outputs.", TIMELINE_PREFIX, "_retry.", DEAD_LETTER_PREFIX)
INTERNAL_KEYS = frozenset({"_result"})
#: Where a retry job carries the failed attempts of its node (``Job.payload``).
ATTEMPTS_PAYLOAD = "_attempts"

NodeState = Literal["pending", "running", "done", "skipped", "failed", "awaiting", "cancelled"]
NODE_STATES: tuple[str, ...] = ("pending", "running", "done", "skipped", "failed", "awaiting", "cancelled")


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt of a node visit: its number (from 1), the worker that ran it, when, and its error (None
    when it succeeded or is still running)."""

    attempt: int
    worker: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return max(0.0, self.finished_at - self.started_at)

    def to_dict(self) -> dict[str, Any]:
        return {"attempt": self.attempt, "worker": self.worker, "started_at": self.started_at,
                "finished_at": self.finished_at, "error": self.error}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Attempt:
        return cls(int(data.get("attempt", 1)), data.get("worker"), _number(data.get("started_at")),
                   _number(data.get("finished_at")), data.get("error"))


@dataclass(frozen=True, slots=True)
class NodeVisit:
    """A node at one visit (loops visit a node again): its ``state`` (one of ``NODE_STATES``), its attempts
    in order, when it started (its first attempt) and finished, the action it returned and, for a node
    completed by its fallback, the fallback's id."""

    node_id: str
    visit: int = 0
    state: str = "pending"
    attempts: tuple[Attempt, ...] = ()
    started_at: float | None = None
    finished_at: float | None = None
    action: str | None = None
    fallback: str | None = None
    error: str | None = None

    @property
    def key(self) -> str:
        return job_key(self.node_id, self.visit)

    @property
    def generation(self) -> int:
        """The retry this visit belongs to: 0 for the run's first execution, then 1, 2 ... for each
        ``client.retry`` (``flowcraft.engine.retry``)."""
        return self.visit // VISITS_PER_GENERATION

    @property
    def iteration(self) -> int:
        """The loop iteration of this visit within its generation (what the node saw as ``ctx.visit``)."""
        return self.visit % VISITS_PER_GENERATION

    @property
    def worker(self) -> str | None:
        """The worker of the last attempt."""
        return self.attempts[-1].worker if self.attempts else None

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return max(0.0, self.finished_at - self.started_at)

    @property
    def retries(self) -> int:
        return max(0, len(self.attempts) - 1)

    def to_dict(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "visit": self.visit, "state": self.state,
                "attempts": [a.to_dict() for a in self.attempts], "started_at": self.started_at,
                "finished_at": self.finished_at, "action": self.action, "fallback": self.fallback,
                "error": self.error, "worker": self.worker}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NodeVisit:
        attempts = tuple(Attempt.from_dict(a) for a in data.get("attempts") or () if isinstance(a, Mapping))
        return cls(str(data["node_id"]), int(data.get("visit", 0)), str(data.get("state", "pending")), attempts,
                   _number(data.get("started_at")), _number(data.get("finished_at")), data.get("action"),
                   data.get("fallback"), data.get("error"))


def dead_letter_flags(context: Mapping[str, Any], timeline: Sequence[NodeVisit]) -> list[dict[str, Any]]:
    """The run's dead-lettered jobs whose node visit has not finished since (a replayed job that finished
    drops out), oldest first: ``{"node_id", "visit", "item", "reason", "at"}``."""
    finished = {v.key for v in timeline if v.state in ("done", "skipped")}
    flags = [dict(v) for k, v in context.items() if k.startswith(DEAD_LETTER_PREFIX) and isinstance(v, Mapping)
             and job_key(str(v.get("node_id")), int(v.get("visit") or 0)) not in finished]
    return sorted(flags, key=lambda f: float(f.get("at") or 0.0))


def timeline_entry(node_id: str, visit: int, state: str, attempts: list[dict[str, Any]], finished_at: float | None,
                   action: str | None = None, fallback: str | None = None, error: str | None = None
                   ) -> dict[str, Any]:
    """A stored entry (what ``NodeVisit.from_dict`` reads), built directly on the hot path: fields that are
    None are left out."""
    entry: dict[str, Any] = {"node_id": node_id, "visit": visit, "state": state, "attempts": attempts}
    for attempt in attempts:  # the first attempt's start that is known
        started = attempt.get("started_at")
        if started is not None:
            entry["started_at"] = started
            break
    if finished_at is not None:
        entry["finished_at"] = finished_at
    if action is not None:
        entry["action"] = action
    if fallback is not None:
        entry["fallback"] = fallback
    if error is not None:
        entry["error"] = error
    return entry


def entry_key(node_id: str, visit: int = 0) -> str:
    """The context key of a node visit's timeline entry."""
    return TIMELINE_PREFIX + job_key(node_id, visit)


def is_internal(key: str) -> bool:
    return key in INTERNAL_KEYS or key.startswith(INTERNAL_PREFIXES)


def public_context(context: Mapping[str, Any]) -> dict[str, Any]:
    """The run's context without the engine's own keys (outputs, result, timeline)."""
    return {k: v for k, v in context.items() if not is_internal(k)}


def prior_attempts(payload: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The failed attempts a retry job carries."""
    carried = (payload or {}).get(ATTEMPTS_PAYLOAD)
    return [dict(a) for a in carried if isinstance(a, Mapping)] if isinstance(carried, list) else []


def build_timeline(context: Mapping[str, Any], pending: Sequence[PendingJob] = (),
                   parked: Sequence[PendingJob] = (), run_status: str = "running") -> list[NodeVisit]:
    """The timeline from the stored entries in ``context`` and the coordination store's pending and parked
    jobs, ordered by start (then finish) time; visits not started yet come last."""
    visits: dict[str, NodeVisit] = {}
    for key, value in context.items():
        if key.startswith(TIMELINE_PREFIX) and isinstance(value, Mapping) and "node_id" in value:
            visit = NodeVisit.from_dict(value)
            visits[visit.key] = visit
    for held, state in [*((p, "running" if p.leased else "pending") for p in pending),
                        *((p, "awaiting") for p in parked)]:
        job = held.job
        key = job_key(job.node_id, job.visit)
        known = visits.get(key)
        if known is not None and known.state in ("done", "skipped", "failed"):
            if job.item is None or known.state != "done":
                continue
            state = "running"  # a map node whose items are still running
        visits[key] = NodeVisit(job.node_id, job.visit, state,
                                known.attempts if known is not None else (),
                                known.started_at if known is not None else None, None,
                                error=known.error if known is not None else None)
    if run_status in ("cancelled", "failed"):
        for key, visit in visits.items():
            if visit.state in ("pending", "running", "awaiting"):
                visits[key] = NodeVisit(visit.node_id, visit.visit, "cancelled", visit.attempts, visit.started_at,
                                        visit.finished_at, visit.action, visit.fallback, visit.error)

    def order(visit: NodeVisit) -> tuple[float, float, int, str]:
        first = visit.started_at if visit.started_at is not None else visit.finished_at
        return (math.inf if first is None else first, math.inf if visit.finished_at is None else visit.finished_at,
                visit.visit, visit.node_id)

    return sorted(visits.values(), key=order)


async def read_timeline(backend: Backend, run_id: str, run_status: str,
                        context: Mapping[str, Any] | None = None) -> list[NodeVisit]:
    """Read a run's timeline (``context``: the run's context when the caller has read it already)."""
    if context is None:
        context = await backend.context.get_all(run_id)
    pending: list[PendingJob] = []
    parked: list[PendingJob] = []
    if run_status in ("running", "awaiting", "cancelled", "failed"):
        pending = await backend.coordination.jobs(run_id, "pending")
        parked = await backend.coordination.jobs(run_id, "parked")
    return build_timeline(context, pending, parked, run_status)


@dataclass(slots=True)
class TimelineMark:
    """What the engine notes while it handles a job, for the entry it writes with the outcome."""

    started_at: float
    error: str | None = None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
