"""Events and middleware attachable (issue 18, item 8): ``App(listeners=..., middleware=...)``, the
``flowcraft_event`` plugin hook through the plugin registry, and the documented names and payloads."""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Any

import pytest

from flowcraft import App, Event, Flow, FlowRuntime, Middleware, NodeContext
from flowcraft.engine.events import EVENT_NAMES
from flowcraft.errors import ConfigError
from flowcraft.hookspecs import hookimpl
from flowcraft.plugins import current_registry


async def flaky(ctx: NodeContext) -> str:
    if ctx.attempt < 2:
        raise ConnectionError("once")
    return "ok"


def flow() -> Flow:
    f = Flow("ev").node("a", flaky, retries=1, retry_delay=0.01).node("b", lambda ctx: ctx.input)
    f.node("c", lambda ctx: "never")
    return f.edge("a", "b").edge("a", "c", action="other")


@pytest.fixture
def plugin_events() -> Iterator[list[Event]]:
    """A plugin implementing ``flowcraft_event``, registered in the process's plugin registry."""
    seen: list[Event] = []

    @hookimpl
    def flowcraft_event(event: Event) -> None:
        seen.append(event)

    module = types.ModuleType("events_plugin")
    module.flowcraft_event = flowcraft_event  # type: ignore[attr-defined]
    manager = current_registry().manager
    manager.register(module, name="test-events-plugin")
    try:
        yield seen
    finally:
        manager.unregister(name="test-events-plugin")


async def test_app_listeners_middleware_and_the_plugin_hook(plugin_events: list[Event]) -> None:
    every: list[Event] = []
    errors: list[Event] = []
    calls: list[str] = []

    async def on_error(event: Event) -> None:
        errors.append(event)

    def broken_listener(event: Event) -> None:
        raise RuntimeError("a listener bug never breaks a run")

    class Trace(Middleware):
        async def around_node(self, ctx: NodeContext, call_next: Any) -> Any:
            calls.append(f"{ctx.node_id}#{ctx.attempt}")
            return await call_next()

    app = App([flow()], listeners=[every.append, ("node:error", on_error), broken_listener], middleware=[Trace()])
    async with FlowRuntime(app=app) as rt:
        result = await rt.run("ev", timeout=10)
    assert result.status == "completed" and result.output == "ok"
    names = [e.name for e in every]
    assert names[0] == "run:start" and names[-1] == "run:finish"
    for name in ("node:start", "node:finish", "node:error", "node:retry", "node:skipped"):
        assert name in names
    (error,) = errors
    assert error.node_id == "a" and error.data["error"] == "ConnectionError: once" and error.data["attempt"] == 1
    retry = next(e for e in every if e.name == "node:retry")
    assert retry.data["attempt"] == 2 and retry.data["visit"] == 0 and "delay" in retry.data
    start = next(e for e in every if e.name == "node:start")
    assert start.data["worker"] == rt.engine.worker_id and start.data["attempt"] == 1
    assert next(e for e in every if e.name == "node:skipped").node_id == "c"
    assert calls == ["a#1", "a#2", "b#1"]
    assert [e.name for e in plugin_events] == names  # the hook sees what the listeners see


def test_bad_listeners_and_middleware_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="unknown event 'node:done'") as unknown:
        App(listeners=[("node:done", print)])
    assert "node:finish" in unknown.value.hint
    with pytest.raises(ConfigError, match="neither a callable"):
        App(listeners=[42])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match=r"not a flowcraft\.Middleware"):
        App(middleware=[object()])  # type: ignore[list-item]


def test_every_event_name_is_documented() -> None:
    import flowcraft.engine.events as events

    assert events.__doc__ is not None
    for name in EVENT_NAMES:
        assert f"``{name}``" in events.__doc__
