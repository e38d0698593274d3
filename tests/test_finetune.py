"""``finetune``: records, determinism, heads, checkpoints, non-finite losses, the CLI, the 95 % digits check."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import conformer
import conformer_bench.finetune as ft
from conformer_bench.cli import app
from conformer_bench.errors import BenchError
from conformer_bench.finetune import FinetuneSettings, lr_at, run_finetune
from conformer_bench.records import FinetuneRecord, Status
from conformer_bench.toggles import build_config

FIXTURE = Path(__file__).parent / "fixtures" / "official_conformer_micro.pt"
# A few optimizer steps of the smallest preset on a slice of digits: the real code paths, in seconds.
TINY = {"steps": 6, "batch_size": 32, "train_size": 160, "val_size": 60, "device": "cpu"}
runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Any:
    """One intra-op thread: correctness does not need two, and on a busy CPU two threads stall each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny(**kw: Any) -> FinetuneSettings:
    return FinetuneSettings(**{**TINY, **kw})


@pytest.fixture(scope="module")
def nano_record() -> FinetuneRecord:
    return run_finetune(conformer.get_config("nano"), _tiny(), show_progress=False)


def _round_trip(record: FinetuneRecord) -> FinetuneRecord:
    """Write the record as its file holds it, read it back: the same record, the same JSON."""
    text = json.dumps(record.to_dict())
    back = FinetuneRecord.from_dict(json.loads(text))
    assert back == record and json.dumps(back.to_dict()) == text
    return back


def test_record_schema(nano_record: FinetuneRecord) -> None:
    r = nano_record
    d = r.to_dict()
    assert d["schema"] == "conformer-bench.finetune" and d["schema_version"] == 1 and d["status"] == "ok"
    assert r.status is Status.OK and r.reason is None
    env = r.environment
    assert env.device == "cpu" and env.batch_size == 32 and env.img_size == 32 and env.world_size == 1
    assert r.variant.name == "nano" and r.variant.config["num_classes"] == 10
    assert r.data.source == "digits" and r.data.train_size == 160 and r.data.val_size == 60
    h = r.hyper
    # 160 images / batch 32 = 5 steps per epoch, so 6 steps are 2 epochs, the second partial.
    assert (h.steps, h.steps_per_epoch, h.epochs, h.warmup_steps) == (6, 5, 2, 1)
    assert h.optimizer.impl == "foreach" and h.distributed.world_size == 1
    assert [e.step for e in r.history] == [5, 6]
    final = r.final
    assert final.top5 is not None
    assert set(final.top1) == {"conv", "trans", "sum"} and set(final.top5) == {"conv", "trans", "sum"}
    for head in ("conv", "trans", "sum"):
        top1, top5 = final.top1[head], final.top5[head]
        assert top1 is not None and top5 is not None and 0 <= top1 <= top5 <= 100
        assert (top1 * 60 / 100) == pytest.approx(round(top1 * 60 / 100))  # a count of 60 images
    assert final.val_count == 60 and final.steps_done == 6
    assert final.val_loss is not None and math.isfinite(final.val_loss)
    assert final.img_per_s is not None and final.img_per_s > 0 and final.peak_memory_bytes > 0
    assert r.final.top1 == r.history[-1].top1
    assert [c.step for c in r.train_curve] == [5, 6]
    assert r.settings == _tiny() and r.checkpoint is None


def test_ok_record_writes_and_reads_back(nano_record: FinetuneRecord) -> None:
    back = _round_trip(nano_record)
    assert back.status is Status.OK and back.final.bf16_inference is None
    assert "bf16_inference" not in back.to_dict()["final"] and "cue_top1" not in back.to_dict()["final"]


def test_same_seed_same_numbers(nano_record: FinetuneRecord) -> None:
    again = run_finetune(conformer.get_config("nano"), _tiny(), show_progress=False)
    assert again.final.top1 == nano_record.final.top1
    assert again.final.val_loss == nano_record.final.val_loss
    assert [e.train_loss for e in again.history] == [e.train_loss for e in nano_record.history]


def test_single_branch_reports_its_one_head() -> None:
    r = run_finetune(build_config("nano", cnn_only=True), _tiny(steps=2), show_progress=False)
    top1 = r.final.top1
    assert top1["trans"] is None and top1["conv"] is not None and top1["sum"] == top1["conv"]
    assert r.final.top5 is not None and r.final.top5["trans"] is None


