"""The compute of the two ways the recipe makes its small student, counted alike (:mod:`stages.compute`):
distillation (the teacher's sampling, the curated data's sampling, the student's SFT, a teacher scoring that
data, on-policy steps) and RL alone (its GRPO steps: ``pipeline.rl.run_grpo`` records them). The RL-only
student's budget under ``distill.rl_only_budget: match_distill`` is the distill stage's recorded FLOPs."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from stages.compute import part, sampling_part, sft_compute, total
from stages.manifest import read_manifest

from .config import RecipeConfig

log = logging.getLogger("r1.student_compute")


def distill_compute(cfg: RecipeConfig, out_dir: Path, *, teacher: str, student: str, curated: bool,
                    seconds: float) -> dict:
    """The distill stage's compute, from what it wrote under ``out_dir``: the teacher's sampling
    (``teacher_data/stats.json``), the rejection_sample stage's when its data was trained on (``curated``;
    charged whole to the student, though the SFT stage reads it too), the SFT (``metrics.jsonl``; with the
    teacher's forward over the same tokens when it scores them: logit KL or feature distillation) and the
    on-policy steps (``on_policy/metrics.jsonl``). ``seconds``: the stage's wall time without its eval; the
    curated sampling's own seconds are in its part."""
    from stages.compute import param_count
    from trainer.model_io import resolve_model

    from .tracking import read_metrics

    d = cfg.distill
    n_teacher, n_student = param_count(resolve_model(teacher)), param_count(resolve_model(student))
    parts = {"teacher_sampling": sampling_part(n_teacher, **_sampled(cfg, out_dir / "teacher_data", teacher),
                                               model=str(teacher))}
    rs_dir = cfg.run_dir() / "rejection_sample"
    if curated and not (rs_dir / "stats.json").is_file():
        log.warning("%s: no stats.json; the curated data's sampling is not counted in the distill stage's compute",
                    rs_dir)
    elif curated:
        source = (read_manifest(rs_dir) or {}).get("source_model") or str(cfg.run_dir() / "reasoning_rl" / "model")
        parts["curated_sampling"] = sampling_part(param_count(resolve_model(source)), **_sampled(cfg, rs_dir, source),
                                                  model=source, seconds=(read_manifest(rs_dir) or {}).get("seconds"))
    scored = bool(d.kl_weight or _feature_on(cfg))
    parts.update(sft_compute(read_metrics(out_dir / "metrics.jsonl") if (out_dir / "metrics.jsonl").is_file() else [],
                             n_student, teacher_params=n_teacher if scored else None))
    on_policy = out_dir / "on_policy" / "metrics.jsonl"
    if d.on_policy.steps and on_policy.is_file():
        rows = [r for r in read_metrics(on_policy) if r.get("step", 0) > 0]
        prompt, generated, trained = (int(sum(r.get(k, 0) for r in rows)) for k in
                                      ("compute/prompt_tokens", "generated_tokens", "tokens_processed"))
        parts["on_policy_sampling"] = sampling_part(n_student, prompt, generated)
        parts["on_policy_teacher"] = part(n_teacher, forward_tokens=trained)
        parts["on_policy_train"] = part(n_student, trained_tokens=trained)
    return total(parts, seconds)


def _feature_on(cfg: RecipeConfig) -> bool:
    feature = getattr(cfg.distill, "feature", None)  # distill.feature: feature distillation (its teacher forward)
    return bool(feature is not None and getattr(feature, "weight", 0))


def _sampled(cfg: RecipeConfig, data_dir: Path, model: str) -> dict:
    """``{prompt_tokens, generated_tokens}`` of a sampling stage's folder: its ``stats.json`` counts, else
    (written before they existed) its ``candidates.jsonl`` tokenized again, prompts rendered from the train
    split by id, marked ``estimated``."""
    stats = json.loads((data_dir / "stats.json").read_text())
    if "tokens" in stats:
        return dict(stats["tokens"])
    from transformers import AutoTokenizer

    from tasks.prompting import render_prompt_ids
    from trainer.model_io import resolve_model

    from .data import build_splits

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(model))
    by_id = {str(s.get("id")): s for s in build_splits(cfg)[0]}
    ids, generated = set(), 0
    with open(data_dir / "candidates.jsonl") as fh:
        for line in fh:
            row = json.loads(line)
            ids.add(str(row.get("id")))
            generated += len(tokenizer(row["completion"], add_special_tokens=False)["input_ids"]) + 1  # + EOS
    prompt = sum(len(render_prompt_ids(tokenizer, by_id[i], cfg.data.system_prompt, cfg.data.template)) for i in ids if i in by_id)
    log.info("%s: no token counts in stats.json (an older run); counted again from candidates.jsonl", data_dir)
    return {"prompt_tokens": prompt, "generated_tokens": generated, "estimated": True}


def distill_budget(run_dir: Path) -> dict:
    """The finished distill stage's compute record (its manifest's ``compute``): what
    ``rl_only_budget: match_distill`` trains the RL-only student to. Missing: an error in one line."""
    manifest = read_manifest(Path(run_dir) / "distill") or {}
    if not manifest.get("complete"):
        raise FileNotFoundError(f"distill.rl_only_budget=match_distill: no finished distill stage under "
                                f"{Path(run_dir) / 'distill'}; run it first (r1 run --from distill)")
    if not (manifest.get("compute") or {}).get("flops"):
        raise ValueError(f"distill.rl_only_budget=match_distill: {Path(run_dir) / 'distill' / 'manifest.json'} "
                         "has no compute record (written before r1 counted it); run the distill stage again")
    return manifest["compute"]


def side_by_side(distill: dict | None, rl_only: dict | None) -> dict | None:
    """The two students' compute next to each other: FLOPs, token passes, wall seconds and the RL-only
    student's share of the distillation's (>= 1: it had at least as much)."""
    if not distill or not rl_only:
        return None

    def ratio(key: str):
        a, b = distill.get(key), rl_only.get(key)
        return round(b / a, 3) if a and b is not None else None

    return {"distill": {k: distill.get(k) for k in ("flops", "tokens", "seconds")},
            "rl_only": {k: rl_only.get(k) for k in ("flops", "tokens", "seconds", "steps")},
            "rl_only_over_distill": {k: ratio(k) for k in ("flops", "tokens", "seconds")}}
