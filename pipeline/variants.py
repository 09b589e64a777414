"""The R1 paper's two training paths, ``recipe.variant``: which stages of `r1 run` each one has.

- ``r1``: DeepSeek-R1, every stage of :data:`pipeline.recipe.STAGES` (cold start -> reasoning RL -> rejection
  sampling -> SFT -> general RL -> distillation).
- ``zero``: DeepSeek-R1-Zero, reasoning RL straight from the base model with no cold start, and nothing
  after it: the RL-only model.

The one rule that turns the table into a variant: a stage the variant does not run is not read. Where the
full recipe reads the model of such a stage (reasoning RL starts from the cold start's), the variant reads
the base model (``model.name``), and compares with it. Kept apart from :mod:`pipeline.recipe` so the stage
code (:mod:`pipeline.rl`) can ask it without importing the table.
"""
from __future__ import annotations

VARIANTS = ("r1", "zero")

# The stages of each variant; None: every stage.
_STAGES: dict[str, tuple[str, ...] | None] = {"r1": None, "zero": ("base", "reasoning_rl")}


def runs_stage(variant: str, stage: str) -> bool:
    """Whether the ``variant`` path has ``stage``."""
    if variant not in _STAGES:
        raise ValueError(f"recipe.variant={variant!r}: expected one of {', '.join(VARIANTS)}")
    names = _STAGES[variant]
    return names is None or stage in names

