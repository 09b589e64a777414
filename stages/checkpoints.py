"""Atomic stage checkpoints: trainer state (``trainer/checkpoint_io.py``) + the stage's own position, and a
``latest`` pointer.

A checkpoint is written into a temp dir and renamed, then the pointer is replaced: a kill at any moment
leaves either the previous checkpoint or the new one, never half of one. The driver renames only after
every worker of a trainer group has answered (each writes its own shards), so a folder is never committed
with a rank's part missing; a rank that dies during the save is reported as that rank's death at once.
Used by the SFT and RL stages.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

from .rollout_pool import as_pool
from .supervision import DEFAULT_TIMEOUT_S, wait

log = logging.getLogger("r1.checkpoints")


def checkpoint_root(out_dir: Path) -> Path:
    return Path(out_dir) / "checkpoints"


def latest_checkpoint(out_dir: Path) -> tuple[Path, dict] | None:
    """The newest complete checkpoint and its ``state.json``, or None. Incomplete ones are ignored."""
    root = checkpoint_root(out_dir)
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    ckpt = root / pointer.read_text().strip()
    state_file = ckpt / "state.json"
    if not state_file.is_file():
        return None
    return ckpt, json.loads(state_file.read_text())


def resume(trainer, out_dir: Path, logger, what: str, *, rollout=None, sync: Callable[[], Any] | None = None,
           timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[int, dict]:
    """The one resume path of the SFT and RL loops: load the newest checkpoint under ``out_dir`` into the
    trainer actor (and its weights into ``rollout``, a rollout pool or actor, when the loop generates), drop
    the metric lines after its step; returns ``(step, state)``, ``(0, {})`` when there is none (the caller
    decides what a fresh start keeps). ``sync``: how the loop syncs weights into its engines (instead of
    ``rollout``). Each actor call waits at most ``timeout_s``."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    resumed = latest_checkpoint(out_dir)
    if resumed is None:
        return 0, {}
    ckpt, state = resumed
    trainer_call(trainer, "load_checkpoint", str(ckpt), timeout_s=timeout_s)
    # The engines started from the stage's initial model: give them the resumed weights.
    if sync is not None:
        sync()
    elif rollout is not None:
        as_pool(rollout).update_weights(trainer.inference_state_dict.remote())
    dropped = logger.truncate_after(state["step"])
    log.info("resumed %s from %s (step %d; %d later metric lines dropped)", what, ckpt, state["step"], dropped)
    return state["step"], state


def trainer_call(trainer, method: str, *args, timeout_s: float = DEFAULT_TIMEOUT_S):
    """``method(*args)`` on the trainer actor, or on every worker of a trainer group (``wait_call``: all are
    waited for and a dead rank is named), waiting at most ``timeout_s``; returns the (rank 0's) answer."""
    if hasattr(type(trainer), "wait_call"):  # (type: an actor handle makes up any attribute asked of it)
        return trainer.wait_call(method, *args, timeout_s=timeout_s)
    return wait(getattr(trainer, method).remote(*args), "trainer", method, timeout_s)


def save_step(trainer, out_dir: Path, step: int, state: Mapping[str, Any], keep: int, *,
              timeout_s: float = DEFAULT_TIMEOUT_S) -> Path:
    """Save the trainer actor's state plus ``{"step": step, **state}``; keep the newest ``keep`` checkpoints."""
    root = checkpoint_root(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:05d}"
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    # The trainer writes the checkpoint, state.json included; the driver only commits it (rename, pointer).
    trainer_call(trainer, "save_checkpoint", str(tmp), {"step": step, **state}, timeout_s=timeout_s)
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    pointer_tmp = root / ".latest.tmp"
    pointer_tmp.write_text(name)
    pointer_tmp.replace(root / "latest")
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def close_step(trainer, plan, logger, bar, step: int, metrics: Mapping[str, float], shown: str) -> None:
    """The end of one step of a supervised loop (SFT, on-policy distillation): its metrics line, then every
    ``plan.save_every`` steps a checkpoint (the last step's is the final model instead), then the bar.

    The line goes first: a kill between the two leaves a line the resumed run rewrites, never a saved step
    without its line."""
    logger.log(step, metrics)
    if plan.save_every and step % plan.save_every == 0 and step < plan.steps:
        save_step(trainer, plan.out_dir, step, {}, plan.keep_checkpoints)
    bar.update(1)
    bar.set_postfix({shown: f"{metrics[shown]:.3f}"})
