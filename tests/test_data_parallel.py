"""torch's data-parallel engines under the trainer group (trainer/data_parallel.py), in real 2-process gloo groups.

The whole-update comparisons (2 workers vs 1 on GRPO and SFT, via Ray) are in tests/test_trainer_group.py;
here: the group's backend string, the metric reduction on a device-mapped group, DDP's gradient sum, and
FSDP2's rank-0 weights and mixed precision.
"""
import multiprocessing
import tempfile

import pytest
import torch

from trainer import distributed


def _run(fn, world: int = 2, *args) -> list:
    """``fn(rank, world, init_method, *args)`` in ``world`` fresh processes (spawned: a clean torch.distributed
    in each); returns their results in rank order, or raises the first error."""
    ctx = multiprocessing.get_context("spawn")
    init = f"file://{tempfile.mktemp(prefix='r1-dp-')}"
    with ctx.Pool(world) as pool:
        results = [pool.apply_async(fn, (rank, world, init, *args)) for rank in range(world)]
        return [r.get(timeout=240) for r in results]


def test_a_gpu_group_carries_gloo_for_cpu_tensors():
    # NCCL has no CPU backend: the metric sums (CPU tensors) of a GPU group need gloo in the same group.
    assert distributed.backend_for("cuda") == "cpu:gloo,cuda:nccl"
    assert distributed.backend_for(torch.device("cuda", 1)) == "cpu:gloo,cuda:nccl"
    assert distributed.backend_for("cpu") == "gloo"


def _reduce_metrics(rank, world, init):
    import torch.distributed as dist

    distributed.init_group(init, rank, world, "cpu:gloo", 60)  # the device-mapped form of "cpu:gloo,cuda:nccl"
    try:
        totals = {"tokens": 3.0 + rank, "entropy": 1.0 + 2 * rank, "own": 5.0}
        if rank == 1:
            totals["kl"] = 0.25
        out = distributed.reduce_metrics(totals, ("tokens", "entropy", "kl", "absent"), mean_keys=("entropy", "kl"))
        return dist.get_backend(), out
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_metric_reduction_runs_on_a_device_mapped_group():
    (backend, r0), (_, r1) = _run(_reduce_metrics)
    assert "gloo" in backend
    # Sums over ranks; means over the ranks that have the key; a key no rank has stays absent; others pass.
    assert r0 == r1 | {"own": 5.0} == {"tokens": 7.0, "entropy": 2.0, "kl": 0.25, "own": 5.0}


class _Branches(torch.nn.Module):
    """Three linear maps: ``used`` on every rank (weighted by rank + 1), ``rank1`` on rank 1, ``never`` nowhere."""

    def __init__(self):
        super().__init__()
        self.used, self.rank1, self.never = (torch.nn.Linear(3, 2) for _ in range(3))

    def forward(self, x, rank):
        return self.used(x).sum() * (rank + 1) + (self.rank1(x).sum() if rank == 1 else 0.0)


def _ddp_sums(rank, world, init):
    import contextlib

    import torch.distributed as dist

    from trainer import data_parallel

    distributed.init_group(init, rank, world, "gloo", 60)
    try:
        torch.manual_seed(rank)  # different weights on each rank: the wrapper must start them all from rank 0's
        model = _Branches()
        ddp = data_parallel.replicate(model, torch.device("cpu"))
        start = {k: v.detach().clone() for k, v in model.state_dict().items()}
        xs = [torch.full((1, 3), float(rank + i + 1)) for i in range(2 - rank)]  # rank 0: two micro-batches
        for i, x in enumerate(xs):  # gradients stay local until the last backward (no_sync), then one sum
            with ddp.no_sync() if i < len(xs) - 1 else contextlib.nullcontext():
                ddp(x, rank).backward()
        return start, {n: (p.grad.clone() if p.grad is not None else None) for n, p in model.named_parameters()}
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_sums_the_ranks_gradients_and_skips_unused_parameters():
    (s0, g0), (s1, g1) = _run(_ddp_sums)
    assert all(torch.equal(s0[k], s1[k]) for k in s0)  # rank 0's weights everywhere
    # d/dW of sum(W x + b) * c is c * x per output row: rank 0: 1 * (x=1 + x=2), rank 1: 2 * (x=2).
    want_used = torch.full((2, 3), 1 * (1 + 2) + 2 * 2.0)
    for g in (g0, g1):
        assert torch.allclose(g["used.weight"], want_used)  # summed, not averaged (that would be half)
        assert torch.allclose(g["rank1.weight"], torch.full((2, 3), 2.0))  # rank 1's, plus rank 0's nothing
        assert g["never.weight"] is None  # no rank reached it: the optimizer step gives it a zero gradient


# bf16 parameters round the activations (the residual stream is bf16, not autocast's fp32): the group's update
# differs from one autocast worker's by bf16 rounding, not by 1e-4.
TOLERANCE_BF16 = 5e-2


def _settings(precision: str):
    from trainer.settings import OptimSettings, TrainerSettings

    return TrainerSettings(precision=precision, threads=1, optim=OptimSettings(lr=1e-3))


def _grpo_batch():
    """3 groups of 2, group 0 all-equal rewards (advantage 0: skipped); two mini-batches of micro-batches of 2:
    the first trains one row (rank 1 none), the second three (an odd number of micro-batches on one worker)."""
    from rollout.types import RolloutBatch

    prompts = [[5, 6, 7, 8, 9]] * 2 + [[10, 11]] * 2 + [[12, 13, 14]] * 2
    responses = [[20, 21, 22], [23], [24, 25, 26, 27, 28], [29, 30], [31, 32, 33, 34], [23]]
    return RolloutBatch(prompt_ids=prompts, response_ids=responses, group_size=2, rewards=[1, 1, 1, 0, 0, 1],
                        advantages=[0.0, 0.0, 1.0, -1.0, -0.7, 0.7], truncated=[False] * 6)


