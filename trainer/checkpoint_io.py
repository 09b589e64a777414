"""Trainer checkpoints with ``torch.distributed.checkpoint`` (DCP): sharded, written by every rank at once,
loadable at another world size or layout.

A checkpoint folder holds:

- ``dcp/``: the trained weights and the optimizer state, as DCP writes them (``.metadata`` plus one
  ``__<rank>_0.distcp`` file per rank). Under FSDP2 each rank writes its own shards; replicated workers hold
  the same tensors and DCP's planner gives each tensor to one of them, so they too write in parallel. On
  load DCP reads the pieces each rank needs for its own layout: a checkpoint of 2 FSDP workers loads into
  1, 3, or replicated workers. Frozen parameters (a LoRA base) are not stored: they are the model dir's.
- ``checkpoint.json``: the format, the step count, the layout that wrote it, the model dir and settings
  the trainer was built from (what :func:`trainer.checkpoint_export.export_checkpoint` needs); ``trainer_meta.pt``: the scheduler and
  torch RNG state; ``state.json``: the loop's position. Rank 0 writes these after DCP has finished, so a
  folder with ``state.json`` is complete (the driver's rename and ``latest`` pointer then commit it).

No HF model dir: a stage exports one at its end (``save_pretrained``) and ``r1 export CKPT OUT`` makes one
from any checkpoint. Checkpoints of the earlier format (``trainer_state.pt`` + ``model/``) still load.
"""
from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import torch

from .checkpoint_legacy import load_legacy, scheduler_state

FORMAT = "dcp"
DCP_DIR = "dcp"
INFO_FILE = "checkpoint.json"
META_FILE = "trainer_meta.pt"
LEGACY_STATE = "trainer_state.pt"  # the earlier format: one pickle + an HF dir in model/


def _in_group() -> bool:
    """Whether this process is in a torch.distributed group (else DCP runs as one process: a lone trainer,
    an export)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


@contextlib.contextmanager
def _alone_quietly():
    """DCP warns on every save and load outside a group that it assumes one process: so it is, on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is (disabled|unavailable)")
        yield


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Sharded (never full_state_dict): each rank contributes what it holds. Frozen parameters are the model
    # dir's own and never change, so they are not stored.
    return StateDictOptions(ignore_frozen_params=True, **kw)


def stateful_module(trainer) -> torch.nn.Module:
    """The module whose parameters are everything the optimizer trains: the model, or (when the trainer
    trains modules beside it, e.g. a feature projection) a ``ModuleDict`` of the model and those modules."""
    trained = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    in_model = {id(p) for p in trainer.model.parameters()}
    if trained <= in_model:
        return trainer.model
    # Modules that hold trained parameters the model does not (a DDP wrapper of the model holds none).
    extras = {name: m for name, m in vars(trainer).items()
              if isinstance(m, torch.nn.Module) and m is not trainer.model
              and any(id(p) in trained and id(p) not in in_model for p in m.parameters())}
    covered = in_model | {id(p) for m in extras.values() for p in m.parameters()}
    if not trained <= covered:
        raise RuntimeError("checkpoint: the optimizer trains parameters of no module of the trainer")
    return torch.nn.ModuleDict({"model": trainer.model, **extras})


