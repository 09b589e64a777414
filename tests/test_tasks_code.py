"""The code task generator: seeded, split by prompt, tests that its own reference solution passes."""
from __future__ import annotations

import ast
import json

import pytest

import tasks
from rewards import code_reward, format_reward
from sandbox import SandboxPool, parse_tests
from tasks import generate_code, make_demonstration, make_splits
from tasks.code import LEVELS, TESTS_PER_PROBLEM
from tests.sandbox_support import no_stray_processes  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def samples() -> dict[int, list[dict]]:
    return {level: generate_code(24, seed=7, difficulty=level) for level in LEVELS}


def reference_code(sample: dict) -> str:
    text = sample["reference_response"]
    assert text.startswith("```python\n") and text.endswith("\n```")
    return text[len("```python\n"):-len("\n```")]


def test_registered_and_accepted_by_the_config():
    from pipeline.config import TaskMix

    assert tasks.TASKS["code"] is generate_code
    assert TaskMix(name="code", n_train=10, n_test=2).name == "code"
    mixed = tasks.build({"code": 6, "arithmetic": {"n": 4, "difficulty": 1}}, seed=0, split="train")
    assert sum(s["task"] == "code" for s in mixed) == 6


@pytest.mark.parametrize("level", list(LEVELS))
def test_samples_follow_the_schema(level, samples):
    for s in samples[level]:
        assert s["task"] == "code" and s["verifier"] == "code" and s["difficulty"] == level
        assert "answer" not in s and s["solution"].strip()
        assert len(s["tests"]) == TESTS_PER_PROBLEM and len(parse_tests(s["tests"])) == TESTS_PER_PROBLEM
        assert len(set(s["tests"])) == TESTS_PER_PROBLEM
        # The prompt shows the first test as its example; the others stay hidden.
        call, expected = s["tests"][0].removeprefix("assert ").split(" == ", 1)
        assert f"`{call}` returns `{expected}`" in s["prompt"]
        assert all(t.split(" == ")[0].removeprefix("assert ") not in s["prompt"] for t in s["tests"][1:])
        ast.parse(reference_code(s))
        json.dumps(s)


def test_same_seed_same_samples_other_seed_other_problems(samples):
    assert generate_code(24, seed=7, difficulty=1) == samples[1]
    first = {s["prompt"] for s in generate_code(20, seed=1)}
    second = {s["prompt"] for s in generate_code(20, seed=2)}
    assert len(first & second) < 5


@pytest.mark.usefixtures("no_stray_processes")
def test_every_reference_solution_passes_its_tests_in_the_sandbox(samples):
    everything = [s for level in LEVELS for s in samples[level]]
    with SandboxPool() as pool:
        reports = pool.run_tests_many([(reference_code(s), s["tests"]) for s in everything], timeout_s=2.0)
    failed = [(s["prompt"], r.outcomes) for s, r in zip(everything, reports) if not r.all_passed]
    assert not failed


@pytest.mark.usefixtures("no_stray_processes")
def test_demonstrations_are_well_formed_and_earn_full_reward(samples):
    for s in (samples[1][0], samples[2][0], samples[3][0]):
        demo = make_demonstration(s)
        content = demo["messages"][1]["content"]
        assert format_reward(content) == 1.0
        assert "```python" in content.split("<answer>")[1]
        assert code_reward(content, s, timeout_s=2.0) == 1.0


def test_splits_never_share_a_problem():
    train, test = make_splits("code", 60, 20, seed=4)
    assert not {s["prompt"] for s in train} & {s["prompt"] for s in test}
    assert all(tasks.split_of(s["prompt"]) == "test" for s in test)
    # The example in a prompt is a function of the problem, so a problem has exactly one prompt: the same
    # problem can never sit in train and in test with different examples.
    statements = lambda rows: {s["prompt"].split("\n\nFor example")[0] for s in rows}  # noqa: E731
    assert not statements(train) & statements(test)


def test_difficulty_is_checked():
    with pytest.raises(ValueError, match=r"code: difficulty must be one of \[1, 2, 3\], got 4"):
        generate_code(1, seed=0, difficulty=4)
