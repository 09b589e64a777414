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
    cfg = load_config("configs/quickstart-moe.yaml", ["rollout.routing_capture=false", "rl.routing_replay=false"])
    assert engine_options(cfg)["routing_capture"] is False


def test_replay_with_the_capture_turned_off_is_refused_at_load_in_one_line():
    with pytest.raises(ValueError, match="rl.routing_replay=true with rollout.routing_capture=false") as err:
        load_config("configs/quickstart-moe.yaml", ["rollout.routing_capture=false"])
    assert "\n" not in str(err.value).strip()


def test_the_moe_config_replays_in_eager_mode_and_stops_after_reasoning_rl():
    cfg = load_config("configs/quickstart-moe.yaml", [])
    assert cfg.model.name == "smollm2-moe" and cfg.rl.routing_replay and not cfg.rl.routing_replay_reference
    assert cfg.rollout.enforce_eager and cfg.recipe.until == "reasoning_rl"


PLAN = SimpleNamespace(loop=SimpleNamespace(group_size=2, advantage_scale="group", overlong_filter=False))


def test_the_coverage_minimum_is_an_rl_setting_that_reaches_the_trainer():
    from pipeline.rl import grpo_settings

    cfg = load_config("configs/quickstart-moe.yaml", ["rl.routing_min_coverage=0.5"])
    assert grpo_settings(cfg).routing_min_coverage == 0.5
    assert grpo_settings(cfg, cfg.general_rl).routing_min_coverage == 0.9  # general RL has its own, default 0.9
    with pytest.raises(ValueError, match="rl.routing_min_coverage"):
        load_config("configs/quickstart-moe.yaml", ["rl.routing_min_coverage=1.5"])


def test_rollout_batch_carries_each_samples_routing_and_the_engines_counts():
    from stages.grpo_batch import build_batch

    rows = [np.full((3 + n - 1, 2, 2), n, dtype=np.uint8) for n in (2, 3)]
    gen = Generation(prompt_ids=[1, 2, 3], completions=[
        Completion(text="a", token_ids=[5, 6], logprobs=[-1.0, -1.0], finish_reason="stop", routed_experts=rows[0],
                   routing_counts={"rows_unknown": 4, "rows_missing": 4, "noncontiguous": 0}),
        Completion(text="b", token_ids=[7, 8, 9], logprobs=[-1.0] * 3, finish_reason="stop", routed_experts=rows[1],
                   routing_counts={"rows_unknown": 1, "rows_missing": 0, "noncontiguous": 2})])
    batch = build_batch([gen], [(1.0, {}), (0.0, {})], PLAN)
    assert [r.shape for r in batch.routed_experts] == [(4, 2, 2), (5, 2, 2)]
    assert batch.routing_counts == {"rows_unknown": 5, "rows_missing": 4, "noncontiguous": 2}
    dense = Generation(prompt_ids=[1], completions=[Completion("c", [4], [-1.0], "stop")] * 2)
    dense_batch = build_batch([dense], [(1.0, {}), (0.0, {})], PLAN)
    assert dense_batch.routed_experts is None and dense_batch.routing_counts == {}


def test_step_metrics_show_the_routing_figures_and_the_engines_counts():
    from rollout.types import RolloutBatch
    from stages.step_metrics import step_metrics

    batch = RolloutBatch(prompt_ids=[[1], [1]], response_ids=[[2], [3]], group_size=2, rewards=[1.0, 0.0],
                         routing_counts={"rows_unknown": 3, "rows_missing": 2, "noncontiguous": 1})
    train = {"router_mismatch_own": 0.0105, "token_mismatch_own": 0.27, "replay_plumbing_mismatch": 0.0,
             "routing_coverage": 0.98}
    seconds = {"step": 2.0, "generate": 1.0, "train": 0.5}
    m = step_metrics([(1.0, {}), (0.0, {})], batch, {"generated_tokens": 2}, train, seconds, 0.1)
    assert m["r3/router_mismatch_own"] == 0.0105 and m["r3/token_mismatch_own"] == 0.27
    assert m["r3/replay_plumbing_mismatch"] == 0.0 and m["r3/routing_coverage"] == 0.98
    assert (m["r3/engine_rows_unknown"], m["r3/engine_rows_missing"], m["r3/engine_noncontiguous"]) == (3, 2, 1)
    dense = RolloutBatch(prompt_ids=[[1], [1]], response_ids=[[2], [3]], group_size=2, rewards=[1.0, 0.0])
    m = step_metrics([(1.0, {}), (0.0, {})], dense, {"generated_tokens": 2}, {}, seconds, 0.1)
    assert not any(k.startswith("r3/") for k in m)


