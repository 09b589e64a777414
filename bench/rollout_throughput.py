"""Rollout actor vs. bare vLLM: the same requests, side by side in one run.

    python bench/rollout_throughput.py [--prompts 16] [--n 8] [--max-new-tokens 128] [--repeats 2] [key=value ...]

Runs the same chat-templated prompts with the same sampling (seeded) through a ``VLLMEngine`` in
this process and through the Ray ``RolloutWorker`` actor the RL stage uses, and reports generated
tokens per second for each and the ratio (target: actor >= 90% of bare). Both engines are up at once,
warmed up with one untimed request, and timed over ``--repeats`` batches each, alternating, so that
background load falls on both alike. Results: ``bench/results/rollout_throughput.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _prompts(cfg, n_prompts: int):
    from transformers import AutoTokenizer

    from pipeline.data import build_splits
    from tasks.prompting import render_prompt_ids
    from trainer.model_io import resolve_model

    model_dir = resolve_model(cfg.model.name)
    tok = AutoTokenizer.from_pretrained(model_dir)
    train, _ = build_splits(cfg)
    return model_dir, [render_prompt_ids(tok, s, cfg.data.system_prompt) for s in train[:n_prompts]]


def _interleaved(engines: dict, prompts, sampling, repeats: int) -> dict[str, tuple[float, int]]:
    """Time each engine on the same batch, alternating A, B, A, B, ... so load spikes hit both alike."""
    for generate in engines.values():
        generate(prompts[:2], sampling)  # warm-up: first-call compilation and allocation
    totals = {name: [0.0, 0] for name in engines}
    for _ in range(repeats):
        for name, generate in engines.items():
            t0 = time.perf_counter()
            gens = generate(prompts, sampling)
            totals[name][0] += time.perf_counter() - t0
            totals[name][1] += sum(len(c.token_ids) for g in gens for c in g.completions)
    return {name: (s, t) for name, (s, t) in totals.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "grpo_demo.yaml"))
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "rollout_throughput.json"))
    ap.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    args = ap.parse_args()

    import ray

    from pipeline.actors import RolloutWorker, worker_env
    from pipeline.cluster import connect, default_threads
    from pipeline.config import load_config
    from pipeline.evaluation import engine_options
    from rollout import SamplingSpec
    from rollout.vllm_engine import VLLMEngine

    # The KV cache and compile mode of the recorded results; a run may still override them.
    cfg = load_config(args.config, ["rollout.kv_cache_gb=2.0", "rollout.enforce_eager=false", *args.overrides])
    model_dir, prompts = _prompts(cfg, args.prompts)
    # Ignore EOS would make lengths equal, but vLLM's sampler then differs from the RL run; instead the
    # same seed gives both engines the same samples, so they generate the same tokens.
    sampling = SamplingSpec(n=args.n, temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens, seed=0)
    options = engine_options(cfg)
    threads = default_threads(cfg)

    # Both engines live at once (each ~0.6 GB of weights plus its KV cache) and take turns.
    bare = VLLMEngine(model_dir, **options)
    connect(cfg)
    actor = ray.remote(RolloutWorker).options(num_cpus=1, runtime_env={"env_vars": worker_env(threads)}).remote(
        cfg.rollout.engine, model_dir, options, threads)
    ray.get(actor.ready.remote())
    timed = _interleaved({"bare": lambda p, s: bare.generate(p, s),
                          "actor": lambda p, s: ray.get(actor.generate.remote(p, s))},
                         prompts, sampling, args.repeats)
    ray.kill(actor)
    bare.close()
    (bare_s, bare_tokens), (actor_s, actor_tokens) = timed["bare"], timed["actor"]
    bare_tps, actor_tps = bare_tokens / bare_s, actor_tokens / actor_s
    result = {
        "requests": {"prompts": len(prompts), "n": args.n, "max_new_tokens": args.max_new_tokens,
                     "repeats": args.repeats},
        "bare_vllm": {"seconds": round(bare_s, 2), "tokens": bare_tokens, "tokens_per_second": round(bare_tps, 1)},
        "rollout_actor": {"seconds": round(actor_s, 2), "tokens": actor_tokens,
                          "tokens_per_second": round(actor_tps, 1)},
        "actor_over_bare": round(actor_tps / bare_tps, 3),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    print(json.dumps(result, indent=2))
    print(f"rollout actor throughput = {result['actor_over_bare']:.1%} of bare vLLM (target >= 90%)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
