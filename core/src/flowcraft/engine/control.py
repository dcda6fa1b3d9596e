"""Run control: what a client does to runs (start, resume, cancel, read the result), and the run-level
status changes the engine shares with it (fail a run, tell a parent run about its child)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flowcraft.app import App
from flowcraft.engine.events import TRACE_PAYLOAD, Event, EventBus, carried
from flowcraft.engine.graph import Graph
from flowcraft.engine.guards import context_problem, json_problem
from flowcraft.engine.kinds import OUTPUTS_PREFIX
from flowcraft.engine.timeline import NodeVisit, dead_letter_flags, public_context, read_timeline
from flowcraft.errors import FlowcraftError, InvalidStateError, InvalidValueError, RunNotFoundError
from flowcraft.spi import ACTIVE_STATUSES, FINAL_STATUSES, Backend, Job, RunRecord


@dataclass(slots=True)
class RunResult:
    """A run's outcome as returned by ``FlowRuntime.run``, ``Client.wait`` and ``Client.status``.

    ``output``: the output of the run's last terminal node(s), one value or a dict when several finished
    (None until the run completes). ``outputs``: every node's output by node id. ``context``: the run's
    context without the engine's own keys (``_outputs.*``, ``_result``, ``_timeline.*``). ``timeline``: per
    node and visit, its state and attempts (``flowcraft.engine.timeline.NodeVisit``). ``dead_letters``: jobs of
    the run the queue dead-lettered and that did not finish since (``node_id``, ``visit``, ``reason``, ``at``).
    A run whose job was dead-lettered because no worker loads its blueprint stays ``running`` with this flag:
    deploy a worker that has it and replay the job (``flowcraft dead-letters --replay``); a job that failed
    its run is dead-lettered with the run ``failed`` and the same reason in ``errors``.
    """

    run_id: str
    blueprint_id: str
    status: str
    outputs: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    awaiting: list[dict[str, Any]] = field(default_factory=list)
    output: Any = None
    timeline: list[NodeVisit] = field(default_factory=list)
    created_at: float = 0.0
    updated_at: float = 0.0
    dead_letters: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every field, the timeline as a list of ``NodeVisit.to_dict()``."""
        return {"run_id": self.run_id, "blueprint_id": self.blueprint_id, "status": self.status,
                "output": self.output, "outputs": self.outputs, "context": self.context, "errors": self.errors,
                "awaiting": self.awaiting, "timeline": [visit.to_dict() for visit in self.timeline],
                "created_at": self.created_at, "updated_at": self.updated_at, "dead_letters": self.dead_letters}


