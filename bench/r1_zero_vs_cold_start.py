"""R1-Zero (reasoning RL straight from the base model) against reasoning RL from the cold-start model, per seed.

    python bench/r1_zero_vs_cold_start.py --cold-start RUN_DIR [RUN_DIR ...] --zero RUN_DIR [RUN_DIR ...] \\
        [--out docs/r1_zero]

Each ``--cold-start`` run is a quickstart-config run stopped after reasoning RL
(``r1 run -c configs/quickstart.yaml run.seed=S run.name=... --until reasoning_rl``: base, cold_start,
reasoning_rl), each ``--zero`` run an R1-Zero run (``r1 run -c configs/r1-zero.yaml run.seed=S``: base,
reasoning_rl); runs are paired by their ``run.seed``. Reads only the run folders: each stage's
``eval/eval_samples.jsonl``, ``reasoning_rl/metrics.jsonl``, ``config.yaml`` and ``manifest.json`` (and a
``provenance.json`` beside the stages when the runner left one: the commit the run was made from).

Writes under ``--out``: ``results.json`` (per seed and pooled over seeds: held-out pass@1 and format rate of
both final models, their paired difference over the same held-out prompts (paired by sample id, prompt text
checked) with its standard error, 95% interval, z and minimum detectable effect (2.8 x SE: 80% power at a
two-sided 5% level), each path's gain over its own start (R1-Zero vs base, RL vs cold start), the training
curves, each path's RL budget and settings (steps, prompts x group size, sampling, optimizer, precision, tokens
generated, rows trained), what each run was made from and the commit this ran at), ``curves.png`` (mean reward, format
rate and accuracy on the training groups per step, both paths and every seed, and the held-out numbers), and
the generated section of ``README.md`` (between the markers; text outside them is kept).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from stages.eval_stats import mean_ci95, paired_difference, per_prompt_rates  # noqa: E402

MDE_FACTOR = 2.8  # z_{0.975} + z_{0.80} = 1.96 + 0.84: an effect this many SEs is found 80% of the time at 5%
CURVES = (("reward/mean", "mean reward (0.5 format + 1.0 correct)"), ("format_rate", "format rate"),
          ("accuracy", "correct (training groups)"))
START = {"cold_start": "cold_start", "zero": "base"}  # the stage each path's reasoning RL starts from
BEGIN, END = "<!-- r1_zero_vs_cold_start: generated, do not edit -->", "<!-- r1_zero_vs_cold_start: end -->"


def _jsonl(path: Path) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def held_out(stage_dir: Path) -> dict:
    """A stage's held-out eval: per-prompt correct and format rates (by sample id) and each id's prompt."""
    path = stage_dir / "eval" / "eval_samples.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no held-out eval of {stage_dir.name} (did the stage finish?)")
    rows = _jsonl(path)
    return {"correct": per_prompt_rates(path, "correct"), "format": per_prompt_rates(path, "format"),
            "prompts": {str(r["id"]): r.get("prompt") for r in rows},
            "n_samples": max((len(r["completions"]) for r in rows), default=0)}


def summary(ev: dict) -> dict:
    """Mean pass@1 and format rate over prompts, each with its 95% interval over prompts; a rate that is 0 on
    every prompt gets its one-sided 95% upper bound instead (1 - 0.05^(1/n), about 3/n: the normal interval
    of an all-zero sample has width 0 and says nothing)."""
    out = {"n_prompts": len(ev["correct"]), "samples_per_prompt": ev["n_samples"]}
    for key, name in (("correct", "pass@1"), ("format", "format_rate")):
        values = list(ev[key].values())
        mean, low, high = mean_ci95(values)
        out[name], out[f"{name}_ci95"] = mean, [low, high]
        if values and not any(values):
            out[f"{name}_upper95_none_seen"] = 1 - 0.05 ** (1 / len(values))
    return out


def paired(before: dict, after: dict, key: str) -> dict:
    """``after - before`` paired by sample id (:func:`stages.eval_stats.paired_difference`) with its SE and the
    minimum detectable effect; the ids of both must name the same prompts."""
    both = set(before["prompts"]) & set(after["prompts"])
    differ = sorted(i for i in both if before["prompts"][i] != after["prompts"][i])
    if differ:
        raise ValueError(f"paired evals disagree on the prompt of {len(differ)} ids, e.g. {differ[0]}: not the same "
                         "held-out split (same seed and data.tasks?)")
    d = paired_difference(before[key], after[key])
    se = (d["ci_high"] - d["ci_low"]) / (2 * 1.96) if d["n"] >= 2 else float("nan")
    # Every prompt's difference equal (both 0 everywhere: a path that learned nothing): SE 0 is no precision.
    degenerate = d["n"] >= 2 and se == 0
    return {**d, "se": se, "mde_80pct_power": None if degenerate else MDE_FACTOR * se,
            "all_differences_equal": degenerate}


def _merge(evals: list[dict], tags: list) -> dict:
    """Several seeds' evals as one, ids prefixed by the seed: pooled comparisons over every held-out prompt."""
    out = {"correct": {}, "format": {}, "prompts": {}, "n_samples": max(e["n_samples"] for e in evals)}
    for tag, ev in zip(tags, evals):
        for key in ("correct", "format", "prompts"):
            out[key].update({f"s{tag}/{i}": v for i, v in ev[key].items()})
    return out


