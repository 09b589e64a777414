"""Partial credit for a numeric final answer near the gold one: a dense reward for a model that is never right.

Exact correctness gives an untrained model (e.g. the recipe's cut student) 0 on every completion, so every
GRPO group has all-equal rewards and nothing to learn from. This reward grades the distance instead:

    1 / (1 + |answer - gold| / max(1, |gold|))

1.0 iff the answer equals the gold one, 0.5 at a relative error of 1, falling towards 0. It is a shaping
reward for training only: evals count exact correctness (the ``correctness`` reward). It can be gamed by
emitting numbers near typical answers; that is what partial credit means, and why evals do not use it.
"""
from __future__ import annotations

from collections.abc import Mapping
from fractions import Fraction
from typing import Any, Literal

from rewards.answers import extract_final_answer, last_number
from rewards.base import Reward


def numeric_closeness_reward(completion: str, sample: Mapping[str, Any], *,
                             answer_format: Literal["tags", "boxed", "last_number", "auto"] = "last_number",
                             prefilled_think: bool = False) -> Reward | None:
    """``1 / (1 + |answer - gold| / max(1, |gold|))`` for the final answer (read by ``answer_format``, see
    :mod:`rewards.answers`; default the last number, wherever it is) against ``sample["answer"]``.

    Reasons: ``ok``; the extractor's miss (``no_number``, ``unclosed_think``, ...); ``not_a_number`` (the
    answer has no number). A gold answer without a number is not this reward's to score: None (left out
    of the total, reason ``not_applicable``).
    """
    gold = _value(last_number(str(sample.get("answer", ""))))
    if gold is None:
        return None
    answer, reason = extract_final_answer(completion, answer_format, prefilled_think)
    if answer is None:
        return Reward(0.0, reason)
    value = _value(answer if answer_format == "last_number" else last_number(answer))
    if value is None:
        return Reward(0.0, "not_a_number")
    return Reward(float(1 / (1 + abs(value - gold) / max(Fraction(1), abs(gold)))), "ok")


def _value(text: str | None) -> Fraction | None:
    """``"-3.5"`` / ``"3/4"`` / ``"12"`` as an exact fraction; None for anything else (a zero denominator too)."""
    if not text:
        return None
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None
