"""The record machinery: statuses, the dataclass <-> JSON mapping, schema versions and their migrations.

A record is a dataclass whose fields are its JSON keys in the order they are written. ``to_dict()`` gives
the JSON object and ``from_dict()`` reads one back; both walk nested records by the fields' type hints
(``Sub``, ``Sub | None``, ``list[Sub]``, ``dict[str, Sub]``), so no record needs a reader of its own.
A read record remembers which of its keys were absent and any keys it does not know, and writes itself
back exactly as it was read: an older file round-trips, and a newer tool's extra keys survive.

Fields named in ``OPTIONAL`` are left out while ``None``; so are ``MEASURED`` fields of a record whose
status is not ok (what was never measured is not written).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import MISSING, fields
from enum import StrEnum
from typing import Any, ClassVar, TypeVar, Union, cast

from ..errors import BenchError

R = TypeVar("R", bound="Record")
S = TypeVar("S", bound="SchemaRecord")
Reader = Callable[[Any], Any]
Migration = Callable[[dict[str, Any]], dict[str, Any]]  # a record's JSON at version v -> at v + 1


class Status(StrEnum):
    """How a measurement ended, for every record kind; written as its plain string value."""

    OK = "ok"
    OOM = "oom"  # out of memory even at batch size 1
    NAN = "nan"  # a training loss became non-finite
    FAILED = "failed"  # it raised: the record says what was asked and why
    UNSUPPORTED = "unsupported"  # the path, precision or revision cannot run it here
    SKIPPED = "skipped"  # not run: another process ran it, or a precondition was missing


def plain(value: Any) -> Any:
    """``value`` with every nested record turned into its dict and every status into its string (dicts and
    lists copied, the rest as is)."""
    if isinstance(value, Status):
        return value.value
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _reader_for(hint: Any) -> Reader | None:
    """How to read a JSON value into the type ``hint`` (None: taken as it is)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        readers = [r for r in map(_reader_for, options) if r is not None]
        if len(readers) == 1 and len(options) == 1:
            inner = readers[0]
            return lambda v: None if v is None else inner(v)
        records = [o for o in options if isinstance(o, type) and issubclass(o, Record)]
        if records and len(records) == len(options):  # a union of records: the first that reads wins
            return lambda v: None if v is None else _first_that_reads(records, v)
        return None
    if isinstance(hint, type) and issubclass(hint, Record):
        return hint.from_dict
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        each = _reader_for(item)
        return None if each is None else (lambda v: [each(x) for x in v])
    if origin is dict:
        _, value = typing.get_args(hint) or (Any, Any)
        per_key = _reader_for(value)
        return None if per_key is None else (lambda v: {k: per_key(x) for k, x in v.items()})
    if hint is Status:
        return Status
    return None


def _first_that_reads(kinds: list[type[Record]], value: Any) -> Record:
    for kind in kinds:
        if kind.fits(value):
            return kind.from_dict(value)
    # A partial record (a hand-written fixture, a damaged file): the kind that names most of its keys.
    if isinstance(value, Mapping):
        names = [{f.name for f in fields(cast(Any, kind))} & set(value) for kind in kinds]
        best = max(range(len(kinds)), key=lambda i: len(names[i]))
        if names[best]:
            return kinds[best].from_dict(value)
    raise ValueError(f"no record kind of {[k.__name__ for k in kinds]} has the keys {sorted(value)[:8]}")


_FIELD_READERS: dict[type, dict[str, Reader | None]] = {}


def field_readers(cls: type[Record]) -> dict[str, Reader | None]:
    """Field name -> its reader, from the dataclass's resolved type hints (computed once per class)."""
    found = _FIELD_READERS.get(cls)
    if found is None:
        hints = typing.get_type_hints(cls)
        found = _FIELD_READERS[cls] = {f.name: _reader_for(hints[f.name]) for f in fields(cast(Any, cls))}
    return found


