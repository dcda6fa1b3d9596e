"""Custom node kinds registered the way the built-ins are (flowcraft.engine.kinds.register_node_kind)."""

from __future__ import annotations

from typing import Any

import pytest

from flowcraft import Flow, FlowRuntime
from flowcraft.engine.kinds import InlineKind, JobKind, KindContext, MapKind, node_kind, register_node_kind
from flowcraft.engine.outcome import NodeOutcome
from flowcraft.errors import ConfigError
from flowcraft.model import NodeDefinition
from flowcraft.nodes.base import NodeContext


class Doubled(InlineKind):
    async def compute(self, node: NodeDefinition, ctx: NodeContext) -> NodeOutcome:
        return NodeOutcome.completed(ctx.input * int(node.params.get("factor", 2)), "doubled")


class Gate(JobKind):
    """Parks until the run's context has ``open``; completes with it when delivered again."""

    async def run(self, ctx: KindContext) -> NodeOutcome:
        opened = (await ctx.backend.context.get_many(ctx.job.run_id, ["open"])).get("open")
        if opened is None:
            await ctx.context.set("gate_seen", True)
            return NodeOutcome.completed("closed", "closed")
        return NodeOutcome.completed(opened, "open")


register_node_kind("test-doubled", Doubled())
register_node_kind("test-gate", Gate())


def start(ctx: NodeContext) -> Any:
    return ctx.input


async def test_an_inline_kind_computes_the_node_and_its_action_routes() -> None:
    flow = Flow("kinds-inline")
    flow.node("start", start)
    flow.node("twice", uses="test-doubled", params={"factor": 3})
    flow.node("after", start)
    flow.node("never", start)
    flow.edge("start", "twice").edge("twice", "after", action="doubled").edge("twice", "never", action="other")
    async with FlowRuntime(flows=[flow]) as runtime:
        result = await runtime.run("kinds-inline", 7, timeout=10)
    assert (result.status, result.outputs) == ("completed", {"start": 7, "twice": 21, "after": 21})


async def test_a_job_kind_completion_is_recorded_with_its_context_writes_and_routed() -> None:
    flow = Flow("kinds-job")
    flow.node("gate", uses="test-gate")
    flow.node("closed", start)
    flow.edge("gate", "closed", action="closed")
    async with FlowRuntime(flows=[flow]) as runtime:
        result = await runtime.run("kinds-job", None, timeout=10)
    assert (result.status, result.output, result.context["gate_seen"]) == ("completed", "closed", True)


def test_a_kind_name_is_registered_once_and_builtins_are_kinds_too() -> None:
    assert isinstance(node_kind("map"), MapKind)
    with pytest.raises(ConfigError, match=r"^node kind 'map' is already registered \(MapKind\)"):
        register_node_kind("map", MapKind())
    with pytest.raises(ConfigError, match=r"^node kind 'test-object' is a object"):
        register_node_kind("test-object", object())  # type: ignore[arg-type]
    assert node_kind("test-object") is None
