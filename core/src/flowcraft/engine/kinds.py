"""Node kinds: what the engine does with a node whose ``uses`` names a kind instead of an implementation.

A kind is one of two things, a class carrying the ``uses`` name it is selected by. Plugins register kind
classes through the ``flowcraft_node_kinds`` hook (``flowcraft.hookspecs``), and the built-ins below go through
that same hook (``flowcraft.backends.builtin``); an application may also register an instance in its own
process with ``register_node_kind``:

* an ``InlineKind`` computes the node's result in place of an implementation (``compute(node, ctx)``); the
  engine runs it like any node: events, timeout, retries, fallback. ``sleep`` and ``loop-controller``.
* a ``JobKind`` takes the node's job over (``run(ctx)``): it parks it, starts a child run, fans out. It
  returns a ``NodeOutcome``: ``completed`` (the engine records and routes it), ``failed`` (the run fails),
  ``retry_scheduled`` or ``settled`` (nothing left to do). A kind whose jobs record placeholder completions
  overrides ``recover`` to redo such a transition itself on redelivery. ``wait``, ``subflow``, ``map``.

A ``JobKind`` works through its ``KindContext``: the job, its node, the run record, the backend, and the
engine operations a transition needs (route, commit, dispatch, park, fail).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flowcraft.engine.events import carried
from flowcraft.engine.outcome import NodeOutcome
from flowcraft.errors import ConfigError, FlowcraftError
from flowcraft.model import NodeDefinition, parse_duration
from flowcraft.nodes.base import NodeContext, RunContext
from flowcraft.spi import ACTIVE_STATUSES, Arrival, Backend, Committed, Completion, Delivery, Job, RunRecord, Transition

if TYPE_CHECKING:
    from flowcraft.app import App
    from flowcraft.engine.core import Engine
    from flowcraft.engine.graph import Graph
    from flowcraft.plugins import PluginRegistry

GATHER_ITEM = -1  # item index of a map node's gather job
OUTPUTS_PREFIX = "_outputs."


class InlineKind:
    """A kind computed in place of an implementation; the engine applies the node's retry policy."""

    #: the ``uses`` name nodes select this kind by (what the ``flowcraft_node_kinds`` hook registers it under)
    uses: str = ""

    async def compute(self, node: NodeDefinition, ctx: NodeContext) -> NodeOutcome:
        """The node's result: ``NodeOutcome.completed(output, action, due_at=...)``; raise to fail the attempt.
        ``node`` is the node computed (a fallback node when the engine runs one), ``ctx`` its context."""
        raise NotImplementedError


class JobKind:
    """A kind that handles its node's jobs itself (every item job of the node included)."""

    #: the ``uses`` name nodes select this kind by (what the ``flowcraft_node_kinds`` hook registers it under)
    uses: str = ""

    async def run(self, ctx: KindContext) -> NodeOutcome:
        raise NotImplementedError

    async def recover(self, ctx: KindContext, completion: Completion) -> bool:
        """A delivery found the job's completion record: redo its transition and return True, or return
        False (the default) to have the engine route ``completion`` as the first delivery did."""
        return False


NodeKind = InlineKind | JobKind

_LOCAL_KINDS: dict[str, NodeKind] = {}  # registered in this process by register_node_kind


def register_node_kind(uses: str, kind: NodeKind) -> None:
    """Make ``uses`` a node kind in this process (a plugin registers kind classes through the
    ``flowcraft_node_kinds`` hook instead, so every worker that installs it has them); a name is registered once."""
    if not isinstance(kind, InlineKind | JobKind):
        raise ConfigError(f"node kind {uses!r} is a {type(kind).__name__}",
                          hint="subclass flowcraft.engine.kinds.InlineKind or JobKind")
    existing = node_kind(uses)
    if existing is not None:
        raise ConfigError(f"node kind {uses!r} is already registered ({type(existing).__name__})",
                          hint="choose another uses name")
    _LOCAL_KINDS[uses] = kind


