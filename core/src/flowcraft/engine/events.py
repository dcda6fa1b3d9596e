"""Events (observe) and middleware (wrap node execution).

Attach listeners with ``App(listeners=[...])`` (every engine loading the app, ``flowcraft worker`` too),
``FlowRuntime.on(name, listener)``, or a plugin implementing the ``flowcraft_event`` hook
(``flowcraft.hookspecs``); attach middleware with ``App(middleware=[...])`` or ``FlowRuntime(middleware=...)``.
An event is emitted by the process that does the thing (the worker running a node, the client starting a
run), so a listener sees the events of its own process. A listener that raises is logged, never breaks a run.

Every ``Event`` has ``name``, ``run_id``, ``blueprint_id``, ``node_id`` (None for run events) and ``data``:

===================  ==========================================================================
``run:start``        ``input`` -- a run was started (by a client, or a subflow node for its child)
``run:finish``       ``status`` (completed, failed, cancelled), ``error`` when failed; ``node_id`` of
                     the failing node, if any
``run:resume``       ``action`` -- a waiting node was resumed (``node_id``)
``run:retry``        ``generation``, ``nodes`` -- a failed run was retried (``node_id``: ``--from``)
``node:start``       ``visit``, ``attempt`` (from 1), ``worker`` -- an attempt begins
``node:finish``      ``visit``, ``output``, ``action`` -- the node produced its output
``node:error``       ``visit``, ``attempt``, ``error`` (``"Type: message"``), ``worker`` -- an attempt failed
``node:retry``       ``visit``, ``attempt`` (the next one), ``delay`` (seconds), ``error``
``node:fallback``    ``visit``, ``fallback`` (its node id), ``error`` -- the fallback node runs instead
``node:skipped``     ``visit`` -- dead-path elimination skipped the node
``job:dead_letter``  ``reason`` -- a job was moved to the dead-letter store
===================  ==========================================================================

Node events of a run started with a *job carrier* also have ``trace``: a listener with a method
``job_carrier(run_id, blueprint_id) -> dict[str, str] | None`` is asked once per run start (by the client
starting it); what it returns travels in ``Job.payload["trace"]`` of the run's start jobs and every job routed
from them (retries, successors, a resumed wait, a subflow's job delivered again when its child run ends), so a
worker in any process sees it (``flowcraft.otel`` puts the W3C trace context there). A child run's start asks
``job_carrier(run_id, blueprint_id, parent)`` with ``parent`` what the subflow node's job carried (when it
carried something), so the child's trace can hang under its parent's. Without a carrier nothing is added to any
job.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from flowcraft.nodes.base import NodeContext

log = logging.getLogger("flowcraft.events")

EVENT_NAMES = (
    "run:start", "run:finish", "run:resume", "run:retry",
    "node:start", "node:finish", "node:error", "node:retry", "node:fallback", "node:skipped",
    "job:dead_letter",
)


@dataclass(frozen=True, slots=True)
class Event:
    name: str
    run_id: str
    blueprint_id: str
    node_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


Listener = Callable[[Event], Any]

#: the key of ``Job.payload`` carrying what a listener's ``job_carrier`` returned at the run's start
TRACE_PAYLOAD = "trace"


def carried(payload: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The part of a job's payload its successors carry on (the trace), or None."""
    if not payload or TRACE_PAYLOAD not in payload:
        return None
    return {TRACE_PAYLOAD: payload[TRACE_PAYLOAD]}


class EventBus:
    """Listeners by event name ('*' for all), then the ``flowcraft_event`` plugin hook (``hook``, set by the
    engine when a plugin implements it). A failing listener is logged, never breaks a run."""

    def __init__(self) -> None:
        self._listeners: dict[str, list[Listener]] = {}
        self.hook: Callable[..., Any] | None = None
        self.carriers: list[Callable[..., Mapping[str, str] | None]] = []

    def on(self, name: str, listener: Listener) -> Listener:
        if name != "*" and name not in EVENT_NAMES:
            raise ValueError(f"unknown event {name!r}; known events: {', '.join(EVENT_NAMES)}")
        self._listeners.setdefault(name, []).append(listener)
        carrier = getattr(listener, "job_carrier", None)
        if callable(carrier) and carrier not in self.carriers:
            self.carriers.append(carrier)
        return listener

    def carry(self, run_id: str, blueprint_id: str, parent: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """The payload of a new run's start jobs: ``{"trace": ...}`` from the first job carrier that returns
        something, else None (a carrier that raises is logged and passed over). ``parent``: for a child run,
        the trace its subflow node's job carried."""
        for carrier in self.carriers:
            try:
                found = carrier(run_id, blueprint_id, parent) if parent else carrier(run_id, blueprint_id)
            except Exception:
                log.exception("job carrier %r failed", carrier)
                continue
            if found:
                return {TRACE_PAYLOAD: dict(found)}
        return None

    def has(self, name: str, listener: Listener) -> bool:
        return listener in self._listeners.get(name, ())

    @property
    def active(self) -> bool:
        return bool(self._listeners) or self.hook is not None

    async def emit(self, event: Event) -> None:
        for listener in (*self._listeners.get(event.name, ()), *self._listeners.get("*", ())):
            try:
                result = listener(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("event listener for %s failed", event.name)
        if self.hook is not None:
            try:
                for result in self.hook(event=event):
                    if inspect.isawaitable(result):
                        await result
            except Exception:
                log.exception("flowcraft_event plugin hook for %s failed", event.name)


NodeCall = Callable[[], Awaitable[Any]]


class Middleware:
    """Override any of the three: ``before_node``, ``after_node``, ``around_node`` (wraps the call)."""

    async def before_node(self, ctx: NodeContext) -> None:
        return None

    async def after_node(self, ctx: NodeContext, result: Any) -> None:
        return None

    async def around_node(self, ctx: NodeContext, call_next: NodeCall) -> Any:
        return await call_next()


async def run_with_middleware(middleware: list[Middleware], ctx: NodeContext, call: NodeCall) -> Any:
    if not middleware:
        return await call()
    for item in middleware:
        await item.before_node(ctx)
    wrapped = call
    for item in reversed(middleware):
        wrapped = _wrap(item, ctx, wrapped)
    result = await wrapped()
    for item in middleware:
        await item.after_node(ctx, result)
    return result


def _wrap(item: Middleware, ctx: NodeContext, call_next: NodeCall) -> NodeCall:
    async def wrapped() -> Any:
        return await item.around_node(ctx, call_next)

    return wrapped
