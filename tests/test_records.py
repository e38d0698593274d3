"""Typed records: what they write is the JSON written before them, and what they read back is equal."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import conformer
from conformer_bench import memory as memory_mod
from conformer_bench.errors import BenchError
from conformer_bench.records import (
    SCHEMAS,
    CudaPhaseMemory,
    FinetuneRecord,
    PhaseTiming,
    ProfileRecord,
    ProfileRunSettings,
    ReferenceTiming,
    SpeedPath,
    SpeedRecord,
    Status,
)

RESULTS = Path(__file__).parent.parent / "results"


def _timing(**extra: Any) -> PhaseTiming:
    return PhaseTiming(
        img_per_s=10.0, batch_size=2, requested_batch_size=4, iters=3, iters_auto=False, budget_s=None,
        warmup=1, warmup_s=[0.3], latency_s={"median": 0.2}, iqr_over_median=0.01, noisy=False,
        samples_s=[0.2, 0.2, 0.2], timer="perf_counter", energy=None, img_per_j=None, **extra,
    )  # fmt: skip


def test_optional_fields_are_left_out_while_none_others_written_as_null() -> None:
    d = _timing().to_dict()
    assert "reference" not in d and "img_per_ref_gflop" not in d and "ref_ratio_samples" not in d
    assert (
        d["energy"] is None
        and d["budget_s"] is None
        and list(d)[:3] == ["img_per_s", "batch_size", "requested_batch_size"]
    )
    reference = ReferenceTiming("fake", 100, 1.0, [0.1])
    paired = _timing(img_per_ref_gflop=8.0, ref_ratio_samples=[8.0], reference=reference)
    d = paired.to_dict()
    assert list(d)[-3:] == ["img_per_ref_gflop", "ref_ratio_samples", "reference"]
    assert d["reference"] == {"workload": "fake", "flops": 100, "gflop_per_s": 1.0, "samples_s": [0.1]}
    assert PhaseTiming.from_dict(d) == paired


def test_cuda_memory_writes_nvml_error_only_when_there_is_one() -> None:
    ok = CudaPhaseMemory(1, 2, 0, 5, 6)
    assert "nvml_error" not in ok.to_dict()
    failed = CudaPhaseMemory(1, 2, 0, None, None, "OSError: no driver")
    assert (
        failed.to_dict()["nvml_error"] == "OSError: no driver" and failed.to_dict()["nvml_used_bytes"] is None
    )


def test_speed_path_writes_compile_s_with_the_first_call_only() -> None:
    entry = SpeedPath("optimized", "fp32", "failed", "RuntimeError: x", "desc", None)
    assert list(entry.to_dict()) == [
        "path",
        "precision",
        "status",
        "reason",
        "description",
        "kernels",
        "backend",
    ]
    entry.first_call_s = 0.5
    assert entry.to_dict()["compile_s"] is None and "max_rel_diff_vs_plain" not in entry.to_dict()


def _round_trip(cls: Any, record: dict[str, Any]) -> None:
    typed = cls.from_dict(record)
    assert json.dumps(typed.to_dict()) == json.dumps(record)  # same keys, same order, same values


def test_profile_record_round_trips_byte_for_byte() -> None:
    from conformer_bench.profiling import ProfileSettings, profile_variant

    settings = ProfileSettings(
        device="cpu", batch_size=2, img_size=32, mode="both", warmup=1, iters=2, count_flops=False,
        timing_reference=True,
    )  # fmt: skip
    record = profile_variant(conformer.get_config("nano"), settings).to_dict()  # as the file holds it
    assert (
        record["schema"] == "conformer-bench.profile"
        and record["schema_version"] == SCHEMAS[record["schema"]]
    )
    assert "last_loss" in record["throughput"]["train"] and "last_loss" not in record["throughput"]["infer"]
    _round_trip(ProfileRecord, record)


def test_speed_record_round_trips_byte_for_byte() -> None:
    from conformer_bench.speed import SpeedSettings, measure_speed

    settings = SpeedSettings(
        batch_size=1, img_size=32, rounds=3, warmup=0, matmul_size=64, paths=("plain", "optimized"),
        precisions=("fp32",), agreement_images=2,
    )  # fmt: skip
    record = measure_speed(conformer.get_config("nano"), settings)
    assert isinstance(record, SpeedRecord) and isinstance(record.paths["optimized"], SpeedPath)
    _round_trip(SpeedRecord, record.to_dict())


def test_finetune_record_round_trips_byte_for_byte() -> None:
    from conformer_bench.finetune import FinetuneSettings, run_finetune

    settings = FinetuneSettings(steps=4, batch_size=8, train_size=32, val_size=16, device="cpu")
    record = run_finetune(conformer.get_config("nano"), settings, show_progress=False)
    _round_trip(FinetuneRecord, record.to_dict())
    assert FinetuneRecord.from_dict(record.to_dict()) == record


def test_records_written_before_still_read() -> None:
    """The current-schema records under results/ (CPU and GPU runs) read back into the same JSON."""
    readers = {
        "conformer-bench.profile": ProfileRecord,
        "conformer-bench.finetune": FinetuneRecord,
        "conformer-bench.speed": SpeedRecord,
    }
    seen = 0
    for path in sorted(RESULTS.rglob("*.json")):
        record = json.loads(path.read_text())
        cls = readers.get(record.get("schema")) if isinstance(record, dict) else None
        if cls is None or record.get("schema_version") != SCHEMAS[record["schema"]]:
            continue
        _round_trip(cls, record)
        seen += 1
    if not seen:
        pytest.skip("no current-schema record under results/")


def test_wrong_schema_is_one_line_naming_the_fix() -> None:
    with pytest.raises(BenchError, match=r"pass a conformer-bench\.profile file"):
        ProfileRecord.from_dict({"schema": "conformer-bench.speed", "schema_version": 2})


def test_newer_version_names_the_upgrade() -> None:
    with pytest.raises(BenchError, match=r"newer than this conformer-bench reads .* upgrade conformer-bench"):
        ProfileRecord.from_dict({"schema": "conformer-bench.profile", "schema_version": 99})


def test_peak_rss_is_not_scaled_on_macos(monkeypatch: pytest.MonkeyPatch) -> None:
    """ru_maxrss is bytes on macOS and KiB on Linux; the fine-tune record's CPU peak reads it through memory."""
    from conformer_bench import finetune

    class Usage:
        ru_maxrss = 5_000_000

    monkeypatch.setattr(memory_mod.resource, "getrusage", lambda who: Usage())
    monkeypatch.setattr(sys, "platform", "darwin")
    assert finetune._peak_memory("cpu") == (5_000_000, "process_peak_rss")
    monkeypatch.setattr(sys, "platform", "linux")
    assert finetune._peak_memory("cpu") == (5_000_000 * 1024, "process_peak_rss")


