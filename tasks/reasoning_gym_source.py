"""Tasks from reasoning-gym (the optional extra ``gym``): its generators as train / test splits of samples.

In a recipe::

    data:
      tasks:
        - {source: reasoning_gym, name: chain_sum, n_train: 500, n_test: 50, config: {max_terms: 4}}
        - {source: reasoning_gym, name: leg_counting, n_train: 500, n_test: 50, scorer: math_verify}

Each sample follows tasks/schema.md: ``task`` is the generator's name, ``prompt`` its question,
``answer`` its answer as text, and ``reasoning_gym`` carries what its scorer needs (generator, config,
answer, metadata) as plain JSON. ``verifier`` is ``reasoning_gym`` (the generator's own ``score_answer``,
:func:`rewards.reasoning_gym_reward.reasoning_gym_reward`) or, with ``scorer: math_verify`` for
generators with numeric answers, ``accuracy`` (math-verify against ``answer``). ``solution`` states the
answer in one line (the library gives answers, not worked steps): cold-start demonstrations from these
samples teach the R1 layout and the answer's form, not reasoning.

Splits work as for the built-in tasks (:func:`tasks.sampling.split_of`): whether a prompt is train or test
is a fixed function of its text, so the two never share a prompt and the test set does not depend on
``n_train``. The library's items are drawn in index order from one dataset seeded by the recipe's seed.
"""
from __future__ import annotations

import enum
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

from rewards.reasoning_gym_library import (
    EVALUATES_ANSWER,
    check_generator,
    make_dataset,
    score_answer,
)

from .sampling import SPLITS, prompt_key, sample_id, split_of

logger = logging.getLogger(__name__)

FIELD_NAME = "reasoning_gym"  # the sample field rewards.reasoning_gym_reward reads
SCORERS = ("reasoning_gym", "math_verify")
VERIFIER = {"reasoning_gym": "reasoning_gym", "math_verify": "accuracy"}
# As tasks.sampling.draw_samples: draws per wanted sample before the problem space counts as exhausted.
_DRAWS_PER_SAMPLE = 60
_MIN_DRAWS = 2_000
# numpy seeds must be < 2**32, and the library adds the item index to the seed.
_SEED_MODULUS = 2**31
_PEEK = 8  # items looked at when a recipe loads, to refuse math_verify for non-numeric answers early
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?(?:/\d+)?$")


def check_task(name: str, config: Mapping[str, Any] | None = None, scorer: str | None = None) -> None:
    """Raise ``ValueError`` in one line unless ``name``/``config``/``scorer`` describe a usable task
    (called when a recipe loads, so a typo fails before anything runs)."""
    if scorer is not None and scorer not in SCORERS:
        raise ValueError(f"reasoning_gym {name}: scorer={scorer!r}: expected one of {', '.join(SCORERS)}")
    if config is not None and not isinstance(config, Mapping):
        raise ValueError(f"reasoning_gym {name}: config must be a mapping of the generator's keys, got {config!r}")
    check_generator(name, config)
    if scorer == "math_verify":  # a look at a few items: math-verify can only compare numbers here
        dataset = make_dataset(name, dict(config or {}), seed=0, size=_PEEK)
        for index in range(_PEEK):
            answer = dataset[index].get("answer")
            if answer is None or not _NUMBER.match(str(answer).strip()):
                raise ValueError(f"reasoning_gym {name}: scorer math_verify needs numeric answers; item {index} "
                                 f"has {str(answer)[:60]!r} (use scorer: reasoning_gym)")


