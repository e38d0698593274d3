"""conformer-bench: cost and ablation measurements for the Conformer hybrid CNN-transformer.

For notebooks: ``conformer_bench.read(path)`` gives the typed records of any file or folder the tool
writes, and ``conformer_bench.to_frame(records)`` a tidy DataFrame of them (see :mod:`.api`).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "read", "table", "to_frame"]


def __getattr__(name: str) -> Any:
    # The API is imported on first use, so the CLI's start-up does not pay for pandas and the records.
    if name in ("read", "table", "to_frame"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'conformer_bench' has no attribute {name!r}")
