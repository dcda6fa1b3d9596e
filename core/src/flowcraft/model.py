"""Blueprints as plain data: validation and JSON in/out compatible with the TypeScript Flowcraft.

Python-side units are seconds and ``retries`` (extra attempts); the JSON keeps the TypeScript meaning:
``maxRetries`` = total attempts, ``retryDelay`` and ``timeout`` in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from flowcraft.errors import BlueprintError, BlueprintValidationError, ExpressionError
from flowcraft.expressions import compile_expression
from flowcraft.schema import MAX_BLUEPRINT_DEPTH, Path, Problem, schema_problems

JoinStrategy = Literal["all", "any"]
JOIN_STRATEGIES: tuple[str, ...] = ("all", "any")


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """How a node is executed: attempts, backoff, timeout, fallback, join strategy."""

    max_attempts: int = 1
    retry_delay: float = 0.0
    retry_backoff: float = 2.0
    max_retry_delay: float = 60.0
    timeout: float | None = None
    fallback: str | None = None
    join_strategy: JoinStrategy = "all"

    def retry_delay_for(self, failed_attempt: int) -> float:
        """Delay before the attempt after ``failed_attempt`` (exponential, capped; jitter added by the engine)."""
        delay = self.retry_delay * (self.retry_backoff ** max(failed_attempt - 1, 0))
        return float(min(delay, self.max_retry_delay))

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        if self.max_attempts != 1:
            data["maxRetries"] = self.max_attempts
        if self.retry_delay:
            data["retryDelay"] = _to_ms(self.retry_delay)
        if self.retry_backoff != 2.0:
            data["retryBackoff"] = self.retry_backoff
        if self.max_retry_delay != 60.0:
            data["maxRetryDelay"] = _to_ms(self.max_retry_delay)
        if self.timeout is not None:
            data["timeout"] = _to_ms(self.timeout)
        if self.fallback is not None:
            data["fallback"] = self.fallback
        if self.join_strategy != "all":
            data["joinStrategy"] = self.join_strategy
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> NodeConfig:
        """From validated JSON (see ``blueprint_problems``)."""
        if not data:
            return cls()
        timeout = data.get("timeout")
        return cls(
            max_attempts=data.get("maxRetries", 1),
            retry_delay=data.get("retryDelay", 0) / 1000.0,
            retry_backoff=float(data.get("retryBackoff", 2.0)),
            max_retry_delay=data.get("maxRetryDelay", 60000) / 1000.0,
            timeout=None if timeout is None else timeout / 1000.0,
            fallback=data.get("fallback"),
            join_strategy=data.get("joinStrategy", "all"),
        )


@dataclass(frozen=True, slots=True)
class NodeDefinition:
    """One node: an id, the implementation key it ``uses``, static params, input mapping and config."""

    id: str
    uses: str
    params: Mapping[str, Any] = field(default_factory=dict)
    inputs: str | Mapping[str, str] | None = None
    config: NodeConfig = field(default_factory=NodeConfig)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": self.id, "uses": self.uses}
        if self.params:
            data["params"] = dict(self.params)
        if self.inputs is not None:
            data["inputs"] = self.inputs if isinstance(self.inputs, str) else dict(self.inputs)
        config = self.config.to_json()
        if config:
            data["config"] = config
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NodeDefinition:
        """From validated JSON (see ``blueprint_problems``)."""
        inputs = data.get("inputs")
        return cls(
            id=data["id"],
            uses=data["uses"],
            params=dict(data.get("params") or {}),
            inputs=inputs if inputs is None or isinstance(inputs, str) else dict(inputs),
            config=NodeConfig.from_json(data.get("config")),
        )


@dataclass(frozen=True, slots=True)
class EdgeDefinition:
    """A directed edge, taken when its action matches and its condition holds."""

    source: str
    target: str
    action: str | None = None
    condition: str | None = None
    transform: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"source": self.source, "target": self.target}
        for key in ("action", "condition", "transform"):
            value = getattr(self, key)
            if value is not None:
                data[key] = value
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EdgeDefinition:
        """From validated JSON (see ``blueprint_problems``)."""
        return cls(data["source"], data["target"], data.get("action"), data.get("condition"), data.get("transform"))


@dataclass(frozen=True, slots=True)
class Blueprint:
    """A workflow graph as plain, JSON-serialisable data. Immutable: the engine never mutates it."""

    id: str
    nodes: tuple[NodeDefinition, ...]
    edges: tuple[EdgeDefinition, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not self.id:
            raise BlueprintError("blueprint 'id' must be a non-empty string")
        seen: set[str] = set()
        for node in self.nodes:
            if node.id in seen:
                raise BlueprintError(
                    f"blueprint {self.id!r}: duplicate node id {node.id!r}", hint="node ids must be unique"
                )
            seen.add(node.id)

    @property
    def version(self) -> str | None:
        version = self.metadata.get("version")
        return None if version is None else str(version)

    @property
    def node_map(self) -> dict[str, NodeDefinition]:
        return {node.id: node for node in self.nodes}

    def node(self, node_id: str) -> NodeDefinition:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise BlueprintError(f"blueprint {self.id!r} has no node {node_id!r}")

    def to_json_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "nodes": [node.to_json() for node in self.nodes],
            "edges": [edge.to_json() for edge in self.edges],
        }
        if self.metadata:
            data["metadata"] = dict(self.metadata)
        return data

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_json_dict(), indent=indent, sort_keys=False)

    @property
    def content_hash(self) -> str:
        canonical = json.dumps(self.to_json_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: Any) -> Blueprint:
        """Validate the whole blueprint, then load it; every problem is reported in one error."""
        problems = blueprint_problems(data)
        if problems:
            raise BlueprintValidationError(_name(data), [str(problem) for problem in problems])
        return cls._build(data)

    @classmethod
    def from_json(cls, text: str | bytes) -> Blueprint:
        if _bracket_depth(text) > MAX_BLUEPRINT_DEPTH:
            raise BlueprintError(f"blueprint JSON nests objects or lists deeper than {MAX_BLUEPRINT_DEPTH} levels",
                                 hint="flatten the params")
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BlueprintError(f"blueprint is not valid JSON: {exc}") from None
        except RecursionError:  # brackets inside strings fooled the pre-check
            raise BlueprintError(f"blueprint JSON nests deeper than {MAX_BLUEPRINT_DEPTH} levels") from None
        return cls.from_dict(data)

    @classmethod
    def load_valid_parts(cls, data: Any, problems: list[Problem]) -> Blueprint | None:
        """The blueprint without the parts ``problems`` point at (a node or edge whose id or ends are
        wrong is left out whole), for checks that go on past the first problems (``flowcraft lint``).
        None when the blueprint as a whole is unusable."""
        if not isinstance(data, Mapping) or any(len(p.path) < 2 for p in problems):
            return None
        drops = {_droppable(problem.path) for problem in problems}
        cleaned = _without(data, drops, (), {path[:i] for path in drops for i in range(len(path))})
        if schema_problems(cleaned):  # what is left must at least have the right shape to be built
            return None
        return cls._build(cleaned)

    @classmethod
    def _build(cls, data: Mapping[str, Any]) -> Blueprint:
        return cls(
            id=data["id"],
            nodes=tuple(NodeDefinition.from_json(node) for node in data["nodes"]),
            edges=tuple(EdgeDefinition.from_json(edge) for edge in data.get("edges") or ()),
            metadata=dict(data.get("metadata") or {}),
        )

    def problems(self) -> list[Problem]:
        """What ``from_dict`` would report for this blueprint (e.g. one built in code by a ``Flow``)."""
        return blueprint_problems(self.to_json_dict())

    def validate(self) -> None:
        problems = self.problems()
        if problems:
            raise BlueprintValidationError(f"blueprint {self.id!r}", [str(problem) for problem in problems])

    def with_metadata(self, **values: Any) -> Blueprint:
        return replace(self, metadata={**self.metadata, **values})


def blueprint_problems(data: Any) -> list[Problem]:
    """Every problem of blueprint data (parsed JSON), each with its path: the schema (shapes, types,
    ranges), then what needs the whole blueprint (references between nodes, expressions, the params of
    the built-in nodes). Never raises on bad data."""
    if not isinstance(data, Mapping):
        return [Problem((), "a blueprint must be a JSON object with 'id', 'nodes' and 'edges'")]
    problems = _json_problems(data)
    if problems:
        return problems  # the schema and reference checks assume plain, bounded JSON
    problems = schema_problems(data) + _reference_problems(data)
    return [_with_subject(problem, data) for problem in problems]


def _name(data: Any) -> str:
    bp_id = data.get("id") if isinstance(data, Mapping) else None
    return f"blueprint {bp_id!r}" if isinstance(bp_id, str) and bp_id else "the blueprint"


def _bracket_depth(text: str | bytes) -> int:
    """Deepest nesting of JSON objects and lists, counted without parsing (strings skipped)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


