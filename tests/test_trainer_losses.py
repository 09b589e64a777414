"""The GRPO loss functions against plain, loop-by-loop reference implementations on random inputs."""
import logging
import math
import random

import pytest
import torch
from pydantic import ValidationError
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from pipeline.config import ConfigError, load_config
from trainer.losses import (aggregate, grpo_advantages, grpo_objective, kl_penalty, logprob_mismatch, token_kl,
                            truncated_is_weights)
from trainer.settings import GRPOSettings


# ---- reference implementations: python floats, one element at a time ----------------------------------------

def ref_advantages(rewards, group_size, scale):
    out = []
    all_mean = sum(rewards) / len(rewards)
    all_std = math.sqrt(sum((r - all_mean) ** 2 for r in rewards) / (len(rewards) - 1)) if len(rewards) > 1 else 0.0
    for g in range(0, len(rewards), group_size):
        group = rewards[g:g + group_size]
        if group_size == 1:
            out.append(0.0)
            continue
        mean = sum(group) / len(group)
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / (len(group) - 1))
        for r in group:
            if scale == "group":
                out.append((r - mean) / (std + 1e-6))
            elif scale == "batch":
                out.append((r - mean) / (all_std + 1e-6))
            else:
                out.append(r - mean)
    return out


def ref_weights(mask, agg, horizon=None):
    """d(aggregate)/d(value) per token: how much each token's value counts in the aggregate."""
    B, T = len(mask), len(mask[0])
    n_tokens = sum(sum(row) for row in mask)
    n_seqs = sum(1 for row in mask if sum(row))
    w = [[0.0] * T for _ in range(B)]
    for b in range(B):
        for t in range(T):
            if mask[b][t]:
                w[b][t] = {"token-mean": 1 / n_tokens, "seq-mean-token-mean": 1 / (sum(mask[b]) * n_seqs),
                           "seq-mean-token-sum-norm": 1 / ((horizon or T) * B)}[agg]
    return w


def ref_objective(logp, old, adv, mask, clip_low, clip_high, agg, level):
    """The clipped surrogate, written out: (loss, d loss / d logp, token counts of the clipped branches)."""
    B, T = len(logp), len(logp[0])
    weights = ref_weights(mask, agg)
    loss, grad = 0.0, [[0.0] * T for _ in range(B)]
    counts = {"clip": 0, "clip_low": 0, "clip_high": 0}
    for b in range(B):
        toks = [t for t in range(T) if mask[b][t]]
        a_row = adv[b] if isinstance(adv[b], list) else [adv[b]] * T
        seq = sum(logp[b][t] - old[b][t] for t in toks) / max(len(toks), 1)
        for t in toks:
            ratio = math.exp(seq if level == "sequence" else logp[b][t] - old[b][t])
            a = a_row[t]
            unclipped, clipped = -a * ratio, -a * min(max(ratio, 1 - clip_low), 1 + clip_high)
            loss += weights[b][t] * max(unclipped, clipped)
            if clipped > unclipped:  # the clipped branch is a constant: no gradient
                counts["clip"] += 1
                counts["clip_low"] += ratio < 1 - clip_low
                counts["clip_high"] += ratio > 1 + clip_high
            elif level == "token":
                grad[b][t] += weights[b][t] * -a * ratio
            else:  # d ratio / d logp_u = ratio / len for every token u of the sequence
                for u in toks:
                    grad[b][u] += weights[b][t] * -a * ratio / len(toks)
    return loss, grad, counts


def ref_aggregate(values, mask, agg):
    w = ref_weights(mask, agg)
    return sum(w[b][t] * values[b][t] for b in range(len(values)) for t in range(len(values[0])) if mask[b][t])


def ref_kl(lp, rlp, kind):
    """Value and d/d lp of each estimator; k3's Δ is clamped at -20 (beyond it: constant, gradient 0)."""
    d = lp - rlp
    if kind == "k1":
        return d, 1.0
    if kind == "k2":
        return d * d / 2, d
    dc = max(d, -20.0)
    return math.exp(-dc) + dc - 1, (1 - math.exp(-d)) if d > -20 else 0.0


