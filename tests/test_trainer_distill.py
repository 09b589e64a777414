"""Logit distillation: the per-token KL (both directions) and the DistillTrainer on tiny random Llamas."""
import shutil

import pytest
import torch
import torch.nn.functional as F

from helpers import capture_step_gradients, teacher_forced_logprobs, tiny_llama_variant
from trainer.teacher_student import DistillTrainer, response_logits
from trainer.losses import token_kl
from trainer.policy import PolicyTrainer
from trainer.settings import OptimSettings, TrainerSettings

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14], [300, 301, 302, 303]]
TARGETS = [[20, 21, 22], [23], [24, 25, 26, 27, 28], [400, 401]]


def _settings(lr=1e-2, precision="fp32"):
    return TrainerSettings(precision=precision, optim=OptimSettings(lr=lr))


def _reference_kl(p_logits, q_logits, temperature=1.0):
    """KL(p || q) per position by torch's own kl_div (its input is log q, its target log p)."""
    log_p = torch.log_softmax(p_logits.double() / temperature, -1)
    log_q = torch.log_softmax(q_logits.double() / temperature, -1)
    return F.kl_div(log_q, log_p, log_target=True, reduction="none").sum(-1)


# ---- token_kl ---------------------------------------------------------------------------------------------

def test_token_kl_by_hand():
    # Two-token vocabulary: teacher p = (1/2, 1/2), student q = (1/4, 3/4).
    student = torch.tensor([[[0.25, 0.75]]]).log()
    teacher = torch.tensor([[[0.5, 0.5]]]).log()
    mask = torch.ones(1, 1, dtype=torch.bool)
    forward = 0.5 * torch.log(torch.tensor(0.5 / 0.25)) + 0.5 * torch.log(torch.tensor(0.5 / 0.75))
    reverse = 0.25 * torch.log(torch.tensor(0.25 / 0.5)) + 0.75 * torch.log(torch.tensor(0.75 / 0.5))
    assert float(token_kl(student, teacher, mask)) == pytest.approx(float(forward), abs=1e-6)
    assert float(token_kl(student, teacher, mask, direction="reverse")) == pytest.approx(float(reverse), abs=1e-6)
    assert float(forward) != pytest.approx(float(reverse), abs=1e-3)  # the two directions are different numbers


@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_token_kl_matches_torch_kl_div_in_both_directions(temperature):
    gen = torch.Generator().manual_seed(0)
    student = torch.randn(3, 5, 50, generator=gen) * 3
    teacher = torch.randn(3, 5, 50, generator=gen) * 3
    mask = torch.ones(3, 5, dtype=torch.bool)
    forward = token_kl(student, teacher, mask, direction="forward", temperature=temperature)
    reverse = token_kl(student, teacher, mask, direction="reverse", temperature=temperature)
    assert forward.shape == (3, 5) and forward.dtype == torch.float32
    torch.testing.assert_close(forward.double(), _reference_kl(teacher, student, temperature), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(reverse.double(), _reference_kl(student, teacher, temperature), atol=1e-5, rtol=1e-5)
    assert (forward >= 0).all() and (reverse >= 0).all()
    assert not torch.allclose(forward, reverse)


def test_token_kl_is_zero_for_equal_logits_and_nonnegative():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 4, 64, generator=gen) * 5
    mask = torch.ones(2, 4)
    for direction in ("forward", "reverse"):
        assert token_kl(logits, logits.clone(), mask, direction=direction).abs().max() < 1e-6
        # A constant shift of the logits is the same distribution.
        assert token_kl(logits, logits + 7.0, mask, direction=direction).abs().max() < 1e-5
    for seed in range(5):
        gen = torch.Generator().manual_seed(seed)
        a, b = torch.randn(2, 4, 3, 100, generator=gen) * (seed + 1)
        for direction in ("forward", "reverse"):
            assert (token_kl(a, b, torch.ones(4, 3), direction=direction) >= 0).all()


