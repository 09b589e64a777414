"""Evaluation: pass@1, pass@k, maj@k and format rate per task, run after every stage."""
from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from stages.eval_stats import majority_correct, mean_ci95, pass_at_k
from rewards import correctness_reward, extract_answer_block, format_reward, reason_of
from rollout.types import Generation, SamplingSpec


@dataclass
class ScoredSample:
    """The verdicts on all completions of one prompt."""

    sample: Mapping
    correct: list[bool]
    formatted: list[bool]
    answers: list[str | None]
    reasons: list[str]
    lengths: list[int]
    truncated: list[bool]


@dataclass
class TaskMetrics:
    task: str
    n_prompts: int
    n_samples: int
    pass_at: dict[int, float] = field(default_factory=dict)
    maj_at: dict[int, float] = field(default_factory=dict)
    pass1_ci: tuple[float, float] = (0.0, 0.0)
    format_rate: float = 0.0
    mean_length: float = 0.0
    truncation_rate: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)


def score_generation(sample: Mapping, generation: Generation, *, prefilled_think: bool = False) -> ScoredSample:
    """Apply the sample's correctness verifier and the format reward to every completion."""
    correct, formatted, answers, reasons, lengths, truncated = [], [], [], [], [], []
    for comp in generation.completions:
        verdict = correctness_reward(comp.text, sample)
        correct.append(float(verdict) >= 1.0)
        reasons.append(reason_of(verdict))
        formatted.append(float(format_reward(comp.text, sample, prefilled_think=prefilled_think)) >= 1.0)
        block = extract_answer_block(comp.text)
        answers.append(" ".join(block.split()) if block else None)  # whitespace-normalised, for majority votes
        lengths.append(len(comp.token_ids))
        truncated.append(comp.truncated)
    return ScoredSample(sample, correct, formatted, answers, reasons, lengths, truncated)


def aggregate(scored: Sequence[ScoredSample], ks: Sequence[int]) -> dict[str, TaskMetrics]:
    """Per-task metrics plus an ``"all"`` row (tasks weighted by their prompt counts)."""
    groups: dict[str, list[ScoredSample]] = defaultdict(list)
    for s in scored:
        groups[str(s.sample.get("task", "default"))].append(s)
    if len(groups) > 1:
        groups["all"] = list(scored)
    return {task: _task_metrics(task, rows, ks) for task, rows in groups.items()}


def _task_metrics(task: str, rows: Sequence[ScoredSample], ks: Sequence[int]) -> TaskMetrics:
    n = min(len(r.correct) for r in rows)
    m = TaskMetrics(task=task, n_prompts=len(rows), n_samples=n)
    for k in (k for k in ks if k <= n):
        m.pass_at[k] = sum(pass_at_k(n, sum(r.correct[:n]), k) for r in rows) / len(rows)
        m.maj_at[k] = sum(majority_correct(r.answers[:k], r.correct[:k]) for r in rows) / len(rows)
    _, lo, hi = mean_ci95([sum(r.correct[:n]) / n for r in rows])
    m.pass1_ci = (lo, hi)
    flat = [(f, length, t) for r in rows for f, length, t in zip(r.formatted, r.lengths, r.truncated)]
    m.format_rate = sum(f for f, _, _ in flat) / len(flat)
    m.mean_length = sum(length for _, length, _ in flat) / len(flat)
    m.truncation_rate = sum(t for _, _, t in flat) / len(flat)
    m.reasons = dict(Counter(reason for r in rows for reason in r.reasons))
    return m


