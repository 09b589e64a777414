"""Rewards in the field's signatures (ours, TRL's, verl's, async), fail-fast on a reward that never works,
prefilled_think for every reward that takes it, reward plugins, and reward modules importing from the user's
folder (the `r1` script, the Ray workers' path, the modules `r1 submit` ships)."""
import asyncio
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline.config import ConfigError, RewardItem, load_config
from rewards import Reward, RewardFailure, registry, weighted_sum
from tests.user_reward_modules import MODULES, write_user_reward_modules

ROOT = Path(__file__).resolve().parent.parent
R1 = Path(sys.executable).parent / "r1"
SAMPLES = [{"id": "a1", "prompt": "What is 40+2?", "answer": "42", "task": "arithmetic"},
           {"id": "w1", "prompt": "Tom has 7 apples.", "answer": "7", "task": "word_problem"}]
GOOD = "<think>40+2=42</think><answer>42</answer>"


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    """The fixture's user modules in a folder on sys.path, with a private registry; every user module is
    forgotten afterwards (a plugin registers on import: the next test must import it afresh)."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    folder = write_user_reward_modules(tmp_path / "user")
    monkeypatch.syspath_prepend(str(folder))
    yield folder
    for name in [*MODULES, "my_pkg_rewards", "my_pkg_rewards.scoring"]:
        sys.modules.pop(name, None)


# ---- the forms ------------------------------------------------------------------------------------------------

def test_every_form_scores_through_weighted_sum(user_folder):
    score = weighted_sum([{"name": "my_trl_rewards:think_closed", "weight": 1.0},
                          {"name": "my_trl_rewards:answer_mentioned", "weight": 2.0},
                          {"name": "my_verl_rewards:compute_score", "weight": 4.0},
                          {"name": "my_async_rewards:judged_length", "weight": 8.0, "options": {"limit": 30}},
                          {"name": "my_async_rewards:judged_batch", "weight": 1.0}])
    completions = ["<think>sum</think> 42", "no tags, the answer is 9 and it goes on and on for many characters"]
    (t0, p0), (t1, p1) = score.score_batch(completions, SAMPLES)
    assert [float(p) for p in p0.values()] == [1.0, 1.0, 1.0, 1.0, pytest.approx(0.21)]
    assert t0 == pytest.approx(1 + 2 + 4 + 8 + 0.21)
    # The second sample: no </think> (TRL batched), not arithmetic (None: not applicable, not 0 and no failure),
    # gold 7 absent (verl dict score 0), too long for the async per-item limit, async batched by length.
    assert (float(p1["my_trl_rewards:think_closed"]), p1["my_trl_rewards:think_closed"].reason) == (0.0, "ok")
    assert p1["my_trl_rewards:answer_mentioned"].reason == "not_applicable"
    assert float(p1["my_verl_rewards:compute_score"]) == 0.0 and float(p1["my_async_rewards:judged_length"]) == 0.0
    assert t1 == pytest.approx(min(1.0, len(completions[1]) / 100))
    # One row by __call__ is the same as that row of the batch.
    assert score(completions[0], SAMPLES[0]) == (pytest.approx(t0), p0)


def test_trl_rewards_get_dataset_columns_as_keyword_lists_once_per_batch():
    calls = []

    def named(prompts, completions, answer, difficulty):  # named columns, no **kwargs
        calls.append({"prompts": prompts, "answer": answer, "difficulty": difficulty})
        return [1.0 if a in c else 0.0 for c, a in zip(completions, answer)]

    def everything(prompts, completions, **kwargs):
        calls.append(kwargs)
        return [None, 0.5]

    score = weighted_sum([named, everything])
    scored = score.score_batch(["it is 42", "it is 8"], SAMPLES)
    assert calls[0] == {"prompts": ["What is 40+2?", "Tom has 7 apples."], "answer": ["42", "7"],
                        "difficulty": [None, None]}  # a field the samples lack: None in its list
    assert set(calls[1]) == {"id", "answer", "task"} and calls[1]["task"] == ["arithmetic", "word_problem"]
    assert len(calls) == 2  # one call per reward for the whole batch
    assert [float(p["named"]) for _, p in scored] == [1.0, 0.0]
    assert scored[0][1]["everything"].reason == "not_applicable" and scored[0][0] == 1.0
    assert scored[1][0] == 0.5


def test_verl_rewards_get_data_source_ground_truth_and_the_sample():
    seen = []

    def compute_score(data_source, solution_str, ground_truth, extra_info=None):
        seen.append((data_source, ground_truth, extra_info))
        return float(ground_truth in solution_str)

    def no_extra(data_source, solution_str, ground_truth):
        return {"score": 0.5, "acc": True}

    score = weighted_sum([compute_score, no_extra])
    rows = score.score_batch(["42", "x"], [{**SAMPLES[0], "data_source": "gsm8k"}, SAMPLES[1]])
    assert [t for t, _ in rows] == [1.5, 0.5]
    assert seen[0] == ("gsm8k", "42", {**SAMPLES[0], "data_source": "gsm8k"})
    assert seen[1][:2] == ("word_problem", "7")  # no data_source: the task names it


def test_async_rewards_of_a_batch_are_awaited_together():
    state = {"in_flight": 0, "most": 0}

    async def judge(completion, sample):
        state["in_flight"] += 1
        state["most"] = max(state["most"], state["in_flight"])
        await asyncio.sleep(0.05)
        state["in_flight"] -= 1
        return 1.0

    async def verl_judge(data_source, solution_str, ground_truth, extra_info=None):
        await asyncio.sleep(0)
        return {"score": 0.25}

    score = weighted_sum([judge, verl_judge])
    rows = score.score_batch(["c"] * 8, [SAMPLES[0]] * 8)
    assert state["most"] == 8  # all eight in flight at once
    assert [t for t, _ in rows] == [1.25] * 8


def test_per_item_rewards_map_over_a_given_executor_with_the_same_result(user_folder):
    specs = ["format", "my_verl_rewards:compute_score", "my_trl_rewards:think_closed"]
    completions, samples = [GOOD, "no", "<think>7</think><answer>7</answer>"] * 3, [SAMPLES[0], SAMPLES[1]] * 4 + [SAMPLES[1]]
    plain = weighted_sum(specs).score_batch(completions, samples)
    with ThreadPoolExecutor(3) as pool:
        threaded = weighted_sum(specs).score_batch(completions, samples, executor=pool)
    assert threaded == plain


def test_a_wrong_batch_answer_is_invalid_for_every_row_and_the_tasks_scope_still_applies():
    def short(prompts, completions, **kwargs):
        return [1.0]

    score = weighted_sum([short, {"name": "format", "tasks": ["word_problem"]}])
    rows = score.score_batch([GOOD, GOOD], SAMPLES)
    assert [p["short"].reason for _, p in rows] == ["invalid_value", "invalid_value"]
    assert rows[0][1]["format"].reason == "not_applicable" and rows[0][0] == 0.0 and rows[1][0] == 1.0


def test_a_batched_answer_may_be_an_array_and_a_required_column_no_sample_has_comes_as_nones():
    import numpy as np

    seen = {}

    def scored(prompts, completions, difficulty, **kwargs):
        seen.update(difficulty=difficulty, kwargs=sorted(kwargs))
        return np.array([0.25, 0.75])

    rows = weighted_sum([scored]).score_batch(["a", "b"], SAMPLES)
    assert [t for t, _ in rows] == [0.25, 0.75]
    assert seen == {"difficulty": [None, None], "kwargs": ["answer", "id", "task"]}
    assert weighted_sum([lambda prompts, completions: "ab"]).score_batch(["a", "b"], SAMPLES)[0][1][
        "<lambda>"].reason == "invalid_value"  # a string of the right length is no list of numbers


@pytest.mark.parametrize("source, fragment", [
    ("def one_arg(completion):\n    return 1.0\n", "one_arg(completion)"),
    ("def prompts_only(prompts, **kwargs):\n    return [1.0]\n", "prompts_only(prompts, **kwargs)"),
    ("def keyword_only(*, completion, sample):\n    return 1.0\n", "keyword_only(*, completion, sample)"),
])
def test_a_function_of_no_known_form_is_refused_at_load_in_one_line(tmp_path, monkeypatch, source, fragment):
    (tmp_path / "misfit_rewards.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    name = fragment.split("(")[0]
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"rewards.items=[{{name: 'misfit_rewards:{name}'}}]"])
    message = str(info.value)
    assert "\n" not in message and f"misfit_rewards:{name}" in message and fragment in message, message
    assert "fits none of the accepted forms" in message and "TRL (prompts, completions" in message
    assert "compute_score(data_source, solution_str, ground_truth" in message
    with pytest.raises(ValueError, match="fits none"):
        RewardItem(name=f"misfit_rewards:{name}")
    sys.modules.pop("misfit_rewards", None)


def test_options_are_keywords_of_every_form_and_must_fit_it(user_folder):
    def trl(prompts, completions, scale=1.0):
        return [scale] * len(completions)

    def verl(data_source, solution_str, ground_truth, extra_info=None, bonus=0.0):
        return 1.0 + bonus

    score = weighted_sum([(trl, 1.0, {"scale": 3.0}), (verl, 1.0, {"bonus": 0.5})])
    assert score("x", SAMPLES[0])[0] == 4.5
    for fn, options in ((trl, {"scael": 1}), (verl, {"bonsu": 1})):
        with pytest.raises(ValueError, match="do not fit"):
            weighted_sum([(fn, 1.0, options)])
    with pytest.raises(ConfigError, match="do not fit"):
        load_config(None, ["rewards.items=[{name: 'my_async_rewards:judged_length', options: {limt: 3}}]"])


# ---- fail fast --------------------------------------------------------------------------------------------------

def test_a_reward_failing_on_every_call_stops_within_its_first_16_calls(user_folder):
    score = weighted_sum(["format", "my_broken_rewards:always_raises"])
    calls = 0
    with pytest.raises(RewardFailure) as info:
        for i in range(40):
            calls += 1
            score(GOOD, {"id": f"s{i}"})
    assert calls == 16
    assert str(info.value).startswith("reward 'my_broken_rewards:always_raises' failed on every one of its first 16 "
                                      "calls: KeyError: 'solution' (first sample id 's0')")
    assert "\n" not in str(info.value)


def test_a_batched_reward_raising_on_its_first_batch_of_16_stops_and_a_non_number_counts_too():
    def raises(prompts, completions, **kwargs):
        raise KeyError("solution")

    with pytest.raises(RewardFailure, match=r"'raises' failed on every one of its first 16 calls: KeyError"):
        weighted_sum([raises]).score_batch(["x"] * 16, [SAMPLES[0]] * 16)
    score = weighted_sum([lambda c, s: "1.0"], fail_after=3)
    score("x", SAMPLES[0])
    score("x", SAMPLES[0])
    with pytest.raises(RewardFailure, match=r"first 3 calls: returned '1.0' \(not a finite number\) "
                                            r"\(first sample id 'a1'\)"):
        score("x", SAMPLES[0])


def test_occasional_errors_score_zero_with_the_reason_counted_and_never_stop_the_run():
    calls = {"n": 0}

    def flaky(completion, sample):  # fails 15 times, then works, then fails forever
        calls["n"] += 1
        if calls["n"] <= 15 or calls["n"] > 16:
            raise ValueError("judge unavailable")
        return 1.0

    score = weighted_sum([flaky, "format"])
    parts = [score(GOOD, SAMPLES[0])[1]["flaky"] for _ in range(100)]
    assert [p.reason for p in parts].count("error:ValueError") == 99 and float(parts[15]) == 1.0
    async_calls = {"n": 0}

    async def sometimes(completion, sample):
        async_calls["n"] += 1
        if async_calls["n"] % 2:
            raise TimeoutError
        return None  # does not apply: no failure either

    rows = weighted_sum([sometimes]).score_batch(["x"] * 40, [SAMPLES[0]] * 40)
    assert {p["sometimes"].reason for _, p in rows} == {"error:TimeoutError", "not_applicable"}


def test_fail_after_is_configured_and_must_be_positive():
    assert load_config(None, []).rewards.fail_after == 16
    assert load_config(None, ["rewards.fail_after=3"]).rewards.fail_after == 3
    with pytest.raises(ConfigError, match="rewards.fail_after=0"):
        load_config(None, ["rewards.fail_after=0"])


# ---- prefilled_think, plugins, the reward worker ---------------------------------------------------------------

def test_prefilled_think_reaches_every_reward_that_takes_it_unless_its_options_set_it():
    seen = []

    def mine(completion, sample, *, prefilled_think=False):
        seen.append(prefilled_think)
        return 1.0

    def trl(prompts, completions, prefilled_think=False, **kwargs):
        seen.append(prefilled_think)
        return [1.0] * len(completions)

    prefilled = "2+2</think><answer>4</answer>"  # the template opened <think>
    score = weighted_sum([mine, trl, "format", (mine, 1.0, {"prefilled_think": False})], prefilled_think=True)
    total, parts = score(prefilled, {"answer": "4"})
    assert seen == [True, True, False] and parts["format"] == 1.0 and total == 4.0
    assert weighted_sum(["format"])(prefilled, {})[1]["format"] == 0.0  # default: nothing pre-filled


def test_plugins_register_names_the_items_then_use(user_folder, tmp_path):
    with pytest.raises(ConfigError, match="unknown reward 'has_think'"):
        load_config(None, ["rewards.items=[{name: has_think}]"])
    cfg = load_config(None, ["rewards.plugins=[my_plugin_rewards]", "rewards.items=[{name: has_think, weight: 2.0}]"])
    assert cfg.rewards.plugins == ["my_plugin_rewards"] and cfg.rewards.items[0].name == "has_think"
    (tmp_path / "user" / "my_failing_plugin.py").write_text("import not_a_module_anywhere\n")
    with pytest.raises(ConfigError) as info:
        load_config(None, ["rewards.plugins=[my_failing_plugin]"])
    assert str(info.value) == ("config error: rewards: cannot import reward plugin 'my_failing_plugin': "
                               "ModuleNotFoundError: No module named 'not_a_module_anywhere'")
    sys.modules.pop("my_failing_plugin", None)


def test_the_reward_worker_imports_plugins_passes_prefilled_think_and_stops_on_a_broken_reward(user_folder):
    from pipeline.actors import RewardWorker

    worker = RewardWorker([{"name": "has_think", "weight": 1.0}, {"name": "format", "weight": 0.5},
                           {"name": "my_trl_rewards:think_closed", "weight": 1.0}],
                          prefilled_think=True, plugins=["my_plugin_rewards"])
    scored = worker.score(["x</think><answer>4</answer>", "none"], SAMPLES)
    assert scored[0] == (2.5, {"has_think": (1.0, "ok"), "format": (1.0, "ok"),
                               "my_trl_rewards:think_closed": (1.0, "ok")})
    assert scored[1][0] == 0.0
    broken = RewardWorker([{"name": "my_broken_rewards:always_raises"}], fail_after=4)
    with pytest.raises(RewardFailure, match="first 4 calls: KeyError: 'solution'"):
        broken.score(["x"] * 8, [SAMPLES[0]] * 8)


def test_step_metrics_average_a_reward_over_the_samples_it_applies_to():
    from stages.step_metrics import reward_metrics

    class Batch:
        response_ids, truncated, advantages, group_size = [[1], [1, 2]], [False, False], [0.0, 1.0], 2

        def __len__(self):
            return 2

    scores = [(1.0, {"judge": (1.0, "ok"), "scoped": (0.0, "not_applicable")}),
              (0.5, {"judge": (0.0, "not_applicable"), "scoped": (0.5, "ok")})]
    out = reward_metrics(scores, Batch())
    assert out["reward/judge/mean"] == 1.0 and out["reward/scoped/mean"] == 0.5
    assert out["reasons/judge/not_applicable"] == 0.5
    none = reward_metrics([(0.0, {"judge": (0.0, "not_applicable")})], Batch())
    assert "reward/judge/mean" not in none


# ---- imports: the console script, the Ray workers' path, the modules a submission ships ---------------------

def test_r1_config_show_imports_plugins_and_modules_from_the_users_folder(tmp_path):
    folder = write_user_reward_modules(tmp_path / "user")
    (folder / "recipe.yaml").write_text(
        "rewards:\n  plugins: [my_plugin_rewards]\n  items:\n    - {name: has_think, weight: 0.5}\n"
        "    - {name: 'my_trl_rewards:think_closed'}\n    - {name: 'my_verl_rewards:compute_score'}\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(R1), "config", "show", "-c", "recipe.yaml"], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "name: has_think" in done.stdout and "my_verl_rewards:compute_score" in done.stdout
    assert "- my_plugin_rewards" in done.stdout and "fail_after: 16" in done.stdout
    (folder / "bad.yaml").write_text("rewards:\n  items:\n    - {name: 'my_broken_rewards:nope'}\n")
    bad = subprocess.run([str(R1), "config", "show", "-c", "bad.yaml"], cwd=folder, env=env, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith(
        "r1: error: config error: rewards.items.0: cannot resolve reward 'my_broken_rewards:nope'"), bad.stderr


def test_local_ray_workers_import_from_the_drivers_cwd_then_its_pythonpath_then_the_repo(tmp_path):
    from pipeline.cluster import worker_pythonpath

    path = worker_pythonpath(cwd=str(tmp_path), pythonpath=f"/opt/a{__import__('os').pathsep}rel")
    assert path.split(__import__("os").pathsep) == [str(tmp_path), "/opt/a", str(Path("rel").resolve()), str(ROOT)]
    assert worker_pythonpath(cwd=str(ROOT), pythonpath="").split(__import__("os").pathsep) == [str(ROOT)]


def test_an_actors_reward_failure_is_printed_as_its_own_line():
    from ray.exceptions import RayTaskError

    from pipeline.cli import error_line

    cause = RewardFailure("reward 'x' failed on every one of its first 16 calls: KeyError: 'solution' "
                          "(first sample id 's0')")
    wrapped = RayTaskError("RewardWorker.score", "Traceback (most recent call last):\n  ...\nKeyError", cause)
    wrapped = wrapped.as_instanceof_cause()
    assert isinstance(wrapped, RewardFailure) and "\n" in str(wrapped)
    assert error_line(wrapped) == str(cause)
    assert error_line(ValueError("plain")) == "plain"


def test_submit_ships_the_users_modules_named_by_the_config_and_nothing_of_the_project(user_folder, tmp_path):
    from pipeline import submit

    package = user_folder / "my_pkg_rewards"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "scoring.py").write_text("def brevity(completion, sample):\n    return 1.0\n")
    extra = tmp_path / "helpers_dir"
    extra.mkdir()
    cfg = load_config(None, [
        "rewards.plugins=[my_plugin_rewards]",
        "rewards.items=[{name: 'my_trl_rewards:think_closed'}, {name: has_think}, "
        "{name: 'tests.mixed_rewards:split_groups', options: {constant_ids: []}}]",
        "general_rl.rewards=[{name: 'my_pkg_rewards.scoring:brevity'}, {name: 'my_verl_rewards:compute_score'}]",
        f"cluster.job.py_modules=[{extra}]"])
    assert dict(submit.named_modules(cfg)) == {
        "my_trl_rewards": "rewards.items.0", "tests.mixed_rewards": "rewards.items.2",
        "my_pkg_rewards.scoring": "general_rl.rewards.0", "my_verl_rewards": "general_rl.rewards.1",
        "my_plugin_rewards": "rewards.plugins.0"}
    shipped = [Path(p) for p in submit.job_runtime_env(cfg)["py_modules"]]
    # tests.mixed_rewards travels in the working dir; a package folder goes as it is, a one-file module as a
    # folder of its name that holds it as __init__.py (what Ray's job client can upload): imported the same way.
    assert [p.name for p in shipped] == ["my_trl_rewards", "my_pkg_rewards", "my_verl_rewards", "my_plugin_rewards",
                                         "helpers_dir"]
    assert shipped[1] == package and shipped[4] == extra
    for folder in (shipped[0], shipped[2], shipped[3]):
        assert (folder / "__init__.py").read_text() == (user_folder / f"{folder.name}.py").read_text()
    assert "py_modules" not in submit.job_runtime_env(load_config(None, []))
    # A module that does not import where r1 submit runs cannot be shipped: one line, before any submission.
    sys.modules.pop("my_verl_rewards")
    (user_folder / "my_verl_rewards.py").unlink()
    with pytest.raises(submit.SubmitError) as info:
        submit.shipped_modules(cfg)
    assert str(info.value).startswith("general_rl.rewards.1: module 'my_verl_rewards' is not importable here")
    with pytest.raises(submit.SubmitError, match="cluster.job.py_modules: /no/such/dir not found"):
        submit.shipped_modules(load_config(None, ["cluster.job.py_modules=[/no/such/dir]"]))


def test_a_reward_scoring_zero_on_every_call_is_named_once_in_the_log_not_stopped(caplog):
    # Zero is a legitimate score (a weak model earns nothing at first), so the run goes on; but a misread field
    # looks the same, so the first fail_after zeros are said once.
    import logging

    from rewards import weighted_sum

    score = weighted_sum([{"name": lambda completion, sample: 0.0, "label": "always_zero"}], fail_after=4)
    with caplog.at_level(logging.WARNING, logger="rewards.failures"):
        for _ in range(3):
            assert score("x", {"id": "a"})[0] == 0.0
        assert not [r for r in caplog.records if "always_zero" in r.getMessage()]
        for _ in range(5):
            score("x", {"id": "a"})
    warnings = [r.getMessage() for r in caplog.records if "always_zero" in r.getMessage()]
    assert len(warnings) == 1 and "scored 0 on each of its first 4 calls" in warnings[0]

    scoring = weighted_sum([{"name": lambda completion, sample: float(completion == "y"), "label": "sometimes"}],
                           fail_after=2)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rewards.failures"):
        scoring("y", {}), scoring("x", {}), scoring("x", {})
    assert not [r for r in caplog.records if "sometimes" in r.getMessage()]
