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
