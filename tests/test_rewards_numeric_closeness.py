"""numeric_closeness: partial credit for a final number near the gold one (the RL-only student's shaping)."""
import pytest

from rewards import resolve, weighted_sum


@pytest.mark.parametrize("completion,answer,expected", [
    ("so it is 148", "148", 1.0),                     # exact: full credit
    ("about 150.", "148", 1 / (1 + 2 / 148)),         # relative error 2/148
    ("maybe 0", "4", 1 / (1 + 4 / 4)),                # relative error 1: half
    ("it is 1/2", "3/4", 1 / (1 + 0.25 / 1)),         # |gold| < 1: the absolute error counts
    ("-3 then 7", "-3", 1 / (1 + 10 / 3)),            # the LAST number is the answer
])
def test_the_reward_falls_with_the_relative_distance(completion, answer, expected):
    reward = resolve("numeric_closeness")(completion, {"answer": answer})
    assert float(reward) == pytest.approx(expected) and reward.reason == "ok"


def test_no_number_scores_0_with_the_reason_and_a_gold_without_a_number_is_not_applicable():
    fn = resolve("numeric_closeness")
    assert (float(fn("no digits here", {"answer": "12"})), fn("no digits here", {"answer": "12"}).reason) == (
        0.0, "no_number")
    assert fn("<think>12", {"answer": "12"}).reason == "unclosed_think"  # no answer before the block closes
    assert fn("anything 3", {"answer": "red"}) is None
    assert float(fn("<think>8</think><answer>12</answer> 9", {"answer": "12"}, answer_format="tags")) == 1.0


def test_it_ranks_a_group_of_wrong_answers_where_correctness_gives_all_zero():
    completions = ["x 140", "x 100", "x 3", "no number"]
    score = weighted_sum([{"name": "correctness", "options": {"answer_format": "last_number"}}])
    close = weighted_sum([{"name": "numeric_closeness"}])
    sample = {"answer": "148", "verifier": "accuracy"}
    assert [float(score(c, sample)[0]) for c in completions] == [0.0] * 4
    values = [float(close(c, sample)[0]) for c in completions]
    assert values == sorted(values, reverse=True) and len(set(values)) == 4
