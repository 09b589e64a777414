"""PNG plots of a run's metrics (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence


def _series(rows: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_rl_curves(rows: Sequence[dict], out_png: str | Path, *, title: str = "reasoning RL") -> Path:
    """Two panels: training reward / accuracy / format rate per step, and held-out pass@1 (95% CI) and
    format rate at each evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (train_ax, eval_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("reward/mean", "reward (mean)"), ("accuracy", "accuracy"), ("format_rate", "format rate")):
        x, y = _series(rows, key)
        if x:
            train_ax.plot(x, y, marker=".", label=label)
    train_ax.set(title="training batches", xlabel="step", ylim=(-0.05, max(1.6, train_ax.get_ylim()[1])))
    train_ax.legend(loc="upper left")
    train_ax.grid(alpha=0.3)

    x, y = _series(rows, "eval/pass@1")
    if x:
        _, lo = _series(rows, "eval/pass@1_ci_low")
        _, hi = _series(rows, "eval/pass@1_ci_high")
        eval_ax.fill_between(x, lo, hi, alpha=0.2, label="pass@1 95% CI")
        eval_ax.plot(x, y, marker="o", label="pass@1")
    x, y = _series(rows, "eval/format_rate")
    if x:
        eval_ax.plot(x, y, marker="s", label="format rate")
    n = next((r["eval/n_prompts"] for r in rows if r.get("eval/n_prompts")), None)
    eval_ax.set(title=f"held-out ({n} prompts)" if n else "held-out", xlabel="step", ylim=(0, 1))
    eval_ax.legend(loc="upper left")
    eval_ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def summarize_rl_run(stage_dir: str | Path) -> dict:
    """Held-out eval first vs. last (with 95% CIs), training curve ends, step timing, peak memory."""
    import json
    import statistics

    from .tracking import read_metrics

    stage_dir = Path(stage_dir)
    rows = read_metrics(stage_dir / "metrics.jsonl")
    evals = [r for r in rows if "eval/pass@1" in r]
    steps = [r for r in rows if "time/step" in r]
    manifest = json.loads((stage_dir / "manifest.json").read_text()) if (stage_dir / "manifest.json").exists() else {}

    def ev(r):
        return {"step": r["step"], "pass@1": r["eval/pass@1"],
                "pass@1_ci95": [r["eval/pass@1_ci_low"], r["eval/pass@1_ci_high"]],
                "format_rate": r["eval/format_rate"], "n_prompts": r.get("eval/n_prompts"),
                "per_task_pass@1": {k.split("/")[1]: v for k, v in r.items()
                                    if k.startswith("eval/") and k.endswith("/pass@1") and k.count("/") == 2}}

    def mean(key):
        vals = [r[key] for r in steps if r.get(key) is not None]
        return round(statistics.fmean(vals), 4) if vals else None

    paired = None
    if len(evals) >= 2:
        from stages.eval_stats import paired_difference, per_prompt_rates

        first, last = (stage_dir / "eval" / f"step_{r['step']:05d}" / "eval_samples.jsonl"
                       for r in (evals[0], evals[-1]))
        if first.is_file() and last.is_file():
            paired = {name: paired_difference(per_prompt_rates(first, key), per_prompt_rates(last, key))
                      for name, key in (("pass@1", "correct"), ("format_rate", "format"))}
    return {"evals": [ev(r) for r in evals],
            "paired_first_to_last": paired,
            "first_eval": ev(evals[0]) if evals else None, "last_eval": ev(evals[-1]) if evals else None,
            "steps": len(steps),
            "seconds_per_step": mean("time/step"),
            "phase_seconds": {k: mean(k) for k in ("time/generate", "time/reward", "time/prepare", "time/train",
                                                   "time/sync", "time/eval", "time/checkpoint")},
            "overhead_fraction": mean("time/overhead_fraction"),
            "tokens_per_second": {"generate": mean("tokens_per_second/generate"),
                                  "train": mean("tokens_per_second/train")},
            "train_reward_first_last": [steps[0]["reward/mean"], steps[-1]["reward/mean"]] if steps else None,
            "peak_memory_gib": manifest.get("peak_memory_gib"),
            "max_sampled_memory_gib": max((r.get("memory/gib") or 0 for r in steps), default=None)}


if __name__ == "__main__":
    # python -m pipeline.plots runs/<name>/reasoning_rl docs/<dest>: curve PNG + results JSON of an RL run.
    import json
    import sys

    from .tracking import read_metrics

    src, dest = Path(sys.argv[1]), Path(sys.argv[2])
    dest.mkdir(parents=True, exist_ok=True)
    plot_rl_curves(read_metrics(src / "metrics.jsonl"), dest / "curves.png")
    (dest / "results.json").write_text(json.dumps(summarize_rl_run(src), indent=2) + "\n")
    print(f"wrote {dest / 'curves.png'} and {dest / 'results.json'}")
