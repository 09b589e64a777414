"""The compute accounting of the two small students (stages.compute, pipeline.student_compute), the RL-only
student's budget (distill.rl_only_budget: match_distill), its config checks and fingerprint, the report's
side-by-side, and (slow) a toy `r1 student-rl` that trains to a distill stage's recorded compute."""
import json
import random
from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config
from rollout.types import RolloutBatch
from stages.compute import (grpo_step_flops_bound, grpo_step_tokens, part, rl_compute, rl_step_flops,
                            sampling_part, sft_compute, steps_for_budget, total)
from trainer.settings import GRPOSettings

ROOT = Path(__file__).resolve().parent.parent
N = 1_000  # a model's parameter count in the unit tests


def _batch(rewards, group_size=2, prompt=(1, 2, 3), response_lengths=None, loss_mask=None):
    from trainer.losses import grpo_advantages
    import torch

    n = len(rewards)
    lengths = response_lengths or [4] * n
    adv = grpo_advantages(torch.tensor(rewards, dtype=torch.float32), group_size, "group").tolist()
    return RolloutBatch(prompt_ids=[list(prompt)] * n, response_ids=[[7] * k for k in lengths],
                        group_size=group_size, rewards=list(rewards), advantages=adv,
                        truncated=[False] * n, loss_mask=loss_mask or [True] * n)


def test_flops_are_2n_per_forward_token_and_6n_per_trained_token():
    p = part(N, forward_tokens=10, trained_tokens=3)
    assert p["flops"] == 2 * N * 10 + 6 * N * 3
    s = sampling_part(N, prompt_tokens=5, generated_tokens=7, model="m")
    assert s["forward_tokens"] == 12 and s["flops"] == 2 * N * 12 and s["model"] == "m"
    t = total({"a": p, "b": s}, seconds=3.14159)
    assert t["flops"] == p["flops"] + s["flops"] and t["tokens"] == 13 + 12 and t["seconds"] == 3.1


def test_sft_compute_counts_every_token_of_each_step_and_reads_older_lines():
    rows = [{"step": 1, "tokens_processed": 100}, {"step": 2, "tokens_per_second": 50.0, "train_seconds": 2.0}]
    parts = sft_compute(rows, N, teacher_params=3 * N)
    assert parts["sft"]["trained_tokens"] == 200 and parts["sft"]["flops"] == 6 * N * 200
    assert parts["teacher_scoring"]["flops"] == 2 * 3 * N * 200  # logit KL: the teacher's forward, same tokens
    assert "teacher_scoring" not in sft_compute(rows, N)


def test_grpo_step_tokens_skip_zero_variance_groups_and_count_a_prompt_once_per_group():
    # Group 0 mixed (trained), group 1 all equal (advantage 0: skipped), group 2 mixed but its second row masked.
    batch = _batch([1.0, 0.0, 0.5, 0.5, 1.0, 0.0], response_lengths=[4, 5, 6, 7, 8, 9],
                   loss_mask=[True, True, True, True, True, False])
    settings = GRPOSettings()
    got = grpo_step_tokens(batch, settings, has_reference=False)
    assert got["compute/rows_trained"] == 3
    assert got["compute/trained_tokens"] == (3 + 4 + 5) + (3 + 8)
    assert got["compute/scored_tokens"] == 0 and got["compute/reference_tokens"] == 0
    # No skipping (a KL term with a reference): every kept row is trained and the reference scores them.
    kl = grpo_step_tokens(batch, GRPOSettings(kl_coef=0.1), has_reference=True)
    assert kl["compute/trained_tokens"] == 3 * 3 + 4 + 5 + 6 + 7 + 8 and kl["compute/reference_tokens"] == 39
    two = grpo_step_tokens(batch, GRPOSettings(epochs=2), has_reference=False)
    assert two["compute/trained_tokens"] == 2 * got["compute/trained_tokens"]
    assert two["compute/scored_tokens"] == got["compute/trained_tokens"]


def test_rl_compute_sums_the_steps_lines():
    rows = [{"step": 0, "generated_tokens": 999},  # a step-0 eval line: no training
            {"step": 1, "compute/prompt_tokens": 10, "generated_tokens": 20, "compute/trained_tokens": 25},
            {"step": 2, "compute/prompt_tokens": 10, "generated_tokens": 30, "compute/trained_tokens": 0}]
    c = rl_compute(rows, N, seconds=12.0)
    assert c["steps"] == 2 and c["seconds"] == 12.0
    assert c["flops"] == 2 * N * (20 + 50) + 6 * N * 25 == sum(rl_step_flops(r, N) for r in rows[1:])
    assert c["parts"]["rollout"]["generated_tokens"] == 50


