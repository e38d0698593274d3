"""``conformer-bench speed``: the record's schema and contents, and one-line errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conformer_bench.cli import app
from conformer_bench.records import SpeedRecord

runner = CliRunner()
ROUNDS = 3
BASE = ["speed", "-v", "nano", "--img-size", "32", "-b", "2", "--rounds", str(ROUNDS), "--warmup", "0"]
BASE += ["--matmul-size", "256", "-q", "--precision", "fp32", "--agreement-images", "4"]


def run_json(*extra: str) -> dict:
    result = runner.invoke(app, [*BASE, *extra, "--format", "json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def check_path(entry: dict, batch: int, flop_per_image: int, ceiling: float) -> None:
    assert entry["status"] == "ok" and entry["reason"] is None
    samples = entry["samples_s"]
    assert len(samples) == ROUNDS and all(t > 0 for t in samples)
    median = sorted(samples)[ROUNDS // 2]
    assert entry["latency_s"]["median"] == pytest.approx(median)
    assert entry["img_per_s"] == pytest.approx(batch / median)
    low, high = entry["img_per_s_iqr"]
    assert low <= entry["img_per_s"] <= high
    assert entry["achieved_gflop_s"] == pytest.approx(flop_per_image * batch / median / 1e9)
    assert entry["ceiling_share"] == pytest.approx(entry["achieved_gflop_s"] / ceiling)
    sp = entry["speedup_vs_plain"]
    assert sp["low"] <= sp["ratio"] <= sp["high"] and sp["confidence"] == 0.95
    assert entry["max_rel_diff_vs_plain"] <= 1e-4
    assert entry["first_call_s"] > 0
    executed = entry["executed_paper_macs_per_image"]
    assert 0 < executed <= flop_per_image // 2
    assert entry["executed_gflop_s"] == pytest.approx(2 * executed * batch / median / 1e9)
    assert entry["executed_ceiling_share"] == pytest.approx(entry["executed_gflop_s"] / ceiling)


def test_speed_record_schema_and_numbers(tmp_path: Path) -> None:
    from conformer import get_config
    from conformer_bench.flops import costs_of

    out = tmp_path / "nano.json"
    record = run_json("--paths", "plain,optimized", "--output", str(out))
    assert json.loads(out.read_text()) == record, "--output holds the same record as stdout"
    assert record["schema"] == "conformer-bench.speed" and record["schema_version"] == 3
    assert record["status"] == "ok" and record["reason"] is None
    env = record["environment"]
    for key in ("device", "cpu_model", "threads", "torch", "precision", "batch_size", "img_size", "commit"):
        assert key in env
    assert (env["device"], env["precision"], env["batch_size"], env["img_size"]) == ("cpu", "fp32", 2, 32)
    assert record["variant"]["name"] == "nano" and record["variant"]["config"]["embed_dim"] == 32
    settings = record["settings"]
    assert settings["paths"] == ["plain", "optimized"] and settings["rounds"] == ROUNDS
    committed = json.loads((RESULTS / "speed" / "amd-epyc-zen4" / "tiny-b8-backends.json").read_text())
    for key in ("settings", "flops", "ceiling", "evaluation_set", "environment"):
        assert list(record[key]) == list(committed[key]), f"{key} is written in the order it always was"
    assert list(record["precision_support"]["fp32"]) == list(committed["precision_support"]["fp32"])
    assert list(record["paths"]["plain"]) == [k for k in committed["paths"]["plain"] if k != "breakdown"]
    assert settings["threads"] == env["threads"]

    flops = record["flops"]
    expected = costs_of(get_config("nano"), 32, exact=True)
    assert flops["paper_macs_per_image"] == expected.paper_macs
    assert flops["fvcore_total_per_image"] == expected.fvcore_total
    assert flops["flop_per_image"] == 2 * expected.paper_macs
    assert "2 x paper_macs" in flops["convention"]
    # nano pools before its FCU-down projections on the optimized path: fewer multiply-adds executed
    assert flops["executed_paper_macs_per_image_optimized"] < flops["paper_macs_per_image"]
    assert record["paths"]["plain"]["executed_paper_macs_per_image"] == flops["paper_macs_per_image"]
    assert record["paths"]["optimized"]["executed_paper_macs_per_image"] < flops["paper_macs_per_image"]

    ceiling = record["ceiling"]
    assert len(ceiling["samples_s"]) == ROUNDS and ceiling["flop_per_call"] == 2 * 256**3
    assert ceiling["gflop_s"] == pytest.approx(2 * 256**3 / ceiling["latency_s"]["median"] / 1e9)
    assert ceiling["gflop_s_best"] >= ceiling["gflop_s"]

    assert set(record["paths"]) == {"plain", "optimized"}
    for entry in record["paths"].values():
        check_path(entry, 2, flops["flop_per_image"], ceiling["gflop_s"])
    assert record["paths"]["plain"]["speedup_vs_plain"]["ratio"] == pytest.approx(1.0)
    assert record["paths"]["plain"]["compile_s"] is None
    assert record["best_path"] in record["paths"]


def test_speed_text_formats_name_what_they_count(tmp_path: Path) -> None:
    from conformer_bench.files import read_json
    from conformer_bench.speed import render

    md_path, json_path = tmp_path / "speed.md", tmp_path / "speed.json"
    result = runner.invoke(app, [*BASE, "--paths", "plain,optimized", "--no-fuse", "-o", str(md_path)])
    assert result.exit_code == 0, result.output
    for text in (result.stdout, md_path.read_text()):  # default table on stdout, Markdown by extension
        assert "optimized" in text and "plain" in text
        assert " threads" in text
        assert "fp32" in text and "matmul ceiling" in text and "GFLOP/s" in text
    assert md_path.read_text().count("|") > 20
    record = run_json("--paths", "plain", "-o", str(json_path))
    assert read_json(json_path) == record
    lines = render(SpeedRecord.from_dict(record), "csv").splitlines()
    assert lines[0].startswith("variant,batch_size,img_size,threads,path") and len(lines) == 2


@pytest.mark.slow
def test_speed_compiled_path() -> None:
    import torch

    torch._dynamo.reset()
    record = json.loads(
        runner.invoke(
            app, ["speed", "-v", "nano", "--img-size", "32", "-b", "2", "--rounds", "3", "--warmup", "0",
                  "--matmul-size", "256", "-q", "--paths", "plain,compiled", "--precision", "fp32", "--format", "json"],
        ).stdout
    )  # fmt: skip
    compiled = record["paths"]["compiled"]
    assert compiled["status"] == "ok", compiled["reason"]
    assert compiled["compile_s"] == compiled["first_call_s"] > 0
    assert compiled["max_rel_diff_vs_plain"] <= 1e-4


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--paths", "plain,fast"], "--paths"),
        (["--paths", "plain,plain"], "distinct"),
        (["--img-size", "30"], "multiple of the patch size"),
        (["--rounds", "1"], "--rounds"),
        (["--batch-size", "0"], "--batch-size"),
        (["--format", "xml"], "--format"),
        (["--device", "tpu"], "--device"),
        (["--output", "/nonexistent-dir/x.json"], "does not exist"),
        (["-v", "huge"], "huge"),
        (["--matmul-size", "32"], "use 64 or more"),
    ],
)
def test_speed_bad_input_is_one_line_exit_2(args: list[str], needle: str) -> None:
    result = runner.invoke(app, ["speed", "-v", "nano", "-q", *args])
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert err.startswith("error:") and "\n" not in err and needle in err
    assert "Traceback" not in result.output


def test_extra_ceilings_are_timed_in_the_same_rounds() -> None:
    from conformer import get_config
    from conformer_bench.speed import SpeedSettings, measure_speed

    settings = SpeedSettings(batch_size=2, img_size=32, paths=("plain",), precisions=("fp32",), rounds=ROUNDS,
                             warmup=0, matmul_size=128, agreement_images=0, ceilings=("bf16",))  # fmt: skip
    record = measure_speed(get_config("nano"), settings)
    assert record.settings.ceilings == ["fp32", "bf16"]
    ceilings = record.ceilings
    assert list(ceilings) == ["fp32", "bf16"] and record.ceiling == ceilings["fp32"]
    assert "TF32 off" in ceilings["fp32"].op and ceilings["bf16"].precision == "bf16"
    assert all(len(c.samples_s) == ROUNDS and c.latency_s.n == ROUNDS for c in ceilings.values())
    assert record.paths["plain"].ceiling_precision == "fp32"


def test_a_schema_1_record_renders() -> None:
    """Records of schema 1 (one autocast precision for all paths; an H100 GPU check's) still render."""
    from conformer_bench.speed import render

    path = Path(__file__).parent / "fixtures" / "speed_schema1_h100.json"
    data = json.loads(path.read_text())
    assert data["schema_version"] == 1
    record = SpeedRecord.from_dict(data)
    table = render(record, "table")
    rows = [
        [c.strip() for c in line.split("│")[1:-1]] for line in table.splitlines() if "│ compiled " in line
    ]
    assert rows[0][1] == "bf16" and "(bf16)" in rows[0][7] and "matmul ceiling tf32" in table
    assert "against the plain model in bf16" in table, (
        "schema 1 compared each path with plain in its precision"
    )
    assert render(record, "md") and render(record, "csv")


def test_a_path_that_cannot_be_built_is_recorded_and_the_run_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    """No path ran (the compiled path alone, and it cannot be built): a failed record, exit 1, no traceback."""
    from conformer_bench.backends import eager

    def no_compiler(plain: object, path: str, precision: str, options: object) -> object:
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(eager, "build_runner", no_compiler)
    result = runner.invoke(app, [*BASE, "--paths", "compiled", "--format", "json"])
    assert result.exit_code == 1, result.output
    record = json.loads(result.stdout)
    assert record["status"] == "failed" and record["best_path"] is None
    assert record["paths"]["compiled"]["status"] == "failed"
    assert "no C++ compiler found" in record["reason"]
    assert "error: compiled: RuntimeError: no C++ compiler found" in result.stderr


RESULTS = Path(__file__).parent.parent / "results"
FIXTURES = Path(__file__).parent / "fixtures"


def _committed_speed_files() -> list[Path]:
    files = [*sorted(RESULTS.rglob("*.json")), FIXTURES / "speed_schema1_h100.json"]
    out = []
    for path in files:
        data = json.loads(path.read_text())
        if isinstance(data, dict) and data.get("schema") == "conformer-bench.speed":
            out.append(path)
    return out


def test_every_committed_speed_file_reads_at_the_current_version() -> None:
    """Versions 1, 2 and 3 under results/ migrate on read; the typed record writes the migrated JSON back."""
    files = _committed_speed_files()
    versions = {json.loads(p.read_text())["schema_version"] for p in files}
    assert versions == {1, 2, 3}, versions
    for path in files:
        data = json.loads(path.read_text())
        migrated = SpeedRecord.migrate(data)
        record = SpeedRecord.from_dict(data)
        assert json.dumps(record.to_dict()) == json.dumps(migrated), path
        assert migrated["schema_version"] == SpeedRecord.VERSION
        assert (
            record.best_path in record.paths and record.ceiling == record.ceilings[record.ceiling.precision]
        )
        for name, entry in record.paths.items():
            assert entry.backend in record.settings.backends and entry.precision in record.settings.precisions
            assert entry.precision_name is not None or entry.status != "ok", (path, name)
            if entry.img_per_s is not None:
                assert entry.latency_s is not None and entry.latency_s.median > 0
                assert entry.ceiling_precision in record.ceilings


def test_a_version_1_record_migrates_to_precision_per_path() -> None:
    data = json.loads((RESULTS / "speed" / "tiny-b8-224-cpu.json").read_text())
    assert data["schema_version"] == 1 and "precision" not in data["ceiling"]
    record = SpeedRecord.from_dict(data)
    assert record.settings.precisions == ["fp32"] and record.settings.reference == "model in fp32"
    assert record.ceiling.precision == "fp32" and list(record.ceilings) == ["fp32"]
    assert record.precision_support == {} and record.evaluation_set is None
    for name, entry in record.paths.items():
        assert (entry.path, entry.precision, entry.backend, entry.kernels) == (name, "fp32", "eager", None)
        assert (
            entry.ceiling_precision == "fp32" and entry.latency_s is not None and entry.latency_s.q25 is None
        )
        assert entry.samples_s == data["paths"][name]["samples_s"], "measured values are kept"
    assert data["schema_version"] == 1 and "path" not in data["paths"]["plain"], "the input is not changed"


def test_a_version_2_record_migrates_to_eager_backends() -> None:
    data = json.loads((RESULTS / "speed" / "precision" / "tiny-b8-224-cpu.json").read_text())
    record = SpeedRecord.from_dict(data)
    assert record.settings.backends == ["eager"] and record.settings.breakdown is False
    assert record.settings.ceilings == list(data["ceilings"])
    assert {e.backend for e in record.paths.values()} == {"eager"}
    assert all(e.precision_name == e.precision and e.breakdown is None for e in record.paths.values())
    assert record.settings.reference == "fp32 model"


def test_to_frame_is_the_speed_commands_csv(tmp_path: Path) -> None:
    """``conformer_bench.to_frame(conformer_bench.read(json))`` holds the CSV's columns and values."""
    import io

    import pandas

    import conformer_bench

    out = tmp_path / "speed.json"
    result = runner.invoke(app, [*BASE, "--paths", "plain,optimized", "-o", str(out), "--format", "csv"])
    assert result.exit_code == 0, result.output
    frame = conformer_bench.to_frame(conformer_bench.read(out))
    expected = pandas.read_csv(io.StringIO(result.stdout))
    pandas.testing.assert_frame_equal(frame, expected)
    assert list(frame["path"]) == ["plain", "optimized"] and frame["img/s (median)"].gt(0).all()
    for path in _committed_speed_files():  # every committed record too, failed and unsupported rows included
        record = SpeedRecord.from_dict(json.loads(path.read_text()))
        from conformer_bench.speed import render

        expected = pandas.read_csv(io.StringIO(render(record, "csv")))
        pandas.testing.assert_frame_equal(conformer_bench.to_frame([record]), expected, check_dtype=False)


def test_speed_renders_latex_and_jsonl_from_the_same_columns() -> None:
    from conformer_bench.speed import COLUMNS, render

    record = SpeedRecord.from_dict(
        json.loads((RESULTS / "speed" / "amd-epyc-zen4" / "tiny-b8-backends.json").read_text())
    )
    latex = render(record, "latex")
    assert latex.startswith("\\begin{tabular}") and "95\\% CI" in latex and "batch\\_size" in latex
    assert "onnxruntime-bf16" in latex and latex.count("\\\\") == len(record.paths) + 1
    rows = [json.loads(line) for line in render(record, "jsonl").splitlines()]
    assert [list(r) for r in rows] == [[c.name for c in COLUMNS]] * len(record.paths)
    unsupported = rows[list(record.paths).index("onnxruntime-bf16")]
    assert unsupported["status"].startswith("unsupported: ") and unsupported["img/s (median)"] is None
    assert rows[0]["img/s (median)"] == round(record.paths["plain"].img_per_s or 0, 2)
    md = render(record, "md")
    assert "| openvino | fp32 (openvino: f32) |" in md and "ONNX graph of onnxruntime, openvino" in md


def test_speed_writes_latex_on_stdout_and_to_a_tex_file(tmp_path: Path) -> None:
    tex = tmp_path / "speed.tex"
    result = runner.invoke(app, [*BASE, "--paths", "plain", "-f", "LaTeX", "-o", str(tex)])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("\\begin{tabular}") and "plain & fp32 & ok" in result.stdout
    assert tex.read_text().startswith("\\begin{tabular}") and "95\\% CI" in tex.read_text()


def test_committed_breakdowns_read_typed_and_render_per_path() -> None:
    """A speed path's time by component reads as a typed record; md shows a table per measured path and one
    line per path that cannot have one."""
    from conformer_bench.records.breakdown import Breakdown
    from conformer_bench.speed import render

    timed = [p for p in _committed_speed_files() if '"breakdown": {' in p.read_text()]
    assert timed
    for path in timed:
        record = SpeedRecord.from_dict(json.loads(path.read_text()))
        entries = {n: e.breakdown for n, e in record.paths.items() if e.breakdown is not None}
        assert all(isinstance(b, Breakdown) for b in entries.values())
        md = render(record, "md")
        for name, b in entries.items():
            if b.ok:
                assert f"time by component of {name} (batch {b.batch_size}, {b.device}" in md
            else:
                assert f"time by component of {name}: unsupported ({b.reason})" in md
