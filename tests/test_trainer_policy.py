"""The trainer's model code on a tiny random Llama: padding layout, logprobs, GRPO/SFT updates, LoRA, checkpoints."""
import pytest
import torch

from helpers import teacher_forced_logprobs
from rollout.types import RolloutBatch
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


def test_multiple_updates_use_a_fixed_old_policy_and_clip(tiny_model_dir):
    trainer = PolicyTrainer(tiny_model_dir, TrainerSettings(precision="fp32", optim=OptimSettings(lr=5e-2)))
    metrics = trainer.train_grpo(_batch([1.0, -1.0, -1.0, 1.0]),
                                 GRPOSettings(mini_batches=2, epochs=3, micro_batch_size=2, tis_cap=None))
    assert metrics["optimizer_steps"] == 6
    assert metrics["clip_fraction"] > 0  # later updates move away from the old policy and hit the clip


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
    # The saved model dir (LoRA merged in) loads in transformers as a plain model with the saved weights.
    reloaded = Policy(str(tmp_path / "ckpt" / "model"), TrainerSettings(precision="fp32"))
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
