"""Correctness: the outcome reward for any task, dispatched on the sample's ``verifier`` field."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from rewards.accuracy import accuracy_reward
from rewards.base import Reward, reason_of
from rewards.countdown import countdown_reward
from rewards.instruction import instruction_reward

# Names a sample may not name as its verifier: they do not decide correctness (and "correctness"
# itself would recurse).
_NOT_VERIFIERS = frozenset({"correctness", "format", "language_consistency", "overlong"})

VerifierLookup = Callable[[str], Callable[..., float] | None]
"""``name -> reward function or None``: how a verifier name that is not built in is found."""


def _no_lookup(name: str) -> None:
    return None


# Handed in by :mod:`rewards.registry` when it loads (it imports this module, not the other way round), so
# registered rewards, users' included, are found as verifiers. Importing any ``rewards`` module loads the
# package, hence the registry, so this is always the registry's lookup by the time a sample is scored.
_lookup: VerifierLookup = _no_lookup


def set_verifier_lookup(lookup: VerifierLookup) -> None:
    """Make ``lookup(name)`` the way :func:`correctness_reward` finds verifiers that are not built in."""
    global _lookup
    _lookup = lookup


def correctness_reward(completion: str, sample: Mapping[str, Any], *, timeout_s: float = 5.0) -> Reward:
    """1.0 iff the completion is correct by the reward named in ``sample.get("verifier", "accuracy")``.

    ``accuracy`` (math, with ``timeout_s``), ``countdown`` and ``instruction`` (correct = every constraint
    satisfied) are built in; any other name is looked up among registered rewards (e.g. ``code``:
    :func:`rewards.code.code_reward`, the sample's ``tests`` run in the sandbox, pass fraction) and
    called without options. Sample data never names a module to import. Unknown names
    give 0.0 with reason ``unknown_verifier:<name>``; otherwise the verifier's own reason is kept.
    """
    name = sample.get("verifier") or "accuracy"
    if name == "accuracy":
        return accuracy_reward(completion, sample, timeout_s=timeout_s)
    if name == "countdown":
        return countdown_reward(completion, sample)
    if name == "instruction":
        return instruction_reward(completion, sample, all_or_nothing=True)
    verifier = _lookup(name) if isinstance(name, str) and name not in _NOT_VERIFIERS else None
    if verifier is None:
        return Reward(0.0, f"unknown_verifier:{name}")
    value = verifier(completion, sample)
    return value if isinstance(value, Reward) else Reward(float(value), reason_of(value))
