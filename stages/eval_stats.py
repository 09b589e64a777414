"""Pure evaluation statistics: pass@k, maj@k, confidence intervals."""
from __future__ import annotations

import math
from collections import Counter
from typing import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct: 1 - C(n-c, k) / C(n, k).

    >>> pass_at_k(4, 1, 1), pass_at_k(4, 1, 4), pass_at_k(4, 0, 2)
    (0.25, 1.0, 0.0)
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # Product form avoids huge binomials: prod_{i=n-c+1}^{n} (1 - k / i).
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def majority_correct(answers: Sequence[str | None], correct: Sequence[bool]) -> bool:
    """maj@k for one prompt: is the most frequent (non-empty) answer a correct one?

    Ties go to the answer seen first, so the result is deterministic for a given sample order.
    """
    if len(answers) != len(correct):
        raise ValueError("answers and correct must have the same length")
    votes = Counter(a for a in answers if a)
    if not votes:
        return False
    best = max(votes.values())
    winner = next(a for a in answers if a and votes[a] == best)
    return any(ok for a, ok in zip(answers, correct) if a == winner)


def mean_ci95(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean of per-prompt scores with a normal-approximation 95% interval, clipped to [0, 1]."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0, 1.0
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = 1.96 * math.sqrt(var / n)
    return mean, max(0.0, mean - half), min(1.0, mean + half)


def paired_difference(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean of ``after[p] - before[p]`` over the prompts both scored, with a 95% interval and z.

    Pairing by prompt removes the prompt-difficulty variance both evals share, so a change is judged
    against the noise of the change itself, not of each eval separately.
    """
    keys = sorted(set(before) & set(after))
    diffs = [after[k] - before[k] for k in keys]
    n = len(diffs)
    if n < 2:
        return {"n": n, "mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "z": float("nan")}
    mean = sum(diffs) / n
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n)
    return {"n": n, "mean": mean, "ci_low": mean - 1.96 * se, "ci_high": mean + 1.96 * se,
            "z": mean / se if se > 0 else (0.0 if mean == 0 else math.copysign(math.inf, mean))}


def per_prompt_rates(eval_samples_path, key: str = "correct", tasks=None) -> dict[str, float]:
    """Per prompt, the share of its completions with ``key`` true, from an ``eval_samples.jsonl``; only the
    prompts of ``tasks`` when given."""
    import json

    rates = {}
    with open(eval_samples_path) as fh:
        for line in fh:
            row = json.loads(line)
            comps = row["completions"]
            if tasks is not None and row.get("task") not in tasks:
                continue
            if comps:
                rates[str(row["id"])] = sum(bool(c[key]) for c in comps) / len(comps)
    return rates
