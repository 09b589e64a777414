"""Weights over a collective (rollout/weight_broadcast.py): the bucket plan both sides derive, and a real gloo
broadcast from a sender to two receivers (threads of this process, each with its own group member)."""
import threading

import pytest
import torch

from rollout.weight_broadcast import WeightGroup, bucket_plan, tensor_specs
from tests.ray_cluster import free_port


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

    threads = [threading.Thread(target=member, args=(r,)) for r in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
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