class RunControl:
    """Start, resume, cancel and read runs on ``backend``. ``on_cancel(run_id)`` is called when this
    control cancels or fails a run (an engine in this process stops that run's nodes at once)."""

    def __init__(self, app: App, backend: Backend, events: EventBus,
                 on_cancel: Callable[[str], None] | None = None) -> None:
        self.app = app
        self.backend = backend
        self.events = events
        self._on_cancel = on_cancel

    async def start(
        self,
        blueprint_id: str,
        input: Any = None,
        *,
        run_id: str | None = None,
        context: Mapping[str, Any] | None = None,
        parent: Mapping[str, Any] | None = None,
    ) -> str:
        graph = graph_or_raise(self.app, blueprint_id)
        problem = json_problem(input, "the run input") or context_problem(context or {}, "the run context")
        if problem is not None:  # refused before anything is written: no half-created run
            raise InvalidValueError(problem, hint="pass JSON values: dicts with string keys, lists, strings, "
                                                  "numbers, booleans, None")
        version = self.app.version(blueprint_id)
        run_id = run_id or uuid.uuid4().hex
        record = RunRecord(run_id, blueprint_id, status="running", version=version,
                           blueprint_hash=self.app.content_hash(blueprint_id), input=input,
                           parent=dict(parent) if parent else None)
        status, coordination = self.backend.status, self.backend.coordination
        jobs: list[Job] | None = None
        # one store step when the backend can (``Capabilities.starts``); not with an initial context (written
        # between the record and the jobs), nor for a child run whose start jobs carry a trace (a carrier opens a
        # span, which a re-delivered subflow start must not: the 3 steps below open it only once the record is new)
        if (self.backend.capabilities.starts and not context and graph.start_nodes
                and (parent is None or not self.events.carriers)):
            jobs = self._start_jobs(graph, run_id, blueprint_id, version, input, parent)
            if await coordination.start(record, jobs):
                await self._emit("run:start", run_id, blueprint_id, data={"input": input})
                return run_id
            created = False  # a run with this id exists: as when ``status.create`` refuses
        else:
            created = await status.create(record)
        if not created:
            existing = await status.get(run_id)
            if parent is None or existing is None:
                raise InvalidStateError(f"a run with id {run_id!r} already exists", hint="use another run id")
            if existing.status != "running" or await coordination.activity(run_id) is not None:
                return run_id  # a re-delivered subflow start: the child already started
            # the first start of this child died between its record and its first jobs: finish it (each step
            # below is idempotent)
        if context:
            await self.backend.context.apply(run_id, dict(context))
        if jobs is None:
            jobs = self._start_jobs(graph, run_id, blueprint_id, version, input, parent)
        if not jobs:
            await self.fail(record, None, "blueprint has no start node", hint="add a node without incoming edges")
            return run_id
        inserted = await coordination.schedule(run_id, jobs)
        await self.backend.queue.enqueue(inserted)
        await self._emit("run:start", run_id, blueprint_id, data={"input": input})
        return run_id

    def _start_jobs(self, graph: Graph, run_id: str, blueprint_id: str, version: str | None, input: Any,
                    parent: Mapping[str, Any] | None) -> list[Job]:
        """A new run's first jobs: one per start node, with the trace a job carrier gives (a child run's: under
        the one its subflow node's job carried)."""
        parent_trace = parent.get(TRACE_PAYLOAD) if parent else None  # what the subflow node's job carried
        payload = self.events.carry(run_id, blueprint_id, parent_trace) if self.events.carriers else None
        return [Job(run_id, blueprint_id, node_id, version=version, input=input, has_input=True, payload=payload)
                for node_id in graph.start_nodes]

    async def resume(
        self, run_id: str, action: str | None = None, output: Any = None, node_id: str | None = None
    ) -> None:
        problem = json_problem(output, "the resume output")
        if problem is not None:
            raise InvalidValueError(problem, hint="pass a JSON value: a dict with string keys, a list, a string, "
                                                  "a number, a boolean or None")
        record = await self._record_or_raise(run_id)
        if record.status in FINAL_STATUSES:
            raise InvalidStateError(f"run {run_id!r} is {record.status}; only awaiting runs can be resumed")
        parked = [p.job for p in await self.backend.coordination.jobs(run_id, "parked")]
        if node_id is not None:
            parked = [job for job in parked if job.node_id == node_id]
        if not parked:
            child = _awaiting_child(record, node_id)
            if child is not None:
                await self.resume(child, action, output, None)
                return
            waiting_for = f" node {node_id!r}" if node_id else " any node"
            raise InvalidStateError(f"run {run_id!r} is not awaiting{waiting_for}",
                                    hint="check `flowcraft status` for what it waits for")
        if len(parked) > 1:
            names = ", ".join(sorted(job.node_id for job in parked))
            raise InvalidStateError(f"run {run_id!r} awaits several nodes ({names})", hint="pass node_id")
        job = parked[0]
        graph = graph_or_raise(self.app, job.blueprint_id)
        _check_resume_action(graph, job.node_id, action)
        resumed = job.evolve(payload={**(carried(job.payload) or {}),
                                      "resume": {"action": action, "output": output}}, due_at=None)
        if not await self.backend.coordination.unpark(run_id, job.key, resumed):
            raise InvalidStateError(f"node {job.node_id!r} of run {run_id!r} was already resumed")
        await self.backend.status.transition(run_id, ["awaiting"], "running", {"awaiting": []})
        await self.reflect_on_parent(record, "running")
        await self.backend.queue.enqueue([resumed])
        await self._emit("run:resume", run_id, job.blueprint_id, job.node_id, {"action": action})

    async def retry(self, run_id: str, from_node: str | None = None) -> int:
        """Resume a failed run after a fix: rerun ``from_node`` and everything downstream of it (without it:
        the node(s) that failed the run), keeping what finished upstream; a new generation of visits, so the
        timeline keeps the failed attempt too (``flowcraft.engine.retry``). Returns the generation (from 1)."""
        record = await self._record_or_raise(run_id)
        from flowcraft.engine.retry import retry_run

        return await retry_run(self, record, graph_or_raise(self.app, record.blueprint_id), from_node)

    async def cancel(self, run_id: str) -> bool:
        record = await self._record_or_raise(run_id)
        status = self.backend.status
        won = await status.transition(run_id, list(ACTIVE_STATUSES), "cancelled", {}) is not None
        if won:
            self._cancelled(run_id)
            await self._emit("run:finish", run_id, record.blueprint_id, data={"status": "cancelled"})
            for child_id in await self._children(run_id):
                child = await status.get(child_id)
                if child is not None and child.status in ACTIVE_STATUSES:
                    await self.cancel(child_id)
        return won

    async def result(self, run_id: str) -> RunResult:
        return await self.result_of(await self._record_or_raise(run_id))

    async def result_of(self, record: RunRecord) -> RunResult:
        """The result of the run whose record the caller just read (``Client.wait`` has: no second read)."""
        run_id = record.run_id
        context = await self.backend.context.get_all(run_id)
        outputs = {k[len(OUTPUTS_PREFIX):]: v for k, v in context.items() if k.startswith(OUTPUTS_PREFIX)}
        timeline = await read_timeline(self.backend, run_id, record.status, context)
        return RunResult(run_id, record.blueprint_id, record.status, outputs, public_context(context),
                         record.errors, record.awaiting, context.get("_result"), timeline, record.created_at,
                         record.updated_at, dead_letter_flags(context, timeline))

    # ------------------------------------------------------------------ shared with the engine
    async def fail(self, record: RunRecord, node_id: str | None, message: str, hint: str = "") -> None:
        """Move an active run to failed with ``message``; the winner of that change stops its nodes, says so
        and notifies a parent run."""
        error = {"message": message + (f" ({hint})" if hint else ""), "node_id": node_id, "timestamp": time.time()}
        won = await self.backend.status.transition(record.run_id, list(ACTIVE_STATUSES), "failed",
                                                   {"errors": [*record.errors, error]})
        if won is not None:
            self._cancelled(record.run_id)
            await self._emit("run:finish", record.run_id, record.blueprint_id, node_id,
                             {"status": "failed", "error": error["message"]})
            await self.notify_parent(won)

    async def notify_parent(self, child: RunRecord) -> None:
        """A child run ended: deliver its parent's subflow job again, which reads the child's outcome."""
        parent = child.parent
        if not parent:
            return
        job = Job(parent["run_id"], parent["blueprint_id"], parent["node_id"], visit=int(parent["visit"]),
                  attempt=int(parent["attempt"]), version=parent.get("version"),
                  payload={**(carried(parent) or {}), "child": child.run_id})  # the trace the first delivery had
        await self.backend.queue.enqueue([job])

    async def reflect_on_parent(self, child: RunRecord, status: str) -> None:
        """A child run went ``awaiting`` (or back to running): its ancestors follow."""
        parent = child.parent
        if not parent:
            return
        statuses = self.backend.status
        if status == "awaiting":
            details = {"node_id": parent["node_id"], "child_run_id": child.run_id}
            parent_record = await statuses.transition(parent["run_id"], ["running"], "awaiting",
                                                      {"awaiting": [details]})
        else:
            parent_record = await statuses.transition(parent["run_id"], ["awaiting"], "running", {"awaiting": []})
        if parent_record is not None:
            await self.reflect_on_parent(parent_record, status)

    # ------------------------------------------------------------------ helpers
    def _cancelled(self, run_id: str) -> None:
        if self._on_cancel is not None:
            self._on_cancel(run_id)

    async def _children(self, run_id: str) -> list[str]:
        context = await self.backend.context.get_all(run_id)
        return [str(v) for k, v in context.items() if k.startswith("_subflow.")]

    async def _record_or_raise(self, run_id: str) -> RunRecord:
        record = await self.backend.status.get(run_id)
        if record is None:
            raise RunNotFoundError(f"no run with id {run_id!r}", hint="list runs with `flowcraft runs`")
        return record

    async def _emit(self, name: str, run_id: str, blueprint_id: str, node_id: str | None = None,
                    data: dict[str, Any] | None = None) -> None:
        if self.events.active:
            await self.events.emit(Event(name, run_id, blueprint_id, node_id, data or {}))


def graph_or_raise(app: App, blueprint_id: str) -> Graph:
    graph = app.graph(blueprint_id)
    if graph is None:
        known = ", ".join(sorted(app.blueprints)) or "none"
        raise FlowcraftError(f"unknown blueprint {blueprint_id!r}", hint=f"known blueprints: {known}")
    return graph


def _awaiting_child(record: RunRecord, node_id: str | None) -> str | None:
    for entry in record.awaiting:
        if "child_run_id" in entry and (node_id is None or entry.get("node_id") == node_id):
            return str(entry["child_run_id"])
    return None


def _check_resume_action(graph: Graph, node_id: str, action: str | None) -> None:
    edges = graph.info(node_id).out_edges
    if action is None or not edges:
        return
    actions = {e.edge.action for e in edges if e.edge.action is not None}
    has_default = any(e.edge.action is None for e in edges)
    if action not in actions and not has_default:
        raise InvalidStateError(
            f"node {node_id!r} has no edge for action {action!r}",
            hint=f"use one of: {', '.join(sorted(actions))}",
        )
