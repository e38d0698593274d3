"""Ablation figures: numbered points with a key beside the axes, the base cell marked, the machine named."""

from __future__ import annotations

from pathlib import Path

from conformer_bench.ablate.plots import (
    BASE_MARKER,
    BASE_SIZE,
    accuracy_spec,
    draw_scatter,
    machine_line,
    throughput_spec,
    write_figures,
)
from conformer_bench.ablate.summary import CellRow, build_rows
from conformer_bench.records import CellRecord, FinetuneRecord, ProfileRecord

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LABELS = [
    "base",
    *(f"num_med_block={k}" for k in range(1, 6)),
    "cnn-only",
    "no-fcu",
    "fcu-up-only",
    "pos=none",
]


def _record(k: int, label: str) -> CellRecord:
    env = {"device": "cpu", "device_name": "Test CPU 9000", "threads": 4, "precision": "fp32"}
    # Cells 1-5 differ in one small setting: points that sit almost on top of each other.
    macs = 4.5e9 + (k % 6) * 1e6
    phase = {"batch_size": 8, "precision": "fp32", "path": "plain"}
    return CellRecord.from_dict(
        {
            "schema": CellRecord.SCHEMA,
            "schema_version": CellRecord.VERSION,
            "label": label,
            "status": "ok",
            "variant": {"name": "small", "label": label, "config": {"name": "small"}},
            "changes": {},
            "environment": env,
            "profile": {
                "schema": ProfileRecord.SCHEMA,
                "schema_version": ProfileRecord.VERSION,
                "environment": env,
                "settings": {"precision": "fp32"},
                "params": {"total": 24e6 + k * 1e4},
                "flops": {
                    "img_size": 224,
                    "paper_macs": macs,
                    "by_component": {
                        c: {"paper_macs": macs / 5} for c in ("stem", "cnn", "transformer", "fcu", "heads")
                    },
                },
                "throughput": {
                    "infer": {"img_per_s": 100.0 + k, **phase},
                    "train": {"img_per_s": 30.0 + k, **phase},
                },
                "memory": {},
            },
            "finetune": [
                {
                    "schema": FinetuneRecord.SCHEMA,
                    "schema_version": FinetuneRecord.VERSION,
                    "final": {"top1": {"sum": 80.0 + k * 0.01 + seed}},
                    "hyper": {"steps": 60, "seed": seed},
                    "data": {"source": "digits"},
                }
                for seed in (0, 1)
            ],
        }
    )


def _frame() -> tuple[list[CellRow], list[CellRecord]]:
    records = [_record(k, label) for k, label in enumerate(LABELS)]
    return build_rows(records, "base"), records


def test_scatter_specs_number_every_cell_and_mark_the_base() -> None:
    df, records = _frame()
    specs = [accuracy_spec(df, records, "grid"), throughput_spec(df, records, "grid")]
    for spec in specs:
        assert spec is not None
        assert spec.base_label == "base"
        assert [label for _, label in spec.key] == ["base (base)", *LABELS[1:]]
        assert [n for n, _ in spec.key] == list(range(1, len(LABELS) + 1))
        for series in spec.series:
            assert [p.is_base for p in series.points] == [True] + [False] * (len(LABELS) - 1)
        assert (
            "Test CPU 9000 (cpu)" in spec.subtitle
            and "fp32" in spec.subtitle
            and "4 threads" in spec.subtitle
        )
    assert machine_line(records) == "Test CPU 9000 (cpu), fp32, 4 threads"


def test_drawn_figure_shows_numbers_key_and_base_star(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    df, records = _frame()
    spec = throughput_spec(df, records, "grid")
    assert spec is not None
    fig = draw_scatter(spec)
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.texts]
    # One number per point (infer and train), no label written on the axes; the key holds the labels.
    numbers = [str(n) for n in range(1, len(LABELS) + 1)]
    assert sorted(t for t in texts if t.isdigit()) == sorted(numbers * 2)
    key = next(t for t in texts if "\n" in t)
    assert " 1  base (base)" in key and "10  pos=none" in key
    base_marks = [c for c in ax.collections if list(c.get_sizes()) == [BASE_SIZE]]
    assert len(base_marks) == 2  # the base's inference and training points
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "base: base" in legend
    handle = ax.get_legend().legend_handles[legend.index("base: base")]
    assert handle is not None and handle.get_marker() == BASE_MARKER  # type: ignore[attr-defined]
    assert "Test CPU 9000" in ax.get_title()
    plt.close(fig)

    written = write_figures(df, records, tmp_path, "grid")
    assert set(written) == {"accuracy_vs_gmacs", "throughput_vs_params", "flops_by_component"}
    for path in written.values():
        assert path.read_bytes()[:8] == PNG_MAGIC
