"""Feature distillation against plain SFT distillation: the recipe's stage 6 run twice per finished run.

    PYTHONPATH=. python bench/feature_distill.py --runs RUN_DIR [RUN_DIR ...] [--out DIR] [--docs DIR]
        [--student-layers 8 12 16] [--teacher-layers 22 26 30] [--loss cosine] [--weight auto|W]

For each run dir whose ``reasoning_rl`` stage finished (``manifest.json`` complete), with that run's seed:

1. the teacher (its ``reasoning_rl`` model) samples the distillation data once, as ``run_distill`` would
   (``verified_dataset`` with the ``distill`` section's settings), into ``OUT/<run>/teacher_data``;
2. arm A (``distill.feature.weight=0``, the recipe's SFT on teacher samples) and arm B (feature
   distillation) each get a copy of that folder (``run_distill`` reuses a ``teacher_data/`` that has its
   ``stats.json``) and run ``run_distill`` from the same cut student (one ``student_init/``) and seed;
3. both students are evaluated as ``r1 run`` evaluates the distill stage (the recipe's held-out split).

``--weight auto``: a pilot on the first run's teacher data chooses the feature weight so that, on the first
batch at the start, the feature term's gradient norm is half the cross-entropy's (rounded to one significant
figure); the pilot's numbers go into the results. Paired by prompt id (``stages.eval_stats``): Δ = B - A of
reasoning pass@1 and of the format rate, with its SE, 95% CI and z. Writes ``DOCS/results.json`` and
``DOCS/results.png``; the tree's provenance comes from ``SNAPSHOT.json`` at the repo root when there is one
(written by whoever copied the tree), else from git.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

log = logging.getLogger("bench.feature_distill")


def provenance() -> dict:
    """Commit and dirtiness of the tree this runs from: ``SNAPSHOT.json`` of a copied tree, else git here."""
    snap = ROOT / "SNAPSHOT.json"
    if snap.is_file():
        return json.loads(snap.read_text())
    run = lambda *a: subprocess.run(a, cwd=ROOT, capture_output=True, text=True).stdout.strip()  # noqa: E731
    diff = subprocess.run("git diff | sha1sum", shell=True, cwd=ROOT, capture_output=True, text=True).stdout.split()[0]
    return {"commit": run("git", "rev-parse", "HEAD"), "git_diff_sha1": diff, "dirty": bool(run("git", "status", "--porcelain"))}


def base_config(config: str, run_dir: Path, out: Path, feature: dict | None):
    """The quickstart config for ``run_dir``'s seed, its teacher the run's reasoning-RL model, run_dir under
    ``out`` (the bench never writes into the run), ``feature`` as ``distill.feature`` (None: off)."""
    import yaml

    from pipeline.config import load_config
    from stages.manifest import read_manifest, stage_model

    manifest = read_manifest(run_dir / "reasoning_rl")
    if not manifest or not manifest.get("complete"):
        raise FileNotFoundError(f"{run_dir / 'reasoning_rl'}: not finished (no complete manifest.json)")
    seed = yaml.safe_load((run_dir / "reasoning_rl" / "config.yaml").read_text())["run"]["seed"]
    teacher = stage_model(run_dir, "reasoning_rl") or str(run_dir / "reasoning_rl" / "model")
    overrides = [f"run.seed={seed}", f"run.output_dir={out}", f"run.name={run_dir.name}",
                 f"distill.teacher={teacher}", "distill.with_rejection_data=false"]
    for key, value in (feature or {}).items():
        overrides.append(f"distill.feature.{key}={json.dumps(value)}")
    return load_config(config, overrides)


def teacher_data(cfg, out_dir: Path) -> float:
    """The teacher's verified samples, as ``run_distill`` draws them; their seconds (recorded beside them, so a
    rerun of the bench reads them back)."""
    from pipeline.config import resolve
    from pipeline.rejection import verified_dataset

    timing = out_dir.parent / "teacher_data_seconds.json"
    if (out_dir / "stats.json").is_file() and timing.is_file():
        return json.loads(timing.read_text())["seconds"]
    d = cfg.distill
    started = time.time()
    verified_dataset(cfg, d.teacher, out_dir, prompts=d.prompts, n_samples=d.n_samples,
                     sampling=resolve(d.sampling, cfg.rollout), max_per_prompt=d.max_per_prompt,
                     non_reasoning_ratio=cfg.rejection.non_reasoning_ratio, allow_empty=False)
    seconds = time.time() - started
    timing.write_text(json.dumps({"seconds": round(seconds, 1)}))
    return seconds


def teacher_tokens(data_dir: Path, tokenizer) -> dict:
    """Tokens the teacher generated (all candidates, kept or not) and kept (the rows trained on)."""
    stats = json.loads((data_dir / "stats.json").read_text())
    if "tokens" in stats:
        return {**stats["tokens"], "source": "stats.json"}
    generated = 0
    with open(data_dir / "candidates.jsonl") as fh:
        for line in fh:
            generated += len(tokenizer(json.loads(line)["completion"], add_special_tokens=False)["input_ids"]) + 1
    return {"generated_tokens": generated, "source": "candidates.jsonl, tokenized again (+1 EOS each)"}


def pilot_weight(cfg, data_dir: Path, student: str, pairs_cfg: dict, target_ratio: float = 0.5) -> dict:
    """Feature weight whose term's gradient norm is ``target_ratio`` x the CE gradient's on the first batch
    at the start (the student as it will start, the precision it will train in)."""
    import torch
    from transformers import AutoTokenizer

    from pipeline.sft import read_chat_examples
    from stages.sft import batches, tokenize_examples
    from trainer.sequences import token_logprobs
    from trainer.settings import TrainerSettings
    from trainer.teacher_student import DistillTrainer

    tokenizer = AutoTokenizer.from_pretrained(student)
    pairs, _ = tokenize_examples(tokenizer, read_chat_examples(str(data_dir / "data.jsonl"), field="pilot"),
                                 cfg.sft.max_length)
    idx = batches(len(pairs), cfg.distill.batch_size, 1, cfg.run.seed)[0]
    trainer = DistillTrainer(student, TrainerSettings(precision=cfg.trainer.precision, threads=2), cfg.distill.teacher,
                             {**pairs_cfg, "weight": 1.0})
    rows = trainer._rows([pairs[i][0] for i in idx], [pairs[i][1] for i in idx])
    mask = rows.response_mask.bool()
    tokens = mask.sum()
    _, t_h = trainer._teacher_outputs(rows, [t for _, t in trainer.feature_pairs])
    logits, s_h = trainer._student_outputs(rows, [s for s, _ in trainer.feature_pairs])
    logp, _ = token_logprobs(logits, rows.response_ids, 1.0, False)
    ce = torch.where(mask, -logp, 0.0).sum() / tokens
    feature = trainer._feature_loss(s_h, t_h, mask).sum() / tokens
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    norm = lambda gs: math.sqrt(sum(float(g.float().pow(2).sum()) for g in gs if g is not None))  # noqa: E731
    g_ce = norm(torch.autograd.grad(ce, params, retain_graph=True, allow_unused=True))
    g_f = norm(torch.autograd.grad(feature, params, allow_unused=True))
    raw = target_ratio * g_ce / g_f
    weight = float(f"{raw:.1g}")
    return {"rule": f"weight x |grad F| = {target_ratio} x |grad CE| on the first batch, 1 significant figure",
            "ce": float(ce.detach()), "feature": float(feature.detach()), "grad_norm_ce": g_ce, "grad_norm_feature": g_f,
            "raw_weight": raw, "weight": weight, "rows": len(idx), "tokens": int(tokens)}


def evaluate(cfg, model: str, out_dir: Path) -> float:
    """The distill stage's held-out eval as `r1 run` runs it (pipeline.recipe.evaluate_stage), into ``out_dir``."""
    from pipeline.actors import RemoteEngine
    from pipeline.cluster import release_rollout, start_rollout
    from pipeline.data import recipe_test_split
    from pipeline.evaluation import run_eval

    started = time.time()
    pool = start_rollout(cfg, model)
    try:
        _, table = run_eval(cfg, model=model, out=str(out_dir), label="distill", samples=recipe_test_split(cfg, "distill"),
                            engine=RemoteEngine(pool))
    finally:
        release_rollout(pool)
    print(table, flush=True)
    return time.time() - started


