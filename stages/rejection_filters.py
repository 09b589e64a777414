"""Stage 3, rejection sampling: the pure filters that turn RL samples into SFT rows.

DeepSeek-R1 samples several completions per prompt from the RL checkpoint, keeps only the correct ones,
drops chains of thought that are hard to read (mixed languages, long paragraphs, code blocks where none
belong), removes near-copies, caps how many a prompt contributes, and mixes in non-reasoning data. This
module holds those decisions as small pure functions, so the stage that samples and verifies stays thin
and every rule here is testable without a model.

Completions are in the R1 layout ``<think>\\n…\\n</think>\\n<answer>\\n…\\n</answer>``; with
``prefilled_think=True`` the chat template already opened the think block and the completion starts
inside it.
"""
from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rewards.format import extract_think_block, format_reward
from rewards.language import language_consistency_reward

COT_REJECTION_REASONS = ("bad_format", "mixed_language", "overlong_paragraph", "repetition", "code_block")
"""What :func:`cot_rejection_reason` can return, in the order the filters run."""

_BLANK_LINE_RE = re.compile(r"\n[ \t]*\n")
_CODE_FENCE = "```"
# The language reward gives 0.0 with these reasons although nothing is in another language: a CoT of only
# numbers and symbols (``3 + 4 = 7``) is common for arithmetic and is not "mixed".
_NOT_MIXED = frozenset({"no_words", "empty_cot"})


@dataclass(frozen=True)
class FilterSettings:
    """Thresholds of the rejection-sampling filters (defaults follow the R1 report's intent).

    ``min_language_consistency``: least share of CoT words in the sample's language (1.0 = no mixing).
    ``max_paragraph_chars``: longest allowed paragraph (text between blank lines) in the think block.
    ``max_repeated_ngram_fraction`` / ``ngram``: most allowed share of word ``ngram``-grams that repeat an
    earlier one (see :func:`repeated_ngram_fraction`). ``allow_code_blocks``: keep ````` fences in
    samples whose verifier is not ``code``. ``max_per_prompt``: most completions kept per prompt.
    ``require_format``: reject completions the format reward scores 0; ``format_style``: its layout, ``r1``
    (think + ``<answer>``) or ``think_boxed`` (think + an answer with ``\\boxed{}``), as the recipe's
    format reward is configured.
    """

    min_language_consistency: float = 1.0
    max_paragraph_chars: int = 1200
    max_repeated_ngram_fraction: float = 0.3
    ngram: int = 4
    allow_code_blocks: bool = False
    max_per_prompt: int = 2
    require_format: bool = True
    format_style: str = "r1"


def cot_rejection_reason(
    completion: str,
    sample: Mapping[str, Any],
    settings: FilterSettings,
    *,
    prefilled_think: bool = False,
) -> str | None:
    """None if ``completion`` passes every chain-of-thought filter, else the first failing one's name.

    Filters, in order: ``bad_format`` (the layout of ``settings.format_style``, only with
    ``settings.require_format``),
    ``mixed_language`` (language consistency of the think block below the threshold, target language
    from ``sample["language"]``, default English), ``overlong_paragraph``, ``repetition`` (over the whole
    completion), ``code_block`` (a ````` fence when the sample's verifier is not ``code``). Correctness is
    not checked here. Raises ``ValueError`` for a sample language the language reward does not know, since
    that is a data error that would otherwise silently drop every sample of the language.
    """
    if settings.require_format and format_reward(
        completion, sample, prefilled_think=prefilled_think, style=settings.format_style
    ) != 1.0:
        return "bad_format"

    # Without a complete think block (only possible when format is not required) the whole text is the CoT,
    # as in the language reward.
    cot = extract_think_block(completion, prefilled_think)
    if cot is None:
        cot = completion.strip()

    # The CoT alone is passed, so the prefilled/not-prefilled question is settled here, not re-guessed.
    language = language_consistency_reward(cot, sample)
    if language.reason.startswith("unknown_language"):
        raise ValueError(f"sample {sample.get('id', '?')}: {language.reason}")
    if language.reason not in _NOT_MIXED and language < settings.min_language_consistency:
        return "mixed_language"

    if any(len(paragraph.strip()) > settings.max_paragraph_chars for paragraph in _BLANK_LINE_RE.split(cot)):
        return "overlong_paragraph"

    if repeated_ngram_fraction(completion, settings.ngram) > settings.max_repeated_ngram_fraction:
        return "repetition"

    # Code tasks answer in fenced blocks; elsewhere a fence is the model drifting into code.
    if not settings.allow_code_blocks and sample.get("verifier") != "code" and _CODE_FENCE in completion:
        return "code_block"
    return None


