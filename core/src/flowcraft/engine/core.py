"""The protocol, written once for every backend (docs/architecture.md §3).

Handling a job: read the run record -> take the lease and read the job's state and completion record ->
execute (unless a completion record exists) -> commit the transition (completion record, join arrivals,
successors fired, own job finished) -> apply context -> enqueue what fired -> publish the final status
when nothing is pending -> ack. Every step is safe to repeat after a crash at any point.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import random
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, cast

from flowcraft.app import App
from flowcraft.engine import routing
from flowcraft.engine.control import RunControl, graph_or_raise
from flowcraft.engine.control import RunResult as RunResult  # where callers import it from
from flowcraft.engine.events import TRACE_PAYLOAD, Event, EventBus, Middleware, run_with_middleware
from flowcraft.engine.graph import VISITS_PER_GENERATION, Graph, loop_visit
from flowcraft.engine.guards import (
    DETERMINISTIC_ERRORS,
    JSON_SCALARS,
    context_problem,
    definition_problem,
    json_problem,
)
from flowcraft.engine.kinds import OUTPUTS_PREFIX, InlineKind, JobKind, KindContext, describe, node_kind
from flowcraft.engine.outcome import NodeOutcome
from flowcraft.engine.timeline import (
    ATTEMPTS_PAYLOAD,
    DEAD_LETTER_PREFIX,
    TIMELINE_PREFIX,
    TimelineMark,
    entry_key,
    prior_attempts,
    timeline_entry,
)
from flowcraft.errors import (
    ExpressionError,
    FlowcraftError,
    InvalidValueError,
    NodeTimeoutError,
    StoreLimitError,
)
from flowcraft.model import NodeDefinition
from flowcraft.nodes.base import (
    BaseNode,
    NodeContext,
    NodeResult,
    RunContext,
    call_maybe_async,
    has_own_fallback,
    is_class_node,
)
from flowcraft.plugins import current_registry
from flowcraft.presence import Presence
from flowcraft.reconciler import FINISH_NODE, is_finish_job
from flowcraft.spi import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    Arrival,
    Backend,
    Committed,
    Completion,
    Delivery,
    Job,
    RunEnd,
    RunRecord,
    Transition,
    job_key,
)

log = logging.getLogger("flowcraft.engine")

FINISH_KEY = job_key(FINISH_NODE)
_AsyncNode = Callable[[NodeContext], Awaitable[Any]]


#: while a live worker loads a job's blueprint version, workers without it give the job back for up to this many
#: times ``max_bounces`` deliveries before they dead-letter it (that worker may consume another queue)
LIVE_LOADER_BOUNCES = 4


@dataclass(slots=True)
class EngineOptions:
    """``lease_seconds``: how long a worker owns a job without a sign of life (config ``lease_seconds``).
    The job's lease and the queue visibility are renewed to it every ``lease_seconds / 3``, so a killed
    worker's job is taken over after about ``lease_seconds``."""

    lease_seconds: float = 30.0
    max_bounces: int = 5
    bounce_delay: float = 2.0
    retry_jitter: float = 0.1


class JobTaker(Protocol):
    """What an engine needs of the worker running it to take the jobs a commit hands over
    (``Capabilities.continues``): ``Worker`` is one."""

    def room(self) -> int:
        """How many more jobs the worker can start now, counting the slot of the job that is committing."""
        ...

    def take(self, delivery: Delivery, after: Delivery | None = None) -> None:
        """Start handling a delivery handed over by a commit, as if ``Queue.receive`` had returned it; ``after``:
        the delivery whose handling made that commit (it ends right after)."""
        ...


@dataclass(slots=True)
class _InFlight:
    delivery: Delivery
    ctx: NodeContext  # its cancel event is set when the run is cancelled
    task: asyncio.Task[Any] | None