def test_threads_hold_for_a_profile_only() -> None:
    from conformer_bench.profiling import ProfileSettings, profile_variant

    before = torch.get_num_threads()
    settings = ProfileSettings(device="cpu", mode="none", count_flops=False, threads=before + 1)
    record = profile_variant(conformer.get_config("nano"), settings)
    assert record.settings.threads == before + 1 and torch.get_num_threads() == before


def test_status_is_written_as_its_string() -> None:

    entry = SpeedPath("plain", "fp32", Status.UNSUPPORTED, "no bf16", "desc", None)
    d = entry.to_dict()
    assert type(d["status"]) is str and json.dumps(d["status"]) == '"unsupported"'
    assert SpeedPath.from_dict(d).status is Status.UNSUPPORTED


def test_a_failed_sweep_point_reads_back_through_its_record() -> None:
    """A point that raised writes what was asked and why, and the project's own reader takes it back."""
    from conformer_bench.profiling import ProfileSettings
    from conformer_bench.sweep import Point, failed_record

    point = Point(conformer.get_config("micro"), 4, 32, "fp32")
    typed = failed_record(point, ProfileSettings(), RuntimeError("boom"))
    assert typed.status is Status.FAILED and typed.reason == "RuntimeError: boom"
    record = typed.to_dict()  # as a sweep writes it
    assert record["status"] == "failed" and record["environment"] == {}
    assert "throughput" not in record and "params" not in record  # never measured, never written
    read = ProfileRecord.from_dict(record)
    assert read.status == "failed" and read.throughput is None and read.wall_s is None
    _round_trip(ProfileRecord, record)
    # what was asked, as typed settings; the resolved keys (autocast, paths per phase) are not written
    assert isinstance(typed.settings, ProfileRunSettings) and typed.settings.img_size == 224
    assert list(record["settings"]) == list(vars(ProfileSettings()))


_OLD_SETTINGS = {
    "device": "cpu", "batch_size": 2, "img_size": 32, "mode": "infer", "precision": "bf16",
    "channels_last": False, "threads": 2, "warmup": 1, "iters": None, "count_flops": True,
    "cross_check": True, "path": "plain", "timing_reference": False, "autocast_dtype": "bfloat16",
    "path_by_phase": {"infer": "plain"}, "precision_by_phase": {"infer": "bf16"}, "optimizer": None,
}  # fmt: skip


def test_profile_settings_from_before_backends_read_as_eager_and_write_back_as_read() -> None:
    """Settings without ``backend``/``breakdown`` read as eager, no breakdown, and are written without them."""
    read = ProfileRunSettings.from_dict(_OLD_SETTINGS)
    assert read.backend == "eager" and read.breakdown is False and read.precision == "bf16"
    assert read.precision_by_phase == {"infer": "bf16"} and read.iters is None
    assert json.dumps(read.to_dict()) == json.dumps(_OLD_SETTINGS)
    new = {**_OLD_SETTINGS, "backend": "onnxruntime", "future_key": 1}
    assert ProfileRunSettings.from_dict(new).backend == "onnxruntime"
    assert ProfileRunSettings.from_dict(new).to_dict() == new  # an unknown key survives


def test_a_defaulted_field_a_file_lacked_stays_out_when_written_back() -> None:
    """A key an older file did not have, read as its default, is not added when the record is written."""
    from conformer_bench.records import SpeedPath

    data = {
        "path": "plain",
        "precision": "fp32",
        "status": "ok",
        "reason": None,
        "description": "eager",
        "kernels": None,
    }
    path = SpeedPath.from_dict(data)
    assert path.backend == "eager"
    assert path.to_dict() == data


def test_a_sweep_point_that_reuses_counted_flops_says_they_were_counted() -> None:
    """A later point of the same model and size takes the FLOPs counted before, and its settings say so."""
    from dataclasses import replace

    from conformer_bench.profiling import ProfileSettings
    from conformer_bench.sweep import Point, failed_record, run_sweep

    counted = object()

    def fake(cfg: Any, settings: ProfileSettings, progress: Any = None) -> ProfileRecord:
        rec = failed_record(
            Point(cfg, settings.batch_size, settings.img_size, "fp32"), settings, RuntimeError()
        )
        return replace(rec, status=Status.OK, flops=counted if settings.count_flops else None)

    cfg = conformer.get_config("micro")
    first, second = run_sweep(
        [Point(cfg, 2, 32, "fp32"), Point(cfg, 4, 32, "fp32")], ProfileSettings(), profile=fake
    )
    assert first.flops is counted and second.flops is counted
    assert isinstance(second.settings, ProfileRunSettings) and second.settings.count_flops is True
    assert second.settings.batch_size == 4
