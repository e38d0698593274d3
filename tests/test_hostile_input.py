"""Crafted input, one class at a time: numbers that are no numbers, links planted in a run folder, outputs
aimed at inputs, names that climb out of the results folder, absurd sizes, a poisoned FLOP cache, inputs
that used to end in a traceback, records that used to pass for what they are not. Each case checks the
exit code and the one ``error:`` line, and that nothing the user had is changed."""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from conformer_bench.cli import app

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "results" / "baselines" / "ci.json"
CI_RESULTS = ROOT / "results" / "ci"
EXP = Path(__file__).parent / "fixtures" / "experiments"
COSTS = EXP / "nano_costs.toml"
FAST = ("--profile-mode", "none", "--no-isolate", "--quiet")  # params + FLOPs, cells in this process


def invoke(*args: Any) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def error_line(result: Any) -> str:
    """The one ``error:`` line of a run that exited 2; a traceback or a second line fails the test."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def baseline_doc() -> dict[str, Any]:
    return json.loads(BASELINE.read_text(encoding="utf-8"))


def write_json(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc), encoding="utf-8")  # json.dumps writes NaN and Infinity as such
    return path


@pytest.fixture(scope="module")
def costs_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished costs-only run folder of nano_costs (copied by each test that changes it)."""
    out = tmp_path_factory.mktemp("costs") / "run"
    res = invoke("ablate", COSTS, "-o", out, *FAST)
    assert res.exit_code == 0, res.output
    return out


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def cell_lines(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (folder / "cells.jsonl").read_text().splitlines() if x.strip()]


