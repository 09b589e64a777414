"""Test your own reward against r1's: reference cases as data, ``check_reward``, ``assert_agrees``, fixtures.

    from rewards.testing import assert_agrees

    def test_my_reward_agrees_with_r1():
        assert_agrees(my_rewards.correct_and_short)          # any supported signature: ours, TRL, verl, async

The reference cases (``rewards/reference_cases.yaml``) are completions with the score our rewards give
them: equivalent and non-equivalent answers (math-verify: ``1/2`` = ``0.5``, ``1,000`` = ``1000``, sets,
percentages, ...), R1-layout passes and failures, and known reward hacks (an answer only inside
``<think>``, several ``<answer>`` blocks, a list of candidates, an empty or unclosed block, ...). Each is
verified against our real rewards by the project's tests.

This module is also a pytest plugin (registered by the package), so any test in an environment where
r1-recipe is installed can ask for the fixtures ``r1_reference_cases``, ``r1_sample`` and
``r1_completions`` without importing anything.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

CASES_FILE = Path(__file__).with_name("reference_cases.yaml")
GROUPS = ("equivalent", "not_equivalent", "format_pass", "format_fail", "hack")
# What each expected score is: our reward (a config name) with these options.
KINDS: dict[str, tuple[str, dict[str, Any]]] = {
    "correctness": ("correctness", {}),  # answer_format: tags, the R1 <answer> block
    "format": ("format", {}),  # style: r1
    "correctness_auto": ("correctness", {"answer_format": "auto"}),  # the block, else the last box, else number
    "format_think_boxed": ("format", {"style": "think_boxed"}),  # R1-distill / MATH: <think>…</think> … \boxed{}
}
# How an ``answer`` case is laid out: the R1 format, which our format reward scores 1.0.
R1_LAYOUT = "<think>\nI work it out step by step.\n</think>\n<answer>\n{answer}\n</answer>"
REFERENCE_PROMPT = "Solve the problem. Give the final answer inside <answer> </answer>."
_CASE_FIELDS = {"id", "group", "gold", "answer", "completion", "note", *KINDS}


@dataclass(frozen=True)
class ReferenceCase:
    """One completion of one sample and the score each of our rewards gives it.

    ``expected`` maps a reward kind (a key of :data:`KINDS`: ``correctness``, ``format``, ...) to its value,
    ``reasons`` to the reason our reward gives; a kind missing from ``expected`` is not checked on this case.
    """

    id: str
    group: str
    completion: str
    sample: Mapping[str, Any]
    expected: Mapping[str, float]
    reasons: Mapping[str, str] = field(default_factory=dict)
    note: str = ""


def our_reward(kind: str) -> tuple[str, dict[str, Any]]:
    """``(name, options)`` of the reward of ours that a ``kind`` of expected score is, e.g.
    ``("correctness", {"answer_format": "auto"})`` for ``correctness_auto``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    name, options = KINDS[kind]
    return name, dict(options)


@dataclass(frozen=True)
class Disagreement:
    """A reference case on which a reward's score differs from ours. ``got`` is None for "does not apply"."""

    case: ReferenceCase
    kind: str
    expected: float
    got: float | None
    reason: str

    def __str__(self) -> str:
        got = "None (does not apply)" if self.got is None else f"{self.got:g}"
        ours = self.case.reasons.get(self.kind, "")
        line = (f"{self.case.group}/{self.case.id}: expected {self.expected:g}"
                f"{f' ({ours})' if ours else ''}, got {got} ({self.reason})")
        return f"{line} -- {self.case.note}" if self.case.note else line