def _steps(trainer) -> list[float]:
    """One GRPO update (two optimizer steps) and one SFT step: what the group and one worker both take.
    Returns the gradient norms and losses (Adam's update barely moves with the gradient's scale: these do)."""
    from trainer.settings import GRPOSettings

    grpo = trainer.train_grpo(_grpo_batch(), GRPOSettings(mini_batches=2, micro_batch_size=2, tis_cap=None))
    sft = trainer.train_sft([[5, 6, 7], [8, 9], [10]], [[20, 21], [22], [23, 24]], micro_batch_size=1)
    return [grpo["grad_norm"], grpo["pg_loss"], sft["grad_norm"], sft["loss"]]


def _group_steps(rank, world, init, model_dir, parallel, precision):
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from trainer.policy import PolicyTrainer

    trainer = PolicyTrainer(model_dir, _settings(precision), weights_from_rank0=rank > 0 and parallel == "fsdp")
    built_empty = next(trainer.model.parameters()).is_meta
    # A device-mapped backend string, as backend_for gives a GPU group ("cpu:gloo,cuda:nccl"): every collective
    # of the steps (gradients, metric sums) finds its backend by the tensor's device.
    trainer.join_group(init, rank, world, parallel, 60, backend="cpu:gloo")
    try:
        seen = []
        layer = trainer.model.model.layers[0].self_attn.q_proj
        layer.register_forward_pre_hook(lambda m, _: seen.append(m.weight.dtype))
        metrics = _steps(trainer)
        master = {p.dtype for p in trainer.model.parameters()}
        full = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        buffers = {n: b.clone() for n, b in trainer.model.named_buffers()}
        return built_empty, set(seen), master, full, buffers, metrics
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("parallel,precision,compute", [("fsdp", "bf16", torch.bfloat16),
                                                        ("fsdp", "fp32", torch.float32),
                                                        ("replicate", "fp32", torch.float32)])
def test_the_group_takes_rank0_weights_and_the_one_worker_update(tiny_model_dir, parallel, precision, compute):
    """2 workers (DDP or FSDP2 with its mixed precision) vs 1 on a GRPO update with a zero-advantage group and an
    odd micro-batch count, then an SFT step with more micro-batches on one rank than the other."""
    from trainer.policy import PolicyTrainer

    (empty0, seen0, master0, full, buf0, got0), (empty1, seen1, master1, _, buf1, got1) = _run(
        _group_steps, 2, tiny_model_dir, parallel, precision)
    assert (empty0, empty1) == (False, parallel == "fsdp")  # under FSDP only rank 0 read the weights
    assert seen0 == seen1 == {compute}  # the (all-gathered) parameters the forward uses
    assert master0 == master1 == {torch.float32}  # the sharded master weights AdamW updates
    assert all(torch.equal(buf0[k], buf1[k]) for k in buf0)  # rotary tables: rank 0's, not to_empty's garbage
    # The same steps on one worker, from the files (rank 1 of FSDP started from rank 0's weights, not noise).
    single = PolicyTrainer(tiny_model_dir, _settings(precision))
    start = {k: v.clone() for k, v in single.model.state_dict().items()}
    want_metrics = _steps(single)
    tolerance = TOLERANCE_BF16 if precision == "bf16" else 1e-5
    assert got0 == got1 and got0 == pytest.approx(want_metrics, rel=tolerance), (got0, want_metrics)
    want = single.model.state_dict()
    keys = sorted(want)
    got, want, start = (torch.cat([d[k].flatten().double() for k in keys]) for d in (full, want, start))
    rel = float((got - want).norm() / (want - start).norm())  # on the update, as the group tests measure
    print(f"{parallel} {precision} vs one worker: relative difference of the updates {rel:.2e}")
    assert rel < (TOLERANCE_BF16 if precision == "bf16" else 1e-4), rel
    if parallel == "fsdp":
        # The same mixed precision over one worker (FSDP2 on a group of 1): sharding alone must not move the
        # update beyond the tolerance of the fp32 comparisons above.
        [(_, seen_one, _, full_one, _, got_one)] = _run(_group_steps, 1, tiny_model_dir, parallel, precision)
        assert seen_one == {compute}
        assert got0 == pytest.approx(got_one, rel=1e-5), (got0, got_one)
        one = torch.cat([full_one[k].flatten().double() for k in keys])
        rel_one = float((got - one).norm() / (one - start).norm())
        print(f"{parallel} {precision}, 2 workers vs 1 under the same policy: {rel_one:.2e}")
        assert rel_one < 1e-4, rel_one


def test_a_trainer_without_weights_joins_only_an_fsdp_group(tiny_model_dir):
    from trainer.policy import PolicyTrainer

    trainer = PolicyTrainer(tiny_model_dir, _settings("fp32"), weights_from_rank0=True)
    assert next(trainer.model.parameters()).is_meta
    # Refused before joining: nothing would ever fill its weights (a lone worker, or replicas that each load).
    for world, parallel in ((1, "fsdp"), (2, "replicate")):
        with pytest.raises(ValueError, match="weights_from_rank0"):
            trainer.join_group("tcp://127.0.0.1:1", 0, world, parallel, timeout_s=5)
