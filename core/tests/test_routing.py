"""Routing without a store: the pure functions of flowcraft.engine.routing on analysed blueprints."""

from __future__ import annotations

from typing import Any

import pytest

from flowcraft.engine import routing
from flowcraft.engine.graph import CompiledEdge, Graph, analyze
from flowcraft.errors import FlowcraftError
from flowcraft.flow import Flow
from flowcraft.spi import Arrival, Completion, Job


def noop(ctx: Any) -> None:
    return None


def graph_of(edges: list[tuple[str, str, dict[str, str]]], metadata: dict[str, Any] | None = None) -> Graph:
    flow = Flow("routes", metadata=metadata)
    for node_id in dict.fromkeys(n for source, target, _ in edges for n in (source, target)):
        flow.node(node_id, noop)
    for source, target, options in edges:
        flow.edge(source, target, **options)
    return analyze(flow.to_blueprint())


def route(graph: Graph, node_id: str, output: Any = None, action: str | None = None, *, visit: int = 0,
          names: dict[str, Any] | None = None, max_iterations: int = 1000, due_at: float | None = None
          ) -> list[Arrival]:
    job = Job("run", "routes", node_id, visit=visit, version="1")
    completion = Completion(node_id, output=output, action=action, due_at=due_at)
    given = {"result": {"output": output, "action": action}, **(names or {})}
    return routing.completion_arrivals(graph, job, completion, given, max_iterations)


def summary(arrivals: list[Arrival]) -> list[tuple[str, int, bool]]:
    return [(a.job.node_id, a.job.visit, a.arrived) for a in arrivals]


def test_an_action_takes_its_edges_and_skips_the_others() -> None:
    graph = graph_of([("gate", "yes", {"action": "approve"}), ("gate", "no", {"action": "reject"})])
    assert summary(route(graph, "gate", 1, "approve")) == [("yes", 0, True), ("no", 0, False)]
    assert summary(route(graph, "gate", 1, "reject")) == [("yes", 0, False), ("no", 0, True)]


def test_default_edges_are_taken_when_no_edge_matches_the_action_or_there_is_none() -> None:
    graph = graph_of([("gate", "special", {"action": "special"}), ("gate", "usual", {})])
    assert summary(route(graph, "gate", action="other")) == [("special", 0, False), ("usual", 0, True)]
    assert summary(route(graph, "gate")) == [("special", 0, False), ("usual", 0, True)]
    assert summary(route(graph, "gate", action="special")) == [("special", 0, True), ("usual", 0, False)]


def test_an_action_edge_whose_condition_fails_falls_back_to_the_default_edges() -> None:
    graph = graph_of([("gate", "big", {"action": "go", "condition": "result.output > 10"}), ("gate", "small", {})])
    assert summary(route(graph, "gate", 50, "go")) == [("big", 0, True), ("small", 0, False)]
    assert summary(route(graph, "gate", 5, "go")) == [("big", 0, False), ("small", 0, True)]


def test_conditions_choose_among_default_edges_and_see_the_given_names() -> None:
    graph = graph_of([("a", "b", {"condition": "result.output > 1"}), ("a", "c", {"condition": "context.flag"})])
    assert summary(route(graph, "a", 2, names={"context": {"flag": False}})) == [("b", 0, True), ("c", 0, False)]
    assert summary(route(graph, "a", 0, names={"context": {"flag": True}})) == [("b", 0, False), ("c", 0, True)]
    assert summary(route(graph, "a", 0, names={"context": {"flag": False}})) == [("b", 0, False), ("c", 0, False)]


def test_holds_is_asked_only_about_edges_it_must_decide_on() -> None:
    graph = graph_of([("a", "b", {"action": "x", "condition": "true"}), ("a", "c", {"condition": "true"})])
    asked: list[str] = []

    def holds(edge: CompiledEdge) -> bool:
        asked.append(edge.edge.target)
        return True

    out_edges = graph.info("a").out_edges
    assert [e.edge.target for e in routing.taken_edges(out_edges, "x", holds)] == ["b"]
    assert asked == ["b"]  # the default edge's condition is never evaluated once the action edge is taken
    asked.clear()
    assert [e.edge.target for e in routing.taken_edges(out_edges, None, holds)] == ["c"]
    assert asked == ["c"]


