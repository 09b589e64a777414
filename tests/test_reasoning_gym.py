"""Tasks from reasoning-gym (the `gym` extra, installed by `make setup`): real generation, the library's own
scorers through the `reasoning_gym` and `correctness` rewards, JSONL round trips, config errors, make-data."""
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from rewards import correctness_reward, format_reward, weighted_sum
from rewards.reasoning_gym_reward import reasoning_gym_reward
from tasks import make_splits, read_jsonl, split_of, write_jsonl
from tasks.reasoning_gym_source import generate_reasoning_gym, jsonable, reasoning_gym_splits
from tasks.sampling import prompt_key

ROOT = Path(__file__).resolve().parent.parent
# Three numeric generators and two whose answers are text.
GENERATORS = {"basic_arithmetic": {}, "chain_sum": {"max_terms": 3}, "leg_counting": {"max_animals": 4},
              "spell_backward": {}, "word_sorting": {"max_words": 5}}


def _answered(text: str) -> str:
    return f"<think>\nworking\n</think>\n<answer>\n{text}\n</answer>"


@pytest.fixture(scope="module")
def splits():
    return {name: reasoning_gym_splits(name, 40, 12, seed=7, config=config) for name, config in GENERATORS.items()}


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generation_gives_schema_samples_in_disjoint_splits(splits, name):
    train, test = splits[name]
    assert len(train) == 40 and len(test) == 12
    assert [s["id"] for s in test] == [f"{name}-test-{i:06d}" for i in range(12)]
    train_keys, test_keys = {prompt_key(s["prompt"]) for s in train}, {prompt_key(s["prompt"]) for s in test}
    assert len(train_keys) == 40 and len(test_keys) == 12 and not train_keys & test_keys
    assert all(split_of(s["prompt"]) == "test" for s in test) and all(split_of(s["prompt"]) == "train" for s in train)
    for sample in train + test:
        assert sample["task"] == name and sample["verifier"] == "reasoning_gym"
        payload = sample["reasoning_gym"]
        assert payload["dataset"] == name and payload["config"] == GENERATORS[name]
        assert payload["answer"] == sample["answer"] and isinstance(payload["metadata"], dict)
        assert json.loads(json.dumps(sample)) == sample  # plain JSON all the way down
        assert sample["solution"].strip()


def test_generation_is_deterministic_by_seed_and_test_set_ignores_n_train(splits):
    train, test = reasoning_gym_splits("chain_sum", 40, 12, seed=7, config={"max_terms": 3})
    assert (train, test) == splits["chain_sum"]
    other_train, other_test = reasoning_gym_splits("chain_sum", 5, 12, seed=7, config={"max_terms": 3})
    assert other_test == test and other_train == train[:5]
    reseeded = reasoning_gym_splits("chain_sum", 40, 12, seed=8, config={"max_terms": 3})[1]
    assert [s["prompt"] for s in reseeded] != [s["prompt"] for s in test]
    # The config reaches the library: chains of at most 3 terms.
    assert all(len(s["reasoning_gym"]["metadata"]["expression"].split()) <= 5 for s in train)
    # make_splits dispatches on the source.
    via = make_splits("chain_sum", 40, 12, seed=7, source="reasoning_gym", config={"max_terms": 3})
    assert (via.train, via.test) == (train, test)


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_library_answer_scores_correct_and_a_wrong_one_wrong(splits, name):
    sample = splits[name][1][0]
    right = _answered(sample["answer"])
    for score in (lambda c, s: reasoning_gym_reward(c, s, isolate=False), correctness_reward):
        verdict = score(right, sample)
        assert (float(verdict), verdict.reason) == (1.0, "ok")
        wrong = score(_answered("definitely not it 123456789"), sample)
        assert float(wrong) < 1.0 and wrong.reason in ("wrong_answer", "partial")
        assert score("no tags, just 42", sample).reason == "no_answer_block"


def test_scoring_in_helper_processes_and_timeouts(splits):
    sample = splits["basic_arithmetic"][1][0]
    assert reasoning_gym_reward(_answered(sample["answer"]), sample) == 1.0  # isolate=True: a helper process
    countdown = reasoning_gym_splits("countdown", 1, 1, seed=0)[1][0]
    # countdown's scorer hands the answer to sympy: a tower of powers would run for hours in this process.
    hung = reasoning_gym_reward(_answered("99**99**99**99"), countdown, timeout_s=1.0)
    assert (float(hung), hung.reason) == (0.0, "timeout")
    assert reasoning_gym_reward(_answered(countdown["answer"]), countdown, timeout_s=5.0) == 1.0  # a new helper


