"""Logit distillation of a smaller student from a teacher with the same vocabulary (stage 6, trainer side).

Two objectives, one optimizer step per call:

- :meth:`DistillTrainer.train_distill_sft`: teacher-forced SFT data (prompt + target tokens);
  ``(1 - kl_weight) * CE + kl_weight * T^2 * KL(teacher || student)`` per target token, token-mean.
- :meth:`DistillTrainer.train_on_policy`: the student's own samples (drawn elsewhere, by the rollout
  engine); per-token reverse ``KL(student || teacher)`` over the full vocabulary, token-mean (on-policy
  distillation, GKD with lambda = 1).

The teacher lives in the trainer's process, frozen: both objectives need its full ``[tokens, vocab]``
logits (49k wide for SmolLM2), far too much to ship between Ray actors, while its weights are only read.
"""
from __future__ import annotations

import time
from typing import Sequence

import torch

from .losses import token_kl
from .devices import autocast_context
from .policy import Policy, PolicyTrainer, _chunks
from .sequences import PaddedRows, token_logprobs
from .settings import TrainerSettings


def response_logits(model, rows: PaddedRows) -> torch.Tensor:
    """Logits ``[B, R, vocab]`` whose row ``t`` predicts response token ``t`` (pair with ``rows.response_mask``).

    The same layout as :func:`trainer.sequences.response_logprobs`: prompts are left-padded to width P, so
    column ``P - 1 + t`` predicts response token ``t`` in every row, and ``logits_to_keep=R + 1`` keeps the
    prompt's logits from ever being materialised. Gradients flow unless the caller disables them.
    """
    r = rows.response_width
    out = model(input_ids=rows.input_ids, attention_mask=rows.attention_mask, position_ids=rows.position_ids,
                logits_to_keep=r + 1, use_cache=False)
    # The last kept column predicts the token after the response: nothing to compare it with.
    return out.logits[:, :-1, :]


