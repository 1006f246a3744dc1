"""A tiny safe parser for numeric expressions such as ``8/255`` or ``2 * 4/255`` in YAML.

Only numbers, ``+ - * /``, unary signs and parentheses are accepted; anything else is rejected.
The expression is parsed with :mod:`ast` and walked node by node; nothing is ever evaluated by
Python's ``eval``.
"""

from __future__ import annotations

import ast
import math
import operator

from .core.safeio import short

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def parse_number(value: object) -> float:
    """Return ``value`` as a float; strings may hold a simple arithmetic expression.

    Raises ``ValueError`` with a message suitable for a scenario error.
    """
    # ValueError for every bad value, wrong type included: callers turn it into one scenario
    # error naming the field
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {short(value)}")  # noqa: TRY004
    if isinstance(value, (int, float)):
        result = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if not text or len(text) > 100:
            raise ValueError(f"expected a number or an expression like 8/255, got {short(value)}")
        try:
            tree = ast.parse(text, mode="eval")
        except SyntaxError as e:
            raise ValueError(
                f"expected a number or an expression like 8/255, got {short(value)}") from e
        result = float(_walk(tree.body, value))
    else:
        raise ValueError(  # noqa: TRY004
            f"expected a number, got {type(value).__name__} {short(value)}")
    if not math.isfinite(result):
        raise ValueError(f"expected a finite number, got {short(value)}")
    return result


def _walk(node: ast.AST, source: str) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) \
            and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _walk(node.left, source), _walk(node.right, source)
        if isinstance(node.op, ast.Div) and right == 0:
            raise ValueError(f"division by zero in {short(source)}")
        return _BINOPS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_walk(node.operand, source))
    raise ValueError(
        f"only numbers, + - * / and parentheses are allowed in {short(source)}")


def format_eps(eps: float) -> str:
    """A readable label for an epsilon: ``8/255`` when it is a whole number of 1/255 steps."""
    steps = eps * 255
    if abs(steps - round(steps)) < 1e-6 and round(steps) > 0:
        return f"{round(steps)}/255"
    return f"{eps:g}"
