"""Shared pieces of the sandbox test files: the stray-process check and small helpers (not a test file)."""
from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from sandbox.isolation import _UID_BASE

ROOT = Path(__file__).resolve().parent.parent
_BOOTSTRAP_MARK = b"The trusted bootstrap that runs first inside every sandbox"


def sandbox_processes() -> list[str]:
    """Processes a sandbox may have left: descendants of this test process that are (or descend from) a
    bubblewrap or bootstrap process, and (for a root host) anything running as a sandbox throw-away uid.
    Other children of the test process (e.g. math-verify helpers of other tests) are not counted."""
    me = os.getpid()
    parents: dict[int, int] = {}
    sandboxy: set[int] = set()
    leftovers = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # it exited while we looked
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            continue  # a zombie holds no resources and is about to be reaped
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        if cmdline.split(b"\0", 1)[0].endswith(b"bwrap") or _BOOTSTRAP_MARK in cmdline:
            sandboxy.add(pid)
        uid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:")))
        if uid >= _UID_BASE:
            leftovers.append(f"{pid} (uid {uid}): {stat[:60]}")
    for pid in parents:
        chain, ancestor = [pid], parents.get(pid)
        while ancestor and ancestor != me and len(chain) < 64:
            chain.append(ancestor)
            ancestor = parents.get(ancestor)
        if ancestor == me and sandboxy.intersection(chain):
            leftovers.append(f"{pid}: left by a sandbox run of the test process")
    return leftovers


@pytest.fixture
def no_stray_processes():
    """Fail the test if anything a sandbox started is still running shortly after it returned."""
    yield
    deadline = time.monotonic() + 3.0
    while (left := sandbox_processes()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"stray processes after the test: {left}"


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes (to show that a host file is unchanged)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
