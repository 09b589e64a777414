"""Reward names -> functions, users' own rewards, and the weighted sum that a run optimises.

Configs name rewards (``format``, ``accuracy``, ...) or point at a user's function
(``"my_pkg.my_rewards:brevity"``); :func:`weighted_sum` turns a list of them into one scoring function.
"""
from __future__ import annotations

import importlib
import inspect
import logging
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Union

from rewards.accuracy import accuracy_reward
from rewards.base import Reward, reason_of
from rewards.code import code_reward
from rewards.countdown import countdown_reward
from rewards.format import format_reward
from rewards.instruction import instruction_reward
from rewards.language import language_consistency_reward
from rewards.length import overlong_penalty

logger = logging.getLogger(__name__)

RewardFn = Callable[..., float]
"""``(completion: str, sample: Mapping, **options) -> float``"""

# Names a sample may not name as its verifier: they do not decide correctness (and "correctness"
# itself would recurse).
_NOT_VERIFIERS = frozenset({"correctness", "format", "language_consistency", "overlong"})


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
    verifier = registered(name) if isinstance(name, str) and name not in _NOT_VERIFIERS else None
    if verifier is None:
        return Reward(0.0, f"unknown_verifier:{name}")
    value = verifier(completion, sample)
    return value if isinstance(value, Reward) else Reward(float(value), reason_of(value))


_REGISTRY: dict[str, RewardFn] = {
    "format": format_reward,
    "accuracy": accuracy_reward,
    "countdown": countdown_reward,
    "instruction": instruction_reward,
    "language_consistency": language_consistency_reward,
    "overlong": overlong_penalty,
    "correctness": correctness_reward,
    "code": code_reward,
}


def reward_model_score(completion: str, sample: Mapping[str, Any], *, model: str | None = None,
                       scale: float = 1.0, offset: float = 0.0, squash: bool = True,
                       system_prompt: str | None = None, precision: str = "fp32") -> Reward:
    """A trained reward model's score of the completion (see :func:`rewards.learned_reward.reward_model_reward`).

    ``model`` is the reward model's HF dir; `r1 general-rl` fills it with the reward_model stage's output.
    Loaded once per process on first use, so the torch import happens only where this reward is scored.
    """
    if not model:
        return Reward(0.0, "no_reward_model")
    from rewards.learned_reward import reward_model_reward

    return reward_model_reward(completion, sample, model=model, scale=scale, offset=offset, squash=squash,
                               system_prompt=system_prompt, precision=precision)


_REGISTRY["reward_model"] = reward_model_score


