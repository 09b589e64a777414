"""Run reasoning-gym scorers in persistent helper processes, with a timeout and a memory limit.

Why: a scorer sees the model's answer text, and some evaluate it (sympy's ``parse_expr`` in ``countdown``,
``eval`` in ``n_queens``; see :data:`rewards.reasoning_gym_library.EVALUATES_ANSWER`). ``99**99**99`` then
runs for hours inside one C call. Reward workers score in threads, where no alarm can stop that; a helper
process can be killed. Each helper imports reasoning-gym once (~1 s), answers requests over a pipe, and
lives under an address-space limit; a caller waits at most ``timeout_s`` and kills a helper that does not
answer (a new one starts when next needed). Helpers are plain subprocesses (not ``multiprocessing``,
which would re-import the caller's ``__main__``), exit when their parent's pipe closes, and are killed
at exit. The same design as :mod:`rewards.math_check_pool`, for another library's scorers.
"""
from __future__ import annotations

import atexit
import logging
import os
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Mapping

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 120.0  # importing reasoning-gym: about a second here
REPLY_GRACE_S = 0.25
HELPER_MEMORY_LIMIT_BYTES = 1 << 30  # a helper uses ~115 MB resident
_PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from rewards.reasoning_gym_helpers import serve; serve(int(sys.argv[2]), int(sys.argv[3]))"
)


def score_safely(name: str, config: Mapping[str, Any], answer: str, entry: Mapping[str, Any]) -> tuple[float, str]:
    """``(score, "ok")`` from the generator's scorer in this process, else ``(0.0, reason)``:
    ``reasoning_gym_missing``, ``unknown_dataset`` or ``error:<ExceptionType>`` (the scorer raised)."""
    from rewards.reasoning_gym_library import LibraryMissing, UnknownDataset, score_answer

    try:
        return score_answer(name, config, answer, entry), "ok"
    except LibraryMissing:
        return 0.0, "reasoning_gym_missing"
    except UnknownDataset:
        return 0.0, "unknown_dataset"
    except Exception as exc:  # a scorer's bug on an odd answer is that answer's 0, not a dead worker
        return 0.0, f"error:{type(exc).__name__}"


class _Helper:
    """One helper process and its two pipe ends."""

    def __init__(self) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, _PROJECT_ROOT, str(to_child_r), str(from_child_w)],
                pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches the caller only; helpers exit on pipe close
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self._send = Connection(to_child_w, readable=False)
        self._recv = Connection(from_child_r, writable=False)
        try:
            ready = self._recv.poll(STARTUP_TIMEOUT_S) and self._recv.recv() == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            self.kill()
            raise RuntimeError(f"reasoning-gym helper process did not start (exit code {self.proc.returncode})")

    def score(self, request: tuple, timeout_s: float) -> tuple[float, str] | None:
        self._send.send(request)
        if not self._recv.poll(timeout_s + REPLY_GRACE_S):
            return None
        return self._recv.recv()

    def kill(self) -> None:
        for conn in (self._send, self._recv):
            conn.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class ScorerPool:
    """Up to ``size`` helpers shared by the threads of one process (one per core, at most 4)."""

    def __init__(self, size: int | None = None) -> None:
        self.size = size or max(1, min(4, os.cpu_count() or 1))
        self._slots = threading.BoundedSemaphore(self.size)
        self._lock = threading.Lock()
        self._idle: list[_Helper] = []
        self._live: set[_Helper] = set()
        self._pid = os.getpid()

    def score(self, name: str, config: Mapping[str, Any], answer: str, entry: Mapping[str, Any],
              timeout_s: float) -> tuple[float, str]:
        """:func:`score_safely` in a helper; ``(0.0, "timeout")`` past ``timeout_s``, ``(0.0,
        "scorer_crashed")`` if the helper died (e.g. out of memory), ``(0.0, "scorer_unavailable")`` if
        none could start. Waiting for a free helper is not counted in the timeout."""
        with self._slots:
            try:
                helper = self._take()
            except Exception as exc:
                logger.error("cannot start a reasoning-gym helper process: %s: %s", type(exc).__name__, exc)
                return 0.0, "scorer_unavailable"
            try:
                verdict = helper.score((name, dict(config), answer, dict(entry), timeout_s), timeout_s)
            except (EOFError, OSError):
                self._discard(helper)
                return 0.0, "scorer_crashed"
            if verdict is None:
                self._discard(helper)  # stuck in C code: only a kill stops it
                return 0.0, "timeout"
            with self._lock:
                self._idle.append(helper)
            return verdict

    def _take(self) -> _Helper:
        with self._lock:
            while self._idle:
                helper = self._idle.pop()
                if helper.proc.poll() is None:
                    return helper
                self._live.discard(helper)
                helper.kill()
        helper = _Helper()  # outside the lock: other threads keep using idle helpers meanwhile
        with self._lock:
            self._live.add(helper)
        return helper

    def _discard(self, helper: _Helper) -> None:
        with self._lock:
            self._live.discard(helper)
        helper.kill()

    def close(self) -> None:
        """Kill every helper. Only the process that started them does so."""
        if os.getpid() != self._pid:
            return
        with self._lock:
            helpers, self._idle, self._live = list(self._live), [], set()
        for helper in helpers:
            helper.kill()


_pool: ScorerPool | None = None
_pool_lock = threading.Lock()


def shared_pool() -> ScorerPool:
    """The process-wide pool, created on first use (a per-process resource cache)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ScorerPool()
            atexit.register(_pool.close)
        return _pool


def _forget_pool_after_fork() -> None:
    global _pool, _pool_lock  # a forked child must not share its parent's pipes
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_after_fork)


def serve(read_fd: int, write_fd: int) -> None:
    """The helper's loop: answer ``(name, config, answer, entry, timeout_s)`` until the pipe closes."""
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (HELPER_MEMORY_LIMIT_BYTES, HELPER_MEMORY_LIMIT_BYTES))
    except (ImportError, ValueError, OSError):  # not on this platform: the kill on timeout still holds
        pass
    requests, replies = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    try:
        from rewards.reasoning_gym_library import datasets

        datasets()  # import the library before saying ready
    except Exception:
        pass  # scoring then answers reasoning_gym_missing, once per request, without dying
    replies.send("ready")
    while True:
        try:
            name, config, answer, entry, _timeout_s = requests.recv()
        except (EOFError, OSError):
            return
        try:
            replies.send(score_safely(name, config, answer, entry))
        except (BrokenPipeError, OSError):
            return
