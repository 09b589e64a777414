"""The layout both ends of a weight sync derive from the same specs: tensors cut into buckets of a size limit,
in the sender's order (:mod:`rollout.weight_broadcast`, :mod:`rollout.weight_ipc`)."""
from __future__ import annotations

from typing import Mapping, Sequence

import torch

Spec = tuple[str, tuple[int, ...]]  # (name, shape)


def tensor_specs(state: Mapping[str, "torch.Tensor"]) -> list[Spec]:
    """The names and shapes of ``state`` in the order both sides use (sorted by name)."""
    return [(name, tuple(state[name].shape)) for name in sorted(state)]


def bucket_plan(specs: Sequence[Spec], dtype: torch.dtype, bucket_mb: float = 256.0) -> list[list[Spec]]:
    """``specs`` cut into consecutive buckets of at most ``bucket_mb`` (a tensor larger than that alone)."""
    limit = bucket_mb * 2**20
    size = torch.tensor([], dtype=dtype).element_size()
    buckets: list[list[Spec]] = []
    current: list[Spec] = []
    used = 0
    for name, shape in specs:
        nbytes = size * _numel(shape)
        if current and used + nbytes > limit:
            buckets.append(current)
            current, used = [], 0
        current.append((name, shape))
        used += nbytes
    if current:
        buckets.append(current)
    return buckets


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
