"""Guards against poison jobs: values no store can keep, blueprint definitions the engine cannot run, and
engine errors that a redelivery would only repeat.

Each check names what was wrong in one line, so a run fails with a reason instead of its job coming back
forever.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from flowcraft.model import Blueprint, NodeDefinition

#: Exception types raised by mistakes in code or data, which a redelivery repeats: a job whose handling
#: raises one of them is redelivered a bounded number of times, then its run fails. Anything else (a
#: connection error, a busy database) is taken as transient and redelivered without a bound.
DETERMINISTIC_ERRORS: tuple[type[Exception], ...] = (
    TypeError, ValueError, AttributeError, LookupError, AssertionError, NameError, ArithmeticError,
    RecursionError, NotImplementedError,
)

_SCALARS = (str, int, float, bool, type(None))


def json_problem(value: Any, what: str) -> str | None:
    """Why ``value`` cannot be stored as JSON (``what`` names it, e.g. "node 'a' output"), or None."""
    if isinstance(value, _SCALARS):
        return None
    try:
        json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except RecursionError:
        return f"{what} is nested too deeply to store as JSON"
    except (TypeError, ValueError) as exc:
        return f"{what}{_where_not_json(value, '', set()) or f' is not JSON-serialisable: {exc}'}"
    return None


def context_problem(context: Mapping[Any, Any], what: str) -> str | None:
    """Why a mapping of context keys to values cannot be stored (keys must be strings, values JSON)."""
    for key, value in context.items():
        if not isinstance(key, str):
            return f"{what} key {key!r} is of type {type(key).__name__}; context keys must be strings"
        problem = json_problem(value, f"{what} value {key!r}")
        if problem is not None:
            return problem
    return None


def _where_not_json(value: Any, path: str, seen: set[int]) -> str:
    """The path inside ``value`` to the first part JSON cannot hold, as " at [...]: problem"."""
    if isinstance(value, _SCALARS):
        return ""
    if id(value) in seen:
        return f"{_at(path)} refers back to itself (a circular reference)"
    if isinstance(value, Mapping):
        seen.add(id(value))
        for key, item in value.items():
            if not isinstance(key, _SCALARS):
                return f"{_at(path)} has a key of type {type(key).__name__}; JSON keys must be strings"
            found = _where_not_json(item, f"{path}[{key!r}]", seen)
            if found:
                return found
        seen.discard(id(value))
        return ""
    if isinstance(value, list | tuple):
        seen.add(id(value))
        for index, item in enumerate(value):
            found = _where_not_json(item, f"{path}[{index}]", seen)
            if found:
                return found
        seen.discard(id(value))
        return ""
    return f"{_at(path)} is of type {type(value).__name__}, which is not JSON-serialisable"


def _at(path: str) -> str:
    return f" at {path}" if path else ""


def definition_problem(blueprint: Blueprint) -> str | None:
    """The first value of ``blueprint`` that the engine interprets at run time and cannot use, or None.

    Blueprints loaded from JSON are validated when loaded; this catches blueprints built around that
    validation, when handling one of their jobs fails."""
    where = f"blueprint {blueprint.id!r}"
    iterations = blueprint.metadata.get("maxIterations")
    if iterations is not None and not _positive_whole(iterations):
        return f"{where}: metadata.maxIterations must be a positive integer, got {iterations!r}"
    node_ids = {node.id for node in blueprint.nodes}
    for node in blueprint.nodes:
        problem = _node_problem(node, node_ids)
        if problem is not None:
            return f"{where} node {node.id!r}: {problem}"
    return None


def _node_problem(node: NodeDefinition, node_ids: set[str]) -> str | None:
    config = node.config
    if config.fallback is not None and (not isinstance(config.fallback, str) or config.fallback not in node_ids):
        return f"fallback {config.fallback!r} is not a node of this blueprint"
    if not _positive_whole(config.max_attempts):
        return f"maxRetries must be a positive integer, got {config.max_attempts!r}"
    for name, number in (("retryDelay", config.retry_delay), ("retryBackoff", config.retry_backoff),
                         ("maxRetryDelay", config.max_retry_delay)):
        if not _number(number) or number < 0:
            return f"{name} must be a number >= 0, got {number!r}"
    if config.timeout is not None and (not _number(config.timeout) or not config.timeout > 0):
        return f"timeout must be a positive number, got {config.timeout!r}"
    if node.inputs is not None and not isinstance(node.inputs, str):
        problem = _names_problem(node.inputs, "inputs")
        if problem is not None:
            return problem
    params = node.params
    if node.uses == "map":
        for name in ("chunkSize", "maxConcurrency"):
            value = params.get(name)
            if value is not None and not _positive_whole(value):
                return f"params.{name} must be a positive integer, got {value!r}"
    if node.uses == "subflow":
        if not isinstance(params.get("blueprintId"), str) or not params.get("blueprintId"):
            return f"params.blueprintId must name a blueprint, got {params.get('blueprintId')!r}"
        for name in ("inputs", "outputs"):
            if params.get(name) is not None:
                problem = _names_problem(params[name], f"params.{name}")
                if problem is not None:
                    return problem
    return None


def _names_problem(mapping: Any, what: str) -> str | None:
    if not isinstance(mapping, Mapping):
        return f"{what} must be an object of names to keys, got {type(mapping).__name__}"
    for name, source in mapping.items():
        if not isinstance(name, str) or not isinstance(source, str):
            return f"{what}[{name!r}] must be a string naming a node output or context key, got {source!r}"
    return None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value  # NaN != NaN


def _positive_whole(value: Any) -> bool:
    return _number(value) and value >= 1 and float(value).is_integer()