def rl_run(run_dir: Path, path: str, provenance: Path | None = None) -> dict:
    """One run's reasoning RL: config, curves, budget, and the held-out evals of its start and its result."""
    rl_dir = run_dir / "reasoning_rl"
    config_file = rl_dir / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file}: not a run with a reasoning_rl stage")
    cfg = yaml.safe_load(config_file.read_text())
    variant = (cfg.get("recipe") or {}).get("variant", "r1")
    if (variant == "zero") != (path == "zero"):
        raise ValueError(f"{run_dir}: recipe.variant={variant}, given as a {path} run")
    manifest = json.loads((rl_dir / "manifest.json").read_text())
    if not manifest.get("complete"):
        raise ValueError(f"{rl_dir}: reasoning_rl did not finish")
    rows = _jsonl(rl_dir / "metrics.jsonl")
    provenance = provenance or run_dir / "provenance.json"
    return {"dir": str(run_dir), "seed": cfg["run"]["seed"], "config": cfg, "manifest": manifest, "metrics": rows,
            "start": held_out(run_dir / START[path]), "final": held_out(rl_dir),
            "provenance": json.loads(provenance.read_text()) if provenance.is_file() else None}


def _resolved(block: dict | None, run_wide: dict, keys) -> dict:
    """A stage's optim / sampling block over the run-wide values (a null field takes the run-wide one)."""
    block = block or {}
    return {k: block[k] if block.get(k) is not None else run_wide.get(k) for k in keys}


def budget(run: dict) -> dict:
    """The RL budget and settings the run trained with, and the tokens it generated and trained on."""
    cfg, rl, rollout = run["config"], run["config"]["rl"], run["config"]["rollout"]
    sampling = _resolved(rl.get("sampling"), rollout, ("temperature", "top_p", "max_new_tokens"))
    optim = _resolved(rl.get("optim"), cfg["trainer"]["optim"], ("lr", "warmup_steps", "grad_clip", "schedule"))
    template = cfg["data"].get("template", "chat")
    rows = run["metrics"]

    def total(key):
        values = [r[key] for r in rows if r.get(key) is not None]
        return sum(values) if values else None

    return {"steps": rl["steps"], "steps_logged": len(rows), "prompts_per_step": rl["prompts_per_step"],
            "group_size": rl["group_size"], "sampling": sampling, "optim": optim,
            "loss": {k: rl.get(k) for k in ("advantage_scale", "clip_low", "clip_high", "loss_agg", "kl_coef",
                                            "tis_cap", "mini_batches", "epochs")},
            "trainer_precision": cfg["trainer"].get("precision"), "rollout_dtype": rollout.get("dtype"),
            "engine": rollout.get("engine"), "model": cfg["model"]["name"],
            "init_model": run["manifest"].get("init_model"), "template": template,
            "system_prompt": cfg["data"].get("system_prompt") if template == "chat" else None,
            # What the metrics carry: tokens generated, and rows (completions) trained or skipped (all-equal groups:
            # advantage 0, no gradient); tokens trained are not logged.
            "tokens_generated": total("generated_tokens"), "rows_trained": total("train/rows_trained"),
            "rows_skipped_zero_advantage": total("train/rows_skipped_zero_advantage"),
            "rl_seconds": run["manifest"].get("seconds")}


