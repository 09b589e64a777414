"""Arithmetic expressions with + - × and exact ÷, and their worked steps.

Difficulty 1 is a single-digit sum (``What is 3 + 4?``) so a 135M model gets some right and GRPO has a
signal to start from; higher levels add operands, digits and operators. An expression is a sum of terms,
each term a left-to-right chain of × and ÷; every ÷ divides exactly, so answers are integers.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Iterable

from .sampling import check_difficulty, draw_samples


@dataclass(frozen=True)
class ArithmeticLevel:
    operands: tuple[int, int]  # min and max number of operands
    digits: int  # max digits of numbers that are added or subtracted
    factor_digits: int  # max digits of numbers that multiply or divide
    operators: str  # drawn from "+-×÷"
    allow_negative: bool = True  # low levels keep every running total >= 0: fewer concepts for a tiny model


LEVELS = {
    1: ArithmeticLevel(operands=(2, 2), digits=1, factor_digits=1, operators="+"),
    2: ArithmeticLevel(operands=(2, 2), digits=2, factor_digits=1, operators="+-", allow_negative=False),
    3: ArithmeticLevel(operands=(2, 3), digits=2, factor_digits=1, operators="+-×", allow_negative=False),
    4: ArithmeticLevel(operands=(3, 3), digits=3, factor_digits=2, operators="+-×÷"),
    5: ArithmeticLevel(operands=(3, 4), digits=4, factor_digits=2, operators="+-×÷"),
}
DEFAULT_DIFFICULTY = 2


def generate_arithmetic(
    n: int, *, seed: int, difficulty: int = DEFAULT_DIFFICULTY, split: str | None = None,
    exclude: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """``n`` distinct arithmetic problems (``What is 23 + 4 × 7?``) with integer answers and worked steps.

    Each sample also carries ``expression`` (Python syntax, ``23 + 4 * 7``) for tools that want it.
    """
    check_difficulty("arithmetic", difficulty, LEVELS)
    return draw_samples(
        "arithmetic", make_arithmetic_problem, n, seed=seed, difficulty=difficulty, split=split, exclude=exclude
    )


def make_arithmetic_problem(rng: random.Random, difficulty: int) -> dict[str, Any]:
    """One problem: prompt, integer answer, operation-by-operation solution."""
    level = LEVELS[difficulty]
    while True:
        terms = _draw_terms(rng, level)
        if terms is not None:
            break
    shown = _render(terms)
    steps, value = _solve(terms)
    steps.append(f"So the answer is {value}.")
    return {
        "prompt": f"What is {shown}?",
        "answer": str(value),
        "verifier": "accuracy",
        "solution": "\n".join(steps),
        "expression": shown.replace("×", "*").replace("÷", "/"),
    }


# A term is (sign, [first factor, (op, factor), ...]); sign is "+" or "-" (the first term is always "+").
Term = tuple[str, list]


def _number(rng: random.Random, digits: int, *, low: int = 0) -> int:
    return rng.randint(low, 10**digits - 1)


def _draw_terms(rng: random.Random, level: ArithmeticLevel) -> list[Term] | None:
    """Random terms for one expression, or None when the draw breaks a level rule (the caller redraws):
    a ÷ without an exact divisor, or a negative running total where the level forbids one."""
    count = rng.randint(*level.operands)
    operators = [rng.choice(level.operators) for _ in range(count - 1)]
    # Split the operator list into terms at + and -; × and ÷ stay inside a term.
    groups: list[tuple[str, list[str]]] = [("+", [])]
    for op in operators:
        if op in "+-":
            groups.append((op, []))
        else:
            groups[-1][1].append(op)
    terms = []
    for sign, ops in groups:
        chain = _draw_chain(rng, level, ops)
        if chain is None:
            return None
        terms.append((sign, chain))
    if not level.allow_negative and min(_running_totals(terms)) < 0:
        return None
    return terms


def _running_totals(terms: list[Term]) -> list[int]:
    totals, total = [], 0
    for sign, chain in terms:
        value = chain[0]
        for op, factor in chain[1:]:
            value = value * factor if op == "×" else value // factor
        total = total + value if sign == "+" else total - value
        totals.append(total)
    return totals


def _draw_chain(rng: random.Random, level: ArithmeticLevel, ops: list[str]) -> list | None:
    if not ops:
        return [_number(rng, level.digits)]
    max_factor = 10**level.factor_digits - 1
    if ops[0] == "÷":
        # Start a division chain from a multiple of its divisor so the first ÷ is exact.
        divisor = rng.randint(2, max_factor)
        first = divisor * rng.randint(2, max(2, (10**level.digits - 1) // divisor))
    else:
        # Keep the first factor of a product short too, or level 5 answers run to millions.
        first = _number(rng, min(level.digits, level.factor_digits + 1), low=1)
    chain: list = [first]
    value = first
    for op in ops:
        if op == "×":
            factor = rng.randint(2, max_factor)
            value *= factor
        else:
            divisors = [d for d in range(2, max_factor + 1) if value % d == 0]
            if not divisors:
                return None
            factor = rng.choice(divisors)
            value //= factor
        chain.append((op, factor))
    return chain


def _render(terms: list[Term]) -> str:
    parts = []
    for index, (sign, chain) in enumerate(terms):
        text = " ".join([str(chain[0])] + [f"{op} {factor}" for op, factor in chain[1:]])
        parts.append(text if index == 0 else f"{sign} {text}")
    return " ".join(parts)


def _solve(terms: list[Term]) -> tuple[list[str], int]:
    """Worked steps and the value: products and quotients first, then sums left to right."""
    steps: list[str] = []
    mixed = len(terms) > 1 and any(len(chain) > 1 for _, chain in terms)
    if mixed:
        steps.append("Multiplication and division come first, from left to right; then addition and subtraction.")
    term_values = []
    for _, chain in terms:
        value = chain[0]
        for op, factor in chain[1:]:
            if op == "×":
                steps.extend(explain_multiplication(value, factor))
                value *= factor
            else:
                quotient = value // factor
                steps.append(f"{value} ÷ {factor} = {quotient}, because {factor} × {quotient} = {value}")
                value = quotient
        term_values.append(value)
    if mixed:
        reduced = _render([(sign, [v]) for (sign, _), v in zip(terms, term_values)])
        steps.append(f"Now the expression is {reduced}.")
    total = term_values[0]
    for (sign, _), value in zip(terms[1:], term_values[1:]):
        if sign == "+":
            steps.extend(explain_addition(total, value))
            total += value
        else:
            steps.extend(explain_subtraction(total, value))
            total -= value
    return steps, total


def explain_addition(a: int, b: int) -> list[str]:
    """Column addition (ones, tens, ... with carries) for two non-negative multi-digit numbers."""
    if a < 0 or b < 0 or max(a, b) < 10:
        return [f"{a} + {b} = {a + b}"]
    names = ["ones", "tens", "hundreds", "thousands", "ten-thousands", "hundred-thousands", "millions"]
    lines = [f"Add {a} + {b} column by column:"]
    carry = 0
    for place in range(len(str(max(a, b)))):
        da, db = a // 10**place % 10, b // 10**place % 10
        column = da + db + carry
        summands = " + ".join(str(d) for d in [da, db] + ([carry] if carry else []))
        name = names[place] if place < len(names) else f"10^{place}"
        note = f", write {column % 10}, carry {column // 10}" if column >= 10 else f", write {column}"
        lines.append(f"{name}: {summands} = {column}{note}")
        carry = column // 10
    if carry:
        lines.append(f"the last carry {carry} goes in front")
    lines.append(f"{a} + {b} = {a + b}")
    return lines


def explain_subtraction(a: int, b: int) -> list[str]:
    """``a - b`` by taking away ``b``'s place values one at a time (or by swapping when it goes negative)."""
    if b > a:
        return [f"{a} - {b} = -({b} - {a}) = {a - b}"] if a >= 0 else [f"{a} - {b} = {a - b}"]
    if b < 10:
        return [f"{a} - {b} = {a - b}"]
    lines = [f"Subtract {b} from {a} one place value at a time:"]
    value = a
    digits = str(b)
    for place, digit in enumerate(digits):
        part = int(digit) * 10 ** (len(digits) - 1 - place)
        if part == 0:
            continue
        lines.append(f"{value} - {part} = {value - part}")
        value -= part
    lines.append(f"{a} - {b} = {a - b}")
    return lines


def explain_multiplication(a: int, b: int) -> list[str]:
    """``a × b``, splitting the multiplier into place values when it has more than one digit."""
    if b < 10:
        return [f"{a} × {b} = {a * b}"]
    parts = [int(d) * 10 ** (len(str(b)) - 1 - i) for i, d in enumerate(str(b)) if d != "0"]
    split = " + ".join(f"{a} × {p}" for p in parts)
    partials = " + ".join(str(a * p) for p in parts)
    return [f"{a} × {b} = {split} = {partials} = {a * b}"]
