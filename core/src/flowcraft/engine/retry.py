"""Rerunning a failed run from a node (``RunControl.retry``, ``Client.retry``, ``flowcraft retry``).

A retry starts a new *generation* of the run (``flowcraft.engine.graph.VISITS_PER_GENERATION``): every node it
runs again does so at a new visit, so the completion records, job entries and timeline entries of the failed
attempt are never overwritten and the run's timeline keeps both.

What runs again (the *area*): the node retried from (``from_node``; without it, the node(s) that failed the
run), every job the run still held as pending or parked when it failed (branches cut short by the failure),
and everything reachable from those. Everything else keeps its completion record and is not run again: each
finished node outside the area with an edge into it sends its arrival (or skip) into the new generation again,
computed from its stored output and action by the same routing as the first time, so the nodes of the area are
fired with the inputs they had (a join gets its arrivals from both sides). Edge conditions and transforms on
those edges are evaluated again over the stored outputs and the run's current context (``input`` is None
there): an edge whose condition reads context that later nodes changed may decide differently. A start node
in the area is fired with the run's input. A node inside a loop restarts its loop from the loop's first node.

Steps: the run moves from ``failed`` to ``running`` first (compare-and-set: of concurrent retries exactly one wins
and goes on, the others are refused before they write anything); the new generation's jobs are inserted
(first-writer-wins) and its dead paths decided; the old generation's pending and parked jobs are finished (they
never run again); then the new generation's pending jobs are enqueued. When finishing the old jobs leaves nothing
pending, a dispatching store's worker already ran the whole rerun (its last commit still counted the old jobs and
did not end the run): the retry sends the run a finish job, as the reconciler would. A retry that dies half-way
leaves a running run with pending jobs and no lease, which the reconciler re-enqueues once it counts as stalled
(the old failed job, should it die before the new generation was inserted). The old generation is finished only
after the new one is inserted, so a run never looks all done without its rerun. A delayed copy of an old job (a
retry backoff still in the queue when the run failed) delivered in the few milliseconds between the claim and the
old jobs' finish may run once more at its old visit: at-least-once, like any redelivery.

The failed run's errors move to the context key
``_retry.<generation>`` (``RetryRecord``), readable with ``Client.retries``. A retry is refused while a worker
still holds the lease of one of the run's jobs.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flowcraft.engine import routing
from flowcraft.engine.graph import VISITS_PER_GENERATION, Graph, generation_base, loop_visit
from flowcraft.engine.kinds import OUTPUTS_PREFIX
from flowcraft.engine.timeline import TIMELINE_PREFIX, entry_key, timeline_entry
from flowcraft.errors import InvalidStateError
from flowcraft.reconciler import finish_job
from flowcraft.spi import Arrival, Completion, Job, RunRecord, Transition, job_key

if TYPE_CHECKING:
    from flowcraft.engine.control import RunControl

#: Context keys ``_retry.<generation>``: what each retry replaced (``RetryRecord``).
RETRY_PREFIX = "_retry."


@dataclass(frozen=True, slots=True)
class RetryRecord:
    """One retry of a run: its generation (1 for the first retry), the node it reran from (None: the failed
    node(s)), the nodes it reran first, the errors of the failure it replaced, and when."""

    generation: int
    from_node: str | None
    nodes: tuple[str, ...]
    errors: tuple[Mapping[str, Any], ...]
    at: float

    def to_dict(self) -> dict[str, Any]:
        return {"generation": self.generation, "from_node": self.from_node, "nodes": list(self.nodes),
                "errors": [dict(e) for e in self.errors], "at": self.at}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RetryRecord:
        return cls(int(data.get("generation", 0)), data.get("from_node"), tuple(data.get("nodes") or ()),
                   tuple(dict(e) for e in data.get("errors") or ()), float(data.get("at", 0.0)))


def retry_records(context: Mapping[str, Any]) -> list[RetryRecord]:
    """The run's retries, oldest first, from its context."""
    found = [RetryRecord.from_dict(v) for k, v in context.items() if k.startswith(RETRY_PREFIX)
             and isinstance(v, Mapping)]
    return sorted(found, key=lambda r: r.generation)