def format_table(metrics: Mapping[str, TaskMetrics]) -> str:
    """A fixed-width table a person reads at the end of a run."""
    ks = sorted({k for m in metrics.values() for k in m.pass_at})
    head = ["task", "prompts", "pass@1", "95% CI"] + [f"pass@{k}" for k in ks if k != 1]
    head += [f"maj@{k}" for k in ks if k != 1] + ["format", "len"]
    lines = [head]
    for m in metrics.values():
        row = [m.task, str(m.n_prompts), f"{m.pass_at.get(1, float('nan')):.3f}",
               f"[{m.pass1_ci[0]:.3f}, {m.pass1_ci[1]:.3f}]"]
        row += [f"{m.pass_at[k]:.3f}" if k in m.pass_at else "-" for k in ks if k != 1]
        row += [f"{m.maj_at[k]:.3f}" if k in m.maj_at else "-" for k in ks if k != 1]
        row += [f"{m.format_rate:.3f}", f"{m.mean_length:.0f}"]
        lines.append(row)
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def evaluate(engine, tokenizer, samples: Sequence[Mapping], *, system_prompt: str | None, sampling: SamplingSpec,
             ks: Sequence[int], prefilled_think: bool = False, out_dir: Path | None = None,
             progress: bool = True) -> dict[str, TaskMetrics]:
    """Generate ``sampling.n`` completions per sample, score them, and write ``eval.json`` + samples."""
    from tqdm.auto import tqdm

    from tasks.prompting import render_prompt_ids

    if not samples:
        raise ValueError("evaluate: no samples to evaluate (empty eval split?)")
    started = time.time()
    prompts = [render_prompt_ids(tokenizer, s, system_prompt) for s in samples]
    generations = engine.generate(prompts, sampling, progress=progress)
    gen_seconds = time.time() - started
    scored = [
        score_generation(s, g, prefilled_think=prefilled_think)
        for s, g in tqdm(list(zip(samples, generations)), desc="scoring", disable=not progress)
    ]
    metrics = aggregate(scored, ks)
    if out_dir is not None:
        _write(out_dir, metrics, scored, generations, gen_seconds, time.time() - started - gen_seconds)
    return metrics


def headline(metrics: Mapping[str, TaskMetrics], prefix: str = "eval/") -> dict[str, float]:
    """The flat metrics-line form of an eval: pass@1 with its 95% CI, format rate and prompts of the "all"
    row, and pass@1 per task (``<prefix>pass@1``, ``<prefix><task>/pass@1``, ...)."""
    row = metrics.get("all") or next(iter(metrics.values()))
    flat = {f"{prefix}pass@1": row.pass_at.get(1, float("nan")), f"{prefix}pass@1_ci_low": row.pass1_ci[0],
            f"{prefix}pass@1_ci_high": row.pass1_ci[1], f"{prefix}format_rate": row.format_rate,
            f"{prefix}n_prompts": row.n_prompts}
    for name, m in metrics.items():
        if name != "all":
            flat[f"{prefix}{name}/pass@1"] = m.pass_at.get(1, float("nan"))
    return flat


def manifest_summary(metrics: Mapping[str, TaskMetrics]) -> dict:
    """The manifest form of a stage's eval: pass@1 and its CI, format rate, pass@1 per task."""
    row = metrics.get("all") or next(iter(metrics.values()))
    return {"pass@1": row.pass_at.get(1), "pass@1_ci": list(row.pass1_ci), "format_rate": row.format_rate,
            "per_task": {name: m.pass_at.get(1) for name, m in metrics.items() if name != "all"}}


def _write(out_dir: Path, metrics, scored, generations, gen_seconds: float, score_seconds: float) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_tokens = sum(len(c.token_ids) for g in generations for c in g.completions)
    summary = {
        "tasks": {name: _as_json(m) for name, m in metrics.items()},
        "generation_seconds": round(gen_seconds, 2),
        "scoring_seconds": round(score_seconds, 2),
        "generated_tokens": n_tokens,
        "tokens_per_second": round(n_tokens / max(gen_seconds, 1e-9), 1),
    }
    (out_dir / "eval.json").write_text(json.dumps(summary, indent=2))
    with open(out_dir / "eval_samples.jsonl", "w") as fh:
        for s, g in zip(scored, generations):
            row = {"id": s.sample.get("id"), "task": s.sample.get("task"), "prompt": s.sample.get("prompt"),
                   "gold": s.sample.get("answer"),
                   "completions": [{"text": c.text, "correct": ok, "format": f, "reason": r}
                                   for c, ok, f, r in zip(g.completions, s.correct, s.formatted, s.reasons)]}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _as_json(m: TaskMetrics) -> dict:
    return {"n_prompts": m.n_prompts, "n_samples": m.n_samples,
            "pass_at": {str(k): round(v, 4) for k, v in m.pass_at.items()},
            "maj_at": {str(k): round(v, 4) for k, v in m.maj_at.items()},
            "pass1_ci95": [round(m.pass1_ci[0], 4), round(m.pass1_ci[1], 4)],
            "format_rate": round(m.format_rate, 4), "mean_length": round(m.mean_length, 1),
            "truncation_rate": round(m.truncation_rate, 4), "reasons": m.reasons}
