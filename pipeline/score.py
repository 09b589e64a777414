"""`r1 score`: score a JSONL file of completions with the config's rewards, in this process.

Each input row holds ``completion`` plus the sample's fields (``prompt``, ``answer``, ``task``, any
column); each output row is the input row plus ``reward`` (the weighted total) and ``rewards``
(``{label: {value, reason}}``). No Ray and no model (unless a reward is one): rows are scored in chunks
through :meth:`rewards.registry.WeightedSum.score_batch`, per-row rewards on a thread pool (math-verify
checks run in helper processes, so threads overlap them). This is how a user checks a reward against
ours on real outputs.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CHUNK_ROWS = 512  # rows per score_batch call: a TRL-style reward's batch, and the progress bar's step
PROGRESS_FROM_ROWS = 2000  # files this big get a progress bar (on a terminal)
RESULT_FIELDS = ("reward", "rewards")  # what scoring adds; a re-scored file's old values are not sample fields
NO_TASK = "(no task)"


@dataclass
class ScoreResult:
    """What :func:`score_file` did: where the scored rows went, how many, and the summary table."""

    out: Path
    rows: int
    table: str
    labels: list[str]


def default_out_path(completions: Path) -> Path:
    """``FILE.scored.jsonl`` next to ``FILE.jsonl`` (the input is never overwritten)."""
    stem = completions.name[: -len(".jsonl")] if completions.name.endswith(".jsonl") else completions.stem
    return completions.with_name(f"{stem}.scored.jsonl")


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Every row of a JSONL file of completions, checked: a bad row raises ``ValueError`` in one line that
    names the file and line number. Blank lines are skipped."""
    rows = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: not a JSON object ({exc.msg} at column {exc.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object with a 'completion', got a JSON "
                                 f"{type(row).__name__}")
            if "completion" not in row:
                raise ValueError(f"{where}: no 'completion' field (the row's fields: "
                                 f"{', '.join(sorted(row)) or 'none'})")
            if not isinstance(row["completion"], str):
                raise ValueError(f"{where}: 'completion' must be a string, got {type(row['completion']).__name__}")
            rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no rows to score")
    return rows


def sample_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """The sample a row's completion answers: every field but the completion and earlier scores."""
    return {k: v for k, v in row.items() if k != "completion" and k not in RESULT_FIELDS}


def chunk_bounds(n_rows: int, chunk_rows: int, first_chunk: int | None = None) -> list[tuple[int, int]]:
    """``(start, end)`` of each chunk: ``first_chunk`` rows first (when given), then ``chunk_rows`` at a time.

    A first chunk of ``rewards.fail_after`` rows makes a reward that fails on every call stop after exactly
    that many calls: the rows of a chunk are all handed to the thread pool at once, so a broken reward in a
    big first chunk would be called on every row of it before the failure surfaces.
    """
    bounds, start = [], 0
    while start < n_rows:
        size = first_chunk if (start == 0 and first_chunk) else chunk_rows
        bounds.append((start, min(n_rows, start + size)))
        start += size
    return bounds


def score_rows(score, rows: Sequence[Mapping[str, Any]], *, threads: int, chunk_rows: int = CHUNK_ROWS,
               first_chunk: int | None = None, progress: bool | None = None) -> list[tuple[float, dict]]:
    """``(total, {label: Reward})`` per row, in order. ``score`` is a :class:`rewards.registry.WeightedSum`;
    a reward failing on every one of its first calls raises ``rewards.RewardFailure`` (stops here). See
    :func:`chunk_bounds` for ``first_chunk``."""
    from tqdm import tqdm

    show = progress if progress is not None else len(rows) >= PROGRESS_FROM_ROWS
    results: list[tuple[float, dict]] = []
    # disable=None: tqdm draws only on a terminal, so logs and CI output stay clean.
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="score") as pool, \
            tqdm(total=len(rows), unit="row", desc="scoring", disable=None if show else True, leave=False) as bar:
        for start, end in chunk_bounds(len(rows), chunk_rows, first_chunk):
            chunk = rows[start:end]
            results.extend(score.score_batch([r["completion"] for r in chunk], [sample_of(r) for r in chunk],
                                             executor=pool))
            bar.update(len(chunk))
    return results


def scored_row(row: Mapping[str, Any], total: float, parts: Mapping[str, Any]) -> dict[str, Any]:
    """The output row: the input row plus ``reward`` and ``rewards`` ``{label: {value, reason}}``."""
    return {**row, "reward": float(total),
            "rewards": {label: {"value": float(v), "reason": getattr(v, "reason", "ok")} for label, v in parts.items()}}


