"""Reward names -> functions, users' own rewards, and the weighted sum that a run optimises.

Configs name rewards (``format``, ``accuracy``, ...) or point at a user's function
(``"my_pkg.my_rewards:brevity"``); :func:`weighted_sum` turns a list of them into one scoring function.
"""
from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from rewards.accuracy import accuracy_reward
from rewards.adapters import (NOT_APPLICABLE, Adapted, adapt, batch_call, batch_values, check_options, item_call,
                              not_applicable, run_async, to_part)
from rewards.answers import check_answer_format
from rewards.base import Reward, reason_of
from rewards.code import code_reward
from rewards.countdown import countdown_reward
from rewards.failures import FailureWatch, RewardFailure, describe
from rewards.format import format_reward
from rewards.instruction import instruction_reward
from rewards.language import language_consistency_reward
from rewards.length import overlong_penalty
from rewards.numeric_closeness import numeric_closeness_reward
from rewards.reasoning_gym_reward import reasoning_gym_reward

logger = logging.getLogger(__name__)

RewardFn = Callable[..., float]
"""``(completion: str, sample: Mapping, **options) -> float``"""

# Names a sample may not name as its verifier: they do not decide correctness (and "correctness"
# itself would recurse).
_NOT_VERIFIERS = frozenset({"correctness", "format", "language_consistency", "overlong", "numeric_closeness"})


def correctness_reward(completion: str, sample: Mapping[str, Any], *, timeout_s: float = 5.0,
                       answer_format: Literal["tags", "boxed", "last_number", "auto"] = "tags",
                       prefilled_think: bool = False) -> Reward:
    """1.0 iff the completion is correct by the reward named in ``sample.get("verifier", "accuracy")``.

    ``accuracy`` (math, with ``timeout_s``), ``countdown`` and ``instruction`` (correct = every constraint
    satisfied) are built in; any other name is looked up among registered rewards (e.g. ``code``:
    :func:`rewards.code.code_reward`, the sample's ``tests`` run in the sandbox, pass fraction) and
    called with ``answer_format`` / ``prefilled_think`` where it takes them. Sample data never names a
    module to import. Unknown names
    give 0.0 with reason ``unknown_verifier:<name>``; otherwise the verifier's own reason is kept.

    ``answer_format`` (``tags`` | ``boxed`` | ``last_number`` | ``auto``, see :mod:`rewards.answers`) says
    where the final answer is, for math and countdown (which reads a box, never a bare number);
    ``instruction`` and ``code`` read the ``<answer>`` block. ``prefilled_think``: the prompt opened
    ``<think>``.
    """
    check_answer_format(answer_format)
    name = sample.get("verifier") or "accuracy"
    if name == "accuracy":
        return accuracy_reward(completion, sample, timeout_s=timeout_s, answer_format=answer_format,
                               prefilled_think=prefilled_think)
    if name == "countdown":
        return countdown_reward(completion, sample, answer_format=answer_format, prefilled_think=prefilled_think)
    if name == "instruction":
        return instruction_reward(completion, sample, all_or_nothing=True)
    verifier = registered(name) if isinstance(name, str) and name not in _NOT_VERIFIERS else None
    if verifier is None:
        return Reward(0.0, f"unknown_verifier:{name}")
    # Where the answer is (answer_format, prefilled_think) reaches every verifier that reads one, e.g.
    # reasoning_gym; one that takes neither is called as before.
    where = {"answer_format": answer_format, "prefilled_think": prefilled_think}
    value = verifier(completion, sample, **_accepted(verifier, where))
    return value if isinstance(value, Reward) else Reward(float(value), reason_of(value))


def _accepted(fn: RewardFn, options: Mapping[str, Any]) -> dict[str, Any]:
    """The ``options`` that ``fn`` takes as keyword arguments."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}
    return {k: v for k, v in options.items() if k in params
            and params[k].kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)}


_REGISTRY: dict[str, RewardFn] = {
    "format": format_reward,
    "accuracy": accuracy_reward,
    "countdown": countdown_reward,
    "instruction": instruction_reward,
    "language_consistency": language_consistency_reward,
    "overlong": overlong_penalty,
    "correctness": correctness_reward,
    "code": code_reward,
    "reasoning_gym": reasoning_gym_reward,  # reasoning-gym tasks' own scorers (the optional extra `gym`)
    "numeric_closeness": numeric_closeness_reward,  # partial credit near the gold number (training only)
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


def import_plugins(modules: Iterable[str]) -> None:
    """Import each module of ``rewards.plugins`` (their ``@register`` calls add reward names); a module that
    fails to import raises ``ValueError`` in one line naming it and the error."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # ImportError, or whatever the module raised while importing
            raise ValueError(f"cannot import reward plugin {module!r}: {describe(exc)}") from exc


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


def weighted_sum(specs: Iterable[SpecLike], *, prefilled_think: bool = False, fail_after: int = 16) -> "WeightedSum":
    """A scoring function ``score(completion, sample) -> (total, parts)`` for a list of rewards, also
    ``score.score_batch(completions, samples)`` for a batch.

    Each spec is a :class:`RewardSpec`, a ``(name_or_fn, weight, options)`` tuple (weight and options
    optional), a ``{"name", "weight", "options", "label"}`` mapping (as in YAML configs), or a bare name
    or function (a mapping may also give ``tasks``). Names, signatures and options are checked here, so a
    typo or a function of no known form fails at start-up, not mid-run. Rewards may be ours, TRL's or verl's
    form, sync or async (:mod:`rewards.adapters`). ``prefilled_think`` goes to every reward with a
    ``prefilled_think`` parameter whose options do not set it.

    While scoring, a reward that raises contributes 0 with reason ``error:<ExceptionType>`` (logged once
    per reward and exception type), one that returns something non-numeric or non-finite contributes 0 with
    reason ``invalid_value``, and ``None`` means "does not apply" (reason ``not_applicable``, left out of the
    total): a long run survives a user's occasionally failing reward, and the metrics show it. A reward that
    fails on every one of its first ``fail_after`` calls raises :class:`RewardFailure` (one line).
    """
    return WeightedSum([_as_spec(s) for s in specs], prefilled_think=prefilled_think, fail_after=fail_after)


