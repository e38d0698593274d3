"""``profile`` and ``variants`` through the CLI: record schema, writers, OOM/NaN handling, bad input."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import conformer
from conformer_bench import precision, profiling
from conformer_bench.cli import app
from conformer_bench.flops import costs_of
from conformer_bench.params import COMPONENTS
from conformer_bench.profiling import ProfileSettings, profile_variant
from conformer_bench.records import CpuPhaseMemory, ProfileRecord, Status

runner = CliRunner()
FAST = ["--variant", "nano", "--batch-size", "2", "--warmup", "1", "--iters", "2"]


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def invoke(*args: str) -> Any:
    return runner.invoke(app, ["profile", *args])


@pytest.fixture(scope="module")
def nano_record() -> dict:
    result = runner.invoke(app, ["profile", *FAST, "--format", "json", "--threads", "1"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_profile_json_schema(nano_record: dict) -> None:
    r = nano_record
    assert r["schema"] == "conformer-bench.profile" and r["schema_version"] == 1 and r["status"] == "ok"
    assert r["variant"]["name"] == "nano" and r["variant"]["config"] == conformer.get_config("nano").to_dict()
    model = conformer.create_model("nano")
    assert r["params"]["total"] == sum(p.numel() for p in model.parameters())
    assert set(r["params"]["by_component"]) == set(COMPONENTS)
    flops = r["flops"]
    counted = costs_of(model, 32, exact=True, cross_check=True).flops
    assert flops == {**counted.to_dict(), "cross_check": flops["cross_check"]}
    assert isinstance(flops["fvcore_total"], int) and isinstance(flops["paper_macs"], int)
    for phase in ("infer", "train"):
        t = r["throughput"][phase]
        assert t["img_per_s"] > 0 and t["batch_size"] == t["requested_batch_size"] == 2
        assert len(t["samples_s"]) == t["iters"] == 2 and t["warmup"] == 1
        assert t["img_per_s"] == pytest.approx(2 / t["latency_s"]["median"])
        assert set(t["latency_s"]) >= {"median", "p90", "p99", "iqr"} and isinstance(t["noisy"], bool)
        assert t["timer"] == "perf_counter" and t["path"] == "plain"
        mem = r["memory"][phase]
        assert mem["peak_rss_increase_bytes"] >= 0 and mem["rss_before_bytes"] > 0
    assert r["throughput"]["train"]["last_loss"] > 0
    env = r["environment"]
    for key in (
        "torch",
        "device",
        "cpu_model",
        "threads",
        "precision",
        "batch_size",
        "img_size",
        "tool_version",
        "commit",
    ):
        assert key in env
    assert env["threads"] == 1 and env["threads_requested"] == 1 and r["settings"]["threads"] == 1
    assert env["img_size"] == 32 and env["precision"] == "fp32" and r["settings"]["path"] == "plain"


def _table_rows(printed: str) -> list[list[str]]:
    """The rows of a printed rich table, each cell's wrapped lines joined (how a cell wraps depends on the
    widest value, such as this machine's CPU model name)."""
    rows: list[list[str]] = []
    for line in printed.splitlines():
        if not line.startswith("│"):
            continue
        cells = [c.strip() for c in line.strip("│").split("│")]
        if rows and not cells[0]:  # a wrapped line of the row above
            rows[-1] = [f"{a} {b}".strip() for a, b in zip(rows[-1], cells, strict=True)]
        else:
            rows.append(cells)
    return rows


