"""``publish``: the history as a static site in one folder, opened from ``file://`` with no server.

- ``index.html``: the latest regressions (the newest step of each series, where it is a regression), with
  links to their commits and to their metric's page; then every metric and machine;
- ``<metric>.html``: one trend plot per machine (and experiment, and anchor for paired metrics): a line per
  cell over the revisions in history order, each point's interval as an error bar, the change points
  marked (a red triangle down for a regression, a green triangle up for an improvement), a hover with
  revision, subject, date and value, and a menu that shows one cell or all;
- ``plotly.min.js``: plotly's own JavaScript, once for every page (no network needed).

The pages are written by plotly (figures as JSON, drawn by plotly.js); this module writes no JavaScript.
"""

from __future__ import annotations

import html
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..files import atomic_write_text
from .changes import ChangePoint, SeriesSteps
from .render import Gate, p_text, size_text
from .series import Series

PLOTLY_JS = "plotly.min.js"
REGRESSION_COLOR = "#d62728"
IMPROVEMENT_COLOR = "#2ca02c"

_STYLE = """
body { font-family: DejaVu Sans, Helvetica, Arial, sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; margin: 8px 0 24px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; font-size: 14px; }
th { background: #f3f3f3; }
td.num { text-align: right; }
.regression { color: #d62728; font-weight: bold; }
.muted { color: #666; font-size: 13px; }
code { font-size: 13px; }
"""


@dataclass(frozen=True)
class Site:
    """What was written: the folder, its pages and how many plots and marked steps they hold."""

    folder: Path
    pages: list[Path]
    plots: int
    marked: int


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "metric"


def commit_link(sha: str, template: str | None) -> str:
    short = html.escape(sha[:12])
    if not template:
        return f"<code>{short}</code>"
    return f'<a href="{html.escape(template.format(sha=sha))}"><code>{short}</code></a>'


def _page(title: str, body: str, scripts: bool) -> str:
    script = f'<script src="{PLOTLY_JS}" charset="utf-8"></script>' if scripts else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style>{script}</head>"
        f"<body>{body}</body></html>\n"
    )


# --- the trend plots --------------------------------------------------------------------------------------------


def _hover(series: Series) -> list[str]:
    return [
        f"<b>{html.escape(series.key.cell or series.key.metric)}</b><br>{p.revision.short} "
        f"{html.escape(p.revision.subject[:70])}<br>{p.revision.commit_time or ''}<br>"
        f"{_value(p.value, series.unit)}"
        + (
            f" [{_value(p.low, series.unit)}, {_value(p.high, series.unit)}]"
            if p.low is not None and p.high is not None
            else ""
        )
        + (f"<br>median of {p.runs} runs" if p.runs > 1 else "")
        for p in series.points
    ]


def _value(value: float, unit: str) -> str:
    return f"{value:.4g} {html.escape(unit)}"


def _traces(found: SeriesSteps) -> list[dict[str, Any]]:
    """A cell's line (with its points' intervals) and its change points."""
    series = found.series
    name = series.key.cell or series.key.metric
    xs = [p.revision.short for p in series.points]
    ys = [p.value for p in series.points]
    line: dict[str, Any] = {
        "type": "scatter", "mode": "lines+markers", "name": name, "x": xs, "y": ys, "meta": name,
        "hovertext": _hover(series), "hoverinfo": "text",
    }  # fmt: skip
    if any(p.low is not None for p in series.points):
        line["error_y"] = {
            "type": "data",
            "symmetric": False,
            "array": [(p.high - p.value) if p.high is not None else 0 for p in series.points],
            "arrayminus": [(p.value - p.low) if p.low is not None else 0 for p in series.points],
            "thickness": 1,
        }
    cps = found.change_points
    marks = {
        "type": "scatter", "mode": "markers", "name": f"{name}: change points", "meta": name,
        "x": [cp.revision.short for cp in cps], "y": [ys[cp.step.index] for cp in cps],
        "marker": {
            "symbol": ["triangle-down" if cp.regression else "triangle-up" for cp in cps], "size": 16,
            "color": [REGRESSION_COLOR if cp.regression else IMPROVEMENT_COLOR for cp in cps],
            "line": {"width": 1, "color": "#000"},
        },
        "hovertext": [_step_hover(name, cp) for cp in cps], "hoverinfo": "text", "showlegend": bool(cps),
    }  # fmt: skip
    return [line, marks]


def _step_hover(name: str, cp: ChangePoint) -> str:
    kind = "regression" if cp.regression else "improvement"
    return (
        f"<b>{html.escape(name)}: {kind}</b><br>step in {cp.before.short}..{cp.revision.short}<br>"
        f"{size_text(cp)}, p {p_text(cp.step.p_value)}<br>{html.escape(cp.revision.subject[:70])}"
    )


def figure(group: list[SeriesSteps], title: str) -> Any:
    """One plot: every cell of a metric on one machine, experiment and anchor; a menu picks the cells."""
    import plotly.graph_objects as go

    traces = [t for found in group for t in _traces(found)]
    order = sorted({p.revision for f in group for p in f.series.points}, key=lambda r: r.position)
    cells = [f.series.key.cell or f.series.key.metric for f in group]
    buttons = [{"label": "all cells", "method": "restyle", "args": [{"visible": [True] * len(traces)}]}]
    buttons += [
        {"label": cell, "method": "restyle", "args": [{"visible": [t["meta"] == cell for t in traces]}]}
        for cell in cells
    ]
    fig = go.Figure(data=traces)
    fig.update_layout(
        title={"text": html.escape(title), "font": {"size": 14}, "x": 0.0, "xanchor": "left", "y": 0.98},
        xaxis={"title": "revision (history order)", "type": "category", "categoryorder": "array",
               "categoryarray": [r.short for r in order]},
        yaxis={"title": html.escape(group[0].series.unit)},
        height=500, margin={"t": 110}, hovermode="closest",
        updatemenus=[{"buttons": buttons, "direction": "down", "x": 1.0, "xanchor": "right", "y": 1.16,
                      "yanchor": "bottom", "showactive": True}],
    )  # fmt: skip
    return fig


