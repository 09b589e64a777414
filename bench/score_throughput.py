"""Rows per second of `r1 score` with the recipe's rewards (format + correctness), timed as a user runs it.

    python bench/score_throughput.py [--rows 10000] [--samples 4] [--repeats 3] [--threads N]

Builds realistic rows from the synthetic tasks (`tasks.make_splits`: the quickstart's arithmetic and word
problems plus linear equations), ``--samples`` completions per prompt as an eval or a GRPO group has them,
in a seeded mix of correct (the task's own worked solution in the R1 layout, or an equivalent form of the
answer), wrong and malformed completions (truncated, no answer block, text outside the tags, empty answer).
Then runs the `r1 score` console script on them as a subprocess (start-up, reading, scoring, writing and the
table: the whole command) ``--repeats`` times, checks every row's verdict against its kind, and writes
``bench/results/score_throughput.json``. Side by side, in the same run: the reward pool's own rate
(``bench/reward_throughput.py``'s thread-pool mode, ``accuracy_reward`` alone, no file, no format reward).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tasks.splits import make_splits  # noqa: E402

TARGET_ROWS_PER_S = 1000.0
CONFIG = ROOT / "configs" / "quickstart.yaml"  # its rewards: format 0.5 + correctness 1.0
# (task, difficulty, share of the prompts): the quickstart's tasks, plus linear equations (fraction answers).
TASKS = (("arithmetic", 2, 0.4), ("word_problem", 1, 0.4), ("linear_equation", 3, 0.2))
# kind -> (share, format passes, correct)
KINDS = {
    "correct": (0.35, True, True),
    "correct_equivalent": (0.10, True, True),
    "wrong": (0.25, True, False),
    "truncated": (0.12, False, False),
    "no_answer_block": (0.06, False, False),
    "text_outside_tags": (0.06, False, True),
    "empty_answer": (0.06, False, False),
}


def equivalent_form(answer: str, rng: random.Random) -> str:
    """The same value written another way: a box, a LaTeX fraction, a decimal, an assignment."""
    if "/" in answer:
        num, den = answer.split("/")
        return rng.choice([f"\\frac{{{num}}}{{{den}}}", f"\\dfrac{{{num}}}{{{den}}}", f"\\boxed{{{answer}}}"])
    return rng.choice([f"\\boxed{{{answer}}}", f"x = {answer}", f"${answer}$", f"The answer is {answer}."])


def wrong_answer(answer: str, rng: random.Random) -> str:
    if "/" in answer:
        num, den = answer.split("/")
        return f"{int(num) + rng.randint(1, 5)}/{den}"
    value = float(answer)
    return str(int(value) + rng.choice([-10, -2, -1, 1, 2, 10])) if value.is_integer() else str(round(value * 10, 2))


def completion_of(kind: str, sample: dict, rng: random.Random) -> str:
    think, answer = sample["solution"], sample["answer"]
    layout = "<think>\n{think}\n</think>\n<answer>\n{answer}\n</answer>"
    if kind == "correct":
        return layout.format(think=think, answer=answer)
    if kind == "correct_equivalent":
        return layout.format(think=think, answer=equivalent_form(answer, rng))
    if kind == "wrong":
        return layout.format(think=think.rsplit("\n", 1)[0] + "\nI think that is it.", answer=wrong_answer(answer, rng))
    if kind == "truncated":  # ran out of tokens inside the reasoning
        return "<think>\n" + think[: rng.randint(10, max(11, len(think) - 5))]
    if kind == "no_answer_block":
        return f"<think>\n{think}\n</think>\nSo the final answer is \\boxed{{{answer}}}."
    if kind == "text_outside_tags":
        return layout.format(think=think, answer=answer) + f"\nI hope {answer} is right."
    return layout.format(think=think, answer="")  # empty_answer


def make_rows(n_rows: int, samples: int, seed: int = 0) -> list[dict]:
    """``n_rows`` rows (``samples`` per prompt), each a sample's fields + ``completion`` + its ``kind``."""
    rng = random.Random(seed)
    prompts = -(-n_rows // samples)
    pool = []
    for task, difficulty, share in TASKS:
        pool += make_splits(task, max(1, round(prompts * share)), 8, seed=seed, difficulty=difficulty).train
    rng.shuffle(pool)
    kinds, weights = list(KINDS), [share for share, _, _ in KINDS.values()]
    rows = []
    for sample in pool[:prompts]:
        for _ in range(samples):
            kind = rng.choices(kinds, weights)[0]
            rows.append({**sample, "kind": kind, "completion": completion_of(kind, sample, rng)})
    return rows[:n_rows]


def run_score(rows_path: Path, out_path: Path, threads: int | None) -> float:
    """Wall seconds of the whole `r1 score` command."""
    cmd = [str(Path(sys.executable).with_name("r1")), "score", "-c", str(CONFIG), "--completions", str(rows_path),
           "--out", str(out_path)] + ([] if threads is None else ["--threads", str(threads)])
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"r1 score failed ({done.returncode}): {done.stderr.strip()}")
    print("\n".join(line for line in done.stdout.splitlines() if not line.startswith("scored ")))
    return seconds


