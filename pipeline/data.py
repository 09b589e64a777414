"""Datasets a config implies: synthetic task splits plus the user's own sources, written once as JSONL.

Every stage reads a user's data through one source shape (:class:`pipeline.config.SourceSpec`): the
``data.sources`` entries (RL prompts and held-out rows), ``cold_start.data`` and `r1 eval --data`.
"""
from __future__ import annotations

import logging
import zlib
from pathlib import Path

from .config import RecipeConfig, SourceSpec

log = logging.getLogger("r1.data")


def _task_seed(seed: int, name: str) -> int:
    # Stable per task (not per list position), so adding a task never changes another task's problems.
    return seed * 1_000_003 + zlib.crc32(name.encode())


def build_splits(cfg: RecipeConfig, tasks: list | None = None) -> tuple[list[dict], list[dict]]:
    """(train, test) samples: every synthetic task of ``tasks`` (default ``data.tasks``) plus every
    ``data.sources`` entry."""
    train, test = _synthetic_splits(cfg, cfg.data.tasks if tasks is None else tasks)
    for src in cfg.data.sources:
        (train if src.role == "train" else test).extend(source_samples(src))
    return train, test


def source_samples(src: SourceSpec) -> list[dict]:
    """The samples (reward rows) of one source: its prompt and gold answer mapped onto the schema, the columns
    ``src.columns`` keeps, never its ``messages_field``."""
    from tasks.loaders import load_samples

    return load_samples(src.path, **_mapping(src), columns=src.columns, messages_field=src.messages_field)


def source_demonstrations(src: SourceSpec, system_prompt: str | None) -> list[dict]:
    """The cold-start chat examples of one source: its ``messages_field`` rows, else R1-format demonstrations
    of its rows with a ``solution`` (:func:`tasks.loaders.load_demonstrations`); possibly none."""
    from tasks.loaders import load_demonstrations

    return load_demonstrations(src.path, **_mapping(src), messages_field=src.messages_field,
                               system_prompt=system_prompt)


def _mapping(src: SourceSpec) -> dict:
    return {"prompt_field": src.prompt_field, "answer_field": src.answer_field, "answer_pattern": src.answer_pattern,
            "task": src.task, "split": src.split, "limit": src.limit, "subset": src.subset}


def _synthetic_splits(cfg: RecipeConfig, mixes: list) -> tuple[list[dict], list[dict]]:
    from tasks import make_splits

    train: list[dict] = []
    test: list[dict] = []
    for mix in mixes:
        tr, te = make_splits(mix.name, mix.n_train, mix.n_test, seed=_task_seed(cfg.run.seed, mix.name),
                             difficulty=mix.difficulty, source=mix.source, config=mix.config, scorer=mix.scorer)
        train += tr
        test += te
    return train, test


def general_task_mix(cfg: RecipeConfig) -> list:
    """The entries of ``general_rl.general_tasks`` (the general prompts of stage 5) not already in data.tasks."""
    have = {mix.name for mix in cfg.data.tasks}
    return [mix for mix in cfg.general_rl.general_tasks if mix.name not in have]


def general_splits(cfg: RecipeConfig) -> tuple[list[dict], list[dict]]:
    """(train, test) of :func:`general_task_mix`."""
    return _synthetic_splits(cfg, general_task_mix(cfg))


def recipe_test_split(cfg: RecipeConfig, stage: str | None = None) -> list[dict]:
    """The held-out samples a stage of `r1 run` is evaluated on: the reasoning tasks, plus the general tasks
    where ``eval.general_stages`` includes ``stage`` (or is null, or no stage is named)."""
    general = cfg.eval.general_stages
    with_general = general is None or stage is None or stage in general
    return build_splits(cfg)[1] + (general_splits(cfg)[1] if with_general else [])


def cold_start_examples(cfg: RecipeConfig) -> list[dict]:
    """The chat examples the cold start trains on: ``cold_start.data`` where set, else the R1-format
    demonstrations of the ``data.tasks`` train split plus the demonstrations of every train source of
    ``data.sources`` (its ``messages_field``, else its rows with a ``solution``). None at all is an error in
    one line that names each source and the fields looked for."""
    from tasks import make_demonstration

    system_prompt = cfg.data.system_prompt
    data = cfg.cold_start.data
    if data is not None:
        src = cold_start_source(data)
        examples = source_demonstrations(src, system_prompt if not isinstance(data, str) else None)
        if not examples:
            raise ValueError(f"cold_start.data {src.path}: no demonstrations: {_looked_for(src)}")
        return examples
    train, _ = _synthetic_splits(cfg, cfg.data.tasks)
    examples = [make_demonstration(s, system_prompt=system_prompt) for s in train if s.get("solution")]
    for src in _train_sources(cfg):
        examples += source_demonstrations(src, system_prompt)
    if not examples:
        looked = "; ".join(f"data.sources[{i}] {src.path}: {_looked_for(src)}"
                           for i, src in enumerate(cfg.data.sources) if src.role == "train")
        raise ValueError("cold start: no demonstrations: data.tasks has no task with worked solutions"
                         + (f"; {looked}" if looked else " and no data.sources entry has role train")
                         + "; set cold_start.data or a source's messages_field")
    return examples