def node_kind(uses: str) -> NodeKind | None:
    """The kind nodes with this ``uses`` run as, or None (the node runs an implementation)."""
    kind = _LOCAL_KINDS.get(uses)
    if kind is not None:
        return kind
    current = _current_registry if _current_registry is not None else _import_current_registry()
    return current().node_kinds().get(uses)


#: ``flowcraft.plugins.current_registry`` once imported: the engine asks ``node_kind`` for every job, and an
#: ``import`` statement in the function cost ~2 us a call (the registry imports the built-in kinds from here, so
#: this module cannot import it at its top)
_current_registry: Callable[[], PluginRegistry] | None = None


def _import_current_registry() -> Callable[[], PluginRegistry]:
    global _current_registry
    from flowcraft.plugins import current_registry

    _current_registry = current_registry
    return current_registry


@dataclass(frozen=True, slots=True, kw_only=True)
class KindContext:
    """One delivery of a job of a ``JobKind`` node. ``context`` buffers the node's context writes; they are
    committed with its completion record."""

    delivery: Delivery
    job: Job
    node: NodeDefinition
    graph: Graph
    record: RunRecord
    context: RunContext
    engine: Engine

    @property
    def app(self) -> App:
        return self.engine.app

    @property
    def backend(self) -> Backend:
        return self.engine.backend

    async def input(self) -> Any:
        """The node's input: its ``inputs`` mapping resolved, else what its predecessors sent."""
        return await self.engine._node_input(self.job, self.node)

    async def emit(self, name: str, data: dict[str, Any]) -> None:
        await self.engine._emit(name, self.job.run_id, self.job.blueprint_id, self.job.node_id, data)

    async def fail(self, message: str, hint: str = "") -> None:
        """Fail the run with ``message`` (and ``hint``), naming this node."""
        await self.engine.runs.fail(self.record, self.job.node_id, message, hint)

    async def after_error(self, error: BaseException) -> NodeOutcome:
        """The node's retry policy applied to ``error``: a retry scheduled, its fallback's result, or failed."""
        node_context = self.engine._node_context(self.job, self.node, self.context, None)
        return await self.engine._after_error(self.job, self.node, node_context, error)

    async def attempt(self, uses: str) -> NodeOutcome:
        """Run the job once as a node with implementation ``uses`` (events, timeout, retry policy); settled
        when the run was cancelled while it ran."""
        return await self.engine._attempt(self.delivery, self.job, self.node, self.graph, self.context, uses)

    async def park(self) -> None:
        """Park the job until ``resume``; the run goes awaiting when nothing else is pending."""
        committed = await self.backend.coordination.park(self.job.run_id, self.job.key)
        await self.engine._after_finish(self.record, committed)

    def completion(self, output: Any, action: str | None = None) -> Completion:
        """A completion record of this job with the context writes buffered so far."""
        return self.engine._completion(self.job, output, action, self.context)

    async def route(self, completion: Completion) -> None:
        """Commit ``completion`` and route it: successors fire, untaken edges send skips."""
        await self.engine._route(self.job, self.graph, self.record, completion, recovery=False)

    async def commit(self, completion: Completion, arrivals: Sequence[Arrival], *, recovery: bool) -> Committed:
        """Commit a transition that finishes this job: its completion record and ``arrivals`` (what fired is
        in ``Committed.fired``; another attempt's record in ``Committed.conflict``)."""
        return await self.engine._commit(self.job, Transition(self.job.run_id, self.job.key, completion=completion,
                                                              arrivals=tuple(arrivals), finish=True, recovery=recovery))

    async def dispatch(self, committed: Committed) -> None:
        """Enqueue the jobs a commit fired (unless the store enqueued them itself)."""
        await self.engine._dispatch(committed)

    async def after_finish(self, committed: Committed) -> None:
        """Publish the run's final status when the commit left nothing pending."""
        await self.engine._after_finish(self.record, committed)

    def token(self) -> str:
        return self.engine._token()


