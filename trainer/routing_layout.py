"""Per-sample rollout routing -> the ``[batch, seq, moe_layers, k]`` tensor that matches one training forward.

A sample's routing has one row per token that went through the engine: prompt then response tokens, the
last sampled token excluded (``[len(prompt) + len(response) - 1, moe_layers, k]``; an array, or a
:class:`rollout.routing_rows.SampleRouting` whose prompt rows its group shares). The tensor keeps the
engine's narrow dtype (uint8 up to 256 experts, else uint16: 1/8 or 1/4 of int64, which is what a copy to
the GPU moves); where a row is unknown (the engine marks it with its dtype's maximum, a store miss) or absent
(padding, the last token), the whole row holds the dtype's maximum and the training router routes that token
itself (:func:`trainer.routing_replay.expert_ids` reads it back as -1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from rollout.routing_capture import routing_dtype, sentinel_of


@dataclass(frozen=True)
class Span:
    """Copy ``count`` rows of source ``source`` from row ``start`` to output row ``row`` at column ``column``."""

    row: int
    source: int
    start: int
    count: int
    column: int


def routing_tensor(sources: Sequence[np.ndarray | None], spans: Sequence[Span], shape: tuple[int, int],
                   layers: int, top_k: int, num_experts: int) -> torch.Tensor:
    """Place rows of ``sources`` as ``spans`` say into a ``[*shape, layers, top_k]`` tensor of
    :func:`rollout.routing_capture.routing_dtype` (``num_experts``), every other row unknown (the dtype's maximum).

    A source that is None leaves its spans unknown. A source of the wrong shape or with an expert id out of
    range is refused in one line: replaying it would silently train on other experts than were sampled.
    """
    dtype = routing_dtype(num_experts)
    unknown = sentinel_of(dtype)
    out = np.full((*shape, layers, top_k), unknown, dtype=dtype)
    for span in spans:
        src = sources[span.source]
        if src is None or span.count <= 0:
            continue
        if src.ndim != 3 or src.shape[1:] != (layers, top_k):
            raise ValueError(f"routed_experts[{span.source}]: shape {tuple(src.shape)}, expected "
                             f"[tokens, {layers}, {top_k}] (MoE layers, top-k) of the training model")
        rows = src[span.start:span.start + span.count].astype(np.int64)
        # A whole router row of the dtype's maximum is "unknown" (with exactly 256 experts, 255 alone is an id).
        marker = sentinel_of(src.dtype) if np.issubdtype(src.dtype, np.integer) else -1
        missing = (rows == marker).all(axis=-1) | (rows < 0).any(axis=-1)
        rows[missing] = 0
        if (rows >= num_experts).any():
            raise ValueError(f"routed_experts[{span.source}]: expert id {int(rows.max())} >= the model's "
                             f"{num_experts} experts")
        rows[missing] = unknown
        out[span.row, span.column:span.column + len(rows)] = rows
    return torch.from_numpy(out)


def padded_spans(prompt_lens: Sequence[int], response_lens: Sequence[int], prompt_width: int) -> list[Span]:
    """Spans for the left-padded prompt + right-padded response layout of ``trainer.sequences.pad_rows``."""
    return [Span(i, i, 0, p + r, prompt_width - p) for i, (p, r) in enumerate(zip(prompt_lens, response_lens))]


def prompt_pass_spans(first_row: Sequence[int], prompt_lens: Sequence[int], prompt_width: int) -> list[Span]:
    """Spans for the shared-prefix prompt pass: unique prompt ``u`` (left-padded) takes the prompt rows of
    ``first_row[u]``, the first sample with that prompt (its siblings carry the same prompt routing)."""
    return [Span(u, row, 0, p, prompt_width - p) for u, (row, p) in enumerate(zip(first_row, prompt_lens))]


def response_pass_spans(prompt_lens: Sequence[int], response_lens: Sequence[int]) -> list[Span]:
    """Spans for the shared-prefix response pass, whose input is response tokens ``0 .. r-2`` of every row."""
    return [Span(i, i, p, r - 1, 0) for i, (p, r) in enumerate(zip(prompt_lens, response_lens))]