def _dcp_state(module: torch.nn.Module, optimizer=None) -> dict:
    """``{"model": ..., "optimizer": ...}`` of :func:`stateful_module`'s ``module`` (and ``optimizer``, None: the
    weights alone) keyed by parameter name, as DCP saves and loads them."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        return {"model": _without_aliases(module, get_model_state_dict(module, options=_options()))}
    model, optim = get_state_dict(module, [optimizer], options=_options())
    return {"model": _without_aliases(module, model), "optimizer": optim}


def _without_aliases(module: torch.nn.Module, state: dict) -> dict:
    """``state`` without the second names of shared parameters (tied embeddings: ``lm_head.weight``). The
    state dict lists a tied tensor under both names, and DCP, which dedups by name, would store it twice
    (and, under LoRA, store the frozen embeddings under the name ``ignore_frozen_params`` does not drop).
    Loading the first name sets the shared parameter. The same rule on every rank, by name, never by data
    pointer (an FSDP rank's empty shard has none)."""
    from torch.distributed.checkpoint.state_dict import _get_fqns  # (private: the FQN rule DSD itself applies)

    first = {name for name, _ in module.named_parameters()}
    for name, _ in module.named_parameters(remove_duplicate=False):
        if name not in first:
            for fqn in _get_fqns(module, name):
                state.pop(fqn, None)
    return state


def save_checkpoint(trainer, out_dir: str | Path, state: dict | None = None) -> str:
    """Write ``trainer``'s weights, optimizer, scheduler, step count and RNG into ``out_dir`` (see the module
    docstring), and ``state`` (the loop's step and data position) as ``state.json``.

    In a group every rank calls this at once (DCP's save is a collective); rank 0 writes the small files
    after every rank's shards are on disk."""
    import torch.distributed.checkpoint as dcp

    out_dir = Path(out_dir)
    (out_dir / DCP_DIR).mkdir(parents=True, exist_ok=True)
    with _alone_quietly():
        dcp.save(_dcp_state(stateful_module(trainer), trainer.optimizer), checkpoint_id=str(out_dir / DCP_DIR), no_dist=not _in_group())
    if trainer.rank != 0:
        return str(out_dir)
    torch.save({"scheduler": scheduler_state(trainer.scheduler.state_dict()), "torch_rng": torch.get_rng_state()},
               out_dir / META_FILE)
    info = {"format": FORMAT, "optimizer_steps": trainer.optimizer_steps, "world_size": trainer.world_size,
            "parallel": trainer.parallel, "lora": trainer.is_lora, "model_dir": trainer.model_dir,
            "settings": trainer.settings.model_dump(mode="json")}
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=1))
    if state is not None:  # last: a folder with state.json is a complete checkpoint
        (out_dir / "state.json").write_text(json.dumps(state))
    return str(out_dir)


def is_legacy(ckpt_dir: str | Path) -> bool:
    """Whether ``ckpt_dir`` is of the earlier format (``trainer_state.pt`` + ``model/``)."""
    ckpt_dir = Path(ckpt_dir)
    return (ckpt_dir / LEGACY_STATE).is_file() and not (ckpt_dir / DCP_DIR).is_dir()


def load_checkpoint(trainer, ckpt_dir: str | Path, *, weights_only: bool = False) -> None:
    """Restore what :func:`save_checkpoint` saved (or a checkpoint of the earlier format) into ``trainer``,
    whatever the group's size and layout now; in a group every rank calls this. ``weights_only``: the model
    alone (an export), not the optimizer, schedule, step count or RNG."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

    ckpt_dir = Path(ckpt_dir)
    if is_legacy(ckpt_dir):
        return load_legacy(trainer, ckpt_dir, weights_only=weights_only)
    if not (ckpt_dir / DCP_DIR / ".metadata").is_file():
        raise FileNotFoundError(f"checkpoint {ckpt_dir}: no {DCP_DIR}/.metadata nor {LEGACY_STATE} "
                                "(not a trainer checkpoint, or an unfinished one)")
    # DCP loads in place into the tensors of a state dict of the trainer as it is now (its shards, its
    # device); a key the checkpoint lacks is an error of DCP's own, naming it.
    module = stateful_module(trainer)
    state = _dcp_state(module, None if weights_only else trainer.optimizer)
    with _alone_quietly():
        dcp.load(state, checkpoint_id=str(ckpt_dir / DCP_DIR), no_dist=not _in_group())
    if weights_only:
        set_model_state_dict(module, state["model"], options=_options(strict=False))
        return
    set_state_dict(module, [trainer.optimizer], model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"], options=_options(strict=False))
    meta = torch.load(ckpt_dir / META_FILE, map_location="cpu", weights_only=True)
    trainer.scheduler.load_state_dict(scheduler_state(meta["scheduler"]))
    trainer.optimizer_steps = int(json.loads((ckpt_dir / INFO_FILE).read_text())["optimizer_steps"])
    torch.set_rng_state(meta["torch_rng"])
