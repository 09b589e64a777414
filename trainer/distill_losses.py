"""Losses of logit distillation (stage 6): per-token KL between a teacher's and a student's next-token
distributions over the full vocabulary, and its masked token-mean.

Pure functions of tensors; the trainer (:mod:`trainer.distill`) decides which direction, weight and
temperature each objective uses.
"""
from __future__ import annotations

import torch

DIRECTIONS = ("forward", "reverse")


def token_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, *,
             direction: str = "forward", temperature: float = 1.0) -> torch.Tensor:
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
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r}: expected one of {DIRECTIONS}")
    if not temperature > 0:  # also rejects nan
        raise ValueError(f"temperature={temperature!r}: must be > 0")
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(f"teacher_logits: vocabulary of {teacher_logits.shape[-1]} vs the student's "
                         f"{student_logits.shape[-1]}; teacher and student must share a vocabulary")
    if student_logits.shape != teacher_logits.shape or student_logits.shape[:-1] != mask.shape:
        raise ValueError(f"mask: shapes student {tuple(student_logits.shape)}, teacher "
                         f"{tuple(teacher_logits.shape)}, mask {tuple(mask.shape)} do not line up")
    keep = mask.bool()
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


def masked_token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the positions where ``mask`` is true (every token weighs the same); 0 if none.

    Shapes: values [batch, response_len], mask [batch, response_len] -> returns scalar (0-d tensor).

    Masked positions are dropped with ``torch.where`` (not multiplied by 0), so an inf/nan there is harmless.
    """
    keep = mask.bool()
    total = torch.where(keep, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum()
    return total / keep.sum().clamp(min=1)
