"""Datasets a config implies: synthetic task splits plus the user's own sources, written once as JSONL."""
from __future__ import annotations

import re
import zlib
from pathlib import Path

from .config import RecipeConfig


_THOUSANDS = re.compile(r"^-?\d{1,3}(,\d{3})+(\.\d+)?$")


def _task_seed(seed: int, name: str) -> int:
    # Stable per task (not per list position), so adding a task never changes another task's problems.
    return seed * 1_000_003 + zlib.crc32(name.encode())


def build_splits(cfg: RecipeConfig, tasks: list | None = None) -> tuple[list[dict], list[dict]]:
    """(train, test) samples: every synthetic task of ``tasks`` (default ``data.tasks``) plus every
    ``data.sources`` entry."""
    from tasks import make_splits
    from tasks.loaders import load_samples

    train: list[dict] = []
    test: list[dict] = []
    for mix in cfg.data.tasks if tasks is None else tasks:
        tr, te = make_splits(mix.name, mix.n_train, mix.n_test, seed=_task_seed(cfg.run.seed, mix.name),
                             difficulty=mix.difficulty)
        train += tr
        test += te
    for src in cfg.data.sources:
        rows = load_samples(src.path, prompt_field=src.prompt_field, answer_field=src.answer_field, task=src.task,
                            split=src.split, limit=src.limit, subset=src.subset)
        if src.answer_pattern:
            rows = extract_answers(rows, src.answer_pattern, source=src.path)
        (train if src.role == "train" else test).extend(rows)
    return train, test


def general_task_mix(cfg: RecipeConfig) -> list:
    """The entries of ``general_rl.general_tasks`` (the general prompts of stage 5) not already in data.tasks."""
    have = {mix.name for mix in cfg.data.tasks}
    return [mix for mix in cfg.general_rl.general_tasks if mix.name not in have]


def general_splits(cfg: RecipeConfig) -> tuple[list[dict], list[dict]]:
    """(train, test) of :func:`general_task_mix`."""
    from tasks import make_splits

    train: list[dict] = []
    test: list[dict] = []
    for mix in general_task_mix(cfg):
        tr, te = make_splits(mix.name, mix.n_train, mix.n_test, seed=_task_seed(cfg.run.seed, mix.name),
                             difficulty=mix.difficulty)
        train += tr
        test += te
    return train, test


def recipe_test_split(cfg: RecipeConfig, stage: str | None = None) -> list[dict]:
    """The held-out samples a stage of `r1 run` is evaluated on: the reasoning tasks, plus the general tasks
    where ``eval.general_stages`` includes ``stage`` (or is null, or no stage is named)."""
    general = cfg.eval.general_stages
    with_general = general is None or stage is None or stage in general
    return build_splits(cfg)[1] + (general_splits(cfg)[1] if with_general else [])


def extract_answers(rows: list[dict], pattern: str, *, source: str) -> list[dict]:
    """Replace each row's ``answer`` by group 1 of ``pattern`` (e.g. GSM8K's ``#### 72``).

    A row the pattern does not match is an error naming the source and row, never a silent drop.
    """
    regex = re.compile(pattern, re.MULTILINE)
    out = []
    for i, row in enumerate(rows):
        match = regex.search(str(row.get("answer", "")))
        if match is None:
            raise ValueError(f"{source}: answer_pattern {pattern!r} does not match row {i} "
                             f"(answer: {str(row.get('answer'))[:80]!r})")
        answer = match.group(1).strip()
        if _THOUSANDS.match(answer):  # "1,000" -> "1000"; commas elsewhere (tuples, sets) are kept
            answer = answer.replace(",", "")
        out.append({**row, "answer": answer})
    return out


def write_datasets(cfg: RecipeConfig, out_dir: Path) -> dict[str, Path]:
    """Write ``train.jsonl``, ``test.jsonl`` and ``cold_start.jsonl`` (R1-format demos of train) to ``out_dir``:
    the reasoning tasks and the general tasks of stage 5 alike."""
    from tasks import make_demonstration, write_jsonl

    train, test = build_splits(cfg)
    general_train, general_test = general_splits(cfg)
    train, test = train + general_train, test + general_test
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"train": out_dir / "train.jsonl", "test": out_dir / "test.jsonl", "cold_start": out_dir / "cold_start.jsonl"}
    write_jsonl(train, paths["train"])
    write_jsonl(test, paths["test"])
    write_jsonl([make_demonstration(s, system_prompt=cfg.data.system_prompt) for s in train], paths["cold_start"])
    return paths


def eval_samples(cfg: RecipeConfig, data: str | None = None) -> list[dict]:
    """The samples `r1 eval` scores: a given file, else the config's ``eval.split`` split."""
    if data:
        from tasks.loaders import load_samples

        return load_samples(data)
    if cfg.eval.split == "test":
        return recipe_test_split(cfg)  # the split every stage of `r1 run` is evaluated on
    return build_splits(cfg)[0] + general_splits(cfg)[0]
