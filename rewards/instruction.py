"""Instruction-following reward: checkable constraints (``sample["constraints"]``) on the response text.

The constraint kinds and their parameters are those of ``tasks/schema.md``. Each check is a small pure
function; a constraint with an unknown kind or bad parameters counts as unsatisfied, never as a crash.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from rewards.base import Reward
from rewards.format import extract_answer_block

_WORD_RE = re.compile(r"\w+(?:['’-]\w+)*")
_BULLET_RE = re.compile(r"^[ \t]*[-*] ", re.MULTILINE)
_PARAGRAPH_BREAK_RE = re.compile(r"\n[ \t\r\f\v]*\n")
_CODE_FENCE_RE = re.compile(r"\A```[A-Za-z]*[ \t]*\n(.*)\n[ \t]*```\Z", re.DOTALL)


class _BadParameters(Exception):
    pass


def instruction_reward(
    completion: str, sample: Mapping[str, Any], *, all_or_nothing: bool = False
) -> Reward:
    """Fraction of ``sample["constraints"]`` the response satisfies (1.0/0.0 with ``all_or_nothing``).

    The response is the ``<answer>`` block if there is one, else the text after the last ``</think>``,
    else the whole completion. Reasons: ``ok``; for the first unsatisfied constraint ``failed:<kind>``,
    ``unknown_constraint:<kind>`` or ``invalid_constraint:<kind>`` (bad parameters);
    ``empty_response``; ``no_constraints`` (0.0: an instruction sample must constrain something).
    """
    constraints = sample.get("constraints")
    if not isinstance(constraints, (list, tuple)) or not constraints:
        return Reward(0.0, "no_constraints")
    response = response_text(completion)
    if not response:
        return Reward(0.0, "empty_response")

    satisfied, first_failure = 0, None
    for constraint in constraints:
        problem = _check(response, constraint)
        if problem is None:
            satisfied += 1
        elif first_failure is None:
            first_failure = problem
    if first_failure is None:
        return Reward(1.0, "ok")
    value = 0.0 if all_or_nothing else satisfied / len(constraints)
    return Reward(value, first_failure)


def response_text(completion: str) -> str:
    """The part of a completion that constraints apply to (see :func:`instruction_reward`), stripped."""
    answer = extract_answer_block(completion)
    if answer is not None:
        return answer
    _, closed, after = completion.rpartition("</think>")
    return (after if closed else completion).strip()


def _check(response: str, constraint: Any) -> str | None:
    """None if satisfied, else the reason it is not."""
    kind = constraint.get("kind") if isinstance(constraint, Mapping) else None
    if not isinstance(kind, str):
        return "invalid_constraint:?"
    checker = CHECKS.get(kind)
    if checker is None:
        return f"unknown_constraint:{kind}"
    try:
        return None if checker(response, constraint) else f"failed:{kind}"
    except (_BadParameters, KeyError, TypeError, ValueError):
        return f"invalid_constraint:{kind}"


def _count(constraint: Mapping[str, Any]) -> int:
    n = constraint["n"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise _BadParameters
    return n


def _words(constraint: Mapping[str, Any]) -> list[str]:
    words = constraint["words"]
    if isinstance(words, str):  # a single keyword given as a string
        words = [words]
    if not all(isinstance(w, str) and w.strip() for w in words):
        raise _BadParameters
    return words


def _contains(text: str, phrase: str) -> bool:
    # Case-insensitive, and not as part of a longer word ("cat" is not in "concatenate").
    return re.search(rf"(?<!\w){re.escape(phrase.strip())}(?!\w)", text, re.IGNORECASE) is not None


def _text(constraint: Mapping[str, Any]) -> str:
    text = constraint["text"]
    if not isinstance(text, str) or not text.strip():
        raise _BadParameters
    return text.strip()


def _is_json(response: str) -> bool:
    fenced = _CODE_FENCE_RE.match(response)  # models often wrap JSON in a ```json fence
    try:
        json.loads(fenced.group(1) if fenced else response)
    except (ValueError, RecursionError):
        return False
    return True


CHECKS: dict[str, Callable[[str, Mapping[str, Any]], bool]] = {
    "max_words": lambda r, c: len(_WORD_RE.findall(r)) <= _count(c),
    "min_words": lambda r, c: len(_WORD_RE.findall(r)) >= _count(c),
    "include_keywords": lambda r, c: all(_contains(r, w) for w in _words(c)),
    "exclude_words": lambda r, c: not any(_contains(r, w) for w in _words(c)),
    "num_bullets": lambda r, c: len(_BULLET_RE.findall(r)) == _count(c),
    "lowercase": lambda r, c: r == r.lower(),
    "uppercase": lambda r, c: r == r.upper(),
    "start_with": lambda r, c: r.startswith(_text(c)),
    "end_with": lambda r, c: r.endswith(_text(c)),
    "no_commas": lambda r, c: "," not in r and "，" not in r,
    "num_paragraphs": lambda r, c: sum(1 for p in _PARAGRAPH_BREAK_RE.split(r) if p.strip()) == _count(c),
    "json": lambda r, c: _is_json(r),
}
"""Constraint kind -> check ``(response, constraint) -> bool``; see ``tasks/schema.md``."""
