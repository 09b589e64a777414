"""Bring a user's data into the sample schema: local JSONL / JSON / Parquet files or a Hub dataset.

``load_samples`` maps the user's field names onto the schema (``prompt``, ``answer``, plus any renames in
``fields``), extracts the gold answer with ``answer_pattern`` where given, keeps the columns the schema
names plus those ``columns`` selects, fills ``id`` and ``task`` when missing and stops at the first bad
row with one line that names the source, the field, the row and the fields the row does have.
``load_demonstrations`` reads the cold-start demonstrations a source holds: its chat ``messages``
(``messages_field``), else R1-format demonstrations of the rows that have a worked ``solution``.
``load_chat_samples`` reads SFT data in chat form (a ``messages`` list per row).

A field whose value is ``None`` counts as missing (that is how Parquet and HF datasets store a field a
row lacks).
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

from .answer_patterns import answer_extractor, normalized_answer
from .demonstrations import make_demonstration
from .sampling import sample_id
from .storage import from_table_row, read_jsonl

log = logging.getLogger("r1.data")

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
# Verifiers that judge a completion without a gold answer string.
NO_ANSWER_VERIFIERS = ("instruction", "code")
CHAT_ROLES = ("system", "user", "assistant")
_LEADING_FIELDS = ("id", "task", "prompt", "answer")
# The fields tasks/schema.md names (rewards, demonstrations and tools read them): always kept in a sample.
SCHEMA_FIELDS = frozenset({
    "id", "task", "prompt", "answer", "verifier", "solution", "numbers", "target", "constraints", "tests",
    "test_setup", "difficulty", "reference_response", "expression", "equation", "template", "variables",
})
Columns = Sequence[str] | Literal["all"] | None


def load_samples(
    source: str | os.PathLike,
    *,
    prompt_field: str = "prompt",
    answer_field: str | None = "answer",
    answer_pattern: str | None = None,
    task: str | None = None,
    split: str = "train",
    limit: int | None = None,
    fields: Mapping[str, str] | None = None,
    subset: str | None = None,
    columns: Columns = None,
    messages_field: str | None = None,
) -> list[dict[str, Any]]:
    """Samples from a ``.jsonl`` / ``.json`` / ``.parquet`` file, a local dataset folder or a Hub id.

    - ``prompt_field`` / ``answer_field``: the user's names for ``prompt`` and ``answer``. The answer is
      required except for rows whose ``verifier`` is one of ``NO_ANSWER_VERIFIERS``; pass
      ``answer_field=None`` for data without answers. Numeric answers become strings (``72`` -> ``"72"``).
      An ``answer_field`` that is itself a schema field (``solution``) is kept as well.
    - ``answer_pattern``: the gold answer is extracted from the answer field's text: a regex whose group 1
      is the answer, or a named extractor, ``boxed`` (the last balanced ``\\boxed{}``: MATH's ``solution``)
      or ``gsm8k`` (after ``####``); see :mod:`tasks.answer_patterns`. A row it finds nothing in is an error.
    - ``fields``: further renames from the user's names to schema names, e.g. ``{"nums": "numbers"}``.
    - ``columns``: which other columns a sample keeps besides the schema fields (``SCHEMA_FIELDS``) and the
      renamed ones: a list of names, ``"all"``, or None (default) for every column holding a scalar
      (string, number, bool); list and mapping columns (``generations``, ``messages``...) are then left out
      and their names logged once. A listed column that no row has is an error.
    - ``messages_field``: the chat column that holds demonstrations (:func:`load_demonstrations`); it is
      never copied into samples.
    - ``task``: the task name for rows without one (default: the file stem or the dataset's name).
    - ``split``: which split of a Hub dataset to load; also used in generated ids (``gsm8k-train-000003``).
    - ``limit``: keep only the first ``limit`` rows.
    - ``subset``: a Hub dataset's config name (``"main"`` for ``openai/gsm8k``).

    Raises ``ValueError`` with one line such as
    ``data/my.jsonl: field 'question' (prompt_field) missing in row 3; row has fields: q, a``.
    """
    label, rows, mapper = _mapped_rows(source, prompt_field=prompt_field, answer_field=answer_field,
                                       answer_pattern=answer_pattern, fields=fields, task=task, split=split,
                                       limit=limit, subset=subset)
    samples = [mapper.sample(row, number) for number, row in enumerate(rows, start=1)]
    _check_unique_ids(samples, label)
    return _kept_columns(samples, rows, columns, label=label, renamed=mapper.renamed,
                         messages_field=messages_field)


def load_demonstrations(
    source: str | os.PathLike,
    *,
    messages_field: str | None = None,
    system_prompt: str | None = None,
    prompt_field: str = "prompt",
    answer_field: str | None = "answer",
    answer_pattern: str | None = None,
    task: str | None = None,
    split: str = "train",
    limit: int | None = None,
    fields: Mapping[str, str] | None = None,
    subset: str | None = None,
) -> list[dict[str, Any]]:
    """The cold-start chat examples ``{"id", "task", "messages"}`` a source holds, one per row that can make
    one, with the ids :func:`load_samples` gives the same rows:

    - a row with ``messages_field`` set and present: its messages (checked as in :func:`load_chat_samples`),
      after a system message of ``system_prompt`` when they have none (the prompt RL will show);
    - else a row with a ``solution`` (after the same mapping as :func:`load_samples`): its R1-format
      demonstration (:func:`tasks.make_demonstration`);
    - else none. An empty result is the caller's to judge (a cold start needs some; RL does not).
    """
    label, rows, mapper = _mapped_rows(source, prompt_field=prompt_field, answer_field=answer_field,
                                       answer_pattern=answer_pattern, fields=fields, task=task, split=split,
                                       limit=limit, subset=subset)
    demos = []
    for number, row in enumerate(rows, start=1):
        if messages_field and messages_field in row:
            messages = _checked_messages(row[messages_field], label=label, number=number)
            if system_prompt and messages[0]["role"] != "system":
                messages = [{"role": "system", "content": system_prompt}, *messages]
            identity = _with_identity({k: row[k] for k in ("id", "task") if k in row},
                                      default_task=mapper.default_task, split=split, index=number - 1)
            demos.append({**identity, "messages": messages})
            continue
        if messages_field and prompt_field not in row:
            raise ValueError(f"{label}: row {number} has neither {messages_field!r} (messages_field) nor "
                             f"{prompt_field!r} (prompt_field); row has fields: {', '.join(row) or '(none)'}")
        sample = mapper.sample(row, number)
        if str(sample.get("solution") or "").strip():
            try:
                demos.append(make_demonstration(sample, system_prompt=system_prompt or None))
            except ValueError as error:
                raise ValueError(f"{label}: row {number}: {error}") from None
    _check_unique_ids(demos, label)
    return demos


def _mapped_rows(source: str | os.PathLike, *, prompt_field: str, answer_field: str | None,
                 answer_pattern: str | None, fields: Mapping[str, str] | None, task: str | None, split: str,
                 limit: int | None, subset: str | None) -> tuple[str, list[dict], "_RowMapper"]:
    """A source's ``(label, rows, mapper)``: what :func:`load_samples` and :func:`load_demonstrations` both read."""
    label, rows = read_rows(source, split=split, limit=limit, subset=subset)
    mapper = _RowMapper(label, prompt_field=prompt_field, answer_field=answer_field, answer_pattern=answer_pattern,
                        fields=fields, default_task=task or default_task_name(source), split=split)
    return label, rows, mapper


class _RowMapper:
    """One source's mapping of a raw row onto the schema (the field renames, the answer, the identity)."""

    def __init__(self, label: str, *, prompt_field: str, answer_field: str | None, answer_pattern: str | None,
                 fields: Mapping[str, str] | None, default_task: str, split: str):
        self.label, self.prompt_field, self.answer_field = label, prompt_field, answer_field
        self.answer_pattern, self.default_task, self.split = answer_pattern, default_task, split
        self.extract = answer_extractor(answer_pattern) if answer_pattern else None
        self.renames = [(prompt_field, "prompt", "prompt_field")]
        self.renames += [(src, dst, f"fields[{src!r}]") for src, dst in (fields or {}).items()]
        self.renamed = {dst for _, dst, _ in self.renames}

    def sample(self, row: Mapping[str, Any], number: int) -> dict[str, Any]:
        label, answer_field = self.label, self.answer_field
        sample = _renamed(row, self.renames, label=label, number=number)
        if answer_field is not None:
            if answer_field in row:
                if answer_field not in SCHEMA_FIELDS:  # MATH's `solution` stays: it is also the worked steps
                    sample.pop(answer_field, None)
                text = _answer_text(row[answer_field], label=label, number=number, field=answer_field)
                sample["answer"] = self._extracted(text, number) if self.extract else text
            elif sample.get("verifier") not in NO_ANSWER_VERIFIERS:
                raise ValueError(
                    f"{label}: {_missing(answer_field, 'answer_field', number, row)}; "
                    f"pass answer_field=None for data without answers"
                )
        prompt = sample["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(
                f"{label}: field {self.prompt_field!r} (prompt_field) in row {number} must be a non-empty string, "
                f"got {_describe(prompt)}"
            )
        return _with_identity(sample, default_task=self.default_task, split=self.split, index=number - 1)

    def _extracted(self, text: str, number: int) -> str:
        answer = self.extract(text)
        if not answer:
            raise ValueError(f"{self.label}: answer_pattern {self.answer_pattern!r} finds no answer in field "
                             f"{self.answer_field!r} (answer_field) of row {number}: {_describe(text)}")
        return normalized_answer(answer)


def _kept_columns(samples: list[dict[str, Any]], rows: list[dict], columns: Columns, *, label: str,
                  renamed: set[str], messages_field: str | None) -> list[dict[str, Any]]:
    """``samples`` with only the schema fields, the renamed ones and the columns ``columns`` selects."""
    if columns is not None and not isinstance(columns, str):
        present = {name for row in rows for name in row}
        unknown = [name for name in columns if name not in present]
        if unknown:
            raise ValueError(f"{label}: columns {', '.join(map(repr, unknown))} in no row; rows have fields: "
                             f"{', '.join(sorted(present)) or '(none)'}")
    elif columns is not None and columns != "all":
        raise ValueError(f"{label}: columns must be a list of names, 'all' or null, got {columns!r}")
    always = SCHEMA_FIELDS | renamed
    dropped: dict[str, None] = {}

    def keep(name: str, value: Any) -> bool:
        if name in always:
            return True
        if name == messages_field:
            keep_it = False  # read as demonstrations, never carried into reward rows
        elif columns == "all":
            keep_it = True
        elif columns is None:
            keep_it = isinstance(value, (str, int, float, bool))
        else:
            keep_it = name in columns
        if not keep_it:
            dropped[name] = None
        return keep_it

    kept = [{name: value for name, value in sample.items() if keep(name, value)} for sample in samples]
    if dropped:
        log.info("%s: columns left out of the samples: %s (name them in the source's columns to keep them)",
                 label, ", ".join(dropped))
    return kept


def load_chat_samples(
    source: str | os.PathLike,
    *,
    messages_field: str = "messages",
    task: str | None = None,
    split: str = "train",
    limit: int | None = None,
    subset: str | None = None,
) -> list[dict[str, Any]]:
    """Chat-format rows (``{"messages": [{"role", "content"}, ...]}``) for SFT, validated.

    Rules, each failure a one-line ``ValueError`` naming source, row and message: roles are ``system``
    (first message only), ``user`` and ``assistant``; after the optional system message they alternate
    starting with ``user``; the last message is the ``assistant``'s (the part SFT learns); every content
    is a non-empty string. Messages keep only ``role`` and ``content``; other row fields are kept.
    """
    label, rows = read_rows(source, split=split, limit=limit, subset=subset)
    default_task = task or default_task_name(source)
    samples = []
    for number, row in enumerate(rows, start=1):
        sample = _renamed(row, [(messages_field, "messages", "messages_field")], label=label, number=number)
        sample["messages"] = _checked_messages(sample["messages"], label=label, number=number)
        samples.append(_with_identity(sample, default_task=default_task, split=split, index=number - 1))
    _check_unique_ids(samples, label)
    return samples


def read_rows(
    source: str | os.PathLike, *, split: str = "train", limit: int | None = None, subset: str | None = None
) -> tuple[str, list[dict]]:
    """``(label, rows)`` from a local file or folder, else from the Hub; rows as plain dicts."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"{source}: limit must be a non-negative int or None, got {limit!r}")
    path = Path(source)
    label = str(source)
    if path.is_dir():
        rows = _read_dataset_folder(path, split=split, limit=limit)
    elif path.suffix.lower() in LOCAL_SUFFIXES or path.exists():
        rows = _read_local_file(path, limit=limit)
    else:
        rows = _read_hub(label, split=split, limit=limit, subset=subset)
    return label, [from_table_row(row) for row in rows]


def default_task_name(source: str | os.PathLike) -> str:
    """A task name from a source: ``data/my_math.jsonl`` -> ``my_math``, ``openai/gsm8k`` -> ``gsm8k``."""
    path = Path(source)
    name = path.stem if path.suffix.lower() in LOCAL_SUFFIXES else path.name
    return re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_").lower() or "custom"


def _read_local_file(path: Path, *, limit: int | None) -> list[dict]:
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = read_jsonl(path)
    elif suffix == ".json":
        rows = _read_json(path)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as error:  # pyarrow raises several types for a corrupt file
            raise ValueError(f"{path}: not a readable Parquet file: {_one_line(error)}") from None
    else:
        raise ValueError(f"{path}: unsupported file type {suffix or '(none)'!r}; use .jsonl, .json or .parquet")
    return rows if limit is None else rows[:limit]


def _read_json(path: Path) -> list[dict]:
    """A JSON array of objects, or ``{"data": [...]}``; JSON lines saved as ``.json`` also work."""
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        if error.msg == "Extra data":  # several JSON values: it is really JSON lines
            return read_jsonl(path)
        raise ValueError(f"{path}: invalid JSON at line {error.lineno} column {error.colno}: {error.msg}") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON array of objects (or {{\"data\": [...]}}), got {_describe(data)}")
    for number, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise ValueError(f"{path}: row {number} must be an object, got {_describe(row)}")
    return data


def _read_dataset_folder(path: Path, *, split: str, limit: int | None) -> list[dict]:
    """A folder saved with ``save_to_disk``, or a folder of data files ``load_dataset`` understands."""
    import datasets

    try:
        if (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists():
            dataset = datasets.load_from_disk(str(path))
            if isinstance(dataset, datasets.DatasetDict):
                dataset = dataset[split]
        else:
            dataset = datasets.load_dataset(str(path), split=split)
    except Exception as error:
        raise ValueError(f"{path}: could not load dataset folder (split {split!r}): {_one_line(error)}") from None
    return _dataset_rows(dataset, limit)


def _read_hub(dataset_id: str, *, split: str, limit: int | None, subset: str | None = None) -> list[dict]:
    import datasets

    try:
        dataset = datasets.load_dataset(dataset_id, subset, split=split)
    except Exception as error:  # offline, unknown id, missing split, gated repo...: all reported alike
        raise ValueError(
            f"{dataset_id}: not a local file and could not be loaded from the Hugging Face Hub "
            f"(split {split!r}): {_one_line(error)}"
        ) from None
    return _dataset_rows(dataset, limit)


def _dataset_rows(dataset, limit: int | None) -> list[dict]:
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return dataset.to_list()


def _renamed(row: Mapping[str, Any], renames, *, label: str, number: int) -> dict[str, Any]:
    sample = dict(row)
    for source_name, schema_name, role in renames:
        if source_name not in row:
            raise ValueError(f"{label}: {_missing(source_name, role, number, row)}")
        value = sample.pop(source_name)
        sample[schema_name] = value
    return sample


def _missing(field: str, role: str, number: int, row: Mapping[str, Any]) -> str:
    present = ", ".join(row) if row else "(none)"
    return f"field {field!r} ({role}) missing in row {number}; row has fields: {present}"


def _answer_text(value: Any, *, label: str, number: int, field: str) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(
            f"{label}: field {field!r} (answer_field) in row {number} must be a string or a number, "
            f"got {_describe(value)}"
        )
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # 72.0 from a float column means the answer 72
    return str(value)


def _with_identity(sample: dict[str, Any], *, default_task: str, split: str, index: int) -> dict[str, Any]:
    sample.setdefault("task", default_task)
    sample["task"] = str(sample["task"])
    sample["id"] = str(sample["id"]) if "id" in sample else sample_id(sample["task"], index, split)
    ordered = {name: sample[name] for name in _LEADING_FIELDS if name in sample}
    ordered.update((name, value) for name, value in sample.items() if name not in ordered)
    return ordered


def _check_unique_ids(samples: list[dict[str, Any]], label: str) -> None:
    first_row: dict[str, int] = {}
    for number, sample in enumerate(samples, start=1):
        if sample["id"] in first_row:
            raise ValueError(
                f"{label}: id {sample['id']!r} appears in rows {first_row[sample['id']]} and {number}; "
                f"ids must be unique"
            )
        first_row[sample["id"]] = number


def _checked_messages(messages: Any, *, label: str, number: int) -> list[dict[str, str]]:
    where = f"{label}: row {number}"
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: messages must be a non-empty list, got {_describe(messages)}")
    checked = []
    for position, message in enumerate(messages):
        at = f"{where}: message {position}"
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise ValueError(f"{at} must be an object with 'role' and 'content', got {_describe(message)}")
        role, content = message["role"], message["content"]
        if role not in CHAT_ROLES:
            raise ValueError(f"{at} has role {role!r}; roles must be one of {', '.join(CHAT_ROLES)}")
        if role == "system" and position != 0:
            raise ValueError(f"{at}: a system message may only come first")
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"{at} (role {role!r}) must have non-empty string content, got {_describe(content)}")
        checked.append({"role": role, "content": content})
    turns = [m["role"] for m in checked if m["role"] != "system"]
    offset = len(checked) - len(turns)
    for index, role in enumerate(turns):
        expected = "user" if index % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(
                f"{where}: message {index + offset} has role {role!r} where {expected!r} was expected; "
                f"turns must alternate user/assistant, starting with user"
            )
    if not turns or turns[-1] != "assistant":
        raise ValueError(f"{where}: the last message must be the assistant's (it is what SFT learns from)")
    return checked


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _one_line(error: BaseException) -> str:
    message = " ".join(str(error).split())
    message = message if len(message) <= 300 else message[:297] + "..."
    return f"{type(error).__name__}: {message}" if message else type(error).__name__
