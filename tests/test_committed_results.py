"""Every committed ablation folder under results/ is what `table` writes from its own records today."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conformer_bench.cli import app

RESULTS = Path(__file__).resolve().parent.parent / "results"
FOLDERS = sorted(p.parent for p in RESULTS.rglob("cells.jsonl"))


def test_there_are_committed_ablation_folders() -> None:
    assert len(FOLDERS) >= 3, FOLDERS


@pytest.mark.parametrize("folder", FOLDERS, ids=[str(p.relative_to(RESULTS)) for p in FOLDERS])
def test_table_reproduces_the_committed_summary_byte_for_byte(folder: Path, tmp_path: Path) -> None:
    copy = tmp_path / folder.name
    copy.mkdir()
    for name in ("cells.jsonl", "experiment.json"):
        if (folder / name).exists():
            shutil.copy(folder / name, copy / name)
    result = CliRunner().invoke(app, ["table", str(copy)])
    assert result.exit_code == 0, result.output
    for name in ("summary.csv", "summary.md"):
        assert (copy / name).read_bytes() == (folder / name).read_bytes(), (
            f"{folder / name} is not what `conformer-bench table` writes from its records: regenerate it"
        )


def test_no_link_is_committed_under_results() -> None:
    """A committed link points into the machine that wrote it (a job scheduler's bookkeeping, for one) and
    breaks every copy of the repository that refuses links, such as the revisions ``ab`` extracts."""
    links = [str(p.relative_to(RESULTS)) for p in RESULTS.rglob("*") if p.is_symlink()]
    assert links == []
