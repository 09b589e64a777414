"""DAPO's soft overlong punishment: a linear penalty for completions that run into the length limit."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from rewards.base import Reward


def overlong_penalty(
    completion: str,
    sample: Mapping[str, Any],
    *,
    max_tokens: int,
    buffer_tokens: int,
    penalty: float = 1.0,
) -> Reward:
    """0 up to ``max_tokens - buffer_tokens``, then linearly down to ``-penalty`` at ``max_tokens``, and
    ``-penalty`` beyond.

    The length is ``sample["completion_tokens"]`` (the pipeline adds it from the tokenizer). Without it,
    the whitespace-separated word count of ``completion`` stands in: an approximation (a word is often
    more than one token), good enough for tests and for users without token counts.

    Reasons: ``ok`` (no penalty), ``soft_overlong`` (inside the buffer), ``overlong`` (at or past the max).
    """
    _check_options(max_tokens, buffer_tokens, penalty)
    length = sample.get("completion_tokens")
    if length is None:
        length = len(completion.split())
    elif isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ValueError(
            f"overlong_penalty: sample['completion_tokens'] must be a non-negative int, got {length!r}"
        )
    free = max_tokens - buffer_tokens
    if length <= free:
        return Reward(0.0, "ok")
    if length >= max_tokens:
        return Reward(-float(penalty), "overlong")
    return Reward(-penalty * (length - free) / buffer_tokens, "soft_overlong")


def _check_options(max_tokens: Any, buffer_tokens: Any, penalty: Any) -> None:
    def is_int(x: Any) -> bool:
        return isinstance(x, int) and not isinstance(x, bool)

    if not is_int(max_tokens) or max_tokens <= 0:
        raise ValueError(f"overlong_penalty: max_tokens must be a positive int, got {max_tokens!r}")
    if not is_int(buffer_tokens) or not 0 <= buffer_tokens <= max_tokens:
        raise ValueError(
            f"overlong_penalty: buffer_tokens must be an int in [0, max_tokens={max_tokens}], "
            f"got {buffer_tokens!r}"
        )
    if isinstance(penalty, bool) or not isinstance(penalty, (int, float)) or not (
        math.isfinite(penalty) and penalty >= 0
    ):
        raise ValueError(f"overlong_penalty: penalty must be a finite number >= 0, got {penalty!r}")
