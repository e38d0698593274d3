"""Markdown (for a pull-request comment) and the JSON verdict of a :class:`Comparison`.

Formatting is fixed (no timestamps of its own, sorted rows, fixed decimals) so the output can be
snapshot-tested and diffed between runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .compare import STATUS_ORDER, Comparison, Row

REPORT_SCHEMA = "conformer-bench.report"
REPORT_SCHEMA_VERSION = 1
COLUMNS = ("status", "metric", "direction", "baseline", "current", "Δ", "significance", "n", "threshold")
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


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def metric_table(rows: list[Row]) -> list[str]:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        status = f"**{row.status}**" if row.blocking else row.status
        cells = (
            status,
            f"`{row.metric}`",
            _DIRECTION.get(row.direction, row.direction),
            format_value(row.baseline, row.unit),
            format_value(row.current, row.unit),
            format_delta(row),
            format_significance(row),
            f"{row.n_baseline} → {row.n_current}",
            format_threshold(row),
        )
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


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


def describe_environment(env: dict[str, Any]) -> str:
    keys = [k for k in ENV_FOOTER_KEYS if not (k == "device_name" and env.get(k) == env.get("cpu_model"))]
    shown = [f"{k}={_env_value(env[k])}" for k in keys if env.get(k) not in (None, [], {})]
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


def render_json(comparison: Comparison, warn_only: bool = False) -> dict[str, Any]:
    """The machine-readable verdict written beside the Markdown."""
    return {
        "schema": REPORT_SCHEMA,
        "schema_version": REPORT_SCHEMA_VERSION,
        "verdict": comparison.verdict,
        "exit_code": comparison.exit_code(warn_only),
        "warn_only": warn_only,
        "counts": {k.lower().replace(" ", "_"): v for k, v in comparison.counts().items()},
        "blocking": [r.metric for r in comparison.blocking],
        "stale": [r.metric for r in comparison.stale],
        "environment_mismatch": {k: list(v) for k, v in comparison.env_mismatch.items()},
        "baseline": {
            "source": comparison.baseline.source,
            "source_kind": comparison.baseline.source_kind,
            "environment": comparison.baseline.environment,
        },
        "current": {
            "source": comparison.current.source,
            "source_kind": comparison.current.source_kind,
            "environment": comparison.current.environment,
        },
        "thresholds": comparison.threshold_sources,
        "rows": [r.to_dict() for r in comparison.rows],
    }
