"""The trainer's settings. The knobs a user sets are defined here once, and the recipe config
(:mod:`pipeline.config`) uses these very models as its sections, so nothing is copied field by field."""
from __future__ import annotations

import functools
import logging
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraSettings(_Settings):
    """LoRA via peft. ``targets`` are module-name suffixes (``"all-linear"`` = every linear but the head)."""

    rank: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    targets: list[str] | Literal["all-linear"] = "all-linear"


class OptimKnobs(_Settings):
    """AdamW and its learning-rate schedule: the ``optim`` block of the config."""

    lr: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW's moment decay rates (beta1, beta2)")
    eps: float = Field(1e-8, gt=0, description="AdamW's epsilon")
    grad_clip: float = Field(1.0, ge=0, description="max gradient norm; 0 = no clipping")
    warmup_steps: int = Field(0, ge=0, description="optimizer steps of linear warm-up")
    schedule: Literal["constant", "cosine"] = Field("constant", description="after warm-up: constant, or cosine "
                                                    "decay to 10% over the stage's optimizer steps")


class OptimSettings(OptimKnobs):
    """:class:`OptimKnobs` plus what the stage knows: its number of optimizer steps (for the cosine decay)."""

    total_steps: int | None = None  # with a total, the rate decays by cosine to 10% after warm-up


log = logging.getLogger(__name__)

# GSPO's clip range (Zheng et al. 2025) for the sequence ratio: a sequence-mean log-ratio moves far less than a
# token's, so a token-level range (0.2) barely ever clips it.
GSPO_CLIP = (3e-4, 4e-4)


@functools.cache  # once per process and clip range: settings are validated again at every hop
def _warn_far_from_gspo_clip(clip_low: float, clip_high: float) -> None:
    """Log a warning when a clip bound is more than 10x away from GSPO's."""
    if any(not ref / 10 <= got <= ref * 10 for got, ref in zip((clip_low, clip_high), GSPO_CLIP)):
        log.warning("ratio_level=sequence with clip_low=%s, clip_high=%s: GSPO clips the sequence ratio at "
                    "about %s / %s; a range >10x off barely clips (or always clips) it", clip_low, clip_high,
                    *GSPO_CLIP)


class GRPOLoss(_Settings):
    """The loss and update knobs of GRPO that a user sets (the RL sections of the config hold these)."""

    clip_low: float = Field(0.2, ge=0, lt=1)
    clip_high: float = Field(0.28, ge=0, description="DAPO clip-higher")
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = "token-mean"
    ratio_level: Literal["token", "sequence"] = Field("token", description="sequence = GSPO")
    kl_coef: float = Field(0.0, ge=0, description="weight of the kl_kind penalty toward the reference in the "
                           "loss (k3: the gradient of KL(reference || policy), k2: of KL(policy || reference), "
                           "k1: none in expectation); 0 = no reference model")
    kl_kind: Literal["k1", "k2", "k3"] = "k3"
    entropy_coef: float = Field(0.0, ge=0)
    tis_cap: float | None = Field(2.0, gt=0, description="truncated importance sampling cap of the rollout/"
                                  "trainer mismatch; null = off")
    mini_batches: int = Field(1, ge=1, description="optimizer steps per rollout batch per epoch")
    epochs: int = Field(1, ge=1)
    skip_zero_advantage: bool = Field(True, description="rows with advantage 0 add no gradient (no KL or "
                                      "entropy term): skip their forward/backward; the update is unchanged")
    routing_replay: bool = Field(False, description="R3 for MoE models: the engine records the experts each token "
                                 "used and every training forward that scores rollout tokens uses exactly those")
    routing_replay_reference: bool = Field(False, description="replay the rollout routing in the reference model "
                                           "too (off: the reference routes itself, as in the R3 paper and verl)")
    routing_min_coverage: float = Field(0.9, ge=0, le=1, description="with routing_replay: an update whose batch "
                                        "carries the engine's routing for less than this share of its (token, MoE "
                                        "layer) pairs stops (an engine that returned no routing would make R3 a "
                                        "silent no-op)")

    @model_validator(mode="after")
    def _sequence_ratio_is_gspo(self):
        if self.ratio_level == "sequence":
            if self.loss_agg != "seq-mean-token-mean":
                raise ValueError(f"ratio_level=sequence with loss_agg={self.loss_agg}: GSPO averages over "
                                 "sequences, set loss_agg=seq-mean-token-mean (a token mean weighs each row's "
                                 "ratio by its length)")
            _warn_far_from_gspo_clip(self.clip_low, self.clip_high)
        return self


class GRPOSettings(GRPOLoss):
    """One GRPO update: :class:`GRPOLoss` plus what follows from the stage's sampling and the trainer."""

    temperature: float = 1.0  # sampling temperature: trainer logits are divided by it
    micro_batch_size: int = 8  # rows per forward/backward (gradient accumulation inside a mini-batch)
    horizon: int | None = None  # seq-mean-token-sum-norm's constant divisor: the rollout's max_new_tokens


class TrainerKnobs(_Settings):
    """How the trainer computes: the config's ``trainer`` section holds these."""

    precision: Literal["bf16", "fp32"] = Field("bf16", description="bf16 = fp32 master weights, bf16 autocast")
    gradient_checkpointing: bool = False
    shared_prefix: bool = Field(True, description="a group's responses share one forward pass of their prompt")

    @model_validator(mode="after")
    def _checkpointing_keeps_the_prompt(self):
        if self.gradient_checkpointing and self.shared_prefix:
            raise ValueError("gradient_checkpointing=true with shared_prefix=true: transformers' checkpointed "
                             "layers drop the prompt's KV cache in training, so set trainer.shared_prefix=false")
        return self


class TrainerSettings(TrainerKnobs):
    """How the trainer holds the model: :class:`TrainerKnobs` plus the stage's optimizer and the process's own."""

    lora: LoraSettings | None = None
    optim: OptimSettings = Field(default_factory=OptimSettings)
    threads: int | None = None  # torch intra-op threads (None: leave torch's default)
    seed: int = 0