class Engine:
    """Handles delivered jobs (``handle``) and keeps their leases alive (``heartbeat``): the worker side.
    Node kinds are in ``flowcraft.engine.kinds``, routing in ``flowcraft.engine.routing``; what clients do
    to runs (start, resume, cancel, result) is ``engine.runs``, a ``RunControl`` on the same backend."""

    def __init__(
        self,
        app: App,
        backend: Backend,
        *,
        worker_id: str | None = None,
        options: EngineOptions | None = None,
        events: EventBus | None = None,
        middleware: Sequence[Middleware] = (),
        fault: Any = None,
    ) -> None:
        self.app = app
        self.backend = backend
        self.queue = backend.queue
        self.status = backend.status
        self.context = backend.context
        self.coordination = backend.coordination
        self.worker_id = worker_id or f"w-{uuid.uuid4().hex[:12]}"
        self.options = options or EngineOptions()
        self.events = events or EventBus()
        for name, listener in app.listeners:  # the App's listeners, each once per bus
            if not self.events.has(name, listener):
                self.events.on(name, listener)
        if self.events.hook is None:
            hook = current_registry().manager.hook.flowcraft_event
            if hook.get_hookimpls():
                self.events.hook = hook
        self.middleware = [*app.middleware, *middleware]
        self.fault = fault
        self._fault_raised: BaseException | None = None  # what the fault hook last raised
        self._ends: set[tuple[str, str]] | None = None  # handlings ended during a receive (``watch_ends``)
        self._inflight: dict[tuple[str, str], _InFlight] = {}
        self._cancelled_runs: set[str] = set()
        self._released: set[tuple[str, str]] = set()
        self._handling: dict[tuple[str, str], Delivery] = {}  # (run, job key) -> the delivery being handled now
        self._acked: set[tuple[str, str]] = set()  # deliveries a commit acked (``Capabilities.acks``)
        #: the worker that takes the jobs a commit hands over (``Capabilities.continues``); None: none are
        self.taker: JobTaker | None = None
        #: the task the next ``handle`` call runs in, set by a caller that knows it right before the call (the
        #: worker does); that call takes it (``asyncio.current_task`` costs ~1.5 us a node on Python 3.11)
        self.caller_task: asyncio.Task[Any] | None = None
        self._token_prefix = uuid.uuid4().hex[:16]  # not worker_id: users may reuse names across processes
        self._tokens = itertools.count()  # leases a finishing commit already released
        self._marks: dict[tuple[str, str], TimelineMark] = {}  # (run, job key) -> this attempt's start, error
        self._async_functions: dict[Any, bool] = {}  # implementation -> is a coroutine function
        #: what this engine saw: node attempts that failed, retries scheduled, runs it failed, jobs dead-lettered
        self.counts: dict[str, int] = {"failed_attempts": 0, "retries": 0, "failed_runs": 0, "dead_letters": 0}
        self.runs = RunControl(app, backend, self.events, on_cancel=_cancel_signal(self))  # subflows start runs

    # ------------------------------------------------------------------ worker side
    async def handle(self, delivery: Delivery) -> None:
        """Handle one delivered job; acks, releases or dead-letters it before returning."""
        task, self.caller_task = self.caller_task, None  # (before any await: it is this call's)
        job = delivery.job
        handling = (job.run_id, job.key)
        if self._handling.setdefault(handling, delivery) is not delivery:  # ``claim``
            # another delivery of a job this engine is handling now (a recovery re-fired it while it was
            # pending): the lease is that handling's, so hand this one back until it has finished
            await self.queue.release(delivery, min(1.0, self.options.lease_seconds))
            return
        try:
            checked = self._ready(delivery)
            if checked is None:  # not the common case: the checks that may release, ack or dead-letter it
                checked = await self._preflight(delivery)
            finishing = job.node_id == FINISH_NODE and is_finish_job(job)
            if (checked is None or finishing) and delivery.begin is not None and delivery.begin.lease:
                await self.coordination.release(job.run_id, job.key, self.worker_id)  # a lease prefetched for us
            if checked is None:
                return
            record, graph = checked
            if job.visit >= VISITS_PER_GENERATION:  # a retried run (active again): forget its earlier stop signal
                self._cancelled_runs.discard(job.run_id)
            if finishing:  # from the reconciler: no node to run, only the run's status to publish
                await self._finish(record)
                await self.queue.ack(delivery)
                return
            begin = delivery.begin if delivery.begin is not None else await self.coordination.begin(
                job, self.worker_id, self.options.lease_seconds)
            if not begin.lease:
                await self.queue.release(delivery, min(1.0, self.options.lease_seconds))
                return
            if self.fault is not None:
                self._fault("after_dequeue")
            try:
                if begin.state is None:
                    await self._dead_letter(delivery, f"job {job.key!r} of run {job.run_id!r} was never scheduled")
                    return
                try:
                    if begin.state in ("pending", "done") and begin.completion is not None:
                        await self._recover(delivery, job, graph, record, begin.completion,
                                            finished=begin.state == "done")
                    elif begin.state == "pending":
                        await self._execute(delivery, job, graph, record, task)
                except StoreLimitError as refused:  # every redelivery would be refused alike: fail the run now
                    await self._fail_run(job, record, str(refused))
                    await self._dead_letter(delivery, str(refused))
                    return
                except DETERMINISTIC_ERRORS as error:
                    reason = self._poison_reason(delivery, graph, error)
                    if reason is None:
                        raise  # the worker gives the job back for another try
                    await self._fail_run(job, record, reason)
                    await self._dead_letter(delivery, reason)
                    return
                if self.fault is not None:
                    self._fault("before_ack")
                if handling not in self._acked:
                    await self.queue.ack(delivery)
            finally:
                if handling in self._released:
                    self._released.discard(handling)
                else:
                    await self.coordination.release(job.run_id, job.key, self.worker_id)
        except BaseException as error:
            if handling not in self._acked or error is self._fault_raised:
                raise  # the worker gives the delivery back (a fault hook's "crash" goes up as it is)
            # a commit already acked it with the job's transition: nothing is left to give back or redo
            log.exception("job %s of run %s failed after its transition was committed", job.key, job.run_id)
        finally:
            if self._handling.get(handling) is delivery:  # ``unclaim``
                del self._handling[handling]
            if self._ends is not None:
                self._ends.add(handling)
            self._acked.discard(handling)
            self._marks.pop(handling, None)
            delivery.record = delivery.begin = None  # what was prefetched is stale now: a re-handling reads again

    def claim(self, delivery: Delivery) -> bool:
        """Count ``delivery``'s job as handled by this engine from now on; False while another delivery of the same
        job is. ``handle`` claims; a worker claims as it takes a delivery, before its task starts, so that what was
        prefetched with it (``Delivery.begin``) cannot go stale under another handling of that job here."""
        job = delivery.job
        return self._handling.setdefault((job.run_id, job.key), delivery) is delivery

    def watch_ends(self) -> None:
        """Note the jobs whose handling ends from now until ``fresh`` (a worker calls it as a receive starts)."""
        self._ends = set()

    def fresh(self, deliveries: list[Delivery]) -> list[Delivery]:
        """``deliveries`` as received since ``watch_ends``, without what was prefetched for a job whose handling
        here ended meanwhile (it may predate that handling's commit): the engine reads those itself."""
        ended, self._ends = self._ends, None
        if ended:
            for delivery in deliveries:
                if (delivery.job.run_id, delivery.job.key) in ended:
                    delivery.record = delivery.begin = None
        return deliveries

    def unclaim(self, delivery: Delivery) -> None:
        """Drop a claim of ``delivery`` that no handling will end (its task never started)."""
        handling = (delivery.job.run_id, delivery.job.key)
        if self._handling.get(handling) is delivery:
            del self._handling[handling]

    def _poison_reason(self, delivery: Delivery, graph: Graph, error: Exception) -> str | None:
        """Why a job whose handling raised ``error`` fails its run now, or None to give it another try: a
        blueprint definition the engine cannot run fails at once; any other such error after
        ``options.max_bounces`` deliveries."""
        problem = definition_problem(graph.blueprint)
        if problem is not None:
            return f"{problem} (fix the blueprint and start a new run)"
        if delivery.deliveries < self.options.max_bounces:
            return None
        log.error("job %s of run %s failed on each of %d deliveries", delivery.job.key, delivery.job.run_id,
                  delivery.deliveries, exc_info=error)
        return (f"handling job {delivery.job.key!r} failed on each of {delivery.deliveries} deliveries: "
                f"{describe(error)} (this is a Flowcraft bug: report it with the worker log)")

    def _ready(self, delivery: Delivery) -> tuple[RunRecord, Graph] | None:
        """``_preflight``'s answer without awaiting, when all its checks pass on what was prefetched (the common
        case); None: let ``_preflight`` check."""
        job, record = delivery.job, delivery.record
        if record is None or delivery.begin is None or job.due_at is not None or record.status in FINAL_STATUSES:
            return None
        graph = self.app.graph(job.blueprint_id)
        if graph is None or self.app.version(job.blueprint_id) != (job.version or record.version):
            return None
        return record, graph

    async def _preflight(self, delivery: Delivery) -> tuple[RunRecord, Graph] | None:
        """Checks before taking the lease; None when the delivery was already acked, released or dead-lettered."""
        job = delivery.job
        if job.due_at is not None and job.due_at - time.time() > 0.01:
            await self.queue.release(delivery, job.due_at - time.time())  # early (a capped delay or a requeue)
            return None
        record = delivery.record if delivery.record is not None else await self.status.get(job.run_id)
        if record is None:
            await self._dead_letter(delivery, f"run {job.run_id!r} does not exist", flag=False)
            return None
        if record.status in FINAL_STATUSES:
            await self.queue.ack(delivery)
            return None
        graph = self.app.graph(job.blueprint_id)
        expected_version = job.version or record.version
        loaded = self.app.version(job.blueprint_id)
        if graph is None or loaded != expected_version:
            have = "no such blueprint" if graph is None else f"version {loaded!r}"
            reason = (f"blueprint {job.blueprint_id!r} version {expected_version!r} is not loaded by this worker "
                      f"({have})")
            if delivery.deliveries < self.options.max_bounces:
                await self.queue.release(delivery, self.options.bounce_delay)
            elif delivery.deliveries >= LIVE_LOADER_BOUNCES * self.options.max_bounces:
                await self._dead_letter(delivery, reason + f"; live workers load it but none drew it in "
                                        f"{delivery.deliveries} deliveries: check they consume this queue, then "
                                        "replay the job")
            elif await Presence(self.backend.context).loaded_by_live_worker(job.blueprint_id, expected_version):
                # a live worker that can run it draws it, however often workers without it drew it first
                await self.queue.release(delivery, self.options.bounce_delay)
            else:
                await self._dead_letter(delivery, reason + "; deploy a worker that has it and replay the job")
            return None
        return record, graph

    async def _recover(self, delivery: Delivery, job: Job, graph: Graph, record: RunRecord,
                       completion: Completion, *, finished: bool) -> None:
        """Redo the transition of a job whose completion record exists, exactly as its first delivery did:
        route the completion, unless the node's kind redoes the transition itself (a map's placeholders)."""
        node = graph.info(job.node_id).node
        kind = node_kind(node.uses)
        if isinstance(kind, JobKind) and await kind.recover(
                KindContext(delivery=delivery, job=job, node=node, graph=graph, record=record,
                            context=RunContext(self.context, job.run_id), engine=self), completion):
            return
        if not finished:  # its worker may have died between the completion record and the context (§3.5)
            await self._apply_context_apart(job, completion)
        await self._route(job, graph, record, completion, recovery=True)

    async def heartbeat(self) -> None:
        """Keep leases and queue visibility of in-flight jobs alive; stop nodes of runs that ended."""
        for (run_id, key), inflight in list(self._inflight.items()):
            try:
                await self.coordination.renew(run_id, key, self.worker_id, self.options.lease_seconds)
                await self.queue.extend(inflight.delivery, self.options.lease_seconds)
                record = await self.status.get(run_id)
                if record is not None and record.status in FINAL_STATUSES:
                    self._signal_cancel(run_id)
            except Exception:
                log.exception("heartbeat for %s %s failed", run_id, key)

    # ------------------------------------------------------------------ execution
    async def _execute(self, delivery: Delivery, job: Job, graph: Graph, record: RunRecord,
                       task: asyncio.Task[Any] | None = None) -> None:
        node = graph.nodes[job.node_id].node
        context = RunContext(self.context, job.run_id)
        kind = node_kind(node.uses)
        if isinstance(kind, JobKind):
            self._marks.setdefault((job.run_id, job.key), TimelineMark(time.time()))
            outcome = await kind.run(KindContext(delivery=delivery, job=job, node=node, graph=graph, record=record,
                                                 context=context, engine=self))
        else:
            outcome = await self._attempt(delivery, job, node, graph, context, node.uses, plain=kind is None,
                                          task=task)
            if outcome.state == "completed" and self.fault is not None:
                self._fault("after_execute")
        if outcome.state == "completed":
            completion = self._completion(job, outcome.output, outcome.action, context, due_at=outcome.due_at,
                                          fallback=outcome.fallback)
            await self._route(job, graph, record, completion, recovery=False)
        elif outcome.error is not None:
            await self._fail_run(job, record, describe(outcome.error))

    async def _attempt(self, delivery: Delivery, job: Job, node: NodeDefinition, graph: Graph, context: RunContext,
                       uses: str, *, plain: bool = False, task: asyncio.Task[Any] | None = None) -> NodeOutcome:
        """One attempt of the job's node with implementation ``uses`` (``plain``: the caller found that ``uses``
        is no node kind), or its fallback after the last attempt: completed, retry_scheduled or failed; settled
        when the run was cancelled while the node ran (nothing to record). ``task``: the task this runs in, if
        known."""
        ctx = self._node_context(job, node, context,
                                 job.input if node.inputs is None else await self._node_input(job, node))
        try:
            handling = (job.run_id, job.key)
            self._marks[handling] = TimelineMark(time.time())
            if self.events.active:  # the payload is built only when someone listens
                await self._emit("node:start", job.run_id, job.blueprint_id, job.node_id,
                                 _traced(job, {"visit": job.visit, "attempt": job.attempt, "worker": self.worker_id}))
            self._inflight[handling] = _InFlight(delivery, ctx, task or asyncio.current_task())
            try:
                direct = self._direct(job, node, uses) if plain else None
                if direct is not None:  # ``_invoke``'s common case, without its frame
                    result = await direct(ctx)
                    outcome = (NodeOutcome._of("completed", result, None, None, None, None)
                               if not isinstance(result, NodeResult)
                               else NodeOutcome._of("completed", result.output, result.action, None, None, None))
                else:
                    outcome = await self._invoke(job, node, uses, ctx, graph, plain=plain)
            except BaseException as exc:  # a node's SystemExit or CancelledError fails the node, not the worker
                if _worker_cancelled(exc):
                    raise
                if job.run_id in self._cancelled_runs:
                    raise asyncio.CancelledError from exc
                return await self._after_error(job, node, ctx, exc)
            finally:
                self._inflight.pop(handling, None)
            _refuse_unstorable(job.node_id, outcome.output, ctx)
            if self.events.active:
                await self._emit("node:finish", job.run_id, job.blueprint_id, job.node_id,
                                 _traced(job, {"visit": job.visit, "output": outcome.output, "action": outcome.action}))
            return outcome
        except asyncio.CancelledError:
            if job.run_id in self._cancelled_runs:
                return NodeOutcome.settled()
            raise

    async def _after_error(
        self, job: Job, node: NodeDefinition, ctx: NodeContext, exc: BaseException
    ) -> NodeOutcome:
        """After a node raised ``exc``: schedule a retry, else run its fallback, else fail it."""
        config = node.config
        error = describe(exc)
        mark = self._marks.get((job.run_id, job.key))
        if mark is not None:
            mark.error = error
        self.counts["failed_attempts"] += 1
        log.info("node %s of run %s failed (attempt %d of %d): %s", job.node_id, job.run_id, job.attempt,
                 config.max_attempts, error, extra=_ids(job, event="node:error", attempt=job.attempt))
        await self._emit("node:error", job.run_id, job.blueprint_id, job.node_id,
                         _traced(job, {"error": error, "attempt": job.attempt, "visit": job.visit,
                                       "worker": self.worker_id}))
        if job.attempt < config.max_attempts and not isinstance(exc, ExpressionError):
            delay = config.retry_delay_for(job.attempt)
            delay *= 1 + random.uniform(0, self.options.retry_jitter)
            attempts = [*prior_attempts(job.payload), self._attempt_record(job, error)]
            payload = {**(job.payload or {}), ATTEMPTS_PAYLOAD: attempts}
            retry = job.evolve(attempt=job.attempt + 1, due_at=time.time() + delay if delay else None,
                               payload=payload)
            # the failed attempts in the timeline now (a failure path: one context write), and with the retry
            await self._write_entry(job, "pending", attempts, finished=False)
            await self.queue.enqueue([retry], delay)
            self.counts["retries"] += 1
            log.info("node %s of run %s: retry %d of %d in %.3gs", job.node_id, job.run_id, retry.attempt,
                     config.max_attempts, delay, extra=_ids(job, event="node:retry", attempt=retry.attempt))
            await self._emit("node:retry", job.run_id, job.blueprint_id, job.node_id,
                             {"attempt": retry.attempt, "delay": delay, "visit": job.visit, "error": error})
            return NodeOutcome.retry_scheduled()
        implementation = self.app.implementation(job.blueprint_id, node.uses)
        if has_own_fallback(implementation):
            try:
                instance = cast(type[BaseNode], implementation)(node.params)
                output, action = _split(await call_maybe_async(instance.fallback, exc, ctx))
            except BaseException as fallback_exc:
                if _worker_cancelled(fallback_exc):
                    raise
                return NodeOutcome.failed(fallback_exc)
            _refuse_unstorable(job.node_id, output, ctx)
            return NodeOutcome.completed(output, action, fallback=node.id)
        if config.fallback:
            graph = graph_or_raise(self.app, job.blueprint_id)
            fallback_node = graph.info(config.fallback).node
            log.info("node %s of run %s: running its fallback %s", job.node_id, job.run_id, fallback_node.id,
                     extra=_ids(job, event="node:fallback"))
            await self._emit("node:fallback", job.run_id, job.blueprint_id, job.node_id,
                             {"fallback": fallback_node.id, "error": describe(exc), "visit": job.visit})
            try:
                produced = await self._invoke(job, fallback_node, fallback_node.uses, ctx, graph)
            except BaseException as fallback_exc:
                if _worker_cancelled(fallback_exc):
                    raise
                return NodeOutcome.failed(fallback_exc)
            _refuse_unstorable(fallback_node.id, produced.output, ctx)
            return NodeOutcome.completed(produced.output, produced.action, fallback=fallback_node.id)
        return NodeOutcome.failed(exc)

    async def _invoke(
        self, job: Job, node: NodeDefinition, uses: str, ctx: NodeContext, graph: Graph, *, plain: bool = False
    ) -> NodeOutcome:
        """Call the implementation once (with timeout and middleware); inline node kinds compute instead
        (``plain``: the caller found that ``uses`` is none)."""
        if not plain:
            kind = node_kind(uses)
            if isinstance(kind, InlineKind):
                return await kind.compute(node, ctx)
        if job.item is not None:
            chunk = ctx.input if isinstance(ctx.input, list) else [ctx.input]
            outputs = []
            for value in chunk:
                ctx.input = value
                outputs.append((await self._invoke(job.evolve(item=None), node, uses, ctx, graph, plain=True)).output)
            ctx.input = chunk
            return NodeOutcome.completed(outputs)
        direct = self._direct(job, node, uses)
        if direct is not None:
            return NodeOutcome.completed(*_split(await direct(ctx)))
        implementation = self.app.implementation(job.blueprint_id, uses)
        if implementation is None:
            raise FlowcraftError(f"no implementation registered for uses {uses!r} (node {node.id!r})",
                                 hint="register it in the App/FlowRuntime registry")
        timeout = node.config.timeout

        async def call() -> Any:
            if is_class_node(implementation):
                instance = cast(type[BaseNode], implementation)(node.params)
                prepared = await call_maybe_async(instance.prep, ctx)
                executed = await call_maybe_async(instance.exec, prepared, ctx)
                return await call_maybe_async(instance.post, executed, ctx)
            return await call_maybe_async(implementation, ctx)

        try:
            if timeout is not None:
                async with asyncio.timeout(timeout):  # in this task: a node's SystemExit reaches _attempt
                    result = await run_with_middleware(self.middleware, ctx, call)
            elif self.middleware:
                result = await run_with_middleware(self.middleware, ctx, call)
            else:
                result = await call()
        except TimeoutError:
            ctx._cancel_event.set()
            raise NodeTimeoutError(f"node {node.id!r} timed out after {timeout:g}s") from None
        return NodeOutcome.completed(*_split(result))

    def _direct(self, job: Job, node: NodeDefinition, uses: str) -> _AsyncNode | None:
        """The implementation to await as it is, for the common case without ``_invoke``'s wrappers: an async
        function node (not a map item, not a node kind: the caller checked), no timeout, no middleware."""
        if job.item is not None or node.config.timeout is not None or self.middleware:
            return None
        implementation = self.app.implementation(job.blueprint_id, uses)
        if implementation is None or not self._is_async_function(implementation):
            return None
        return implementation  # type: ignore[return-value]  # a coroutine function, checked just above

    def _is_async_function(self, implementation: Any) -> bool:
        """Whether ``implementation`` is a coroutine function (not a class node), remembered per implementation."""
        try:
            known = self._async_functions.get(implementation)
        except TypeError:  # an unhashable callable: asked each time
            return not is_class_node(implementation) and inspect.iscoroutinefunction(implementation)
        if known is None:
            known = self._async_functions[implementation] = (
                not is_class_node(implementation) and inspect.iscoroutinefunction(implementation))
        return known

    # ------------------------------------------------------------------ routing and commit
    async def _route(self, job: Job, graph: Graph, record: RunRecord, completion: Completion, *, recovery: bool
                     ) -> None:
        try:
            info = graph.nodes[job.node_id]
            if not info.out_edges:  # a terminal node: no arrivals (and no loop limit to read)
                arrivals = []
            elif info.plain_edges:
                arrivals = routing.completion_arrivals(graph, job, completion, {}, self._max_iterations(graph))
            else:
                arrivals = await self._arrivals(job, graph, completion)
        except FlowcraftError as exc:
            await self.runs.fail(record, job.node_id, str(exc))
            return
        needs_cascade = False
        for reached in arrivals:
            if not reached.arrived:
                needs_cascade = True
                break
        if not recovery and self._context_apart(completion):
            # a store that keeps the context apart (docs/architecture.md §3.5): the completion record first
            # (first writer wins, so an attempt that lost its lease never writes), then the winner's context,
            # then the arrivals that let successors fire
            claimed = await self._commit(job, Transition(job.run_id, job.key, completion=completion,
                                                         owner=self.worker_id))
            completion = claimed.conflict or completion
            await self._apply_context_apart(job, completion)
            recovery = claimed.conflict is not None
        end = None
        if not arrivals and not recovery and self.backend.capabilities.ends:
            # the graph's only terminal node's fresh completion holds the run's result: the commit may end the run
            # (a replayed one reads the context after its commit, in ``_after_finish``, as without ``ends``)
            result = _own_result(graph.terminal_nodes(), job, completion)
            if result is not _UNKNOWN:
                end = RunEnd(result=result, fields={"awaiting": []})
        committed = await self._commit(job, self._finishing(job, completion=completion, arrivals=arrivals,
                                                            finish=not needs_cascade, recovery=recovery, end=end))
        if committed.conflict is not None:
            # another attempt's completion record won (this one ran after losing its lease): route as it did
            await self._route(job, graph, record, committed.conflict, recovery=True)
            return
        if self.fault is not None:
            self._fault("after_commit")
        if not self.backend.capabilities.dispatches:
            await self._dispatch(committed)
        if self.fault is not None:
            self._fault("after_enqueue")
        if needs_cascade:
            committed = await self._cascade(job, graph, committed.skipped, recovery)
        if committed.ended is not None:  # the commit ended the run (``Capabilities.ends``): what a won end does
            await self._ended(committed.ended)
        elif committed.pending == 0:  # (``_after_finish`` checks it too: this saves most nodes the call)
            # a fresh completion's own output is the result (``_own_result``); a replayed one's context was
            # written by an earlier delivery, so the context is read as it is
            await self._after_finish(record, committed, job, None if recovery else completion)

    def _context_apart(self, completion: Completion) -> bool:
        """The completion has context writes that the coordination store does not write with it."""
        return not self.backend.capabilities.applies_context and bool(completion.context_updates
                                                              or completion.context_deletes)

    async def _apply_context_apart(self, job: Job, completion: Completion) -> None:
        if self._context_apart(completion):
            await self.context.apply(job.run_id, completion.context_updates, completion.context_deletes)

    async def _cascade(self, job: Job, graph: Graph, skipped: Sequence[str], recovery: bool) -> Committed:
        """Dead-path elimination: a skipped node sends skips on to its successors, through joins."""
        queue = list(skipped)
        while True:
            arrivals: list[Arrival] = []
            entries: dict[str, Any] = {}
            now = time.time()
            for key in queue:
                visit_text, _, node_id = key.partition(":")
                visit = int(visit_text)
                entries[entry_key(node_id, visit)] = timeline_entry(node_id, visit, "skipped", [], now)
                await self._emit("node:skipped", job.run_id, job.blueprint_id, node_id, {"visit": visit})
                arrivals += routing.skip_arrivals(graph, job, node_id, visit)
            if entries:  # skips only: one context write per cascade step
                await self.context.apply(job.run_id, entries)
            last = not arrivals
            committed = await self._commit(job, self._finishing(job, arrivals=routing.dedupe(arrivals), finish=last,
                                                                recovery=recovery))
            await self._dispatch(committed)
            if last:
                return committed
            queue = list(committed.skipped)

    async def _arrivals(self, job: Job, graph: Graph, completion: Completion) -> list[Arrival]:
        info = graph.info(job.node_id)
        if not info.out_edges:
            return []
        names: dict[str, Any] = {}
        transforms = any(e.transform is not None for e in info.out_edges)
        if transforms or any(e.condition is not None for e in info.out_edges):
            names = await self._expression_names(job, completion, info.needs_context or transforms)
            names["result"] = {"output": completion.output, "action": completion.action}
        return routing.completion_arrivals(graph, job, completion, names, self._max_iterations(graph))

    async def _expression_names(self, job: Job, completion: Completion, needs_context: bool) -> dict[str, Any]:
        context = await self.context.get_all(job.run_id) if needs_context else {}
        context.update(completion.context_updates)
        names: dict[str, Any] = {k[len(OUTPUTS_PREFIX):]: v for k, v in context.items()
                                 if k.startswith(OUTPUTS_PREFIX)}
        names["context"] = context
        names["input"] = job.input
        return names

    async def _finish(self, record: RunRecord) -> None:
        """A finish job from the reconciler: publish the final status of a run whose work is all done."""
        counts = await self.coordination.commit(Transition(record.run_id, FINISH_KEY, finish=False))
        await self._after_finish(record, counts)

    async def _after_finish(self, record: RunRecord, committed: Committed, job: Job | None = None,
                            completion: Completion | None = None) -> None:
        """Publish the run's end when ``committed`` left nothing pending: ``awaiting`` with parked jobs, else
        ``_result`` and ``completed``. ``job`` and ``completion``: the handled job whose commit this was, when its
        completion may hold the result (it is the graph's only terminal node)."""
        if committed.pending > 0:
            return
        run_id = record.run_id
        if committed.parked > 0:
            awaiting = [{"node_id": p.job.node_id, "visit": p.job.visit}
                        for p in await self.coordination.jobs(run_id, "parked")]
            if await self.status.transition(run_id, ["running"], "awaiting", {"awaiting": awaiting}):
                await self.runs.reflect_on_parent(record, "awaiting")
            return
        graph = graph_or_raise(self.app, record.blueprint_id)
        terminal = graph.terminal_nodes()
        result = _own_result(terminal, job, completion)
        if result is _UNKNOWN:
            context = await self.context.get_many(run_id, [OUTPUTS_PREFIX + n for n in terminal])  # not the timeline
            final = {n: context[OUTPUTS_PREFIX + n] for n in terminal if OUTPUTS_PREFIX + n in context}
            result = next(iter(final.values())) if len(final) == 1 else final
        # the result before (or with) the status: a client that sees ``completed`` reads it; a crash in between
        # redelivers the job, whose recovery computes the same result and publishes the end once
        if self.backend.capabilities.writes_context:
            won = await self.status.transition_with_context(run_id, list(ACTIVE_STATUSES), "completed",
                                                            {"awaiting": []}, context={"_result": result})
        else:
            await self.context.apply(run_id, {"_result": result})
            won = await self.status.transition(run_id, list(ACTIVE_STATUSES), "completed", {"awaiting": []})
        if won is not None:
            await self._ended(won)

    async def _ended(self, won: RunRecord) -> None:
        """This worker ended the run (``won``: its record as the end left it): say so, and wake its parent run."""
        await self._emit("run:finish", won.run_id, won.blueprint_id, data={"status": "completed"})
        await self.runs.notify_parent(won)

    def _finishing(self, job: Job, *, completion: Completion | None = None, arrivals: Sequence[Arrival] = (),
                   finish: bool, recovery: bool, end: RunEnd | None = None) -> Transition:
        """The transition of the last commit of handling ``job`` (or of a step before it, when not ``finish``), as
        this worker. Being the last step (the engine routes it and returns), a finishing one may let the store ack
        the job's delivery with it, hand fired jobs to this worker and end the run with ``end``
        (``Capabilities.acks``/``continues``/``ends``: the caller gives ``end`` only to a store that ends)."""
        key = job.key
        delivery = self._handling.get((job.run_id, key)) if finish else None
        receipt, up_to, lease = None, 0, 0.0
        if delivery is not None:
            capabilities = self.backend.capabilities
            if capabilities.acks:
                receipt = delivery.receipt
            if capabilities.continues and not recovery and self.taker is not None:
                up_to, lease = max(0, self.taker.room()), self.options.lease_seconds
        return Transition._of(job.run_id, key, completion, tuple(arrivals), finish, recovery, self.worker_id, receipt,
                              up_to, lease, end if finish else None)

    async def _commit(self, job: Job, transition: Transition) -> Committed:
        """Commit as this worker (``_finishing`` builds one that hands over; a store acks or hands jobs over
        only when the transition says so)."""
        capabilities = self.backend.capabilities
        handling = (transition.run_id, transition.job_key)
        if transition.owner != self.worker_id:
            transition = replace(transition, owner=self.worker_id)
        committed = await self.coordination.commit(transition)
        if transition.finish and committed.conflict is None:
            if capabilities.releases_lease:
                self._released.add(handling)
            if transition.receipt is not None and (committed.pending > 0 or committed.ended is not None):
                self._acked.add(handling)
            taker = self.taker
            if committed.continued and taker is not None:  # (none are handed without a taker)
                committing = self._handling.get(handling)
                for continued in committed.continued:
                    taker.take(continued, committing)
        return committed

    async def _dispatch(self, committed: Committed) -> None:
        if not self.backend.capabilities.dispatches:  # a store sharing the queue's storage enqueued them itself
            if committed.continued:  # those handed to this worker are in the queue's in-flight set already
                handed = {delivery.job.key for delivery in committed.continued}
                await self._enqueue([job for job in committed.fired if job.key not in handed])
            else:
                await self._enqueue(committed.fired)

    async def _enqueue(self, jobs: Sequence[Job]) -> None:
        await routing.enqueue_due(self.queue, jobs)

    # ------------------------------------------------------------------ helpers
    def _completion(self, job: Job, output: Any, action: str | None, context: RunContext | None, *,
                    due_at: float | None = None, fallback: str | None = None) -> Completion:
        updates = context.pending_updates if context is not None else {}  # a copy
        updates[OUTPUTS_PREFIX + job.node_id] = output
        # the timeline entry rides in the completion's context writes: no round trip of its own
        now = time.time()
        attempt = self._attempt_record(job, finished_at=now)
        # (a job's key is its entry's but for a map item's)
        updates[TIMELINE_PREFIX + job.key if job.item is None else entry_key(job.node_id, job.visit)] = timeline_entry(
            job.node_id, job.visit, "done", [*prior_attempts(job.payload), attempt] if job.payload else [attempt],
            now, action, fallback)
        return Completion._of(job.node_id, output, action, self._token(), updates,
                              context.pending_deletes if context is not None else (), fallback, due_at)

    def _attempt_record(self, job: Job, error: str | None = None, *, finished_at: float | None = None
                        ) -> dict[str, Any]:
        """This engine's attempt of ``job`` for the timeline (error: the attempt's own, else what it noted)."""
        mark = self._marks.get((job.run_id, job.key))
        record: dict[str, Any] = {"attempt": job.attempt, "worker": self.worker_id,
                                  "started_at": mark.started_at if mark is not None else None,
                                  "finished_at": time.time() if finished_at is None else finished_at}
        error = error or (mark.error if mark is not None else None)
        if error is not None:
            record["error"] = error
        return record

    async def _write_entry(self, job: Job, state: str, attempts: list[dict[str, Any]], *, finished: bool = True,
                           error: str | None = None) -> None:
        """Write a timeline entry outside a completion (failure paths only); a store failing here is logged,
        never in the way of the failure being recorded."""
        entry = timeline_entry(job.node_id, job.visit, state, attempts, time.time() if finished else None,
                               error=error)
        try:
            await self.context.apply(job.run_id, {entry_key(job.node_id, job.visit): entry})
        except Exception:
            log.warning("could not write the timeline entry of node %s of run %s", job.node_id, job.run_id,
                        exc_info=True)

    async def _fail_run(self, job: Job, record: RunRecord, error: str) -> None:
        """The job's node visit fails its run: its timeline entry, then this worker's lease on the job is dropped
        (the run's handling of it is over: a retry, refused while a lease is held, may follow the status at once),
        then the run's status."""
        await self._record_failure(job, error)
        await self.coordination.release(job.run_id, job.key, self.worker_id)
        self._released.add((job.run_id, job.key))
        await self.runs.fail(record, job.node_id, error)

    async def _record_failure(self, job: Job, error: str) -> None:
        """The node visit failed its run: its timeline entry says so, with every attempt."""
        self.counts["failed_runs"] += 1
        log.info("node %s of run %s failed the run: %s", job.node_id, job.run_id, error,
                 extra=_ids(job, event="node:failed"))
        attempts = prior_attempts(job.payload)
        if not any(a.get("attempt") == job.attempt for a in attempts):
            attempts.append(self._attempt_record(job, error))
        await self._write_entry(job, "failed", attempts, error=error)

    def _token(self) -> str:
        """A completion token unique across engines: a random per-engine prefix plus a local counter."""
        return f"{self._token_prefix}:{next(self._tokens)}"

    def _node_context(self, job: Job, node: NodeDefinition, context: RunContext, input_value: Any) -> NodeContext:
        return NodeContext._of(input_value, node.params, context, job.run_id, job.blueprint_id, job.node_id,
                               loop_visit(job.visit), job.attempt, job.item, self.app.dependencies)

    async def _node_input(self, job: Job, node: NodeDefinition) -> Any:
        if node.inputs is None or job.item is not None:
            return job.input
        if isinstance(node.inputs, str):
            return (await self._resolve_inputs(job.run_id, {"": node.inputs}))[""]
        return await self._resolve_inputs(job.run_id, dict(node.inputs))

    async def _resolve_inputs(self, run_id: str, mapping: Mapping[str, str]) -> dict[str, Any]:
        """TypeScript rules: 'x' = output of node x, else context key x; '_key' = raw context key;
        'a.b.c' = path b.c inside node a's output."""
        wanted: list[str] = []
        for source in mapping.values():
            head = source.split(".", 1)[0]
            wanted += [OUTPUTS_PREFIX + head, source, OUTPUTS_PREFIX + source]
        values = await self.context.get_many(run_id, wanted)
        resolved: dict[str, Any] = {}
        for name, source in mapping.items():
            if source.startswith("_") or source in values:
                resolved[name] = values.get(source)
                continue
            if OUTPUTS_PREFIX + source in values:
                resolved[name] = values[OUTPUTS_PREFIX + source]
                continue
            head, _, path = source.partition(".")
            value = values.get(OUTPUTS_PREFIX + head)
            for part in path.split(".") if path else []:
                value = value.get(part) if isinstance(value, dict) else None
            resolved[name] = value
        return resolved

    def _max_iterations(self, graph: Graph) -> int:
        return int(graph.blueprint.metadata.get("maxIterations", self.app.max_iterations))

    async def _dead_letter(self, delivery: Delivery, reason: str, *, flag: bool = True) -> None:
        """Move the job to the queue's dead letter; unless the run does not exist (``flag``), the run shows it
        (``RunResult.dead_letters``, from the context key ``DEAD_LETTER_PREFIX + job key``) until the job is
        replayed or its node finishes."""
        job = delivery.job
        self.counts["dead_letters"] += 1
        log.warning("dead-lettering job %s of run %s: %s", job.key, job.run_id, reason,
                    extra=_ids(job, event="job:dead_letter"))
        if flag:  # first, so a crash after the move still leaves the run pointing at its dead letter
            try:
                await self.context.apply(job.run_id, {DEAD_LETTER_PREFIX + job.key: {
                    "node_id": job.node_id, "visit": job.visit, "item": job.item, "reason": reason,
                    "at": time.time()}})
            except Exception:
                log.warning("could not flag the dead letter on run %s", job.run_id, exc_info=True)
        await self.queue.dead_letter(delivery, reason)
        await self._emit("job:dead_letter", delivery.job.run_id, delivery.job.blueprint_id, delivery.job.node_id,
                         {"reason": reason})

    def _signal_cancel(self, run_id: str) -> None:
        self._cancelled_runs.add(run_id)
        for (inflight_run, _), inflight in list(self._inflight.items()):
            if inflight_run == run_id:
                inflight.ctx._cancel_event.set()
                if inflight.task is not None and inflight.task is not asyncio.current_task():
                    inflight.task.cancel()

    def _fault(self, point: str) -> None:
        if self.fault is not None:
            try:
                self.fault(point)
            except BaseException as error:  # a simulated crash: ``handle`` lets it through even after an ack
                self._fault_raised = error
                raise

    async def _emit(self, name: str, run_id: str, blueprint_id: str, node_id: str | None = None,
                    data: dict[str, Any] | None = None) -> None:
        if self.events.active:
            await self.events.emit(Event(name, run_id, blueprint_id, node_id, data or {}))


