"""Peak memory of a run: the driver plus every process it started (Ray's GCS, raylet, actor workers).

PSS, not RSS: shared pages (torch's libraries, Ray's object store in /dev/shm) are split between the
processes that map them instead of being counted once per process.
"""
from __future__ import annotations

import os
import threading


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:  # the process ended, or no procfs
        return 0
    return 0


def tree_pss_gib(root_pid: int | None = None) -> float:
    """Total PSS (GiB) of ``root_pid`` (default: this process) and all its descendants."""
    import psutil

    root = psutil.Process(root_pid or os.getpid())
    try:
        pids = [root.pid] + [c.pid for c in root.children(recursive=True)]
    except psutil.Error:
        pids = [root.pid]
    return sum(_pss_kib(pid) for pid in pids) / 2**20


class PeakMemory:
    """A daemon thread sampling :func:`tree_pss_gib` every ``interval`` seconds; ``peak_gib`` is the maximum.

    >>> with PeakMemory() as mem: ...      # doctest: +SKIP
    >>> mem.peak_gib
    """

    def __init__(self, interval: float = 2.0) -> None:
        self.interval = interval
        self.peak_gib = 0.0
        self.last_gib = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.last_gib = tree_pss_gib()
            self.peak_gib = max(self.peak_gib, self.last_gib)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.peak_gib = max(self.peak_gib, tree_pss_gib())
