"""Atomic file writing and JSON helpers: nothing already written is ever truncated."""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import BenchError

_WRITE_FIXES = {
    errno.ENOSPC: ("no space left on the device", "free space or write elsewhere"),
    errno.EDQUOT: ("disk quota exceeded", "free space or write elsewhere"),
    errno.EFBIG: ("file size limit reached (ulimit -f)", "raise the limit or write elsewhere"),
    errno.EACCES: ("permission denied", "choose a writable path"),
    errno.EPERM: ("operation not permitted", "choose a writable path"),
    errno.EROFS: ("read-only file system", "choose a path on a writable file system"),
}


def write_failure(exc: OSError, path: str | os.PathLike[str]) -> BenchError:
    """The one-line error for a failed write of ``path``: what happened and the fix."""
    what, fix = _WRITE_FIXES.get(exc.errno or 0, (exc.strerror or type(exc).__name__, "choose another path"))
    return BenchError(f"cannot write {str(path)!r}: {what}; {fix}")


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Fail early, with a fix, if ``path`` cannot be written (missing or read-only directory)."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise BenchError(
            f"output path {str(path)!r} is a directory; give a file name such as {path / 'out.json'}"
        )
    if parent.exists() and not parent.is_dir():
        raise BenchError(f"{str(parent)!r} is a file, not a directory; choose another output path")
    if not parent.exists():
        raise BenchError(
            f"output directory {str(parent)!r} does not exist; create it first (mkdir -p {parent})"
        )
    if not os.access(parent, os.W_OK):
        raise BenchError(f"output directory {str(parent)!r} is not writable; choose another --output path")
    try:  # os.access says yes to root everywhere: try for real before any measurement runs
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise BenchError(
            f"output directory {str(parent)!r} is not writable ({exc.strerror}); choose another --output path"
        ) from None
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write to a temporary file in the same directory, fsync, then rename over ``path``.

    A failure (disk full, size limit, permissions) leaves ``path`` as it was and no temporary file, and is
    raised as one :class:`BenchError` line.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_failure(exc, path) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise write_failure(exc, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    try:  # numpy scalars
        return obj.item()
    except AttributeError:
        raise TypeError(f"cannot serialise {type(obj).__name__} to JSON") from None


def _finite(obj: Any) -> Any:
    """JSON has no NaN/inf: store them as null so every reader can parse the record."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def dumps_json(obj: Any, indent: int | None = 2) -> str:
    return json.dumps(_finite(obj), indent=indent, default=_json_default, sort_keys=False) + "\n"


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    return atomic_write_text(path, dumps_json(obj))


def read_json(path: str | os.PathLike[str]) -> Any:
    path = Path(path)
    if not path.is_file():
        raise BenchError(f"{str(path)!r} does not exist; pass the path of a JSON record")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BenchError(
            f"{str(path)!r} is not valid JSON ({exc}); regenerate it with conformer-bench"
        ) from None
