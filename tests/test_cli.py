"""The command line as a whole: registration, shared options, aliases, profile sweeps and tidy rows."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from conformer_bench import profiling, read, to_frame
from conformer_bench.cli import app
from conformer_bench.formatting import TIDY_COLUMNS
from conformer_bench.records import PROFILE_SCHEMA, ProfileRecord

runner = CliRunner()
COMMANDS = ("variants", "profile", "speed", "finetune", "ablate", "table", "report", "baseline")
# Options that must stay on each command (a sample of every panel).
KEEPS = {
    "variants": ("--variant", "--img-size", "--macs", "--format", "--output"),
    "profile": ("--variant", "--cnn-only", "--device", "--batch-size", "--precision", "--threads", "--quiet"),
    "speed": ("--paths", "--precision", "--device", "--rounds", "--matmul-size", "--format", "--quiet"),
    "finetune": ("--checkpoint", "--dataset", "--steps", "--device", "--precision", "--save", "--quiet"),
    "ablate": ("--output-dir", "--resume", "--only", "--dry-run", "--executor", "--sbatch", "--quiet"),
    "table": ("--format", "--base"),
    "report": ("--baseline", "--current", "--thresholds", "--warn-only"),
}


def fake_record(cfg: Any, settings: profiling.ProfileSettings, **_: Any) -> ProfileRecord:
    """A profile record without measuring: throughput grows with the batch."""
    batch = settings.batch_size or 2
    return ProfileRecord.from_dict(
        {
            "schema": PROFILE_SCHEMA,
            "schema_version": 1,
            "status": "ok",
            "reason": None,
            "label": cfg.name,
            "variant": {"name": cfg.name, "label": cfg.name, "config": cfg.to_dict()},
            "environment": {"device": "cpu", "threads": 1, "cpu_model": "test CPU"},
            "settings": asdict(settings),
            "params": {"total": 1000, "trainable": 1000, "by_component": {"cnn": 600, "transformer": 400}},
            "flops": None,
            "memory": {"device": "cpu", "method": "fake", "infer": _FAKE_MEMORY},
            "throughput": {
                "infer": {
                    "img_per_s": 10.0 * batch,
                    "batch_size": batch,
                    "requested_batch_size": batch,
                    "iters": 2,
                    "latency_s": {"median": 0.1},
                }
            },
        }
    )


_FAKE_MEMORY = {
    "peak_rss_increase_bytes": 4096,
    "rss_before_bytes": 1,
    "rss_after_bytes": 1,
    "peak_rss_bytes": 4097,
    "peak_from_ru_maxrss": False,
    "rss_samples": 1,
    "sample_interval_s": 0.005,
    "malloc_trim": False,
}


@pytest.fixture
def fake_profile(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, profiling.ProfileSettings]]:
    calls: list[tuple[str, profiling.ProfileSettings]] = []

    def fake(cfg: Any, settings: profiling.ProfileSettings, **kwargs: Any) -> ProfileRecord:
        calls.append((cfg.name, settings))
        return fake_record(cfg, settings)

    monkeypatch.setattr(profiling, "profile_variant", fake)
    return calls


def test_every_command_is_registered_with_its_options_and_examples() -> None:
    root = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert root.exit_code == 0
    for name in COMMANDS:
        assert f" {name} " in root.stdout, name
    for name in (*COMMANDS, "baseline write", "baseline update"):
        result = runner.invoke(app, [*name.split(), "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        if name != "baseline":
            assert "Examples:" in result.stdout, name
        for option in KEEPS.get(name, ()):
            assert option in result.stdout, (name, option)
        assert "<bool>" not in result.stdout, name
    hidden = runner.invoke(app, ["finetune", "--help"], env={"COLUMNS": "200"}).stdout
    assert "--no-progress" not in hidden and "--model" not in hidden


def test_format_any_case_for_stdout_and_file(tmp_path: Path) -> None:
    out = tmp_path / "variants"  # no extension: the file takes --format
    result = runner.invoke(app, ["variants", "--variant", "nano", "--no-macs", "-f", "JSON", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == json.loads(out.read_text())
    jsonl = tmp_path / "v.jsonl"
    result = runner.invoke(app, ["variants", "--variant", "nano", "--no-macs", "-f", "Csv", "-o", str(jsonl)])
    assert result.exit_code == 0 and result.stdout.startswith("kind,name")
    assert all(isinstance(json.loads(line)["params"], int) for line in jsonl.read_text().splitlines())
    bad = runner.invoke(app, ["speed", "-f", "xml"])
    assert bad.exit_code == 2 and bad.output.startswith("error: --format 'xml' is not valid")


def test_hidden_aliases(tmp_path: Path, fake_profile: list) -> None:
    out = tmp_path / "r.json"
    args = [
        "profile",
        "--model",
        "micro",
        "--amp",
        "--results-file",
        str(out),
        "--no-progress",
        "--mode",
        "infer",
        "-f",
        "json",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    name, settings = fake_profile[-1]
    assert name == "micro" and settings.precision == "amp"
    assert json.loads(out.read_text())["label"] == "micro"
    clash = runner.invoke(app, ["profile", "--model", "micro", "--variant", "tiny"])
    assert clash.exit_code == 2 and "--model and --variant disagree" in clash.output
    no_amp = runner.invoke(app, ["speed", "--amp"])  # speed runs no amp: no alias there
    assert no_amp.exit_code == 2 and "No such option: --amp" in no_amp.output


def test_misspelled_option_suggests_the_right_one() -> None:
    result = runner.invoke(app, ["profile", "--mdoe", "infer"])
    assert result.exit_code == 2 and result.output.startswith("error: No such option: --mdoe")
    assert "--mode" in result.output and "--model" not in result.output  # hidden aliases are not offered
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["speed", "--varient", "tiny"])
    assert result.exit_code == 2 and "--variant" in result.output
    result = runner.invoke(app, ["finetune", "--chekpoint", "x.pth"])
    assert result.exit_code == 2 and "Did you mean --checkpoint?" in result.output


def test_sweep_product_goes_on_past_a_failing_point(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[tuple[str, int | None, int, str]] = []

    def flaky(cfg: Any, settings: profiling.ProfileSettings, **kwargs: Any) -> ProfileRecord:
        seen.append((cfg.name, settings.batch_size, settings.img_size, settings.precision))
        if cfg.name == "tiny" and settings.batch_size == 2:
            raise RuntimeError("boom\nsecond line")
        return fake_record(cfg, settings)

    monkeypatch.setattr(profiling, "profile_variant", flaky)
    out = tmp_path / "r.csv"
    sweep = [
        "-v",
        "micro,Conformer_tiny_patch16",
        "-b",
        "1,2",
        "--img-size",
        "32",
        "--precision",
        "fp32,BF16",
    ]
    result = runner.invoke(app, ["profile", *sweep, "--mode", "infer", "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert len(seen) == 8 and {s[3] for s in seen} == {"fp32", "bf16"}
    rows = pd.read_csv(out)
    assert len(rows) == 8
    failed = rows[rows["status"] == "failed"]
    assert set(failed["variant"]) == {"tiny"} and set(failed["batch_size"]) == {2}
    assert (failed["reason"] == "RuntimeError: boom").all()
    assert (rows[rows["status"] == "ok"]["infer_img_per_s"] > 0).all()
    assert "failed: RuntimeError: boom" in result.stdout
    assert "2 of 8 point(s) did not finish ok" in result.output


def test_model_list_and_plot(tmp_path: Path, fake_profile: list) -> None:
    models = tmp_path / "models.txt"
    models.write_text("# small ones\nmicro\n\nnano  # release-sized later\n")
    png = tmp_path / "sweep.png"
    result = runner.invoke(
        app, ["profile", "--model-list", str(models), "-b", "1,2,4", "--mode", "infer", "--plot", str(png)]
    )
    assert result.exit_code == 0, result.output
    assert [name for name, _ in fake_profile] == ["micro"] * 3 + ["nano"] * 3
    assert png.read_bytes().startswith(b"\x89PNG")
    one = runner.invoke(app, ["profile", "-v", "micro", "--mode", "infer", "--plot", str(png)])
    assert one.exit_code == 2 and "--batch-size 1,2,4" in one.output


def test_append_adds_rows_and_refuses_other_columns(tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    args = ["profile", "-v", "micro", "--img-size", "32", "-b", "1,2", "--mode", "infer"]
    args += ["--iters", "1", "--warmup", "1", "--device", "cpu", "--no-flops", "-q", "-o", str(out)]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, [*args, "--append"])
    assert again.exit_code == 0, again.output
    rows = pd.read_csv(out)
    assert list(rows.columns) == list(TIDY_COLUMNS) and len(rows) == 4
    for column in ("infer_img_per_s", "infer_latency_median_s", "params_total", "batch_size", "img_size"):
        assert pd.api.types.is_numeric_dtype(rows[column]), column
    assert (rows["infer_img_per_s"] > 0).all() and (rows["params_total"] > 0).all()
    assert set(rows["branches"]) == {"dual"} and set(rows["coupling"]) == {"both"}
    assert rows["config_hash"].nunique() == 1

    other = tmp_path / "other.csv"
    other.write_text("variant,img_per_s\ntiny,3.0\n")
    refused = runner.invoke(app, [*args[:-1], str(other), "--append"])
    assert refused.exit_code == 2, refused.output
    lines = [line for line in refused.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "other columns" in lines[0] and "drop --append" in lines[0]
    assert other.read_text() == "variant,img_per_s\ntiny,3.0\n"
    md = runner.invoke(app, [*args[:-1], str(tmp_path / "r.md"), "--append"])
    assert md.exit_code == 2 and ".csv or .jsonl" in md.output


def test_jsonl_rows_match_csv_columns(tmp_path: Path, fake_profile: list) -> None:
    out = tmp_path / "r.jsonl"
    result = runner.invoke(app, ["profile", "-v", "micro", "-b", "1,2", "--mode", "infer", "-o", str(out)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]  # one record a line
    assert len(records) == 2 and all(r["schema"] == PROFILE_SCHEMA for r in records)
    rows = to_frame(read(out))
    assert list(rows.columns) == list(TIDY_COLUMNS) and list(rows["infer_img_per_s"]) == [10.0, 20.0]
    again = runner.invoke(
        app,
        ["profile", "-v", "micro", "-b", "4", "--mode", "infer", "-o", str(out), "--append", "-f", "jsonl"],
    )
    assert again.exit_code == 0 and len(out.read_text().splitlines()) == 3


def test_toggle_choices_are_the_config_literals() -> None:
    import re
    from typing import get_args

    from conformer import config

    literals = {"branches": config.Branches, "coupling": config.Coupling, "fcu-down": config.FcuDown}
    literals |= {"fcu-up": config.FcuUp, "heads": config.Heads}
    for command in ("profile", "speed", "finetune"):
        for flag, literal in literals.items():
            result = runner.invoke(app, [command, f"--{flag}", "no-such-choice"])
            assert result.exit_code == 2, result.output
            offered = re.findall(r"'([^']+)'", result.output.partition("is not one of")[2])
            assert tuple(offered) == get_args(literal), (command, flag, result.output)


BROKEN_SEARCH = """
import importlib.abc, sys

