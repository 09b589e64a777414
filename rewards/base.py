"""The one type every reward returns: a float that also says why.

A reward function is a pure function ``(completion: str, sample: Mapping) -> float``. Ours return a
:class:`Reward`, which *is* a float (so ``reward == 1.0`` and arithmetic work, and a user's plain-float
function is interchangeable with ours) and carries a short machine-readable ``reason`` that metrics count
("ok", "missing_answer_tag", "timeout", ...).
"""
from __future__ import annotations

from typing import Any


class Reward(float):
    """A float reward with the reason it was given.

    >>> r = Reward(0.0, "missing_think")
    >>> r == 0.0, r.reason
    (True, 'missing_think')
    """

    __slots__ = ("reason",)

    def __new__(cls, value: float, reason: str = "ok") -> "Reward":
        obj = super().__new__(cls, value)
        obj.reason = reason
        return obj

    def __repr__(self) -> str:
        return f"Reward({float(self)!r}, {self.reason!r})"

    def __reduce__(self):  # keep the reason across pickling (Ray, multiprocessing)
        return (Reward, (float(self), self.reason))


def reason_of(value: Any) -> str:
    """The reason a reward value carries; ``"ok"`` for plain floats from users' functions."""
    return getattr(value, "reason", "ok")
