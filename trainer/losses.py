"""GRPO and its variants as pure tensor functions: advantages, the whole clipped objective, KL penalties; and the
per-token KL of logit distillation: the loss surface of the policy trainers (the reward model's Bradley-Terry loss is in
:mod:`trainer.bradley_terry`).

No state, no Ray, no model: plain tensors in, tensors out, so users and tests call them directly. Shapes:
``[batch, response_len]`` for per-token quantities, ``mask`` is 1 on response tokens that count.
"""
from __future__ import annotations

import math
from typing import Literal

import torch
from torch.utils.checkpoint import checkpoint

AdvantageScale = Literal["group", "batch", "none"]
LossAgg = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
KLKind = Literal["k1", "k2", "k3"]
LOSS_AGGS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
# exp() of a log-ratio or log-probability gap is taken on [-20, 20]: e^20 ~ 5e8 is finite in any float dtype,
# and a token that far off is clipped anyway (e^88 would overflow float32 to inf, and its gradient to nan).
LOG_RATIO_LIMIT = 20.0


def grpo_advantages(rewards: torch.Tensor, group_size: int, scale: AdvantageScale = "group",
                    eps: float = 1e-6) -> torch.Tensor:
    """Group-relative advantages for ``rewards`` laid out as consecutive groups of ``group_size``.

    Shapes: rewards [batch] (batch = groups * group_size) -> returns [batch] float32.

    - ``"group"``: (r - group mean) / (group std + eps), std unbiased as ``torch.std`` (GRPO).
    - ``"batch"``: (r - group mean) / (std of all rewards + eps).
    - ``"none"``: r - group mean (Dr.GRPO drops the std division).

    A group of one has no baseline to compare against: its advantage is 0. A group whose rewards are all
    equal carries no signal and gets exactly 0, whatever ``scale``: its float32 mean of a value that is not
    exact in binary (0.6, 1.6) can be one ulp off, and that ulp divided by ``std + eps`` would otherwise
    push every sample of the group the same way.
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
    all_equal = groups.amax(dim=1, keepdim=True) == groups.amin(dim=1, keepdim=True)
    centred = torch.where(all_equal, torch.zeros_like(groups), groups - groups.mean(dim=1, keepdim=True))
    if scale == "group":
        centred = centred / (groups.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        batch_std = rewards.std() if rewards.numel() > 1 else rewards.new_zeros(())
        centred = centred / (batch_std + eps)
    return centred.reshape(-1)


def aggregate(values: torch.Tensor, mask: torch.Tensor, agg: LossAgg = "token-mean", *,
              horizon: int | None = None, denominator: float | torch.Tensor | None = None) -> torch.Tensor:
    """Reduce per-token ``values`` to a scalar over the tokens where ``mask`` is set.

    Shapes: values [batch, response_len], mask [batch, response_len] -> returns scalar (0-d tensor).

    - ``"token-mean"``: mean over all unmasked tokens of the batch (DAPO).
    - ``"seq-mean-token-mean"``: mean per sequence, then mean over sequences with any token (GRPO paper).
    - ``"seq-mean-token-sum-norm"``: per-sequence token sum divided by a constant ``horizon`` (Dr.GRPO:
      ``max_new_tokens``; no length bias), then mean over sequences. Without ``horizon`` the mask's width
      is used, which is only constant if every batch is padded to the same width.

    ``denominator`` replaces the batch's own count (tokens for token-mean, sequences otherwise): a slice
    of a larger batch then contributes exactly its share, and the shares sum to the whole batch's value.
    """
    keep = mask.bool()
    values = torch.where(keep, values, torch.zeros_like(values))  # padding may hold inf/nan: never multiply it
    mask = mask.to(values.dtype)
    if agg == "token-mean":
        total = (values * mask).sum()
        count = mask.sum().clamp(min=1.0)
    elif agg == "seq-mean-token-mean":
        per_seq_tokens = mask.sum(dim=-1)
        has_tokens = (per_seq_tokens > 0).to(values.dtype)
        total = ((values * mask).sum(dim=-1) / per_seq_tokens.clamp(min=1.0) * has_tokens).sum()
        count = has_tokens.sum().clamp(min=1.0)
    elif agg == "seq-mean-token-sum-norm":
        total = (values * mask).sum() / (horizon or values.shape[-1])
        count = values.new_tensor(float(max(values.shape[0], 1)))
    else:
        raise ValueError(f"agg={agg!r}: expected one of {', '.join(LOSS_AGGS)}")
    return total / (count if denominator is None else denominator)


def aggregate_count(mask: torch.Tensor, agg: LossAgg) -> float:
    """The count :func:`aggregate` divides by for ``mask``: tokens (token-mean), sequences with a token
    (seq-mean-token-mean) or rows (seq-mean-token-sum-norm). The ``denominator`` of a whole batch.

    Shapes: mask [batch, response_len] -> returns a Python float.
    """
    if agg == "token-mean":
        return max(float(mask.sum()), 1.0)
    if agg == "seq-mean-token-mean":
        return max(float((mask.sum(dim=-1) > 0).sum()), 1.0)
    if agg == "seq-mean-token-sum-norm":
        return float(max(mask.shape[0], 1))
    raise ValueError(f"agg={agg!r}: expected one of {', '.join(LOSS_AGGS)}")


def _surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
               clip_low: float, clip_high: float, level: str
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token clipped surrogate ``[batch, len]``, the ratio, and where the clipped branch is active."""
    if logp.shape != old_logp.shape or logp.shape != mask.shape:
        raise ValueError(f"logp {tuple(logp.shape)}, old_logp {tuple(old_logp.shape)} and mask "
                         f"{tuple(mask.shape)} must have the same shape")
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)
    advantages = advantages.to(logp.dtype).expand_as(logp)
    # torch.where, not a product: padding may hold anything (inf * 0 is nan).
    log_ratio = torch.where(mask.bool(), logp - old_logp, torch.zeros_like(logp))
    if level == "sequence":
        maskf = mask.to(logp.dtype)
        seq_log_ratio = log_ratio.sum(-1, keepdim=True) / maskf.sum(-1, keepdim=True).clamp(min=1.0)
        log_ratio = seq_log_ratio.expand_as(logp)
    elif level != "token":
        raise ValueError(f"level={level!r}: expected 'token' or 'sequence'")
    # Beyond the limit the clipped branch is the one that counts (or, with the wrong sign, a huge but finite
    # loss with no gradient): never inf * 0 = nan in backward, which would make the trainer drop the step.
    ratio = torch.exp(torch.clamp(log_ratio, -LOG_RATIO_LIMIT, LOG_RATIO_LIMIT))
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    return torch.maximum(unclipped, clipped), ratio, (clipped > unclipped)


