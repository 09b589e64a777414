"""The R1 paper's small-student comparison at equal compute: the distilled student (SFT on the teacher's
verified samples) against the same student trained by RL alone, per seed, paired over the same held-out prompts.

    python bench/rl_only_student.py --run /tmp/exp/runs/qs-s0 --run /tmp/exp/runs/qs-s1 \\
        [--arm-a SEED=DISTILL_DIR ...] [--out /tmp/srl/bench] [--docs docs/student_rl]

Each ``--run`` is a quickstart run stopped after reasoning RL (its ``reasoning_rl/model`` is the teacher). Per
seed, under ``--out/seed<S>/`` (the recipe's own stage code, `r1 run`'s layout):

- ``distill/``: arm A, the SFT-only distillation (``distill.*`` of the quickstart: 64 prompts x 4 teacher
  samples, verified, 2 epochs; no logit KL, no feature or on-policy terms, no rejection-sampling data: the
  runs stop before it). ``--arm-a SEED=DIR`` takes a finished one instead (a distill stage folder with
  ``eval/eval_samples.jsonl``; its compute is recounted from its files when its manifest has none).
- ``student_rl/``: the RL-only student, the same cut student, ``distill.rl_only_budget: match_distill`` (GRPO
  until its FLOPs reach arm A's, ``stages.compute``) on ``--rewards`` (default: format 0.5 + correctness with
  ``answer_format: auto`` 1.0 + ``numeric_closeness`` 0.5).

Both are evaluated by the recipe's eval (``evaluate_stage``: the reasoning held-out split, 3 samples, the
eval's own scoring: ``<answer>``-tag extraction); the bench also rescores both files with ``answer_format:
auto`` (block, else box, else the last number), the same for both. Writes ``--docs/results.json``,
``--docs/curves.png`` (per step: mean reward, its parts, the share of groups with all-equal rewards) and the
generated part of ``--docs/README.md`` (between the markers).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from stages.eval_stats import mean_ci95, paired_difference, per_prompt_rates  # noqa: E402

log = logging.getLogger("bench.rl_only_student")
DEFAULT_REWARDS = ("[{name: format, weight: 0.5}, {name: correctness, weight: 1.0, options: {answer_format: auto}}, "
                   "{name: numeric_closeness, weight: 0.5}]")
BEGIN, END = "<!-- rl_only_student: generated, do not edit -->", "<!-- rl_only_student: end -->"


def _seed(run_dir: Path) -> int:
    for stage in ("reasoning_rl", "cold_start", "base"):
        config = run_dir / stage / "config.yaml"
        if config.is_file():
            return int((yaml.safe_load(config.read_text()) or {}).get("run", {}).get("seed", 0))
    raise FileNotFoundError(f"{run_dir}: no stage config.yaml to read run.seed from")


def bench_config(run_dir: Path, out: Path, seed: int, rewards: str, max_steps: int, extra: list[str]):
    from pipeline.config import load_config

    return load_config(ROOT / "configs" / "quickstart.yaml", [
        f"run.seed={seed}", f"run.output_dir={out}", f"run.name=seed{seed}",
        f"distill.teacher={run_dir / 'reasoning_rl' / 'model'}", "distill.with_rejection_data=false",
        "distill.rl_only_steps=null", "distill.rl_only_budget=match_distill", f"distill.rl_only_max_steps={max_steps}",
        f"distill.rl_only_rewards={rewards}", *extra])


def _finish(cfg, stage: str, summary: dict, started: float) -> dict:
    """Evaluate a stage's model as `r1 run` does and write its manifest (complete)."""
    from pipeline.recipe import evaluate_stage
    from stages.manifest import write_manifest

    summary["eval"] = evaluate_stage(cfg, stage, summary["model"])
    summary.update({"complete": True, "seconds": round(time.time() - started, 1)})
    write_manifest(cfg.run_dir() / stage, summary)
    return summary


