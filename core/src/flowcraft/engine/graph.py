"""Blueprint analysis, done once per blueprint per process: start nodes, predecessors, loops.

Edges are split into *forward* and *back* edges by a depth-first search from the start nodes (and
``metadata.cycleEntryPoints``). A back edge starts a new visit of its target; joins wait only for
predecessors over edges of the same kind. Visits count within a strongly connected component (a loop)
and restart at 0 when the path enters another component, so nodes after a loop run at visit 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flowcraft.expressions import Expression, compile_expression
from flowcraft.model import Blueprint, EdgeDefinition, NodeDefinition, unique

#: Visits of one *generation*: a run retried from a node (``RunControl.retry``) runs its nodes again at visits
#: ``generation * VISITS_PER_GENERATION + v``, so no job key, completion record or timeline entry of an earlier
#: attempt is ever overwritten. Nodes outside loops run at their generation's base visit.
VISITS_PER_GENERATION = 1_000_000


def generation_base(visit: int) -> int:
    """The first visit of ``visit``'s generation (0 for a run never retried)."""
    return visit - visit % VISITS_PER_GENERATION


def loop_visit(visit: int) -> int:
    """The visit within its generation: the loop iteration a node sees (``NodeContext.visit``)."""
    return visit % VISITS_PER_GENERATION


@dataclass(frozen=True, slots=True)
class CompiledEdge:
    edge: EdgeDefinition
    condition: Expression | None
    transform: Expression | None
    is_back: bool
    leaves_cycle: bool = False  # from inside a loop to a node outside it
    within_cycle: bool = False  # both ends in the same loop


@dataclass(slots=True)
class NodeInfo:
    node: NodeDefinition
    out_edges: list[CompiledEdge] = field(default_factory=list)
    forward_preds: tuple[str, ...] = ()
    back_preds: tuple[str, ...] = ()
    component: int = -1
    in_cycle: bool = False
    needs_context: bool = False
    #: every completion takes every out-edge: none has a condition, a transform or an action label, and no two
    #: lead to the same target (routing skips choosing)
    plain_edges: bool = False


@dataclass(slots=True)
class Graph:
    blueprint: Blueprint
    nodes: dict[str, NodeInfo]
    start_nodes: tuple[str, ...]
    fallback_nodes: frozenset[str]
    unreachable: tuple[str, ...]
    cycles_without_entry: tuple[tuple[str, ...], ...]
    _terminal: tuple[str, ...] | None = field(default=None, init=False, repr=False, compare=False)

    def info(self, node_id: str) -> NodeInfo:
        return self.nodes[node_id]

    def target_visit(self, source: str, source_visit: int, edge: CompiledEdge) -> int:
        if edge.is_back:
            return source_visit + 1
        target = self.nodes[edge.edge.target]
        if target.in_cycle and target.component == self.nodes[source].component:
            return source_visit
        return generation_base(source_visit)

    def terminal_nodes(self) -> list[str]:
        """The nodes with no way on (fallbacks aside): where a run's result comes from (found once per graph: every
        run's end asks)."""
        terminal = self._terminal
        if terminal is None:
            terminal = self._terminal = tuple(
                nid for nid, info in self.nodes.items() if not info.out_edges and nid not in self.fallback_nodes)
        return list(terminal)


