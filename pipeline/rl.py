"""`r1 reasoning-rl` and `r1 general-rl`: wire a config to data, rendered prompts and Ray actors, then run the
GRPO loop of :mod:`stages.grpo`."""
from __future__ import annotations

import logging
from pathlib import Path

from .config import RecipeConfig, dump_yaml, resolve
from .manifests import stage_model

log = logging.getLogger("r1.rl")


def grpo_settings(cfg: RecipeConfig):
    """The trainer's per-update GRPO knobs from the typed config."""
    from trainer.settings import GRPOLoss, GRPOSettings

    sampling = resolve(cfg.rl.sampling, cfg.rollout)
    return GRPOSettings(**cfg.rl.model_dump(include=set(GRPOLoss.model_fields)), temperature=sampling.temperature,
                        micro_batch_size=cfg.trainer.micro_batch_size, horizon=sampling.max_new_tokens)


def build_plan(cfg: RecipeConfig, tokenizer, out_dir: Path, *, prefilled_think: bool, stage: str = "reasoning_rl"):
    """The stage's plan (data with rendered prompt ids, sampling, knobs) from the config."""
    from rollout import SamplingSpec
    from stages.grpo import RLPlan
    from tasks.prompting import render_prompt_ids

    from .data import build_splits
    from .evaluation import _limit_per_task, eval_sampling

    train, test = build_splits(cfg)
    # Rendered once here: the loop hands ids to the engine and never needs the chat template.
    train = [{**s, "prompt_ids": render_prompt_ids(tokenizer, s, cfg.data.system_prompt)} for s in train]
    if cfg.rl.eval_limit_per_task:
        test = _limit_per_task(test, cfg.rl.eval_limit_per_task)
    r = cfg.rl
    sampling = SamplingSpec(n=r.group_size, **resolve(r.sampling, cfg.rollout).model_dump(), seed=cfg.run.seed)
    return RLPlan(train=train, test=test, tokenizer=tokenizer, system_prompt=cfg.data.system_prompt, steps=r.steps,
                  prompts_per_step=r.prompts_per_step, group_size=r.group_size, sampling=sampling,
                  eval_sampling=eval_sampling(cfg), eval_ks=cfg.eval.k, grpo=grpo_settings(cfg),
                  advantage_scale=r.advantage_scale, dynamic_sampling=r.dynamic_sampling,
                  max_refill_rounds=r.max_refill_rounds, overlong_filter=r.overlong_filter, eval_every=r.eval_every,
                  eval_at_ends=r.eval_at_ends,
                  save_every=r.save_every, keep_checkpoints=r.keep_checkpoints, prefilled_think=prefilled_think,
                  seed=cfg.run.seed, stage=stage, out_dir=out_dir, extra_manifest={"config_hash": cfg.hash()})


def run_reasoning_rl(cfg: RecipeConfig, *, out: str | None = None, stage: str = "reasoning_rl") -> dict:
    """Stage 2 end to end (and any stage that is GRPO on ``cfg.rl``): start actors, train (resuming if a
    checkpoint exists), save the final model."""
    from transformers import AutoTokenizer

    from stages.grpo import grpo_loop
    from stages.manifest import write_manifest
    from tasks.prompting import template_prefills_think
    from trainer.model_io import resolve_model

    from .cluster import build_rl_actors
    from .memory import PeakMemory
    from .tracking import MetricsLogger

    out_dir = Path(out) if out else cfg.run_dir() / "reasoning_rl"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(dump_yaml(cfg))
    model_dir = resolve_model(cfg.rl.init_model or stage_model(cfg, "cold_start") or cfg.model.name)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prefilled = cfg.rewards.prefilled_think
    if prefilled == "auto":
        prefilled = template_prefills_think(tokenizer, cfg.data.system_prompt)
    plan = build_plan(cfg, tokenizer, out_dir, prefilled_think=prefilled, stage=stage)
    plan.extra_manifest["init_model"] = model_dir
    total_updates = cfg.rl.steps * cfg.rl.mini_batches * cfg.rl.epochs
    log.info("starting actors for %s (%d train prompts, %d held-out)", model_dir, len(plan.train), len(plan.test))
    actors = build_rl_actors(cfg, model_dir, prefilled_think=prefilled, total_optimizer_steps=total_updates)
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
    write_manifest(out_dir, summary)
    log.info("peak memory (driver + Ray processes, PSS): %.2f GiB", mem.peak_gib)
    return summary


def general_rl_config(cfg: RecipeConfig) -> RecipeConfig:
    """Stage 5 as a reasoning-RL config: the general_rl knobs as ``rl``, its rewards as ``rewards.items``
    (the reward model's dir filled in), and the general prompts added to the task mix."""
    from .config import validate

    tree = cfg.model_dump(mode="json")
    g = tree["general_rl"]
    general_tasks, items = g.pop("general_tasks"), g.pop("rewards")
    reward_model_dir = str(cfg.run_dir() / "reward_model" / "model")
    for item in items:
        if item["name"] == "reward_model" and not item["options"].get("model"):
            item["options"] = {**item["options"], "model": reward_model_dir}
    g["init_model"] = g["init_model"] or stage_model(cfg, "sft") or cfg.model.name
    have = {t["name"] for t in tree["data"]["tasks"]}
    tree["data"]["tasks"] += [t for t in general_tasks if t["name"] not in have]
    tree["rl"], tree["rewards"]["items"] = g, items
    return validate(tree)


def run_general_rl(cfg: RecipeConfig, *, out: str | None = None) -> dict:
    """Stage 5: GRPO from the SFT model on reasoning prompts (rule rewards) and general prompts (reward
    model + instruction constraints), with the reasoning-RL machinery."""
    return run_reasoning_rl(general_rl_config(cfg), out=out or str(cfg.run_dir() / "general_rl"), stage="general_rl")
