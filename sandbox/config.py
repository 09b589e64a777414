"""What a sandboxed execution may use: one frozen, picklable settings object (safe to ship to Ray workers)."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import Literal

ISOLATIONS = ("bwrap", "rlimits-only")


class SandboxUnavailable(RuntimeError):
    """The requested isolation cannot run on this machine (e.g. bubblewrap is missing)."""


@dataclass(frozen=True)
class SandboxConfig:
    """Limits and isolation for one execution of untrusted Python.

    ``isolation="bwrap"`` (default) runs every execution in a bubblewrap sandbox: new pid, network, ipc,
    uts, mount (and, for a non-root host, user) namespaces, a read-only view of the system, a private
    size-limited ``/tmp``, no environment from the host. ``"rlimits-only"`` is the weaker mode for machines
    without bubblewrap: kernel limits and a private working directory only, with the host's file system
    and network in reach (see docs/sandbox.md); it must be chosen explicitly.

    ``timeout_s`` is the wall-clock limit of one program run, or of one call in a function test set;
    ``cpu_time_s`` (default: derived from the timeout) the kernel's CPU-seconds limit.
    """

    isolation: Literal["bwrap", "rlimits-only"] = "bwrap"
    timeout_s: float = 5.0
    memory_mb: int = 512
    cpu_time_s: float | None = None
    max_processes: int = 32
    max_output_bytes: int = 1 << 20
    max_file_mb: int = 16
    max_open_files: int = 64
    workdir_mb: int = 32
    python: str | None = None
    bwrap: str = "bwrap"
    ro_binds: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.isolation not in ISOLATIONS:
            raise ValueError(f"SandboxConfig.isolation must be one of {ISOLATIONS}, got {self.isolation!r}")
        for name in ("timeout_s", "cpu_time_s"):
            value = getattr(self, name)
            if value is None and name == "cpu_time_s":
                continue
            if not _is_number(value) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"SandboxConfig.{name} must be a positive number, got {value!r}")
        for name in ("memory_mb", "max_processes", "max_output_bytes", "max_file_mb", "max_open_files",
                     "workdir_mb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SandboxConfig.{name} must be a positive int, got {value!r}")
        if self.max_open_files < 16:
            raise ValueError(f"SandboxConfig.max_open_files must be at least 16 (Python needs a few), "
                             f"got {self.max_open_files}")
        if self.memory_mb < 64:
            raise ValueError(f"SandboxConfig.memory_mb must be at least 64 (the interpreter needs ~30), "
                             f"got {self.memory_mb}")
        if self.python is not None and (not isinstance(self.python, str) or not self.python.startswith("/")):
            raise ValueError(f"SandboxConfig.python must be an absolute path or None, got {self.python!r}")
        if not isinstance(self.ro_binds, tuple) or not all(
            isinstance(p, str) and p.startswith("/") for p in self.ro_binds
        ):
            raise ValueError(f"SandboxConfig.ro_binds must be a tuple of absolute paths, got {self.ro_binds!r}")

    def with_options(self, **overrides) -> "SandboxConfig":
        """A copy with some fields replaced; an unknown name is a one-line ``ValueError``."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown sandbox option {unknown[0]!r}; known: {', '.join(sorted(known))}")
        if not overrides:
            return self
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        if isinstance(overrides.get("ro_binds"), list):
            overrides["ro_binds"] = tuple(overrides["ro_binds"])
        return SandboxConfig(**{**values, **overrides})


def resolve_config(config: SandboxConfig | None, overrides: dict) -> SandboxConfig:
    """``config`` (default settings when None) with keyword ``overrides`` applied."""
    return (config or SandboxConfig()).with_options(**overrides)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
