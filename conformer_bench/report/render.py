"""Markdown (for a pull-request comment) and the JSON verdict of a :class:`Comparison`.

Formatting is fixed (no timestamps of its own, sorted rows, fixed decimals) so the output can be
snapshot-tested and diffed between runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..records import Environment
from ..records.report import ReportRecord, ReportRow, ReportSide
from ..tables import Column, Table
from .compare import STATUS_ORDER, Comparison, Row
from .metrics import MetricSet

REPORT_SCHEMA_VERSION = ReportRecord.VERSION
ENV_FOOTER_KEYS = (
    "device", "device_name", "cpu_model", "cpu_vendor", "cpu_capability", "cpu_flags", "onednn_version",
    "mkl_version", "kernel_overrides", "threads", "torch", "cuda", "precision", "batch_size", "img_size",
    "commit", "created",
)  # fmt: skip
_DIRECTION = {"higher": "↑ higher", "lower": "↓ lower", "equal": "= equal"}
_SIGN = {"higher": "-", "lower": "+", "equal": "±"}


def format_value(value: float | None, unit: str) -> str:
    """A metric value with its unit; counts in full so that any change shows."""
    if value is None:
        return "—"
    if unit in ("params",) or unit.startswith(("FLOPs", "MACs")):
        return f"{round(value):,}"
    if unit == "bytes":
        return f"{value / 2**20:,.2f} MiB"
    if unit == "img/s":
        return f"{value:,.1f} img/s"
    if unit == "%":
        return f"{value:.2f}%"
    if unit.startswith("instructions"):
        return f"{value:,.0f}"
    return f"{value:.4f}" + (f" {unit}" if unit else "")


def format_delta(row: Row) -> str:
    if row.kind == "paired":  # two revisions measured side by side: the ratio is the result
        return f"{row.delta_rel:+.2%}" if row.delta_rel is not None else "—"
    if row.delta is None:
        return "—"
    if row.kind == "exact":
        rel = f" ({row.delta_rel:+.3%})" if row.delta_rel is not None else ""
        return f"{round(row.delta):+,}{rel}"
    if row.kind == "accuracy":
        return f"{row.delta:+.2f} pp" if row.unit == "%" else f"{row.delta:+.4f}"
    return f"{row.delta_rel:+.1%}" if row.delta_rel is not None else f"{row.delta:+.4g}"


def format_significance(row: Row) -> str:
    parts: list[str] = []
    if row.p_value is not None:
        adjusted = f" (BH {row.p_adjusted:.2g})" if row.p_adjusted is not None else ""
        parts.append(f"p={row.p_value:.2g}{adjusted}")
    if row.ci is not None and row.spec is not None:
        parts.append(f"{row.spec.confidence:.0%} CI ×{row.ci[0]:.3f}–{row.ci[1]:.3f}")
    if row.kind == "accuracy" and row.status not in ("NEW", "MISSING", "CRASHED"):
        if row.sd_baseline is None or row.sd_current is None:
            parts.append("one seed")
        else:
            parts.append(f"sd {row.sd_baseline:.2f} → {row.sd_current:.2f}")
    if row.note:
        parts.append(row.note)
    return "; ".join(parts) if parts else "—"


def format_threshold(row: Row) -> str:
    spec = row.spec
    if spec is None:
        return "—"
    if spec.kind == "exact":
        return "any change"
    sign = _SIGN[spec.direction]
    parts = []
    for level in ("warn", "fail"):
        rel, absolute = getattr(spec, f"{level}_rel"), getattr(spec, f"{level}_abs")
        if rel is not None:
            parts.append(f"{level} {sign}{rel:.0%}")
        if absolute is not None:
            unit = " pp" if spec.unit == "%" else ""
            parts.append(f"{level} {sign}{absolute:g}{unit}")
    if spec.kind == "accuracy" and spec.sigma_k is not None:
        parts.append(f"or {spec.sigma_k:g}σ")
    if spec.kind == "accuracy" and spec.significance == "welch":
        parts.append(f"Welch α {spec.alpha:g}")
    if not spec.gate:
        parts.append("no gate")
    return " · ".join(parts) if parts else "none"


# The Markdown table of rows: each cell formatted for its metric's unit (so no column-wide digits).
COLUMNS: tuple[Column[Row], ...] = (
    Column("status", lambda r: f"**{r.status}**" if r.blocking else r.status),
    Column("metric", lambda r: f"`{r.metric}`"),
    Column("direction", lambda r: _DIRECTION.get(r.direction, r.direction)),
    Column("baseline", lambda r: format_value(r.baseline, r.unit)),
    Column("current", lambda r: format_value(r.current, r.unit)),
    Column("Δ", format_delta),
    Column("significance", format_significance),
    Column("n", lambda r: f"{r.n_baseline} → {r.n_current}"),
    Column("threshold", format_threshold),
)


def metric_table(rows: Sequence[Row]) -> list[str]:
    """The Markdown lines of a table of rows (``|`` in a cell escaped)."""
    return Table(COLUMNS, rows).to_markdown().splitlines()


# The rows of a report's JSON as a tidy table (`conformer_bench.to_frame` of report records): raw numbers.
ROW_COLUMNS: tuple[Column[ReportRow], ...] = (
    Column("metric", lambda r: r.metric),
    Column("status", lambda r: r.status),
    Column("blocking", lambda r: r.blocking),
    Column("kind", lambda r: r.kind),
    Column("direction", lambda r: r.direction),
    Column("unit", lambda r: r.unit),
    Column("baseline", lambda r: r.baseline),
    Column("current", lambda r: r.current),
    Column("delta", lambda r: r.delta),
    Column("delta_rel", lambda r: r.delta_rel),
    Column("n_baseline", lambda r: r.n_baseline),
    Column("n_current", lambda r: r.n_current),
    Column("p_value", lambda r: r.p_value),
    Column("p_adjusted", lambda r: r.p_adjusted),
    Column("ci_low", lambda r: r.ci[0] if r.ci else None),
    Column("ci_high", lambda r: r.ci[1] if r.ci else None),
    Column("note", lambda r: r.note),
)


def tidy(record: ReportRecord) -> tuple[Sequence[Column[ReportRow]], list[ReportRow]]:
    """A report's rows for :func:`conformer_bench.to_frame` (see ``conformer_bench.api.TIDY``)."""
    return ROW_COLUMNS, list(record.rows)


