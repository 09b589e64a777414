"""The trainer's half of the GPU weight syncs (the driver's half: :mod:`pipeline.weight_sync`).

- ``broadcast`` (engines on other GPUs): rank 0 sends each bucket of the NCCL group as the parameters are
  gathered one at a time (:func:`trainer.weight_export.iter_inference_tensors`); under FSDP the other ranks
  take part in the gathers and send nothing.
- ``ipc`` (engines on the trainer's GPUs): every rank packs each bucket on its own GPU and shares a handle
  (:mod:`rollout.weight_ipc`); the handles of all ranks are merged so each engine worker finds its GPU's.

The buckets follow the specs the driver got from ``weight_specs`` when the group formed; a tensor that does
not match them is an error naming it, never a silent mis-load.
"""
from __future__ import annotations

import torch

from .weight_export import iter_inference_tensors


def open_weight_group(trainer, host: str, port: int, world_size: int, backend: str, timeout_s: float) -> int:
    """Host rank 0 of the weight-sync group at ``host:port``; blocks until every engine worker has joined."""
    from rollout.weight_broadcast import WeightGroup

    old = getattr(trainer, "_weight_group", None)
    if old is not None:
        old.close()  # the group of the members before a replacement: its peers are gone or re-joining
    trainer._weight_group = WeightGroup(host, port, 0, world_size, backend=backend, timeout_s=timeout_s,
                                        device=str(trainer.device))
    return world_size


def _specs(trainer, specs):
    if specs is None:
        from .weight_export import weight_specs

        specs = weight_specs(trainer)
    return [(name, tuple(shape)) for name, shape in specs]


def broadcast_weights(trainer, dtype: str = "bfloat16", specs=None, bucket_mb: float = 256.0) -> int:
    """Send the weights in ``dtype`` to the group, one gathered parameter at a time (rank 0; the other FSDP
    ranks only gather). Returns the bytes sent to each engine worker."""
    torch_dtype = getattr(torch, dtype)
    tensors = iter_inference_tensors(trainer, torch_dtype)
    if trainer.rank != 0:
        for _ in tensors:  # the gathers are collectives of the trainer group: run them in step with rank 0
            pass
        return 0
    group = getattr(trainer, "_weight_group", None)
    if group is None or group.group is None:
        raise RuntimeError("broadcast_weights: no weight group (open_weight_group first, again after a failure)")
    try:
        return group.send_iter(tensors, _specs(trainer, specs), torch_dtype, bucket_mb)
    finally:
        tensors.close()


def _merge_ranks(trainer):
    """Under a trainer group: a function merging every rank's ``{device key: handle}`` (all_gather_object)."""
    if trainer.world_size == 1:
        return None

    def merge(handles: dict) -> dict:
        every = [None] * trainer.world_size
        torch.distributed.all_gather_object(every, handles)
        return {key: handle for mine in every for key, handle in mine.items()}

    return merge


def open_ipc_export(trainer, dtype: str = "bfloat16", specs=None, bucket_mb: float = 512.0) -> int:
    """Start an IPC sync: the buckets to come (:func:`next_ipc_bucket`); every rank of a group calls it."""
    from rollout.weight_ipc import IPCSender

    torch_dtype = getattr(torch, dtype)
    trainer._ipc_sender = IPCSender(iter_inference_tensors(trainer, torch_dtype), _specs(trainer, specs),
                                    torch_dtype, trainer.device, bucket_mb, gather_keys=_merge_ranks(trainer))
    return len(trainer._ipc_sender)


def next_ipc_bucket(trainer):
    """The next bucket (handles of every rank's copy, and its specs); None at the end, which frees the last
    buffer and the CUDA cache it leaves."""
    sender = getattr(trainer, "_ipc_sender", None)
    if sender is None:
        raise RuntimeError("next_ipc_bucket: no IPC sync open (open_ipc_export first)")
    bucket = sender.next_bucket()
    if bucket is None:
        sender.close()
        trainer._ipc_sender = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the engines are about to wake into this memory
    return bucket
