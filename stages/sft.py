"""Supervised fine-tuning on chat examples (stage 1, cold start; later the SFT of stage 4), against a trainer handle.

Loss on the assistant's tokens only; the chat template is applied once per example
(:func:`tasks.prompting.render_sft_pair`). Artifacts under ``out_dir``: ``metrics.jsonl``, ``model/``,
``checkpoints/`` (every ``save_every`` steps; a rerun resumes from the newest) and ``manifest.json``.
"""
from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

log = logging.getLogger("r1.sft")


@dataclass
class SFTPlan:
    pairs: Sequence[tuple[list[int], list[int]]]  # (prompt ids, target ids)
    epochs: float
    batch_size: int
    micro_batch_size: int
    seed: int
    out_dir: Path
    save_every: int = 0  # 0: no checkpoints (short runs simply restart)
    pack_tokens: int | None = None  # pack examples into rows of this many tokens instead of padding
    keep_checkpoints: int = 1
    extra_manifest: dict = field(default_factory=dict)
    step_method: str = "train_sft"  # the trainer method of one step (distillation: "train_distill_sft")
    step_options: dict = field(default_factory=dict)  # its extra keyword arguments

    @property
    def steps(self) -> int:
        return max(1, math.ceil(len(self.pairs) * self.epochs / self.batch_size))


def tokenize_examples(tokenizer, examples: Sequence[dict], max_length: int, template: str = "chat"
                      ) -> tuple[list, dict]:
    """Chat examples -> (prompt, target) id pairs, prompts laid out by ``template`` (:mod:`tasks.prompting`,
    as generation lays them out); examples that are malformed or too long are counted, not fatal."""
    from tasks.prompting import check_template, render_sft_pair

    check_template(template)  # a bad name is the caller's error, not every example's
    pairs, skipped = [], {"too_long": 0, "malformed": 0}
    for i, ex in enumerate(examples):
        messages = ex.get("messages") if isinstance(ex, dict) else None
        try:
            prompt, target = render_sft_pair(tokenizer, messages or [], template)
        except (ValueError, KeyError, TypeError) as exc:
            skipped["malformed"] += 1
            log.warning("SFT example %s skipped: %s", ex.get("id", i) if isinstance(ex, dict) else i, exc)
            continue
        if len(prompt) + len(target) > max_length:
            skipped["too_long"] += 1
            continue
        pairs.append((prompt, target))
    return pairs, skipped


def batches(n_examples: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Example indices for each step: a fresh seeded shuffle per epoch, consecutive slices of it."""
    if n_examples < 1:
        raise ValueError("no examples to schedule")
    order: list[int] = []
    epoch = 0
    while len(order) < steps * batch_size:
        perm = list(range(n_examples))
        random.Random(seed * 7919 + epoch).shuffle(perm)
        order += perm
        epoch += 1
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(steps)]


def sft_loop(trainer, plan: SFTPlan, logger) -> dict:
    """Run SFT through a trainer actor handle; saves the model dir and a manifest."""
    import ray
    from tqdm.auto import tqdm

    from .checkpoints import close_step, resume
    from .manifest import write_manifest

    if not plan.pairs:
        raise ValueError("SFT: no usable training examples")
    start, _ = resume(trainer, plan.out_dir, logger, "SFT") if plan.save_every else (0, {})
    if not start:
        logger.truncate_after(-1)
    schedule = batches(len(plan.pairs), plan.batch_size, plan.steps, plan.seed)
    bar = tqdm(total=plan.steps, initial=start, desc="SFT", unit="step")
    last = {}
    for step, idx in enumerate(schedule, start=1):
        if step <= start:
            continue  # done before the restart; the seeded schedule makes the remaining batches identical
        prompts = [plan.pairs[i][0] for i in idx]
        targets = [plan.pairs[i][1] for i in idx]
        options = {"micro_batch_size": plan.micro_batch_size, **plan.step_options}
        if plan.pack_tokens:
            options["pack_tokens"] = plan.pack_tokens
        last = ray.get(getattr(trainer, plan.step_method).remote(prompts, targets, **options))
        last["tokens_processed"] = sum(len(p) + len(t) for p, t in zip(prompts, targets))  # stages.compute
        last["tokens_per_second"] = last["tokens_processed"] / last["train_seconds"]
        close_step(trainer, plan, logger, bar, step, last, "loss")
    bar.close()
    model_dir = ray.get(trainer.save_pretrained.remote(str(plan.out_dir / "model")))
    summary = {"steps": plan.steps, "examples": len(plan.pairs), "final_loss": last.get("loss"), "model": model_dir,
               "complete": True, **plan.extra_manifest}
    write_manifest(plan.out_dir, summary)
    return summary
