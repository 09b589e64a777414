"""The RL loop with M rollout engines and with actors that die or hang, end to end through `r1 reasoning-rl`.

A tiny random Llama on the transformers engine (seeded per prompt group, so samples do not depend on the
engine or batch), fp32 everywhere, 3 steps with a checkpoint after each. Every run is compared with one
uninterrupted run: each step recorded exactly once, the same rewards per step (the reward is a checksum of
the completion text, so equal rewards mean equal samples), and the same final weights within a tolerance.
"""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.tracking import read_metrics

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
# Bit-equal in practice (the same samples, fp32, the same checkpoints); the tolerance leaves room for a
# different summation order, e.g. of a trainer group's all-reduced gradients.
ATOL = 1e-5


def _overrides(model_dir, out, *extra):
    return [f"model.name={model_dir}", f"run.output_dir={out}", "run.name=t", "rollout.engine=hf",
            "data.tasks=[{name: arithmetic, n_train: 40, n_test: 4, difficulty: 2}]", "rl.steps=3",
            "rl.prompts_per_step=2", "rl.group_size=4", "rollout.max_new_tokens=8", "rl.eval_every=0",
            "rl.eval_at_ends=false", "rl.save_every=1", "rl.keep_checkpoints=2", "trainer.micro_batch_size=4",
            "rollout.dtype=float32", "trainer.precision=fp32", "rl.kl_coef=0.05",  # a reference actor to kill
            "rewards.items=[{name: 'tests.mixed_rewards:split_groups', weight: 1.0}]",
            # Logical CPUs for every placement group the runs of this module reserve in one Ray session.
            "cluster.num_cpus=24", "cluster.threads=1", *extra]


def _run(model_dir, out, *extra) -> Path:
    assert main(["reasoning-rl", "-c", "configs/quickstart.yaml", *_overrides(model_dir, out, *extra)]) == 0
    return Path(out) / "t" / "reasoning_rl"


def _weights(stage_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(stage_dir / "model" / "model.safetensors"))