def arm_a(cfg, given: Path | None, given_seconds: float | None = None) -> dict:
    """Arm A's manifest (with ``compute``): the given distill folder (copied in; ``given_seconds``: its
    sampling + SFT wall seconds where known), else distilled here."""
    from pipeline.distill import run_distill, student_init
    from pipeline.student_compute import distill_compute
    from stages.manifest import read_manifest, write_manifest

    stage_dir = cfg.run_dir() / "distill"
    done = read_manifest(stage_dir)
    if done and done.get("complete") and (stage_dir / "eval" / "eval_samples.jsonl").is_file():
        return done
    if given is not None:
        shutil.copytree(given, stage_dir, dirs_exist_ok=True)
        manifest = read_manifest(stage_dir) or {}
        if not (manifest.get("compute") or {}).get("flops"):
            seconds = given_seconds if given_seconds is not None else manifest.get("seconds") or 0.0
            manifest["compute"] = distill_compute(cfg, stage_dir, teacher=cfg.distill.teacher, student=student_init(cfg),
                                                  curated=False, seconds=seconds)
            manifest["compute"]["recounted"] = True
        manifest["complete"] = True
        write_manifest(stage_dir, manifest)
        return manifest
    started = time.time()
    return _finish(cfg, "distill", run_distill(cfg), started)


def rl_only(cfg) -> dict:
    from pipeline.distill import run_student_rl
    from stages.manifest import read_manifest

    done = read_manifest(cfg.run_dir() / "student_rl")
    if done and done.get("complete") and done.get("eval"):
        return done
    started = time.time()
    return _finish(cfg, "student_rl", run_student_rl(cfg), started)


def _rescored(path: Path, answer_format: str) -> dict[str, float]:
    """Per prompt, the share of its completions correct by ``correctness`` with ``answer_format``."""
    from rewards import correctness_reward

    rates = {}
    with open(path) as fh:
        for line in fh:
            row = json.loads(line)
            sample = {"answer": row["gold"], "task": row.get("task")}
            oks = [float(correctness_reward(c["text"], sample, answer_format=answer_format)) == 1.0
                   for c in row["completions"]]
            if oks:
                rates[str(row["id"])] = sum(oks) / len(oks)
    return rates


def _delta(distilled: dict, rl: dict) -> dict:
    """distilled - RL-only, paired by sample id, with SE, 95% CI and z."""
    d = paired_difference(rl, distilled)
    d["se"] = (d["ci_high"] - d["mean"]) / 1.96 if d["n"] >= 2 else float("nan")
    return d


def compare(cfg, a: dict, b: dict) -> dict:
    from pipeline.student_compute import side_by_side

    files = {arm: cfg.run_dir() / stage / "eval" / "eval_samples.jsonl"
             for arm, stage in (("distilled", "distill"), ("rl_only", "student_rl"))}
    recipe = {arm: per_prompt_rates(f, "correct") for arm, f in files.items()}
    auto = {arm: _rescored(f, "auto") for arm, f in files.items()}
    # The rescoring itself, checked: with the eval's own extraction (tags) it must give the eval's verdicts.
    tags = {arm: _rescored(f, "tags") for arm, f in files.items()}
    mismatched = {arm: sum(abs(tags[arm][k] - recipe[arm][k]) > 1e-9 for k in recipe[arm]) for arm in files}
    fmt = {arm: per_prompt_rates(f, "format") for arm, f in files.items()}
    scoring = {arm: json.loads((f.parent / "eval.json").read_text()).get("scoring") for arm, f in files.items()}
    from pipeline.tracking import read_metrics

    rows = [r for r in read_metrics(cfg.run_dir() / "student_rl" / "metrics.jsonl") if r.get("step", 0) > 0]
    return {
        "eval_scoring": scoring, "rescoring_check_prompts_differing": mismatched,
        "pass1_recipe_eval": {arm: mean_ci95(list(v.values())) for arm, v in recipe.items()},
        "pass1_auto": {arm: mean_ci95(list(v.values())) for arm, v in auto.items()},
        "format_rate": {arm: mean_ci95(list(v.values()))[0] for arm, v in fmt.items()},
        "delta_recipe_eval": _delta(recipe["distilled"], recipe["rl_only"]),
        "delta_auto": _delta(auto["distilled"], auto["rl_only"]),
        "compute": side_by_side(a.get("compute"), b.get("compute")),
        "distill_compute": a.get("compute"), "rl_only_compute": b.get("compute"), "rl_only_budget": b.get("budget"),
        "rl_only_steps": b.get("steps"), "teacher_rows": a.get("teacher_rows"), "sft_rows": a.get("rows"),
        "curves": [{k: r.get(k) for k in ("step", "reward/mean", "reward/correctness/mean", "reward/format/mean",
                                          "reward/numeric_closeness/mean", "groups/zero_variance_fraction",
                                          "response_length/mean", "compute/flops_cumulative", "compute/rows_trained")}
                   for r in rows],
    }


