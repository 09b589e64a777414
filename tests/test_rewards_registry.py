"""Registry, users' rewards, weighted sums, and correctness dispatch."""
import logging
import math
import pickle
import textwrap

import pytest

import rewards
from rewards import (
    Reward,
    RewardSpec,
    accuracy_reward,
    correctness_reward,
    format_reward,
    reason_of,
    register,
    resolve,
    weighted_sum,
)
from rewards import registry

GOOD = "<think>2 + 2</think><answer>4</answer>"


@pytest.fixture
def private_registry(monkeypatch):
    """Let a test register rewards without leaking them into other tests."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """An importable module of user rewards, as a user's project would have."""
    (tmp_path / "my_user_rewards.py").write_text(
        textwrap.dedent(
            """
            NOT_CALLABLE = 3

            def brevity(completion, sample, limit=10):
                return 1.0 if len(completion) <= limit else 0.0

            class Holder:
                @staticmethod
                def shout(completion, sample):
                    return float(completion.isupper())
            """
        )
    )
    (tmp_path / "my_broken_rewards.py").write_text("raise RuntimeError('broken on import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_user_rewards"


def test_public_api_is_exported():
    for name in ["Reward", "reason_of", "format_reward", "accuracy_reward", "countdown_reward",
                 "instruction_reward", "language_consistency_reward", "overlong_penalty",
                 "correctness_reward", "register", "resolve", "RewardSpec", "weighted_sum",
                 "extract_answer_block"]:
        assert hasattr(rewards, name), name


def test_builtin_names_resolve():
    assert resolve("format") is format_reward
    assert resolve("accuracy") is accuracy_reward
    assert resolve("correctness") is correctness_reward
    assert resolve("overlong") is rewards.overlong_penalty
    assert resolve("language_consistency") is rewards.language_consistency_reward
    assert resolve(format_reward) is format_reward  # callables pass through


def test_unknown_name_is_one_clear_line():
    with pytest.raises(ValueError) as info:
        resolve("acuracy")
    message = str(info.value)
    assert "\n" not in message
    assert "'acuracy'" in message and "accuracy, code, correctness, countdown, format" in message


def test_user_function_paths(user_module):
    brevity = resolve(f"{user_module}:brevity")
    assert brevity("short", {}) == 1.0 and brevity("x" * 11, {}) == 0.0
    assert resolve(f"{user_module}:Holder.shout")("LOUD", {}) == 1.0


@pytest.mark.parametrize(
    "path, fragment",
    [
        ("no_such_package_xyz.mod:fn", "ModuleNotFoundError"),
        ("my_broken_rewards:fn", "RuntimeError: broken on import"),
        ("my_user_rewards:missing", "no attribute 'missing'"),
        ("my_user_rewards:NOT_CALLABLE", "not callable"),
    ],
)
def test_user_path_errors(user_module, path, fragment):
    with pytest.raises(ValueError) as info:
        resolve(path)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    assert path in str(info.value)


def test_register_decorator(private_registry):
    @register("shortness")
    def shortness(completion, sample):
        return Reward(1.0 if len(completion) < 5 else 0.0, "ok")

    assert resolve("shortness") is shortness
    assert "shortness" in registry.known_rewards()
    with pytest.raises(ValueError, match="already registered"):
        register("shortness")(lambda c, s: 0.0)
    with pytest.raises(ValueError, match="already registered"):
        register("format")(lambda c, s: 0.0)
    replacement = register("shortness", override=True)(lambda c, s: 0.5)
    assert resolve("shortness") is replacement
    with pytest.raises(ValueError):
        register("bad:name")


def test_weighted_sum_totals_and_parts(user_module):
    score = weighted_sum(
        [
            ("format", 0.5, {}),
            RewardSpec("accuracy", 1.0, {"timeout_s": 3.0}),
            {"name": "overlong", "weight": 2.0, "options": {"max_tokens": 10, "buffer_tokens": 4}},
            f"{user_module}:brevity",
        ]
    )
    total, parts = score(GOOD, {"answer": "4", "completion_tokens": 8})
    assert list(parts) == ["format", "accuracy", "overlong", f"{user_module}:brevity"]
    assert float(parts["overlong"]) == pytest.approx(-0.5)  # 2 tokens into a 4-token buffer
    assert parts[f"{user_module}:brevity"] == 0.0
    assert all(isinstance(p, Reward) for p in parts.values())
    assert total == pytest.approx(0.5 * 1.0 + 1.0 * 1.0 + 2.0 * -0.5 + 1.0 * 0.0)
    wrong_total, wrong_parts = score(GOOD, {"answer": "5", "completion_tokens": 1})
    assert wrong_total == pytest.approx(0.5) and wrong_parts["accuracy"].reason == "wrong"


def test_the_same_reward_twice_keeps_both_parts():
    score = weighted_sum([("overlong", 1.0, {"max_tokens": 10, "buffer_tokens": 5}),
                          ("overlong", 1.0, {"max_tokens": 100, "buffer_tokens": 50}),
                          RewardSpec("format", label="fmt")])
    total, parts = score(GOOD, {"completion_tokens": 60})
    assert list(parts) == ["overlong", "overlong#2", "fmt"]
    assert total == pytest.approx(-1.0 + -0.2 + 1.0)


@pytest.mark.parametrize(
    "specs, fragment",
    [
        ([("nope", 1.0, {})], "unknown reward 'nope'"),
        ([("overlong", 1.0, {})], "do not fit"),  # max_tokens and buffer_tokens are required
        ([("format", 1.0, {"prefiled_think": True})], "do not fit"),  # a typo in an option
        ([("format", float("nan"), {})], "weight must be a finite number"),
        ([("format", "1", {})], "weight must be a finite number"),
        ([{"weight": 1.0}], "needs 'name'"),
        ([("format", 1.0, {}, "extra")], "cannot read reward spec"),
        ([], "at least one reward"),
    ],
)
def test_weighted_sum_checks_specs_up_front(specs, fragment):
    with pytest.raises(ValueError, match=fragment):
        weighted_sum(specs)


def test_a_raising_user_reward_scores_zero_and_is_logged_once(caplog):
    calls = []

    def flaky(completion, sample):
        calls.append(1)
        return 1 / 0

    score = weighted_sum([("format", 1.0, {}), (flaky, 3.0, {})])
    with caplog.at_level(logging.ERROR, logger="rewards.registry"):
        for _ in range(3):
            total, parts = score(GOOD, {})
            assert total == 1.0
            assert (float(parts["flaky"]), parts["flaky"].reason) == (0.0, "error:ZeroDivisionError")
    assert len(calls) == 3
    logged = [r for r in caplog.records if "flaky" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "1.0", [1.0], complex(1, 0)])  # None: not
