"""Ray: join or start a cluster, and build the actor handles a stage talks to.

The same code runs on a laptop (a local Ray started here) and on a cluster (``RAY_ADDRESS``, ``ray job
submit``, or ``cluster.address``). Stages get a :class:`RLActors` of handles and never build actors.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from .config import RecipeConfig
from .placement import default_threads, node_threads
from .faults import configured_faults, with_faults
from stages.supervision import (DEFAULT_TIMEOUT_S, ActorTimeout, Group, Member, RestartsExhausted, Role, TrainerDied,
                          as_group, timeout_message, wait)

log = logging.getLogger("r1.cluster")

IN_RAY_JOB = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor in a submitted job's entrypoint


def connect(cfg: RecipeConfig) -> dict[str, Any]:
    """Join ``cluster.address`` / ``$RAY_ADDRESS`` if given, else start a local Ray. Idempotent."""
    import ray

    if ray.is_initialized():
        return ray.cluster_resources()
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    env = {"PYTHONPATH": worker_pythonpath()}
    if IN_RAY_JOB in os.environ:
        # A submitted job (r1 submit / ray job submit): its runtime env (the working dir that holds this repo,
        # the env vars) is the job's own; overriding it here would drop the working dir from the actors.
        log.info("running as a Ray job: joining its cluster")
        ray.init(logging_level=logging.WARNING)
    elif address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, runtime_env={"env_vars": env}, logging_level=logging.WARNING)
    else:
        num_cpus = cfg.cluster.num_cpus or max(os.cpu_count() or 1, _cpus_needed(cfg))
        log.info("starting a local Ray cluster (%s logical CPUs)", num_cpus)
        to_terminal = cfg.logging.engine_logs == "terminal"
        ray.init(num_cpus=num_cpus, include_dashboard=cfg.cluster.dashboard, runtime_env={"env_vars": env},
                 logging_level=logging.WARNING, log_to_driver=to_terminal)
        if not to_terminal:
            keep_actor_logs(cfg.run_dir() / "logs")
    return ray.cluster_resources()


def worker_pythonpath(cwd: str | None = None, pythonpath: str | None = None) -> str:
    """The ``PYTHONPATH`` of a local cluster's workers: what the driver imports from, in its order: the working
    directory (as ``python -m`` and the ``r1`` script put it first), the driver's ``PYTHONPATH``, then this repo
    (a user's reward module next to their config imports in every actor as it does here; a submitted job
    gets its modules from its runtime env instead)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    pythonpath = os.environ.get("PYTHONPATH", "") if pythonpath is None else pythonpath
    entries = [os.path.abspath(cwd or os.getcwd()), *(os.path.abspath(p) for p in pythonpath.split(os.pathsep) if p),
               root]
    return os.pathsep.join(dict.fromkeys(entries))


def keep_actor_logs(folder) -> None:
    """At exit, copy the local Ray session's worker output (vLLM, trainer, reward actors) into ``folder``:
    the terminal shows progress bars and tables, the engines' chatter stays findable next to the run."""
    import atexit
    import shutil
    from pathlib import Path

    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path())  # no public accessor for the session dir
    folder = Path(folder)
    log.info("actor logs (vLLM, Ray workers) go to %s (logging.engine_logs=terminal shows them here)", folder)

    def copy() -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for path in logs.glob("worker-*"):
            if path.suffix in (".out", ".err") and path.stat().st_size:
                shutil.copyfile(path, folder / path.name)

    atexit.register(copy)


def _cpus_needed(cfg: RecipeConfig) -> int:
    c = cfg.cluster
    total = (c.rollout.num_cpus * c.rollout_engines + c.trainer.num_cpus * c.trainer_workers
             + c.reward.num_cpus * c.reward_workers)
    if (cfg.rl.kl_coef or cfg.general_rl.kl_coef) and not cfg.trainer.lora.enabled:
        total += c.reference.num_cpus
    return int(total + 0.999)


