"""N trainer actors in one torch.distributed group, behind one handle that stages use as if it were one actor.

``group.train_grpo.remote(...)`` calls the method on every rank (each trains its share of the batch, the
gradients are summed in the group) and returns rank 0's ObjectRef; the other ranks' refs are kept and
checked at the next call (or by :meth:`TrainerGroup.check`), so an error there is not lost. Calls that
need one worker (export, scoring under ``replicate``, where every rank holds the same weights) go to rank 0
only; under ``fsdp`` every call goes to every rank, since gathering shards is a collective. Checkpoints
(DCP: every rank writes its shards) go to every rank in both layouts, and :meth:`TrainerGroup.wait_call`
waits for every rank's answer, naming a rank that died (a dead rank > 0 is not a stall of rank 0).
"""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("r1.trainer_group")

# Methods that one replicated worker answers alone: they read the (identical) weights and run no collective.
# (Not save_checkpoint: DCP's save is a collective of every rank, each writing its part.)
RANK0_UNDER_REPLICATE = frozenset({"inference_state_dict", "save_pretrained", "batch_logprobs",
                                   "logprobs", "inference_tensors", "weight_specs", "broadcast_weights"})

# Methods that are rank 0's alone whatever the layout: rank 0 hosts the weight-sync group with the engines.
RANK0_ONLY = frozenset({"open_weight_group", "node_address"})


class TrainerGroup:
    """The handles of a trainer group's workers (rank order), usable where one trainer actor handle is."""

    def __init__(self, workers: list, parallel: str = "replicate") -> None:
        self.workers = list(workers)
        self.parallel = parallel
        self._pending: list = []  # refs of ranks > 0 not yet checked

    def __len__(self) -> int:
        return len(self.workers)

    @property
    def pending(self) -> list:
        """The refs of calls on ranks > 0 not checked yet (a caller waiting on rank 0 may wait on them too)."""
        return list(self._pending)

    def __getattr__(self, name: str) -> "_GroupMethod":
        if name.startswith("_") and name != "__ray_ready__":
            raise AttributeError(name)
        return _GroupMethod(self, name)

    def ranks_for(self, method: str) -> list:
        """The workers a call of ``method`` goes to."""
        if method in RANK0_ONLY or self.parallel == "replicate" and method in RANK0_UNDER_REPLICATE:
            return self.workers[:1]
        return self.workers

    def call(self, method: str, *args, **kwargs):
        """Call ``method`` on the ranks that take it; rank 0's ObjectRef (the others' are kept to check)."""
        self._check_finished()
        refs = [getattr(w, method).remote(*args, **kwargs) for w in self.ranks_for(method)]
        self._pending += refs[1:]
        return refs[0]

    def _check_finished(self) -> None:
        """Raise the error of a finished call on a rank > 0; forget the finished ones that succeeded."""
        import ray

        if not self._pending:
            return
        done, self._pending = ray.wait(self._pending, num_returns=len(self._pending), timeout=0)
        ray.get(done)

    def check(self, timeout: float | None = None) -> None:
        """Wait for every call made on ranks > 0 and raise the first error among them."""
        import ray

        pending, self._pending = self._pending, []
        ray.get(pending, timeout=timeout)

    def wait_call(self, method: str, *args, timeout_s: float, **kwargs):
        """Call ``method`` on the ranks that take it and wait for all of them (at most ``timeout_s``); returns
        rank 0's answer. The first error is raised as soon as it is known: a rank that died is
        :class:`~stages.supervision.TrainerDied` naming it (its peers would wait for it in a collective
        until the group's timeout), the others' errors as they are."""
        from stages.supervision import wait

        self._check_finished()
        workers = self.ranks_for(method)
        refs = [getattr(w, method).remote(*args, **kwargs) for w in workers]
        try:
            return wait(refs, "trainer group", method, timeout_s)[0]
        except Exception as exc:  # noqa: BLE001 -- a death is renamed, everything else re-raised as it is
            self._raise_if_dead(exc, method)
            raise

    def _raise_if_dead(self, exc: BaseException, method: str) -> None:
        """Raise ``TrainerDied`` naming the dead rank(s) when ``exc`` comes from a worker's death: its own
        (``RayActorError``) or a peer's collective failing because of it."""
        from ray.exceptions import RayActorError, RayTaskError

        from stages.supervision import TrainerDied

        if isinstance(exc, RayActorError):
            mine = exc.actor_id
            ranks = [r for r, w in enumerate(self.workers) if mine is not None and w._actor_id.hex() == mine]
            ranks = ranks or self.dead_ranks()
        elif isinstance(exc, RayTaskError):
            ranks = self.dead_ranks()
        else:
            return
        if ranks:
            raise TrainerDied(f"trainer rank {', '.join(map(str, ranks))} (of {len(self)}) died during {method}"
                              ) from exc

    def dead_ranks(self, timeout: float = 10.0) -> list[int]:
        """The ranks whose actor has died (a busy one, e.g. waiting in a collective, is alive)."""
        return dead_indices(self.workers, timeout)

    def kill(self) -> None:
        """Kill every worker of the group."""
        import ray

        for w in self.workers:
            ray.kill(w)
        self._pending = []


