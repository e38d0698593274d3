"""Typed readers for the tables of a TOML input file (experiments, searches, thresholds).

A table is declared once as a frozen dataclass: its fields are the keys it takes, their type hints the
values they accept and their defaults what an absent key means. :func:`read_table` refuses an unknown key
(with a suggestion), checks each value against its field's type and builds the dataclass, so the code
after it reads attributes, never string keys. A field's ``metadata`` may give the error for a value of the
wrong type (``"fix"``) or for a required key that is missing (``"missing"``); every error names the file,
the line and the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

from .errors import BenchError

T = TypeVar("T")
Where = tuple[str | int, ...]  # a key path such as ("cells", 2, "coupling")


def fix(wrong_type: str | None = None, *, missing: str | None = None) -> dict[str, str]:
    """Field metadata: the error for a value of the wrong type (``{value}`` is replaced by the value as
    written, shortened) and for a missing required key."""
    out = {}
    if wrong_type is not None:
        out["fix"] = wrong_type
    if missing is not None:
        out["missing"] = missing
    return out


class Checker:
    """The file, its text and the way to raise an error that names file, line and key."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.text = text

    def fail(self, where: Where, message: str) -> BenchError:
        line = find_line(self.text, where)
        loc = f"{self.path}:{line}" if line else str(self.path)
        return BenchError(f"{loc}: {key_name(where)}: {message}")


_HEADER_RE = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\" ]+?)\s*\]\]?\s*(#.*)?$")


def find_line(text: str, path: Where) -> int | None:
    """Best-effort 1-based line of a key path such as ("cells", 2, "coupling") or ("profile", "mode")."""
    lines = text.splitlines()
    array = path[0] if len(path) > 1 and isinstance(path[1], int) else None
    index = path[1] if array is not None else None
    names = [p for p in path if isinstance(p, str)]
    if not names:
        return None
    # First the key inside its table, then the table's own header.
    for table, key in ((names[:-1], names[-1]), (names, None)):
        header = ".".join(table)
        current, entry = "", -1
        for no, line in enumerate(lines, start=1):
            m = _HEADER_RE.match(line)
            if m:
                current = m.group(2).replace('"', "").replace(" ", "")
                if m.group(1) == "[[" and current == array:
                    entry += 1
                if key is None and current == header and (index is None or entry == index):
                    return no
                continue
            here = current == header and (index is None or entry == index)
            if key is not None and here and re.match(rf'^\s*"?{re.escape(key)}"?\s*=', line):
                return no
    return None


def key_name(where: Where) -> str:
    out = ""
    for part in where:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(top level)"


def unknown_key(key: str, valid: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown key {key!r}; {hint}valid keys: {', '.join(valid)}"


def shown(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fits(value: Any, hint: Any) -> bool:
    """Whether a TOML value is of the type ``hint`` (``bool`` is not an ``int``; an ``int`` is a ``float``)."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        return any(fits(value, a) for a in args)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (list, tuple):
        item = args[0] if args else Any
        return isinstance(value, list) and all(fits(v, item) for v in value)
    if origin is dict:
        item = args[1] if len(args) == 2 else Any
        return isinstance(value, dict) and all(isinstance(k, str) and fits(v, item) for k, v in value.items())
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(hint, type) and isinstance(value, hint)


def _expected(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "choose one of: " + ", ".join(str(a) for a in typing.get_args(hint))
    name = str(hint).replace("typing.", "")
    return f"expected {getattr(hint, '__name__', name)}"


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    found = _HINTS.get(cls)
    if found is None:
        found = _HINTS[cls] = typing.get_type_hints(cls)
    return found


def read_table(
    chk: Checker,
    where: Where,
    raw: Any,
    cls: type[T],
    *,
    rest: bool = False,
    not_a_table: str = "must be a table",
) -> tuple[T, dict[str, Any]]:
    """The table ``raw`` as ``cls``, and its keys ``cls`` does not declare (only when ``rest``; else an
    unknown key is an error)."""
    if not isinstance(raw, Mapping):
        raise chk.fail(where, not_a_table)
    declared = {f.name: f for f in dataclasses.fields(_dataclass(cls))}
    hints = _hints(cls)
    values: dict[str, Any] = {}
    others: dict[str, Any] = {}
    for key, value in raw.items():
        f = declared.get(key)
        if f is None:
            if not rest:
                raise chk.fail((*where, key), unknown_key(key, list(declared)))
            others[key] = value
            continue
        if not fits(value, hints[key]):
            message = f.metadata.get("fix")
            if message is None:
                message = f"{shown(value)} is not valid; {_expected(hints[key])}"
            raise chk.fail((*where, key), message.replace("{value}", shown(value)))
        values[key] = value
    for name, f in declared.items():
        if name in values:
            continue
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise chk.fail(where, f.metadata.get("missing", f"missing key {name!r}; add {name} = ..."))
    return cls(**values), others


def keys_of(table: type) -> tuple[str, ...]:
    """The keys a table class takes, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(_dataclass(table)))


def _dataclass(cls: type) -> Any:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass")
    return cls
