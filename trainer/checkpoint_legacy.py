"""Loading trainer checkpoints of the earlier format: ``trainer_state.pt`` (the whole optimizer state,
numbered, plus scheduler, step count, RNG and LoRA parameters) next to an HF model dir ``model/``.

Runs started before the DCP format (:mod:`trainer.checkpoint_io`) resume from these; nothing writes them
any more. The state is whole, so it loads at any world size: under FSDP2 every rank reads all of it and
keeps its own shards (``set_state_dict`` with ``full_state_dict``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch


def scheduler_state(state: dict) -> dict:
    """A LambdaLR state dict without its ``lr_lambdas`` entry. The schedule is a method of the trainer (no
    state of its own), but LambdaLR stores a method's ``__dict__``: in a Ray actor that holds Ray's tracing
    wrappers, and loading them onto the driver's class makes its next ``ray.remote`` fail (a wrapper loop)."""
    return {**state, "lr_lambdas": [None] * len(state.get("lr_lambdas", []))}


def optimizer_state_by_name(state: dict, names: Sequence[str]) -> dict:
    """A ``torch.optim`` state dict (parameters numbered in ``param_groups`` order) keyed by parameter
    name instead: the form ``torch.distributed.checkpoint.state_dict.set_optimizer_state_dict`` takes.
    ``names``: the optimizer's parameters' names, in the order it numbers them."""
    return {"state": {names[i]: v for i, v in state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}


def _trainable_names(trainer) -> list[str]:
    """Names of the optimizer's model parameters, in the order it numbers them."""
    return [n for n, p in trainer.model.named_parameters() if p.requires_grad]


def _check(ckpt_dir: Path, missing, unexpected) -> None:
    missing = [m for m in missing if not m.endswith("lm_head.weight")]  # tied to the embeddings
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {ckpt_dir}: missing {missing[:3]}, unexpected {unexpected[:3]}")


def _weights(trainer, ckpt_dir: Path) -> dict[str, torch.Tensor]:
    """The model dir's weights under the model's own parameter names."""
    from safetensors.torch import load_file

    if trainer.replay is not None:  # checkpoint names (per-expert) -> the model's fused parameters
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(ckpt_dir / "model", dtype=torch.float32).state_dict()
    return load_file(str(ckpt_dir / "model" / "model.safetensors"))


def load_legacy(trainer, ckpt_dir: Path, *, weights_only: bool = False) -> None:
    """Restore a checkpoint of the earlier format into ``trainer`` (any group size; every rank calls this)."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    state = torch.load(ckpt_dir / "trainer_state.pt", map_location="cpu", weights_only=False)
    sharded = trainer.parallel == "fsdp"  # FSDP2 over one worker too: its parameters are DTensors
    options = StateDictOptions(full_state_dict=True, strict=False)
    if trainer.is_lora:
        params = dict(trainer.model.named_parameters())
        for name, value in state["lora_params"].items():
            params[name].data.copy_(value)
    else:
        # set_model_state_dict takes whole tensors for any layout (plain, DDP, FSDP2 shards) by name.
        _check(ckpt_dir, *set_model_state_dict(trainer.model, _weights(trainer, ckpt_dir), options=options))
    if weights_only:
        return
    if sharded:
        set_optimizer_state_dict(trainer.model, trainer.optimizer,
                                 optimizer_state_by_name(state["optimizer"], _trainable_names(trainer)),
                                 options=options)
    else:  # numbered, as torch.optim stores it (a trainer's extra parameter groups included)
        trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(scheduler_state(state["scheduler"]))
    trainer.optimizer_steps = int(state["optimizer_steps"])
    torch.set_rng_state(state["torch_rng"])