def git_state(repo: Path) -> dict:
    """The commit this script ran at and whether the working tree differed from it."""
    def git(*args):
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True).stdout.strip()

    diff = subprocess.run(["git", "-C", str(repo), "diff"], capture_output=True).stdout
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
            "diff_sha1": hashlib.sha1(diff).hexdigest()}


def compare(cold: list[dict], zero: list[dict]) -> dict:
    """Per seed and pooled: both final models, their paired difference, each path's gain over its start."""
    seeds = sorted({r["seed"] for r in cold} & {r["seed"] for r in zero})
    if not seeds:
        raise ValueError(f"no seed has both runs: cold-start seeds {sorted(r['seed'] for r in cold)}, "
                         f"R1-Zero seeds {sorted(r['seed'] for r in zero)}")
    by = {("cold_start", r["seed"]): r for r in cold} | {("zero", r["seed"]): r for r in zero}

    def block(c_start, c_final, z_start, z_final):
        return {"cold_start_path": {"start": summary(c_start), "final": summary(c_final)},
                "zero_path": {"start": summary(z_start), "final": summary(z_final)},
                "zero_minus_cold_start": {k: paired(c_final, z_final, key) for k, key in
                                          (("pass@1", "correct"), ("format_rate", "format"))},
                "gain_zero_rl_vs_base": {k: paired(z_start, z_final, key) for k, key in
                                         (("pass@1", "correct"), ("format_rate", "format"))},
                "gain_rl_vs_cold_start": {k: paired(c_start, c_final, key) for k, key in
                                          (("pass@1", "correct"), ("format_rate", "format"))}}

    out = {"per_seed": {}}
    for s in seeds:
        c, z = by[("cold_start", s)], by[("zero", s)]
        out["per_seed"][str(s)] = block(c["start"], c["final"], z["start"], z["final"])
    if len(seeds) > 1:
        parts = [[_merge([by[(p, s)][which] for s in seeds], seeds) for which in ("start", "final")]
                 for p in ("cold_start", "zero")]
        out["pooled"] = {"seeds": seeds, **block(parts[0][0], parts[0][1], parts[1][0], parts[1][1])}
    return out


