"""Stage 2, reasoning RL: GRPO with rule rewards, written against actor handles (DESIGN.md, "One RL step").

    prompts -> rollout actor (n per prompt) -> reward workers -> advantages -> trainer update
            -> weight sync to the rollout engine -> (eval, checkpoint) -> next step

The same code runs on a laptop (local Ray) and a cluster: it only calls ``handle.method.remote``.
Artifacts under ``out_dir``: ``metrics.jsonl``, ``tensorboard/``, ``eval/step_NNNNN/``,
``checkpoints/step_NNNNN/`` (model dir + trainer state + ``state.json``), ``model/`` and ``manifest.json``.
"""
from __future__ import annotations

import json
import logging
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from pipeline.prompting import render_prompt_ids
from rollout.types import Generation, RolloutBatch, SamplingSpec
from trainer.losses import grpo_advantages
from trainer.settings import GRPOSettings

from . import checkpoints
from .checkpoints import latest_checkpoint
from .prompt_stream import PromptStream

log = logging.getLogger("r1.reasoning_rl")

ACCURACY_LABELS = ("correctness", "accuracy", "code", "countdown")


@dataclass
class RLPlan:
    """Everything the loop needs that is not an actor: data, prompt rendering, knobs, paths."""

    train: Sequence[Mapping]
    test: Sequence[Mapping]
    tokenizer: Any
    system_prompt: str | None
    steps: int
    prompts_per_step: int
    group_size: int
    sampling: SamplingSpec  # n = group_size
    eval_sampling: SamplingSpec
    eval_ks: Sequence[int]
    grpo: GRPOSettings
    advantage_scale: str = "group"
    dynamic_sampling: bool = False
    max_refill_rounds: int = 3
    overlong_filter: bool = False
    eval_every: int = 10
    eval_at_ends: bool = True
    save_every: int = 5
    keep_checkpoints: int = 2
    prefilled_think: bool = False
    seed: int = 0
    out_dir: Path = Path("runs/rl")
    extra_manifest: dict = field(default_factory=dict)


class RemoteEngine:
    """The engine interface over a rollout actor handle, so evaluation code runs unchanged."""

    def __init__(self, handle) -> None:
        self.handle = handle

    def generate(self, prompts, sampling, *, progress: bool = False):
        import ray

        return ray.get(self.handle.generate.remote(prompts, sampling, progress))


# ---- one step ---------------------------------------------------------------------------------------------

