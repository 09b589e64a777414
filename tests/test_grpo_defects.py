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
from trainer.settings import GRPOSettings, LoraSettings, OptimSettings, TrainerSettings

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


@pytest.mark.parametrize("micro_batch_size, skip", [(2, True), (4, False)], ids=["apart", "same-micro-batch"])
def test_dr_grpo_update_does_not_depend_on_the_longest_response_of_the_step(tiny_model_dir, micro_batch_size,
                                                                             skip):
    # The same first group, trained beside a second group whose responses are short or long: under
    # Dr.GRPO, the first group's gradient must not change with its neighbour's length. "same-micro-batch"
    # trains the second group's (zero-advantage) rows in the first group's micro-batch, padded to its
    # longest response: a divisor taken from the padded width instead of the horizon shows there.
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
        metrics = trainer.train_grpo(batch, GRPOSettings(
            loss_agg="seq-mean-token-sum-norm", horizon=32, tis_cap=None, micro_batch_size=micro_batch_size,
            skip_zero_advantage=skip))
        assert metrics["rows_trained"] == (2 if skip else 4)
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


def _reference_objective(logp, old, adv, mask, ref, entropy, agg, horizon, clip_low=0.2, clip_high=0.28,
                         kl_coef=0.1, entropy_coef=0.01):
    """The objective written out in python floats: surrogate + kl_coef * k3 - entropy_coef * entropy per token,
    each aggregated by ``agg`` (independent of trainer.losses' helpers)."""
    total, rows = 0.0, []
    for b in range(len(logp)):
        toks = [t for t in range(len(logp[b])) if mask[b][t]]
        row = 0.0
        for t in toks:
            ratio = math.exp(logp[b][t] - old[b][t])
            surrogate = max(-adv[b] * ratio, -adv[b] * min(max(ratio, 1 - clip_low), 1 + clip_high))
            delta = logp[b][t] - ref[b][t]
            row += surrogate + kl_coef * (math.exp(-delta) + delta - 1) - entropy_coef * entropy[b][t]
        rows.append((row, len(toks)))
        total += row
    if agg == "token-mean":
        return total / sum(n for _, n in rows)
    if agg == "seq-mean-token-mean":
        return sum(r / n for r, n in rows if n) / sum(1 for _, n in rows if n)
    return total / horizon / len(rows)


@pytest.mark.parametrize("agg", losses.LOSS_AGGS)
def test_grpo_objective_is_the_sum_of_its_terms_and_splits_into_micro_batch_shares(agg):
    logp, old, mask, adv, ref = _inputs()
    assert adv[2] > 0 > adv[1] and mask[2, 5] == 1
    # Ratios 1.25 and 1.5 on the positive row (inside and beyond clip-high 0.28), 0.6 on a negative one.
    for (b, t), ratio in {(2, 0): 1.25, (2, 5): 1.5, (1, 0): 0.6}.items():
        old[b, t] = logp[b, t] - math.log(ratio)
    ref[0, :2] = logp[0, :2] + torch.tensor([0.9, -0.9])  # k3 far from its quadratic regime
    entropy = torch.rand_like(logp)
    kw = dict(clip_low=0.2, clip_high=0.28, agg=agg, horizon=10, ref_logp=ref, kl_coef=0.1, entropy=entropy,
              entropy_coef=0.01)
    loss, sums = losses.grpo_objective(logp, old, adv, mask, **kw)
    want = _reference_objective(logp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), ref.tolist(),
                                entropy.tolist(), agg, 10)
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert float(sums["pg_loss"] + 0.1 * sums["kl"] - 0.01 * sums["entropy"]) == pytest.approx(want, rel=1e-5)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in sums.values())
    # Two halves with the whole batch's denominator add up to the whole (gradient accumulation).
    denominator = losses.aggregate_count(mask, agg)
    halves = [losses.grpo_objective(logp[s], old[s], adv[s], mask[s], denominator=denominator,
                                    **{**kw, "ref_logp": ref[s], "entropy": entropy[s]})[0]
              for s in (slice(0, 1), slice(1, 4))]
    assert float(sum(halves)) == pytest.approx(want, rel=1e-5)


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
    # Two paths to the same zero-gradient step: the zero-advantage rows run forward/backward (skip off) and
    # their backward gives every parameter an exact zero gradient; the masked rows never run, and the
    # parameters get their zero gradient from the optimizer step's fill.
    states, schedules = [], []
    for second, rows_trained in ((skipped, 4), (masked, 0)):
        trainer = _momentum_trainer(tiny_model_dir)
        trainer.train_grpo(signal, settings)
        middle = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        metrics = trainer.train_grpo(second, settings.model_copy(update={"skip_zero_advantage": False}))
        assert metrics["rows_trained"] == rows_trained and metrics["optimizer_steps"] == 4
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



# ---- rollout logprobs missing from every row (issue 13, defect 5) ------------------------------------------

