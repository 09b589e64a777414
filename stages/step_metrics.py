"""One GRPO step's metrics line: rewards by function, accuracy, lengths, the trainer's figures, seconds per
phase. Pure functions of what the step produced."""
from __future__ import annotations

import statistics
from collections import Counter
from typing import Mapping, Sequence

from rewards.adapters import NOT_APPLICABLE
from rollout.types import RolloutBatch

# Reward labels whose value 1.0 means "correct" (the first one present gives the step's accuracy).
ACCURACY_LABELS = ("correctness", "accuracy", "code", "countdown")


def reward_metrics(scores: Sequence[tuple[float, dict]], batch: RolloutBatch) -> dict[str, float]:
    """Reward mean/std overall and per reward function, accuracy, format rate, lengths, failure reasons."""
    totals = [t for t, _ in scores]
    out = {"reward/mean": statistics.fmean(totals), "reward/std": statistics.pstdev(totals)}
    labels = scores[0][1].keys() if scores else []
    for label in labels:
        reasons = Counter(parts[label][1] for _, parts in scores)
        for reason, count in reasons.most_common(4):
            if reason != "ok":
                out[f"reasons/{label}/{reason}"] = count / len(scores)
        # A reward's figures cover the completions it applies to: a not_applicable part (another task's sample,
        # a reward that answered None) is no 0 of that reward.
        values = [parts[label][0] for _, parts in scores if parts[label][1] != NOT_APPLICABLE]
        if not values:
            continue
        out[f"reward/{label}/mean"] = statistics.fmean(values)
        out[f"reward/{label}/std"] = statistics.pstdev(values)
        base = label.split("#")[0]
        if base in ACCURACY_LABELS and "accuracy" not in out:
            out["accuracy"] = sum(v >= 1.0 for v in values) / len(values)
        if base == "format":
            out["format_rate"] = sum(v >= 1.0 for v in values) / len(values)
    lengths = [len(r) for r in batch.response_ids]
    out.update({"response_length/mean": statistics.fmean(lengths), "response_length/max": max(lengths),
                "truncated_fraction": sum(batch.truncated) / len(batch),
                "advantage/zero_fraction": sum(abs(a) < 1e-8 for a in batch.advantages) / len(batch),
                "groups/zero_variance_fraction": zero_variance_fraction(totals, batch.group_size)})
    return out


def zero_variance_fraction(totals: Sequence[float], group_size: int) -> float:
    """The share of groups (``group_size`` consecutive rewards) whose rewards are all equal: GRPO learns
    nothing from them (every advantage 0)."""
    groups = [totals[i:i + group_size] for i in range(0, len(totals), group_size)]
    return sum(max(g) == min(g) for g in groups) / max(1, len(groups))


def engine_metrics(per_engine: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """How evenly a step's generation spread over the rollout engines, from each engine's ``prompts``,
    ``generated_tokens`` and ``seconds``: ``rollout/engine_balance`` is the busiest engine's generated tokens
    over the mean (1.0: even; M: one engine did everything), ``rollout/engine_time_balance`` the same for
    seconds (what the step waits for)."""
    if not per_engine:
        return {}

    def ratio(key: str) -> float:
        values = [float(e.get(key, 0.0)) for e in per_engine]
        mean = statistics.fmean(values)
        return max(values) / mean if mean > 0 else 1.0

    prompts = [e.get("prompts", 0) for e in per_engine]
    return {"rollout/engines": len(per_engine), "rollout/engine_balance": ratio("generated_tokens"),
            "rollout/engine_time_balance": ratio("seconds"), "rollout/engine_prompts_max": max(prompts),
            "rollout/engine_prompts_min": min(prompts),
            "rollout/engine_seconds_max": max(float(e.get("seconds", 0.0)) for e in per_engine)}


# R3 figures of the trainer (trainer.routing_replay.routing_metrics), logged as r3/<name>.
ROUTING_FIGURES = ("router_mismatch_own", "token_mismatch_own", "replay_plumbing_mismatch", "routing_coverage")


def routing_metrics(train: Mapping[str, float], batch: RolloutBatch) -> dict[str, float]:
    """R3 (MoE models with routing capture): ``r3/router_mismatch_own`` and ``r3/token_mismatch_own`` (the
    training router's own top-k against the rollout's, with or without replay), ``r3/replay_plumbing_mismatch``
    (replay on: must be 0), ``r3/routing_coverage``, and the engines' counts ``r3/engine_rows_unknown``,
    ``r3/engine_rows_missing``, ``r3/engine_noncontiguous`` summed over the batch."""
    out = {f"r3/{k}": train[k] for k in ROUTING_FIGURES if k in train}
    out.update({f"r3/engine_{k}": float(v) for k, v in batch.routing_counts.items()})
    return out


def step_metrics(scores: Sequence[tuple[float, dict]], batch: RolloutBatch, rollout_stats: Mapping[str, float],
                 train: Mapping[str, float], seconds: Mapping[str, float], data_epoch: float) -> dict[str, float]:
    """The whole line of one step: :func:`reward_metrics`, the rollout counters, the trainer's figures
    (``train/*``, with kl, entropy, clip fraction and the rollout/trainer mismatch also at the top level),
    seconds per phase (``seconds``: generate, reward, prepare, reference, train, sync, sync_load, step) and
    throughput."""
    metrics = reward_metrics(scores, batch)
    metrics.update({k: v for k, v in rollout_stats.items() if not k.startswith("time/")})
    metrics.update({f"train/{k}": v for k, v in train.items()})
    metrics.update({k: train[k] for k in ("kl", "entropy", "clip_fraction") if k in train})
    for k in ("abs_diff", "k3", "frac_over_ln2"):
        if f"mismatch_{k}" in train:
            metrics[f"rollout_train_mismatch/{k}"] = train[f"mismatch_{k}"]
    metrics.update(routing_metrics(train, batch))
    metrics.update({f"time/{k}": v for k, v in seconds.items()})
    step_s, gen_s, train_s = seconds["step"], seconds["generate"], seconds["train"]
    metrics.update({
        "tokens_per_second/generate": rollout_stats["generated_tokens"] / max(gen_s, 1e-9),
        "tokens_per_second/train": batch.n_tokens / max(train_s, 1e-9),
        "tokens_per_second/step": rollout_stats["generated_tokens"] / max(step_s, 1e-9),
        "data/epoch": data_epoch,
        # Share of the step spent outside generation and the optimisation itself (rewards, sync, data, logs).
        "time/overhead_fraction": 1.0 - (gen_s + train_s) / max(step_s, 1e-9),
    })
    return metrics
