"""Linear equations in x (``3x + 5 = 20``, ``4(x - 2) = 10``, ``x/4 + 2 = 5``, ``5x - 3 = 2x + 9``).

The solution x is drawn first and the equation built around it, so the answer is exact: an integer at
levels 1-2, often a fraction (``7/3``) at level 3 and a terminating decimal (``2.5``, with decimal
coefficients) at level 4. The worked steps move x-terms left, constants right, then divide, and end with
a substitution check.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterable

from .numbers import format_number, is_terminating
from .sampling import check_difficulty, draw_samples

LEVELS = (1, 2, 3, 4)
DEFAULT_DIFFICULTY = 2


@dataclass(frozen=True)
class Side:
    """``coef * x + const``, optionally written as ``outer(x + inner)`` (``paren``) for display."""

    coef: Fraction
    const: Fraction
    paren: tuple[Fraction, Fraction] | None = None  # (outer, inner) when shown as outer(x + inner)

    def value(self, x: Fraction) -> Fraction:
        return self.coef * x + self.const


def generate_linear_equation(
    n: int, *, seed: int, difficulty: int = DEFAULT_DIFFICULTY, split: str | None = None,
    exclude: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """``n`` distinct equations in x; ``answer`` is x as an integer, ``p/q`` or decimal string.

    Each sample also carries ``equation`` (the equation text, as in the prompt).
    """
    check_difficulty("linear_equation", difficulty, LEVELS)
    return draw_samples(
        "linear_equation", make_linear_equation, n, seed=seed, difficulty=difficulty, split=split, exclude=exclude
    )


def make_linear_equation(rng: random.Random, difficulty: int) -> dict[str, Any]:
    """One equation with its algebra steps."""
    left, right, x = _draw_equation(rng, difficulty)
    decimal = difficulty >= 4
    equation = f"{render_side(left, decimal)} = {render_side(right, decimal)}"
    steps = solve_steps(left, right, decimal)
    answer = format_number(x, prefer_decimal=decimal)
    steps.append(_check_line(left, right, x, decimal))
    steps.append(f"So x = {answer}.")
    return {
        "prompt": f"Solve for x: {equation}",
        "answer": answer,
        "verifier": "accuracy",
        "solution": "\n".join(steps),
        "equation": equation,
    }


def _nonzero(rng: random.Random, low: int, high: int) -> int:
    return rng.choice([v for v in range(low, high + 1) if v != 0])


def _draw_equation(rng: random.Random, difficulty: int) -> tuple[Side, Side, Fraction]:
    if difficulty == 1:
        x = Fraction(rng.randint(0, 12))
        if rng.random() < 0.5:  # x + b = c
            left = Side(Fraction(1), Fraction(rng.randint(1, 20)))
        else:  # a x = c
            left = Side(Fraction(rng.randint(2, 9)), Fraction(0))
        return left, Side(Fraction(0), left.value(x)), x
    if difficulty == 2:
        x = Fraction(rng.randint(-12, 12))
        a = Fraction(_nonzero(rng, -9, 9))
        if rng.random() < 0.3:
            inner = Fraction(_nonzero(rng, -9, 9))
            left = Side(a, a * inner, paren=(a, inner))
        else:
            left = Side(a, Fraction(_nonzero(rng, -30, 30)))
        return left, Side(Fraction(0), left.value(x)), x
    if difficulty == 3:
        return _draw_level3(rng)
    return _draw_level4(rng)


def _draw_level3(rng: random.Random) -> tuple[Side, Side, Fraction]:
    form = rng.choice(["both_sides", "over", "paren_fraction"])
    if form == "over":  # x/q + b = c with a whole x
        q = rng.randint(2, 9)
        x = Fraction(q * rng.randint(-9, 9))
        left = Side(Fraction(1, q), Fraction(_nonzero(rng, -20, 20)))
        return left, Side(Fraction(0), left.value(x)), x
    # A fractional x: the coefficient difference does not divide the constant difference.
    a_diff = rng.randint(2, 9)
    x = Fraction(rng.choice([p for p in range(-40, 41) if p % a_diff]), a_diff)
    if form == "paren_fraction":  # a(x + b) = c, c whole
        inner = Fraction(_nonzero(rng, -9, 9))
        left = Side(Fraction(a_diff), a_diff * inner, paren=(Fraction(a_diff), inner))
        # a(x + b) = a*x + a*b, and a*x = p is whole, so the right-hand side is whole too.
        return left, Side(Fraction(0), left.value(x)), x
    right_coef = Fraction(_nonzero(rng, -6, 9))
    left_coef = right_coef + a_diff * rng.choice([1, -1])
    if left_coef == 0:  # keep an x on both sides: mirror the difference to the other side of right_coef
        left_coef = 2 * right_coef
    left_const = Fraction(_nonzero(rng, -20, 20))
    # The right-hand constant that makes x the root; whole, since (left_coef - right_coef) = ±a_diff and
    # x = p / a_diff.
    right_const = (left_coef - right_coef) * x + left_const
    return Side(left_coef, left_const), Side(right_coef, right_const), x


def _draw_level4(rng: random.Random) -> tuple[Side, Side, Fraction]:
    if rng.random() < 0.5:  # whole coefficients, decimal root: 4x + 1 = 11 -> 2.5
        a = rng.choice([2, 4, 5, 8, -2, -4, -5])
        x = Fraction(rng.choice([p for p in range(-60, 61) if p % a]), a)
        left = Side(Fraction(a), Fraction(_nonzero(rng, -20, 20)))
    else:  # decimal coefficients: 0.4x + 1.2 = 3.2
        a = Fraction(rng.choice([1, 2, 3, 4, 5, 6, 15, 25, 35]), rng.choice([10, 100]))
        x = Fraction(rng.randint(-20, 20), rng.choice([1, 2]))
        left = Side(a, Fraction(_nonzero(rng, -99, 99), 10))
    return left, Side(Fraction(0), left.value(x)), x


def _num(value: Fraction, decimal: bool) -> str:
    return format_number(value, prefer_decimal=decimal)


def render_term(coef: Fraction, decimal: bool) -> str:
    """``3x``, ``x``, ``-x``, ``x/4``, ``0.5x``, or ``(2/3)x`` for the rare other fractions."""
    if coef == 1:
        return "x"
    if coef == -1:
        return "-x"
    if coef.denominator == 1 or (decimal and is_terminating(coef)):
        return f"{_num(coef, decimal)}x"
    if coef.numerator in (1, -1):
        return f"{'-' if coef < 0 else ''}x/{coef.denominator}"
    return f"({_num(coef, decimal)})x"


def render_side(side: Side, decimal: bool) -> str:
    """One side of an equation as text; zero terms are left out (``3x``, ``-7``, ``0``)."""
    if side.paren is not None:
        outer, inner = side.paren
        prefix = {1: "", -1: "-"}.get(outer, _num(outer, decimal))
        sign = "+" if inner > 0 else "-"
        return f"{prefix}(x {sign} {_num(abs(inner), decimal)})"
    parts = []
    if side.coef != 0:
        parts.append(render_term(side.coef, decimal))
    if side.const != 0 or not parts:
        if parts:
            parts.append(f"{'+' if side.const > 0 else '-'} {_num(abs(side.const), decimal)}")
        else:
            parts.append(_num(side.const, decimal))
    return " ".join(parts)


def solve_steps(left: Side, right: Side, decimal: bool) -> list[str]:
    """Algebra steps from the equation to ``x = value``; each line is an equation x still satisfies."""
    steps = []

    def record(action: str) -> None:
        steps.append(f"{action}: {render_side(left, decimal)} = {render_side(right, decimal)}")

    if left.paren is not None:
        left = Side(left.coef, left.const)
        record("Expand the brackets")
    if right.coef != 0:
        moved = render_term(abs(right.coef), decimal)
        verb = "Subtract" if right.coef > 0 else "Add"
        left, right = Side(left.coef - right.coef, left.const), Side(Fraction(0), right.const)
        record(f"{verb} {moved} {'from' if verb == 'Subtract' else 'to'} both sides")
    if left.const != 0:
        amount = _num(abs(left.const), decimal)
        verb = "Subtract" if left.const > 0 else "Add"
        left, right = Side(left.coef, Fraction(0)), Side(Fraction(0), right.const - left.const)
        record(f"{verb} {amount} {'from' if verb == 'Subtract' else 'to'} both sides")
    if left.coef != 1:
        coef = left.coef
        if coef.denominator != 1 and coef.numerator in (1, -1):
            # x/q: multiplying by q (or -q) reads better than dividing by a fraction.
            action = f"Multiply both sides by {_num(1 / coef, decimal)}"
        else:
            action = f"Divide both sides by {_num(coef, decimal)}"
        left, right = Side(Fraction(1), Fraction(0)), Side(Fraction(0), right.const / coef)
        record(action)
    return steps


def _substituted(side: Side, x: Fraction, decimal: bool) -> str:
    """The side with x replaced by its value, as arithmetic (``3 × (-4) + 5``)."""
    if side.paren is not None:
        outer, inner = side.paren
        sign = "+" if inner > 0 else "-"
        return f"{_num(outer, decimal)} × ({_num(x, decimal)} {sign} {_num(abs(inner), decimal)})"
    shown = _num(x, decimal)
    if x < 0 or "/" in shown:  # 3 × (-4) and 3 × (7/3) read (and parse) unambiguously
        shown = f"({shown})"
    if side.coef == 0:
        return _num(side.const, decimal)
    coef = side.coef
    if coef == 1:
        term = shown
    elif coef.denominator != 1 and coef.numerator in (1, -1) and not decimal:
        term = f"{'-' if coef < 0 else ''}{shown} ÷ {coef.denominator}"
    else:
        coef_text = _num(coef, decimal)
        term = f"{'(' + coef_text + ')' if '/' in coef_text else coef_text} × {shown}"
    if side.const == 0:
        return term
    return f"{term} {'+' if side.const > 0 else '-'} {_num(abs(side.const), decimal)}"


def _check_line(left: Side, right: Side, x: Fraction, decimal: bool) -> str:
    value = _num(left.value(x), decimal)
    if right.coef == 0:
        return f"Check: {_substituted(left, x, decimal)} = {value}"
    return f"Check: {_substituted(left, x, decimal)} = {value} and {_substituted(right, x, decimal)} = {value}"
