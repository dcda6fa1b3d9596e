"""Blueprints as plain data: validation and JSON in/out compatible with the TypeScript Flowcraft.

Python-side units are seconds and ``retries`` (extra attempts); the JSON keeps the TypeScript meaning:
``maxRetries`` = total attempts, ``retryDelay`` and ``timeout`` in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from flowcraft.errors import BlueprintError

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
    def from_json(cls, data: Mapping[str, Any] | None, where: str) -> NodeConfig:
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise BlueprintError(f"{where}: config must be an object, got {type(data).__name__}")
        strategy = data.get("joinStrategy", "all")
        if strategy not in JOIN_STRATEGIES:
            raise BlueprintError(
                f"{where}: unknown joinStrategy {strategy!r}", hint="use 'all' or 'any'"
            )
        attempts = data.get("maxRetries", 1)
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
            raise BlueprintError(f"{where}: maxRetries must be an integer >= 1 (total attempts), got {attempts!r}")
        timeout = data.get("timeout")
        return cls(
            max_attempts=attempts,
            retry_delay=_from_ms(data.get("retryDelay", 0), f"{where}.retryDelay"),
            retry_backoff=float(data.get("retryBackoff", 2.0)),
            max_retry_delay=_from_ms(data.get("maxRetryDelay", 60000), f"{where}.maxRetryDelay"),
            timeout=None if timeout is None else _from_ms(timeout, f"{where}.timeout"),
            fallback=data.get("fallback"),
            join_strategy=strategy,
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
    def from_json(cls, data: Any, index: int) -> NodeDefinition:
        where = f"nodes[{index}]"
        if not isinstance(data, Mapping):
            raise BlueprintError(f"{where}: a node must be an object with 'id' and 'uses'")
        node_id, uses = data.get("id"), data.get("uses")
        if not isinstance(node_id, str) or not node_id:
            raise BlueprintError(f"{where}: 'id' must be a non-empty string")
        if not isinstance(uses, str) or not uses:
            raise BlueprintError(f"node {node_id!r}: 'uses' must be a non-empty string")
        inputs = data.get("inputs")
        if inputs is not None and not isinstance(inputs, str | Mapping):
            raise BlueprintError(f"node {node_id!r}: 'inputs' must be a string or an object of strings")
        params = data.get("params") or {}
        if not isinstance(params, Mapping):
            raise BlueprintError(f"node {node_id!r}: 'params' must be an object")
        return cls(
            id=node_id,
            uses=uses,
            params=dict(params),
            inputs=inputs if inputs is None or isinstance(inputs, str) else dict(inputs),
            config=NodeConfig.from_json(data.get("config"), f"node {node_id!r} config"),
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
    def from_json(cls, data: Any, index: int) -> EdgeDefinition:
        where = f"edges[{index}]"
        if not isinstance(data, Mapping):
            raise BlueprintError(f"{where}: an edge must be an object with 'source' and 'target'")
        source, target = data.get("source"), data.get("target")
        if not isinstance(source, str) or not isinstance(target, str):
            raise BlueprintError(f"{where}: 'source' and 'target' must be node id strings")
        for key in ("action", "condition", "transform"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise BlueprintError(f"{where} ({source} -> {target}): '{key}' must be a string")
        return cls(source, target, data.get("action"), data.get("condition"), data.get("transform"))


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
        if not isinstance(data, Mapping):
            raise BlueprintError("a blueprint must be a JSON object with 'id', 'nodes' and 'edges'")
        nodes = data.get("nodes")
        if not isinstance(nodes, list):
            raise BlueprintError(f"blueprint {data.get('id')!r}: 'nodes' must be a list")
        edges = data.get("edges", [])
        if not isinstance(edges, list):
            raise BlueprintError(f"blueprint {data.get('id')!r}: 'edges' must be a list")
        metadata = data.get("metadata") or {}
        if not isinstance(metadata, Mapping):
            raise BlueprintError(f"blueprint {data.get('id')!r}: 'metadata' must be an object")
        return cls(
            id=data.get("id"),  # type: ignore[arg-type]  # validated in __post_init__
            nodes=tuple(NodeDefinition.from_json(node, i) for i, node in enumerate(nodes)),
            edges=tuple(EdgeDefinition.from_json(edge, i) for i, edge in enumerate(edges)),
            metadata=dict(metadata),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Blueprint:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BlueprintError(f"blueprint is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    def with_metadata(self, **values: Any) -> Blueprint:
        return replace(self, metadata={**self.metadata, **values})


def _to_ms(seconds: float) -> int | float:
    ms = seconds * 1000
    return int(ms) if float(ms).is_integer() else ms


def _from_ms(value: Any, where: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise BlueprintError(f"{where} must be a non-negative number of milliseconds, got {value!r}")
    return float(value) / 1000.0


def parse_duration(value: float | int | str, where: str = "duration") -> float:
    """Seconds from a number of seconds or a string like '250ms', '30s', '5m', '1h', '2d'."""
    if isinstance(value, bool):
        raise BlueprintError(f"{where}: expected seconds or a string like '30s', got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise BlueprintError(f"{where}: must not be negative, got {value!r}")
        return float(value)
    text = str(value).strip().lower()
    units = (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0), ("d", 86400.0))
    for suffix, factor in units:
        if text.endswith(suffix):
            number = text[: -len(suffix)]
            try:
                return float(number) * factor
            except ValueError:
                break
    raise BlueprintError(f"{where}: cannot read {value!r} as a duration", hint="use e.g. 30, '250ms', '5m', '2d'")


def unique(items: Iterable[str]) -> list[str]:
    """Items in first-seen order without repeats."""
    return list(dict.fromkeys(items))
