"""`r1 eval`: wire a config to an engine, a tokenizer and an eval split, then run stages.evaluate."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from rollout import SamplingSpec, build_engine

from .config import RecipeConfig, resolve

log = logging.getLogger("r1.eval")


def engine_options(cfg: RecipeConfig) -> dict:
    """The engine constructor options a config implies (shared by eval and rollout actors)."""
    from .placement import colocated_on_gpus

    r = cfg.rollout
    return {"dtype": r.dtype, "gpu_memory_utilization": r.gpu_memory_utilization,
            "max_model_len": r.max_model_len, "max_num_seqs": r.max_num_seqs, "seed": cfg.run.seed,
            "enforce_eager": r.enforce_eager, "tensor_parallel_size": r.tensor_parallel_size,
            "kv_cache_gb": r.kv_cache_gb, "routing_capture": routing_capture(cfg),
            "sleep_mode": colocated_on_gpus(cfg), "sleep_level": r.sleep_level,
            "enable_prefix_caching": r.enable_prefix_caching}


def routing_capture(cfg: RecipeConfig) -> bool:
    """Whether engines record routing (R3): :meth:`RecipeConfig.routing_captured`."""
    return cfg.routing_captured()


def eval_sampling(cfg: RecipeConfig) -> SamplingSpec:
    e = cfg.eval
    return SamplingSpec(n=e.n_samples, **resolve(e.sampling, cfg.rollout).model_dump(), seed=cfg.run.seed,
                        logprobs=False)


def run_eval(cfg: RecipeConfig, *, model: str | None = None, data: str | None = None, out: str | None = None,
             label: str | None = None, engine=None, samples: list[dict] | None = None):
    """Evaluate ``model`` (default: the config's) on ``samples``, else ``data``, else the config's held-out split.

    Returns ``(metrics, table)`` and writes ``eval.json``, ``eval_samples.jsonl`` and ``table.txt``.
    """
    from transformers import AutoTokenizer

    from stages.evaluate import evaluate, format_table
    from trainer.model_io import resolve_model

    from .data import eval_samples
    from .eval_labels import eval_destination
    from .eval_rewards import eval_scoring
    from tasks.prompting import template_prefills_think

    model_dir = resolve_model(model or cfg.model.name)
    # A unique label per model; another model's eval is never overwritten (pipeline.eval_labels).
    label, out_dir = eval_destination(cfg.run_dir(), model_dir, label=label, out=out)
    samples = samples if samples is not None else eval_samples(cfg, data)
    if cfg.eval.limit_per_task:
        samples = _limit_per_task(samples, cfg.eval.limit_per_task)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prefilled = cfg.rewards.prefilled_think
    if prefilled == "auto":
        prefilled = template_prefills_think(tokenizer, cfg.data.system_prompt, cfg.data.template)
    scoring = eval_scoring(cfg, prefilled)  # eval.rewards over the recipe's rewards (pipeline.eval_rewards)
    own_engine = engine is None
    if own_engine:
        log.info("starting %s engine for %s", cfg.rollout.engine, model_dir)
        engine = build_engine(cfg.rollout.engine, model_dir, **engine_options(cfg))
    try:
        metrics = evaluate(engine, tokenizer, samples, system_prompt=cfg.data.system_prompt,
                           template=cfg.data.template, sampling=eval_sampling(cfg), ks=cfg.eval.k, out_dir=out_dir, scoring=scoring)
    finally:
        if own_engine:
            engine.close()
    table = format_table(metrics, scoring)
    (out_dir / "table.txt").write_text(table + "\n")
    (out_dir / "model.json").write_text(json.dumps({"model": model_dir, "label": label, "n": len(samples)}))
    return metrics, table


def _limit_per_task(samples, limit: int):
    seen: dict[str, int] = {}
    kept = []
    for s in samples:
        task = str(s.get("task"))
        if seen.get(task, 0) < limit:
            kept.append(s)
            seen[task] = seen.get(task, 0) + 1
    return kept
