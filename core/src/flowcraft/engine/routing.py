"""Routing as pure functions (docs/architecture.md §5): which out-edges a completion takes, the skips that
travel down the untaken ones (dead-path elimination), where a loop goes on or ends.

Nothing here reads or writes a store: the engine evaluates expressions against names it has read and hands
them in, then commits the arrivals these functions return.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flowcraft.engine.events import carried
from flowcraft.engine.graph import CompiledEdge, Graph, loop_visit
from flowcraft.errors import FlowcraftError
from flowcraft.spi import Arrival, Completion, Job, Queue


@dataclass(frozen=True, slots=True, kw_only=True)
class EdgeChoice:
    """What a completion sends to one target: over ``edge``, an arrival (``taken``) or a skip."""

    edge: CompiledEdge
    taken: bool


def taken_edges(out_edges: Sequence[CompiledEdge], action: str | None,
                holds: Callable[[CompiledEdge], bool]) -> list[CompiledEdge]:
    """The edges a completion takes: those labelled with its ``action`` whose condition holds; when there
    are none (or no action), the unlabelled (default) edges whose condition holds. ``holds`` is asked only
    about edges with a condition, and only about the edges it must decide on."""

    def passes(edge: CompiledEdge) -> bool:
        return edge.condition is None or holds(edge)

    taken: list[CompiledEdge] = []
    if action is not None:
        taken = [e for e in out_edges if e.edge.action == action and passes(e)]
    if not taken:
        taken = [e for e in out_edges if e.edge.action is None and passes(e)]
    return taken


def edge_choices(out_edges: Sequence[CompiledEdge], taken: Sequence[CompiledEdge]) -> list[EdgeChoice]:
    """One choice per target, in the order targets first appear among ``out_edges``: the first taken edge
    to it, else a skip over its first edge. No skip travels back over a back edge (a loop that is not
    continued simply ends), nor over a loop exit while the loop goes on (a later iteration decides it)."""
    by_target: dict[str, list[CompiledEdge]] = {}
    for edge in out_edges:
        by_target.setdefault(edge.edge.target, []).append(edge)
    taken_ids = {id(e) for e in taken}
    continues_loop = any(e.within_cycle for e in taken)
    choices = []
    for edges in by_target.values():
        took = [e for e in edges if id(e) in taken_ids]
        if took:
            choices.append(EdgeChoice(edge=took[0], taken=True))
        elif not (edges[0].is_back or (edges[0].leaves_cycle and continues_loop)):
            choices.append(EdgeChoice(edge=edges[0], taken=False))
    return choices


def arrival(graph: Graph, job: Job, source: str, visit: int, edge: CompiledEdge, *, arrived: bool,
            contribution: Any, due_at: float | None = None) -> Arrival:
    """``source`` at ``visit`` reaching ``edge``'s target: its join waits for the target's back or forward
    predecessors (by the edge's kind); a target with one predecessor gets the contribution as its input."""
    target = graph.nodes[edge.edge.target]
    expected = target.back_preds if edge.is_back else target.forward_preds
    single = len(expected) <= 1
    target_job = Job._of(job.run_id, job.blueprint_id, target.node.id, graph.target_visit(source, visit, edge), 1, None,
                         job.version, contribution if single else None, single, due_at,
                         carried(job.payload) if job.payload else None, 0)
    return Arrival._of(target_job, source, arrived, contribution, expected, target.node.config.join_strategy)


def completion_arrivals(graph: Graph, job: Job, completion: Completion, names: Mapping[str, Any],
                        max_iterations: int) -> list[Arrival]:
    """The arrivals and skips of ``job``'s completion. ``names`` are what conditions and transforms see
    (``result`` included; may be empty when no out-edge has either). A taken edge's transform
    computes its contribution (``input`` = the output). Raises FlowcraftError when a back edge would
    start a visit beyond ``max_iterations``."""

    info = graph.nodes[job.node_id]
    out_edges = info.out_edges
    if info.plain_edges:  # every edge taken, nothing to evaluate
        choices: Iterable[tuple[CompiledEdge, bool]] = [(edge, True) for edge in out_edges]
    else:
        def holds(edge: CompiledEdge) -> bool:
            return edge.condition is None or bool(edge.condition.evaluate(names))

        choices = ((choice.edge, choice.taken)
                   for choice in edge_choices(out_edges, taken_edges(out_edges, completion.action, holds)))
    arrivals = []
    for edge, taken in choices:
        contribution = completion.output
        if taken and edge.transform is not None:
            contribution = edge.transform.evaluate({**names, "input": completion.output})
        reached = arrival(graph, job, job.node_id, job.visit, edge, arrived=taken, contribution=contribution,
                          due_at=completion.due_at)
        if loop_visit(reached.job.visit) > max_iterations:
            raise FlowcraftError(
                f"loop at node {reached.job.node_id!r} exceeded {max_iterations} iterations",
                hint="check the loop condition or raise metadata.maxIterations",
            )
        arrivals.append(reached)
    return arrivals


def skip_arrivals(graph: Graph, job: Job, node_id: str, visit: int) -> list[Arrival]:
    """The skips a skipped node sends on over its forward edges (a skip never travels a back edge)."""
    return [arrival(graph, job, node_id, visit, edge, arrived=False, contribution=None)
            for edge in graph.info(node_id).out_edges if not edge.is_back]


def dedupe(arrivals: Sequence[Arrival]) -> list[Arrival]:
    """The arrivals without repeats of one (target job, member) pair, first kept."""
    seen: set[tuple[str, str]] = set()
    out = []
    for candidate in arrivals:
        key = (candidate.target_key, candidate.member)
        if key not in seen:
            seen.add(key)
            out.append(candidate)
    return out


async def enqueue_due(queue: Queue, jobs: Sequence[Job]) -> None:
    """Put jobs on the queue: those due now in one call, a job due later with its delay."""
    now = time.time()
    immediate = [job for job in jobs if job.due_at is None or job.due_at <= now]
    if immediate:
        await queue.enqueue(immediate)
    for job in jobs:
        if job.due_at is not None and job.due_at > now:
            await queue.enqueue([job], job.due_at - now)