def register(name: str, *, override: bool = False) -> Callable[[RewardFn], RewardFn]:
    """Decorator that makes a reward function available by ``name`` in configs and :func:`resolve`.

    >>> @register("brevity")                                    # doctest: +SKIP
    ... def brevity(completion, sample): return 1.0 if len(completion) < 500 else 0.0

    Registering a taken name raises ``ValueError`` unless ``override=True``.
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"reward name must be a non-empty string without ':', got {name!r}")

    def decorator(fn: RewardFn) -> RewardFn:
        if not callable(fn):
            raise ValueError(f"register({name!r}): {fn!r} is not callable")
        if name in _REGISTRY and _REGISTRY[name] is not fn and not override:
            raise ValueError(f"reward {name!r} is already registered; pass override=True to replace it")
        _REGISTRY[name] = fn
        return fn

    return decorator


def registered(name: str) -> RewardFn | None:
    """The function registered under ``name``, or None."""
    return _REGISTRY.get(name)


def known_rewards() -> list[str]:
    """Registered reward names, sorted."""
    return sorted(_REGISTRY)


def resolve(name_or_path: str | RewardFn) -> RewardFn:
    """A reward function from a registered name, a ``"package.module:function"`` path, or a callable.

    Raises ``ValueError`` with one line naming the problem: an unknown name (listing the known ones), a
    module that fails to import (with the import error), a missing attribute, a non-callable.
    """
    if callable(name_or_path):
        return name_or_path
    if not isinstance(name_or_path, str):
        raise ValueError(f"a reward is a name, 'package.module:function' or a callable, got {name_or_path!r}")
    if name_or_path in _REGISTRY:
        return _REGISTRY[name_or_path]
    if ":" not in name_or_path:
        raise ValueError(
            f"unknown reward {name_or_path!r}; known rewards: {', '.join(known_rewards())} "
            "(or give a user function as 'package.module:function')"
        )
    module_name, _, attr_path = name_or_path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the module raised while importing
        raise ValueError(
            f"cannot import reward {name_or_path!r}: {type(exc).__name__}: {exc}".replace("\n", " ")
        ) from exc
    for attr in attr_path.split("."):
        if not hasattr(target, attr):
            raise ValueError(f"cannot resolve reward {name_or_path!r}: no attribute {attr!r} in {target!r}")
        target = getattr(target, attr)
    if not callable(target):
        raise ValueError(f"reward {name_or_path!r} is not callable: {target!r}")
    return target


@dataclass(frozen=True)
class RewardSpec:
    """One term of a weighted reward sum: which reward, its weight, its keyword options.

    ``label`` names the term in the parts dict (default: the name, or the function's name). ``tasks``
    limits the term to samples whose ``task`` is listed (others get 0 with reason ``not_applicable``), e.g.
    a reward model that scores only general prompts while rule rewards score the reasoning ones.
    """

    name: str | RewardFn
    weight: float = 1.0
    options: Mapping[str, Any] = field(default_factory=dict)
    label: str | None = None
    tasks: tuple[str, ...] | None = None


SpecLike = Union[RewardSpec, str, RewardFn, tuple, list, Mapping[str, Any]]


def weighted_sum(specs: Iterable[SpecLike]) -> "WeightedSum":
    """A scoring function ``score(completion, sample) -> (total, parts)`` for a list of rewards.

    Each spec is a :class:`RewardSpec`, a ``(name_or_fn, weight, options)`` tuple (weight and options
    optional), a ``{"name", "weight", "options", "label"}`` mapping (as in YAML configs), or a bare name
    or function (a mapping may also give ``tasks``). Names and options are checked here, so a typo fails
    at start-up, not mid-run.

    While scoring, a reward that raises contributes 0 with reason ``error:<ExceptionType>`` (logged once
    per reward and exception type) and one that returns something non-numeric or non-finite contributes 0
    with reason ``invalid_value``: a long run survives a user's buggy reward, and the metrics show it.
    """
    return WeightedSum([_as_spec(s) for s in specs])


class WeightedSum:
    """See :func:`weighted_sum`. Picklable when its reward functions are (module-level functions are)."""

    def __init__(self, specs: list[RewardSpec]) -> None:
        if not specs:
            raise ValueError("weighted_sum needs at least one reward")
        self.terms: list[tuple[str, RewardFn, float, dict[str, Any]]] = []
        self.tasks: dict[str, frozenset[str]] = {}  # label -> the tasks a restricted term scores
        labels: set[str] = set()
        for spec in specs:
            fn = resolve(spec.name)
            label = spec.label or (spec.name if isinstance(spec.name, str) else _name_of(fn))
            base, n = label, 2
            while label in labels:  # the same reward twice (different options) keeps both parts
                label, n = f"{base}#{n}", n + 1
            labels.add(label)
            weight = spec.weight
            if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
                raise ValueError(f"reward {label!r}: weight must be a finite number, got {weight!r}")
            options = dict(spec.options or {})
            _check_options(label, fn, options)
            self.terms.append((label, fn, float(weight), options))
            if spec.tasks is not None:
                if isinstance(spec.tasks, str) or not all(isinstance(t, str) for t in spec.tasks):
                    raise ValueError(f"reward {label!r}: tasks must be a list of task names, got {spec.tasks!r}")
                self.tasks[label] = frozenset(spec.tasks)
        self._logged: set[tuple[str, str]] = set()

    def __call__(self, completion: str, sample: Mapping[str, Any]) -> tuple[float, dict[str, Reward]]:
        total, parts = 0.0, {}
        for label, fn, weight, options in self.terms:
            scope = self.tasks.get(label)
            if scope is not None and sample.get("task") not in scope:
                parts[label] = Reward(0.0, "not_applicable")
                continue
            part = self._score_one(label, fn, options, completion, sample)
            parts[label] = part
            total += weight * part
        return total, parts

    def _score_one(self, label, fn, options, completion, sample) -> Reward:
        try:
            value = fn(completion, sample, **options)
        except Exception as exc:
            kind = type(exc).__name__
            if (label, kind) not in self._logged:
                self._logged.add((label, kind))
                logger.exception("reward %r raised %s; scoring it 0 (logged once)", label, kind)
            return Reward(0.0, f"error:{kind}")
        if not isinstance(value, numbers.Real) or not math.isfinite(value):
            return Reward(0.0, "invalid_value")
        return value if isinstance(value, Reward) else Reward(float(value), reason_of(value))

    def __repr__(self) -> str:
        terms = ", ".join(f"{w:g}*{label}" for label, _, w, _ in self.terms)
        return f"WeightedSum({terms})"


def _as_spec(spec: SpecLike) -> RewardSpec:
    if isinstance(spec, RewardSpec):
        return spec
    if isinstance(spec, str) or callable(spec):
        return RewardSpec(spec)
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"name", "weight", "options", "label", "tasks"}
        if "name" not in spec or unknown:
            raise ValueError(
                "a reward spec mapping needs 'name' (and optionally weight, options, label), "
                f"got {dict(spec)!r}"
            )
        spec = dict(spec)
        if spec.get("tasks") is not None and not isinstance(spec["tasks"], str):
            spec["tasks"] = tuple(spec["tasks"])
        return RewardSpec(**spec)
    if isinstance(spec, (tuple, list)) and 1 <= len(spec) <= 3:
        return RewardSpec(*spec)
    raise ValueError(
        f"cannot read reward spec {spec!r}: expected RewardSpec, (name, weight, options) or a name"
    )


def _check_options(label: str, fn: RewardFn, options: dict[str, Any]) -> None:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # some callables (builtins, C extensions) have no signature to check against
    try:
        signature.bind("", {}, **options)
    except TypeError as exc:
        raise ValueError(f"reward {label!r}: options {options!r} do not fit {signature}: {exc}") from None


def _name_of(fn: RewardFn) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__
