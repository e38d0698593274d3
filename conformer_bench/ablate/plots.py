"""Figures of an experiment (matplotlib, Agg backend, PNG): each title says what was measured, where and how.

In the scatter plots every cell is a small number beside its point and a key beside the axes maps numbers
to labels, so labels never pile on each other; the base cell is a star, named in the legend.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..files import atomic_write_bytes
from ..params import COMPONENTS

if TYPE_CHECKING:
    from ..records import CellRecord, Environment
    from .rows import CellRow

COMPONENT_LABELS = {
    "stem": "stem",
    "cnn": "CNN branch",
    "transformer": "transformer branch",
    "fcu": "FCU",
    "heads": "heads",
}
BASE_MARKER = "*"
BASE_SIZE = 220.0
POINT_SIZE = 36.0


@dataclass(frozen=True)
class Point:
    """One cell in a scatter plot: its number in the key, its label, where it lies."""

    number: int
    label: str
    x: float
    y: float
    is_base: bool = False
    yerr: float = 0.0


@dataclass(frozen=True)
class Series:
    """Points drawn alike, with one legend entry."""

    name: str
    marker: str
    color: str
    points: tuple[Point, ...]


@dataclass(frozen=True)
class ScatterSpec:
    """Everything a scatter figure shows, before any drawing: what the tests and :func:`draw_scatter` read."""

    file: str  # PNG name without the suffix
    title: str
    subtitle: str
    xlabel: str
    ylabel: str
    series: tuple[Series, ...]
    key: tuple[tuple[int, str], ...]  # (number, label), in number order
    base_label: str | None  # None: no base cell among the points
    front: tuple[tuple[float, float], ...] = ()  # Pareto front, by increasing x


# --- what the records say about where and how they were measured ------------------------------------------


def _joined(values: Iterable[Any]) -> str:
    return "/".join(sorted({str(v) for v in values if v is not None})) or "n/a"


def _img_sizes(records: list[CellRecord]) -> str:
    return _joined(r.profile.flops.img_size for r in records if r.profile is not None and r.profile.flops)


def _environments(records: list[CellRecord]) -> list[Environment]:
    """The environment of each record that has one (its profile's, else the record's own)."""
    out = []
    for r in records:
        env = (r.profile.environment if r.profile is not None else None) or r.environment
        if env is not None:
            out.append(env)
    return out


def machine_line(records: list[CellRecord]) -> str:
    """'<CPU or GPU model> (<device>), <precision>, <n> threads' from the records' environments."""
    envs = _environments(records)
    model = _joined(e.device_name or e.cpu_model for e in envs)
    device = _joined(e.device for e in envs)
    precisions = [r.profile.settings.precision if r.profile else None for r in records]
    precision = _joined(precisions if any(precisions) else [e.precision for e in envs])
    threads = _joined(e.threads for e in envs)
    return f"{model} ({device}), {precision}, {threads} thread" + ("" if threads == "1" else "s")


def _finetune_line(records: list[CellRecord]) -> str:
    """'fine-tuned on digits, 60 steps, 2 seed(s)' from the fine-tuning records."""
    runs = [f for r in records for f in (r.finetune or []) if f is not None]
    if not runs:
        return ""
    sources = "/".join(sorted({str(f.data.source if f.data is not None else None) for f in runs}))
    hypers = [f.hyper for f in runs]
    steps = {h.steps if h is not None else None for h in hypers}
    epochs = {h.epochs if h is not None else None for h in hypers}
    seeds = {h.seed if h is not None else None for h in hypers}
    budget = (
        f"{'/'.join(str(s) for s in sorted(steps, key=str))} steps"
        if any(steps)
        else f"{'/'.join(str(e) for e in sorted(epochs, key=str))} epochs"
    )
    return f"fine-tuned on {sources}, {budget}, {len(seeds)} seed(s)"


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats (lower cost and higher accuracy), sorted by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    best = -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


# --- the plot specs ------------------------------------------------------------------------------------


def _ok_rows(rows: list[CellRow]) -> list[CellRow]:
    return [r for r in rows if r.ok]


def _base_label(rows: list[CellRow]) -> str | None:
    return next((r.label for r in rows if r.is_base), None)


def _there(value: float) -> bool:
    return not math.isnan(value)


def _points(
    rows: list[CellRow],
    x: Callable[[CellRow], float],
    y: Callable[[CellRow], float],
    numbers: dict[str, int],
    base: str | None,
    scale: float = 1.0,
    yerr: Callable[[CellRow], float] | None = None,
) -> tuple[Point, ...]:
    """The cells of ``rows`` as points (``x`` times ``scale``, ``y``, error bar ``yerr``)."""
    out = []
    for row in rows:
        err = yerr(row) if yerr is not None else math.nan
        label = row.label
        out.append(
            Point(
                numbers[label], label, x(row) * scale, y(row), label == base, 0.0 if math.isnan(err) else err
            )
        )
    return tuple(out)


