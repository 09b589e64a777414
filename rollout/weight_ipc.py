"""Weights from a trainer to an engine on the same GPU by CUDA IPC handles (``cluster.weight_sync: ipc``).

When the engines share the trainer's GPUs (``cluster.colocate: [rollout, trainer]``) NCCL cannot connect the
two processes (it refuses two ranks on one GPU). The field's route instead (vLLM's RLHF colocate example,
verl, OpenRLHF): the trainer packs the weights, bf16, into a flat GPU buffer one bucket at a time, and sends
only a handle to that memory (``torch.multiprocessing.reductions.reduce_tensor``: a few hundred bytes); the
engine worker on the same GPU opens the handle as a tensor of its own process and hands the bucket's views
to vLLM's ``model.load_weights``. No copy leaves the GPU.

Handles are keyed by the GPU's UUID, not its index: each process numbers the GPUs it sees from 0
(``CUDA_VISIBLE_DEVICES``), so an index means different GPUs on the two sides. With several trainer ranks
(every rank holds or gathers the whole tensor on its own GPU) the keys of all ranks are merged and every
engine worker picks its own GPU's.

On CPU the same two halves run over shared memory (the storage shared by file name, ``file_system``
strategy, so the handle is plain data as a CUDA one is): the seam tests/test_weight_ipc.py drives.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import torch

from .weight_buckets import Spec, bucket_plan, flat_buffer, pack, views

Bucket = dict  # {"handles": {device key: (rebuild function, args)}, "specs": [(name, shape), ...]}


def device_key(device: torch.device | str) -> str:
    """The key of ``device`` both processes agree on: the CUDA device's UUID, ``cpu`` for host memory."""
    device = torch.device(device)
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return str(torch.cuda.get_device_properties(index).uuid)


def share(tensor: torch.Tensor):
    """A handle to ``tensor``'s memory, ``(rebuild function, plain arguments)``, that another process on the
    same device opens with :func:`open_shared`; any pickler carries it (Ray's too)."""
    from torch.multiprocessing.reductions import reduce_storage, reduce_tensor

    if tensor.device.type == "cuda":
        return reduce_tensor(tensor)  # a CUDA IPC handle: plain bytes and numbers
    # CPU: torch's tensor reduction leaves the storage to multiprocessing's own pickler (a plain pickle would
    # copy the data); the storage's reduction by file name is plain data, so the tensor is rebuilt around it.
    torch.multiprocessing.set_sharing_strategy("file_system")
    tensor.share_memory_()
    storage = reduce_storage(tensor.untyped_storage())
    return _rebuild_cpu, (storage, tensor.dtype, tuple(tensor.shape), tuple(tensor.stride()), tensor.storage_offset())


def _rebuild_cpu(storage, dtype, shape, stride, offset) -> torch.Tensor:
    func, args = storage
    return torch.empty(0, dtype=dtype).set_(func(*args), offset, shape, stride)


def open_shared(handle, device: torch.device | str) -> torch.Tensor:
    """The tensor behind a :func:`share` handle, in this process, on ``device`` (this process's index of the
    GPU: argument 6 of a CUDA handle is the sender's, which may name another GPU here)."""
    func, args = handle
    device = torch.device(device)
    if device.type == "cuda":
        args = list(args)
        args[6] = device.index if device.index is not None else torch.cuda.current_device()
    return func(*args)


class IPCSender:
    """The trainer's half: packs the ``(name, tensor)`` pairs of ``tensors`` (in ``specs`` order, e.g. one
    gathered parameter at a time) into one flat ``dtype`` buffer per bucket and hands out a handle to it.

    A bucket's buffer stays alive until the next :meth:`next_bucket` (or :meth:`close`): the engines must
    have loaded it by then, which the driver ensures by waiting for them before asking for the next one.
    """

    def __init__(self, tensors: Iterable[tuple[str, torch.Tensor]], specs: Sequence[Spec], dtype: torch.dtype,
                 device: torch.device | str, bucket_mb: float = 512.0, gather_keys=None) -> None:
        self.items = iter(tensors)
        self.buckets = bucket_plan(list(specs), dtype, bucket_mb)
        self.dtype, self.device, self.index = dtype, torch.device(device), 0
        self.key = device_key(self.device)
        # Several trainer ranks: a function merging every rank's {key: handle} (a collective), else None.
        self.gather_keys = gather_keys
        self.buffer: torch.Tensor | None = None
        self.bytes_packed = 0

    def __len__(self) -> int:
        return len(self.buckets)

    def next_bucket(self) -> Bucket | None:
        """The next bucket's handles and specs; None after the last (the buffer is then freed)."""
        self.buffer = None  # the engines loaded the previous bucket: its memory goes back first
        if self.index >= len(self.buckets):
            return None
        specs = self.buckets[self.index]
        self.index += 1
        flat = flat_buffer(specs, self.dtype, self.device)
        if self.device.type == "cpu":  # in shared memory from the start (sharing it later would copy it), by name
            torch.multiprocessing.set_sharing_strategy("file_system")
            flat.share_memory_()
        pack(flat, specs, self.items, "packing", "the engines")
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the copies are done before another process reads them
        self.buffer = flat
        self.bytes_packed += flat.numel() * flat.element_size()
        handles = {self.key: share(flat)}
        if self.gather_keys is not None:
            handles = self.gather_keys(handles)
        return {"handles": handles, "specs": [(n, tuple(s)) for n, s in specs]}

    def close(self) -> None:
        self.buffer = None
        self.items = iter(())


def receive_bucket(bucket: Bucket, device: torch.device | str) -> Iterator[tuple[str, torch.Tensor]]:
    """The engine's half: the bucket's tensors, as views of the trainer's buffer opened on ``device``."""
    key = device_key(device)
    handle = bucket["handles"].get(key)
    if handle is None:
        raise RuntimeError(f"weight sync ipc: no trainer rank shares this engine worker's device {key} (trainer "
                           f"devices: {sorted(bucket['handles'])}); cluster.weight_sync=ipc needs every engine "
                           "colocated with a trainer worker (cluster.colocate: [rollout, trainer]); else use "
                           "broadcast")
    flat = open_shared(handle, device)
    return views(flat, bucket["specs"])


class IPCReceiverExtension:
    """vLLM worker method (``collective_rpc``) that loads one IPC bucket into the running model."""

    def r1_receive_ipc(self, bucket: Bucket) -> int:
        """Load the bucket's tensors (each worker of a tensor-parallel engine opens its own GPU's handle;
        ``load_weights`` keeps its shard); returns the tensors loaded."""
        device = getattr(self, "device", "cpu")
        self.model_runner.model.load_weights(weights=receive_bucket(bucket, device))
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()  # done reading the trainer's buffer before it is freed
        return len(bucket["specs"])
