"""The typed records of an ablation run folder: cells (schema 2: the config once), the experiment summary, the
job ledger; every committed folder reads back; the summary's columns and their renderings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

import conformer_bench
from conformer_bench.ablate.cluster import JOBS_FILE, read_ledger
from conformer_bench.ablate.store import ResultStore
from conformer_bench.ablate.summary import build_rows, csv_columns, to_csv, to_latex, to_markdown
from conformer_bench.errors import BenchError
from conformer_bench.records import KINDS, CellRecord, ExperimentRecord, JobsRecord, Status
from conformer_bench.records.cell import JobEntry

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
FOLDERS = sorted(p.parent for p in RESULTS.rglob("cells.jsonl"))
IDS = [str(p.relative_to(RESULTS)) for p in FOLDERS]
V1 = Path(__file__).parent / "fixtures" / "cells_v1.jsonl"  # lines as version 1 of the tool wrote them


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_run_folder_kinds_are_registered() -> None:
    assert KINDS["conformer-bench.cell"] is CellRecord and CellRecord.VERSION == 2
    assert KINDS["conformer-bench.experiment"] is ExperimentRecord
    assert KINDS["conformer-bench.jobs"] is JobsRecord


@pytest.mark.parametrize("folder", FOLDERS, ids=IDS)
def test_every_committed_folder_reads_back_typed(folder: Path) -> None:
    store = ResultStore(folder)
    records = store.latest()
    meta = store.experiment()
    assert meta is not None and records  # a search's trials folder also holds trials its summary leaves out
    assert meta.to_dict() == json.loads((folder / "experiment.json").read_text())
    lines = {line["label"]: line for line in _lines(folder / "cells.jsonl")}
    assert list(lines) == list(records)
    for label, record in records.items():
        assert isinstance(record.status, Status) and record.label == label
        line = lines[label]
        if line["schema_version"] == 1:  # folders written by `search` and the GPU check: migrated on read
            assert record.version_1() == line and "config" not in record.to_dict()
        else:  # the ablation folders, rewritten by the store's compaction in version 2
            assert record.to_dict() == line
        if record.profile is not None:  # nested records are whole again: their config is the cell's
            assert record.profile.variant.config == record.config
        assert all(run.variant.config == record.config for run in record.finetune)
    if (folder / JOBS_FILE).exists():
        assert set(read_ledger(folder)) <= set(records)


def test_version_1_lines_migrate_to_the_config_once() -> None:
    old = _lines(V1)
    for line in old:
        assert line["schema_version"] == 1 and line["config"] == line["variant"]["config"]
        record = CellRecord.from_dict(line)
        assert record.config == line["config"]
        new = record.to_dict()
        assert new["schema_version"] == 2 and "config" not in new
        assert list(new) == [k for k in line if k != "config"]
        assert new["variant"] == line["variant"]
        if new["profile"] is not None:
            assert "config" not in new["profile"]["variant"]
            assert record.profile is not None and record.profile.variant.config == line["config"]
        assert all("config" not in run["variant"] for run in new["finetune"])
        assert len(json.dumps(new)) < len(json.dumps(line))
        assert CellRecord.from_dict(new).to_dict() == new  # version 2 round-trips exactly
        assert record.version_1() == line  # and the plain JSON of version 1 is still at hand


def test_a_nested_config_that_differs_is_kept() -> None:
    line = _lines(V1)[2]
    assert line["finetune"], "the fixture's third line is fine-tuned"
    line["finetune"][0]["variant"]["config"] = {**line["config"], "num_classes": 3}
    new = CellRecord.from_dict(line).to_dict()
    assert new["finetune"][0]["variant"]["config"]["num_classes"] == 3
    assert all("config" not in run["variant"] for run in new["finetune"][1:])
    assert CellRecord.from_dict(new).finetune[0].variant.config["num_classes"] == 3


def test_the_store_reads_version_1_and_compaction_writes_version_2(tmp_path: Path) -> None:
    shutil.copy(V1, tmp_path / "cells.jsonl")
    store = ResultStore(tmp_path)
    before = store.latest()
    assert [r.label for r in before.values()] == [json.loads(x)["label"] for x in V1.read_text().splitlines()]
    store.compact(list(before))
    lines = _lines(tmp_path / "cells.jsonl")
    assert {line["schema_version"] for line in lines} == {2}
    assert store.latest() == before


def test_a_cell_line_from_a_newer_tool_names_the_upgrade(tmp_path: Path) -> None:
    line = {**_lines(V1)[0], "schema_version": 3}
    (tmp_path / "cells.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(BenchError, match="upgrade conformer-bench"):
        ResultStore(tmp_path).latest()


def test_a_malformed_nested_record_is_one_line_naming_the_line(tmp_path: Path) -> None:
    line = _lines(V1)[0]
    line["profile"] = {**line["profile"], "schema": "conformer-bench.speed"}
    (tmp_path / "cells.jsonl").write_text(json.dumps(line) + "\n")
    with pytest.raises(BenchError, match=r"cells.jsonl line 1: .*not 'conformer-bench.profile'"):
        ResultStore(tmp_path).latest()


def test_the_job_ledger_round_trips(tmp_path: Path) -> None:
    entry = JobEntry("a", "17", "slurm", 1.5, "h", True, "o", "e", 1)
    doc = JobsRecord(cells={"a": entry}).to_dict()
    assert doc == {"schema": "conformer-bench.jobs", "schema_version": 1, "cells": {"a": {
        "label": "a", "job_id": "17", "executor": "slurm", "submitted": 1.5, "config_hash": "h",
        "finetune": True, "stdout": "o", "stderr": "e", "attempt": 1}}}  # fmt: skip
    (tmp_path / JOBS_FILE).write_text(json.dumps(doc))
    assert read_ledger(tmp_path) == {"a": entry}
    doc["cells"]["a"]["attempt"] = "1"
    (tmp_path / JOBS_FILE).write_text(json.dumps(doc))
    with pytest.raises(BenchError, match="is damaged"):
        read_ledger(tmp_path)


@pytest.mark.parametrize("folder", FOLDERS, ids=IDS)
def test_to_frame_of_the_cells_is_the_summary_csv_without_the_deltas(folder: Path) -> None:
    """summary.csv = the cells' own columns (``api.to_frame``), then columns against the base cell (``d_*``,
    ``is_base``) that no single record can give; the time-by-component columns only where some profile has
    a breakdown (``to_frame`` always has them, empty without one)."""
    csv = pd.read_csv(folder / "summary.csv")
    read = [r for r in conformer_bench.read(folder) if isinstance(r, CellRecord)]
    by_label = {r.label: r for r in read}  # one line per label in every committed folder
    cells = [by_label[label] for label in csv["label"]]  # the summary's order (the experiment's)
    frame = conformer_bench.to_frame(cells)
    own = [c for c in csv.columns if not c.startswith("d_") and c != "is_base"]
    assert frame[[c for c in frame.columns if c not in own]].isna().all().all()

    def na(df: pd.DataFrame) -> pd.DataFrame:  # an empty CSV cell reads as NaN; a record holds None
        return df.astype(object).where(df.notna(), None)

    assert_frame_equal(na(frame[own]), na(csv[own]), check_dtype=False, check_exact=True)
    rows = build_rows(cells, csv.loc[csv["is_base"], "label"].iloc[0])
    assert [c.name for c in csv_columns(rows)] == list(csv.columns)
    assert to_csv(rows) == (folder / "summary.csv").read_text()


def _cell(label: str, changes: dict, status: str = "ok", reason: str | None = None) -> CellRecord:
    return CellRecord.from_dict({
        "schema": CellRecord.SCHEMA, "schema_version": 2, "experiment": "e", "label": label,
        "variant": {"name": "tiny", "label": label, "config": {}}, "changes": changes, "status": status,
        "reason": reason, "profile": None, "finetune": [],
    })  # fmt: skip


def test_renderings_escape_what_their_format_needs() -> None:
    records = [
        _cell("base", {}),
        _cell("odd", {"fcu_up": "a|b", "note": "50%_x&y"}, "failed", 'Error: "quoted", with, commas'),
    ]
    rows = build_rows(records, "base")
    md = to_markdown(rows, ["a note"], "t")
    assert "| `odd` | fcu_up=a\\|b note=50%_x&y | failed |" in md
    assert '- `odd`: failed: Error: "quoted", with, commas' in md
    latex = to_latex(rows, ["Δ ± 100 %"], "t_1")
    assert r"odd & failed \\" in latex and r"t\_1. $\Delta$ $\pm$ 100 \%" in latex
    text = to_csv(rows)
    assert text.splitlines()[2].startswith(
        'odd,tiny,fcu_up=a|b note=50%_x&y,failed,"Error: ""quoted"", with, commas"'
    )
    assert pd.read_csv(__import__("io").StringIO(text)).loc[1, "reason"] == 'Error: "quoted", with, commas'


def test_the_table_command_renders_every_format_from_the_columns(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from conformer_bench.cli import app

    folder = tmp_path / "ci"
    folder.mkdir()
    for name in ("cells.jsonl", "experiment.json"):
        shutil.copy(RESULTS / "ci" / name, folder / name)
    runner = CliRunner()
    csv = runner.invoke(app, ["table", str(folder), "-f", "csv"])
    assert csv.exit_code == 0 and csv.stdout == (RESULTS / "ci" / "summary.csv").read_text()
    rows = json.loads(runner.invoke(app, ["table", str(folder), "-f", "json"]).stdout)
    assert rows[0]["label"] == "micro" and rows[0]["changes"] is None and rows[0]["is_base"] is True
    assert rows[1]["changes"] == "num_med_block=0" and rows[1]["d_params_m"] < 0
    lines = runner.invoke(app, ["table", str(folder), "-f", "jsonl"]).stdout.splitlines()
    assert [json.loads(line) for line in lines] == rows
    md = runner.invoke(app, ["table", str(folder)]).stdout
    assert md == (RESULTS / "ci" / "summary.md").read_text()