class Broken(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "conformer_bench.commands.search":
            raise ModuleNotFoundError("No module named 'optuna'", name="optuna")
        return None

sys.meta_path.insert(0, Broken())
sys.argv = ["conformer-bench", *sys.argv[1:]]
from conformer_bench.cli import main
main()
"""


@pytest.mark.parametrize("args", [["--help"], ["variants", "--variant", "nano"], ["search", "--help"]])
def test_a_command_that_cannot_import_fails_every_invocation_in_one_line(args: list[str]) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", BROKEN_SEARCH, *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "error: the 'search' command cannot load (the package 'optuna' is not installed); install the "
        "project's dependencies with `pip install -e .` (or `pip install optuna`)"
    ]


def test_variants_lists_every_toggle_value_and_reads_back_as_a_record(tmp_path: Path) -> None:
    import conformer_bench
    from conformer import config
    from conformer_bench.commands.variants import TOGGLE_ROWS
    from conformer_bench.records import VariantsRecord

    listed = {(k, v) for _, overrides in TOGGLE_ROWS for k, v in overrides.items()}
    for name in ("branches", "coupling", "fcu_down", "fcu_up", "heads"):
        values = config.get_args(getattr(config, "".join(w.title() for w in name.split("_"))))
        for value in values:
            assert ((name, value) in listed) == (value != config.TOGGLE_DEFAULTS[name]), (name, value)
    out = tmp_path / "variants.json"
    result = runner.invoke(app, ["variants", "--variant", "nano", "--no-macs", "-f", "csv", "-o", str(out)])
    assert result.exit_code == 0, result.output
    (record,) = conformer_bench.read(out)
    assert isinstance(record, VariantsRecord) and record.toggle_base == "nano"
    assert record.to_dict() == json.loads(out.read_text())
    import csv

    rows = list(csv.DictReader(result.stdout.splitlines()))
    assert [r["name"] for r in rows if r["kind"] == "toggle of nano"] == [t.option for t in record.toggles]
    assert "--no-fcu" in [t.option for t in record.toggles] and record.toggles[0].macs is None
