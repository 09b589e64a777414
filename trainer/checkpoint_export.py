"""A trainer checkpoint as an HF model dir (what vLLM, transformers and users load): ``r1 export CKPT OUT``.

Checkpoints hold sharded DCP state (:mod:`trainer.checkpoint_io`), not a model dir; this rebuilds the trainer
the checkpoint names, loads its weights and writes them as a stage's ``model/`` is written.
"""
from __future__ import annotations

import json
from pathlib import Path

from .checkpoint_io import INFO_FILE, is_legacy, load_checkpoint


def checkpoint_info(ckpt_dir: str | Path) -> dict:
    """``checkpoint.json`` of a checkpoint (one line naming the file when it is missing or unreadable)."""
    path = Path(ckpt_dir) / INFO_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable trainer checkpoint ({type(exc).__name__})") from None


def export_checkpoint(ckpt_dir: str | Path, out_dir: str | Path, model_dir: str | None = None) -> str:
    """An HF model dir (what vLLM and transformers load) at ``out_dir`` from the checkpoint ``ckpt_dir``.

    The trainer is rebuilt from the model dir and settings the checkpoint names (``model_dir`` overrides the
    dir: the architecture and tokenizer, and for LoRA the base weights), its trained weights loaded, and
    written as :meth:`~trainer.policy.PolicyTrainer.save_pretrained` writes a stage's model. One process,
    no group: DCP reads every shard of any world size."""
    import shutil

    from .policy import PolicyTrainer
    from .settings import TrainerSettings

    ckpt_dir = Path(ckpt_dir)
    if is_legacy(ckpt_dir):  # the earlier format carries its HF dir
        shutil.copytree(ckpt_dir / "model", out_dir, dirs_exist_ok=True)
        return str(out_dir)
    info = checkpoint_info(ckpt_dir)
    base = model_dir or info["model_dir"]
    if Path(base).is_absolute() and not Path(base).exists():  # (a hub id is fetched as the stage fetched it)
        raise FileNotFoundError(f"checkpoint {ckpt_dir}: its model dir {base} is gone (pass the model the "
                                "stage started from: r1 export CKPT OUT --model DIR)")
    settings = TrainerSettings(**info["settings"])
    trainer = PolicyTrainer(base, settings)
    load_checkpoint(trainer, ckpt_dir, weights_only=True)
    return trainer.save_pretrained(out_dir)
