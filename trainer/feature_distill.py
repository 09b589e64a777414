"""Feature distillation (``distill.feature``): the student's chosen hidden states pulled towards the teacher's
on teacher-forced rows, beside the cross-entropy (and the logit KL) of :mod:`trainer.teacher_student`.

Pure pieces, used by :class:`trainer.teacher_student.DistillTrainer`:

- :func:`layer_pairs`: which student hidden state is compared with which teacher hidden state (the
  proportional map by default), checked against both models' depths;
- :class:`FeatureProjection`: the learned linear map from the student's width to the teacher's (one per
  compared layer), or the identity where the widths are equal and no projection is asked for;
- :func:`hidden_state_loss`: the per-token loss of one layer, ``mse`` or ``cosine``.

Which tokens: the response (target) tokens only, at the positions whose logits predict them (the layout of
:func:`trainer.teacher_student.response_logits`). Three reasons: (1) CE and the logit KL average over exactly
these tokens, so ``weight`` is a per-token ratio against them and the three terms share one denominator;
(2) the prompt tokens are mostly the fixed system prompt and chat template, repeated in every row and in
each sample of the same prompt: aligning all tokens would spend much of the loss on copying how the teacher
encodes that same boilerplate; (3) on the response tokens the teacher's states are those of its own
reasoning (the rows are its samples), which is what the student should take from it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

LOSS_KINDS = ("mse", "cosine")


@dataclass(frozen=True)
class FeatureSpec:
    """What ``distill.feature`` asks of the trainer (the config block as plain data, for a Ray actor)."""

    weight: float = 0.0
    loss: str = "mse"
    student_layers: Sequence[int] = field(default_factory=tuple)
    teacher_layers: Sequence[int] | None = None
    project: bool = False

    def __post_init__(self) -> None:
        if self.loss not in LOSS_KINDS:
            raise ValueError(f"distill.feature.loss={self.loss!r}: expected one of {', '.join(LOSS_KINDS)}")
        if not self.weight >= 0:
            raise ValueError(f"distill.feature.weight={self.weight!r}: must be >= 0")

    @classmethod
    def of(cls, spec: "FeatureSpec | dict | None") -> "FeatureSpec":
        """A spec from a spec, a dict (the config block's ``model_dump()``) or None (off)."""
        if spec is None:
            return cls()
        return spec if isinstance(spec, cls) else cls(**spec)

    @property
    def active(self) -> bool:
        return self.weight > 0 and bool(self.student_layers)


def proportional_layers(student_layers: Sequence[int], n_student: int, n_teacher: int) -> list[int]:
    """Student hidden state ``i`` of ``n_student`` -> teacher hidden state ``round(i * n_teacher / n_student)``
    (halves round up), so 0 -> 0 (embeddings) and ``n_student`` -> ``n_teacher`` (the last, normed, states).

    >>> proportional_layers([4, 8, 12, 16], 16, 30)
    [8, 15, 23, 30]
    """
    # Integer half-up rounding: Python's round() sends halves to the even neighbour (7.5 -> 8 but 22.5 -> 22).
    return [(2 * i * n_teacher + n_student) // (2 * n_student) for i in student_layers]


def layer_pairs(student_layers: Sequence[int], teacher_layers: Sequence[int] | None, n_student: int,
                n_teacher: int) -> list[tuple[int, int]]:
    """``(student, teacher)`` hidden-state index pairs, checked against the models' depths.

    Indices are into the ``hidden_states`` HF returns: ``0`` the embeddings, ``n`` the last layer's output
    (after the final norm), so a model of ``n`` decoder layers has ``0..n``. Errors are one line naming the
    ``distill.feature`` field."""
    if not student_layers:
        raise ValueError("distill.feature.student_layers: empty; name the student hidden states to align")
    bad = [i for i in student_layers if not 0 <= i <= n_student]
    if bad:
        raise ValueError(f"distill.feature.student_layers={list(student_layers)}: {bad} out of range; the student "
                         f"has {n_student} layers, hidden states 0..{n_student}")
    if teacher_layers is None:
        teacher_layers = proportional_layers(student_layers, n_student, n_teacher)
    elif len(teacher_layers) != len(student_layers):
        raise ValueError(f"distill.feature.teacher_layers: {len(teacher_layers)} entries for "
                         f"{len(student_layers)} student_layers; give one teacher layer per student layer")
    bad = [i for i in teacher_layers if not 0 <= i <= n_teacher]
    if bad:
        raise ValueError(f"distill.feature.teacher_layers={list(teacher_layers)}: {bad} out of range; the teacher "
                         f"has {n_teacher} layers, hidden states 0..{n_teacher}")
    return list(zip((int(i) for i in student_layers), (int(j) for j in teacher_layers)))


class FeatureProjection(torch.nn.Module):
    """One bias-free linear map ``[.., student_width] -> [.., teacher_width]`` per compared layer (layers
    differ in scale and basis: one shared map would have to fit them all), initialised to the (rectangular)
    identity so the loss starts as the plain comparison of the shared dimensions. Where no projection is
    needed it holds no parameters and returns its input."""

    def __init__(self, n_layers: int, student_width: int, teacher_width: int, *, project: bool = False) -> None:
        super().__init__()
        self.maps = None
        if project or student_width != teacher_width:
            self.maps = torch.nn.ModuleList(torch.nn.Linear(student_width, teacher_width, bias=False)
                                            for _ in range(n_layers))
            for m in self.maps:
                torch.nn.init.eye_(m.weight)  # deterministic: no draw from the student's RNG stream

    @property
    def is_identity(self) -> bool:
        return self.maps is None

    def forward(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        """``hidden`` ``[B, R, student_width]`` of the ``layer``-th compared layer -> ``[B, R, teacher_width]``."""
        return hidden if self.maps is None else self.maps[layer](hidden)


def hidden_state_loss(student_h: torch.Tensor, teacher_h: torch.Tensor, mask: torch.Tensor,
                      kind: str = "mse") -> torch.Tensor:
    """Per-token loss ``[B, R]`` between ``student_h`` and ``teacher_h`` (both ``[B, R, H]``, the student's
    already projected to the teacher's width H); 0 where ``mask`` ``[B, R]`` is false.

    ``mse``: the mean over H of the squared difference. ``cosine``: ``1 - cos(student_h, teacher_h)`` over H
    (in [0, 2]; blind to the states' norms, which in these models span orders of magnitude across layers and
    a few massive dimensions). Computed in fp32 whatever the inputs' dtype. Masked positions are replaced before
    the arithmetic, so padding that holds inf / nan gives a 0 loss and 0 gradients there. The teacher's side
    carries no gradient (it is detached here whatever the caller passed).
    """
    if kind not in LOSS_KINDS:
        raise ValueError(f"distill.feature.loss={kind!r}: expected one of {', '.join(LOSS_KINDS)}")
    if student_h.shape != teacher_h.shape:
        raise ValueError(f"hidden states differ in shape: student {tuple(student_h.shape)}, teacher "
                         f"{tuple(teacher_h.shape)} (project the student to the teacher's width first)")
    if tuple(mask.shape) != tuple(student_h.shape[:2]):
        raise ValueError(f"mask {tuple(mask.shape)} does not match the hidden states' {tuple(student_h.shape[:2])}")
    keep = mask.bool().unsqueeze(-1)
    s = torch.where(keep, student_h.float(), 1.0)  # 1.0, not 0: a zero vector has no cosine
    t = torch.where(keep, teacher_h.detach().float(), 1.0)
    if kind == "mse":
        per_token = (s - t).pow(2).mean(-1)
    else:
        per_token = 1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)
    return torch.where(mask.bool(), per_token, 0.0)