def case_from_mapping(raw: Mapping[str, Any], where: str = "case") -> ReferenceCase:
    """A :class:`ReferenceCase` from the YAML form (see the header of ``reference_cases.yaml``).

    Raises ``ValueError`` naming the case and the field for a malformed one.
    """
    name = f"{where} {raw.get('id', '?')!r}" if isinstance(raw, Mapping) else where
    if not isinstance(raw, Mapping):
        raise ValueError(f"{name}: a reference case is a mapping, got {type(raw).__name__}")
    unknown = set(raw) - _CASE_FIELDS
    if unknown:
        raise ValueError(f"{name}: unknown field(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(_CASE_FIELDS))}")
    if not isinstance(raw.get("id"), str) or not raw["id"]:
        raise ValueError(f"{name}: 'id' must be a non-empty string")
    if raw.get("group") not in GROUPS:
        raise ValueError(f"{name}: 'group' must be one of {', '.join(GROUPS)}, got {raw.get('group')!r}")
    if ("answer" in raw) == ("completion" in raw):
        raise ValueError(f"{name}: give exactly one of 'answer' (put into the R1 layout) or 'completion'")
    text = raw.get("answer", raw.get("completion"))
    if not isinstance(text, str):
        raise ValueError(f"{name}: 'answer'/'completion' must be a string, got {type(text).__name__}")
    completion = R1_LAYOUT.format(answer=text) if "answer" in raw else text
    expected, reasons = {}, {}
    scored = dict(raw)
    if "answer" in raw:
        scored.setdefault("format", [1.0, "ok"])  # the R1 layout passes our format reward
    for kind in KINDS:
        if kind not in scored:
            continue
        pair = scored[kind]
        if (not isinstance(pair, (list, tuple)) or len(pair) != 2 or isinstance(pair[0], bool)
                or not isinstance(pair[0], (int, float)) or not isinstance(pair[1], str)):
            raise ValueError(f"{name}: '{kind}' must be [value, reason], got {pair!r}")
        expected[kind], reasons[kind] = float(pair[0]), pair[1]
    if not expected:
        raise ValueError(f"{name}: give the expected score of at least one of {', '.join(KINDS)}")
    gold = raw.get("gold")
    sample = {"id": f"reference-{raw['id']}", "task": "math", "prompt": REFERENCE_PROMPT,
              "answer": None if gold is None else str(gold), "data_source": "r1_reference"}
    return ReferenceCase(id=raw["id"], group=raw["group"], completion=completion, sample=sample,
                         expected=expected, reasons=reasons, note=str(raw.get("note", "")))


def load_cases(path: str | Path) -> list[ReferenceCase]:
    """Reference cases from a YAML file in the format of ``reference_cases.yaml`` (your own cases too)."""
    import yaml

    path = Path(path)
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, list):
        raise ValueError(f"{path}: expected a list of reference cases, got {type(raw).__name__}")
    cases = [case_from_mapping(item, where=f"{path.name}: case") for item in raw]
    seen: set[str] = set()
    for case in cases:
        if case.id in seen:
            raise ValueError(f"{path.name}: case id {case.id!r} appears twice")
        seen.add(case.id)
    return cases


@lru_cache(maxsize=1)
def _packaged_cases() -> tuple[ReferenceCase, ...]:
    return tuple(load_cases(CASES_FILE))


def reference_cases(groups: Iterable[str] | None = None, *, kind: str | None = None) -> list[ReferenceCase]:
    """The packaged reference cases, optionally only those of ``groups`` and with an expected ``kind``."""
    wanted = None if groups is None else set([groups] if isinstance(groups, str) else groups)
    if wanted is not None and not wanted <= set(GROUPS):
        raise ValueError(f"unknown group(s) {', '.join(sorted(wanted - set(GROUPS)))}; groups: {', '.join(GROUPS)}")
    return [c for c in _packaged_cases()
            if (wanted is None or c.group in wanted) and (kind is None or kind in c.expected)]


