"""The ``conformer-bench.ab`` record: two revisions measured side by side on one machine, cell by cell."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..ab import CLOCKS
from ..errors import BenchError
from .base import Record, SchemaRecord, Status
from .common import Environment

AB_SCHEMA = "conformer-bench.ab"


@dataclass(frozen=True)
class PairedRound(Record):
    """One round of an A/B cell: each revision's turn of ``steps_per_turn`` steps, in the order they ran.

    Times are per turn (the sum of its steps): wall clock (``perf_counter``) and the worker's CPU time
    (``process_time``, all its threads, user and system).
    """

    order: str  # "base,head", "head,base", or "duet" (both at once)
    epoch: int  # which build of the cell (each epoch builds it anew, at another memory layout)
    base_wall_s: float
    head_wall_s: float
    base_cpu_s: float
    head_cpu_s: float
    base_page_faults: int  # minor page faults during the turn (the workers' allocator is set to need none)
    head_page_faults: int


@dataclass(frozen=True)
class InstructionCounts(Record):
    """Instructions per image of each revision's step, counted under callgrind (``count_steps`` steps, one
    thread); a side that could not be counted is None, with the reason."""

    OPTIONAL = frozenset({"reason"})

    base: float | None
    head: float | None
    count_steps: int
    tool: str  # e.g. "valgrind-3.19.0 callgrind, Ir"
    reason: str | None = None


@dataclass
class PairedCell(Record):
    """One cell and phase of an A/B: what ran, how it ended, and every round's raw times."""

    OPTIONAL = frozenset({"instructions"})

    label: str
    phase: str  # infer | train
    status: Status  # ok | unsupported (a revision cannot build it) | failed
    reason: str | None
    failed_side: str | None  # base | head when one side alone could not run it
    config_hash: str
    batch_size: int
    img_size: int
    precision: str
    path: str
    threads: int
    steps_per_turn: int
    rounds: list[PairedRound]
    instructions: InstructionCounts | None = None


@dataclass(frozen=True)
class RevisionRef(Record):
    """One side of an A/B: the revision as the user named it, its commit (None: the working tree)."""

    name: str
    sha: str | None
    subject: str
    commit_time: str | None  # ISO 8601 committer date


@dataclass(frozen=True)
class ABExperiment(Record):
    """The experiment file whose cells were timed."""

    name: str
    source: str  # as given on the command line
    digest: str
    cells: int | None = None  # cells selected (before phases)


@dataclass(frozen=True)
class ABSettings(Record):
    """How the two revisions are timed. ``rounds`` fixes the rounds per cell; otherwise ``budget_s`` (the
    seconds of the whole timing pass, builds included) is shared out over the cells, within [min, max]
    rounds a cell."""

    phases: tuple[str, ...] = ("infer",)
    schedule: str = "same-core"
    clock: str = "auto"  # auto: CPU time for one-thread cells, wall clock otherwise
    budget_s: float = 300.0
    rounds: int | None = None
    min_rounds: int = 20
    max_rounds: int = 400
    turn_s: float = 0.05  # a turn lasts at least this long: steps per turn from the first timed step
    warmup: int = 3
    epochs: int = 4  # builds per cell and side, each at another memory layout; the rounds are shared out
    seed: int = 0
    confidence: float = 0.95
    instructions: bool = False
    count_steps: int = 3
    worker_allocator_env: dict[str, str] | None = None  # the workers' malloc settings, as run

    def __post_init__(self) -> None:
        if isinstance(self.phases, list):  # as JSON has them
            object.__setattr__(self, "phases", tuple(self.phases))


@dataclass
class ABRecord(SchemaRecord):
    """A ``conformer-bench.ab`` record: two revisions measured side by side on one machine, cell by cell."""

    SCHEMA = AB_SCHEMA
    VERSION = 1

    status: Status  # ok | failed (stopped before every cell ran)
    reason: str | None
    base: RevisionRef
    head: RevisionRef
    experiment: ABExperiment
    environment: dict[str, Any]
    settings: ABSettings
    workers: dict[str, Any]  # per side: what the worker reported at start (python, torch, its conformer)
    cells: list[PairedCell]
    wall_s: float

    def typed_environment(self) -> Environment:
        """The environment as a record (the file keeps the JSON it was written with)."""
        return Environment.from_dict(self.environment)

    @classmethod
    def from_dict(cls, data: Any) -> ABRecord:
        """Read an A/B record, checking every number a verdict is computed from (BenchError otherwise)."""
        if not isinstance(data, dict):
            raise BenchError("not a JSON object; pass the --output file of a `conformer-bench ab` run")
        try:
            record = super().from_dict(data)
            _check_ab(record)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BenchError(
                f"malformed A/B record ({type(exc).__name__}: {exc}); write it again with `ab --output`"
            ) from None
        return record


def _positive(value: Any, where: str) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{where} is {value!r}, not a positive finite number")


def _check_ab(record: ABRecord) -> None:
    """What the verdict reads of an A/B record: known statuses and clock, positive finite times and counts."""
    kinds = {"base": RevisionRef, "head": RevisionRef, "experiment": ABExperiment, "settings": ABSettings}
    for name, kind in {**kinds, "environment": dict, "workers": dict}.items():
        if not isinstance(getattr(record, name), kind):
            raise TypeError(f"{name} must be an object")
    if not isinstance(record.cells, list):
        raise TypeError("cells must be a list")
    if record.settings.clock not in CLOCKS:
        raise ValueError(f"settings.clock {record.settings.clock!r} is not one of {', '.join(CLOCKS)}")
    if isinstance(record.settings.seed, bool) or not isinstance(record.settings.seed, int):
        raise TypeError("settings.seed must be an integer")
    for cell in record.cells:
        where = f"cell {cell.label!r}"
        if not isinstance(cell.status, Status) or not isinstance(cell.label, str):
            raise ValueError(f"{where}: unknown status {cell.status!r}")
        for name in ("batch_size", "steps_per_turn", "threads"):
            value = getattr(cell, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < (0 if name == "steps_per_turn" else 1)
            ):
                raise ValueError(f"{where}: {name} is {value!r}")
        for i, r in enumerate(cell.rounds):
            for name in ("base_wall_s", "head_wall_s", "base_cpu_s", "head_cpu_s"):
                _positive(getattr(r, name), f"{where} round {i} {name}")
            if isinstance(r.epoch, bool) or not isinstance(r.epoch, int):
                raise ValueError(f"{where} round {i}: epoch is {r.epoch!r}")
        counts = cell.instructions
        for side in ("base", "head"):
            value = getattr(counts, side) if counts is not None else None
            if value is not None:
                _positive(value, f"{where} {side} instructions")
