"""Safe evaluation of edge conditions and transforms: a whitelist over Python's ``ast``, never eval/exec.

Accepts Python syntax plus the JavaScript spellings found in TypeScript Flowcraft blueprints
(``===``, ``!==``, ``&&``, ``||``, ``!x``, ``true``, ``false``, ``null``, ``undefined``).
Attribute access reads mapping keys (``result.output.total``); a missing key reads as ``None``.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Iterator, Mapping
from functools import lru_cache
from typing import Any, cast

from flowcraft.errors import ExpressionError

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
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
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "len": len,
    "min": min,
    "max": max,
    "abs": abs,
    "round": round,
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "sum": sum,
    "sorted": sorted,
    "any": any,
    "all": all,
}
_CONSTANTS = {"true": True, "false": False, "null": None, "undefined": None, "True": True,
              "False": False, "None": None}
_MAX_POWER = 1000


def _translate_js(source: str) -> str:
    """Rewrite JavaScript operators to Python outside of string literals."""
    out: list[str] = []
    i, n = 0, len(source)
    quote: str | None = None
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
            raise ExpressionError("expression is empty", hint="write e.g. \"result.output.total > 0\"")
        try:
            tree = ast.parse(_translate_js(source.strip()).strip(), mode="eval")
        except SyntaxError as exc:
            raise ExpressionError(f"invalid expression {source!r}: {exc.msg}") from None
        _validate(tree.body, source)
        self._tree = tree.body

    def evaluate(self, names: Mapping[str, Any]) -> Any:
        try:
            return _eval(self._tree, names)
        except ExpressionError:
            raise
        except Exception as exc:  # a type error inside the user's expression, reported as such
            raise ExpressionError(f"expression {self.source!r} failed: {type(exc).__name__}: {exc}") from None

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


@lru_cache(maxsize=4096)
def compile_expression(source: str) -> Expression:
    """Parse once; blueprints reuse the same strings for every run."""
    return Expression(source)


_ALLOWED = (
    ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.Constant, ast.Name, ast.Attribute,
    ast.Subscript, ast.List, ast.Tuple, ast.Dict, ast.IfExp, ast.Call, ast.Load, ast.Slice,
    ast.And, ast.Or, ast.Not, ast.USub, ast.UAdd, *_BINARY, *_COMPARE,
)


def _validate(node: ast.AST, source: str) -> None:
    for child in ast.walk(node):
        if not isinstance(child, _ALLOWED):
            raise ExpressionError(
                f"expression {source!r} uses {type(child).__name__}, which is not allowed",
                hint="use comparisons, and/or/not, arithmetic, literals and access to result/context/input",
            )
        if isinstance(child, ast.Attribute) and child.attr.startswith("__"):
            raise ExpressionError(f"expression {source!r}: dunder access {child.attr!r} is not allowed")
        if isinstance(child, ast.Call):
            if not isinstance(child.func, ast.Name) or child.func.id not in _FUNCTIONS or child.keywords:
                raise ExpressionError(
                    f"expression {source!r}: only the functions {', '.join(sorted(_FUNCTIONS))} can be called"
                )


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


def _eval(node: ast.expr, names: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in names:
            return names[node.id]
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        return None
    if isinstance(node, ast.Attribute):
        value = _eval(node.value, names)
        if node.attr == "length" and isinstance(value, list | tuple | str):
            return len(value)
        return _lookup(value, node.attr)
    if isinstance(node, ast.Subscript):
        value = _eval(node.value, names)
        if isinstance(node.slice, ast.Slice):
            parts = [None if p is None else _eval(p, names) for p in (node.slice.lower, node.slice.upper,
                                                                       node.slice.step)]
            return value[slice(*parts)]
        return _lookup(value, _eval(node.slice, names))
    if isinstance(node, ast.BoolOp):
        if isinstance(node.op, ast.And):
            result: Any = True
            for operand in node.values:
                result = _eval(operand, names)
                if not result:
                    return result
            return result
        result = False
        for operand in node.values:
            result = _eval(operand, names)
            if result:
                return result
        return result
    if isinstance(node, ast.UnaryOp):
        operand = _eval(node.operand, names)
        if isinstance(node.op, ast.Not):
            return not operand
        if isinstance(node.op, ast.USub):
            return -operand
        return +operand
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left, names), _eval(node.right, names)
        if isinstance(node.op, ast.Pow) and isinstance(right, int | float) and abs(right) > _MAX_POWER:
            raise ExpressionError(f"exponent {right} is too large")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.Compare):
        left = _eval(node.left, names)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = _eval(comparator, names)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        return _eval(node.body, names) if _eval(node.test, names) else _eval(node.orelse, names)
    if isinstance(node, ast.List | ast.Tuple):
        return [_eval(item, names) for item in node.elts]
    if isinstance(node, ast.Dict):
        return {
            _eval(k, names): _eval(v, names) for k, v in zip(node.keys, node.values, strict=True) if k is not None
        }
    if isinstance(node, ast.Call):
        func = _FUNCTIONS[cast(ast.Name, node.func).id]  # validated as a Name
        return func(*(_eval(arg, names) for arg in node.args))
    raise ExpressionError(f"unsupported expression element {type(node).__name__}")