@dataclass
class RLActors:
    """The actors of one RL run. ``rollout``: a :class:`~stages.rollout_pool.RolloutPool` (M engines);
    ``rewards``: a :class:`~stages.supervision.Group` of reward workers; ``reference``: a supervised
    :class:`~stages.supervision.Member`, or None when no KL term is used or LoRA provides it; ``trainer``: the
    trainer actor (or trainer group), remade by ``trainer_factory`` when it dies."""

    rollout: Any
    trainer: Any
    rewards: Any = field(default_factory=list)
    reference: Any = None
    reference_is_trainer: bool = False  # LoRA: the trainer scores with its adapters disabled
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_restarts: int = 0
    trainer_factory: Callable[[], Any] | None = None
    trainer_restarts: int = 0
    broadcast: Any = None  # the GPU sync route (pipeline.weight_sync: broadcast or ipc); None: object store
    sleep_engines: bool = False  # colocated on GPUs: engines free their memory while the trainer trains

    @property
    def engine(self):
        """The rollout engines as one engine (``generate``), for the held-out evals of the loop."""
        return self.rollout

    def call_trainer(self, method: str, *args):
        """``method(*args)`` on the trainer, waited for at most ``timeout_s``; a dead trainer (or worker of the
        trainer group) raises Ray's ``RayActorError`` or :class:`TrainerDied` (the loop restarts it from the
        last checkpoint)."""
        return self._await_trainer(getattr(self.trainer, method).remote(*args), method, fetch=True)

    def trainer_state(self):
        """An ObjectRef of the trainer's inference weights, once they exist (the weights stay in the object store;
        a dead trainer's error is raised here, where it is the trainer's, not at the engines)."""
        ref = self.trainer.inference_state_dict.remote()
        self._await_trainer(ref, "inference_state_dict", fetch=False)
        return ref

    def _await_trainer(self, ref, method: str, *, fetch: bool):
        import ray
        from ray.exceptions import RayTaskError

        # A group answers with rank 0's ref; the other ranks' refs of the same call are waited for too, so a
        # dead rank > 0 is seen at once, not as rank 0 stuck in a collective until the timeout.
        from .trainer_group import TrainerGroup

        refs = [ref, *(self.trainer.pending if isinstance(self.trainer, TrainerGroup) else [])]
        try:
            if fetch:
                return wait(refs, "trainer", method, self.timeout_s)[0]
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=self.timeout_s)
            if len(ready) < len(refs):
                raise ActorTimeout(timeout_message("trainer", method, self.timeout_s))
            ray.get(refs[1:])  # a failed rank's error (rank 0's own stays in the ref for whoever reads it)
            return None
        except RayTaskError as exc:  # a collective failing because a peer rank died is the death of a worker
            if _dead_workers(self.trainer):
                raise TrainerDied(f"trainer worker died during {method}") from exc
            raise

    def sync_weights(self) -> float:
        """The trainer's current weights into every rollout engine (by the config's route,
        :mod:`pipeline.weight_sync`); returns the slowest engine's load seconds."""
        if self.broadcast is not None:
            return self.broadcast.sync()
        return self.rollout.update_weights(self.trainer_state())

    def restart_trainer(self) -> None:
        """Replace a dead trainer with a fresh one (``cluster.max_restarts`` times); the caller reloads the last
        checkpoint into it."""
        if self.trainer_factory is None:
            raise RuntimeError("the trainer died and this run has no way to restart it")
        if self.trainer_restarts >= self.max_restarts:
            raise RestartsExhausted(f"the trainer died and the {self.max_restarts} replacement(s) of "
                                    "cluster.max_restarts are used up")
        self.trainer_restarts += 1
        log.warning("the trainer died; starting a new one (%d of %d) to resume from the last checkpoint",
                    self.trainer_restarts, self.max_restarts)
        _kill(self.trainer)
        self.trainer = self.trainer_factory()
        wait(self.trainer.__ray_ready__.remote(), "trainer", "start", self.timeout_s)

    def kill(self) -> None:
        release_rollout(self.rollout)  # a shared rollout pool outlives the stage
        _kill(self.trainer)
        members = as_group(self.rewards, "reward worker").members + ([self.reference] if self.reference else [])
        for member in members:
            _kill(member.handle)


