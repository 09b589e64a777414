"""A stage's ``manifest.json``: what it produced (``model``, data, figures) and whether it finished
(``"complete": true``). Written in one place, atomically; read by the recipe runner and by later stages."""
from __future__ import annotations

import json
from pathlib import Path


def write_manifest(stage_dir: Path, summary: dict) -> None:
    """Replace ``stage_dir/manifest.json`` with ``summary`` in one rename: a kill leaves the old or the new."""
    path = Path(stage_dir) / "manifest.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(path)


def read_manifest(stage_dir: Path) -> dict | None:
    """The stage's manifest, or None when there is none (or a torn one: the stage is not complete)."""
    path = Path(stage_dir) / "manifest.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None


def stage_model(run_dir: Path, stage: str) -> str | None:
    """The model that ``stage`` of the run in ``run_dir`` finished (its manifest's ``model``), or None: the
    one way to find an earlier stage's model."""
    manifest = read_manifest(Path(run_dir) / stage)
    return manifest.get("model") if manifest and manifest.get("complete") else None
