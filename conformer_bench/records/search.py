"""The ``conformer-bench.search`` record: a search's settings, every trial, its Pareto front and its base."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .base import Record, SchemaRecord

SEARCH_SCHEMA = "conformer-bench.search"


@dataclass(frozen=True)
class TrialRecord(Record):
    """One trial of a search: where it stands, its point, what its records said, and its place on the front."""

    OPTIONAL = frozenset({"retry_of"})

    number: int
    label: str
    state: str  # complete | failed | pruned | running | interrupted | waiting
    reason: str | None
    role: str | None  # "base" for the base cell's trial
    params: dict[str, Any]  # the point: dimension -> value
    changes: dict[str, Any]  # config fields that differ from the base's
    img_size: int | None
    values: dict[str, float] | None  # objective -> value (complete trials)
    measures: dict[str, float]  # every metric its records (or its closed-form costs) carry
    constraints: dict[str, float]  # constraint -> excess (<= 0: kept)
    started: str | None
    finished: str | None
    on_front: bool = False
    dominates_base: bool = False
    retry_of: int | None = None

    @property
    def feasible(self) -> bool:
        return self.state == "complete" and all(v <= 0 for v in self.constraints.values())


@dataclass
class SearchRecord(SchemaRecord):
    """A ``conformer-bench.search`` record: the search's settings, every trial, the front and the base."""

    SCHEMA = SEARCH_SCHEMA
    VERSION = 1

    name: str
    settings: dict[str, Any]  # SearchSpec.summary()
    environment: dict[str, Any]  # where the base trial's cell ran
    counts: dict[str, int]
    base: int | None  # the base trial's number
    front: list[int]  # trial numbers, by the first objective, best first
    dominating_base: list[int]
    trials: list[TrialRecord] = field(default_factory=list)

    def trial(self, number: int) -> TrialRecord:
        return next(t for t in self.trials if t.number == number)
