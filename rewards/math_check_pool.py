"""Run :func:`rewards.math_check.check_equivalence` in persistent helper processes.

Why: math-verify bounds its work with ``signal.alarm``, which only the main thread may use, and even there
an alarm only fires between Python bytecodes: ``\\gcd(10^{10^{10}}, 7)`` spends ~20 s and 4 GB inside one
big-integer operation in C, whatever the timeout. A helper process runs the check in *its* main thread
(so math-verify's alarms still do most of the work), under an address-space limit (a runaway allocation
becomes a MemoryError there instead of an out-of-memory kill of the trainer), and the caller waits at
most ``timeout_s`` for the reply; a helper that does not answer in time is killed, and replaced when
next needed. Helpers are plain subprocesses (not ``multiprocessing`` spawn, which would re-import the
caller's ``__main__``), start lazily (one per concurrent caller, up to the pool size), are reused across
calls, exit when their parent does (their pipe closes), and are killed at exit.
"""
from __future__ import annotations

import atexit
import logging
import math
import os
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from multiprocessing.connection import Connection
from pathlib import Path

logger = logging.getLogger(__name__)

# Starting a helper imports sympy and math-verify and warms up the LaTeX parser: seconds, not minutes.
STARTUP_TIMEOUT_S = 120.0
# How long past timeout_s to wait for a helper that reports its own timeout, before killing it.
REPLY_GRACE_S = 0.25
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
_PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from rewards.math_check_pool import serve; serve(int(sys.argv[2]), int(sys.argv[3]))"
)


def default_pool_size() -> int:
    """Helpers per process: one per core, at most 4 (each holds sympy: ~60 MB resident)."""
    return max(1, min(4, os.cpu_count() or 1))


class _CoolingDown(Exception):
    """A helper failed to start moments ago; do not try again yet."""


class _Helper:
    """One helper process and its two pipe ends."""

    def __init__(self) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, _PROJECT_ROOT, str(to_child_r), str(from_child_w)],
                pass_fds=(to_child_r, from_child_w),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # the protocol has its own pipes; keep stray prints out
                start_new_session=True,  # Ctrl-C reaches the caller only; helpers exit on pipe close
            )
        except BaseException:
            os.close(to_child_w)
            os.close(from_child_r)
            raise
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self._send = Connection(to_child_w, readable=False)
        self._recv = Connection(from_child_r, writable=False)
        try:
            ready = self._recv.poll(STARTUP_TIMEOUT_S) and self._recv.recv() == "ready"
        except (EOFError, OSError):
            ready = False  # it died while importing
        if not ready:
            self.kill()
            raise RuntimeError(f"math-verify helper process did not start (exit code {self.proc.returncode})")

    def check(self, gold: str, answer: str, timeout_s: float) -> tuple[bool, str] | None:
        """The helper's verdict, or None if it gave none within ``timeout_s`` (+ a small grace)."""
        self._send.send((gold, answer, timeout_s))
        if not self._recv.poll(timeout_s + REPLY_GRACE_S):
            return None
        return self._recv.recv()

    def kill(self) -> None:
        for conn in (self._send, self._recv):
            conn.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class HelperPool:
    """Up to ``size`` helper processes shared by all threads of this process."""

    def __init__(self, size: int | None = None) -> None:
        self.size = size or default_pool_size()
        self._slots = threading.BoundedSemaphore(self.size)
        self._lock = threading.Lock()
        self._idle: list[_Helper] = []
        self._live: set[_Helper] = set()
        self._pid = os.getpid()
        self._start_failed_at = -math.inf
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
        verdict = self._check(gold, answer, timeout_s)
        if verdict[1] in _CACHED_REASONS:
            with self._lock:
                self._verdicts[key] = verdict
                if len(self._verdicts) > VERDICT_CACHE_SIZE:
                    self._verdicts.popitem(last=False)
        return verdict

    def _check(self, gold: str, answer: str, timeout_s: float) -> tuple[bool, str]:
        with self._slots:
            try:
                helper = self._take()
            except _CoolingDown:
                return False, "verifier_unavailable"
            except Exception as exc:  # e.g. no subprocesses allowed here: a reward, not a crash
                self._start_failed_at = time.monotonic()
                logger.error("cannot start a math-verify helper process: %s: %s", type(exc).__name__, exc)
                return False, "verifier_unavailable"
            try:
                verdict = helper.check(gold, answer, timeout_s)
            except (EOFError, OSError):  # the helper died (out of memory, killed from outside)
                self._discard(helper)
                return False, "verifier_crashed"
            if verdict is None:
                self._discard(helper)  # it may be stuck in C code that no alarm interrupts
                return False, "timeout"
            with self._lock:
                self._idle.append(helper)
            return verdict

    def _take(self) -> _Helper:
        with self._lock:
            while self._idle:
                helper = self._idle.pop()
                if helper.proc.poll() is None:
                    return helper
                self._live.discard(helper)  # killed from outside while idle
                helper.kill()
        if time.monotonic() - self._start_failed_at < START_RETRY_AFTER_S:
            raise _CoolingDown
        helper = _Helper()  # outside the lock: other threads keep using idle helpers meanwhile
        with self._lock:
            self._live.add(helper)
        return helper

    def _discard(self, helper: _Helper) -> None:
        with self._lock:
            self._live.discard(helper)
        helper.kill()

    def close(self) -> None:
        """Kill every helper (idle or busy). Only the process that started them does so."""
        if os.getpid() != self._pid:
            return
        with self._lock:
            helpers, self._idle, self._live = list(self._live), [], set()
        for helper in helpers:
            helper.kill()


_pool: HelperPool | None = None
_pool_lock = threading.Lock()


def shared_pool() -> HelperPool:
    """The process-wide pool, created on first use (a resource cache, like an lru_cache)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = HelperPool()
            atexit.register(_pool.close)
        return _pool


def _forget_pool_after_fork() -> None:
    # A forked child must not talk to its parent's helpers (their pipes are shared): start afresh.
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_after_fork)


def serve(read_fd: int, write_fd: int) -> None:
    """The helper's main loop: answer ``(gold, answer, timeout_s)`` requests until the pipe closes."""
    _limit_memory()
    from rewards.math_check import check_equivalence

    requests, replies = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    check_equivalence("1", "1", 5.0)  # load and warm the parsers before saying ready
    replies.send("ready")
    while True:
        try:
            gold, answer, timeout_s = requests.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        started = time.monotonic()
        try:
            verdict = check_equivalence(gold, answer, timeout_s)
        except Exception as exc:  # never let one odd input take the helper down
            verdict = (False, f"error:{type(exc).__name__}")
        if time.monotonic() - started > timeout_s + REPLY_GRACE_S:
            return  # the parent has stopped waiting and will kill us anyway
        try:
            replies.send(verdict)
        except (BrokenPipeError, OSError):
            return


def _limit_memory() -> None:
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (HELPER_MEMORY_LIMIT_BYTES, HELPER_MEMORY_LIMIT_BYTES))
    except (ImportError, ValueError, OSError):  # not on this platform: the kill-on-timeout still holds
        pass
