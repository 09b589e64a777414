"""Rewards in the signatures the field writes them in, each called the way its form expects.

Three forms, told apart by parameter names when a config loads (:func:`adapt`), each also as ``async def``:

- ours: ``(completion, sample, **options) -> float | Reward``, one completion per call;
- TRL: ``(prompts, completions, **kwargs) -> list[float | None]``, one call per batch, with every sample field
  (``answer``, ``task``, any dataset column) as a keyword list (a field a sample lacks is ``None`` there);
- verl: ``compute_score(data_source, solution_str, ground_truth, extra_info=None) -> float | dict`` (a dict
  carries ``score``), one completion per call; ``data_source`` is the sample's ``data_source`` (else its
  ``task``), ``ground_truth`` its ``answer``, ``extra_info`` the sample itself.

A value of ``None`` from any form means "does not apply" (see :data:`NOT_APPLICABLE`). Async rewards run on
one event loop per process (a judge client made once keeps working across calls).
"""
from __future__ import annotations

import asyncio
import inspect
import math
import numbers
import threading
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Sequence

from rewards.base import Reward, reason_of

ACCEPTED_FORMS = ("(completion, sample, **options) -> float | Reward; "
                  "TRL (prompts, completions, **kwargs) -> list[float | None]; "
                  "verl compute_score(data_source, solution_str, ground_truth, extra_info=None) -> float | dict; "
                  "or an async def of any of them")

Form = Literal["ours", "trl", "verl"]
_TRL = ("prompts", "completions")
_VERL = ("solution_str", "ground_truth")
_VERL_ARGS = ("data_source", "solution_str", "ground_truth", "extra_info")
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


NOT_APPLICABLE = "not_applicable"  # the reason of a part that does not apply: 0, adds nothing, is no failure


def not_applicable() -> Reward:
    """The part of a reward that does not apply to a sample (a ``tasks:`` scope, or the reward said None)."""
    return Reward(0.0, NOT_APPLICABLE)


@dataclass(frozen=True)
class Adapted:
    """A reward function with its detected form: how to call it and what it accepts."""

    fn: Callable[..., Any]
    form: Form
    is_async: bool
    params: tuple[str, ...]  # the parameter names that can be given by keyword
    var_keyword: bool  # takes **kwargs
    signature: inspect.Signature | None

    @property
    def batched(self) -> bool:
        return self.form == "trl"

    def accepts(self, name: str) -> bool:
        """Whether the function names a keyword parameter ``name`` (``**kwargs`` alone does not count)."""
        return name in self.params


def adapt(fn: Callable[..., Any], label: str) -> Adapted:
    """``fn``'s form, from its parameter names; a function that fits none raises ``ValueError`` in one line."""
    is_async = _is_async(fn)
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins, C extensions: no signature to read, called as ours
        return Adapted(fn, "ours", is_async, (), True, None)
    ps = list(signature.parameters.values())
    names = tuple(p.name for p in ps if p.kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                     inspect.Parameter.VAR_KEYWORD, inspect.Parameter.POSITIONAL_ONLY))
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in ps)
    if all(n in names for n in _TRL):
        return Adapted(fn, "trl", is_async, names, var_kw, signature)
    if all(n in names for n in _VERL):
        return Adapted(fn, "verl", is_async, names, var_kw, signature)
    positional = [p for p in ps if p.kind in _POSITIONAL]
    if len(positional) >= 2 or any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in ps):
        return Adapted(fn, "ours", is_async, names, var_kw, signature)
    raise ValueError(f"reward {label!r}: {_name_of(fn)}{signature} fits none of the accepted forms: {ACCEPTED_FORMS}")


