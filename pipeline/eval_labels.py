"""`r1 eval`'s output labels: unique per model, and an eval of one model never overwrites another's.

The default label of ``runs/<name>/<stage>/model`` is the stage's name; of a checkpoint
``runs/<name>/<stage>/checkpoints/step_00004[/model]`` it is ``<stage>-step_00004``; of any other model
it is its folder's name plus a short hash of its resolved path. When the default label's folder already
holds the eval of a different model (another run's ``sft``), the hash is appended. A label or output folder
given explicitly (``--label`` / ``--out``) that holds a different model's eval is refused in one line.
Re-evaluating the same model under its label replaces its earlier eval.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .config import EVALUATED_STAGES


def path_hash(model: str) -> str:
    """8 hex digits of the model's resolved path (a hub id as given)."""
    path = Path(model).expanduser()
    key = str(path.resolve()) if path.exists() else model
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def default_label(model: str) -> str:
    """The label of an eval of ``model`` (a resolved model dir or a hub id); see the module docstring."""
    parts = Path(model).parts
    if len(parts) >= 2 and parts[-1] == "model" and parts[-2] in EVALUATED_STAGES:
        return parts[-2]
    for i in range(len(parts) - 2, 0, -1):  # .../<stage>/checkpoints/<step>[/model]
        if parts[i] == "checkpoints" and parts[i - 1] in EVALUATED_STAGES and i + 1 < len(parts):
            return f"{parts[i - 1]}-{parts[i + 1]}"
    name = Path(model).name or "model"
    return f"{name}-{path_hash(model)}"


def evaluated_model(out_dir: Path) -> str | None:
    """The model whose eval ``out_dir`` holds (its ``model.json``), or None."""
    try:
        return json.loads((Path(out_dir) / "model.json").read_text()).get("model")
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, AttributeError):
        return None


def _same(a: str, b: str) -> bool:
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return a == b or (pa.exists() and pb.exists() and pa.resolve() == pb.resolve())


def eval_destination(run_dir: Path, model: str, *, label: str | None = None, out: str | None = None
                     ) -> tuple[str, Path]:
    """``(label, out_dir)`` of an eval of ``model``: ``out`` or ``run_dir/eval/<label>``, never a folder that
    holds another model's eval (see the module docstring)."""
    chosen = label or default_label(model)
    out_dir = Path(out) if out else Path(run_dir) / "eval" / chosen
    other = evaluated_model(out_dir)
    if other is None or _same(other, model):
        return chosen, out_dir
    if label or out:
        given = f"--out {out}" if out else f"--label {label}"
        raise ValueError(f"r1 eval {given}: {out_dir} holds the eval of another model ({other}); an eval is "
                         "never overwritten by another model's: give another --label or --out")
    chosen = f"{chosen}-{path_hash(model)}"
    out_dir = Path(run_dir) / "eval" / chosen
    other = evaluated_model(out_dir)
    if other is not None and not _same(other, model):
        raise ValueError(f"r1 eval: {out_dir} holds the eval of another model ({other}); give --label or --out")
    return chosen, out_dir
