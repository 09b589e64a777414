"""`r1 run`: the whole R1 recipe, stage by stage, with manifests, skipping and resuming.

Each stage writes its artifacts under ``runs/<name>/<stage>/`` and, when it and its held-out eval are
done, a ``manifest.json`` with ``"complete": true`` and two fingerprints (:mod:`pipeline.fingerprints`):
its training fingerprint (the config parts its training reads plus its inputs' training fingerprints) and
its eval fingerprint (what its held-out eval reads). A rerun
- skips a stage whose manifest has both fingerprints of the current config;
- re-runs only the eval of a stage whose eval fingerprint alone changed (the old ``eval/`` moved aside);
- resumes one that was interrupted in its folder (RL and SFT continue from their last checkpoint);
- starts afresh one whose training fingerprint changed: its old folder is moved to
  ``runs/<name>/superseded/<stage>-<UTC time>/`` (never removed: `r1 clean` does that on request), so a
  stale checkpoint never leaks into a different run and finished work is never lost.
Stage commands (`r1 cold-start`, ...) write the same manifest fields, so `r1 run` continues from them.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from stages.manifest import (FINGERPRINTS_VERSION, local_path, read_manifest, training_fingerprint_of,
                             write_manifest)

from .config import RecipeConfig
from .fingerprints import eval_fingerprint, training_fingerprint
from .distill import run_distill, run_student_rl
from .rejection import run_rejection_sample
from .reward_model import run_reward_model
from .rl import run_general_rl, run_reasoning_rl
from .sft import run_cold_start, run_sft_stage
from .superseded import move_aside
from .variants import runs_stage

log = logging.getLogger("r1.recipe")


@dataclass(frozen=True)
class Stage:
    """One row of the recipe: how `r1 run` and the stage's own `r1 <command>` run it."""

    name: str
    run: Callable[..., dict]  # run(cfg, out=None) -> the stage's summary (its manifest)
    # What its training reads (pipeline.fingerprints; besides run.seed and model, always): dotted config parts
    # ("rollout": its sampling settings, not the engine's capacity), the stages whose outputs it reads,
    # the data parts (train, general, system_prompt) unless data_from (the user's dataset) is set, and the RL
    # section whose in-loop held-out evals (when on) make eval settings and held-out data training inputs.
    sections: tuple[str, ...]
    inputs: tuple[str, ...] = ()
    has_model: bool = True  # produces a model to evaluate
    help: str = ""  # the CLI's line; no help = no subcommand of its own (the base model's eval)
    own_eval: str | None = None  # its config switch for an eval of its own, off under `r1 run` (which evaluates)
    # The report: the metric the stage is meant to move (the R1 paper's reason for it), the stage its pass@1
    # and format rate are compared with, and its targeted metric paired over the same held-out prompts:
    # (against which stage, on which tasks: all / reasoning / general, which per-completion flag).
    target: str = ""
    compared_with: str | None = None
    target_delta: tuple[str, str, str] | None = None
    data: tuple[str, ...] = ()
    data_from: str | None = None
    loop_eval: str | None = None

    @property
    def command(self) -> str:
        return self.name.replace("_", "-")


def _base(cfg: RecipeConfig, out: str | None = None) -> dict:
    from trainer.model_io import resolve_model

    return {"stage": "base", "model": resolve_model(cfg.model.name)}


_DEMOS = ("train", "system_prompt")  # prompts (and demonstrations) of data.tasks / data.sources, rendered
_ALL_TRAIN = ("train", "general", "system_prompt")  # plus general_rl.general_tasks' prompts
# What the RL-only student's training reads of the distill section: the student, how long it trains (under
# rl_only_budget: match_distill the distill stage is also its input: _budget_input) and on which rewards.
_STUDENT = ("distill.student", "distill.student_layers", "distill.rl_only_steps", "distill.rl_only_budget",
            "distill.rl_only_max_steps", "distill.rl_only_rewards")

