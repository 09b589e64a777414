"""Where a run's stages left their results: the one way to find an earlier stage's model."""
from __future__ import annotations

from stages.manifest import read_manifest

from .config import RecipeConfig


def stage_model(cfg: RecipeConfig, stage: str) -> str | None:
    """The model dir that ``stage`` of this run finished (its manifest's ``model``), or None."""
    manifest = read_manifest(cfg.run_dir() / stage)
    if not manifest or not manifest.get("complete"):
        return None
    return manifest.get("model")
