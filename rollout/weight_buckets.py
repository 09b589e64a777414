"""The layout both ends of a weight sync derive from the same specs: tensors cut into buckets of a size limit,
in the sender's order (:mod:`rollout.weight_broadcast`, :mod:`rollout.weight_ipc`)."""
from __future__ import annotations

from typing import Iterator, Mapping, Sequence

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


def flat_buffer(specs: Sequence[Spec], dtype: torch.dtype, device) -> torch.Tensor:
    """An uninitialised 1-D buffer that holds ``specs``' tensors end to end (one bucket, either side)."""
    return torch.empty(sum(_numel(shape) for _, shape in specs), dtype=dtype, device=device)


def views(flat: torch.Tensor, specs: Sequence[Spec]) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, view)`` of each spec laid end to end in ``flat``: how a bucket is packed and read back."""
    offset = 0
    for name, shape in specs:
        n = _numel(shape)
        yield name, flat[offset:offset + n].view(tuple(shape))
        offset += n


def checked(item: tuple[str, torch.Tensor], name: str, shape, doing: str, expecting: str) -> torch.Tensor:
    """The tensor of a sender's ``(name, tensor)`` pair, if it is the ``name`` and ``shape`` the specs put next;
    else an error naming both (the receivers would load it under the wrong name or shape)."""
    got, tensor = item
    if got != name or tuple(tensor.shape) != tuple(shape):
        raise RuntimeError(f"weight sync: {doing} {got} {tuple(tensor.shape)} where {expecting} expect {name} "
                           f"{tuple(shape)} (the specs are stale)")
    return tensor.detach()


def pack(flat: torch.Tensor, specs: Sequence[Spec], items: Iterator[tuple[str, torch.Tensor]], doing: str,
         expecting: str) -> None:
    """Copy the next ``len(specs)`` pairs of ``items`` into ``flat`` (cast to its dtype), each :func:`checked`."""
    for (name, shape), (_, view) in zip(specs, views(flat, specs)):
        view.copy_(checked(next(items), name, shape, doing, expecting))


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
