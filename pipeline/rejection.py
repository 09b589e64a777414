"""`r1 rejection-sample` (stage 3): wire a config to an engine, prompts and filters, then run
stages.rejection_sample. Distillation (stage 6) uses :func:`verified_dataset` to collect the teacher's data."""
from __future__ import annotations

import logging
import random
from pathlib import Path

from stages.manifest import stage_model

from .config import RecipeConfig, resolve

log = logging.getLogger("r1.rejection")


def run_rejection_sample(cfg: RecipeConfig, *, model: str | None = None, out: str | None = None) -> dict:
    """Stage 3: sample ``rejection.init_model`` (default: the reasoning_rl stage's model) on train prompts."""
    r = cfg.rejection
    model = (model or r.init_model or stage_model(cfg.run_dir(), "reasoning_rl")
             or str(cfg.run_dir() / "reasoning_rl" / "model"))
    out_dir = Path(out) if out else cfg.run_dir() / "rejection_sample"
    return verified_dataset(cfg, model, out_dir, prompts=r.prompts, n_samples=r.n_samples,
                            sampling=resolve(r.sampling, cfg.rollout), max_per_prompt=r.max_per_prompt,
                            non_reasoning_ratio=r.non_reasoning_ratio)


def filter_settings(cfg: RecipeConfig, max_per_prompt: int, format_style: str | None = None):
    from stages.rejection_filters import FilterSettings

    r = cfg.rejection
    return FilterSettings(min_language_consistency=r.min_language_consistency,
                          max_paragraph_chars=r.max_paragraph_chars,
                          max_repeated_ngram_fraction=r.max_repeated_ngram_fraction,
                          allow_code_blocks=r.allow_code_blocks, max_per_prompt=max_per_prompt,
                          format_style=format_style or "r1")


def verified_dataset(cfg: RecipeConfig, model: str, out_dir: Path, *, prompts: int | None, n_samples: int,
                     sampling, max_per_prompt: int, non_reasoning_ratio: float,
                     allow_empty: bool = False) -> dict:
    """Sample ``model`` on the reasoning train prompts, keep verified and clean completions, mix in the
    non-reasoning tasks' references; write ``data.jsonl`` + ``stats.json`` under ``out_dir``. Keeping no
    completion at all is an error unless ``allow_empty`` (the caller has other data to train on)."""
    from transformers import AutoTokenizer

    from rollout import SamplingSpec
    from stages.rejection_sample import build_dataset, sample_candidates, write_dataset
    from tasks import make_demonstration
    from trainer.model_io import resolve_model

    from .actors import RemoteEngine
    from .cluster import release_rollout, start_rollout
    from .data import build_splits, general_splits
    from .eval_rewards import recipe_scoring
    from tasks.prompting import template_prefills_think

    model_dir = resolve_model(model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prefilled = cfg.rewards.prefilled_think
    if prefilled == "auto":
        prefilled = template_prefills_think(tokenizer, cfg.data.system_prompt, cfg.data.template)
    # Correct and well-formed by the training rewards' own extraction and layout (rewards.items).
    scoring = recipe_scoring(cfg, prefilled)
    train, _ = build_splits(cfg)
    general = set(cfg.rejection.non_reasoning_tasks)
    reasoning = [s for s in train if s.get("task") not in general]
    if not reasoning:
        raise ValueError("rejection sampling: no reasoning prompts in the train split (data.tasks / data.sources)")
    if prompts and len(reasoning) > prompts:
        reasoning = random.Random(cfg.run.seed).sample(reasoning, prompts)
    general_train = train + general_splits(cfg)[0]
    non_reasoning = [make_demonstration(s, system_prompt=cfg.data.system_prompt)
                     for s in general_train if s.get("task") in general and s.get("solution")]
    spec = SamplingSpec(n=n_samples, **sampling.model_dump(), seed=cfg.run.seed, logprobs=False)
    log.info("sampling %s: %d prompts x %d", model_dir, len(reasoning), n_samples)
    handle = start_rollout(cfg, model_dir)
    try:
        candidates = sample_candidates(RemoteEngine(handle), tokenizer, reasoning,
                                       system_prompt=cfg.data.system_prompt, template=cfg.data.template,
                                       sampling=spec,
                                       prefilled_think=prefilled, scoring=scoring)
    finally:
        release_rollout(handle)
    style = scoring.format_style() if scoring.format.get("name") == "format" else None
    rows, stats = build_dataset(candidates, non_reasoning, filter_settings(cfg, max_per_prompt, style),
                                ratio=non_reasoning_ratio, seed=cfg.run.seed, system_prompt=cfg.data.system_prompt,
                                prefilled_think=prefilled)
    if stats["kept_reasoning"] == 0 and allow_empty:
        log.warning("sampling %s kept no completion of %d (reasons: %s); continuing with the other data",
                    model_dir, len(candidates), stats["rejection_reasons"])
    elif stats["kept_reasoning"] == 0:
        raise RuntimeError(f"rejection sampling kept no completion of {len(candidates)} from {model_dir} "
                           f"(reasons: {stats['rejection_reasons']}); the model is too weak for these prompts")
    path = write_dataset(out_dir, rows, candidates, stats)
    overall = stats["acceptance"].get("all", {})
    log.info("kept %d of %d completions (%d rows with non-reasoning data) -> %s", stats["kept_reasoning"],
             len(candidates), len(rows), path)
    return {"stage": "rejection_sample", "model": None, "data": str(path), "source_model": model_dir,
            "acceptance_rate": overall.get("acceptance_rate"), "rows": len(rows), "complete": True,
            "config_hash": cfg.hash()}