# applicable (tests/test_rewards_signatures.py)
def test_invalid_values_score_zero(value):
    score = weighted_sum([(lambda c, s: value, 1.0, {}), ("format", 1.0, {})])
    total, parts = score(GOOD, {})
    assert total == 1.0
    assert parts["<lambda>"].reason == "invalid_value" and float(parts["<lambda>"]) == 0.0


def test_plain_floats_and_bools_from_users_become_rewards():
    score = weighted_sum([(lambda c, s: 0.25, 4.0, {}), RewardSpec(lambda c, s: True, label="flag")])
    total, parts = score(GOOD, {})
    assert total == 2.0
    assert isinstance(parts["<lambda>"], Reward) and reason_of(parts["<lambda>"]) == "ok"
    assert float(parts["flag"]) == 1.0


def test_weighted_sum_pickles_for_ray():
    score = weighted_sum([("format", 1.0, {}), ("accuracy", 1.0, {"timeout_s": 2.0})])
    clone = pickle.loads(pickle.dumps(score))
    total, parts = clone(GOOD, {"answer": "4"})
    assert total == 2.0 and parts["accuracy"].reason == "ok"
    assert not math.isnan(total)


# --- correctness dispatch -------------------------------------------------------------------------

def test_correctness_dispatches_on_verifier():
    assert correctness_reward(GOOD, {"answer": "4"}) == 1.0  # accuracy is the default
    assert correctness_reward(GOOD, {"answer": "5", "verifier": "accuracy"}).reason == "wrong"
    countdown = {"verifier": "countdown", "numbers": [1, 3], "target": 4}
    assert correctness_reward("<answer>1 + 3</answer>", countdown) == 1.0
    assert correctness_reward("<answer>3 - 1</answer>", countdown).reason == "wrong_value"


def test_correctness_for_instructions_needs_every_constraint():
    sample = {"verifier": "instruction",
              "constraints": [{"kind": "lowercase"}, {"kind": "max_words", "n": 1}]}
    partial = correctness_reward("<answer>two words</answer>", sample)
    assert (float(partial), partial.reason) == (0.0, "failed:max_words")
    assert correctness_reward("<answer>one</answer>", sample) == 1.0


@pytest.mark.parametrize("verifier", ["sql", "correctness", "format", "os:system", "my_user_rewards:brevity"])
def test_correctness_refuses_unknown_and_unsuitable_verifiers(verifier, user_module):
    r = correctness_reward(GOOD, {"verifier": verifier, "answer": "4"})
    assert (float(r), r.reason) == (0.0, f"unknown_verifier:{verifier}")


def test_correctness_uses_a_registered_user_verifier(private_registry):
    @register("printing")
    def fake_checker(completion, sample):
        return 1.0 if "print" in completion else 0.0

    r = correctness_reward("<answer>print(1)</answer>", {"verifier": "printing"})
    assert isinstance(r, Reward) and (float(r), r.reason) == (1.0, "ok")
    assert correctness_reward("<answer>nothing</answer>", {"verifier": "printing"}) == 0.0
