"""Correctness of a reasoning-gym task, decided by the generator's own ``score_answer``.

A sample made by :mod:`tasks.reasoning_gym_source` has ``verifier: "reasoning_gym"`` and a
``reasoning_gym`` field ``{"dataset", "config", "answer", "metadata"}`` (plain JSON, so it survives
JSONL; a JSON string of it is read too). The reward takes the final answer where the recipe reads it
(the ``<answer>`` block by default; see ``answer_format``), rebuilds the library's entry
``{"question": prompt, "answer", "metadata"}`` and asks that generator's scorer.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from rewards.answers import check_answer_format, extract_final_answer
from rewards.base import Reward
from rewards.reasoning_gym_helpers import score_safely, shared_pool

FIELD = "reasoning_gym"


def reasoning_gym_reward(
    completion: str,
    sample: Mapping[str, Any],
    *,
    answer_format: str = "tags",
    prefilled_think: bool = False,
    isolate: bool = True,
    timeout_s: float = 10.0,
) -> Reward:
    """The generator's own score of the completion's final answer (in [0, 1]; 1.0 = correct).

    ``answer_format`` (``tags`` | ``boxed`` | ``last_number`` | ``auto``) and ``prefilled_think`` say where
    the final answer is (:func:`rewards.answers.extract_final_answer`). With ``isolate=True`` (default)
    the scorer runs in a helper process killed after ``timeout_s`` (some scorers evaluate the answer
    text; see :mod:`rewards.reasoning_gym_helpers`); ``isolate=False`` scores in this process (faster,
    for trusted answers).

    Reasons: ``ok`` (score 1), ``partial`` (0 < score < 1: some scorers give credit for near misses),
    ``wrong_answer``, the extraction's (``no_answer_block``, ``empty_answer``, ...),
    ``no_reasoning_gym_entry`` (the sample has no ``reasoning_gym`` field), ``unknown_dataset``,
    ``timeout``,
    ``scorer_crashed``, ``scorer_unavailable``, ``error:<ExceptionType>`` (the scorer raised). Where the
    library is not installed it raises ``RuntimeError``: every score would be 0, so the run must stop.
    """
    check_answer_format(answer_format)
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise ValueError(f"reasoning_gym_reward: timeout_s must be a positive number, got {timeout_s!r}")
    payload = entry_payload(sample)
    if payload is None:
        return Reward(0.0, "no_reasoning_gym_entry")
    answer, reason = extract_final_answer(completion, answer_format, prefilled_think)
    if answer is None:
        return Reward(0.0, reason)
    name, config = payload["dataset"], payload.get("config") or {}
    entry = {"question": sample.get("prompt", ""), "answer": payload.get("answer"),
             "metadata": payload.get("metadata") or {}}
    if isolate:
        value, reason = shared_pool().score(name, config, answer, entry, float(timeout_s))
    else:
        value, reason = score_safely(name, config, answer, entry)
    if reason == "reasoning_gym_missing":
        # An environment without the library would score every completion 0: that is a broken setup, not a
        # result. Raising lets the recipe's fail-fast guard (rewards.fail_after) stop the run in one line.
        raise RuntimeError("reasoning-gym is not installed where this reward runs: pip install 'r1-recipe[gym]' "
                           "(or reasoning-gym>=0.1.25) on every node")
    if reason != "ok":
        return Reward(0.0, reason)
    if not math.isfinite(value):
        return Reward(0.0, "invalid_score")
    value = min(max(value, 0.0), 1.0)
    return Reward(value, "ok" if value >= 1.0 else "partial" if value > 0.0 else "wrong_answer")


def entry_payload(sample: Mapping[str, Any]) -> dict[str, Any] | None:
    """The sample's ``reasoning_gym`` field as a dict with a ``dataset`` name, or None if it has none.

    Accepts the dict (JSONL) or its JSON text (Arrow tables store variable-shaped fields as text)."""
    payload = sample.get(FIELD)
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except json.JSONDecodeError:
            return None
    if not isinstance(payload, Mapping) or not isinstance(payload.get("dataset"), str):
        return None
    return dict(payload)