def _dead_workers(trainer) -> list:
    """The trainer's actors (a group's workers, or the one actor) that no longer answer because they died."""
    from .trainer_group import dead_indices

    workers = list(getattr(trainer, "workers", [trainer]))
    return [workers[i] for i in dead_indices(workers)]


def _kill(handle) -> None:
    """Kill an actor or a trainer group."""
    from .trainer_group import kill_actor

    kill_actor(handle)


def trainer_settings(cfg: RecipeConfig, total_optimizer_steps: int | None = None, optim=None):
    """The trainer's settings: the config's own trainer sections, with the stage's ``optim`` block (a
    :class:`pipeline.config.OptimBlock`; none: the run-wide ``trainer.optim``) resolved over ``trainer.optim``."""
    from trainer.settings import LoraSettings, OptimSettings, TrainerKnobs, TrainerSettings

    from .config import OptimBlock, resolve

    t = cfg.trainer
    knobs = resolve(optim or OptimBlock(), t.optim)
    lora = LoraSettings(**t.lora.model_dump(exclude={"enabled"})) if t.lora.enabled else None
    total = total_optimizer_steps if knobs.schedule == "cosine" else None
    return TrainerSettings(**t.model_dump(include=set(TrainerKnobs.model_fields)), lora=lora,
                           optim=OptimSettings(**knobs.model_dump(), total_steps=total), threads=cfg.cluster.threads,
                           seed=cfg.run.seed)


def start_trainer(cfg: RecipeConfig, model_dir: str, settings, cls=None, *args):
    """A trainer actor (``PolicyTrainer`` unless ``cls`` is given, e.g. the reward-model trainer; ``args``
    follow ``model_dir, settings`` in its constructor) with the config's trainer resources; with
    ``cluster.trainer_workers > 1`` a :class:`pipeline.trainer_group.TrainerGroup` used the same way."""
    import ray

    from .placement import actor_options

    if cls is None:
        from trainer.policy import PolicyTrainer as cls
    # Only the policy trainer splits its rows over a group (train_grpo, train_sft); the distillation and
    # reward-model trainers train on one worker, which under FSDP would also get N-fold gradients.
    if cfg.cluster.trainer_workers > 1 and cls.__name__ == "PolicyTrainer":
        from .trainer_group import start_trainer_group

        connect(cfg)
        return start_trainer_group(cfg, model_dir, settings, cls, *args)
    if cfg.cluster.trainer_workers > 1:
        log.warning("%s trains on one worker: cluster.trainer_workers=%d applies to the policy stages",
                    cls.__name__, cfg.cluster.trainer_workers)
    connect(cfg)
    options = actor_options(cfg, "trainer", 0, threads=node_threads(cfg, "trainer", 0), allocator=cfg.cluster.allocator)
    return ray.remote(cls).options(**options).remote(model_dir, settings, *args)


def start_rollout(cfg: RecipeConfig, model_dir: str, *, wait: bool = True):
    """A :class:`~stages.rollout_pool.RolloutPool` of ``cluster.rollout_engines`` ``RolloutWorker`` actors
    (vLLM) on the config's rollout resources holding ``model_dir``: what the eval, sampling and RL stages
    generate with, so they run wherever the cluster has room (GPU nodes on a cluster). Inside
    :func:`shared_rollouts` the running pool is reused when it fits. Give it back with :func:`release_rollout`."""
    if _shared is not None:
        return _shared.get(cfg, model_dir)
    return _new_rollout(cfg, model_dir, wait=wait)


