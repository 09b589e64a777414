"""Countdown: exact arithmetic over the given numbers, and no way to smuggle anything else in."""
import time

import pytest

from rewards import countdown_reward

SAMPLE = {"numbers": [2, 3, 4, 6], "target": 24}


def score(expression, sample=SAMPLE, **options):
    return countdown_reward(f"<think>search</think><answer>{expression}</answer>", sample, **options)


@pytest.mark.parametrize(
    "expression",
    [
        "4 * 6 * (3 - 2)",
        "(3-2)*4*6",
        "6 / (3 - 2) * 4",
        " 4*6/(3-2) ",
        "4 * 6 * (3 - 2) = 24",
        "4 × 6 ÷ (3 − 2)",  # typographic operators
        "-(2 - 3) * 4 * 6",  # unary minus is allowed
    ],
)
def test_correct_expressions(expression):
    r = score(expression)
    assert (float(r), r.reason) == (1.0, "ok")


def test_exact_fractions_not_floats():
    # 8 / (3 - 8/3) is 23.999999999999996 in floating point.
    assert score("8 / (3 - 8 / 3)", {"numbers": [3, 3, 8, 8], "target": 24}) == 1.0
    assert score("5 * (5 - 1 / 5)", {"numbers": [1, 5, 5, 5], "target": 24}) == 1.0


@pytest.mark.parametrize(
    "expression, reason",
    [
        ("4 * 6", "wrong_numbers"),  # not all used
        ("4 * 6 * (3 - 2) + 2 - 2", "wrong_numbers"),  # 2 used three times
        ("4 * 6 * (3 - 2) * 1", "wrong_numbers"),  # 1 is not given
        ("24", "wrong_numbers"),
        ("4 * 6 + 3 - 2", "wrong_value"),
        ("4 * 6 * (3 - 2) = 25", "wrong_value"),  # a wrong claimed result
        ("2 + 3 + 4 + 6 = 24", "wrong_value"),
        ("4 * 6 / (2 - 2) * 3", "wrong_numbers"),  # numbers are checked before evaluating
        ("2 ** 3 * 4 * 6", "invalid_expression"),  # no powers
        ("4 * 6 // (3 - 2)", "invalid_expression"),  # no floor division
        ("4 * 6 % (3 - 2)", "invalid_expression"),
        ("4.0 * 6 * (3 - 2)", "invalid_expression"),  # integers only
        ("0x4 * 6 * (3 - 2)", "invalid_expression"),  # no hex spelling of a number
        ("4 * 6 * (3 - 2", "invalid_expression"),
        ("__import__('os').system('true')", "invalid_expression"),
        ("x * 6 * (3 - 2)", "invalid_expression"),
        ("", "invalid_expression"),
        ("= 24", "invalid_expression"),
        ("4 * 6 = 24 = 24", "invalid_expression"),
        ("\\boxed{4 * 6 * (3 - 2)}", "invalid_expression"),
        ("+4 * 6 * (3 - 2)", "invalid_expression"),  # unary plus is not an operation of the game
        ("04 * 6 * (3 - 2)", "invalid_expression"),
    ],
)
def test_rejected_expressions(expression, reason):
    r = score(expression)
    assert (float(r), r.reason) == (0.0, reason)


def test_division_by_zero():
    r = score("6 / (3 - 3) + 2 * 4", {"numbers": [2, 3, 3, 4, 6], "target": 24})
    assert (float(r), r.reason) == (0.0, "division_by_zero")


def test_use_all_false_allows_unused_numbers_but_not_reuse():
    assert score("4 * 6", use_all=False) == 1.0
    assert score("4 * 6", use_all=True).reason == "wrong_numbers"
    assert score("4 * 6 * 2 / 2", use_all=False).reason == "wrong_numbers"


def test_missing_answer_block_and_bad_samples():
    assert countdown_reward("4 * 6 * (3 - 2)", SAMPLE).reason == "no_answer_block"
    assert score("4 * 6 * (3 - 2)", {"numbers": [2, 3, 4, 6]}).reason == "invalid_sample"
    assert score("4 * 6 * (3 - 2)", {"numbers": [2, 3, 4, 6], "target": 2.5}).reason == "invalid_sample"
    assert score("4 * 6 * (3 - 2)", {"numbers": [2, 3, 4, 6], "target": float("inf")}).reason == "invalid_sample"
    assert score("4 * 6 * (3 - 2)", {"numbers": ["2", "3", 4.0, 6], "target": "24"}) == 1.0  # JSON-ish types


def test_long_and_deep_expressions_are_rejected_quickly():
    start = time.perf_counter()
    assert score("(" * 5000 + "4" + ")" * 5000).reason == "invalid_expression"
    assert score("1+" * 500_000 + "1").reason == "invalid_expression"
    assert score("(" * 140 + "4 * 6 * (3 - 2)" + ")" * 140) == 1.0  # deep but within the length cap
    assert score("-" * 280 + "4 * 6 * (3 - 2)") == 1.0  # an even number of unary minuses
    assert time.perf_counter() - start < 1.0
