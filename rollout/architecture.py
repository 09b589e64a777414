"""Which model dirs share weight shapes: the test for swapping weights into a running engine."""
from __future__ import annotations

import json
from pathlib import Path

# config.json keys that fix the shapes of the weights: equal keys mean a weight swap fits the engine.
_SHAPE_KEYS = ("model_type", "architectures", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "head_dim", "tie_word_embeddings",
               # MoE: the expert count and top-k (Mixtral / Qwen-MoE / DeepSeek names), the experts' width
               "num_local_experts", "num_experts", "n_routed_experts", "num_experts_per_tok", "moe_intermediate_size")


_EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")  # Mixtral, Qwen-MoE, DeepSeek


def expert_count(config) -> int | None:
    """The routed-expert count of an HF config (object or dict), None for a dense model."""
    get = config.get if isinstance(config, dict) else lambda key: getattr(config, key, None)
    return next((int(get(k)) for k in _EXPERT_COUNT_KEYS if get(k)), None)


def architecture_of(model_dir: str) -> dict:
    """The weight-shape part of a model dir's ``config.json`` ({} when there is none, e.g. a hub id)."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return {}
    config = json.loads(path.read_text())
    return {key: config.get(key) for key in _SHAPE_KEYS}


def check_same_architecture(loaded: dict, model_dir: str) -> None:
    """Raise a one-line ValueError when ``model_dir``'s weights cannot replace the loaded model's."""
    new = architecture_of(model_dir)
    diff = {k: (loaded.get(k), new.get(k)) for k in _SHAPE_KEYS if loaded.get(k) != new.get(k)}
    if not new or diff:
        raise ValueError(f"{model_dir}: not the engine's architecture (loaded vs new: {diff or 'no config.json'}); "
                         "start a new engine for it")


def read_weights(model_dir: str, *, tied: bool) -> dict:
    """All tensors of a model dir's safetensors files; a tied ``lm_head.weight`` is added from the embedding
    (saved dirs leave it out; an engine that keeps a separate head copy needs it)."""
    from safetensors.torch import load_file

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors weights")
    state = {}
    for file in files:
        state.update(load_file(str(file)))
    if tied and "lm_head.weight" not in state and "model.embed_tokens.weight" in state:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return state
