"""Static checks of a blueprint, with the TypeScript Flowcraft's codes where it has them.

``lint_blueprint`` accepts a ``Blueprint`` or the raw JSON data. It reports every problem loading would
refuse (``flowcraft.model.blueprint_problems``, with their paths), then checks the parts that are valid
as a graph (reachability, cycles), against the app (implementations, subflow targets) and for subflow
recursion.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flowcraft.engine.graph import analyze
from flowcraft.model import Blueprint, blueprint_problems

if TYPE_CHECKING:
    from flowcraft.app import App

CODES = (
    "INVALID_BLUEPRINT",
    "DUPLICATE_NODE_ID",
    "INVALID_EDGE_SOURCE",
    "INVALID_EDGE_TARGET",
    "MISSING_NODE_IMPLEMENTATION",
    "ORPHAN_NODE",
    "UNKNOWN_JOIN_STRATEGY",
    "INVALID_EXPRESSION",
    "CYCLE_WITHOUT_ENTRY",
    "INVALID_FALLBACK",
    "INVALID_SUBFLOW_BLUEPRINT_ID",
    "INVALID_MAP_WORKER",
    "SUBFLOW_RECURSION",
)


@dataclass(frozen=True, slots=True)
class LintIssue:
    code: str
    message: str
    blueprint_id: str | None = None
    node_id: str | None = None

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def lint_blueprint(
    blueprint: Blueprint | Mapping[str, Any],
    app: App | None = None,
    *,
    known_blueprints: Iterable[str | Blueprint | Mapping[str, Any]] = (),
) -> list[LintIssue]:
    """Every problem found, in a stable order. Implementations are checked only when ``app`` is given;
    subflow targets are checked against ``app``'s blueprints plus ``known_blueprints`` (ids, or blueprints
    whose own subflows count for the recursion check) when either is given."""
    data = blueprint.to_json_dict() if isinstance(blueprint, Blueprint) else blueprint
    raw_id = data.get("id") if isinstance(data, Mapping) else None
    bp_id = raw_id if isinstance(raw_id, str) else None
    problems = blueprint_problems(data)
    issues = [LintIssue(problem.code, str(problem), bp_id, problem.node_id) for problem in problems]
    if not problems:
        loaded: Blueprint | None = blueprint if isinstance(blueprint, Blueprint) else Blueprint.from_dict(data)
    else:
        loaded = Blueprint.load_valid_parts(data, problems)
    if loaded is None:
        return issues
    return issues + _graph_issues(loaded, app, list(known_blueprints))


def _graph_issues(
    blueprint: Blueprint, app: App | None, known_blueprints: list[str | Blueprint | Mapping[str, Any]]
) -> list[LintIssue]:
    issues: list[LintIssue] = []
    bp_id = blueprint.id

    def issue(code: str, message: str, node_id: str | None = None) -> None:
        issues.append(LintIssue(code, message, bp_id, node_id))

    subflows = _subflow_targets([*known_blueprints, *(app.blueprints.values() if app is not None else ())])
    known = set(subflows)
    for node in blueprint.nodes:
        params = node.params
        if node.uses == "subflow":
            target = params.get("blueprintId")
            if known and target not in known and target != bp_id:
                issue("INVALID_SUBFLOW_BLUEPRINT_ID",
                      f"node {node.id!r}: subflow blueprint {target!r} is not known", node.id)
        if node.uses == "map":
            worker = params.get("worker")
            if app is not None and isinstance(worker, str) and app.implementation(bp_id, worker) is None:
                issue("INVALID_MAP_WORKER", f"node {node.id!r}: map worker {worker!r} has no implementation", node.id)
        elif app is not None and not app.has_implementation(bp_id, node.uses):
            issue("MISSING_NODE_IMPLEMENTATION",
                  f"node {node.id!r}: no implementation registered for uses {node.uses!r}", node.id)

    subflows[bp_id] = _subflow_nodes(blueprint)
    for node_id, target in subflows[bp_id]:
        back = _path_back(target, bp_id, subflows)
        if back is not None:
            chain = " -> ".join([bp_id, *back])
            issue("SUBFLOW_RECURSION", f"node {node_id!r}: subflow {target!r} runs {bp_id!r} again ({chain}); "
                  "each run starts another until the app's max_subflow_depth fails it", node_id)

    graph = analyze(blueprint)
    in_cycles = {member for cycle in graph.cycles_without_entry for member in cycle}
    for cycle in graph.cycles_without_entry:
        issue("CYCLE_WITHOUT_ENTRY", f"cycle {' -> '.join(sorted(cycle))} has no entry: no start node reaches it "
              "(add an edge into it or list a member in metadata.cycleEntryPoints)", sorted(cycle)[0])
    for node_id in graph.unreachable:
        if node_id not in in_cycles:
            issue("ORPHAN_NODE", f"node {node_id!r} is unreachable from every start node", node_id)
    return issues


def _subflow_nodes(blueprint: Blueprint) -> list[tuple[str, str]]:
    """(node id, blueprint id it runs) for each subflow node."""
    return [(node.id, target) for node in blueprint.nodes
            if node.uses == "subflow" and isinstance(target := node.params.get("blueprintId"), str)]


def _subflow_targets(blueprints: Iterable[str | Blueprint | Mapping[str, Any]]) -> dict[str, list[tuple[str, str]]]:
    """Known blueprint ids, each with its subflow nodes (none known for a bare id or unloadable data)."""
    targets: dict[str, list[tuple[str, str]]] = {}
    for known in blueprints:
        if isinstance(known, str):
            targets.setdefault(known, [])
        elif isinstance(known, Blueprint):
            targets[known.id] = _subflow_nodes(known)
        elif isinstance(known.get("id"), str):
            nodes = known.get("nodes")
            targets[known["id"]] = [
                (str(node.get("id")), node["params"]["blueprintId"])
                for node in (nodes if isinstance(nodes, list) else [])
                if isinstance(node, Mapping) and node.get("uses") == "subflow"
                and isinstance(node.get("params"), Mapping) and isinstance(node["params"].get("blueprintId"), str)
            ]
    return targets


def _path_back(start: str, goal: str, subflows: Mapping[str, list[tuple[str, str]]]) -> list[str] | None:
    """The blueprint ids from ``start`` to ``goal`` through subflow nodes (breadth first), or None."""
    came_from: dict[str, str | None] = {start: None}
    queue = [start]
    for current in queue:
        if current == goal:
            path = [current]
            while (previous := came_from[path[-1]]) is not None:
                path.append(previous)
            return path[::-1]
        for _, target in subflows.get(current, []):
            if target not in came_from:
                came_from[target] = current
                queue.append(target)
    return None
