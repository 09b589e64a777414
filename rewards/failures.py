"""Fail fast on a reward that never works: a run must stop, not train on zeros.

A reward that raises, or answers something that is not a number, now and then scores 0 with the reason counted
(a long run survives one bad sample). One that fails on EVERY one of its first ``fail_after`` calls is broken
(a wrong field name, a wrong signature, a missing dependency): :class:`FailureWatch` raises
:class:`RewardFailure` with one line naming the reward, its first error and the first failing sample's id.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Mapping

logger = logging.getLogger(__name__)


class RewardFailure(RuntimeError):
    """A reward failed on every one of its first ``fail_after`` calls; the message is one line."""


class FailureWatch:
    """Counts one reward's outcomes until it first succeeds; raises :class:`RewardFailure` at the
    ``fail_after``-th failure in a row from its first call. Thread-safe (reward workers score in threads)."""

    def __init__(self, label: str, fail_after: int) -> None:
        if isinstance(fail_after, bool) or not isinstance(fail_after, int) or fail_after < 1:
            raise ValueError(f"fail_after must be an integer >= 1, got {fail_after!r}")
        self.label, self.fail_after = label, fail_after
        self.failures = 0
        self.healthy = False  # a success once: the reward works, its later errors are occasional
        self.first: tuple[str, Any] | None = None  # (first problem, its sample's id)
        self.zeros, self.zero_warned = 0, False  # answers of exactly 0 before the first non-zero one
        self._lock = threading.Lock()

    def ok(self, value: float | None = None) -> None:
        """The reward answered a number (or None: does not apply). A reward that answers exactly 0 on each of its
        first ``fail_after`` calls is not stopped (a weak model earns nothing at first, legitimately) but is named
        once in the log, since a misread field or answer layout looks the same."""
        self.healthy = True
        if value is None or self.zero_warned:
            return
        with self._lock:
            if value != 0.0:
                self.zero_warned = True  # it has scored something: no warning will be due
                return
            self.zeros += 1
            if self.zeros >= self.fail_after:
                self.zero_warned = True
                logger.warning("reward %r scored 0 on each of its first %d calls: if no completion should have "
                               "earned it, check the reward on real outputs with `r1 score`", self.label, self.zeros)

    def failed(self, problem: str, sample: Mapping[str, Any]) -> None:
        """The reward raised or answered a non-number (``problem`` says which, e.g. ``KeyError: 'solution'``)."""
        if self.healthy:
            return
        with self._lock:
            if self.healthy:
                return
            self.failures += 1
            if self.first is None:
                self.first = (problem, _sample_id(sample))
            if self.failures >= self.fail_after:
                problem, sample_id = self.first
                raise RewardFailure(f"reward {self.label!r} failed on every one of its first {self.fail_after} calls: "
                                    f"{problem} (first sample id {sample_id}); rewards.fail_after="
                                    f"{self.fail_after}".replace("\n", " "))

    def __getstate__(self) -> dict:  # picklable for Ray: the lock is remade, the counts travel
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def describe(exc: BaseException) -> str:
    """An exception as ``Type: message`` on one line, e.g. ``KeyError: 'solution'``."""
    text = str(exc).strip().replace("\n", " ")
    if len(text) > 200:
        text = text[:197] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _sample_id(sample: Mapping[str, Any]) -> str:
    sample_id = sample.get("id") if isinstance(sample, Mapping) else None
    return repr(sample_id) if sample_id is not None else "none (the sample has no 'id')"