def test_engine_counts_travel_from_a_capture_to_the_step_line():
    """The engine's capture counters for a sample with no routing returned (what a GPU engine without
    routed_experts hands over) reach the batch and the step's metrics line."""
    from rollout.routing_capture import pad_rows, sample_counts
    from stages.grpo_batch import build_batch
    from stages.step_metrics import routing_metrics

    completions = []
    for tokens, given in (([5, 6], None), ([7, 8, 9], np.zeros((3, 2, 2), np.uint8))):
        rows, missing = pad_rows(given, 3 + len(tokens) - 1, 2, 2, np.uint8)
        completions.append(Completion("x", tokens, [-1.0] * len(tokens), "stop", routed_experts=rows,
                                      routing_counts=sample_counts(rows, missing)))
    batch = build_batch([Generation(prompt_ids=[1, 2, 3], completions=completions)], [(1.0, {}), (0.0, {})], PLAN)
    m = routing_metrics({}, batch)
    assert m == {"r3/engine_rows_unknown": 4 + 2, "r3/engine_rows_missing": 4 + 2, "r3/engine_noncontiguous": 0}


def test_an_unprepared_moe_alias_names_the_command_that_makes_it(tmp_path):
    from trainer.model_io import resolve_model

    with pytest.raises(RuntimeError, match="r1 prepare-model smollm2-moe"):
        resolve_model("smollm2-moe", cache=tmp_path)


def test_prepare_model_takes_an_alias_or_overrides():
    from pipeline.cli import build_parser

    args = build_parser().parse_args(["prepare-model", "-c", "configs/quickstart.yaml", "smollm2-moe", "run.seed=1"])
    assert args.model == "smollm2-moe" and args.overrides == ["run.seed=1"]
    assert build_parser().parse_args(["prepare-model", "smollm2-moe"]).model == "smollm2-moe"


def test_timed_pairs_alternate_which_arm_goes_first():
    from pipeline.r3_check import _timed_pairs

    order = []
    seconds = _timed_pairs(order.append, 4)
    assert order == [True, False, False, True, True, False, False, True]
    assert len(seconds[True]) == len(seconds[False]) == 4


def test_paired_estimate_resolves_a_steady_cost_and_not_noise():
    from pipeline.r3_check import paired_estimate, step_overhead, t975

    steady = paired_estimate([2.1, 3.1, 4.1, 5.1, 6.1], [2.0, 3.0, 4.0, 5.0, 6.0])  # +0.1 s in every pair
    assert steady["paired_diff_s"] == pytest.approx(0.1) and steady["se_s"] == pytest.approx(0.0, abs=1e-12)
    assert steady["resolved_at_5pct"] and steady["pairs"] == 5 and steady["mean_s_off"] == pytest.approx(4.0)
    noisy = paired_estimate([3.0, 1.0, 3.0, 1.0, 2.5], [2.0, 2.0, 2.0, 2.0, 2.0])  # diffs +1 -1 +1 -1 +0.5
    assert noisy["paired_diff_s"] == pytest.approx(0.1)
    assert noisy["se_s"] == pytest.approx(np.std([1, -1, 1, -1, 0.5], ddof=1) / np.sqrt(5))
    assert not noisy["resolved_at_5pct"] and noisy["verdict"] == "not resolved at 5%"
    assert noisy["ci95_s"][0] < 0 < noisy["ci95_s"][1]
    assert noisy["ratio"] == pytest.approx(np.mean([1.5, 0.5, 1.5, 0.5, 1.25]))
    # 5 pairs: the t quantile of 4 degrees of freedom, not the normal 1.96
    assert t975(4) == 2.776 and t975(11) == 2.228 and t975(100) == 1.96
    edge = paired_estimate([1.2, 1.3], [1.0, 1.0])  # diffs 0.2, 0.3: mean 0.25, se 0.05; 1.96 se would resolve it
    assert not edge["resolved_at_5pct"]  # t(1) = 12.7: two pairs resolve little
    step = step_overhead(steady, noisy, update_scale=2.0)
    assert step["fraction"] == pytest.approx((0.1 + 2 * 0.1) / (4.0 + 2 * 2.0))
    assert step["fraction_se"] == pytest.approx(2 * noisy["se_s"] / 8.0) and not step["resolved_at_5pct"]
    with pytest.raises(ValueError, match="needs >= 2"):
        paired_estimate([1.0], [1.0])