class DistillTrainer(PolicyTrainer):
    """A :class:`PolicyTrainer` (the student) with a frozen teacher next to it, for logit distillation."""

    def __init__(self, model_dir: str, settings: TrainerSettings | None, teacher_dir: str) -> None:
        super().__init__(model_dir, settings)
        self.teacher_dir = str(teacher_dir)
        # Checked from config + tokenizer before the teacher's weights are loaded (a teacher can be large).
        _check_same_vocabulary(self.model.config, self.tokenizer, self.teacher_dir)
        # Policy.__init__ re-seeds torch's global RNG: keep the student's RNG stream as a plain PolicyTrainer
        # would leave it (same dropout / sampling draws with or without a teacher).
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            # trainable=False: eval mode, requires_grad False, no LoRA / checkpointing even if the student has them.
            self.teacher = Policy(self.teacher_dir, self.settings)

    # ---- forward passes -----------------------------------------------------------------------------------

    def _student_logits(self, rows: PaddedRows) -> torch.Tensor:
        with autocast_context(self.settings.precision, self.device):
            return response_logits(self.model, rows)

    @torch.no_grad()
    def _teacher_logits(self, rows: PaddedRows) -> torch.Tensor:
        """The teacher's logits on the same rows: no graph (it is never trained), same precision as the student."""
        with autocast_context(self.settings.precision, self.device):
            return response_logits(self.teacher.model, rows)

    # ---- teacher-forced distillation --------------------------------------------------------------------

    def train_distill_sft(self, prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], *,
                          kl_weight: float, temperature: float = 1.0, micro_batch_size: int = 8
                          ) -> dict[str, float]:
        """One optimizer step of ``(1 - kl_weight) * CE + kl_weight * temperature^2 * KL(teacher || student)``.

        Per target token, token-mean over all targets of the batch (prompt tokens condition, never train),
        exactly as :meth:`PolicyTrainer.train_sft` weighs tokens: each micro-batch contributes its token sum
        over the batch's total, so the gradient equals that of one big batch whatever ``micro_batch_size``.
        CE is the plain (temperature 1) next-token loss; the KL compares both distributions softened by
        ``temperature``, times ``temperature^2`` (Hinton et al.: soft-target gradients shrink as 1/T^2).
        With ``kl_weight=0`` the gradient is :meth:`train_sft`'s.

        Metrics: ``loss`` (the objective), ``ce``, ``kl`` (the KL at ``temperature``, without the T^2
        factor), ``grad_norm``, ``tokens``, ``lr``, ``train_seconds``.
        """
        if not 0.0 <= kl_weight <= 1.0:
            raise ValueError(f"kl_weight={kl_weight!r}: must be in [0, 1]")
        if not temperature > 0:
            raise ValueError(f"temperature={temperature!r}: must be > 0")
        _check_pairs(prompts, targets, "targets")
        started = time.perf_counter()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total_tokens = sum(len(t) for t in targets)
        sums = {"loss": 0.0, "ce": 0.0, "kl": 0.0}
        for micro in _chunks(list(range(len(prompts))), micro_batch_size):
            rows = self._rows([prompts[i] for i in micro], [targets[i] for i in micro])
            mask = rows.response_mask.bool()
            # The teacher runs even at kl_weight=0: the KL is still worth logging, and a no-grad pass is cheap.
            teacher_logits = self._teacher_logits(rows)
            student_logits = self._student_logits(rows)
            logp, _ = token_logprobs(student_logits, rows.response_ids, 1.0, False)
            ce = torch.where(mask, -logp, 0.0).sum()
            kl = token_kl(student_logits, teacher_logits, mask, direction="forward", temperature=temperature).sum()
            # A term with weight 0 stays out of the graph: no wasted backward, and no 0 * inf if it overflowed.
            loss = 0.0
            if kl_weight < 1.0:
                loss = loss + (1.0 - kl_weight) * ce
            if kl_weight > 0.0:
                loss = loss + kl_weight * temperature ** 2 * kl
            (loss / max(total_tokens, 1)).backward()
            for key, value in (("loss", loss), ("ce", ce), ("kl", kl)):
                sums[key] += float(value.detach())
            del teacher_logits, student_logits  # [rows, len, vocab] each: free them before the next micro-batch
        grad_norm = float(self._optimizer_step())
        out = {k: v / max(total_tokens, 1) for k, v in sums.items()}
        out.update(grad_norm=grad_norm, tokens=float(total_tokens), lr=self.scheduler.get_last_lr()[0],
                   train_seconds=time.perf_counter() - started)
        return out

    # ---- on-policy distillation -------------------------------------------------------------------------

    def train_on_policy(self, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], *,
                        micro_batch_size: int = 8) -> dict[str, float]:
        """One optimizer step of per-token reverse ``KL(student || teacher)`` on the student's own samples.

        Over the full vocabulary at every response position, token-mean over the batch (micro-batches
        weighted as in :meth:`train_distill_sft`). The sampled tokens are data, as in GKD: no gradient goes
        through the sampling, and none into the teacher. Mode-seeking: the student is pushed off what the
        teacher finds unlikely rather than made to cover all the teacher's mass, which a smaller model
        cannot. The analytic full-vocabulary KL has no sampling variance per position.

        Metrics: ``loss`` = ``reverse_kl``, ``teacher_logprob`` / ``student_logprob`` (token-mean log-prob
        of the sampled tokens under each: the teacher's should rise as the student learns what it likes),
        ``grad_norm``, ``tokens``, ``lr``, ``train_seconds``.
        """
        _check_pairs(prompts, responses, "responses")
        started = time.perf_counter()
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total_tokens = sum(len(r) for r in responses)
        sums = {"reverse_kl": 0.0, "teacher_logprob": 0.0, "student_logprob": 0.0}
        for micro in _chunks(list(range(len(prompts))), micro_batch_size):
            rows = self._rows([prompts[i] for i in micro], [responses[i] for i in micro])
            mask = rows.response_mask.bool()
            teacher_logits = self._teacher_logits(rows)
            student_logits = self._student_logits(rows)
            kl = token_kl(student_logits, teacher_logits, mask, direction="reverse").sum()
            (kl / max(total_tokens, 1)).backward()
            sums["reverse_kl"] += float(kl.detach())
            with torch.no_grad():
                for key, logits in (("teacher_logprob", teacher_logits), ("student_logprob", student_logits)):
                    lp, _ = token_logprobs(logits.detach(), rows.response_ids, 1.0, False)
                    sums[key] += float(torch.where(mask, lp, 0.0).sum())
            del teacher_logits, student_logits
        grad_norm = float(self._optimizer_step())
        out = {k: v / max(total_tokens, 1) for k, v in sums.items()}
        out.update(loss=out["reverse_kl"], grad_norm=grad_norm, tokens=float(total_tokens),
                   lr=self.scheduler.get_last_lr()[0], train_seconds=time.perf_counter() - started)
        return out


def _check_pairs(prompts: Sequence, others: Sequence, name: str) -> None:
    if len(prompts) != len(others) or not prompts:
        raise ValueError(f"{name}: {len(others)} for {len(prompts)} prompts (need one per prompt, at least one)")


def _check_same_vocabulary(student_config, student_tokenizer, teacher_dir: str) -> None:
    """Logit distillation compares distributions id by id: both models need the same logits width and the
    same token -> id map. Raises ValueError naming ``distill.teacher`` otherwise."""
    from transformers import AutoConfig, AutoTokenizer

    teacher_config = AutoConfig.from_pretrained(teacher_dir)
    t_width = teacher_config.get_text_config().vocab_size
    s_width = student_config.get_text_config().vocab_size
    if t_width != s_width:
        raise ValueError(f"distill.teacher: {teacher_dir} has {t_width} logits per token, the student {s_width}; "
                         "teacher and student must share a vocabulary")
    teacher_tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    if teacher_tokenizer.get_vocab() != student_tokenizer.get_vocab():
        raise ValueError(f"distill.teacher: {teacher_dir} has a different tokenizer vocabulary "
                         f"({len(teacher_tokenizer)} tokens, the student's {len(student_tokenizer)}); "
                         "teacher and student must share a vocabulary")