def run_arm(cfg, work: Path, arm: str) -> dict:
    """``run_distill`` into ``work/arm`` on the shared teacher data, then its eval; a finished arm is read back."""
    from pipeline.distill import run_distill
    from stages.manifest import read_manifest

    arm_dir = work / arm
    done = arm_dir / "bench_arm.json"
    if done.is_file():
        return json.loads(done.read_text())
    if not (arm_dir / "teacher_data" / "stats.json").is_file():
        shutil.rmtree(arm_dir / "teacher_data", ignore_errors=True)
        shutil.copytree(work / "teacher_data", arm_dir / "teacher_data")
    started = time.time()
    summary = run_distill(cfg, out=str(arm_dir))
    train_seconds = time.time() - started
    eval_seconds = evaluate(cfg, summary["model"], arm_dir / "eval")
    record = {"arm": arm, "feature": cfg.distill.feature.model_dump(), "model": summary["model"],
              "sft_seconds": round(train_seconds, 1), "eval_seconds": round(eval_seconds, 1),
              "manifest": read_manifest(arm_dir), "compute": summary.get("compute")}
    done.write_text(json.dumps(record, indent=2, default=str))
    return record


def curves(metrics_file: Path) -> dict:
    """Per step: loss, ce (train_sft's loss where it has no ce), feature, tokens."""
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "step" in r and r.get("step", 0) > 0]
    return {"step": [r["step"] for r in rows], "loss": [r.get("loss") for r in rows],
            "ce": [r.get("ce", r.get("loss")) for r in rows], "feature": [r.get("feature") for r in rows],
            "tokens": [r.get("tokens") for r in rows],
            "tokens_processed": [round(r["tokens_per_second"] * r["train_seconds"]) if "tokens_per_second" in r
                                 else None for r in rows]}


