"""The trainer's model code on a tiny random Llama: padding layout, logprobs, GRPO/SFT updates, LoRA, checkpoints."""
import math

import pytest
import torch

from helpers import teacher_forced_logprobs
from rollout.types import RolloutBatch
from trainer import losses
from trainer.policy import Policy, PolicyTrainer
from trainer.sequences import pad_rows, response_logprobs
from trainer.settings import GRPOSettings, LoraSettings, OptimSettings, TrainerSettings

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
RESPONSES = [[20, 21, 22], [23], [24, 25, 26, 27, 28]]


def test_pad_rows_left_pads_prompts_and_right_pads_responses():
    rows = pad_rows(PROMPTS, RESPONSES, pad_id=0)
    assert rows.input_ids.shape == (3, 5 + 5)
    assert rows.input_ids[1].tolist() == [0, 0, 0, 10, 11, 23, 0, 0, 0, 0]
    assert rows.attention_mask[1].tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 0, 0]
    assert rows.position_ids[1, 3:6].tolist() == [0, 1, 2]  # positions start at the first real token
    assert rows.response_mask.sum(1).tolist() == [3, 1, 5]
    with pytest.raises(ValueError, match="shorter"):
        pad_rows(PROMPTS, RESPONSES, pad_id=0, response_width=2)
    with pytest.raises(ValueError, match="empty"):
        pad_rows([[]], [[1]], pad_id=0)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_padded_logprobs_equal_unpadded_teacher_forcing(tiny_model_dir, temperature):
    policy = Policy(tiny_model_dir, TrainerSettings(precision="fp32"))
    got = policy.logprobs(PROMPTS, RESPONSES, temperature=temperature, micro_batch_size=3)
    for prompt, response, lp in zip(PROMPTS, RESPONSES, got):
        want = teacher_forced_logprobs(policy.model, prompt, response, temperature)
        assert lp == pytest.approx(want, abs=1e-5)


def test_entropy_is_that_of_the_tempered_distribution(tiny_model_dir):
    policy = Policy(tiny_model_dir, TrainerSettings(precision="fp32"))
    rows = pad_rows(PROMPTS[:1], RESPONSES[:1], pad_id=0)
    with torch.no_grad():
        _, entropy = response_logprobs(policy.model, rows, temperature=0.5, with_entropy=True)
        logits = policy.model(torch.tensor([PROMPTS[0] + RESPONSES[0]])).logits[0, 4:7].float() / 0.5
    p = logits.softmax(-1)
    assert entropy[0].tolist() == pytest.approx((-(p * p.log()).sum(-1)).tolist(), abs=1e-4)