def test_the_step_bound_is_never_below_a_steps_real_cost():
    rng = random.Random(0)
    prompts = [rng.randint(20, 60) for _ in range(50)]
    bound = grpo_step_flops_bound(N, prompts, prompts_per_step=3, group_size=4, max_new_tokens=16)
    for _ in range(200):
        groups = [(rng.choice(prompts), [rng.randint(1, 16) for _ in range(4)]) for _ in range(3)]
        batch = RolloutBatch(prompt_ids=[[1] * p for p, lens in groups for _ in lens],
                             response_ids=[[2] * k for _, lens in groups for k in lens], group_size=4,
                             advantages=[rng.choice([0.0, 1.0]) for _ in range(12)], loss_mask=[True] * 12,
                             rewards=[0.0] * 12, truncated=[False] * 12)
        row = {**grpo_step_tokens(batch, GRPOSettings(), has_reference=False),
               "compute/prompt_tokens": sum(p for p, _ in groups),
               "generated_tokens": sum(sum(lens) for _, lens in groups)}
        assert rl_step_flops(row, N) <= bound
    # The worst step (the longest prompt in every group, every response max_new_tokens long, every row
    # trained) costs exactly the bound: it is the least upper bound, so steps_for_budget is the fewest steps.
    longest = max(prompts)
    worst = RolloutBatch(prompt_ids=[[1] * longest] * 12, response_ids=[[2] * 16] * 12, group_size=4,
                         advantages=[1.0] * 12, loss_mask=[True] * 12, rewards=[0.0] * 12, truncated=[True] * 12)
    row = {**grpo_step_tokens(worst, GRPOSettings(), has_reference=False), "compute/prompt_tokens": 3 * longest,
           "generated_tokens": 12 * 16}
    assert rl_step_flops(row, N) == pytest.approx(bound)


@pytest.mark.parametrize("budget,step,expected", [(10.0, 3.0, 4), (9.0, 3.0, 3), (0.5, 3.0, 1), (1e15, 7e12, 143)])
def test_steps_for_budget_is_the_fewest_steps_that_reach_it(budget, step, expected):
    n = steps_for_budget(budget, step)
    assert n == expected and n * step >= budget and (n == 1 or (n - 1) * step < budget)
    with pytest.raises(ValueError, match="must cost"):
        steps_for_budget(budget, 0.0)


def _distill_manifest(run_dir: Path, flops: float | None, complete=True) -> None:
    stage = run_dir / "distill"
    stage.mkdir(parents=True)
    compute = None if flops is None else total({"sft": part(N, trained_tokens=int(flops / (6 * N)))}, seconds=5.0)
    (stage / "manifest.json").write_text(json.dumps({"complete": complete, "fingerprint": "f" * 16,
                                                     "compute": compute}))


def test_the_budget_loop_stops_at_the_first_step_that_reaches_the_distill_stages_compute(tmp_path):
    """Given a distill manifest, the RL-only loop's stop rule (stages.grpo.is_last_step) ends at the first
    step whose cumulative FLOPs reach the manifest's, whatever the steps cost, and the count apply_budget
    expects (the fewest possible) is never more than that."""
    from types import SimpleNamespace

    from pipeline.student_compute import distill_budget
    from stages.grpo import ComputeBudget, is_last_step

    _distill_manifest(tmp_path, 6 * N * 10_000)
    budget = distill_budget(tmp_path)["flops"]
    assert budget == 6 * N * 10_000
    rng = random.Random(1)
    bound = grpo_step_flops_bound(N, [30], prompts_per_step=2, group_size=4, max_new_tokens=64)
    expected = steps_for_budget(budget, bound)
    plan = SimpleNamespace(budget=ComputeBudget(flops=budget, params=N), loop=SimpleNamespace(steps=expected))
    for _ in range(20):
        spent, step = 0.0, 0
        while True:
            step += 1
            lens = [rng.randint(1, 64) for _ in range(8)]
            before = spent
            spent += rl_step_flops({"compute/prompt_tokens": 60, "generated_tokens": sum(lens),
                                    "compute/trained_tokens": rng.choice([0, 60 + sum(lens)])}, N)
            if is_last_step(plan, step, spent):
                break
        assert spent >= budget > before and step >= expected
    capped = SimpleNamespace(budget=ComputeBudget(flops=budget, params=N, max_steps=2), loop=plan.loop)
    assert is_last_step(capped, 2, 0.0) and not is_last_step(capped, 1, 0.0)
    unbudgeted = SimpleNamespace(budget=None, loop=SimpleNamespace(steps=3))
    assert [is_last_step(unbudgeted, s, 1e30) for s in (1, 2, 3)] == [False, False, True]