def test_answer_formats_reach_the_extraction(splits):
    sample = splits["leg_counting"][1][0]
    boxed = f"<think>\ncounting\n</think>\nSo the total is \\boxed{{{sample['answer']}}}."
    assert reasoning_gym_reward(boxed, sample, isolate=False).reason == "no_answer_block"
    assert reasoning_gym_reward(boxed, sample, answer_format="boxed", isolate=False) == 1.0
    assert reasoning_gym_reward(boxed, sample, answer_format="auto", isolate=False) == 1.0
    with pytest.raises(ValueError, match="answer_format"):
        reasoning_gym_reward(boxed, sample, answer_format="nope")


def test_jsonl_round_trip_and_json_text_payload(tmp_path, splits):
    samples = [s for name in sorted(GENERATORS) for s in splits[name][1][:3]]
    back = read_jsonl(write_jsonl(samples, tmp_path / "rg.jsonl"))
    assert back == samples
    for sample in back:
        assert correctness_reward(_answered(sample["answer"]), sample) == 1.0
    as_text = {**back[0], "reasoning_gym": json.dumps(back[0]["reasoning_gym"])}  # the Arrow form
    assert reasoning_gym_reward(_answered(as_text["answer"]), as_text, isolate=False) == 1.0


def test_math_verify_scorer_uses_the_accuracy_verifier():
    train, test = reasoning_gym_splits("leg_counting", 5, 3, seed=1, scorer="math_verify")
    for sample in train + test:
        assert sample["verifier"] == "accuracy" and sample["answer"].isdigit()
    sample = test[0]
    assert correctness_reward(_answered(sample["answer"]), sample).reason == "ok"
    assert correctness_reward(_answered(str(int(sample["answer"]) + 1)), sample).reason == "wrong"
    with pytest.raises(ValueError, match="math_verify needs numeric answers"):
        reasoning_gym_splits("spell_backward", 2, 2, seed=1, scorer="math_verify")


def test_weighted_sum_with_the_reward_is_picklable(splits):
    sample = splits["word_sorting"][1][0]
    score = pickle.loads(pickle.dumps(weighted_sum([("format", 0.5), "correctness", ("reasoning_gym", 1.0)])))
    total, parts = score(_answered(sample["answer"]), sample)
    assert total == 2.5 and {k: v.reason for k, v in parts.items()} == {
        "format": "ok", "correctness": "ok", "reasoning_gym": "ok"}


def test_samples_without_an_entry_or_with_an_unknown_dataset(splits):
    sample = splits["chain_sum"][1][0]
    assert reasoning_gym_reward(_answered("1"), {"prompt": "x"}).reason == "no_reasoning_gym_entry"
    ghost = {**sample, "reasoning_gym": {**sample["reasoning_gym"], "dataset": "no_such_generator"}}
    assert reasoning_gym_reward(_answered(sample["answer"]), ghost, isolate=False).reason == "unknown_dataset"
    assert reasoning_gym_reward(_answered(sample["answer"]), ghost).reason == "unknown_dataset"


def test_demonstrations_are_r1_format_and_score_correct(splits):
    from tasks import make_demonstration

    for name in GENERATORS:
        sample = splits[name][0][0]
        reply = make_demonstration(sample)["messages"][-1]["content"]
        assert format_reward(reply) == 1.0 and correctness_reward(reply, sample) == 1.0


def test_jsonable_keeps_plain_json_and_refuses_objects():
    import enum

    class Colour(enum.Enum):
        RED = "red"

    assert jsonable({"a": (1, 2), 3: {Colour.RED}, "n": None}) == {"a": [1, 2], "3": ["red"], "n": None}
    with pytest.raises(TypeError, match="cannot store a object"):
        jsonable({"x": object()})


@pytest.mark.parametrize("entry, message", [
    ({"name": "chain_sums"}, "unknown reasoning_gym generator 'chain_sums'; close names: chain_sum"),
    ({"name": "chain_sum", "config": {"max_term": 3}}, "unknown config keys ['max_term']; its keys: min_terms"),
    ({"name": "chain_sum", "config": {"seed": 3}}, "config keys ['seed'] are set by the recipe"),
    ({"name": "chain_sum", "config": {"max_terms": -1}}, "refused: max_terms must be >= min_terms"),
    ({"name": "spell_backward", "scorer": "math_verify"}, "scorer math_verify needs numeric answers"),
])
def test_config_errors_are_one_line(entry, message):
    from pipeline.config import ConfigError, validate

    with pytest.raises(ConfigError) as caught:
        validate({"data": {"tasks": [{"source": "reasoning_gym", **entry}]}})
    text = str(caught.value)
    assert message in text and "\n" not in text and text.startswith("config error: data.tasks.0: ")


