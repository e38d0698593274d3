"""The front of a search: typed records of its trials, the Pareto front and the base it is compared with,
and their writers (JSON record, CSV, Markdown, a rich table, a figure, and an experiment file for ablate).

A trial is on the front when it completed, keeps every constraint and no other such trial is at least as
good on every objective and better on one. Numbers are rounded here only.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conformer import get_config, list_models

from ..ablate.dry_run import finetune_budget
from ..ablate.experiment import effective_config
from ..ablate.summary import changes_text
from ..files import atomic_write_text, dumps_json
from ..records import Environment, FinetuneSettings, SearchRecord, TrialRecord
from ..tables import Column, Table, fmt_giga, fmt_int, fmt_mib
from .metrics import METRICS, Metric
from .spec import SearchSpec, decode, trial_label
from .study import CHANGES, IMG_SIZE, INTERRUPTED, MEASURES, REASON, RETRY_OF, ROLE

if TYPE_CHECKING:
    import optuna

    from .spec import Point
    from .study import TrialBook

SHOWN = ("params", "macs", "top1", "infer_img_per_s", "infer_img_per_ref_gflop")  # beside the objectives


def metric_text(metric: Metric, value: float | None) -> str:
    """``value`` rounded for a table, in the metric's unit."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if metric.name == "params":
        return fmt_int(int(value))
    if metric.name in ("macs", "fvcore_flops"):
        return fmt_giga(value, 3)
    if metric.name.endswith("_peak_memory"):
        return fmt_mib(value)
    if metric.name.startswith("top1"):
        return f"{value:.2f} %"
    if metric.name.endswith("_ref_gflop"):
        return f"{value:,.3f}"
    return f"{value:,.1f}"


# --- building the record ------------------------------------------------------------------------------------


def trial_records(
    spec: SearchSpec, trials: list[optuna.trial.FrozenTrial], book: TrialBook
) -> list[TrialRecord]:
    stale = {t.number for t in book.stale}
    out = []
    for t in trials:
        state = t.state.name.lower()
        if state == "fail":
            state = "interrupted" if t.user_attrs.get(INTERRUPTED) else "failed"
        if t.number in stale:
            state = "stale"
        values = None
        if state == "complete" and t.values is not None:
            values = {o.metric.name: float(v) for o, v in zip(spec.objectives, t.values, strict=True)}
        out.append(
            TrialRecord(
                number=t.number,
                label=trial_label(t.number),
                state=state,
                reason=t.user_attrs.get(REASON),
                role=t.user_attrs.get(ROLE),
                params={k: decode(k, v) for k, v in t.params.items()},
                changes=dict(t.user_attrs.get(CHANGES) or {}),
                img_size=t.user_attrs.get(IMG_SIZE),
                values=values,
                measures=dict(t.user_attrs.get(MEASURES) or {}),
                constraints={k: float(v) for k, v in t.constraints.items()},
                started=t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else None,
                finished=t.datetime_complete.isoformat(timespec="seconds") if t.datetime_complete else None,
                retry_of=t.user_attrs.get(RETRY_OF),
            )
        )
    return out


def dominates(a: dict[str, float], b: dict[str, float], spec: SearchSpec) -> bool:
    """``a`` is at least as good as ``b`` on every objective and better on one."""
    better = False
    for o in spec.objectives:
        x, y = a[o.metric.name], b[o.metric.name]
        if o.better(y, x):
            return False
        better = better or o.better(x, y)
    return better


def search_record(
    spec: SearchSpec, study: optuna.Study, book: TrialBook, environment: dict[str, Any]
) -> SearchRecord:
    """The search's record from its study: every trial, the front, and the trials that dominate the base."""
    trials = trial_records(spec, study.get_trials(deepcopy=False), book)
    scored = {t.number: t.values for t in trials if t.feasible and t.values is not None}
    front = [
        n for n, v in scored.items() if not any(dominates(w, v, spec) for m, w in scored.items() if m != n)
    ]
    first = spec.objectives[0]
    front.sort(key=lambda n: scored[n][first.metric.name] * (-1 if first.maximize else 1))
    base = next((t for t in trials if t.role == "base" and t.state == "complete" and t.values), None)
    base_values = base.values if base is not None else None
    beating = [n for n in front if base_values is not None and dominates(scored[n], base_values, spec)]
    on_front = set(front)
    trials = [
        dataclasses.replace(t, on_front=t.number in on_front, dominates_base=t.number in beating)
        for t in trials
    ]
    return SearchRecord(
        name=spec.name,
        settings=spec.summary(),
        environment=environment,
        counts=book.counts(),
        base=base.number if base else None,
        front=front,
        dominating_base=beating,
        trials=trials,
    )