async def retry_run(control: RunControl, record: RunRecord, graph: Graph, from_node: str | None) -> int:
    """Retry the failed run ``record`` (see the module docstring); returns the new generation."""
    run_id = record.run_id
    backend = control.backend
    coordination = backend.coordination
    if record.status != "failed":
        raise InvalidStateError(f"run {run_id!r} is {record.status}; only failed runs can be retried",
                                hint="cancel it first, or wait for it to fail")
    if from_node is not None and from_node not in graph.nodes:
        raise InvalidStateError(f"blueprint {record.blueprint_id!r} has no node {from_node!r}",
                                hint=f"nodes: {', '.join(sorted(graph.nodes))}")
    pending = await coordination.jobs(run_id, "pending")
    parked = await coordination.jobs(run_id, "parked")
    leased = [held for held in pending if held.leased]
    if leased:
        raise InvalidStateError(f"a worker still handles node {leased[0].job.node_id!r} of run {run_id!r}",
                                hint="retry once it stopped (its lease expires after lease_seconds)")
    context = await backend.context.get_all(run_id)
    entries = _latest_entries(context)
    held_jobs = [held.job for held in (*pending, *parked) if held.job.node_id in graph.nodes]
    roots = {job.node_id for job in held_jobs}
    if from_node is not None:
        roots.add(from_node)
    else:
        roots |= {str(e["node_id"]) for e in record.errors if e.get("node_id") in graph.nodes}
        if not roots:
            raise InvalidStateError(f"run {run_id!r} failed before any of its nodes ran",
                                    hint="start it again, or retry from a node with --from")
    visits = [v for v, _ in entries.values()] + [job.visit for job in held_jobs]
    generation = max((generation_base(v) for v in visits), default=0) // VISITS_PER_GENERATION + 1
    base = generation * VISITS_PER_GENERATION
    area = _reachable(graph, roots)

    # the claim: of concurrent retries exactly one moves the run back to running and goes on
    won = await backend.status.transition(run_id, ["failed"], "running", {"errors": [], "awaiting": []})
    if won is None:
        raise InvalidStateError(f"run {run_id!r} was retried or changed meanwhile",
                                hint="check `flowcraft status`")
    history = RetryRecord(generation, from_node, tuple(sorted(roots)), tuple(record.errors), time.time())
    await backend.context.apply(run_id, {f"{RETRY_PREFIX}{generation}": history.to_dict()})

    # the new generation: start nodes of the area, and what finished nodes outside it send into it
    starts = [Job(run_id, record.blueprint_id, node_id, visit=base, version=record.version, input=record.input,
                  has_input=True) for node_id in graph.start_nodes if node_id in area]
    # what this retry inserted and must queue itself once the old generation is finished: its start jobs, and the
    # jobs its commits fire unless the store queued them (``dispatches``). Never the rerun's pending jobs read back:
    # a worker may already have fired (and queued) more of them, which would then be delivered twice.
    fresh = await coordination.schedule(run_id, starts) if starts else []
    max_iterations = int(graph.blueprint.metadata.get("maxIterations", control.app.max_iterations))
    arrivals = _arrivals_into(graph, record, area, entries, context, base, max_iterations)
    marker = job_key("", base)  # never a node's job key (node ids are not empty)
    while arrivals:
        committed = await coordination.commit(Transition(run_id, marker, arrivals=tuple(routing.dedupe(arrivals))))
        if not backend.capabilities.dispatches:
            fresh += committed.fired
        arrivals = []
        skips: dict[str, Any] = {}
        for key in committed.skipped:  # dead paths in the new generation, as the engine's cascade decides them
            visit_text, _, node_id = key.partition(":")
            skips[entry_key(node_id, int(visit_text))] = timeline_entry(node_id, int(visit_text), "skipped", [],
                                                                        time.time())
            probe = Job(run_id, record.blueprint_id, node_id, visit=int(visit_text), version=record.version)
            arrivals += routing.skip_arrivals(graph, probe, node_id, int(visit_text))
        if skips:
            await backend.context.apply(run_id, skips)

    # the old generation never runs again
    for held in parked:
        await coordination.unpark(run_id, held.job.key, held.job)
    last = None
    for held in (*pending, *parked):
        last = await coordination.commit(Transition(run_id, held.job.key, finish=True))
    if last is not None and last.pending == 0:
        # a dispatching store queued the rerun as it was inserted, and a worker ran all of it meanwhile: its last
        # commit still counted the old jobs pending and did not end the run, so a worker must (the finish job
        # the reconciler sends a run whose work is all done)
        await backend.queue.enqueue([finish_job(record)])

    await routing.enqueue_due(backend.queue, fresh)
    await control._emit("run:retry", run_id, record.blueprint_id, from_node,
                        {"generation": generation, "nodes": sorted(roots)})
    return generation


def _latest_entries(context: Mapping[str, Any]) -> dict[str, tuple[int, Mapping[str, Any]]]:
    """Per node, its latest timeline entry (highest visit) and that visit."""
    latest: dict[str, tuple[int, Mapping[str, Any]]] = {}
    for key, value in context.items():
        if key.startswith(TIMELINE_PREFIX) and isinstance(value, Mapping) and "node_id" in value:
            node_id, visit = str(value["node_id"]), int(value.get("visit", 0))
            if node_id not in latest or visit > latest[node_id][0]:
                latest[node_id] = (visit, value)
    return latest


def _reachable(graph: Graph, roots: set[str]) -> set[str]:
    found = set(roots)
    todo = list(roots)
    while todo:
        for edge in graph.info(todo.pop()).out_edges:
            if edge.edge.target not in found:
                found.add(edge.edge.target)
                todo.append(edge.edge.target)
    return found


def _arrivals_into(graph: Graph, record: RunRecord, area: set[str],
                   entries: Mapping[str, tuple[int, Mapping[str, Any]]], context: Mapping[str, Any], base: int,
                   max_iterations: int) -> list[Arrival]:
    """The arrivals and skips that finished nodes outside ``area`` send into it, at generation ``base``."""
    names: dict[str, Any] = {k[len(OUTPUTS_PREFIX):]: v for k, v in context.items() if k.startswith(OUTPUTS_PREFIX)}
    names["context"] = dict(context)
    arrivals: list[Arrival] = []
    for node_id, info in graph.nodes.items():
        if node_id in area or node_id not in entries or not any(e.edge.target in area for e in info.out_edges):
            continue
        visit, entry = entries[node_id]
        job = Job(record.run_id, record.blueprint_id, node_id, visit=base + loop_visit(visit),
                  version=record.version)
        if entry.get("state") == "done":
            output = context.get(OUTPUTS_PREFIX + node_id)
            action = entry.get("action")
            completion = Completion(node_id, output=output, action=action if isinstance(action, str) else None)
            sent = routing.completion_arrivals(graph, job, completion,
                                               {**names, "input": None,
                                                "result": {"output": output, "action": completion.action}},
                                               max(max_iterations, loop_visit(visit) + 1))
        elif entry.get("state") == "skipped":
            sent = routing.skip_arrivals(graph, job, node_id, job.visit)
        else:
            continue
        arrivals += [a for a in sent if a.job.node_id in area]
    return arrivals