def fault_dir(cfg: RecipeConfig):
    """Where injected faults leave their markers (one firing per run, see :mod:`pipeline.faults`)."""
    return cfg.run_dir() / "faults"


def _new_rollout(cfg: RecipeConfig, model_dir: str, *, wait: bool):
    import ray

    from .actors import RolloutWorker
    from .evaluation import engine_options
    from .placement import actor_options
    from stages.rollout_pool import supervised_pool

    connect(cfg)
    c = cfg.cluster
    cls = ray.remote(with_faults(RolloutWorker, "rollout", configured_faults(c), fault_dir(cfg)))

    def start(index: int, model: str):
        threads = node_threads(cfg, "rollout", index)  # from the engine's own node
        options = actor_options(cfg, "rollout", index, threads=threads, allocator=c.allocator)
        return cls.options(**options).remote(cfg.rollout.engine, model, engine_options(cfg), threads)

    pool = supervised_pool(start, c.rollout_engines, model_dir=model_dir, timeout_s=c.timeout_s,
                           max_restarts=c.max_restarts)
    if wait:
        pool.ready()
    return pool


def release_rollout(pool) -> None:
    """End a stage's use of a rollout pool (or actor): kill it, unless it is the shared one (which lives on)."""
    import ray

    if pool is None or (_shared is not None and pool is _shared.handle):
        return
    if hasattr(pool, "kill"):
        pool.kill()
    else:
        ray.kill(pool)


class SharedRollout:
    """One rollout pool that the stages of a `r1 run` pass on: each stage swaps its model's weights in
    (``load_model``, ~1 s) instead of starting engines (~15 s eager, ~60 s compiled, per stage). A model of
    another architecture (the smaller student) or other engine settings replaces the pool."""

    def __init__(self) -> None:
        self.handle = None  # the pool
        self.key = None

    def get(self, cfg: RecipeConfig, model_dir: str):
        from rollout.architecture import architecture_of

        from .evaluation import engine_options

        key = (cfg.rollout.engine, repr(sorted(engine_options(cfg).items())),
               repr(cfg.cluster.rollout.model_dump()), cfg.cluster.rollout_engines, repr(architecture_of(model_dir)))
        if self.handle is not None and key == self.key:
            seconds = self.handle.load_model(model_dir)
            log.info("shared rollout engines: loaded %s in %.1f s", model_dir, seconds)
            return self.handle
        self.close()
        self.handle, self.key = _new_rollout(cfg, model_dir, wait=True), key
        return self.handle

    def close(self) -> None:
        if self.handle is not None:
            self.handle.kill()
        self.handle = self.key = None


_shared: SharedRollout | None = None


@contextlib.contextmanager
def shared_rollouts(enabled: bool = True):
    """Within this block :func:`start_rollout` hands every stage the same rollout actor where it fits."""
    global _shared
    if not enabled or _shared is not None:
        yield
        return
    _shared = SharedRollout()
    try:
        yield
    finally:
        _shared.close()
        _shared = None


def engine_dtype(cfg: RecipeConfig) -> str:
    """The dtype the engines hold their weights in (what a broadcast sends): ``rollout.dtype``, ``auto``
    meaning the model's own (bf16 for today's checkpoints)."""
    return "bfloat16" if cfg.rollout.dtype == "auto" else cfg.rollout.dtype


def check_sandbox(tasks, rewards) -> None:
    """Code tasks or a code reward need the sandbox: fail now, in one line, if it cannot run here."""
    if any(t.name == "code" for t in tasks) or any(i.name == "code" for i in rewards):
        from sandbox import SandboxConfig, ensure_available

        options = next((i.options for i in rewards if i.name == "code"), {})
        isolation = options.get("isolation", SandboxConfig().isolation)
        ensure_available(SandboxConfig(isolation=isolation))