def test_builtin_entries_keep_their_checks():
    from pipeline.config import ConfigError, validate

    with pytest.raises(ConfigError, match="name='arithmetc': expected one of 'arithmetic'"):
        validate({"data": {"tasks": [{"name": "arithmetc"}]}})
    with pytest.raises(ConfigError, match="config and scorer are for source: reasoning_gym"):
        validate({"data": {"tasks": [{"name": "arithmetic", "config": {"x": 1}}]}})
    with pytest.raises(ValueError, match="config and scorer are for source='reasoning_gym'"):
        make_splits("arithmetic", 2, 2, seed=0, scorer="math_verify")


def test_a_missing_library_is_named_with_the_install_line(monkeypatch):
    from rewards.reasoning_gym_library import check_generator

    monkeypatch.setitem(sys.modules, "reasoning_gym.factory", None)  # what an uninstalled package looks like
    with pytest.raises(ValueError, match=r"needs the optional extra: pip install 'r1-recipe\[gym\]'"):
        check_generator("chain_sum")
    with pytest.raises(ValueError, match="optional extra"):
        generate_reasoning_gym("chain_sum", 1, seed=0)


def test_make_data_writes_reasoning_gym_rows(tmp_path):
    config = tmp_path / "rg.yaml"
    config.write_text(
        f"run: {{name: rg, output_dir: {tmp_path / 'runs'}}}\n"
        "data:\n  tasks:\n"
        "    - {source: reasoning_gym, name: chain_sum, n_train: 12, n_test: 4, config: {max_terms: 3}}\n"
        "    - {source: reasoning_gym, name: leg_counting, n_train: 6, n_test: 2, scorer: math_verify}\n"
        "    - {source: reasoning_gym, name: spell_backward, n_train: 6, n_test: 2}\n"
        "general_rl: {general_tasks: []}\n")
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "r1"), "make-data", "-c", str(config), "--out",
                           str(tmp_path / "data")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    train, test = read_jsonl(tmp_path / "data" / "train.jsonl"), read_jsonl(tmp_path / "data" / "test.jsonl")
    demos = read_jsonl(tmp_path / "data" / "cold_start.jsonl")
    count = lambda rows: {t: sum(r["task"] == t for r in rows) for t in ("chain_sum", "leg_counting", "spell_backward")}
    assert count(train) == {"chain_sum": 12, "leg_counting": 6, "spell_backward": 6}
    assert count(test) == {"chain_sum": 4, "leg_counting": 2, "spell_backward": 2}
    assert {r["verifier"] for r in train if r["task"] == "leg_counting"} == {"accuracy"}
    assert {r["verifier"] for r in train if r["task"] != "leg_counting"} == {"reasoning_gym"}
    by_id = {r["id"]: r for r in train}
    assert len(demos) == len(train)
    for demo in demos:
        reply = demo["messages"][-1]["content"]
        assert correctness_reward(reply, by_id[demo["id"]]) == 1.0
    bad = subprocess.run([str(ROOT / ".venv" / "bin" / "r1"), "make-data", "-c", str(config), "--out",
                          str(tmp_path / "bad"), "data.tasks.0.config.max_term=3"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert bad.returncode != 0 and not (tmp_path / "bad").exists()
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith("r1: error: config error: data.tasks.0: reasoning_gym chain_sum: unknown config keys")


def test_a_missing_library_where_the_reward_runs_raises_not_scores_zero(monkeypatch):
    # A node without the extra would score every completion 0; raising lets rewards.fail_after stop the run.
    import rewards.reasoning_gym_reward as module

    monkeypatch.setattr(module, "score_safely", lambda *args: (0.0, "reasoning_gym_missing"))
    sample = {"prompt": "1+1?", "reasoning_gym": {"dataset": "chain_sum", "config": {}, "answer": "2", "metadata": {}}}
    with pytest.raises(RuntimeError, match=r"reasoning-gym is not installed where this reward runs"):
        module.reasoning_gym_reward("<answer>2</answer>", sample, isolate=False)


def test_correctness_passes_its_answer_format_to_the_reasoning_gym_verifier():
    train, _ = make_splits("chain_sum", 4, 1, seed=0, source="reasoning_gym", config={"max_terms": 2})
    sample = train[0]
    boxed = f"<think>adding</think> The total is \\boxed{{{sample['answer']}}}."
    assert correctness_reward(boxed, sample) == 0.0  # tags: no <answer> block
    assert correctness_reward(boxed, sample, answer_format="boxed") == 1.0