def test_token_kl_temperature_divides_the_logits():
    gen = torch.Generator().manual_seed(2)
    student, teacher = torch.randn(2, 2, 3, 40, generator=gen) * 4
    mask = torch.ones(2, 3)
    for direction in ("forward", "reverse"):
        hot = token_kl(student, teacher, mask, direction=direction, temperature=4.0)
        torch.testing.assert_close(hot, token_kl(student / 4.0, teacher / 4.0, mask, direction=direction))
        # Softer distributions are closer: the KL shrinks with temperature (toward 0 as T grows).
        cold = token_kl(student, teacher, mask, direction=direction, temperature=1.0)
        assert (hot < cold).all()
        assert token_kl(student, teacher, mask, direction=direction, temperature=1e4).max() < 1e-6


def test_token_kl_soft_target_gradient_shrinks_as_one_over_t_squared():
    # The claim behind the caller's T^2 weighting (token_kl's docstring, Hinton et al.): the gradient of the
    # tempered KL with respect to the student's logits shrinks as 1/T^2, so T^2 * KL keeps its scale. At a
    # high temperature T^2 * grad tends to the centred logit difference over the vocabulary size.
    gen = torch.Generator().manual_seed(4)
    student, teacher = torch.randn(2, 2, 3, 40, generator=gen) * 3
    mask = torch.ones(2, 3)
    diff = student - teacher
    limit = (diff - diff.mean(-1, keepdim=True)) / diff.shape[-1]
    for direction in ("forward", "reverse"):
        grads = {}
        for t in (1.0, 16.0, 32.0, 64.0):
            logits = student.clone().requires_grad_(True)
            (grads[t],) = torch.autograd.grad(token_kl(logits, teacher, mask, direction=direction,
                                                       temperature=t).sum(), logits)
        for t in (16.0, 32.0):  # doubling T quarters the unscaled gradient
            assert float(grads[2 * t].norm() / grads[t].norm()) == pytest.approx(0.25, rel=0.03), (direction, t)
        scaled = {t: t ** 2 * g for t, g in grads.items()}
        assert float((scaled[64.0] - limit).norm() / limit.norm()) < 0.1, direction
        # T^2 keeps the scale (within 2x from T=1 to T=64), where the unscaled gradient falls ~4000x.
        norms = [float(g.norm()) for g in scaled.values()]
        assert max(norms) < 2 * min(norms), (direction, norms)


def test_masked_positions_with_inf_and_nan_give_zero_and_finite_gradients():
    gen = torch.Generator().manual_seed(3)
    clean_s, clean_t = torch.randn(2, 2, 4, 30, generator=gen)
    mask = torch.tensor([[True, True, False, False], [True, False, True, False]])
    dirty_s, dirty_t = clean_s.clone(), clean_t.clone()
    dirty_s[0, 2], dirty_s[0, 3], dirty_s[1, 1] = float("nan"), float("inf"), float("-inf")
    dirty_t[0, 2], dirty_t[1, 3] = float("inf"), float("nan")
    dirty_s[1, 3, :5] = float("nan")
    for direction in ("forward", "reverse"):
        got_s = dirty_s.clone().requires_grad_(True)
        kl = token_kl(got_s, dirty_t, mask, direction=direction)
        assert torch.isfinite(kl).all()
        assert (kl[~mask] == 0).all()
        kl.sum().backward()
        assert torch.isfinite(got_s.grad).all()
        assert (got_s.grad[~mask] == 0).all()
        want_s = clean_s.clone().requires_grad_(True)
        want = token_kl(want_s, clean_t, mask, direction=direction)
        want.sum().backward()
        torch.testing.assert_close(kl, want)
        torch.testing.assert_close(got_s.grad, want_s.grad)


