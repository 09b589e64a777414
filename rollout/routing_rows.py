"""One sample's R3 routing as the engines hand it on: its prompt's rows, shared by the samples of a group, and
its response's rows.

The n samples of one prompt were conditioned on the same prompt tokens, and the engine routed those tokens for
each of them; shipping those rows with every sample sends the prompt n times. :func:`share_prompt_rows` gives
the siblings whose prompt rows are equal the *same* prompt array object, which pickle (Ray's serializer) writes
once per message and restores as one object, engine -> driver and driver -> trainer. A sibling whose prompt
rows differ (a prefix-cache row the store no longer held, a near tie routed otherwise in another batch) keeps
its own, so every sample replays exactly the routing it was sampled with.

A :class:`SampleRouting` reads like the ``[tokens, moe_layers, k]`` array it stands for (uint8 up to 256
experts, else uint16): ``shape``, ``dtype``, ``len``, row slices and ``np.asarray``.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


class SampleRouting(np.lib.mixins.NDArrayOperatorsMixin):
    """The rows of one sample: ``prompt`` (``[p, layers, k]``, possibly the same object as its siblings') then
    ``response`` (``[r - 1, layers, k]``: the last sampled token never went through a forward). Comparisons
    and other numpy operators act on the whole ``[tokens, layers, k]`` array."""

    __slots__ = ("prompt", "response")
    ndim = 3

    def __init__(self, prompt: np.ndarray, response: np.ndarray) -> None:
        if prompt.dtype != response.dtype or prompt.shape[1:] != response.shape[1:]:
            raise ValueError(f"SampleRouting: prompt rows {prompt.shape} {prompt.dtype} and response rows "
                             f"{response.shape} {response.dtype} differ in layout")
        self.prompt, self.response = prompt, response

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *self.prompt.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.prompt.dtype

    def __len__(self) -> int:
        return len(self.prompt) + len(self.response)

    def __getitem__(self, key):
        """Rows ``key`` (a slice: no copy when it lies within one part); any other index goes through the array."""
        if not isinstance(key, slice) or key.step not in (None, 1):
            return np.asarray(self)[key]
        start, stop, _ = key.indices(len(self))
        p = len(self.prompt)
        if stop <= p:
            return self.prompt[start:stop]
        if start >= p:
            return self.response[start - p:stop - p]
        return np.concatenate([self.prompt[start:], self.response[:stop - p]])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        rows = np.concatenate([self.prompt, self.response])
        return rows if dtype is None else rows.astype(dtype)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        inputs = tuple(np.asarray(x) if isinstance(x, SampleRouting) else x for x in inputs)
        return getattr(ufunc, method)(*inputs, **kwargs)

    def __getattr__(self, name: str):
        """Any other ndarray attribute or method (``astype``, ``tolist``, ``max``...) of the whole array: code
        written for the plain ``[tokens, layers, k]`` array (a user's, ``r1 r3-check``) works unchanged."""
        if name.startswith("__") or name in SampleRouting.__slots__:  # unpickling probes before the slots are set
            raise AttributeError(name)
        return getattr(np.asarray(self), name)

    def __repr__(self) -> str:
        return f"SampleRouting(prompt={self.prompt.shape}, response={self.response.shape}, {self.dtype})"


def share_prompt_rows(prompt_len: int, samples: Sequence[np.ndarray | None]) -> list[SampleRouting | None]:
    """The routing of the samples of one prompt (``[prompt_len + r - 1, layers, k]`` each, None where absent) as
    :class:`SampleRouting`, the equal prompt rows held once (one array object for all who share them)."""
    heads: list[np.ndarray] = []
    out: list[SampleRouting | None] = []
    for rows in samples:
        if rows is None:
            out.append(None)
            continue
        rows = np.asarray(rows)
        p = min(prompt_len, len(rows))
        head = next((h for h in heads if h.shape == rows[:p].shape and np.array_equal(h, rows[:p])), None)
        if head is None:
            head = rows[:p].copy()  # copies: no sample's whole array stays alive behind a view
            heads.append(head)
        out.append(SampleRouting(head, rows[p:].copy()))
    return out


def share_group_prompts(generations) -> None:
    """In place: each generation's completions (``rollout.types.Generation``) hold their equal prompt routing
    rows once (:func:`share_prompt_rows`)."""
    for gen in generations:
        shared = share_prompt_rows(len(gen.prompt_ids), [c.routed_experts for c in gen.completions])
        for completion, rows in zip(gen.completions, shared):
            completion.routed_experts = rows


def shipped_bytes(routing: Iterable) -> int:
    """Bytes of routing rows that pickling ``routing`` (samples' arrays or :class:`SampleRouting`) carries: each
    distinct array once, as pickle's memo writes an object it has seen as a reference."""
    seen: dict[int, int] = {}
    for rows in routing:
        if rows is None:
            continue
        for part in ((rows.prompt, rows.response) if isinstance(rows, SampleRouting) else (rows,)):
            seen[id(part)] = part.nbytes
    return sum(seen.values())
