"""`r1 report runs/<name>`: what each stage of a recipe run did, as a Markdown page with a table and PNGs.

Reads only the run folder (manifests, ``eval/eval.json``, ``metrics.jsonl``, rejection statistics), so a
report can be rebuilt at any time, for a finished run or one still in progress.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from stages.manifest import read_manifest

from .recipe import STAGE_NAMES, recipe_stages
from .report_students import student_comparison, student_lines

log = logging.getLogger("r1.report")


def recorded_variant(run_dir: str | Path) -> str:
    """The recipe variant (``recipe.variant``) the run was last run for: the newest stage manifest's; ``r1``
    when no manifest records one (runs from before the variants)."""
    found = []
    for name in STAGE_NAMES:
        manifest = read_manifest(Path(run_dir) / name)
        if manifest and manifest.get("recipe_variant"):
            found.append(((Path(run_dir) / name / "manifest.json").stat().st_mtime, manifest["recipe_variant"]))
    return max(found)[1] if found else "r1"


def collect(run_dir: str | Path, variant: str | None = None) -> list[dict]:
    """One record per stage of the recipe ``variant`` (default: :func:`recorded_variant`) that has a folder:
    its row of the recipe table (target, comparisons), manifest, eval summary (all tasks) and metric rows."""
    from .tracking import read_metrics

    run_dir = Path(run_dir)
    records = []
    for row in recipe_stages(variant or recorded_variant(run_dir)):
        name = row.name
        stage_dir = run_dir / name
        if not stage_dir.is_dir():
            continue
        manifest = read_manifest(stage_dir) or {}
        eval_file = stage_dir / "eval" / "eval.json"
        evaluation = json.loads(eval_file.read_text()) if eval_file.is_file() else None
        metrics_file = stage_dir / "metrics.jsonl"
        rows = read_metrics(metrics_file) if metrics_file.is_file() else []
        stats_file = stage_dir / "stats.json"
        stats = json.loads(stats_file.read_text()) if stats_file.is_file() else None
        records.append({"stage": name, "row": row, "dir": stage_dir, "manifest": manifest, "eval": evaluation,
                        "rows": rows, "stats": stats})
    if not records:
        raise FileNotFoundError(f"{run_dir}: no stage folders ({', '.join(STAGE_NAMES)}); is this a run dir?")
    return records


def _overall(evaluation: dict | None) -> dict | None:
    if not evaluation:
        return None
    tasks = evaluation["tasks"]
    return tasks.get("all") or next(iter(tasks.values()))


def eval_table(records: list[dict]) -> list[dict]:
    """Rows of the held-out table: stage, pass@1 with its 95% CI, format rate, pass@1 per task."""
    table = []
    for rec in records:
        row = _overall(rec["eval"])
        if row is None:
            continue
        per_task = {t: m["pass_at"].get("1") for t, m in rec["eval"]["tasks"].items() if t != "all"}
        table.append({"stage": rec["stage"], "pass@1": row["pass_at"].get("1"), "ci": row["pass1_ci95"],
                      "format_rate": row["format_rate"], "n_prompts": row["n_prompts"],
                      "n_samples": row["n_samples"], "per_task": per_task,
                      "maj": {k: v for k, v in row["maj_at"].items() if k != "1"},
                      "pass_k": {k: v for k, v in row["pass_at"].items() if k != "1"}})
    by_stage = {rec["stage"]: rec for rec in records}
    for row in table:
        stage = by_stage[row["stage"]]["row"]  # the recipe's row: what the stage is compared with
        ref = stage.compared_with
        if ref in by_stage and by_stage[ref]["eval"]:
            row["vs"] = ref
            row["delta"] = _paired(by_stage[ref]["dir"], by_stage[row["stage"]]["dir"], "correct")
            row["delta_format"] = _paired(by_stage[ref]["dir"], by_stage[row["stage"]]["dir"], "format")
        if stage.target_delta:
            ref, scope, key = stage.target_delta
            if ref in by_stage and by_stage[ref]["eval"]:
                tasks = _scope_tasks(row, scope, _general_tasks(by_stage))
                row["target"] = {"vs": ref, "scope": scope, "metric": "pass@1" if key == "correct" else "format rate",
                                 "delta": _paired(by_stage[ref]["dir"], by_stage[row["stage"]]["dir"], key, tasks)}
    return table


def _general_tasks(by_stage: dict) -> set[str]:
    """Names of the run's general (non-reasoning) tasks, from a stage's saved config."""
    import yaml

    for rec in by_stage.values():
        config = rec["dir"] / "config.yaml"
        if config.is_file():
            tree = yaml.safe_load(config.read_text()) or {}
            return {t["name"] for t in (tree.get("general_rl") or {}).get("general_tasks") or []}
    return set()


def _scope_tasks(row: dict, scope: str, general: set[str]) -> set[str] | None:
    if scope == "all":
        return None
    tasks = set(row["per_task"])
    return tasks & general if scope == "general" else tasks - general


def _paired(before_dir: Path, after_dir: Path, key: str, tasks=None) -> dict | None:
    from stages.eval_stats import paired_difference, per_prompt_rates

    a, b = (Path(d) / "eval" / "eval_samples.jsonl" for d in (before_dir, after_dir))
    if not (a.is_file() and b.is_file()):
        return None
    return paired_difference(per_prompt_rates(a, key, tasks), per_prompt_rates(b, key, tasks))


def plot_eval_bars(table: list[dict], out_png: Path) -> Path:
    """Held-out pass@1 (with 95% CI) and format rate per stage; pass@1 per task per stage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    stages = [r["stage"] for r in table]
    x = np.arange(len(stages))
    fig, (ax, task_ax) = plt.subplots(1, 2, figsize=(13, 4.2))
    p1 = np.array([r["pass@1"] or 0 for r in table])
    err = np.array([[p - r["ci"][0], r["ci"][1] - p] for p, r in zip(p1, table)]).T
    ax.bar(x - 0.2, p1, 0.4, yerr=err, capsize=3, label="pass@1 (95% CI)")
    ax.bar(x + 0.2, [r["format_rate"] for r in table], 0.4, label="format rate")
    ax.set_xticks(x, stages, rotation=30, ha="right")
    ax.set(ylim=(0, 1.05), title="held-out, all tasks of its eval")
    ax.legend(loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    tasks = sorted({t for r in table for t in r["per_task"]})
    width = 0.8 / max(1, len(tasks))
    for i, task in enumerate(tasks):
        task_ax.bar(x - 0.4 + width * (i + 0.5), [r["per_task"].get(task) or 0 for r in table], width, label=task)
    task_ax.set_xticks(x, stages, rotation=30, ha="right")
    task_ax.set(ylim=(0, 1.05), title="held-out pass@1 per task")
    task_ax.legend(loc="upper left", fontsize=8)
    task_ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def plot_stage_curves(records: list[dict], out_png: Path) -> Path | None:
    """One panel per trained stage: SFT loss, RL reward / accuracy / format rate, reward-model loss and accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [r for r in records if r["rows"]]
    if not panels:
        return None
    cols = min(3, len(panels))
    rows_n = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.6 * cols, 3.4 * rows_n), squeeze=False)
    for ax, rec in zip(axes.flat, panels):
        keys = [("loss", "loss")]
        if any("reward/mean" in r for r in rec["rows"]):
            keys = [("reward/mean", "reward"), ("accuracy", "accuracy"), ("format_rate", "format rate")]
        elif any("accuracy" in r for r in rec["rows"]):
            keys = [("loss", "loss"), ("accuracy", "pair accuracy")]
        for key, label in keys:
            pts = [(r["step"], r[key]) for r in rec["rows"] if r.get(key) is not None and r.get("step", 0) > 0]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=label)
        ax.set(title=rec["stage"], xlabel="step")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def _eval_size(table: list[dict]) -> str:
    """'N prompts', or, where stages were evaluated on different task sets (``eval.general_stages``), the
    prompts of each set and the stages that saw it."""
    sizes: dict[tuple[int, tuple[str, ...]], list[str]] = {}
    for r in table:
        sizes.setdefault((r["n_prompts"], tuple(sorted(r["per_task"]))), []).append(r["stage"])
    if len(sizes) == 1:
        return f"{table[0]['n_prompts']} prompts"
    return "; ".join(f"{n} prompts ({', '.join(tasks)}) on {', '.join(stages)}"
                     for (n, tasks), stages in sizes.items()) + ";"


def _fmt(v, digits=3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def render_markdown(run_dir: Path, records: list[dict], table: list[dict], images: list[Path],
                    variant: str = "r1") -> str:
    """The report page: held-out table, per-stage facts (time, memory, data kept), plots."""
    lines = [f"# R1 recipe report: `{run_dir}`", ""]
    if variant == "zero":
        lines += ["Recipe variant `zero` (R1-Zero): reasoning RL straight from the base model, no cold start.", ""]
    rows = {rec["stage"]: rec["row"] for rec in records}
    if table:
        tasks = sorted({t for r in table for t in r["per_task"]})
        n = table[0]
        lines += [f"Held-out eval of every stage's model: {_eval_size(table)} x {n['n_samples']} samples, "
                  "pass@1 with a 95% confidence interval over prompts.", "",
                  "| stage | pass@1 | 95% CI | format rate | " + " | ".join(f"{t} pass@1" for t in tasks)
                  + " | change vs | Δ pass@1 (paired 95% CI) | Δ format | targets "
                  "| Δ of the target (paired 95% CI) |",
                  "|---|---|---|---|" + "---|" * len(tasks) + "---|---|---|---|---|"]
        for r in table:
            lines.append(f"| {r['stage']} | {_fmt(r['pass@1'])} | [{_fmt(r['ci'][0])}, {_fmt(r['ci'][1])}] | "
                         f"{_fmt(r['format_rate'])} | "
                         + " | ".join(_fmt(r["per_task"].get(t)) for t in tasks)
                         + f" | {r.get('vs', '')} | {_delta(r.get('delta'))} | {_delta(r.get('delta_format'))} | "
                         f"{rows[r['stage']].target} | {_target(r.get('target'))} |")
        lines += ["", "Δ: the change against the named stage, paired over the same prompts (mean of per-prompt "
                  "differences, 95% interval, z). Δ of the target: the metric the stage is for, on its tasks "
                  "(reasoning = rule-verified tasks, general = general_rl.general_tasks), against the stage named.",
                  ""]
    lines += student_lines(student_comparison(records, table))  # the two small students, with their compute
    seconds = [r["manifest"].get("seconds") or 0 for r in records]
    peaks = [max(r["manifest"].get("stage_peak_memory_gib") or 0, r["manifest"].get("peak_memory_gib") or 0)
             for r in records]
    lines += ["## Stages", "", f"Wall time of the stages: {sum(seconds) / 60:.1f} min; peak memory of any stage "
              f"(driver + Ray processes, PSS): {max(peaks):.2f} GiB.", "",
              "| stage | complete | seconds | peak memory (GiB) | notes |", "|---|---|---|---|---|"]
    for rec in records:
        m = rec["manifest"]
        lines.append(f"| {rec['stage']} | {'yes' if m.get('complete') else 'no'} | {m.get('seconds', '-')} | "
                     f"{m.get('stage_peak_memory_gib', '-')} | {_notes(rec)} |")
    lines.append("")
    for rec in records:
        if rec["stats"] and "acceptance" in rec["stats"]:
            lines += [f"### {rec['stage']}: acceptance per task", "", "| task | prompts | candidates | kept | "
                      "acceptance | prompts covered |", "|---|---|---|---|---|---|"]
            for task, a in rec["stats"]["acceptance"].items():
                lines.append(f"| {task} | {a['prompts']} | {a['candidates']} | {a['kept']} | "
                             f"{_fmt(a['acceptance_rate'])} | {_fmt(a['prompt_coverage'])} |")
            lines += ["", f"Rejected: {json.dumps(rec['stats']['rejection_reasons'])}; "
                      f"non-reasoning rows mixed in: {rec['stats']['non_reasoning']}.", ""]
    for img in images:
        lines += [f"![{img.stem}]({img.name})", ""]
    return "\n".join(lines)


def _delta(d: dict | None) -> str:
    if not d or d.get("n", 0) < 2:
        return ""
    return f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}], z={d['z']:.1f}"


def _target(t: dict | None) -> str:
    if not t or not _delta(t.get("delta")):
        return ""
    return f"{t['scope']} {t['metric']} vs {t['vs']}: {_delta(t['delta'])}"


def _notes(rec: dict) -> str:
    m, parts = rec["manifest"], []
    if m.get("eval_accuracy") is not None:
        parts.append(f"held-out pair accuracy {m['eval_accuracy']:.3f} ({m.get('eval_pairs')} pairs)")
    if m.get("rows") is not None and rec["stage"] == "rejection_sample":
        parts.append(f"{m['rows']} SFT rows, acceptance {_fmt(m.get('acceptance_rate'))}")
    if m.get("teacher_rows") is not None:
        parts.append(f"{m['teacher_rows']} teacher rows")
    if m.get("steps") is not None:
        parts.append(f"{m['steps']} steps")
    if m.get("peak_memory_gib") is not None:
        parts.append(f"RL peak {m['peak_memory_gib']} GiB")
    if (m.get("compute") or {}).get("flops") and rec["stage"] in ("distill", "student_rl"):  # stages.compute
        parts.append(f"compute {m['compute']['flops']:.3g} FLOPs, {m['compute'].get('seconds')} s")
    return "; ".join(parts)


def write_report(run_dir: str | Path, out: str | Path | None = None, variant: str | None = None) -> Path:
    """Write ``report.md``, ``eval_by_stage.png``, ``stage_curves.png`` and ``report.json`` (default: ``<run>/report``)
    for the stages of the recipe ``variant`` (default: the one the run was last run for)."""
    run_dir = Path(run_dir)
    out_dir = Path(out) if out else run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    variant = variant or recorded_variant(run_dir)
    records = collect(run_dir, variant)
    table = eval_table(records)
    images = []
    if table:
        images.append(plot_eval_bars(table, out_dir / "eval_by_stage.png"))
    curves = plot_stage_curves(records, out_dir / "stage_curves.png")
    if curves:
        images.append(curves)
    (out_dir / "report.md").write_text(render_markdown(run_dir, records, table, images, variant) + "\n")
    stages = {r["stage"]: {k: v for k, v in r["manifest"].items() if isinstance(v, (int, float, str, bool, type(None)))}
              for r in records}
    summary = {"recipe_variant": variant, "table": table, "stages": stages,
               "students": student_comparison(records, table)}
    (out_dir / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    return out_dir / "report.md"
