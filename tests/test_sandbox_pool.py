"""The pool: bounded parallel executions that survive crashes and hangs, picklable for Ray workers."""
from __future__ import annotations

import pickle
import threading
import time

import pytest

from sandbox import SandboxConfig, SandboxPool
from tests.sandbox_support import no_stray_processes  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("no_stray_processes")

FAST = SandboxConfig(timeout_s=1.0, memory_mb=256)


def test_many_executions_come_back_in_order():
    with SandboxPool(2, FAST) as pool:
        results = pool.run_python_many([f"print({i} * 2)" for i in range(12)])
    assert [r.stdout.strip() for r in results] == [str(i * 2) for i in range(12)]


def test_crashed_and_hung_executions_do_not_block_the_others():
    codes = ["import time; time.sleep(60)", "import os; os.kill(os.getpid(), 9)", "raise SystemExit(3)"]
    codes += ["print('fine')"] * 8
    start = time.monotonic()
    with SandboxPool(2, FAST) as pool:
        results = pool.run_python_many(codes)
    assert results[0].timed_out and results[1].exit_code == 137 and results[2].exit_code == 3
    assert all(r.ok and r.stdout == "fine\n" for r in results[3:])
    assert time.monotonic() - start < 6


def test_test_sets_run_in_parallel():
    jobs = [("def f(x):\n    return x + 1", ["assert f(1) == 2", "assert f(2) == 3"]),
            ("def f(x):\n    return x", ["assert f(1) == 2"]),
            ("print(int(input()) + 1)", [{"stdin": "4", "stdout": "5"}])]
    with SandboxPool(2, FAST) as pool:
        reports = pool.run_tests_many(jobs)
    assert [r.fraction for r in reports] == [1.0, 0.0, 1.0]


def test_concurrency_is_bounded():
    # Each run sleeps 0.3 s: 6 runs on 2 threads take >= 3 rounds, i.e. about 0.9 s, never ~0.3 s.
    with SandboxPool(2, FAST) as pool:
        start = time.monotonic()
        pool.run_python_many(["import time; time.sleep(0.3)"] * 6)
        elapsed = time.monotonic() - start
    assert elapsed >= 0.85


def test_pool_pickles_and_works_after_unpickling():
    pool = SandboxPool(3, FAST)
    pool.run_python_many(["pass"])  # threads exist now; they are not part of the pickle
    clone = pickle.loads(pickle.dumps(pool))
    assert clone.max_workers == 3 and clone.config == FAST
    assert clone.run_python_many(["print('again')"])[0].stdout == "again\n"
    pool.close()
    clone.close()


def test_usable_from_many_caller_threads_at_once():
    pool = SandboxPool(2, FAST)
    outputs: list[str] = []
    lock = threading.Lock()

    def caller(i: int) -> None:
        result = pool.run_python_many([f"print({i})"])[0]
        with lock:
            outputs.append(result.stdout.strip())

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pool.close()
    assert sorted(outputs) == [str(i) for i in range(6)]


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="SandboxPool.max_workers must be a positive int"):
        SandboxPool(0)
    with SandboxPool(1, FAST) as pool, pytest.raises(ValueError, match="stdins has 1 items for 2 codes"):
        pool.run_python_many(["pass", "pass"], stdins=["x"])
