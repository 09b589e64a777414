"""Gold answers out of a dataset's answer text: a regex (group 1 is the answer) or a named extractor.

Named extractors, for what a regex cannot do or every user would otherwise retype:

- ``boxed``: the content of the last balanced ``\\boxed{...}`` (MATH's ``solution``; nested braces such as
  ``\\boxed{\\frac{1}{2}}`` are why this is not a regex), read as the rewards read a completion's box
  (:func:`rewards.boxed.last_boxed`);
- ``gsm8k``: the text after GSM8K's ``#### `` marker (the regex ``####\\s*(.+)$``).

Either way a thousands-separated number (``1,234``) becomes ``1234``; commas elsewhere (tuples, sets,
intervals) are kept.
"""
from __future__ import annotations

import re
from typing import Callable

_THOUSANDS = re.compile(r"^-?\d{1,3}(,\d{3})+(\.\d+)?$")
GSM8K_PATTERN = r"####\s*(.+)$"


def last_boxed(text: str) -> str | None:
    """The content of the last balanced ``\\boxed{...}`` of ``text``, else None: the rewards' own reading of a
    box (:func:`rewards.boxed.last_boxed`), so a gold answer and a completion's answer are read alike."""
    from rewards.boxed import last_boxed as rewards_last_boxed  # here: `import rewards` takes ~1.5 s

    return rewards_last_boxed(text)


def _regex_extractor(pattern: str) -> Callable[[str], str | None]:
    regex = re.compile(pattern, re.MULTILINE)

    def extract(text: str) -> str | None:
        match = regex.search(text)
        return None if match is None else match.group(1).strip()

    return extract


NAMED_PATTERNS: dict[str, Callable[[str], str | None]] = {
    "boxed": last_boxed,
    "gsm8k": _regex_extractor(GSM8K_PATTERN),
}


def answer_extractor(pattern: str) -> Callable[[str], str | None]:
    """A function from answer text to the gold answer (None where it finds none), for a named extractor
    (``boxed``, ``gsm8k``) or a regex with one capture group. A bad pattern raises ``ValueError``."""
    check_answer_pattern(pattern)
    return NAMED_PATTERNS.get(pattern) or _regex_extractor(pattern)


def check_answer_pattern(pattern: str) -> None:
    """Raise ``ValueError`` (one line) unless ``pattern`` is a named extractor or a regex with a group."""
    if pattern in NAMED_PATTERNS:
        return
    try:
        groups = re.compile(pattern, re.MULTILINE).groups
    except re.error as exc:
        raise ValueError(f"not a valid regex ({exc}) nor a named extractor ({', '.join(NAMED_PATTERNS)})") from None
    if groups < 1:
        raise ValueError("needs one capture group for the answer (or a named extractor: "
                         f"{', '.join(NAMED_PATTERNS)})")


def normalized_answer(answer: str) -> str:
    """``answer`` stripped, with a thousands-separated number's commas removed (``1,234`` -> ``1234``)."""
    answer = answer.strip()
    return answer.replace(",", "") if _THOUSANDS.match(answer) else answer
