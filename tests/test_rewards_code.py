"""code_reward: code extraction, scoring, reasons, the correctness dispatch, and reward hacks scoring 0."""
from __future__ import annotations

import pickle

import pytest

from rewards import Reward, code_reward, correctness_reward, extract_code, resolve, weighted_sum
from tests.sandbox_support import no_stray_processes  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("no_stray_processes")

SAMPLE = {
    "prompt": "Write digit_sum(n).",
    "verifier": "code",
    "tests": ["assert digit_sum(1234) == 10", "assert digit_sum(0) == 0", "assert digit_sum(99) == 18",
              "assert digit_sum(5) == 5"],
}
GOOD = "def digit_sum(n):\n    return sum(int(d) for d in str(n))"


def answer(code: str, lang: str = "python", think: str = "Add the digits.") -> str:
    return f"<think>{think}</think>\n<answer>\nHere it is:\n```{lang}\n{code}\n```\n</answer>"


def score(completion: str, sample=None, **options) -> Reward:
    return code_reward(completion, sample or SAMPLE, timeout_s=1.0, memory_mb=256, **options)


def test_extract_code_takes_the_last_python_block_of_the_answer():
    assert extract_code(answer("x = 1")) == "x = 1\n"
    two = "<answer>```python\nfirst = 1\n```\ntext\n```py\nsecond = 2\n```</answer>"
    assert extract_code(two) == "second = 2\n"
    # The think block's code does not count when there is an answer block.
    assert extract_code("<think>```python\nthought = 1\n```</think><answer>no code</answer>") is None
    # No answer block: the whole completion is searched.
    assert extract_code("Sure:\n```\nplain = 1\n```\n") == "plain = 1\n"
    assert extract_code("```bash\nrm -rf /\n```") is None
    assert extract_code("```python\nunclosed = 1\n") is None
    assert extract_code("```python\n\n```") is None


def test_correct_code_scores_one():
    assert score(answer(GOOD)) == Reward(1.0, "ok")


def test_pass_fraction_and_all_or_nothing():
    partial = "def digit_sum(n):\n    return 10 if n == 1234 else n"  # right for 1234, 0 and 5
    value = score(answer(partial))
    assert value == pytest.approx(0.75) and value.reason == "wrong_answer"
    assert score(answer(partial), all_or_nothing=True) == Reward(0.0, "wrong_answer")


@pytest.mark.parametrize("completion, reason", [
    ("<think>hmm</think><answer>sum the digits</answer>", "no_code"),
    (answer("def digit_sum(n) return 0"), "compile_error"),
    (answer("def digit_sum(n):\n    while True:\n        pass"), "timeout"),
    (answer("def digit_sum(n):\n    return len(bytearray(10 ** 10))"), "memory"),
    (answer("def digit_sum(n):\n    return int('x')"), "runtime_error"),
    (answer("def digit_sum(n):\n    return str(n)"), "wrong_answer"),
])
def test_reasons(completion, reason):
    value = score(completion)
    assert value == 0.0 and value.reason == reason


def test_bad_or_missing_tests_and_oversized_code():
    assert score(answer(GOOD), {"prompt": "x", "verifier": "code"}) == Reward(0.0, "invalid_tests")
    assert score(answer(GOOD), {**SAMPLE, "tests": ["x = 1"]}) == Reward(0.0, "invalid_tests")
    assert score(answer("x = 1\n" * 100), max_code_chars=50) == Reward(0.0, "code_too_long")


def test_program_tests_and_test_setup():
    sample = {"tests": [{"stdin": "3 4\n", "stdout": "7\n"}, {"stdin": "10 -2", "stdout": "8"}]}
    assert score(answer("a, b = map(int, input().split())\nprint(a + b)"), sample) == 1.0
    with_setup = {"tests": ["assert floor_half(5) == 2"], "test_setup": "import math"}
    assert score(answer("def floor_half(x):\n    return math.floor(x / 2)"), with_setup) == 1.0


HACKS = {
    "exit 0 before any test": "import sys\nsys.exit(0)",
    "always-equal result": "class A:\n    def __eq__(self, o): return True\n    __hash__ = None\n"
                           "def digit_sum(n):\n    return A()",
    "fake pass markers": "print('PASSED 4/4')\nprint('ok')\ndef digit_sum(n):\n    print('passed')",
    "exit inside the function": "import os\ndef digit_sum(n):\n    os._exit(0)",
    "patch the runner": "import builtins\nbuiltins.eval = lambda *a, **k: True\n"
                        "def digit_sum(n):\n    return 0",
}


@pytest.mark.parametrize("name", list(HACKS))
def test_reward_hacks_score_zero(name):
    assert score(answer(HACKS[name])) == 0.0


def test_correctness_dispatches_code_samples_to_the_sandbox():
    assert resolve("code") is code_reward
    assert correctness_reward(answer(GOOD), SAMPLE) == Reward(1.0, "ok")
    assert correctness_reward(answer("def digit_sum(n):\n    return 0"), SAMPLE).reason == "wrong_answer"
    assert correctness_reward("no code at all", SAMPLE) == Reward(0.0, "no_code")


def test_usable_as_a_configured_reward_term():
    score_fn = weighted_sum([{"name": "format", "weight": 0.5},
                             {"name": "code", "weight": 1.0, "options": {"all_or_nothing": True, "timeout_s": 2}}])
    total, parts = score_fn(answer(GOOD), SAMPLE)
    assert total == 1.5 and parts["code"].reason == "ok"
    assert pickle.loads(pickle.dumps(parts["code"])).reason == "ok"
    with pytest.raises(ValueError, match="options .* do not fit"):
        weighted_sum([{"name": "code", "options": {"timeout": 2}}])
