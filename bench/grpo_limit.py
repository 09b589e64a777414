"""How close one GRPO step is to this machine's limit: ours vs. bare vLLM generate + a bare training loop.

    python bench/grpo_limit.py [--model DIR] [--steps 3] [--prompts 8] [--group 8] [--max-new-tokens 128]
                               [key=value ...]

In one run, on the same requests and the same token rows:
1. **ours**: ``stages.grpo.rl_step``, end to end through the Ray actors the stage uses (vLLM
   rollout, reward workers, trainer, weight sync). The first step is a warm-up and is not timed.
2. **bare generate**: the same prompts and sampling through a plain ``vllm.LLM.generate`` in this process,
   with the same engine settings (and a warm-up call).
3. **bare train**: the rows our trainer trained (non-zero advantage) through a loop written plainly here:
   fp32 weights, bf16 autocast, padded rows, full-vocabulary log-softmax, loss -A·logp token-mean,
   backward, AdamW step; micro-batches of the same size.
It prints seconds for each and ``ours / (bare generate + bare train)``; the generate side is scaled to
our generated token count (our policy moves between steps, so lengths differ a little). The model
should give groups with mixed rewards (a cold-start model, ``--model``), or our skip of all-equal groups
would leave nothing to train. Results: ``bench/results/grpo_limit.json``.
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _config(args):
    from pipeline.config import load_config

    overrides = [f"rl.prompts_per_step={args.prompts}", f"rl.group_size={args.group}",
                 f"rollout.max_new_tokens={args.max_new_tokens}", "rl.kl_coef=0", "rl.entropy_coef=0",
                 *args.overrides]
    return load_config(args.config, overrides)


def run_ours(cfg, model_dir: str, steps: int) -> tuple[list[dict], list, list]:
    """``steps`` RL steps (first untimed); returns their metrics, the batches trained and the requests sent."""
    import ray

    import stages.grpo as rl
    from pipeline.cluster import build_rl_actors
    from tasks.prompting import template_prefills_think
    from pipeline.rl import build_plan
    from stages.prompt_stream import PromptStream
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    prefilled = template_prefills_think(tok, cfg.data.system_prompt)
    plan = build_plan(cfg, tok, Path(tempfile.mkdtemp(prefix="r1-limit-")), prefilled_think=prefilled)
    actors = build_rl_actors(cfg, model_dir, prefilled_think=prefilled)
    batches, requests = [], []
    build_batch = rl.build_batch  # recorded where rl_step looks it up

    def recording_build_batch(gens, scores, plan_):
        batch = build_batch(gens, scores, plan_)
        batches.append(batch)
        requests.append([g.prompt_ids for g in gens])
        return batch

    rl.build_batch = recording_build_batch
    stream = PromptStream(plan.train, seed=0)
    rows = []
    try:
        for step in range(steps):
            rows.append(rl.rl_step(actors, stream, plan, step))
            r = rows[-1]
            print(f"ours step {step}: {r['time/step']:.1f} s (generate {r['time/generate']:.1f}, train "
                  f"{r['time/train']:.1f}, rows trained {r['train/rows_trained']:.0f})", flush=True)
    finally:
        rl.build_batch = build_batch
        actors.kill()
        ray.shutdown()
    return rows, batches, [(req, plan.seed + step * 1000) for step, req in enumerate(requests)]


def bare_generate(cfg, model_dir: str, requests, sampling) -> list[tuple[float, int]]:
    """Seconds and generated tokens per request batch through a plain ``vllm.LLM``."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    r = cfg.rollout
    extra = {"kv_cache_memory_bytes": int(r.kv_cache_gb * 2**30)} if r.kv_cache_gb else {}
    llm = LLM(model=model_dir, dtype=r.dtype, max_model_len=r.max_model_len, max_num_seqs=r.max_num_seqs,
              seed=cfg.run.seed, enforce_eager=r.enforce_eager, enable_prefix_caching=True,
              gpu_memory_utilization=r.gpu_memory_utilization, **extra)
    params = SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                            max_tokens=sampling.max_new_tokens, logprobs=0)
    out = []
    for i, (prompts, _seed) in enumerate(requests):
        llm.reset_prefix_cache()  # ours resets it at every weight sync
        t0 = time.perf_counter()
        gens = llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
        seconds = time.perf_counter() - t0
        out.append((seconds, sum(len(c.token_ids) for g in gens for c in g.outputs)))
        print(f"bare generate {i}: {seconds:.1f} s, {out[-1][1]} tokens", flush=True)
    del llm
    return out