STAGES: tuple[Stage, ...] = (
    Stage("base", _base, (), target="the starting point"),
    Stage("cold_start", run_cold_start, ("cold_start", "trainer"), own_eval="cold_start.eval",
          help="stage 1: SFT on R1-format demonstrations, then a held-out eval",
          target="format rate (readable R1-format reasoning)", compared_with="base",
          target_delta=("base", "all", "format"), data=_DEMOS, data_from="cold_start.data"),
    # Under recipe.variant zero (R1-Zero) there is no cold start: reasoning RL starts from, and is compared
    # with, the base model (recipe_stages).
    Stage("reasoning_rl", run_reasoning_rl, ("rl", "rewards", "trainer", "rollout"), ("cold_start",),
          help="stage 2: GRPO with rule rewards on Ray actors (resumes if interrupted)",
          target="reasoning pass@1", compared_with="cold_start", target_delta=("cold_start", "reasoning", "correct"),
          data=_DEMOS, loop_eval="rl"),
    Stage("rejection_sample", run_rejection_sample, ("rejection", "rewards", "rollout"), ("reasoning_rl",),
          has_model=False,
          help="stage 3: sample the RL model, keep verified and clean completions, add non-reasoning data",
          target="a clean, verified SFT dataset", data=_ALL_TRAIN),
    Stage("sft", run_sft_stage, ("sft", "trainer"), ("rejection_sample",), own_eval="sft.eval",
          help="stage 4: SFT of the base model on the rejection-sampled data",
          target="pass@1 of the base model trained on the RL model's verified samples", compared_with="cold_start",
          target_delta=("base", "reasoning", "correct")),
    Stage("reward_model", run_reward_model, ("reward_model", "trainer"), has_model=False,
          help="stage 5a: Bradley-Terry reward model on preference pairs",
          target="pairwise accuracy on held-out preference pairs", data=("train", "general"),
          data_from="reward_model.data"),
    Stage("general_rl", run_general_rl, ("general_rl", "rewards", "trainer", "rollout"), ("sft", "reward_model"),
          help="stage 5b: GRPO on reasoning + general prompts (rule rewards, reward model)",
          target="general (instruction) pass@1 while keeping reasoning", compared_with="sft",
          target_delta=("sft", "general", "correct"), data=_ALL_TRAIN, loop_eval="general_rl"),
    Stage("distill", run_distill, ("distill", "rejection", "sft.max_length", "sft.save_every", "sft.packing",
                                   "trainer", "rewards", "rollout"), ("general_rl", "rejection_sample"),
          help="stage 6: SFT of a smaller student on the final model's verified samples",
          target="the small student's pass@1", compared_with="base",
          target_delta=("student_rl", "reasoning", "correct"), data=_ALL_TRAIN),
    Stage("student_rl", run_student_rl, ("rl", "rewards", "trainer", "rollout", *_STUDENT),
          help="the same student trained by reasoning RL alone (the paper's comparison)",
          target="the same student by RL alone (the paper's comparison)", compared_with="distill",
          data=_DEMOS, loop_eval="rl"),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def recipe_stages(variant: str) -> tuple[Stage, ...]:
    """The stages of the ``recipe.variant`` path (:mod:`pipeline.variants`), in order, as that path runs them:
    an input stage the path does not run is not read (the stage starts from the base model, ``model.name``)
    and a comparison with one is made with the base model instead; a stage so changed has
    ``recipe.variant`` in its training fingerprint."""
    return tuple(_in_variant(s, variant) for s in STAGES if runs_stage(variant, s.name))


def _in_variant(stage: Stage, variant: str) -> Stage:
    def ref(name: str | None) -> str | None:
        return name if name is None or runs_stage(variant, name) else "base"

    inputs = tuple(name for name in stage.inputs if runs_stage(variant, name))
    target_delta = stage.target_delta and (ref(stage.target_delta[0]), *stage.target_delta[1:])
    if inputs == stage.inputs and ref(stage.compared_with) == stage.compared_with:
        return stage
    return replace(stage, inputs=inputs, sections=(*stage.sections, "recipe.variant"),
                   compared_with=ref(stage.compared_with), target_delta=target_delta)


def stage_of(cfg: RecipeConfig, name: str) -> Stage:
    """The stage ``name`` of the config's recipe variant; a stage the variant does not have is an error in one
    line (`r1 cold-start` under R1-Zero)."""
    variant = cfg.recipe.variant
    for stage in recipe_stages(variant):
        if stage.name == name:
            return _budget_input(stage, cfg)
    have = ", ".join(s.name for s in recipe_stages(variant))
    raise ValueError(f"stage {name} is not part of recipe.variant={variant} (its stages: {have}); "
                     "set recipe.variant=r1 to run it")


def _budget_input(stage: Stage, cfg: RecipeConfig) -> Stage:
    """The RL-only student sized by the distillation's compute (``distill.rl_only_budget: match_distill``)
    reads the distill stage's manifest: distill is then its input (it must be done; its training fingerprint
    is part of the student's)."""
    if stage.name == "student_rl" and cfg.distill.rl_only_budget == "match_distill" and "distill" not in stage.inputs:
        return replace(stage, inputs=(*stage.inputs, "distill"))
    return stage


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


def select_stages(start: str | None, until: str | None, variant: str = "r1") -> list[Stage]:
    """The stages of the ``variant`` path from ``start`` to ``until`` inclusive, in recipe order."""
    stages = recipe_stages(variant)
    names = tuple(s.name for s in stages)
    for flag, name in (("--from", start), ("--until", until)):
        if name is not None and name not in STAGE_NAMES:
            raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGE_NAMES)}")
        if name is not None and name not in names:
            raise ValueError(f"{flag} {name}: not a stage of recipe.variant={variant} (its stages: {', '.join(names)})")
    i = names.index(start) if start else 0
    j = names.index(until) if until else len(stages) - 1
    if i > j:
        raise ValueError(f"--from {start} comes after --until {until}")
    return list(stages[i:j + 1])


