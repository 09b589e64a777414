"""Per-node facts on a real two-node Ray cluster that the test starts: a run dir that the nodes do not share is
refused at start in one line, and each actor's threads come from its own node.

Fake nodes on one machine share every folder, so the second node runs in a mount namespace of its own in which
the run dir's path is another folder (a bind mount): what a trainer there writes into the run dir is real storage
the driver never sees, as on two machines with node-local disks. The check itself is the run's own code."""
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ray_cluster import BIN, RayCluster, start_cluster, stop_cluster

pytestmark = pytest.mark.slow

TINY = ["data.tasks=[{name: arithmetic, n_train: 8, n_test: 4, difficulty: 2}]", "rl.prompts_per_step=2",
        "rl.group_size=2", "rollout.max_new_tokens=16", "rollout.kv_cache_gb=0.5", "rollout.max_num_seqs=8",
        "eval.n_samples=1", "eval.k=[1]", "rl.eval_every=0", "rl.eval_at_ends=false", "rl.steps=1",
        "trainer.micro_batch_size=2"]


def start_split_cluster(folder: Path, runs: Path, view: Path) -> RayCluster:
    """Head (2 CPUs, ``head_node``) and a second node (2 CPUs, ``rollout_node``) whose processes see ``view`` at
    ``runs``: its ``ray start`` runs in a mount namespace of its own (unshare) with ``view`` bound over ``runs``."""
    bind = f"mount --bind {shlex.quote(str(view))} {shlex.quote(str(runs))} && exec \"$0\" \"$@\""
    return start_cluster(folder, head_resources={"head_node": 1}, node_resources={"rollout_node": 1},
                         node_prefix=["unshare", "--mount", "sh", "-c", bind])


def _can_unshare() -> bool:
    return subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def split(tmp_path_factory, smollm2_dir):
    """The cluster (head: ``head_node``, second node: ``rollout_node``), and the path ``runs`` that the second
    node sees as another folder."""
    if not _can_unshare():
        pytest.fail("needs `unshare --mount` (root or user namespaces) to give the second node its own view")
    folder = tmp_path_factory.mktemp("split-cluster")
    runs, view = folder / "runs", folder / "node-view"
    runs.mkdir()
    view.mkdir()
    cluster = start_split_cluster(folder, runs, view)
    yield cluster, runs
    stop_cluster(cluster)


def test_a_run_dir_the_nodes_do_not_share_is_refused_at_start_in_one_line(split):
    cluster, runs = split
    done = cluster.run([str(BIN / "r1"), "reasoning-rl", "-c", "configs/quickstart.yaml", f"cluster.address={cluster.gcs}",
                        "run.name=unshared", f"run.output_dir={runs}", "cluster.trainer.resources={rollout_node: 1}",
                        "cluster.rollout.resources={head_node: 1}", *TINY], timeout=600)
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    named = re.fullmatch(f"r1: error in stage reasoning_rl: run dir {re.escape(str(runs))}/unshared is not shared "
                         r"between the nodes: a file the driver wrote there is not seen on [\d.]+ \(node (\w{8})\); "
                         r"put run.output_dir on storage every node mounts at the same path \(docs/cluster.md, "
                         r"section 3\)", last)
    assert named, last
    # The node named is the one with its own view of the run dir's path, and only that one.
    assert node_with(cluster, "rollout_node").startswith(named.group(1)), last
    # Refused before any actor wrote there: the second node's own folder holds nothing of the run.
    assert not any((runs.parent / "node-view").iterdir())


def node_with(cluster: RayCluster, resource: str) -> str:
    """The id of the cluster's node that has the custom ``resource``."""
    code = ("import json\nfrom ray.util.state import list_nodes\n"
            f"print(json.dumps({{n.node_id: n.resources_total for n in list_nodes(address={cluster.dashboard!r})}}))\n")
    done = cluster.run([sys.executable, "-c", code], timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    nodes = json.loads(done.stdout.strip().splitlines()[-1])
    return next(node for node, resources in nodes.items() if resource in resources)


DRIVER = """
import json, os, sys
import ray
from pipeline.cluster import connect
from pipeline.config import load_config
from pipeline.placement import actor_options, bundle_nodes, node_threads, placement_group_for

cfg = load_config(None, [f"cluster.address={sys.argv[1]}", "cluster.trainer_workers=3", f"run.output_dir={sys.argv[2]}",
                         "run.name=shared"])
connect(cfg)

@ray.remote
class Probe:
    def where(self):
        return ray.get_runtime_context().get_node_id(), os.environ.get("OMP_NUM_THREADS"), os.cpu_count()

probes = [Probe.options(**actor_options(cfg, "trainer", i, threads=node_threads(cfg, "trainer", i))).remote()
          for i in range(3)]
print(json.dumps({"bundles": bundle_nodes(placement_group_for(cfg, "trainer")),
                  "actors": ray.get([p.where.remote() for p in probes])}))
"""


def test_each_actor_gets_threads_from_its_own_node_and_a_shared_run_dir_passes(split, tmp_path):
    cluster, _ = split
    shared = tmp_path / "shared-runs"  # outside the bind mount: the same folder on both nodes
    done = cluster.run([sys.executable, "-c", DRIVER, cluster.gcs, str(shared)], timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    bundles, actors = found["bundles"], found["actors"]
    assert len(set(bundles)) == 2, bundles  # 3 one-CPU trainers on two 2-CPU nodes: 2 on one, 1 on the other
    for i, (node, omp, cores) in enumerate(actors):
        assert node == bundles[i]
        # each node offers 2 CPUs (its Ray resource; fewer if the machine has fewer cores), split among the
        # trainers placed on it
        assert omp == str(max(1, min(2, cores) // bundles.count(node))), (i, actors, bundles)
    if min(c for _, _, c in actors) >= 2:
        assert sorted(int(omp) for _, omp, _ in actors) == [1, 1, 2]