def check_verdicts(out_path: Path) -> dict:
    """Each kind's rows scored as that kind must be; returns ``{kind: [rows, format passes, correct]}``."""
    seen: dict[str, list[int]] = {}
    for line in out_path.read_text().splitlines():
        row = json.loads(line)
        fmt, correct = row["rewards"]["format"]["value"], row["rewards"]["correctness"]["value"]
        counts = seen.setdefault(row["kind"], [0, 0, 0])
        counts[0] += 1
        counts[1] += fmt == 1.0
        counts[2] += correct == 1.0
    for kind, (n, fmt, correct) in seen.items():
        _, want_fmt, want_correct = KINDS[kind]
        if fmt != (n if want_fmt else 0) or correct != (n if want_correct else 0):
            raise SystemExit(f"{kind}: {fmt}/{n} format passes and {correct}/{n} correct, expected "
                             f"{'all' if want_fmt else 'none'} and {'all' if want_correct else 'none'}")
    return seen


def reward_pool_rate(n: int, threads: int) -> float:
    """bench/reward_throughput.py's thread-pool figure, measured here: accuracy_reward alone, completions/s."""
    sys.path.insert(0, str(ROOT / "bench"))
    from reward_throughput import make_mix, score_all

    from rewards import accuracy_reward

    items = make_mix(n, seed=3)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda _: accuracy_reward("<answer>1</answer>", {"answer": "1"}), range(threads * 2)))
        chunks = [items[i::threads] for i in range(threads)]
        start = time.perf_counter()
        list(pool.map(lambda chunk: score_all(chunk, 5.0), chunks))
        return n / (time.perf_counter() - start)


def git_commit() -> str:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return f"{head}{'+dirty' if dirty else ''}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=4, help="completions per prompt")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="r1 score --threads (default: its own)")
    parser.add_argument("--pool-n", type=int, default=2000, help="completions for the reward pool's own figure")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "score_throughput.json")
    args = parser.parse_args()

    rows = make_rows(args.rows, args.samples)
    load_before = os.getloadavg()  # other work on the machine slows every figure here alike: say how much
    with tempfile.TemporaryDirectory(prefix="r1-score-bench-") as tmp:
        rows_path, out_path = Path(tmp) / "rows.jsonl", Path(tmp) / "rows.scored.jsonl"
        rows_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        seconds = []
        for i in range(args.repeats):
            seconds.append(run_score(rows_path, out_path, args.threads))
            verdicts = check_verdicts(out_path)
            print(f"run {i + 1}: {len(rows)} rows in {seconds[-1]:.2f} s = {len(rows) / seconds[-1]:.0f} rows/s")
        size_mb = rows_path.stat().st_size / 1e6
    from pipeline.score import default_threads

    threads = args.threads or default_threads()
    pool_rate = reward_pool_rate(args.pool_n, os.cpu_count() or 2)
    median = statistics.median(seconds)
    results = {
        "commit": git_commit(),
        "command": f"r1 score -c configs/quickstart.yaml --completions ROWS.jsonl --out OUT.jsonl"
                   + ("" if args.threads is None else f" --threads {args.threads}"),
        "rows": len(rows),
        "file_mb": round(size_mb, 2),
        "samples_per_prompt": args.samples,
        "tasks": {task: n for task, n in Counter(r["task"] for r in rows).items()},
        "mix": {kind: {"rows": n, "format_ok": f, "correct": c} for kind, (n, f, c) in sorted(verdicts.items())},
        "rewards": [{"name": "format", "weight": 0.5}, {"name": "correctness", "weight": 1.0}],
        "threads": threads,
        "math_verify_helpers": min(4, os.cpu_count() or 1),
        "seconds": [round(s, 3) for s in seconds],
        "seconds_median": round(median, 3),
        "rows_per_s": round(len(rows) / median, 1),
        "rows_per_s_best": round(len(rows) / min(seconds), 1),
        "target_rows_per_s": TARGET_ROWS_PER_S,
        "meets_target": len(rows) / median >= TARGET_ROWS_PER_S,
        "reward_pool_completions_per_s": {"value": round(pool_rate, 1), "n": args.pool_n,
                                          "what": "bench/reward_throughput.py thread_pool mode: accuracy_reward "
                                                  "alone, in-process, every gold different"},
        "machine": {"python": platform.python_version(), "math_verify": version("math-verify"),
                    "cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "load_average_1_5_15_min": {"before": [round(x, 2) for x in load_before],
                                                "after": [round(x, 2) for x in os.getloadavg()]}},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"r1 score: {results['rows_per_s']:.0f} rows/s (median of {args.repeats}; best "
          f"{results['rows_per_s_best']:.0f}), target {TARGET_ROWS_PER_S:.0f}: "
          f"{'met' if results['meets_target'] else 'NOT met'}; reward pool alone: {pool_rate:.0f} completions/s; "
          f"results in {args.out}")


if __name__ == "__main__":
    main()
