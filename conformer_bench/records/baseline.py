"""The ``conformer-bench.baseline`` record: the metrics of one run, kept on purpose for regression reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from conformer.config import is_finite_number

from ..errors import BenchError
from .base import Record, SchemaRecord
from .common import Environment

BASELINE_SCHEMA = "conformer-bench.baseline"
BASELINE_FIX = "rewrite it with `baseline write`"
METRIC_KINDS = ("exact", "noisy", "accuracy", "paired")  # paired: two revisions timed side by side (ab)
DIRECTIONS = ("higher", "lower", "equal")
SOURCE_KINDS = ("profile", "finetune", "ablation")
MAGNITUDE_LIMIT = 1e100  # no measurement comes near it; past it a variance overflows to infinity


def finite_number(value: Any, where: str, fix: str = "regenerate the record with conformer-bench") -> float:
    """``value`` as a float: a finite number within ±:data:`MAGNITUDE_LIMIT`, else a :class:`BenchError`
    naming ``where`` and ending in ``fix`` (null, NaN, infinity, a string or a boolean never pass)."""
    if not is_finite_number(value) or abs(value) > MAGNITUDE_LIMIT:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        raise BenchError(
            f"{where} is {_shown(value)}, not a {'finite ' if number else ''}number"
            f"{f' within ±{MAGNITUDE_LIMIT:g}' if number else ''}; {fix}"
        )
    return float(value)


def _shown(value: Any) -> str:
    text = "null" if value is None else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class BaselineMetric(Record):
    """One metric's raw samples and what they mean (``conformer_bench.report.metrics.Metric`` as written)."""

    unit: str
    direction: str
    kind: str
    timing: bool
    samples: list[float]
    timing_env: dict[str, Any] | None  # the fingerprint keys that decide whether two timings compare
    context: str | None  # what was measured (an ablation cell's config hash)

    def check(self, name: str) -> None:
        """Every field of the metric ``name`` usable by a report, else a one-line :class:`BenchError`."""
        where = f"metric {name!r}"
        if not isinstance(self.samples, list) or not self.samples:
            raise BenchError(f"{where} has no samples (a non-empty list of numbers); {BASELINE_FIX}")
        for i, sample in enumerate(self.samples):
            finite_number(sample, f"{where} sample {i}", BASELINE_FIX)
        if (
            self.direction not in DIRECTIONS
            or self.kind not in METRIC_KINDS
            or not isinstance(self.unit, str)
        ):
            raise BenchError(f"{where} has an unknown kind, direction or unit; {BASELINE_FIX}")
        if not isinstance(self.timing, bool) or not isinstance(self.timing_env, (dict, type(None))):
            raise BenchError(f"{where} has a malformed timing or timing_env; {BASELINE_FIX}")
        if not isinstance(self.context, (str, type(None))):
            raise BenchError(f"{where} has a context that is not a string; {BASELINE_FIX}")


@dataclass(frozen=True)
class BaselineEvent(Record):
    """One write or update of a baseline: when, from which results, at which commit, how many metrics."""

    action: str  # write | update
    at: str
    source: str  # written as "from"
    commit: str | None
    metrics: int
    tool_version: str

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        return {("from" if k == "source" else k): v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: Any) -> BaselineEvent:
        if not isinstance(data, dict):
            raise TypeError(f"a history entry must be a JSON object, not {type(data).__name__}")
        return super().from_dict({("source" if k == "from" else k): v for k, v in data.items()})


@dataclass
class BaselineRecord(SchemaRecord):
    """A ``conformer-bench.baseline`` record, written by ``baseline write`` and changed by ``baseline update``.

    ``revision`` is the commit the results were measured at (``ab`` times a newer revision against it);
    baselines written before it existed fall back to their environment's commit.
    """

    SCHEMA = BASELINE_SCHEMA
    VERSION = 1
    OPTIONAL = frozenset({"updated"})

    created: str | None
    tool_version: str
    source: str
    source_kind: str  # profile | finetune | ablation: the kind of results it was written from
    revision: str | None
    environment: dict[str, Any]
    metrics: dict[str, BaselineMetric]
    crashed: dict[str, str]  # name prefix -> one-line reason
    history: list[BaselineEvent] = field(default_factory=list)
    updated: str | None = None

    @classmethod
    def from_dict(cls, data: Any) -> BaselineRecord:
        """Read a baseline, checking every metric (a :class:`BenchError` naming the field and the fix)."""
        record = super().from_dict(data)
        record.check()
        return record

    def check(self) -> None:
        if self.source_kind not in SOURCE_KINDS or not isinstance(self.metrics, dict):
            raise BenchError(f"baseline is missing source_kind or metrics; {BASELINE_FIX}")
        if not isinstance(self.environment, (dict, type(None))):
            raise BenchError(f"environment is not an object; {BASELINE_FIX}")
        if not isinstance(self.crashed, (dict, type(None))):
            raise BenchError(f"crashed is not an object; {BASELINE_FIX}")
        for name, metric in self.metrics.items():
            metric.check(name)

    @property
    def measured_at(self) -> str | None:
        """The revision the results were measured at (older baselines: their environment's commit)."""
        if isinstance(self.revision, str) and self.revision:
            return self.revision
        return measured_revision(Environment.from_dict(self.environment) if self.environment else None)


def measured_revision(environment: Environment | None) -> str | None:
    """The commit that results were measured at, from their environment; None when unknown or when the
    tree had uncommitted changes (``...+dirty``: no revision holds that code)."""
    commit = environment.commit if environment is not None else None
    if not isinstance(commit, str) or not commit or commit.endswith("+dirty"):
        return None
    return commit
