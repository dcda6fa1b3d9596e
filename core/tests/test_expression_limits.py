"""Hostile expressions fail fast with an ExpressionError naming them; they never hang or eat memory."""

from __future__ import annotations

import pytest

from flowcraft.errors import ExpressionError
from flowcraft.expressions import (
    MAX_EXPRESSION_DEPTH,
    MAX_INT_BITS,
    MAX_NESTING_DEPTH,
    MAX_SEQUENCE_LENGTH,
    MAX_SOURCE_LENGTH,
    MAX_STRING_LENGTH,
    Expression,
)

pytestmark = pytest.mark.timeout(30)


def evaluate(source: str, **names: object) -> object:
    return Expression(source).evaluate(names)


@pytest.mark.parametrize(("source", "reason"), [
    ("((10**999)**999)**999", f"an integer result has more than {MAX_INT_BITS} bits"),
    ("9**999 * 9**999", f"an integer result has more than {MAX_INT_BITS} bits"),
    ("int('9' * 4000)", f"an integer result has more than {MAX_INT_BITS} bits"),
    ("2 ** 5000", "exponent 5000 is larger than 1000"),
    ("round(5, -10**9)", "round() to -1000000000 digits: at most 100 are allowed"),
    ("sum([[1]*10**4]*10**4, [])", f"a list result would have 110000 items, more than {MAX_SEQUENCE_LENGTH}"),
    ("[0] * 10**9", f"a list result would have 1000000000 items, more than {MAX_SEQUENCE_LENGTH}"),
    ("'a' * 10**9", f"a string result would have 1000000000 characters, more than {MAX_STRING_LENGTH}"),
    ("10**9 * 'a'", f"a string result would have 1000000000 characters, more than {MAX_STRING_LENGTH}"),
    ("str([1] * 100000) * 100", f"a string result would have 30000000 characters, more than {MAX_STRING_LENGTH}"),
    ("'%0999999999d' % 1", "'%' formatting of strings is not supported"),
    ("(-8) ** 0.5", "the result is a complex number"),
])
def test_building_too_much_fails_at_once_naming_the_expression(source: str, reason: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        evaluate(source)
    assert str(caught.value).startswith(f"expression {source!r} failed: {reason}")


def test_the_step_budget_stops_work_over_large_values() -> None:
    items = list(range(300_000))
    expression = "max(items) > 0 and " * 40 + "true"  # each max() walks 300,000 items
    with pytest.raises(ExpressionError, match="needs more than 10000000 steps"):
        evaluate(expression, items=items)


def test_values_within_the_bounds_still_work() -> None:
    assert evaluate("2 ** 1000 > 10 ** 300") is True
    assert evaluate("len([0] * 100000)") == MAX_SEQUENCE_LENGTH
    assert evaluate("sum([[1], [2, 3]], [])") == [1, 2, 3]
    assert evaluate("sum(items)", items=list(range(1000))) == 499500
    assert evaluate("round(3.14159, 2)") == 3.14
    assert evaluate("10 % 3") == 1
    assert evaluate("len(items) > 5", items=list(range(2_000_000))) is True  # reading large data is not limited


@pytest.mark.parametrize(("source", "reason"), [
    ("x" * 4_700_000, f"is 4700000 characters long, more than {MAX_SOURCE_LENGTH}"),
    ("not " * 100_000 + "x", f"is 400001 characters long, more than {MAX_SOURCE_LENGTH}"),
    ("!" * 9_000 + "x", "it cannot be parsed"),
    ("-" * 9_999 + "1", "it cannot be parsed"),
    ("+".join(["1"] * 4_000), "it cannot be parsed"),
    ("a" + ".x" * 4_000, "it cannot be parsed"),
    ("not " * 2_000 + "x", f"nests operators deeper than {MAX_EXPRESSION_DEPTH} levels"),
    ("(" * 40 + "1" + ")" * 40, f"nests brackets deeper than {MAX_NESTING_DEPTH} levels"),
    ("[" * 3_000 + "]" * 3_000, f"nests brackets deeper than {MAX_NESTING_DEPTH} levels"),
    ("1" + "0" * 2_000, f"an integer literal has more than {MAX_INT_BITS} bits"),
    ("1j", "complex literals are not allowed"),
    ("b'a' * 10**9", "bytes literals are not allowed"),
    ("\x00", "source code string cannot contain null bytes"),
])
def test_oversized_or_too_deep_sources_fail_to_compile_with_an_expression_error(source: str, reason: str) -> None:
    with pytest.raises(ExpressionError, match=r"^(invalid )?expression ") as caught:
        Expression(source)
    assert reason in str(caught.value)
    assert len(str(caught.value)) < 400  # the message quotes a shortened source: one line, not megabytes


def test_a_runtime_error_names_the_expression() -> None:
    with pytest.raises(ExpressionError, match=r"^expression 'result\.output\.x' failed: cannot read 'x' from a value "
                                              "of type int$"):
        evaluate("result.output.x", result={"output": 5})
    with pytest.raises(ExpressionError, match=r"^expression '1/0' failed: ZeroDivisionError"):
        evaluate("1/0")


def test_nesting_at_the_limits_compiles() -> None:
    assert evaluate("(" * MAX_NESTING_DEPTH + "1" + ")" * MAX_NESTING_DEPTH) == 1
    assert evaluate("-" * (MAX_EXPRESSION_DEPTH - 1) + "1") == -1