def write_lines(folder: Path, records: list[dict[str, Any]]) -> None:
    (folder / "cells.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


# --- 1. non-finite numbers cannot open the gate ---------------------------------------------------------


def zeroed_accuracy_run(tmp_path: Path) -> Path:
    """The committed CI results with every fine-tuned top-1 at 0 %: a regression the gate must catch."""
    cur = copy_run(CI_RESULTS, tmp_path / "zeroed")
    records = cell_lines(cur)
    for record in records:
        for seed in record["finetune"]:
            top1 = seed["final"]["top1"]
            seed["final"]["top1"] = {k: (None if v is None else 0.0) for k, v in top1.items()}
    write_lines(cur, records)
    return cur


def test_gate_fires_on_a_drop_to_zero_and_is_silent_on_unchanged_results(tmp_path: Path) -> None:
    assert invoke("report", "--baseline", BASELINE, "--current", CI_RESULTS).exit_code == 0
    assert invoke("report", "--baseline", BASELINE, "--current", zeroed_accuracy_run(tmp_path)).exit_code == 1


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_baseline_sample_cannot_pass_a_drop_to_zero(tmp_path: Path, bad: float) -> None:
    """NaN (or inf) in one sample of every accuracy and throughput metric used to turn the 0 % run into PASS."""
    doc = baseline_doc()
    for metric in doc["metrics"].values():
        if metric["kind"] in ("accuracy", "noisy"):
            metric["samples"][0] = bad
    poisoned = write_json(tmp_path / "b.json", doc)
    line = error_line(invoke("report", "--baseline", poisoned, "--current", zeroed_accuracy_run(tmp_path)))
    assert "is not valid JSON" in line and "JSON allows" in line


def test_a_number_that_overflows_to_infinity_is_refused(tmp_path: Path) -> None:
    text = BASELINE.read_text(encoding="utf-8")
    first = json.dumps(next(iter(baseline_doc()["metrics"].values()))["samples"][0])
    poisoned = tmp_path / "b.json"
    poisoned.write_text(text.replace(first, "1e999", 1), encoding="utf-8")
    line = error_line(invoke("report", "--baseline", poisoned, "--current", CI_RESULTS))
    assert "1e999 is out of range for a finite number" in line


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_samples_on_the_current_side_are_refused(tmp_path: Path, bad: float) -> None:
    doc = baseline_doc()
    for metric in doc["metrics"].values():
        metric["samples"] = [bad] * len(metric["samples"])  # every sample: used to be a traceback
    current = write_json(tmp_path / "c.json", doc)
    assert "is not valid JSON" in error_line(invoke("report", "--baseline", BASELINE, "--current", current))


def test_nan_in_a_current_record_is_refused(tmp_path: Path) -> None:
    cur = copy_run(CI_RESULTS, tmp_path / "cur")
    text = (cur / "cells.jsonl").read_text()
    (cur / "cells.jsonl").write_text(text.replace('"sum": ', '"sum": NaN, "was": ', 1))
    line = error_line(invoke("report", "--baseline", BASELINE, "--current", cur))
    assert "line 1 is not valid JSON" in line


@pytest.mark.parametrize("value", ["nan", "inf", "1e999", "-inf"])
def test_non_finite_thresholds_are_refused(tmp_path: Path, value: str) -> None:
    """`fail_abs = nan` (or inf) used to pass a drop of every accuracy to 0 %; the drop itself fails."""
    zeroed = zeroed_accuracy_run(tmp_path)
    assert invoke("report", "--baseline", BASELINE, "--current", zeroed).exit_code == 1
    rules = tmp_path / "t.toml"
    rules.write_text(f'[metric."finetune.top*"]\nfail_abs = {value}\nwarn_abs = 0.5\n', encoding="utf-8")
    line = error_line(invoke("report", "--baseline", BASELINE, "--current", zeroed, "--thresholds", rules))
    assert "fail_abs must be a finite number >= 0" in line


def test_compare_blocks_a_non_finite_sample_from_any_source() -> None:
    """Metric sets built in code (not read from files) get the same answer: the row blocks."""
    from conformer_bench.report import MetricSet, compare, load_thresholds
    from conformer_bench.report.metrics import Metric

    def metrics(samples: tuple[float, ...]) -> MetricSet:
        out = MetricSet(source="code", source_kind="profile")
        out.add(Metric("throughput.infer.img_per_s", samples, "img/s", "higher", "noisy"))
        return out

    good = metrics((100.0, 101.0, 99.0, 100.5))
    for bad in ((math.nan, 100.0, 101.0, 99.0), (math.inf,) * 4):
        for base, cur in ((metrics(bad), good), (good, metrics(bad))):
            comparison = compare(base, cur, load_thresholds())
            assert comparison.verdict == "FAIL", comparison.rows
            assert comparison.rows[0].status == "MISSING" and comparison.rows[0].blocking


@pytest.mark.parametrize(
    ("sample", "expected"), [(None, "is null, not a number"), ("1", "is '1', not a number")]
)
def test_null_or_string_samples_are_refused(tmp_path: Path, sample: Any, expected: str) -> None:
    doc = baseline_doc()
    name, metric = next(iter(doc["metrics"].items()))
    metric["samples"] = [sample]
    line = error_line(
        invoke("report", "--baseline", write_json(tmp_path / "b.json", doc), "--current", CI_RESULTS)
    )
    assert f"metric {name!r} sample 0 {expected}" in line


def test_baseline_write_refuses_results_with_null_accuracies(tmp_path: Path) -> None:
    """Null top-1 in ok records used to drop 44 metrics from the baseline without a word."""
    cur = copy_run(CI_RESULTS, tmp_path / "cur")
    records = cell_lines(cur)
    for record in records:
        for seed in record["finetune"]:
            seed["final"]["top1"] = dict.fromkeys(seed["final"]["top1"])
    write_lines(cur, records)
    line = error_line(invoke("baseline", "write", "--from", cur, "--output", tmp_path / "new.json"))
    assert "final.top1.sum is null in a record whose status is ok" in line
    assert not (tmp_path / "new.json").exists()


# --- 2. a run folder's links are never followed -----------------------------------------------------------

VICTIM = b"precious\nlast line without its newline"


@pytest.mark.parametrize("entry", [".cells.lock.holder", ".cells.lock", "cells.jsonl", "experiment.json"])
def test_a_link_in_the_run_folder_leaves_its_target_untouched(tmp_path: Path, entry: str) -> None:
    victim = tmp_path / "precious"
    victim.write_bytes(VICTIM)
    out = tmp_path / "run"
    out.mkdir()
    (out / entry).symlink_to(victim)
    line = error_line(invoke("ablate", COSTS, "-o", out, *FAST))
    assert f"{out / entry} is a symbolic link" in line and "remove the link" in line
    assert victim.read_bytes() == VICTIM


def test_table_and_report_refuse_a_linked_holder(tmp_path: Path, costs_run: Path) -> None:
    out = copy_run(costs_run, tmp_path / "run")
    victim = tmp_path / "precious"
    victim.write_bytes(VICTIM)
    (out / ".cells.lock.holder").unlink(missing_ok=True)
    (out / ".cells.lock.holder").symlink_to(victim)
    assert "is a symbolic link" in error_line(invoke("table", out))
    assert "is a symbolic link" in error_line(invoke("report", "--baseline", out, "--current", out))
    assert victim.read_bytes() == VICTIM


def test_a_linked_figures_folder_is_refused(tmp_path: Path, costs_run: Path) -> None:
    out = copy_run(costs_run, tmp_path / "run")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "flops_by_component.png").write_bytes(VICTIM)
    shutil.rmtree(out / "figures")
    (out / "figures").symlink_to(elsewhere)
    assert "figures is a symbolic link" in error_line(invoke("table", out))
    assert [p.name for p in elsewhere.iterdir()] == ["flops_by_component.png"]
    assert (elsewhere / "flops_by_component.png").read_bytes() == VICTIM


