"""One reader per file kind the tool writes: a JSON record, a JSON-lines file (with shards), a folder.

Every consumer reads through here, so the rules hold everywhere: a JSON-lines file's last line without
its newline is a write cut short by a kill and is left out (unless it is a whole record); any other line
that does not parse is an error naming the file, the line and the fix; of several records of one label
the newest wins (by ``finished``, a later line winning a tie). Records come back typed: the ``schema``
key picks the record kind (:data:`conformer_bench.records.KINDS`), older versions migrated on read.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from .errors import BenchError
from .files import loads_json, read_in_folder
from .records import KINDS, SchemaRecord

T = TypeVar("T")
S = TypeVar("S", bound=SchemaRecord)
Parse = Callable[[Any, str], T]  # a parsed JSON value and where it came from -> a record (or an error)

RECORD_SUFFIXES = (".json", ".jsonl")


def _lines_of(path: Path) -> tuple[list[tuple[int, bytes]], tuple[int, bytes] | None]:
    """Numbered non-blank whole lines of ``path``, and its torn last line (one without a newline), if any."""
    try:
        data = read_in_folder(path)
    except OSError as exc:
        raise BenchError(f"cannot read {path} ({exc.strerror}); check its permissions") from None
    if data is None:
        return [], None
    lines = data.split(b"\n")
    torn = lines.pop() if lines else b""  # b"" when the file ends with a newline
    whole = [(no, raw) for no, raw in enumerate(lines, start=1) if raw.strip()]
    return whole, ((len(lines) + 1, torn) if torn.strip() else None)


def read_jsonl(path: str | os.PathLike[str], parse: Parse[T], fix: str) -> list[T]:
    """Every line of a JSON-lines file, parsed by ``parse(value, where)``; ``fix`` ends a bad line's error.

    A torn last line is kept when it is a whole record and dropped otherwise; a missing file is empty.
    """
    path = Path(path)
    whole, torn = _lines_of(path)
    out = [_parse_line(raw, path, no, parse, fix) for no, raw in whole]
    if torn is not None:
        with contextlib.suppress(BenchError):
            out.append(_parse_line(torn[1], path, torn[0], parse, fix))
    return out


def _parse_line(raw: bytes, path: Path, no: int, parse: Parse[T], fix: str) -> T:
    where = f"{path} line {no}"
    try:
        value = loads_json(raw.decode("utf-8"))
    except ValueError:  # not UTF-8, not JSON, a NaN or an overflowing number, nested too deep
        raise BenchError(f"{where} is not valid JSON (a damaged file?); {fix}") from None
    return parse(value, where)


def read_json(path: str | os.PathLike[str], fix: str) -> Any:
    """A whole JSON file (None when it does not exist); a damaged one is an error ending in ``fix``."""
    path = Path(path)
    try:
        data = read_in_folder(path)
        return None if data is None else loads_json(data.decode("utf-8"))
    except OSError as exc:
        raise BenchError(f"cannot read {path} ({exc.strerror}); check its permissions") from None
    except ValueError:
        raise BenchError(f"{path} is not valid JSON (a damaged file?); {fix}") from None


def newest_per_label(
    records: Iterable[T], label: Callable[[T], str], finished: Callable[[T], float | None]
) -> dict[str, T]:
    """The newest record of each label (by ``finished``; a later one wins a tie), in first-seen order."""
    out: dict[str, T] = {}
    for record in records:
        key = label(record)
        old = out.get(key)
        if old is None or (finished(record) or 0) >= (finished(old) or 0):
            out[key] = record
    return out


# --- typed records of any file -------------------------------------------------------------------------------


def record_of(kind: type[S], value: Any, where: str, fix: str = "write it again") -> S:
    """``value`` read as a ``kind`` record; what does not read is one error naming ``where`` and ``fix``."""
    try:
        return kind.from_dict(value)
    except BenchError as exc:
        raise BenchError(f"{where}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BenchError(
            f"{where}: malformed {kind.SCHEMA} record ({type(exc).__name__}: {exc}); {fix}"
        ) from None


def typed_record(value: Any, where: str) -> SchemaRecord:
    """The record a parsed JSON object holds, by its ``schema``; anything else is an error naming ``where``."""
    schema = value.get("schema") if isinstance(value, dict) else None
    kind: type[SchemaRecord] | None = KINDS.get(schema) if isinstance(schema, str) else None
    if kind is None:
        known = ", ".join(sorted(KINDS))
        raise BenchError(f"{where} is not a conformer-bench record (schema {schema!r}); records are {known}")
    return record_of(kind, value, where)


def records_in_file(path: str | os.PathLike[str]) -> list[SchemaRecord]:
    """The typed records of one ``.json`` (a record, or a list of records) or ``.jsonl`` file."""
    path = Path(path)
    fix = "write it again with conformer-bench"
    if path.suffix == ".jsonl":
        return read_jsonl(path, typed_record, fix)
    value = read_json(path, fix)
    if value is None:
        raise BenchError(f"{path} does not exist; pass a file or folder conformer-bench wrote")
    if isinstance(value, list):
        return [typed_record(v, f"{path} item {i}") for i, v in enumerate(value)]
    return [typed_record(value, str(path))]


def record_files(folder: Path) -> Iterator[Path]:
    """The JSON and JSON-lines files under ``folder`` that hold records, in path order (hidden ones skipped)."""
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).parts
        if (
            any(part.startswith(".") for part in rel)
            or path.suffix not in RECORD_SUFFIXES
            or not path.is_file()
        ):
            continue
        yield path


def holds_records(path: Path) -> bool:
    """Whether a JSON or JSON-lines file starts with a record of a known schema (a cheap sniff)."""
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return any(
        f'"schema": "{schema}"'.encode() in head or f'"schema":"{schema}"'.encode() in head
        for schema in KINDS
    )
