"""The trainer's GRPO update, lever by lever: the same batch through each variant, alternating, in one run.

    python bench/grpo_train_levers.py [--model DIR] [--base-commit REV] [--repeats 3] [--prompts 8] [--group 8]

A batch of ``--prompts`` groups x ``--group`` responses is built from the cold-start demonstrations of the
quickstart tasks (real R1-format responses of realistic, varied lengths; advantages ±1, no all-equal
group, so every row trains). Each variant is a fresh child process that loads the model, trains the batch
once untimed, then ``--repeats`` timed updates; variants alternate so background load hits them alike:
- ``base``: the trainer at ``--base-commit`` (every micro-batch padded to the batch's longest response, a
  full-vocabulary entropy on every micro-batch, fp32 log-softmax);
- ``now``: this checkout;
- ``now+jemalloc`` / ``now+tcmalloc``: the same with that allocator preloaded (if installed).
Results: ``bench/results/grpo_train_levers.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALLOCATORS = {"jemalloc": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
              "tcmalloc": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"}

CHILD = r'''
import json, sys, time, torch
sys.path.insert(0, sys.argv[1])
from rollout.types import RolloutBatch
from trainer.policy import PolicyTrainer
from trainer.settings import GRPOSettings, TrainerSettings
spec = json.loads(open(sys.argv[2]).read())
torch.set_num_threads(spec["threads"])
trainer = PolicyTrainer(spec["model"], TrainerSettings(precision="bf16", threads=spec["threads"]))
batch = RolloutBatch(**spec["batch"])
settings = GRPOSettings(tis_cap=None, micro_batch_size=spec["micro"])
times = []
for i in range(spec["repeats"] + 1):
    t0 = time.perf_counter()
    trainer.train_grpo(batch, settings)
    times.append(time.perf_counter() - t0)
print("RESULT " + json.dumps({"seconds": times[1:]}))
'''


def _batch(model_dir: str, prompts: int, group: int) -> dict:
    """Groups of real R1-format demonstrations (the cold-start data) under quickstart prompts."""
    from transformers import AutoTokenizer

    from pipeline.config import load_config
    from pipeline.data import build_splits
    from tasks.prompting import render_prompt_ids
    from tasks import make_demonstration

    cfg = load_config(ROOT / "configs" / "quickstart.yaml")
    tok = AutoTokenizer.from_pretrained(model_dir)
    train, _ = build_splits(cfg)
    out = {"prompt_ids": [], "response_ids": [], "group_size": group, "advantages": [], "rewards": [],
           "truncated": []}
    for g in range(prompts):
        prompt = render_prompt_ids(tok, train[g], cfg.data.system_prompt)
        for j in range(group):
            demo = make_demonstration(train[(prompts + g * group + j) % len(train)])
            text = demo["messages"][-1]["content"]
            out["prompt_ids"].append(prompt)
            out["response_ids"].append(tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
            out["advantages"].append(1.0 if j % 2 == 0 else -1.0)
            out["rewards"].append(float(j % 2 == 0))
            out["truncated"].append(False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "runs" / "benchstart" / "cold_start" / "model"))
    ap.add_argument("--base-commit", default="e449dbb")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of every variant")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "grpo_train_levers.json"))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))

    batch = _batch(args.model, args.prompts, args.group)
    work = Path(tempfile.mkdtemp(prefix="r1-levers-"))
    base_tree = work / "base"
    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(base_tree), args.base_commit], cwd=ROOT, check=True)
    spec = work / "spec.json"
    spec.write_text(json.dumps({"model": args.model, "batch": batch, "repeats": args.repeats, "micro": args.micro,
                                "threads": os.cpu_count()}))
    child = work / "child.py"
    child.write_text(CHILD)
    variants = {"base": (base_tree, {}), "now": (ROOT, {})}
    for name, lib in ALLOCATORS.items():
        if Path(lib).exists():
            variants[f"now+{name}"] = (ROOT, {"LD_PRELOAD": lib})
    seconds: dict[str, list[float]] = {k: [] for k in variants}
    try:
        for r in range(args.rounds):
            for name, (tree, env) in variants.items():
                proc = subprocess.run([sys.executable, str(child), str(tree), str(spec)], capture_output=True, text=True,
                                      env={**os.environ, **env, "PYTHONPATH": str(tree)})
                line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if line is None:
                    raise SystemExit(f"variant {name} failed:\n{proc.stderr[-3000:]}")
                seconds[name] += json.loads(line[7:])["seconds"]
                print(f"round {r} {name}: {['%.2f' % s for s in seconds[name][-args.repeats:]]}", flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT)
    rows = len(batch["response_ids"])
    response_tokens = sum(len(r) for r in batch["response_ids"])
    distinct = response_tokens + sum(len(batch["prompt_ids"][g * args.group]) for g in range(args.prompts))
    summary = {k: {"median_s": round(statistics.median(v), 2), "min_s": round(min(v), 2),
                   "distinct_tokens_per_s": round(distinct / statistics.median(v), 1)} for k, v in seconds.items()}
    base = summary["base"]["median_s"]
    for k in summary:
        summary[k]["speedup_vs_base"] = round(base / summary[k]["median_s"], 3)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    result = {"commit": commit, "base_commit": args.base_commit, "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "model": args.model,
              "settings": {"rows": rows, "groups": args.prompts, "group_size": args.group, "micro_batch_size": args.micro,
                           "precision": "bf16 autocast, fp32 weights", "gradient_checkpointing": False,
                           "shared_prefix": True, "response_tokens": response_tokens,
                           "distinct_tokens": distinct, "repeats": args.repeats, "rounds": args.rounds},
              "variants": summary, "seconds": seconds}
    print(json.dumps(summary, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
