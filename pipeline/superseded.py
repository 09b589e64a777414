"""Finished work that a config change made stale is moved aside, never deleted: ``runs/<name>/superseded/``.

`r1 run` (and a stage command) moves a stage folder whose inputs or config changed to
``superseded/<stage>-<UTC time>/`` (an eval re-run moves the old ``eval/`` to ``<stage>-eval-<time>/``);
`r1 clean` removes those folders on request, and only those.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

SUPERSEDED = "superseded"


def superseded_dir(run_dir: Path) -> Path:
    return Path(run_dir) / SUPERSEDED


def move_aside(run_dir: Path, path: Path, name: str, *, now: float | None = None) -> Path:
    """Move ``path`` (a folder of the run) to ``superseded/<name>-<UTC time>/`` in one rename; returns where it
    went. Two moves within one second get ``-2``, ``-3``, ... rather than meeting."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    root = superseded_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    dest = root / f"{name}-{stamp}"
    n = 1
    while dest.exists():
        n += 1
        dest = root / f"{name}-{stamp}-{n}"
    os.replace(path, dest)  # same file system (inside the run dir): atomic, nothing copied
    return dest


def folder_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (links counted as links, not followed)."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        return path.lstat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += (Path(root) / f).lstat().st_size
            except FileNotFoundError:
                pass
    return total


def superseded_folders(run_dir: Path) -> list[Path]:
    """The entries of ``run_dir/superseded/``, oldest name first."""
    root = superseded_dir(run_dir)
    return sorted(root.iterdir()) if root.is_dir() else []


def clean_superseded(run_dir: Path, *, dry_run: bool = False) -> list[tuple[Path, int]]:
    """Remove every entry of ``run_dir/superseded/`` (nothing else); returns ``(path, bytes)`` of each."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run dir {run_dir}: not found")
    removed = []
    for entry in superseded_folders(run_dir):
        size = folder_bytes(entry)
        if not dry_run:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()  # a link is removed, never what it points to
        removed.append((entry, size))
    if not dry_run and superseded_dir(run_dir).is_dir() and not any(superseded_dir(run_dir).iterdir()):
        superseded_dir(run_dir).rmdir()
    return removed


def human_bytes(n: int) -> str:
    """``1536`` -> ``1.5 KiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
