"""`conformer-bench search`: the space, pruning before anything runs, the front and its files, bad input, and
a search killed twice (after a cell's record was stored, and inside a cell) then resumed: every trial is counted
once, none is lost and no cell is recorded twice.

The machinery is tested on costs alone (closed form: nothing built, timed or trained); one test runs the base
trial of a real nano search (fine-tune and timing) to check that the objectives are read from its records.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from test_slurm import _no_cluster_reason
from typer.testing import CliRunner

import conformer_bench
from conformer_bench.ablate.cluster import read_ledger
from conformer_bench.ablate.experiment import load_experiment
from conformer_bench.ablate.store import ResultStore
from conformer_bench.cli import app
from conformer_bench.records import CellRecord, FinetuneRecord, ProfileRecord
from conformer_bench.records.finetune import DEFAULT_BATCH_SIZE
from conformer_bench.search.cells import cell_outcome
from conformer_bench.search.front import SearchRecord, describe, front_markdown, trials_csv
from conformer_bench.search.spec import load_search

FIXTURES = Path(__file__).parent / "fixtures" / "experiments"
COSTS = FIXTURES / "search_costs.toml"
ROOT = Path(__file__).resolve().parent.parent
COMMITTED = sorted((ROOT / "results" / "search_micro").glob("*/search.json"))
runner = CliRunner()


def _search(out: Path, *args: str, experiment: Path = COSTS) -> object:
    return runner.invoke(app, ["search", str(experiment), "-o", str(out), "--quiet", *args])


def _record(out: Path) -> SearchRecord:
    return SearchRecord.from_dict(json.loads((out / "search.json").read_text()))


def _cells(out: Path) -> list[dict]:
    return [cell.version_1() for cell in ResultStore(out / "trials").read_all()]


def _edited(tmp_path: Path, old: str, new: str, source: Path = COSTS) -> Path:
    text = source.read_text()
    assert old in text, old
    path = tmp_path / source.name
    path.write_text(text.replace(old, new))
    return path


def test_costs_search_prunes_before_running_and_writes_the_front(tmp_path: Path) -> None:
    out = tmp_path / "search"
    result = _search(out)
    assert result.exit_code == 0, result.output
    record = _record(out)
    states = [t.state for t in record.trials]
    assert states.count("complete") == 4  # the budget: trials that ran
    assert record.base == 0 and record.trial(0).role == "base" and record.trial(0).changes == {}
    pruned = [t for t in record.trials if t.state == "pruned"]
    assert pruned and all(t.reason for t in pruned)
    kinds = ("invalid variant:", "params <= 200000 broken:", "repeats trial ")
    assert all(t.reason.startswith(kinds) or "changes nothing here" in t.reason for t in pruned)
    # Pruned trials ran nothing: the trials' run folder holds one record per complete trial, and each point once.
    cells = _cells(out)
    complete = [t for t in record.trials if t.state == "complete"]
    assert sorted(c["label"] for c in cells) == sorted(t.label for t in complete)
    assert len({json.dumps(c["config"], sort_keys=True) for c in cells}) == len(cells)
    for t in complete:  # the objectives are the closed-form costs the cell's record carries
        cell = next(c for c in cells if c["label"] == t.label)
        assert t.values == {
            "params": cell["profile"]["params"]["total"],
            "macs": cell["profile"]["flops"]["paper_macs"],
        }
    # The front: complete trials within the constraint that no other such trial dominates.
    front = [record.trial(n) for n in record.front]
    assert front and all(t.on_front for t in front)
    others = [t for t in complete if t.feasible]
    for t in front:
        assert not any(o.values["params"] <= t.values["params"] and o.values["macs"] >= t.values["macs"]
                       and o.values != t.values for o in others)  # fmt: skip
    for n in record.dominating_base:
        t, base = record.trial(n), record.trial(0)
        assert t.values["params"] <= base.values["params"] and t.values["macs"] >= base.values["macs"]
    # Its files: the table, every trial as CSV, the figure, and an experiment file ablate reads.
    assert "Pareto front" in (out / "front.md").read_text()
    assert len((out / "trials.csv").read_text().splitlines()) == len(record.trials) + 1
    frame = conformer_bench.to_frame(conformer_bench.read(out / "search.json"))
    pd.testing.assert_frame_equal(frame, pd.read_csv(out / "trials.csv"))
    assert (out / "figures" / "front.png").stat().st_size > 0
    confirm = load_experiment(out / "front.toml")
    assert confirm.labels()[0] == "base"
    assert set(confirm.labels()[1:]) == {t.label for t in front if t.number != 0}
    status = _search(out, "--status")
    assert status.exit_code == 0, status.output
    assert "4 of 4 trials ran" in status.output and "Pareto front" in status.output


def test_resume_with_a_larger_budget_runs_only_the_new_trials(tmp_path: Path) -> None:
    out = tmp_path / "search"
    assert _search(out, "--trials", "2").exit_code == 0
    first = {c["label"]: c["finished"] for c in _cells(out)}
    again = _search(out, "--trials", "2")
    assert again.exit_code == 2 and "--resume" in again.output  # a begun search is not mixed by accident
    more = _search(out, "--trials", "3", "--resume")
    assert more.exit_code == 0, more.output
    cells = _cells(out)
    assert len(cells) == 3 and {c["label"]: c["finished"] for c in cells if c["label"] in first} == first


KILLED = """
import os, signal, sys
from conformer_bench.search.progress import LineProgress
from conformer_bench.search.run import Search
from conformer_bench.search.spec import load_search
from conformer_bench.search.study import open_study

