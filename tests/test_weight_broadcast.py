"""Weights over a collective (rollout/weight_broadcast.py): the bucket plan both sides derive, and a real gloo
broadcast from a sender to two receivers (threads of this process, each with its own group member)."""
import threading

import pytest
import torch

from rollout.weight_broadcast import WeightGroup, bucket_plan, tensor_specs
from tests.ray_cluster import free_port


def _run_members(member, world: int, errors: list) -> None:
    """``member(rank)`` for every rank of a ``world``-member group at once, in threads; ``errors`` (what the
    members caught) must stay empty."""
    threads = [threading.Thread(target=member, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors


def test_buckets_keep_the_sorted_order_and_respect_the_size_limit():
    specs = [("a", (256, 256)), ("b", (10,)), ("c", (1024, 1024)), ("d", (3, 3))]
    buckets = bucket_plan(specs, torch.bfloat16, bucket_mb=0.25)  # 256x256 bf16 = 0.125 MiB
    assert [s for b in buckets for s in b] == specs
    assert buckets[0] == [("a", (256, 256)), ("b", (10,))]
    assert buckets[1] == [("c", (1024, 1024))]  # larger than a bucket: alone
    assert buckets[2] == [("d", (3, 3))]
    assert len(bucket_plan(specs, torch.bfloat16, bucket_mb=1024)) == 1


def test_a_gloo_broadcast_delivers_every_tensor_in_the_engines_dtype_to_every_receiver():
    torch.manual_seed(0)
    state = {"model.embed.weight": torch.randn(300, 64), "model.layers.0.w": torch.randn(64, 64),
             "lm_head.weight": torch.randn(300, 64), "norm.weight": torch.randn(64)}
    specs = tensor_specs(state)
    port, got, errors = free_port(), {}, []

    def member(rank):
        try:
            group = WeightGroup("127.0.0.1", port, rank, 3, backend="gloo", timeout_s=60)
            if rank == 0:
                got["sent"] = group.send(state, torch.bfloat16, bucket_mb=0.05)
            else:
                got[rank] = {n: t.clone() for n, t in group.receive(specs, torch.bfloat16, bucket_mb=0.05)}
        except Exception as exc:  # surfaced below, not lost in the thread
            errors.append(exc)

    _run_members(member, 3, errors)
    assert got["sent"] == sum(t.numel() for t in state.values()) * 2
    for rank in (1, 2):
        assert list(got[rank]) == [n for n, _ in specs]
        for name, tensor in state.items():
            assert got[rank][name].dtype == torch.bfloat16
            assert torch.equal(got[rank][name], tensor.to(torch.bfloat16)), name


def test_only_rank_0_sends_and_the_backend_is_checked():
    with pytest.raises(ValueError, match="backend 'mpi'"):
        WeightGroup("127.0.0.1", free_port(), 0, 1, backend="mpi")
    group = WeightGroup("127.0.0.1", free_port(), 0, 1, backend="gloo", timeout_s=10)
    assert group.send({"w": torch.ones(2)}, torch.float32) == 8


def test_the_nccl_group_gets_the_weight_groups_timeout(monkeypatch):
    """No NCCL on a CPU build: a stand-in records what WeightGroup gives ProcessGroupNCCL (its options' timeout
    is cluster.timeout_s; without options NCCL would wait its own 10 minutes, or for ever)."""
    from datetime import timedelta

    made = {}

    class FakeNCCL:
        class Options:
            _timeout = None

        def __init__(self, store, rank, size, options=None):
            made.update(rank=rank, size=size, timeout=getattr(options, "_timeout", None))

    monkeypatch.setattr(torch.distributed, "ProcessGroupNCCL", FakeNCCL, raising=False)
    WeightGroup("127.0.0.1", free_port(), 0, 1, backend="nccl", timeout_s=42)
    assert made == {"rank": 0, "size": 1, "timeout": timedelta(seconds=42)}


def test_send_iter_streams_tensors_in_the_specs_order_and_refuses_stale_specs():
    torch.manual_seed(0)
    items = [("z.weight", torch.randn(40, 8)), ("a.weight", torch.randn(8)), ("m.weight", torch.randn(300, 8))]
    specs = [(n, tuple(t.shape)) for n, t in items]  # the generator's order, not sorted
    port, got, errors = free_port(), {}, []

    def member(rank):
        try:
            group = WeightGroup("127.0.0.1", port, rank, 2, backend="gloo", timeout_s=60)
            if rank == 0:
                got["sent"] = group.send_iter(iter(items), specs, torch.bfloat16, bucket_mb=0.001)
            else:
                got["received"] = [(n, t.clone()) for n, t in group.receive(specs, torch.bfloat16, bucket_mb=0.001)]
        except Exception as exc:  # surfaced below
            errors.append(exc)

    _run_members(member, 2, errors)
    assert [n for n, _ in got["received"]] == [n for n, _ in items]
    for (_, sent), (_, received) in zip(items, got["received"]):
        assert torch.equal(received, sent.to(torch.bfloat16))
    assert got["sent"] == sum(t.numel() for _, t in items) * 2
    alone = WeightGroup("127.0.0.1", free_port(), 0, 1, backend="gloo", timeout_s=10)
    with pytest.raises(RuntimeError, match="sending a.weight .* expect z.weight"):
        alone.send_iter(iter(items[1:]), specs, torch.float32)
    assert alone.group is None  # a failed send leaves the group (its peers fail now, not at the timeout)


def test_joining_a_new_group_aborts_the_engine_workers_old_one():
    """After a replacement the group forms again; the old one is aborted first (under NCCL a collective with the
    dead peer would otherwise hold the worker's stream until the watchdog ends the process)."""
    from rollout.weight_broadcast import WeightReceiverExtension

    class Old:
        closed = False

        def close(self):
            Old.closed = True

    worker = WeightReceiverExtension()
    worker.r1_weight_group = Old()
    assert worker.r1_join_weight_group("127.0.0.1", free_port(), 0, 1, "gloo", 10) == 0
    assert Old.closed and isinstance(worker.r1_weight_group, WeightGroup)


def test_the_trainer_aborts_its_old_group_before_hosting_the_next():
    from types import SimpleNamespace

    from trainer.weight_sync_send import open_weight_group

    closed = []
    trainer = SimpleNamespace(_weight_group=SimpleNamespace(close=lambda: closed.append(True)), device="cpu")
    assert open_weight_group(trainer, "127.0.0.1", free_port(), 1, "gloo", 10) == 1
    assert closed == [True] and isinstance(trainer._weight_group, WeightGroup)
