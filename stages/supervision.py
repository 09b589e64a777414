"""Waiting on actors without hanging, and replacing the ones that die.

Every wait of the RL loop on an actor call goes through :func:`wait`: at most ``cluster.timeout_s``, then a
one-line :class:`ActorTimeout` naming the actor and the call. A :class:`Member` is one actor of a
:class:`Role` (the rollout engines, the reward workers, the reference): when it dies, the role's factory
starts a replacement at the same index (``cluster.max_restarts`` times per role), the role's
``on_replace`` hook brings it up to date (a rollout engine gets the current weights), and the call it was
serving is sent again. A :class:`Group` runs one method on several members at once.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

log = logging.getLogger("r1.supervision")

DEFAULT_TIMEOUT_S = 3600.0  # the config's default, for handles made outside a run (tests, tools)


class ActorTimeout(RuntimeError):
    """An actor call did not answer within ``cluster.timeout_s``."""


class RestartsExhausted(RuntimeError):
    """An actor died again after its role used up ``cluster.max_restarts`` replacements."""


class TrainerDied(RuntimeError):
    """A worker of the trainer (group) died; the RL loop restarts the trainer from the last checkpoint."""


def timeout_message(actor: str, call: str, timeout_s: float) -> str:
    """The one line a timeout says, e.g. ``rollout engine 1: generate did not answer within 600 s``."""
    return f"{actor}: {call} did not answer within {timeout_s:g} s (cluster.timeout_s)"


def wait(refs, actor: str, call: str, timeout_s: float):
    """``ray.get(refs)`` (one ref or a list) waiting at most ``timeout_s`` in all; an error of any ref is raised
    as soon as it is known, not after the others finish (a dead worker of a group whose peers wait for it in
    a collective would otherwise turn into a timeout)."""
    import ray

    single = not isinstance(refs, (list, tuple))
    pending = [refs] if single else list(refs)
    deadline = time.monotonic() + timeout_s
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            raise ActorTimeout(timeout_message(actor, call, timeout_s))
        ray.get(ready)  # raises the call's error, if it failed
    return ray.get(refs)


def actor_id(handle) -> str | None:
    """The hex id of a plain actor handle (None for anything else, e.g. a trainer group)."""
    ident = getattr(handle, "_actor_id", None)
    return ident.hex() if ident is not None else None


def died(exc: BaseException, handle) -> bool:
    """Whether ``exc`` reports the death of ``handle`` itself, not of another actor whose result was passed
    to it (a rollout engine given a dead trainer's state dict fails with the trainer's death)."""
    from ray.exceptions import RayActorError

    if not isinstance(exc, RayActorError):
        return False
    mine = actor_id(handle)
    return exc.actor_id is None or mine is None or exc.actor_id == mine


@dataclass
class Role:
    """The actors of one kind: how to start one (``factory(index)`` -> handle), how to bring a replacement up
    to date (``on_replace(member)``), and the restart budget they share. No factory: not replaceable."""

    name: str  # "rollout engine", "reward worker", "reference"
    factory: Callable[[int], Any] | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_restarts: int = 0
    on_replace: Callable[["Member"], None] | None = None
    restarts: int = 0


class Member:
    """One supervised actor: its calls wait at most the role's timeout and survive its death."""

    def __init__(self, role: Role, index: int, handle) -> None:
        self.role, self.index, self.handle = role, index, handle

    @property
    def label(self) -> str:
        return f"{self.role.name} {self.index}"

    def submit(self, method: str, *args):
        """Start ``method`` on the actor; returns its ObjectRef (wait with :meth:`result`)."""
        return getattr(self.handle, method).remote(*args)

    def result(self, ref, method: str, *args, timeout_s: float | None = None):
        """The answer of ``ref`` (a ``method(*args)`` call); if the actor died, its replacement's answer."""
        while True:
            try:
                return wait(ref, self.label, method, self.role.timeout_s if timeout_s is None else timeout_s)
            except Exception as exc:  # noqa: BLE001 -- only the death of this actor is handled, the rest re-raised
                if not died(exc, self.handle) or self.role.factory is None:
                    raise
                self.replace(exc, method)
            ref, timeout_s = self.submit(method, *args), None  # a retry gets the whole timeout again

    def call(self, method: str, *args):
        """``method(*args)`` on the actor, waited for (and retried on a replacement if the actor dies)."""
        return self.result(self.submit(method, *args), method, *args)

    def replace(self, cause: BaseException, method: str = "a call") -> None:
        """Start a replacement at this index (counted against the role's budget) and bring it up to date."""
        import ray

        role = self.role
        if role.restarts >= role.max_restarts:
            raise RestartsExhausted(f"{self.label} died during {method} and the {role.max_restarts} replacement(s) "
                                    f"of cluster.max_restarts are used up") from cause
        role.restarts += 1
        log.warning("%s died during %s; starting a replacement (%d of %d)", self.label, method, role.restarts,
                    role.max_restarts)
        try:
            ray.kill(self.handle)  # it may be half-dead (hung in its teardown): make sure
        except Exception:  # noqa: BLE001 -- already gone
            pass
        self.handle = role.factory(self.index)
        wait(self.handle.__ray_ready__.remote(), self.label, "start", role.timeout_s)
        if role.on_replace is not None:
            role.on_replace(self)

    def kill(self) -> None:
        import ray

        ray.kill(self.handle)


class Group:
    """Members of one role, run together: ``map`` sends each its own arguments and waits for all."""

    def __init__(self, members: Sequence[Member]) -> None:
        self.members = list(members)

    @classmethod
    def of_handles(cls, handles: Sequence, name: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> "Group":
        """Unsupervised members (no replacement) over bare handles, for code given handles, not a run's group."""
        role = Role(name, timeout_s=timeout_s)
        return cls([Member(role, i, h) for i, h in enumerate(handles)])

    def __len__(self) -> int:
        return len(self.members)

    @property
    def handles(self) -> list:
        return [m.handle for m in self.members]

    def map(self, method: str, args: Sequence[tuple]) -> tuple[list, list[float]]:
        """``method(*args[i])`` on member ``i`` (for the first ``len(args)`` members), concurrently; returns the
        answers and each member's seconds. One timeout covers the wait for all (a replacement's retry gets
        its own)."""
        import ray

        members = self.members[:len(args)]
        started = time.perf_counter()
        refs = [m.submit(method, *a) for m, a in zip(members, args)]
        seconds = [0.0] * len(refs)
        index = {ref: i for i, ref in enumerate(refs)}
        pending, timeout_s = list(refs), members[0].role.timeout_s if members else 0.0
        deadline = time.monotonic() + timeout_s
        while pending:  # timestamp each member's answer as it comes (a dead one's error comes early too)
            ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                late = members[index[pending[0]]]
                raise ActorTimeout(timeout_message(late.label, method, timeout_s))
            seconds[index[ready[0]]] = time.perf_counter() - started
        answers = []
        for i, (m, a, ref) in enumerate(zip(members, args, refs)):
            t0 = time.perf_counter()
            answers.append(m.result(ref, method, *a))
            seconds[i] += time.perf_counter() - t0  # a retry on a replacement is part of that member's time
        return answers, seconds

    def kill(self) -> None:
        for m in self.members:
            m.kill()


def as_group(handles, name: str) -> Group:
    """``handles`` as a :class:`Group`: a group as is, a list or one bare handle as unsupervised members."""
    if isinstance(handles, Group):
        return handles
    return Group.of_handles(handles if isinstance(handles, (list, tuple)) else [handles], name)
