"""``distill.feature``: feature distillation, the student's chosen hidden states pulled towards the teacher's
on the distillation SFT data (trainer side: :mod:`trainer.feature_distill`). Its own module to keep
``pipeline/config.py`` small; importable from there."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from .config_base import _Strict


class FeatureDistillConfig(_Strict):
    """Feature distillation on the teacher-forced SFT rows: loss = CE (+ the logit KL) + ``weight`` x the mean,
    over the chosen layers and the response tokens, of mse(proj(h_s), h_t) or 1 - cos(proj(h_s), h_t)."""

    weight: float = Field(0.0, ge=0, description="0 = off (plain SFT / logit distillation)")
    loss: Literal["mse", "cosine"] = Field("mse", description="per token: mean squared difference over the "
                                           "hidden dimension, or 1 - cosine similarity")
    student_layers: list[int] = Field(default_factory=list, description="the student's hidden states to align: "
                                      "indices into HF's hidden_states (0 = embeddings, n = the last layer's, "
                                      "after the final norm)")
    teacher_layers: list[int] | None = Field(None, description="the teacher's hidden state for each student layer; "
                                             "null: the proportional map, i -> round(i * N / n)")
    project: bool = Field(False, description="learn a linear student -> teacher map even when the widths are "
                          "equal (different widths always get one); trained, checkpointed, never exported")

    @field_validator("student_layers", "teacher_layers")
    @classmethod
    def _non_negative(cls, layers: list[int] | None) -> list[int] | None:
        if layers and min(layers) < 0:
            raise ValueError("hidden-state indices count from 0 (the embeddings); negative ones are not allowed")
        return layers

    @model_validator(mode="after")
    def _layers_given(self) -> "FeatureDistillConfig":
        if self.weight > 0 and not self.student_layers:
            raise ValueError(f"weight={self.weight} with student_layers=[]: name the student hidden states to "
                             "align, e.g. [4, 8, 12, 16]")
        if self.teacher_layers is not None and len(self.teacher_layers) != len(self.student_layers):
            raise ValueError(f"teacher_layers has {len(self.teacher_layers)} entries for "
                             f"{len(self.student_layers)} student_layers: one teacher layer per student layer")
        return self