def repeated_ngram_fraction(text: str, n: int) -> float:
    """Share of the word ``n``-grams of ``text`` that repeat an earlier ``n``-gram (0.0 below ``n`` words).

    Words are whitespace-separated and lowercased. A normal text scores near 0; a degenerate loop
    ("so the answer is so the answer is …") approaches 1. Scripts written without spaces (Chinese,
    Japanese) form few "words", so loops in them score low.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    words = text.lower().split()
    total = len(words) - n + 1
    if total <= 0:
        return 0.0
    distinct = len({tuple(words[i : i + n]) for i in range(total)})
    return (total - distinct) / total


def normalize_for_dedup(text: str) -> str:
    """``text`` with whitespace runs collapsed to one space, trimmed and lowercased: the dedup key."""
    return " ".join(text.split()).lower()


def select_completions(
    candidates: Sequence[dict[str, Any]],
    settings: FilterSettings,
    *,
    prefilled_think: bool = False,
) -> tuple[list[dict[str, Any]], Counter]:
    """The candidates to keep as SFT rows, and a Counter of why the others were dropped.

    Each candidate is ``{"sample", "completion", "correct", "reason"}``. One is kept when it is correct,
    passes :func:`cot_rejection_reason`, is not a copy (after :func:`normalize_for_dedup`) of one already
    kept for the same prompt (``sample["id"]``), and its prompt has fewer than ``settings.max_per_prompt``
    kept. Candidates are taken in the given order, so the caller decides which win. Otherwise it is counted
    once under the first failing check: ``incorrect``, a CoT reason, ``duplicate`` or ``over_cap``.
    The kept items are the same dict objects, in order.
    """
    kept: list[dict[str, Any]] = []
    rejected: Counter = Counter()
    seen: dict[Any, set[str]] = {}  # prompt id -> dedup keys of its kept completions
    for candidate in candidates:
        sample = candidate["sample"]
        prompt_seen = seen.setdefault(sample["id"], set())
        if not candidate["correct"]:
            rejected["incorrect"] += 1
            continue
        reason = cot_rejection_reason(
            candidate["completion"], sample, settings, prefilled_think=prefilled_think
        )
        if reason is not None:
            rejected[reason] += 1
            continue
        key = normalize_for_dedup(candidate["completion"])
        if key in prompt_seen:
            rejected["duplicate"] += 1
            continue
        # Only kept completions fill the set, so its size is the prompt's kept count.
        if len(prompt_seen) >= settings.max_per_prompt:
            rejected["over_cap"] += 1
            continue
        prompt_seen.add(key)
        kept.append(candidate)
    return kept, rejected


def mix_non_reasoning(
    reasoning: Sequence[Any], non_reasoning: Sequence[Any], ratio: float, seed: int
) -> list[Any]:
    """``reasoning`` plus a seeded sample of ``non_reasoning`` forming ``ratio`` of the result, shuffled.

    ``ratio`` is the target share of non-reasoning rows, in ``[0, 1)``; the count is rounded to the nearest
    row, and all of ``non_reasoning`` is used when there are too few. The same inputs and ``seed`` always
    give the same list. Raises ``ValueError`` for a ``ratio`` outside ``[0, 1)``.
    """
    # `not (...)` also rejects NaN, which fails every comparison.
    if not (0.0 <= ratio < 1.0):
        raise ValueError(f"ratio must be in [0, 1), got {ratio!r}")
    # k / (R + k) = ratio  =>  k = ratio * R / (1 - ratio)
    wanted = round(ratio * len(reasoning) / (1.0 - ratio))
    rng = random.Random(seed)
    extra = rng.sample(list(non_reasoning), min(wanted, len(non_reasoning)))
    mixed = list(reasoning) + extra
    rng.shuffle(mixed)
    return mixed


def acceptance_stats(
    candidates: Sequence[Mapping[str, Any]], kept: Sequence[Mapping[str, Any]]
) -> dict[str, dict[str, float]]:
    """Per task (``sample["task"]``) and over ``"all"``: how much rejection sampling kept.

    Each row has ``prompts`` (distinct prompt ids among the candidates), ``candidates``, ``kept``,
    ``acceptance_rate`` (kept / candidates) and ``prompt_coverage`` (share of prompts with at least one
    kept completion). Rates are 0.0 where there is nothing to divide by. Tasks are sorted, ``"all"`` last.
    """

    def task_of(row: Mapping[str, Any]) -> str:
        return str(row["sample"].get("task", "unknown"))

    def prompt_of(row: Mapping[str, Any]) -> tuple[str, Any]:
        return task_of(row), row["sample"]["id"]  # ids need only be unique within a task

    groups = {task: (task,) for task in sorted({task_of(c) for c in candidates})}
    groups["all"] = tuple(groups)
    stats: dict[str, dict[str, float]] = {}
    for name, tasks in groups.items():
        group_candidates = [c for c in candidates if task_of(c) in tasks]
        group_kept = [k for k in kept if task_of(k) in tasks]
        prompts = {prompt_of(c) for c in group_candidates}
        covered = {prompt_of(k) for k in group_kept} & prompts
        stats[name] = {
            "prompts": len(prompts),
            "candidates": len(group_candidates),
            "kept": len(group_kept),
            "acceptance_rate": _ratio(len(group_kept), len(group_candidates)),
            "prompt_coverage": _ratio(len(covered), len(prompts)),
        }
    return stats


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0