class _GroupMethod:
    """``group.<method>``: ``.remote(...)`` as on an actor method."""

    def __init__(self, group: TrainerGroup, name: str) -> None:
        self.group, self.name = group, name

    def remote(self, *args, **kwargs):
        return self.group.call(self.name, *args, **kwargs)


def dead_indices(handles: list, timeout: float = 10.0) -> list[int]:
    """The positions in ``handles`` of the actors that have died. All are probed at once within one ``timeout``;
    one that does not answer in time is busy (e.g. waiting in a collective for a dead peer), not dead."""
    import ray
    from ray.exceptions import RayActorError

    probes = [h.__ray_ready__.remote() for h in handles]
    ready, _ = ray.wait(probes, num_returns=len(probes), timeout=timeout)
    dead = []
    for index, probe in enumerate(probes):
        if probe in ready:
            try:
                ray.get(probe)
            except RayActorError:
                dead.append(index)
    return dead


def kill_actor(handle: Any) -> None:
    """Kill a trainer group (all its workers) or a plain actor."""
    import ray

    if isinstance(handle, TrainerGroup):
        handle.kill()
    else:
        ray.kill(handle)


def start_trainer_group(cfg, model_dir: str, settings, cls=None, *args) -> TrainerGroup:
    """``cfg.cluster.trainer_workers`` trainer actors (``PolicyTrainer`` unless ``cls``; ``args`` follow
    ``model_dir, settings`` in its constructor) joined into one torch.distributed group, as
    ``cfg.cluster.trainer_parallel`` says; returns once the group is formed.

    Ray must be connected (``pipeline.cluster.connect``). Rank 0 reports its node's address and a free port;
    every rank then joins there (gloo on CPU, NCCL plus gloo on GPU). A worker that cannot join within
    ``cluster.timeout_s`` fails the start with its error. Under ``fsdp`` ranks > 0 read no weights: rank 0's
    are broadcast as the model is sharded.
    """
    import ray

    from .placement import actor_options, node_threads

    if cls is None:
        from trainer.policy import PolicyTrainer as cls

    c = cfg.cluster
    n = c.trainer_workers
    # FSDP: only rank 0 reads the weights; the others build the model on the meta device and receive
    # rank 0's as the group shards it (PolicyTrainer's weights_from_rank0).
    empty = {"weights_from_rank0": True} if c.trainer_parallel == "fsdp" and n > 1 else {}
    # Each worker gets a bundle of the trainer's placement group (resources, node, colocation).
    workers = [ray.remote(cls).options(**actor_options(cfg, "trainer", i, threads=node_threads(cfg, "trainer", i),
                                                       allocator=c.allocator)).remote(model_dir, settings, *args,
                                                                                      **(empty if i else {}))
               for i in range(n)]
    group = TrainerGroup(workers, c.trainer_parallel)
    try:
        ip, port = ray.get(workers[0].node_address.remote(), timeout=c.timeout_s)
        init = f"tcp://{ip}:{port}"
        log.info("trainer group: %d workers (%s) meeting at %s", n, c.trainer_parallel, init)
        ray.get([w.join_group.remote(init, rank, n, c.trainer_parallel, c.timeout_s) for rank, w in enumerate(workers)],
                timeout=c.timeout_s)
    except BaseException:
        group.kill()
        raise
    return group
