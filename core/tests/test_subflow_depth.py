"""A subflow that runs itself ends: the app's max_subflow_depth fails the run with a clear reason, and
`flowcraft lint` reports the recursion (directly or through a cycle of blueprints) as SUBFLOW_RECURSION."""

from __future__ import annotations

import pytest

from flowcraft import App, Flow, FlowRuntime
from flowcraft.errors import ConfigError
from flowcraft.lint import lint_blueprint

pytestmark = pytest.mark.timeout(60)


async def test_a_blueprint_running_itself_fails_at_the_depth_limit() -> None:
    flow = Flow("again").subflow("deeper", "again")
    async with FlowRuntime(app=App(flows=[flow], max_subflow_depth=5)) as rt:
        result = await rt.run("again", 1, timeout=30)
        runs, _ = await rt.client.runs(limit=100)
    assert result.status == "failed"
    assert len(runs) == 6  # the top run and its five nested children, no more
    message = result.errors[0]["message"]
    assert message.endswith("failed: subflow 'again' would be nested 6 runs deep, more than max_subflow_depth 5 "
                            "(a blueprint that runs itself through subflows needs a condition that stops it; "
                            "`flowcraft lint` reports SUBFLOW_RECURSION)")
    assert len(message) < 700  # 5 levels of nested failures quoted, but cut in the middle


async def test_nesting_within_the_limit_completes() -> None:
    leaf = Flow("leaf").node("value", lambda ctx: 7)
    middle = Flow("middle").subflow("run-leaf", "leaf")
    top = Flow("top").subflow("run-middle", "middle")
    async with FlowRuntime(app=App(flows=[leaf, middle, top], max_subflow_depth=2)) as rt:
        result = await rt.run("top", timeout=30)
    assert (result.status, result.output) == ("completed", 7)
    async with FlowRuntime(app=App(flows=[leaf, middle, top], max_subflow_depth=1)) as rt:
        result = await rt.run("top", timeout=30)
    assert result.status == "failed"
    assert "subflow 'leaf' would be nested 2 runs deep, more than max_subflow_depth 1" in result.errors[0]["message"]


def test_the_default_depth_and_a_bad_setting() -> None:
    assert App().max_subflow_depth == 32
    with pytest.raises(ConfigError, match="max_subflow_depth must be >= 1, got 0"):
        App(max_subflow_depth=0)


def test_lint_reports_direct_and_indirect_recursion() -> None:
    itself = Flow("itself").subflow("me", "itself")
    ping = Flow("ping").subflow("to-pong", "pong")
    pong = Flow("pong").node("start", lambda ctx: 1).subflow("to-ping", "ping").edge("start", "to-ping")
    fine = Flow("fine").subflow("to-leaf", "leaf")
    leaf = Flow("leaf").node("value", lambda ctx: 1)
    app = App(flows=[itself, ping, pong, fine, leaf])
    found = {bp_id: [(issue.code, issue.node_id, issue.message) for issue in lint_blueprint(bp, app)]
             for bp_id, bp in app.blueprints.items()}
    assert found["itself"] == [("SUBFLOW_RECURSION", "me", "node 'me': subflow 'itself' runs 'itself' again "
                                "(itself -> itself); each run starts another until the app's max_subflow_depth "
                                "fails it")]
    assert [code for code, _, _ in found["ping"]] == ["SUBFLOW_RECURSION"]
    assert "(ping -> pong -> ping)" in found["ping"][0][2]
    assert [(code, node) for code, node, _ in found["pong"]] == [("SUBFLOW_RECURSION", "to-ping")]
    assert found["fine"] == [] and found["leaf"] == []


def test_lint_sees_recursion_across_raw_blueprint_files() -> None:
    first = {"id": "first", "nodes": [{"id": "s", "uses": "subflow", "params": {"blueprintId": "second"}}]}
    second = {"id": "second", "nodes": [{"id": "s", "uses": "subflow", "params": {"blueprintId": "first"}}]}
    issues = lint_blueprint(first, known_blueprints=[first, second])
    assert [(issue.code, issue.node_id) for issue in issues] == [("SUBFLOW_RECURSION", "s")]
    assert lint_blueprint(first, known_blueprints=["first", "second"]) == []  # ids alone say nothing of "second"
