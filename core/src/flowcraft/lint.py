"""Static checks of a blueprint, with the TypeScript Flowcraft's codes where it has them.

``lint_blueprint`` accepts a ``Blueprint`` or the raw JSON data: some mistakes (a duplicate node id, an
unknown join strategy) cannot even be loaded into a ``Blueprint``, so they are checked on the raw data
first and the rest is checked on what remains.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from flowcraft.engine.graph import analyze
from flowcraft.errors import BlueprintError, ExpressionError
from flowcraft.expressions import Expression
from flowcraft.model import JOIN_STRATEGIES, Blueprint

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
    known_blueprints: Iterable[str] = (),
) -> list[LintIssue]:
    """Every problem found, in a stable order. Implementations are checked only when ``app`` is given;
    subflow targets are checked against ``app``'s blueprints plus ``known_blueprints`` when either is given."""
    issues: list[LintIssue] = []
    if not isinstance(blueprint, Blueprint):
        loaded = _load_raw(blueprint, issues)
        if loaded is None:
            return issues
        blueprint = loaded
    bp_id = blueprint.id

    def issue(code: str, message: str, node_id: str | None = None) -> None:
        issues.append(LintIssue(code, message, bp_id, node_id))

    node_ids = {node.id for node in blueprint.nodes}
    for edge in blueprint.edges:
        if edge.source not in node_ids:
            issue("INVALID_EDGE_SOURCE", f"edge {edge.source} -> {edge.target}: source {edge.source!r} is not a node")
        if edge.target not in node_ids:
            issue("INVALID_EDGE_TARGET", f"edge {edge.source} -> {edge.target}: target {edge.target!r} is not a node")

    # analyze() compiles every expression, so bad ones are reported and dropped before the graph checks
    edges = []
    for edge in blueprint.edges:
        changes: dict[str, Any] = {}
        for kind in ("condition", "transform"):
            error = _expression_error(getattr(edge, kind))
            if error is not None:
                issue("INVALID_EXPRESSION", f"edge {edge.source} -> {edge.target}: {kind}: {error}", edge.source)
                changes[kind] = None
        edges.append(replace(edge, **changes) if changes else edge)
    blueprint = replace(blueprint, edges=tuple(edges))

    known = set(known_blueprints) | (set(app.blueprints) if app is not None else set())
    for node in blueprint.nodes:
        params, config = node.params, node.config
        if config.join_strategy not in JOIN_STRATEGIES:
            issue("UNKNOWN_JOIN_STRATEGY", f"node {node.id!r}: unknown joinStrategy {config.join_strategy!r} "
                  "(use 'all' or 'any')", node.id)
        if config.fallback is not None:
            if config.fallback not in node_ids:
                issue("INVALID_FALLBACK", f"node {node.id!r}: fallback {config.fallback!r} is not a node", node.id)
            elif config.fallback == node.id:
                issue("INVALID_FALLBACK", f"node {node.id!r} is its own fallback", node.id)
        if node.uses == "loop-controller":
            error = _expression_error(params.get("condition"))
            if error is not None:
                issue("INVALID_EXPRESSION", f"node {node.id!r}: loop condition: {error}", node.id)
        if node.uses == "subflow":
            target = params.get("blueprintId")
            if not isinstance(target, str) or not target:
                issue("INVALID_SUBFLOW_BLUEPRINT_ID", f"node {node.id!r}: subflow needs params.blueprintId", node.id)
            elif known and target not in known and target != bp_id:
                issue("INVALID_SUBFLOW_BLUEPRINT_ID",
                      f"node {node.id!r}: subflow blueprint {target!r} is not known", node.id)
        if node.uses == "map":
            worker = params.get("worker")
            if not isinstance(worker, str) or not worker:
                issue("INVALID_MAP_WORKER", f"node {node.id!r}: map needs params.worker (a uses key)", node.id)
            elif app is not None and app.implementation(bp_id, worker) is None:
                issue("INVALID_MAP_WORKER", f"node {node.id!r}: map worker {worker!r} has no implementation", node.id)
        elif app is not None and not app.has_implementation(bp_id, node.uses):
            issue("MISSING_NODE_IMPLEMENTATION",
                  f"node {node.id!r}: no implementation registered for uses {node.uses!r}", node.id)

    graph = analyze(blueprint)
    in_cycles = {member for cycle in graph.cycles_without_entry for member in cycle}
    for cycle in graph.cycles_without_entry:
        issue("CYCLE_WITHOUT_ENTRY", f"cycle {' -> '.join(sorted(cycle))} has no entry: no start node reaches it "
              "(add an edge into it or list a member in metadata.cycleEntryPoints)", sorted(cycle)[0])
    for node_id in graph.unreachable:
        if node_id not in in_cycles:
            issue("ORPHAN_NODE", f"node {node_id!r} is unreachable from every start node", node_id)
    return issues


def _expression_error(source: Any) -> str | None:
    if source is None:
        return None
    if not isinstance(source, str):
        return f"must be a string, got {type(source).__name__}"
    try:
        Expression(source)
    except ExpressionError as exc:
        return str(exc)
    return None


def _load_raw(data: Mapping[str, Any], issues: list[LintIssue]) -> Blueprint | None:
    """Report what would stop ``Blueprint.from_dict``, then load a cleaned copy (None if impossible)."""
    bp_id = data.get("id") if isinstance(data, Mapping) else None
    where = bp_id if isinstance(bp_id, str) else None
    nodes = data.get("nodes") if isinstance(data, Mapping) else None
    if isinstance(nodes, list):
        seen: set[str] = set()
        cleaned = []
        for raw in nodes:
            if not isinstance(raw, Mapping):
                cleaned.append(raw)
                continue
            node_id = raw.get("id")
            if isinstance(node_id, str) and node_id in seen:
                issues.append(LintIssue("DUPLICATE_NODE_ID", f"node id {node_id!r} is used more than once",
                                        where, node_id))
                continue
            if isinstance(node_id, str):
                seen.add(node_id)
            config = raw.get("config")
            if isinstance(config, Mapping) and config.get("joinStrategy", "all") not in JOIN_STRATEGIES:
                issues.append(LintIssue("UNKNOWN_JOIN_STRATEGY", f"node {node_id!r}: unknown joinStrategy "
                                        f"{config['joinStrategy']!r} (use 'all' or 'any')", where, node_id))
                raw = {**raw, "config": {k: v for k, v in config.items() if k != "joinStrategy"}}
            cleaned.append(raw)
        data = {**data, "nodes": cleaned}
    try:
        return Blueprint.from_dict(data)
    except BlueprintError as exc:
        issues.append(LintIssue("INVALID_BLUEPRINT", str(exc), where))
        return None