_JSON_SCALARS = (str, int, float, bool, type(None))


def _is_plain_json(data: Any) -> bool:
    """The fast pass of ``_json_problems``: exact types, no paths built."""
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        kind = type(value)
        if kind is dict:
            if depth >= MAX_BLUEPRINT_DEPTH:
                return False
            for key, item in value.items():
                if type(key) is not str:
                    return False
                if type(item) not in _JSON_SCALARS:
                    stack.append((item, depth + 1))
        elif kind is list:
            if depth >= MAX_BLUEPRINT_DEPTH:
                return False
            stack.extend((item, depth + 1) for item in value if type(item) not in _JSON_SCALARS)
        elif kind not in _JSON_SCALARS:
            return False  # tuples, other mappings, objects: the slow pass says which are fine
    return True


def _json_problems(data: Mapping[str, Any]) -> list[Problem]:
    if _is_plain_json(data):
        return []
    return _json_problems_with_paths(data)


def _json_problems_with_paths(data: Mapping[str, Any]) -> list[Problem]:
    """Values that are not plain JSON (Python objects, non-string keys) or nest too deep (NaN is left to the
    fields that need a number: the schema and the built-in node checks refuse it there)."""
    problems: list[Problem] = []
    stack: list[tuple[Any, Path]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, Mapping | list | tuple) and len(path) >= MAX_BLUEPRINT_DEPTH:
            problems.append(Problem(path, f"nests objects or lists deeper than {MAX_BLUEPRINT_DEPTH} levels"))
        elif isinstance(value, Mapping):
            for key, item in value.items():
                if isinstance(key, str):
                    stack.append((item, (*path, key)))
                else:
                    problems.append(Problem(path, f"object keys must be strings, got {key!r}"))
        elif isinstance(value, list | tuple):
            stack.extend((item, (*path, index)) for index, item in enumerate(value))
        elif not isinstance(value, str | int | float | bool | None):
            problems.append(Problem(path, f"must be a JSON value, got a {type(value).__name__}"))
    return sorted(problems, key=lambda problem: str(problem.path))