def test_distill_budget_errors_name_what_is_missing(tmp_path):
    from pipeline.student_compute import distill_budget

    with pytest.raises(FileNotFoundError, match="no finished distill stage"):
        distill_budget(tmp_path)
    _distill_manifest(tmp_path, None)
    with pytest.raises(ValueError, match="has no compute record"):
        distill_budget(tmp_path)


@pytest.mark.parametrize("overrides,message", [
    # The quickstart trains the RL-only student with rl_only_budget: match_distill, rl_only_max_steps: 8.
    (["distill.rl_only_steps=3"], "rl_only_steps is the length of rl_only_budget=steps"),
    (["distill.rl_only_budget=steps"], "rl_only_max_steps caps rl_only_budget=match_distill"),
    (["distill.rl_only_budget=flops"], "distill.rl_only_budget='flops': expected 'steps' or 'match_distill'"),
    (["distill.rl_only_rewards=[]"], "rl_only_rewards is empty"),
    (["distill.rl_only_rewards=[{name: nope}]"], "distill.rl_only_rewards.0: unknown reward 'nope'"),
])
def test_rl_only_knobs_are_checked_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(ROOT / "configs" / "quickstart.yaml", overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_student_rl_fingerprint_has_the_knobs_and_under_match_distill_the_distill_stage():
    from pipeline.fingerprints import training_fingerprint
    from pipeline.recipe import stage_of

    def fp(*overrides, fps=None):
        cfg = load_config(ROOT / "configs" / "quickstart.yaml", list(overrides))
        return training_fingerprint(cfg, stage_of(cfg, "student_rl"), fps or {"distill": "d1"})

    steps = ("distill.rl_only_budget=steps", "distill.rl_only_max_steps=null", "distill.rl_only_steps=3")
    base = fp(*steps)
    assert fp() != base  # the quickstart's match_distill
    assert fp(*steps, "distill.rl_only_steps=4") != base
    assert fp(*steps, "distill.rl_only_rewards=[{name: correctness, options: {answer_format: auto}}]") != base
    assert fp("distill.rl_only_max_steps=7") != fp()
    assert fp(*steps, fps={"distill": "d2"}) == base  # steps: the distill stage is no input
    assert fp(fps={"distill": "d2"}) != fp()  # match_distill: it is
    assert fp(*steps, "distill.kl_weight=0.5") == base  # the rest of distill is not what the RL-only student reads


def test_the_report_prints_both_students_compute_next_to_the_delta():
    from pipeline.report_students import student_lines
    from pipeline.student_compute import side_by_side

    distill = total({"sft": part(N, trained_tokens=1000)}, seconds=100.0)
    rl = total({"rollout": sampling_part(N, 600, 1000)}, seconds=120.0, steps=4)
    comp = side_by_side(distill, rl)
    assert comp["rl_only_over_distill"]["flops"] == round(2 * 1600 / (6 * 1000), 3)
    text = "\n".join(student_lines({
        "delta": {"n": 144, "mean": 0.02, "ci_low": 0.01, "ci_high": 0.03, "z": 3.9, "se": 0.0051},
        "compute": comp, "rl_only_budget": "match_distill",
        "rewards": [{"name": "correctness", "weight": 1.0, "options": {"answer_format": "auto"}}],
        "scoring": {"distill": "correctness tags", "student_rl": "correctness tags"},
        "steps": [{"step": 1, "reward": 0.0, "zero_variance_groups": 1.0},
                  {"step": 2, "reward": 0.1, "zero_variance_groups": 0.5}]}))
    assert "+0.020 (SE 0.005, 95% CI [+0.010, +0.030], z = 3.9)" in text
    assert f"| FLOPs (stages.compute) | {6 * N * 1000:.3g} | {2 * N * 1600:.3g} | 0.533 |" in text
    assert "| wall seconds (without evals) | 100.0 | 120.0 | 1.2 |" in text
    assert "budget `match_distill`" in text and "answer_format" in text and "1.00, 0.50" in text


@pytest.mark.slow
def test_student_rl_trains_to_the_distill_stages_recorded_compute(tiny_model_dir, tmp_path):
    """`r1 student-rl` with ``rl_only_budget: match_distill`` (a random 2-layer Llama cut to 1, the
    transformers engine, the format reward, which the random model never earns: every group all-equal, every
    row skipped, so a step costs only its sampling): it trains past the step count the budget would take at
    full cost, stops at the first step whose FLOPs reach the distill manifest's, records both sides' compute,
    and the distill stage is its input."""
    import ray

    from pipeline import placement
    from pipeline.cli import main
    from pipeline.tracking import read_metrics
    from stages.compute import param_count

    run_dir = tmp_path / "t"
    student_params = None
    overrides = [f"model.name={tiny_model_dir}", f"run.output_dir={tmp_path}", "run.name=t", "rollout.engine=hf",
                 "data.tasks=[{name: arithmetic, n_train: 40, n_test: 4, difficulty: 2}]", "rl.prompts_per_step=2",
                 "rl.group_size=4", "rollout.max_new_tokens=8", "rl.eval_every=0", "rl.eval_at_ends=false",
                 "rl.save_every=2", "trainer.micro_batch_size=4", "rollout.dtype=float32", "trainer.precision=fp32",
                 "distill.student_layers=1", "distill.rl_only_steps=null", "distill.rl_only_budget=match_distill",
                 "distill.rl_only_rewards=[{name: format, weight: 1.0}]",
                 "cluster.num_cpus=8", "cluster.threads=1"]
    try:
        from pipeline.distill import student_init

        student_params = param_count(student_init(load_config(ROOT / "configs" / "quickstart.yaml", overrides)))
        # 1.5 steps at their most (8-token answers, every row trained): 2 steps at full cost, more at the cost
        # of sampling alone.
        prompt = 60  # above any rendered arithmetic prompt here (checked below)
        budget = 1.5 * grpo_step_flops_bound(student_params, [prompt], prompts_per_step=2, group_size=4,
                                             max_new_tokens=8)
        _distill_manifest(run_dir, budget)
        budget = json.loads((run_dir / "distill" / "manifest.json").read_text())["compute"]["flops"]  # as recorded
        assert main(["student-rl", "-c", "configs/quickstart.yaml", *overrides]) == 0
    finally:
        placement.release_placement()
        ray.shutdown()
    stage = run_dir / "student_rl"
    rows = [r for r in read_metrics(stage / "metrics.jsonl") if r["step"] > 0]
    manifest = json.loads((stage / "manifest.json").read_text())
    flops = [rl_step_flops(r, student_params) for r in rows]
    assert manifest["steps"] == len(rows) > manifest["budget"]["expected_steps"] >= 2  # cheaper steps: more
    assert sum(flops) >= budget > sum(flops[:-1])  # the first step that reaches it, not one more
    assert manifest["compute"]["flops"] == pytest.approx(sum(flops)) and manifest["budget"]["reached"]
    assert rows[-1]["compute/flops_cumulative"] == pytest.approx(sum(flops))
    assert all(r["compute/prompt_tokens"] <= 2 * prompt and 0 < r["generated_tokens"] <= 2 * 4 * 8 for r in rows)
    assert all(r["compute/trained_tokens"] == 0 == r["compute/rows_trained"] for r in rows)  # skipped: not counted
    assert manifest["compute_vs_distill"]["rl_only_over_distill"]["flops"] >= 1.0
    assert manifest["distill_compute"]["flops"] == budget and manifest["rl_only_budget"] == "match_distill"
    assert manifest["rewards"][0]["name"] == "format"
    assert "distill" in manifest["inputs"]
    assert all(r["groups/zero_variance_fraction"] == 1.0 for r in rows)


def _stage(run_dir: Path, name: str, manifest: dict, correct: list[int], rows: list[dict] = ()) -> None:
    stage = run_dir / name
    (stage / "eval").mkdir(parents=True)
    (stage / "manifest.json").write_text(json.dumps({"complete": True, **manifest}))
    with open(stage / "eval" / "eval_samples.jsonl", "w") as fh:
        for i, c in enumerate(correct):
            fh.write(json.dumps({"id": f"arithmetic-test-{i}", "task": "arithmetic", "gold": "1",
                                 "completions": [{"text": "", "correct": bool(c), "format": bool(c)}]}) + "\n")
    p = sum(correct) / len(correct)
    row = {"pass_at": {"1": p}, "pass1_ci95": [p, p], "format_rate": p, "n_prompts": len(correct), "n_samples": 1,
           "maj_at": {}}
    (stage / "eval" / "eval.json").write_text(json.dumps({"scoring": "correctness (tags)",
                                                          "tasks": {"all": row, "arithmetic": row}}))
    with open(stage / "metrics.jsonl", "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")


def test_the_report_reads_both_students_compute_from_their_manifests(tmp_path):
    from pipeline.report import write_report

    distill = total({"sft": part(N, trained_tokens=1000)}, seconds=100.0)
    rl = total({"rollout": sampling_part(N, 1000, 2000)}, seconds=90.0, steps=2)
    _stage(tmp_path, "distill", {"compute": distill}, [1, 1, 0, 1])
    _stage(tmp_path, "student_rl", {"compute": rl, "rl_only_budget": "match_distill",
                                    "rewards": [{"name": "numeric_closeness", "weight": 0.5}]}, [0, 1, 0, 0],
           [{"step": 1, "reward/mean": 0.1, "groups/zero_variance_fraction": 0.75},
            {"step": 2, "reward/mean": 0.2, "groups/zero_variance_fraction": 0.25}])
    report = write_report(tmp_path).read_text()
    assert "## The distilled student vs the RL-only student" in report
    assert "distilled − RL-only, paired over 4 held-out prompts: +0.500" in report
    assert f"| FLOPs (stages.compute) | {6 * N * 1000:.3g} | {2 * N * 3000:.3g} | 1.0 |" in report
    assert "| wall seconds (without evals) | 100.0 | 90.0 | 0.9 |" in report
    assert "numeric_closeness×0.5" in report and "0.75, 0.25" in report
    assert f"compute {6 * N * 1000:.3g} FLOPs, 100.0 s" in report  # the stages table's distill row
    students = json.loads((tmp_path / "report" / "report.json").read_text())["students"]
    assert students["compute"]["rl_only_over_distill"]["flops"] == 1.0


def test_distill_compute_counts_teacher_and_curated_sampling_sft_and_the_kl_teachers_forward(tmp_path,
                                                                                            tiny_model_dir):
    """pipeline.student_compute.distill_compute on a distill folder's files: the counts stats.json and
    metrics.jsonl record; an older folder's sampling counted again from candidates.jsonl."""
    from pipeline.data import build_splits
    from pipeline.student_compute import distill_compute
    from stages.compute import param_count
    from tasks.prompting import render_prompt_ids
    from transformers import AutoTokenizer

    cfg = load_config(ROOT / "configs" / "quickstart.yaml", [f"run.output_dir={tmp_path}", "run.name=r",
                                                              "distill.kl_weight=0.5"])
    n = param_count(tiny_model_dir)
    out = cfg.run_dir() / "distill"
    (out / "teacher_data").mkdir(parents=True)
    (out / "teacher_data" / "stats.json").write_text(json.dumps({"tokens": {"prompt_tokens": 100,
                                                                            "generated_tokens": 400}}))
    (out / "metrics.jsonl").write_text("\n".join(json.dumps({"step": s, "tokens_processed": 250}) for s in (1, 2)))
    # The rejection_sample stage, written before the counters: its candidates are tokenized again.
    rs = cfg.run_dir() / "rejection_sample"
    rs.mkdir(parents=True)
    (rs / "stats.json").write_text(json.dumps({"rows": 1}))
    (rs / "manifest.json").write_text(json.dumps({"source_model": tiny_model_dir, "seconds": 7.0}))
    sample = build_splits(cfg)[0][0]
    (rs / "candidates.jsonl").write_text("\n".join(json.dumps({"id": sample["id"], "completion": c})
                                                   for c in ("so 12", "no idea")))
    c = distill_compute(cfg, out, teacher=tiny_model_dir, student=tiny_model_dir, curated=True, seconds=30.0)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = len(render_prompt_ids(tok, sample, cfg.data.system_prompt, cfg.data.template))
    generated = sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in ("so 12", "no idea"))
    parts = c["parts"]
    assert parts["teacher_sampling"]["flops"] == 2 * n * 500
    assert (parts["curated_sampling"]["prompt_tokens"], parts["curated_sampling"]["generated_tokens"]) == (
        prompt, generated) and parts["curated_sampling"]["estimated"]
    assert parts["sft"]["flops"] == 6 * n * 500 and parts["teacher_scoring"]["flops"] == 2 * n * 500
    assert c["flops"] == 2 * n * (500 + prompt + generated) + 6 * n * 500 + 2 * n * 500 and c["seconds"] == 30.0
    without = distill_compute(cfg, out, teacher=tiny_model_dir, student=tiny_model_dir, curated=False, seconds=30.0)
    assert "curated_sampling" not in without["parts"]
