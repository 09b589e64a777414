"""The colocated sync's two halves (rollout/weight_ipc.py) as far as a CPU reaches: the trainer packs its
weights bucket by bucket into shared memory and sends only handles (plain pickle, as Ray carries them); a
second process opens them and feeds them to the engine worker's ``load_weights`` path. On GPU the same code
shares CUDA memory (``reduce_tensor`` of a CUDA tensor) keyed by the GPU's UUID."""
import multiprocessing
import pickle

import pytest
import torch

from rollout.weight_ipc import IPCSender, device_key, open_shared, receive_bucket, share
from tests.ipc_fakes import _Worker
from trainer.policy import PolicyTrainer
from trainer.settings import OptimSettings, TrainerSettings
from trainer.weight_export import iter_inference_tensors, weight_specs


def _engine_process(conn) -> None:
    worker = _Worker()
    while True:
        payload = conn.recv_bytes()
        if payload == b"done":
            break
        worker.r1_receive_ipc(pickle.loads(payload))  # plain pickle: what Ray's serializer does
        conn.send_bytes(b"ok")  # loaded: the trainer may free this bucket
    conn.send_bytes(pickle.dumps(worker.model_runner.model.loaded))


def test_shared_buckets_reach_another_process_load_weights(tiny_model_dir):
    trainer = PolicyTrainer(tiny_model_dir, TrainerSettings(precision="fp32", optim=OptimSettings(lr=1e-3)))
    expected = {n: t.to(torch.bfloat16) for n, t in iter_inference_tensors(trainer)}
    specs = weight_specs(trainer)
    sender = IPCSender(iter_inference_tensors(trainer, torch.bfloat16), specs, torch.bfloat16, "cpu", bucket_mb=0.5)
    assert len(sender) > 2  # several buckets: the buffer is reused bucket after bucket

    ctx = multiprocessing.get_context("spawn")
    here, there = ctx.Pipe()
    engine = ctx.Process(target=_engine_process, args=(there,))
    engine.start()
    try:
        sizes = []
        while (bucket := sender.next_bucket()) is not None:
            payload = pickle.dumps(bucket)
            sizes.append(len(payload))
            here.send_bytes(payload)
            assert here.recv_bytes() == b"ok"
        here.send_bytes(b"done")
        loaded = pickle.loads(here.recv_bytes())
    finally:
        engine.join(timeout=60)
        if engine.is_alive():
            engine.kill()
    assert engine.exitcode == 0
    assert list(loaded) == [n for n, _ in specs]  # every weight once, in the specs' order
    for name, tensor in expected.items():
        assert loaded[name].dtype == torch.bfloat16 and torch.equal(loaded[name], tensor), name
    # Handles, not data, cross the process boundary: a few hundred bytes per bucket of up to 0.5 MiB.
    assert sender.bytes_packed == sum(t.numel() * 2 for t in expected.values())
    assert max(sizes) < 4096 < sender.bytes_packed / len(sizes)


def test_a_handle_opens_as_the_same_memory_and_cuda_handles_take_this_process_device_index():
    shared = torch.arange(6, dtype=torch.float32)
    view = open_shared(share(shared), "cpu")
    shared[0] = 42.0  # the same memory, not a copy
    assert view[0] == 42.0 and torch.equal(view, shared)

    seen = {}

    def rebuild(*args):
        seen["args"] = args
        return "tensor"

    handle = (rebuild, ("cls", (2, 3), (3, 1), 0, "storage-cls", torch.bfloat16, 0, "ipc-handle"))
    assert open_shared(handle, torch.device("cuda", 3)) == "tensor"
    assert seen["args"][6] == 3  # the GPU as numbered in the engine's process (CUDA_VISIBLE_DEVICES differ)


def test_an_engine_on_a_gpu_without_a_trainer_rank_is_told_in_one_line():
    assert device_key("cpu") == "cpu"
    bucket = {"handles": {"GPU-0000": share(torch.zeros(2))}, "specs": [("w", (2,))]}  # another device's
    with pytest.raises(RuntimeError, match="no trainer rank shares this engine worker's device cpu.*colocate"):
        receive_bucket(bucket, "cpu")
