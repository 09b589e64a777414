"""Throughput of the sandbox: trivial programs and realistic test sets, one at a time and through the pool.

    python bench/sandbox_throughput.py [--n 200] [--sets 60] [--workers N]

Measures, in bubblewrap isolation: trivial executions per second (``pass``), serially and with a
``SandboxPool``; the per-execution overhead (wall time of one trivial execution) next to a bare
``python -S -I -c pass`` and a bare ``bwrap ... true``, to show where the time goes; and realistic test
sets per second: reference solutions of the ``code`` task (5 call tests, one execution per set) and a
stdin/stdout program with 5 tests (five executions per set). Writes bench/results/sandbox_throughput.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sandbox import SandboxConfig, SandboxPool, ensure_available, run_python, run_tests  # noqa: E402
from sandbox.isolation import bwrap_options, interpreter  # noqa: E402
from tasks import generate_code  # noqa: E402

PROGRAM = "a, b = map(int, input().split())\nprint(a + b)\n"
PROGRAM_TESTS = [{"stdin": f"{a} {b}\n", "stdout": f"{a + b}\n"}
                 for a, b in [(1, 2), (5, -3), (10, 20), (0, 0), (7, 8)]]


def per_second(count: int, seconds: float) -> float:
    return round(count / seconds, 1)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def median_ms(argv: list[str], repeats: int) -> float:
    """Median wall time of running ``argv`` to completion, in ms."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True, env={})
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 1)


def code_task_jobs(count: int) -> list[tuple[str, list]]:
    """``(reference solution, tests)`` of generated code tasks across the three levels."""
    samples = [s for level in (1, 2, 3) for s in generate_code(count // 3 + 1, seed=0, difficulty=level)][:count]
    return [(s["reference_response"].removeprefix("```python\n").removesuffix("\n```"), s["tests"]) for s in samples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="trivial executions per measurement")
    parser.add_argument("--sets", type=int, default=60, help="test sets per measurement")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="pool size")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sandbox_throughput.json")
    args = parser.parse_args()

    config = SandboxConfig()
    ensure_available(config)  # the one-time probe stays out of the figures
    python = interpreter(config)
    run_python("pass", config=config)
    sandbox_argv = [*bwrap_options(config, python), "--"]
    breakdown = {  # measured first, while nothing else of ours runs
        "bare_python_S_I": median_ms([python, "-S", "-I", "-c", "pass"], 30),
        "bwrap_true": median_ms([*sandbox_argv, "/bin/true"], 30),
        "bwrap_python_S_I": median_ms([*sandbox_argv, python, "-S", "-I", "-c", "pass"], 30),
    }

    serial, serial_s = timed(lambda: [run_python("pass", config=config) for _ in range(args.n)])
    walls = sorted(r.wall_s for r in serial)
    with SandboxPool(args.workers, config) as pool:
        pool.run_python_many(["pass"] * args.workers)  # threads started outside the figure
        pooled, pooled_s = timed(pool.run_python_many, ["pass"] * args.n)
        jobs = code_task_jobs(args.sets)
        calls_pooled, calls_pooled_s = timed(pool.run_tests_many, jobs)
        program_pooled, program_pooled_s = timed(pool.run_tests_many, [(PROGRAM, PROGRAM_TESTS)] * args.sets)
    calls_serial, calls_serial_s = timed(lambda: [run_tests(code, tests, config=config) for code, tests in jobs])
    program_serial, program_serial_s = timed(
        lambda: [run_tests(PROGRAM, PROGRAM_TESTS, config=config) for _ in range(args.sets)])
    if not all(r.ok for r in serial + pooled) or not all(
            r.all_passed for r in calls_pooled + calls_serial + program_pooled + program_serial):
        raise SystemExit("a benchmark execution failed: the figures would be meaningless")

    tests_per_set = len(PROGRAM_TESTS)
    results = {
        "isolation": config.isolation,
        "trivial": {
            "n": args.n,
            "serial_exec_per_s": per_second(args.n, serial_s),
            "pool_exec_per_s": per_second(args.n, pooled_s),
            "pool_workers": args.workers,
            "overhead_ms_median": round(statistics.median(walls) * 1000, 1),
            "overhead_ms_p90": round(walls[int(0.9 * len(walls))] * 1000, 1),
        },
        "overhead_breakdown_ms": {**breakdown, "run_python_pass": round(statistics.median(walls) * 1000, 1)},
        "code_task_sets": {
            "sets": len(jobs), "tests_per_set": 5, "executions_per_set": 1,
            "serial_sets_per_s": per_second(len(jobs), calls_serial_s),
            "pool_sets_per_s": per_second(len(jobs), calls_pooled_s),
            "pool_tests_per_s": per_second(len(jobs) * 5, calls_pooled_s),
        },
        "stdin_stdout_sets": {
            "sets": args.sets, "tests_per_set": tests_per_set, "executions_per_set": tests_per_set,
            "serial_sets_per_s": per_second(args.sets, program_serial_s),
            "pool_sets_per_s": per_second(args.sets, program_pooled_s),
            "pool_tests_per_s": per_second(args.sets * tests_per_set, program_pooled_s),
        },
        "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                    "platform": platform.platform(), "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                    "bwrap": subprocess.run([config.bwrap, "--version"], capture_output=True,
                                            text=True).stdout.strip()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    t = results["trivial"]
    print(f"trivial executions: {t['serial_exec_per_s']:7.1f}/s serial, {t['pool_exec_per_s']:7.1f}/s with a pool "
          f"of {args.workers}; overhead {t['overhead_ms_median']} ms median ({t['overhead_ms_p90']} ms p90)")
    print("overhead breakdown (ms, median): "
          + ", ".join(f"{k} {v}" for k, v in results["overhead_breakdown_ms"].items()))
    for name in ("code_task_sets", "stdin_stdout_sets"):
        r = results[name]
        print(f"{name}: {r['serial_sets_per_s']:6.1f} sets/s serial, {r['pool_sets_per_s']:6.1f} sets/s pooled "
              f"({r['pool_tests_per_s']:.1f} tests/s; {r['tests_per_set']} tests, {r['executions_per_set']} "
              "execution(s) per set)")
    print(f"load average at the end: {results['machine']['load_average_at_end']}; results in {args.out}")


if __name__ == "__main__":
    main()