def _group_title(series: Series) -> str:
    key = series.key
    title = f"{key.metric} — {series.machine.label} [{key.machine}]"
    if key.experiment:
        title += f" — {key.experiment}"
    if series.anchor is not None:
        title += f" — relative to {series.anchor.short}"
    return title


def metric_page(metric: str, found: list[SeriesSteps]) -> tuple[str, int, int]:
    """The page of one metric: its plots, and how many plots and marked steps it holds."""
    groups: dict[tuple[str, str, str | None], list[SeriesSteps]] = defaultdict(list)
    for f in found:
        groups[(f.series.key.machine, f.series.key.experiment, f.series.key.anchor)].append(f)
    parts = [f'<p><a href="index.html">&larr; all metrics</a></p><h1><code>{html.escape(metric)}</code></h1>']
    marked = 0
    for i, group in enumerate(groups.values()):
        fig = figure(group, _group_title(group[0].series))
        parts.append(fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"plot-{i}",
                                 config={"displaylogo": False, "responsive": True}))  # fmt: skip
        marked += sum(len(f.change_points) for f in group)
    return _page(f"{metric} — conformer-bench history", "\n".join(parts), scripts=True), len(groups), marked


# --- the front page ----------------------------------------------------------------------------------------------


def _regressions_table(found: list[SeriesSteps], commit_url: str | None) -> str:
    latest = [f for f in found if f.newest is not None and f.newest.regression]
    latest.sort(
        key=lambda f: (
            -(f.newest.revision.position if f.newest else 0),
            f.newest.step.ratio if f.newest else 1,
        )
    )
    if not latest:
        return "<p>No series ends in a regression.</p>"
    rows = []
    for f in latest:
        cp = f.newest
        assert cp is not None
        key = f.series.key
        rows.append(
            f'<tr><td><a href="{slug(key.metric)}.html"><code>{html.escape(key.metric)}</code></a></td>'
            f"<td>{html.escape(key.cell)}</td><td>{html.escape(f.series.machine.label)} [{key.machine}]</td>"
            f"<td>{commit_link(cp.before.sha, commit_url)}..{commit_link(cp.revision.sha, commit_url)}"
            f'<br><span class="muted">{html.escape(cp.revision.subject[:80])}</span></td>'
            f'<td class="num regression">{html.escape(size_text(cp))}</td>'
            f'<td class="num">{p_text(cp.step.p_value)}</td><td>{html.escape(cp.revision.commit_time or "")}</td></tr>'
        )
    head = "<tr><th>metric</th><th>cell</th><th>machine</th><th>step (before..at)</th><th>change [95 % CI]</th><th>p</th><th>committed</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def _metrics_table(by_metric: dict[str, list[SeriesSteps]]) -> str:
    rows = []
    for metric, found in sorted(by_metric.items()):
        steps = sum(len(f.change_points) for f in found)
        machines = len({f.series.key.machine for f in found})
        rows.append(
            f'<tr><td><a href="{slug(metric)}.html"><code>{html.escape(metric)}</code></a></td>'
            f'<td>{html.escape(found[0].series.unit)}</td><td class="num">{len(found)}</td>'
            f'<td class="num">{machines}</td><td class="num">{steps}</td></tr>'
        )
    head = "<tr><th>metric</th><th>unit</th><th>series</th><th>machines</th><th>change points</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def index_page(
    found: list[SeriesSteps],
    by_metric: dict[str, list[SeriesSteps]],
    commit_url: str | None,
    title: str,
    gate: Gate,
) -> str:
    machines = {f.series.key.machine: f.series.machine.label for f in found}
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="muted">{len(found)} series on {len(machines)} machine(s); gated metrics: '
        f"{html.escape(', '.join(gate.patterns))}. A series is one cell's metric on one machine; paired metrics are "
        "throughput ratios over the anchor revision they were timed against.</p>",
        "<h2>Latest regressions</h2>",
        _regressions_table(found, commit_url),
        "<h2>Metrics</h2>",
        _metrics_table(by_metric),
        "<h2>Machines</h2><ul>",
        *(f"<li><code>{fp}</code>: {html.escape(label)}</li>" for fp, label in sorted(machines.items())),
        "</ul>",
    ]
    return _page(title, "\n".join(body), scripts=False)


def publish(
    found: list[SeriesSteps], folder: Path, *, commit_url: str | None, title: str, gate: Gate
) -> Site:
    """Write the site into ``folder`` (each file atomically; other files there are left alone)."""
    from plotly.offline import get_plotlyjs

    by_metric: dict[str, list[SeriesSteps]] = defaultdict(list)
    for f in found:
        by_metric[f.series.key.metric].append(f)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / PLOTLY_JS, get_plotlyjs())
    pages, plots, marked = [], 0, 0
    for metric, group in sorted(by_metric.items()):
        text, n_plots, n_marked = metric_page(metric, group)
        pages.append(atomic_write_text(folder / f"{slug(metric)}.html", text))
        plots, marked = plots + n_plots, marked + n_marked
    pages.insert(
        0, atomic_write_text(folder / "index.html", index_page(found, by_metric, commit_url, title, gate))
    )
    return Site(folder, pages, plots, marked)
