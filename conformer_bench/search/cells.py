"""The one place the search reads the ablate store's cell records: what a trial is told from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..records import FinetuneRecord, ProfileRecord, Status


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


def cell_outcome(record: Mapping[str, Any]) -> CellOutcome:
    """Read one cell record of the ablate store (a JSON object) into what the search uses."""
    profile, env = record.get("profile"), record.get("environment")
    finetunes = record.get("finetune") or ()
    return CellOutcome(
        status=str(record.get("status")),
        reason=record.get("reason"),
        profile=ProfileRecord.from_dict(profile) if isinstance(profile, dict) else None,
        finetunes=tuple(FinetuneRecord.from_dict(f) for f in finetunes if isinstance(f, dict)),
        environment=dict(env) if isinstance(env, dict) else {},
        finished=float(record.get("finished") or 0.0),
    )