_UNKNOWN: Any = object()


def _own_result(terminal: Sequence[str], job: Job | None, completion: Completion | None) -> Any:
    """The run's result as the last commit's own (fresh) completion tells it, without a read: when the graph's
    only terminal node is ``job``'s (not a map item) and the completion wrote its output (nothing runs after the
    commit that left nothing pending, so the context holds that value); else ``_UNKNOWN``."""
    if job is None or completion is None or job.item is not None or len(terminal) != 1 or terminal[0] != job.node_id:
        return _UNKNOWN
    key = OUTPUTS_PREFIX + job.node_id
    if key not in completion.context_updates or key in completion.context_deletes:
        return _UNKNOWN
    return completion.context_updates[key]


def _cancel_signal(engine: Engine) -> Callable[[str], None]:
    """``engine._signal_cancel`` without a strong reference to ``engine``: the ``RunControl`` the engine holds does
    not keep it alive in a reference cycle, so a dropped engine (a closed ``FlowRuntime``) frees its backend, with a
    memory store's every run, at once instead of leaving them to the cyclic garbage collector."""
    ref = weakref.ref(engine)

    def signal(run_id: str) -> None:
        alive = ref()
        if alive is not None:
            alive._signal_cancel(run_id)

    return signal


def _traced(job: Job, data: dict[str, Any]) -> dict[str, Any]:
    """A node event's data, with the trace the job carries (``flowcraft.engine.events.TRACE_PAYLOAD``)."""
    if job.payload and TRACE_PAYLOAD in job.payload:
        data[TRACE_PAYLOAD] = job.payload[TRACE_PAYLOAD]
    return data


