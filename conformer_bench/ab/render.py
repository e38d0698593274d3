"""Markdown and the JSON verdict of an A/B: the report's table, plus what the run could resolve."""

from __future__ import annotations

from typing import Any

from ..records import RevisionRef, Status
from ..report.compare import STATUS_ORDER
from ..report.render import ENV_FOOTER_KEYS, describe_environment, metric_table
from .compare import ABComparison

AB_REPORT_SCHEMA = "conformer-bench.ab-report"
AB_REPORT_SCHEMA_VERSION = 1
SCHEDULE_TEXT = {
    "same-core": "turns alternating on the same core(s)",
    "split-cores": "turns alternating, a core each",
    "duet": "both at once, a core each",
}


def headline(result: ABComparison) -> str:
    counts = result.comparison.counts()
    parts = [f"{len(result.comparison.blocking)} blocking"]
    parts += [f"{counts[s]} {s.lower()}" for s in STATUS_ORDER if s != "OK" and counts[s]]
    parts.append(f"{counts['OK']} ok")
    base, head = result.record.base, result.record.head
    return f"**conformer-bench ab: {result.verdict}** — {_rev(head)} vs {_rev(base)}: " + ", ".join(parts)


def _rev(revision: RevisionRef) -> str:
    return f"`{revision.sha[:12]}`" if revision.sha else f"`{revision.name}`"


def resolution_lines(result: ABComparison) -> list[str]:
    """What the run could have detected: the smallest throughput drop that would have failed."""
    if not result.estimates:
        return []
    worst = max(result.estimates, key=lambda e: e.detectable_drop)
    drops = sorted(e.detectable_drop for e in result.estimates)
    median = drops[len(drops) // 2]
    lines = [
        f"- Resolution: a cell fails when its whole {_confidence(result):.0%} interval lies past the threshold; "
        f"with the spread measured here that takes a throughput drop of {median:.1%} in a typical cell "
        f"(median of {len(drops)}), {worst.detectable_drop:.1%} in the noisiest ({worst.key.split('/')[0]})."
    ]
    for phase, estimate in sorted(result.geomean.items()):
        low, high = estimate.throughput_interval
        lines.append(
            f"- All {phase} cells together: head/base throughput ×{estimate.throughput_ratio:.3f} "
            f"({_confidence(result):.0%} interval ×{low:.3f}–{high:.3f})."
        )
    return lines


def _confidence(result: ABComparison) -> float:
    specs = [r.spec for r in result.comparison.rows if r.spec is not None]
    return specs[0].confidence if specs else 0.95


def _unmeasured_lines(result: ABComparison) -> list[str]:
    unsupported = [c for c in result.record.cells if c.status == Status.UNSUPPORTED]
    if not unsupported:
        return []
    names = ", ".join(f"{c.label}/{c.phase}" for c in unsupported)
    return [f"- Not measured on both revisions ({len(unsupported)}): {names}; see each row's note."]


CLOCK_TEXT = {
    "cpu": "the workers' CPU time (img/s are images per CPU-second)",
    "wall": "the wall clock",
    "auto": "the workers' CPU time for one-thread cells (images per CPU-second), the wall clock for the others",
}


def _how_lines(result: ABComparison) -> list[str]:
    settings, cells = result.record.settings, [c for c in result.record.cells if c.rounds]
    rounds = sorted(len(c.rounds) for c in cells)
    rounds_text = "no rounds"
    if rounds:
        rounds_text = (
            f"{rounds[0]} rounds a cell"
            if rounds[0] == rounds[-1]
            else f"{rounds[0]}–{rounds[-1]} rounds a cell"
        )
    epochs = max((len({r.epoch for r in c.rounds}) for c in cells), default=0)
    schedule = settings.schedule
    order = "" if schedule == "duet" else ", order drawn per round"
    experiment = result.record.experiment
    lines = [
        f"Measured: experiment `{experiment.name}` ({experiment.source}), phases "
        f"{'+'.join(settings.phases)}, {rounds_text} in {epochs} build(s) a side, "
        f"{SCHEDULE_TEXT.get(schedule, schedule)}{order}; gated on {CLOCK_TEXT.get(result.clock, result.clock)}; "
        f"one long-lived worker per revision, {result.record.wall_s:.0f} s in all.",
    ]
    faults = [r.base_page_faults + r.head_page_faults for c in cells for r in c.rounds]
    faulty = sum(1 for f in faults if f)
    if faults and faulty > len(faults) / 10:  # a stray first touch now and then is not worth a line
        lines.append(
            f"Page faults during turns: {faulty} of {len(faults)} rounds had some (most {max(faults)}); the "
            "workers' allocator is set to need none, so a step is mapping memory afresh."
        )
    return lines


# The footer's environment keys without the running tool's own checkout (the revisions are named above it).
_MACHINE_KEYS = tuple(k for k in ENV_FOOTER_KEYS if k not in ("commit", "created"))


def render_markdown(result: ABComparison) -> str:
    comparison = result.comparison
    lines = [headline(result), ""]
    attention = [r for r in comparison.rows if r.status != "OK"]
    unchanged = [r for r in comparison.rows if r.status == "OK"]
    if attention:
        lines += [*metric_table(attention), ""]
    if unchanged:
        lines += [f"<details><summary>{len(unchanged)} unchanged metrics</summary>", ""]
        lines += [*metric_table(unchanged), "", "</details>", ""]
    notes = resolution_lines(result) + _unmeasured_lines(result)
    if result.record.status != Status.OK:
        notes.append(f"- The run stopped early: {result.record.reason}")
    if notes:
        lines += [*notes, ""]
    base, head = result.record.base, result.record.head
    lines += [
        "---",
        f"Base: {_rev(base)} {base.subject or ''}".rstrip(),
        "",
        f"Head: {_rev(head)} {head.subject or ''}".rstrip(),
        "",
        *(line for how in _how_lines(result) for line in (how, "")),
        "Machine: " + describe_environment(result.record.typed_environment(), _MACHINE_KEYS),
        "",
        "Thresholds: "
        + ", ".join(
            s.rsplit("/", 1)[-1] if s != "shipped defaults" else s for s in comparison.threshold_sources
        ),
    ]
    return "\n".join(lines) + "\n"


def render_json(result: ABComparison, warn_only: bool = False) -> dict[str, Any]:
    comparison = result.comparison
    return {
        "schema": AB_REPORT_SCHEMA,
        "schema_version": AB_REPORT_SCHEMA_VERSION,
        "verdict": result.verdict,
        "exit_code": result.exit_code(warn_only),
        "warn_only": warn_only,
        "base": result.record.base.to_dict(),
        "head": result.record.head.to_dict(),
        "counts": {k.lower().replace(" ", "_"): v for k, v in comparison.counts().items()},
        "blocking": [r.metric for r in comparison.blocking],
        "detectable_drop": {e.key: e.detectable_drop for e in result.estimates},
        "geometric_mean": {
            phase: {"throughput_ratio": e.throughput_ratio, "interval": list(e.throughput_interval)}
            for phase, e in result.geomean.items()
        },
        "settings": result.record.settings.to_dict(),
        "environment": result.record.environment,
        "thresholds": comparison.threshold_sources,
        "rows": [r.to_dict() for r in comparison.rows],
    }
