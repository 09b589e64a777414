"""The trainer's weights, as inference engines want them: HF checkpoint names, LoRA merged, one tensor at a time.

Two forms of the same weights:

- :func:`inference_tensors`: the whole dict at once (the object-store route on CPU, ``save_pretrained``);
- :func:`iter_inference_tensors`: a generator that makes one parameter whole at a time (under FSDP2 each
  DTensor is cast on its shard and gathered with ``full_tensor()`` on the trainer's device), so a sync to
  the engines never holds more than one gathered parameter (plus the bucket being sent). This is what the
  GPU routes send (NCCL broadcast, CUDA IPC): the old way gathered the whole fp32 state dict into rank 0's
  host RAM every step (``get_model_state_dict(full_state_dict=True, cpu_offload=True)``), ~30 GB at 7B.

Both give the same names and values (tests/test_weight_export.py): tied ``lm_head`` under its own name, LoRA
deltas merged into their base weights, MoE experts under their per-expert checkpoint names
(``revert_weight_conversion``, applied one module's parameters at a time).
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch


def _base_model(trainer):
    return trainer.model.get_base_model() if trainer.is_lora else trainer.model


def lora_delta(module) -> torch.Tensor | None:
    """The weight delta ``module``'s active LoRA adapters add (B @ A * scale), or None (not a LoRA layer)."""
    from peft.tuners.lora import LoraLayer

    if not isinstance(module, LoraLayer):
        return None
    delta = None
    for adapter in module.active_adapters:
        if adapter in module.lora_A:
            d = module.get_delta_weight(adapter)
            delta = d if delta is None else delta + d
    return delta


def _module_runs(state) -> Iterator[list[tuple[str, object]]]:
    """``state``'s items in runs of consecutive entries of one module (what one weight conversion needs at
    most: an MoE experts module's fused ``gate_up_proj`` and ``down_proj`` together)."""
    run: list[tuple[str, object]] = []
    for name, tensor in state.items():
        if run and run[0][0].rsplit(".", 1)[0] != name.rsplit(".", 1)[0]:
            yield run
            run = []
        run.append((name, tensor))
    if run:
        yield run


@torch.no_grad()
def iter_inference_tensors(trainer, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """``(checkpoint name, whole tensor)`` of the trainer's inference weights, one parameter made whole at a
    time, on the trainer's device, in ``dtype`` (None: the model's own).

    Under FSDP every rank must run the generator to the end in step (each sharded tensor is a collective
    ``full_tensor()``); every rank gets every tensor (the IPC route hands each rank's copy to the engine
    worker on its GPU; the broadcast route sends rank 0's). A shard is cast before it is gathered, so a bf16
    sync gathers bf16, never fp32.
    """
    from transformers.core_model_loading import revert_weight_conversion

    model = _base_model(trainer)
    modules = dict(model.named_modules()) if trainer.is_lora else {}
    state = model.state_dict()  # views of the parameters (DTensor shards under FSDP2): no copy
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    clean_names = {name.replace(".base_layer.", ".") for name in state if "lora_" not in name}
    embed_name = None
    if tied and "lm_head.weight" not in clean_names:
        embed = model.get_input_embeddings().weight
        embed_name = next(n for n, p in model.named_parameters() if p is embed)
    for run in _module_runs(state):
        whole = {}
        for name, tensor in run:
            if "lora_" in name:
                continue
            clean = name.replace(".base_layer.", ".")
            tensor = tensor.detach()
            if dtype is not None and not modules:
                tensor = tensor.to(dtype)  # cast the shard, then gather: half the bytes of an fp32 gather
            if hasattr(tensor, "full_tensor"):
                tensor = tensor.full_tensor()
            module = modules.get(clean.rsplit(".", 1)[0])
            delta = lora_delta(module) if module is not None and clean.endswith(".weight") else None
            if delta is not None:
                tensor = tensor + delta
            if dtype is not None:
                tensor = tensor.to(dtype)
            whole[clean] = tensor
        for name, tensor in revert_weight_conversion(model, whole).items():
            yield name, tensor
            if name == embed_name:  # tied: vLLM and safetensors each want the head under its own name
                yield "lm_head.weight", tensor


def rank0_weights(trainer, convert: Callable[[torch.Tensor], object] = lambda t: t) -> dict[str, object]:
    """:func:`iter_inference_tensors` as one dict of ``convert(tensor)``, each converted as soon as it is whole
    (e.g. moved to host RAM). Every rank takes part in the gathers; rank 0 keeps the weights, the others get
    ``{}``."""
    return {name: convert(tensor) for name, tensor in iter_inference_tensors(trainer) if trainer.rank == 0}


def inference_tensors(trainer) -> dict[str, torch.Tensor]:
    """:func:`iter_inference_tensors` as one dict in the model's precision (``{}`` on FSDP ranks other than 0,
    which take part in the gathers)."""
    return rank0_weights(trainer)


def weight_specs(trainer) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of the weights a sync sends, in the order it sends them (the generator's). A
    collective under FSDP; asked once per group formation, not per step."""
    return [(name, tuple(t.shape)) for name, t in iter_inference_tensors(trainer)]


def save_pretrained(trainer, out_dir) -> str:
    """An HF model dir (merged fp32 weights + tokenizer + config) that vLLM and transformers load directly.
    Every rank of an FSDP group calls it (the gathers); only rank 0 keeps the tensors, each moved to host RAM
    as soon as it is whole, and writes."""
    from pathlib import Path

    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    # An own copy each: safetensors refuses shared storage.
    state = rank0_weights(trainer, lambda t: t.to("cpu", torch.float32, copy=True).contiguous())
    if trainer.rank != 0:
        return str(out_dir)
    base = _base_model(trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    base.config.save_pretrained(out_dir)
    if getattr(base, "generation_config", None) is not None:
        base.generation_config.save_pretrained(out_dir)
    if getattr(base.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # tied: transformers re-ties it on load
    save_file(state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    trainer.tokenizer.save_pretrained(out_dir)
    return str(out_dir)