def _reference_problems(data: Mapping[str, Any]) -> list[Problem]:
    """Checks that need the whole blueprint, over the parts whose shape is right (the schema reports the rest)."""
    raw_nodes, raw_edges = data.get("nodes"), data.get("edges")
    nodes = list(enumerate(raw_nodes)) if isinstance(raw_nodes, list) else []
    edges = list(enumerate(raw_edges)) if isinstance(raw_edges, list) else []
    problems: list[Problem] = []
    index_of: dict[str, int] = {}
    for index, node in nodes:
        node_id = node.get("id") if isinstance(node, Mapping) else None
        if isinstance(node_id, str) and node_id:
            if node_id in index_of:
                problems.append(Problem(("nodes", index, "id"), f"{node_id!r} is already the id of "
                                        f"nodes[{index_of[node_id]}]", "DUPLICATE_NODE_ID", node_id))
            else:
                index_of[node_id] = index
    for index, node in nodes:
        if isinstance(node, Mapping):
            problems += _node_problems(index, node, index_of)
    for index, edge in edges:
        if not isinstance(edge, Mapping):
            continue
        for end, code in (("source", "INVALID_EDGE_SOURCE"), ("target", "INVALID_EDGE_TARGET")):
            node_id = edge.get(end)
            if isinstance(node_id, str) and node_id not in index_of:
                problems.append(Problem(("edges", index, end), f"{node_id!r} is not a node id", code))
        for kind in ("condition", "transform"):
            error = _expression_problem(edge.get(kind))
            if error is not None:
                source = edge.get("source")
                problems.append(Problem(("edges", index, kind), error, "INVALID_EXPRESSION",
                                        source if isinstance(source, str) else None))
    metadata = data.get("metadata")
    entry_points = metadata.get("cycleEntryPoints") if isinstance(metadata, Mapping) else None
    for index, node_id in enumerate(entry_points if isinstance(entry_points, list) else []):
        if isinstance(node_id, str) and node_id not in index_of:
            problems.append(Problem(("metadata", "cycleEntryPoints", index), f"{node_id!r} is not a node id"))
    return problems


