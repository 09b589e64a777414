"""Countdown: reach a target from given numbers with + - * /, each number used exactly once.

The target is built by combining the drawn numbers in a random order with random operations, so every
problem has a known solution (kept in ``answer`` as one expression and in ``solution`` as the steps).
Like the game, every intermediate result is a positive whole number: subtraction never goes to zero or
below and division is exact.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Iterable

from .sampling import check_difficulty, draw_samples


@dataclass(frozen=True)
class CountdownLevel:
    small: int  # how many numbers from 1..small_max
    small_max: int
    large: int  # how many numbers from LARGE_NUMBERS
    operators: str
    max_target: int = 1000


LARGE_NUMBERS = (25, 50, 75, 100)
LEVELS = {
    1: CountdownLevel(small=2, small_max=10, large=0, operators="+-"),
    2: CountdownLevel(small=3, small_max=10, large=0, operators="+-*"),
    3: CountdownLevel(small=4, small_max=12, large=0, operators="+-*/"),
    4: CountdownLevel(small=4, small_max=10, large=1, operators="+-*/"),
    5: CountdownLevel(small=4, small_max=10, large=2, operators="+-*/"),
}
DEFAULT_DIFFICULTY = 3
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_ATOM = 3


@dataclass(frozen=True)
class _Node:
    value: int
    text: str
    precedence: int  # _ATOM for a bare number, else the precedence of its top operator


def generate_countdown(
    n: int, *, seed: int, difficulty: int = DEFAULT_DIFFICULTY, split: str | None = None,
    exclude: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """``n`` distinct countdown problems: ``numbers``, ``target`` and one solving expression as ``answer``."""
    check_difficulty("countdown", difficulty, LEVELS)
    return draw_samples(
        "countdown", make_countdown_problem, n, seed=seed, difficulty=difficulty, split=split, exclude=exclude
    )


def make_countdown_problem(rng: random.Random, difficulty: int) -> dict[str, Any]:
    """One problem whose target is the value of a random expression over all the drawn numbers."""
    level = LEVELS[difficulty]
    while True:
        numbers = [rng.randint(1, level.small_max) for _ in range(level.small)]
        numbers += rng.sample(LARGE_NUMBERS, level.large)
        expression, steps = _combine_all(rng, numbers, level.operators)
        if 1 <= expression.value <= level.max_target:
            break
    # Sorted, so the same numbers and target always read as the same prompt (dedupe and splits rely on it).
    shown = sorted(numbers)
    target = expression.value
    listing = ", ".join(str(x) for x in shown)
    prompt = (
        f"Using the numbers {listing}, write an expression that equals {target}. Use each number exactly "
        f"once; you may use +, -, * and / and parentheses."
    )
    steps.append(f"So {expression.text} = {target}.")
    return {
        "prompt": prompt,
        "answer": expression.text,
        "verifier": "countdown",
        "solution": "\n".join(steps),
        "numbers": shown,
        "target": target,
    }


def _combine_all(rng: random.Random, numbers: list[int], operators: str) -> tuple[_Node, list[str]]:
    """Repeatedly merge two random nodes with a random valid operation until one expression is left."""
    nodes = [_Node(x, str(x), _ATOM) for x in numbers]
    steps = []
    while len(nodes) > 1:
        first, second = rng.sample(range(len(nodes)), 2)
        a, b = nodes[first], nodes[second]
        nodes = [node for i, node in enumerate(nodes) if i not in (first, second)]
        merged = _merge(rng, a, b, operators)
        left, op, right = merged[1]
        steps.append(f"{left} {op} {right} = {merged[0].value}")
        nodes.append(merged[0])
    return nodes[0], steps


def _merge(rng: random.Random, a: _Node, b: _Node, operators: str) -> tuple[_Node, tuple[int, str, int]]:
    big, small = (a, b) if a.value >= b.value else (b, a)
    options = []
    for op in operators:
        if op == "-" and big.value == small.value:
            continue  # zero is not a usable intermediate result
        if op == "/" and (small.value == 1 or big.value % small.value):
            continue  # only exact division by something other than 1
        options.append(op)
    op = rng.choice(options)  # "+" (or "*") always qualifies, so options is never empty
    if op in "+*" and rng.random() < 0.5:
        big, small = small, big  # commutative: either order reads fine
    value = {"+": big.value + small.value, "-": big.value - small.value,
             "*": big.value * small.value, "/": big.value // small.value}[op]
    text = f"{_operand(big, op, right=False)} {op} {_operand(small, op, right=True)}"
    return _Node(value, text, _PRECEDENCE[op]), (big.value, op, small.value)


def _operand(node: _Node, op: str, *, right: bool) -> str:
    """The operand's text, parenthesised only where precedence or non-associativity requires it."""
    needs = node.precedence < _PRECEDENCE[op] or (right and node.precedence == _PRECEDENCE[op] and op in "-/")
    return f"({node.text})" if needs else node.text
