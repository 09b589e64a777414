"""Run :func:`rewards.math_check.check_equivalence` in persistent helper processes.

Why: math-verify bounds its work with ``signal.alarm``, which only the main thread may use, and even there
an alarm only fires between Python bytecodes: ``\\gcd(10^{10^{10}}, 7)`` spends ~20 s and 4 GB inside one
big-integer operation in C, whatever the timeout. A helper process runs the check in *its* main thread
(so math-verify's alarms still do most of the work), under an address-space limit (a runaway allocation
becomes a MemoryError there instead of an out-of-memory kill of the trainer), and the caller waits at
most ``timeout_s`` for the reply; a helper that does not answer in time is killed, and replaced when
next needed. The pool itself (lazy start, reuse, kill at exit, a forked child's own helpers) is
:mod:`rewards.helper_processes`.
"""
from __future__ import annotations

from collections import OrderedDict

from rewards import helper_processes
from rewards.helper_processes import HelperFailed, HelperProcesses, boot_code, default_pool_size

__all__ = ["HelperPool", "default_pool_size", "serve", "shared_pool"]

# Address-space limit of a helper: ~16x what sympy and math-verify need, far below a runaway integer.
HELPER_MEMORY_LIMIT_BYTES = 1 << 30
# After a helper fails to start, calls fail fast for this long instead of retrying every time.
START_RETRY_AFTER_S = 30.0
# Verdicts remembered per process (most recently used kept): the n samples of a prompt often give the same
# answer, so a GRPO group or a scored file of n samples per prompt checks each distinct pair once
# (bench/score_throughput.py: 7,589 checks, 2,005 distinct pairs). Only "ok" and "wrong" are kept: they are
# math-verify's answer, the same every time; a timeout, crash or parse failure may not be.
VERDICT_CACHE_SIZE = 1 << 16
_CACHED_REASONS = frozenset({"ok", "wrong"})
_FAILURES = {"timeout": "timeout", "crashed": "verifier_crashed", "unavailable": "verifier_unavailable"}
_BOOT = boot_code("rewards.math_check_pool")


class HelperPool(HelperProcesses):
    """Up to ``size`` math-verify helper processes shared by all threads of this process."""

    def __init__(self, size: int | None = None) -> None:
        super().__init__(_BOOT, "math-verify", size, retry_after_s=START_RETRY_AFTER_S)
        self._verdicts: OrderedDict[tuple[str, str], tuple[bool, str]] = OrderedDict()

    def check(self, gold: str, answer: str, timeout_s: float) -> tuple[bool, str]:
        """:func:`~rewards.math_check.check_equivalence` in a helper; ``(False, "timeout")`` when it
        takes longer than ``timeout_s``. Waiting for a free helper or for one to start is not counted.
        A pair already judged ``ok`` or ``wrong`` in this process gets that verdict again without a helper."""
        key = (gold, answer)
        with self._lock:
            verdict = self._verdicts.get(key)
            if verdict is not None:
                self._verdicts.move_to_end(key)
                return verdict
        try:
            verdict = self.request(key, timeout_s)
        except HelperFailed as failed:
            return False, _FAILURES[failed.reason]
        if verdict[1] in _CACHED_REASONS:
            with self._lock:
                self._verdicts[key] = verdict
                if len(self._verdicts) > VERDICT_CACHE_SIZE:
                    self._verdicts.popitem(last=False)
        return verdict


def shared_pool() -> HelperPool:
    """The process-wide pool, created on first use (a resource cache, like an lru_cache)."""
    return helper_processes.shared(HelperPool)


def serve(read_fd: int, write_fd: int) -> None:
    """The helper's main loop: answer ``((gold, answer), timeout_s)`` requests until the pipe closes."""
    helper_processes.serve(read_fd, write_fd, _check, HELPER_MEMORY_LIMIT_BYTES, warm_up=_warm_up)


def _warm_up() -> None:
    from rewards.math_check import check_equivalence

    check_equivalence("1", "1", 5.0)  # load and warm the parsers before saying ready


def _check(pair: tuple[str, str], timeout_s: float) -> tuple[bool, str]:
    from rewards.math_check import check_equivalence  # imported by _warm_up: a dictionary look-up

    try:
        return check_equivalence(*pair, timeout_s)
    except Exception as exc:  # never let one odd input take the helper down
        return False, f"error:{type(exc).__name__}"
