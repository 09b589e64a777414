"""Samples on disk and as tables: JSONL, Parquet and ``datasets.Dataset``.

JSONL keeps samples exactly as they are. Arrow-based formats (Parquet, HF datasets) need one type per
column, and a few fields differ in shape from row to row (``constraints`` params differ per kind,
``variables`` per template, ``tests`` per problem), so those are stored as JSON strings there;
:func:`from_table_row` (used by ``tasks.loaders``) decodes them, and drops the ``None`` cells that
stand for fields a row did not have, so a round trip gives the samples back unchanged.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

JSON_ENCODED_FIELDS = ("constraints", "variables", "tests")


def write_jsonl(samples: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write one JSON object per line (UTF-8, non-ASCII kept); atomic, parent folders created."""
    path = Path(path)
    lines = [json.dumps(dict(sample), ensure_ascii=False) + "\n" for sample in samples]
    _write_atomic(path, lambda handle: handle.writelines(lines), mode="w")
    return path


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a JSONL file; blank lines are skipped.

    A bad line raises ``ValueError`` naming the file and line: ``data/x.jsonl:7: invalid JSON: ...``.
    """
    path = Path(path)
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: invalid JSON: {error.msg} (column {error.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def to_table_rows(samples: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows with the same columns (union of all fields, first-seen order; ``None`` where absent) and the
    variable-shaped fields JSON-encoded, ready for Arrow."""
    samples = list(samples)
    columns: dict[str, None] = {}
    for sample in samples:
        columns.update(dict.fromkeys(sample))
    rows = []
    for sample in samples:
        row = {}
        for column in columns:
            value = sample.get(column)
            if column in JSON_ENCODED_FIELDS and value is not None:
                value = json.dumps(value, ensure_ascii=False)
            row[column] = value
        rows.append(row)
    return rows


def from_table_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Undo :func:`to_table_rows` for one row: drop ``None`` cells, decode JSON-encoded fields."""
    sample = {}
    for column, value in row.items():
        if value is None:
            continue
        if column in JSON_ENCODED_FIELDS and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass  # a user's plain-text field of that name: keep it as it is
        sample[column] = value
    return sample


def write_parquet(samples: Iterable[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Write samples as a Parquet file (see the module doc for how fields are encoded); atomic."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    table = pa.Table.from_pylist(to_table_rows(samples))
    _write_atomic(path, lambda handle: pq.write_table(table, handle), mode="wb")
    return path


def to_hf_dataset(samples: Iterable[Mapping[str, Any]]):
    """A ``datasets.Dataset`` of the samples (columns as in :func:`to_table_rows`)."""
    import datasets  # imported here: it takes a second and most users of tasks/ never need it

    rows = to_table_rows(samples)
    if not rows:
        return datasets.Dataset.from_dict({})
    return datasets.Dataset.from_list(rows)


def _write_atomic(path: Path, write, *, mode: str) -> None:
    # Write beside the target and rename, so a crash never leaves a half-written artifact that a
    # resumed run would take for a complete one.
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(
        mode, dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False,
        **({"encoding": "utf-8"} if "b" not in mode else {}),
    )
    try:
        with handle:
            write(handle)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise
