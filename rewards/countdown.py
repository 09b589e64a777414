"""Countdown reward: an arithmetic expression over the given numbers that hits the target.

The expression is read with :mod:`ast` and evaluated exactly with :class:`fractions.Fraction`; nothing is
``eval``-ed. Only integer literals, binary ``+ - * /``, unary minus and parentheses are accepted, so no
input can blow up (no ``**``), and every literal must be one of ``sample["numbers"]``.
"""
from __future__ import annotations

import ast
import re
from collections import Counter
from collections.abc import Mapping
from fractions import Fraction
from typing import Any, Literal

from rewards.answers import check_answer_format, text_after_think
from rewards.base import Reward
from rewards.boxed import last_boxed
from rewards.format import extract_answer_block

# Long enough for any honest expression over a handful of numbers; bounds parsing work on junk.
MAX_EXPRESSION_CHARS = 300
# Typographic operators models like to write, mapped to the ASCII ones.
_OPERATOR_SPELLINGS = str.maketrans({"×": "*", "÷": "/", "−": "-", "–": "-"})
_ALLOWED_CHARS_RE = re.compile(r"[0-9+\-*/()\s]*")  # rules out hex, underscores, floats, names
_TRAILING_TARGET_RE = re.compile(r"=\s*(-?\d+)\s*$")
_OPERATORS = {ast.Add: Fraction.__add__, ast.Sub: Fraction.__sub__, ast.Mult: Fraction.__mul__}


class _Invalid(Exception):
    pass


def countdown_reward(
    completion: str,
    sample: Mapping[str, Any],
    *,
    use_all: bool = True,
    answer_format: Literal["tags", "boxed", "last_number", "auto"] = "tags",
    prefilled_think: bool = False,
) -> Reward:
    """1.0 iff the ``<answer>`` block is an expression over ``sample["numbers"]`` that equals
    ``sample["target"]``.

    With any ``answer_format`` other than ``tags`` (the default), an expression in the last ``\\boxed{}``
    after ``</think>`` counts when there is no ``<answer>`` block (an expression is never a "last number",
    so ``last_number`` and ``auto`` read boxes too); ``prefilled_think`` as in :mod:`rewards.answers`.

    Each number must be used exactly once (``use_all=True``) or at most once (``use_all=False``). An
    optional trailing ``= <target>`` is allowed; a trailing ``= <other number>`` counts as a wrong value.

    Reasons: ``ok``, ``no_answer_block``, ``invalid_expression`` (also for over-long expressions),
    ``wrong_numbers``, ``wrong_value``, ``division_by_zero``, ``invalid_sample`` (the sample lacks
    integer ``numbers``/``target``); outside ``tags`` also ``no_boxed`` and ``unclosed_think``.
    """
    check_answer_format(answer_format)
    try:
        numbers = Counter(_as_int(n) for n in sample["numbers"])
        target = _as_int(sample["target"])
    except (KeyError, TypeError, ValueError, OverflowError):
        return Reward(0.0, "invalid_sample")
    block = extract_answer_block(completion)
    if block is None and answer_format != "tags":
        region = text_after_think(completion, prefilled_think)
        if region is None:
            return Reward(0.0, "unclosed_think")
        block = last_boxed(region)
        if block is None:
            return Reward(0.0, "no_boxed")
    if block is None:
        return Reward(0.0, "no_answer_block")
    expression = block.translate(_OPERATOR_SPELLINGS)
    if len(expression) > MAX_EXPRESSION_CHARS:
        return Reward(0.0, "invalid_expression")
    claimed = _TRAILING_TARGET_RE.search(expression)
    if claimed:
        expression = expression[: claimed.start()]
    try:
        tree = _parse(expression)
        literals = Counter(_literals(tree))
    except _Invalid:
        return Reward(0.0, "invalid_expression")

    over_used = literals - numbers
    if over_used or (use_all and literals != numbers):
        return Reward(0.0, "wrong_numbers")
    try:
        value = _evaluate(tree)
    except ZeroDivisionError:
        return Reward(0.0, "division_by_zero")
    if value != target or (claimed and int(claimed.group(1)) != target):
        return Reward(0.0, "wrong_value")
    return Reward(1.0, "ok")


def _as_int(value: Any) -> int:
    # Samples come from JSON: accept 24, 24.0 and "24"; refuse True, 2.5 and "2.5".
    if isinstance(value, str):
        return int(value.strip())
    if isinstance(value, bool) or int(value) != value:
        raise ValueError(f"not an integer: {value!r}")
    return int(value)


def _parse(expression: str) -> ast.expr:
    if not expression.strip() or not _ALLOWED_CHARS_RE.fullmatch(expression):
        raise _Invalid
    try:
        tree = ast.parse(expression.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise _Invalid from None
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and type(node.op) in (ast.Add, ast.Sub, ast.Mult, ast.Div):
            continue
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            continue
        if isinstance(node, ast.Constant) and type(node.value) is int:
            continue
        if isinstance(node, (ast.operator, ast.unaryop)):
            continue  # the operator nodes of the BinOp/UnaryOp checked above
        raise _Invalid
    return tree


def _literals(tree: ast.expr) -> list[int]:
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)]


def _evaluate(node: ast.expr) -> Fraction:
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp):
        return -_evaluate(node.operand)
    assert isinstance(node, ast.BinOp)
    left, right = _evaluate(node.left), _evaluate(node.right)
    if isinstance(node.op, ast.Div):
        return left / right  # ZeroDivisionError is reported by the caller
    return _OPERATORS[type(node.op)](left, right)