def test_profile_table_and_output_file(tmp_path: Path) -> None:
    out = tmp_path / "nano.json"
    result = invoke(*FAST, "--mode", "infer", "--no-cross-check", "--output", str(out))
    assert result.exit_code == 0, result.output
    text = "\n".join(" | ".join(row) for row in _table_rows(result.stdout))
    for words in (
        "paper MACs",
        "fvcore total",
        "1 fused multiply-add = 1 flop",
        "threads",
        "precision",
        "batch",
        "images/s",
    ):
        assert words in text, text
    record = json.loads(out.read_text())
    assert record["throughput"]["infer"]["iters"] == 2 and "train" not in record["throughput"]
    assert "cross_check" not in record["flops"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary file left behind"


def test_profile_csv_and_md(tmp_path: Path) -> None:
    result = invoke(
        "--variant", "nano", "--mode", "none", "--format", "csv", "--output", str(tmp_path / "r.csv")
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r.csv").read_text() == result.stdout
    # Without --format the file's extension picks the format; stdout keeps the table.
    result = invoke("--variant", "nano", "--mode", "none", "--output", str(tmp_path / "r.md"))
    assert result.exit_code == 0 and "paper MACs" in result.stdout
    rows = list(csv.DictReader(io.StringIO((tmp_path / "r.csv").read_text())))
    assert len(rows) == 1 and int(rows[0]["params_total"]) > 0 and int(rows[0]["paper_macs"]) > 0
    assert rows[0]["infer_img_per_s"] == ""  # mode none: nothing timed
    md = (tmp_path / "r.md").read_text()
    assert md.startswith("### conformer-bench profile: nano") and "| flops | paper MACs |" in md


def test_mode_none_times_nothing() -> None:
    record = profile_variant(
        conformer.get_config("nano"), ProfileSettings(img_size=32, mode="none", cross_check=False)
    )
    assert isinstance(record, ProfileRecord)
    assert record.throughput == {} and record.memory is None and record.flops.paper_macs > 0


def test_toggles_change_the_profiled_model() -> None:
    result = invoke("--variant", "micro", "--cnn-only", "--mode", "none", "--no-flops", "--format", "json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["variant"]["config"]["branches"] == "cnn" and record["flops"] is None
    assert record["params"]["by_component"]["transformer"] == 0


def test_optimized_path_or_clear_error() -> None:
    result = invoke(*FAST, "--mode", "infer", "--no-flops", "--optimize", "--format", "json")
    try:
        import conformer.optimize  # noqa: F401
    except ImportError:
        assert result.exit_code == 2 and "not available" in result.output
        return
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["settings"]["path"] == "optimized" and record["throughput"]["infer"]["path"] == "optimized"


def test_oom_halves_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    real = profiling._run_phase
    tried: list[int] = []

    def run_phase(run: profiling.PhaseRun, batch: int) -> Any:
        tried.append(batch)
        if batch > 2:
            raise torch.OutOfMemoryError("fake: out of memory")
        return real(run, batch)

    monkeypatch.setattr(profiling, "_run_phase", run_phase)
    settings = ProfileSettings(batch_size=8, img_size=32, mode="infer", warmup=1, iters=2, count_flops=False)
    record = profile_variant(conformer.get_config("nano"), settings)
    assert tried == [8, 4, 2] and record.status == Status.OK
    t = record.throughput["infer"].timing
    assert (t.requested_batch_size, t.batch_size) == (8, 2) and record.environment.batch_size == 2


def test_oom_at_batch_one_and_other_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    def always_oom(*args: Any) -> Any:
        raise torch.OutOfMemoryError("fake")

    monkeypatch.setattr(profiling, "_run_phase", always_oom)
    settings = ProfileSettings(batch_size=2, img_size=32, mode="infer", warmup=1, iters=2, count_flops=False)
    record = profile_variant(conformer.get_config("nano"), settings)
    assert record.status == Status.OOM and "batch size 1" in record.reason and record.throughput == {}

    def other_error(*args: Any) -> Any:
        raise RuntimeError("not an OOM")

    monkeypatch.setattr(profiling, "_run_phase", other_error)
    with pytest.raises(RuntimeError, match="not an OOM"):
        profile_variant(conformer.get_config("nano"), settings)


def test_nan_loss_sets_status(monkeypatch: pytest.MonkeyPatch) -> None:
    real = profiling.heads_loss
    monkeypatch.setattr(profiling, "heads_loss", lambda out, y: real(out, y) * float("nan"))
    settings = ProfileSettings(batch_size=2, img_size=32, mode="train", warmup=1, iters=2, count_flops=False)
    record = profile_variant(conformer.get_config("nano"), settings)
    assert record.status == Status.NAN and "train" in record.reason


BF16 = precision.precision_support("bf16", "cpu")
needs_bf16 = pytest.mark.skipif(not BF16.supported, reason=f"{BF16.reason}")


@needs_bf16
def test_bf16_autocast_is_recorded() -> None:
    settings = ProfileSettings(
        batch_size=2,
        img_size=32,
        mode="infer",
        precision="amp",
        warmup=1,
        iters=2,
        count_flops=False,
        channels_last=True,
    )
    record = profile_variant(conformer.get_config("nano"), settings)
    assert record.settings.autocast_dtype == "bfloat16" and record.environment.precision == "amp"
    assert record.settings.channels_last is True and record.status == Status.OK


def test_heads_loss_averages_present_heads() -> None:
    out = conformer.create_model("nano")(torch.randn(2, 3, 32, 32))
    y = torch.tensor([1, 2])
    ce = torch.nn.functional.cross_entropy
    expected = (ce(out.conv_logits, y) + ce(out.trans_logits, y)) / 2
    assert torch.allclose(profiling.heads_loss(out, y), expected)
    single = conformer.create_model("nano", branches="cnn")(torch.randn(2, 3, 32, 32))
    assert torch.allclose(profiling.heads_loss(single, y), ce(single.conv_logits, y))


# --- bad input: one line, exit 2, no traceback ------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--variant", "tinny"], "did you mean tiny"),
        (["--variant", "nano", "--mode", "fast"], "--mode"),
        (["--variant", "nano", "--precision", "fp8"], "--precision"),
        (["--variant", "nano", "--precision", "fp16", "--device", "cpu"], "bf16"),
        (["--variant", "nano", "--img-size", "40"], "multiple of the patch size 16"),
        (["--variant", "nano", "--batch-size", "0"], "--batch-size"),
        (["--variant", "nano", "--warmup", "0"], "--iters"),
        (["--variant", "nano", "--threads", "0"], "--threads"),
        (["--variant", "nano", "--format", "xml"], "--format"),
        (["--variant", "nano", "--device", "tpu"], "--device"),
        (["--variant", "nano", "--cnn-only", "--no-fcu"], "two branches"),
        (["--variant", "nano", "--cnn-only", "--transformer-only"], "pick one"),
        (["--variant", "nano", "--output", "/nonexistent-dir/r.json"], "does not exist"),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], words: str) -> None:
    result = runner.invoke(app, ["profile", *args])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], result.output
    assert "Traceback" not in result.output


