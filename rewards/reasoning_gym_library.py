"""The reasoning-gym library (the optional extra ``gym``): its generators by name, their configs, their scorers.

reasoning-gym (PyPI ``reasoning-gym``) holds 100+ procedural generators ("datasets"), each a config
dataclass, an item generator and its own ``score_answer(answer, entry) -> float``. This module is the one
place that imports it, lazily: importing this module costs nothing when the extra is not installed, and
every entry point says in one line how to install it. ``tasks/reasoning_gym_source.py`` generates samples
with it; ``rewards/reasoning_gym_reward.py`` scores completions with it.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import json
from collections.abc import Mapping
from typing import Any

INSTALL_HINT = "pip install 'r1-recipe[gym]' (reasoning-gym>=0.1.25)"
# Config keys the recipe sets itself: the seed comes from run.seed, the size from n_train / n_test.
RECIPE_KEYS = ("seed", "size")
# Generators whose score_answer evaluates the answer text as Python (eval or sympy's parse_expr), read in
# reasoning-gym 0.1.25. The helper process that scores them bounds time and memory; it is not a sandbox.
EVALUATES_ANSWER = frozenset({
    "binary_matrix", "countdown", "intermediate_integration", "n_queens", "polynomial_multiplication",
    "puzzle24", "simple_integration", "spiral_matrix", "string_insertion",
})


class LibraryMissing(ValueError):
    """reasoning-gym is not installed here."""


def datasets() -> Mapping[str, tuple[type, type]]:
    """reasoning-gym's registry ``{name: (dataset class, config class)}``; :class:`LibraryMissing` (one line,
    how to install it) when the extra is not installed."""
    try:
        from reasoning_gym.factory import DATASETS
    except ImportError as exc:
        raise LibraryMissing(f"source reasoning_gym needs the optional extra: {INSTALL_HINT} ({exc})") from None
    return DATASETS


def generator_names() -> list[str]:
    """The generator names reasoning-gym offers, sorted."""
    return sorted(datasets())


def check_generator(name: str, config: Mapping[str, Any] | None = None) -> None:
    """Raise ``ValueError`` in one line unless ``name`` is a generator and ``config`` fits its config class.

    Says which names are close to an unknown one, which keys a config does not have (and which it has),
    and refuses the keys the recipe sets (``seed``, ``size``). Values are checked by the library's own
    ``validate()``.
    """
    registry = datasets()
    if name not in registry:
        close = difflib.get_close_matches(name, list(registry), n=4, cutoff=0.5)
        hint = f"close names: {', '.join(close)}" if close else f"{len(registry)} generators, e.g. " + \
            ", ".join(sorted(registry)[:4])
        raise ValueError(f"unknown reasoning_gym generator {name!r}; {hint}")
    config = dict(config or {})
    taken = [key for key in RECIPE_KEYS if key in config]
    if taken:
        raise ValueError(f"reasoning_gym {name}: config keys {taken} are set by the recipe "
                         "(seed: run.seed; size: n_train / n_test)")
    fields = [f.name for f in dataclasses.fields(registry[name][1]) if f.name not in RECIPE_KEYS]
    unknown = sorted(set(config) - set(fields))
    if unknown:
        raise ValueError(f"reasoning_gym {name}: unknown config keys {unknown}; its keys: {', '.join(fields)}")
    make_dataset(name, config, seed=0, size=1)  # the library's own checks of the values


def make_dataset(name: str, config: Mapping[str, Any], *, seed: int, size: int):
    """The library's dataset object for ``name`` with ``config`` plus the recipe's ``seed`` and ``size``.

    Bad values raise ``ValueError`` naming the generator, the config and the library's complaint."""
    dataset_cls, config_cls = datasets()[name]
    try:
        return dataset_cls(config=config_cls(**dict(config), seed=seed, size=size))
    except (AssertionError, TypeError, ValueError, KeyError) as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"reasoning_gym {name}: config {dict(config)!r} refused: {detail}") from None


def score_answer(name: str, config: Mapping[str, Any], answer: str | None, entry: Mapping[str, Any]) -> float:
    """The generator's own ``score_answer(answer, entry)`` (usually in [0, 1]); raises what it raises.

    The dataset object is built once per (generator, config) in each process: scorers may read their
    config, never the seed or size."""
    return float(_scorer(name, canonical_json(config)).score_answer(answer, dict(entry)))


@functools.lru_cache(maxsize=64)
def _scorer(name: str, config_json: str):
    if name not in datasets():
        raise UnknownDataset(name)
    return make_dataset(name, json.loads(config_json), seed=0, size=1)


class UnknownDataset(KeyError):
    """A sample names a generator this reasoning-gym does not have (another version made the data)."""


def canonical_json(value: Any) -> str:
    """``value`` as JSON with sorted keys: one text per config, for caches and comparisons."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
