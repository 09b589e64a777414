"""GRPO on the upcycled MoE model with Rollout Routing Replay on, next to the same run with it off.

    python bench/r3_grpo.py [--steps 8] [--config configs/quickstart-moe.yaml] [--out docs/r3]

Both runs are `r1 reasoning-rl` on ``smollm2-moe`` (`r1 prepare-model smollm2-moe` first) with the same
seed, prompts and settings; they differ only in ``rl.routing_replay``. Routing capture is on in both, so the
run without R3 still measures how often the trainer's routers disagree with the engine's. Per step the
script collects the reward, the rollout/trainer k3 KL, the share of tokens with |Δlogp| > ln 2, the training
routers' own top-k against the engine's (``r3/router_mismatch_own``, ``r3/token_mismatch_own``), the routing
coverage, the replay plumbing check (R3 on: must be 0), and the seconds of the step and of its parts. Writes
``<out>/r3_grpo.json`` (with the commit and every setting) and ``<out>/r3_grpo.png``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEYS = ["reward/mean", "rollout_train_mismatch/k3", "rollout_train_mismatch/frac_over_ln2", "r3/router_mismatch_own",
        "r3/token_mismatch_own", "r3/replay_plumbing_mismatch", "r3/routing_coverage", "r3/engine_rows_unknown",
        "train/entropy", "train/grad_norm", "time/step", "time/generate", "time/train", "time/sync",
        "generated_tokens"]


def run_arm(replay: bool, args) -> list[dict]:
    """One `r1 reasoning-rl` run; returns its metrics.jsonl rows (one per step)."""
    name = f"r3-grpo-{'on' if replay else 'off'}"
    out = ROOT / "runs" / name / "reasoning_rl"
    overrides = [f"run.name={name}", f"rl.routing_replay={str(replay).lower()}", "rollout.routing_capture=true",
                 f"rl.steps={args.steps}", "rl.init_model=smollm2-moe", "rl.save_every=1000", f"run.seed={args.seed}"]
    cmd = [str(ROOT / ".venv" / "bin" / "r1"), "reasoning-rl", "-c", args.config, *overrides, "--out", str(out)]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def plot(arms: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("reward/mean", "reward (mean)"), ("rollout_train_mismatch/k3", "rollout vs train k3 KL / token"),
              ("r3/router_mismatch_own", "training router's own top-k != rollout's"),
              ("r3/token_mismatch_own", "tokens with any such router")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (key, title) in zip(axes, panels):
        for label, rows in arms.items():
            steps = [r["step"] for r in rows if r.get(key) is not None]
            ax.plot(steps, [r[key] for r in rows if r.get(key) is not None], marker="o", label=label)
        if key == "r3/router_mismatch_own" and "R3 on" in arms:  # the plumbing check: 0 when replay holds
            rows = [r for r in arms["R3 on"] if r.get("r3/replay_plumbing_mismatch") is not None]
            ax.plot([r["step"] for r in rows], [r["r3/replay_plumbing_mismatch"] for r in rows], ls="--",
                    color="tab:orange", label="R3 on: experts used != replayed (must be 0)")
            ax.legend(fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default="configs/quickstart-moe.yaml")
    parser.add_argument("--out", default="docs/r3")
    parser.add_argument("--replot", action="store_true", help="only redraw the PNG from <out>/r3_grpo.json")
    args = parser.parse_args()
    if args.replot:
        plot(json.loads((ROOT / args.out / "r3_grpo.json").read_text())["per_step"], ROOT / args.out / "r3_grpo.png")
        return 0
    arms = {"R3 off": run_arm(False, args), "R3 on": run_arm(True, args)}
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for label, rows in arms.items():
        summary[label] = {key: statistics.fmean(r[key] for r in rows if key in r)
                          for key in KEYS if any(key in r for r in rows)}
    on, off = summary["R3 on"], summary["R3 off"]
    result = {
        "what": "GRPO on smollm2-moe, R3 off vs on, same seed/prompts/settings; means over steps and per-step rows",
        "mean_over_steps": summary,
        "k3_ratio_on_over_off": on["rollout_train_mismatch/k3"] / off["rollout_train_mismatch/k3"],
        "step_time_ratio_on_over_off": on["time/step"] / off["time/step"],
        "per_step": {label: [{k: r.get(k) for k in ["step", *KEYS]} for r in rows] for label, rows in arms.items()},
        "settings": {"config": args.config, "steps": args.steps, "seed": args.seed, "model": "smollm2-moe",
                     "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                              text=True).stdout.strip(),
                     "dirty": bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                                  capture_output=True, text=True).stdout.strip()),
                     "machine": f"{platform.machine()}, {os.cpu_count()} cores"},
    }
    (out / "r3_grpo.json").write_text(json.dumps(result, indent=2))
    plot(arms, out / "r3_grpo.png")
    print(json.dumps({k: result[k] for k in ("k3_ratio_on_over_off", "step_time_ratio_on_over_off")}, indent=2))
    print(f"wrote {out / 'r3_grpo.json'} and {out / 'r3_grpo.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
