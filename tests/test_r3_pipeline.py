"""R3 wiring in the pipeline: which engines capture, the rollout batch carries the routing, the step's metrics
line shows the mismatch, the MoE model alias is prepared by a command."""
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.config import load_config
from rollout.types import Completion, Generation


def test_engines_capture_only_when_a_stage_replays_or_it_is_asked():
    from pipeline.evaluation import engine_options

    assert engine_options(load_config("configs/quickstart.yaml", []))["routing_capture"] is False
    assert engine_options(load_config("configs/quickstart-moe.yaml", []))["routing_capture"] is True
    cfg = load_config("configs/quickstart.yaml", ["general_rl.routing_replay=true"])
    assert engine_options(cfg)["routing_capture"] is True
    cfg = load_config("configs/quickstart-moe.yaml", ["rollout.routing_capture=false"])
    assert engine_options(cfg)["routing_capture"] is False


def test_the_moe_config_replays_in_eager_mode_and_stops_after_reasoning_rl():
    cfg = load_config("configs/quickstart-moe.yaml", [])
    assert cfg.model.name == "smollm2-moe" and cfg.rl.routing_replay and not cfg.rl.routing_replay_reference
    assert cfg.rollout.enforce_eager and cfg.recipe.until == "reasoning_rl"


def test_rollout_batch_carries_each_samples_routing():
    from stages.grpo_batch import build_batch

    rows = [np.full((3 + n - 1, 2, 2), n, dtype=np.uint8) for n in (2, 3)]
    gen = Generation(prompt_ids=[1, 2, 3], completions=[
        Completion(text="a", token_ids=[5, 6], logprobs=[-1.0, -1.0], finish_reason="stop", routed_experts=rows[0]),
        Completion(text="b", token_ids=[7, 8, 9], logprobs=[-1.0] * 3, finish_reason="stop", routed_experts=rows[1])])
    plan = SimpleNamespace(loop=SimpleNamespace(group_size=2, advantage_scale="group", overlong_filter=False))
    batch = build_batch([gen], [(1.0, {}), (0.0, {})], plan)
    assert [r.shape for r in batch.routed_experts] == [(4, 2, 2), (5, 2, 2)]
    dense = Generation(prompt_ids=[1], completions=[Completion("c", [4], [-1.0], "stop")] * 2)
    assert build_batch([dense], [(1.0, {}), (0.0, {})], plan).routed_experts is None


def test_step_metrics_show_the_routing_mismatch():
    from rollout.types import RolloutBatch
    from stages.step_metrics import step_metrics

    batch = RolloutBatch(prompt_ids=[[1], [1]], response_ids=[[2], [3]], group_size=2, rewards=[1.0, 0.0])
    train = {"router_mismatch": 0.0, "router_mismatch_unreplayed": 0.012, "token_mismatch": 0.0,
             "routers_replayed_fraction": 1.0}
    seconds = {"step": 2.0, "generate": 1.0, "train": 0.5}
    m = step_metrics([(1.0, {}), (0.0, {})], batch, {"generated_tokens": 2}, train, seconds, 0.1)
    assert m["r3/router_mismatch"] == 0.0 and m["r3/router_mismatch_unreplayed"] == 0.012


def test_an_unprepared_moe_alias_names_the_command_that_makes_it(tmp_path):
    from trainer.model_io import resolve_model

    with pytest.raises(RuntimeError, match="r1 prepare-model smollm2-moe"):
        resolve_model("smollm2-moe", cache=tmp_path)


def test_prepare_model_takes_an_alias_or_overrides():
    from pipeline.cli import build_parser

    args = build_parser().parse_args(["prepare-model", "-c", "configs/quickstart.yaml", "smollm2-moe", "run.seed=1"])
    assert args.model == "smollm2-moe" and args.overrides == ["run.seed=1"]
    assert build_parser().parse_args(["prepare-model", "smollm2-moe"]).model == "smollm2-moe"