def test_several_edges_to_one_target_make_one_arrival_over_the_first_taken_edge() -> None:
    graph = graph_of([("a", "b", {"action": "x", "transform": "'over x'"}),
                      ("a", "b", {"transform": "'over default'"}),
                      ("a", "b", {"transform": "'second default'"})])
    assert [(a.job.node_id, a.arrived, a.contribution) for a in route(graph, "a", 1)] == [("b", True, "over default")]
    assert [(a.job.node_id, a.arrived, a.contribution) for a in route(graph, "a", 1, "x")] == [("b", True, "over x")]


def test_a_skip_carries_no_transform_and_a_taken_edge_transforms_its_contribution() -> None:
    graph = graph_of([("a", "b", {"transform": "input * 2"}), ("a", "c", {"action": "never", "transform": "1"})])
    (taken, skipped) = route(graph, "a", 21)
    assert (taken.contribution, taken.job.input, taken.job.has_input) == (42, 42, True)
    assert (skipped.arrived, skipped.contribution) == (False, 21)  # a skip's contribution is never read


def test_a_join_target_waits_for_its_predecessors_and_gets_no_input_of_its_own() -> None:
    graph = graph_of([("start", "a", {}), ("start", "b", {}), ("a", "join", {}), ("b", "join", {})])
    (arrival,) = route(graph, "a", "from a")
    assert (arrival.expected, arrival.member, arrival.contribution) == (("a", "b"), "a", "from a")
    assert (arrival.job.input, arrival.job.has_input) == (None, False)


def test_due_at_travels_to_the_taken_edges() -> None:
    graph = graph_of([("nap", "after", {})])
    assert [a.job.due_at for a in route(graph, "nap", due_at=123.0)] == [123.0]


LOOP = [("start", "body", {}), ("body", "check", {}), ("check", "body", {"action": "continue"}),
        ("check", "done", {"action": "break"})]


def test_a_back_edge_starts_the_next_visit_and_the_loop_exit_waits() -> None:
    graph = graph_of(LOOP)
    continued = route(graph, "check", action="continue", visit=2)
    assert summary(continued) == [("body", 3, True)]  # no skip to the exit while the loop goes on
    assert continued[0].expected == ("check",)  # a back edge's join waits for the back predecessors


def test_a_loop_that_ends_sends_no_skip_back() -> None:
    graph = graph_of(LOOP)
    assert summary(route(graph, "check", action="break", visit=2)) == [("done", 0, True)]


def test_nodes_inside_a_loop_keep_its_visit() -> None:
    graph = graph_of(LOOP)
    assert summary(route(graph, "body", visit=4)) == [("check", 4, True)]
    assert summary(route(graph, "start")) == [("body", 0, True)]


def test_a_back_edge_beyond_the_iteration_cap_raises() -> None:
    graph = graph_of(LOOP)
    assert summary(route(graph, "check", action="continue", visit=4, max_iterations=5)) == [("body", 5, True)]
    with pytest.raises(FlowcraftError, match=r"^loop at node 'body' exceeded 5 iterations \(check the loop condition"):
        route(graph, "check", action="continue", visit=5, max_iterations=5)


def test_a_node_without_out_edges_routes_nowhere() -> None:
    graph = graph_of([("a", "b", {})])
    assert route(graph, "b", 1) == []


def test_skips_travel_forward_edges_only() -> None:
    graph = graph_of(LOOP)
    job = Job("run", "routes", "start", version="1")
    assert summary(routing.skip_arrivals(graph, job, "check", 1)) == [("done", 0, False)]
    assert summary(routing.skip_arrivals(graph, job, "body", 1)) == [("check", 1, False)]


def test_dedupe_keeps_the_first_arrival_per_target_and_member() -> None:
    graph = graph_of([("start", "a", {}), ("start", "b", {}), ("a", "join", {}), ("b", "join", {})])
    job = Job("run", "routes", "start", version="1")
    skips = routing.skip_arrivals(graph, job, "a", 0) + routing.skip_arrivals(graph, job, "b", 0)
    repeated = skips + routing.skip_arrivals(graph, job, "a", 0)
    assert [(a.job.node_id, a.member) for a in routing.dedupe(repeated)] == [("join", "a"), ("join", "b")]