@pytest.mark.timeout(60)
def test_a_fifo_in_place_of_the_records_is_refused_not_waited_on(tmp_path: Path, costs_run: Path) -> None:
    out = copy_run(costs_run, tmp_path / "run")
    (out / "cells.jsonl").unlink()
    os.mkfifo(out / "cells.jsonl")
    assert "is not a regular file" in error_line(invoke("report", "--baseline", out, "--current", out))


# --- 3. no output overwrites an input -----------------------------------------------------------------------


def test_report_outputs_never_overwrite_its_inputs(tmp_path: Path) -> None:
    base = tmp_path / "b.json"
    shutil.copy(BASELINE, base)
    rules = tmp_path / "t.toml"
    rules.write_text("[defaults]\nalpha = 0.05\n", encoding="utf-8")
    cur = copy_run(CI_RESULTS, tmp_path / "cur")
    cases = [
        (("--json", base), "--json", "--baseline"),
        (("--markdown", tmp_path / "." / "b.json"), "--markdown", "--baseline"),
        (("--json", cur / "cells.jsonl"), "--json", "--current"),
        (("--markdown", rules), "--markdown", "--thresholds"),
    ]
    before = {p: p.read_bytes() for p in (base, rules, cur / "cells.jsonl")}
    for extra, flag, source in cases:
        res = invoke("report", "--baseline", base, "--current", cur, "--thresholds", rules, *extra)
        assert f"{flag} " in error_line(res) and f"is an input ({source} reads it)" in error_line(res)
    same = invoke(
        "report", "--baseline", base, "--current", cur, "--json", tmp_path / "r", "--markdown", tmp_path / "r"
    )
    assert "both name" in error_line(same)
    assert {p: p.read_bytes() for p in before} == before


def test_baseline_write_profile_and_ab_outputs_never_overwrite_their_inputs(tmp_path: Path) -> None:
    base = tmp_path / "b.json"
    shutil.copy(BASELINE, base)
    res = invoke("baseline", "write", "--from", base, "--output", base, "--force")
    assert "is an input (--from reads it)" in error_line(res)
    assert base.read_bytes() == BASELINE.read_bytes()
    models = tmp_path / "models.txt"
    models.write_text("nano\n", encoding="utf-8")
    res = invoke("profile", "--model-list", models, "--mode", "none", "-o", models)
    assert "is an input (--model-list reads it)" in error_line(res)
    assert models.read_text() == "nano\n"
    saved = tmp_path / "ab.json"
    saved.write_text("{}", encoding="utf-8")
    assert "is an input (--from reads it)" in error_line(invoke("ab", "--from", saved, "--output", saved))
    assert saved.read_text() == "{}"


def test_history_outputs_never_overwrite_its_database(tmp_path: Path) -> None:
    db = tmp_path / "history.db"
    db.write_bytes(b"SQLite format 3\x00 stands in for a database")
    before = db.read_bytes()
    for flag, out in (("--json", db), ("--markdown", tmp_path / "history.db-wal")):
        res = invoke("history", "changes", "--db", db, flag, out)
        assert f"{flag} " in error_line(res) and "is an input (--db reads it)" in error_line(res)
    page = tmp_path / "site" / "index.html"
    page.parent.mkdir()
    page.write_bytes(before)
    res = invoke("history", "publish", page.parent, "--db", page)
    assert "is an input (--db reads it)" in error_line(res)
    assert db.read_bytes() == before and page.read_bytes() == before


# --- 4. derived paths stay in the folder the user named ---------------------------------------------------


