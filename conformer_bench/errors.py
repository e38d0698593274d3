"""Errors the CLI turns into one line on stderr and exit code 2 (bad input), never a traceback."""

from __future__ import annotations


class BenchError(Exception):
    """Bad input or an unusable environment. The message names the fix."""

    exit_code = 2


def exception_line(exc: BaseException) -> str:
    """``Type: first line of the message``, for a failure recorded in a record rather than raised."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
