"""Comma lists of the command line (``-b 1,2``, ``--backend eager,onnxruntime``): one reading for every option."""

from __future__ import annotations

from .errors import BenchError


def comma_items(text: str, option: str) -> list[str]:
    """``"tiny, small"`` -> ``["tiny", "small"]``; ``[]`` for a blank text. An empty item between commas
    (``1,,2``, ``micro,``) is an error: it is a typo, not a value."""
    parts = [part.strip() for part in text.split(",")]
    if not any(parts):
        return []
    if not all(parts):
        raise BenchError(f"{option} {text!r} has an empty item; remove the extra comma")
    return parts