spec = load_search(sys.argv[1], output_dir=sys.argv[2], trials=3)
study = open_study(spec, resume=True)
search = Search(spec, study, LineProgress(spec))
if sys.argv[3] == "before-tell":  # the cell's record is stored, the trial not yet told
    search.finish = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
else:  # killed inside the cell, before it recorded anything
    import conformer_bench.search.run as run
    run.run_grid = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
search.run()
"""


def test_a_search_killed_twice_counts_every_trial_once_and_runs_no_cell_twice(tmp_path: Path) -> None:
    out = tmp_path / "search"
    for when in ("before-tell", "in-cell"):
        killed = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(KILLED), str(COSTS), str(out), when],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert killed.returncode == -9, killed.stderr
    assert len(_cells(out)) == 1  # the base's cell finished before the first kill
    status = _search(out, "--status")
    assert status.exit_code == 0 and "its process is gone" in status.output, status.output

    resumed = _search(out, "--resume")
    assert resumed.exit_code == 0, resumed.output
    record = _record(out)
    base = record.trial(0)
    assert base.state == "complete"  # told from its record: its cell was not run again
    interrupted = [t for t in record.trials if t.state == "interrupted"]
    assert len(interrupted) == 1 and interrupted[0].number > 0
    retry = [t for t in record.trials if t.retry_of == interrupted[0].number]
    assert len(retry) == 1 and retry[0].params == interrupted[0].params and retry[0].state == "complete"
    complete = [t for t in record.trials if t.state == "complete"]
    assert len(complete) == 4  # the budget, counted once each (the interrupted trial is not counted)
    cells = _cells(out)
    assert sorted(c["label"] for c in cells) == sorted(t.label for t in complete)
    assert [c["label"] for c in cells].count("trial-0") == 1


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("[search.space]\n", "[search.unused]\n", "search.unused: unknown key"),
        ("[search.space]\nnum_med_block = [0, 1, 2]\nbranches = [\"dual\", \"cnn\"]\ncoupling = [\"both\", \"down\", \"none\"]\nfcu_down = [\"avgpool\", \"maxpool\"]\n", "", "the space is empty"),
        ('params = "min"', 'accuracy = "min"', "no record carries 'accuracy'"),
        ('params = "min"', 'top1 = "max"', "it comes from the fine-tune: add a [finetune] table"),
        ('"params <= 200000"', '"latency_ms <= 3"', "constrains an unknown metric 'latency_ms'"),
        ("num_med_block = [0, 1, 2]", "num_med_block = [1, 2]", "the base cell's num_med_block = 0 is not in the space"),
        ('"params <= 200000"', '"params <= 10"', "no point of the space is a valid variant within the constraints"),
    ],
)  # fmt: skip
def test_bad_search_tables_are_one_line_naming_the_fix(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    result = _search(tmp_path / "out", experiment=_edited(tmp_path, old, new))
    assert result.exit_code == 2
    line = result.output.strip()
    assert line.startswith("error: ") and "\n" not in line and message in line, line
    assert "search_costs.toml:" in line  # file and line of the key


def test_a_storage_file_of_another_search_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "search"
    assert _search(out, "--trials", "1").exit_code == 0
    changed = _search(
        out, "--resume", experiment=_edited(tmp_path, "num_med_block = [0, 1, 2]", "num_med_block = [0, 1]")
    )
    assert changed.exit_code == 2 and "with another base, space" in changed.output, changed.output
    other = _search(out, "--resume", experiment=_edited(tmp_path, 'name = "search_costs"', 'name = "other"'))
    assert other.exit_code == 2 and "holds the search search_costs-search" in other.output, other.output


def test_a_real_trial_is_judged_on_its_fine_tune_and_timing_records(tmp_path: Path) -> None:
    """The base trial of a nano search (3-step fine-tune on digits, 3 timed iterations): its objectives are
    the mean top-1 over seeds and the images/s of its profile record."""
    text = (
        COSTS.read_text()
        .replace('mode = "none"', 'mode = "none"\nbatch_size = 2\nwarmup = 1\niters = 3\nthreads = 1\ncross_check = false')
        .replace("[search]", '[finetune]\ndataset = "digits"\nimg_size = 32\nsteps = 3\nbatch_size = 16\n'
                 "train_size = 64\nval_size = 40\nseeds = [0, 1]\n\n[search]")
        .replace('objectives = { params = "min", macs = "max" }', 'objectives = { top1 = "max", infer_img_per_s = "max" }')
    )  # fmt: skip
    experiment = tmp_path / "search_nano.toml"
    experiment.write_text(text)
    spec = load_search(experiment, output_dir=tmp_path / "search")
    assert spec.plan.finetune and spec.plan.profile["mode"] == "infer"  # only what the objectives read
    result = _search(tmp_path / "search", "--trials", "1", experiment=experiment)
    assert result.exit_code == 0, result.output
    trial = _record(tmp_path / "search").trial(0)
    (cell,) = _cells(tmp_path / "search")
    assert cell["isolation"] == "process" and cell["status"] == "ok"
    profile = ProfileRecord.from_dict(cell["profile"])
    finetunes = [FinetuneRecord.from_dict(f) for f in cell["finetune"]]
    assert [f.hyper.seed for f in finetunes] == [0, 1]
    top1 = sum(f.final.top1["sum"] for f in finetunes) / 2
    assert trial.values == {"top1": top1, "infer_img_per_s": profile.throughput["infer"].timing.img_per_s}
    assert set(profile.throughput) == {"infer"}


@pytest.mark.slurm
@pytest.mark.slow
def test_the_search_on_slurm_runs_each_trial_as_a_job(tmp_path: Path) -> None:
    """The costs search with a job per trial on the one-node cluster (scripts/slurm.sh up), two at a time."""
    reason = _no_cluster_reason()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "search"
    jobs = ["--executor", "slurm", "--parallel", "2", "--time-limit", "10", "--cpus-per-task", "1"]
    try:
        result = _search(out, "--trials", "3", *jobs)
        assert result.exit_code == 0, result.output
    finally:
        ledger = read_ledger(out / "trials") if (out / "trials").is_dir() else {}
        if ledger:
            subprocess.run(["scancel", *(e.job_id for e in ledger.values())], check=False, timeout=30)
    record = _record(out)
    complete = [t for t in record.trials if t.state == "complete"]
    assert len(complete) == 3 and record.front
    cells = _cells(out)
    assert sorted(c["label"] for c in cells) == sorted(t.label for t in complete)
    assert all(c["job"]["executor"] == "slurm" and c["job"]["id"] == ledger[c["label"]].job_id for c in cells)


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.parent.name)
def test_committed_searches_read_back_into_their_tables(path: Path) -> None:
    """A search's record gives its trials.csv and front.md byte for byte, and its DataFrame is the CSV's."""
    folder = path.parent
    record = _record(folder)
    assert trials_csv(record) == (folder / "trials.csv").read_text()
    spec = load_search(ROOT / "experiments" / "search_micro.toml", output_dir=folder)
    assert front_markdown(spec, record) == (folder / "front.md").read_text()
    frame = conformer_bench.to_frame(conformer_bench.read(path))
    pd.testing.assert_frame_equal(frame, pd.read_csv(folder / "trials.csv"))
    assert list(frame["trial"]) == [t.number for t in record.trials]


def test_the_front_names_the_fine_tune_its_trials_ran(tmp_path: Path) -> None:
    """The fine-tune line reads the base cell's settings: a batch the file leaves out is the default one."""
    folder = COMMITTED[0].parent
    record = _record(folder)
    source = ROOT / "experiments" / "search_micro.toml"
    spec = load_search(_edited(tmp_path, "steps = 100\nbatch_size = 32\n", "", source), output_dir=folder)
    (line,) = [line for line in describe(spec, record) if line.startswith("top-1:")]
    assert (
        line
        == f"top-1: fine-tuned from scratch on digits, default epochs, batch {DEFAULT_BATCH_SIZE}, seeds [0, 1] (mean)"
    )


def test_trials_csv_has_a_column_for_a_constraint_only_later_trials_carry() -> None:
    record = _record(COMMITTED[0].parent)
    record.trials[0] = dataclasses.replace(record.trials[0], constraints={})
    rows = list(csv.DictReader(io.StringIO(trials_csv(record))))
    assert rows[0]["excess params <= 1e+06"] == "" and rows[1]["excess params <= 1e+06"] != ""


def test_a_cell_reads_alike_as_json_and_as_a_typed_record() -> None:
    """The search reads cells through one adapter: a typed cell record gives what its JSON gives."""
    line = (COMMITTED[0].parent / "trials" / "cells.jsonl").read_text().splitlines()[0]
    raw = json.loads(line)
    from_json = cell_outcome(raw)
    typed = cell_outcome(CellRecord.from_dict(raw))
    assert from_json == typed and from_json.ok and from_json.profile is not None
    assert len(from_json.finetunes) == len(raw["finetune"]) > 0
    assert from_json.environment == raw["environment"] and from_json.finished == raw["finished"]
    failed = cell_outcome({**raw, "status": "failed", "reason": "boom", "profile": None})
    assert not failed.ok and failed.reason == "boom" and failed.profile is None
