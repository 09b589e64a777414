"""Run reasoning-gym scorers in persistent helper processes, with a timeout and a memory limit.

Why: a scorer sees the model's answer text, and some evaluate it (sympy's ``parse_expr`` in ``countdown``,
``eval`` in ``n_queens``; see :data:`rewards.reasoning_gym_library.EVALUATES_ANSWER`). ``99**99**99`` then
runs for hours inside one C call. Reward workers score in threads, where no alarm can stop that; a helper
process can be killed. Each helper imports reasoning-gym once (~1 s), answers requests over a pipe, and
lives under an address-space limit; a caller waits at most ``timeout_s`` and kills a helper that does not
answer (a new one starts when next needed). The pool itself is :mod:`rewards.helper_processes`, shared
with :mod:`rewards.math_check_pool`.
"""
from __future__ import annotations

from typing import Any, Mapping

from rewards import helper_processes
from rewards.helper_processes import HelperFailed, HelperProcesses, boot_code

HELPER_MEMORY_LIMIT_BYTES = 1 << 30  # a helper uses ~115 MB resident
_FAILURES = {"timeout": "timeout", "crashed": "scorer_crashed", "unavailable": "scorer_unavailable"}
_BOOT = boot_code("rewards.reasoning_gym_helpers")


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


class ScorerPool(HelperProcesses):
    """Up to ``size`` helpers shared by the threads of one process (one per core, at most 4)."""

    def __init__(self, size: int | None = None) -> None:
        super().__init__(_BOOT, "reasoning-gym", size)  # a failed start is retried at the next call

    def score(self, name: str, config: Mapping[str, Any], answer: str, entry: Mapping[str, Any],
              timeout_s: float) -> tuple[float, str]:
        """:func:`score_safely` in a helper; ``(0.0, "timeout")`` past ``timeout_s``, ``(0.0,
        "scorer_crashed")`` if the helper died (e.g. out of memory), ``(0.0, "scorer_unavailable")`` if
        none could start. Waiting for a free helper is not counted in the timeout."""
        try:
            return self.request((name, dict(config), answer, dict(entry)), timeout_s)
        except HelperFailed as failed:
            return 0.0, _FAILURES[failed.reason]


def shared_pool() -> ScorerPool:
    """The process-wide pool, created on first use (a per-process resource cache)."""
    return helper_processes.shared(ScorerPool)


def serve(read_fd: int, write_fd: int) -> None:
    """The helper's loop: answer ``((name, config, answer, entry), timeout_s)`` until the pipe closes."""
    helper_processes.serve(read_fd, write_fd, lambda request, _timeout_s: score_safely(*request),
                           HELPER_MEMORY_LIMIT_BYTES, warm_up=_import_library)


def _import_library() -> None:
    try:
        from rewards.reasoning_gym_library import datasets

        datasets()  # import the library before saying ready
    except Exception:
        pass  # scoring then answers reasoning_gym_missing, once per request, without dying