def write_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write JSONL atomically: a temporary file in the same folder, renamed over ``path`` when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def summary_table(rows: Sequence[Mapping[str, Any]], results: Sequence[tuple[float, Mapping]],
                  labels: Sequence[str]) -> str:
    """Per task: rows and mean total, then per reward its mean (over the rows it applies to) and the count
    of each reason, most frequent first. An ``(all)`` block follows when there is more than one task."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        task = row.get("task")
        groups[task if isinstance(task, str) and task else NO_TASK].append(i)
    blocks = sorted(groups.items())
    if len(blocks) > 1:
        blocks.append(("(all)", list(range(len(rows)))))
    width = max([len("task"), *(len(t) for t, _ in blocks)])
    lwidth = max([len("reward"), *(len(label) for label in labels)])
    lines = [f"{'task':<{width}}  {'reward':<{lwidth}}  {'rows':>6}  {'mean':>7}  reasons"]
    for task, idx in blocks:
        mean_total = sum(results[i][0] for i in idx) / len(idx)
        lines.append(f"{task:<{width}}  {'(total)':<{lwidth}}  {len(idx):>6}  {mean_total:>7.3f}")
        for label in labels:
            parts = [results[i][1][label] for i in idx]
            applies = [float(p) for p in parts if getattr(p, "reason", "ok") != "not_applicable"]
            mean = f"{sum(applies) / len(applies):>7.3f}" if applies else f"{'-':>7}"
            reasons = Counter(getattr(p, "reason", "ok") for p in parts)
            counted = ", ".join(f"{r} {n}" for r, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
            lines.append(f"{'':<{width}}  {label:<{lwidth}}  {len(applies):>6}  {mean}  {counted}")
    return "\n".join(lines)


def resolve_prefilled_think(cfg) -> bool:
    """``rewards.prefilled_think`` as a bool. ``auto`` asks the model's chat template only when its
    tokenizer is already on disk (a local dir or the Hugging Face cache; no download, no model load);
    otherwise it is false, and the log says so."""
    setting = cfg.rewards.prefilled_think
    if setting != "auto":
        return bool(setting)
    name = cfg.model.name
    local = Path(name).expanduser()
    on_disk = (local / "tokenizer_config.json").is_file()
    if not on_disk and "/" in name and not local.exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            on_disk = isinstance(try_to_load_from_cache(name, "tokenizer_config.json"), str)
        except Exception:  # an odd name or no hub library: nothing on disk to ask
            on_disk = False
    if not on_disk:  # said where it may matter: a path or hub id (the built-in aliases' templates do not prefill)
        log.log(logging.INFO if "/" in name else logging.DEBUG, "rewards.prefilled_think=auto read as false (no "
                "tokenizer of %r on disk to ask); set it to true if the chat template opens <think>", name)
        return False
    try:
        from transformers import AutoTokenizer

        from tasks.prompting import template_prefills_think

        tokenizer = AutoTokenizer.from_pretrained(str(local) if local.is_dir() else name, local_files_only=True)
        prefilled = template_prefills_think(tokenizer, cfg.data.system_prompt, cfg.data.template)
    except Exception as exc:  # a template that does not render: the safe reading, said once
        log.warning("rewards.prefilled_think=auto read as false: cannot render %r's chat template (%s: %s)",
                    name, type(exc).__name__, exc)
        return False
    log.info("rewards.prefilled_think=auto: %s's chat template %s <think>", name,
             "opens" if prefilled else "does not open")
    return prefilled


def score_file(cfg, completions: str | Path, out: str | Path | None = None, *, threads: int | None = None,
               progress: bool | None = None) -> ScoreResult:
    """Score every row of ``completions`` with ``cfg.rewards`` and write the scored rows to ``out``
    (default :func:`default_out_path`). The whole file is read and checked before any scoring, and the
    output appears only when every row is scored, so a bad row or a failing reward leaves nothing half-done."""
    from rewards import weighted_sum

    src = Path(completions)
    if not src.is_file():
        raise FileNotFoundError(f"--completions {src}: no such file")
    dst = Path(out) if out else default_out_path(src)
    if dst.resolve() == src.resolve():
        raise ValueError(f"--out {dst} is the input file; scoring never overwrites its input")
    rows = read_rows(src)
    score = weighted_sum([item.model_dump() for item in cfg.rewards.items],
                         prefilled_think=resolve_prefilled_think(cfg), fail_after=cfg.rewards.fail_after)
    threads = threads or default_threads()
    results = score_rows(score, rows, threads=threads, first_chunk=cfg.rewards.fail_after, progress=progress)
    write_rows(dst, [scored_row(row, total, parts) for row, (total, parts) in zip(rows, results)])
    labels = [term.label for term in score.terms]
    return ScoreResult(out=dst, rows=len(rows), table=summary_table(rows, results, labels), labels=labels)


def default_threads() -> int:
    """Scoring threads: two per core (at least 4), so one thread's wait on a math-verify helper or a
    sandbox overlaps another's Python work."""
    return max(4, 2 * (os.cpu_count() or 1))
