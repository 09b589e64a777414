"""pass@k, maj@k and intervals against brute-force references."""
import itertools
import math
import random

import pytest

from stages.eval_stats import majority_correct, mean_ci95, pass_at_k


def brute_pass_at_k(flags, k):
    subsets = list(itertools.combinations(range(len(flags)), k))
    return sum(any(flags[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("seed", range(20))
def test_pass_at_k_matches_enumeration(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 9)
    flags = [rng.random() < 0.4 for _ in range(n)]
    for k in range(1, n + 1):
        assert math.isclose(pass_at_k(n, sum(flags), k), brute_pass_at_k(flags, k), abs_tol=1e-12)


def test_pass_at_k_rejects_bad_arguments():
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_majority_vote():
    assert majority_correct(["3", "4", "3"], [True, False, True])
    assert not majority_correct(["4", "4", "3"], [False, False, True])
    assert not majority_correct([None, None], [False, False])
    # tie: the answer seen first wins
    assert majority_correct(["3", "4"], [True, False])
    assert not majority_correct(["4", "3"], [False, True])


def test_mean_ci95_contains_mean_and_shrinks_with_n():
    small = mean_ci95([0, 1] * 5)
    large = mean_ci95([0, 1] * 500)
    assert small[1] < 0.5 < small[2]
    assert (large[2] - large[1]) < (small[2] - small[1])
    assert mean_ci95([1.0] * 10) == (1.0, 1.0, 1.0)


def test_paired_difference_matches_a_hand_computation(tmp_path):
    import json
    import math

    from stages.eval_stats import paired_difference, per_prompt_rates

    before = {"a": 0.0, "b": 0.5, "c": 1.0, "d": 0.0}
    after = {"a": 0.5, "b": 1.0, "c": 1.0, "d": 0.5, "e": 1.0}  # "e" has no partner: ignored
    d = paired_difference(before, after)
    diffs = [0.5, 0.5, 0.0, 0.5]
    se = math.sqrt(sum((x - 0.375) ** 2 for x in diffs) / 3 / 4)
    assert d["n"] == 4 and d["mean"] == 0.375 and abs(d["z"] - 0.375 / se) < 1e-12
    assert abs(d["ci_low"] - (0.375 - 1.96 * se)) < 1e-12
    assert math.isnan(paired_difference({"a": 1.0}, {"a": 0.0})["mean"])
    path = tmp_path / "eval_samples.jsonl"
    path.write_text("\n".join(json.dumps({"id": i, "task": i, "completions": [{"correct": c, "format": True}
                                                                               for c in cs]})
                              for i, cs in (("x", [True, False]), ("y", [False, False]))) + "\n")
    assert per_prompt_rates(path) == {"x": 0.5, "y": 0.0}
    assert per_prompt_rates(path, tasks={"y"}) == {"y": 0.0}
    assert per_prompt_rates(path, "format") == {"x": 1.0, "y": 1.0}
