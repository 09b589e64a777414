"""`r1 run`: the whole R1 recipe, stage by stage, with manifests, skipping and resuming.

Each stage writes its artifacts under ``runs/<name>/<stage>/`` and, when it and its held-out eval are
done, a ``manifest.json`` with ``"complete": true`` and a fingerprint: a hash of the config sections the
stage reads plus the fingerprints of the stages it reads from. A rerun skips a stage whose manifest has
the same fingerprint, resumes one that was interrupted (the RL and SFT stages continue from their last
checkpoint), and starts afresh one whose config or inputs changed (its old folder is removed first, so a
stale checkpoint never leaks into a different run).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from typing import Callable

from stages.manifest import read_manifest, write_manifest

from .config import RecipeConfig
from .distill import run_distill, run_student_rl
from .rejection import run_rejection_sample
from .reward_model import run_reward_model
from .rl import run_general_rl, run_reasoning_rl
from .sft import run_cold_start, run_sft_stage

log = logging.getLogger("r1.recipe")

# Parts of every stage's fingerprint: the seed and what its held-out eval depends on.
_ALWAYS = ("run.seed", "model", "data", "eval", "rollout", "rewards.prefilled_think", "general_rl.general_tasks")


@dataclass(frozen=True)
class Stage:
    """One row of the recipe: how `r1 run` and the stage's own `r1 <command>` run it."""

    name: str
    run: Callable[..., dict]  # run(cfg, out=None) -> the stage's summary (its manifest)
    sections: tuple[str, ...]  # dotted config parts the stage's result depends on
    inputs: tuple[str, ...] = ()  # stages whose outputs it reads
    has_model: bool = True  # produces a model to evaluate
    help: str = ""  # the CLI's line; no help = no subcommand of its own (the base model's eval)
    own_eval: str | None = None  # its config switch for an eval of its own, off under `r1 run` (which evaluates)
    # The report: the metric the stage is meant to move (the R1 paper's reason for it), the stage its pass@1
    # and format rate are compared with, and its targeted metric paired over the same held-out prompts:
    # (against which stage, on which tasks: all / reasoning / general, which per-completion flag).
    target: str = ""
    compared_with: str | None = None
    target_delta: tuple[str, str, str] | None = None

    @property
    def command(self) -> str:
        return self.name.replace("_", "-")


def _base(cfg: RecipeConfig, out: str | None = None) -> dict:
    from trainer.model_io import resolve_model

    return {"stage": "base", "model": resolve_model(cfg.model.name)}


