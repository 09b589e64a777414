"""GRPO and its variants as pure tensor functions: advantages, the clipped policy loss, KL penalties.

No state, no Ray, no model: plain tensors in, tensors out, so users and tests call them directly. Shapes:
``[batch, response_len]`` for per-token quantities, ``mask`` is 1 on response tokens that count.
"""
from __future__ import annotations

import math
from typing import Literal

import torch

AdvantageScale = Literal["group", "batch", "none"]
LossAgg = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
KLKind = Literal["k1", "k2", "k3"]
LOSS_AGGS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def grpo_advantages(rewards: torch.Tensor, group_size: int, scale: AdvantageScale = "group",
                    eps: float = 1e-6) -> torch.Tensor:
    """Group-relative advantages for ``rewards`` laid out as consecutive groups of ``group_size``.

    - ``"group"``: (r - group mean) / (group std + eps), std unbiased as ``torch.std`` (GRPO).
    - ``"batch"``: (r - group mean) / (std of all rewards + eps).
    - ``"none"``: r - group mean (Dr.GRPO drops the std division).

    A group of one has no baseline to compare against: its advantage is 0.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D, got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"group_size={group_size} does not divide {rewards.numel()} rewards")
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"scale={scale!r}: expected 'group', 'batch' or 'none'")
    rewards = rewards.float()
    if group_size == 1:
        return torch.zeros_like(rewards)
    groups = rewards.view(-1, group_size)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if scale == "group":
        centred = centred / (groups.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        batch_std = rewards.std() if rewards.numel() > 1 else rewards.new_zeros(())
        centred = centred / (batch_std + eps)
    return centred.reshape(-1)


def aggregate(values: torch.Tensor, mask: torch.Tensor, agg: LossAgg = "token-mean") -> torch.Tensor:
    """Reduce per-token ``values`` ``[batch, len]`` to a scalar over the tokens where ``mask`` is set.

    - ``"token-mean"``: mean over all unmasked tokens of the batch (DAPO).
    - ``"seq-mean-token-mean"``: mean per sequence, then mean over sequences with any token (GRPO paper).
    - ``"seq-mean-token-sum-norm"``: per-sequence token sum divided by the mask's width (a constant
      horizon), then mean over sequences (Dr.GRPO): no length bias.
    """
    keep = mask.bool()
    values = torch.where(keep, values, torch.zeros_like(values))  # padding may hold inf/nan: never multiply it
    mask = mask.to(values.dtype)
    if agg == "token-mean":
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    if agg == "seq-mean-token-mean":
        per_seq_tokens = mask.sum(dim=-1)
        has_tokens = (per_seq_tokens > 0).to(values.dtype)
        per_seq = (values * mask).sum(dim=-1) / per_seq_tokens.clamp(min=1.0)
        return (per_seq * has_tokens).sum() / has_tokens.sum().clamp(min=1.0)
    if agg == "seq-mean-token-sum-norm":
        return ((values * mask).sum(dim=-1) / values.shape[-1]).mean()
    raise ValueError(f"agg={agg!r}: expected one of {', '.join(LOSS_AGGS)}")


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip_low: float = 0.2, clip_high: float = 0.2, agg: LossAgg = "token-mean",
                level: Literal["token", "sequence"] = "token",
                token_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped surrogate for GRPO-style training. Returns ``(loss, metrics)``.

    ratio = exp(logp - old_logp) per token (``level="token"``), or the GSPO sequence ratio
    exp(mean_t(logp - old_logp)) shared by every token of a sequence (``level="sequence"``).
    The clip range is ``[1 - clip_low, 1 + clip_high]`` (DAPO clip-higher when ``clip_high > clip_low``).
    ``advantages`` is ``[batch]`` (one per sequence) or ``[batch, len]``. ``token_weights`` (detached,
    e.g. truncated-importance-sampling weights) multiply the per-token loss.

    metrics: ``clip_fraction`` (tokens where the clipped branch is active), ``clip_low_fraction``,
    ``clip_high_fraction``, ``ratio_mean``, ``approx_kl`` (k3 of old vs new).
    """
    if logp.shape != old_logp.shape or logp.shape != mask.shape:
        raise ValueError(f"logp {tuple(logp.shape)}, old_logp {tuple(old_logp.shape)} and mask "
                         f"{tuple(mask.shape)} must have the same shape")
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    advantages = advantages.to(logp.dtype).expand_as(logp)
    maskf = mask.to(logp.dtype)
    # torch.where, not a product: padding may hold anything (inf * 0 is nan).
    log_ratio = torch.where(mask.bool(), logp - old_logp, torch.zeros_like(logp))
    if level == "sequence":
        seq_log_ratio = log_ratio.sum(-1, keepdim=True) / maskf.sum(-1, keepdim=True).clamp(min=1.0)
        log_ratio = seq_log_ratio.expand_as(logp)
    elif level != "token":
        raise ValueError(f"level={level!r}: expected 'token' or 'sequence'")
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    if token_weights is not None:
        per_token = per_token * token_weights.detach().to(per_token.dtype)
    loss = aggregate(per_token, maskf, agg)
    with torch.no_grad():
        active = clipped > unclipped
        n = maskf.sum().clamp(min=1.0)
        low = active & (ratio < 1.0 - clip_low)
        high = active & (ratio > 1.0 + clip_high)
        metrics = {
            "clip_fraction": float((active.to(maskf.dtype) * maskf).sum() / n),
            "clip_low_fraction": float((low.to(maskf.dtype) * maskf).sum() / n),
            "clip_high_fraction": float((high.to(maskf.dtype) * maskf).sum() / n),
            "ratio_mean": float((ratio * maskf).sum() / n),
            "approx_kl": float(aggregate(kl_penalty(old_logp, logp, "k3"), mask, "token-mean")),
        }
    return loss, metrics


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: KLKind = "k3") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from sampled-token logprobs, Δ = logp - ref_logp.

    k1 = Δ (unbiased, high variance), k2 = Δ²/2, k3 = exp(-Δ) + Δ - 1 (unbiased, always >= 0).
    """
    delta = logp - ref_logp
    if kind == "k1":
        return delta
    if kind == "k2":
        return 0.5 * delta.pow(2)
    if kind == "k3":
        # Clamp before exp: a token the policy made far likelier than the reference would overflow.
        return torch.exp(torch.clamp(-delta, max=20.0)) + delta - 1.0
    raise ValueError(f"kind={kind!r}: expected 'k1', 'k2' or 'k3'")


def truncated_is_weights(old_logp: torch.Tensor, rollout_logp: torch.Tensor, cap: float = 2.0) -> torch.Tensor:
    """Truncated importance-sampling weights min(π_train / π_rollout, cap) per token (TIS).

    Corrects for the inference engine sampling from slightly different probabilities than the trainer
    computes (kernels, precision, batch shapes). Detached: they weight the loss, not the gradient path.
    """
    return torch.exp(torch.clamp(old_logp - rollout_logp, max=math.log(cap))).detach()


def logprob_mismatch(train_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """How far the trainer's logprobs are from the engine's on the same tokens.

    ``abs_diff`` mean |Δ|, ``k3`` mean k3 KL(rollout || train), ``frac_over_ln2`` the share of tokens with
    |Δ| > ln 2 (probabilities differing by more than 2×).
    """
    delta = (train_logp - rollout_logp).abs()
    return {
        "abs_diff": float(aggregate(delta, mask, "token-mean")),
        "k3": float(aggregate(kl_penalty(rollout_logp, train_logp, "k3"), mask, "token-mean")),
        "frac_over_ln2": float(aggregate((delta > math.log(2)).to(train_logp.dtype), mask, "token-mean")),
    }
