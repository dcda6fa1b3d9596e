"""The blueprint JSON schema (pydantic models) and the problems it finds, each with its path.

The models check the shape and the types of a blueprint (the TypeScript Flowcraft format plus this
project's additions); ``flowcraft.model`` adds the checks that need the whole blueprint (references
between nodes, expressions, built-in node params). ``blueprint_json_schema()`` publishes the same
rules as a JSON Schema document, e.g. for editors.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

MAX_BLUEPRINT_DEPTH = 64
"""Nesting of objects and lists in a blueprint (params included), checked before parsing the JSON."""

Path = tuple[str | int, ...]

NonEmptyText = Annotated[str, Field(min_length=1)]
Milliseconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a blueprint: where (``nodes[3].config.timeout``), what, and the lint code."""

    path: Path
    message: str
    code: str = "INVALID_BLUEPRINT"
    node_id: str | None = None
    subject: str = ""  # "node 'fetch'" or "edge a -> b", when known

    @property
    def where(self) -> str:
        where = format_path(self.path)
        return f"{where} ({self.subject})" if self.subject else where

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.path else self.message


def format_path(path: Path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


class _Schema(BaseModel):
    # strict: "5" is not a number and 1.0 is not an integer; unknown keys are kept (TypeScript extensions)
    model_config = ConfigDict(strict=True, extra="allow")


class NodeConfigSchema(_Schema):
    maxRetries: int = Field(1, ge=1, description="an integer >= 1 (the total number of attempts)")
    retryDelay: Milliseconds = Field(0, description="a non-negative number of milliseconds")
    retryBackoff: float = Field(2.0, ge=1, allow_inf_nan=False, description="a number >= 1 (the delay factor)")
    maxRetryDelay: Milliseconds = Field(60000, description="a non-negative number of milliseconds")
    timeout: float | None = Field(None, gt=0, allow_inf_nan=False,
                                  description="a positive number of milliseconds")
    fallback: str | None = Field(None, description="the id of another node")
    joinStrategy: Literal["all", "any"] = Field("all", description="'all' or 'any'")


class NodeSchema(_Schema):
    id: NonEmptyText = Field(description="a non-empty string, unique among the nodes")
    uses: NonEmptyText = Field(description="a non-empty string (the implementation key)")
    params: dict[str, Any] | None = Field(None, description="an object")
    inputs: str | dict[str, str] | None = Field(
        None, description="a string or an object of strings (a node id, context key or path)")
    config: NodeConfigSchema | None = Field(None, description="an object")


class EdgeSchema(_Schema):
    source: str = Field(description="a node id string")
    target: str = Field(description="a node id string")
    action: str | None = Field(None, description="a string")
    condition: str | None = Field(None, description="an expression string")
    transform: str | None = Field(None, description="an expression string")


class MetadataSchema(_Schema):
    version: str | int | None = Field(None, description="a string or an integer")
    cycleEntryPoints: list[str] = Field([], description="a list of node ids")
    maxIterations: int = Field(1000, ge=1, description="an integer >= 1")


class BlueprintSchema(_Schema):
    id: NonEmptyText = Field(description="a non-empty string")
    nodes: list[NodeSchema] = Field(description="a list of node objects")
    edges: list[EdgeSchema] = Field([], description="a list of edge objects")
    metadata: MetadataSchema | None = Field(None, description="an object")


def blueprint_json_schema() -> dict[str, Any]:
    """The blueprint format as a JSON Schema document."""
    return BlueprintSchema.model_json_schema()


def schema_problems(data: Mapping[str, Any]) -> list[Problem]:
    """Every shape or type problem of blueprint data, in document order."""
    try:
        BlueprintSchema.model_validate(dict(data))
    except ValidationError as exc:
        problems: list[Problem] = []
        seen: set[Path] = set()
        for error in exc.errors():
            path, rule = _field_rule(tuple(error["loc"]))
            if path in seen:  # a union reports once per alternative; one line per field is enough
                continue
            seen.add(path)
            problems.append(Problem(path, _message(error["type"], rule, error.get("input")),
                                    "UNKNOWN_JOIN_STRATEGY" if path[-1:] == ("joinStrategy",) else "INVALID_BLUEPRINT"))
        return problems
    return []


def _field_rule(loc: Path) -> tuple[Path, str]:
    """The path of the field an error is about (without pydantic's union tags) and what it must be."""
    model: type[BaseModel] | None = BlueprintSchema
    path: list[str | int] = []
    rule = "a blueprint object"
    for part in loc:
        if model is None:
            break
        if isinstance(part, int):
            path.append(part)
            if model is not None:
                rule = f"an object ({model.__name__.removesuffix('Schema').lower()})"
            continue
        field: FieldInfo | None = model.model_fields.get(part)
        if field is None:
            break
        path.append(part)
        rule = field.description or rule
        model = _model_in(field.annotation)
    return tuple(path), rule


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) in (list, typing.Union):
        for arg in typing.get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def _message(error_type: str, rule: str, value: Any) -> str:
    if error_type == "missing":
        return f"is required: {rule}"
    return f"must be {rule}, got {_show(value)}"


def _show(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."