def test_token_kl_treats_zero_probability_tokens_as_costing_nothing():
    # A model that masks vocabulary entries with -inf (real positions): 0 * log 0 = 0, not nan.
    student = torch.tensor([[[0.0, 1.0, float("-inf")]]], requires_grad=True)
    teacher = torch.tensor([[[1.0, 0.0, float("-inf")]]])
    mask = torch.ones(1, 1, dtype=torch.bool)
    for direction in ("forward", "reverse"):
        kl = token_kl(student, teacher, mask, direction=direction)
        want = token_kl(student[..., :2], teacher[..., :2], mask, direction=direction)
        torch.testing.assert_close(kl, want)
        (grad,) = torch.autograd.grad(kl.sum(), student)
        assert torch.isfinite(grad).all() and grad[0, 0, 2] == 0


def test_token_kl_rejects_bad_arguments():
    logits, mask = torch.zeros(1, 2, 8), torch.ones(1, 2)
    with pytest.raises(ValueError, match="direction"):
        token_kl(logits, logits, mask, direction="both")
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            token_kl(logits, logits, mask, temperature=bad)
    with pytest.raises(ValueError, match="share a vocabulary"):
        token_kl(logits, torch.zeros(1, 2, 9), mask)
    with pytest.raises(ValueError, match="mask"):
        token_kl(logits, logits, torch.ones(1, 3))


# ---- DistillTrainer ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def other_teacher_dir(tmp_path_factory, tiny_model_dir):
    """Same architecture and vocabulary as ``tiny_model_dir``, different random weights."""
    return tiny_llama_variant(tmp_path_factory, tiny_model_dir, "tiny-teacher", seed=1)


def test_response_logits_align_with_response_tokens(tiny_model_dir):
    trainer = DistillTrainer(tiny_model_dir, _settings(), tiny_model_dir)
    rows = trainer._rows(PROMPTS, TARGETS)
    with torch.no_grad():
        logits = response_logits(trainer.model, rows)
    logp = torch.log_softmax(logits.float(), -1).gather(-1, rows.response_ids.unsqueeze(-1)).squeeze(-1)
    for i, (prompt, target) in enumerate(zip(PROMPTS, TARGETS)):
        want = teacher_forced_logprobs(trainer.model, prompt, target)
        assert logp[i, :len(target)].tolist() == pytest.approx(want, abs=1e-5)


def test_teacher_equal_to_student_gives_zero_kl_and_stays_frozen(tiny_model_dir):
    trainer = DistillTrainer(tiny_model_dir, _settings(), tiny_model_dir)
    assert not trainer.teacher.model.training
    assert not any(p.requires_grad for p in trainer.teacher.model.parameters())
    teacher_before = {n: p.detach().clone() for n, p in trainer.teacher.model.named_parameters()}
    m = trainer.train_distill_sft(PROMPTS, TARGETS, kl_weight=0.5, temperature=2.0)
    assert m["kl"] < 1e-5
    assert m["tokens"] == sum(len(t) for t in TARGETS)
    assert m["loss"] == pytest.approx(0.5 * m["ce"] + 0.5 * 4.0 * m["kl"], rel=1e-6)
    assert set(m) >= {"loss", "ce", "kl", "grad_norm", "tokens", "lr", "train_seconds"}

    fresh = DistillTrainer(tiny_model_dir, _settings(), tiny_model_dir)
    m = fresh.train_on_policy(PROMPTS, TARGETS)
    assert m["reverse_kl"] < 1e-5 and m["loss"] == m["reverse_kl"]
    assert m["teacher_logprob"] == pytest.approx(m["student_logprob"], abs=1e-5)
    assert m["teacher_logprob"] < 0
    # Both trainers stepped the student; the teacher never moved and never got a gradient.
    for name, p in trainer.teacher.model.named_parameters():
        assert p.grad is None
        assert torch.equal(p, teacher_before[name])
    assert set(m) >= {"loss", "reverse_kl", "teacher_logprob", "grad_norm", "tokens", "lr", "train_seconds"}