def check_options(adapted: Adapted, label: str, options: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` in one line when ``options`` (config keyword args) do not fit the function."""
    if adapted.signature is None:
        return
    try:
        if adapted.form == "ours":
            adapted.signature.bind("", {}, **options)
        else:  # every parameter the data fills is given a stand-in; the rest must come from the options
            filled = {n: None for n in _data_params(adapted) if n not in options}
            adapted.signature.bind(**filled, **options)
    except TypeError as exc:
        raise ValueError(f"reward {label!r}: options {dict(options)!r} do not fit {adapted.signature}: {exc}") from None
    from rewards.options import check_option_values  # values outside a Literal annotation (answer_format, style)

    check_option_values(label, adapted.fn, options)


def _data_params(adapted: Adapted) -> list[str]:
    """The keyword parameters a call fills from the data (the rest come from the options)."""
    if adapted.form == "trl":  # prompts, completions, and every named dataset column
        return list(adapted.params)
    return [n for n in _VERL_ARGS if adapted.accepts(n) or adapted.var_keyword]


# ---- calling -------------------------------------------------------------------------------------------------

def item_call(adapted: Adapted, completion: str, sample: Mapping[str, Any], options: Mapping[str, Any]):
    """Call a per-item reward on one completion; returns its raw value (a coroutine for an async reward)."""
    if adapted.form == "ours":
        return adapted.fn(completion, sample, **options)
    given = {"data_source": sample.get("data_source") or sample.get("task"), "solution_str": completion,
             "ground_truth": sample.get("answer"), "extra_info": dict(sample)}
    return adapted.fn(**{k: given[k] for k in _data_params(adapted) if k not in options}, **options)


def batch_call(adapted: Adapted, completions: Sequence[str], samples: Sequence[Mapping[str, Any]],
               options: Mapping[str, Any]):
    """Call a batched (TRL) reward once on the whole batch; returns its raw value (or a coroutine)."""
    # Named columns (a field no sample has: a list of None if the function requires it, else its default), and
    # with **kwargs every field of the samples, as TRL passes its dataset's columns.
    columns = [n for n in adapted.params if n not in _TRL and (any(n in s for s in samples) or _required(adapted, n))]
    if adapted.var_keyword:
        columns += [k for s in samples for k in s if k not in ("prompt", "completion")]
    kwargs = {c: [s.get(c) for s in samples] for c in dict.fromkeys(columns) if c not in options and c not in _TRL}
    return adapted.fn(prompts=[s.get("prompt") for s in samples], completions=list(completions), **kwargs, **options)


def _required(adapted: Adapted, name: str) -> bool:
    p = adapted.signature.parameters.get(name) if adapted.signature else None
    return p is not None and p.default is inspect.Parameter.empty


def batch_values(value: Any, n: int) -> list[Any]:
    """A batched reward's answer as ``n`` values; a wrong shape makes every value invalid (``value`` kept for
    the failure message)."""
    if isinstance(value, (list, tuple)) and len(value) == n:
        return list(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes, Mapping)):  # a numpy array or a tensor
        listed = value.tolist()
        if isinstance(listed, list) and len(listed) == n:
            return listed
    return [_WrongShape(value, n)] * n


class _WrongShape:
    """Marks the values of a batched reward that did not answer one value per completion."""

    def __init__(self, value: Any, n: int) -> None:
        self.text = f"returned {_short(value)} for {n} completions (expected a list of {n} numbers or None)"


def to_part(value: Any) -> tuple[Reward | None, str | None]:
    """A reward's raw value as ``(part, problem)``: ``(Reward, None)`` for a number, ``(None, None)`` for
    ``None`` (does not apply), ``(Reward(0, 'invalid_value'), description)`` for anything else (a verl dict
    gives its ``score``)."""
    if value is None:
        return None, None
    if isinstance(value, Mapping) and "score" in value:
        value = value["score"]
    if isinstance(value, _WrongShape):
        return Reward(0.0, "invalid_value"), value.text
    if hasattr(value, "item") and not isinstance(value, numbers.Real):  # a 0-d numpy / torch number
        try:
            value = value.item()
        except (TypeError, ValueError):
            pass
    if not isinstance(value, numbers.Real) or not math.isfinite(value):
        return Reward(0.0, "invalid_value"), f"returned {_short(value)} (not a finite number)"
    return (value if isinstance(value, Reward) else Reward(float(value), reason_of(value))), None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---- async ---------------------------------------------------------------------------------------------------

def _is_async(fn: Callable[..., Any]) -> bool:
    call = getattr(type(fn), "__call__", None) if not inspect.isroutine(fn) else None
    return inspect.iscoroutinefunction(fn) or (call is not None and inspect.iscoroutinefunction(call))


_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def run_async(coro) -> Any:
    """Run ``coro`` on this process's reward event loop (started on first use, in a daemon thread) and wait for
    its result. One loop for the process: an async client a reward made on its first call keeps its loop."""
    global _loop
    with _loop_lock:
        if _loop is None or _loop.is_closed():
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="reward-async", daemon=True).start()
    return asyncio.run_coroutine_threadsafe(coro, _loop).result()


def _name_of(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
