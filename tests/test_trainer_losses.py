"""The GRPO loss functions against plain, loop-by-loop reference implementations on random inputs."""
import math
import random

import pytest
import torch

from trainer.losses import (aggregate, grpo_advantages, kl_penalty, logprob_mismatch, policy_loss,
                            truncated_is_weights)


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


def ref_policy_loss(logp, old, adv, mask, clip_low, clip_high, agg, level):
    B, T = len(logp), len(logp[0])
    per = [[0.0] * T for _ in range(B)]
    clipped_count, n = 0, 0
    for b in range(B):
        a_row = adv[b] if isinstance(adv[b], list) else [adv[b]] * T
        if level == "sequence":
            toks = [t for t in range(T) if mask[b][t]]
            seq = sum(logp[b][t] - old[b][t] for t in toks) / max(len(toks), 1)
        for t in range(T):
            if not mask[b][t]:
                continue
            ratio = math.exp(seq if level == "sequence" else logp[b][t] - old[b][t])
            a = a_row[t]
            u = -a * ratio
            c = -a * min(max(ratio, 1 - clip_low), 1 + clip_high)
            per[b][t] = max(u, c)
            clipped_count += c > u
            n += 1
    return ref_aggregate(per, mask, agg), clipped_count / max(n, 1)


def ref_aggregate(values, mask, agg):
    B, T = len(values), len(values[0])
    if agg == "token-mean":
        n = sum(sum(row) for row in mask)
        return sum(values[b][t] for b in range(B) for t in range(T) if mask[b][t]) / max(n, 1)
    if agg == "seq-mean-token-mean":
        seqs = [sum(values[b][t] for t in range(T) if mask[b][t]) / sum(mask[b]) for b in range(B) if sum(mask[b])]
        return sum(seqs) / len(seqs)
    if agg == "seq-mean-token-sum-norm":
        return sum(sum(values[b][t] for t in range(T) if mask[b][t]) / T for b in range(B)) / B
    raise AssertionError(agg)


def ref_kl(lp, rlp, kind):
    d = lp - rlp
    return {"k1": d, "k2": d * d / 2, "k3": math.exp(-d) + d - 1}[kind]


def _random_inputs(seed, B=6, T=9, spread=0.4):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=g) * 3
    old = logp + (torch.rand(B, T, generator=g) - 0.5) * spread  # ratios on both sides of the clip range
    mask = (torch.rand(B, T, generator=g) > 0.25).float()
    mask[:, 0] = 1.0  # every row has a token
    adv = torch.randn(B, generator=g)
    return logp, old, mask, adv


# ---- tests --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("group_size", [1, 2, 4])
def test_advantages_match_reference(scale, group_size):
    rng = random.Random(group_size)
    rewards = [rng.choice([0.0, 0.5, 1.0, 1.5]) + rng.random() * 0.1 for _ in range(4 * group_size)]
    got = grpo_advantages(torch.tensor(rewards), group_size, scale).tolist()
    assert got == pytest.approx(ref_advantages(rewards, group_size, scale), abs=1e-5)


def test_advantages_of_equal_rewards_are_zero_and_groups_are_independent():
    adv = grpo_advantages(torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0]), 3)
    assert adv[:3].abs().max() == 0
    assert adv[3:].sum().abs() < 1e-5 and adv[4] > 0 > adv[3]


def test_advantages_reject_bad_input():
    with pytest.raises(ValueError, match="does not divide"):
        grpo_advantages(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="scale"):
        grpo_advantages(torch.zeros(4), 2, "rank")
    with pytest.raises(ValueError, match="1-D"):
        grpo_advantages(torch.zeros(2, 2), 2)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("clip", [(0.2, 0.2), (0.2, 0.28), (0.05, 0.5)])
def test_policy_loss_matches_reference(agg, level, clip):
    for seed in range(3):
        logp, old, mask, adv = _random_inputs(seed)
        loss, metrics = policy_loss(logp, old, adv, mask, clip_low=clip[0], clip_high=clip[1], agg=agg, level=level)
        want, clip_frac = ref_policy_loss(logp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), clip[0], clip[1],
                                          agg, level)
        assert float(loss) == pytest.approx(want, rel=1e-5, abs=1e-6)
        assert metrics["clip_fraction"] == pytest.approx(clip_frac, abs=1e-6)


def test_policy_loss_accepts_per_token_advantages():
    logp, old, mask, adv = _random_inputs(7)
    per_token = adv.unsqueeze(-1).expand_as(logp).clone()
    per_token[:, 3:] *= -1  # a different advantage per token
    loss, _ = policy_loss(logp, old, per_token, mask)
    want, _ = ref_policy_loss(logp.tolist(), old.tolist(), per_token.tolist(), mask.tolist(), 0.2, 0.2,
                              "token-mean", "token")
    assert float(loss) == pytest.approx(want, rel=1e-5)


def test_policy_loss_gradient_is_the_policy_gradient_when_unclipped():
    # At ratio 1 the surrogate's gradient is -A * dlogp / n_tokens: raising a positive-advantage token's
    # logprob lowers the loss.
    logp = torch.zeros(2, 3, requires_grad=True)
    adv = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 3)
    loss, metrics = policy_loss(logp, logp.detach(), adv, mask)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-1.0] * 3, [1.0] * 3]) / 6)
    assert metrics["clip_fraction"] == 0 and metrics["ratio_mean"] == pytest.approx(1.0)


def test_clip_higher_lets_positive_advantages_grow_further():
    old = torch.zeros(1, 1)
    logp = torch.full((1, 1), math.log(1.25), requires_grad=True)  # ratio 1.25
    adv, mask = torch.ones(1), torch.ones(1, 1)
    sym, m_sym = policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.2)
    asym, m_asym = policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    assert m_sym["clip_high_fraction"] == 1.0 and m_asym["clip_fraction"] == 0.0
    assert float(asym.detach()) < float(sym.detach())  # the unclipped ratio 1.25 counts under clip-higher


def test_padding_never_leaks_into_the_loss():
    logp, old, mask, adv = _random_inputs(3)
    poisoned = logp.clone()
    poisoned[mask == 0] = float("inf")
    loss, _ = policy_loss(poisoned, old, adv, mask, level="sequence")
    ref, _ = policy_loss(logp, old, adv, mask, level="sequence")
    assert torch.isfinite(loss) and float(loss) == pytest.approx(float(ref))


def test_token_weights_scale_the_loss():
    logp, old, mask, adv = _random_inputs(4)
    base, _ = policy_loss(logp, old, adv, mask)
    halved, _ = policy_loss(logp, old, adv, mask, token_weights=torch.full_like(logp, 0.5))
    assert float(halved) == pytest.approx(0.5 * float(base), rel=1e-6)


@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_kl_penalty_matches_reference(kind):
    g = torch.Generator().manual_seed(1)
    lp, rlp = -torch.rand(5, 7, generator=g) * 4, -torch.rand(5, 7, generator=g) * 4
    got = kl_penalty(lp, rlp, kind)
    want = [[ref_kl(a, b, kind) for a, b in zip(r1, r2)] for r1, r2 in zip(lp.tolist(), rlp.tolist())]
    assert torch.allclose(got, torch.tensor(want), rtol=1e-5, atol=1e-6)
    if kind in ("k2", "k3"):
        assert (got >= -1e-7).all()
    assert kl_penalty(lp, lp, kind).abs().max() < 1e-6


def test_kl_penalty_rejects_unknown_kind():
    with pytest.raises(ValueError, match="k4"):
        kl_penalty(torch.zeros(1), torch.zeros(1), "k4")


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