def test_an_experiment_name_cannot_climb_out_of_the_results_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    crafted = work / "climb.toml"
    crafted.write_text(COSTS.read_text().replace('name = "nano_costs"', 'name = "a/../../../tm/escaped"'))
    line = error_line(invoke("ablate", crafted, *FAST))
    assert "name: 'a/../../../tm/escaped' is not valid; use 1-80 letters, digits, _ or -" in line
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["climb.toml", "work"]


@pytest.mark.parametrize("file_name", ["...toml", "my.grid.toml"])
def test_a_file_name_that_is_no_experiment_name_asks_for_one(tmp_path: Path, file_name: str) -> None:
    crafted = tmp_path / file_name
    crafted.write_text(COSTS.read_text().replace('name = "nano_costs"\n', ""))
    line = error_line(invoke("ablate", crafted, "--dry-run"))
    assert "the file name gives" in line and 'add name = "..."' in line


def test_a_job_ledger_cannot_name_files_outside_the_jobs_folder(tmp_path: Path) -> None:
    from conformer_bench.ablate.cluster import JOBS_FILE, read_ledger

    entry = {"label": "a", "job_id": "../../../x", "executor": "slurm", "submitted": 1.0, "config_hash": "h",
             "finetune": False, "stdout": "o", "stderr": "e", "attempt": 1}  # fmt: skip
    (tmp_path / JOBS_FILE).write_text(json.dumps({"cells": {"a": entry}}), encoding="utf-8")
    with pytest.raises(Exception, match="is damaged"):
        read_ledger(tmp_path)


# --- 5. one set of sanity bounds for profile and ablate ---------------------------------------------------


def with_axis(tmp_path: Path, axis: str) -> Path:
    crafted = tmp_path / "crafted.toml"
    crafted.write_text(COSTS.read_text().replace("[[cells]]", f"[axes]\n{axis}\n\n[[cells]]", 1))
    return crafted


