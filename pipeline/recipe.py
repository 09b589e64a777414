"""`r1 run`: the whole R1 recipe, stage by stage, with manifests, skipping and resuming.

Each stage writes its artifacts under ``runs/<name>/<stage>/`` and, when it and its held-out eval are
done, a ``manifest.json`` with ``"complete": true`` and a fingerprint: a hash of the config sections the
stage reads plus the fingerprints of the stages it reads from. A rerun skips a stage whose manifest has
the same fingerprint, resumes one that was interrupted (the RL and SFT stages continue from their last
checkpoint), and starts afresh one whose config or inputs changed (its old folder is removed first, so a
stale checkpoint never leaks into a different run).
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import RecipeConfig

log = logging.getLogger("r1.recipe")

# Parts of every stage's fingerprint: the seed and what its held-out eval depends on.
_ALWAYS = ("run.seed", "model", "data", "eval", "rollout", "rewards.prefilled_think", "general_rl.general_tasks")


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[RecipeConfig], dict]
    sections: tuple[str, ...]  # dotted config parts the stage's result depends on
    inputs: tuple[str, ...] = ()  # stages whose outputs it reads
    has_model: bool = True  # produces a model to evaluate


def _base(cfg: RecipeConfig) -> dict:
    from trainer.model_io import resolve_model

    return {"stage": "base", "model": resolve_model(cfg.model.name)}


def _cold_start(cfg):
    from .sft import run_cold_start

    return run_cold_start(_no_inner_eval(cfg, "cold_start"))


def _reasoning_rl(cfg):
    from .rl import run_reasoning_rl

    return run_reasoning_rl(_with(cfg, "rl.init_model", cfg.rl.init_model or _model_of(cfg, "cold_start")))


def _rejection(cfg):
    from .rejection import run_rejection_sample

    return run_rejection_sample(cfg)


def _sft(cfg):
    from .sft import run_sft_stage

    return run_sft_stage(_no_inner_eval(cfg, "sft"))


def _reward_model(cfg):
    from .reward_model import run_reward_model

    return run_reward_model(cfg)


def _general_rl(cfg):
    from .rl import run_general_rl

    return run_general_rl(_with(cfg, "general_rl.init_model", cfg.general_rl.init_model or _model_of(cfg, "sft")))


def _distill(cfg):
    from .distill import run_distill

    return run_distill(cfg)


def _student_rl(cfg):
    from .distill import run_student_rl

    return run_student_rl(cfg)


STAGES: tuple[Stage, ...] = (
    Stage("base", _base, ()),
    Stage("cold_start", _cold_start, ("cold_start", "trainer")),
    Stage("reasoning_rl", _reasoning_rl, ("rl", "rewards", "trainer"), ("cold_start",)),
    Stage("rejection_sample", _rejection, ("rejection",), ("reasoning_rl",), has_model=False),
    Stage("sft", _sft, ("sft", "trainer"), ("rejection_sample",)),
    Stage("reward_model", _reward_model, ("reward_model", "trainer"), has_model=False),
    Stage("general_rl", _general_rl, ("general_rl", "rewards", "trainer"), ("sft", "reward_model")),
    Stage("distill", _distill, ("distill", "rejection", "sft.max_length", "sft.save_every", "sft.packing",
                                "trainer"), ("general_rl", "rejection_sample")),
    Stage("student_rl", _student_rl, ("rl", "rewards", "trainer", "distill.student", "distill.student_layers",
                                      "distill.rl_only_steps")),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def _with(cfg: RecipeConfig, dotted: str, value) -> RecipeConfig:
    from .config import apply_override, validate

    tree = cfg.model_dump(mode="json")
    apply_override(tree, dotted.split("."), value)
    return validate(tree)


def _no_inner_eval(cfg: RecipeConfig, section: str) -> RecipeConfig:
    # The runner evaluates every stage on the recipe's whole held-out split; the stage's own eval would
    # repeat it on a part of it.
    return _with(cfg, f"{section}.eval", False)


def _model_of(cfg: RecipeConfig, stage: str) -> str:
    manifest = read_manifest(cfg.run_dir() / stage)
    if not manifest or not manifest.get("model"):
        raise FileNotFoundError(f"stage {stage}: no finished model under {cfg.run_dir() / stage}; run it first "
                                f"(r1 run --from {stage})")
    return manifest["model"]


def _part(tree: dict, dotted: str):
    node = tree
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def fingerprint(cfg: RecipeConfig, stage: Stage, upstream: dict[str, str]) -> str:
    """Hash of what decides the stage's result: its config parts, the always-parts and its inputs' fingerprints."""
    tree = cfg.model_dump(mode="json")
    blob = {"stage": stage.name, "parts": {p: _part(tree, p) for p in (*_ALWAYS, *stage.sections)},
            "inputs": {name: upstream.get(name) for name in stage.inputs}}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def read_manifest(stage_dir: Path) -> dict | None:
    path = Path(stage_dir) / "manifest.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None  # torn by a kill: the stage is not complete


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def select_stages(start: str | None, until: str | None) -> list[Stage]:
    """The stages from ``start`` to ``until`` inclusive, in recipe order."""
    for name in (start, until):
        if name is not None and name not in STAGE_NAMES:
            raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGE_NAMES)}")
    i = STAGE_NAMES.index(start) if start else 0
    j = STAGE_NAMES.index(until) if until else len(STAGES) - 1
    if i > j:
        raise ValueError(f"--from {start} comes after --until {until}")
    return list(STAGES[i:j + 1])


def run_recipe(cfg: RecipeConfig, *, start: str | None = None, until: str | None = None,
               on_stage: Callable[[str, dict], None] | None = None) -> list[dict]:
    """Run the selected stages in order; returns their manifests. See the module docstring for skip/resume."""
    from .cluster import shared_rollouts
    from .memory import PeakMemory

    selected = select_stages(start, until)
    if not cfg.recipe.rl_only_student:
        selected = [s for s in selected if s.name != "student_rl"]
    run_dir = cfg.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    fps: dict[str, str] = {}
    for stage in STAGES:  # fingerprints of stages outside the selection come from their manifests
        if stage not in selected:
            fps[stage.name] = (read_manifest(run_dir / stage.name) or {}).get("fingerprint", "")
    results = []
    # One rollout engine serves consecutive stages (weights swapped in), not an engine start per stage.
    with shared_rollouts(cfg.recipe.share_rollout):
        for stage in selected:
            stage_dir = run_dir / stage.name
            fp = fingerprint(cfg, stage, fps)
            fps[stage.name] = fp
            manifest = read_manifest(stage_dir)
            if manifest and manifest.get("complete") and manifest.get("fingerprint") == fp:
                log.info("stage %s: complete for this config and inputs; skipped", stage.name)
                results.append(manifest)
                continue
            marker = stage_dir / ".fingerprint"
            if stage_dir.exists() and (not marker.is_file() or marker.read_text().strip() != fp):
                log.warning("stage %s: config or inputs changed since %s was written; starting it afresh",
                            stage.name, stage_dir)
                shutil.rmtree(stage_dir)
            elif stage_dir.exists():
                log.info("stage %s: resuming an interrupted run in %s", stage.name, stage_dir)
            stage_dir.mkdir(parents=True, exist_ok=True)
            marker.write_text(fp)
            log.info("stage %s: running", stage.name)
            started = time.time()
            with PeakMemory() as mem:
                summary = stage.run(cfg)
                if stage.has_model and cfg.recipe.eval_each_stage:
                    summary["eval"] = evaluate_stage(cfg, stage.name, summary["model"])
            summary.update({"stage": stage.name, "fingerprint": fp, "complete": True,
                            "inputs": {n: fps.get(n) for n in stage.inputs},
                            "seconds": round(time.time() - started, 1),
                            "stage_peak_memory_gib": round(mem.peak_gib, 2)})
            _write_json(stage_dir / "manifest.json", summary)
            results.append(summary)
            if on_stage is not None:
                on_stage(stage.name, summary)
    return results


def evaluate_stage(cfg: RecipeConfig, stage: str, model: str) -> dict:
    """Held-out eval of a stage's model on the recipe's whole test split; returns the "all" row as a dict."""
    from stages.reasoning_rl import RemoteEngine

    from .cluster import release_rollout, start_rollout
    from .data import recipe_test_split
    from .evaluation import run_eval

    handle = start_rollout(cfg, model)  # an actor: on a cluster the eval runs where the GPUs are
    try:
        metrics, table = run_eval(cfg, model=model, out=str(cfg.run_dir() / stage / "eval"), label=stage,
                                  samples=recipe_test_split(cfg, stage), engine=RemoteEngine(handle))
    finally:
        release_rollout(handle)
    print(f"\n[{stage}]\n{table}")
    row = metrics.get("all") or next(iter(metrics.values()))
    return {"pass@1": row.pass_at.get(1), "pass@1_ci": list(row.pass1_ci), "format_rate": row.format_rate,
            "per_task": {name: m.pass_at.get(1) for name, m in metrics.items() if name != "all"}}
