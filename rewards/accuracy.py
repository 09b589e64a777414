"""Math accuracy reward: the final answer (in the ``<answer>`` block, the last ``\\boxed{}`` or the last number,
by ``answer_format``), checked against the gold answer with math-verify, safe to call from any thread and
inside Ray workers."""
from __future__ import annotations

import math
import signal
import threading
from collections.abc import Mapping
from typing import Any, Literal

from rewards.answers import extract_final_answer
from rewards.base import Reward
from rewards.boxed import final_answer_text
from rewards.math_check import check_equivalence
from rewards.math_check_pool import shared_pool

DEFAULT_MAX_ANSWER_CHARS = 1000
__all__ = ["accuracy_reward", "final_answer_text"]


def accuracy_reward(
    completion: str,
    sample: Mapping[str, Any],
    *,
    timeout_s: float = 5.0,
    max_answer_chars: int | None = DEFAULT_MAX_ANSWER_CHARS,
    isolate: bool = True,
    answer_format: Literal["tags", "boxed", "last_number", "auto"] = "tags",
    prefilled_think: bool = False,
) -> Reward:
    """1.0 iff the final answer equals ``sample["answer"]`` according to math-verify, else 0.0.

    Where the final answer is depends on ``answer_format`` (see :mod:`rewards.answers`): ``tags`` (the R1
    default) reads the last ``<answer>`` block (the last ``\\boxed{...}`` in it, or the whole block);
    ``boxed`` the last box after ``</think>``; ``last_number`` the last number after ``</think>``; ``auto``
    the block if there is one, else the last box, else the last number. ``prefilled_think``: the prompt
    opened the think block, so without a ``</think>`` nothing is final yet.
    Bare answers work: ``42``, ``-7``, ``3/4``, ``0.5``, ``\\frac{1}{2}``.
    Answers longer than ``max_answer_chars`` are rejected before parsing (None: no limit).

    Time and memory: with ``isolate=True`` (default) the check runs in a helper process (see
    :mod:`rewards.math_check_pool`) that is killed if it does not answer within ``timeout_s`` and that
    cannot allocate more than 1 GiB, from any thread. ``isolate=False`` checks in-process with
    math-verify's own ``signal.alarm`` timeouts: ~15% faster, main thread only (other threads still
    isolate), but an alarm cannot stop one long big-integer operation in C (``\\gcd(10^{10^{10}}, 7)``
    takes ~20 s and 4 GB whatever the timeout); use it for trusted answers. If no helper can start, the
    main thread falls back to the in-process check (logged) and other threads get
    ``verifier_unavailable``.

    Reasons: ``ok``, ``wrong``, ``no_answer_block`` / ``no_boxed`` / ``no_number`` / ``no_answer`` /
    ``unclosed_think`` (no final answer, by format), ``empty_answer``, ``answer_too_long``,
    ``unparsable_gold``, ``unparsable_answer``, ``timeout``; rarely ``verifier_unavailable`` or
    ``verifier_crashed`` (a helper process could not start or died).
    """
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not (
        math.isfinite(timeout_s) and timeout_s > 0
    ):
        raise ValueError(f"accuracy_reward: timeout_s must be a positive number, got {timeout_s!r}")
    answer, missing = extract_final_answer(completion, answer_format, prefilled_think)
    if answer is None:
        return Reward(0.0, missing)
    if max_answer_chars is not None and len(answer) > max_answer_chars:
        return Reward(0.0, "answer_too_long")
    gold = sample.get("answer")
    gold = final_answer_text(str(gold)) if gold is not None else ""
    if not gold:
        return Reward(0.0, "unparsable_gold")

    timeout_s = float(timeout_s)
    in_process = _alarms_usable()
    if isolate or not in_process:
        ok, reason = shared_pool().check(gold, answer, timeout_s)
        if reason == "verifier_unavailable" and in_process:
            ok, reason = check_equivalence(gold, answer, timeout_s)  # degraded, but not all zeros
    else:
        ok, reason = check_equivalence(gold, answer, timeout_s)
    return Reward(1.0 if ok else 0.0, reason)


def _alarms_usable() -> bool:
    return hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
