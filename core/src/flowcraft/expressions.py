"""Safe evaluation of edge conditions and transforms: a whitelist over Python's ``ast``, never eval/exec.

Accepts Python syntax plus the JavaScript spellings found in TypeScript Flowcraft blueprints
(``===``, ``!==``, ``&&``, ``||``, ``!x``, ``true``, ``false``, ``null``, ``undefined``).
Attribute access reads mapping keys (``result.output.total``); a missing key reads as ``None``.

Expressions run on a worker's event loop, so compiling and evaluating one is bounded: the limits below
fail the expression with an ``ExpressionError`` (naming it) long before it could stall a worker or
exhaust its memory. Values read from the run (context, outputs) are not limited; values the expression
builds are.
"""

from __future__ import annotations

import ast
import operator
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import lru_cache
from typing import Any, cast

from flowcraft.errors import ExpressionError

MAX_SOURCE_LENGTH = 10_000
"""Characters in an expression's source (checked before parsing)."""
MAX_NESTING_DEPTH = 32
"""Open brackets ``( [ {`` at once (checked before parsing)."""
MAX_EXPRESSION_DEPTH = 64
"""Depth of the parsed expression tree: chained operators, ``not``/``-`` prefixes, ``a.b.c`` access."""
MAX_INT_BITS = 4096
"""Bits of an integer an expression computes (about 1,233 decimal digits)."""
MAX_EXPONENT = 1000
"""Absolute value of the right operand of ``**``."""
MAX_ROUND_DIGITS = 100
"""Absolute value of ``round``'s second argument."""
MAX_STRING_LENGTH = 1_000_000
"""Characters in a string an expression builds (``+``, ``*``, ``str``)."""
MAX_SEQUENCE_LENGTH = 100_000
"""Items in a list or dict an expression builds (literals, ``+``, ``*``, ``sorted``, ``sum``)."""
MAX_STEPS = 10_000_000
"""Work budget of one evaluation (well under a second): one step per expression element evaluated, one
per item a function, comparison or ``+``/``*`` walks or builds, one per 100 characters of a string built,
ten per item of a ``sum`` over lists or strings."""

_STRING_CHARS_PER_STEP = 100
_PYTHON_LOOP_STEPS = 10
_VALID_EXAMPLE = 'write e.g. "result.output.total > 0"'

_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}
_BINARY_OPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "len": len, "min": min, "max": max, "abs": abs, "round": round, "str": str, "int": int, "float": float,
    "bool": bool, "sum": sum, "sorted": sorted, "any": any, "all": all,
}
_CONSTANTS = {"true": True, "false": False, "null": None, "undefined": None, "True": True,
              "False": False, "None": None}
_CONSTANT_TYPES = (str, int, float, bool, type(None))


def _shorten(source: str, limit: int = 80) -> str:
    """The expression as quoted in error messages: long sources are cut, messages stay one line."""
    text = source if len(source) <= limit else source[:limit] + "..."
    return repr(text)


def _translate_js(source: str) -> str:
    """Rewrite JavaScript operators to Python outside of string literals, and refuse brackets nested
    deeper than ``MAX_NESTING_DEPTH`` before the parser sees them."""
    out: list[str] = []
    i, n = 0, len(source)
    quote: str | None = None
    depth = 0
    while i < n:
        ch = source[i]
        if quote:
            out.append(ch)
            if ch == "\\" and i + 1 < n:
                out.append(source[i + 1])
                i += 2
                continue
            if ch == quote:
                quote = None
            i += 1
            continue
        if ch in "'\"":
            quote = ch
            out.append(ch)
        elif ch in "([{":
            depth += 1
            if depth > MAX_NESTING_DEPTH:
                raise ExpressionError(f"expression {_shorten(source)} nests brackets deeper than "
                                      f"{MAX_NESTING_DEPTH} levels", hint="split it or simplify it")
            out.append(ch)
        elif ch in ")]}":
            depth -= 1
            out.append(ch)
        elif source.startswith("===", i) or source.startswith("!==", i):
            out.append("==" if ch == "=" else "!=")
            i += 3
            continue
        elif source.startswith("&&", i):
            out.append(" and ")
            i += 2
            continue
        elif source.startswith("||", i):
            out.append(" or ")
            i += 2
            continue
        elif ch == "!" and not source.startswith("!=", i):
            out.append(" not ")
        else:
            out.append(ch)
        i += 1
    return "".join(out)