def test_output_under_a_file_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    result = invoke("--variant", "nano", "--mode", "none", "--output", str(blocker / "r.json"))
    assert result.exit_code == 2 and "is a file, not a directory" in result.output
    assert blocker.read_text() == "keep me"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_output_in_a_directory_nobody_can_create_files_in() -> None:
    # /proc refuses new files even to root, for whom os.access always says yes.
    result = invoke("--variant", "nano", "--mode", "none", "--output", "/proc/record.json")
    assert result.exit_code == 2 and "is not writable" in result.output
    assert "Traceback" not in result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_directory(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = invoke("--variant", "nano", "--mode", "none", "--output", str(locked / "r.json"))
    finally:
        locked.chmod(0o700)
    assert result.exit_code == 2 and "not writable" in result.output


# --- variants ------------------------------------------------------------------------------------------------


def test_variants_lists_presets_and_toggles() -> None:
    result = runner.invoke(app, ["variants", "--variant", "micro", "--format", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    presets = {p["name"]: p for p in data["presets"]}
    assert list(presets) == conformer.list_models()
    assert presets["tiny"]["aliases"] == ["Conformer_tiny_patch16"] and presets["tiny"]["from_paper"]
    assert (
        presets["tiny"]["img_size"] == 224
        and not presets["micro"]["from_paper"]
        and presets["micro"]["img_size"] == 64
    )
    micro = conformer.create_model("micro")
    assert presets["micro"]["params"] == sum(p.numel() for p in micro.parameters())
    assert presets["micro"]["macs"] == costs_of(micro, 64, exact=True).paper_macs
    toggles = {t["option"]: t for t in data["toggles"]}
    assert toggles["(release)"]["params"] == presets["micro"]["params"]
    assert toggles["--cnn-only"]["config"]["branches"] == "cnn"
    assert toggles["--no-fcu"]["macs"] < toggles["(release)"]["macs"]


def test_variants_table_and_bad_input() -> None:
    result = runner.invoke(app, ["variants", "--variant", "nano", "--no-macs"])
    assert result.exit_code == 0, result.output
    assert "Conformer_base_patch16" in result.stdout and "no (test preset)" in result.stdout
    assert "--transformer-only" in result.stdout
    bad = runner.invoke(app, ["variants", "--variant", "bogus"])
    assert bad.exit_code == 2 and bad.output.startswith("error: unknown model 'bogus'")


# --- optimised / compiled paths: precision, compile call, memory probe -------------------------------------

INFER_FAST = {"batch_size": 2, "img_size": 32, "mode": "infer", "count_flops": False, "threads": 1}


def _spy_optimizer(monkeypatch: pytest.MonkeyPatch, calls: list[dict[str, Any]], wrap: Any = None) -> None:
    """Record each ``optimize_for_inference`` call; compile=True builds the eager copy (no C++ compiler needed)."""
    optimize = pytest.importorskip("conformer.optimize")
    real = optimize.optimize_for_inference

    def spy(model: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        out = real(model, **{**kwargs, "compile": False})
        return wrap(out) if wrap is not None else out

    monkeypatch.setattr(optimize, "optimize_for_inference", spy)


@needs_bf16
def test_optimized_bf16_runs_the_bf16_copy_and_records_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    _spy_optimizer(monkeypatch, calls)
    settings = ProfileSettings(**INFER_FAST, precision="bf16", warmup=1, iters=2, path="optimized")
    record = profile_variant(conformer.get_config("nano"), settings)
    assert record.status == Status.OK
    assert calls and calls[0]["dtype"] is torch.bfloat16 and calls[0]["fuse_pointwise"] is True
    ran = record.settings.precision_by_phase["infer"]
    assert ran.startswith("bf16 (optimize_for_inference dtype=bfloat16: fused oneDNN bf16 ops, fp32 heads")
    assert record.throughput["infer"].precision == ran

    calls.clear()
    fp32 = profile_variant(
        conformer.get_config("nano"), ProfileSettings(**INFER_FAST, warmup=1, iters=2, path="optimized")
    )
    assert calls[0]["fuse_pointwise"] is True and fp32.settings.precision_by_phase == {"infer": "fp32"}


def test_bf16_profile_refused_on_a_cpu_without_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "native_bf16_flags", lambda: ())
    result = CliRunner().invoke(app, ["profile", "-v", "nano", "--device", "cpu", "--precision", "bf16"])
    assert result.exit_code != 0 and result.output.startswith("error: --precision bf16: bf16 not supported")
    assert "Traceback" not in result.output and "use --precision fp32" in result.output


def test_fused_runner_under_autocast_is_recorded_as_fp32() -> None:
    optimize = pytest.importorskip("conformer.optimize")
    if not optimize.fused_kernels_available("cpu"):
        pytest.skip("no fused oneDNN kernels in this torch build")
    fused = optimize.optimize_for_inference(conformer.create_model("nano"))
    plain = optimize.optimize_for_inference(conformer.create_model("nano"), fuse_pointwise=False)
    assert profiling._phase_precision(fused, "bf16", torch.bfloat16).startswith("fp32")
    assert profiling._phase_precision(plain, "bf16", torch.bfloat16) == "bf16"
    assert profiling._phase_precision(fused, "fp32", None) == "fp32"


class _SlowFirstCall(torch.nn.Module):
    """Stands in for a compiled module: the first call is slow (compiling), later ones are not."""

    def __init__(self, inner: torch.nn.Module, first_s: float) -> None:
        super().__init__()
        self.inner = inner
        self.first_s = first_s
        self.calls = 0

    def forward(self, x: torch.Tensor) -> Any:
        import time

        self.calls += 1
        if self.calls == 1:
            time.sleep(self.first_s)
        return self.inner(x)


def test_compiled_path_compiles_in_an_untimed_first_call(monkeypatch: pytest.MonkeyPatch) -> None:
    runners: list[_SlowFirstCall] = []

    def wrap(module: Any) -> _SlowFirstCall:
        runners.append(_SlowFirstCall(module, 0.3))
        return runners[-1]

    _spy_optimizer(monkeypatch, [], wrap)
    # Auto-ranged: planned from the post-compile warm-up, not from the 0.3 s compile (10 s budget / 0.3 s = 34).
    settings = ProfileSettings(**INFER_FAST, warmup=1, path="compiled")
    record = profile_variant(conformer.get_config("nano"), settings).to_dict()
    t = record["throughput"]["infer"]
    assert record["compile_s"]["infer"] >= 0.3 and "compile_s" not in t
    assert len(t["warmup_s"]) == 1 and t["warmup_s"][0] < 0.3
    assert t["iters"] > 34 and runners[0].calls == 1 + 1 + t["iters"]

    # --warmup 0 --iters N: the compile call still happens, untimed, before the N timed ones.
    runners.clear()
    settings = ProfileSettings(**INFER_FAST, warmup=0, iters=2, path="compiled")
    record = profile_variant(conformer.get_config("nano"), settings).to_dict()
    t = record["throughput"]["infer"]
    assert record["compile_s"]["infer"] >= 0.3 and t["warmup_s"] == [] and t["iters"] == 2
    assert runners[0].calls == 3 and max(t["samples_s"]) < 0.3


def test_runner_is_built_and_compiled_outside_the_memory_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    import contextlib

    from conformer_bench import memory

    inside = [False]
    seen: list[tuple[str, bool]] = []

    @contextlib.contextmanager
    def probe(device: str) -> Iterator[memory.Probe]:
        inside[0] = True
        try:
            yield memory.Probe(CpuPhaseMemory(0, 0, 0, 0, False, 0, 0.0, False))
        finally:
            inside[0] = False

    class Runner(_SlowFirstCall):
        def forward(self, x: torch.Tensor) -> Any:
            seen.append(("call", inside[0]))
            return super().forward(x)

    def wrap(module: Any) -> Runner:
        seen.append(("build", inside[0]))
        return Runner(module, 0.0)

    monkeypatch.setattr(memory, "phase_memory", probe)
    _spy_optimizer(monkeypatch, [], wrap)
    settings = ProfileSettings(**INFER_FAST, warmup=1, iters=2, path="compiled")
    assert profile_variant(conformer.get_config("nano"), settings).status == Status.OK
    # built and compiled (first call) outside; warm-up + 2 timed calls inside
    assert seen == [("build", False), ("call", False), ("call", True), ("call", True), ("call", True)]


def test_format_is_case_insensitive_for_the_file_too(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = invoke("--variant", "nano", "--mode", "none", "-f", "JSON", "-o", str(out))
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["schema"] == "conformer-bench.profile"
    assert json.loads(result.stdout) == json.loads(out.read_text())


def test_training_one_image_on_a_1x1_map_is_refused_with_the_fix() -> None:
    result = invoke("--variant", "nano", "--img-size", "32", "-b", "1", "--mode", "train", "--no-flops")
    assert result.exit_code == 2
    assert "leaves BatchNorm one value per channel" in result.stderr and "--batch-size 2" in result.stderr
    assert "Traceback" not in result.output


# --- a sweep's records file: table FILE, to_frame, LaTeX -------------------------------------------------------


@pytest.fixture
def sweep_with_a_failure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tuple[Path, Path]:
    """A two-variant costs-only sweep whose micro point raises, written as records (.jsonl) and tidy rows (.csv)."""
    real = profiling.profile_variant

    def flaky(cfg: Any, settings: ProfileSettings, **kwargs: Any) -> ProfileRecord:
        if cfg.name == "micro":
            raise RuntimeError("injected\nsecond line")
        return real(cfg, settings, **kwargs)

    monkeypatch.setattr(profiling, "profile_variant", flaky)
    jsonl, csv_path = tmp_path / "sweep.jsonl", tmp_path / "sweep.csv"
    args = ["--variant", "nano,micro", "--mode", "none", "--img-size", "32", "--no-cross-check", "-q"]
    result = invoke(*args, "-o", str(jsonl), "-f", "csv")  # records to the file, tidy rows to stdout
    assert result.exit_code == 1 and "1 of 2 point(s) did not finish ok" in result.output
    csv_path.write_text(result.stdout)
    return jsonl, csv_path


def test_table_of_a_sweep_file_shows_the_failed_point(sweep_with_a_failure: tuple[Path, Path]) -> None:
    jsonl, _ = sweep_with_a_failure
    lines = jsonl.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["schema"] == "conformer-bench.profile" for line in lines)
    result = runner.invoke(app, ["table", str(jsonl)])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.stdout.splitlines() if line.startswith(("| nano", "| micro"))]
    assert len(rows) == 2
    assert "| ok |" in rows[0] and "| failed: RuntimeError: injected |" in rows[1]
    tidy = runner.invoke(app, ["table", str(jsonl), "-f", "csv"])
    assert tidy.exit_code == 0
    read = list(csv.DictReader(io.StringIO(tidy.stdout)))
    assert [r["status"] for r in read] == ["ok", "failed"] and read[1]["reason"] == "RuntimeError: injected"
    latex = runner.invoke(app, ["table", str(jsonl), "-f", "latex"])
    assert (
        latex.exit_code == 0
        and "\\begin{tabular}" in latex.stdout
        and "failed: RuntimeError: injected" in latex.stdout
    )
    one = runner.invoke(app, ["table", str(jsonl.with_suffix(".csv")), "-f", "md"])
    assert one.exit_code != 0 and "Traceback" not in one.output


def test_to_frame_of_a_sweep_equals_its_csv(sweep_with_a_failure: tuple[Path, Path]) -> None:
    import pandas as pd

    import conformer_bench as cb
    from conformer_bench.formatting import TIDY_COLUMNS

    jsonl, csv_path = sweep_with_a_failure
    frame = cb.to_frame(cb.read(jsonl))
    expected = pd.read_csv(csv_path)
    assert list(frame.columns) == list(TIDY_COLUMNS) and list(frame["status"]) == ["ok", "failed"]
    pd.testing.assert_frame_equal(frame, expected)


def test_profile_writes_latex(tmp_path: Path) -> None:
    result = invoke("--variant", "nano", "--mode", "none", "--no-cross-check", "-f", "LaTeX")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("% conformer-bench profile: nano") and "paper MACs" in result.stdout
    assert (
        invoke("--variant", "nano", "--mode", "none", "--no-flops", "-o", str(tmp_path / "r.tex")).exit_code
        == 0
    )
    assert "\\end{tabular}" in (tmp_path / "r.tex").read_text()


def test_table_of_one_profile_json(tmp_path: Path) -> None:
    out = tmp_path / "nano.json"
    assert invoke("--variant", "nano", "--mode", "none", "--no-flops", "-o", str(out)).exit_code == 0
    result = runner.invoke(app, ["table", str(out)])
    assert result.exit_code == 0, result.output
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("| nano")]
    assert "| ok |" in row
    other = tmp_path / "other.json"
    other.write_text('{"schema": "conformer-bench.speed", "schema_version": 99}')
    bad = runner.invoke(app, ["table", str(other)])
    assert bad.exit_code != 0 and "Traceback" not in bad.output
