"""The trainer group's torch.distributed plumbing: joining the group, the collectives of one optimizer step,
and which rows a rank trains.

N trainer workers form one process group (gloo on CPU; NCCL plus gloo for CPU tensors on GPU). Every rank
gets the whole batch, trains a contiguous share of its rows and sums its gradient with the others' before
clipping (torch's DDP or FSDP2 do the sum: :mod:`trainer.data_parallel`), so the update equals the one a
single worker would take on the whole batch. The functions here are small and plain (no Ray);
:class:`trainer.policy.PolicyTrainer` calls them only when ``world_size > 1``.
"""
from __future__ import annotations

import contextlib
import socket
from datetime import timedelta
from typing import Sequence, TypeVar

import torch

T = TypeVar("T")


def backend_for(device: torch.device | str) -> str:
    """The process-group backend for a trainer on ``device``: gloo between CPUs; on GPUs NCCL for CUDA
    tensors and gloo for CPU ones (the metric sums, the SFT loss), one group that dispatches by device."""
    return "cpu:gloo,cuda:nccl" if torch.device(device).type == "cuda" else "gloo"


def node_address() -> tuple[str, int]:
    """``(ip, port)`` at which this process can host the group's rendezvous: the address other nodes reach
    this one at and a port free right now (bound and released: another process could take it before
    ``init_process_group`` does, a window of milliseconds)."""
    ip = "127.0.0.1"
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        # A UDP connect sends nothing: it only asks the kernel which interface routes outwards.
        probe.connect(("10.255.255.255", 1))
        ip = probe.getsockname()[0]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    return ip, port


def init_group(init_method: str, rank: int, world_size: int, backend: str, timeout_s: float) -> None:
    """Join the default process group (every rank calls this; it returns once all ``world_size`` have).
    ``timeout_s`` also bounds every later collective: a rank that died shows as an error, not a hang."""
    import torch.distributed as dist

    if dist.is_initialized():
        raise RuntimeError("this process already belongs to a torch.distributed group")
    dist.init_process_group(backend=backend, init_method=init_method, rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s))


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` outside a group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shares(n: int, world_size: int) -> list[tuple[int, int]]:
    """``[start, end)`` of each rank's contiguous share of ``n`` items: near-equal sizes, the first
    ``n % world_size`` ranks one larger (a rank may get none when ``n < world_size``)."""
    base, extra = divmod(n, max(1, world_size))
    out, start = [], 0
    for r in range(max(1, world_size)):
        end = start + base + (1 if r < extra else 0)
        out.append((start, end))
        start = end
    return out


def rank_share(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """Rank ``rank``'s contiguous slice of ``items``. Contiguous, so rows sorted by prompt keep a prompt
    group together on one rank wherever a boundary does not fall inside it (one shared prompt pass)."""
    start, end = shares(len(items), world_size)[rank]
    return list(items[start:end])


def all_reduce_sums(values: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of ``values`` over the group (a copy; every rank passes the same length)."""
    import torch.distributed as dist

    out = values.clone()
    dist.all_reduce(out)
    return out


def reduce_metrics(totals: dict[str, float], keys: Sequence[str], mean_keys: Sequence[str] = (),
                   device: torch.device | str = "cpu") -> dict[str, float]:
    """``totals`` with each of ``keys`` summed over the group (``mean_keys``: averaged over the ranks that
    have it), in one collective. A key no rank has stays absent. ``keys`` is a fixed list, not this rank's
    own keys, so every rank reduces a tensor of the same length whatever it trained. Other keys pass as they are.
    """
    values = [float(totals.get(k, 0.0)) for k in keys] + [1.0 if k in totals else 0.0 for k in keys]
    reduced = all_reduce_sums(torch.tensor(values, dtype=torch.float64, device=device)).tolist()
    out = {k: v for k, v in totals.items() if k not in keys}
    for i, k in enumerate(keys):
        count = reduced[len(keys) + i]
        if count:
            out[k] = reduced[i] / count if k in mean_keys else reduced[i]
    return out