def test_lr_schedule() -> None:
    assert lr_at(0, 100, 10, 1.0) == pytest.approx(0.1)
    assert lr_at(9, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert lr_at(55, 100, 10, 1.0) == pytest.approx((1 + ft.MIN_LR_RATIO) / 2)  # cosine midpoint
    assert lr_at(100, 100, 10, 1.0) == pytest.approx(ft.MIN_LR_RATIO)
    assert lr_at(99, 100, 10, 1.0) > lr_at(100, 100, 10, 1.0)
    assert lr_at(0, 10, 0, 2.0) == pytest.approx(2.0)


def test_non_finite_loss_stops_with_status(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = ft.heads_loss

    def poisoned(out: Any, target: Any, smoothing: float) -> Any:
        loss = real(out, target, smoothing)
        calls["n"] += 1
        return loss * float("nan") if calls["n"] >= 3 and torch.is_grad_enabled() else loss

    monkeypatch.setattr(ft, "heads_loss", poisoned)
    r = run_finetune(conformer.get_config("nano"), _tiny(steps=15, train_size=480), show_progress=False)
    assert r.status is Status.NAN and r.reason is not None
    assert "non-finite training loss" in r.reason and "step 10 of 15" in r.reason
    assert r.final.top1["sum"] is None and r.final.steps_done == 10
    assert r.history == []
    back = _round_trip(r)
    assert back.status is Status.NAN and back.final.val_loss is None and back.to_dict()["status"] == "nan"


def test_failed_save_is_a_failed_record_that_reads_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The measurements stand when --save cannot write: status failed, the reason, and the numbers."""

    def disk_full(model: Any, path: str) -> None:
        raise OSError(28, "No space left on device", path)

    monkeypatch.setattr(conformer, "save_checkpoint", disk_full)
    saved = tmp_path / "ft.pth"
    r = run_finetune(conformer.get_config("nano"), _tiny(steps=2, save=str(saved)), show_progress=False)
    assert r.status is Status.FAILED and r.reason is not None and r.reason.startswith("--save: ")
    assert r.saved_checkpoint is None and r.final.top1["sum"] is not None and not saved.exists()
    back = _round_trip(r)
    assert back.status is Status.FAILED and back.reason == r.reason


def test_checkpoint_heads_reset(tmp_path: Path) -> None:
    release = torch.load(FIXTURE, weights_only=True)["state_dict"]
    model = conformer.create_model("micro", num_classes=4)
    info = ft._load_release_checkpoint(model, str(FIXTURE), 4)
    assert {k for k, _, _ in info.shape_conflicts} == {
        "conv_head.weight",
        "conv_head.bias",
        "trans_head.weight",
        "trans_head.bias",
    }
    assert info.missing == [] and info.unexpected == [] and not info.partial
    assert model.conv_head.out_features == 4 and model.trans_head.out_features == 4
    assert torch.equal(model.stem.conv.weight, release["conv1.weight"])  # body weights came from the file
    assert info.heads_reset == [
        "conv_head.bias",
        "conv_head.weight",
        "trans_head.bias",
        "trans_head.weight",
    ]

    # End to end: fine-tune the release weights on 4-class local-global at 64 px, then save release keys.
    saved = tmp_path / "ft.pth"
    r = run_finetune(
        conformer.get_config("micro"),
        _tiny(
            dataset="local-global",
            img_size=64,
            steps=2,
            train_size=64,
            val_size=16,
            checkpoint=str(FIXTURE),
            save=str(saved),
        ),
        show_progress=False,
    )
    assert r.checkpoint is not None
    assert r.status is Status.OK and r.checkpoint.loaded_keys > 100 and r.saved_checkpoint == str(saved)
    assert (
        r.variant.config["num_classes"] == 4 and r.final.top5 is None and "top5" not in r.to_dict()["final"]
    )
    assert r.final.cue_top1 is not None and set(r.final.cue_top1) == {"local", "global"}
    assert r.data.cues is not None and _round_trip(r).checkpoint == r.checkpoint
    fresh = conformer.create_model("micro", num_classes=4)
    assert conformer.load_checkpoint(fresh, saved, strict=True).ok


def test_checkpoint_for_other_variant_is_refused() -> None:
    model = conformer.create_model("nano")
    with pytest.raises(BenchError, match="does not fit"):
        ft._load_release_checkpoint(model, str(FIXTURE), 10)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"epochs": 1, "steps": 1}, "exclude each other"),
        ({"precision": "fp16"}, "needs a CUDA device"),
        ({"lr": -1.0}, "--lr"),
        ({"batch_size": 1}, "at least 2"),
        ({"batch_size": 512}, "exceeds the 160 training images"),
        ({"img_size": 40}, "multiple of the patch size"),
    ],
)
def test_bad_settings_raise(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(BenchError, match=match):
        run_finetune(conformer.get_config("nano"), _tiny(**kw), show_progress=False)


def test_cli_writes_record_and_formats(tmp_path: Path) -> None:
    out = tmp_path / "rec.json"
    args = [
        "finetune",
        "--variant",
        "nano",
        "--steps",
        "2",
        "--batch-size",
        "32",
        "--train-size",
        "64",
        "--val-size",
        "20",
        "--device",
        "cpu",
        "--no-progress",
    ]
    res = runner.invoke(app, [*args, "--output", str(out), "--format", "json"])
    assert res.exit_code == 0, res.output
    record = json.loads(out.read_text())
    assert json.loads(res.stdout) == record
    assert record["schema"] == "conformer-bench.finetune" and record["hyper"]["steps"] == 2
    assert record["settings"]["train_size"] == 64

    res = runner.invoke(app, [*args, "--format", "csv", "--transformer-only"])
    assert res.exit_code == 0, res.output
    header, row = res.stdout.strip().splitlines()  # one row per record
    cells = dict(zip(header.split(","), row.split(","), strict=True))
    assert header.startswith("variant,dataset,status,top1_sum,top1_conv,top1_trans")
    assert cells["status"] == "ok" and cells["top1_conv"] == "" and cells["top1_trans"] == cells["top1_sum"]
    assert cells["steps"] == "2" and cells["cue_local"] == ""

    res = runner.invoke(app, [*args, "--format", "table"])
    assert res.exit_code == 0 and "top1_sum (%)" in res.stdout and "per epoch" in res.stdout


def test_formats_come_from_one_set_of_columns(nano_record: FinetuneRecord) -> None:
    """CSV, JSON lines, Markdown and LaTeX carry the same columns, rounded the same way."""
    from conformer_bench.finetune_table import SUMMARY, render

    names = [c.name for c in SUMMARY]
    csv_header, csv_row = render(nano_record, "csv").splitlines()
    assert csv_header.split(",") == names
    (line,) = render(nano_record, "jsonl").splitlines()
    row = json.loads(line)
    assert list(row) == names and row["top1_sum"] == round(nano_record.final.top1["sum"] or 0, 2)
    assert csv_row.split(",")[names.index("top1_sum")] == str(row["top1_sum"])
    assert row["peak_memory_mib"] == round(nano_record.final.peak_memory_bytes / 2**20, 1)
    md = render(nano_record, "md")
    assert "| variant | dataset | status | top1_sum (%) |" in md and "**per epoch**" in md
    assert md.count("\n| 1 |") + md.count("\n| 2 |") == 2  # one row per epoch
    latex = render(nano_record, "latex")
    assert latex.count("\\begin{tabular}") == 2 and "top1\\_sum (\\%)" in latex
    assert json.loads(render(nano_record, "json")) == nano_record.to_dict()


def test_to_frame_equals_the_command_csv(tmp_path: Path) -> None:
    """conformer_bench.to_frame of the record file is the command's CSV, read by pandas."""
    import io

    import pandas

    import conformer_bench

    args = ["finetune", "--variant", "nano", "--steps", "2", "--batch-size", "32", "--train-size", "64"]
    args += ["--val-size", "20", "--device", "cpu", "--no-progress"]
    out = tmp_path / "rec.json"
    res = runner.invoke(app, [*args, "-o", str(out), "-f", "csv"])
    assert res.exit_code == 0, res.output
    expected = pandas.read_csv(io.StringIO(res.stdout))
    frame = conformer_bench.to_frame(conformer_bench.read(out))
    assert len(frame) == 1
    pandas.testing.assert_frame_equal(frame, expected, check_dtype=False)


def test_cli_bad_input_exit_2(tmp_path: Path) -> None:
    for extra in (
        ["--epochs", "1", "--steps", "1"],
        ["--dataset", str(tmp_path / "nope")],
        ["--precision", "fp8"],
    ):
        res = runner.invoke(app, ["finetune", "--variant", "nano", "--device", "cpu", *extra])
        assert res.exit_code == 2, res.output
        assert res.output.startswith("error: ") and len(res.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--lr-warmup", "nan"),
        ("--lr-warmup", "inf"),
        ("--clip-grad", "nan"),
        ("--weight-decay", "nan"),
        ("--lr", "nan"),
        ("--lr", "inf"),
        ("--label-smoothing", "nan"),
    ],
)
def test_cli_non_finite_number_is_one_line_exit_2(option: str, value: str) -> None:
    res = runner.invoke(app, ["finetune", "--variant", "nano", "--device", "cpu", option, value])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {option} must be a finite number")


def test_cli_nan_exit_1_and_record_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ft, "heads_loss", lambda out, y, s: out.logits.sum() * float("inf"))
    out = tmp_path / "rec.json"
    res = runner.invoke(
        app,
        [
            "finetune",
            "--variant",
            "nano",
            "--steps",
            "2",
            "--batch-size",
            "32",
            "--train-size",
            "64",
            "--val-size",
            "20",
            "--device",
            "cpu",
            "-o",
            str(out),
        ],
    )
    assert res.exit_code == 1
    assert "non-finite" in res.output
    assert json.loads(out.read_text())["status"] == "nan"