def _clip_sums(ratio: torch.Tensor, active: torch.Tensor, old_logp: torch.Tensor, logp: torch.Tensor,
               maskf: torch.Tensor, clip_low: float, clip_high: float) -> dict[str, torch.Tensor]:
    """Token sums (detached) of the clip indicators, the ratio and k3(old || new) over ``maskf``."""
    with torch.no_grad():
        active = active.to(maskf.dtype) * maskf
        return {
            "clip_fraction": active.sum(),
            "clip_low_fraction": (active * (ratio < 1.0 - clip_low).to(maskf.dtype)).sum(),
            "clip_high_fraction": (active * (ratio > 1.0 + clip_high).to(maskf.dtype)).sum(),
            "ratio_mean": (ratio.detach() * maskf).sum(),
            "approx_kl": torch.where(maskf.bool(), kl_penalty(old_logp, logp.detach(), "k3"), 0.0).sum(),
        }


def grpo_objective(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
                   clip_low: float = 0.2, clip_high: float = 0.28, agg: LossAgg = "token-mean",
                   level: Literal["token", "sequence"] = "token", horizon: int | None = None,
                   denominator: float | None = None,
                   rollout_logp: torch.Tensor | None = None, rollout_valid: torch.Tensor | None = None,
                   tis_cap: float | None = None,
                   ref_logp: torch.Tensor | None = None, kl_coef: float = 0.0, kl_kind: KLKind = "k3",
                   entropy: torch.Tensor | None = None, entropy_coef: float = 0.0
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The whole GRPO loss of a (micro-)batch: clipped surrogate (optionally weighted by truncated importance
    sampling), + ``kl_coef`` · the ``kl_kind`` penalty toward the reference (:func:`kl_penalty`: k3's gradient is
    that of KL(reference ‖ policy), k2's that of KL(policy ‖ reference), k1's is 0 in expectation), −
    ``entropy_coef`` · entropy, each aggregated by ``agg``. Returns ``(loss, sums)``: the loss to backward, and
    detached 0-d tensors.

    Shapes: logp, old_logp, mask, rollout_logp, ref_logp, entropy [batch, response_len]; advantages [batch]
    (or [batch, response_len]); rollout_valid [batch] -> returns (loss scalar, sums of scalars).

    - ``denominator``: the whole mini-batch's count (:func:`aggregate_count`), so that micro-batch losses
      add up to the mini-batch loss (gradient accumulation); default: this batch's own.
    - ``rollout_logp`` with ``rollout_valid`` (rows whose engine returned logprobs): TIS weights
      min(π_old / π_rollout, ``tis_cap``) on valid rows, weight 1 elsewhere; the rollout/trainer mismatch
      is measured on valid rows only.
    - ``entropy``: with ``entropy_coef`` it must carry its graph; without, it is logged.
    - ``level``: ``"token"``, ratio exp(logp - old_logp) per token; ``"sequence"`` (GSPO), the sequence ratio
      s_i = exp(mean_t(logp - old_logp)) shared by a row's tokens, with ``agg="seq-mean-token-mean"`` only:
      the loss is then GSPO's 1/G sum_i max(-s_i A_i, -clip(s_i) A_i). A token aggregation would count the
      shared ratio once per token, weighting a row by its length; it is refused.
    - The clip range is ``[1 - clip_low, 1 + clip_high]`` (DAPO clip-higher when ``clip_high > clip_low``).

    ``sums``: ``pg_loss``, ``kl``, ``entropy`` (this batch's share of the aggregate: they add up over
    micro-batches), and token sums to divide by ``tokens`` (``clip_*``, ``ratio_mean``, ``approx_kl``) or
    by ``mismatch_tokens`` (``mismatch_abs_diff``, ``mismatch_k3``, ``mismatch_frac_over_ln2``).
    """
    if level == "sequence" and agg != "seq-mean-token-mean":
        raise ValueError(f"loss_agg={agg!r} with ratio_level='sequence': GSPO averages over sequences, use "
                         "loss_agg='seq-mean-token-mean' (a token mean weighs each row's ratio by its length)")
    maskf = mask.to(logp.dtype)
    agg_kw = dict(horizon=horizon, denominator=denominator)
    per_token, ratio, active = _surrogate(logp, old_logp, advantages, mask, clip_low, clip_high, level)
    sums = _clip_sums(ratio, active, old_logp, logp, maskf, clip_low, clip_high)
    sums["tokens"] = maskf.sum().detach()
    if rollout_logp is not None:
        valid = torch.ones(logp.shape[0], dtype=torch.bool, device=logp.device) if rollout_valid is None \
            else rollout_valid.to(device=logp.device, dtype=torch.bool)
        valid_mask = maskf * valid.unsqueeze(-1).to(maskf.dtype)
        old = old_logp.detach()
        if tis_cap is not None:
            weights = torch.where(valid.unsqueeze(-1), truncated_is_weights(old, rollout_logp, tis_cap),
                                  torch.ones_like(old))
            per_token = per_token * weights
        with torch.no_grad():
            delta = torch.where(valid_mask.bool(), (old - rollout_logp).abs(), 0.0)
            k3 = torch.where(valid_mask.bool(), kl_penalty(rollout_logp, old, "k3"), 0.0)
            sums.update(mismatch_abs_diff=delta.sum(), mismatch_k3=k3.sum(),
                        mismatch_frac_over_ln2=((delta > math.log(2)).to(maskf.dtype) * valid_mask).sum(),
                        mismatch_tokens=valid_mask.sum())
    loss = aggregate(per_token, maskf, agg, **agg_kw)
    sums["pg_loss"] = loss.detach()
    if ref_logp is not None and kl_coef:
        kl = aggregate(kl_penalty(logp, ref_logp, kl_kind), maskf, agg, **agg_kw)
        loss = loss + kl_coef * kl
        sums["kl"] = kl.detach()
    if entropy is not None:
        ent = aggregate(entropy, maskf, agg, **agg_kw)
        if entropy_coef:
            loss = loss - entropy_coef * ent
        sums["entropy"] = ent.detach()
    return loss, sums


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: KLKind = "k3") -> torch.Tensor:
    """Per-token KL penalty toward the reference from sampled-token logprobs, Δ = logp - ref_logp.

    Shapes: logp, ref_logp [batch, response_len] -> returns [batch, response_len] (elementwise).

    k1 = Δ, k2 = Δ²/2, k3 = exp(-Δ) + Δ - 1 (always >= 0). As *values* on samples of the policy, k1 and k3
    are unbiased estimates of KL(policy ‖ reference), k2 a biased one. As a *loss* (gradient through logp,
    the sample fixed) they regularise different things; the expected gradient over the policy's samples is

    - k1: 0 (E_π[∇log π] = 0): no regularisation at all, only noise;
    - k2: ∇KL(policy ‖ reference) (reverse KL: mode-seeking);
    - k3: ∇KL(reference ‖ policy) (forward KL: mass-covering), not the KL its value estimates.

    k3's Δ is clamped at -20 (a token the reference finds e^20 times likelier): beyond it k3 is constant and
    its gradient 0 (exp would overflow); k3 stays finite and grows with |Δ| on either side.
    """
    delta = logp - ref_logp
    if kind == "k1":
        return delta
    if kind == "k2":
        return 0.5 * delta.pow(2)
    if kind == "k3":
        # Clamp Δ itself, not only the exp's argument: clamping -Δ inside exp alone left the +Δ term, whose
        # gradient (+1) then pushed logp *away* from the reference and made k3 shrink as the gap grew.
        delta = torch.clamp(delta, min=-LOG_RATIO_LIMIT)
        return torch.exp(-delta) + delta - 1.0
    raise ValueError(f"kind={kind!r}: expected 'k1', 'k2' or 'k3'")


def truncated_is_weights(old_logp: torch.Tensor, rollout_logp: torch.Tensor, cap: float = 2.0) -> torch.Tensor:
    """Truncated importance-sampling weights min(π_train / π_rollout, cap) per token (TIS).

    Shapes: old_logp, rollout_logp [batch, response_len] -> returns [batch, response_len], detached.

    Corrects for the inference engine sampling from slightly different probabilities than the trainer
    computes (kernels, precision, batch shapes). Detached: they weight the loss, not the gradient path.
    """
    return torch.exp(torch.clamp(old_logp - rollout_logp, max=math.log(cap))).detach()


def logprob_mismatch(train_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """How far the trainer's logprobs are from the engine's on the same tokens.

    Shapes: train_logp, rollout_logp, mask [batch, response_len] -> returns a dict of Python floats.

    ``abs_diff`` mean |Δ|, ``k3`` mean k3 KL(rollout || train), ``frac_over_ln2`` the share of tokens with
    |Δ| > ln 2 (probabilities differing by more than 2×).
    """
    delta = (train_logp - rollout_logp).abs()
    return {
        "abs_diff": float(aggregate(delta, mask, "token-mean")),
        "k3": float(aggregate(kl_penalty(rollout_logp, train_logp, "k3"), mask, "token-mean")),
        "frac_over_ln2": float(aggregate((delta > math.log(2)).to(train_logp.dtype), mask, "token-mean")),
    }


# ---- logit distillation (stage 6): per-token KL between a teacher's and a student's distributions ----------

DIRECTIONS = ("forward", "reverse")


# Vocabulary entries per chunk of token_kl: its ~8 fp32 intermediates then take ~0.5 GiB, whatever the batch.
KL_CHUNK_ELEMENTS = 1 << 24


def token_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, *,
             direction: str = "forward", temperature: float = 1.0,
             positions_per_chunk: int | None = None) -> torch.Tensor:
    """Per-token KL between the teacher's and the student's softmax over the vocabulary.

    Shapes: student_logits, teacher_logits [batch, response_len, vocab], mask [batch, response_len] ->
    returns [batch, response_len] fp32.

    Logits may be any float dtype (the math runs in fp32); ``mask`` is bool or 0/1: positions where it is
    false get exactly 0, whatever their logits hold (padding may carry inf or nan), and pass no gradient.

    - ``direction="forward"``: KL(teacher || student) = sum_v p_t (log p_t - log p_s). Mass-covering: what
      SFT-style distillation on teacher-forced data minimises (Hinton et al.).
    - ``direction="reverse"``: KL(student || teacher) = sum_v p_s (log p_s - log p_t). Mode-seeking: what
      on-policy distillation minimises on the student's own samples (GKD with lambda=1).

    Both distributions are ``softmax(logits / temperature)``. The result is the plain KL of those tempered
    distributions: the Hinton ``temperature**2`` factor (which keeps gradient magnitudes comparable across
    temperatures) is the caller's loss weighting, not part of the divergence.

    Gradients flow into whichever logits require them (normally only the student's).

    Memory: the positions (batch x response_len, flattened) are taken ``positions_per_chunk`` at a time
    (default: :data:`KL_CHUNK_ELEMENTS` // vocab), each chunk under activation checkpointing: its fp32
    vocabulary-wide intermediates exist for one chunk at a time and are recomputed in backward, so nothing
    vocabulary-wide is kept between forward and backward but the inputs themselves.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r}: expected one of {DIRECTIONS}")
    if not temperature > 0:  # also rejects nan
        raise ValueError(f"temperature={temperature!r}: must be > 0")
    if positions_per_chunk is not None and positions_per_chunk < 1:
        raise ValueError(f"positions_per_chunk={positions_per_chunk!r}: must be >= 1")
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(f"teacher_logits: vocabulary of {teacher_logits.shape[-1]} vs the student's "
                         f"{student_logits.shape[-1]}; teacher and student must share a vocabulary")
    if student_logits.shape != teacher_logits.shape or student_logits.shape[:-1] != mask.shape:
        raise ValueError(f"mask: shapes student {tuple(student_logits.shape)}, teacher "
                         f"{tuple(teacher_logits.shape)}, mask {tuple(mask.shape)} do not line up")
    keep = mask.bool()
    vocab = student_logits.shape[-1]
    step = positions_per_chunk or max(1, KL_CHUNK_ELEMENTS // max(vocab, 1))
    # flatten is a view for contiguous logits; split's backward concatenates the chunks' gradients once.
    chunks = zip(student_logits.flatten(0, -2).split(step), teacher_logits.flatten(0, -2).split(step),
                 keep.flatten().split(step))
    kl = [checkpoint(_token_kl_positions, s, t, k, direction, temperature, use_reentrant=False,
                     preserve_rng_state=False) for s, t, k in chunks]
    return torch.cat(kl).view(keep.shape)


def _token_kl_positions(student_logits: torch.Tensor, teacher_logits: torch.Tensor, keep: torch.Tensor,
                        direction: str, temperature: float) -> torch.Tensor:
    """:func:`token_kl` of one chunk: logits [positions, vocab], keep [positions] -> [positions] fp32."""
    # Blank masked positions *before* any math: a nan there would otherwise reach the backward pass
    # (where() gives the unselected branch a zero gradient, but 0 * nan in the ops below it is still nan).
    # torch.where, never a multiply by the mask: nan * 0 is nan.
    student = torch.where(keep.unsqueeze(-1), student_logits.float(), 0.0)
    teacher = torch.where(keep.unsqueeze(-1), teacher_logits.float(), 0.0)
    if temperature != 1.0:
        student = student / temperature
        teacher = teacher / temperature
    log_s = torch.log_softmax(student, dim=-1)
    log_t = torch.log_softmax(teacher, dim=-1)
    # KL(p || q) = sum_v p (log p - log q), p the distribution the expectation is under.
    log_p, log_q = (log_t, log_s) if direction == "forward" else (log_s, log_t)
    p = log_p.exp()
    # 0 * log 0 = 0: a token p never picks costs nothing even where log p (and maybe log q) is -inf, e.g. a
    # model that masks padded vocabulary entries with -inf. Selecting before the product keeps -inf and
    # nan out of both the value and the gradient.
    diff = torch.where(p > 0, log_p - log_q, 0.0)
    kl = (p * diff).sum(-1)
    return torch.where(keep, kl, 0.0)