def plot(cold: list[dict], zero: list[dict], comparison: dict, out_png: Path) -> Path:
    """Training curves per step (both paths, every seed) and the held-out start/final of each path and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    styles = ["-", "--", ":", "-."]
    for ax, (key, label) in zip(axes.flat, CURVES):
        for runs, color, name in ((cold, "tab:blue", "RL from cold start"), (zero, "tab:red", "R1-Zero (from base)")):
            for i, run in enumerate(sorted(runs, key=lambda r: r["seed"])):
                pts = [(r["step"], r[key]) for r in run["metrics"] if r.get(key) is not None]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], styles[i % 4], color=color, marker=".",
                        label=f"{name}, seed {run['seed']}")
        ax.set(title=label, xlabel="RL step", ylim=(-0.03, 1.6 if key == "reward/mean" else 1.03))
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    ax = axes.flat[3]
    labels, p1, fmt = [], [], []
    for seed, block in comparison["per_seed"].items():
        for path, name in (("cold_start_path", "cold start"), ("zero_path", "R1-Zero")):
            for which, tag in (("start", "start"), ("final", "after RL")):
                labels.append(f"{name} {tag}\nseed {seed}")
                p1.append(block[path][which]["pass@1"])
                fmt.append(block[path][which]["format_rate"])
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], p1, 0.4, label="held-out pass@1")
    ax.bar([i + 0.2 for i in x], fmt, 0.4, label="held-out format rate")
    ax.set_xticks(list(x), labels, rotation=60, ha="right", fontsize=7)
    ax.set(ylim=(0, 1.05), title="held-out eval (start and end of each path's RL)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def _d(d: dict) -> str:
    if not d or d.get("n", 0) < 2 or math.isnan(d["mean"]):
        return "-"
    if d["all_differences_equal"]:
        return f"{d['mean']:+.3f} on every one of the {d['n']} prompts (no variation: SE and MDE undefined)"
    z = "inf" if math.isinf(d["z"]) else f"{d['z']:.1f}"
    return (f"{d['mean']:+.3f} (SE {d['se']:.3f}, 95% CI [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}], z = {z}; "
            f"MDE {d['mde_80pct_power']:.3f})")


def _made_from(provenance: dict | None) -> str:
    if not provenance:
        return "not recorded"
    head = str(provenance.get("head", "?"))[:7]
    diff = provenance.get("diff_sha1")
    return f"{head} + diff sha1 {diff[:7]}" if diff else f"{head}{' (dirty)' if provenance.get('dirty') else ''}"


def _interval(row: dict, name: str) -> str:
    if f"{name}_upper95_none_seen" in row:
        return f"(none seen: < {row[f'{name}_upper95_none_seen']:.3f}, one-sided 95%)"
    low, high = row[f"{name}_ci95"]
    return f"[{low:.3f}, {high:.3f}]"


def markdown(results: dict) -> str:
    """The generated README section: the numbers of ``results``, nothing interpreted."""
    comp = results["comparison"]
    lines = [BEGIN, "", f"Generated by `bench/r1_zero_vs_cold_start.py` at commit {results['git']['commit'][:7]}"
             f"{' (working tree modified)' if results['git']['dirty'] else ''} from the runs "
             + ", ".join(f"`{r['dir']}`" for r in results["runs"]) + ".", "",
             "Held-out eval of each path's start and final model (reasoning tasks, pass@1 and format rate over "
             "prompts with their 95% interval; a rate 0 on every prompt with its one-sided 95% upper bound):", "",
             "| seed | path | start | start pass@1 | start format | final pass@1 | final format | prompts x samples |",
             "|---|---|---|---|---|---|---|---|"]
    for seed, block in comp["per_seed"].items():
        for path, name, start in (("cold_start_path", "RL from cold start", "cold_start"),
                                  ("zero_path", "R1-Zero", "base")):
            s, f = block[path]["start"], block[path]["final"]
            lines.append(f"| {seed} | {name} | {start} | {s['pass@1']:.3f} | {s['format_rate']:.3f} | "
                         f"{f['pass@1']:.3f} {_interval(f, 'pass@1')} | {f['format_rate']:.3f} "
                         f"{_interval(f, 'format_rate')} | {f['n_prompts']} x {f['samples_per_prompt']} |")
    lines += ["", "Paired differences over the same held-out prompts (mean, standard error, 95% interval, z; MDE: the "
              "smallest effect the comparison finds with 80% power at a two-sided 5% level, 2.8 x SE):", "",
              "| seed | comparison | Δ pass@1 | Δ format rate |", "|---|---|---|---|"]
    blocks = list(comp["per_seed"].items()) + ([("pooled", comp["pooled"])] if "pooled" in comp else [])
    for seed, block in blocks:
        for key, name in (("zero_minus_cold_start", "R1-Zero final − cold-start path final"),
                          ("gain_zero_rl_vs_base", "R1-Zero RL vs base (its start)"),
                          ("gain_rl_vs_cold_start", "RL vs cold start (its start)")):
            lines.append(f"| {seed} | {name} | {_d(block[key]['pass@1'])} | {_d(block[key]['format_rate'])} |")
    lines += ["", "RL budget and settings of each run (from its `reasoning_rl/config.yaml` and `metrics.jsonl`):", "",
              "| run | seed | template | steps | prompts x group | max_new_tokens | temperature | lr | precision "
              "(trainer / rollout) | tokens generated | rows trained / skipped (advantage 0) | RL seconds "
              "| made from |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        b = r["budget"]
        lines.append(f"| {r['path']} | {r['seed']} | {b['template']} | {b['steps_logged']}/{b['steps']} | "
                     f"{b['prompts_per_step']} x {b['group_size']} | {b['sampling']['max_new_tokens']} | "
                     f"{b['sampling']['temperature']} | {b['optim']['lr']} | {b['trainer_precision']} / "
                     f"{b['rollout_dtype']} | {b['tokens_generated']} | {b['rows_trained']} / "
                     f"{b['rows_skipped_zero_advantage']} | {b['rl_seconds']} | {_made_from(r['provenance'])} |")
    lines += ["", "![curves](curves.png)", "", END]
    return "\n".join(lines)


def write_readme(readme: Path, section: str) -> None:
    """Replace the generated section of ``readme`` (append it when the markers are absent)."""
    text = readme.read_text() if readme.is_file() else "# R1-Zero vs reasoning RL from the cold start\n\n"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    readme.write_text(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cold-start", nargs="+", required=True, metavar="RUN_DIR",
                    help="quickstart-config runs stopped after reasoning_rl, one per seed")
    ap.add_argument("--zero", nargs="+", required=True, metavar="RUN_DIR", help="R1-Zero runs, one per seed")
    ap.add_argument("--out", default=str(ROOT / "docs" / "r1_zero"))
    ap.add_argument("--provenance", action="append", default=[], metavar="RUN_DIR=FILE",
                    help="a JSON file saying what a run was made from (commit, ...), for a run without its own "
                         "provenance.json")
    args = ap.parse_args(argv)
    given = {str(Path(k).resolve()): Path(v) for k, _, v in (p.partition("=") for p in args.provenance)}
    cold = [rl_run(Path(d), "cold_start", given.get(str(Path(d).resolve()))) for d in args.cold_start]
    zero = [rl_run(Path(d), "zero", given.get(str(Path(d).resolve()))) for d in args.zero]
    for runs, name in ((cold, "--cold-start"), (zero, "--zero")):
        seeds = [r["seed"] for r in runs]
        if len(set(seeds)) != len(seeds):
            raise SystemExit(f"{name}: two runs of the same seed ({seeds})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    comparison = compare(cold, zero)
    runs = [{"path": path, "dir": r["dir"], "seed": r["seed"], "provenance": r["provenance"], "budget": budget(r),
             "curves": [{"step": m["step"], **{k: m.get(k) for k, _ in CURVES},
                         **{k: m.get(k) for k in ("generated_tokens", "train/rows_trained",
                                                  "train/rows_skipped_zero_advantage", "advantage/zero_fraction")}}
                        for m in r["metrics"]]}
            for path, group in (("cold_start", cold), ("zero", zero)) for r in group]
    results = {"generated_by": "bench/r1_zero_vs_cold_start.py", "git": git_state(ROOT),
               "command": " ".join(["python", "bench/r1_zero_vs_cold_start.py", *(argv or sys.argv[1:])]),
               "mde_factor": MDE_FACTOR, "runs": runs, "comparison": comparison}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(cold, zero, comparison, out / "curves.png")
    write_readme(out / "README.md", markdown(results))
    print(f"wrote {out / 'results.json'}, {out / 'curves.png'}, {out / 'README.md'}")
    for seed, block in comparison["per_seed"].items():
        print(f"seed {seed}: R1-Zero - cold-start path, pass@1 {_d(block['zero_minus_cold_start']['pass@1'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