def _key(series: tuple[Series, ...], base: str | None) -> tuple[tuple[int, str], ...]:
    shown = {p.number: p.label for s in series for p in s.points}
    return tuple((n, shown[n] + (" (base)" if shown[n] == base else "")) for n in sorted(shown))


def _gmacs(row: CellRow) -> float:
    return row.paper_macs / 1e9


def accuracy_spec(rows: list[CellRow], records: list[CellRecord], title: str) -> ScatterSpec | None:
    """Top-1 (mean ± std over seeds) against paper MACs, with the Pareto front; None without accuracy."""
    acc = [r for r in _ok_rows(rows) if _there(r.summed.mean) and _there(r.paper_macs)]
    if not acc:
        return None
    numbers = cell_numbers(rows)
    base = _base_label(rows)
    unit, scale = ("GMACs", 1.0) if max(_gmacs(r) for r in acc) >= 0.1 else ("MMACs", 1e3)
    points = _points(acc, _gmacs, lambda r: r.summed.mean, numbers, base, scale, lambda r: r.summed.std)
    front = pareto_front([(p.x, p.y) for p in points])
    series = (Series("cell (mean ± std)", "o", "tab:blue", points),)
    subtitle = "; ".join(s for s in (_finetune_line(records), machine_line(records)) if s)
    return ScatterSpec(
        file="accuracy_vs_gmacs",
        title=f"{title}: top-1 vs MACs",
        subtitle=subtitle,
        xlabel=f"{unit} per image (conv + linear + matmul, {_img_sizes(records)} px, batch 1)",
        ylabel="top-1 (%), argmax of summed head logits",
        series=series,
        key=_key(series, base),
        base_label=base if any(p.is_base for p in points) else None,
        front=tuple((points[i].x, points[i].y) for i in front),
    )


def throughput_spec(rows: list[CellRow], records: list[CellRecord], title: str) -> ScatterSpec | None:
    """Images/s (inference and training) against parameters; None when nothing was timed."""
    thr = [r for r in _ok_rows(rows) if _there(r.params)]
    numbers = cell_numbers(rows)
    base = _base_label(rows)
    series = []
    for mode, marker, color in (("infer", "o", "tab:green"), ("train", "s", "tab:orange")):
        sub = [r for r in thr if _there(r.phases[mode].img_s)]
        if not sub:
            continue
        batch = "/".join(sorted({str(r.phases[mode].batch) for r in sub}))
        points = _points(sub, lambda r: r.params / 1e6, _img_s(mode), numbers, base)
        series.append(Series(f"{mode} (batch {batch})", marker, color, points))
    if not series:
        return None
    return ScatterSpec(
        file="throughput_vs_params",
        title=f"{title}: throughput vs parameters",
        subtitle=f"{machine_line(records)}, {_img_sizes(records)} px",
        xlabel="parameters (millions)",
        ylabel="images/s (median over timed iterations)",
        series=tuple(series),
        key=_key(tuple(series), base),
        base_label=base if any(p.is_base for s in series for p in s.points) else None,
    )


def _img_s(mode: str) -> Callable[[CellRow], float]:
    return lambda r: r.phases[mode].img_s


def cell_numbers(rows: list[CellRow]) -> dict[str, int]:
    """Each cell's number in the figures' keys: 1, 2, ... in experiment order, the same in every figure."""
    return {row.label: n for n, row in enumerate(rows, start=1)}


# --- drawing ---------------------------------------------------------------------------------------------