# --- tables ---------------------------------------------------------------------------------------------


def _shown_metrics(spec: SearchSpec, trials: list[TrialRecord]) -> list[Metric]:
    """The objectives, the constrained metrics, then those of :data:`SHOWN` that some trial carries."""
    names = [o.metric.name for o in spec.objectives]
    names += [c.metric.name for c in spec.constraints if c.metric.name not in names]
    names += [n for n in SHOWN if n not in names and any(n in t.measures for t in trials)]
    return [METRICS[n] for n in names]


def _changes_text(changes: dict[str, Any]) -> str:
    return changes_text(changes) or "(base config)"


def _metric_column(metric: Metric, title: str) -> Column[TrialRecord]:
    return Column(title, lambda t: metric_text(metric, t.measures.get(metric.name)))


def front_table(spec: SearchSpec, record: SearchRecord, trials: list[TrialRecord]) -> Table[TrialRecord]:
    """Rounded text: trial, changes, each shown metric (objectives marked max or min), and how it stands
    against the base."""
    objectives = {o.metric.name: o for o in spec.objectives}
    metrics = []
    for m in _shown_metrics(spec, record.trials):
        o = objectives.get(m.name)
        metrics.append(_metric_column(m, m.title + (f" ({'max' if o.maximize else 'min'})" if o else "")))

    def standing(t: TrialRecord) -> str:
        return "base" if t.number == record.base else ("dominates base" if t.dominates_base else "")

    columns = [
        Column[TrialRecord]("trial", lambda t: str(t.number)),
        Column[TrialRecord]("changes", lambda t: _changes_text(t.changes)),
        *metrics,
        Column[TrialRecord]("vs base", standing),
    ]
    return Table(columns, trials)


def front_rows(spec: SearchSpec, record: SearchRecord) -> list[TrialRecord]:
    """The front's trials, then the base when it is not on the front (to compare)."""
    rows = [record.trial(n) for n in record.front]
    if record.base is not None and record.base not in record.front:
        rows.append(record.trial(record.base))
    return rows


def front_markdown(spec: SearchSpec, record: SearchRecord) -> str:
    complete = record.counts.get("complete", 0)
    lines = [f"### {record.name}: Pareto front ({len(record.front)} of {complete} complete trials)", ""]
    lines.append(front_table(spec, record, front_rows(spec, record)).to_markdown())
    lines += [f"- {line}" for line in describe(spec, record)]
    return "\n".join(lines) + "\n"


def _measure_column(name: str) -> Column[TrialRecord]:
    return Column(name, lambda t: t.measures.get(name))


def _excess_column(text: str) -> Column[TrialRecord]:
    return Column(f"excess {text}", lambda t: t.constraints.get(text))


def tidy_trials(record: SearchRecord) -> tuple[list[Column[TrialRecord]], list[TrialRecord]]:
    """The columns of trials.csv and its rows (every trial, raw values): the search's table form."""
    constraints = list(dict.fromkeys(text for t in record.trials for text in t.constraints))
    columns = [
        Column[TrialRecord]("trial", lambda t: t.number),
        Column[TrialRecord]("state", lambda t: t.state),
        Column[TrialRecord]("on_front", lambda t: t.on_front),
        Column[TrialRecord]("dominates_base", lambda t: t.dominates_base),
        Column[TrialRecord]("base", lambda t: t.number == record.base),
        Column[TrialRecord]("changes", lambda t: _changes_text(t.changes)),
        Column[TrialRecord]("img_size", lambda t: t.img_size),
        *(_measure_column(name) for name in METRICS),
        *(_excess_column(text) for text in constraints),
        Column[TrialRecord]("reason", lambda t: t.reason),
    ]
    return columns, list(record.trials)


def trials_csv(record: SearchRecord) -> str:
    """Every trial, raw values (one row each)."""
    return Table(*tidy_trials(record)).to_csv()


