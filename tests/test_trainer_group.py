"""A trainer group (N workers, one torch.distributed group) takes the update one worker takes on the whole batch.

Fast: the row split, the metric reduction's bookkeeping and the optimizer-state renaming (pure functions).
Slow (Ray, gloo on CPU): 2 workers vs 1 on one GRPO step, replicated and FSDP2; save at 2, resume at 1.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from rollout.types import RolloutBatch
from trainer import distributed
from trainer.checkpoint_legacy import optimizer_state_by_name
from trainer.losses import aggregate_count
from trainer.policy import PolicyTrainer, _trained_order
from trainer.settings import GRPOSettings, OptimSettings, TrainerSettings

ROOT = Path(__file__).resolve().parent.parent

# ---- pure functions (fast) ------------------------------------------------------------------------------


@pytest.mark.parametrize("n,world", [(7, 2), (3, 4), (0, 3), (8, 1), (10, 3)])
def test_rank_shares_are_contiguous_disjoint_and_cover_every_row(n, world):
    items = list(range(100, 100 + n))
    parts = [distributed.rank_share(items, r, world) for r in range(world)]
    assert sum(parts, []) == items  # in order, each row exactly once
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_a_prompt_group_stays_on_one_rank_when_the_split_allows():
    # Rows sorted by prompt (as the trainer sorts them): two groups of 3 over 2 ranks split at the boundary.
    prompts = [[1, 2]] * 3 + [[3]] * 3
    responses = [[5], [5, 6], [5, 6, 7]] * 2
    trained = _trained_order([5, 0, 3, 1, 4, 2], prompts, responses, frozenset())
    parts = [distributed.rank_share(trained, r, 2) for r in range(2)]
    assert [{tuple(prompts[i]) for i in p} for p in parts] == [{(1, 2)}, {(3,)}]


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_the_loss_denominator_is_the_whole_mini_batch_whatever_the_split(agg):
    # Each rank divides its rows' loss sum by the whole mini-batch's count, so the shares add up to the
    # single worker's loss for any number of workers (a per-rank denominator would not).
    torch.manual_seed(0)
    lengths = [3, 1, 5, 2, 4, 2, 6]
    mask = (torch.arange(6).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)).float()
    per_token = torch.randn(len(lengths), 6) * mask
    denominator = aggregate_count(mask, agg)
    row_sums = per_token.sum(1) if agg != "seq-mean-token-mean" else per_token.sum(1) / mask.sum(1)
    whole = float(row_sums.sum() / denominator)
    for world in (1, 2, 3, 4):
        shares = [distributed.rank_share(list(range(len(lengths))), r, world) for r in range(world)]
        split = sum(float(row_sums[s].sum() / denominator) for s in shares)
        assert split == pytest.approx(whole, rel=1e-6), world
        own = sum(float(row_sums[s].sum() / aggregate_count(mask[s], agg)) for s in shares if s)
        if world > 1:
            assert own != pytest.approx(whole, rel=1e-3), world  # what a per-rank denominator would give


def _by_index(state: dict, names: list[str]) -> dict:
    """The inverse of ``optimizer_state_by_name``: the numbered form ``Optimizer.load_state_dict`` takes."""
    index = {n: i for i, n in enumerate(names)}
    return {"state": {index[n]: v for n, v in state["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]]}


def test_optimizer_state_renaming_round_trips():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    names = [n for n, _ in model.named_parameters()]
    by_name = optimizer_state_by_name(opt.state_dict(), names)
    assert set(by_name["state"]) == set(names) and by_name["param_groups"][0]["params"] == names
    back = _by_index(by_name, names)
    fresh = torch.optim.AdamW(model.parameters(), lr=0.1)
    fresh.load_state_dict(back)
    for i in range(len(names)):
        assert torch.equal(fresh.state_dict()["state"][i]["exp_avg"], opt.state_dict()["state"][i]["exp_avg"])


def test_calls_go_to_every_rank_except_exports_of_replicas():
    from pipeline.trainer_group import TrainerGroup

    replicas, shards = TrainerGroup(["w0", "w1"], "replicate"), TrainerGroup(["w0", "w1"], "fsdp")
    assert replicas.ranks_for("train_grpo") == ["w0", "w1"] and replicas.ranks_for("load_checkpoint") == ["w0", "w1"]
    assert replicas.ranks_for("inference_state_dict") == ["w0"]
    assert replicas.ranks_for("save_checkpoint") == ["w0", "w1"]  # DCP: every rank writes its part
    # Gathering FSDP shards is a collective: every rank takes part.
    assert shards.ranks_for("inference_state_dict") == shards.ranks_for("save_pretrained") == ["w0", "w1"]


def test_kill_actor_kills_every_worker_of_a_group(monkeypatch):
    import ray

    from pipeline.trainer_group import TrainerGroup, kill_actor

    killed = []
    monkeypatch.setattr(ray, "kill", killed.append)
    kill_actor(TrainerGroup(["w0", "w1", "w2"]))
    kill_actor("plain")
    assert killed == ["w0", "w1", "w2", "plain"]


@pytest.mark.parametrize("parallel,empty", [("fsdp", [False, True, True]), ("replicate", [False, False, False])])
def test_only_rank0_reads_the_weights_under_fsdp(monkeypatch, parallel, empty):
    # start_trainer_group on a stand-in for Ray: which constructor arguments each rank gets.
    import ray

    from pipeline import placement
    from pipeline.config import load_config
    from pipeline.trainer_group import start_trainer_group

    made = []

    class Worker:
        def __init__(self, *args, **kwargs):
            made.append(kwargs.get("weights_from_rank0", False))
            self.node_address = self.join_group = self

        def remote(self, *args, **kwargs):
            return ("127.0.0.1", 1) if not args else args[1]

    class Remote:
        def options(self, **_):
            return self

        def remote(self, *args, **kwargs):
            return Worker(*args, **kwargs)

    monkeypatch.setattr(ray, "remote", lambda cls: Remote())
    monkeypatch.setattr(ray, "get", lambda refs, timeout=None: refs)
    monkeypatch.setattr(placement, "actor_options", lambda *a, **k: {})
    cfg = load_config(ROOT / "configs" / "quickstart.yaml",
                      ["cluster.trainer_workers=3", f"cluster.trainer_parallel={parallel}", "cluster.threads=1"])
    start_trainer_group(cfg, "model", "settings")
    assert made == empty


# ---- the group on Ray (slow) ----------------------------------------------------------------------------

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
RESPONSES = [[20, 21, 22], [23], [24, 25, 26, 27, 28], [29, 30], [31, 32, 33, 34]]


def _batch(policy_logprobs=None) -> RolloutBatch:
    """3 groups of 2: group 0 all-equal rewards (advantage 0: skipped), groups 1-2 with signal. Two
    mini-batches (rows 0-2, 3-5): the first trains one row (a second worker gets none), the second three
    (micro-batches of 2: three in all on one worker, an odd number)."""
    prompts = [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2 + [PROMPTS[2]] * 2
    responses = [RESPONSES[0], RESPONSES[1], RESPONSES[2], RESPONSES[3], RESPONSES[4], RESPONSES[1]]
    rollout = None
    if policy_logprobs is not None:  # the engine's logprobs: the policy's own, a little off; one row without
        rollout = [[v - 0.05 * (j % 3) for j, v in enumerate(lp)] for lp in policy_logprobs]
        rollout[4] = None
    return RolloutBatch(prompt_ids=prompts, response_ids=responses, group_size=2, rewards=[1, 1, 1, 0, 0, 1],
                        advantages=[0.0, 0.0, 1.0, -1.0, -0.7, 0.7], truncated=[False] * 6,
                        rollout_logprobs=rollout)


GRPO = GRPOSettings(mini_batches=2, micro_batch_size=2, clip_low=0.2, clip_high=0.28)
COMPARED = ("pg_loss", "clip_fraction", "ratio_mean", "approx_kl", "mismatch_abs_diff", "mismatch_k3", "grad_norm",
            "rows_trained", "rows_skipped_zero_advantage", "optimizer_steps")


def _settings() -> TrainerSettings:
    return TrainerSettings(precision="fp32", threads=1, optim=OptimSettings(lr=1e-3))


def _flat(state: dict) -> np.ndarray:
    return np.concatenate([np.asarray(state[k], dtype=np.float64).ravel() for k in sorted(state)])


def _assert_same_update(got: dict, want: dict, start: dict, rtol: float) -> float:
    """``got`` and ``want`` weights agree; the tolerance is on the update (weights minus ``start``), the
    stricter measure. Returns the relative difference of the updates."""
    g, w, s = _flat(got), _flat(want), _flat(start)
    assert np.linalg.norm(w - s) > 0
    rel = float(np.linalg.norm((g - s) - (w - s)) / np.linalg.norm(w - s))
    assert rel < rtol, rel
    return rel


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    from pipeline import placement

    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}})
    yield
    placement.release_placement()
    ray.shutdown()


def _group(tiny_model_dir, parallel: str, workers: int = 2):
    from pipeline.config import load_config
    from pipeline.trainer_group import start_trainer_group

    cfg = load_config(ROOT / "configs" / "quickstart.yaml",
                      [f"cluster.trainer_workers={workers}", f"cluster.trainer_parallel={parallel}",
                       "cluster.threads=1", "cluster.timeout_s=120", "cluster.allocator=system"])
    return start_trainer_group(cfg, tiny_model_dir, _settings())


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["replicate", "fsdp"])
def test_two_workers_take_the_one_worker_update(tiny_model_dir, ray_cluster, parallel):
    import ray

    single = PolicyTrainer(tiny_model_dir, _settings())
    start = single.inference_state_dict()
    batch = _batch(single.batch_logprobs(_batch()))
    group = _group(tiny_model_dir, parallel)

    def count_rows(trainer):  # (local: Ray pickles it by value into the workers)
        """From now on, record the rows of each forward on this worker: those that train (with gradients)
        and those scored for the old logprobs (without); and which engine sums the gradients."""
        trainer.rows_seen, trainer.old_rows_seen, forward = [], [], trainer._forward

        def counted(prompts, responses, **kw):
            (trainer.rows_seen if torch.is_grad_enabled() else trainer.old_rows_seen).append(len(prompts))
            return forward(prompts, responses, **kw)
        trainer._forward = counted
        engine = "FSDP" if trainer._sharded else type(trainer._ddp).__name__
        return trainer.rank, trainer.world_size, engine

    try:
        engine = "FSDP" if parallel == "fsdp" else "DistributedDataParallel"
        assert ray.get([w.__ray_call__.remote(count_rows) for w in group.workers]) == [(0, 2, engine), (1, 2, engine)]
        got = ray.get(group.train_grpo.remote(batch, GRPO))
        group.check()
        # The work was split: mini-batch 1 trains row 2 on rank 0 (rank 1 none), mini-batch 2 rows 3, 5 | 4;
        # the old logprobs too: each rank scores the rows it trains, in the same micro-batches.
        seen = ray.get([w.__ray_call__.remote(lambda t: (t.rows_seen, t.old_rows_seen)) for w in group.workers])
        assert seen == [([1, 2], [1, 2]), ([1], [1])], seen
        want = single.train_grpo(batch, GRPO)
        weights = ray.get(group.inference_state_dict.remote())
        rel = _assert_same_update(weights, single.inference_state_dict(), start, 1e-4)
        print(f"{parallel}: relative difference of the updates {rel:.2e}")
        for k in COMPARED:
            assert got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-7), k
        assert want["rows_trained"] == 4 and want["optimizer_steps"] == 2
        print(parallel, {k: got[k] for k in COMPARED})
        if parallel == "replicate":  # the replicas stay identical
            replicas = ray.get([w.__ray_call__.remote(lambda t: {k: v.detach().clone() for k, v in
                                                                 t.model.state_dict().items()})
                                for w in group.workers])
            assert all(torch.equal(replicas[0][k], replicas[1][k]) for k in replicas[0])
        # SFT: 3 examples, one per micro-batch: rank 0 trains two, rank 1 one; the token-mean is global.
        got = ray.get(group.train_sft.remote(PROMPTS, RESPONSES[:3], micro_batch_size=1))
        group.check()
        want = single.train_sft(PROMPTS, RESPONSES[:3], micro_batch_size=1)
        rel = _assert_same_update(ray.get(group.inference_state_dict.remote()), single.inference_state_dict(),
                                  weights, 1e-4)
        print(f"{parallel} SFT: relative difference of the updates {rel:.2e}")
        for k in ("loss", "grad_norm", "tokens"):
            assert got[k] == pytest.approx(want[k], rel=1e-5), k
    finally:
        group.kill()


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["replicate", "fsdp"])
def test_saved_by_two_workers_resumes_on_one(tiny_model_dir, ray_cluster, tmp_path, parallel):
    import ray

    single = PolicyTrainer(tiny_model_dir, _settings())
    batch = _batch(single.batch_logprobs(_batch()))
    group = _group(tiny_model_dir, parallel)
    try:
        ray.get(group.train_grpo.remote(batch, GRPO))
        ray.get(group.save_checkpoint.remote(str(tmp_path / "ckpt")))
        at_save = ray.get(group.inference_state_dict.remote())
        ray.get(group.train_grpo.remote(batch, GRPO))
        group.check()
        two = ray.get(group.inference_state_dict.remote())
    finally:
        group.kill()
    resumed = PolicyTrainer(tiny_model_dir, _settings())
    resumed.load_checkpoint(tmp_path / "ckpt")
    assert resumed.optimizer_steps == 2
    resumed.train_grpo(batch, GRPO)
    single.train_grpo(batch, GRPO)
    single.train_grpo(batch, GRPO)
    one = resumed.inference_state_dict()
    print(parallel, "resumed vs 2 workers:", _assert_same_update(one, two, at_save, 1e-4),
          "resumed vs uninterrupted:", _assert_same_update(one, single.inference_state_dict(), at_save, 1e-4))
