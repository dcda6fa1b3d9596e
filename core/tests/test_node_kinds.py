"""Custom node kinds: registered in-process (``register_node_kind``) or by a plugin through the ``flowcraft_node_kinds``
hook, the way the built-ins are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
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


# A third-party distribution registering kinds through the flowcraft_node_kinds hook, as the built-ins are: one
# new kind that a flow runs, and one whose name clashes with the built-in "map" (that plugin is left out).
KIND_PLUGIN = '''
from flowcraft.engine.kinds import InlineKind
from flowcraft.engine.outcome import NodeOutcome
from flowcraft.hookspecs import hookimpl

class Tripled(InlineKind):
    uses = "tp-tripled"

    async def compute(self, node, ctx):
        return NodeOutcome.completed(ctx.input * 3)

@hookimpl
def flowcraft_node_kinds():
    return [Tripled]
'''
CLASHING_KIND_PLUGIN = '''
from flowcraft.engine.kinds import JobKind
from flowcraft.hookspecs import hookimpl

class NotMap(JobKind):
    uses = "map"

@hookimpl
def flowcraft_node_kinds():
    return [NotMap]
'''
KIND_PROBE = '''
import asyncio, json
from flowcraft import Flow, FlowRuntime
from flowcraft.engine.kinds import node_kind
from flowcraft.plugins import registry

async def main():
    flow = Flow("tp")
    flow.node("x3", uses="tp-tripled")
    async with FlowRuntime(flows=[flow]) as runtime:
        result = await runtime.run("tp", 5, timeout=10)
    print(json.dumps({"output": result.output, "map": type(node_kind("map")).__name__,
                      "provider": registry().provider("node kind", "tp-tripled").provider(),
                      "left_out": [left.line() for left in registry().left_out]}))

asyncio.run(main())
'''


def test_a_plugin_registers_node_kinds_through_the_hook_and_a_clash_with_a_builtin_is_left_out(
        tmp_path: Path) -> None:
    for distribution, module, text in (("flowcraft-tripled", "flowcraft_tripled_plugin", KIND_PLUGIN),
                                       ("flowcraft-notmap", "flowcraft_notmap_plugin", CLASHING_KIND_PLUGIN)):
        dist_info = tmp_path / f"{distribution.replace('-', '_')}-1.0.0.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0.0\n")
        (dist_info / "entry_points.txt").write_text(f"[flowcraft]\n{distribution[10:]} = {module}\n")
        (tmp_path / f"{module}.py").write_text(text)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLOWCRAFT_")}
    done = subprocess.run([sys.executable, "-c", KIND_PROBE], capture_output=True, text=True, timeout=60,
                          env={**clean, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["output"] == 15 and found["map"] == "MapKind"
    assert found["provider"] == "flowcraft-tripled 1.0.0 (plugin tripled)"
    assert any(line.startswith('plugin "notmap" (flowcraft-notmap 1.0.0) left out: its node kind \'map\' clashes '
                               "with the built-in one") for line in found["left_out"]), found["left_out"]