def environment_of(record: SearchRecord) -> Environment | None:
    """Where the search's base trial ran (None before it ran)."""
    return Environment.from_dict(record.environment) if record.environment else None


def describe(spec: SearchSpec, record: SearchRecord) -> list[str]:
    """Lines saying what the numbers count and where they were measured."""
    env = environment_of(record)
    counts = record.counts
    lines = [
        f"{counts.get('complete', 0)} complete, {counts.get('failed', 0)} failed, {counts.get('pruned', 0)} pruned "
        f"(invalid, no-op, repeated or outside a cost constraint: nothing run), {counts.get('interrupted', 0)} "
        f"interrupted (queued again, not counted), {counts.get('running', 0) + counts.get('stale', 0)} running; "
        f"budget {spec.budget.describe()}; sampler {spec.sampler} (seed {spec.seed})",
    ]
    if env is not None:
        lines.append(
            f"measured on {env.device_name or env.cpu_model or env.device} "
            f"({env.device}), torch {env.torch}, {env.threads} thread(s), "
            f"{spec.plan.profile.get('precision', 'fp32')}, profile batch {spec.plan.profile.get('batch_size', 'default')}"
        )
    for o in spec.objectives:
        lines.append(f"{o.metric.name} ({o.direction}): {o.metric.counts}")
    for c in spec.constraints:
        lines.append(f"constraint {c.text}: {c.metric.counts}")
    if spec.plan.finetune and spec.base.finetune:
        ft = FinetuneSettings(**spec.base.finetune)
        lines.append(
            f"top-1: fine-tuned from scratch on {ft.dataset}, {finetune_budget(ft)}, batch {ft.batch_size}, "
            f"seeds {list(spec.base.seeds)} (mean)"
        )
    if record.base is not None:
        beat = ", ".join(str(n) for n in record.dominating_base) or "none"
        lines.append(f"base (trial {record.base}) dominated by front trial(s): {beat}")
    return lines


def rich_front_table(spec: SearchSpec, record: SearchRecord) -> Any:
    from rich.table import Table as RichTable

    front = front_table(spec, record, front_rows(spec, record))
    table = RichTable(title=f"{record.name}: Pareto front", title_justify="left")
    for i, column in enumerate(front.columns):
        table.add_column(column.header, justify="left" if i == 1 else "right", overflow="fold")
    for row in front.texts():
        table.add_row(*row)
    return table


# --- the figure -----------------------------------------------------------------------------------------


def front_figure_spec(spec: SearchSpec, record: SearchRecord) -> Any | None:
    """All complete trials on the first two objectives, the front in red, the base as a star and trials that
    are a released preset named in the key; None with fewer than two objectives."""
    from ..ablate.plots import Point as PlotPoint
    from ..ablate.plots import ScatterSpec, Series

    if len(spec.objectives) < 2:
        return None
    y_obj, x_obj = spec.objectives[0], spec.objectives[1]
    done = [t for t in record.trials if t.state == "complete" and t.values]
    presets = preset_names(spec, done)
    key_of = {
        t.number: f"trial {t.number}: {_changes_text(t.changes)}"
        + (f" = {presets[t.number]}" if t.number in presets else "")
        for t in done
    }

    def point(t: TrialRecord) -> PlotPoint:
        assert t.values is not None
        return PlotPoint(
            t.number,
            key_of[t.number],
            t.values[x_obj.metric.name],
            t.values[y_obj.metric.name],
            t.number == record.base,
        )

    groups = (
        ("trial", "o", "tab:gray", [t for t in done if not t.on_front and t.feasible]),
        ("outside a constraint", "x", "tab:orange", [t for t in done if not t.feasible]),
        ("Pareto front", "o", "tab:red", [t for t in done if t.on_front]),
    )
    series = tuple(
        Series(name, marker, color, tuple(point(t) for t in ts)) for name, marker, color, ts in groups if ts
    )
    base = record.trial(record.base) if record.base is not None else None
    env = environment_of(record)
    where = (env.device_name or env.device or "") if env is not None else ""
    return ScatterSpec(
        file="front",
        title=f"{record.name}: {y_obj.metric.name} ({y_obj.direction}) vs {x_obj.metric.name} ({x_obj.direction})",
        subtitle=f"{where}; {len(done)} complete trials, front of {len(record.front)}",
        xlabel=f"{x_obj.metric.title}: {x_obj.metric.counts}"[:110],
        ylabel=y_obj.metric.title,
        series=series,
        key=tuple(sorted((t.number, key_of[t.number]) for t in done)),
        base_label=key_of[base.number] if base is not None and base.number in key_of else None,
    )


