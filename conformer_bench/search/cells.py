"""The one place the search reads the ablate store's cell records: what a trial is told from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..records import FinetuneRecord, ProfileRecord, Record, Status


@dataclass(frozen=True)
class CellOutcome:
    """What a trial's cell record says: how it ended, its typed profile and fine-tune records, where it ran."""

    status: str
    reason: str | None
    profile: ProfileRecord | None
    finetunes: tuple[FinetuneRecord, ...]
    environment: dict[str, Any]  # copied as it is into the search's record
    finished: float  # Unix time the record was written (0: unknown)

    @property
    def ok(self) -> bool:
        return self.status == Status.OK


def _field(cell: Record | Mapping[str, Any], name: str) -> Any:
    """A field of a cell: an attribute of a typed cell record, a key of a cell's JSON object."""
    return getattr(cell, name, None) if isinstance(cell, Record) else cell.get(name)


def _record(value: Any, kind: type[Record]) -> Any:
    """``value`` as a ``kind`` record: typed already, read from its JSON object, or None."""
    return value if isinstance(value, kind) else kind.from_dict(value) if isinstance(value, Mapping) else None


def cell_outcome(cell: Record | Mapping[str, Any]) -> CellOutcome:
    """Read one cell record of the ablate store (typed, or its JSON object) into what the search uses."""
    env = _field(cell, "environment")
    finetunes = (_record(f, FinetuneRecord) for f in _field(cell, "finetune") or ())
    return CellOutcome(
        status=str(_field(cell, "status")),
        reason=_field(cell, "reason"),
        profile=_record(_field(cell, "profile"), ProfileRecord),
        finetunes=tuple(f for f in finetunes if f is not None),
        environment=env.to_dict()
        if isinstance(env, Record)
        else dict(env)
        if isinstance(env, Mapping)
        else {},
        finished=float(_field(cell, "finished") or 0.0),
    )