def recorded_fingerprints(run_dir: Path) -> dict[str, str | None]:
    """The training fingerprint each stage's manifest in ``run_dir`` records (None: unfinished or unknown)."""
    return {s.name: training_fingerprint_of(read_manifest(Path(run_dir) / s.name)) for s in STAGES}


def prepare_stage_dir(cfg: RecipeConfig, stage: Stage, fp: str, *, restart_finished: bool = False) -> None:
    """Make ``runs/<name>/<stage>/`` ready for a run of training fingerprint ``fp``. An interrupted run of the
    same fingerprint stays (the stage resumes from it); anything else there (another config's work, a
    folder from before the current fingerprints, with ``restart_finished`` a finished run) is moved to
    ``superseded/``, never deleted. Then the folder's ``.fingerprint`` marker says whose work it holds."""
    run_dir = cfg.run_dir()
    stage_dir = run_dir / stage.name
    marker = stage_dir / ".fingerprint"
    if stage_dir.exists():
        same = marker.is_file() and marker.read_text().strip() == fp
        # Finished as recorded by `r1 run` or a stage command (a stage's loop also writes a complete manifest
        # before the stage's last part, e.g. distill's on-policy steps: that one resumes).
        finished = training_fingerprint_of(read_manifest(stage_dir)) == fp
        if same and not (restart_finished and finished):
            log.info("stage %s: resuming an interrupted run in %s", stage.name, stage_dir)
        elif any(p.name != marker.name for p in stage_dir.iterdir()):
            why = ("finished for this config; run again as asked" if same else
                   "config or inputs changed since it was written" if marker.is_file() else
                   "written without a fingerprint of this r1 (unknown config)")
            moved = move_aside(run_dir, stage_dir, stage.name)
            log.warning("stage %s: %s; its folder was moved to %s (`r1 clean` removes it); starting it afresh",
                        stage.name, why, moved)
        else:
            shutil.rmtree(stage_dir)  # nothing but a marker: no work to keep
    stage_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(fp)


def _recorded(cfg: RecipeConfig, stage: Stage, fp: str, efp: str | None, fps: dict) -> dict:
    """The manifest fields that say what a finished stage was made from (stages.manifest), and the recipe
    variant it was run for (the report reads it)."""
    return {"stage": stage.name, "fingerprint": fp, "eval_fingerprint": efp,
            "fingerprints_version": FINGERPRINTS_VERSION, "complete": True,
            "inputs": {n: fps.get(n) for n in stage.inputs}, "recipe_variant": cfg.recipe.variant}


def run_stage_command(cfg: RecipeConfig, stage: Stage, out: str | None = None) -> dict:
    """`r1 <stage>`: run one stage. Into the run's own folder for it (no ``--out``, or ``--out`` naming that
    folder) it runs as under `r1 run`: the folder prepared (an interrupted run resumed, other work moved
    aside) and the manifest's fingerprints written, so a later `r1 run` takes the result as done. Its own
    eval (``cold_start.eval``, ``sft.eval``) is recorded as such; `r1 run` re-runs only an eval that differs
    from its own (e.g. ``eval.general_stages`` leaves the stage out). Elsewhere it is not the run's stage:
    nothing is recorded."""
    stage = stage_of(cfg, stage.name)  # as the config's recipe variant has it; not in it: refused
    run_dir = cfg.run_dir()
    stage_dir = run_dir / stage.name
    if out is not None and Path(out).resolve() != stage_dir.resolve():
        log.info("stage %s: writing to %s, not the run's %s: no fingerprint recorded (`r1 run` will not take "
                 "it for the run's stage)", stage.name, out, stage_dir)
        return stage.run(cfg, out=out)
    fps = recorded_fingerprints(run_dir)
    fp = training_fingerprint(cfg, stage, fps)
    prepare_stage_dir(cfg, stage, fp, restart_finished=True)
    started = time.time()
    summary = stage.run(cfg, out=out)
    evaluated = bool(stage.own_eval and summary.get("eval"))
    efp = eval_fingerprint(cfg, None, split=cfg.eval.split) if evaluated else None
    summary.update({**_recorded(cfg, stage, fp, efp, fps), "seconds": round(time.time() - started, 1)})
    write_manifest(stage_dir, summary)
    return summary