def _ids(job: Job, **fields: Any) -> dict[str, Any]:
    """``extra`` of a log record about ``job``: its ids as fields a structured log formatter prints."""
    return {"run_id": job.run_id, "node_id": job.node_id, "visit": job.visit, "blueprint_id": job.blueprint_id,
            **fields}


def _split(result: Any) -> tuple[Any, str | None]:
    if isinstance(result, NodeResult):
        return result.output, result.action
    return result, None


def _worker_cancelled(error: BaseException) -> bool:
    """A CancelledError of this task's own cancellation (worker shutdown, run cancel), as opposed to one a
    node raised itself, which is that node's failure."""
    task = asyncio.current_task()
    return isinstance(error, asyncio.CancelledError) and task is not None and task.cancelling() > 0


def _refuse_unstorable(node_id: str, output: Any, ctx: NodeContext) -> None:
    """Check a node's output and context writes once, before the commit: a value no store can keep fails
    the run (every attempt would produce it again) instead of failing each commit."""
    updates = ctx.context.pending_view
    if isinstance(output, JSON_SCALARS) and not updates:  # the common case, without building the messages
        return
    problem = json_problem(output, f"node {node_id!r} output") or context_problem(
        updates, f"node {node_id!r} context")
    if problem is not None:
        raise InvalidValueError(problem, hint="return and store JSON values: dicts with string keys, lists, "
                                              "strings, numbers, booleans, None")