def _random_inputs(seed, B=6, T=9, spread=1.8):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g) * 3
    old = logp + (torch.rand(B, T, generator=g) - 0.5) * spread  # log-ratios in ±0.9: beyond both clip bounds
    mask = (torch.rand(B, T, generator=g) > 0.25).float()
    mask[:, 0] = 1.0  # every row has a token
    adv = torch.randn(B, generator=g)
    adv[:2] = torch.tensor([1.0, -1.0])  # both signs, always
    return logp, old, mask, adv


def _objective_and_grad(logp, *args, **kw):
    logp = logp.clone().requires_grad_(True)
    loss, sums = grpo_objective(logp, *args, **kw)
    loss.backward()
    return loss.detach(), logp.grad, sums


# ---- advantages ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("group_size", [1, 2, 4])
def test_advantages_match_reference(scale, group_size):
    rng = random.Random(group_size)
    rewards = [rng.choice([0.0, 0.5, 1.0, 1.5]) + rng.random() * 0.1 for _ in range(4 * group_size)]
    got = grpo_advantages(torch.tensor(rewards), group_size, scale).tolist()
    assert got == pytest.approx(ref_advantages(rewards, group_size, scale), abs=1e-5)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_of_equal_rewards_are_zero_and_groups_are_independent(scale):
    # 0.1, 0.6 and 1.6 are not exact in binary: their float32 group mean is off by an ulp, which / (0 + eps)
    # would be a large advantage of one sign for every sample of the group.
    for value in (0.1, 0.6, 1.6):
        rewards = torch.tensor([value] * 7 + [0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
        adv = grpo_advantages(rewards, 7, scale)
        assert torch.equal(adv[:7], torch.zeros(7)), (value, adv[:7].tolist())
        assert adv[7:].sum().abs() < 1e-5 and adv[8] > 0 > adv[7]


def test_advantages_reject_bad_input():
    with pytest.raises(ValueError, match="does not divide"):
        grpo_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="scale"):
        grpo_advantages(torch.zeros(4), 2, "rank")
    with pytest.raises(ValueError, match="1-D"):
        grpo_advantages(torch.zeros(2, 2), 2)


# ---- the clipped surrogate, through grpo_objective (what the trainer runs) --------------------------------------

@pytest.mark.parametrize("agg, level", [("token-mean", "token"), ("seq-mean-token-mean", "token"),
                                        ("seq-mean-token-sum-norm", "token"), ("seq-mean-token-mean", "sequence")])
@pytest.mark.parametrize("clip", [(0.2, 0.2), (0.2, 0.28), (0.05, 0.5)])
def test_surrogate_matches_reference_on_both_clip_bounds(agg, level, clip):
    seen = {"clip_low": 0, "clip_high": 0}
    for seed in range(3):
        logp, old, mask, adv = _random_inputs(seed, B=16 if level == "sequence" else 6)
        if level == "sequence":  # sequence ratios average out: spread the rows' log-ratios apart
            old = old + torch.linspace(-0.7, 0.7, old.shape[0]).unsqueeze(-1)
        loss, grad, sums = _objective_and_grad(logp, old, adv, mask, clip_low=clip[0], clip_high=clip[1], agg=agg,
                                               level=level)
        want, want_grad, counts = ref_objective(logp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), *clip,
                                                agg, level)
        assert float(loss) == pytest.approx(want, rel=1e-5, abs=1e-6)
        torch.testing.assert_close(grad, torch.tensor(want_grad), rtol=1e-5, atol=1e-7)
        for k in ("clip", "clip_low", "clip_high"):
            assert float(sums[f"{k}_fraction"]) == counts[k], k
        assert float(sums["tokens"]) == float(mask.sum())
        for k in seen:
            seen[k] += counts[k]
    assert seen["clip_low"] > 0 and seen["clip_high"] > 0  # both bounds acted (negative and positive advantages)


def test_surrogate_accepts_per_token_advantages():
    logp, old, mask, adv = _random_inputs(7)
    per_token = adv.unsqueeze(-1).expand_as(logp).clone()
    per_token[:, 3:] *= -1  # a different advantage per token
    loss, grad, _ = _objective_and_grad(logp, old, per_token, mask, clip_low=0.2, clip_high=0.28)
    want, want_grad, _ = ref_objective(logp.tolist(), old.tolist(), per_token.tolist(), mask.tolist(), 0.2, 0.28,
                                       "token-mean", "token")
    assert float(loss) == pytest.approx(want, rel=1e-5)
    torch.testing.assert_close(grad, torch.tensor(want_grad), rtol=1e-5, atol=1e-7)


