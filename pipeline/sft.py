"""`r1 cold-start` (stage 1) and `r1 sft` (stage 4): SFT on chat examples via a trainer actor, then an eval.

Both run the same code; they differ in their data and starting model:
- cold start: the demonstrations of the train split (or ``cold_start.data``: a chat file or a source), from
  ``model.name``;
- sft: the rejection-sampled dataset of stage 3 (or ``sft.data``), again from the *base* model.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path

from .config import RecipeConfig, SFTConfig, dump_yaml

log = logging.getLogger("r1.sft")


def run_cold_start(cfg: RecipeConfig, *, out: str | None = None) -> dict:
    """Stage 1: fine-tune ``cold_start.init_model`` (default ``model.name``) on the demos
    (:func:`pipeline.data.cold_start_examples`); evaluate the result."""
    from .data import cold_start_examples

    c = cfg.cold_start
    examples = cold_start_examples(cfg)  # none at all: a one-line error before any actor starts
    out_dir = Path(out) if out else cfg.run_dir() / "cold_start"
    return run_sft(cfg, c, examples, out_dir=out_dir, stage="cold_start", init_model=c.init_model or cfg.model.name)


def run_sft_stage(cfg: RecipeConfig, *, out: str | None = None) -> dict:
    """Stage 4: SFT of the base model (``sft.init_model``, default ``model.name``) on the rejection-sampled data."""
    c = cfg.sft
    data = c.data or str(cfg.run_dir() / "rejection_sample" / "data.jsonl")
    if not Path(data).exists() and not c.data:
        raise FileNotFoundError(f"sft.data: {data} not found; run `r1 rejection-sample` first or set sft.data")
    examples = read_chat_examples(data, field="sft.data")
    out_dir = Path(out) if out else cfg.run_dir() / "sft"
    return run_sft(cfg, c, examples, out_dir=out_dir, stage="sft", init_model=c.init_model or cfg.model.name)


def run_sft(cfg: RecipeConfig, c: SFTConfig, examples: list[dict], *, out_dir: Path, stage: str, init_model: str,
            evaluate: bool | None = None, teacher: str | None = None, kl_weight: float = 0.0,
            kl_temperature: float = 1.0, feature: dict | None = None) -> dict:
    """Tokenize ``examples``, train ``init_model`` on them through a trainer actor, save, optionally evaluate.

    With ``teacher`` the trainer also holds that model and each step mixes cross-entropy with the token-level
    KL(teacher || student) at weight ``kl_weight`` (logit distillation) and, with ``feature`` (the
    ``distill.feature`` block as a dict), the hidden-state loss of feature distillation."""
    import ray
    from transformers import AutoTokenizer

    from stages.sft import SFTPlan, sft_loop, tokenize_examples
    from trainer.model_io import resolve_model

    from .cluster import start_trainer, trainer_settings
    from .tracking import MetricsLogger

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(dump_yaml(cfg))
    model_dir = resolve_model(init_model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if c.limit and len(examples) > c.limit:
        # A seeded sample, not the head: generated data comes grouped by task.
        examples = random.Random(cfg.run.seed).sample(examples, c.limit)
    pairs, skipped = tokenize_examples(tokenizer, examples, c.max_length, cfg.data.template)
    log.info("%s: %d examples (%s skipped)", stage, len(pairs), skipped)
    plan = SFTPlan(pairs=pairs, epochs=c.epochs, batch_size=c.batch_size, micro_batch_size=cfg.trainer.micro_batch_size,
                   seed=cfg.run.seed, out_dir=out_dir, save_every=c.save_every,
                   pack_tokens=c.max_length if c.packing and not teacher else None,
                   extra_manifest={"stage": stage, "init_model": model_dir, "skipped": skipped,
                                   "config_hash": cfg.hash()})
    settings = trainer_settings(cfg, plan.steps, c.optim)
    if teacher:
        from trainer.teacher_student import DistillTrainer

        plan.step_method = "train_distill_sft"
        plan.step_options = {"kl_weight": kl_weight, "temperature": kl_temperature}
        plan.extra_manifest.update({"teacher": teacher, "kl_weight": kl_weight, "kl_temperature": kl_temperature,
                                    "feature": feature})
        trainer = start_trainer(cfg, model_dir, settings, DistillTrainer, resolve_model(teacher), feature)
    else:
        trainer = start_trainer(cfg, model_dir, settings)
    logger = MetricsLogger(out_dir, tensorboard=cfg.logging.tensorboard, run_name=f"{cfg.run.name}-{stage}")
    try:
        summary = sft_loop(trainer, plan, logger)
    finally:
        logger.close()
        ray.kill(trainer)
    if c.eval if evaluate is None else evaluate:
        from stages.evaluate import manifest_summary

        from .evaluation import run_eval

        metrics, table = run_eval(cfg, model=summary["model"], out=str(out_dir / "eval"), label=stage)
        print(table)
        summary["eval"] = manifest_summary(metrics)
    return summary


def read_chat_examples(source: str, *, field: str) -> list[dict]:
    """Chat examples (``{"messages": [...]}``) from a JSONL / Parquet file, a dataset folder or a hub id."""
    from tasks.loaders import load_chat_samples

    path = Path(source)
    if path.suffix and not path.exists():
        raise FileNotFoundError(f"{field}={source!r}: file not found")
    return load_chat_samples(source)