def test_kl_weight_zero_is_train_sft(tiny_model_dir, other_teacher_dir):
    sft = PolicyTrainer(tiny_model_dir, _settings())
    distill = DistillTrainer(tiny_model_dir, _settings(), other_teacher_dir)
    sft_grads, distill_grads = capture_step_gradients(sft), capture_step_gradients(distill)
    want = sft.train_sft(PROMPTS, TARGETS, micro_batch_size=2)
    got = distill.train_distill_sft(PROMPTS, TARGETS, kl_weight=0.0, micro_batch_size=2)
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)
    assert got["ce"] == pytest.approx(want["loss"], rel=1e-6)
    assert got["kl"] > 1e-4  # a different teacher: logged, yet not trained on
    assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-5)
    for name, grad in sft_grads[0].items():
        torch.testing.assert_close(distill_grads[0][name], grad, atol=1e-7, rtol=1e-5)
    for (name, p), q in zip(sft.model.named_parameters(), distill.model.parameters()):
        torch.testing.assert_close(q, p, atol=1e-6, rtol=0, msg=name)


def test_micro_batch_size_does_not_change_the_step(tiny_model_dir, other_teacher_dir):
    for train in ("distill_sft", "on_policy"):
        grads, weights, metrics = [], [], []
        for mbs in (1, 8):
            # Adam's first step is lr * g / (|g| + eps): with the default eps (1e-8) it is ~lr * sign(g), and
            # the sign of a near-zero gradient entry is fp32 noise (padding to other widths reorders sums).
            # A large eps keeps the step proportional to the gradient there, so equal steps mean equal gradients.
            trainer = DistillTrainer(tiny_model_dir, TrainerSettings(precision="fp32",
                                                                     optim=OptimSettings(lr=1e-2, eps=1e-3)),
                                     other_teacher_dir)
            seen = capture_step_gradients(trainer)
            if train == "distill_sft":
                metrics.append(trainer.train_distill_sft(PROMPTS, TARGETS, kl_weight=0.7, temperature=1.5,
                                                         micro_batch_size=mbs))
            else:
                metrics.append(trainer.train_on_policy(PROMPTS, TARGETS, micro_batch_size=mbs))
            grads.append(seen[0])
            weights.append({n: p.detach().clone() for n, p in trainer.model.named_parameters()})
        assert metrics[0]["loss"] == pytest.approx(metrics[1]["loss"], rel=1e-5)
        if train == "distill_sft":  # (1 - w) * CE + w * T^2 * KL
            m = metrics[0]
            assert m["loss"] == pytest.approx(0.3 * m["ce"] + 0.7 * 1.5 ** 2 * m["kl"], rel=1e-6)
        assert metrics[0]["grad_norm"] == pytest.approx(metrics[1]["grad_norm"], rel=1e-4)
        for name, grad in grads[1].items():
            # Padding to other widths reorders fp32 sums, and a small KL is a difference of nearly equal
            # log-probs: agree to 5e-4 of each tensor's scale (a mis-weighted micro-batch is off by ~10-100%).
            torch.testing.assert_close(grads[0][name], grad, atol=5e-4 * float(grad.abs().max()), rtol=1e-3,
                                       msg=f"{train} {name}")
        for name, w in weights[1].items():
            torch.testing.assert_close(weights[0][name], w, atol=1e-6, rtol=0, msg=f"{train} {name}")


def test_on_policy_steps_reduce_the_reverse_kl(tiny_model_dir, other_teacher_dir):
    trainer = DistillTrainer(tiny_model_dir, _settings(lr=1e-2), other_teacher_dir)
    history = [trainer.train_on_policy(PROMPTS, TARGETS, micro_batch_size=2) for _ in range(4)]
    kls = [m["reverse_kl"] for m in history]  # each measured before its step, on the same batch
    assert kls[0] > 1e-3
    assert kls[-1] < 0.5 * kls[0], kls
    assert history[-1]["teacher_logprob"] == pytest.approx(history[0]["teacher_logprob"])  # the teacher is fixed


def test_distill_sft_with_kl_weight_one_reduces_the_forward_kl(tiny_model_dir, other_teacher_dir):
    trainer = DistillTrainer(tiny_model_dir, _settings(lr=1e-2), other_teacher_dir)
    history = [trainer.train_distill_sft(PROMPTS, TARGETS, kl_weight=1.0, micro_batch_size=2) for _ in range(4)]
    kls = [m["kl"] for m in history]
    assert kls[0] > 1e-3
    assert kls[-1] < 0.5 * kls[0], kls
    assert history[0]["loss"] == pytest.approx(kls[0], rel=1e-6)  # weight 1, temperature 1: the loss is the KL


