"""Train / held-out test splits of one task with no prompt in both."""
from __future__ import annotations

from typing import Any, NamedTuple

from .registry import get_generator
from .sampling import prompt_key


class Splits(NamedTuple):
    train: list[dict[str, Any]]
    test: list[dict[str, Any]]


def make_splits(
    task: str, n_train: int, n_test: int, *, seed: int, difficulty: int | None = None,
    source: str = "builtin", config: dict[str, Any] | None = None, scorer: str | None = None,
) -> Splits:
    """``(train, test)`` for ``task``: deterministic for a seed, ids like ``arithmetic-test-000017``.

    The two never share a prompt: membership is decided per prompt text (see
    :func:`tasks.sampling.split_of`), so the test set also stays the same whatever ``n_train`` is, and
    test sets built elsewhere with :func:`tasks.build` (``split="test"``) hold the same problems.

    ``source="reasoning_gym"``: ``task`` names a reasoning-gym generator, ``config`` its settings and
    ``scorer`` how it is scored (:func:`tasks.reasoning_gym_source.reasoning_gym_splits`; no difficulty).
    """
    if source == "reasoning_gym":
        from .reasoning_gym_source import reasoning_gym_splits

        return Splits(*reasoning_gym_splits(task, n_train, n_test, seed=seed, config=config, scorer=scorer))
    if source != "builtin":
        raise ValueError(f"{task}: source must be 'builtin' or 'reasoning_gym', got {source!r}")
    if config or scorer:
        raise ValueError(f"{task}: config and scorer are for source='reasoning_gym' tasks")
    generate = get_generator(task)
    options = {} if difficulty is None else {"difficulty": difficulty}
    test = generate(n_test, seed=seed, split="test", **options)
    train = generate(n_train, seed=seed, split="train", exclude=[s["prompt"] for s in test], **options)
    # The hash split already guarantees this; the check guards user-registered generators too.
    overlap = {prompt_key(s["prompt"]) for s in train} & {prompt_key(s["prompt"]) for s in test}
    if overlap:
        raise AssertionError(f"{task}: {len(overlap)} prompts in both train and test, e.g. {sorted(overlap)[0]!r}")
    return Splits(train=train, test=test)
