"""Fault injection for tests of the RL loop's supervision: kill or hang an actor (or the driver) at a chosen call.

A fault is ``ROLE:METHOD:CALL:ACTION``: ``role`` one of rollout, reward, reference, trainer, driver; ``method``
an actor method (for the driver: ``step``); ``call`` the 1-based count of that method's calls
in one actor process (for the driver: the RL step); ``action`` ``kill`` (``os._exit(1)``, as a crash or an
OOM kill looks to Ray) or ``hang`` (sleep forever, as a deadlocked collective looks). Faults come from
``cluster.faults`` and ``$R1_FAULTS`` (comma-separated).

Each fault fires at most once per run: before acting it creates a marker file in a folder of the run (by
``O_EXCL``, so of N trainer workers reaching the call together exactly one fires), and a replacement actor
or a rerun driver that reaches the same call finds the marker and carries on.
"""
from __future__ import annotations

import functools
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

ROLES = ("rollout", "reward", "reference", "trainer", "driver")
ACTIONS = ("kill", "hang")
FAULTS_ENV = "R1_FAULTS"


@dataclass(frozen=True)
class Fault:
    """One parsed ``ROLE:METHOD:CALL:ACTION``."""

    role: str
    method: str
    call: int
    action: str

    def __str__(self) -> str:
        return f"{self.role}:{self.method}:{self.call}:{self.action}"


def parse_fault(text: str) -> Fault:
    """Parse one fault; a malformed one is a ``ValueError`` saying what is wrong with it."""
    parts = text.strip().split(":")
    if len(parts) != 4:
        raise ValueError(f"fault {text!r}: expected ROLE:METHOD:CALL:ACTION, e.g. rollout:generate:2:kill")
    role, method, call, action = (p.strip() for p in parts)
    if role not in ROLES:
        raise ValueError(f"fault {text!r}: role {role!r} is not one of {', '.join(ROLES)}")
    if not re.fullmatch(r"[A-Za-z_]\w*", method):
        raise ValueError(f"fault {text!r}: method {method!r} is not a method name")
    if role == "driver" and method != "step":
        raise ValueError(f"fault {text!r}: the driver's faults count RL steps: driver:step:STEP:ACTION")
    if not call.isdigit() or int(call) < 1:
        raise ValueError(f"fault {text!r}: CALL {call!r} must be a count >= 1")
    if action not in ACTIONS:
        raise ValueError(f"fault {text!r}: action {action!r} is not one of {', '.join(ACTIONS)}")
    return Fault(role, method, int(call), action)


def parse_faults(items: Iterable[str]) -> list[Fault]:
    """Parse a list of faults (empty strings ignored: a trailing comma in ``$R1_FAULTS`` is harmless)."""
    return [parse_fault(item) for item in items if item.strip()]


def configured_faults(cluster) -> list[Fault]:
    """The run's faults: ``cluster.faults`` plus ``$R1_FAULTS``."""
    env = os.environ.get(FAULTS_ENV, "")
    return parse_faults([*cluster.faults, *env.split(",")])


class FaultInjector:
    """The faults of one role in one process, with that process's call counts."""

    def __init__(self, role: str, faults: Sequence[Fault], marker_dir: str | os.PathLike) -> None:
        self.faults = [f for f in faults if f.role == role]
        self.marker_dir = Path(marker_dir)
        self.counts: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self.faults)

    def check(self, method: str, count: int | None = None) -> None:
        """Count a call of ``method`` (or take ``count``: the driver's step) and fire a fault set for it."""
        if count is None:
            count = self.counts[method] = self.counts.get(method, 0) + 1
        for fault in self.faults:
            if fault.method == method and fault.call == count and self._claim(fault):
                _act(fault)

    def _claim(self, fault: Fault) -> bool:
        """Whether this process is the one to fire ``fault`` (its marker did not exist and now does)."""
        self.marker_dir.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(self.marker_dir / str(fault).replace(":", "_"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return False
        return True


def _act(fault: Fault) -> None:
    import sys

    print(f"fault injection: {fault} fires in pid {os.getpid()}", file=sys.stderr, flush=True)
    if fault.action == "kill":
        os._exit(1)  # no cleanup, no exception: what a segfault or an OOM kill looks like from outside
        return  # (only reached where a test replaced os._exit)
    while True:
        time.sleep(3600)


def with_faults(cls: type, role: str, faults: Sequence[Fault], marker_dir: str | os.PathLike) -> type:
    """``cls``, or (when ``faults`` name ``role``) a subclass whose public methods first count the call and
    fire a fault set for it. The faults travel with the class, so an actor made from it needs no setup."""
    mine = [f for f in faults if f.role == role]
    if not mine:
        return cls
    methods = {f.method for f in mine}
    missing = [m for m in methods if not callable(getattr(cls, m, None))]
    if missing:
        raise ValueError(f"cluster.faults: {cls.__name__} ({role}) has no method {', '.join(sorted(missing))}")

    def wrap(name, method):
        @functools.wraps(method)
        def checked(self, *args, **kwargs):
            self._fault_injector.check(name)
            return method(self, *args, **kwargs)
        return checked

    def init(self, *args, **kwargs):
        self._fault_injector = FaultInjector(role, mine, marker_dir)
        cls.__init__(self, *args, **kwargs)

    body = {name: wrap(name, getattr(cls, name)) for name in methods}
    body["__init__"] = functools.wraps(cls.__init__)(init)
    # ``cls``'s name (code that checks it, e.g. start_trainer's PolicyTrainer test, sees the same class) but
    # this module's: cloudpickle then finds no such class here and sends the subclass by value.
    body["__qualname__"] = cls.__qualname__
    return type(cls.__name__, (cls,), body)