@pytest.mark.timeout(120)
def test_a_hundred_thousand_blocks_are_refused_before_any_counting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Used to run for minutes in a costs-only ablate (profile refused it at once)."""
    import conformer_bench.costs

    def counted(*args: Any) -> None:
        raise AssertionError("the bound must refuse the config before the closed-form count walks it")

    monkeypatch.setattr(conformer_bench.costs, "_walk", counted)
    crafted = with_axis(tmp_path, "num_med_block = [100000]")
    expected = "--num-med-block 100000 builds 200,000 extra bottlenecks"
    for args in ((*FAST, "-o", tmp_path / "out"), ("--dry-run",)):
        started = time.perf_counter()
        line = error_line(invoke("ablate", crafted, *args))
        elapsed = time.perf_counter() - started
        assert "axes.num_med_block: cell 'num_med_block=100000'" in line and expected in line
        assert "--force" in line
        assert elapsed < 10, elapsed  # a hang guard, not a timing: refused in well under a second here
    assert not (tmp_path / "out" / "cells.jsonl").exists()
    assert expected in error_line(
        invoke("profile", "--variant", "nano", "--mode", "none", "--num-med-block", "100000")
    )


def test_a_huge_embedding_is_refused_and_force_lifts_the_bound(tmp_path: Path) -> None:
    crafted = with_axis(tmp_path, "embed_dim = [100000000]")
    line = error_line(invoke("ablate", crafted, "--dry-run"))
    assert "parameters, past the sanity bound of 1e+10" in line
    forced = invoke("ablate", crafted, "--dry-run", "--force")
    assert forced.exit_code == 0 and "embed_dim=100000000" in forced.output


def test_check_bounds_is_the_one_check(tmp_path: Path) -> None:
    from conformer import get_config
    from conformer_bench.bounds import check_bounds
    from conformer_bench.errors import BenchError
    from conformer_bench.profiling import ProfileSettings

    huge = get_config("nano", embed_dim=10**8, num_heads=1)
    with pytest.raises(BenchError, match="past the sanity bound"):
        check_bounds(huge, ProfileSettings(img_size=32, mode="none"))
    check_bounds(huge, ProfileSettings(img_size=32, mode="none"), force=True)
    with pytest.raises(BenchError, match="for the input batch alone"):
        check_bounds(get_config("nano"), ProfileSettings(img_size=32, batch_size=10**9), force=True)


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("mlp_ratio = [inf]", "axes.mlp_ratio[0]: is not a finite number"),
        ("drop_rate = [nan]", "axes.drop_rate[0]: is not a finite number"),
        ("qk_scale = ['x']", "qk_scale must be a finite number > 0"),
        ("qkv_bias = ['yes']", "qkv_bias must be true or false"),
        ("fcu_stages = ['123']", "fcu_stages must be a list of stage numbers"),
    ],
)
def test_config_values_of_the_wrong_kind_are_one_line(tmp_path: Path, setting: str, expected: str) -> None:
    assert expected in error_line(invoke("ablate", with_axis(tmp_path, setting), "--dry-run"))


@pytest.mark.timeout(60)
def test_a_grid_of_a_million_cells_is_refused_before_it_is_built(tmp_path: Path) -> None:
    crafted = tmp_path / "product.toml"
    values = ", ".join(str(i / 10000) for i in range(1000))
    text = COSTS.read_text().replace(
        "[[cells]]", f"[axes]\ndrop_rate = [{values}]\ndrop_path_rate = [{values}]\n\n[[cells]]", 1
    )
    crafted.write_text('axes_mode = "product"\n' + text)
    assert "makes 1,000,000 cells, past the sanity bound" in error_line(
        invoke("ablate", crafted, "--dry-run")
    )


def test_a_cell_label_the_store_would_refuse_is_refused_before_the_run(tmp_path: Path) -> None:
    """An axes product can label a cell past what the store reads back: refused at load, not after running."""
    axes = ("drop_rate = [0.012345678901234567]\nattn_drop_rate = [0.01234567890123456]\n"
            "drop_path_rate = [0.0123456789012345]\nmlp_ratio = [4.000000000000001]\n"
            "qk_scale = [0.12345678901234568]\nnum_med_block = [1]\npos_embed = [true]\nfcu_up = ['bilinear']\n")  # fmt: skip
    crafted = tmp_path / "long.toml"
    crafted.write_text(
        'axes_mode = "product"\n' + COSTS.read_text().replace("[[cells]]", f"[axes]\n{axes}\n[[cells]]", 1)
    )
    line = error_line(invoke("ablate", crafted, *FAST, "-o", tmp_path / "out"))
    assert "characters, past 200" in line and "use fewer axes at once" in line
    assert not (tmp_path / "out").exists()


# --- 6. the FLOP cache is input like any other file -----------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize("entry", ['{"fvcore_total": 1}', '{"fvcore_total": "lots"}', "[]", "fifo", "link"])
def test_a_bad_cache_entry_is_counted_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry: str
) -> None:
    from conformer import get_config
    from conformer_bench import flops

    monkeypatch.setenv(flops.CACHE_ENV, str(tmp_path / "cache"))
    cfg = get_config("nano", img_size=32)
    path = flops._cache_path(cfg, 32, False)
    assert path is not None
    path.parent.mkdir(parents=True)
    if entry == "fifo":
        os.mkfifo(path)  # used to hang the run: the read waited for a writer
    elif entry == "link":
        (tmp_path / "elsewhere.json").write_text('{"fvcore_total": 1}')
        path.symlink_to(tmp_path / "elsewhere.json")
    else:
        path.write_text(entry)
    record = flops.costs_of(cfg, 32, exact=True).flops
    fresh = flops.costs_of(cfg, 32)
    assert record is not None
    assert record.fvcore_total == fresh.fvcore_total and record.paper_macs == fresh.paper_macs
    assert record.uncounted_ops  # the traced tallies are there too
    assert json.loads(path.read_text()) == record.to_dict()  # the bad entry was replaced by the real record
    assert stat.S_ISREG(path.lstat().st_mode)


def test_a_poisoned_cache_never_reaches_a_cell_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conformer import get_config
    from conformer_bench import flops

    monkeypatch.setenv(flops.CACHE_ENV, str(tmp_path / "cache"))
    path = flops._cache_path(get_config("nano", img_size=32), 32, False)
    assert path is not None
    path.parent.mkdir(parents=True)
    path.write_text('{"fvcore_total": "lots", "paper_macs": -1}')
    res = invoke("ablate", COSTS, "-o", tmp_path / "out", *FAST, "--only", "dual")
    assert res.exit_code == 0, res.output
    (record,) = cell_lines(tmp_path / "out")
    assert isinstance(record["profile"]["flops"]["fvcore_total"], int)
    assert record["profile"]["flops"]["paper_macs"] > 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("entry", ["poisoned", "fifo", "link"])
def test_a_bad_component_cache_entry_is_counted_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, entry: str
) -> None:
    """The MACs-per-component cache of the time breakdown is read like the FLOP cache."""
    from conformer import create_model, get_config
    from conformer_bench import breakdown, flops

    monkeypatch.setenv(flops.CACHE_ENV, str(tmp_path / "cache"))
    model = create_model(get_config("nano", img_size=32))
    fresh = breakdown.component_macs(model, 32)  # counted, and cached
    (path,) = (tmp_path / "cache").glob("components-*.json")
    path.unlink()
    poison = json.dumps({**dict.fromkeys(breakdown.ROWS, 0), "stem": 1})  # well formed, the wrong total
    if entry == "fifo":
        os.mkfifo(path)  # a blocking read would wait for a writer forever
    elif entry == "link":
        (tmp_path / "elsewhere.json").write_text(poison)
        path.symlink_to(tmp_path / "elsewhere.json")
    else:
        path.write_text(poison)
    assert breakdown.component_macs(model, 32) == fresh
    assert json.loads(path.read_text()) == fresh and stat.S_ISREG(path.lstat().st_mode)
    if entry == "link":
        assert (tmp_path / "elsewhere.json").read_text() == poison


# --- 7. inputs that used to end in a traceback ----------------------------------------------------------


def test_a_file_name_past_255_bytes_is_one_line(tmp_path: Path) -> None:
    long = tmp_path / ("a" * 300 + ".json")
    assert "past the 255 a file system allows" in error_line(
        invoke("report", "--baseline", BASELINE, "--current", CI_RESULTS, "--json", long)
    )
    assert "file name too long" in error_line(invoke("report", "--baseline", long, "--current", CI_RESULTS))
    assert "past the 255" in error_line(invoke("profile", "-v", "nano", "--mode", "none", "-o", long))


def test_non_utf8_thresholds_and_model_lists_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe[defaults]\n")
    line = error_line(invoke("report", "--baseline", BASELINE, "--current", CI_RESULTS, "--thresholds", bad))
    assert "--thresholds" in line and "is not a text (UTF-8) file" in line
    line = error_line(invoke("profile", "--model-list", bad, "--mode", "none"))
    assert "--model-list" in line and "is not a text (UTF-8) file" in line


def test_deeply_nested_toml_and_json_are_one_line(tmp_path: Path, costs_run: Path) -> None:
    deep_toml = tmp_path / "deep.toml"
    deep_toml.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nested deeper than 64 levels" in error_line(invoke("ablate", deep_toml, "--dry-run"))
    line = error_line(
        invoke("report", "--baseline", BASELINE, "--current", CI_RESULTS, "--thresholds", deep_toml)
    )
    assert "not valid TOML (nested deeper than 64 levels)" in line
    deep_json = tmp_path / "deep.json"
    deep_json.write_text("[" * 100000 + "]" * 100000)
    assert "nested deeper than 64" in error_line(
        invoke("report", "--baseline", deep_json, "--current", CI_RESULTS)
    )
    out = copy_run(costs_run, tmp_path / "run")
    with (out / "cells.jsonl").open("a") as fh:
        fh.write('{"schema": "conformer-bench.cell", "x": ' + "[" * 3000 + "]" * 3000 + "}\n")
    assert "line 5 is not valid JSON" in error_line(invoke("table", out))


def _checkpoint(tmp_path: Path, kind: str) -> Path:
    from conformer import create_model
    from conformer.checkpoint import to_release

    path = tmp_path / f"{kind}.pth"
    if kind == "text":
        path.write_text("exactly what it looks like\n")
        return path
    if kind in ("int-keys", "tuple-keys"):
        torch.save({1 if kind == "int-keys" else (1, 2): torch.zeros(2)}, path)
        return path
    model = create_model("micro")
    state = to_release(model.state_dict(), model.cfg)
    key = next(k for k, v in state.items() if v.dim() == 4)
    state[key] = torch.empty(state[key].shape, device="meta") if kind == "meta" else state[key].to_sparse()
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("text", "could not be read"),
        ("int-keys", "holds a key that is not a name (int 1)"),
        ("tuple-keys", "holds a key that is not a name (tuple (1, 2))"),
        ("meta", "holds a meta tensor at 'conv1.weight'"),
        ("sparse", "holds a sparse_coo tensor at 'conv1.weight'"),
    ],
)
def test_checkpoints_that_are_no_state_dict_are_one_line(tmp_path: Path, kind: str, expected: str) -> None:
    res = invoke("finetune", "-v", "micro", "--checkpoint", _checkpoint(tmp_path, kind), "--steps", "1")
    assert expected in error_line(res)


def test_seeds_threads_workers_and_matmul_sizes_past_any_range_are_one_line() -> None:
    huge = "99999999999999999999999"
    for command in (
        ("finetune", "-v", "micro", "--steps", "1"),
        ("speed", "-v", "micro", "--img-size", "32"),
    ):
        assert "--seed must be an integer from 0 to 4294967295" in error_line(
            invoke(*command, "--seed", huge)
        )
    line = error_line(invoke("speed", "-v", "micro", "--img-size", "32", "--matmul-size", "1000000"))
    assert "--matmul-size 1000000 needs" in line and "lower --matmul-size" in line
    for command in (
        ("profile", "-v", "nano", "--mode", "infer"),
        ("speed", "-v", "nano", "--img-size", "32"),
    ):
        assert "--threads must be an integer from 1 to 1,024" in error_line(
            invoke(*command, "--threads", huge)
        )
    workers = invoke("finetune", "-v", "nano", "--steps", "1", "--workers", "100000")
    assert "--workers must be an integer from 1 to 256" in error_line(workers)


@pytest.mark.parametrize(
    ("key", "value"), [("finished", "yesterday"), ("changes", "weird"), ("profile", [1])]
)
def test_records_with_fields_of_the_wrong_type_are_one_line(
    tmp_path: Path, costs_run: Path, key: str, value: Any
) -> None:
    out = copy_run(costs_run, tmp_path / "run")
    records = cell_lines(out)
    write_lines(out, [*records, {**records[0], key: value}])  # a duplicate label: newest_per_label compares
    for command in (("table", out), ("report", "--baseline", out, "--current", out)):
        line = error_line(invoke(*command))
        assert f"line 5: {key} of cell 'dual' is" in line


@pytest.mark.parametrize(
    ("record", "change", "expected"),
    [
        ("speed", {"img_per_s": "lots"}, "paths.plain.img_per_s is 'lots', not a number"),
        ("speed", {"img_per_s": 10**400}, "paths.plain.img_per_s is 1000"),
        ("speed", {"img_per_s_iqr": "ab"}, "paths.plain.img_per_s_iqr is not a [low, high] pair"),
        ("speed", {"speedup_vs_plain": {"ratio": [1]}}, "speedup_vs_plain.ratio is [1], not a number"),
        ("report", {"current": "x"}, "rows[0].current is 'x', not a number"),
        ("report", {"n_current": "many"}, "rows[0].n_current is 'many', not a count of samples"),
    ],
)
def test_history_refuses_records_whose_numbers_are_no_numbers(
    tmp_path: Path, record: str, change: dict[str, Any], expected: str
) -> None:
    if record == "speed":
        doc = json.loads((ROOT / "results/speed/tiny-b8-224-cpu.json").read_text(encoding="utf-8"))
        doc["paths"]["plain"].update(change)
    else:
        env = cell_lines(CI_RESULTS)[0]["environment"]
        row = {"metric": "micro/params.total", "current": 1.0, "n_current": 1, **change}
        doc = {"schema": "conformer-bench.report", "schema_version": 1, "current": {"environment": env}}
        doc["rows"] = [row]
    db = tmp_path / "h.db"
    res = invoke("history", "add", write_json(tmp_path / "r.json", doc), "--db", db, "--repo", ROOT)
    assert expected in error_line(res)
    assert not db.exists()


# --- 8. records that used to pass for what they are not -----------------------------------------------


def test_a_profile_sweep_is_not_taken_for_cell_records(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep.jsonl"
    res = invoke("profile", "-v", "nano,micro", "--mode", "none", "--img-size", "32", "-o", sweep)
    assert res.exit_code == 0, res.output
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(sweep, out / "cells.jsonl")
    assert "line 1: not a conformer-bench.cell record" in error_line(invoke("table", out))


def test_a_record_without_profile_hash_is_stale_not_ok(tmp_path: Path, costs_run: Path) -> None:
    out = copy_run(costs_run, tmp_path / "run")
    records = cell_lines(out)
    del records[1]["profile_hash"]
    write_lines(out, records)
    res = invoke("report", "--baseline", costs_run, "--current", out)
    assert res.exit_code == 1, res.output
    assert "it records no profile_hash" in res.output


# --- 9. the small ones ------------------------------------------------------------------------------------


def test_a_folder_or_fifo_is_named_for_what_it_is(tmp_path: Path) -> None:
    folder = tmp_path / "folder.pth"
    folder.mkdir()
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    res = invoke("finetune", "-v", "micro", "--checkpoint", folder, "--steps", "1")
    assert "is a directory" in error_line(res)
    res = invoke("report", "--baseline", BASELINE, "--current", CI_RESULTS, "--thresholds", fifo)
    assert "is not a regular file (a FIFO, socket or device)" in error_line(res)
    res = invoke("report", "--baseline", BASELINE, "--current", CI_RESULTS, "--thresholds", folder)
    assert "is a directory, not a file" in error_line(res)
    assert "baseline " in error_line(invoke("baseline", "revision", folder))
    assert "is a directory, not a file" in error_line(invoke("baseline", "revision", folder))
    assert "is not a regular file" in error_line(invoke("baseline", "revision", fifo))
    assert "is a directory, not a file" in error_line(invoke("history", "changes", "--db", folder))


@pytest.mark.parametrize(
    "args",
    [("-b", "1,,2"), ("--variant", "micro,"), ("--img-size", ",32"), ("--precision", "fp32,,fp32")],
)
def test_empty_items_in_comma_lists_are_refused(args: tuple[str, str]) -> None:
    res = invoke("profile", "--mode", "none", *args)
    assert "has an empty item; remove the extra comma" in error_line(res)


@pytest.mark.parametrize(
    "args",
    [
        ("speed", "-v", "micro", "--backend", "eager,,onnxruntime"),
        ("ab", "main", "WORKTREE", "-e", "experiments/ci.toml", "--only", "micro,"),
        ("ab", "main", "WORKTREE", "-e", "experiments/ci.toml", "--phases", "infer,,train"),
        ("history", "backfill", "HEAD~1..HEAD", "-e", "experiments/ci.toml", "--only", ",micro"),
    ],
)
@pytest.mark.timeout(60)
def test_empty_items_in_backend_phase_and_cell_lists_are_refused(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    db = ("--db", tmp_path / "h.db") if args[0] == "history" else ()
    assert "has an empty item; remove the extra comma" in error_line(invoke(*args, *db))
    assert not (tmp_path / "h.db").exists()


def test_empty_items_in_speed_lists_and_an_empty_dataset_are_refused() -> None:
    res = invoke("speed", "-v", "micro", "--img-size", "32", "--paths", "plain,,optimized")
    assert "--paths 'plain,,optimized' has an empty item" in error_line(res)
    assert "--dataset is empty" in error_line(
        invoke("finetune", "-v", "micro", "--dataset", "", "--steps", "1")
    )


def test_a_legacy_pickle_is_refused_without_a_warning(tmp_path: Path) -> None:
    import pickle
    import warnings

    legacy = tmp_path / "legacy.pth"
    legacy.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = invoke("finetune", "-v", "micro", "--checkpoint", legacy, "--steps", "1")
    assert "could not be read" in error_line(res)
    assert [str(w.message) for w in caught if "pickle" in str(w.message)] == []


@pytest.mark.timeout(60)
def test_a_ten_thousand_character_label_is_refused_at_once(tmp_path: Path, costs_run: Path) -> None:
    out = copy_run(costs_run, tmp_path / "run")
    records = cell_lines(out)
    write_lines(out, [*records, {**records[0], "label": "x" * 10_000}])
    assert "is not a cell label (at most 200 printable characters)" in error_line(invoke("table", out))


def test_table_on_a_read_only_folder_prints_and_rewrites_nothing(
    tmp_path: Path, costs_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import tempfile

    out = copy_run(costs_run, tmp_path / "run")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real_mkstemp = tempfile.mkstemp

    def read_only(*args: Any, **kwargs: Any) -> Any:  # what a read-only mount answers (root passes chmod)
        if Path(kwargs.get("dir", ".")).resolve() == out.resolve():
            raise OSError(errno.EROFS, "Read-only file system")
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    res = invoke("table", out, "-f", "csv")
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("label,") and "is not writable" in res.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
