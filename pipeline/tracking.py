"""Where step metrics go: ``metrics.jsonl`` (always), TensorBoard and wandb (from the config)."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Mapping

log = logging.getLogger("r1.tracking")


class MetricsLogger:
    """Appends one JSON line per step and mirrors numeric values to TensorBoard / wandb.

    On resume, :meth:`truncate_after` drops lines of steps after the checkpoint, so a step that is
    redone is never recorded twice.
    """

    def __init__(self, out_dir: str | Path, *, tensorboard: bool = True, wandb: bool = False,
                 wandb_project: str = "r1-recipe", run_name: str = "run", config: Mapping | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / "metrics.jsonl"
        self.tb = None
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter

                self.tb = SummaryWriter(str(self.out_dir / "tensorboard"))
            except ImportError:
                log.warning("tensorboardX is not installed: TensorBoard logging is off (pip install tensorboardX)")
        self.wandb = None
        if wandb:
            try:
                import wandb as wandb_lib
            except ImportError:
                raise RuntimeError("logging.wandb=true needs the wandb package: pip install wandb") from None
            self.wandb = wandb_lib.init(project=wandb_project, name=run_name, config=dict(config or {}),
                                        dir=str(self.out_dir), resume="allow")

    def log(self, step: int, metrics: Mapping[str, float | int | str]) -> None:
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        numeric = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tb is not None:
            for k, v in numeric.items():
                self.tb.add_scalar(k.replace("@", "_at_").replace(":", "_"), v, step)  # tags may not hold @ or :

            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(numeric, step=step)

    def truncate_after(self, step: int) -> int:
        """Keep only lines with ``step <= step``; returns how many were dropped."""
        if not self.path.exists():
            return 0
        kept, dropped = [], 0
        for line in self.path.read_text().splitlines():
            try:
                row_step = json.loads(line).get("step", -1)
            except json.JSONDecodeError:  # a line cut short by a kill
                dropped += 1
                continue
            if row_step <= step:
                kept.append(line)
            else:
                dropped += 1
        self.path.write_text("".join(line + "\n" for line in kept))
        return dropped

    def rows(self) -> list[dict]:
        """The lines written so far (a loop reads them to see which evals a killed run finished)."""
        return read_metrics(self.path) if self.path.exists() else []

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(path: str | Path) -> list[dict]:
    """All rows of a ``metrics.jsonl`` (skipping a torn last line)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _plain(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "item"):
        return v.item()
    return v
