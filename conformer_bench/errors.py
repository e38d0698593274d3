"""Errors the CLI turns into one line on stderr and exit code 2 (bad input), never a traceback."""

from __future__ import annotations


class BenchError(Exception):
    """Bad input or an unusable environment. The message names the fix."""

    exit_code = 2
