"""`r1 distill` (stage 6) and `r1 student-rl`: a smaller dense student learns from the final model by SFT
on the teacher's verified samples (the R1 paper's distillation), and, for the paper's comparison, the same
student trained by reasoning RL alone."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

from stages.manifest import read_manifest, stage_model

from .config import RecipeConfig, SFTConfig, resolve
from .student_compute import distill_budget, distill_compute, side_by_side

log = logging.getLogger("r1.distill")


def student_init(cfg: RecipeConfig) -> str:
    """The untrained student: ``distill.student``, else ``model.name`` cut to ``distill.student_layers``."""
    from trainer.model_io import make_student, resolve_model

    if cfg.distill.student:
        return resolve_model(cfg.distill.student)
    return make_student(resolve_model(cfg.model.name), cfg.distill.student_layers,
                        cfg.run_dir() / "student_init")


def run_distill(cfg: RecipeConfig, *, out: str | None = None) -> dict:
    """Teacher samples (verified, filtered) -> SFT of the student on them."""
    from stages.manifest import read_manifest

    from .rejection import verified_dataset
    from .sft import read_chat_examples, run_sft

    started = time.time()
    d = cfg.distill
    out_dir = Path(out) if out else cfg.run_dir() / "distill"
    teacher = d.teacher or stage_model(cfg.run_dir(), "general_rl") or str(cfg.run_dir() / "general_rl" / "model")
    student = student_init(cfg)
    feature = d.feature.model_dump() if d.feature.weight > 0 else None
    if feature:  # a layer out of range: one line now, not after the teacher's sampling
        check_feature_layers(feature, student, teacher)
    data_dir = out_dir / "teacher_data"
    stats_file = data_dir / "stats.json"
    curated = cfg.run_dir() / "rejection_sample" / "data.jsonl"
    use_curated = d.with_rejection_data and curated.is_file()
    if not stats_file.is_file():  # a rerun after a crash keeps the teacher's finished samples
        verified_dataset(cfg, teacher, data_dir, prompts=d.prompts, n_samples=d.n_samples,
                         sampling=resolve(d.sampling, cfg.rollout), max_per_prompt=d.max_per_prompt,
                         non_reasoning_ratio=cfg.rejection.non_reasoning_ratio, allow_empty=use_curated)
    examples = read_chat_examples(str(data_dir / "data.jsonl"), field="distill teacher data")
    if use_curated:
        extra = read_chat_examples(str(curated), field="rejection_sample data")
        for ex in extra:  # ids of both sets come from the same prompts; keep them apart
            ex["id"] = f"rs:{ex.get('id')}"
        examples += extra
    sft = SFTConfig(epochs=d.epochs, batch_size=d.batch_size, optim=d.optim, max_length=cfg.sft.max_length,
                    save_every=cfg.sft.save_every, packing=cfg.sft.packing, eval=False)
    finished_sft = read_manifest(out_dir)  # written by the SFT loop when it finishes
    if d.on_policy.steps and finished_sft and finished_sft.get("complete"):
        summary = finished_sft  # a rerun after a crash in the on-policy part
    else:
        summary = run_sft(cfg, sft, examples, out_dir=out_dir, stage="distill", init_model=student, evaluate=False,
                          teacher=teacher if d.kl_weight or feature else None, kl_weight=d.kl_weight,
                          kl_temperature=d.kl_temperature, feature=feature)
    if d.on_policy.steps:
        summary["sft_model"] = summary["model"]
        summary.update(run_on_policy(cfg, student=summary["model"], teacher=teacher, out_dir=out_dir / "on_policy"))
    stats = json.loads(stats_file.read_text())
    summary.update({"teacher": teacher, "student_init": student, "teacher_rows": stats["rows"],
                    "rows": len(examples),
                    "teacher_acceptance": stats["acceptance"].get("all", {}).get("acceptance_rate")})
    summary["compute"] = distill_compute(cfg, out_dir, teacher=teacher, student=student, curated=use_curated,
                                         seconds=time.time() - started)
    return summary


def check_feature_layers(feature: dict, student: str, teacher: str) -> list[tuple[int, int]]:
    """``distill.feature``'s layer pairs checked against the two models' depths (their configs only)."""
    from transformers import AutoConfig

    from trainer.feature_distill import layer_pairs
    from trainer.model_io import resolve_model

    n_student, n_teacher = (AutoConfig.from_pretrained(resolve_model(m)).get_text_config().num_hidden_layers
                            for m in (student, teacher))
    return layer_pairs(feature["student_layers"], feature["teacher_layers"], n_student, n_teacher)


def run_on_policy(cfg: RecipeConfig, *, student: str, teacher: str, out_dir: Path) -> dict:
    """On-policy distillation of ``student`` towards ``teacher`` on the reasoning train prompts."""
    import ray
    from transformers import AutoTokenizer

    from rollout import SamplingSpec
    from stages.on_policy_distill import OnPolicyPlan, on_policy_loop
    from trainer.teacher_student import DistillTrainer
    from trainer.model_io import resolve_model

    from .cluster import release_rollout, start_rollout, start_trainer, trainer_settings
    from .data import build_splits
    from tasks.prompting import render_prompt_ids
    from .tracking import MetricsLogger

    d = cfg.distill.on_policy
    tokenizer = AutoTokenizer.from_pretrained(student)
    train_samples, _ = build_splits(cfg)
    prompts = [render_prompt_ids(tokenizer, s, cfg.data.system_prompt, cfg.data.template) for s in train_samples]
    sampling = SamplingSpec(n=d.samples, **resolve(d.sampling, cfg.rollout).model_dump(), seed=cfg.run.seed,
                            logprobs=False)
    plan = OnPolicyPlan(prompts=prompts, steps=d.steps, prompts_per_step=d.prompts_per_step,
                        sampling=sampling, micro_batch_size=cfg.trainer.micro_batch_size, seed=cfg.run.seed,
                        out_dir=out_dir, save_every=cfg.sft.save_every)
    settings = trainer_settings(cfg, plan.steps, d.optim)
    trainer = start_trainer(cfg, student, settings, DistillTrainer, resolve_model(teacher))
    rollout = start_rollout(cfg, student)
    logger = MetricsLogger(out_dir, tensorboard=cfg.logging.tensorboard, run_name=f"{cfg.run.name}-on-policy")
    try:
        summary = on_policy_loop(rollout, trainer, plan, logger)
    finally:
        logger.close()
        ray.kill(trainer)
        release_rollout(rollout)
    return {"model": summary["model"], "on_policy_steps": summary["steps"],
            "on_policy_final_reverse_kl": summary["final_reverse_kl"]}


def student_rl_job(cfg: RecipeConfig, budget_flops: float | None = None):
    """The R1 paper's comparison: reasoning RL (the ``rl`` section) of the untrained student, no teacher, on
    ``distill.rl_only_rewards`` (default ``rewards.items``); ``distill.rl_only_steps`` steps, or with
    ``budget_flops`` until its compute reaches them (``distill.rl_only_max_steps`` at most)."""
    from .rl import GRPOJob

    d = cfg.distill
    section = cfg.rl.model_copy(update={"steps": d.rl_only_steps or cfg.rl.steps})
    rewards = list(d.rl_only_rewards if d.rl_only_rewards is not None else cfg.rewards.items)
    job = GRPOJob("student_rl", section, rewards, list(cfg.data.tasks), student_init(cfg))
    return job if budget_flops is None else replace(job, budget_flops=budget_flops, max_steps=d.rl_only_max_steps)


def run_student_rl(cfg: RecipeConfig, *, out: str | None = None) -> dict:
    """The same student trained by reasoning RL alone; its manifest has its compute and, where the distill
    stage recorded one, the distillation's beside it (``compute_vs_distill``)."""
    from .rl import run_grpo

    match = cfg.distill.rl_only_budget == "match_distill"
    distilled = distill_budget(cfg.run_dir()) if match else (read_manifest(cfg.run_dir() / "distill") or {}).get("compute")
    job = student_rl_job(cfg, distilled["flops"] if match else None)
    summary = run_grpo(cfg, job, out=out)
    summary.update({"rl_only_budget": cfg.distill.rl_only_budget, "distill_compute": distilled,
                    "compute_vs_distill": side_by_side(distilled, summary.get("compute")),
                    "rewards": [item.model_dump() for item in job.rewards]})
    return summary
