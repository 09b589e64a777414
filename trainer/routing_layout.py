"""Per-sample rollout routing -> the ``[batch, seq, moe_layers, k]`` tensor that matches one training forward.

A sample's routing has one row per token that went through the engine: prompt then response tokens, the
last sampled token excluded (``[len(prompt) + len(response) - 1, moe_layers, k]``). Where a row is unknown
(the engine marks it with its dtype's maximum, a store miss) or absent (padding, the last token), the tensor
holds -1 and the training router routes that token itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from rollout.routing_capture import sentinel_of


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
    """Place rows of ``sources`` as ``spans`` say into a ``[*shape, layers, top_k]`` long tensor of -1s.

    A source that is None leaves its spans at -1. A source of the wrong shape or with an expert id out of
    range is refused in one line: replaying it would silently train on other experts than were sampled.
    """
    out = np.full((*shape, layers, top_k), -1, dtype=np.int64)
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
        rows[(rows == marker).all(axis=-1) | (rows < 0).any(axis=-1)] = -1
        if (rows >= num_experts).any():
            raise ValueError(f"routed_experts[{span.source}]: expert id {int(rows.max())} >= the model's "
                             f"{num_experts} experts")
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
