"""Many sandboxed executions at once, with bounded concurrency.

Threads that each launch and watch one subprocess: the work happens in the sandboxed processes, so the
GIL is not the limit, and nothing here needs signals or the main thread (safe inside Ray actors). The
pool is picklable (it ships its settings; the threads are created again where it lands) and a crashed,
hung or killed execution only ever ends that one execution.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Sequence

from sandbox.config import SandboxConfig
from sandbox.execute import ExecResult, run_python
from sandbox.harness import TestReport, run_tests


def default_workers() -> int:
    """One execution per core: each is a CPU-bound interpreter."""
    return max(1, os.cpu_count() or 1)


class SandboxPool:
    """Run sandboxed executions on up to ``max_workers`` threads.

    >>> with SandboxPool(2) as pool:                                   # doctest: +SKIP
    ...     reports = pool.run_tests_many([(code, sample["tests"]) for code, sample in pairs])
    """

    def __init__(self, max_workers: int | None = None, config: SandboxConfig | None = None) -> None:
        if max_workers is not None and (isinstance(max_workers, bool) or not isinstance(max_workers, int)
                                        or max_workers < 1):
            raise ValueError(f"SandboxPool.max_workers must be a positive int or None, got {max_workers!r}")
        self.max_workers = max_workers or default_workers()
        self.config = config or SandboxConfig()
        self._executor: ThreadPoolExecutor | None = None
        self._owner_pid = os.getpid()
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], *args, **kwargs) -> Future:
        """Schedule ``fn(*args, config=self.config, **kwargs)`` (``run_python``, ``run_tests``, ...)."""
        kwargs.setdefault("config", self.config)
        return self._threads().submit(fn, *args, **kwargs)

    def run_python_many(
        self, codes: Sequence[str], *, stdins: Sequence[str] | None = None, **options
    ) -> list[ExecResult]:
        """:func:`sandbox.run_python` for each code (with the matching stdin), results in order."""
        stdins = stdins if stdins is not None else [""] * len(codes)
        if len(stdins) != len(codes):
            raise ValueError(f"stdins has {len(stdins)} items for {len(codes)} codes")
        return _gather([self.submit(run_python, code, stdin=s, **options) for code, s in zip(codes, stdins)])

    def run_tests_many(self, jobs: Iterable[tuple[str, Any]], **options) -> list[TestReport]:
        """:func:`sandbox.run_tests` for each ``(code, tests)`` pair, reports in order."""
        return _gather([self.submit(run_tests, code, tests, **options) for code, tests in jobs])

    def close(self) -> None:
        """Wait for running executions and stop the threads (a later call starts new ones)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    def __enter__(self) -> "SandboxPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        return {"max_workers": self.max_workers, "config": self.config}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_workers"], state["config"])

    def _threads(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None or self._owner_pid != os.getpid():  # threads do not survive a fork
                self._executor = ThreadPoolExecutor(self.max_workers, thread_name_prefix="sandbox")
                self._owner_pid = os.getpid()
            return self._executor


def _gather(futures: list[Future]) -> list:
    # Wait for every future before raising, so no execution is left running behind an exception.
    for future in futures:
        future.exception()
    return [future.result() for future in futures]
