"""A stage's ``manifest.json``: what it produced (``model``, data, figures) and whether it finished
(``"complete": true``). Written in one place, atomically; read by the recipe runner and by later stages.

A manifest written by `r1 run` or a stage command also records what the stage's outputs were made from:
``fingerprint`` (its training fingerprint), ``eval_fingerprint`` (its held-out eval's, null when it was not
evaluated) and ``fingerprints_version``. Manifests of older versions (one ``fingerprint`` of another
definition) are read as "made from unknown settings": never matched, so never skipped."""
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


FINGERPRINTS_VERSION = 2  # the split into training and eval fingerprints (pipeline.fingerprints)


def training_fingerprint_of(manifest: dict | None) -> str | None:
    """The training fingerprint a finished stage's manifest records, or None (unfinished, or written before
    the current fingerprints: unknown)."""
    if not manifest or not manifest.get("complete") or manifest.get("fingerprints_version") != FINGERPRINTS_VERSION:
        return None
    return manifest.get("fingerprint") or None


def stage_model(run_dir: Path, stage: str) -> str | None:
    """The model that ``stage`` of the run in ``run_dir`` finished (its manifest's ``model``), or None: the
    one way to find an earlier stage's model."""
    manifest = read_manifest(Path(run_dir) / stage)
    return local_path(Path(run_dir) / stage, manifest.get("model")) if manifest and manifest.get("complete") else None


def local_path(stage_dir: Path, recorded: str | None) -> str | None:
    """A path a stage's manifest recorded (absolute, e.g. its ``model``), taken inside ``stage_dir`` when the
    run dir has been moved or copied since: the copy's own model, not the original's. Paths outside the
    stage's folder (a base model) are returned as they are."""
    if not recorded:
        return recorded
    parts = Path(recorded).parts
    name = Path(stage_dir).name
    if name not in parts:
        return recorded
    tail = parts[len(parts) - parts[::-1].index(name):]
    candidate = Path(stage_dir).joinpath(*tail)
    return str(candidate) if candidate.exists() else recorded
