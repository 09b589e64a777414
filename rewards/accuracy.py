"""Math accuracy reward: the final answer in the ``<answer>`` block, checked against the gold answer with
math-verify, safe to call from any thread and inside Ray workers."""
from __future__ import annotations

import math
import re
import signal
import threading
from collections.abc import Mapping
from typing import Any

from rewards.base import Reward
from rewards.format import extract_answer_block
from rewards.math_check import check_equivalence
from rewards.math_check_pool import shared_pool

DEFAULT_MAX_ANSWER_CHARS = 1000
# Tokens of a left-to-right brace scan: a \boxed opener, an escaped brace (not structural), a brace.
_BRACE_TOKEN_RE = re.compile(r"\\boxed\s*\{|\\[{}]|[{}]")


def accuracy_reward(
    completion: str,
    sample: Mapping[str, Any],
    *,
    timeout_s: float = 5.0,
    max_answer_chars: int | None = DEFAULT_MAX_ANSWER_CHARS,
    isolate: bool = True,
) -> Reward:
    """1.0 iff the final answer equals ``sample["answer"]`` according to math-verify, else 0.0.

    The final answer is the content of the last ``\\boxed{...}`` in the last ``<answer>`` block, or the
    whole block if it has none. Bare answers work: ``42``, ``-7``, ``3/4``, ``0.5``, ``\\frac{1}{2}``.
    Answers longer than ``max_answer_chars`` are rejected before parsing (None: no limit).

    Time and memory: with ``isolate=True`` (default) the check runs in a helper process (see
    :mod:`rewards.math_check_pool`) that is killed if it does not answer within ``timeout_s`` and that
    cannot allocate more than 1 GiB, from any thread. ``isolate=False`` checks in-process with
    math-verify's own ``signal.alarm`` timeouts: ~15% faster, main thread only (other threads still
    isolate), but an alarm cannot stop one long big-integer operation in C (``\\gcd(10^{10^{10}}, 7)``
    takes ~20 s and 4 GB whatever the timeout); use it for trusted answers. If no helper can start, the
    main thread falls back to the in-process check (logged) and other threads get
    ``verifier_unavailable``.

    Reasons: ``ok``, ``wrong``, ``no_answer_block``, ``empty_answer``, ``answer_too_long``,
    ``unparsable_gold``, ``unparsable_answer``, ``timeout``; rarely ``verifier_unavailable`` or
    ``verifier_crashed`` (a helper process could not start or died).
    """
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not (
        math.isfinite(timeout_s) and timeout_s > 0
    ):
        raise ValueError(f"accuracy_reward: timeout_s must be a positive number, got {timeout_s!r}")
    block = extract_answer_block(completion)
    if block is None:
        return Reward(0.0, "no_answer_block")
    answer = final_answer_text(block)
    if not answer:
        return Reward(0.0, "empty_answer")
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


def final_answer_text(text: str) -> str:
    """The content of the last balanced ``\\boxed{...}`` in ``text`` (stripped), else ``text`` stripped.

    One left-to-right scan; escaped braces ``\\{`` ``\\}`` are content, not structure. "Last" is the box
    that closes last, so a box nested in another yields the outer one.
    """
    stack: list[int | None] = []  # for each open brace: content start if it opened a \boxed, else None
    last: tuple[int, int] | None = None
    for token in _BRACE_TOKEN_RE.finditer(text):
        tok = token.group()
        if tok.startswith("\\boxed"):
            stack.append(token.end())
        elif tok == "{":
            stack.append(None)
        elif tok == "}":
            if not stack:
                continue  # a stray closer cannot end a box
            start = stack.pop()
            if start is not None:
                last = (start, token.start())
    if last is None:
        return text.strip()
    return text[last[0] : last[1]].strip()


def _alarms_usable() -> bool:
    return hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