def test_distill_sft_t_squared_keeps_the_kl_gradient_across_temperatures(tiny_model_dir, other_teacher_dir):
    # train_distill_sft's docstring: the KL of the softened distributions, times T^2, so that soft-target
    # gradients (which shrink as 1/T^2) keep their size. On these tiny models the logits are small, so T = 1
    # is already in the high-temperature regime: the KL falls as 1/T^2 while T^2 * KL and the step's
    # gradient stay put. Without the T^2 factor the gradient at T = 4 would be ~16x smaller.
    runs = {}
    for t in (1.0, 4.0):
        trainer = DistillTrainer(tiny_model_dir, _settings(), other_teacher_dir)
        seen = capture_step_gradients(trainer)
        runs[t] = (trainer.train_distill_sft(PROMPTS, TARGETS, kl_weight=1.0, temperature=t), seen[0])
    (cold, cold_grads), (hot, hot_grads) = runs[1.0], runs[4.0]
    assert cold["kl"] > 1e-3
    assert hot["kl"] == pytest.approx(cold["kl"] / 16, rel=0.05)  # the softened distributions are closer
    assert hot["loss"] == pytest.approx(16 * hot["kl"], rel=1e-6)  # weight 1: the loss is T^2 * KL
    assert hot["loss"] == pytest.approx(cold["loss"], rel=0.05)
    assert float(hot["grad_norm"]) == pytest.approx(float(cold["grad_norm"]), rel=0.05)
    for name, grad in cold_grads.items():  # the same direction too, not just the same norm
        cosine = F.cosine_similarity(hot_grads[name].flatten(), grad.flatten(), dim=0)
        assert float(cosine) > 0.9, name


def test_bf16_autocast_runs(tiny_model_dir, other_teacher_dir):
    trainer = DistillTrainer(tiny_model_dir, _settings(precision="bf16"), other_teacher_dir)
    for m in (trainer.train_on_policy(PROMPTS, TARGETS),
              trainer.train_distill_sft(PROMPTS, TARGETS, kl_weight=0.5, temperature=2.0)):
        assert all(torch.isfinite(torch.tensor(v)) for v in m.values()), m


def test_mismatched_vocabulary_raises(tmp_path_factory, tiny_model_dir):
    from transformers import AutoTokenizer

    wide = tiny_llama_variant(tmp_path_factory, tiny_model_dir, "tiny-wide-vocab",
                         vocab_size=len(AutoTokenizer.from_pretrained(tiny_model_dir)) + 64)
    with pytest.raises(ValueError, match="distill.teacher.*share a vocabulary"):
        DistillTrainer(tiny_model_dir, _settings(), wide)
    # Same logits width, different token -> id map.
    other_tok = tmp_path_factory.mktemp("tiny-other-tokenizer")
    shutil.copytree(tiny_model_dir, other_tok, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.add_tokens(["<r1-distill-extra>"])
    tokenizer.save_pretrained(other_tok)
    with pytest.raises(ValueError, match="distill.teacher.*tokenizer"):
        DistillTrainer(tiny_model_dir, _settings(), str(other_tok))


def test_bad_arguments(tiny_model_dir):
    trainer = DistillTrainer(tiny_model_dir, _settings(), tiny_model_dir)
    with pytest.raises(ValueError, match="kl_weight"):
        trainer.train_distill_sft(PROMPTS, TARGETS, kl_weight=1.5)
    with pytest.raises(ValueError, match="temperature"):
        trainer.train_distill_sft(PROMPTS, TARGETS, kl_weight=0.5, temperature=0.0)
    with pytest.raises(ValueError, match="responses"):
        trainer.train_on_policy(PROMPTS, TARGETS[:2])
    assert trainer.optimizer_steps == 0
