"""Files in and out: atomic writes (nothing already written is ever truncated), strict JSON and TOML, input
files checked where they enter, and run-folder files opened without following links."""

from __future__ import annotations

import errno
import json
import math
import os
import stat
import tempfile
from collections.abc import Iterator
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
    errno.ENAMETOOLONG: ("file name too long", "choose a shorter name"),
}
NAME_MAX = 255  # bytes in one file name on Linux file systems
MAX_NESTING = 64  # levels of nested tables or lists a record, experiment or thresholds file may hold


def write_failure(exc: OSError, path: str | os.PathLike[str]) -> BenchError:
    """The one-line error for a failed write of ``path``: what happened and the fix."""
    what, fix = _WRITE_FIXES.get(exc.errno or 0, (exc.strerror or type(exc).__name__, "choose another path"))
    return BenchError(f"cannot write {str(path)!r}: {what}; {fix}")


def check_name_length(path: str | os.PathLike[str]) -> None:
    """A file name longer than the file system allows is one line naming the fix."""
    name = Path(path).name
    if len(os.fsencode(name)) > NAME_MAX:
        raise BenchError(
            f"file name {name[:40]!r}... is {len(os.fsencode(name))} bytes, past the {NAME_MAX} a file "
            "system allows; choose a shorter name"
        )


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Fail early, with a fix, if ``path`` cannot be written (missing or read-only directory)."""
    path = Path(path)
    check_name_length(path)
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


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare where they would be
        return a.resolve() == b.resolve()


def check_outputs_apart(
    outputs: dict[str, str | os.PathLike[str] | None], inputs: dict[str, list[Path]]
) -> None:
    """Refuse an output that is one of the command's input files, or the same file as another output.

    ``outputs``: option -> path (``None`` when not given); ``inputs``: option -> the files it reads.
    """
    seen: dict[str, Path] = {}
    for flag, raw in outputs.items():
        if raw is None:
            continue
        out = Path(raw)
        for in_flag, paths in inputs.items():
            if any(_same_file(out, p) for p in paths):
                raise BenchError(
                    f"{flag} {str(out)!r} is an input ({in_flag} reads it); writing it would destroy the "
                    "input: choose another output path"
                )
        for other, path in seen.items():
            if _same_file(out, path):
                raise BenchError(f"{flag} and {other} both name {str(out)!r}; give each its own file")
        seen[flag] = out


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


# --- reading what comes in: files named by the user and files found in run folders ----------------------


def _open_regular(path: Path, flags: int, *, follow: bool, mode: int = 0o666) -> int:
    """``os.open`` of a regular file: never waits on a FIFO and, unless ``follow``, refuses a symbolic link.

    Raises ``FileNotFoundError`` when absent (and ``O_CREAT`` not given); a :class:`BenchError` for a link or
    anything but a regular file.
    """
    flags |= os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow:
            raise BenchError(
                f"{path} is a symbolic link; files in a run folder are never followed: remove the link"
            ) from None
        if exc.errno == errno.ENXIO:  # a FIFO opened for writing with no reader
            raise BenchError(
                f"{path} is not a regular file (a FIFO?); remove it or pass another path"
            ) from None
        raise
    kind = os.fstat(fd).st_mode
    if not stat.S_ISREG(kind):
        os.close(fd)
        what = "a directory" if stat.S_ISDIR(kind) else "not a regular file (a FIFO, socket or device)"
        raise BenchError(f"{path} is {what}; remove it or pass another path")
    return fd


def open_in_folder(path: str | os.PathLike[str], flags: int, mode: int = 0o666) -> int:
    """A file descriptor on ``path``, a file of a run folder: a symbolic link or a non-regular file there is
    refused (so a planted link can never turn a write against the file it points to)."""
    return _open_regular(Path(path), flags, follow=False, mode=mode)


def read_in_folder(path: str | os.PathLike[str]) -> bytes | None:
    """The bytes of a run folder's file, or ``None`` when absent; links and non-regular files are refused."""
    try:
        fd = open_in_folder(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def _input_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as an input file (None when it can)."""
    try:
        kind = path.stat().st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if stat.S_ISDIR(kind):
        return "is a directory, not a file"
    if not stat.S_ISREG(kind):
        return "is not a regular file (a FIFO, socket or device)"
    return None


def check_input_file(path: str | os.PathLike[str], what: str, fix: str) -> Path:
    """``path`` as a readable regular file, else one line: ``{what} {path} does not exist; {fix}`` (or is a
    directory, or not a regular file)."""
    path = Path(path)
    problem = _input_problem(path)
    if problem is not None:
        raise BenchError(f"{what} {str(path)!r} {problem}; {fix}")
    return path


def read_input_text(path: str | os.PathLike[str], what: str, fix: str) -> str:
    """The UTF-8 text of an input file the user named; one line naming ``fix`` when it is missing, a
    directory, a FIFO or not UTF-8 text."""
    path = check_input_file(path, what, fix)
    try:
        fd = _open_regular(path, os.O_RDONLY, follow=True)
        with os.fdopen(fd, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise BenchError(f"{what} {str(path)!r} cannot be read ({exc.strerror}); {fix}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BenchError(
            f"{what} {str(path)!r} is not a text (UTF-8) file (byte {exc.start} is not UTF-8); {fix}"
        ) from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range for a finite number")
    return value


def loads_json(text: str | bytes) -> Any:
    """Strict JSON: no NaN or Infinity (nor numbers that overflow to them), at most :data:`MAX_NESTING` levels.

    Anything else raises ``ValueError`` (``json.JSONDecodeError`` is one).
    """
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_NESTING} levels") from None
    check_nesting(value)
    return value


def _children(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        yield from node.values()
    elif isinstance(node, list):
        yield from node


def check_nesting(value: Any) -> None:
    """``ValueError`` when ``value`` nests lists or tables deeper than :data:`MAX_NESTING` (no recursion)."""
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING:
            raise ValueError(f"nested deeper than {MAX_NESTING} levels")
        stack.extend((child, depth + 1) for child in _children(node))


def first_non_finite(value: Any) -> tuple[str | int, ...] | None:
    """The key path of the first NaN or infinite float in nested tables and lists, else ``None``."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        node, where = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            return where
        if isinstance(node, dict):
            stack.extend((v, (*where, str(k))) for k, v in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend((v, (*where, i)) for i, v in reversed(list(enumerate(node))))
    return None


def read_json(path: str | os.PathLike[str]) -> Any:
    """A JSON file the user named, read strictly (see :func:`loads_json`)."""
    text = read_input_text(path, "JSON file", "pass the path of a JSON record written by conformer-bench")
    try:
        return loads_json(text)
    except ValueError as exc:
        raise BenchError(
            f"{str(path)!r} is not valid JSON ({exc}); regenerate it with conformer-bench"
        ) from None


def loads_toml(text: str) -> dict[str, Any]:
    """TOML parsed with at most :data:`MAX_NESTING` levels; ``ValueError`` (``TOMLDecodeError`` is one) else."""
    import tomllib

    try:
        value = tomllib.loads(text)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_NESTING} levels") from None
    check_nesting(value)
    return value
