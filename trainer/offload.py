"""Colocation on GPUs: the trainer gives its GPU memory to the engines while they generate.

The engines sleep while the trainer trains (``rollout.sleep``) and wake for the next rollout; the trainer
does the converse: after the weight sync it moves its weights, gradients and AdamW moments to host RAM and
empties the CUDA cache (:func:`offload_states`), and moves them back once the engines sleep again
(:func:`reload_states`). At 7B that is ~30 GB of fp32 weights and ~61 GB of AdamW moments (split over the
ranks under FSDP) that would otherwise sit beside vLLM's weights and KV cache (estimate from the shapes). FSDP2 modules move with ``Module.to`` (their shards are what moves),
as verl does. On CPU there is no other memory to give: both are no-ops that return False.
"""
from __future__ import annotations

import torch


def _move_optimizer(optimizer, device) -> None:
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.device != torch.device(device):
                state[key] = value.to(device, non_blocking=True)


def _gpu(trainer) -> bool:
    return torch.device(trainer.device).type == "cuda"


@torch.no_grad()
def offload_states(trainer) -> bool:
    """Weights, gradients and optimizer state to host RAM, the CUDA cache emptied; False on CPU."""
    if not _gpu(trainer) or getattr(trainer, "offloaded", False):
        return False
    trainer.model.to("cpu")
    _move_optimizer(trainer.optimizer, "cpu")
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    trainer.offloaded = True
    return True


@torch.no_grad()
def reload_states(trainer) -> bool:
    """Everything :func:`offload_states` moved, back on the trainer's GPU; False where nothing was moved."""
    if not getattr(trainer, "offloaded", False):
        return False
    trainer.model.to(trainer.device)
    _move_optimizer(trainer.optimizer, trainer.device)
    torch.cuda.synchronize()
    trainer.offloaded = False
    return True
