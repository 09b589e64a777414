"""Plain settings the trainer takes (the pipeline's typed config is converted into these)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class LoraSettings:
    """LoRA via peft. ``targets`` are module-name suffixes (``"all-linear"`` = every linear but the head)."""

    rank: int = 16
    alpha: int = 32
    dropout: float = 0.0
    targets: list[str] | str = "all-linear"


@dataclass
class OptimSettings:
    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float = 1.0
    warmup_steps: int = 0  # optimizer steps of linear warm-up, then constant
    total_steps: int | None = None  # with a total, the rate decays by cosine to 10% after warm-up


@dataclass
class GRPOSettings:
    """Loss and update knobs of one GRPO update on a rollout batch."""

    clip_low: float = 0.2
    clip_high: float = 0.28  # DAPO clip-higher
    loss_agg: str = "token-mean"
    ratio_level: str = "token"  # "sequence" = GSPO
    kl_coef: float = 0.0  # KL to the reference, in the loss
    kl_kind: str = "k3"
    entropy_coef: float = 0.0
    tis_cap: float | None = 2.0  # truncated importance sampling of the rollout/trainer mismatch; None = off
    temperature: float = 1.0  # sampling temperature: trainer logits are divided by it
    mini_batches: int = 1  # optimizer steps per rollout batch per epoch
    epochs: int = 1
    micro_batch_size: int = 8  # rows per forward/backward (gradient accumulation inside a mini-batch)
    skip_zero_advantage: bool = True  # rows with advantage 0 carry no gradient (no KL/entropy term): skip them
    horizon: int | None = None  # seq-mean-token-sum-norm's constant divisor: the rollout's max_new_tokens

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainerSettings:
    """How the trainer holds the model."""

    precision: str = "bf16"  # "bf16": fp32 master weights, bf16 autocast compute; "fp32"
    lora: LoraSettings | None = None
    optim: OptimSettings = field(default_factory=OptimSettings)
    threads: int | None = None  # torch intra-op threads (None: leave torch's default)
    seed: int = 0
    gradient_checkpointing: bool = False
    shared_prefix: bool = True  # rows with the same prompt (a GRPO group) share the prompt's forward pass