def test_surrogate_gradient_is_the_policy_gradient_when_unclipped():
    # At ratio 1 the surrogate's gradient is -A * dlogp / n_tokens: raising a positive-advantage token's
    # logprob lowers the loss.
    logp = torch.zeros(2, 3)
    _, grad, sums = _objective_and_grad(logp, logp, torch.tensor([1.0, -1.0]), torch.ones(2, 3))
    assert torch.allclose(grad, torch.tensor([[-1.0] * 3, [1.0] * 3]) / 6)
    assert float(sums["clip_fraction"]) == 0 and float(sums["ratio_mean"] / sums["tokens"]) == pytest.approx(1.0)


def test_clip_higher_lets_positive_advantages_grow_further():
    old = torch.zeros(1, 1)
    logp = torch.full((1, 1), math.log(1.25))  # ratio 1.25
    adv, mask = torch.ones(1), torch.ones(1, 1)
    sym, g_sym, m_sym = _objective_and_grad(logp, old, adv, mask, clip_low=0.2, clip_high=0.2)
    asym, g_asym, m_asym = _objective_and_grad(logp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    assert float(m_sym["clip_high_fraction"]) == 1.0 and float(m_asym["clip_fraction"]) == 0.0
    assert float(asym) < float(sym)  # the unclipped ratio 1.25 counts under clip-higher
    assert float(g_sym) == 0.0 and float(g_asym) == pytest.approx(-1.25)


def test_padding_never_leaks_into_the_loss():
    logp, old, mask, adv = _random_inputs(3)
    poisoned = logp.clone()
    poisoned[mask == 0] = float("inf")
    for level, agg in (("token", "token-mean"), ("sequence", "seq-mean-token-mean")):
        loss, grad, _ = _objective_and_grad(poisoned, old, adv, mask, level=level, agg=agg)
        ref, ref_grad, _ = _objective_and_grad(logp, old, adv, mask, level=level, agg=agg)
        assert torch.isfinite(loss) and float(loss) == pytest.approx(float(ref))
        torch.testing.assert_close(grad, ref_grad)


def test_tis_weights_scale_the_loss():
    logp, old, mask, adv = _random_inputs(4)
    base, _ = grpo_objective(logp, old, adv, mask)
    halved, _ = grpo_objective(logp, old, adv, mask, rollout_logp=old + math.log(2.0), tis_cap=2.0)
    assert float(halved) == pytest.approx(0.5 * float(base), rel=1e-6)


@pytest.mark.parametrize("level, agg", [("token", "token-mean"), ("sequence", "seq-mean-token-mean")])
def test_a_huge_log_ratio_gives_a_finite_loss_and_gradient(level, agg):
    # exp(100) overflows: with a negative advantage the loss was inf and its gradient nan, which the trainer's
    # finite-norm guard answers by dropping the whole mini-batch's step.
    # Log-ratios ±150, ±150, 0 per row: ±100 per token and, as a sequence mean, ±100 too.
    logp = torch.tensor([[150.0, 150.0], [-150.0, -150.0], [150.0, 150.0], [-150.0, -150.0]])
    logp = torch.cat([logp, torch.zeros(4, 1)], dim=1)  # and one ordinary token per row
    old = torch.zeros(4, 3)
    loss, grad, sums = _objective_and_grad(logp, old, torch.tensor([1.0, 1.0, -1.0, -1.0]), torch.ones(4, 3),
                                           level=level, agg=agg)
    assert torch.isfinite(loss), float(loss)
    assert torch.isfinite(grad).all(), grad.tolist()
    assert all(torch.isfinite(v) for v in sums.values())
    if level == "token":  # the ordinary tokens keep their policy gradient: -A / 12
        assert grad[:, 2].tolist() == pytest.approx([-1 / 12, -1 / 12, 1 / 12, 1 / 12])


# ---- GSPO: ratio_level sequence --------------------------------------------------------------------------------

def test_sequence_ratio_is_gspo_under_seq_mean_token_mean():
    # GSPO: 1/G sum_i min(s_i A_i, clip(s_i) A_i), s_i = exp(mean_t log ratio): at ratio 1 with A = 1, a row of
    # L tokens gives each token -1 / (G L): -0.5 for 1 token, -0.125 for 4 (G = 2), whatever the lengths.
    logp = torch.zeros(2, 4)
    mask = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    _, grad, _ = _objective_and_grad(logp, logp, torch.ones(2), mask, level="sequence", agg="seq-mean-token-mean")
    assert grad[0, 0].item() == pytest.approx(-0.5) and grad[1].tolist() == pytest.approx([-0.125] * 4)
    assert grad[0, 1:].abs().max() == 0


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum-norm"])
def test_sequence_ratio_with_a_token_aggregation_is_refused(agg):
    # Token-averaging a sequence ratio copied to every token weighs a row by its length: not GSPO.
    logp, mask = torch.zeros(2, 4), torch.ones(2, 4)
    with pytest.raises(ValueError, match="loss_agg.*ratio_level|ratio_level.*loss_agg") as err:
        grpo_objective(logp, logp, torch.ones(2), mask, level="sequence", agg=agg, horizon=4)
    assert "\n" not in str(err.value)
    with pytest.raises(ValidationError, match="loss_agg.*ratio_level|ratio_level.*loss_agg"):
        GRPOSettings(ratio_level="sequence", loss_agg=agg)
    with pytest.raises(ConfigError, match="ratio_level") as err:
        load_config(None, ["rl.ratio_level=sequence", f"rl.loss_agg={agg}"])
    assert "\n" not in str(err.value) and "loss_agg" in str(err.value)


def test_sequence_ratio_warns_when_the_clip_range_is_far_from_gspo(caplog):
    with caplog.at_level(logging.WARNING, logger="trainer.settings"):
        GRPOSettings(ratio_level="sequence", loss_agg="seq-mean-token-mean", clip_low=3e-4, clip_high=4e-4)
        GRPOSettings(ratio_level="token", clip_low=0.21, clip_high=0.29)
        assert not caplog.records
        GRPOSettings(ratio_level="sequence", loss_agg="seq-mean-token-mean", clip_low=0.21, clip_high=0.29)
    assert len(caplog.records) == 1
    assert "clip_low=0.21" in caplog.text and "ratio_level=sequence" in caplog.text


# ---- KL penalties -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_kl_penalty_matches_reference_values_and_gradients(kind):
    g = torch.Generator().manual_seed(1)
    lp, rlp = -torch.rand(5, 7, generator=g) * 4, -torch.rand(5, 7, generator=g) * 4
    rlp[0, :6] = lp[0, :6] + torch.tensor([30.0, 25.0, 19.0, -19.0, -25.0, -30.0])  # far gaps, both sides
    lp.requires_grad_(True)
    got = kl_penalty(lp, rlp, kind)
    (grad,) = torch.autograd.grad(got.sum(), lp)
    ref = [[ref_kl(a, b, kind) for a, b in zip(r1, r2)] for r1, r2 in zip(lp.tolist(), rlp.tolist())]
    torch.testing.assert_close(got.detach(), torch.tensor([[v for v, _ in r] for r in ref]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, torch.tensor([[d for _, d in r] for r in ref]), rtol=1e-5, atol=1e-5)
    if kind in ("k2", "k3"):
        assert (got >= -1e-7).all()
    assert kl_penalty(lp, lp, kind).abs().max() < 1e-6


def test_k3_gradient_never_points_away_from_the_reference_and_k3_is_monotone():
    # gap = ref - logp. Beyond the clamp the gradient is 0; it used to be +1 (pushing logp further down).
    for dtype in (torch.float32, torch.float64):
        gap = torch.linspace(-60, 60, 481, dtype=dtype)
        logp = torch.full_like(gap, -1.0, requires_grad=True)
        k3 = kl_penalty(logp, logp.detach() + gap, "k3")
        (grad,) = torch.autograd.grad(k3.sum(), logp)
        assert torch.isfinite(k3).all() and torch.isfinite(grad).all()
        assert (grad[gap > 0] <= 0).all() and (grad[gap < 0] >= 0).all(), grad[gap > 0].max()
        right, left = k3[gap >= 0], k3[gap <= 0]
        assert (right[1:] >= right[:-1]).all() and (left[1:] <= left[:-1]).all()  # grows with |gap| on each side
        at = {float(g): float(d) for g, d in zip(gap, grad)}
        assert at[25.0] == 0.0 and at[19.0] == pytest.approx(1 - math.exp(19), rel=1e-5)


def _exact_kl_gradient(logits, ref_logits, direction):
    log_pi, log_ref = torch.log_softmax(logits, -1), torch.log_softmax(ref_logits, -1)
    p, q = (log_pi, log_ref) if direction == "policy||ref" else (log_ref, log_pi)
    (grad,) = torch.autograd.grad((p.exp() * (p - q)).sum(), logits)
    return grad


@pytest.mark.parametrize("seed", range(4))
def test_what_each_kl_estimator_regularises_as_a_loss(seed):
    # As a loss on samples x ~ π (the sample fixed: π(x) weighs, it is not differentiated), the expected gradient
    # is sum_x π(x) ∇k(x): 0 for k1, ∇KL(π‖ref) for k2, ∇KL(ref‖π) for k3 (kl_penalty's docstring).
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(5, generator=g, dtype=torch.float64) * 1.5).requires_grad_(True)
    ref_logits = torch.randn(5, generator=g, dtype=torch.float64) * 1.5
    log_pi, log_ref = torch.log_softmax(logits, -1), torch.log_softmax(ref_logits, -1)
    expected = {}
    for kind in ("k1", "k2", "k3"):
        (expected[kind],) = torch.autograd.grad((log_pi.exp().detach() * kl_penalty(log_pi, log_ref, kind)).sum(),
                                                logits, retain_graph=True)
    forward, reverse = _exact_kl_gradient(logits, ref_logits, "policy||ref"), _exact_kl_gradient(logits, ref_logits,
                                                                                                  "ref||policy")
    torch.testing.assert_close(expected["k1"], torch.zeros(5, dtype=torch.float64))
    torch.testing.assert_close(expected["k2"], forward)
    torch.testing.assert_close(expected["k3"], reverse)
    assert not torch.allclose(forward, reverse, atol=1e-3)  # the two directions differ on these logits


def test_kl_docs_say_what_each_estimator_regularises():
    from pathlib import Path

    from trainer import losses

    readme = Path(__file__).resolve().parents[1].joinpath("README.md").read_text()
    for text in (losses.kl_penalty.__doc__, losses.grpo_objective.__doc__, readme):
        assert "KL(reference" in text and "KL(policy" in text  # k3 pulls toward KL(ref‖π), k2 KL(π‖ref)


def test_kl_penalty_rejects_unknown_kind():
    with pytest.raises(ValueError, match="k4"):
        kl_penalty(torch.zeros(1), torch.zeros(1), "k4")


# ---- aggregation, TIS, mismatch ------------------------------------------------------------------------------

@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_aggregate_matches_reference(agg):
    g = torch.Generator().manual_seed(2)
    values = torch.randn(4, 6, generator=g)
    mask = (torch.rand(4, 6, generator=g) > 0.3).float()
    mask[2] = 0  # an empty row is ignored by seq-mean-token-mean, counts as 0 for the sum-norm
    mask[0, 0] = 1
    assert float(aggregate(values, mask, agg)) == pytest.approx(ref_aggregate(values.tolist(), mask.tolist(), agg),
                                                                rel=1e-5)


def test_truncated_is_weights_and_mismatch_metrics():
    old = torch.tensor([[0.0, math.log(0.5), math.log(4.0)]])
    rollout = torch.zeros(1, 3)
    w = truncated_is_weights(old, rollout, cap=2.0)
    assert w[0].tolist() == pytest.approx([1.0, 0.5, 2.0])
    m = logprob_mismatch(old, rollout, torch.ones(1, 3))
    assert m["frac_over_ln2"] == pytest.approx(1 / 3)  # only the 4x token is beyond a factor of 2
    assert m["abs_diff"] == pytest.approx((math.log(2) + math.log(4)) / 3)


# ---- token_kl in chunks: the same numbers, bounded memory ------------------------------------------------------

def _token_kl_reference(student_logits, teacher_logits, mask, direction="forward", temperature=1.0):
    """token_kl's math in one piece over every position (how it was computed before chunking)."""
    keep = mask.bool()
    student = torch.where(keep.unsqueeze(-1), student_logits.float(), 0.0) / temperature
    teacher = torch.where(keep.unsqueeze(-1), teacher_logits.float(), 0.0) / temperature
    log_s, log_t = torch.log_softmax(student, dim=-1), torch.log_softmax(teacher, dim=-1)
    log_p, log_q = (log_t, log_s) if direction == "forward" else (log_s, log_t)
    p = log_p.exp()
    return torch.where(keep, (p * torch.where(p > 0, log_p - log_q, 0.0)).sum(-1), 0.0)


def _dirty_inputs(seed, dtype=torch.float32, shape=(3, 7, 40)):
    gen = torch.Generator().manual_seed(seed)
    student, teacher = (torch.randn(2, *shape, generator=gen) * 3).to(dtype)
    mask = torch.rand(shape[:2], generator=gen) > 0.3
    mask[0, 0] = True
    student[~mask] = float("nan")
    teacher[~mask] = float("inf")
    student[0, 0, :3] = float("-inf")  # masked vocabulary entries at a real position: 0 * log 0 = 0
    teacher[0, 0, :3] = float("-inf")  # (the same entries: else the KL is truly inf)
    return student, teacher, mask


@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk", [1, 4, 21, None])
def test_chunked_token_kl_equals_the_unchunked_reference(direction, temperature, chunk):
    for dtype in (torch.float32, torch.bfloat16):
        student, teacher, mask = _dirty_inputs(0, dtype)
        got_s, got_t = student.clone().requires_grad_(True), teacher.clone().requires_grad_(True)
        ref_s, ref_t = student.clone().requires_grad_(True), teacher.clone().requires_grad_(True)
        got = token_kl(got_s, got_t, mask, direction=direction, temperature=temperature, positions_per_chunk=chunk)
        want = _token_kl_reference(ref_s, ref_t, mask, direction, temperature)
        assert got.dtype == torch.float32 and torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        upstream = torch.rand_like(want)
        got_grads = torch.autograd.grad((got * upstream).sum(), (got_s, got_t))
        want_grads = torch.autograd.grad((want * upstream).sum(), (ref_s, ref_t))
        for a, b in zip(got_grads, want_grads):
            assert torch.isfinite(a).all() and a.dtype == dtype
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _storage_bytes_saved_for_backward(fn, *inputs):
    """Bytes of the storages autograd keeps for backward, besides the inputs' own: what outlives the forward."""
    own = {t.untyped_storage().data_ptr() for t in inputs}
    saved = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in own:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*inputs)
    return sum(saved.values()), out


