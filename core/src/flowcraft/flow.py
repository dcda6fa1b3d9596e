"""Flow: the fluent builder that produces a Blueprint plus the implementations its nodes use."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flowcraft.errors import BlueprintError
from flowcraft.model import (
    JOIN_STRATEGIES,
    Blueprint,
    EdgeDefinition,
    NodeConfig,
    NodeDefinition,
    parse_duration,
)
from flowcraft.nodes.base import Implementation


class Flow:
    """Build a workflow in code::

        flow = Flow("orders", version="1")
        flow.node("fetch", fetch_order)
        flow.node("charge", charge, retries=3, retry_delay=0.5, timeout=10, fallback="refund")
        flow.edge("fetch", "charge", condition="result.output.total > 0")

    ``retries`` counts extra attempts (``retries=3`` -> up to 4 attempts). A node's ``uses`` key defaults
    to its id; implementations are scoped to this flow, so two flows may reuse node ids.
    """

    def __init__(self, id: str, version: str | int | None = None, metadata: Mapping[str, Any] | None = None) -> None:
        self.id = id
        self.metadata: dict[str, Any] = dict(metadata or {})
        if version is not None:
            self.metadata["version"] = str(version)
        self._nodes: dict[str, NodeDefinition] = {}
        self._edges: list[EdgeDefinition] = []
        self.implementations: dict[str, Implementation] = {}

    def node(
        self,
        id: str,
        implementation: Implementation | None = None,
        *,
        uses: str | None = None,
        params: Mapping[str, Any] | None = None,
        inputs: str | Mapping[str, str] | None = None,
        retries: int = 0,
        retry_delay: float = 0.0,
        retry_backoff: float = 2.0,
        max_retry_delay: float = 60.0,
        timeout: float | None = None,
        fallback: str | None = None,
        join: str = "all",
    ) -> Any:
        """Add a node; without an implementation, return a decorator that registers one."""
        if implementation is None and uses is None:
            def decorator(func: Implementation) -> Implementation:
                self.node(id, func, params=params, inputs=inputs, retries=retries, retry_delay=retry_delay,
                          retry_backoff=retry_backoff, max_retry_delay=max_retry_delay, timeout=timeout,
                          fallback=fallback, join=join)
                return func
            return decorator
        if join not in JOIN_STRATEGIES:
            raise BlueprintError(f"node {id!r}: unknown join strategy {join!r}", hint="use 'all' or 'any'")
        if retries < 0:
            raise BlueprintError(f"node {id!r}: retries must be >= 0, got {retries}")
        key = uses or id
        if implementation is not None:
            self.implementations[key] = implementation
        config = NodeConfig(
            max_attempts=retries + 1, retry_delay=retry_delay, retry_backoff=retry_backoff,
            max_retry_delay=max_retry_delay, timeout=timeout, fallback=fallback,
            join_strategy=join,  # type: ignore[arg-type]  # checked above
        )
        self._add(NodeDefinition(id, key, dict(params or {}), inputs, config))
        return self

    def edge(
        self,
        source: str,
        target: str,
        *,
        action: str | None = None,
        condition: str | None = None,
        transform: str | None = None,
    ) -> Flow:
        self._edges.append(EdgeDefinition(source, target, action, condition, transform))
        return self

    def sleep(self, id: str, duration: float | str) -> Flow:
        """A durable timer: successors run ``duration`` later (seconds or '30s', '5m', '2d')."""
        seconds = parse_duration(duration, f"sleep node {id!r}")
        self._add(NodeDefinition(id, "sleep", {"duration": f"{seconds}s"}))
        return self

    def wait(self, id: str, **params: Any) -> Flow:
        """Pause the run here until ``resume(run_id, action=..., output=...)``; edges may match the action."""
        self._add(NodeDefinition(id, "wait", dict(params)))
        return self

    def map(
        self,
        id: str,
        worker: Implementation | str,
        *,
        chunk_size: int = 1,
        max_concurrency: int | None = None,
        collect_errors: bool = False,
        inputs: str | Mapping[str, str] | None = None,
        retries: int = 0,
        retry_delay: float = 0.0,
        timeout: float | None = None,
    ) -> Flow:
        """Run ``worker`` once per item of this node's list input; the output is the list of results in
        item order. ``collect_errors`` turns an item failure into ``{"error": ...}`` instead of failing."""
        if isinstance(worker, str):
            worker_key = worker
        else:
            worker_key = f"{id}.worker"
            self.implementations[worker_key] = worker
        params: dict[str, Any] = {"worker": worker_key, "chunkSize": chunk_size}
        if max_concurrency:
            params["maxConcurrency"] = max_concurrency
        if collect_errors:
            params["collectErrors"] = True
        config = NodeConfig(max_attempts=retries + 1, retry_delay=retry_delay, timeout=timeout)
        self._add(NodeDefinition(id, "map", params, inputs, config))
        return self

    def subflow(
        self,
        id: str,
        blueprint_id: str,
        *,
        inputs: Mapping[str, str] | None = None,
        outputs: Mapping[str, str] | None = None,
        retries: int = 0,
        fallback: str | None = None,
    ) -> Flow:
        """Run another blueprint as a child run; ``inputs`` {child key: parent key} seeds its context,
        ``outputs`` {parent key: child key} copies results back. The node's output is the child's result."""
        params: dict[str, Any] = {"blueprintId": blueprint_id}
        if inputs:
            params["inputs"] = dict(inputs)
        if outputs:
            params["outputs"] = dict(outputs)
        self._add(NodeDefinition(id, "subflow", params, None,
                                 NodeConfig(max_attempts=retries + 1, fallback=fallback)))
        return self

    def loop(self, id: str, *, start: str, end: str, condition: str, max_iterations: int | None = None) -> Flow:
        """Repeat ``start`` .. ``end`` while ``condition`` holds (evaluated after each pass over context,
        node outputs, ``input`` and ``iteration``). Edges added from ``id`` are taken when the loop ends."""
        self._add(NodeDefinition(id, "loop-controller", {"condition": condition}))
        self.edge(end, id)
        self.edge(id, start, action="continue")
        if max_iterations is not None:
            self.metadata["maxIterations"] = max_iterations
        return self

    def to_blueprint(self) -> Blueprint:
        return Blueprint(self.id, tuple(self._nodes.values()), tuple(self._edges), dict(self.metadata))

    def _add(self, node: NodeDefinition) -> None:
        if node.id in self._nodes:
            raise BlueprintError(f"flow {self.id!r}: node {node.id!r} is defined twice")
        self._nodes[node.id] = node

