"""The data half of a GRPO step: generate groups, score them on the reward workers, build the trainer's batch.

    prompt ids -> rollout engines (n per prompt) -> reward workers -> advantages, loss mask -> RolloutBatch
"""
from __future__ import annotations

import time
from collections import Counter
from typing import Mapping, Sequence

import torch

from rollout.types import Generation, RolloutBatch, SamplingSpec
from trainer.losses import grpo_advantages

from .prompt_stream import PromptStream
from .step_metrics import engine_metrics


def score_groups(actors, samples: Sequence[Mapping], generations: Sequence[Generation]) -> list[tuple[float, dict]]:
    """Rewards for every completion, spread over the reward workers; in prompt-major order."""
    from .supervision import as_group

    texts, rows = [], []
    for sample, gen in zip(samples, generations):
        fields = {k: v for k, v in sample.items() if k != "prompt_ids"}  # the workers need the sample, not its ids
        for comp in gen.completions:
            texts.append(comp.text)
            rows.append({**fields, "completion_tokens": len(comp.token_ids)})
    # Worker k scores completions k, k + n, k + 2n, ...: a group's costly rows (a reward model's prompts,
    # long code) spread over every worker instead of landing on one contiguous chunk's worker.
    workers = as_group(actors.rewards, "reward worker")  # a dead worker is replaced and its chunk rescored
    n = min(len(workers), len(texts)) or 1
    chunks, _ = workers.map("score", [(texts[k::n], rows[k::n]) for k in range(n)])
    return [chunks[i % n][i // n] for i in range(len(texts))]


def collect_rollouts(actors, stream: PromptStream, plan, step: int) -> tuple[list, list, list, dict]:
    """Generate and score ``plan.loop.prompts_per_step`` groups; with dynamic sampling, drop groups whose rewards
    are all equal (no learning signal) and refill from the stream, up to ``plan.loop.max_refill_rounds`` extra
    rounds. Samples carry their rendered ``prompt_ids`` (the pipeline renders them once)."""
    from .rollout_pool import as_pool

    rollout = as_pool(actors.rollout)
    kept_samples, kept_gens, kept_scores = [], [], []
    stats, timings, engines = Counter(), Counter(), [Counter() for _ in range(len(rollout))]
    rounds, need = 0, plan.loop.prompts_per_step
    while need > 0:
        samples = stream.take(need)
        sampling = SamplingSpec(**{**plan.sampling.__dict__, "seed": plan.seed + step * 1000 + rounds})
        t0 = time.perf_counter()
        gens = rollout.generate([s["prompt_ids"] for s in samples], sampling)
        t1 = time.perf_counter()
        for total, last in zip(engines, rollout.last_engine_stats):  # summed over refill rounds
            total.update(last)
        scores = score_groups(actors, samples, gens)
        timings["generate"] += t1 - t0
        timings["reward"] += time.perf_counter() - t1
        stats["generated_tokens"] += sum(len(c.token_ids) for g in gens for c in g.completions)
        stats["compute/prompt_tokens"] += sum(len(s["prompt_ids"]) for s in samples)  # prefill: once per group
        stats["generated_groups"] += len(gens)
        for i, (sample, gen) in enumerate(zip(samples, gens)):
            group_scores = scores[i * plan.loop.group_size:(i + 1) * plan.loop.group_size]
            totals = [t for t, _ in group_scores]
            last_chance = not plan.loop.dynamic_sampling or rounds >= plan.loop.max_refill_rounds
            if plan.loop.dynamic_sampling and max(totals) == min(totals) and not last_chance:
                stats["groups_dropped"] += 1
                continue
            kept_samples.append(sample)
            kept_gens.append(gen)
            kept_scores.extend(group_scores)
        need = plan.loop.prompts_per_step - len(kept_samples)
        rounds += 1
        if not plan.loop.dynamic_sampling:
            break
    stats["refill_rounds"] = rounds - 1
    stats = {**stats, **engine_metrics([dict(e) for e in engines])}
    return kept_samples, kept_gens, kept_scores, {**stats, **{f"time/{k}": v for k, v in timings.items()}}


def build_batch(generations: Sequence[Generation], scores: Sequence[tuple[float, dict]], plan) -> RolloutBatch:
    """The trainer's hand-over: ids, rollout logprobs, rewards, group-normalised advantages, loss mask."""
    prompt_ids, response_ids, logprobs, truncated, routing = [], [], [], [], []
    routing_counts = Counter()  # R3: the engines' counts of unknown / missing rows, over the batch
    for gen in generations:
        for comp in gen.completions:
            prompt_ids.append(gen.prompt_ids)
            response_ids.append(comp.token_ids)
            routing.append(comp.routed_experts)  # R3: [prompt + response - 1, moe_layers, k], or None
            routing_counts.update(comp.routing_counts or {})
            # None, never zeros: a zero would pass for probability 1 and bias the TIS weights.
            logprobs.append(comp.logprobs)
            truncated.append(comp.truncated)
    rewards = [t for t, _ in scores]
    adv = grpo_advantages(torch.tensor(rewards, dtype=torch.float32), plan.loop.group_size, plan.loop.advantage_scale)
    loss_mask = [not (plan.loop.overlong_filter and t) and len(r) > 0 for t, r in zip(truncated, response_ids)]
    return RolloutBatch(prompt_ids=prompt_ids, response_ids=response_ids, group_size=plan.loop.group_size,
                        rollout_logprobs=None if all(lp is None for lp in logprobs) else logprobs,
                        truncated=truncated, rewards=rewards,
                        advantages=adv.tolist(), loss_mask=loss_mask,
                        routed_experts=None if all(r is None for r in routing) else routing,
                        routing_counts=dict(routing_counts))
