"""Logit distillation of a smaller student from a teacher with the same vocabulary (stage 6, trainer side).

Two objectives, one optimizer step per call:

- :meth:`DistillTrainer.train_distill_sft`: teacher-forced SFT data (prompt + target tokens);
  ``(1 - kl_weight) * CE + kl_weight * T^2 * KL(teacher || student)`` per target token, token-mean, plus with
  ``distill.feature`` (:mod:`trainer.feature_distill`) ``weight x`` a hidden-state loss on the same tokens.
- :meth:`DistillTrainer.train_on_policy`: the student's own samples (drawn elsewhere, by the rollout
  engine); per-token reverse ``KL(student || teacher)`` over the full vocabulary, token-mean (on-policy
  distillation, GKD with lambda = 1).

The teacher lives in the trainer's process, frozen: both objectives need its full ``[tokens, vocab]``
logits (49k wide for SmolLM2), far too much to ship between Ray actors, while its weights are only read.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import torch

from .losses import token_kl
from .devices import autocast_context
from .feature_distill import FeatureProjection, FeatureSpec, hidden_state_loss, layer_pairs
from .policy import Policy, PolicyTrainer, _chunks
from .sequences import PaddedRows, token_logprobs
from .settings import TrainerSettings


def response_logits(model, rows: PaddedRows) -> torch.Tensor:
    """Logits ``[B, R, vocab]`` whose row ``t`` predicts response token ``t`` (pair with ``rows.response_mask``).

    The same layout as :func:`trainer.sequences.response_logprobs`: prompts are left-padded to width P, so
    column ``P - 1 + t`` predicts response token ``t`` in every row, and ``logits_to_keep=R + 1`` keeps the
    prompt's logits from ever being materialised. Gradients flow unless the caller disables them.
    """
    return response_outputs(model, rows)[0]


def response_outputs(model, rows: PaddedRows, layers: Sequence[int] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """:func:`response_logits` and, for each index of ``layers`` (into HF's ``hidden_states``: 0 = the
    embeddings), that hidden state ``[B, R, H]`` at the same columns: the states that predict response token
    ``t``. One forward pass; without ``layers`` no hidden states are asked for."""
    r = rows.response_width
    out = model(input_ids=rows.input_ids, attention_mask=rows.attention_mask, position_ids=rows.position_ids,
                logits_to_keep=r + 1, use_cache=False, output_hidden_states=bool(layers))
    # The last kept column predicts the token after the response: nothing to compare it with.
    hidden = [out.hidden_states[i][:, -(r + 1):-1, :] for i in layers]
    return out.logits[:, :-1, :], hidden


class DistillTrainer(PolicyTrainer):
    """A :class:`PolicyTrainer` (the student) with a frozen teacher next to it, for logit distillation and, with
    ``feature`` (:class:`trainer.feature_distill.FeatureSpec` or its dict), feature distillation.

    The feature projection (student -> teacher width, when there is one) trains with the student: it is in the
    optimizer (its own parameter group, same settings and schedule), counts in the clipped gradient norm, and
    is saved with the trainer state (``feature_projection.pt`` of a checkpoint), never into the student's
    model dir: :meth:`save_pretrained` and :meth:`inference_state_dict` stay the plain HF student."""

    projection: FeatureProjection | None = None  # set before the optimizer is rebuilt to include it

    def __init__(self, model_dir: str, settings: TrainerSettings | None, teacher_dir: str,
                 feature: FeatureSpec | dict | None = None) -> None:
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
            self.feature = FeatureSpec.of(feature)
            self.feature_pairs: list[tuple[int, int]] = []
            if self.feature.active:
                self._setup_feature_projection()

    def _setup_feature_projection(self) -> None:
        """Resolve the layer pairs against both models' depths; build the projection and an optimizer with it."""
        s_cfg = self.model.config.get_text_config()
        t_cfg = self.teacher.model.config.get_text_config()
        self.feature_pairs = layer_pairs(self.feature.student_layers, self.feature.teacher_layers,
                                         s_cfg.num_hidden_layers, t_cfg.num_hidden_layers)
        self.projection = FeatureProjection(len(self.feature_pairs), s_cfg.hidden_size, t_cfg.hidden_size,
                                            project=self.feature.project).to(self.device)
        self._build_optimizer()  # (nothing trained yet: the optimizer has no state to lose)

    def _build_optimizer(self) -> None:
        super()._build_optimizer()
        extra = list(self.projection.parameters()) if self.projection is not None else []
        if extra:
            self.optimizer.add_param_group({"params": extra})
            # LambdaLR records each group's base lr when it is made: remake it so the new group follows the schedule.
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)

    # ---- checkpoints: the projection is trainer state, not part of the exported student -------------------

    def save_checkpoint(self, out_dir, state: dict | None = None) -> str:
        """:meth:`PolicyTrainer.save_checkpoint` plus the feature projection's weights (its Adam moments are
        in the optimizer state already)."""
        out = super().save_checkpoint(out_dir, state)
        if self.rank == 0 and self.projection is not None and not self.projection.is_identity:
            torch.save(self.projection.state_dict(), f"{out}/feature_projection.pt")
        return out

    def load_checkpoint(self, ckpt_dir) -> None:
        """:meth:`PolicyTrainer.load_checkpoint` plus the feature projection's weights."""
        super().load_checkpoint(ckpt_dir)
        if self.projection is not None and not self.projection.is_identity:
            path = Path(ckpt_dir) / "feature_projection.pt"
            if not path.is_file():
                raise RuntimeError(f"checkpoint {ckpt_dir}: no feature_projection.pt, but distill.feature "
                                   "trains a projection (a checkpoint of another config)")
            self.projection.load_state_dict(torch.load(path, map_location=self.device))

    # ---- forward passes -----------------------------------------------------------------------------------

    def _student_logits(self, rows: PaddedRows) -> torch.Tensor:
        return self._student_outputs(rows)[0]

    def _student_outputs(self, rows: PaddedRows, layers: Sequence[int] = ()):
        with autocast_context(self.settings.precision, self.device):
            return response_outputs(self.model, rows, layers)

    def _teacher_logits(self, rows: PaddedRows) -> torch.Tensor:
        return self._teacher_outputs(rows)[0]

    @torch.no_grad()
    def _teacher_outputs(self, rows: PaddedRows, layers: Sequence[int] = ()):
        """The teacher's logits (and hidden states) on the same rows: no graph (it is never trained), same
        precision as the student. The hidden states are copied out of the full-width tensors so that only the
        response columns of the chosen layers outlive the call."""
        with autocast_context(self.settings.precision, self.device):
            logits, hidden = response_outputs(self.teacher.model, rows, layers)
        return logits, [h.contiguous() for h in hidden]

    def _feature_loss(self, student_h: list[torch.Tensor], teacher_h: list[torch.Tensor],
                      mask: torch.Tensor) -> torch.Tensor:
        """Per-token ``[B, R]`` feature loss, the mean over the compared layers (0 at masked tokens)."""
        total = 0.0
        for k, (s, t) in enumerate(zip(student_h, teacher_h)):
            total = total + hidden_state_loss(self.projection(s.float(), k), t, mask, self.feature.loss)
        return total / len(student_h)

    # ---- teacher-forced distillation --------------------------------------------------------------------

    def train_distill_sft(self, prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], *,
                          kl_weight: float, temperature: float = 1.0, micro_batch_size: int = 8
                          ) -> dict[str, float]:
        """One optimizer step of ``(1 - kl_weight) * CE + kl_weight * temperature^2 * KL(teacher || student)``
        ``+ feature.weight * F``, F the feature loss (:mod:`trainer.feature_distill`; only with ``feature``).

        Per target token, token-mean over all targets of the batch (prompt tokens condition, never train),
        exactly as :meth:`PolicyTrainer.train_sft` weighs tokens: each micro-batch contributes its token sum
        over the batch's total, so the gradient equals that of one big batch whatever ``micro_batch_size``.
        CE is the plain (temperature 1) next-token loss; the KL compares both distributions softened by
        ``temperature``, times ``temperature^2`` (Hinton et al.: soft-target gradients shrink as 1/T^2).
        With ``kl_weight=0`` the gradient is :meth:`train_sft`'s.

        F per target token is the mean over the compared layers of the hidden-state loss, token-mean like CE.

        Metrics: ``loss`` (the objective), ``ce``, ``kl`` (the KL at ``temperature``, without the T^2
        factor), ``feature`` (F, unweighted; with ``feature`` only), ``grad_norm``, ``tokens``, ``lr``,
        ``train_seconds``.
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
        features = self.feature.active
        if features:
            sums["feature"] = 0.0
        s_layers, t_layers = [s for s, _ in self.feature_pairs], [t for _, t in self.feature_pairs]
        for micro in _chunks(list(range(len(prompts))), micro_batch_size):
            rows = self._rows([prompts[i] for i in micro], [targets[i] for i in micro])
            mask = rows.response_mask.bool()
            # The teacher runs even at kl_weight=0: the KL is still worth logging, and a no-grad pass is cheap.
            teacher_logits, teacher_h = self._teacher_outputs(rows, t_layers)
            student_logits, student_h = self._student_outputs(rows, s_layers)
            logp, _ = token_logprobs(student_logits, rows.response_ids, 1.0, False)
            ce = torch.where(mask, -logp, 0.0).sum()
            kl = token_kl(student_logits, teacher_logits, mask, direction="forward", temperature=temperature).sum()
            # A term with weight 0 stays out of the graph: no wasted backward, and no 0 * inf if it overflowed.
            loss = 0.0
            if kl_weight < 1.0:
                loss = loss + (1.0 - kl_weight) * ce
            if kl_weight > 0.0:
                loss = loss + kl_weight * temperature ** 2 * kl
            if features:
                feature = self._feature_loss(student_h, teacher_h, mask).sum()
                loss = loss + self.feature.weight * feature
                sums["feature"] += float(feature.detach())
            (loss / max(total_tokens, 1)).backward()
            for key, value in (("loss", loss), ("ce", ce), ("kl", kl)):
                sums[key] += float(value.detach())
            # [rows, len, vocab] logits and the hidden states: free them before the next micro-batch
            del teacher_logits, student_logits, teacher_h, student_h
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
