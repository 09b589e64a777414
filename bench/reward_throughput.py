"""Throughput of ``accuracy_reward`` in the main thread, from one worker thread, and from a thread pool.

    python bench/reward_throughput.py [--n 2000] [--threads N] [--timeout 5]

Scores a seeded, realistic mix of completions (correct and wrong integers, LaTeX fractions, decimals,
boxed answers, malformed outputs) and writes the figures to ``bench/results/reward_throughput.json``.
Modes: the main thread with the default isolated check (helper processes of ``rewards.math_check_pool``)
and with ``isolate=False`` (math-verify's signal timeouts in-process); one worker thread; a thread pool.
Helper start-up is timed separately, not in the rates.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rewards import accuracy_reward  # noqa: E402
from rewards.math_check_pool import shared_pool  # noqa: E402

FILLER = "Let me check this step by step, carrying the remainder and simplifying the fraction. "


def make_mix(n: int, seed: int = 0) -> list[tuple[str, str, dict]]:
    """``(kind, completion, sample)`` triples; numbers vary so no cache makes the work trivial."""
    rng = random.Random(seed)
    kinds = ["int_correct", "int_wrong", "boxed_correct", "frac_vs_decimal", "decimal_vs_frac",
             "dfrac_correct", "negative_correct", "frac_wrong", "malformed", "unparsable"]
    mix = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        a, b = rng.randint(1, 999), rng.choice([2, 4, 5, 8, 10, 20, 25])
        if kind == "int_correct":
            gold, said = str(a), str(a)
        elif kind == "int_wrong":
            gold, said = str(a), str(a + rng.randint(1, 9))
        elif kind == "boxed_correct":
            gold, said = str(a * b), f"The total is $\\boxed{{{a * b}}}$."
        elif kind == "frac_vs_decimal":
            gold, said = f"{a}/{b}", f"\\frac{{{a}}}{{{b}}}" if rng.random() < 0.5 else str(a / b)
        elif kind == "decimal_vs_frac":
            gold, said = str(a / b), f"{a}/{b}"
        elif kind == "dfrac_correct":
            gold, said = f"\\frac{{{a}}}{{{b}}}", f"\\dfrac{{{a}}}{{{b}}}"
        elif kind == "negative_correct":
            gold, said = str(-a), f"$\\boxed{{-{a}}}$"
        elif kind == "frac_wrong":
            gold, said = f"{a}/{b}", f"\\frac{{{b}}}{{{a + 1}}}"
        elif kind == "malformed":
            gold, said = str(a), None
        else:
            gold, said = str(a), "I am not sure???"
        think = FILLER * rng.randint(5, 40)
        completion = (f"<think>{think}</think>\n<answer>{said}</answer>" if said is not None
                      else f"<think>{think} so the answer is {a}")  # truncated: never closed
        mix.append((kind, completion, {"answer": gold}))
    return mix


def score_all(items, timeout_s: float, isolate: bool = True) -> list[float]:
    return [float(accuracy_reward(c, s, timeout_s=timeout_s, isolate=isolate)) for _, c, s in items]


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def in_worker_thread(fn, *args):
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("r", timed(fn, *args)))
    thread.start()
    thread.join()
    return out["r"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="completions per measurement")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="thread-pool size")
    parser.add_argument("--timeout", type=float, default=5.0, help="accuracy_reward timeout_s")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "reward_throughput.json")
    args = parser.parse_args()

    # Each mode scores its own freshly seeded mix with the same composition, so no mode profits from
    # gold answers cached by an earlier one (every completion has its own gold: a cold-cache figure).
    items, in_process_items, worker_items, pool_items = (make_mix(args.n, seed) for seed in range(4))
    accuracy_reward("<answer>1</answer>", {"answer": "1"}, isolate=False)  # import-time work out of the figures
    _, start_s = timed(accuracy_reward, "<answer>1</answer>", {"answer": "1"})  # the first helper starts

    main_scores, main_s = timed(score_all, items, args.timeout)
    in_process_scores, in_process_s = timed(score_all, in_process_items, args.timeout, False)
    worker_scores, worker_s = in_worker_thread(score_all, worker_items, args.timeout)

    with ThreadPoolExecutor(args.threads) as pool:  # start every helper the pool will use
        list(pool.map(lambda _: accuracy_reward("<answer>1</answer>", {"answer": "1"}), range(args.threads * 2)))
        chunks = [pool_items[i :: args.threads] for i in range(args.threads)]
        start = time.perf_counter()
        pool_scores = [x for chunk in pool.map(lambda ch: score_all(ch, args.timeout), chunks) for x in chunk]
        pool_s = time.perf_counter() - start

    correct_by_kind = Counter(kind for (kind, _, _), s in zip(items, main_scores) if s == 1.0)
    for other, scores in [(in_process_items, in_process_scores), (worker_items, worker_scores),
                          ([x for i in range(args.threads) for x in pool_items[i :: args.threads]], pool_scores)]:
        if Counter(kind for (kind, _, _), s in zip(other, scores) if s == 1.0) != correct_by_kind:
            raise SystemExit("modes disagree on which kinds of completion are correct")
    results = {
        "n": args.n,
        "timeout_s": args.timeout,
        "mix": dict(Counter(kind for kind, _, _ in items)),
        "scored_correct_by_kind": dict(correct_by_kind),
        "helper_start_and_first_call_s": round(start_s, 3),
        "main_thread": {"seconds": round(main_s, 3), "completions_per_s": round(args.n / main_s, 1)},
        "main_thread_in_process": {"seconds": round(in_process_s, 3),
                                   "completions_per_s": round(args.n / in_process_s, 1)},
        "worker_thread": {"seconds": round(worker_s, 3), "completions_per_s": round(args.n / worker_s, 1)},
        "thread_pool": {"threads": args.threads, "helpers": shared_pool().size, "seconds": round(pool_s, 3),
                        "completions_per_s": round(args.n / pool_s, 1)},
        "machine": {"python": platform.python_version(), "math_verify": version("math-verify"),
                    "cpu_count": os.cpu_count(), "platform": platform.platform()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for mode in ("main_thread", "main_thread_in_process", "worker_thread", "thread_pool"):
        print(f"{mode:>22}: {results[mode]['completions_per_s']:8.1f} completions/s "
              f"({results[mode]['seconds']:.2f} s for {args.n})")
    print(f"helper start + first call: {start_s:.2f} s; results in {args.out}")


if __name__ == "__main__":
    main()