@pytest.mark.parametrize("shape", ["batch-none", "row-none"])
def test_a_batch_without_any_rollout_logprobs_counts_its_rows_and_says_tis_is_off(tiny_model_dir, caplog, shape):
    # build_batch sends None for the whole batch when no engine returned logprobs; a hand-made batch may
    # carry None per row. Both count every kept row, and tis_cap set with nothing to weigh is said, once.
    trainer = PolicyTrainer(tiny_model_dir, TrainerSettings(precision="fp32"))
    batch = RolloutBatch(prompt_ids=[PROMPTS[0]] * 2 + [PROMPTS[1]] * 2, response_ids=RESPONSES, group_size=2,
                         rewards=[1, 0, 1, 0], advantages=[1.0, -1.0, 1.0, -1.0], truncated=[False] * 4,
                         loss_mask=[True, True, True, False],
                         rollout_logprobs=None if shape == "batch-none" else [None] * 4)
    with caplog.at_level("WARNING", logger="r1.trainer"):
        for _ in range(2):
            metrics = trainer.train_grpo(batch, GRPOSettings(tis_cap=2.0))
            assert metrics["rows_without_rollout_logprobs"] == 3.0  # the kept rows (one is masked out)
            assert "mismatch_abs_diff" not in metrics
    warnings = [r for r in caplog.records if "tis_cap=2.0" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    caplog.clear()
    with caplog.at_level("WARNING", logger="r1.trainer"):  # TIS off by choice: counted, nothing to say
        metrics = PolicyTrainer(tiny_model_dir, TrainerSettings(precision="fp32")).train_grpo(
            batch, GRPOSettings(tis_cap=None))
    assert metrics["rows_without_rollout_logprobs"] == 3.0 and not caplog.records


# ---- every trainable parameter takes the optimizer step (defect 6) ------------------------------------------

def test_a_parameter_no_forward_touched_still_takes_the_adamw_step(tiny_model_dir):
    # An MoE expert no token was routed to (here: a parameter the forward never reads) has no gradient after
    # the backward. AdamW skips a parameter whose grad is None: no weight decay, no moment decay. Every
    # trainable parameter must take the same step, that of a zero gradient.
    trainer = PolicyTrainer(tiny_model_dir, TrainerSettings(precision="fp32",
                                                            optim=OptimSettings(lr=0.1, weight_decay=0.5)))
    unused = torch.nn.Parameter(torch.ones(3))
    trainer.model.register_parameter("unrouted_expert", unused)
    trainer._build_optimizer()
    batch = RolloutBatch(prompt_ids=[PROMPTS[0]] * 2, response_ids=RESPONSES[:2], group_size=2, rewards=[1, 0],
                         advantages=[1.0, -1.0], truncated=[False] * 2)
    assert trainer.train_grpo(batch, GRPOSettings(tis_cap=None))["rows_trained"] == 2
    assert torch.allclose(unused.detach(), torch.full((3,), 1.0 - 0.1 * 0.5))  # decayed by lr * weight_decay
    state = trainer.optimizer.state[unused]
    assert int(state["step"]) == 1 and torch.equal(state["exp_avg"], torch.zeros(3))


# ---- the old-logprob pass is the first update's forward (defect 7) -----------------------------------------

@pytest.mark.parametrize("case", ["lora-dropout", "bf16"])
def test_the_first_mini_batch_of_several_updates_has_ratio_one(tiny_model_dir, case):
    # The first mini-batch is trained at the weights the old logprobs were taken at: its ratio must be 1 on
    # every token. It was not when the old pass ran in eval mode (LoRA dropout on in the update only) or
    # with other rows per micro-batch than the update (other padding: other bf16 rounding).
    lora = LoraSettings(rank=4, alpha=8, dropout=0.5) if case == "lora-dropout" else None
    trainer = PolicyTrainer(tiny_model_dir, TrainerSettings(precision="bf16" if case == "bf16" else "fp32",
                                                            lora=lora, optim=OptimSettings(lr=1e-2)))
    if lora:
        trainer.train_sft(PROMPTS, RESPONSES[:2])  # LoRA's B starts at 0, where dropout changes nothing
    batch = RolloutBatch(prompt_ids=[PROMPTS[0]] * 3 + [PROMPTS[1]] * 3,
                         response_ids=[RESPONSES[1], RESPONSES[0], [30, 31], RESPONSES[3], RESPONSES[1], [23]],
                         group_size=3, rewards=[1, 0, 0, 1, 0, 0], advantages=[1.0, -0.5, -0.5, 1.0, -0.5, -0.5],
                         truncated=[False] * 6)
    firsts = []
    minibatch = trainer._grpo_minibatch

    def record(*args, **kwargs):
        sums = minibatch(*args, **kwargs)
        firsts.append({k: float(v) for k, v in sums.items()})
        return sums

    trainer._grpo_minibatch = record
    trainer.train_grpo(batch, GRPOSettings(mini_batches=2, epochs=2, micro_batch_size=4, tis_cap=None))
    first = firsts[0]
    assert first["clip_fraction"] == 0.0
    assert first["ratio_mean"] / first["tokens"] == pytest.approx(1.0, abs=1e-6)
    assert first["approx_kl"] == pytest.approx(0.0, abs=1e-7)