def _reevaluate(cfg: RecipeConfig, stage: Stage, manifest: dict, efp: str) -> dict:
    """A trained stage whose eval settings changed: move its old ``eval/`` aside, evaluate its model again,
    update the manifest's eval summary and eval fingerprint. Its training outputs are left as they are."""
    run_dir = cfg.run_dir()
    stage_dir = run_dir / stage.name
    where, eval_dir = "no earlier eval", stage_dir / "eval"
    if eval_dir.exists():
        moved = move_aside(run_dir, eval_dir, f"{stage.name}-eval")
        in_loop = [p for p in moved.iterdir() if p.name.startswith("step_")]  # RL's evals during training: stay
        if in_loop:
            eval_dir.mkdir()
            for p in in_loop:
                p.rename(eval_dir / p.name)
        write_manifest(moved, manifest)  # the numbers that went with it
        where = f"the old eval moved to {moved}"
    log.info("stage %s: trained for this config and inputs; its eval settings changed: re-running only its "
             "eval (%s)", stage.name, where)
    started = time.time()
    with stage_running(stage.name):
        manifest["eval"] = evaluate_stage(cfg, stage.name, local_path(stage_dir, manifest["model"]))
    manifest.update({"eval_fingerprint": efp, "eval_seconds": round(time.time() - started, 1)})
    write_manifest(stage_dir, manifest)
    return manifest


def run_recipe(cfg: RecipeConfig, *, start: str | None = None, until: str | None = None,
               on_stage: Callable[[str, dict], None] | None = None) -> list[dict]:
    """Run the selected stages in order; returns their manifests. See the module docstring for skip/resume."""
    from .cluster import shared_rollouts
    from .memory import PeakMemory

    selected = [_budget_input(s, cfg) for s in select_stages(start, until, cfg.recipe.variant)]
    if not cfg.recipe.rl_only_student:
        selected = [s for s in selected if s.name != "student_rl"]
    run_dir = cfg.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    fps = recorded_fingerprints(run_dir)  # of stages outside the selection; the selected ones' are computed
    results = []
    # One rollout engine serves consecutive stages (weights swapped in), not an engine start per stage.
    with shared_rollouts(cfg.recipe.share_rollout):
        for stage in selected:
            stage_dir = run_dir / stage.name
            fp = training_fingerprint(cfg, stage, fps)
            fps[stage.name] = fp
            evaluates = stage.has_model and cfg.recipe.eval_each_stage
            efp = eval_fingerprint(cfg, stage.name) if evaluates else None
            manifest = read_manifest(stage_dir)
            if training_fingerprint_of(manifest) == fp:
                if efp is None or manifest.get("eval_fingerprint") == efp:
                    log.info("stage %s: complete for this config and inputs; skipped", stage.name)
                else:
                    manifest = _reevaluate(cfg, stage, manifest, efp)
                    if on_stage is not None:
                        on_stage(stage.name, manifest)
                results.append(manifest)
                continue
            prepare_stage_dir(cfg, stage, fp)
            log.info("stage %s: running", stage.name)
            _check_inputs(cfg, stage)
            started = time.time()
            # The runner evaluates every stage on the recipe's whole held-out split; the stage's own eval
            # would repeat it on a part of it.
            stage_cfg = _with(cfg, stage.own_eval, False) if stage.own_eval else cfg
            with PeakMemory() as mem, stage_running(stage.name):
                summary = stage.run(stage_cfg)
                if evaluates:
                    summary["eval"] = evaluate_stage(cfg, stage.name, summary["model"])
            summary.update({**_recorded(cfg, stage, fp, efp, fps), "seconds": round(time.time() - started, 1),
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