def _assert_same_run(stage_dir: Path, baseline: Path, atol: float = ATOL) -> float:
    """Each step once, the baseline's rewards per step, its final weights within ``atol``; returns the largest
    weight difference."""
    rows, base = read_metrics(stage_dir / "metrics.jsonl"), read_metrics(baseline / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ("reward/mean", "response_length/mean", "generated_tokens"):
        assert [r[key] for r in rows] == [r[key] for r in base], key
    mine, theirs = _weights(stage_dir), _weights(baseline)
    assert mine.keys() == theirs.keys()
    worst = max(float((mine[k] - theirs[k]).abs().max()) for k in mine)
    assert worst <= atol, worst
    print(f"{stage_dir.parent.parent.name}: largest final-weight difference from the baseline {worst:.3g}")
    return worst


def _fired(stage_dir: Path) -> list[str]:
    return sorted(p.name for p in (stage_dir.parent / "faults").iterdir())


@pytest.fixture(scope="module")
def baseline(tiny_model_dir, tmp_path_factory):
    """The uninterrupted run (one engine, one trainer); the module's Ray session ends with it."""
    import ray

    out = tmp_path_factory.mktemp("baseline")
    try:
        stage = _run(tiny_model_dir, out)
        rows = read_metrics(stage / "metrics.jsonl")
        assert [r["step"] for r in rows] == [1, 2, 3]
        # The weights moved (a run that trains nothing would make every comparison below vacuous).
        from safetensors.torch import load_file

        start = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
        assert max(float((_weights(stage)[k] - start[k]).abs().max()) for k in start) > 1e-6
        yield stage
    finally:
        from pipeline import placement

        placement.release_placement()
        ray.shutdown()


def test_two_engines_sample_as_one_and_report_balance(baseline, tiny_model_dir, tmp_path):
    stage = _run(tiny_model_dir, tmp_path, "cluster.rollout_engines=2")
    _assert_same_run(stage, baseline)
    for row in read_metrics(stage / "metrics.jsonl"):
        assert row["rollout/engines"] == 2
        assert row["rollout/engine_prompts_max"] == row["rollout/engine_prompts_min"] == 1  # 2 groups, 1 each
        assert 1.0 <= row["rollout/engine_balance"] <= 2.0 and row["time/generate"] > 0
        assert row["rollout/engine_seconds_max"] <= row["time/generate"] + 1e-6
    base = read_metrics(baseline / "metrics.jsonl")[0]
    assert base["rollout/engines"] == 1 and base["rollout/engine_balance"] == 1.0


@pytest.mark.parametrize("fault", ["rollout:generate:2:kill", "reward:score:2:kill",
                                   "reference:batch_logprobs:2:kill", "trainer:train_grpo:2:kill"])
def test_a_killed_actor_is_replaced_and_the_run_matches(baseline, tiny_model_dir, tmp_path, fault):
    extra = ["cluster.rollout_engines=2"] if fault.startswith("rollout") else []  # one engine of two dies
    stage = _run(tiny_model_dir, tmp_path, f"cluster.faults=['{fault}']", *extra)
    assert _fired(stage) == [fault.replace(":", "_")]
    _assert_same_run(stage, baseline)


@pytest.mark.parametrize("fault", [[], ["cluster.faults=['rollout:generate:2:kill']"]], ids=["plain", "engine-killed"])
def test_weights_by_broadcast_reach_every_engine_as_through_the_object_store(baseline, tiny_model_dir, tmp_path,
                                                                            fault):
    # cluster.weight_sync=broadcast: trainer rank 0 and both engines in one gloo group (NCCL on GPUs); a
    # replaced engine makes the group form again and gets the current weights before it serves.
    stage = _run(tiny_model_dir, tmp_path, "cluster.weight_sync=broadcast", "cluster.rollout_engines=2", *fault)
    _assert_same_run(stage, baseline)


def test_a_killed_trainer_worker_resumes_the_group(baseline, tiny_model_dir, tmp_path):
    stage = _run(tiny_model_dir, tmp_path, "cluster.trainer_workers=2", "cluster.faults=['trainer:train_grpo:2:kill']")
    assert _fired(stage) == ["trainer_train_grpo_2_kill"]
    _assert_same_run(stage, baseline, atol=1e-4)  # gradients all-reduced over 2 workers: another summation order


def test_a_killed_driver_resumes_on_rerun(baseline, tiny_model_dir, tmp_path):
    command = [sys.executable, "-c", "import sys; from pipeline.cli import main; sys.exit(main(sys.argv[1:]))",
               "reasoning-rl", "-c", "configs/quickstart.yaml", *_overrides(tiny_model_dir, tmp_path),
               "cluster.num_cpus=8"]
    env = {**os.environ, "R1_FAULTS": "driver:step:2:kill", "R1_LOG_LEVEL": "WARNING"}
    stage = tmp_path / "t" / "reasoning_rl"

    def run() -> int:
        # Its own session: the driver's local Ray cluster is ended with it, whatever state the kill left.
        proc = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
        try:
            return proc.wait(timeout=900)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    assert run() == 1  # os._exit(1) at the start of step 2
    assert [r["step"] for r in read_metrics(stage / "metrics.jsonl")] == [1]
    assert (stage / "checkpoints" / "latest").read_text() == "step_00001"
    assert run() == 0  # the same command again: resumes after step 1, the fault has fired already
    assert json.loads((stage / "manifest.json").read_text())["complete"]
    _assert_same_run(stage, baseline)


def test_a_hung_actor_stops_the_run_with_a_clear_error(baseline, tiny_model_dir, tmp_path, capsys):
    out = _overrides(tiny_model_dir, tmp_path, "cluster.faults=['reward:score:1:hang']", "cluster.timeout_s=40")
    assert main(["reasoning-rl", "-c", "configs/quickstart.yaml", *out]) == 2
    err = capsys.readouterr().err
    assert "reward worker 0: score did not answer within 40 s" in err
