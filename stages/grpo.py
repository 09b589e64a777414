"""GRPO, the loop of every RL stage (reasoning RL, general RL, the RL-only student), written against Ray actor
handles, so the same code runs on a laptop (local Ray) and on a cluster:

    collect (rollout engines) -> score (reward workers) -> advantages -> update (trainer) -> sync weights
    -> eval / checkpoint -> next step

Artifacts under ``plan.out_dir``: ``metrics.jsonl``, ``tensorboard/``, ``eval/step_NNNNN/``,
``checkpoints/step_NNNNN/`` (DCP trainer state + ``state.json``), ``model/`` and ``manifest.json``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from rollout.types import SamplingSpec
from trainer.settings import GRPOSettings

from .checkpoints import resume, save_step
from .compute import grpo_step_tokens, rl_step_flops
from .evaluate import evaluate, headline
from .grpo_batch import build_batch, collect_rollouts
from .grpo_knobs import GRPOLoop
from .manifest import write_manifest
from .prompt_stream import PromptStream
from .step_metrics import step_metrics

log = logging.getLogger("r1.grpo")


@dataclass
class RLPlan:
    """Everything the loop needs that is not an actor. ``train`` samples carry their rendered ``prompt_ids``;
    the tokenizer and system prompt are for the held-out eval; ``loop`` is the config's RL section as is."""

    train: Sequence[Mapping]
    test: Sequence[Mapping]
    tokenizer: Any
    system_prompt: str | None
    loop: GRPOLoop
    sampling: SamplingSpec  # n = group_size
    eval_sampling: SamplingSpec
    eval_ks: Sequence[int]
    grpo: GRPOSettings
    prefilled_think: bool = False
    template: str = "chat"  # how the held-out prompts are laid out (tasks.prompting.TEMPLATES)
    eval_scoring: Any = None  # a stages.evaluate.EvalScoring (None: the built-in correctness + format)
    seed: int = 0
    stage: str = "reasoning_rl"
    out_dir: Path = Path("runs/rl")
    extra_manifest: dict = field(default_factory=dict)
    faults: Any = None  # a driver-side pipeline.faults.FaultInjector (tests of resume), or None
    budget: "ComputeBudget | None" = None  # stop at a compute budget instead of at loop.steps


@dataclass(frozen=True)
class ComputeBudget:
    """Train until the stage's FLOPs (:mod:`stages.compute`, counted from each step's metrics line) reach
    ``flops``: the loop ends after the first step that brings them there. ``loop.steps`` is then the
    expected count (the schedule's horizon, the progress bar); ``max_steps`` a cap (None: none)."""

    flops: float
    params: int  # the policy's N
    reference_params: int | None = None  # the reference's N (default: the policy's)
    max_steps: int | None = None


_WARNED_NO_LOGPROBS: set[int] = set()  # the stages' actor sets that have said it


def rl_step(actors, stream: PromptStream, plan: RLPlan, step: int) -> dict[str, float]:
    """One GRPO step end to end; returns its metrics line (with seconds per phase). Every actor call waits at
    most ``actors.timeout_s``; dead engines, reward workers and the reference are replaced inside the calls."""
    started = time.perf_counter()
    _, gens, scores, stats = collect_rollouts(actors, stream, plan, step)
    if actors.sleep_engines:  # colocated on the trainer's GPUs: give them back until the weight sync ...
        actors.rollout.sleep()
        actors.call_trainer("reload_states")  # ... and the trainer takes its weights and AdamW state back
    t0 = time.perf_counter()
    batch = build_batch(gens, scores, plan)
    t1 = time.perf_counter()
    g = plan.grpo
    if actors.reference is not None:
        ref_lp = actors.reference.call("batch_logprobs", batch, g.temperature, g.micro_batch_size, False,
                                       g.routing_replay_reference)
    elif actors.reference_is_trainer:  # LoRA: the trainer with its adapters off
        ref_lp = actors.call_trainer("batch_logprobs", batch, g.temperature, g.micro_batch_size, True,
                                     g.routing_replay_reference)
    else:
        ref_lp = None
    t2 = time.perf_counter()
    train = actors.call_trainer("train_grpo", batch, g, ref_lp)
    t3 = time.perf_counter()
    # The weights go by the layout's route (object store, NCCL, CUDA IPC: pipeline/weight_sync.py), never
    # through this driver; an engine that dies meanwhile is replaced there, the trainer kept.
    sync_load = actors.sync_weights()
    if actors.sleep_engines:  # the engines wake for the next rollout into the memory the trainer frees here
        actors.call_trainer("offload_states")
    t4 = time.perf_counter()
    if train.get("rows_without_rollout_logprobs") and id(actors) not in _WARNED_NO_LOGPROBS:
        # Once per stage: an engine that never returns logprobs would otherwise repeat it every step (the
        # count stays in the step metrics, train/rows_without_rollout_logprobs).
        _WARNED_NO_LOGPROBS.add(id(actors))
        log.warning("step %d: %d rows came back without rollout logprobs (TIS weight 1, no mismatch metric; "
                    "train/rows_without_rollout_logprobs counts them every step)",
                    step, int(train["rows_without_rollout_logprobs"]))
    seconds = {"generate": stats.pop("time/generate"), "reward": stats.pop("time/reward"), "prepare": t1 - t0,
               "reference": t2 - t1, "train": t3 - t2, "sync": t4 - t3, "sync_load": sync_load, "step": t4 - started}
    stats.update(grpo_step_tokens(batch, g, has_reference=ref_lp is not None))  # the step's compute (stages.compute)
    return step_metrics(scores, batch, stats, train, seconds, stream.epoch)