def cold_start_source(data: str | SourceSpec) -> SourceSpec:
    """``cold_start.data`` as a source: a string is a chat file with ``messages`` (its form before sources)."""
    return SourceSpec(path=data, messages_field="messages") if isinstance(data, str) else data


def _looked_for(src: SourceSpec) -> str:
    messages = f"messages_field {src.messages_field!r}" if src.messages_field else "messages_field (not set)"
    return f"no row has {messages} or a 'solution' field"


def _train_sources(cfg: RecipeConfig) -> list:
    return [src for src in cfg.data.sources if src.role == "train"]


def write_datasets(cfg: RecipeConfig, out_dir: Path) -> dict[str, Path]:
    """Write ``train.jsonl``, ``test.jsonl`` and ``cold_start.jsonl`` to ``out_dir``: the reasoning tasks and
    the general tasks of stage 5 alike. ``cold_start.jsonl`` holds ``cold_start.data``'s examples where set,
    else the demonstrations of every train row that can make one (a worked ``solution``, a source's
    ``messages_field``); a source without either is fine (RL and evals need none), and with no demonstration
    at all the file is empty and a warning says why."""
    from tasks import make_demonstration, write_jsonl

    system_prompt = cfg.data.system_prompt
    train, test = _synthetic_splits(cfg, cfg.data.tasks)
    demos = [make_demonstration(s, system_prompt=system_prompt) for s in train if s.get("solution")]
    for src in cfg.data.sources:
        (train if src.role == "train" else test).extend(source_samples(src))
        if src.role == "train" and cfg.cold_start.data is None:
            demos += source_demonstrations(src, system_prompt)
    general_train, general_test = general_splits(cfg)
    train, test = train + general_train, test + general_test
    demos += [make_demonstration(s, system_prompt=system_prompt) for s in general_train if s.get("solution")]
    if cfg.cold_start.data is not None:
        demos = cold_start_examples(cfg)
    elif not demos:
        log.warning("cold_start.jsonl: no demonstrations (%s); `r1 cold-start` needs cold_start.data or a "
                    "source with messages_field or solutions", "; ".join(
                        f"{src.path}: {_looked_for(src)}" for src in _train_sources(cfg)) or "no train data")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"train": out_dir / "train.jsonl", "test": out_dir / "test.jsonl", "cold_start": out_dir / "cold_start.jsonl"}
    write_jsonl(train, paths["train"])
    write_jsonl(test, paths["test"])
    write_jsonl(demos, paths["cold_start"])
    return paths


def eval_samples(cfg: RecipeConfig, data: str | SourceSpec | None = None) -> list[dict]:
    """The samples `r1 eval` scores: a given file or source (`r1 eval --data FILE` with the source options
    as flags, :func:`eval_source`), else the config's ``eval.split`` split."""
    if data:
        return source_samples(data if isinstance(data, SourceSpec) else SourceSpec(path=data))
    if cfg.eval.split == "test":
        return recipe_test_split(cfg)  # the split every stage of `r1 run` is evaluated on
    return build_splits(cfg)[0] + general_splits(cfg)[0]


# `r1 eval` flags that override a source option (flag -> SourceSpec field).
EVAL_SOURCE_FLAGS = ("prompt_field", "answer_field", "answer_pattern", "messages_field", "subset", "split",
                     "columns", "task", "limit")


def eval_source(path: str, **flags) -> SourceSpec:
    """The source `r1 eval --data PATH` reads, with its flags (``--prompt-field question`` ...) over the
    defaults; ``columns`` as given on the command line: ``all``, or names separated by commas (empty: only
    the schema fields). A bad value is a one-line ``ConfigError`` naming the flag."""
    from pydantic import ValidationError

    from .config import ConfigError

    options = {name: value for name, value in flags.items() if value is not None}
    unknown = set(options) - set(EVAL_SOURCE_FLAGS)
    if unknown:
        raise ConfigError(f"r1 eval: unknown source option(s) {', '.join(sorted(unknown))}")
    if isinstance(options.get("columns"), str) and options["columns"] != "all":
        options["columns"] = [name.strip() for name in options["columns"].split(",") if name.strip()]
    if options.get("answer_field") in ("null", "none", ""):
        options["answer_field"] = None
    try:
        return SourceSpec(path=path, **options)
    except ValidationError as exc:
        err = exc.errors()[0]
        flag = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else "--data"
        raise ConfigError(f"r1 eval {flag}={err.get('input')!r}: {err['msg'].removeprefix('Value error, ')}") from None
