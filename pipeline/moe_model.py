"""`r1 prepare-model smollm2-moe`: the MoE model that runs here, for Rollout Routing Replay.

SmolLM2-135M is upcycled into a Mixtral (``trainer.moe_upcycle``: experts = the dense MLP plus noise, a fresh
router), then a short SFT on the cold-start demos lets the experts drift apart. Identical experts would give
the same output under any routing, and replaying a routing could then change nothing measurable.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from .config import RecipeConfig

log = logging.getLogger("r1.moe")


def prepare_moe_model(cfg: RecipeConfig, *, experts: int = 4, top_k: int = 2, noise: float = 0.05,
                      steps: int = 12, batch_size: int = 8, lr: float = 2e-4, cache: Path | None = None) -> str:
    """Upcycle SmolLM2 and tune its experts apart; returns the model dir (cached: a second call returns at once).

    The SFT trains every parameter in bf16 autocast with AdamW at ``lr``, ``steps`` steps of ``batch_size``
    demos of the config's train split, seeded by ``run.seed``.
    """
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from stages.sft import batches, tokenize_examples
    from tasks import make_demonstration
    from trainer.model_io import is_complete, mark_complete, prepared_model_dir, resolve_model
    from trainer.moe_upcycle import upcycle
    from trainer.policy import PolicyTrainer
    from trainer.settings import OptimSettings, TrainerSettings

    from .data import build_splits

    out = prepared_model_dir("smollm2-moe", cache)
    if is_complete(out):
        return str(out)
    dense = resolve_model("smollm2", cache=cache)
    staging = out.with_name(out.name + ".upcycled")
    upcycle(dense, staging, experts=experts, top_k=top_k, noise=noise, seed=cfg.run.seed)
    tokenizer = AutoTokenizer.from_pretrained(staging)
    train, _ = build_splits(cfg)
    demos = [make_demonstration(s, system_prompt=cfg.data.system_prompt) for s in train if s.get("solution")]
    pairs, _ = tokenize_examples(tokenizer, demos, cfg.cold_start.max_length)
    settings = TrainerSettings(precision="bf16", seed=cfg.run.seed,
                               optim=OptimSettings(lr=lr, warmup_steps=2, total_steps=steps))
    trainer = PolicyTrainer(str(staging), settings)
    spread_before = expert_spread(trainer.model)
    bar = tqdm(batches(len(pairs), batch_size, steps, cfg.run.seed), desc="tuning experts apart", unit="step")
    for idx in bar:
        metrics = trainer.train_sft([pairs[i][0] for i in idx], [pairs[i][1] for i in idx], micro_batch_size=8)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}")
    log.info("expert spread (mean relative distance of an expert from the experts' mean): %.4f upcycled, "
             "%.4f after the SFT", spread_before, expert_spread(trainer.model))
    final = Path(trainer.save_pretrained(out.with_name(out.name + ".tmp")))
    mark_complete(final, f"upcycled {dense}: {experts} experts, top-{top_k}, {steps} SFT steps at lr {lr}")
    if out.exists():
        shutil.rmtree(out)
    final.rename(out)  # last: a crash before it leaves no dir that later commands would trust
    shutil.rmtree(staging, ignore_errors=True)
    return str(out)


def expert_spread(model) -> float:
    """Mean over MoE layers of ||expert - mean expert|| / ||mean expert|| (gate_up weights): 0 = identical."""
    from trainer.routing_replay import moe_blocks

    spreads = []
    for block in moe_blocks(model):
        w = block.experts.gate_up_proj.detach().float()
        mean = w.mean(dim=0, keepdim=True)
        spreads.append(float((w - mean).flatten(1).norm(dim=1).mean() / mean.norm()))
    return sum(spreads) / len(spreads) if spreads else 0.0