def held_out_eval(actors, plan: RLPlan, step: int) -> dict[str, float]:
    """Held-out pass@k / format rate of the rollout engine's current weights, written under eval/."""
    metrics = evaluate(actors.engine, plan.tokenizer, plan.test, system_prompt=plan.system_prompt,
                       template=plan.template, sampling=plan.eval_sampling, ks=plan.eval_ks,
                       prefilled_think=plan.prefilled_think,
                       out_dir=plan.out_dir / "eval" / f"step_{step:05d}", progress=False, scoring=plan.eval_scoring)
    return headline(metrics, prefix="eval/")


def _resume(actors, plan: RLPlan, logger, stream: PromptStream) -> int:
    """Load the newest checkpoint (if any) into the trainer and the engines, and the data position into the
    stream; returns the step to continue after."""
    start, state = resume(actors.trainer, plan.out_dir, logger, plan.stage, sync=actors.sync_weights,
                          timeout_s=actors.timeout_s)
    stream.position = state.get("data_position", 0)
    return start


def _restart_trainer(actors, plan: RLPlan, logger, stream: PromptStream, error: Exception) -> int:
    """After the trainer died: a new trainer, resumed from the last checkpoint (or from the start, the engines
    given its initial weights back); the lines of the steps to redo are dropped. Returns the step to
    continue after."""
    log.warning("the trainer died (%s); resuming from the last checkpoint", str(error).splitlines()[0])
    actors.restart_trainer()
    start = _resume(actors, plan, logger, stream)
    if start == 0:  # no checkpoint yet: the engines may hold weights of a step that is now redone
        actors.sync_weights()
        logger.truncate_after(0)
    return start


def trainer_died(exc: BaseException, trainer) -> bool:
    """Whether ``exc`` reports the death of the trainer (a worker of a trainer group included), not of an
    engine or another actor whose ``RayActorError`` reached the loop."""
    from .supervision import TrainerDied, actor_id

    if isinstance(exc, TrainerDied):
        return True
    dead = getattr(exc, "actor_id", None)
    ids = {actor_id(w) for w in getattr(trainer, "workers", [trainer])} - {None}
    return dead is None or not ids or dead in ids


def _flops_logged(logger, plan: RLPlan, upto: int) -> float:
    """The budgeted FLOPs of the steps 1..``upto`` already logged (a resumed run counts what it did before)."""
    b = plan.budget
    return sum(rl_step_flops(r, b.params, b.reference_params) for r in logger.rows() if 0 < r.get("step", 0) <= upto)


def is_last_step(plan: RLPlan, step: int, spent: float) -> bool:
    """Whether ``step`` ends the loop: ``loop.steps`` reached, or with a :class:`ComputeBudget` the stage's
    FLOPs ``spent`` so far at the budget (or the budget's ``max_steps`` reached)."""
    b = plan.budget
    if b is None:
        return step >= plan.loop.steps
    return spent >= b.flops or (b.max_steps is not None and step >= b.max_steps)


