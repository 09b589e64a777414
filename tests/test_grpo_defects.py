"""GRPO defects found on review (issue 13), each pinned by a test that failed before its fix."""
import math

import pytest
import torch

from pipeline.config import ConfigError, load_config
from rollout.types import Completion, Generation, RolloutBatch, SamplingSpec
from stages.grpo import RLPlan
from stages.grpo_batch import build_batch
from stages.grpo_knobs import GRPOLoop
from trainer import losses
from trainer.policy import PolicyTrainer
from trainer.settings import GRPOSettings, OptimSettings, TrainerSettings

PROMPTS = [[5, 6, 7, 8, 9], [10, 11]]
RESPONSES = [[20, 21, 22], [24, 25, 26, 27, 28], [23], [20, 21]]


# ---- advantages ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("value", [1.6, 0.6, 0.1, 1.5, 0.0])
def test_an_all_equal_group_has_exactly_zero_advantages(scale, value):
    # 1.6 = 1.0 + 0.5 + 0.1 is what a weighted sum of rewards gives; its float32 mean over 8 is one ulp off,
    # and that ulp / (0 + eps) used to come out as ~0.1 per sample.
    rewards = torch.tensor([value] * 8 + [0.0, 1.0] * 4)
    adv = losses.grpo_advantages(rewards, 8, scale)
    assert torch.equal(adv[:8], torch.zeros(8))
    assert adv[8:].abs().min() > 0  # the mixed group still carries its signal


# ---- aggregation: Dr.GRPO's constant horizon ---------------------------------------------------------------

def test_seq_mean_token_sum_norm_divides_by_the_horizon_not_the_batch_width():
    values = torch.tensor([[1.0, 2.0, 3.0]])
    mask = torch.ones(1, 3)
    padded_values = torch.cat([values, torch.zeros(1, 5)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(1, 5)], dim=1)
    narrow = losses.aggregate(values, mask, "seq-mean-token-sum-norm", horizon=16)
    wide = losses.aggregate(padded_values, padded_mask, "seq-mean-token-sum-norm", horizon=16)
    assert float(narrow) == float(wide) == pytest.approx(6.0 / 16)


def test_dr_grpo_update_does_not_depend_on_the_longest_response_of_the_step(tiny_model_dir):
    # The same first group, trained beside a second group whose responses are short or long: under
    # Dr.GRPO, the first group's gradient must not change with its neighbour's length.
    grads = []
    for tail in ([23], [23] * 12):
        trainer = PolicyTrainer(tiny_model_dir, TrainerSettings(precision="fp32"))
        trainer.optimizer = torch.optim.SGD(trainer.model.parameters(), lr=0.0)
        batch = RolloutBatch(prompt_ids=[PROMPTS[0]] * 2 + [PROMPTS[1]] * 2,
                             response_ids=[RESPONSES[0], RESPONSES[1], tail, tail], group_size=2,
                             rewards=[1, 0, 0, 0], advantages=[1.0, -1.0, 0.0, 0.0], truncated=[False] * 4)
        captured = {}
        step = trainer._optimizer_step

        def keep_grads():
            captured.update({n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None})
            return step()

        trainer._optimizer_step = keep_grads
        trainer.train_grpo(batch, GRPOSettings(loss_agg="seq-mean-token-sum-norm", horizon=32, tis_cap=None,
                                               micro_batch_size=2))
        grads.append(captured)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-7), name


def test_dr_grpo_without_a_horizon_is_refused(tiny_model_dir):
    trainer = PolicyTrainer(tiny_model_dir, TrainerSettings(precision="fp32"))
    batch = RolloutBatch(prompt_ids=[PROMPTS[0]] * 2, response_ids=RESPONSES[:2], group_size=2,
                         rewards=[1, 0], advantages=[1.0, -1.0], truncated=[False] * 2)
    with pytest.raises(ValueError, match="horizon"):
        trainer.train_grpo(batch, GRPOSettings(loss_agg="seq-mean-token-sum-norm"))


def test_the_pipeline_sets_the_horizon_to_max_new_tokens():
    from pipeline.rl import grpo_settings

    assert grpo_settings(load_config(None, ["rollout.max_new_tokens=77"])).horizon == 77
    assert grpo_settings(load_config(None, ["rollout.max_new_tokens=77", "rl.sampling.max_new_tokens=50"])).horizon == 50