@pytest.mark.slow
def test_default_micro_digits_reaches_95(tmp_path: Path) -> None:
    """The default command, as a user types it: micro on digits must pass 95 % top-1 (sum head)."""
    out = tmp_path / "micro.json"
    res = runner.invoke(
        app, ["finetune", "--variant", "micro", "--no-progress", "--bf16-inference", "-o", str(out)]
    )
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert r["data"]["source"] == "digits" and r["data"]["val_size"] == 359 and r["data"]["img_size"] == 32
    assert r["hyper"]["epochs"] == ft.DEFAULT_EPOCHS and r["hyper"]["lr"] == ft.DEFAULT_LR
    assert r["final"]["top1"]["sum"] >= 95.0, r["final"]
    bf16 = r["final"]["bf16_inference"]
    if bf16["status"] == "ok":  # bf16 inference of the fine-tuned model agrees with fp32 on 99 % of images
        assert min(bf16["top1_agreement"].values()) >= 99.0, bf16


def test_image_folder_run_with_workers_and_channels_last(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 3)):
        for name, color in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                arr = np.clip(rng.normal(color, 25, size=(40, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(folder / f"{i}.jpg")
    (tmp_path / "train" / "red" / "Thumbs.db").write_bytes(b"\x00\x01")
    settings = _tiny(
        dataset=str(tmp_path),
        img_size=32,
        steps=2,
        batch_size=8,
        train_size=None,
        val_size=None,
        workers=1,
        channels_last=True,
        precision="bf16",
    )
    r = run_finetune(conformer.get_config("nano"), settings, show_progress=False)
    assert r.status is Status.OK
    assert r.data.source == "folder" and r.data.classes == ["blue", "red"]
    assert (r.data.train_size, r.data.val_size, r.data.skipped_files) == (16, 6, 1)
    assert r.data.skipped_examples is not None and r.data.skipped_examples[0].path.endswith("Thumbs.db")
    assert r.hyper.channels_last and r.hyper.workers == 1 and r.environment.precision == "bf16"
    assert r.final.val_count == 6 and r.final.top5 is None
    _round_trip(r)


def test_lr_warmup_and_its_deprecated_spelling(tmp_path: Path) -> None:
    """--lr-warmup sets the learning-rate warm-up; --warmup still does, with a one-line warning."""
    args = ["finetune", "--variant", "nano", "--steps", "2", "--batch-size", "32", "--train-size", "64"]
    args += ["--val-size", "20", "--device", "cpu", "--no-progress", "-f", "csv"]
    for option, warned in (("--lr-warmup", False), ("--warmup", True)):
        out = tmp_path / f"{option.strip('-')}.json"
        res = runner.invoke(app, [*args, option, "0.5", "-o", str(out)])
        assert res.exit_code == 0, res.output
        record = FinetuneRecord.from_dict(json.loads(out.read_text()))
        assert record.settings.warmup == 0.5 and record.hyper.warmup_steps == 1
        warnings = [ln for ln in res.stderr.splitlines() if ln.startswith("warning:")]
        assert warnings == (
            ["warning: finetune --warmup is deprecated; use --lr-warmup (the learning-rate warm-up)"]
            if warned
            else []
        )


def test_lr_warmup_given_twice_is_one_line_exit_2() -> None:
    res = runner.invoke(
        app, ["finetune", "--variant", "nano", "--device", "cpu", "--warmup", "1", "--lr-warmup", "1"]
    )
    assert res.exit_code == 2, res.output
    assert res.output.strip() == "error: --warmup is the old spelling of --lr-warmup; give only --lr-warmup"


def test_lr_warmup_hides_its_old_spelling() -> None:
    res = runner.invoke(app, ["finetune", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert res.exit_code == 0 and "--lr-warmup" in res.output and "--warmup " not in res.output


def test_committed_finetune_records_read_back() -> None:
    """Every fine-tune record under results/ (record files and ablation cells) reads back to the same JSON."""
    results = Path(__file__).parent.parent / "results"
    seen = 0
    for path in sorted(results.rglob("*.json*")):
        text = path.read_text()
        if "conformer-bench.finetune" not in text:
            continue
        lines = text.splitlines() if path.suffix == ".jsonl" else [text]
        for line in filter(str.strip, lines):
            value = json.loads(line)
            found = value.get("finetune") or [] if path.suffix == ".jsonl" else [value]
            for raw in found:
                record = FinetuneRecord.from_dict(raw)
                assert json.dumps(record.to_dict()) == json.dumps(raw), path
                assert record.hyper.optimizer.name == "AdamW" and record.data.num_classes >= 2
                seen += 1
    assert seen > 0


def test_tex_output_is_latex() -> None:
    from conformer_bench.commands.finetune import _output_format

    assert _output_format("runs/ft.TEX", "json") == "latex" and _output_format("ft.md", "md") == "md"
