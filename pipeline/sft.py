"""`r1 cold-start`: SFT on R1-format demonstrations via a trainer actor, then a held-out eval."""
from __future__ import annotations

import logging
from pathlib import Path

from .config import RecipeConfig, dump_yaml

log = logging.getLogger("r1.sft")


def run_cold_start(cfg: RecipeConfig, *, out: str | None = None) -> dict:
    """Stage 1: fine-tune ``cold_start.init_model`` (default ``model.name``) on the demos; evaluate the result."""
    import ray
    from transformers import AutoTokenizer

    from stages.sft import SFTPlan, tokenize_examples, train
    from tasks import make_demonstration
    from trainer.model_io import resolve_model

    from .cluster import start_trainer, trainer_settings
    from .data import build_splits
    from .tracking import MetricsLogger

    c = cfg.cold_start
    out_dir = Path(out) if out else cfg.run_dir() / "cold_start"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(dump_yaml(cfg))
    model_dir = resolve_model(c.init_model or cfg.model.name)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if c.data:
        examples = _read_chat_examples(c.data)
    else:
        train_samples, _ = build_splits(cfg)
        examples = [make_demonstration(s, system_prompt=cfg.data.system_prompt) for s in train_samples]
    if c.limit and len(examples) > c.limit:
        # A seeded sample, not the head: generated data comes grouped by task.
        import random

        examples = random.Random(cfg.run.seed).sample(examples, c.limit)
    pairs, skipped = tokenize_examples(tokenizer, examples, c.max_length)
    log.info("cold start: %d examples (%s skipped)", len(pairs), skipped)
    plan = SFTPlan(pairs=pairs, epochs=c.epochs, batch_size=c.batch_size, micro_batch_size=cfg.trainer.micro_batch_size,
                   seed=cfg.run.seed, out_dir=out_dir,
                   extra_manifest={"stage": "cold_start", "init_model": model_dir, "skipped": skipped,
                                   "config_hash": cfg.hash()})
    settings = trainer_settings(cfg, plan.steps)
    settings.optim.lr = c.lr
    trainer = start_trainer(cfg, model_dir, settings)
    logger = MetricsLogger(out_dir, tensorboard=cfg.logging.tensorboard, run_name=f"{cfg.run.name}-cold-start")
    try:
        summary = train(trainer, plan, logger)
    finally:
        logger.close()
        ray.kill(trainer)
    if c.eval:
        from .evaluation import run_eval

        metrics, table = run_eval(cfg, model=summary["model"], out=str(out_dir / "eval"), label="cold_start")
        print(table)
        row = metrics.get("all") or next(iter(metrics.values()))
        summary["eval"] = {"pass@1": row.pass_at.get(1), "pass@1_ci": list(row.pass1_ci),
                           "format_rate": row.format_rate}
    return summary


def _read_chat_examples(path: str) -> list[dict]:
    """Chat examples ({"messages": [...]}) from a JSONL file."""
    from tasks.storage import read_jsonl

    if not Path(path).is_file():
        raise FileNotFoundError(f"cold_start.data={path!r}: file not found")
    if not path.endswith(".jsonl"):
        raise ValueError(f"cold_start.data={path!r}: expected a .jsonl file of {{'messages': [...]}} rows")
    return read_jsonl(path)
