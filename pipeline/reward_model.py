"""`r1 reward-model` (stage 5a): a Bradley-Terry reward model trained on preference pairs in a Ray actor.

Pairs are synthetic (made from the train split: the reference answer vs. a wrong answer, a broken format
or a violated constraint) unless ``reward_model.data`` names a chosen/rejected dataset. The model is
saved as an HF sequence-classification dir that the ``reward_model`` reward loads inside reward actors.
"""
from __future__ import annotations

import logging
import math
import random
from pathlib import Path

from .config import RecipeConfig, dump_yaml, resolve

log = logging.getLogger("r1.reward_model")


def preference_pairs(cfg: RecipeConfig) -> tuple[list[dict], list[dict]]:
    """(train pairs, held-out pairs): from ``reward_model.data`` or synthetic from the train split."""
    from tasks.preferences import make_preference_pairs, read_preference_pairs

    from .data import build_splits, general_splits

    c = cfg.reward_model
    if c.data:
        pairs = read_preference_pairs(c.data)
    else:
        samples = build_splits(cfg)[0] + general_splits(cfg)[0]
        samples = random.Random(cfg.run.seed).sample(samples, min(len(samples), c.pairs + c.eval_pairs))
        # No system prompt: it carries no preference signal and would double every sequence. The
        # reward_model reward scores the same way (its system_prompt option is unset by default).
        pairs = make_preference_pairs(samples, seed=cfg.run.seed)
    random.Random(cfg.run.seed + 1).shuffle(pairs)
    n_eval = min(c.eval_pairs, max(1, len(pairs) // 2))
    if len(pairs) - n_eval < 1:
        raise ValueError(f"reward_model: only {len(pairs)} preference pairs; need at least 2")
    return pairs[n_eval:n_eval + c.pairs], pairs[:n_eval]


def run_reward_model(cfg: RecipeConfig, *, out: str | None = None) -> dict:
    """Train, evaluate pairwise accuracy on held-out pairs, save ``reward_model/model``."""
    import ray
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from stages.manifest import write_manifest
    from trainer.model_io import resolve_model
    from trainer.bradley_terry import RewardModelSettings, RewardModelTrainer, tokenize_pair

    from .cluster import start_trainer
    from .tracking import MetricsLogger

    c = cfg.reward_model
    out_dir = Path(out) if out else cfg.run_dir() / "reward_model"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(dump_yaml(cfg))
    model_dir = resolve_model(c.init_model or cfg.model.name)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train_pairs, eval_pairs = preference_pairs(cfg)

    def tokenized(pairs):
        kept = [tokenize_pair(tokenizer, p["prompt_messages"], p["chosen"], p["rejected"], c.max_length)
                for p in pairs]
        return [k for k in kept if k is not None], sum(k is None for k in kept)

    train_ids, skipped = tokenized(train_pairs)
    eval_ids, _ = tokenized(eval_pairs)
    if not train_ids:
        raise ValueError(f"reward_model: no pair fits reward_model.max_length={c.max_length}")
    steps = max(1, math.ceil(len(train_ids) * c.epochs / c.batch_size))
    optim = resolve(c.optim, cfg.trainer.optim)
    settings = RewardModelSettings(lr=optim.lr, weight_decay=optim.weight_decay, grad_clip=optim.grad_clip,
                                   batch_size=c.batch_size, micro_batch_size=cfg.trainer.micro_batch_size,
                                   epochs=c.epochs, max_length=c.max_length, precision=cfg.trainer.precision,
                                   seed=cfg.run.seed,
                                   # None: torch follows the actor's OMP_NUM_THREADS, set from its own node
                                   threads=cfg.cluster.threads)
    trainer = start_trainer(cfg, model_dir, settings, cls=RewardModelTrainer)
    logger = MetricsLogger(out_dir, tensorboard=cfg.logging.tensorboard, run_name=f"{cfg.run.name}-reward-model")
    logger.truncate_after(-1)  # a short stage: a rerun starts over, without the old lines
    order = random.Random(cfg.run.seed)
    try:
        before = _pair_accuracy(trainer, eval_ids)
        bar = tqdm(range(1, steps + 1), desc="reward model", unit="step")
        for step in bar:
            batch = order.sample(train_ids, min(c.batch_size, len(train_ids)))
            metrics = ray.get(trainer.train_step.remote([b[0] for b in batch], [b[1] for b in batch]))
            logger.log(step, metrics)
            bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['accuracy']:.2f}")
        after = _pair_accuracy(trainer, eval_ids)
        logger.log(steps, {"eval/pair_accuracy": after})
        saved = ray.get(trainer.save_pretrained.remote(str(out_dir / "model")))
    finally:
        logger.close()
        ray.kill(trainer)
    summary = {"stage": "reward_model", "model": None, "reward_model": saved, "init_model": model_dir,
               "steps": steps, "train_pairs": len(train_ids), "skipped_too_long": skipped,
               "eval_pairs": len(eval_ids), "eval_accuracy_before": before, "eval_accuracy": after,
               "complete": True, "config_hash": cfg.hash()}
    write_manifest(out_dir, summary)
    log.info("reward model: held-out pair accuracy %.3f (before training %.3f, %d pairs)", after, before,
             len(eval_ids))
    return summary


def _pair_accuracy(trainer, pairs) -> float:
    """Share of pairs whose chosen response scores above the rejected one."""
    import ray

    if not pairs:
        return float("nan")
    chosen = ray.get(trainer.scores.remote([p[0] for p in pairs]))
    rejected = ray.get(trainer.scores.remote([p[1] for p in pairs]))
    return sum(a > b for a, b in zip(chosen, rejected)) / len(pairs)
