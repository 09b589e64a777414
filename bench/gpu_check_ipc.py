"""The colocated weight sync in bench/gpu_check.py: bf16 buckets packed by the trainer process
(:class:`rollout.weight_ipc.IPCSender`) and opened in a second process on the same device
(:func:`rollout.weight_ipc.receive_bucket`), which answers with every tensor's checksum."""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent


def checksum(tensor: torch.Tensor) -> tuple[int, int]:
    """Exact fingerprint of a bf16 tensor's bits (integer sums: no float rounding on either side)."""
    bits = tensor.detach().contiguous().view(torch.int16).long()
    return int(bits.sum()), int((bits * bits).sum())


# The engine's side of the colocated sync, in a process of its own (CUDA IPC opens another process's memory):
# it reads pickled buckets on stdin, opens each with rollout.weight_ipc.receive_bucket on the same GPU and
# answers with the checksums of the tensors it sees. torch alone: what a vLLM worker does before load_weights.
RECEIVER = """
import pickle, struct, sys
import torch
sys.path.insert(0, sys.argv[1])
from rollout.weight_ipc import receive_bucket
device = torch.device(sys.argv[2])
if device.type == "cuda":
    torch.cuda.set_device(device)
sys.path.insert(0, sys.argv[3])
from gpu_check_ipc import checksum
src, dst = sys.stdin.buffer, sys.stdout.buffer
while True:
    size = struct.unpack("<Q", src.read(8))[0]
    if not size:
        break
    bucket = pickle.loads(src.read(size))
    sums = {name: checksum(t) for name, t in receive_bucket(bucket, device)}
    del bucket
    if device.type == "cuda":
        torch.cuda.synchronize()
    data = pickle.dumps(sums)
    dst.write(struct.pack("<Q", len(data)) + data)
    dst.flush()
"""


def _send(pipe, obj) -> None:
    """One length-prefixed pickle on ``pipe`` (an empty frame: the end)."""
    import pickle
    import struct

    data = pickle.dumps(obj) if obj is not None else b""
    pipe.write(struct.pack("<Q", len(data)) + data)
    pipe.flush()


def _receive(pipe):
    """The next length-prefixed pickle from ``pipe``."""
    import pickle
    import struct

    head = pipe.read(8)
    if len(head) < 8:
        raise RuntimeError("the IPC receiver process ended early")
    return pickle.loads(pipe.read(struct.unpack("<Q", head)[0]))


def sync_over_ipc(tensors, specs, device: torch.device, bucket_mb: float, timeout_s: float) -> dict:
    """Send ``tensors`` (``(name, bf16 tensor)`` in ``specs`` order) bucket by bucket to a receiver process on
    ``device``; returns what it saw (``{name: checksum}``) and the sync's figures."""
    from rollout.weight_ipc import IPCSender

    sender = IPCSender(tensors, specs, torch.bfloat16, device, bucket_mb=bucket_mb)
    errors = tempfile.TemporaryFile()  # a file, not a pipe: a chatty receiver never blocks on it
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(ROOT), str(device), str(BENCH)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors)
    seen, started = {}, time.perf_counter()
    try:
        while (bucket := sender.next_bucket()) is not None:
            _send(receiver.stdin, bucket)
            seen.update(_receive(receiver.stdout))  # the buffer lives until the receiver has read it
        _send(receiver.stdin, None)
        receiver.wait(timeout=timeout_s)
    finally:
        sender.close()
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    errors.seek(0)
    return {"seen": seen, "buckets": len(sender), "bytes": sender.bytes_packed,
            "seconds_sync": time.perf_counter() - started, "receiver_rc": receiver.returncode,
            "receiver_stderr": errors.read().decode(errors="replace")[-300:]}
