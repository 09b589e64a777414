"""Is the run dir one storage for every node that uses it? Checked at start, before any actor writes there.

The driver renames and reads what the trainer writes into the run dir (checkpoints, a stage's ``model/``), and
the rollout and reference actors load models from it. When those actors sit on other nodes than the driver,
the run dir must be shared storage (NFS, Lustre, a mounted bucket). A node-local folder of the same name on
each node looks fine until the driver renames a checkpoint that is on another machine, so the run is refused
at start instead, in one line naming the dir and the nodes that do not see it.

How: the driver writes a marker file with a random token into the run dir, and a task pinned to each node
that hosts such an actor reads it back. The driver's own node is read too: the driver process and its node's
workers need not see the same filesystem (a container), and it costs one more tiny task.
"""
from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path
from typing import Iterable

log = logging.getLogger("r1.shared_dir")

# Roles whose actors write into the run dir or read what was written there (reward workers do neither).
RUN_DIR_ROLES = ("trainer", "rollout", "reference")
MARKER_PREFIX = ".r1-shared-check-"
PROBE_TIMEOUT_S = 120.0
PROBE_TRIES = 3

# Per Ray session (job id) of this driver process: a later ray.init has other nodes.
_confirmed: dict[tuple[str, str], set[str]] = {}  # (job, run dir) -> nodes that saw its marker
_placed: dict[str, set[str]] = {}  # job -> nodes that host its run-dir actors


class UnsharedRunDir(RuntimeError):
    """The run dir is not the same storage on every node that uses it (one line)."""


def read_marker(path: str) -> str | None:
    """The marker's text as this node sees it, or None if the file is not there (runs on the probed node)."""
    try:
        return Path(path).read_text()
    except OSError:
        return None


def needs_check(nodes: Iterable[str], driver_node: str) -> bool:
    """Whether a layout spreads the run dir's users over more than one node (the driver's counts)."""
    return len(set(nodes) | {driver_node}) > 1


def blind_nodes(seen: dict[str, str | None], token: str) -> list[str]:
    """The nodes whose read of the marker did not return ``token``."""
    return [node for node, text in seen.items() if text != token]


def unshared_message(run_dir: Path, blind: list[str], addresses: dict[str, str]) -> str:
    """The one line that refuses a run dir the nodes ``blind`` do not see."""
    where = ", ".join(f"{addresses.get(n, '?')} (node {n[:8]})" for n in blind)
    return (f"run dir {run_dir} is not shared between the nodes: a file the driver wrote there is not seen on {where}; "
            "put run.output_dir on storage every node mounts at the same path (docs/cluster.md, section 3)")


def probe(run_dir: Path, nodes: Iterable[str], timeout_s: float = PROBE_TIMEOUT_S) -> dict[str, str | None]:
    """Write a marker into ``run_dir`` here and read it on each of ``nodes``: ``{"token": the marker's text,
    "seen": {node: what that node read}}``."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    run_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    marker = run_dir / f"{MARKER_PREFIX}{token}"
    marker.write_text(token)
    try:
        reader = ray.remote(num_cpus=0, max_retries=0)(read_marker)
        refs = {node: reader.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                .remote(str(marker)) for node in nodes}
        seen = dict(zip(refs, ray.get(list(refs.values()), timeout=timeout_s)))
    finally:
        marker.unlink(missing_ok=True)
    return {"token": token, "seen": seen}


def check_run_dir(run_dir: Path, nodes: Iterable[str]) -> None:
    """Refuse (:class:`UnsharedRunDir`) a run dir that some node of this run's run-dir actors does not share with
    the driver. ``nodes``: the nodes of a newly placed group of :data:`RUN_DIR_ROLES`; they are added to those
    of earlier groups. Nothing runs while everything sits on the driver's node; a node is probed once per run dir."""
    import ray

    context = ray.get_runtime_context()
    placed = _placed.setdefault(context.get_job_id(), set())
    placed.update(nodes)
    driver = context.get_node_id()
    if not needs_check(placed, driver):
        return
    key = (context.get_job_id(), str(run_dir))
    todo = sorted((placed | {driver}) - _confirmed.get(key, set()))
    if not todo:
        return
    blind = todo
    for attempt in range(PROBE_TRIES):  # a network filesystem may show a new file a moment late: look again
        if attempt:
            time.sleep(1.0)
        found = probe(Path(run_dir), blind)
        blind = blind_nodes(found["seen"], found["token"])
        if not blind:
            break
    if blind:
        addresses = {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in ray.nodes()}
        raise UnsharedRunDir(unshared_message(Path(run_dir), blind, addresses))
    _confirmed.setdefault(key, set()).update(todo)
    log.info("run dir %s: shared by the %d node(s) checked", run_dir, len(todo))


def forget() -> None:
    """Drop what this process knows of nodes and checks (a new Ray session places anew)."""
    _confirmed.clear()
    _placed.clear()