STAGES: tuple[Stage, ...] = (
    Stage("base", _base, (), target="the starting point"),
    Stage("cold_start", run_cold_start, ("cold_start", "trainer"), own_eval="cold_start.eval",
          help="stage 1: SFT on R1-format demonstrations, then a held-out eval",
          target="format rate (readable R1-format reasoning)", compared_with="base",
          target_delta=("base", "all", "format")),
    Stage("reasoning_rl", run_reasoning_rl, ("rl", "rewards", "trainer"), ("cold_start",),
          help="stage 2: GRPO with rule rewards on Ray actors (resumes if interrupted)",
          target="reasoning pass@1", compared_with="cold_start", target_delta=("cold_start", "reasoning", "correct")),
    Stage("rejection_sample", run_rejection_sample, ("rejection",), ("reasoning_rl",), has_model=False,
          help="stage 3: sample the RL model, keep verified and clean completions, add non-reasoning data",
          target="a clean, verified SFT dataset"),
    Stage("sft", run_sft_stage, ("sft", "trainer"), ("rejection_sample",), own_eval="sft.eval",
          help="stage 4: SFT of the base model on the rejection-sampled data",
          target="pass@1 of the base model trained on the RL model's verified samples", compared_with="cold_start",
          target_delta=("base", "reasoning", "correct")),
    Stage("reward_model", run_reward_model, ("reward_model", "trainer"), has_model=False,
          help="stage 5a: Bradley-Terry reward model on preference pairs",
          target="pairwise accuracy on held-out preference pairs"),
    Stage("general_rl", run_general_rl, ("general_rl", "rewards", "trainer"), ("sft", "reward_model"),
          help="stage 5b: GRPO on reasoning + general prompts (rule rewards, reward model)",
          target="general (instruction) pass@1 while keeping reasoning", compared_with="sft",
          target_delta=("sft", "general", "correct")),
    Stage("distill", run_distill, ("distill", "rejection", "sft.max_length", "sft.save_every", "sft.packing",
                                   "trainer"), ("general_rl", "rejection_sample"),
          help="stage 6: SFT of a smaller student on the final model's verified samples",
          target="the small student's pass@1", compared_with="base",
          target_delta=("student_rl", "reasoning", "correct")),
    Stage("student_rl", run_student_rl, ("rl", "rewards", "trainer", "distill.student", "distill.student_layers",
                                         "distill.rl_only_steps"),
          help="the same student trained by reasoning RL alone (the paper's comparison)",
          target="the same student by RL alone (the paper's comparison)", compared_with="distill"),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


_running: list[str] = []  # the stages this process is running now (a stack: a stage may evaluate inside itself)
_failed: list[str] = []  # the innermost stage that ended by an error, for the error line printed after it


def running_stage() -> str | None:
    """The stage this process is running, or the one that just failed: for error lines (a failed Ray job's
    report names it)."""
    return _running[-1] if _running else (_failed[0] if _failed else None)


def forget_failed_stage() -> None:
    """Start a new command with no failed stage on record."""
    _failed.clear()


@contextlib.contextmanager
def stage_running(name: str):
    """Mark ``name`` as the running stage for the duration of the block; if it fails, remember it for the
    error line (the innermost stage is the one named)."""
    _running.append(name)
    try:
        yield
    except BaseException:
        if not _failed:
            _failed.append(name)
        raise
    finally:
        _running.pop()


def _with(cfg: RecipeConfig, dotted: str, value) -> RecipeConfig:
    from .config import apply_override, validate

    tree = cfg.model_dump(mode="json")
    apply_override(tree, dotted.split("."), value)
    return validate(tree)


def _check_inputs(cfg: RecipeConfig, stage: Stage) -> None:
    """A stage runs on its inputs' results: one that never finished is an error naming what to run."""
    for name in stage.inputs:
        manifest = read_manifest(cfg.run_dir() / name)
        if not manifest or not manifest.get("complete"):
            raise FileNotFoundError(f"stage {stage.name} reads stage {name}: no finished {name} under "
                                    f"{cfg.run_dir() / name}; run it first (r1 run --from {name})")


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
            _check_inputs(cfg, stage)
            started = time.time()
            # The runner evaluates every stage on the recipe's whole held-out split; the stage's own eval
            # would repeat it on a part of it.
            stage_cfg = _with(cfg, stage.own_eval, False) if stage.own_eval else cfg
            with PeakMemory() as mem, stage_running(stage.name):
                summary = stage.run(stage_cfg)
                if stage.has_model and cfg.recipe.eval_each_stage:
                    summary["eval"] = evaluate_stage(cfg, stage.name, summary["model"])
            summary.update({"stage": stage.name, "fingerprint": fp, "complete": True,
                            "inputs": {n: fps.get(n) for n in stage.inputs},
                            "seconds": round(time.time() - started, 1),
                            "stage_peak_memory_gib": round(mem.peak_gib, 2)})
            write_manifest(stage_dir, summary)
            results.append(summary)
            if on_stage is not None:
                on_stage(stage.name, summary)
    return results


def evaluate_stage(cfg: RecipeConfig, stage: str, model: str) -> dict:
    """Held-out eval of a stage's model on the recipe's whole test split; returns the "all" row as a dict."""
    from stages.evaluate import manifest_summary

    from .actors import RemoteEngine
    from .cluster import release_rollout, start_rollout
    from .data import recipe_test_split
    from .evaluation import run_eval

    pool = start_rollout(cfg, model)  # engine actors: on a cluster the eval runs where the GPUs are
    try:
        metrics, table = run_eval(cfg, model=model, out=str(cfg.run_dir() / stage / "eval"), label=stage,
                                  samples=recipe_test_split(cfg, stage), engine=RemoteEngine(pool))
    finally:
        release_rollout(pool)
    print(f"\n[{stage}]\n{table}")
    return manifest_summary(metrics)
