"""`r1 reasoning-rl`, `r1 general-rl` and `r1 student-rl`: the GRPO stages. Each is a :class:`GRPOJob` (its
config section, rewards, task mix and starting model, passed explicitly), wired to data, rendered prompts and
Ray actors, then run by the loop of :mod:`stages.grpo`."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from stages.manifest import stage_model

from .config import GeneralRLConfig, RecipeConfig, RewardItem, RLConfig, TaskMix, dump_yaml, resolve
from .data import general_task_mix
from .variants import runs_stage

log = logging.getLogger("r1.rl")


@dataclass(frozen=True)
class GRPOJob:
    """What one GRPO stage runs on: the config never changes meaning, each stage names its own parts."""

    stage: str  # reasoning_rl, general_rl, student_rl: its folder and manifest name
    section: RLConfig  # cfg.rl, or cfg.general_rl
    rewards: list[RewardItem]
    tasks: list[TaskMix]  # the synthetic task mix of its train and held-out prompts (plus data.sources)
    init_model: str
    budget_flops: float | None = None  # train until the stage's FLOPs reach this (stages.compute), not section.steps
    max_steps: int | None = None  # with a budget: stop here even if it is not reached


def reasoning_rl_job(cfg: RecipeConfig) -> GRPOJob:
    """Stage 2: ``rl`` with ``rewards.items`` on ``data.tasks``, from the cold-start model; under
    ``recipe.variant: zero`` (R1-Zero, no cold start) from the base model."""
    cold_start = stage_model(cfg.run_dir(), "cold_start") if runs_stage(cfg.recipe.variant, "cold_start") else None
    init = cfg.rl.init_model or cold_start or cfg.model.name
    return GRPOJob("reasoning_rl", cfg.rl, list(cfg.rewards.items), list(cfg.data.tasks), init)


def general_rl_job(cfg: RecipeConfig) -> GRPOJob:
    """Stage 5: ``general_rl`` with its own rewards (the reward model's dir filled in) on ``data.tasks`` plus
    ``general_rl.general_tasks``, from the SFT model."""
    g: GeneralRLConfig = cfg.general_rl
    reward_model_dir = str(cfg.run_dir() / "reward_model" / "model")
    rewards = [item.model_copy(update={"options": {**item.options, "model": reward_model_dir}})
               if item.name == "reward_model" and not item.options.get("model") else item for item in g.rewards]
    tasks = list(cfg.data.tasks) + general_task_mix(cfg)
    init = g.init_model or stage_model(cfg.run_dir(), "sft") or cfg.model.name
    return GRPOJob("general_rl", g, rewards, tasks, init)


def grpo_settings(cfg: RecipeConfig, section: RLConfig | None = None):
    """The trainer's per-update GRPO knobs: the section's own :class:`GRPOLoss` fields plus what follows from
    its sampling and the trainer (``section``: default ``cfg.rl``)."""
    from trainer.settings import GRPOLoss, GRPOSettings

    section = section or cfg.rl
    sampling = resolve(section.sampling, cfg.rollout)
    return GRPOSettings(**section.model_dump(include=set(GRPOLoss.model_fields)), temperature=sampling.temperature,
                        micro_batch_size=cfg.trainer.micro_batch_size, horizon=sampling.max_new_tokens)


def build_plan(cfg: RecipeConfig, tokenizer, out_dir: Path, *, prefilled_think: bool, job: GRPOJob | None = None):
    """The stage's plan (data with rendered prompt ids, sampling, knobs); ``job``: default stage 2's."""
    from rollout import SamplingSpec
    from stages.grpo import RLPlan
    from tasks.prompting import render_prompt_ids

    from .data import build_splits
    from .eval_rewards import eval_scoring
    from .evaluation import _limit_per_task, eval_sampling

    job = job or reasoning_rl_job(cfg)
    r = job.section
    train, test = build_splits(cfg, job.tasks)
    # Rendered once here: the loop hands ids to the engine and never needs the chat template.
    train = [{**s, "prompt_ids": render_prompt_ids(tokenizer, s, cfg.data.system_prompt, cfg.data.template)}
             for s in train]
    if r.eval_limit_per_task:
        test = _limit_per_task(test, r.eval_limit_per_task)
    sampling = SamplingSpec(n=r.group_size, **resolve(r.sampling, cfg.rollout).model_dump(), seed=cfg.run.seed)
    return RLPlan(train=train, test=test, tokenizer=tokenizer, system_prompt=cfg.data.system_prompt,
                  template=cfg.data.template, loop=r,
                  sampling=sampling, eval_sampling=eval_sampling(cfg), eval_ks=cfg.eval.k, grpo=grpo_settings(cfg, r),
                  prefilled_think=prefilled_think, eval_scoring=eval_scoring(cfg, prefilled_think), seed=cfg.run.seed,
                  stage=job.stage, out_dir=out_dir,
                  extra_manifest={"config_hash": cfg.hash()})


def run_grpo(cfg: RecipeConfig, job: GRPOJob, *, out: str | None = None) -> dict:
    """A GRPO stage end to end: start actors, train (resuming if a checkpoint exists), save the final model."""
    from transformers import AutoTokenizer

    from stages.compute import param_count, rl_compute
    from stages.grpo import grpo_loop
    from stages.manifest import write_manifest
    from tasks.prompting import template_prefills_think
    from trainer.model_io import resolve_model

    from .cluster import build_rl_actors, fault_dir
    from .faults import FaultInjector, configured_faults
    from .memory import PeakMemory
    from .tracking import MetricsLogger, read_metrics

    started = time.time()
    out_dir = Path(out) if out else cfg.run_dir() / job.stage
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(dump_yaml(cfg))
    model_dir = resolve_model(job.init_model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prefilled = cfg.rewards.prefilled_think
    if prefilled == "auto":
        prefilled = template_prefills_think(tokenizer, cfg.data.system_prompt, cfg.data.template)
    plan = build_plan(cfg, tokenizer, out_dir, prefilled_think=prefilled, job=job)
    plan.extra_manifest["init_model"] = model_dir
    plan.faults = FaultInjector("driver", configured_faults(cfg.cluster), fault_dir(cfg)) or None
    params = param_count(model_dir)
    r = apply_budget(plan, job, params) if job.budget_flops is not None else job.section
    log.info("starting actors for %s (%d train prompts, %d held-out)", model_dir, len(plan.train), len(plan.test))
    actors = build_rl_actors(cfg, model_dir, section=r, rewards=job.rewards, tasks=job.tasks, prefilled_think=prefilled,
                             total_optimizer_steps=r.steps * r.mini_batches * r.epochs)
    logger = MetricsLogger(out_dir, tensorboard=cfg.logging.tensorboard, wandb=cfg.logging.wandb,
                           wandb_project=cfg.logging.wandb_project, run_name=cfg.run.name,
                           config=cfg.model_dump(mode="json"))
    mem = PeakMemory()
    try:
        with mem:
            summary = grpo_loop(actors, plan, logger, on_step=lambda step, m: m.__setitem__("memory/gib", mem.last_gib))
    finally:
        logger.close()
        actors.kill()
    summary["peak_memory_gib"] = round(mem.peak_gib, 2)
    summary["compute"] = rl_compute(read_metrics(out_dir / "metrics.jsonl"), params, seconds=time.time() - started)
    write_manifest(out_dir, summary)
    log.info("peak memory (driver + Ray processes, PSS): %.2f GiB", mem.peak_gib)
    return summary


def apply_budget(plan, job: GRPOJob, params: int) -> RLConfig:
    """A job with a compute budget: the loop stops at it (:class:`stages.grpo.ComputeBudget`) and its
    ``steps`` become the fewest that can reach it (each step at its most: every response ``max_new_tokens``
    long, every row trained), the horizon of a cosine schedule and of the progress bar. Returns the section."""
    from stages.compute import grpo_step_flops_bound, steps_for_budget
    from stages.grpo import ComputeBudget

    r = job.section
    bound = grpo_step_flops_bound(params, [len(s["prompt_ids"]) for s in plan.train],
                                  prompts_per_step=r.prompts_per_step, group_size=r.group_size,
                                  max_new_tokens=plan.sampling.max_new_tokens, epochs=r.epochs,
                                  scored=r.epochs * r.mini_batches > 1, reference=r.kl_coef > 0)
    steps = steps_for_budget(job.budget_flops, bound)
    plan.loop = r.model_copy(update={"steps": min(steps, job.max_steps or steps)})
    plan.budget = ComputeBudget(flops=job.budget_flops, params=params, max_steps=job.max_steps)
    log.info("%s: a budget of %.3g FLOPs: at least %d steps (at most %.3g FLOPs a step)", job.stage,
             job.budget_flops, steps, bound)
    return plan.loop


def run_reasoning_rl(cfg: RecipeConfig, *, out: str | None = None) -> dict:
    """Stage 2: GRPO with rule rewards from the cold-start model."""
    return run_grpo(cfg, reasoning_rl_job(cfg), out=out)


def run_general_rl(cfg: RecipeConfig, *, out: str | None = None) -> dict:
    """Stage 5: GRPO from the SFT model on reasoning prompts (rule rewards) and general prompts (reward
    model + instruction constraints)."""
    return run_grpo(cfg, general_rl_job(cfg), out=out)
