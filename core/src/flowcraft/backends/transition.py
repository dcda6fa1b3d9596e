"""The coordination rules of ``CoordinationStore.commit`` over simple synchronous tables.

Stores that can run Python inside one atomic section (the memory backend under the event loop, SQLite
inside one transaction) implement ``CoordinationTables`` and call ``apply_transition``; stores that cannot
(Redis) port these few rules to their own atomic language. The rules live here and nowhere else in Python.

The implementation module: backends import both names from ``flowcraft.spi``, which re-exports them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class CoordinationTables(Protocol):
    """Per-run tables, read and written inside one atomic section."""

    def job_state(self, run_id: str, key: str) -> JobState | None: ...

    def insert_job(self, run_id: str, key: str, state: JobState, job: Job | None) -> bool: ...

    def set_job_state(self, run_id: str, key: str, state: JobState) -> None: ...

    def job(self, run_id: str, key: str) -> Job | None: ...

    def completion(self, run_id: str, key: str) -> Completion | None: ...

    def put_completion(self, run_id: str, key: str, completion: Completion) -> None: ...

    def add_arrival(self, run_id: str, target: str, member: str, arrived: bool, contribution: Any) -> tuple[int, int]:
        """Record the member if absent; return (members recorded, of which arrived) for the target."""
        ...

    def arrivals(self, run_id: str, target: str) -> dict[str, tuple[bool, Any]]: ...

    def counts(self, run_id: str) -> tuple[int, int]: ...

    def touch(self, run_id: str) -> None: ...

    def apply_context(self, run_id: str, completion: Completion) -> None: ...


def apply_transition(tables: CoordinationTables, tx: Transition, *, applies_context: bool = False,
                     hand_over: Callable[[list[Job]], tuple[Delivery, ...]] | None = None) -> Committed:
    """Apply one job's transition to ``tables`` (call it inside one atomic section) and say what it did.

    With ``applies_context`` a new completion record also writes its context updates (through the tables).
    ``hand_over``: called with the jobs the transition fired, when it fired some, in the same atomic section; what
    it returns is the result's ``continued`` (a store that ``continues`` hands jobs over so)."""
    run_id = tx.run_id
    if tx.completion is not None:
        existing = tables.completion(run_id, tx.job_key)
        if existing is not None and existing.token != tx.completion.token:
            return Committed(conflict=existing)
        if existing is None:
            tables.put_completion(run_id, tx.job_key, tx.completion)
            if applies_context:  # only with the record: a replay must not restore values later nodes changed
                tables.apply_context(run_id, tx.completion)
    fired: list[Job] = []
    skipped: list[str] = []
    for arrival in tx.arrivals:
        if len(arrival.expected) <= 1:  # (``_decide``'s first case, without its call: most arrivals)
            decision: str | None = "fire" if arrival.arrived else "skip"
        else:
            decision = _decide(tables, run_id, arrival)
            if decision is None:
                continue
        key = arrival.job.key
        if decision == "skip":
            if tables.insert_job(run_id, key, "skipped", None) or (
                tx.recovery and tables.job_state(run_id, key) == "skipped"
            ):
                skipped.append(key)
            continue
        job = arrival.job
        if len(arrival.expected) > 1:
            members = tables.arrivals(run_id, key)
            job = job.evolve(
                input={m: c for m, (arrived, c) in members.items() if arrived}, has_input=True
            )
        if tables.insert_job(run_id, key, "pending", job):
            fired.append(job)
        elif tx.recovery and tables.job_state(run_id, key) == "pending":
            stored = tables.job(run_id, key)
            fired.append(stored or job)
    if tx.finish and tables.job_state(run_id, tx.job_key) == "pending":
        tables.set_job_state(run_id, tx.job_key, "done")
    tables.touch(run_id)
    pending, parked = tables.counts(run_id)
    continued = hand_over(fired) if hand_over is not None and fired else ()
    return Committed._of(None, tuple(fired), continued, tuple(skipped), pending, parked)


def _decide(tables: CoordinationTables, run_id: str, arrival: Arrival) -> str | None:
    """'fire', 'skip' or None (undecided) after recording the arrival."""
    if len(arrival.expected) <= 1:
        return "fire" if arrival.arrived else "skip"
    recorded, arrived = tables.add_arrival(run_id, arrival.target_key, arrival.member, arrival.arrived,
                                           arrival.contribution)
    any_arrived = arrived > 0
    complete = recorded >= len(arrival.expected)
    if arrival.strategy == "any":
        if any_arrived:
            return "fire"
        return "skip" if complete else None
    if not complete:
        return None
    return "fire" if any_arrived else "skip"


# Imported last: flowcraft.spi re-exports this module's names from its own end, so whichever of the two is
# imported first, the other finds every name it needs already defined.
from flowcraft.spi import Arrival, Committed, Completion, Delivery, Job, JobState, Transition  # noqa: E402