# ---- the whole objective in one pure function --------------------------------------------------------------

def _inputs(seed=0, b=4, t=6):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(b, t, generator=g) * 2
    old = logp + (torch.rand(b, t, generator=g) - 0.5) * 0.6
    mask = (torch.rand(b, t, generator=g) > 0.3).float()
    mask[:, 0] = 1.0
    return logp, old, mask, torch.randn(b, generator=g), -torch.rand(b, t, generator=g) * 2


@pytest.mark.parametrize("agg", losses.LOSS_AGGS)
def test_grpo_objective_is_the_sum_of_its_terms_and_splits_into_micro_batch_shares(agg):
    logp, old, mask, adv, ref = _inputs()
    entropy = torch.rand_like(logp)
    kw = dict(clip_low=0.2, clip_high=0.28, agg=agg, horizon=10, ref_logp=ref, kl_coef=0.1, entropy=entropy,
              entropy_coef=0.01)
    loss, sums = losses.grpo_objective(logp, old, adv, mask, **kw)
    pg = losses.aggregate(losses._surrogate(logp, old, adv, mask, 0.2, 0.28, "token")[0], mask, agg, horizon=10)
    kl = losses.aggregate(losses.kl_penalty(logp, ref, "k3"), mask, agg, horizon=10)
    ent = losses.aggregate(entropy, mask, agg, horizon=10)
    assert float(loss) == pytest.approx(float(pg + 0.1 * kl - 0.01 * ent), rel=1e-6)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in sums.values())
    # Two halves with the whole batch's denominator add up to the whole (gradient accumulation).
    denominator = losses.aggregate_count(mask, agg)
    halves = [losses.grpo_objective(logp[s], old[s], adv[s], mask[s], denominator=denominator,
                                    **{**kw, "ref_logp": ref[s], "entropy": entropy[s]})[0]
              for s in (slice(0, 1), slice(1, 4))]
    assert float(sum(halves)) == pytest.approx(float(loss), rel=1e-6)


def test_tis_weights_are_one_on_rows_without_rollout_logprobs():
    logp, old, mask, adv, rollout = _inputs(1)
    valid = torch.tensor([True, False, True, False])
    kw = dict(agg="token-mean", tis_cap=2.0)
    loss, sums = losses.grpo_objective(logp, old, adv, mask, rollout_logp=rollout, rollout_valid=valid, **kw)
    weights = torch.where(valid.unsqueeze(-1), losses.truncated_is_weights(old, rollout, 2.0), torch.ones_like(old))
    per_token = losses._surrogate(logp, old, adv, mask, 0.2, 0.28, "token")[0] * weights
    assert float(loss) == pytest.approx(float(losses.aggregate(per_token, mask)), rel=1e-6)
    assert float(sums["mismatch_tokens"]) == float(mask[valid].sum())


def test_missing_rollout_logprobs_stay_missing_and_are_counted(tiny_model_dir):
    # build_batch used to fill them with 0.0 (probability 1), which made TIS weights min(p, cap).
    gens = [Generation(prompt_ids=PROMPTS[0], completions=[
        Completion(text="a", token_ids=RESPONSES[0], logprobs=[-0.5] * 3, finish_reason="stop"),
        Completion(text="b", token_ids=RESPONSES[1], logprobs=None, finish_reason="stop")])]
    plan = RLPlan(train=[], test=[], tokenizer=None, system_prompt=None,
                  loop=GRPOLoop(steps=1, prompts_per_step=1, group_size=2), sampling=SamplingSpec(n=2),
                  eval_sampling=SamplingSpec(n=1), eval_ks=[1], grpo=GRPOSettings())
    batch = build_batch(gens, [(1.0, {}), (0.0, {})], plan)
    assert batch.rollout_logprobs == [[-0.5] * 3, None]
    trainer = PolicyTrainer(tiny_model_dir, TrainerSettings(precision="fp32"))
    metrics = trainer.train_grpo(batch, GRPOSettings())
    assert metrics["rows_without_rollout_logprobs"] == 1.0 and metrics["rows_trained"] == 2
    # The mismatch is measured on the row that has rollout logprobs only: |logp_train - (-0.5)| averaged.
    want = trainer.batch_logprobs(RolloutBatch(prompt_ids=[PROMPTS[0]], response_ids=[RESPONSES[0]], group_size=1))
    assert metrics["mismatch_abs_diff"] == pytest.approx(sum(abs(x + 0.5) for x in want[0]) / 3, rel=1e-3)


