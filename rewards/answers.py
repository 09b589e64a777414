"""Where a completion's final answer is: the ``<answer>`` block, the last ``\\boxed{}``, or the last number.

Models put answers in different places. R1-style models write ``<think>…</think><answer>…</answer>``;
R1-distill, OpenR1 and MATH-style models write ``<think>…</think> … \\boxed{42}``; GSM8K-style graders take
the last number of the text. :func:`extract_final_answer` reads any of them, by ``answer_format``:

- ``tags`` (the R1 default): the last ``<answer>`` block; inside it the last ``\\boxed{}`` if any.
- ``boxed``: the last ``\\boxed{…}`` (or ``\\fbox{…}``) after the think block.
- ``last_number``: the last number after the think block (``1,000`` -> ``1000``, ``-3.5``, ``3/4``).
- ``auto``: ``tags`` if there is an ``<answer>`` block, else ``boxed`` if there is a box, else
  ``last_number``.

"After the think block" means after the last ``</think>``. A completion that opens a think block and
never closes it (truncated; with ``prefilled_think=True`` the prompt opened it) has no answer yet: boxes
and numbers inside reasoning are not final answers. A completion without any think tag is read whole.
"""
from __future__ import annotations

import re

from rewards.boxed import final_answer_text, last_boxed
from rewards.format import extract_answer_block

ANSWER_FORMATS: tuple[str, ...] = ("tags", "boxed", "last_number", "auto")

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
# A number as people write final answers. An optional sign, unless the minus follows a digit, letter or
# closing bracket (then it is an operator: "5-3" ends in 3). Then either a LaTeX fraction of integers
# (\frac{3}{4}, \dfrac, \tfrac) or digits with optional thousands separators (exactly 3 digits per group),
# decimals and a "/denominator". A number starts at no digit, dot or letter ("x2" and "v1.5" are not numbers).
_NUMBER_RE = re.compile(
    r"(?P<sign>(?<![\w.)\]}])-)?"
    r"(?:\\[dt]?frac\{\s*(?P<num>\d+)\s*\}\{\s*(?P<den>\d+)\s*\}"
    r"|(?<![\w.])(?P<plain>(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?(?:/\d+)?))"
)


def check_answer_format(answer_format: str) -> None:
    """Raise ``ValueError`` (one line, the accepted values) unless ``answer_format`` is a known format."""
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format={answer_format!r}: expected one of {', '.join(ANSWER_FORMATS)}")


def extract_final_answer(
    completion: str, answer_format: str = "tags", prefilled_think: bool = False
) -> tuple[str | None, str]:
    """``(answer, "ok")`` with the final answer text (stripped), or ``(None, reason)`` when there is none.

    Reasons of a miss: ``no_answer_block`` (tags), ``no_boxed`` (boxed), ``no_number`` (last_number),
    ``no_answer`` (auto: no block, box or number), ``unclosed_think`` (boxed / last_number / auto without
    an answer block: the think block never closed, so nothing is final), ``empty_answer`` (an empty block
    or box). Linear in the length of the completion.
    """
    check_answer_format(answer_format)
    if answer_format == "tags" or (answer_format == "auto" and "<answer>" in completion):
        block = extract_answer_block(completion)
        if block is not None:
            return _non_empty(final_answer_text(block))
        if answer_format == "tags":
            return None, "no_answer_block"
    region = text_after_think(completion, prefilled_think)
    if region is None:
        return None, "unclosed_think"
    if answer_format in ("boxed", "auto"):
        box = last_boxed(region)
        if box is not None:
            return _non_empty(box)
        if answer_format == "boxed":
            return None, "no_boxed"
    number = last_number(region)
    if number is not None:
        return number, "ok"
    return None, "no_number" if answer_format == "last_number" else "no_answer"


def text_after_think(completion: str, prefilled_think: bool = False) -> str | None:
    """The text after the last ``</think>``; the whole text if there is no think tag at all; None if a think
    block was opened (in the completion, or by the prompt with ``prefilled_think``) and never closed."""
    close = completion.rfind(_THINK_CLOSE)
    if close != -1:
        return completion[close + len(_THINK_CLOSE):]
    if prefilled_think or _THINK_OPEN in completion:
        return None
    return completion


def last_number(text: str) -> str | None:
    """The last number in ``text``, normalised for math-verify, else None.

    ``1,000`` -> ``1000``; signs, decimals and fractions are kept: ``-3.5``, ``3/4``, ``\\frac{3}{4}`` ->
    ``3/4``. A minus right after a digit, letter or closing bracket is an operator, not a sign (``5-3`` ends
    in ``3``). A trailing full stop is not part of the number (``is 42.`` -> ``42``).
    """
    found = None
    for found in _NUMBER_RE.finditer(text):
        pass
    if found is None:
        return None
    sign = found.group("sign") or ""
    if found.group("plain") is not None:
        return sign + found.group("plain").replace(",", "")
    return f"{sign}{found.group('num')}/{found.group('den')}"


def _non_empty(answer: str) -> tuple[str | None, str]:
    return (answer, "ok") if answer else (None, "empty_answer")
