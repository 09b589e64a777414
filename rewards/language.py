"""Language-consistency reward of DeepSeek-R1: the share of chain-of-thought words in the target language.

Languages are told apart by the Unicode script of their letters, which is what "mixed languages" in a
CoT looks like in practice (English words inside a Chinese CoT, Chinese inside an English one). Words are
runs of letters of one script; each Han, Hiragana or Katakana character counts as a word of its own
(those scripts put no spaces between words). Numbers, punctuation and LaTeX command names are not words,
nor are single Latin or Greek letters (math variables such as ``x`` or ``\\alpha``).
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from functools import lru_cache
from itertools import groupby
from typing import Any

from rewards.base import Reward
from rewards.format import extract_think_block

_LATIN = frozenset({"LATIN"})
LANGUAGE_SCRIPTS: dict[str, frozenset[str]] = {
    **{code: _LATIN for code in ("en", "latin", "fr", "de", "es", "it", "pt", "nl", "pl", "tr", "vi", "id")},
    "zh": frozenset({"CJK"}),
    "ja": frozenset({"CJK", "HIRAGANA", "KATAKANA", "KATAKANA-HIRAGANA"}),
    "ko": frozenset({"HANGUL"}),
    **{code: frozenset({"CYRILLIC"}) for code in ("ru", "uk", "bg", "sr", "cyrillic")},
    **{code: frozenset({"ARABIC"}) for code in ("ar", "fa", "ur")},
    "el": frozenset({"GREEK"}),
    "he": frozenset({"HEBREW"}),
    "hi": frozenset({"DEVANAGARI"}),
}
"""Language code -> the Unicode scripts (first word of a letter's Unicode name) its words are written in."""

_PER_CHARACTER_SCRIPTS = frozenset({"CJK", "HIRAGANA", "KATAKANA", "KATAKANA-HIRAGANA"})
_SINGLE_LETTER_NOT_A_WORD = frozenset({"LATIN", "GREEK"})
_LATEX_COMMAND_RE = re.compile(r"\\[A-Za-z]+")
_LETTERS_RE = re.compile(r"[^\W\d_]+")  # maximal runs of letters (any script)


def language_consistency_reward(
    completion: str, sample: Mapping[str, Any], *, language: str | None = None
) -> Reward:
    """Fraction of words in the chain of thought written in the target language's script.

    The chain of thought is the think block (see :func:`rewards.format.extract_think_block`), or the whole
    completion if there is none. The target is ``language``, else ``sample["language"]``, else ``"en"``;
    codes are those of :data:`LANGUAGE_SCRIPTS`. Reasons: ``ok`` (all words in the target script),
    ``mixed_language``, ``empty_cot``, ``no_words`` (0.0: only numbers and symbols),
    ``unknown_language:<code>``.
    """
    code = language or sample.get("language") or "en"
    scripts = LANGUAGE_SCRIPTS.get(str(code).lower())
    if scripts is None:
        return Reward(0.0, f"unknown_language:{code}")
    cot = extract_think_block(completion)
    if cot is None:
        cot = completion.strip()
    if not cot:
        return Reward(0.0, "empty_cot")
    in_target = total = 0
    for script, length in _words(_LATEX_COMMAND_RE.sub(" ", cot)):
        count = length if script in _PER_CHARACTER_SCRIPTS else 1
        total += count
        if script in scripts:
            in_target += count
    if total == 0:
        return Reward(0.0, "no_words")
    return Reward(in_target / total, "ok" if in_target == total else "mixed_language")


def _words(text: str):
    """``(script, length)`` for each word: a letter run split where the script changes."""
    for run in _LETTERS_RE.finditer(text):
        letters = run.group()
        if letters.isascii():  # the common case, without a per-character lookup
            if len(letters) > 1:
                yield "LATIN", len(letters)
            continue
        for script, group in groupby(map(_script, letters)):
            length = sum(1 for _ in group)
            if length > 1 or script not in _SINGLE_LETTER_NOT_A_WORD:
                yield script, length


@lru_cache(maxsize=65536)
def _script(char: str) -> str:
    # "LATIN SMALL LETTER A", "CJK UNIFIED IDEOGRAPH-4E2D", "HIRAGANA LETTER A", "HANGUL SYLLABLE GA".
    name = unicodedata.name(char, "")
    return name.split(" ", 1)[0] if name else "UNKNOWN"