def test_r3_check_refuses_fewer_than_two_pairs():
    from pipeline.r3_check import run_r3_check

    with pytest.raises(ValueError, match="--repeats=1"):
        run_r3_check(load_config("configs/quickstart-moe.yaml", []), repeats=1)


class _StandInRollout:
    """The rollout pool's calls r3-check makes, answered without an engine: every sample's routing is a fixed,
    valid top-2 ([0, 1] in every layer), as a capture would hand it over."""

    def __init__(self, layers: int) -> None:
        self.layers, self.calls = layers, []

    def set_routing_capture(self, on: bool) -> int:
        self.calls.append("on" if on else "off")
        return self.layers * 2

    def generate(self, prompts, sampling, progress=False):
        self.calls.append("generate")
        rows = lambda p: np.tile(np.array([0, 1], np.uint8), (len(p) + 2, self.layers, 1))  # noqa: E731
        return [Generation(prompt_ids=list(p), completions=[
            Completion("x", [5, 6, 7], [-1.0] * 3, "length", routed_experts=rows(p)) for _ in range(sampling.n)])
            for p in prompts]


def test_r3_check_writes_every_figure_and_times_in_alternating_pairs(tiny_moe_dir, tmp_path, monkeypatch):
    import json

    import pipeline.cluster as cluster
    from pipeline.r3_check import run_r3_check

    stand_in = _StandInRollout(layers=2)
    monkeypatch.setattr(cluster, "start_rollout", lambda cfg, model_dir: stand_in)
    monkeypatch.setattr(cluster, "release_rollout", lambda pool: None)
    cfg = load_config("configs/quickstart.yaml", [
        f"model.name={tiny_moe_dir}", f"run.output_dir={tmp_path}", "rl.prompts_per_step=2", "rl.group_size=2",
        "data.tasks=[{name: arithmetic, n_train: 8, n_test: 2, difficulty: 1}]", "trainer.micro_batch_size=4"])
    run_r3_check(cfg, out=str(tmp_path / "check"), repeats=3, update_rows=2)
    report = json.loads((tmp_path / "check" / "r3_check.json").read_text())
    # warm-ups (capture on: the scored batch, then off), then pairs on/off, off/on, on/off
    assert [c for c in stand_in.calls if c != "generate"] == ["on", "off", "on", "off", "off", "on", "on", "off"]
    assert stand_in.calls.count("generate") == 8
    compared = {report[side]["routers_compared"] for side in ("without_r3", "with_r3", "shifted_routing")}
    assert len(compared) == 1 and compared.pop() > 0
    assert all(report[side]["routing_coverage"] == 1.0 for side in ("without_r3", "with_r3", "shifted_routing"))
    assert report["with_r3"]["replay_plumbing_mismatch"] == 0.0 == report["shifted_routing"]["replay_plumbing_mismatch"]
    # the engine's "routing" is a constant [0, 1]: shifted to [1, 2] everywhere, the router's own choice cannot
    # agree with both
    assert report["shifted_routing"]["router_mismatch_own"] != report["with_r3"]["router_mismatch_own"]
    for part in ("generation", "update"):
        o = report["overhead"][part]
        assert o["pairs"] == 3 and o["se_s"] >= 0 and len(o["ci95_s"]) == 2
    assert len(report["seconds"]["update_replay_off"]) == 3 and report["settings"]["repeats"] == 3
    assert report["overhead_fraction"] == report["overhead"]["step"]["fraction"]