def draw_scatter(spec: ScatterSpec) -> Any:
    """The matplotlib figure of ``spec``: numbered points, the base as a star, the key right of the axes."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(7, 5))
    handles: list[Any] = []
    for s in spec.series:
        xs, ys = [p.x for p in s.points], [p.y for p in s.points]
        if any(p.yerr for p in s.points):
            ax.errorbar(xs, ys, yerr=[p.yerr for p in s.points], fmt="none", ecolor="tab:gray", capsize=3)
        others = [p for p in s.points if not p.is_base]
        ax.scatter([p.x for p in others], [p.y for p in others], s=POINT_SIZE, marker=s.marker, color=s.color)
        handles.append(Line2D([], [], linestyle="", marker=s.marker, color=s.color, label=s.name))
        for p in s.points:
            if p.is_base:
                ax.scatter(
                    [p.x], [p.y], s=BASE_SIZE, marker=BASE_MARKER, color=s.color, edgecolors="black", zorder=3
                )
            ax.annotate(str(p.number), (p.x, p.y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    if spec.base_label is not None:
        base = Line2D(
            [], [], linestyle="", marker=BASE_MARKER, markersize=12, color="white", markeredgecolor="black"
        )
        base.set_label(f"base: {spec.base_label}")
        handles.append(base)
    if spec.front:
        fx, fy = zip(*spec.front, strict=True)
        (line,) = ax.plot(fx, fy, "-", color="tab:red", drawstyle="steps-post", label="Pareto front")
        ax.scatter(fx, fy, s=120, facecolors="none", edgecolors="tab:red")
        handles.append(line)
    ax.set_xlabel(spec.xlabel)
    ax.set_ylabel(spec.ylabel)
    ax.set_title(f"{spec.title}\n{spec.subtitle}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=8)
    key = "\n".join(f"{n:>2}  {label}" for n, label in spec.key)
    ax.text(1.02, 1.0, key, transform=ax.transAxes, ha="left", va="top", fontsize=7, family="monospace")
    return fig


def _components_figure(rows: list[CellRow], records: list[CellRecord], title: str) -> Any | None:
    """MACs by component, stacked per cell; the base cell's name in bold."""
    import matplotlib.pyplot as plt

    comp = [r for r in _ok_rows(rows) if _there(r.paper_macs)]
    if not comp:
        return None
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(comp) + 2), 5))
    bottom = [0.0] * len(comp)
    labels = [r.label for r in comp]
    unit, scale = ("GMACs", 1e9) if max(r.paper_macs for r in comp) >= 1e8 else ("MMACs", 1e6)
    for name in COMPONENTS:
        vals = [0.0 if math.isnan(r.macs[name]) else r.macs[name] / scale for r in comp]
        if not any(vals):
            continue
        ax.bar(labels, vals, bottom=bottom, label=COMPONENT_LABELS[name])
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_ylabel(f"{unit} per image (conv + linear + matmul, {_img_sizes(records)} px)")
    ax.set_title(
        f"{title}: MACs by component (paper convention, counted by tracing, batch 1)\n{machine_line(records)}",
        fontsize=9,
    )
    _finish_per_cell_axes(ax, rows)
    return fig


def _time_components_figure(rows: list[CellRow], records: list[CellRecord], title: str) -> Any | None:
    """Measured inference time by component, stacked per cell (ms per batch), beside the MACs figure."""
    import matplotlib.pyplot as plt

    from ..breakdown import LABELS, ROWS

    timed = [r for r in _ok_rows(rows) if r.has_breakdown and _there(r.time_forward_ms)]
    if not timed:
        return None
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(timed) + 2), 5))
    labels = [r.label for r in timed]
    bottom = [0.0] * len(timed)
    for name in ROWS:
        vals = [0.0 if math.isnan(v) else max(v, 0.0) for v in (r.time_ms[name] for r in timed)]
        if not any(vals):
            continue
        ax.bar(labels, vals, bottom=bottom, label=LABELS[name])
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.scatter(labels, [r.time_forward_ms for r in timed], marker="_", s=400, color="black", zorder=3,
               label="uninstrumented forward")  # fmt: skip
    batch = _joined(r.profile.breakdown.batch_size for r in records if r.profile and r.profile.breakdown)
    ax.set_ylabel(f"ms per forward (batch {batch}, {_img_sizes(records)} px), median over interleaved rounds")
    ax.set_title(
        f"{title}: inference time by component (module hooks; 'the rest' = outside the components)\n"
        f"{machine_line(records)}",
        fontsize=9,
    )
    _finish_per_cell_axes(ax, rows)
    return fig


def _finish_per_cell_axes(ax: Any, rows: list[CellRow]) -> None:
    """Slanted cell labels (the base cell's in bold), a legend and a horizontal grid."""
    ax.tick_params(axis="x", labelrotation=60, labelsize=7)
    base = _base_label(rows)
    for tick in ax.get_xticklabels():
        if tick.get_text() == base:
            tick.set_fontweight("bold")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def write_figures(
    rows: list[CellRow], records: list[CellRecord], fig_dir: Path, title: str
) -> dict[str, Path]:
    """Accuracy vs GMACs (with the Pareto front), throughput vs params, MACs by component per cell, and
    measured time by component per cell where the profiles have a breakdown."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out: dict[str, Path] = {}
    if not rows:
        return out
    for spec in (accuracy_spec(rows, records, title), throughput_spec(rows, records, title)):
        if spec is not None:
            fig = draw_scatter(spec)
            out[spec.file] = _save(fig, fig_dir / f"{spec.file}.png")
            plt.close(fig)
    fig = _components_figure(rows, records, title)
    if fig is not None:
        out["flops_by_component"] = _save(fig, fig_dir / "flops_by_component.png")
        plt.close(fig)
    fig = _time_components_figure(rows, records, title)
    if fig is not None:
        out["time_by_component"] = _save(fig, fig_dir / "time_by_component.png")
        plt.close(fig)
    return out
