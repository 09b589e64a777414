"""The seeded drawing engine every generator shares: random streams, train/test membership, unique draws.

A task module only knows how to make *one* problem from a ``random.Random`` (a "problem maker"); this
module turns that into ``n`` distinct, id-numbered samples that are the same for the same seed.

Train/test membership is a property of the prompt text itself (a stable hash puts about
``TEST_FRACTION`` of all possible prompts in ``test``), not of the order things were drawn in. That is
what keeps ``build(mix, seed=s, split="train")`` and ``build(other_mix, seed=s, split="test")`` disjoint
whatever their sizes, and across difficulties and seeds too.
"""
from __future__ import annotations

import hashlib
import random
from typing import Any, Callable, Iterable

ProblemMaker = Callable[[random.Random, int], dict[str, Any]]

SPLITS = ("train", "test")
TEST_FRACTION = 0.2
# How many draws per wanted sample before concluding the problem space is exhausted (small spaces such as
# single-digit sums at difficulty 1 can run out; failing loudly beats looping forever).
_DRAWS_PER_SAMPLE = 60
_MIN_DRAWS = 2_000
# Fields put first, in this order, so JSONL rows read the same for every task.
_LEADING_FIELDS = ("id", "task", "difficulty", "prompt", "answer", "verifier", "solution")


def task_rng(task: str, *, seed: int, difficulty: int, stream: str) -> random.Random:
    """An independent, reproducible random stream for one (task, seed, difficulty, stream).

    Seeding ``random.Random`` with a string hashes it with SHA-512, so the stream does not depend on
    ``PYTHONHASHSEED`` or the process.
    """
    return random.Random(f"r1-recipe/{task}/seed={seed}/difficulty={difficulty}/{stream}")


def prompt_key(prompt: str) -> str:
    """The text two prompts are compared by: case- and whitespace-insensitive."""
    return " ".join(prompt.split()).casefold()


def split_of(prompt: str) -> str:
    """``"test"`` or ``"train"``: a fixed, seed-independent assignment of every possible prompt."""
    digest = hashlib.sha256(prompt_key(prompt).encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") / 2**64
    return "test" if bucket < TEST_FRACTION else "train"


def sample_id(task: str, index: int, split: str | None = None) -> str:
    """``arithmetic-test-000017`` (or ``arithmetic-000017`` without a split)."""
    return f"{task}-{split}-{index:06d}" if split else f"{task}-{index:06d}"


def check_difficulty(task: str, difficulty: int, levels: Iterable[int]) -> int:
    """Return ``difficulty`` if it is one of ``levels``; else a ``ValueError`` listing the valid ones."""
    levels = list(levels)
    if isinstance(difficulty, bool) or not isinstance(difficulty, int) or difficulty not in levels:
        raise ValueError(f"{task}: difficulty must be one of {levels}, got {difficulty!r}")
    return difficulty


def draw_samples(
    task: str,
    make_problem: ProblemMaker,
    n: int,
    *,
    seed: int,
    difficulty: int,
    split: str | None = None,
    exclude: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """Draw ``n`` samples with distinct prompts from ``make_problem``, numbered and tagged per the schema.

    ``split`` keeps only prompts that belong to that split (see :func:`split_of`) and puts it in the ids;
    ``exclude`` lists prompts to skip (e.g. ones another mix entry already holds).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{task}: n must be a non-negative int, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"{task}: seed must be an int, got {seed!r}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"{task}: split must be one of {SPLITS} or None, got {split!r}")
    rng = task_rng(task, seed=seed, difficulty=difficulty, stream=split or "all")
    seen = {prompt_key(p) for p in exclude}
    samples: list[dict[str, Any]] = []
    max_draws = max(_MIN_DRAWS, _DRAWS_PER_SAMPLE * n)
    for _ in range(max_draws):
        if len(samples) == n:
            break
        problem = make_problem(rng, difficulty)
        key = prompt_key(problem["prompt"])
        if key in seen or (split is not None and split_of(problem["prompt"]) != split):
            continue
        seen.add(key)
        identity = sample_id(task, len(samples), split)
        samples.append(_as_sample(problem, task=task, difficulty=difficulty, sample_id=identity))
    if len(samples) < n:
        where = f" {split}" if split else ""
        raise ValueError(
            f"{task}: only {len(samples)} distinct{where} problems found at difficulty {difficulty} after "
            f"{max_draws} draws, {n} asked; ask for fewer or use a higher difficulty"
        )
    return samples


def _as_sample(problem: dict[str, Any], *, task: str, difficulty: int, sample_id: str) -> dict[str, Any]:
    fields = {"id": sample_id, "task": task, "difficulty": difficulty, **problem}
    ordered = {name: fields[name] for name in _LEADING_FIELDS if name in fields}
    ordered.update((name, value) for name, value in fields.items() if name not in ordered)
    return ordered
