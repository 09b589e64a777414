"""Mixed datasets: several tasks, counts and difficulties in one deterministic list."""
from __future__ import annotations

import random
from collections import Counter
from typing import Any, Mapping, Sequence

from .registry import get_generator
from .sampling import SPLITS, sample_id


def normalize_mix(mix: Mapping[str, Any] | Sequence[Any]) -> list[dict[str, Any]]:
    """The mix as a list of ``{"task", "n", "difficulty"}`` entries (difficulty may be None).

    Accepted forms (YAML-friendly):
    ``{"arithmetic": 100}``, ``{"arithmetic": {"n": 100, "difficulty": 1}}``,
    ``[{"task": "arithmetic", "n": 100, "difficulty": 1}, ...]`` and ``[("arithmetic", 100), ...]``.
    """
    if isinstance(mix, Mapping):
        raw = [(task, spec) for task, spec in mix.items()]
    elif isinstance(mix, Sequence) and not isinstance(mix, str):
        raw = []
        for item in mix:
            if isinstance(item, Mapping) and "task" in item:
                raw.append((item["task"], {k: v for k, v in item.items() if k != "task"}))
            elif isinstance(item, Sequence) and not isinstance(item, str) and len(item) == 2:
                raw.append((item[0], item[1]))
            else:
                raise ValueError(f"mix entry {item!r}: expected {{'task': ..., 'n': ...}} or (task, n)")
    else:
        raise ValueError(f"mix must be a dict or a list, got {type(mix).__name__}")
    entries = []
    for task, spec in raw:
        spec = {"n": spec} if isinstance(spec, int) and not isinstance(spec, bool) else spec
        if not isinstance(spec, Mapping) or "n" not in spec:
            raise ValueError(
                f"mix entry for {task!r}: expected a count or {{'n': ..., 'difficulty': ...}}, got {spec!r}"
            )
        unknown = set(spec) - {"n", "difficulty"}
        if unknown:
            raise ValueError(f"mix entry for {task!r}: unknown keys {sorted(unknown)}; use 'n' and 'difficulty'")
        get_generator(task)  # fail early on a typo in a task name
        entries.append({"task": task, "n": spec["n"], "difficulty": spec.get("difficulty")})
    return entries


def build(
    mix: Mapping[str, Any] | Sequence[Any],
    *,
    seed: int,
    split: str = "train",
    difficulty: int | None = None,
    shuffle: bool = True,
) -> list[dict[str, Any]]:
    """A mixed dataset for ``split`` (``"train"`` or ``"test"``) from ``mix`` (see :func:`normalize_mix`).

    ``difficulty`` is the default for entries without one. Train and test sets built with any mixes never
    share a prompt; two entries of one task (e.g. two difficulties) never repeat a prompt either. Ids are
    ``{task}-{split}-{index}`` numbered per task; the result is shuffled with the seed unless told not to.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    samples: list[dict[str, Any]] = []
    taken: dict[str, list[str]] = {}
    counters: Counter[str] = Counter()
    for entry in normalize_mix(mix):
        task, level = entry["task"], entry["difficulty"] if entry["difficulty"] is not None else difficulty
        options = {} if level is None else {"difficulty": level}
        drawn = get_generator(task)(entry["n"], seed=seed, split=split, exclude=taken.get(task, ()), **options)
        for sample in drawn:
            sample["id"] = sample_id(task, counters[task], split)
            counters[task] += 1
        taken.setdefault(task, []).extend(s["prompt"] for s in drawn)
        samples.extend(drawn)
    if shuffle:
        random.Random(f"r1-recipe/build/seed={seed}/{split}").shuffle(samples)
    return samples
