"""Per-metric comparison rules read from TOML: the shipped defaults, optionally overridden by a user file."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from conformer.config import is_finite_number

from ..errors import BenchError
from ..files import loads_toml, read_input_text
from ..records.baseline import DIRECTIONS, METRIC_KINDS
from .metrics import Metric

THRESHOLDS_SCHEMA = "conformer-bench.thresholds"
SIGNIFICANCE = ("mann-whitney+bootstrap", "mann-whitney", "bootstrap", "welch", "none")
CORRECTIONS = ("benjamini-hochberg", "none")
STATISTICS = ("median", "mean")


@dataclass(frozen=True)
class MetricSpec:
    """How one metric is compared. Relative thresholds are fractions (0.15 = 15 %), absolute ones in the
    metric's unit (percentage points for accuracy). A threshold left unset is not checked."""

    kind: str = "noisy"
    direction: str = "higher"
    unit: str = ""
    statistic: str = "median"
    warn_rel: float | None = None
    fail_rel: float | None = None
    warn_abs: float | None = None
    fail_abs: float | None = None
    sigma_k: float | None = None
    sd_floor: float | None = None
    stale_rel: float | None = None
    stale_abs: float | None = None
    significance: str = "mann-whitney+bootstrap"
    correction: str = "none"
    alpha: float = 0.05
    confidence: float = 0.95
    unstable_iqr_over_median: float | None = None
    unstable_cv: float | None = None
    timing: bool = False
    gate: bool = True
    matched: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)
        }


_FLOAT_KEYS = {
    "warn_rel", "fail_rel", "warn_abs", "fail_abs", "sigma_k", "sd_floor", "stale_rel", "stale_abs",
    "alpha", "confidence", "unstable_iqr_over_median", "unstable_cv",
}  # fmt: skip
_CHOICES: dict[str, tuple[str, ...]] = {
    "kind": METRIC_KINDS,
    "direction": DIRECTIONS,
    "statistic": STATISTICS,
    "significance": SIGNIFICANCE,
    "correction": CORRECTIONS,
}
_SPEC_KEYS = {f.name for f in fields(MetricSpec)} - {"matched"}


def _validate(table: Any, where: str) -> dict[str, Any]:
    if not isinstance(table, Mapping):
        raise BenchError(f"{where} must be a table of settings; see conformer_bench/report/thresholds.toml")
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in _SPEC_KEYS:
            raise BenchError(f"{where}: unknown setting {key!r}; valid: {', '.join(sorted(_SPEC_KEYS))}")
        if key in _FLOAT_KEYS:
            if not is_finite_number(value) or value < 0:
                raise BenchError(f"{where}: {key} must be a finite number >= 0, got {value!r}")
            value = float(value)
            if key in ("alpha", "confidence") and not 0 < value < 1:
                raise BenchError(f"{where}: {key} must lie between 0 and 1, got {value!r}")
        elif key in _CHOICES:
            if value not in _CHOICES[key]:
                raise BenchError(
                    f"{where}: {key} = {value!r} is not valid; use one of {', '.join(_CHOICES[key])}"
                )
        elif key in ("timing", "gate"):
            if not isinstance(value, bool):
                raise BenchError(f"{where}: {key} must be true or false, got {value!r}")
        elif not isinstance(value, str):
            raise BenchError(f"{where}: {key} must be a string, got {value!r}")
        out[key] = value
    for level in ("rel", "abs"):
        warn, fail = out.get(f"warn_{level}"), out.get(f"fail_{level}")
        if warn is not None and fail is not None and warn > fail:
            raise BenchError(
                f"{where}: warn_{level} ({warn}) is above fail_{level} ({fail}); warn must be the smaller"
            )
    return out


@dataclass
class Thresholds:
    """The defaults table plus ordered ``[metric."<glob>"]`` rules; later rules override earlier ones."""

    defaults: dict[str, Any] = field(default_factory=dict)
    rules: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    def merge(self, document: Mapping[str, Any], source: str) -> None:
        schema = document.get("schema", THRESHOLDS_SCHEMA)
        if schema != THRESHOLDS_SCHEMA:
            raise BenchError(
                f"{source}: schema is {schema!r}, expected {THRESHOLDS_SCHEMA!r} for a thresholds file"
            )
        unknown = set(document) - {"schema", "schema_version", "defaults", "metric"}
        if unknown:
            raise BenchError(
                f'{source}: unknown table(s) {", ".join(sorted(unknown))}; use [defaults] and [metric."<glob>"]'
            )
        self.defaults.update(_validate(document.get("defaults", {}), f"{source} [defaults]"))
        metric_tables = document.get("metric", {})
        if not isinstance(metric_tables, Mapping):
            raise BenchError(f'{source}: metric must hold tables such as [metric."throughput.*"]')
        for pattern, table in metric_tables.items():
            self.rules.append((pattern, _validate(table, f'{source} [metric."{pattern}"]')))
        self.sources.append(source)

    def spec_for(self, metric: Metric) -> MetricSpec:
        """The metric's own kind/direction/unit, then [defaults], then every matching rule in order."""
        settings: dict[str, Any] = {
            "kind": metric.kind,
            "direction": metric.direction,
            "unit": metric.unit,
            "timing": metric.timing,
            "statistic": "mean" if metric.kind == "accuracy" else "median",
        }
        settings.update(self.defaults)
        matched = []
        for pattern, table in self.rules:
            if fnmatch.fnmatchcase(metric.name, pattern) or fnmatch.fnmatchcase(metric.base_name, pattern):
                settings.update(table)
                matched.append(pattern)
        return replace(MetricSpec(**settings), matched=tuple(matched))


def _parse(text: str, source: str) -> dict[str, Any]:
    try:
        return loads_toml(text)
    except ValueError as exc:
        raise BenchError(f"{source} is not valid TOML ({exc}); fix the file") from None


def load_thresholds(path: str | Path | None = None) -> Thresholds:
    """The shipped defaults, with ``path`` (if given) merged on top, setting by setting."""
    thresholds = Thresholds()
    shipped = resources.files("conformer_bench").joinpath("report/thresholds.toml")
    thresholds.merge(
        _parse(shipped.read_text(encoding="utf-8"), "shipped thresholds.toml"), "shipped defaults"
    )
    if path is not None:
        text = read_input_text(
            path, "--thresholds", "pass a TOML file like conformer_bench/report/thresholds.toml"
        )
        thresholds.merge(_parse(text, str(path)), str(path))
    return thresholds
