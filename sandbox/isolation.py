"""The command line that starts the bootstrap inside bubblewrap (or bare, in ``rlimits-only`` mode), the
kernel limits it applies, and the one-time check that the chosen isolation works on this machine."""
from __future__ import annotations

import functools
import math
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

from sandbox.config import SandboxConfig, SandboxUnavailable

BOOTSTRAP_SOURCE = Path(__file__).with_name("inside.py").read_text(encoding="utf-8")
# Read-only system directories every sandbox sees (symlinks such as /lib -> usr/lib are recreated as
# symlinks). /etc is left out on purpose: it holds host configuration and secrets, Python needs none of it.
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# The dynamic loader's cache: one small file that saves a directory search per shared library.
OPTIONAL_FILES = ("/etc/ld.so.cache",)
ENVIRONMENT = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}
WORKDIR = "/tmp"
# Throw-away uids for sandboxes started by root: far above real users and typical subuid ranges, one per
# execution, so RLIMIT_NPROC counts that execution's processes only.
_UID_BASE, _UID_SPAN = 3_000_000_000, 1 << 24


def interpreter(config: SandboxConfig) -> str:
    """The Python binary that runs inside: the configured one, or the host's own (venvs resolved)."""
    if config.python:
        return os.path.realpath(config.python)
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def interpreter_roots(python: str) -> list[str]:
    """Directories that hold ``python``'s standard library and shared libraries (bound read-only)."""
    roots = {str(Path(python).parent.parent)}
    if python == os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable):
        roots |= {os.path.realpath(sys.base_prefix), os.path.realpath(sys.base_exec_prefix)}
    return sorted(r for r in roots if not _under_system_path(r))


def kernel_limits(config: SandboxConfig, *, runs: int = 1) -> dict[str, int]:
    """setrlimit values for the bootstrap; ``runs`` scales the CPU budget for a set of calls."""
    # Derived from the timeout, the CPU limit is a backstop one second past it: the wall clock decides.
    cpu = config.cpu_time_s if config.cpu_time_s is not None else config.timeout_s * runs + 1
    return {
        "as": config.memory_mb << 20,
        "cpu": math.ceil(cpu),
        "nproc": config.max_processes,
        "fsize": config.max_file_mb << 20,
        "nofile": config.max_open_files,
        "core": 0,
    }


def sandbox_uid() -> int | None:
    """A fresh unprivileged uid to switch to when the host runs as root; None otherwise (a non-root host's
    bubblewrap already runs the code as that user inside a user namespace, without privileges)."""
    return _UID_BASE + secrets.randbelow(_UID_SPAN) if os.geteuid() == 0 else None


def bootstrap_command(config: SandboxConfig, job_fd: int, report_fd: int, workdir: str | None = None) -> list[str]:
    """argv that runs the bootstrap with the job on ``job_fd`` and reports on ``report_fd``.

    ``workdir`` is the private working directory of ``rlimits-only`` mode (bubblewrap makes its own).
    """
    python = interpreter(config)
    inner = [python, "-S", "-I", "-B", "-c", BOOTSTRAP_SOURCE, str(job_fd), str(report_fd)]
    if config.isolation == "rlimits-only":
        return inner
    return [*bwrap_options(config, python), "--", *inner]


def bwrap_options(config: SandboxConfig, python: str) -> list[str]:
    """bubblewrap's options (everything before ``--``) for one execution."""
    argv = [config.bwrap]
    if os.geteuid() == 0:
        # As root, bubblewrap's automatic user namespace would map the sandbox to host uid 0, for which
        # the kernel never enforces RLIMIT_NPROC. So: no user namespace, every capability dropped except
        # the two the bootstrap needs to switch to a throw-away uid (which then clears them).
        argv += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
                 "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv += ["--unshare-all"]  # includes a user namespace: no privileges over the host
    argv += ["--die-with-parent", "--new-session", "--clearenv", "--hostname", "sandbox"]
    for name, value in ENVIRONMENT.items():
        argv += ["--setenv", name, value]
    for path in SYSTEM_PATHS:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    made: set[str] = set()
    for path in OPTIONAL_FILES:
        if os.path.exists(path):
            argv += _parent_dirs(path, made) + ["--ro-bind", path, path]
    for root in [*interpreter_roots(python), *config.ro_binds]:
        argv += _parent_dirs(root, made) + ["--ro-bind", root, root]
    argv += ["--proc", "/proc", "--dev", "/dev",
             "--perms", "1777", "--size", str(config.workdir_mb << 20), "--tmpfs", WORKDIR, "--chdir", WORKDIR]
    return argv


def rlimits_only_environment(workdir: str) -> dict[str, str]:
    """The whole environment of an ``rlimits-only`` execution (nothing is inherited from the host)."""
    return {**ENVIRONMENT, "HOME": workdir}


def ensure_available(config: SandboxConfig) -> None:
    """Raise :class:`SandboxUnavailable` (one line) unless ``config.isolation`` works here; cached."""
    if config.isolation == "rlimits-only":
        return
    python = interpreter(config)
    _probe_bwrap(config.bwrap, python, tuple(interpreter_roots(python)), config.ro_binds, os.geteuid() == 0)


@functools.lru_cache(maxsize=16)
def _probe_bwrap(bwrap: str, python: str, roots: tuple, ro_binds: tuple, as_root: bool) -> None:
    hint = "or set isolation='rlimits-only' to run without namespaces (weaker, see docs/sandbox.md)"
    if not sys.platform.startswith("linux"):
        raise SandboxUnavailable(f"sandbox: bubblewrap needs Linux (this is {sys.platform}); {hint}")
    if shutil.which(bwrap) is None:
        raise SandboxUnavailable(
            f"sandbox: bubblewrap ({bwrap!r}) is not installed; install it (apt-get install bubblewrap) {hint}"
        )
    config = SandboxConfig(bwrap=bwrap, python=python, ro_binds=ro_binds)
    argv = [*bwrap_options(config, python), "--", python, "-S", "-I", "-c", "pass"]
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30, env={})
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxUnavailable(f"sandbox: bubblewrap could not start: {exc}; {hint}") from None
    if done.returncode != 0:
        detail = (done.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        raise SandboxUnavailable(f"sandbox: bubblewrap cannot create a sandbox here ({detail}); {hint}")


def _parent_dirs(path: str, made: set[str]) -> list[str]:
    # bubblewrap would create missing parents with the host's modes (e.g. /root is 0700): the sandbox uid
    # could then not reach the bound directory. Create them world-readable instead.
    argv = []
    for parent in reversed(Path(path).parents):
        name = str(parent)
        if name == "/" or name in made or _under_system_path(name):
            continue
        made.add(name)
        argv += ["--perms", "0755", "--dir", name]
    return argv


def _under_system_path(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in SYSTEM_PATHS)
