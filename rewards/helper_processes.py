"""A pool of persistent helper processes that answer requests over pipes, with a timeout and a memory limit.

Why: some checks run the model's answer through code that no alarm in a thread can stop (a big-integer
power inside one C call runs for hours and takes gigabytes); a process can be killed. A helper runs its
library in *its* main thread, under an address-space limit (a runaway allocation becomes a MemoryError
there instead of an out-of-memory kill of the caller), and the caller waits at most ``timeout_s`` for the
reply; a helper that does not answer in time is killed, and replaced when next needed. Helpers are plain
subprocesses (not ``multiprocessing`` spawn, which would re-import the caller's ``__main__``), start
lazily (one per concurrent caller, up to the pool size), are reused across calls, exit when their parent
does (their pipe closes), and are killed at exit. Users: :mod:`rewards.math_check_pool` (math-verify) and
:mod:`rewards.reasoning_gym_helpers` (reasoning-gym's scorers).
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
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Callable, TypeVar

logger = logging.getLogger(__name__)

# Starting a helper imports its library and warms it up: seconds, not minutes.
STARTUP_TIMEOUT_S = 120.0
# How long past timeout_s to wait for a helper that reports its own timeout, before killing it.
REPLY_GRACE_S = 0.25
_PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)


def boot_code(module: str) -> str:
    """The ``python -c`` code of a helper that runs ``module.serve(read_fd, write_fd)``."""
    return (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        f"from {module} import serve; serve(int(sys.argv[2]), int(sys.argv[3]))"
    )


def default_pool_size() -> int:
    """Helpers per process: one per core, at most 4 (each holds its library: 60-115 MB resident)."""
    return max(1, min(4, os.cpu_count() or 1))


class HelperFailed(Exception):
    """A request got no reply. ``reason``: ``timeout``, ``crashed`` (the helper died, e.g. out of memory)
    or ``unavailable`` (no helper could start)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _CoolingDown(Exception):
    """A helper failed to start moments ago; do not try again yet."""


class _Helper:
    """One helper process and its two pipe ends."""

    def __init__(self, boot: str, what: str) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", boot, _PROJECT_ROOT, str(to_child_r), str(from_child_w)],
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
            raise RuntimeError(f"{what} helper process did not start (exit code {self.proc.returncode})")

    def ask(self, payload: Any, timeout_s: float) -> Any | None:
        """The helper's reply, or None if it gave none within ``timeout_s`` (+ a small grace)."""
        self._send.send((payload, timeout_s))
        if not self._recv.poll(timeout_s + REPLY_GRACE_S):
            return None
        return self._recv.recv()

    def kill(self) -> None:
        for conn in (self._send, self._recv):
            conn.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class HelperProcesses:
    """Up to ``size`` helper processes shared by all threads of this process.

    ``boot``: the ``python -c`` code a helper runs (:func:`boot_code`); ``what`` names them in messages.
    After a helper fails to start, requests fail fast for ``retry_after_s`` instead of retrying every time
    (0: retry every time)."""

    def __init__(self, boot: str, what: str, size: int | None = None, retry_after_s: float = 0.0) -> None:
        self.size = size or default_pool_size()
        self.what = what
        self._boot = boot
        self._retry_after_s = retry_after_s
        self._slots = threading.BoundedSemaphore(self.size)
        self._lock = threading.Lock()
        self._idle: list[_Helper] = []
        self._live: set[_Helper] = set()
        self._pid = os.getpid()
        self._start_failed_at = -math.inf

    def request(self, payload: Any, timeout_s: float) -> Any:
        """A helper's reply to ``payload`` (never None), else :class:`HelperFailed`; ``timeout`` when it
        takes longer than ``timeout_s``. Waiting for a free helper or for one to start is not counted."""
        with self._slots:
            try:
                helper = self._take()
            except _CoolingDown:
                raise HelperFailed("unavailable") from None
            except Exception as exc:  # e.g. no subprocesses allowed here: a reward, not a crash
                self._start_failed_at = time.monotonic()
                logger.error("cannot start a %s helper process: %s: %s", self.what, type(exc).__name__, exc)
                raise HelperFailed("unavailable") from exc
            try:
                reply = helper.ask(payload, timeout_s)
            except (EOFError, OSError):  # the helper died (out of memory, killed from outside)
                self._discard(helper)
                raise HelperFailed("crashed") from None
            if reply is None:
                self._discard(helper)  # it may be stuck in C code that no alarm interrupts
                raise HelperFailed("timeout")
            with self._lock:
                self._idle.append(helper)
            return reply

    def _take(self) -> _Helper:
        with self._lock:
            while self._idle:
                helper = self._idle.pop()
                if helper.proc.poll() is None:
                    return helper
                self._live.discard(helper)  # killed from outside while idle
                helper.kill()
        if time.monotonic() - self._start_failed_at < self._retry_after_s:
            raise _CoolingDown
        helper = _Helper(self._boot, self.what)  # outside the lock: other threads keep using idle helpers
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


_Pool = TypeVar("_Pool", bound=HelperProcesses)
_shared: dict[type, HelperProcesses] = {}
_shared_lock = threading.Lock()


def shared(pool_type: type[_Pool]) -> _Pool:
    """The process-wide ``pool_type()``, created on first use (a resource cache, like an lru_cache) and
    closed at exit."""
    with _shared_lock:
        pool = _shared.get(pool_type)
        if pool is None:
            pool = _shared[pool_type] = pool_type()
            atexit.register(pool.close)
        return pool


def _forget_pools_after_fork() -> None:
    # A forked child must not talk to its parent's helpers (their pipes are shared): start afresh.
    global _shared, _shared_lock
    _shared, _shared_lock = {}, threading.Lock()


os.register_at_fork(after_in_child=_forget_pools_after_fork)


def serve(read_fd: int, write_fd: int, handle: Callable[[Any, float], Any], memory_limit_bytes: int,
          warm_up: Callable[[], object] | None = None) -> None:
    """A helper's main loop: reply ``handle(payload, timeout_s)`` to each request until the pipe closes.
    The memory limit comes first, then ``warm_up()`` (imports, parser warm-up) before the helper says ready.
    ``handle`` must not raise (a raise ends the helper: its caller sees ``crashed``) nor return None."""
    _limit_memory(memory_limit_bytes)
    requests, replies = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    if warm_up is not None:
        warm_up()
    replies.send("ready")
    while True:
        try:
            payload, timeout_s = requests.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        started = time.monotonic()
        reply = handle(payload, timeout_s)
        if time.monotonic() - started > timeout_s + REPLY_GRACE_S:
            return  # the parent has stopped waiting and will kill us anyway
        try:
            replies.send(reply)
        except (BrokenPipeError, OSError):
            return


def _limit_memory(limit_bytes: int) -> None:
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    except (ImportError, ValueError, OSError):  # not on this platform: the kill-on-timeout still holds
        pass
