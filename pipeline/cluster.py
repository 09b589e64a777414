"""Ray: join or start a cluster, and build the actor handles a stage talks to.

The same code runs on a laptop (a local Ray started here) and on a cluster (``RAY_ADDRESS``, ``ray job
submit``, or ``cluster.address``). Stages get a :class:`RLActors` of handles and never build actors.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from .config import RecipeConfig

log = logging.getLogger("r1.cluster")


def connect(cfg: RecipeConfig) -> dict[str, Any]:
    """Join ``cluster.address`` / ``$RAY_ADDRESS`` if given, else start a local Ray. Idempotent."""
    import ray

    if ray.is_initialized():
        return ray.cluster_resources()
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    # Actors import this repo's packages; a local cluster's workers inherit the driver's sys.path via
    # PYTHONPATH (a submitted job gets them from its working_dir instead).
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    if address:
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
    total = c.rollout.num_cpus + c.trainer.num_cpus + c.reward.num_cpus * c.reward_workers
    if (cfg.rl.kl_coef or cfg.general_rl.kl_coef) and not cfg.trainer.lora.enabled:
        total += c.reference.num_cpus
    return int(total + 0.999)


def default_threads(cfg: RecipeConfig) -> int:
    return cfg.cluster.threads or os.cpu_count() or 1


@dataclass
class RLActors:
    """Handles of one RL run. ``reference`` is None when no KL term is used or LoRA provides it."""

    rollout: Any
    trainer: Any
    rewards: list = field(default_factory=list)
    reference: Any = None
    reference_is_trainer: bool = False  # LoRA: the trainer scores with its adapters disabled

    @property
    def engine(self):
        """The rollout actor as an engine (``generate``), for the held-out evals of the loop."""
        from .actors import RemoteEngine

        return RemoteEngine(self.rollout)

    def kill(self) -> None:
        import ray

        release_rollout(self.rollout)  # a shared rollout actor outlives the stage
        for handle in [self.trainer, self.reference, *self.rewards]:
            if handle is not None:
                ray.kill(handle)


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
                           optim=OptimSettings(**knobs.model_dump(), total_steps=total), threads=default_threads(cfg),
                           seed=cfg.run.seed)


def _options(spec, threads: int | None, allocator: str = "system") -> dict:
    from .actors import worker_env

    return {"num_cpus": spec.num_cpus, "num_gpus": spec.num_gpus,
            "runtime_env": {"env_vars": worker_env(threads, allocator)}}


def start_trainer(cfg: RecipeConfig, model_dir: str, settings, cls=None, *args):
    """A trainer actor (``PolicyTrainer`` unless ``cls`` is given, e.g. the reward-model trainer; ``args``
    follow ``model_dir, settings`` in its constructor) with the config's trainer resources."""
    import ray

    if cls is None:
        from trainer.policy import PolicyTrainer as cls

    connect(cfg)
    options = _options(cfg.cluster.trainer, default_threads(cfg), cfg.cluster.allocator)
    return ray.remote(cls).options(**options).remote(model_dir, settings, *args)


def start_rollout(cfg: RecipeConfig, model_dir: str, *, wait: bool = True):
    """A ``RolloutWorker`` actor (vLLM) on the config's rollout resources holding ``model_dir``: what the
    eval, sampling and RL stages generate with, so they run wherever the cluster has room (a GPU node on a
    cluster). Inside :func:`shared_rollouts` the running actor is reused when it fits. Give it back with
    :func:`release_rollout`."""
    if _shared is not None:
        return _shared.get(cfg, model_dir)
    return _new_rollout(cfg, model_dir, wait=wait)


def _new_rollout(cfg: RecipeConfig, model_dir: str, *, wait: bool):
    import ray

    from .actors import RolloutWorker
    from .evaluation import engine_options

    connect(cfg)
    threads = default_threads(cfg)
    options = _options(cfg.cluster.rollout, threads, cfg.cluster.allocator)
    handle = ray.remote(RolloutWorker).options(**options).remote(cfg.rollout.engine, model_dir, engine_options(cfg),
                                                                 threads)
    if wait:
        ray.get(handle.ready.remote())
    return handle


def release_rollout(handle) -> None:
    """End a stage's use of a rollout actor: kill it, unless it is the shared one (which lives on)."""
    import ray

    if handle is not None and (_shared is None or handle is not _shared.handle):
        ray.kill(handle)


class SharedRollout:
    """One rollout actor that the stages of a `r1 run` pass on: each stage swaps its model's weights in
    (``load_model``, ~1 s) instead of starting an engine (~15 s eager, ~60 s compiled, per stage). A model
    of another architecture (the smaller student) or other engine settings replaces the actor."""

    def __init__(self) -> None:
        self.handle = None
        self.key = None

    def get(self, cfg: RecipeConfig, model_dir: str):
        import ray

        from rollout.architecture import architecture_of

        from .evaluation import engine_options

        key = (cfg.rollout.engine, repr(sorted(engine_options(cfg).items())),
               repr(cfg.cluster.rollout.model_dump()), repr(architecture_of(model_dir)))
        if self.handle is not None and key == self.key:
            seconds = ray.get(self.handle.load_model.remote(model_dir))
            log.info("shared rollout actor: loaded %s in %.1f s", model_dir, seconds)
            return self.handle
        self.close()
        self.handle, self.key = _new_rollout(cfg, model_dir, wait=True), key
        return self.handle

    def close(self) -> None:
        import ray

        if self.handle is not None:
            ray.kill(self.handle)
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
    ``section``, ``rewards``, ``tasks``: the stage's (default: ``rl``, ``rewards.items``, ``data.tasks``)."""
    import ray

    section = section or cfg.rl
    rewards = cfg.rewards.items if rewards is None else rewards
    check_sandbox(cfg.data.tasks if tasks is None else tasks, rewards)
    from .actors import RewardWorker
    from trainer.policy import Policy

    connect(cfg)
    c, threads = cfg.cluster, default_threads(cfg)
    settings = rl_trainer_settings(cfg, section, total_optimizer_steps)
    trainer = start_trainer(cfg, model_dir, settings)
    rollout = start_rollout(cfg, model_dir, wait=False)  # readiness checked below, with the rest
    items = [item.model_dump() for item in rewards]
    rewards = [ray.remote(RewardWorker).options(**_options(c.reward, 1)).remote(items, prefilled_think, threads)
               for _ in range(c.reward_workers)]
    reference, ref_is_trainer = None, False
    if section.kl_coef:
        if settings.lora is not None:
            ref_is_trainer = True
        else:
            ref_settings = trainer_settings(cfg)
            reference = ray.remote(Policy).options(**_options(c.reference, threads, c.allocator)).remote(
                model_dir, ref_settings)
    actors = RLActors(rollout=rollout, trainer=trainer, rewards=rewards, reference=reference,
                      reference_is_trainer=ref_is_trainer)
    # Surface a failing constructor (bad model dir, out of memory) here, as the error it is.
    ray.get([rollout.ready.remote(), *[r.ready.remote() for r in rewards]])
    ray.get(trainer.__ray_ready__.remote())
    if reference is not None:
        ray.get(reference.__ray_ready__.remote())
    return actors