class Expression:
    """A parsed, validated expression; ``evaluate(names)`` runs it over a mapping of names."""

    __slots__ = ("_tree", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        if not isinstance(source, str) or not source.strip():
            raise ExpressionError("expression is empty", hint=_VALID_EXAMPLE)
        if len(source) > MAX_SOURCE_LENGTH:
            raise ExpressionError(f"expression {_shorten(source)} is {len(source)} characters long, more than "
                                  f"{MAX_SOURCE_LENGTH}", hint="compute large values in a node instead")
        try:
            with warnings.catch_warnings():  # e.g. "1if": the user sees our error or nothing, not Python's warning
                warnings.simplefilter("ignore", SyntaxWarning)
                tree = ast.parse(_translate_js(source.strip()).strip(), mode="eval")
        except SyntaxError as exc:
            raise ExpressionError(f"invalid expression {_shorten(source)}: {exc.msg}") from None
        except (ValueError, RecursionError, MemoryError):  # null bytes; a tree too deep for the parser
            raise ExpressionError(f"invalid expression {_shorten(source)}: it cannot be parsed "
                                  f"(null characters or operators nested too deeply)", hint=_VALID_EXAMPLE) from None
        _validate(tree.body, source)
        self._tree = tree.body

    def evaluate(self, names: Mapping[str, Any]) -> Any:
        try:
            return _Evaluation(names).run(self._tree)
        except ExpressionError as exc:
            raise ExpressionError(f"expression {_shorten(self.source)} failed: {exc}") from None
        except Exception as exc:  # a type error inside the user's expression, reported as such
            raise ExpressionError(
                f"expression {_shorten(self.source)} failed: {type(exc).__name__}: {exc}") from None

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


@lru_cache(maxsize=4096)
def compile_expression(source: str) -> Expression:
    """Parse once; blueprints reuse the same strings for every run."""
    return Expression(source)


_ALLOWED = (
    ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.Constant, ast.Name, ast.Attribute,
    ast.Subscript, ast.List, ast.Tuple, ast.Dict, ast.IfExp, ast.Call, ast.Load, ast.Slice,
    ast.And, ast.Or, ast.Not, ast.USub, ast.UAdd, *_BINARY_OPS, *_COMPARE,
)


def _validate(root: ast.AST, source: str) -> None:
    stack: list[tuple[ast.AST, int]] = [(root, 1)]
    while stack:
        child, depth = stack.pop()
        if depth > MAX_EXPRESSION_DEPTH:
            raise ExpressionError(f"expression {_shorten(source)} nests operators deeper than "
                                  f"{MAX_EXPRESSION_DEPTH} levels", hint="split it or simplify it")
        if not isinstance(child, _ALLOWED):
            raise ExpressionError(
                f"expression {_shorten(source)} uses {type(child).__name__}, which is not allowed",
                hint="use comparisons, and/or/not, arithmetic, literals and access to result/context/input",
            )
        if isinstance(child, ast.Constant) and not isinstance(child.value, _CONSTANT_TYPES):
            raise ExpressionError(f"expression {_shorten(source)}: {type(child.value).__name__} literals "
                                  "are not allowed", hint="use numbers, strings, true/false and null")
        if isinstance(child, ast.Constant) and isinstance(child.value, int) and child.value.bit_length() > MAX_INT_BITS:
            raise ExpressionError(
                f"expression {_shorten(source)}: an integer literal has more than {MAX_INT_BITS} bits")
        if isinstance(child, ast.Attribute) and child.attr.startswith("__"):
            raise ExpressionError(f"expression {_shorten(source)}: dunder access {child.attr!r} is not allowed")
        if isinstance(child, ast.Call) and (
            not isinstance(child.func, ast.Name) or child.func.id not in _FUNCTIONS or child.keywords
        ):
            raise ExpressionError(
                f"expression {_shorten(source)}: only the functions {', '.join(sorted(_FUNCTIONS))} "
                "can be called"
            )
        stack.extend((grandchild, depth + 1) for grandchild in ast.iter_child_nodes(child))


class _DottedView(Mapping[str, Any]):
    """``context._outputs.fetch`` over flat keys like ``"_outputs.fetch"`` (how TypeScript stores them)."""

    def __init__(self, base: Mapping[str, Any], prefix: str) -> None:
        self._base, self._prefix = base, prefix + "."

    def __getitem__(self, key: str) -> Any:
        return self._base[self._prefix + key]

    def __iter__(self) -> Iterator[str]:
        return (k[len(self._prefix):] for k in self._base if isinstance(k, str) and k.startswith(self._prefix))

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _lookup(container: Any, key: Any) -> Any:
    if isinstance(container, Mapping):
        if key in container:
            return container[key]
        if isinstance(key, str) and any(isinstance(k, str) and k.startswith(key + ".") for k in container):
            return _DottedView(container, key)
        return None
    if isinstance(container, list | tuple | str) and isinstance(key, int):
        return container[key] if -len(container) <= key < len(container) else None
    if container is None:
        return None
    if isinstance(key, str) and key == "length" and isinstance(container, list | tuple | str):
        return len(container)
    raise ExpressionError(f"cannot read {key!r} from a value of type {type(container).__name__}")


def _size(value: Any) -> int:
    return len(value) if isinstance(value, list | tuple | dict | str) else 1


class _Evaluation:
    """One evaluation: walks the tree, checks the size of every value it builds, counts its steps."""

    __slots__ = ("names", "steps")

    def __init__(self, names: Mapping[str, Any]) -> None:
        self.names = names
        self.steps = 0

    def run(self, tree: ast.expr) -> Any:
        return self.eval(tree)

    # ------------------------------------------------------------------ budget and sizes
    def charge(self, steps: int) -> None:
        self.steps += steps
        if self.steps > MAX_STEPS:
            raise ExpressionError(f"it needs more than {MAX_STEPS} steps", hint="compute this in a node instead")

    def built(self, value: Any) -> Any:
        """Check (and pay for) a value this evaluation built."""
        if isinstance(value, bool | None | float):
            return value
        if isinstance(value, int):
            if value.bit_length() > MAX_INT_BITS:
                raise ExpressionError(f"an integer result has more than {MAX_INT_BITS} bits")
        elif isinstance(value, str):
            _check_string_length(len(value))
            self.charge(len(value) // _STRING_CHARS_PER_STEP)
        elif isinstance(value, list | tuple | dict):
            _check_sequence_length(len(value))
            self.charge(len(value))
        elif isinstance(value, complex):
            raise ExpressionError("the result is a complex number", hint="use real numbers")
        return value

    # ------------------------------------------------------------------ tree walk
    def eval(self, node: ast.expr) -> Any:
        self.charge(1)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id in self.names:
                return self.names[node.id]
            return _CONSTANTS.get(node.id)
        if isinstance(node, ast.Attribute):
            value = self.eval(node.value)
            if node.attr == "length" and isinstance(value, list | tuple | str):
                return len(value)
            return _lookup(value, node.attr)
        if isinstance(node, ast.Subscript):
            value = self.eval(node.value)
            if isinstance(node.slice, ast.Slice):
                parts = [None if p is None else self.eval(p) for p in (node.slice.lower, node.slice.upper,
                                                                         node.slice.step)]
                return self.built(value[slice(*parts)])
            return _lookup(value, self.eval(node.slice))
        if isinstance(node, ast.BoolOp):
            stop_when = not isinstance(node.op, ast.And)  # `and` stops at the first falsy operand
            result: Any = None
            for operand in node.values:
                result = self.eval(operand)
                if bool(result) is stop_when:
                    return result
            return result
        if isinstance(node, ast.UnaryOp):
            operand = self.eval(node.operand)
            if isinstance(node.op, ast.Not):
                return not operand
            return self.built(-operand if isinstance(node.op, ast.USub) else +operand)
        if isinstance(node, ast.BinOp):
            return self.built(self.binary(node.op, self.eval(node.left), self.eval(node.right)))
        if isinstance(node, ast.Compare):
            left = self.eval(node.left)
            for op, comparator in zip(node.ops, node.comparators, strict=True):
                right = self.eval(comparator)
                self.charge(_size(right) if isinstance(op, ast.In | ast.NotIn) else min(_size(left), _size(right)))
                if not _COMPARE[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.IfExp):
            return self.eval(node.body) if self.eval(node.test) else self.eval(node.orelse)
        if isinstance(node, ast.List | ast.Tuple):
            return self.built([self.eval(item) for item in node.elts])
        if isinstance(node, ast.Dict):
            return self.built({
                self.eval(k): self.eval(v) for k, v in zip(node.keys, node.values, strict=True) if k is not None
            })
        if isinstance(node, ast.Call):
            name = cast(ast.Name, node.func).id  # validated as a Name of _FUNCTIONS
            return self.built(self.call(name, [self.eval(arg) for arg in node.args]))
        raise ExpressionError(f"unsupported expression element {type(node).__name__}")

    def binary(self, op: ast.operator, left: Any, right: Any) -> Any:
        """Arithmetic, refusing before computing anything whose size would pass the limits."""
        if isinstance(op, ast.Add):
            if isinstance(left, str) and isinstance(right, str):
                _check_string_length(len(left) + len(right))
            elif isinstance(left, list | tuple) and isinstance(right, list | tuple):
                _check_sequence_length(len(left) + len(right))
            return left + right
        if isinstance(op, ast.Sub):
            return left - right
        if isinstance(op, ast.Mult):
            _check_product(left, right)
            return left * right
        if isinstance(op, ast.Div):
            return left / right
        if isinstance(op, ast.FloorDiv):
            return left // right
        if isinstance(op, ast.Mod):
            if isinstance(left, str | bytes):
                raise ExpressionError("'%' formatting of strings is not supported",
                                      hint="use + and str() to build strings")
            return left % right
        if isinstance(right, int | float) and abs(right) > MAX_EXPONENT:
            raise ExpressionError(f"exponent {right} is larger than {MAX_EXPONENT}")
        if isinstance(left, int) and isinstance(right, int) and right > 0:
            if (abs(left).bit_length() - 1) * right > MAX_INT_BITS:
                raise ExpressionError(f"an integer result has more than {MAX_INT_BITS} bits")
        return left**right

    def call(self, name: str, args: list[Any]) -> Any:
        if name != "len":  # len is O(1); the others walk their arguments
            for arg in args:
                self.charge(_size(arg))
        if name == "round" and len(args) == 2 and isinstance(args[1], int) and abs(args[1]) > MAX_ROUND_DIGITS:
            raise ExpressionError(f"round() to {args[1]} digits: at most {MAX_ROUND_DIGITS} are allowed")
        if name == "sum" and len(args) == 2 and not isinstance(args[1], int | float):
            return self.concatenate(*args)
        return _FUNCTIONS[name](*args)

    def concatenate(self, items: Iterable[Any], start: Any) -> Any:
        """``sum(lists, [])`` through the checked ``+``: it cannot grow a list or string past the limits."""
        total = start
        for item in items:
            self.charge(_PYTHON_LOOP_STEPS)
            total = self.built(self.binary(ast.Add(), total, item))
        return total


def _check_string_length(length: int) -> None:
    if length > MAX_STRING_LENGTH:
        raise ExpressionError(f"a string result would have {length} characters, more than {MAX_STRING_LENGTH}")


def _check_sequence_length(length: int) -> None:
    if length > MAX_SEQUENCE_LENGTH:
        raise ExpressionError(f"a list result would have {length} items, more than {MAX_SEQUENCE_LENGTH}")


def _check_product(left: Any, right: Any) -> None:
    if isinstance(left, int) and isinstance(right, int):
        if left.bit_length() + right.bit_length() > MAX_INT_BITS + 1:
            raise ExpressionError(f"an integer result has more than {MAX_INT_BITS} bits")
        return
    for sequence, count in ((left, right), (right, left)):
        if isinstance(sequence, str | list | tuple) and isinstance(count, int):
            length = len(sequence) * max(count, 0)
            if isinstance(sequence, str):
                _check_string_length(length)
            else:
                _check_sequence_length(length)