def grpo_loop(actors, plan: RLPlan, logger, *, on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Run (or resume, from the newest checkpoint in ``plan.out_dir``) the GRPO loop; returns the manifest.

    A trainer that dies (a crash, a lost node) is replaced and the loop resumes from the last checkpoint, so
    no step is lost or recorded twice; the other actors are replaced inside their calls (see
    :mod:`stages.supervision`)."""
    from ray.exceptions import RayActorError
    from tqdm.auto import tqdm

    from .supervision import TrainerDied

    stream = PromptStream(plan.train, seed=plan.seed)
    start = _resume(actors, plan, logger, stream)
    if start == 0:
        # A fresh start keeps only a finished step-0 eval from an earlier attempt, never its later lines.
        have_eval0 = (plan.out_dir / "eval" / "step_00000" / "eval.json").exists() and any(
            r.get("step") == 0 for r in logger.rows())
        logger.truncate_after(0 if have_eval0 else -1)
        if not have_eval0 and plan.loop.eval_at_ends:
            logger.log(0, held_out_eval(actors, plan, 0))
    knobs = plan.loop
    bar = tqdm(total=knobs.steps, initial=start, desc=plan.stage.replace("_", " "), unit="step")
    last_eval, checkpoint_seconds = None, 0.0
    spent = _flops_logged(logger, plan, start) if plan.budget else 0.0
    step, done = start + 1, start > 0 and is_last_step(plan, start, spent)
    while not done:
        if plan.faults:
            plan.faults.check("step", count=step)  # fault injection: the driver itself dies or hangs here
        try:
            metrics = rl_step(actors, stream, plan, step)
            if plan.budget:
                spent += rl_step_flops(metrics, plan.budget.params, plan.budget.reference_params)
                metrics["compute/flops_cumulative"] = spent
            last = is_last_step(plan, step, spent)
            t0 = time.perf_counter()
            if knobs.eval_every and step % knobs.eval_every == 0 or (last and knobs.eval_at_ends):
                last_eval = held_out_eval(actors, plan, step)
                metrics.update(last_eval)
            # The previous step's checkpoint save: the line is written before this step's save, so a kill in
            # between leaves a line that the resumed run replaces, never a saved step without its line.
            metrics.update({"time/eval": time.perf_counter() - t0, "time/checkpoint": checkpoint_seconds})
            if on_step is not None:  # the caller may add its own figures (memory) before the line is written
                on_step(step, metrics)
            logger.log(step, metrics)
            t1 = time.perf_counter()
            if step % knobs.save_every == 0 or last:
                save_step(actors.trainer, plan.out_dir, step, {"data_position": stream.position},
                          knobs.keep_checkpoints, timeout_s=actors.timeout_s)
            checkpoint_seconds = time.perf_counter() - t1
        except (RayActorError, TrainerDied) as exc:  # the other roles are replaced in their calls (engines
            # during a weight sync too: pipeline/weight_sync.py): only the trainer's end is here
            if not trainer_died(exc, actors.trainer):
                bar.close()
                raise  # another actor's death that escaped its supervision: never a reason to kill the trainer
            step = _restart_trainer(actors, plan, logger, stream, exc) + 1
            spent = _flops_logged(logger, plan, step - 1) if plan.budget else 0.0
            done = step > 1 and is_last_step(plan, step - 1, spent)  # the checkpoint was the last step's
            bar.n = step - 1
            bar.refresh()
            continue
        except BaseException:  # e.g. a RewardFailure: the bar's line ends before the one error line the CLI prints
            bar.close()
            raise
        done = last
        step += 1
        bar.update(1)
        bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", acc=f"{metrics.get('accuracy', float('nan')):.2f}",
                        fmt=f"{metrics.get('format_rate', float('nan')):.2f}", s=f"{metrics['time/step']:.0f}")
    bar.close()
    model_dir = actors.call_trainer("save_pretrained", str(plan.out_dir / "model"))
    summary = {"stage": plan.stage, "steps": step - 1, "model": model_dir, "final_eval": last_eval,
               "complete": True, **plan.extra_manifest}
    if plan.budget:
        summary["budget"] = {"flops": plan.budget.flops, "spent": spent, "reached": spent >= plan.budget.flops,
                             "expected_steps": knobs.steps, "max_steps": plan.budget.max_steps}
    write_manifest(plan.out_dir, summary)
    return summary
