"""The calculator tool: exact arithmetic on an expression, parsed with `ast` and never `eval`.

Only numbers, parentheses, unary +/- and the operators + - * / // % ** are accepted; exponents and
magnitudes are bounded before the work is done, so `9**9**9` is refused instead of hanging the actor.
Integers stay exact; a division that is not whole gives a decimal rounded to 10 significant digits.
"""

from __future__ import annotations

import ast
import operator
from fractions import Fraction

from lazarus.env.tools.registry import ToolError, tool

MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 64
MAX_DIGITS = 100

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def evaluate_expression(expression: str) -> Fraction:
    """The exact value of an arithmetic expression; `ValueError` names what is not allowed."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    text = expression.replace("×", "*").replace("÷", "/").replace("^", "**")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise ValueError(f"cannot parse {expression!r}") from None
    return _value(tree.body)


def _value(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_value(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Pow):
            if right.denominator != 1 or abs(right) > MAX_EXPONENT:
                raise ValueError(f"exponents must be whole numbers of at most {MAX_EXPONENT}")
            if left == 0 and right < 0:
                raise ValueError("division by zero")
        elif isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise ValueError("division by zero")
        result = _BINARY[type(node.op)](left, right)
        if isinstance(node.op, ast.FloorDiv):
            result = Fraction(result)
        if max(abs(result.numerator), result.denominator).bit_length() > MAX_DIGITS * 3.33:
            raise ValueError(f"a result has more than {MAX_DIGITS} digits")
        return result
    raise ValueError(f"{type(node).__name__} is not allowed (numbers and + - * / // % ** only)")


def format_number(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.10g}"


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly, e.g. "347 * 29" or "(12 + 5) / 4".

    Numbers, parentheses and + - * / // % ** only.
    """
    try:
        return format_number(evaluate_expression(expression))
    except ValueError as e:
        raise ToolError(f"calculator: {e}", "tool_error") from None