def check_reward(
    fn: Callable | str,
    cases: Sequence[ReferenceCase | Mapping[str, Any]] | None = None,
    *,
    kind: str = "correctness",
    options: Mapping[str, Any] | None = None,
    threshold: float | None = None,
    tolerance: float = 1e-6,
    prefilled_think: bool = False,
) -> list[Disagreement]:
    """Score every case with ``fn`` and return the cases where it disagrees with our ``kind`` reward
    (:data:`KINDS`: ``correctness``, ``format``, ``correctness_auto``, ``format_think_boxed``).

    ``fn`` is any reward the recipe accepts (ours ``(completion, sample, **options)``, TRL's batched
    ``(prompts, completions, **kwargs)``, verl's ``compute_score(data_source, solution_str, ground_truth,
    extra_info=None)``, ``async`` versions) or a config name (``"format"``, ``"my_pkg.mod:fn"``); it runs
    through :func:`rewards.weighted_sum`, exactly as in a run, with ``options``. ``cases`` defaults to every
    reference case with an expected ``kind`` score; mappings in the YAML
    form are accepted. Scores agree within ``tolerance``; with ``threshold`` a reward on another scale
    agrees when it passes (``score >= threshold``) exactly where ours gives 1 (ours score 0 or 1). A reward
    that says "does not apply" (None) on a case disagrees. A reward that fails on every call raises
    :class:`rewards.RewardFailure`, as a run would.
    """
    from rewards import weighted_sum

    our_reward(kind)  # a known kind
    chosen = reference_cases(kind=kind) if cases is None else [
        c if isinstance(c, ReferenceCase) else case_from_mapping(c) for c in cases]
    chosen = [c for c in chosen if kind in c.expected]
    if not chosen:
        raise ValueError(f"no case has an expected {kind!r} score")
    score = weighted_sum([{"name": fn, "options": dict(options or {})}], prefilled_think=prefilled_think)
    label = score.terms[0].label
    results = score.score_batch([c.completion for c in chosen], [dict(c.sample) for c in chosen])
    found = []
    for case, (_, parts) in zip(chosen, results):
        part = parts[label]
        reason = getattr(part, "reason", "ok")
        got = None if reason == "not_applicable" else float(part)
        if not _agrees(case.expected[kind], got, threshold, tolerance):
            found.append(Disagreement(case=case, kind=kind, expected=case.expected[kind], got=got, reason=reason))
    return found


def assert_agrees(fn: Callable | str, cases: Sequence[ReferenceCase | Mapping[str, Any]] | None = None,
                  **kwargs: Any) -> None:
    """:func:`check_reward`, raising ``AssertionError`` that lists every disagreement (one per line)."""
    found = check_reward(fn, cases, **kwargs)
    if found:
        kind = kwargs.get("kind", "correctness")
        name = fn if isinstance(fn, str) else getattr(fn, "__qualname__", repr(fn))
        total = len(cases) if cases is not None else len(reference_cases(kind=kind))
        lines = "\n".join(f"  - {d}" for d in found)
        raise AssertionError(f"{name} disagrees with r1's {kind} reward on {len(found)} of {total} "
                             f"reference cases:\n{lines}")


def _agrees(expected: float, got: float | None, threshold: float | None, tolerance: float) -> bool:
    if got is None:
        return False
    if threshold is not None:
        return (got >= threshold) == (expected >= 0.5)  # ours: 1 passes, 0 does not
    return abs(got - expected) <= tolerance


def sample_and_completions() -> tuple[dict[str, Any], dict[str, str]]:
    """A math sample (gold ``3/4``) and named completions of it: ``correct``, ``equivalent`` (``0.75``),
    ``wrong``, ``boxed_only`` (no answer block), ``truncated``, ``answer_in_think``."""
    sample = {"id": "r1-sample-0", "task": "math", "prompt": "What is 3/8 + 3/8? Simplify.", "answer": "3/4",
              "data_source": "r1_reference"}
    think = "3/8 + 3/8 = 6/8, and 6/8 reduces to 3/4."
    completions = {
        "correct": f"<think>\n{think}\n</think>\n<answer>\n3/4\n</answer>",
        "equivalent": f"<think>\n{think}\n</think>\n<answer>\n0.75\n</answer>",
        "wrong": "<think>\n3/8 + 3/8 = 6/16 = 3/8.\n</think>\n<answer>\n3/8\n</answer>",
        "boxed_only": f"<think>\n{think}\n</think>\nThe answer is \\boxed{{\\frac{{3}}{{4}}}}.",
        "truncated": f"<think>\n{think[:20]}",
        "answer_in_think": f"<think>\n{think} The answer is 3/4.\n</think>",
    }
    return sample, completions


try:  # the pytest plugin: fixtures for any test, without an import (registered under pytest11)
    import pytest
except ImportError:  # a user's script may import the kit without pytest
    pytest = None

if pytest is not None:

    @pytest.fixture
    def r1_reference_cases() -> list[ReferenceCase]:
        """Every packaged reference case (see :func:`reference_cases`)."""
        return reference_cases()

    @pytest.fixture
    def r1_sample() -> dict[str, Any]:
        """A math sample in the recipe's schema: ``id``, ``task``, ``prompt``, ``answer`` (``3/4``)."""
        return sample_and_completions()[0]

    @pytest.fixture
    def r1_completions() -> dict[str, str]:
        """Named completions of :func:`r1_sample`: correct, equivalent, wrong, boxed_only, truncated, ..."""
        return sample_and_completions()[1]
