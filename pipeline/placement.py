"""Where each actor of a run goes: Ray placement groups built from the config's ``cluster`` section.

Every role (``rollout``, ``trainer``, ``reference``, ``reward``) gets one placement group with a bundle per
actor (``cluster.rollout_engines`` rollout engines, ``cluster.trainer_workers`` trainer workers, ...), each
bundle the role's :class:`pipeline.config.ResourceSpec` (CPUs, GPUs, custom resources such as a node type),
laid out by ``cluster.strategy``. Roles named in ``cluster.colocate`` share one group instead: bundle ``i``
holds trainer worker ``i``, rollout engine ``i`` and reference ``i`` (the sum of their resources, so a GPU is
split between them and time-shared), which is how a colocated run puts the engine next to its trainer.

Groups are made once per driver process and kept for the run: the stages of `r1 run` kill and start actors,
but the reserved bundles stay, so a later stage never waits for resources an earlier one gave back.

Once a group of actors that use the run dir is placed, a layout that spans nodes has its run dir checked for
being shared (:mod:`pipeline.shared_dir`); each actor's threads come from its own node (:func:`node_threads`).
"""
from __future__ import annotations

import logging
from typing import Any

from .shared_dir import RUN_DIR_ROLES, check_run_dir
from .shared_dir import forget as forget_nodes

log = logging.getLogger("r1.placement")

ROLES = ("rollout", "trainer", "reference", "reward")
PLACEMENT_WAIT_S = 120.0  # a group not placed by then cannot be (too few nodes of a kind): say so, do not hang

_groups: dict[tuple, Any] = {}  # (roles, bundles, strategy) -> PlacementGroup, for this driver process


def default_threads(cfg) -> int:
    """torch / OpenMP threads of an actor on the driver's machine: ``cluster.threads``, default every core (phases
    alternate). Actors placed on a cluster get theirs from their own node: :func:`node_threads`."""
    import os

    return cfg.cluster.threads or os.cpu_count() or 1