def score_groups(actors, samples: Sequence[Mapping], generations: Sequence[Generation]) -> list[tuple[float, dict]]:
    """Rewards for every completion, spread over the reward workers; in prompt-major order."""
    import ray

    texts, rows = [], []
    for sample, gen in zip(samples, generations):
        for comp in gen.completions:
            texts.append(comp.text)
            rows.append({**sample, "completion_tokens": len(comp.token_ids)})
    # Worker k scores completions k, k + n, k + 2n, ...: a group's costly rows (a reward model's prompts,
    # long code) spread over every worker instead of landing on one contiguous chunk's worker.
    workers = actors.rewards[:len(texts)] or actors.rewards
    n = len(workers)
    chunks = ray.get([w.score.remote(texts[k::n], rows[k::n]) for k, w in enumerate(workers)])
    return [chunks[i % n][i // n] for i in range(len(texts))]


def collect_rollouts(actors, stream: PromptStream, plan: RLPlan, step: int) -> tuple[list, list, list, dict]:
    """Generate and score ``prompts_per_step`` groups; with dynamic sampling, drop groups whose rewards are
    all equal (no learning signal) and refill from the stream, up to ``max_refill_rounds`` extra rounds."""
    import ray

    kept_samples, kept_gens, kept_scores = [], [], []
    stats = Counter()
    timings = Counter()
    rounds = 0
    need = plan.prompts_per_step
    while need > 0:
        samples = stream.take(need)
        prompts = [render_prompt_ids(plan.tokenizer, s, plan.system_prompt) for s in samples]
        sampling = SamplingSpec(**{**plan.sampling.__dict__, "seed": plan.seed + step * 1000 + rounds})
        t0 = time.perf_counter()
        gens = ray.get(actors.rollout.generate.remote(prompts, sampling, False))
        t1 = time.perf_counter()
        scores = score_groups(actors, samples, gens)
        t2 = time.perf_counter()
        timings["generate"] += t1 - t0
        timings["reward"] += t2 - t1
        stats["generated_tokens"] += sum(len(c.token_ids) for g in gens for c in g.completions)
        stats["generated_groups"] += len(gens)
        for i, (sample, gen) in enumerate(zip(samples, gens)):
            group_scores = scores[i * plan.group_size:(i + 1) * plan.group_size]
            totals = [t for t, _ in group_scores]
            last_chance = not plan.dynamic_sampling or rounds >= plan.max_refill_rounds
            if plan.dynamic_sampling and max(totals) == min(totals) and not last_chance:
                stats["groups_dropped"] += 1
                continue
            kept_samples.append(sample)
            kept_gens.append(gen)
            kept_scores.extend(group_scores)
        need = plan.prompts_per_step - len(kept_samples)
        rounds += 1
        if not plan.dynamic_sampling:
            break
    stats["refill_rounds"] = rounds - 1
    return kept_samples, kept_gens, kept_scores, {**stats, **{f"time/{k}": v for k, v in timings.items()}}


def build_batch(generations: Sequence[Generation], scores: Sequence[tuple[float, dict]], plan: RLPlan) -> RolloutBatch:
    """The trainer's hand-over: ids, rollout logprobs, rewards, group-normalised advantages, loss mask."""
    prompt_ids, response_ids, logprobs, truncated = [], [], [], []
    for gen in generations:
        for comp in gen.completions:
            prompt_ids.append(gen.prompt_ids)
            response_ids.append(comp.token_ids)
            # None, never zeros: a zero would pass for probability 1 and bias the TIS weights.
            logprobs.append(comp.logprobs)
            truncated.append(comp.truncated)
    rewards = [t for t, _ in scores]
    adv = grpo_advantages(torch.tensor(rewards, dtype=torch.float32), plan.group_size, plan.advantage_scale)
    loss_mask = [not (plan.overlong_filter and t) and len(r) > 0 for t, r in zip(truncated, response_ids)]
    return RolloutBatch(prompt_ids=prompt_ids, response_ids=response_ids, group_size=plan.group_size,
                        rollout_logprobs=None if all(lp is None for lp in logprobs) else logprobs,
                        truncated=truncated, rewards=rewards,
                        advantages=adv.tolist(), loss_mask=loss_mask)


def reward_metrics(scores: Sequence[tuple[float, dict]], batch: RolloutBatch) -> dict[str, float]:
    """Reward mean/std overall and per reward function, accuracy, format rate, lengths, failure reasons."""
    totals = [t for t, _ in scores]
    out = {"reward/mean": statistics.fmean(totals), "reward/std": statistics.pstdev(totals)}
    labels = scores[0][1].keys() if scores else []
    for label in labels:
        values = [parts[label][0] for _, parts in scores]
        out[f"reward/{label}/mean"] = statistics.fmean(values)
        out[f"reward/{label}/std"] = statistics.pstdev(values)
        reasons = Counter(parts[label][1] for _, parts in scores)
        for reason, count in reasons.most_common(4):
            if reason != "ok":
                out[f"reasons/{label}/{reason}"] = count / len(scores)
        base = label.split("#")[0]
        if base in ACCURACY_LABELS and "accuracy" not in out:
            out["accuracy"] = sum(v >= 1.0 for v in values) / len(values)
        if base == "format":
            out["format_rate"] = sum(v >= 1.0 for v in values) / len(values)
    lengths = [len(r) for r in batch.response_ids]
    out.update({"response_length/mean": statistics.fmean(lengths), "response_length/max": max(lengths),
                "truncated_fraction": sum(batch.truncated) / len(batch),
                "advantage/zero_fraction": sum(abs(a) < 1e-8 for a in batch.advantages) / len(batch)})
    return out


def rl_step(actors, stream: PromptStream, plan: RLPlan, step: int) -> dict[str, float]:
    """One GRPO step end to end; returns its metrics (with seconds per phase)."""
    import ray

    started = time.perf_counter()
    samples, gens, scores, stats = collect_rollouts(actors, stream, plan, step)
    t0 = time.perf_counter()
    batch = build_batch(gens, scores, plan)
    metrics = reward_metrics(scores, batch)
    t1 = time.perf_counter()
    ref_lp = None
    if actors.reference is not None:
        ref_lp = actors.reference.batch_logprobs.remote(batch, plan.grpo.temperature, plan.grpo.micro_batch_size)
    elif actors.reference_is_trainer:
        ref_lp = actors.trainer.batch_logprobs.remote(batch, plan.grpo.temperature, plan.grpo.micro_batch_size, True)
    if ref_lp is not None:
        ref_lp = ray.get(ref_lp)
    t2 = time.perf_counter()
    train = ray.get(actors.trainer.train_grpo.remote(batch, plan.grpo, ref_lp))
    t3 = time.perf_counter()
    # The weights travel trainer -> object store -> rollout actor, never through this driver.
    sync_seconds_inside = ray.get(actors.rollout.update_weights.remote(actors.trainer.inference_state_dict.remote()))
    t4 = time.perf_counter()
    step_seconds = t4 - started
    gen_s = stats.pop("time/generate")
    metrics.update({k: v for k, v in stats.items()})
    metrics.update({f"train/{k}": v for k, v in train.items()})
    if "kl" in train:
        metrics["kl"] = train["kl"]
    if "entropy" in train:
        metrics["entropy"] = train["entropy"]
    if "clip_fraction" in train:
        metrics["clip_fraction"] = train["clip_fraction"]
    if train.get("rows_without_rollout_logprobs"):
        log.warning("step %d: %d rows came back without rollout logprobs (TIS weight 1, no mismatch metric)",
                    step, int(train["rows_without_rollout_logprobs"]))
    for k in ("abs_diff", "k3", "frac_over_ln2"):
        if f"mismatch_{k}" in train:
            metrics[f"rollout_train_mismatch/{k}"] = train[f"mismatch_{k}"]
    metrics.update({
        "time/generate": gen_s, "time/prepare": t1 - t0, "time/reference": t2 - t1, "time/train": t3 - t2,
        "time/sync": t4 - t3, "time/sync_load": sync_seconds_inside, "time/step": step_seconds,
        "tokens_per_second/generate": stats["generated_tokens"] / max(gen_s, 1e-9),
        "tokens_per_second/train": batch.n_tokens / max(t3 - t2, 1e-9),
        "tokens_per_second/step": (stats["generated_tokens"]) / max(step_seconds, 1e-9),
        "data/epoch": stream.epoch,
    })
    # Share of the step spent outside generation and the optimisation itself (rewards, sync, data, logs).
    metrics["time/overhead_fraction"] = 1.0 - (gen_s + (t3 - t2)) / max(step_seconds, 1e-9)
    return metrics


# ---- checkpoints ------------------------------------------------------------------------------------------

def save_checkpoint(actors, out_dir: Path, step: int, stream: PromptStream, keep: int) -> Path:
    """Trainer state + model dir + data position, all or nothing (see :mod:`stages.checkpoints`)."""
    return checkpoints.save_checkpoint(actors.trainer, out_dir, step, {"data_position": stream.position}, keep)


# ---- the loop ---------------------------------------------------------------------------------------------

def run_eval(actors, plan: RLPlan, step: int) -> dict[str, float]:
    """Held-out pass@k / format rate on the rollout engine's current weights, written under eval/."""
    from stages.evaluate import evaluate

    out = plan.out_dir / "eval" / f"step_{step:05d}"
    metrics = evaluate(RemoteEngine(actors.rollout), plan.tokenizer, plan.test, system_prompt=plan.system_prompt,
                       sampling=plan.eval_sampling, ks=plan.eval_ks, prefilled_think=plan.prefilled_think,
                       out_dir=out, progress=False)
    row = metrics.get("all") or next(iter(metrics.values()))
    flat = {"eval/pass@1": row.pass_at.get(1, float("nan")), "eval/pass@1_ci_low": row.pass1_ci[0],
            "eval/pass@1_ci_high": row.pass1_ci[1], "eval/format_rate": row.format_rate,
            "eval/n_prompts": row.n_prompts}
    for name, m in metrics.items():
        if name != "all":
            flat[f"eval/{name}/pass@1"] = m.pass_at.get(1, float("nan"))
    return flat


def _rows(logger) -> list[dict]:
    from pipeline.tracking import read_metrics

    return read_metrics(logger.path) if logger.path.exists() else []


def train(actors, plan: RLPlan, logger, *, on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Run (or resume) the GRPO loop; returns a summary. Resumes from the newest checkpoint in ``out_dir``."""
    import ray
    from tqdm.auto import tqdm

    plan.out_dir.mkdir(parents=True, exist_ok=True)
    stream = PromptStream(plan.train, seed=plan.seed)
    start = 0
    resumed = latest_checkpoint(plan.out_dir)
    if resumed is not None:
        ckpt, state = resumed
        ray.get(actors.trainer.load_checkpoint.remote(str(ckpt)))
        ray.get(actors.rollout.update_weights.remote(actors.trainer.inference_state_dict.remote()))
        start, stream.position = state["step"], state["data_position"]
        dropped = logger.truncate_after(start)
        log.info("resumed from %s (step %d, data position %d; %d later metric lines dropped)",
                 ckpt, start, stream.position, dropped)
    if start == 0:
        # A fresh start keeps only a finished step-0 eval from an earlier attempt, never its later lines.
        have_eval0 = (plan.out_dir / "eval" / "step_00000" / "eval.json").exists() and any(
            r.get("step") == 0 for r in _rows(logger))
        logger.truncate_after(0 if have_eval0 else -1)
        if not have_eval0 and plan.eval_at_ends:
            logger.log(0, run_eval(actors, plan, 0))
    bar = tqdm(total=plan.steps, initial=start, desc="reasoning RL", unit="step")
    last_eval = None
    checkpoint_seconds = 0.0
    for step in range(start + 1, plan.steps + 1):
        metrics = rl_step(actors, stream, plan, step)
        t0 = time.perf_counter()
        if plan.eval_every and (step % plan.eval_every == 0) or (step == plan.steps and plan.eval_at_ends):
            last_eval = run_eval(actors, plan, step)
            metrics.update(last_eval)
        # The previous step's checkpoint save: the line is written before this step's save, so a kill in
        # between leaves a line that the resumed run replaces, never a saved step without its line.
        metrics.update({"time/eval": time.perf_counter() - t0, "time/checkpoint": checkpoint_seconds})
        if on_step is not None:  # the caller may add its own figures (memory) before the line is written
            on_step(step, metrics)
        logger.log(step, metrics)
        t1 = time.perf_counter()
        if step % plan.save_every == 0 or step == plan.steps:
            save_checkpoint(actors, plan.out_dir, step, stream, plan.keep_checkpoints)
        checkpoint_seconds = time.perf_counter() - t1
        bar.update(1)
        bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", acc=f"{metrics.get('accuracy', float('nan')):.2f}",
                        fmt=f"{metrics.get('format_rate', float('nan')):.2f}",
                        s=f"{metrics['time/step']:.0f}")
    bar.close()
    model_dir = ray.get(actors.trainer.save_pretrained.remote(str(plan.out_dir / "model")))
    summary = {"stage": "reasoning_rl", "steps": plan.steps, "model": model_dir, "final_eval": last_eval,
               "complete": True, **plan.extra_manifest}
    (plan.out_dir / "manifest.json").write_text(json.dumps(summary, indent=2))
    return summary