def preset_names(spec: SearchSpec, trials: list[TrialRecord]) -> dict[int, str]:
    """Trials whose config is a registered preset's (at the trial's image size), by number."""
    found = {}
    for t in trials:
        point = spec.point(t.params)
        for name in list_models():
            if effective_config(get_config(name, img_size=point.img_size)) == effective_config(point.config):
                found[t.number] = name
    return found


# --- the front as an experiment file ------------------------------------------------------------------------


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} in TOML")


def _table(name: str, values: dict[str, Any]) -> list[str]:
    return [f"[{name}]", *(f"{k} = {_toml(v)}" for k, v in values.items() if v is not None), ""]


def front_experiment(spec: SearchSpec, record: SearchRecord, output_dir: Path) -> str:
    """An experiment file whose base is the search's base and whose cells are the front's members, with the
    search's run settings and ``confirm_seeds``: ``ablate FILE`` reruns the front to confirm it."""

    def overrides(point: Point) -> dict[str, Any]:
        preset = get_config(point.config.name).to_dict()
        fields = point.config.to_dict()
        return {k: v for k, v in fields.items() if k not in ("name", "from_paper") and v != preset[k]}

    base_point = spec.point(spec.base_values())
    profile = {k: v for k, v in spec.plan.profile.items() if k != "img_size"}
    profile["img_size"] = base_point.img_size
    lines = [
        f"# The Pareto front of the search {spec.name} ({spec.experiment.path}), written by conformer-bench search.",
        f"# Rerun it with more seeds to confirm the front: conformer-bench ablate {output_dir / 'front.toml'}",
        f'name = "{spec.experiment.name}-front"',
        f'description = "Pareto front of {spec.name}: trials {", ".join(str(n) for n in record.front)}"',
        f"output_dir = {_toml(str(output_dir / 'confirm'))}",
        "",
        *_table("base", {"label": "base", "variant": base_point.config.name, **overrides(base_point)}),
        *_table("profile", profile),
    ]
    if spec.plan.finetune and spec.base.finetune is not None:
        ft = {k: v for k, v in spec.base.finetune.items() if k != "img_size"}
        ft["img_size"] = base_point.img_size
        lines += _table(
            "finetune", {"run": True, **ft, "seeds": list(spec.confirm_seeds), "jobs": spec.base.seed_jobs}
        )
    base_key = base_point.key()
    for number in record.front:
        t = record.trial(number)
        point = spec.point(t.params)
        if point.key() == base_key:
            continue  # the base cell itself
        cell = {"label": t.label, "variant": point.config.name, **overrides(point)}
        lines += ["[[cells]]", *(f"{k} = {_toml(v)}" for k, v in cell.items()), ""]
        if point.img_size != base_point.img_size:
            lines += _table("cells.profile", {"img_size": point.img_size})
            if spec.plan.finetune:
                lines += _table("cells.finetune", {"img_size": point.img_size})
    return "\n".join(lines)


# --- writing everything --------------------------------------------------------------------------------------


def write_outputs(spec: SearchSpec, record: SearchRecord) -> dict[str, Path]:
    """search.json, trials.csv, front.md, front.toml and figures/front.png in the output folder."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from ..ablate.plots import _save, draw_scatter

    out = spec.output_dir
    paths = {
        "record": atomic_write_text(out / "search.json", dumps_json(record.to_dict())),
        "trials": atomic_write_text(out / "trials.csv", trials_csv(record)),
        "front table": atomic_write_text(out / "front.md", front_markdown(spec, record)),
        "front experiment": atomic_write_text(out / "front.toml", front_experiment(spec, record, out)),
    }
    figure = front_figure_spec(spec, record)
    if figure is not None and any(s.points for s in figure.series):
        fig = draw_scatter(figure)
        paths["figure"] = _save(fig, out / "figures" / "front.png")
        plt.close(fig)
    return paths
