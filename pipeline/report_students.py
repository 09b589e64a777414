"""The report's comparison of the two small students (the R1 paper's): the distilled one against the same
student trained by RL alone, their paired difference next to the compute each side spent, what the RL-only
student trained on, and how much of its RL had a signal (groups whose rewards were not all equal)."""
from __future__ import annotations

import math

from .student_compute import side_by_side


def student_comparison(records: list[dict], table: list[dict]) -> dict | None:
    """``{delta, compute, rl_only_budget, rewards, scoring, steps}`` from the distill and student_rl records
    (:func:`pipeline.report.collect`) and the eval table's distill row; None without both stages."""
    by_stage = {r["stage"]: r for r in records}
    if not {"distill", "student_rl"} <= set(by_stage):
        return None
    distill, rl_only = by_stage["distill"]["manifest"], by_stage["student_rl"]["manifest"]
    row = next((r for r in table if r["stage"] == "distill"), {})
    delta = (row.get("target") or {}).get("delta")
    if delta and delta.get("n", 0) >= 2 and math.isfinite(delta.get("ci_high", math.nan)):
        delta = {**delta, "se": (delta["ci_high"] - delta["mean"]) / 1.96}
    steps = [{"step": r["step"], "reward": r.get("reward/mean"),
              "zero_variance_groups": r.get("groups/zero_variance_fraction", r.get("advantage/zero_fraction"))}
             for r in by_stage["student_rl"]["rows"] if r.get("step", 0) > 0]
    scoring = {s: (by_stage[s]["eval"] or {}).get("scoring") for s in ("distill", "student_rl")}
    return {"delta": delta, "compute": side_by_side(distill.get("compute") or rl_only.get("distill_compute"),
                                                    rl_only.get("compute")),
            "rl_only_budget": rl_only.get("rl_only_budget", "steps"), "rewards": rl_only.get("rewards"),
            "scoring": scoring, "steps": steps}


def _flops(v) -> str:
    return "-" if v is None else f"{v:.3g}"


def _rewards(items: list[dict] | None) -> str:
    if not items:
        return "rewards.items (not recorded)"
    return ", ".join(f"{i['name']}×{i.get('weight', 1.0)}" + (f" {i['options']}" if i.get("options") else "")
                     for i in items)


def student_lines(c: dict | None) -> list[str]:
    """The report's section on the two students (empty without both)."""
    if not c:
        return []
    lines = ["## The distilled student vs the RL-only student", ""]
    d = c["delta"]
    if d and d.get("n", 0) >= 2:
        lines.append(f"Reasoning pass@1, distilled − RL-only, paired over {d['n']} held-out prompts: "
                     f"{d['mean']:+.3f} (SE {d.get('se', float('nan')):.3f}, 95% CI [{d['ci_low']:+.3f}, "
                     f"{d['ci_high']:+.3f}], z = {d['z']:.1f}).")
    comp = c["compute"]
    if comp:
        a, b, r = comp["distill"], comp["rl_only"], comp["rl_only_over_distill"]
        lines += ["", "| compute | distilled | RL-only | RL-only / distilled |", "|---|---|---|---|",
                  f"| FLOPs (stages.compute) | {_flops(a['flops'])} | {_flops(b['flops'])} | {r['flops']} |",
                  f"| model tokens processed | {a['tokens']} | {b['tokens']} | {r['tokens']} |",
                  f"| wall seconds (without evals) | {a['seconds']} | {b['seconds']} | {r['seconds']} |"]
    else:
        lines.append("Compute: not recorded by one of the two stages (runs from before the accounting).")
    lines += ["", f"RL-only student: budget `{c['rl_only_budget']}`, rewards {_rewards(c['rewards'])}; "
              f"both evaluated with {c['scoring'].get('distill') or 'the recipe eval'}"
              + ("" if c["scoring"].get("distill") == c["scoring"].get("student_rl")
                 else f" / {c['scoring'].get('student_rl')} (DIFFERENT scorings)") + "."]
    if c["steps"]:
        zv = [s["zero_variance_groups"] for s in c["steps"] if s["zero_variance_groups"] is not None]
        lines.append(f"Its {len(c['steps'])} steps: reward {c['steps'][0]['reward']:.3f} → {c['steps'][-1]['reward']:.3f}; "
                     f"share of groups with all-equal rewards (no GRPO signal) per step: "
                     + (", ".join(f"{v:.2f}" for v in zv) if zv else "-") + ".")
    return lines + [""]
