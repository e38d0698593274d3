"""The Python API for notebooks: read any file or folder the tool writes into typed records, and turn
records into a tidy pandas DataFrame with the same columns and units as the command's CSV.

    >>> import conformer_bench as cb
    >>> records = cb.read("results/presets")        # every record under the folder, typed
    >>> frame = cb.to_frame(records)                # one row per record (per path, per cell ...)
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BenchError
from .readers import holds_records, record_files, records_in_file
from .records import SchemaRecord
from .tables import Column, Table

if TYPE_CHECKING:
    import pandas

# Schema -> "module:function" giving (columns, rows of one record) for the CSV of that kind.
TIDY: dict[str, str] = {
    "conformer-bench.finetune": "conformer_bench.finetune_table:tidy",  # one row per record
    "conformer-bench.gpu-check": "conformer_bench.gpu_check.summary:check_rows",
    "conformer-bench.profile": "conformer_bench.formatting:tidy",
    "conformer-bench.report": "conformer_bench.report.render:tidy",
    "conformer-bench.speed": "conformer_bench.speed:tidy",  # one row per path
    "conformer-bench.cell": "conformer_bench.ablate.summary:tidy",
    "conformer-bench.search": "conformer_bench.search.front:tidy_trials",
}


def read(path: str | os.PathLike[str]) -> list[SchemaRecord]:
    """Every record in ``path``: a record file (``.json``/``.jsonl``) or a folder, searched recursively
    (files that hold no conformer-bench record, such as figures or summaries, are passed over)."""
    path = Path(path)
    if path.is_dir():
        return [r for f in record_files(path) if holds_records(f) for r in records_in_file(f)]
    if not path.exists():
        raise BenchError(f"{path} does not exist; pass a file or folder conformer-bench wrote")
    return records_in_file(path)


def tidy(record: SchemaRecord) -> tuple[Sequence[Column[Any]], list[Any]]:
    """The CSV columns of ``record``'s kind and the rows ``record`` gives (a profile one, a speed run one per
    path ...)."""
    where = TIDY.get(record.SCHEMA)
    if where is None:
        raise BenchError(f"{record.SCHEMA} records have no table form; read their fields instead")
    module, name = where.split(":")
    columns, rows = getattr(importlib.import_module(module), name)(record)
    return columns, list(rows)


def table(records: Iterable[SchemaRecord]) -> Table[Any]:
    """One table of the records of one kind that has a table form (the rows of each, in order); records
    without one, such as a run folder's experiment summary, are passed over."""
    given = list(records)
    records = [r for r in given if r.SCHEMA in TIDY]
    kinds = sorted({r.SCHEMA for r in records})
    if given and not records:
        raise BenchError(f"{given[0].SCHEMA} records have no table form; read their fields instead")
    if len(kinds) > 1:
        raise BenchError(
            f"records of {len(kinds)} kinds with a table form ({', '.join(kinds)}); pass one kind, e.g. "
            f"[r for r in records if r.SCHEMA == {kinds[0]!r}]"
        )
    columns: Sequence[Column[Any]] = []
    rows: list[Any] = []
    for record in records:
        columns, more = tidy(record)
        rows.extend(more)
    return Table(columns, rows)


def to_frame(records: Iterable[SchemaRecord]) -> pandas.DataFrame:
    """A tidy DataFrame of records of one kind: the columns, units and values of that kind's CSV."""
    return table(records).to_frame()