# ---------------------------------------------------------------------- built-in kinds
class SleepKind(InlineKind):
    """A durable timer: the node passes its input on and its successors are due ``duration`` later."""

    uses = "sleep"

    async def compute(self, node: NodeDefinition, ctx: NodeContext) -> NodeOutcome:
        return NodeOutcome.completed(ctx.input, due_at=time.time() + sleep_seconds(node))


class LoopControllerKind(InlineKind):
    """``continue`` while ``params.condition`` holds (over node outputs, context, input, visit), else ``break``."""

    uses = "loop-controller"

    async def compute(self, node: NodeDefinition, ctx: NodeContext) -> NodeOutcome:
        condition = node.params.get("condition")
        if not condition:
            return NodeOutcome.completed(ctx.input, "break")
        from flowcraft.expressions import compile_expression

        context = await ctx.context.to_dict()
        names = {k[len(OUTPUTS_PREFIX):]: v for k, v in context.items() if k.startswith(OUTPUTS_PREFIX)}
        names.update({"context": context, "input": ctx.input, "visit": ctx.visit, "iteration": ctx.visit + 1})
        holds = compile_expression(str(condition)).evaluate(names)
        return NodeOutcome.completed(ctx.input, "continue" if holds else "break")


class WaitKind(JobKind):
    """Park the run until ``resume(action, output)``; the resumed job completes with them."""

    uses = "wait"

    async def run(self, ctx: KindContext) -> NodeOutcome:
        job = ctx.job
        resume = (job.payload or {}).get("resume")
        if resume is None:
            # a delivery from before the resume (its worker parked the wait and died before the ack) must
            # not park the wait again: the resume is in the job's stored document
            pending = await ctx.backend.coordination.jobs(job.run_id, "pending")
            stored = [p.job for p in pending if p.job.key == job.key]
            resume = (stored[0].payload or {}).get("resume") if stored else None
        if resume is None:
            await ctx.park()
            return NodeOutcome.settled()
        output = resume.get("output")
        await ctx.emit("node:finish", {"output": output})
        return NodeOutcome.completed(output, resume.get("action"))


class SubflowKind(JobKind):
    """Run ``params.blueprintId`` as a child run; the child notifies this job when it ends."""

    uses = "subflow"

    async def run(self, ctx: KindContext) -> NodeOutcome:
        job, params, status = ctx.job, ctx.node.params, ctx.backend.status
        child_blueprint = str(params.get("blueprintId", ""))
        child_id = f"{job.run_id}/{job.node_id}#{job.visit}.{job.attempt}"
        child = await status.get(child_id)
        if child is None:
            await self._start_child(ctx, child_blueprint, child_id)
            return NodeOutcome.settled()
        if child.status == "running" and await ctx.backend.coordination.activity(child_id) is None:
            await self._start_child(ctx, child_blueprint, child_id)  # its start died before its first jobs
            return NodeOutcome.settled()
        if child.status in ACTIVE_STATUSES:
            if child.status == "awaiting":
                await ctx.engine.runs.reflect_on_parent(child, "awaiting")
            return NodeOutcome.settled()  # the child notifies this job when it ends
        if child.status == "completed":
            child_context = await ctx.backend.context.get_all(child_id)  # with its _outputs.*, _result keys
            for parent_key, child_key in (params.get("outputs") or {}).items():
                await ctx.context.set(parent_key, child_context.get(child_key))
            output = child_context.get("_result")
            await ctx.emit("node:finish", {"output": output})
            return NodeOutcome.completed(output)
        message = "; ".join(e.get("message", "") for e in child.errors) or child.status
        if len(message) > 600:  # nested subflows quote each other: keep the outermost and the root cause
            message = f"{message[:200]} ... {message[-400:]}"
        return await ctx.after_error(
            FlowcraftError(f"subflow {child_blueprint!r} run {child_id!r} {child.status}: {message}"))

    async def _start_child(self, ctx: KindContext, child_blueprint: str, child_id: str) -> None:
        job, params, app = ctx.job, ctx.node.params, ctx.app
        depth = int((ctx.record.parent or {}).get("depth", 0)) + 1  # how deep the child run would be nested
        if depth > app.max_subflow_depth:
            await ctx.fail(f"subflow {child_blueprint!r} would be nested {depth} runs deep, more than "
                           f"max_subflow_depth {app.max_subflow_depth}",
                           hint="a blueprint that runs itself through subflows needs a condition that stops it; "
                           "`flowcraft lint` reports SUBFLOW_RECURSION")
            return
        child_context: dict[str, Any] = {}
        input_map = params.get("inputs") or {}
        if input_map:
            parent_values = await ctx.backend.context.get_many(job.run_id, list(input_map.values()))
            child_context = {k: parent_values[v] for k, v in input_map.items() if v in parent_values}
        input_value = await ctx.input()
        await ctx.backend.context.apply(job.run_id, {f"_subflow.{job.node_id}.{job.visit}": child_id})
        parent = {"run_id": job.run_id, "blueprint_id": job.blueprint_id, "node_id": job.node_id,
                  "visit": job.visit, "attempt": job.attempt, "version": job.version, "depth": depth,
                  **(carried(job.payload) or {})}  # its trace, for the child's start and this job's redelivery
        try:
            await ctx.engine.runs.start(child_blueprint, input_value, run_id=child_id, context=child_context,
                                   parent=parent)
        except FlowcraftError as exc:
            await ctx.fail(f"subflow {child_blueprint!r} could not start: {exc}")


class MapKind(JobKind):
    """Run ``params.worker`` over the node's list in chunks of ``chunkSize`` items, at most
    ``maxConcurrency`` chunks at a time; a gather job routes the list of outputs.

    The fan-out job and each chunk job record placeholder completions (the fan-out's ``None``, a chunk's
    outputs): redelivered, they re-fire exactly the chunks and the gather arrival they fired, and never route
    the node's successors, which only the gather job does with the gathered result."""

    uses = "map"

    async def run(self, ctx: KindContext) -> NodeOutcome:
        if ctx.job.item == GATHER_ITEM:
            return await self._gather(ctx)
        if ctx.job.item is None:
            return await self._fan_out(ctx)
        outcome = await ctx.attempt(str(ctx.node.params.get("worker", "")))
        if outcome.state == "completed":
            ctx.engine._fault("after_execute")
            await self._complete_chunk(ctx, outcome.output)
            return NodeOutcome.settled()
        if outcome.error is not None and ctx.node.params.get("collectErrors"):
            chunk = ctx.job.input if isinstance(ctx.job.input, list) else [ctx.job.input]
            await self._complete_chunk(ctx, [{"error": describe(outcome.error)} for _ in chunk])
            return NodeOutcome.settled()
        return outcome

    async def recover(self, ctx: KindContext, completion: Completion) -> bool:
        if ctx.job.item is not None and ctx.job.item != GATHER_ITEM:
            await self._complete_chunk(ctx, completion.output, completion)
            return True
        if ctx.job.item is None and completion.output is None:
            await self._fan_out(ctx, completion)
            return True
        return False

    async def _fan_out(self, ctx: KindContext, completion: Completion | None = None) -> NodeOutcome:
        """Fan the list out in chunks (lanes of at most maxConcurrency chunks each); with the fan-out's
        stored ``completion`` this is a recovery that re-fires the same chunk jobs."""
        job, params = ctx.job, ctx.node.params
        items = await ctx.input()
        if not isinstance(items, list):
            await ctx.fail(f"map node {job.node_id!r} needs a list as input, got {type(items).__name__}")
            return NodeOutcome.settled()
        if not items:
            await ctx.route(ctx.completion([]))
            return NodeOutcome.settled()
        size = max(1, int(params.get("chunkSize") or 1))
        chunks = [items[i : i + size] for i in range(0, len(items), size)]
        lanes = min(len(chunks), max(1, int(params.get("maxConcurrency") or len(chunks))))
        arrivals = []
        for lane in range(lanes):
            rest = [[index, chunks[index]] for index in range(lane + lanes, len(chunks), lanes)]
            chunk_job = Job(job.run_id, job.blueprint_id, job.node_id, visit=job.visit, item=lane,
                            version=job.version, input=chunks[lane], has_input=True,
                            payload={**(carried(job.payload) or {}), "lane": rest, "chunks": len(chunks)})
            arrivals.append(Arrival(chunk_job, job.node_id, arrived=True, contribution=chunks[lane],
                                    expected=(job.node_id,)))
        recovery = completion is not None
        completion = completion or ctx.completion(None)
        committed = await ctx.commit(completion, arrivals, recovery=recovery)
        if committed.conflict is not None:  # another attempt fanned out first: re-fire exactly its chunks
            return await self._fan_out(ctx, committed.conflict)
        await ctx.dispatch(committed)
        return NodeOutcome.settled()

    async def _complete_chunk(self, ctx: KindContext, outputs: Any, completion: Completion | None = None) -> None:
        """Record one chunk's outputs as an arrival at the gather and fire the next chunk of its lane;
        with the chunk's stored ``completion`` this is a recovery that re-fires what it fired."""
        job = ctx.job
        payload = dict(job.payload or {})
        count = int(payload.get("chunks", 1))
        gather = Job(job.run_id, job.blueprint_id, job.node_id, visit=job.visit, item=GATHER_ITEM,
                     version=job.version, payload=carried(job.payload))
        arrivals = [Arrival(gather, str(job.item), arrived=True, contribution=outputs,
                            expected=tuple(str(i) for i in range(count)))]
        rest = payload.get("lane") or []
        if rest:
            index, chunk = rest[0]
            follow = Job(job.run_id, job.blueprint_id, job.node_id, visit=job.visit, item=int(index),
                         version=job.version, input=chunk, has_input=True,
                         payload={**(carried(job.payload) or {}), "lane": rest[1:], "chunks": count})
            arrivals.append(Arrival(follow, f"lane:{job.item}", arrived=True, contribution=chunk, expected=("lane",)))
        recovery = completion is not None
        completion = completion or Completion(job.node_id, output=outputs, token=ctx.token())
        committed = await ctx.commit(completion, arrivals, recovery=recovery)
        if committed.conflict is not None:  # another attempt of this chunk committed first: redo its transition
            await self._complete_chunk(ctx, committed.conflict.output, committed.conflict)
            return
        await ctx.dispatch(committed)
        await ctx.after_finish(committed)

    async def _gather(self, ctx: KindContext) -> NodeOutcome:
        by_chunk: Mapping[str, Any] = ctx.job.input if isinstance(ctx.job.input, dict) else {}
        output: list[Any] = []
        for index in sorted(by_chunk, key=int):
            output.extend(by_chunk[index])
        await ctx.emit("node:finish", {"output": output})
        return NodeOutcome.completed(output)


def sleep_seconds(node: NodeDefinition) -> float:
    duration = node.params.get("duration", 0)
    if isinstance(duration, int | float) and not isinstance(duration, bool) and node.params.get("unit") != "s":
        return float(duration) / 1000.0  # TypeScript Flowcraft: a number is milliseconds
    return parse_duration(duration, f"sleep node {node.id!r} duration")


def describe(error: BaseException) -> str:
    """An error as one line for the run record: a Flowcraft error's own message, else its type and text."""
    if isinstance(error, FlowcraftError):
        return str(error)
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


#: the built-in kinds, registered by ``flowcraft.backends.builtin`` through the ``flowcraft_node_kinds`` hook
BUILTIN_KINDS: tuple[type[InlineKind] | type[JobKind], ...] = (SleepKind, LoopControllerKind, WaitKind, SubflowKind,
                                                               MapKind)
