"""pass@k, maj@k and intervals against brute-force references."""
import itertools
import math
import random

import pytest

from pipeline.metrics import majority_correct, mean_ci95, pass_at_k


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