def rl_trainer_settings(cfg: RecipeConfig, section=None, total_optimizer_steps: int | None = None):
    """:func:`trainer_settings` with an RL section's ``optim`` block (``section``: default ``cfg.rl``)."""
    return trainer_settings(cfg, total_optimizer_steps, (section or cfg.rl).optim)


def build_rl_actors(cfg: RecipeConfig, model_dir: str, *, prefilled_think: bool, section=None, rewards=None,
                    tasks=None, total_optimizer_steps: int | None = None) -> RLActors:
    """Start the rollout, trainer, (reference) and reward actors of an RL stage and wait until they are up.
    ``section``, ``rewards``, ``tasks``: the stage's (default: ``rl``, ``rewards.items``, ``data.tasks``).
    Rollout engines, reward workers and the reference are supervised (replaced when they die); the trainer
    can be remade (``RLActors.restart_trainer``); faults of ``cluster.faults`` are built into the actors."""
    import ray

    section = section or cfg.rl
    rewards = cfg.rewards.items if rewards is None else rewards
    check_sandbox(cfg.data.tasks if tasks is None else tasks, rewards)
    from trainer.policy import Policy, PolicyTrainer

    from .actors import RewardWorker
    from .placement import actor_options, colocated_on_gpus
    from .weight_sync import sync_route

    connect(cfg)
    c = cfg.cluster
    faults, markers = configured_faults(c), fault_dir(cfg)
    settings = rl_trainer_settings(cfg, section, total_optimizer_steps)
    trainer_cls = with_faults(PolicyTrainer, "trainer", faults, markers)
    trainer = start_trainer(cfg, model_dir, settings, trainer_cls)
    rollout = start_rollout(cfg, model_dir, wait=False)  # readiness checked below, with the rest
    items = [item.model_dump() for item in rewards]
    reward_cls = ray.remote(with_faults(RewardWorker, "reward", faults, markers))

    def start_reward(index: int):
        return reward_cls.options(**actor_options(cfg, "reward", index, threads=1)).remote(
            items, prefilled_think, node_threads(cfg, "reward", index), plugins=cfg.rewards.plugins, fail_after=cfg.rewards.fail_after)

    reward_role = Role("reward worker", factory=start_reward, timeout_s=c.timeout_s, max_restarts=c.max_restarts)
    reward_group = Group([Member(reward_role, i, start_reward(i)) for i in range(c.reward_workers)])
    reference, ref_is_trainer = None, False
    if section.kl_coef:
        if settings.lora is not None:
            ref_is_trainer = True
        else:
            ref_settings = trainer_settings(cfg)
            reference_cls = ray.remote(with_faults(Policy, "reference", faults, markers))

            def start_reference(index: int):
                options = actor_options(cfg, "reference", index, threads=node_threads(cfg, "reference", index),
                                        allocator=c.allocator)
                return reference_cls.options(**options).remote(model_dir, ref_settings)

            role = Role("reference", factory=start_reference, timeout_s=c.timeout_s, max_restarts=c.max_restarts)
            reference = Member(role, 0, start_reference(0))
    actors = RLActors(rollout=rollout, trainer=trainer, rewards=reward_group, reference=reference,
                      reference_is_trainer=ref_is_trainer, timeout_s=c.timeout_s, max_restarts=c.max_restarts,
                      trainer_factory=lambda: start_trainer(cfg, model_dir, settings, trainer_cls))
    actors.broadcast = sync_route(cfg, actors, rollout, engine_dtype(cfg))  # None: the object store
    actors.sleep_engines = colocated_on_gpus(cfg)
    # Surface a failing constructor (bad model dir, out of memory) here, as the error it is.
    rollout.ready()
    reward_group.map("ready", [()] * len(reward_group))
    wait(trainer.__ray_ready__.remote(), "trainer", "start", c.timeout_s)
    if reference is not None:
        wait(reference.handle.__ray_ready__.remote(), reference.label, "start", c.timeout_s)
    return actors