def reasoning_gym_splits(
    name: str, n_train: int, n_test: int, *, seed: int, config: Mapping[str, Any] | None = None,
    scorer: str | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(train, test)`` of generator ``name``: deterministic for a seed, disjoint by prompt, ids like
    ``chain_sum-test-000007``; see the module docstring for the fields."""
    check_task(name, config, scorer)
    if name in EVALUATES_ANSWER and (scorer or "reasoning_gym") == "reasoning_gym":
        logger.warning("reasoning_gym %s: its scorer evaluates answer text as Python; the helper process that "
                       "runs it bounds time and memory, it is not a sandbox", name)
    test = generate_reasoning_gym(name, n_test, seed=seed, split="test", config=config, scorer=scorer)
    train = generate_reasoning_gym(name, n_train, seed=seed, split="train", config=config, scorer=scorer,
                                   exclude=[s["prompt"] for s in test])
    return train, test


def generate_reasoning_gym(
    name: str, n: int, *, seed: int, split: str | None = None, config: Mapping[str, Any] | None = None,
    scorer: str | None = None, exclude: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """``n`` samples of generator ``name`` with distinct prompts (of ``split`` only, when given), none of
    them in ``exclude``. Raises ``ValueError`` in one line when the generator runs out of distinct
    prompts, fails, or makes entries its own scorer cannot score after a trip through JSON."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"reasoning_gym {name}: n must be a non-negative int, got {n!r}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"reasoning_gym {name}: split must be one of {SPLITS} or None, got {split!r}")
    scorer = scorer or "reasoning_gym"
    config = dict(config or {})
    max_draws = max(_MIN_DRAWS, _DRAWS_PER_SAMPLE * n)
    dataset = make_dataset(name, config, seed=library_seed(name, seed), size=max_draws)
    seen = {prompt_key(p) for p in exclude}
    samples: list[dict[str, Any]] = []
    for index in range(max_draws if n else 0):
        if len(samples) == n:
            break
        try:
            entry = dataset[index]
        except Exception as exc:
            raise ValueError(f"reasoning_gym {name}: item {index} failed: {type(exc).__name__}: {exc}"
                             .splitlines()[0]) from None
        prompt = str(entry["question"])
        key = prompt_key(prompt)
        if key in seen or (split is not None and split_of(prompt) != split):
            continue
        seen.add(key)
        samples.append(_as_sample(name, config, scorer, entry, sample_id(name, len(samples), split)))
    if len(samples) < n:
        where = f" {split}" if split else ""
        raise ValueError(f"reasoning_gym {name}: only {len(samples)} distinct{where} problems in {max_draws} "
                         f"items, {n} asked; ask for fewer or widen its config")
    return samples


def library_seed(name: str, seed: int) -> int:
    """The seed handed to the library, hashed from ours: its item ``i`` is seeded ``seed + i``, so seeds 7 and
    8 used as they are would give the same items shifted by one."""
    digest = hashlib.sha256(f"r1-recipe/reasoning_gym/{name}/seed={seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % _SEED_MODULUS


def _as_sample(name: str, config: dict, scorer: str, entry: Mapping[str, Any], identity: str) -> dict[str, Any]:
    """One sample per tasks/schema.md from a library entry; checks the entry survives JSON for its scorer."""
    answer = entry.get("answer")
    try:
        payload = {"dataset": name, "config": config, "answer": jsonable(answer),
                   "metadata": jsonable(entry.get("metadata") or {})}
    except TypeError as exc:
        raise ValueError(f"reasoning_gym {name}: {identity}: {exc}") from None
    payload = json.loads(json.dumps(payload))  # exactly what a JSONL row will give the reward
    sample: dict[str, Any] = {"id": identity, "task": name, "prompt": str(entry["question"])}
    if answer is not None:
        _check_round_trip(name, config, entry, payload, identity)
        text = str(answer)
        if scorer == "math_verify" and not _NUMBER.match(text.strip()):
            raise ValueError(f"reasoning_gym {name}: scorer math_verify needs numeric answers; {identity} has "
                             f"{text[:60]!r} (use scorer: reasoning_gym)")
        sample["answer"] = text
    elif scorer == "math_verify":
        raise ValueError(f"reasoning_gym {name}: scorer math_verify needs answers; {identity} has none")
    sample["verifier"] = VERIFIER[scorer]
    if answer is not None:
        sample["solution"] = _solution(payload["metadata"], str(answer))
    sample[FIELD_NAME] = payload
    return sample


def _check_round_trip(name: str, config: dict, entry: Mapping[str, Any], payload: dict, identity: str) -> None:
    """The scorer must rate the library's own answer the same from the JSON copy as from the original:
    else rows read back from JSONL would be scored wrongly, silently."""
    rebuilt = {"question": entry["question"], "answer": payload["answer"], "metadata": payload["metadata"]}
    said = str(entry["answer"])  # what a model would write: text
    before, after = score_answer(name, config, said, entry), score_answer(name, config, said, rebuilt)
    if after != before:
        raise ValueError(f"reasoning_gym {name}: {identity} does not survive JSON: its scorer gives its own "
                         f"answer {before:g} before and {after:g} after (this generator cannot be used here)")


def _solution(metadata: Mapping[str, Any], answer: str) -> str:
    """One line for the think block: ``expression = answer`` where the generator records the expression
    of a numeric answer, else a plain statement of the answer."""
    expression = metadata.get("expression")
    if isinstance(expression, str) and _NUMBER.match(answer.strip()) and expression.strip() != answer.strip():
        return f"{expression.strip()} = {answer.strip()}"
    return f"The answer is {answer.strip()}."


def jsonable(value: Any) -> Any:
    """``value`` in plain JSON types: tuples and sets become lists, enums their values, numpy values
    Python ones; anything else is refused (``TypeError``) rather than silently turned into text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((jsonable(v) for v in value), key=repr)
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return jsonable(value.tolist())
    raise TypeError(f"cannot store a {type(value).__name__} as JSON: {value!r:.60}")


__all__ = ["EVALUATES_ANSWER", "SCORERS", "check_task", "generate_reasoning_gym", "jsonable",
           "reasoning_gym_splits"]