def analyze(blueprint: Blueprint) -> Graph:
    """Analyse a blueprint in time linear in its nodes and edges (edges to unknown nodes, which loading
    refuses, are ignored here)."""
    nodes = {node.id: NodeInfo(node) for node in blueprint.nodes}
    fallbacks = frozenset(n.config.fallback for n in blueprint.nodes if n.config.fallback)
    edges = [e for e in blueprint.edges if e.source in nodes and e.target in nodes]
    incoming: dict[str, list[str]] = {nid: [] for nid in nodes}
    outgoing: dict[str, list[EdgeDefinition]] = {nid: [] for nid in nodes}
    for edge in edges:
        incoming[edge.target].append(edge.source)
        outgoing[edge.source].append(edge)

    starts = [nid for nid in nodes if not incoming[nid] and nid not in fallbacks]
    entry_points = [e for e in blueprint.metadata.get("cycleEntryPoints", []) or [] if e in nodes]
    roots = unique([*starts, *entry_points])

    components = _strongly_connected(list(nodes), outgoing)
    for index, members in enumerate(components):
        cyclic = len(members) > 1 or any(e.target == members[0] for e in outgoing[members[0]])
        for member in members:
            nodes[member].component = index
            nodes[member].in_cycle = cyclic

    back_edges = _back_edges(roots, outgoing)
    reached = _reachable(roots, outgoing) | fallbacks
    if not starts and entry_points:
        starts = entry_points

    for nid, info in nodes.items():
        compiled = []
        for edge in outgoing[nid]:
            condition = compile_expression(edge.condition) if edge.condition else None
            transform = compile_expression(edge.transform) if edge.transform else None
            target = nodes[edge.target]
            same = info.in_cycle and target.component == info.component
            compiled.append(CompiledEdge(edge, condition, transform, id(edge) in back_edges,
                                         leaves_cycle=info.in_cycle and not same, within_cycle=same))
            if condition is not None and _mentions_context(edge.condition or ""):
                info.needs_context = True
        info.out_edges = compiled
        info.plain_edges = len({e.edge.target for e in compiled}) == len(compiled) and all(
            e.condition is None and e.transform is None and e.edge.action is None for e in compiled)
    forward_preds: dict[str, list[str]] = {nid: [] for nid in nodes}
    back_preds: dict[str, list[str]] = {nid: [] for nid in nodes}
    for edge in edges:
        (back_preds if id(edge) in back_edges else forward_preds)[edge.target].append(edge.source)
    for nid, info in nodes.items():
        info.forward_preds = tuple(unique(forward_preds[nid]))
        info.back_preds = tuple(unique(back_preds[nid]))

    cycles_without_entry = tuple(
        tuple(members)
        for members in components
        if nodes[members[0]].in_cycle and not any(m in reached for m in members)
    )
    unreachable = tuple(nid for nid in nodes if nid not in reached)
    return Graph(blueprint, nodes, tuple(starts), fallbacks, unreachable, cycles_without_entry)


def _mentions_context(source: str) -> bool:
    return "context" in source or "_outputs" in source


def _reachable(roots: list[str], outgoing: dict[str, list[EdgeDefinition]]) -> set[str]:
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        nid = stack.pop()
        if nid in seen:
            continue
        seen.add(nid)
        stack.extend(e.target for e in outgoing[nid])
    return seen


def _back_edges(roots: list[str], outgoing: dict[str, list[EdgeDefinition]]) -> set[int]:
    """Ids of edges that point to a node on the current DFS path (iterative DFS, deterministic order)."""
    back: set[int] = set()
    visited: set[str] = set()
    on_path: set[str] = set()
    for root in roots:
        if root in visited:
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        visited.add(root)
        on_path.add(root)
        while stack:
            nid, index = stack[-1]
            edges = outgoing[nid]
            if index < len(edges):
                stack[-1] = (nid, index + 1)
                edge = edges[index]
                if edge.target in on_path:
                    back.add(id(edge))
                elif edge.target not in visited:
                    visited.add(edge.target)
                    on_path.add(edge.target)
                    stack.append((edge.target, 0))
            else:
                stack.pop()
                on_path.discard(nid)
    return back


def _strongly_connected(order: list[str], outgoing: dict[str, list[EdgeDefinition]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative."""
    index_of: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    result: list[list[str]] = []
    counter = 0
    for root in order:
        if root in index_of:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            nid, i = work[-1]
            if i == 0:
                index_of[nid] = low[nid] = counter
                counter += 1
                stack.append(nid)
                on_stack.add(nid)
            edges = outgoing[nid]
            if i < len(edges):
                work[-1] = (nid, i + 1)
                target = edges[i].target
                if target not in index_of:
                    work.append((target, 0))
                elif target in on_stack:
                    low[nid] = min(low[nid], index_of[target])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[nid])
            if low[nid] == index_of[nid]:
                members = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    members.append(member)
                    if member == nid:
                        break
                result.append(members)
    return result
