"""Events (observe) and middleware (wrap node execution)."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from flowcraft.nodes.base import NodeContext

log = logging.getLogger("flowcraft.events")

EVENT_NAMES = (
    "run:start", "run:finish", "run:resume",
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


class EventBus:
    """Listeners by event name ('*' for all). A failing listener is logged, never breaks a run."""

    def __init__(self) -> None:
        self._listeners: dict[str, list[Listener]] = {}

    def on(self, name: str, listener: Listener) -> Listener:
        if name != "*" and name not in EVENT_NAMES:
            raise ValueError(f"unknown event {name!r}; known events: {', '.join(EVENT_NAMES)}")
        self._listeners.setdefault(name, []).append(listener)
        return listener

    @property
    def active(self) -> bool:
        return bool(self._listeners)

    async def emit(self, event: Event) -> None:
        for listener in (*self._listeners.get(event.name, ()), *self._listeners.get("*", ())):
            try:
                result = listener(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("event listener for %s failed", event.name)


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