class Record:
    """Field order is key order; see the module's docstring for what is written and read."""

    OPTIONAL: ClassVar[frozenset[str]] = frozenset()
    MEASURED: ClassVar[frozenset[str]] = frozenset()

    def omitted(self) -> frozenset[str]:
        """Fields left out of the JSON while None: optional ones, unmeasured ones, and those read as absent."""
        omit = self.OPTIONAL | getattr(self, "_absent", frozenset())
        if getattr(self, "status", Status.OK) != Status.OK:
            omit |= self.MEASURED
        return omit

    def to_dict(self) -> dict[str, Any]:
        omit = self.omitted()
        out: dict[str, Any] = {}
        absent: frozenset[str] = getattr(self, "_absent", frozenset())
        for f in fields(cast(Any, self)):  # every subclass is a dataclass
            value = getattr(self, f.name)
            if value is None and f.name in omit:
                continue
            if f.name in absent and f.default is not MISSING and value == f.default:
                continue  # read from a file that lacked it, and still the default: written as read
            out[f.name] = plain(value)
        out.update(getattr(self, "_extra", {}))
        order = getattr(self, "_order", None)
        if order is not None:  # a record read from a file writes its keys in that file's order
            out = {k: out[k] for k in sorted(out, key=lambda k: order.get(k, len(order)))}
        return out

    @classmethod
    def fits(cls, data: Any) -> bool:
        """Whether ``data`` has every key this record cannot do without (to tell union members apart)."""
        if not isinstance(data, Mapping):
            return False
        required = {
            f.name
            for f in fields(cast(Any, cls))
            if f.default is MISSING and f.default_factory is MISSING and f.name not in cls.OPTIONAL
        }
        return required <= set(data)

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any]) -> R:
        if not isinstance(data, Mapping):
            raise TypeError(f"{cls.__name__} must be a JSON object, not {type(data).__name__}")
        readers = field_readers(cls)
        values: dict[str, Any] = {}
        absent = set()
        for f in fields(cast(Any, cls)):
            if f.name in data:
                read = readers[f.name]
                raw = data[f.name]
                values[f.name] = read(raw) if read is not None and raw is not None else raw
            elif f.default is MISSING and f.default_factory is MISSING:
                values[f.name] = None
                absent.add(f.name)
            else:
                absent.add(f.name)
        record = cls(**values)
        status = values.get("status")
        if isinstance(status, str) and not isinstance(status, Status) and status in set(Status):
            object.__setattr__(record, "status", Status(status))
        object.__setattr__(record, "_absent", frozenset(absent))
        extra = {k: v for k, v in data.items() if k not in readers and k not in ("schema", "schema_version")}
        if extra:
            object.__setattr__(record, "_extra", extra)
        keys = [k for k in data if k not in ("schema", "schema_version")]
        if keys != [k for k in record.to_dict() if k in data]:
            object.__setattr__(record, "_order", {k: i for i, k in enumerate(keys)})
        return record


class SchemaRecord(Record):
    """A top-level record: ``schema`` and ``schema_version`` come first in its JSON.

    ``VERSION`` is what is written now; ``MIGRATIONS[v]`` turns a version-``v`` JSON object into version
    ``v + 1``, so a reader of today reads every file an earlier version wrote (migrated on read).
    """

    SCHEMA: ClassVar[str]
    VERSION: ClassVar[int] = 1
    MIGRATIONS: ClassVar[Mapping[int, Migration]] = {}

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.SCHEMA, "schema_version": self.VERSION, **super().to_dict()}

    @classmethod
    def from_dict(cls: type[S], data: Mapping[str, Any]) -> S:
        return super().from_dict(cls.migrate(data))

    @classmethod
    def migrate(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """``data`` brought to :attr:`VERSION` (a copy); another schema or a newer version is an error."""
        if not isinstance(data, Mapping):
            raise BenchError(f"not a JSON object, so not a {cls.SCHEMA} record")
        schema, version = data.get("schema"), data.get("schema_version")
        if schema != cls.SCHEMA:
            raise BenchError(f"record is {schema!r}, not {cls.SCHEMA!r}; pass a {cls.SCHEMA} file")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise BenchError(f"{cls.SCHEMA} record has no valid schema_version ({version!r}); write it again")
        if version > cls.VERSION:
            raise BenchError(
                f"{cls.SCHEMA} record is version {version}, newer than this conformer-bench reads "
                f"({cls.VERSION}); upgrade conformer-bench"
            )
        out = dict(data)
        for v in range(version, cls.VERSION):
            step = cls.MIGRATIONS.get(v)
            if step is None:
                raise BenchError(
                    f"{cls.SCHEMA} version {v} cannot be read by this conformer-bench; write it again"
                )
            out = step(out)
            out["schema_version"] = v + 1
        return out
