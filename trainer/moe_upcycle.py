"""Sparse upcycling: a dense Llama-style model -> a Mixtral MoE model that transformers and vLLM both load.

Each expert starts as a copy of the dense MLP plus small noise and the router is freshly initialised. With
copies only, every routing would give the same output (top-k weights are renormalised to sum to 1), so a
short SFT afterwards (`pipeline/moe_model.py`) lets the experts diverge before routing can matter.
"""
from __future__ import annotations

from pathlib import Path

# Llama config keys that carry over to Mixtral unchanged (attention and embeddings are the same modules).
_SHARED_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
                "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "rope_parameters",
                "attention_dropout", "initializer_range")


def mixtral_config(dense_config, *, experts: int, top_k: int):
    """A ``MixtralConfig`` with the dense model's attention and width, ``experts`` experts, ``top_k`` active."""
    from transformers import MixtralConfig

    if not 1 <= top_k <= experts:
        raise ValueError(f"moe: top_k={top_k} must be between 1 and experts={experts}")
    if dense_config.model_type != "llama":
        raise ValueError(f"moe: can upcycle a llama model, not model_type={dense_config.model_type!r}")
    if getattr(dense_config, "attention_bias", False) or getattr(dense_config, "mlp_bias", False):
        raise ValueError("moe: Mixtral has no attention / MLP biases; this dense model has them")
    shared = {k: getattr(dense_config, k) for k in _SHARED_KEYS if getattr(dense_config, k, None) is not None}
    return MixtralConfig(**shared, num_local_experts=experts, num_experts_per_tok=top_k, sliding_window=None,
                         router_jitter_noise=0.0, output_router_logits=False)


def upcycle(dense_dir: str, out_dir: str | Path, *, experts: int = 4, top_k: int = 2, noise: float = 0.01,
            router_std: float = 0.02, seed: int = 0) -> str:
    """Write a Mixtral model dir made from the dense model in ``dense_dir``; returns its path.

    ``noise`` is relative: each expert weight is ``w + noise * std(w) * N(0, 1)``, so experts differ a little
    from the start. The router is ``N(0, router_std)``: zero logits would tie every expert.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, MixtralForCausalLM

    from .model_io import save_model_dir

    dense = AutoModelForCausalLM.from_pretrained(dense_dir, dtype=torch.float32)
    config = mixtral_config(AutoConfig.from_pretrained(dense_dir), experts=experts, top_k=top_k)
    moe = MixtralForCausalLM(config).to(torch.float32)
    generator = torch.Generator().manual_seed(seed)

    def jitter(w: torch.Tensor) -> torch.Tensor:
        return w + noise * w.std() * torch.randn(w.shape, generator=generator)

    with torch.no_grad():
        moe.model.embed_tokens.weight.copy_(dense.model.embed_tokens.weight)
        moe.model.norm.weight.copy_(dense.model.norm.weight)
        if not config.tie_word_embeddings:
            moe.lm_head.weight.copy_(dense.lm_head.weight)
        for src, dst in zip(dense.model.layers, moe.model.layers):
            dst.self_attn.load_state_dict(src.self_attn.state_dict())
            dst.input_layernorm.load_state_dict(src.input_layernorm.state_dict())
            dst.post_attention_layernorm.load_state_dict(src.post_attention_layernorm.state_dict())
            gate_up = torch.cat([src.mlp.gate_proj.weight, src.mlp.up_proj.weight], dim=0)
            for e in range(experts):
                dst.mlp.experts.gate_up_proj[e].copy_(jitter(gate_up))
                dst.mlp.experts.down_proj[e].copy_(jitter(src.mlp.down_proj.weight))
            dst.mlp.gate.weight.copy_(router_std * torch.randn(dst.mlp.gate.weight.shape, generator=generator))
    tokenizer = AutoTokenizer.from_pretrained(dense_dir)
    return str(save_model_dir(moe, tokenizer, Path(out_dir),
                              marker=f"upcycled {dense_dir}: experts={experts} top_k={top_k} noise={noise}"))
