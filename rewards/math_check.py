"""Mathematical equivalence of two answer strings with math-verify, under a time budget.

This module does the checking itself and must run in the *main thread* of its process: math-verify bounds
its work with ``signal.alarm``, which Python only allows there. :mod:`rewards.math_check_pool` runs this
same code in helper processes, which is what :func:`rewards.accuracy_reward` does by default.
"""
from __future__ import annotations

import math
import time
from functools import lru_cache

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from math_verify.errors import TimeoutException
from sympy import Basic, MatrixBase

# LaTeX first (it also reads plain numbers and fractions), then plain expressions such as ``3/4``.
_EXTRACTION = (LatexExtractionConfig(), ExprExtractionConfig())
_MATH_DELIMITERS = ("$", "\\(", "\\[")


class _OutOfTime(Exception):
    """The budget ran out between math-verify calls."""


def check_equivalence(gold: str, answer: str, timeout_s: float) -> tuple[bool, str]:
    """Whether ``answer`` is mathematically equal to ``gold``, and why: ``(ok, reason)``.

    Reasons: ``ok``, ``wrong``, ``unparsable_gold``, ``unparsable_answer``, ``timeout``. Both strings are
    bare answers (no surrounding prose needed): ``42``, ``-7``, ``3/4``, ``0.5``, ``\\dfrac{3}{4}``,
    ``$\\boxed{12}$``. Main thread only; the whole check takes about ``timeout_s`` at most (math-verify's
    alarms have whole-second resolution, so each step gets at least one second).
    """
    deadline = time.monotonic() + timeout_s
    try:
        gold_parsed = _parse_gold(gold, _seconds_left(deadline))
        if not gold_parsed:
            return False, "unparsable_gold"
        answer_parsed = parse_answer(answer, deadline)
        if not answer_parsed:
            return False, "unparsable_answer"
        return _verify(gold_parsed, answer_parsed, deadline)
    except (TimeoutException, _OutOfTime):
        return False, "timeout"


@lru_cache(maxsize=8192)
def _parse_gold(gold: str, timeout: int) -> tuple:
    # Gold answers repeat across the n samples of a prompt and across epochs: parse each once. A timeout
    # raises, so it is never cached. A tuple keeps the cached value immutable.
    return tuple(parse_answer(gold, time.monotonic() + timeout))


def parse_answer(text: str, deadline: float) -> list:
    """math-verify's parse of a bare answer: a list of sympy objects and/or strings, empty if nothing.

    math-verify's default LaTeX extraction only looks inside math delimiters, so bare LaTeX such as
    ``\\dfrac{3}{4}`` or ``2\\sqrt{2}`` is parsed as ``$text$`` first; the plain-expression reading of
    the raw text is the fallback (it reads ``3/4``, ``0.5``, and numbers inside prose).
    """
    if not any(d in text for d in _MATH_DELIMITERS):
        wrapped = _parse(f"${text}$", deadline)
        if any(isinstance(p, (Basic, MatrixBase)) for p in wrapped):
            return wrapped
    return _parse(text, deadline)


def _parse(text: str, deadline: float) -> list:
    # raise_on_error=True to tell a timeout from "nothing parsed"; math-verify already handles the parse
    # errors of each candidate itself, so anything else raised here is treated as nothing parsed.
    timeout = _seconds_left(deadline)
    try:
        return parse(text, extraction_config=_EXTRACTION, parsing_timeout=timeout, raise_on_error=True)
    except Exception:
        return []


def _verify(gold: tuple, answer: list, deadline: float) -> tuple[bool, str]:
    try:
        ok = verify(list(gold), answer, timeout_seconds=_seconds_left(deadline), raise_on_error=True)
    except TimeoutException:
        raise
    except Exception:
        # raise_on_error=True stops at the first failing pair; math-verify's lenient mode tries the rest
        # (e.g. the string forms), which is what a grader wants once we know it was not a timeout.
        ok = verify(list(gold), answer, timeout_seconds=_seconds_left(deadline))
    return (True, "ok") if ok else (False, "wrong")


def _seconds_left(deadline: float) -> int:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _OutOfTime
    return max(1, math.ceil(left))  # signal.alarm takes whole seconds
