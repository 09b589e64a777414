"""On-policy distillation (an option of stage 6): the student samples, the teacher grades every token.

Each step: a batch of train prompts -> the student's samples (rollout actor, vLLM) -> one update of the
student that lowers the reverse KL(student || teacher) over the whole vocabulary at each sampled position
(``DistillTrainer.train_on_policy``; the teacher lives in the trainer actor) -> the new weights to the
rollout actor. Unlike SFT on teacher samples, the student learns on the states it actually reaches.

Artifacts under ``out_dir``: ``metrics.jsonl``, ``checkpoints/`` (every ``save_every`` steps; a rerun resumes
from the newest with the same prompt schedule) and ``model/``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from rollout import SamplingSpec


@dataclass
class OnPolicyPlan:
    prompts: Sequence[list[int]]  # chat-templated prompt ids of the train split
    steps: int
    prompts_per_step: int
    sampling: SamplingSpec  # n samples per prompt
    micro_batch_size: int
    seed: int
    out_dir: Path
    save_every: int = 0
    keep_checkpoints: int = 1


def on_policy_loop(rollout, trainer, plan: OnPolicyPlan, logger) -> dict:
    """Run the on-policy steps through the rollout engines (a pool or one actor) and a ``DistillTrainer`` actor;
    saves the student's model dir."""
    import ray
    from tqdm.auto import tqdm

    from .checkpoints import close_step, resume
    from .rollout_pool import as_pool
    from .sft import batches

    engines = as_pool(rollout)  # one rollout actor or cluster.rollout_engines of them

    if not plan.prompts:
        raise ValueError("on-policy distillation: no prompts")
    start, _ = (resume(trainer, plan.out_dir, logger, "on-policy distillation", rollout=rollout)
                if plan.save_every else (0, {}))
    if not start:
        logger.truncate_after(-1)
    # The SFT loop's seeded epoch-by-epoch schedule: a resumed run sees the same prompts.
    schedule = batches(len(plan.prompts), plan.prompts_per_step, plan.steps, plan.seed)
    bar = tqdm(total=plan.steps, initial=start, desc="on-policy distill", unit="step")
    last: dict = {}
    for step, idx in enumerate(schedule, start=1):
        if step <= start:
            continue
        prompts = [list(plan.prompts[i]) for i in idx]
        generations = engines.generate(prompts, plan.sampling, False)
        rows = [(g.prompt_ids, c.token_ids, c.truncated) for g in generations for c in g.completions if c.token_ids]
        last = ray.get(trainer.train_on_policy.remote([r[0] for r in rows], [r[1] for r in rows],
                                                      micro_batch_size=plan.micro_batch_size))
        last["sync_seconds"] = engines.update_weights(trainer.inference_state_dict.remote())
        last["response_length"] = sum(len(r[1]) for r in rows) / max(len(rows), 1)
        # Token counts for the compute accounting (stages.compute): sampled, then scored by the teacher and
        # trained (prompt and response of every row).
        last["compute/prompt_tokens"] = sum(len(p) for p in prompts)
        last["generated_tokens"] = sum(len(c.token_ids) for g in generations for c in g.completions)
        last["tokens_processed"] = sum(len(r[0]) + len(r[1]) for r in rows)
        last["truncated_fraction"] = sum(r[2] for r in rows) / max(len(rows), 1)
        close_step(trainer, plan, logger, bar, step, last, "reverse_kl")
    bar.close()
    model_dir = ray.get(trainer.save_pretrained.remote(str(plan.out_dir / "model")))
    return {"steps": plan.steps, "model": model_dir, "final_reverse_kl": last.get("reverse_kl")}
