"""The GRPO loop's knobs a user sets; the RL sections of the config are these plus the trainer's
:class:`trainer.settings.GRPOLoss`, so the loop receives its config section as is."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class GRPOLoop(BaseModel):
    """Batch sizes, named once: each step samples ``prompts_per_step`` prompts x ``group_size`` responses."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(20, ge=1)
    prompts_per_step: int = Field(16, ge=1)
    group_size: int = Field(8, ge=1, description="responses sampled per prompt (GRPO group)")
    advantage_scale: Literal["group", "batch", "none"] = "group"
    dynamic_sampling: bool = Field(False, description="DAPO: drop groups whose rewards are all equal, refill")
    max_refill_rounds: int = Field(3, ge=0)
    overlong_filter: bool = Field(False, description="DAPO: truncated responses take no part in the loss")
    eval_every: int = Field(10, ge=0, description="held-out eval every N steps (0: only before and after)")
    eval_at_ends: bool = Field(True, description="held-out evals before the first and after the last step "
                               "(`r1 run` evaluates every stage's model anyway)")
    save_every: int = Field(5, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
