"""Evaluation: pass@1, pass@k, maj@k and format rate per task, run after every stage.

What "correct" and "formatted" mean is configurable (:class:`EvalScoring`): one reward per role, by default
the recipe's ``correctness`` (R1 ``<answer>`` tags) and ``format`` (R1 layout). Options such as
``answer_format: boxed`` or ``style: think_boxed`` evaluate R1-distill / MATH-style models the way
everyone else does, and the table and ``eval.json`` name the extraction used.
"""
from __future__ import annotations

import inspect
import json
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from stages.eval_stats import majority_correct, mean_ci95, pass_at_k
from rewards import reason_of, resolve, weighted_sum
from rewards.answers import ANSWER_FORMATS, extract_final_answer
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


@dataclass
class EvalScoring:
    """The two rewards an eval scores with, as reward specs ``{"name", "options"}`` (see
    :func:`rewards.weighted_sum`): ``correctness`` decides "correct" (== 1.0), ``format`` "formatted".

    ``prefilled_think`` reaches every reward that takes it. The defaults are the built-in ``correctness``
    (``answer_format: tags``) and ``format`` (``style: r1``) rewards.
    """

    correctness: Mapping[str, Any] = field(default_factory=lambda: {"name": "correctness"})
    format: Mapping[str, Any] = field(default_factory=lambda: {"name": "format"})
    prefilled_think: bool = False
    _sum: Any = field(default=None, init=False, repr=False, compare=False)

    def rewards(self):
        """The :class:`rewards.registry.WeightedSum` that scores both roles (built once; checks the specs)."""
        if self._sum is None:
            specs = [{"name": self.correctness.get("name", "correctness"), "weight": 1.0, "label": "correctness",
                      "options": dict(self.correctness.get("options") or {})},
                     {"name": self.format.get("name", "format"), "weight": 0.0, "label": "format",
                      "options": dict(self.format.get("options") or {})}]
            self._sum = weighted_sum(specs, prefilled_think=self.prefilled_think)
        return self._sum

    def answer_format(self) -> str | None:
        """The correctness reward's ``answer_format`` (given, else its default); None if it takes none."""
        return _option(self.correctness, "answer_format")

    def format_style(self) -> str | None:
        """The format reward's ``style`` (given, else its default); None if it takes none."""
        return _option(self.format, "style")

    def describe(self) -> dict:
        """What eval.json records: each role's reward and options, the extraction, ``prefilled_think``."""
        roles = {role: {"name": _name(spec, role), "options": dict(spec.get("options") or {})}
                 for role, spec in (("correctness", self.correctness), ("format", self.format))}
        return {**roles, "answer_format": self.answer_format(), "format_style": self.format_style(),
                "prefilled_think": self.prefilled_think}

    def summary_line(self) -> str:
        """One line for the table: ``scored by correctness (answer_format=boxed), format (style=r1)``."""
        parts = []
        for role, spec, key, value in (("correctness", self.correctness, "answer_format", self.answer_format()),
                                       ("format", self.format, "style", self.format_style())):
            name = _name(spec, role)
            parts.append(f"{name} ({key}={value})" if value is not None else name)
        think = ", prefilled <think>" if self.prefilled_think else ""
        return f"scored by {parts[0]}, {parts[1]}{think}"


def _name(spec: Mapping[str, Any], role: str) -> str:
    name = spec.get("name", role)
    return name if isinstance(name, str) else getattr(name, "__name__", repr(name))


def _option(spec: Mapping[str, Any], key: str) -> Any:
    options = spec.get("options") or {}
    if key in options:
        return options[key]
    try:
        parameter = inspect.signature(resolve(spec.get("name"))).parameters.get(key)
    except (TypeError, ValueError):
        return None
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def score_generations(samples: Sequence[Mapping], generations: Sequence[Generation],
                      scoring: EvalScoring | None = None, *, executor=None) -> list[ScoredSample]:
    """Score every completion of every prompt with ``scoring``'s rewards (one batch, so batched and async
    rewards see it whole); the verdicts per prompt, in order."""
    scoring = scoring or EvalScoring()
    texts, rows = [], []
    for sample, generation in zip(samples, generations, strict=True):
        for comp in generation.completions:
            texts.append(comp.text)
            rows.append(sample)
    scores = iter(scoring.rewards().score_batch(texts, rows, executor=executor))
    answer_format = scoring.answer_format()
    if answer_format not in ANSWER_FORMATS:
        answer_format = "auto"  # a user's correctness reward: vote on wherever the answer is
    out = []
    for sample, generation in zip(samples, generations):
        correct, formatted, answers, reasons, lengths, truncated = [], [], [], [], [], []
        for comp in generation.completions:
            _, parts = next(scores)
            verdict, form = parts["correctness"], parts["format"]
            correct.append(float(verdict) >= 1.0)
            reasons.append(reason_of(verdict))
            formatted.append(float(form) >= 1.0)
            answer, _ = extract_final_answer(comp.text, answer_format, scoring.prefilled_think)
            answers.append(" ".join(answer.split()) if answer else None)  # whitespace-normalised, for maj@k
            lengths.append(len(comp.token_ids))
            truncated.append(comp.truncated)
        out.append(ScoredSample(sample, correct, formatted, answers, reasons, lengths, truncated))
    return out


def score_generation(sample: Mapping, generation: Generation, *, prefilled_think: bool = False,
                     scoring: EvalScoring | None = None) -> ScoredSample:
    """Score every completion of one prompt: ``scoring``'s correctness and format rewards (default: the
    built-in ones with ``prefilled_think``)."""
    scoring = scoring or EvalScoring(prefilled_think=prefilled_think)
    return score_generations([sample], [generation], scoring)[0]


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


def format_table(metrics: Mapping[str, TaskMetrics], scoring: EvalScoring | None = None) -> str:
    """A fixed-width table a person reads at the end of a run; with ``scoring``, a first line that names the
    rewards and the answer extraction the numbers come from."""
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
    if scoring is not None:
        out.insert(0, scoring.summary_line())
    return "\n".join(out)


def evaluate(engine, tokenizer, samples: Sequence[Mapping], *, system_prompt: str | None, sampling: SamplingSpec,
             ks: Sequence[int], prefilled_think: bool = False, out_dir: Path | None = None,
             progress: bool = True, scoring: EvalScoring | None = None, template: str = "chat"
             ) -> dict[str, TaskMetrics]:
    """Generate ``sampling.n`` completions per sample (prompts laid out by ``template``,
    :mod:`tasks.prompting`), score them with ``scoring`` (default: the built-in correctness and format
    rewards with ``prefilled_think``), and write ``eval.json`` + samples."""
    from tasks.prompting import render_prompt_ids

    if not samples:
        raise ValueError("evaluate: no samples to evaluate (empty eval split?)")
    started = time.time()
    prompts = [render_prompt_ids(tokenizer, s, system_prompt, template) for s in samples]
    generations = engine.generate(prompts, sampling, progress=progress)
    gen_seconds = time.time() - started
    scoring = scoring or EvalScoring(prefilled_think=prefilled_think)
    scored = score_generations(samples, generations, scoring)
    metrics = aggregate(scored, ks)
    if out_dir is not None:
        _write(out_dir, metrics, scored, generations, gen_seconds, time.time() - started - gen_seconds, scoring)
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


def _write(out_dir: Path, metrics, scored, generations, gen_seconds: float, score_seconds: float,
           scoring: EvalScoring) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_tokens = sum(len(c.token_ids) for g in generations for c in g.completions)
    summary = {
        "scoring": scoring.describe(),
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