def headline(comparison: Comparison) -> str:
    """Verdict and counts, the first line of the Markdown."""
    counts = comparison.counts()
    parts = [f"{len(comparison.blocking)} blocking"]
    parts += [f"{counts[s]} {s.lower()}" for s in STATUS_ORDER if s != "OK" and counts[s]]
    parts.append(f"{counts['OK']} ok")
    return (
        f"**conformer-bench report: {comparison.verdict}** — "
        + ", ".join(parts)
        + f" ({len(comparison.rows)} metrics)"
    )


def _env_value(value: Any) -> str:
    if isinstance(value, list):
        return "+".join(str(v) for v in value)
    if isinstance(value, dict):
        return " ".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def describe_environment(env: Environment | None, keys: Sequence[str] = ENV_FOOTER_KEYS) -> str:
    """``key=value`` of each of ``keys`` the environment holds (device_name only where it is not the CPU's)."""
    if env is None:
        return "no environment recorded"
    shown = []
    for key in keys:
        value = getattr(env, key)
        if value not in (None, [], {}) and not (key == "device_name" and value == env.cpu_model):
            shown.append(f"{key}={_env_value(value)}")
    return ", ".join(shown) if shown else "no environment recorded"


def render_markdown(comparison: Comparison) -> str:
    lines = [headline(comparison), ""]
    attention = [r for r in comparison.rows if r.status != "OK"]
    unchanged = [r for r in comparison.rows if r.status == "OK"]
    if attention:
        lines += metric_table(attention)
        lines.append("")
    if unchanged:
        lines += [f"<details><summary>{len(unchanged)} unchanged metrics</summary>", ""]
        lines += metric_table(unchanged)
        lines += ["", "</details>", ""]
    notes = []
    if comparison.env_mismatch:
        diffs = ", ".join(f"{k} {b} → {c}" for k, (b, c) in comparison.env_mismatch.items())
        notes.append(
            f"- Environments differ ({diffs}): timing metrics are not comparable; exact metrics and accuracy are still checked."
        )
    if any(r.status == "CHANGED" for r in comparison.rows):
        notes.append(
            "- An exact metric changed. If intended, update the baseline on purpose: `conformer-bench baseline update --from <current> --baseline <baseline.json>`."
        )
    if comparison.stale:
        notes.append(
            f"- Baseline looks stale: {len(comparison.stale)} metric(s) improved past their threshold; update it with `conformer-bench baseline update`."
        )
    if notes:
        lines += [*notes, ""]
    lines += [
        "---",
        f"Baseline: `{Path(comparison.baseline.source).name}` ({comparison.baseline.source_kind}) — "
        + describe_environment(comparison.baseline.environment),
        "",
        f"Current: `{Path(comparison.current.source).name}` ({comparison.current.source_kind}) — "
        + describe_environment(comparison.current.environment),
        "",
        "Thresholds: "
        + ", ".join(Path(s).name if s != "shipped defaults" else s for s in comparison.threshold_sources),
    ]
    return "\n".join(lines) + "\n"


def _side(metrics: MetricSet) -> ReportSide:
    return ReportSide(metrics.source, metrics.source_kind, metrics.environment_json())


def report_record(comparison: Comparison, warn_only: bool = False) -> ReportRecord:
    """The machine-readable verdict written beside the Markdown."""
    return ReportRecord(
        verdict=comparison.verdict,
        exit_code=comparison.exit_code(warn_only),
        warn_only=warn_only,
        counts={k.lower().replace(" ", "_"): v for k, v in comparison.counts().items()},
        blocking=[r.metric for r in comparison.blocking],
        stale=[r.metric for r in comparison.stale],
        environment_mismatch={k: list(v) for k, v in comparison.env_mismatch.items()},
        baseline=_side(comparison.baseline),
        current=_side(comparison.current),
        thresholds=comparison.threshold_sources,
        rows=[r.to_record() for r in comparison.rows],
    )


def render_json(comparison: Comparison, warn_only: bool = False) -> dict[str, Any]:
    """:func:`report_record` as JSON."""
    return report_record(comparison, warn_only).to_dict()