class _LargestOutput(TorchDispatchMode):
    """The most elements any single op allocated while active (views of an op's inputs do not count)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_token_kl_memory_is_bounded_by_its_chunk(direction):
    # Unchunked, the forward keeps ~8 fp32 vocabulary-wide tensors per position alive until backward (at 2048
    # tokens x 8 rows x 150k vocabulary: tens of GB). Chunked and recomputed in backward, it keeps none.
    student, teacher, mask = _dirty_inputs(1, torch.bfloat16, shape=(2, 64, 500))
    student.requires_grad_(True)
    one_fp32_logits = student.numel() * 4
    kept, _ = _storage_bytes_saved_for_backward(
        lambda s, t: token_kl(s, t, mask, direction=direction), student, teacher)
    assert kept < one_fp32_logits / 8, f"{kept} bytes saved for backward (one fp32 logits tensor: {one_fp32_logits})"
    # The forward's intermediates span one chunk of positions, not the batch.
    with _LargestOutput() as largest:
        kl = token_kl(student, teacher, mask, direction=direction, positions_per_chunk=8)
    assert largest.largest <= 8 * 500, largest.largest
    with _LargestOutput() as largest:
        torch.autograd.grad(kl.sum(), student)
    assert largest.largest <= student.numel()  # backward: one chunk at a time, plus the logits' own gradient