def _batch(advantages, rollout_logprobs=None):
    prompts = [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2
    responses = [RESPONSES[0], RESPONSES[2], RESPONSES[1], RESPONSES[0]]
    return RolloutBatch(prompt_ids=prompts, response_ids=responses, group_size=2, rewards=[1, 0, 0, 1],
                        advantages=advantages, truncated=[False] * 4, rollout_logprobs=rollout_logprobs)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_grpo_update_raises_good_and_lowers_bad_responses(tiny_model_dir, agg):
    trainer = PolicyTrainer(tiny_model_dir, TrainerSettings(precision="fp32", optim=OptimSettings(lr=1e-2)))
    batch = _batch([1.0, -1.0, -1.0, 1.0])
    before = trainer.batch_logprobs(batch)
    metrics = trainer.train_grpo(batch, GRPOSettings(loss_agg=agg, micro_batch_size=1, tis_cap=None, horizon=8))
    after = trainer.batch_logprobs(batch)
    gain = [sum(a) - sum(b) for a, b in zip(after, before)]
    assert gain[0] > 0 and gain[3] > 0 and gain[1] < 0 and gain[2] < 0
    assert metrics["rows_trained"] == 4 and metrics["grad_norm"] > 0 and "entropy" in metrics


def test_micro_batching_does_not_change_the_update(tiny_model_dir):
    # Gradient accumulation must weigh micro-batches so the result equals one big batch. SGD, not Adam:
    # Adam's first step is ~lr * sign(g), which turns float noise in near-zero gradients into full steps.
    states = []
    for micro in (4, 1):
        trainer = PolicyTrainer(tiny_model_dir, TrainerSettings(precision="fp32"))
        trainer.optimizer = torch.optim.SGD(trainer.model.parameters(), lr=1.0)
        trainer.train_grpo(_batch([1.0, -1.0, -1.0, 1.0]), GRPOSettings(micro_batch_size=micro, tis_cap=None))
        states.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
    for k in states[0]:
        assert torch.allclose(states[0][k], states[1][k], atol=1e-6), k


def _record_objective(monkeypatch, trainer) -> list[dict]:
    """Per forward/backward of the update: its rows ``(prompt, response)`` and the ``logp``, ``old``
    logprobs and ``advantages`` that :func:`trainer.losses.grpo_objective` got for them."""
    calls = []
    forward, objective = trainer._forward, losses.grpo_objective

    def recording_forward(prompts, responses, **kwargs):
        if torch.is_grad_enabled():  # the update's own forwards (the old-logprob pass runs without gradients)
            calls.append({"rows": [(tuple(p), tuple(r)) for p, r in zip(prompts, responses)]})
        return forward(prompts, responses, **kwargs)

    def recording_objective(logp, old_logp, advantages, mask, **kwargs):
        calls[-1].update(logp=logp.detach().clone(), old=old_logp.detach().clone(), advantages=advantages.clone())
        return objective(logp, old_logp, advantages, mask, **kwargs)

    monkeypatch.setattr(trainer, "_forward", recording_forward)
    monkeypatch.setattr(losses, "grpo_objective", recording_objective)
    return calls


def _rows(batch):
    return [(tuple(p), tuple(r)) for p, r in zip(batch.prompt_ids, batch.response_ids)]


def test_multiple_updates_use_a_fixed_old_policy_and_clip(tiny_model_dir, monkeypatch):
    trainer = PolicyTrainer(tiny_model_dir, TrainerSettings(precision="fp32", optim=OptimSettings(lr=5e-2)))
    batch = _batch([1.0, -1.0, -1.0, 1.0])
    sampled_from = dict(zip(_rows(batch), trainer.batch_logprobs(batch)))  # the policy before any step
    calls = _record_objective(monkeypatch, trainer)
    metrics = trainer.train_grpo(batch, GRPOSettings(mini_batches=2, epochs=3, micro_batch_size=2, tis_cap=None))
    assert metrics["optimizer_steps"] == 6 and len(calls) == 6
    clipped = tokens = 0
    for n, call in enumerate(calls):
        for row, logp, old, adv in zip(call["rows"], call["logp"], call["old"], call["advantages"]):
            length = len(row[1])
            # Every step's ratio is against the policy before the update, not the current one ...
            assert old[:length].tolist() == pytest.approx(sampled_from[row], abs=1e-5), (n, row)
            ratio = (logp[:length] - old[:length]).exp()
            if n:  # ... which the steps after the first have moved away from
                assert (ratio - 1).abs().max() > 1e-3, (n, row)
            # PPO's clip: a token stops pulling once its ratio left [1 - 0.2, 1 + 0.28] in its advantage's way.
            clipped += int(((ratio > 1.28) if adv > 0 else (ratio < 0.8)).sum())
            tokens += length
    assert clipped > 0 and metrics["clip_fraction"] == pytest.approx(clipped / tokens, abs=1e-6)


def test_the_update_and_its_old_policy_score_at_the_sampling_temperature(tiny_model_dir, monkeypatch):
    # Both the update's forward and the old-logprob pass (epochs=2) divide the logits by the temperature.
    trainer = PolicyTrainer(tiny_model_dir, TrainerSettings(precision="fp32", optim=OptimSettings(lr=1e-2)))
    batch = _batch([1.0, -1.0, -1.0, 1.0])
    tempered = {row: teacher_forced_logprobs(trainer.model, row[0], row[1], 0.6) for row in _rows(batch)}
    calls = _record_objective(monkeypatch, trainer)
    trainer.train_grpo(batch, GRPOSettings(epochs=2, micro_batch_size=4, temperature=0.6, tis_cap=None))
    assert len(calls) == 2
    for n, call in enumerate(calls):
        for row, logp, old in zip(call["rows"], call["logp"], call["old"]):
            assert old[:len(row[1])].tolist() == pytest.approx(tempered[row], abs=1e-5), (n, row)
            if n == 0:  # the first step's forward is at the weights the batch was scored at
                assert logp[:len(row[1])].tolist() == pytest.approx(tempered[row], abs=1e-5), row


def _sgd_step(tiny_model_dir, batch, settings):
    """The weight change of one GRPO step with plain SGD at lr 1 and no clipping: minus the gradient."""
    trainer = PolicyTrainer(tiny_model_dir, TrainerSettings(precision="fp32", optim=OptimSettings(grad_clip=0)))
    trainer.optimizer = torch.optim.SGD(trainer.model.parameters(), lr=1.0)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train_grpo(batch, settings)
    return {k: v - before[k] for k, v in trainer.model.state_dict().items()}


def test_tis_weights_scale_each_row_of_the_update(tiny_model_dir):
    # Rows 0-1 come with rollout logprobs 3 nats above the trainer's: TIS weighs them min(e^-3, cap); rows
    # 2-3 come without (weight 1). The gradient is then e^-3 x rows 0-1's + rows 2-3's, each taken alone
    # (advantage 0 on the others, which keeps the loss's denominator).
    settings = GRPOSettings(tis_cap=2.0, micro_batch_size=4)
    trainer = PolicyTrainer(tiny_model_dir, TrainerSettings(precision="fp32"))
    engine = [[x + 3.0 for x in row] for row in trainer.batch_logprobs(_batch([0.0] * 4))[:2]] + [None, None]
    first = _sgd_step(tiny_model_dir, _batch([1.0, -1.0, 0.0, 0.0]), settings)
    second = _sgd_step(tiny_model_dir, _batch([0.0, 0.0, -1.0, 1.0]), settings)
    both = _sgd_step(tiny_model_dir, _batch([1.0, -1.0, -1.0, 1.0], rollout_logprobs=engine), settings)
    assert max(float(first[k].abs().max()) for k in first) > 1e-4
    for k in both:
        assert torch.allclose(both[k], math.exp(-3.0) * first[k] + second[k], atol=1e-6), k


@pytest.mark.parametrize("shift", [0.5, -0.5], ids=["reference-higher", "reference-lower"])
def test_a_reference_kl_pulls_the_policy_toward_the_reference(tiny_model_dir, shift):
    # Every advantage 0: only the KL term can move the weights, toward a reference that scores each response
    # token ``shift`` nats above (or below) the policy. Row 1 is masked out: the reference rows are the batch's.
    batch = _batch([0.0] * 4)
    batch.loss_mask = [True, False, True, True]
    moved = {}
    for kl_coef in (0.0, 0.5):
        trainer = PolicyTrainer(tiny_model_dir, TrainerSettings(precision="fp32", optim=OptimSettings(lr=1e-2)))
        before = trainer.batch_logprobs(batch)
        reference = [[x + shift for x in row] for row in before]
        metrics = trainer.train_grpo(batch, GRPOSettings(kl_coef=kl_coef, tis_cap=None), ref_logprobs=reference)
        after = trainer.batch_logprobs(batch)
        moved[kl_coef] = sum(sum(a) - sum(b) for a, b, keep in zip(after, before, batch.loss_mask) if keep)
    assert moved[0.0] == 0.0  # no KL: nothing to learn
    assert moved[0.5] * shift > 0  # toward the reference
    # k3 of logp - ref = -shift on every kept token: exp(shift) - shift - 1 (a misaligned reference row differs)
    assert metrics["kl"] == pytest.approx(math.exp(shift) - shift - 1, rel=1e-4)


def _entropy_of(model, batch) -> float:
    """Mean entropy of the next-token distribution over the response tokens (independent of the trainer)."""
    total, tokens = 0.0, 0
    with torch.no_grad():
        for prompt, response in zip(batch.prompt_ids, batch.response_ids):
            p = model(torch.tensor([prompt + response])).logits[0, len(prompt) - 1:-1].float().softmax(-1)
            total += float(-(p * p.log()).sum())
            tokens += len(response)
    return total / tokens


def test_an_entropy_bonus_raises_the_entropy(tiny_model_dir):
    batch = _batch([0.0] * 4)  # no advantage: the bonus is the only signal
    change = {}
    for coef in (0.0, 0.1):
        trainer = PolicyTrainer(tiny_model_dir, TrainerSettings(precision="fp32", optim=OptimSettings(lr=1e-2)))
        before = _entropy_of(trainer.model, batch)
        trainer.train_grpo(batch, GRPOSettings(entropy_coef=coef, tis_cap=None, micro_batch_size=2))
        change[coef] = _entropy_of(trainer.model, batch) - before
    assert change[0.0] == 0.0 and change[0.1] > 1e-4


def test_sequence_level_ratios_reach_the_update(tiny_model_dir, monkeypatch):
    # GSPO: one ratio per sequence, exp(mean over its tokens of logp - old). Checked on the ratio_mean metric,
    # recomputed here from the logprobs each step used; a token-level ratio gives another mean (Jensen).
    trainer = PolicyTrainer(tiny_model_dir, TrainerSettings(precision="fp32", optim=OptimSettings(lr=5e-2)))
    calls = _record_objective(monkeypatch, trainer)
    metrics = trainer.train_grpo(_batch([1.0, -1.0, -1.0, 1.0]), GRPOSettings(
        epochs=3, micro_batch_size=4, ratio_level="sequence", loss_agg="seq-mean-token-mean", tis_cap=None))
    sequence_level = token_level = tokens = 0.0
    for call in calls:
        for row, logp, old in zip(call["rows"], call["logp"], call["old"]):
            n = len(row[1])
            sequence_level += n * math.exp(float((logp[:n] - old[:n]).mean()))
            token_level += float((logp[:n] - old[:n]).exp().sum())
            tokens += n
    assert metrics["ratio_mean"] == pytest.approx(sequence_level / tokens, rel=1e-6)
    assert abs(token_level - sequence_level) / tokens > 1e-5  # the two levels are told apart here


@pytest.mark.parametrize("optim", [dict(lr=1e-2), dict(lr=1e-2, weight_decay=0.1)], ids=["moments", "decay"])
def test_batches_without_signal_take_the_zero_gradient_step(tiny_model_dir, optim):
    # A batch with no signal (every advantage 0, or every row masked out) takes exactly the optimizer step a
    # zero gradient takes, whether its rows are trained (skip off) or skipped. The trainer's own AdamW, after
    # a first step with signal: its moments (and weight decay) then move the weights on a zero gradient, so
    # "the zero-gradient step" differs from "no step". (Adam's very first step on a zero gradient moves
    # nothing, which would make any of these cases look right.)
    states = {}
    for case in ("trained", "skipped", "masked"):
        trainer = PolicyTrainer(tiny_model_dir, TrainerSettings(precision="fp32", optim=OptimSettings(**optim)))
        settings = GRPOSettings(micro_batch_size=2, tis_cap=None, skip_zero_advantage=case != "trained")
        assert trainer.train_grpo(_batch([1.0, -1.0, -1.0, 1.0]), settings)["rows_trained"] == 4
        middle = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        if case == "masked":
            batch = _batch([1.0, -1.0, -1.0, 1.0])
            batch.loss_mask = [False] * 4
        else:
            batch = _batch([0.0] * 4)
        metrics = trainer.train_grpo(batch, settings)
        assert metrics["rows_trained"] == (4 if case == "trained" else 0), case
        assert trainer.optimizer_steps == 2 and trainer.scheduler.last_epoch == 2, case  # the schedule too
        states[case] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        moved = max(float((states[case][k] - middle[k]).abs().max()) for k in middle)
        assert moved > 1e-4, (case, moved)  # the comparison below is not between unmoved weights
    for case in ("skipped", "masked"):
        for k in states["trained"]:
            assert torch.equal(states[case][k], states["trained"][k]), (case, k)


@pytest.mark.parametrize("updates", [dict(), dict(mini_batches=2, epochs=2)])
def test_skipping_zero_advantage_rows_leaves_the_update_unchanged(tiny_model_dir, updates):
    # Momentum SGD: a step on a batch with no signal still moves the weights by the momentum, so the
    # all-skipped mini-batch must still take its (zero-gradient) optimizer step.
    states, trained = [], []
    for skip in (False, True):
        trainer = PolicyTrainer(tiny_model_dir, TrainerSettings(precision="fp32"))
        trainer.optimizer = torch.optim.SGD(trainer.model.parameters(), lr=0.5, momentum=0.9)
        settings = GRPOSettings(micro_batch_size=2, tis_cap=None, skip_zero_advantage=skip, **updates)
        first = trainer.train_grpo(_batch([1.0, -1.0, 0.0, 0.0]), settings)
        middle = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        last = trainer.train_grpo(_batch([0.0] * 4), settings)
        trained.append((first["rows_trained"], last["rows_trained"]))
        moved = any(not torch.equal(middle[k], v) for k, v in trainer.model.state_dict().items())
        assert moved  # the momentum step happened
        states.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
    assert trained == [(4, 4), (2, 0)]
    assert last["entropy"] > 0  # still measured when every row was skipped
    for k in states[0]:
        assert torch.allclose(states[0][k], states[1][k], atol=1e-6), k


def test_rows_are_skipped_only_when_no_loss_term_reaches_them():
    from trainer.policy import skippable_rows

    adv = torch.tensor([0.5, 0.0, -0.5, 0.0])
    assert skippable_rows(adv, GRPOSettings(), has_reference=False) == {1, 3}
    assert skippable_rows(adv, GRPOSettings(kl_coef=0.1), has_reference=False) == {1, 3}  # no reference given
    assert skippable_rows(adv, GRPOSettings(kl_coef=0.1), has_reference=True) == set()
    assert skippable_rows(adv, GRPOSettings(entropy_coef=0.01), has_reference=False) == set()
    assert skippable_rows(adv, GRPOSettings(skip_zero_advantage=False), has_reference=False) == set()


def test_rollout_mismatch_is_measured(tiny_model_dir):
    trainer = PolicyTrainer(tiny_model_dir, TrainerSettings(precision="fp32"))
    batch = _batch([1.0, -1.0, -1.0, 1.0])
    exact = trainer.batch_logprobs(batch)
    batch.rollout_logprobs = exact
    assert trainer.train_grpo(batch, GRPOSettings())["mismatch_abs_diff"] < 1e-5
    batch.rollout_logprobs = [[x - 1.0 for x in row] for row in trainer.batch_logprobs(batch)]
    m = trainer.train_grpo(batch, GRPOSettings())
    assert m["mismatch_abs_diff"] == pytest.approx(1.0, abs=1e-4) and m["mismatch_frac_over_ln2"] == 1.0


def test_sft_step_lowers_the_target_loss(tiny_model_dir):
    trainer = PolicyTrainer(tiny_model_dir, TrainerSettings(precision="bf16", optim=OptimSettings(lr=1e-2)))
    losses = [trainer.train_sft(PROMPTS, RESPONSES, micro_batch_size=2)["loss"] for _ in range(5)]
    assert losses[-1] < losses[0]


def test_lora_export_merges_the_adapters(tiny_model_dir):
    settings = TrainerSettings(precision="fp32", lora=LoraSettings(rank=4, alpha=8), optim=OptimSettings(lr=5e-2))
    trainer = PolicyTrainer(tiny_model_dir, settings)
    trainer.train_sft(PROMPTS, RESPONSES)
    state = trainer.inference_state_dict()
    assert not any("lora" in k or "base_layer" in k for k in state)
    merged = trainer.model.merge_and_unload()
    for k, v in merged.state_dict().items():
        assert torch.allclose(torch.from_numpy(state[k]), v, atol=1e-6), k


def test_lora_reference_is_the_base_model(tiny_model_dir):
    settings = TrainerSettings(precision="fp32", lora=LoraSettings(rank=4), optim=OptimSettings(lr=5e-2))
    trainer = PolicyTrainer(tiny_model_dir, settings)
    base = Policy(tiny_model_dir, TrainerSettings(precision="fp32")).logprobs(PROMPTS, RESPONSES)
    trainer.train_sft(PROMPTS, RESPONSES)
    for got, want in zip(trainer.logprobs(PROMPTS, RESPONSES, disable_adapter=True), base):
        assert got == pytest.approx(want, abs=1e-5)
    assert trainer.logprobs(PROMPTS, RESPONSES)[0] != pytest.approx(base[0], abs=1e-4)


@pytest.mark.parametrize("lora", [False, True])
def test_checkpoint_round_trip_continues_identically(tiny_model_dir, tmp_path, lora):
    settings = TrainerSettings(precision="fp32", lora=LoraSettings(rank=4) if lora else None,
                               optim=OptimSettings(lr=1e-2))
    a = PolicyTrainer(tiny_model_dir, settings)
    a.train_sft(PROMPTS, RESPONSES)
    a.save_checkpoint(tmp_path / "ckpt")
    at_save = a.logprobs(PROMPTS, RESPONSES)
    b = PolicyTrainer(tiny_model_dir, settings)
    b.load_checkpoint(tmp_path / "ckpt")
    assert b.optimizer_steps == 1
    # Same weights and optimizer moments: the next step lands in the same place.
    a.train_sft(PROMPTS, RESPONSES)
    b.train_sft(PROMPTS, RESPONSES)
    assert a.logprobs(PROMPTS, RESPONSES)[2] == pytest.approx(b.logprobs(PROMPTS, RESPONSES)[2], abs=1e-5)
    # The exported model dir (LoRA merged in) loads in transformers as a plain model with the saved weights.
    from trainer.checkpoint_export import export_checkpoint

    reloaded = Policy(export_checkpoint(tmp_path / "ckpt", tmp_path / "exported"), TrainerSettings(precision="fp32"))
    for got, want in zip(reloaded.logprobs(PROMPTS, RESPONSES), at_save):
        assert got == pytest.approx(want, abs=1e-5)


def test_shared_prefix_forward_equals_the_padded_one_in_values_and_gradients(tiny_model_dir):
    # Rows 0-2 share a prompt, 3-4 share another; responses of different lengths (one of a single token).
    prompts = [PROMPTS[0]] * 3 + [PROMPTS[2]] * 2
    responses = [RESPONSES[0], RESPONSES[2], [30], RESPONSES[1], RESPONSES[0]]
    grads, values = [], []
    for shared in (True, False):
        trainer = PolicyTrainer(tiny_model_dir, TrainerSettings(precision="fp32", shared_prefix=shared))
        logp, entropy, mask = trainer._forward(prompts, responses, temperature=0.8, with_entropy="grad")
        (logp.sum() + entropy.mul(mask).sum()).backward()
        values.append((logp.detach(), (entropy * mask).detach()))
        grads.append({n: p.grad.clone() for n, p in trainer.model.named_parameters()})
    assert torch.allclose(values[0][0], values[1][0], atol=1e-5)
    assert torch.allclose(values[0][1], values[1][1], atol=1e-4)
    for name in grads[0]:
        diff = (grads[0][name] - grads[1][name]).abs().max()
        assert diff <= 1e-4 * grads[1][name].abs().max() + 1e-6, (name, float(diff))


def test_packed_sft_equals_padded_sft_in_loss_and_update(tiny_model_dir):
    from trainer.sequences import pack_examples

    rows = pack_examples(PROMPTS, RESPONSES, max_tokens=12)
    assert [r.input_ids.shape[1] for r in rows] == [11, 8]  # 8 + 3 tokens fit in 12; the third 8 do not
    assert rows[0].position_ids.tolist() == [[0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2]]
    results = []
    for pack in (None, 12):
        trainer = PolicyTrainer(tiny_model_dir, TrainerSettings(precision="fp32", optim=OptimSettings(lr=1e-2)))
        m = trainer.train_sft(PROMPTS, RESPONSES, micro_batch_size=3, pack_tokens=pack)
        results.append((m["loss"], m["grad_norm"], trainer.model.model.embed_tokens.weight.detach().clone()))
    # The same loss and gradient means each packed example attended only to itself.
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    assert results[0][1] == pytest.approx(results[1][1], rel=1e-4)
    assert torch.allclose(results[0][2], results[1][2], atol=1e-6)