# ---- the optimizer steps the same way whatever the batch held -----------------------------------------------

def _momentum_trainer(tiny_model_dir):
    trainer = PolicyTrainer(tiny_model_dir, TrainerSettings(precision="fp32", optim=OptimSettings(warmup_steps=4)))
    trainer.optimizer = torch.optim.SGD(trainer.model.parameters(), lr=0.5, momentum=0.9)
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, trainer._lr_factor)
    return trainer


def test_a_fully_masked_batch_steps_like_a_fully_skipped_one(tiny_model_dir):
    settings = GRPOSettings(micro_batch_size=2, tis_cap=None, mini_batches=2)
    signal = RolloutBatch(prompt_ids=[PROMPTS[0]] * 2 + [PROMPTS[1]] * 2, response_ids=RESPONSES, group_size=2,
                          rewards=[1, 0, 1, 0], advantages=[1.0, -1.0, 1.0, -1.0], truncated=[False] * 4)
    skipped = RolloutBatch(prompt_ids=signal.prompt_ids, response_ids=RESPONSES, group_size=2, rewards=[0] * 4,
                           advantages=[0.0] * 4, truncated=[False] * 4)
    masked = RolloutBatch(prompt_ids=signal.prompt_ids, response_ids=RESPONSES, group_size=2, rewards=[1, 0, 1, 0],
                          advantages=[1.0, -1.0, 1.0, -1.0], truncated=[False] * 4, loss_mask=[False] * 4)
    states, schedules = [], []
    for second in (skipped, masked):
        trainer = _momentum_trainer(tiny_model_dir)
        trainer.train_grpo(signal, settings)
        middle = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        metrics = trainer.train_grpo(second, settings)
        assert metrics["rows_trained"] == 0 and metrics["optimizer_steps"] == 4
        assert any(not torch.equal(middle[k], v) for k, v in trainer.model.state_dict().items())  # momentum moved
        states.append(trainer.model.state_dict())
        schedules.append((trainer.scheduler.last_epoch, trainer.scheduler.get_last_lr()))
    assert schedules[0] == schedules[1]
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


# ---- config: combinations that would silently train the wrong thing ----------------------------------------

def test_gradient_checkpointing_with_shared_prefix_is_refused(tiny_model_dir):
    with pytest.raises(ConfigError, match="trainer: gradient_checkpointing=true with shared_prefix=true") as err:
        load_config(None, ["trainer.gradient_checkpointing=true"])
    assert "\n" not in str(err.value)
    load_config(None, ["trainer.gradient_checkpointing=true", "trainer.shared_prefix=false"])  # fine
    with pytest.raises(ValueError, match="shared_prefix"):
        PolicyTrainer(tiny_model_dir, TrainerSettings(gradient_checkpointing=True, shared_prefix=True))


def test_tis_with_top_p_below_one_is_refused():
    with pytest.raises(ConfigError, match="rl: top_p=0.9 with tis_cap=2.0") as err:
        load_config(None, ["rl.sampling.top_p=0.9"])
    assert "\n" not in str(err.value)
    assert load_config(None, ["rl.sampling.top_p=0.9", "rl.tis_cap=null"]).rl.sampling.top_p == 0.9
    with pytest.raises(ConfigError, match="general_rl: top_p"):
        load_config(None, ["general_rl.sampling.top_p=0.5"])


def test_adam_betas_and_eps_come_from_the_config(tiny_model_dir):
    from pipeline.cluster import trainer_settings

    cfg = load_config(None, ["trainer.optim.betas=[0.8, 0.95]", "trainer.optim.eps=1.0e-6"])
    settings = trainer_settings(cfg)
    assert settings.optim.betas == (0.8, 0.95) and settings.optim.eps == 1e-6
    settings.threads = None
    group = PolicyTrainer(tiny_model_dir, settings).optimizer.param_groups[0]
    assert tuple(group["betas"]) == (0.8, 0.95) and group["eps"] == 1e-6
    with pytest.raises(ConfigError, match="trainer.optim.betas"):
        load_config(None, ["trainer.optim.betas=[0.9]"])
    assert math.isclose(load_config(None).trainer.optim.eps, 1e-8)