def bare_train(model_dir: str, batches, micro: int, lr: float, threads: int) -> list[tuple[float, int, int]]:
    """Seconds, rows and tokens per batch of a plain bf16-autocast forward + backward + AdamW loop over
    the rows of ``batches`` with a non-zero advantage (the rows our trainer had to train)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    out = []
    for b, batch in enumerate(batches):
        rows = [i for i, a in enumerate(batch.advantages) if a != 0 and batch.response_ids[i]]
        t0 = time.perf_counter()
        n_tokens = sum(len(batch.response_ids[i]) for i in rows)
        opt.zero_grad(set_to_none=True)
        for start in range(0, len(rows), micro):
            chunk = rows[start:start + micro]
            seqs = [batch.prompt_ids[i] + batch.response_ids[i] for i in chunk]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            attn = torch.zeros((len(chunk), width), dtype=torch.long)
            target = torch.zeros((len(chunk), width), dtype=torch.float32)  # 1 where a response token is predicted
            for r, (i, s) in enumerate(zip(chunk, seqs)):
                ids[r, :len(s)] = torch.tensor(s)
                attn[r, :len(s)] = 1
                target[r, len(batch.prompt_ids[i]):len(s)] = 1.0
            adv = torch.tensor([batch.advantages[i] for i in chunk]).unsqueeze(1)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
            loss = -(adv * logp * target[:, 1:]).sum() / max(n_tokens, 1)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        seconds = time.perf_counter() - t0
        out.append((seconds, len(rows), n_tokens))
        print(f"bare train {b}: {seconds:.1f} s, {len(rows)} rows, {n_tokens} response tokens", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    ap.add_argument("--model", default=str(ROOT / "runs" / "benchstart" / "cold_start" / "model"),
                    help="starting model (mixed rewards); make one with: r1 cold-start -c configs/quickstart.yaml "
                         "run.name=benchstart cold_start.eval=false")
    ap.add_argument("--steps", type=int, default=4, help="RL steps of ours; the first is an untimed warm-up")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "grpo_limit.json"))
    ap.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    args = ap.parse_args()
    if not (Path(args.model) / "config.json").is_file():
        raise SystemExit(f"--model {args.model}: no model there; {ap._option_string_actions['--model'].help}")
    cfg = _config(args)
    from pipeline.actors import allocator_library

    library = allocator_library(cfg.cluster.allocator)
    if library and library not in os.environ.get("LD_PRELOAD", ""):
        # Fair to the bare side: it runs in this process, so give it the allocator our actors get.
        os.execve(sys.executable, [sys.executable, *sys.argv],
                  {**os.environ, "LD_PRELOAD": ":".join(filter(None, [library, os.environ.get("LD_PRELOAD")]))})

    from pipeline.cluster import default_threads, rl_trainer_settings
    rows, batches, requests = run_ours(cfg, args.model, args.steps)
    from pipeline.config import resolve
    from rollout import SamplingSpec

    r = cfg.rl
    sampling = SamplingSpec(n=r.group_size, **resolve(r.sampling, cfg.rollout).model_dump())
    gen = bare_generate(cfg, args.model, requests, sampling)
    train = bare_train(args.model, batches, cfg.trainer.micro_batch_size, rl_trainer_settings(cfg).optim.lr,
                       default_threads(cfg) or os.cpu_count())
    timed = range(1, len(rows))
    ours = statistics.fmean(rows[i]["time/step"] for i in timed)
    ours_tokens = statistics.fmean(rows[i]["generated_tokens"] for i in timed)
    bare_gen = statistics.fmean(gen[i][0] for i in timed)
    bare_gen_tokens = statistics.fmean(gen[i][1] for i in timed)
    bare_gen_scaled = bare_gen * ours_tokens / max(bare_gen_tokens, 1)
    bare_tr = statistics.fmean(train[i][0] for i in timed)
    ratio = ours / (bare_gen_scaled + bare_tr)
    phases = {k: round(statistics.fmean(rows[i][k] for i in timed), 3) for k in rows[1] if k.startswith("time/")}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())
    result = {
        "commit": commit + ("-dirty" if dirty else ""), "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "model": args.model,
        "settings": {"prompts_per_step": r.prompts_per_step, "group_size": r.group_size,
                     "max_new_tokens": sampling.max_new_tokens, "temperature": sampling.temperature,
                     "trainer_precision": cfg.trainer.precision, "micro_batch_size": cfg.trainer.micro_batch_size,
                     "gradient_checkpointing": cfg.trainer.gradient_checkpointing,
                     "shared_prefix": cfg.trainer.shared_prefix, "rollout_dtype": cfg.rollout.dtype,
                     "enforce_eager": cfg.rollout.enforce_eager, "kv_cache_gb": cfg.rollout.kv_cache_gb,
                     "skip_zero_advantage": r.skip_zero_advantage, "timed_steps": len(timed),
                     "allocator": cfg.cluster.allocator, "preloaded": os.environ.get("LD_PRELOAD"),
                     "overrides": args.overrides},
        "ours_seconds_per_step": round(ours, 2), "ours_phases": phases,
        "ours_generated_tokens": ours_tokens,
        "ours_rows_trained": [rows[i]["train/rows_trained"] for i in timed],
        "bare_generate_seconds": round(bare_gen, 2), "bare_generate_tokens": bare_gen_tokens,
        "bare_generate_seconds_at_our_tokens": round(bare_gen_scaled, 2),
        "bare_train_seconds": round(bare_tr, 2),
        "bare_train_rows_tokens": [train[i][1:] for i in timed],
        "ratio_ours_over_bare": round(ratio, 3),
    }
    print(f"\nours {ours:.1f} s/step (generate {phases['time/generate']:.1f}, train {phases['time/train']:.1f}) | "
          f"bare generate {bare_gen_scaled:.1f} s + bare train {bare_tr:.1f} s | ratio {ratio:.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
