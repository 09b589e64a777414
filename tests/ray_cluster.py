"""A real two-node Ray cluster on this machine, started and ended by a test (never `ray stop`, which would end
every Ray process here): a head and a second node with a custom resource, each `ray start --block` in its own
process group, with a private temp dir, ports and auth token. Ray's worker processes put themselves in
process groups of their own, but they exit when their raylet dies, which the teardown waits for."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RayCluster:
    """Addresses of the cluster, and the environment a client needs to reach it (its token)."""

    gcs: str
    dashboard: str
    env: dict
    folder: Path
    temp: Path
    processes: list = field(default_factory=list)

    def run(self, args: list[str], *, env: dict | None = None, timeout: float = 900, cwd: Path = ROOT):
        """Run a command as a user would, with the cluster's client environment; returns the finished process."""
        return subprocess.run(args, cwd=cwd, env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout)

    def actors(self, class_name: str) -> list[dict]:
        """The cluster's actors of ``class_name`` (alive or dead) with their node's custom resources, from Ray's
        state API in a fresh client process."""
        code = ("import json, ray\n"
                "from ray.util.state import list_actors, list_nodes\n"
                f"nodes = {{n.node_id: n.resources_total for n in list_nodes(address={self.dashboard!r})}}\n"
                f"actors = list_actors(address={self.dashboard!r}, filters=[('class_name', '=', {class_name!r})],"
                " detail=True)\n"
                "print(json.dumps([{'node_id': a.node_id, 'state': a.state, 'node_resources': nodes.get(a.node_id, {})}"
                " for a in actors]))\n")
        done = self.run([sys.executable, "-c", code], timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for_nodes(cluster: RayCluster, count: int, deadline: float) -> None:
    code = (f"import ray; ray.init(address={cluster.gcs!r}, logging_level='ERROR'); "
            "print(sum(1 for n in ray.nodes() if n['Alive']))")
    while time.monotonic() < deadline:
        done = cluster.run([sys.executable, "-c", code], timeout=120)
        if done.returncode == 0 and done.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(2)
    raise RuntimeError(f"the test's Ray cluster did not reach {count} nodes; logs in {cluster.folder}")


def start_cluster(folder: Path, *, head_cpus: int = 2, node_cpus: int = 2, node_resources: dict | None = None,
                  extra_env: dict | None = None, head_resources: dict | None = None,
                  node_prefix: list[str] | None = None) -> RayCluster:
    """Head + second node (``node_resources`` on it) on loopback addresses, token auth on with a private token.
    ``node_prefix``: a command the second node's ``ray start`` runs under (e.g. a mount namespace of its own)."""
    folder.mkdir(parents=True, exist_ok=True)
    token = folder / "auth_token"
    token.write_text(secrets.token_hex(32))
    port, dash = free_port(), free_port()
    # The project's environment first on PATH, as after `source .venv/bin/activate`: a job's `r1` is ours.
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN_PATH": str(token), **(extra_env or {})}
    env.pop("RAY_ADDRESS", None)
    temp = Path(f"/tmp/r1ray-{port}")  # unix socket paths must stay short: not under pytest's deep tmp dir
    cluster = RayCluster(gcs=f"127.0.0.1:{port}", dashboard=f"http://127.0.0.1:{dash}", env=env, folder=folder,
                         temp=temp)
    ray = str(BIN / "ray")
    # Ray resolves 127.0.0.1 to this machine's address for node-to-node traffic (it refuses loopback there);
    # the dashboard and the job API do bind to loopback.
    cluster.processes.append(_start(
        [ray, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(port),
         "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--temp-dir", str(temp),
         "--num-cpus", str(head_cpus), "--resources", json.dumps(head_resources or {}), "--include-dashboard", "true",
         "--disable-usage-stats"],
        env, folder / "head.log"))
    time.sleep(3)
    cluster.processes.append(_start(
        [*(node_prefix or []), ray, "start", "--block", "--address", cluster.gcs, "--node-ip-address", "127.0.0.1",
         # A temp dir of its own: nodes on one machine would otherwise unpack (and garbage-collect) a job's
         # working dir in the same folder, deleting it under the other node's processes.
         "--temp-dir", f"{temp}-node", "--num-cpus", str(node_cpus), "--resources", json.dumps(node_resources or {}), "--disable-usage-stats"],
        env, folder / "node.log"))
    try:
        _wait_for_nodes(cluster, 2, time.monotonic() + 180)
    except Exception:
        stop_cluster(cluster)
        raise
    return cluster


def stop_cluster(cluster: RayCluster) -> None:
    """End the process groups this test started (the node first, then the head), and wait for them."""
    for proc in reversed(cluster.processes):
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        try:  # `ray start --block` may leave its daemons a while after SIGTERM: they are ours, end them now
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
    shutil.rmtree(cluster.temp, ignore_errors=True)
    shutil.rmtree(f"{cluster.temp}-node", ignore_errors=True)