def threads_for(node_cpus: int, actors_on_node: int) -> int:
    """Threads of one actor: its node's CPUs split between the actors of its role there (they work at once;
    the roles' phases alternate, so other roles' actors on the node do not count)."""
    return max(1, int(node_cpus) // max(1, actors_on_node))


def node_threads(cfg, role: str, index: int = 0) -> int:
    """torch / OpenMP threads of actor ``index`` of ``role``: ``cluster.threads`` if set, else
    :func:`threads_for` its node's CPUs (:func:`node_cpus`) and the actors of ``role`` placed on that node."""
    if cfg.cluster.threads:
        return cfg.cluster.threads
    nodes = bundle_nodes(placement_group_for(cfg, role))
    count = role_count(cfg.cluster, role)  # actor i of a role is bundle i, colocated or not
    mine = nodes[index]
    return threads_for(node_cpus(mine), sum(1 for i in range(count) if nodes[i] == mine))


def bundle_nodes(pg) -> list[str]:
    """The node id of each bundle of a placed group, in bundle order."""
    import ray

    where = ray.util.placement_group_table(pg)["bundles_to_node_id"]
    return [where[i] for i in range(len(where))]


_node_cpus: dict[str, int] = {}  # node id -> CPUs, probed once per driver process


def _cpu_count() -> int:
    import os

    return os.cpu_count() or 1


def node_cpus(node_id: str) -> int:
    """A node's CPUs: the fewer of its Ray CPU resource (what its operator offered) and its cores (a task run
    there counts them: a local cluster may offer more logical CPUs than the machine has)."""
    if node_id not in _node_cpus:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        offered = next((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["NodeID"] == node_id), 0)
        counter = ray.remote(num_cpus=0, max_retries=0)(_cpu_count)
        cores = ray.get(counter.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
                        .remote(), timeout=PLACEMENT_WAIT_S)
        _node_cpus[node_id] = max(1, min(int(offered) or cores, cores))
    return _node_cpus[node_id]


def role_count(cluster, role: str) -> int:
    """How many actors of ``role`` a run starts (one reference: it only scores)."""
    return {"rollout": cluster.rollout_engines, "trainer": cluster.trainer_workers, "reference": 1,
            "reward": cluster.reward_workers}[role]


def bundle_of(spec) -> dict[str, float]:
    """A Ray bundle for one actor of ``spec``: CPU, GPU and custom resources, zeros left out (Ray refuses a
    zero-sized bundle, so an actor asking for nothing reserves a token 0.01 CPU)."""
    bundle = {"CPU": float(spec.num_cpus), "GPU": float(spec.num_gpus), **{k: float(v) for k, v in spec.resources.items()}}
    bundle = {k: v for k, v in bundle.items() if v > 0}
    return bundle or {"CPU": 0.01}


def add_bundles(*bundles: dict[str, float]) -> dict[str, float]:
    """The resources of several actors that share one bundle."""
    total: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            total[k] = total.get(k, 0.0) + v
    return total


def group_layout(cluster, role: str) -> tuple[tuple[str, ...], list[dict[str, float]]]:
    """The roles sharing ``role``'s placement group and that group's bundles (pure: no Ray)."""
    spec = getattr(cluster, role)
    if role not in cluster.colocate:
        return (role,), [bundle_of(spec)] * role_count(cluster, role)
    roles = tuple(r for r in ("trainer", "rollout", "reference") if r in cluster.colocate)
    size = max(role_count(cluster, r) for r in roles)
    bundles = [add_bundles(*(bundle_of(getattr(cluster, r)) for r in roles if i < role_count(cluster, r)))
               for i in range(size)]
    return roles, bundles


def colocated_on_gpus(cfg) -> bool:
    """Whether the engines share GPUs with the trainer (``cluster.colocate``), so they sleep while it trains."""
    c = cfg.cluster
    return {"rollout", "trainer"} <= set(c.colocate) and c.rollout.num_gpus > 0


def placement_group_for(cfg, role: str):
    """The (cached) placement group that ``role``'s actors go into, created and waited for on first use."""
    import ray
    from ray.util.placement_group import placement_group

    roles, bundles = group_layout(cfg.cluster, role)
    # Keyed by the Ray session too: a group of an earlier ray.init (a test's, a finished run's) is gone.
    key = (ray.get_runtime_context().get_job_id(), roles, repr(bundles), cfg.cluster.strategy)
    if key in _groups:
        return _groups[key]
    name = "+".join(roles)
    pg = placement_group(bundles, strategy=cfg.cluster.strategy, name=f"r1-{name}")
    ready, _ = ray.wait([pg.ready()], timeout=PLACEMENT_WAIT_S)
    if not ready:
        ray.util.remove_placement_group(pg)
        raise RuntimeError(f"cluster: cannot place {name}: {len(bundles)} bundle(s) {bundles[0]} "
                           f"({cfg.cluster.strategy}) not available within {PLACEMENT_WAIT_S:.0f} s; the cluster has "
                           f"{_available()} (check cluster.{role}.num_gpus / resources and the nodes' resources)")
    log.info("placement group %s: %d x %s (%s)", name, len(bundles), bundles[0], cfg.cluster.strategy)
    _groups[key] = pg
    if set(roles) & set(RUN_DIR_ROLES):  # actors on other nodes than the driver need a shared run dir
        try:
            check_run_dir(cfg.run_dir(), bundle_nodes(pg))
        except BaseException:
            ray.util.remove_placement_group(_groups.pop(key))
            raise
    return pg


def _available() -> dict[str, float]:
    import ray

    return {k: v for k, v in ray.available_resources().items() if not k.startswith(("node:", "memory",
                                                                                       "object_store"))}


def actor_options(cfg, role: str, index: int = 0, *, threads: int | None = None, allocator: str | None = None,
                  env: dict[str, str] | None = None) -> dict:
    """``.options(**...)`` for actor ``index`` of ``role``: its resources, its bundle of the role's placement
    group, and the worker environment (threads, caches, allocator; ``env`` adds to it)."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from .actors import worker_env

    if role not in ROLES:
        raise ValueError(f"unknown actor role {role!r}; roles: {', '.join(ROLES)}")
    spec = getattr(cfg.cluster, role)
    count = role_count(cfg.cluster, role)
    if not 0 <= index < count:
        raise ValueError(f"{role} actor {index}: the config places {count}")
    pg = placement_group_for(cfg, role)
    variables = {**worker_env(threads, allocator or "system"), **(env or {})}
    options = {"num_cpus": spec.num_cpus, "num_gpus": spec.num_gpus,
               "scheduling_strategy": PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index),
               "runtime_env": {"env_vars": variables}}
    if spec.resources:
        options["resources"] = dict(spec.resources)
    return options


def release_placement() -> None:
    """Remove this process's placement groups (their actors end with them); a new run makes its own."""
    import ray

    forget_nodes()
    if not ray.is_initialized():  # the session that held them is gone (and a Ray call here would start one)
        _groups.clear()
        return
    for pg in _groups.values():
        try:
            ray.util.remove_placement_group(pg)
        except Exception:  # the cluster may be gone already (shutdown): nothing left to release
            pass
    _groups.clear()
