"""The trainer group's data-parallel engines, torch's own: ``DistributedDataParallel`` for ``replicate`` and
FSDP2 (``fully_shard`` with a ``MixedPrecisionPolicy``) for ``fsdp``.

Both SUM the ranks' gradients rather than average them: each rank's loss already divides by the whole
batch's count (see :mod:`trainer.distributed`), so the sum is the gradient one worker takes on the whole batch.
:class:`trainer.policy.PolicyTrainer` builds these when it joins a group of more than one worker.
"""
from __future__ import annotations

import torch


def sum_gradients_hook(group, bucket):  # (no annotations: DDP checks them, and they are strings here)
    """DDP communication hook: a ``torch.futures.Future`` of the bucket's gradients summed over ``group``
    (the default group when None).

    DDP's built-in reduction (and its ``allreduce_hook``) divides by the world size; with a hook registered
    DDP divides nothing itself, so a plain SUM all-reduce gives the sum.
    """
    import torch.distributed as dist

    work = dist.all_reduce(bucket.buffer(), group=group, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def replicate(model: torch.nn.Module, device: torch.device):
    """``model`` wrapped in ``DistributedDataParallel``, gradients summed (:func:`sum_gradients_hook`).

    The wrapper broadcasts rank 0's parameters and buffers when it is built, so every replica starts equal.
    ``find_unused_parameters``: a parameter no backward reaches on a rank (an MoE expert no token was routed
    to) is marked ready with nothing to add instead of stalling the reduction; one that no rank reached keeps
    ``grad`` None. ``forward_sync_buffers=False``: the buffers (rotary tables) never change after the first
    broadcast, and a forward then runs no collective of its own.
    Forwards that train must go through the wrapper (it arms the reduction); ``no_sync()`` keeps the
    gradients of all but a step's last backward local.
    """
    from torch.nn.parallel import DistributedDataParallel

    ddp = DistributedDataParallel(model, device_ids=[device.index or 0] if device.type == "cuda" else None,
                                  find_unused_parameters=True, forward_sync_buffers=False)
    ddp.register_comm_hook(None, sum_gradients_hook)
    return ddp


def mixed_precision(precision: str):
    """FSDP2's ``MixedPrecisionPolicy`` for the trainer's ``precision``: ``bf16`` all-gathers and computes
    with bf16 parameters (the sharded fp32 master weights stay what AdamW updates) and reduces gradients in
    fp32; ``fp32`` keeps everything fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)


def shard(model: torch.nn.Module, device: torch.device, precision: str, rank: int, world_size: int) -> None:
    """FSDP2 in place: each decoder layer and then the root sharded over the group with
    :func:`mixed_precision`, gradients summed; the weights are rank 0's.

    Ranks other than 0 may hold the model on the meta device (built without reading the weights): their
    shards are allocated here and filled by a broadcast from rank 0
    (``set_model_state_dict(..., broadcast_from_rank0=True)``), so only rank 0 reads the files. Every rank
    calls this at once.
    """
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    # Rank 0's whole weights, taken before sharding replaces its parameters with shards.
    full = model.state_dict() if rank == 0 else {}
    mesh = init_device_mesh(device.type, (world_size,))
    policy = mixed_precision(precision)
    layers = set(getattr(model, "_no_split_modules", None) or [])
    for module in list(model.modules()):
        if type(module).__name__ in layers:
            fully_shard(module, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            # Sum, not average. Plain SUM collectives: gloo has no pre-multiplied sum, which a divide factor
            # would otherwise use.
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    if any(p.is_meta for p in model.parameters()):
        model.to_empty(device=device)  # uninitialised shards (and buffers): filled from rank 0 below
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    # Buffers are not in the state dict (rotary tables are non-persistent), and to_empty emptied them.
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def empty_model(model_dir: str) -> torch.nn.Module:
    """``model_dir``'s causal LM with its parameters on the meta device: no weights read, no memory taken.
    Buffers (rotary tables, computed from the config) stay real. :func:`shard` fills the parameters."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir), dtype=torch.float32)
    # from_pretrained ties the embeddings to the head; from_config under init_empty_weights leaves two
    # parameters, and the shards of rank 0 (one parameter) and this rank would not line up.
    model.tie_weights()
    return model