def pair_with(cfg, arm_dir: Path, seconds: float | None) -> dict:
    """This seed's RL-only student against another run's SFT-only arm A (``bench/feature_distill.py``'s), paired
    by sample id; that arm's compute counted from its files by the same rules (``distill_compute``)."""
    from pipeline.distill import student_init
    from pipeline.student_compute import distill_compute, side_by_side
    from stages.manifest import read_manifest

    mine = cfg.run_dir() / "student_rl" / "eval" / "eval_samples.jsonl"
    theirs = arm_dir / "eval" / "eval_samples.jsonl"
    other = distill_compute(cfg, arm_dir, teacher=cfg.distill.teacher, student=student_init(cfg), curated=False,
                            seconds=seconds or 0.0)
    return {"arm_a_dir": str(arm_dir),
            "delta_recipe_eval": _delta(per_prompt_rates(theirs, "correct"), per_prompt_rates(mine, "correct")),
            "delta_auto": _delta(_rescored(theirs, "auto"), _rescored(mine, "auto")),
            "pass1_arm_a": mean_ci95(list(per_prompt_rates(theirs, "correct").values())),
            "compute": side_by_side(other, (read_manifest(cfg.run_dir() / "student_rl") or {}).get("compute"))}


def plot(per_seed: dict, out_png: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    keys = (("reward/mean", "mean reward (total)"), ("reward/numeric_closeness/mean", "numeric_closeness (mean)"),
            ("groups/zero_variance_fraction", "share of groups with all-equal rewards"))
    for ax, (key, title) in zip(axes, keys):
        for seed, res in per_seed.items():
            pts = [(c["step"], c[key]) for c in res["curves"] if c.get(key) is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"seed {seed}")
        ax.set(title=title, xlabel="RL step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[2].set_ylim(-0.05, 1.05)
    fig.suptitle("RL-only student: GRPO steps at the distillation's compute")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def _git() -> dict:
    """Commit and dirtiness of the tree: ``SNAPSHOT.json`` at the root of a copied tree (written by whoever
    copied it, from the tree it copied), else git here."""
    if (ROOT / "SNAPSHOT.json").is_file():
        return json.loads((ROOT / "SNAPSHOT.json").read_text())
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    diff = subprocess.run(["git", "diff"], cwd=ROOT, capture_output=True).stdout
    import hashlib

    return {"commit": head or None, "dirty": bool(diff), "diff_sha1": hashlib.sha1(diff).hexdigest() if diff else None}


def _pm(ci) -> str:
    return f"{ci[0]:.3f} [{ci[1]:.3f}, {ci[2]:.3f}]"


def _d(d: dict) -> str:
    if d["n"] < 2 or not math.isfinite(d["mean"]):
        return "-"
    return f"{d['mean']:+.3f} (SE {d['se']:.3f}, 95% CI [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}], z = {d['z']:.1f})"


def markdown(results: dict) -> str:
    lines = [BEGIN, "", f"Commit {results['git']['commit']} (dirty: {results['git']['dirty']}), "
             f"{results['finished_at']}; rewards of the RL-only student: `{results['settings']['rl_only_rewards']}`.", "",
             "| seed | pass@1 distilled (recipe eval) | pass@1 RL-only | Δ distilled − RL-only (recipe eval) | "
             "Δ with `auto` extraction | FLOPs distilled | FLOPs RL-only (ratio) | seconds distilled / RL-only | RL steps |",
             "|---|---|---|---|---|---|---|---|---|"]
    for seed, r in results["seeds"].items():
        c = r["compute"] or {}
        a, b, ratio = c.get("distill", {}), c.get("rl_only", {}), c.get("rl_only_over_distill", {})
        lines.append(f"| {seed} | {_pm(r['pass1_recipe_eval']['distilled'])} | {_pm(r['pass1_recipe_eval']['rl_only'])} | "
                     f"{_d(r['delta_recipe_eval'])} | {_d(r['delta_auto'])} | {a.get('flops', 0):.3g} | "
                     f"{b.get('flops', 0):.3g} ({ratio.get('flops')}) | {a.get('seconds')} / {b.get('seconds')} | "
                     f"{r['rl_only_steps']} |")
    lines.append("")
    for seed, r in results["seeds"].items():
        zv = ", ".join(f"{c['groups/zero_variance_fraction']:.2f}" for c in r["curves"]
                       if c.get("groups/zero_variance_fraction") is not None)
        rw = ", ".join(f"{c['reward/mean']:.3f}" for c in r["curves"])
        lines.append(f"- seed {seed}: reward per step {rw}; share of groups with all-equal rewards per step {zv}; "
                     f"format rate distilled {r['format_rate']['distilled']:.3f}, RL-only {r['format_rate']['rl_only']:.3f}.")
        other = r.get("vs_feature_distill_arm_a")
        if other:
            c = other["compute"] or {}
            lines.append(f"  Against `bench/feature_distill.py`'s arm A ({other['arm_a_dir']}, pass@1 "
                         f"{_pm(other['pass1_arm_a'])}): Δ {_d(other['delta_recipe_eval'])}; with `auto` "
                         f"{_d(other['delta_auto'])}; RL-only / its FLOPs "
                         f"{(c.get('rl_only_over_distill') or {}).get('flops')}.")
    return "\n".join(lines + ["", "![curves](curves.png)", "", END])


def write_docs(results: dict, docs: Path) -> None:
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results["seeds"], docs / "curves.png")
    readme = docs / "README.md"
    text = readme.read_text() if readme.is_file() else "# RL-only student at the distillation's compute\n\n"
    block = markdown(results)
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    readme.write_text(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", action="append", required=True, type=Path, help="a quickstart run up to reasoning_rl")
    p.add_argument("--arm-a", action="append", default=[], help="SEED=DIR: a finished SFT-only distill folder")
    p.add_argument("--arm-a-results", type=Path, help="bench/feature_distill.py's results.json: its arm A per seed")
    p.add_argument("--also-pair", type=Path, help="bench/feature_distill.py's results.json: pair the RL-only students "
                   "with its arm A too (after this bench's own arm A)")
    p.add_argument("--out", type=Path, default=Path("/tmp/srl/bench"))
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "student_rl")
    p.add_argument("--rewards", default=DEFAULT_REWARDS)
    p.add_argument("--max-steps", type=int, default=12)
    p.add_argument("overrides", nargs="*", help="more config overrides for both arms")
    args = p.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    given = {int(k): Path(v) for k, v in (a.split("=", 1) for a in args.arm_a)}
    given_seconds = {}
    if args.arm_a_results:  # arm A of bench/feature_distill.py: its folder and its sampling + SFT seconds
        for rec in json.loads(args.arm_a_results.read_text())["seeds"].values():
            a = rec["arms"]["A"]
            given[int(rec["seed"])] = Path(a["dir"])
            c = a.get("compute") or {}
            if c.get("sft_seconds") is not None:
                given_seconds[int(rec["seed"])] = c["sft_seconds"] + (c.get("teacher_sampling_seconds") or 0.0)
    from pipeline.placement import release_placement

    results = {"git": _git(), "settings": {"config": "configs/quickstart.yaml", "rl_only_rewards": args.rewards,
                                           "rl_only_budget": "match_distill", "rl_only_max_steps": args.max_steps,
                                           "overrides": args.overrides, "runs": [str(r) for r in args.run],
                                           "arm_a_given": {k: str(v) for k, v in given.items()},
                                           "also_pair": str(args.also_pair) if args.also_pair else None},
               "arm_a_results": str(args.arm_a_results) if args.arm_a_results else None,
               "seeds": {}}
    try:
        for run_dir in args.run:
            seed = _seed(run_dir)
            cfg = bench_config(run_dir, args.out, seed, args.rewards, args.max_steps, args.overrides)
            a = arm_a(cfg, given.get(seed), given_seconds.get(seed))
            b = rl_only(cfg)
            results["seeds"][seed] = compare(cfg, a, b)
            if args.also_pair:
                for rec in json.loads(args.also_pair.read_text())["seeds"].values():
                    if int(rec["seed"]) == seed:
                        c = rec["arms"]["A"].get("compute") or {}
                        secs = (c.get("sft_seconds") or 0.0) + (c.get("teacher_sampling_seconds") or 0.0)
                        results["seeds"][seed]["vs_feature_distill_arm_a"] = pair_with(cfg, Path(rec["arms"]["A"]["dir"]),
                                                                                      secs or None)
            log.info("seed %d: %s", seed, _d(results["seeds"][seed]["delta_recipe_eval"]))
    finally:
        release_placement()
    results["finished_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write_docs(results, args.docs)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