@dataclass
class _Term:
    label: str
    reward: Adapted
    weight: float
    options: dict[str, Any]
    tasks: frozenset[str] | None
    watch: FailureWatch


class WeightedSum:
    """See :func:`weighted_sum`. Picklable when its reward functions are (module-level functions are)."""

    def __init__(self, specs: list[RewardSpec], *, prefilled_think: bool = False, fail_after: int = 16) -> None:
        if not specs:
            raise ValueError("weighted_sum needs at least one reward")
        self.terms: list[_Term] = []
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
            reward = adapt(fn, label)
            options = dict(spec.options or {})
            if reward.accepts("prefilled_think") and "prefilled_think" not in options:
                options["prefilled_think"] = prefilled_think  # the chat template decides, for every reward
            check_options(reward, label, options)
            tasks = None
            if spec.tasks is not None:
                if isinstance(spec.tasks, str) or not all(isinstance(t, str) for t in spec.tasks):
                    raise ValueError(f"reward {label!r}: tasks must be a list of task names, got {spec.tasks!r}")
                tasks = frozenset(spec.tasks)
            self.terms.append(_Term(label, reward, float(weight), options, tasks, FailureWatch(label, fail_after)))
        self._logged: set[tuple[str, str]] = set()

    def __call__(self, completion: str, sample: Mapping[str, Any]) -> tuple[float, dict[str, Reward]]:
        """``(total, {label: Reward})`` of one completion."""
        return self.score_batch([completion], [sample])[0]

    def score_batch(self, completions: Sequence[str], samples: Sequence[Mapping[str, Any]], *,
                    executor: Executor | None = None) -> list[tuple[float, dict[str, Reward]]]:
        """``(total, {label: Reward})`` per completion, in order. A TRL-form reward is called once for the batch,
        async per-item rewards of the batch are awaited together, and sync per-item rewards are mapped over
        ``executor`` when given (threads: our rewards wait on helper processes, not on the GIL)."""
        if len(completions) != len(samples):
            raise ValueError(f"score_batch: {len(completions)} completions for {len(samples)} samples")
        totals = [0.0] * len(completions)
        parts: list[dict[str, Reward]] = [{} for _ in completions]
        for term in self.terms:
            rows = [i for i, s in enumerate(samples) if term.tasks is None or s.get("task") in term.tasks]
            for i in range(len(samples)):
                parts[i][term.label] = not_applicable()  # replaced below where the term applies
            if not rows:
                continue
            scored = self._score_term(term, [completions[i] for i in rows], [samples[i] for i in rows], executor)
            for i, part in zip(rows, scored):
                parts[i][term.label] = part
                if part.reason != NOT_APPLICABLE:
                    totals[i] += term.weight * part
        return list(zip(totals, parts))

    def _score_term(self, term: _Term, completions: list[str], samples: list[Mapping[str, Any]],
                    executor: Executor | None) -> list[Reward]:
        reward, options = term.reward, term.options
        if reward.batched:
            try:
                value = batch_call(reward, completions, samples, options)
                if inspect.isawaitable(value):
                    value = run_async(value)
                values = batch_values(value, len(completions))
            except Exception as exc:  # noqa: BLE001 -- a user's reward: every row of the batch failed
                return [self._judge_error(term, exc, s) for s in samples]
            return [self._judge(term, v, s) for v, s in zip(values, samples)]
        if reward.is_async:
            async def one(completion, sample):
                try:
                    value = item_call(reward, completion, sample, options)
                    value = await value if inspect.isawaitable(value) else value
                except Exception as exc:  # noqa: BLE001
                    return self._judge_error(term, exc, sample)
                return self._judge(term, value, sample)

            async def every():
                return await asyncio.gather(*(one(c, s) for c, s in zip(completions, samples)))

            return run_async(every())

        def one_sync(completion, sample):
            try:
                value = item_call(reward, completion, sample, options)
                if inspect.isawaitable(value):  # a sync wrapper around a coroutine function
                    value = run_async(value)
            except Exception as exc:  # noqa: BLE001
                return self._judge_error(term, exc, sample)
            return self._judge(term, value, sample)

        if executor is None or len(completions) == 1:
            return [one_sync(c, s) for c, s in zip(completions, samples)]
        return list(executor.map(one_sync, completions, samples))

    def _judge(self, term: _Term, value: Any, sample: Mapping[str, Any]) -> Reward:
        part, problem = to_part(value)
        if problem is not None:
            term.watch.failed(problem, sample)
            return part
        term.watch.ok(None if part is None else float(part))
        return not_applicable() if part is None else part

    def _judge_error(self, term: _Term, exc: Exception, sample: Mapping[str, Any]) -> Reward:
        kind = type(exc).__name__
        if (term.label, kind) not in self._logged:
            self._logged.add((term.label, kind))
            logger.error("reward %r raised %s; scoring it 0 (logged once)", term.label, kind, exc_info=exc)
        term.watch.failed(describe(exc), sample)
        return Reward(0.0, f"error:{kind}")

    def __repr__(self) -> str:
        terms = ", ".join(f"{t.weight:g}*{t.label}" for t in self.terms)
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


def _name_of(fn: RewardFn) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__
