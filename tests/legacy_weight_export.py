"""The trainer's weight export as it was before issue 24 (c42c5e0's ``PolicyTrainer.inference_tensors`` and
``_full_model_state``), kept as the reference the parameter-by-parameter export must equal
(tests/test_weight_export.py) and as the "before" of bench/weight_sync_memory.py."""
import torch


def legacy_full_model_state(trainer, model):
    """The whole state dict: under FSDP gathered into rank 0's host RAM in fp32 (the finding)."""
    if not trainer._sharded:
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if trainer.rank == 0 else None


@torch.no_grad()
def legacy_inference_tensors(trainer) -> dict:
    from peft.tuners.lora import LoraLayer
    from transformers.core_model_loading import revert_weight_conversion

    model = trainer.model.get_base_model() if trainer.is_lora else trainer.model
    deltas = {}
    if trainer.is_lora:
        for name, module in model.named_modules():
            if isinstance(module, LoraLayer):
                delta = None
                for adapter in module.active_adapters:
                    if adapter in module.lora_A:
                        d = module.get_delta_weight(adapter)
                        delta = d if delta is None else delta + d
                if delta is not None:
                    deltas[name] = delta
    state = legacy_full_model_state(trainer, model)
    if state is None:
        return {}
    tensors = {}
    for name, tensor in state.items():
        if "lora_" in name:
            continue
        clean = name.replace(".base_layer.", ".")
        module = clean.rsplit(".", 1)[0]
        if clean.endswith(".weight") and module in deltas:
            tensor = tensor + deltas[module]
        tensors[clean] = tensor
    tensors = dict(revert_weight_conversion(model, tensors))
    if getattr(model.config, "tie_word_embeddings", False) and "lm_head.weight" not in tensors:
        embed = model.get_input_embeddings().weight
        if trainer._sharded:
            name = next(n for n, p in model.named_parameters() if p is embed)
            tensors["lm_head.weight"] = tensors[name]
        else:
            tensors["lm_head.weight"] = embed.detach()
    return tensors
