"""The on-policy distillation loop on real Ray actors (tiny models; the transformers engine samples): the
student moves towards the teacher on its own samples, the rollout actor gets every update, and a rerun after
a kill resumes from the checkpoint with the same prompts."""
from pathlib import Path

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.actors import RolloutWorker
from pipeline.tracking import MetricsLogger, read_metrics
from rollout import SamplingSpec
from stages.on_policy_distill import OnPolicyPlan, on_policy_loop
from trainer.teacher_student import DistillTrainer
from trainer.settings import OptimSettings, TrainerSettings

PROMPTS = [[17 + i, 42, 216, 33] for i in range(6)]


@pytest.fixture(scope="module")
def teacher_dir(tiny_model_dir, tmp_path_factory):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    out = tmp_path_factory.mktemp("teacher")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return str(out)


def _run(student, teacher, out_dir, steps, crash_after=None):
    settings = TrainerSettings(precision="fp32", optim=OptimSettings(lr=3e-2), threads=1)
    trainer = ray.remote(DistillTrainer).remote(student, settings, teacher)
    rollout = ray.remote(RolloutWorker).remote("hf", student, {"seed": 0}, 1)
    plan = OnPolicyPlan(prompts=PROMPTS, steps=steps, prompts_per_step=3,
                        sampling=SamplingSpec(n=4, temperature=1.0, max_new_tokens=8, logprobs=False, seed=0),
                        micro_batch_size=4, seed=0, out_dir=out_dir, save_every=2)
    logger = MetricsLogger(out_dir, tensorboard=False)
    try:
        return on_policy_loop(rollout, trainer, plan, logger)
    finally:
        logger.close()
        ray.kill(trainer)
        ray.kill(rollout)


def test_student_moves_towards_the_teacher_and_resumes(tiny_model_dir, teacher_dir, tmp_path, ray_repo):
    out = tmp_path / "run"
    summary = _run(tiny_model_dir, teacher_dir, out, steps=12)
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 13))
    # Measured on the student's own fresh samples each step: averages of the first and last steps. Sampling is
    # seeded, as the pipeline seeds it (unseeded, one CI run fell by only 4%, where others fell by 10%); seeded,
    # every run falls by the same 14.6%; without learning the ratio stays near 1.
    first = sum(r["reverse_kl"] for r in rows[:3]) / 3
    last = sum(r["reverse_kl"] for r in rows[-3:]) / 3
    print(f"reverse KL first {first:.4f} last {last:.4f} ratio {last / first:.3f}")
    assert last < 0.95 * first, (first, last)
    assert all(r["sync_seconds"] >= 0 for r in rows)
    assert Path(summary["model"], "model.safetensors").is_file()

    # A rerun of the finished run's directory (as after a kill past step 10) resumes at the last checkpoint.
    resumed = _run(tiny_model_dir, teacher_dir, out, steps=12)
    rows2 = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows2] == list(range(1, 13)) and resumed["steps"] == 12
    assert rows2[:10] == rows[:10]  # steps before the checkpoint are kept, not redone


def test_no_prompts_is_a_clear_error(tiny_model_dir, teacher_dir, tmp_path, ray_repo):
    plan = OnPolicyPlan(prompts=[], steps=1, prompts_per_step=1, sampling=SamplingSpec(), micro_batch_size=1,
                        seed=0, out_dir=tmp_path)
    with pytest.raises(ValueError, match="no prompts"):
        on_policy_loop(None, None, plan, MetricsLogger(tmp_path, tensorboard=False))
