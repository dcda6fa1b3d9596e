"""Property-based fuzzing of the blueprint loader and the expression compiler/evaluator: arbitrary JSON
and source strings raise nothing but Flowcraft's own errors, and each example finishes within the deadline."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowcraft.errors import FlowcraftError
from flowcraft.expressions import Expression
from flowcraft.lint import lint_blueprint
from flowcraft.model import Blueprint

FUZZ = settings(max_examples=300, deadline=timedelta(seconds=2), suppress_health_check=[HealthCheck.too_slow],
                derandomize=True)

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=5), max_leaves=30)

# blueprint-shaped data reaches the deeper checks: known keys with arbitrary (sometimes right) values
ids = st.sampled_from(["a", "b", "c", "", "ghost"])
expression_text = st.sampled_from(["result.output > 1", "context.x === 1 && !false", "1 +", "'a' * 10**9",
                                   "__import__('os')", "x" * 20_000, "(" * 40 + ")" * 40])
config = st.fixed_dictionaries({}, optional={
    "maxRetries": json_values | st.integers(-2, 5), "retryDelay": json_values, "retryBackoff": json_values,
    "timeout": json_values | st.floats(), "fallback": ids | json_values,
    "joinStrategy": st.sampled_from(["all", "any", "most"]) | json_values,
})
params = st.fixed_dictionaries({}, optional={
    "condition": expression_text | json_values, "duration": st.sampled_from(["5s", "-1m", "nans", 10]) | json_values,
    "worker": ids | json_values, "chunkSize": json_values, "maxConcurrency": json_values,
    "blueprintId": ids | json_values, "inputs": json_values, "outputs": json_values, "collectErrors": json_values,
})
nodes = st.fixed_dictionaries({"id": ids | json_values}, optional={
    "uses": st.sampled_from(["x", "map", "subflow", "sleep", "loop-controller", "wait"]) | json_values,
    "params": params | json_values, "inputs": json_values, "config": config | json_values,
})
edges = st.fixed_dictionaries({"source": ids | json_values, "target": ids | json_values}, optional={
    "action": json_values, "condition": expression_text | json_values, "transform": expression_text | json_values,
})
blueprints = st.fixed_dictionaries({"id": st.text(max_size=5) | json_values}, optional={
    "nodes": st.lists(nodes | json_values, max_size=5) | json_values,
    "edges": st.lists(edges | json_values, max_size=5) | json_values,
    "metadata": st.fixed_dictionaries({}, optional={"version": json_values, "cycleEntryPoints": json_values,
                                                    "maxIterations": json_values}) | json_values,
})


def load_and_lint(data: Any) -> None:
    try:
        loaded = Blueprint.from_dict(data)
    except FlowcraftError:
        pass
    else:
        assert Blueprint.from_json(loaded.to_json()) == loaded
    for issue in lint_blueprint(data) if isinstance(data, dict) else ():
        assert issue.code and issue.message


@FUZZ
@given(blueprints)
def test_blueprint_shaped_data_loads_or_raises_a_flowcraft_error(data: dict[str, Any]) -> None:
    load_and_lint(data)


@FUZZ
@given(json_values)
def test_arbitrary_json_loads_or_raises_a_flowcraft_error(data: Any) -> None:
    load_and_lint(data)
    try:
        Blueprint.from_json(json.dumps(data))
    except FlowcraftError:
        pass


@FUZZ
@given(st.text(max_size=200) | st.binary(max_size=100).map(lambda raw: raw.decode("latin-1")))
def test_arbitrary_text_is_not_a_crash_of_the_json_loader(text: str) -> None:
    try:
        Blueprint.from_json(text)
    except FlowcraftError:
        pass


tokens = st.sampled_from(["1", "0", "-1", "10", "999", "2.5", "'a'", "'%d'", "x", "y", "result", "context", "true",
                          "null", "+", "-", "*", "/", "//", "%", "**", "==", "===", "!=", "<", ">=", "in", "not", "!",
                          "&&", "||", "and", "or", "(", ")", "[", "]", "{", "}", ",", ":", ".", ".output", ".length",
                          "len(", "sum(", "str(", "int(", "round(", "sorted(", "max(", "if", "else", " "])
expressions = st.text(max_size=100) | st.lists(tokens, max_size=40).map("".join)
names = st.fixed_dictionaries({"x": json_values, "y": json_values, "result": json_values, "context": json_values})


@FUZZ
@given(expressions, names)
def test_expressions_compile_and_evaluate_or_raise_a_flowcraft_error(source: str, values: dict[str, Any]) -> None:
    try:
        expression = Expression(source)
    except FlowcraftError:
        return
    try:
        expression.evaluate(values)
    except FlowcraftError:
        pass
