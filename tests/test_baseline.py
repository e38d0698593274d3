"""`conformer-bench baseline write|update` and reports against a baseline file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_report import (
    cell,
    environment,
    finetune_record,
    profile_record,
    report_cli,
    runner,
    timing,
    write,
    write_cells,
)

import conformer_bench
from conformer_bench.cli import app
from conformer_bench.records import BaselineRecord
from conformer_bench.report import compare, load_metrics, load_thresholds
from conformer_bench.report.baseline import baseline_record, read_baseline


def baseline_cli(*args: str | Path) -> object:
    return runner.invoke(app, ["baseline", *map(str, args)])


def test_write_keeps_environment_and_raw_samples(tmp_path: Path) -> None:
    rec = profile_record(infer={"batch_size": 4, "samples_s": [0.5, 0.25, 0.2]})
    src = write(tmp_path / "p.json", rec)
    out = tmp_path / "baseline.json"
    result = baseline_cli("write", "--from", src, "--output", out)
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["schema"] == "conformer-bench.baseline" and doc["schema_version"] == 1
    assert doc["source_kind"] == "profile"
    assert doc["environment"]["threads"] == 2 and doc["environment"]["cpu_model"] == "Test CPU 2.0GHz"
    tp = doc["metrics"]["throughput.infer.img_per_s"]
    assert tp["samples"] == [8.0, 16.0, 20.0]  # batch / seconds, unrounded
    assert (tp["unit"], tp["direction"], tp["kind"]) == ("img/s", "higher", "noisy")
    assert tp["timing_env"]["threads"] == 2
    params = doc["metrics"]["params.total"]
    assert params["samples"] == [557_580] and params["direction"] == "equal" and params["kind"] == "exact"
    assert doc["history"][0]["action"] == "write"


def test_write_refuses_to_replace_and_update_is_explicit(tmp_path: Path) -> None:
    src = write(tmp_path / "p.json", profile_record())
    out = tmp_path / "baseline.json"
    assert baseline_cli("write", "--from", src, "--output", out).exit_code == 0
    result = baseline_cli("write", "--from", src, "--output", out)
    assert result.exit_code == 2 and "already exists; use `baseline update`" in result.stderr
    assert baseline_cli("write", "--from", src, "--output", out, "--force").exit_code == 0


def test_report_against_baseline_matches_report_against_record(tmp_path: Path) -> None:
    base_rec = write(tmp_path / "b.json", profile_record(infer=timing(0.010, seed=1)))
    cur = write(tmp_path / "c.json", profile_record(infer=timing(0.0125, seed=2), params=1))
    out = tmp_path / "baseline.json"
    assert baseline_cli("write", "--from", base_rec, "--output", out).exit_code == 0
    rules = load_thresholds()
    direct = compare(load_metrics(base_rec), load_metrics(cur), rules)
    via_file = compare(load_metrics(out), load_metrics(cur), rules)
    assert [(r.metric, r.status, r.baseline, r.p_value) for r in direct.rows] == [
        (r.metric, r.status, r.baseline, r.p_value) for r in via_file.rows
    ]
    result = report_cli("--baseline", out, "--current", cur)
    assert result.exit_code == 1
    assert "Baseline: `baseline.json` (profile)" in result.stdout


def test_baseline_environment_mismatch_is_reported(tmp_path: Path) -> None:
    out = tmp_path / "baseline.json"
    baseline_cli("write", "--from", write(tmp_path / "b.json", profile_record()), "--output", out)
    cur = write(tmp_path / "c.json", profile_record(env=environment(torch="2.14.0", threads=4)))
    result = report_cli("--baseline", out, "--current", cur)
    assert result.exit_code == 0
    assert "Environments differ (threads 2 → 4, torch 2.13.0 → 2.14.0)" in result.stdout
    assert "NOT COMPARABLE" in result.stdout


def test_update_replaces_metrics_and_records_history(tmp_path: Path) -> None:
    out = tmp_path / "baseline.json"
    baseline_cli("write", "--from", write(tmp_path / "b.json", profile_record()), "--output", out)
    newer = write(tmp_path / "n.json", profile_record(params=600_000, seed=3))
    result = baseline_cli("update", "--from", newer, "--baseline", out)
    assert result.exit_code == 0, result.output
    assert "metric(s) changed" in result.stdout
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["metrics"]["params.total"]["samples"] == [600_000]
    assert [h["action"] for h in doc["history"]] == ["write", "update"]
    assert report_cli("--baseline", out, "--current", newer).exit_code == 0


def test_update_only_some_metrics(tmp_path: Path) -> None:
    out = tmp_path / "baseline.json"
    baseline_cli("write", "--from", write(tmp_path / "b.json", profile_record()), "--output", out)
    newer = write(tmp_path / "n.json", profile_record(params=600_000, flops=1, seed=3))
    result = baseline_cli("update", "--from", newer, "--baseline", out, "--only", "params.*")
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["metrics"]["params.total"]["samples"] == [600_000]
    assert doc["metrics"]["flops.fvcore_total"]["samples"] == [120_000_000]
    nothing = baseline_cli("update", "--from", newer, "--baseline", out, "--only", "nope.*")
    assert nothing.exit_code == 2 and "matches --only" in nothing.stderr


def test_ablation_baseline_keeps_cell_configs(tmp_path: Path) -> None:
    seeds = [finetune_record(70.0), finetune_record(71.0)]
    results = write_cells(tmp_path / "run", [cell("dual", profile_record(), seeds)])
    out = tmp_path / "baseline.json"
    assert baseline_cli("write", "--from", results, "--output", out).exit_code == 0
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["source_kind"] == "ablation"
    assert doc["metrics"]["dual/finetune.top1.sum"]["samples"] == [70.0, 71.0]
    assert doc["metrics"]["dual/params.total"]["context"] is not None
    other = write_cells(tmp_path / "other", [cell("dual", profile_record(), seeds, coupling="none")])
    result = report_cli("--baseline", out, "--current", other)
    assert result.exit_code == 1 and "cell config differs" in result.stdout


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d.update(schema_version=7), "upgrade conformer-bench"),
        (lambda d: d.update(metrics={"x": {"samples": []}}), "malformed"),
        (lambda d: d.update(source_kind=None), "missing source_kind"),
    ],
)
def test_malformed_baseline_exits_2(tmp_path: Path, mutate: object, expected: str) -> None:
    out = tmp_path / "baseline.json"
    baseline_cli("write", "--from", write(tmp_path / "b.json", profile_record()), "--output", out)
    doc = json.loads(out.read_text(encoding="utf-8"))
    mutate(doc)  # type: ignore[operator]
    out.write_text(json.dumps(doc), encoding="utf-8")
    result = report_cli("--baseline", out, "--current", tmp_path / "b.json")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and expected in result.stderr


def test_bad_baseline_commands_exit_2(tmp_path: Path) -> None:
    prof = write(tmp_path / "p.json", profile_record())
    crashed = write(tmp_path / "oom.json", profile_record(status="oom"))
    out = tmp_path / "baseline.json"
    result = baseline_cli("write", "--from", crashed, "--output", out)
    assert result.exit_code == 2 and "holds no measured metric" in result.stderr
    assert not out.exists()
    result = baseline_cli("write", "--from", prof, "--output", tmp_path / "missing" / "b.json")
    assert result.exit_code == 2 and "does not exist" in result.stderr
    result = baseline_cli("update", "--from", prof, "--baseline", prof)
    assert result.exit_code == 2 and "expected 'conformer-bench.baseline'" in result.stderr
    baseline_cli("write", "--from", prof, "--output", out)
    fine = write(tmp_path / "f.json", finetune_record())
    result = baseline_cli("update", "--from", fine, "--baseline", out)
    assert result.exit_code == 2 and "use `baseline write`" in result.stderr


def test_write_and_update_refuse_results_of_a_dirty_tree(tmp_path: Path) -> None:
    dirty = write(tmp_path / "d.json", profile_record(env=environment(commit="abc123def456+dirty")))
    out = tmp_path / "baseline.json"
    result = baseline_cli("write", "--from", dirty, "--output", out)
    assert result.exit_code == 2 and not out.exists()
    assert "uncommitted changes (commit abc123def456+dirty)" in result.stderr
    assert "--allow-dirty" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert baseline_cli("write", "--from", dirty, "--output", out, "--allow-dirty").exit_code == 0
    clean = write(tmp_path / "c.json", profile_record())
    assert baseline_cli("update", "--from", dirty, "--baseline", out).exit_code == 2
    assert baseline_cli("update", "--from", clean, "--baseline", out).exit_code == 0


def test_report_on_a_missing_run_folder_names_the_command_that_makes_it(tmp_path: Path) -> None:
    base = write(tmp_path / "b.json", profile_record())
    result = report_cli("--baseline", base, "--current", tmp_path / "runs" / "ci")
    assert result.exit_code == 2
    assert "conformer-bench ablate experiments/ci.toml --output-dir" in result.stderr
    missing_baseline = report_cli("--baseline", tmp_path / "nope.json", "--current", base)
    assert missing_baseline.exit_code == 2 and "conformer-bench baseline write" in missing_baseline.stderr


RESULTS = Path(__file__).resolve().parent.parent / "results"
COMMITTED_BASELINES = sorted((RESULTS / "baselines").rglob("*.json"))


@pytest.mark.parametrize("path", COMMITTED_BASELINES, ids=lambda p: p.name)
def test_committed_baselines_read_back_typed_and_write_the_same_json(path: Path) -> None:
    (record,) = conformer_bench.read(path)
    assert isinstance(record, BaselineRecord) and record.metrics and record.source_kind == "ablation"
    assert record.to_dict() == json.loads(path.read_text(encoding="utf-8"))
    assert record.history[0].action == "write" and record.history[0].source == "results/ci"


def test_the_committed_baseline_is_what_the_committed_results_give() -> None:
    """`baseline write --from results/ci` today gives the committed baseline's metrics and environment."""
    committed = read_baseline(RESULTS / "baselines" / "ci.json")
    fresh = baseline_record(load_metrics(RESULTS / "ci"))
    assert fresh.metrics == committed.metrics and fresh.environment == committed.environment
    assert fresh.revision == committed.revision and fresh.crashed == committed.crashed


def test_a_baseline_metric_of_the_wrong_shape_names_the_metric_and_the_fix(tmp_path: Path) -> None:
    out = tmp_path / "baseline.json"
    baseline_cli("write", "--from", write(tmp_path / "b.json", profile_record()), "--output", out)
    doc = json.loads(out.read_text(encoding="utf-8"))
    doc["metrics"]["params.total"]["direction"] = "sideways"
    out.write_text(json.dumps(doc), encoding="utf-8")
    result = report_cli("--baseline", out, "--current", tmp_path / "b.json")
    assert result.exit_code == 2
    assert (
        "metric 'params.total' has an unknown kind, direction or unit; rewrite it with `baseline write`"
        in (result.stderr)
    )
