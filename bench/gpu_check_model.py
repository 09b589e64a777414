"""The model bench/gpu_check.py trains: a small Qwen2 built from a config (no download), or without
transformers a plain torch decoder of the same shape."""
from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn as nn

# Model shapes: `qwen0.5b` is Qwen2.5-0.5B's (untied head here; a real size for timings on one GPU), `tiny`
# for the CPU test.
PRESETS = {
    "qwen0.5b": {"hidden": 896, "layers": 24, "heads": 14, "kv_heads": 2, "intermediate": 4864, "vocab": 151936},
    "small": {"hidden": 512, "layers": 8, "heads": 8, "kv_heads": 2, "intermediate": 1536, "vocab": 32000},
    "tiny": {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 128, "vocab": 256},
}


class Block(nn.Module):
    """A pre-norm decoder layer (attention with grouped KV heads, SwiGLU MLP): the transformers-free model."""

    def __init__(self, s: dict) -> None:
        super().__init__()
        h, self.heads, self.kv = s["hidden"], s["heads"], s["kv_heads"]
        self.head_dim = h // self.heads
        self.norm1, self.norm2 = nn.RMSNorm(h), nn.RMSNorm(h)
        self.q = nn.Linear(h, h)
        self.kv_proj = nn.Linear(h, 2 * self.kv * self.head_dim)
        self.o = nn.Linear(h, h, bias=False)
        self.gate_up = nn.Linear(h, 2 * s["intermediate"], bias=False)
        self.down = nn.Linear(s["intermediate"], h, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, h = x.shape
        y = self.norm1(x)
        q = self.q(y).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv_proj(y).view(b, t, 2, self.kv, self.head_dim).permute(2, 0, 3, 1, 4)
        attn = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + self.o(attn.transpose(1, 2).reshape(b, t, h))
        gate, up = self.gate_up(self.norm2(x)).chunk(2, dim=-1)
        return x + self.down(nn.functional.silu(gate) * up)


class PlainLM(nn.Module):
    """Embedding, decoder blocks, norm, head: the shape of a Qwen2 without transformers."""

    _no_split_modules = ["Block"]  # what trainer.data_parallel.shard wraps one by one (as HF models name theirs)

    def __init__(self, s: dict) -> None:
        super().__init__()
        self.embed = nn.Embedding(s["vocab"], s["hidden"])
        self.layers = nn.ModuleList(Block(s) for _ in range(s["layers"]))
        self.norm = nn.RMSNorm(s["hidden"])
        self.head = nn.Linear(s["hidden"], s["vocab"], bias=False)

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x)
        return SimpleNamespace(logits=self.head(self.norm(x)))


def build_model(args) -> tuple[nn.Module, str]:
    """The check's model in fp32 (the trainer's master weights) and which kind it is."""
    s = PRESETS[args.preset]
    if args.model in ("auto", "transformers"):
        try:
            from transformers import Qwen2Config, Qwen2ForCausalLM
        except ImportError:
            if args.model == "transformers":
                raise
        else:
            config = Qwen2Config(hidden_size=s["hidden"], num_hidden_layers=s["layers"],
                                 num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
                                 intermediate_size=s["intermediate"], vocab_size=s["vocab"],
                                 max_position_embeddings=max(4096, args.seq), tie_word_embeddings=False)
            return Qwen2ForCausalLM(config).float(), "transformers-qwen2"
    return PlainLM(s).float(), "plain-torch"