def arm_summary(arm_dir: Path) -> dict:
    """Eval (pass@1, format rate: mean and 95% CI over prompts) and per-prompt rates of one arm."""
    from stages.eval_stats import mean_ci95, per_prompt_rates

    samples = arm_dir / "eval" / "eval_samples.jsonl"
    out = {}
    for key, name in (("correct", "pass@1"), ("format", "format_rate")):
        rates = per_prompt_rates(samples, key)
        mean, lo, hi = mean_ci95(list(rates.values()))
        out[name] = {"mean": mean, "ci95": [lo, hi], "prompts": len(rates)}
        out[f"_{key}_rates"] = rates
    return out


def paired(a: dict, b: dict) -> dict:
    """B - A over the prompts both scored, with its SE and the effect it could have detected (2.8 SE: 80%
    power at a two-sided 5% level)."""
    from stages.eval_stats import paired_difference

    d = paired_difference(a, b)
    se = (d["ci_high"] - d["mean"]) / 1.96 if d["n"] >= 2 else float("nan")
    return {**d, "se": se, "detectable_2p8se": 2.8 * se}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = list(results["seeds"])
    arms = list(results["seeds"][seeds[0]]["arms"])
    labels = {"A": "A: SFT only", "B": f"B: + feature, weight {results['settings']['feature']['weight']:g}"}
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for ax, metric in zip(axes[0], ("pass@1", "format_rate")):
        for k, arm in enumerate(arms):
            xs = [i + (k - (len(arms) - 1) / 2) * 0.2 for i in range(len(seeds))]
            vals = [results["seeds"][s]["arms"][arm]["eval"][metric] for s in seeds]
            ax.errorbar(xs, [v["mean"] for v in vals], yerr=[[v["mean"] - v["ci95"][0] for v in vals],
                                                            [v["ci95"][1] - v["mean"] for v in vals]],
                        fmt="o", capsize=4, label=labels.get(arm, f"{arm}: + feature, weight {arm[3:]} (after B)"))
        deltas = [results["seeds"][s]["delta"][metric] for s in seeds]
        ax.set_xticks(range(len(seeds)), [f"{s}\nB - A: {d['mean']:+.3f} (z {d['z']:.1f})" for s, d in zip(seeds, deltas)])
        ax.set_ylabel(f"held-out reasoning {metric} (95% CI)")
        ax.legend(fontsize=8)
    for s in seeds:
        for arm in arms:
            c = results["seeds"][s]["arms"][arm]["curves"]
            axes[1][0].plot(c["step"], c["ce"], "--" if arm == "A" else "-", marker=".", label=f"{s} {arm}")
            if arm != "A":
                axes[1][1].plot(c["step"], c["feature"], marker=".", label=f"{s} {arm}")
    axes[1][0].set(xlabel="SFT step", ylabel="train CE (per target token)")
    axes[1][1].set(xlabel="SFT step", ylabel=f"feature loss F ({results['settings']['feature']['loss']}, unweighted)")
    axes[1][0].legend(fontsize=8)
    axes[1][1].legend(fontsize=8)
    fig.suptitle("distill.feature vs SFT-only distillation (same teacher data, student, seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", nargs="+", required=True)
    p.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    p.add_argument("--out", default="/tmp/featd/bench")
    p.add_argument("--docs", default=str(ROOT / "docs" / "distill_feature"))
    p.add_argument("--student-layers", type=int, nargs="+", default=[8, 12, 16])
    p.add_argument("--teacher-layers", type=int, nargs="*", default=[22, 26, 30])
    p.add_argument("--loss", default="cosine", choices=["mse", "cosine"])
    p.add_argument("--weight", default="auto")
    p.add_argument("--extra-weights", type=float, nargs="*", default=[],
                   help="more feature-distillation arms (B_w<weight>), each compared with A too")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from transformers import AutoTokenizer

    from pipeline.cluster import connect, shared_rollouts
    from pipeline.config import dump_yaml
    from pipeline.distill import student_init

    out, docs = Path(args.out), Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    layers = {"loss": args.loss, "student_layers": args.student_layers,
              "teacher_layers": args.teacher_layers or None, "project": False}
    results = {"provenance": provenance(), "host": platform.node(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
               "seeds": {}}
    bench_started = time.time()
    weight, pilot = (None, None) if args.weight == "auto" else (float(args.weight), None)
    for run in map(Path, args.runs):
        cfg_a = base_config(args.config, run, out, None)
        connect(cfg_a)
        work = out / run.name
        work.mkdir(parents=True, exist_ok=True)
        student = student_init(cfg_a)  # one cut student for both arms (under work/student_init)
        with shared_rollouts(cfg_a.recipe.share_rollout):
            sampling_seconds = teacher_data(cfg_a, work / "teacher_data")
            if weight is None:  # the pilot runs once, on the first run's data; later invocations read it back
                pilot_file = out / "pilot.json"
                if pilot_file.is_file():
                    pilot = json.loads(pilot_file.read_text())
                else:
                    pilot = {**pilot_weight(cfg_a, work / "teacher_data", student, layers), "run": str(run)}
                    pilot_file.write_text(json.dumps(pilot, indent=2))
                weight = pilot["weight"]
                log.info("pilot: feature weight %s (%s)", weight, pilot)
            cfg_b = base_config(args.config, run, out, {**layers, "weight": weight})
            arms = {"A": run_arm(cfg_a, work, "A"), "B": run_arm(cfg_b, work, "B")}
            for w in args.extra_weights:
                arms[f"B_w{w:g}"] = run_arm(base_config(args.config, run, out, {**layers, "weight": w}), work, f"B_w{w:g}")
        tokenizer = AutoTokenizer.from_pretrained(student)
        seed_result = {"run": str(run), "seed": cfg_a.run.seed, "teacher": cfg_a.distill.teacher,
                       "student_init": student, "teacher_sampling_seconds": round(sampling_seconds, 1),
                       "teacher_tokens": teacher_tokens(work / "teacher_data", tokenizer),
                       "teacher_rows": json.loads((work / "teacher_data" / "stats.json").read_text()).get("rows"),
                       "arms": {}, "delta": {}}
        for name, rec in arms.items():
            ev = arm_summary(work / name)
            c = curves(work / name / "metrics.jsonl")
            m = rec["manifest"] or {}
            seed_result["arms"][name] = {
                "dir": str(work / name), "model": rec["model"], "feature": rec["feature"],
                "eval": {k: v for k, v in ev.items() if not k.startswith("_")}, "curves": c,
                "compute": {"steps": m.get("steps"), "examples": m.get("examples"),
                            "target_tokens_trained": int(sum(t or 0 for t in c["tokens"])),
                            "tokens_processed": int(sum(t or 0 for t in c["tokens_processed"])),
                            "teacher_generated_tokens": seed_result["teacher_tokens"].get("generated_tokens"),
                            "teacher_sampling_seconds": seed_result["teacher_sampling_seconds"],
                            "sft_seconds": rec["sft_seconds"], "eval_seconds": rec["eval_seconds"],
                            "recipe_compute": rec.get("compute")}}
            seed_result["arms"][name]["_rates"] = ev
        rates = {name: arm.pop("_rates") for name, arm in seed_result["arms"].items()}
        a = rates["A"]
        for name, b in rates.items():
            if name == "A":
                continue
            delta = {"pass@1": paired(a["_correct_rates"], b["_correct_rates"]),
                     "format_rate": paired(a["_format_rates"], b["_format_rates"])}
            if name == "B":
                seed_result["delta"] = delta
            else:
                seed_result.setdefault("delta_extra", {})[name] = delta
        results["seeds"][f"seed{cfg_a.run.seed}"] = seed_result
        (work / "config_B.yaml").write_text(dump_yaml(cfg_b))
    results["settings"] = {
        "config": args.config, "precision": cfg_a.trainer.precision, "batch_size": cfg_a.distill.batch_size,
        "epochs": cfg_a.distill.epochs, "lr": cfg_a.distill.optim.lr, "micro_batch_size": cfg_a.trainer.micro_batch_size,
        "distill": cfg_b.distill.model_dump(mode="json"), "feature": cfg_b.distill.feature.model_dump(mode="json"),
        "pilot": pilot, "eval": cfg_a.eval.model_dump(mode="json")}
    results["settings"]["extra_weights"] = args.extra_weights
    results["bench_seconds_this_invocation"] = round(time.time() - bench_started, 1)
    (docs / "results.json").write_text(json.dumps(results, indent=2, default=str))
    plot(results, docs / "results.png")
    for s, r in results["seeds"].items():
        d = r["delta"]["pass@1"]
        print(f"{s}: pass@1 A {r['arms']['A']['eval']['pass@1']['mean']:.3f} B {r['arms']['B']['eval']['pass@1']['mean']:.3f}"
              f"  Δ {d['mean']:+.4f} SE {d['se']:.4f} CI [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] z {d['z']:.2f}")
    import ray

    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
