"""Blueprints are validated whole at load: every problem is reported with its path in one BlueprintError;
the TypeScript format still loads; loading and analysis are linear in the size of the graph."""

from __future__ import annotations

import json
from typing import Any

import pytest

from flowcraft import App, Flow, FlowRuntime
from flowcraft.errors import BlueprintError, BlueprintValidationError
from flowcraft.lint import lint_blueprint
from flowcraft.model import Blueprint, blueprint_problems
from flowcraft.schema import MAX_BLUEPRINT_DEPTH, blueprint_json_schema

pytestmark = pytest.mark.timeout(60)


def problems_of(data: Any) -> list[str]:
    with pytest.raises(BlueprintValidationError) as caught:
        Blueprint.from_dict(data)
    assert caught.value.problems == [str(problem) for problem in blueprint_problems(data)]
    return caught.value.problems


def blueprint(nodes: list[dict[str, Any]], edges: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": "bp", "nodes": nodes, "edges": edges or [], **extra}


def test_every_problem_is_reported_with_its_path_in_one_error() -> None:
    data = blueprint(
        [
            {"id": "a", "uses": "fetch", "config": {"timeout": float("nan"), "retryBackoff": "fast",
                                                      "fallback": ["b"], "maxRetries": "many"}},
            {"id": "b", "uses": "work", "inputs": {"x": 5}, "config": {"fallback": "nobody"}},
            {"id": "loop", "uses": "loop-controller", "params": {"condition": "iteration <"}},
            {"id": "nap", "uses": "sleep", "params": {"duration": "soon"}},
            {"id": "each", "uses": "map", "params": {"worker": "w", "chunkSize": "big"}},
            {"id": "child", "uses": "subflow", "params": {"blueprintId": "other", "inputs": ["x"]}},
        ],
        [{"source": "a", "target": "ghost"}, {"source": "phantom", "target": "b"},
         {"source": "a", "target": "b", "condition": "result.output >"}],
        metadata={"cycleEntryPoints": 5},
    )
    assert problems_of(data) == [
        "nodes[0].config.maxRetries (node 'a'): must be an integer >= 1 (the total number of attempts), got 'many'",
        "nodes[0].config.retryBackoff (node 'a'): must be a number >= 1 (the delay factor), got 'fast'",
        "nodes[0].config.timeout (node 'a'): must be a positive number of milliseconds, got nan",
        "nodes[0].config.fallback (node 'a'): must be the id of another node, got a list",
        "nodes[1].inputs (node 'b'): must be a string or an object of strings (a node id, context key or path), "
        "got an object",
        "metadata.cycleEntryPoints: must be a list of node ids, got 5",
        "nodes[1].config.fallback (node 'b'): 'nobody' is not a node id",
        "nodes[2].params.condition (node 'loop'): invalid expression 'iteration <': invalid syntax",
        "nodes[3].params.duration (node 'nap'): duration: cannot read 'soon' as a duration "
        "(use e.g. 30, '250ms', '5m', '2d')",
        "nodes[4].params.chunkSize (node 'each'): must be an integer >= 1, got 'big'",
        "nodes[5].params.inputs (node 'child'): must be an object of strings ({child key: parent key} for inputs, "
        "{parent key: child key} for outputs)",
        "edges[0].target (edge a -> ghost): 'ghost' is not a node id",
        "edges[1].source (edge phantom -> b): 'phantom' is not a node id",
        "edges[2].condition (edge a -> b): invalid expression 'result.output >': invalid syntax",
    ]


def test_the_error_is_one_line_naming_the_blueprint_and_the_first_problems() -> None:
    nodes = [{"id": f"n{i}", "uses": "x", "config": {"timeout": -1}} for i in range(15)]
    with pytest.raises(BlueprintValidationError) as caught:
        Blueprint.from_json(json.dumps(blueprint(nodes)))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("blueprint 'bp' is invalid (15 problems): nodes[0].config.timeout (node 'n0'): must "
                              "be a positive number of milliseconds, got -1; ")
    assert message.endswith("; and 5 more (fix each listed path; `flowcraft lint FILE` lists them all)")
    assert len(caught.value.problems) == 15


@pytest.mark.parametrize(("data", "problem"), [
    ([], "a blueprint must be a JSON object with 'id', 'nodes' and 'edges'"),
    ({"nodes": []}, "id: is required: a non-empty string"),
    ({"id": "x", "nodes": "nope"}, "nodes: must be a list of node objects, got 'nope'"),
    ({"id": "x", "nodes": [5]}, "nodes[0]: must be an object (node), got 5"),
    ({"id": "x", "nodes": [{"id": "a", "uses": "a"}, {"id": "a", "uses": "b"}]},
     "nodes[1].id (node 'a'): 'a' is already the id of nodes[0]"),
    (blueprint([{"id": "a", "uses": "a", "config": {"joinStrategy": "most"}}]),
     "nodes[0].config.joinStrategy (node 'a'): must be 'all' or 'any', got 'most'"),
    (blueprint([{"id": "a", "uses": "a", "config": {"fallback": "a"}}]),
     "nodes[0].config.fallback (node 'a'): a node cannot be its own fallback"),
    (blueprint([{"id": "a", "uses": "a", "config": {"maxRetries": True}}]),
     "nodes[0].config.maxRetries (node 'a'): must be an integer >= 1 (the total number of attempts), got True"),
    (blueprint([{"id": "a", "uses": "sleep", "params": {"duration": -5}}]),
     "nodes[0].params.duration (node 'a'): duration: must be a non-negative number, got -5"),
    (blueprint([{"id": "a", "uses": "sleep", "params": {"duration": "-5s"}}]),
     "nodes[0].params.duration (node 'a'): duration: cannot read '-5s' as a duration "
     "(use e.g. 30, '250ms', '5m', '2d')"),
    (blueprint([{"id": "a", "uses": "map", "params": {}}]),
     "nodes[0].params.worker (node 'a'): a map node needs the uses key of its worker"),
    (blueprint([{"id": "a", "uses": "subflow"}]),
     "nodes[0].params.blueprintId (node 'a'): a subflow node needs the id of the blueprint it runs"),
    (blueprint([{"id": "a", "uses": "sleep", "params": {"duration": float("inf")}}]),
     "nodes[0].params.duration (node 'a'): duration: must be a non-negative number, got inf"),
    (blueprint([{"id": "a", "uses": "a", "params": {"when": {1, 2}}}]),
     "nodes.0.params.when: must be a JSON value, got a set"),
    (blueprint([{"id": "a", "uses": "a"}], metadata={"maxIterations": "many"}),
     "metadata.maxIterations: must be an integer >= 1, got 'many'"),
    (blueprint([{"id": "a", "uses": "a"}], metadata={"cycleEntryPoints": ["b"]}),
     "metadata.cycleEntryPoints[0]: 'b' is not a node id"),
])
def test_each_kind_of_problem(data: Any, problem: str) -> None:
    assert problems_of(data) == [problem.replace("nodes.0.", "nodes[0].")]


def test_json_nested_too_deep_is_refused_before_parsing() -> None:
    deep = '{"id": "x", "nodes": [{"id": "a", "uses": "a", "params": {"p": ' + "[" * 100_000 + "]" * 100_000 + "}}]}"
    with pytest.raises(BlueprintError, match=f"nests objects or lists deeper than {MAX_BLUEPRINT_DEPTH} levels"):
        Blueprint.from_json(deep)
    nested: Any = []
    for _ in range(100_000):
        nested = [nested]
    assert problems_of(blueprint([{"id": "a", "uses": "a", "params": {"p": nested}}])) == [
        "nodes[0].params.p" + "[0]" * (MAX_BLUEPRINT_DEPTH - 4)
        + f": nests objects or lists deeper than {MAX_BLUEPRINT_DEPTH} levels"]


def test_invalid_json_is_a_blueprint_error() -> None:
    with pytest.raises(BlueprintError, match="blueprint is not valid JSON"):
        Blueprint.from_json("{")
    with pytest.raises(BlueprintError, match="blueprint is not valid JSON"):
        Blueprint.from_json(b"\xff\xfe")


def test_a_flow_built_in_code_is_validated_when_the_app_loads_it() -> None:
    flow = Flow("code").node("a", lambda ctx: 1).edge("a", "missing")
    with pytest.raises(BlueprintValidationError, match=r"edges\[0\]\.target \(edge a -> missing\): 'missing' is "
                                                       "not a node id"):
        App(flows=[flow])


async def test_the_typescript_format_loads_unchanged_and_round_trips() -> None:
    text = json.dumps({
        "id": "ts", "metadata": {"version": "2", "cycleEntryPoints": ["loop"], "owner": "team-a"},
        "nodes": [
            {"id": "loop", "uses": "step", "params": {"n": 1}, "inputs": {"x": "_x", "y": "loop.a.b"},
             "config": {"maxRetries": 3, "retryDelay": 250, "timeout": 1500, "joinStrategy": "any",
                        "fallback": "rescue"}},
            {"id": "rescue", "uses": "step"},
            {"id": "nap", "uses": "sleep", "params": {"duration": "30s"}},
            {"id": "each", "uses": "batch-scatter", "params": {"chunkSize": 5}},
        ],
        "edges": [{"source": "loop", "target": "loop", "action": "again", "condition": "context.n !== 3 && !false"},
                  {"source": "loop", "target": "nap", "transform": "input"}],
    })
    loaded = Blueprint.from_json(text)
    config = loaded.node("loop").config
    assert (config.max_attempts, config.retry_delay, config.timeout, config.join_strategy, config.fallback) == (
        3, 0.25, 1.5, "any", "rescue")
    assert Blueprint.from_json(loaded.to_json()) == loaded
    assert lint_blueprint(json.loads(text)) == []


def test_the_json_schema_is_published() -> None:
    schema = blueprint_json_schema()
    assert schema["required"] == ["id", "nodes"]
    config = schema["$defs"]["NodeConfigSchema"]["properties"]
    assert config["joinStrategy"]["enum"] == ["all", "any"]
    assert config["maxRetries"]["minimum"] == 1


def fan_in(width: int) -> dict[str, Any]:
    nodes = [{"id": "start", "uses": "noop"}, {"id": "join", "uses": "gather"}]
    nodes += [{"id": f"n{i}", "uses": "noop"} for i in range(width)]
    edges = [{"source": "start", "target": f"n{i}"} for i in range(width)]
    edges += [{"source": f"n{i}", "target": "join"} for i in range(width)]
    return {"id": "wide", "nodes": nodes, "edges": edges}


def test_a_20000_node_fan_in_loads_and_analyses_to_the_right_graph() -> None:
    width = 20_000
    app = App(blueprints=[Blueprint.from_json(json.dumps(fan_in(width)))])
    graph = app.graph("wide")
    assert graph is not None
    assert graph.start_nodes == ("start",)
    assert graph.info("join").forward_preds == tuple(f"n{i}" for i in range(width))
    assert len(graph.info("start").out_edges) == width
    assert graph.terminal_nodes() == ["join"]
    assert graph.unreachable == () and graph.cycles_without_entry == ()


async def test_a_small_fan_in_runs() -> None:
    async with FlowRuntime(blueprints=[Blueprint.from_dict(fan_in(50))], registry={"noop": lambda ctx: 1,
                                                                                "gather": lambda ctx: ctx.input}) as rt:
        result = await rt.run("wide", timeout=30)
    assert result.status == "completed"
    assert result.outputs["join"] == {f"n{i}": 1 for i in range(50)}