def _node_problems(index: int, node: Mapping[str, Any], index_of: Mapping[str, int]) -> list[Problem]:
    node_id = node.get("id") if isinstance(node.get("id"), str) else None
    problems: list[Problem] = []

    def problem(path: Path, message: str, code: str = "INVALID_BLUEPRINT") -> None:
        problems.append(Problem(("nodes", index, *path), message, code, node_id))

    config = node.get("config")
    fallback = config.get("fallback") if isinstance(config, Mapping) else None
    if isinstance(fallback, str):
        if fallback == node_id:
            problem(("config", "fallback"), "a node cannot be its own fallback", "INVALID_FALLBACK")
        elif fallback not in index_of:
            problem(("config", "fallback"), f"{fallback!r} is not a node id", "INVALID_FALLBACK")
    raw_params = node.get("params")
    params: Mapping[str, Any] = raw_params if isinstance(raw_params, Mapping) else {}
    uses = node.get("uses")
    if uses == "loop-controller" and "condition" in params:
        error = _expression_problem(params["condition"])
        if error is not None:
            problem(("params", "condition"), error, "INVALID_EXPRESSION")
    elif uses == "subflow":
        target = params.get("blueprintId")
        if not isinstance(target, str) or not target:
            problem(("params", "blueprintId"), "a subflow node needs the id of the blueprint it runs",
                    "INVALID_SUBFLOW_BLUEPRINT_ID")
        for key in ("inputs", "outputs"):
            if key in params and not _is_string_mapping(params[key]):
                problem(("params", key), "must be an object of strings ({child key: parent key} for inputs, "
                        "{parent key: child key} for outputs)")
    elif uses == "map":
        worker = params.get("worker")
        if not isinstance(worker, str) or not worker:
            problem(("params", "worker"), "a map node needs the uses key of its worker", "INVALID_MAP_WORKER")
        for key in ("chunkSize", "maxConcurrency"):
            value = params.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                problem(("params", key), f"must be an integer >= 1, got {value!r}")
        if not isinstance(params.get("collectErrors", False), bool):
            problem(("params", "collectErrors"), f"must be true or false, got {params['collectErrors']!r}")
    elif uses == "sleep" and "duration" in params:
        try:
            parse_duration(params["duration"])
        except BlueprintError as exc:
            problem(("params", "duration"), str(exc))
    return problems


def _expression_problem(source: Any) -> str | None:
    if source is None:
        return None
    if not isinstance(source, str):
        return f"must be an expression string, got {type(source).__name__}"
    try:
        compile_expression(source)
    except ExpressionError as exc:
        return str(exc)
    return None


def _is_string_mapping(value: Any) -> bool:
    return isinstance(value, Mapping) and all(isinstance(v, str) for v in value.values())


def _with_subject(problem: Problem, data: Mapping[str, Any]) -> Problem:
    """Name the node or the edge a problem is about, as well as its path."""
    if len(problem.path) < 2 or not isinstance(problem.path[1], int):
        return problem
    kind, index = problem.path[0], problem.path[1]
    items = data.get(str(kind))
    item = items[index] if isinstance(items, list) and index < len(items) else None
    if not isinstance(item, Mapping):
        return problem
    if kind == "nodes" and isinstance(item.get("id"), str):
        return replace(problem, subject=f"node {item['id']!r}", node_id=problem.node_id or item["id"])
    if kind == "edges" and isinstance(item.get("source"), str) and isinstance(item.get("target"), str):
        return replace(problem, subject=f"edge {item['source']} -> {item['target']}")
    return problem


_ESSENTIAL_KEYS = frozenset({"id", "uses", "source", "target"})


def _droppable(path: Path) -> Path:
    """What to leave out for a problem at ``path``: a node or edge without a usable id or ends goes whole."""
    if len(path) >= 3 and path[0] in ("nodes", "edges") and path[2] in _ESSENTIAL_KEYS:
        return path[:2]
    return path


def _without(value: Any, drops: set[Path], here: Path, on_the_way: set[Path]) -> Any:
    """A copy of ``value`` without the ``drops`` paths; only containers on the way to a drop are copied."""
    if here not in on_the_way:
        return value
    if isinstance(value, Mapping):
        return {key: _without(item, drops, (*here, key), on_the_way)
                for key, item in value.items() if (*here, key) not in drops}
    if isinstance(value, list):
        return [_without(item, drops, (*here, index), on_the_way)
                for index, item in enumerate(value) if (*here, index) not in drops]
    return value


def _to_ms(seconds: float) -> int | float:
    ms = seconds * 1000
    return int(ms) if float(ms).is_integer() else ms


def parse_duration(value: float | int | str, where: str = "duration") -> float:
    """Seconds from a number of seconds or a string like '250ms', '30s', '5m', '1h', '2d'."""
    if isinstance(value, bool):
        raise BlueprintError(f"{where}: expected seconds or a string like '30s', got {value!r}")
    if isinstance(value, int | float):
        if not 0 <= value < math.inf:
            raise BlueprintError(f"{where}: must be a non-negative number, got {value!r}")
        return float(value)
    text = str(value).strip().lower()
    units = (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0), ("d", 86400.0))
    for suffix, factor in units:
        if text.endswith(suffix):
            try:
                seconds = float(text[: -len(suffix)]) * factor
            except ValueError:
                break
            if not 0 <= seconds < math.inf:
                break
            return seconds
    raise BlueprintError(f"{where}: cannot read {value!r} as a duration", hint="use e.g. 30, '250ms', '5m', '2d'")


def unique(items: Iterable[str]) -> list[str]:
    """Items in first-seen order without repeats."""
    return list(dict.fromkeys(items))
