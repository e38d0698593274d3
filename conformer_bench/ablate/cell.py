"""Run one cell of an experiment in a process of its own.

``python -m conformer_bench.ablate.cell SPEC RESULT``: SPEC is a JSON file written by the parent
(:func:`cell_spec`); the cell's result dict (what :func:`conformer_bench.ablate.runner.run_cell` returns) is
written atomically to RESULT. While the cell runs, progress goes to the file descriptor named in the spec as
JSON lines ``{"message": str, "done": float | null, "total": float | null}``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from ..files import read_json, write_json
from .experiment import Cell

SPEC_SCHEMA = "conformer-bench.cell-spec"


def cell_spec(
    cell: Cell,
    finetune: bool,
    reuse_profile: dict[str, Any] | None,
    progress_fd: int | None,
    cuda_device: int | None = None,
) -> dict[str, Any]:
    """Everything the child needs to run ``cell`` (JSON-serialisable)."""
    return {
        "schema": SPEC_SCHEMA,
        "schema_version": 1,
        "cell": {
            "index": cell.index,
            "label": cell.label,
            "config": cell.config.to_dict(),
            "changes": cell.changes,
            "profile": cell.profile,
            "finetune": cell.finetune,
            "seeds": list(cell.seeds),
            "seed_jobs": cell.seed_jobs,
        },
        "finetune": finetune,
        "reuse_profile": reuse_profile,
        "progress_fd": progress_fd,
        "cuda_device": cuda_device,
    }


def cell_from_spec(spec: dict[str, Any]) -> Cell:
    """The :class:`Cell` a spec describes (the config rebuilt from its ``to_dict`` form)."""
    from conformer import ConformerConfig

    c = spec["cell"]
    fields = dict(c["config"])
    fields["fcu_stages"] = tuple(fields["fcu_stages"])
    return Cell(
        index=int(c["index"]),
        label=str(c["label"]),
        config=ConformerConfig(**fields),
        changes=dict(c["changes"]),
        profile=dict(c["profile"]),
        finetune=dict(c["finetune"]) if c["finetune"] is not None else None,
        seeds=tuple(int(s) for s in c["seeds"]),
        seed_jobs=int(c.get("seed_jobs", 1)),
    )


class PipeProgress:
    """A ``CellProgress`` that writes each update as one JSON line to a file descriptor."""

    def __init__(self, fd: int | None) -> None:
        self._out = os.fdopen(fd, "w", encoding="utf-8", buffering=1) if fd is not None else None

    def update(self, text: str, done: float | None = None, total: float | None = None) -> None:
        if self._out is None:
            return
        try:
            self._out.write(json.dumps({"message": text, "done": done, "total": total}) + "\n")
        except (BrokenPipeError, ValueError):  # the parent stopped listening: run on, report nothing
            self._out = None


def main(argv: list[str]) -> int:
    """Run the cell of ``argv[0]`` (spec) and write its result to ``argv[1]``; 2 on bad arguments."""
    if len(argv) != 2:
        print("usage: python -m conformer_bench.ablate.cell SPEC.json RESULT.json", file=sys.stderr)
        return 2
    spec = read_json(argv[0])
    if not isinstance(spec, dict) or spec.get("schema") != SPEC_SCHEMA:
        print(f"{argv[0]}: not a {SPEC_SCHEMA} file", file=sys.stderr)
        return 2
    cell = cell_from_spec(spec)
    if spec.get("cuda_device") is not None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_device(int(spec["cuda_device"]))
    from . import runner  # looked up at call time, so it can be wrapped

    progress = PipeProgress(spec.get("progress_fd"))
    result = runner.run_cell(cell, bool(spec["finetune"]), spec.get("reuse_profile"), progress)
    write_json(argv[1], result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
