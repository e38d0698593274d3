"""Timing and memory probes, including the CUDA and NVML paths driven by recording fakes on the CPU."""

from __future__ import annotations

import sys
import time
import types
from typing import Any

import numpy as np
import pytest
import torch

import conformer
from conformer_bench import memory as memory_mod
from conformer_bench.memory import cpu_peak_rss, cuda_peak_memory, nvml_memory
from conformer_bench.profiling import ProfileSettings, profile_variant
from conformer_bench.records import CpuPhaseMemory, CudaPhaseMemory, PhaseTiming
from conformer_bench.timing import measure, plan_iters

# --- timing -------------------------------------------------------------------------------------------------


def test_plan_iters_clamps_to_the_budget() -> None:
    assert plan_iters(0.1, 1.0, 3, 100) == 10
    assert plan_iters(2.0, 1.0, 3, 100) == 3
    assert plan_iters(1e-6, 1.0, 3, 100) == 100


def test_measure_on_cpu_keeps_raw_samples() -> None:
    calls = []

    def step() -> None:
        calls.append(1)
        time.sleep(0.002)

    timing = measure(
        step, device="cpu", batch_size=4, warmup=2, iters=5, budget_s=1.0, min_iters=1, max_iters=10
    )
    t = timing.to_dict()
    assert PhaseTiming.from_dict(t) == timing and "reference" not in t  # reference keys only when used
    assert len(calls) == 7 and t["iters"] == 5 and len(t["samples_s"]) == 5 and len(t["warmup_s"]) == 2
    assert all(s >= 0.002 for s in t["samples_s"])
    assert t["img_per_s"] == pytest.approx(4 / float(np.median(t["samples_s"])))
    assert t["latency_s"]["median"] == pytest.approx(float(np.median(t["samples_s"])))
    assert t["timer"] == "perf_counter" and t["iters_auto"] is False
    assert t["noisy"] == (t["iqr_over_median"] > 0.10)


def test_measure_auto_ranges_from_the_warmup() -> None:
    t = measure(
        lambda: time.sleep(0.01),
        device="cpu",
        batch_size=1,
        warmup=1,
        iters=None,
        budget_s=0.05,
        min_iters=2,
        max_iters=50,
    ).to_dict()
    # Each step sleeps >= 10 ms, so at most ceil(50 ms / 10 ms) iterations fit the budget.
    assert t["iters_auto"] is True and 2 <= t["iters"] <= 5 and t["budget_s"] == 0.05
    with pytest.raises(ValueError, match="warm-up"):
        measure(
            lambda: None,
            device="cpu",
            batch_size=1,
            warmup=0,
            iters=None,
            budget_s=1,
            min_iters=1,
            max_iters=2,
        )


class FakeCuda:
    """Records the calls the CUDA code paths make and answers with fixed values."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.elapsed_ms = iter([5.0, 7.0, 6.0])
        fake = self

        class Event:
            def __init__(self, enable_timing: bool = False) -> None:
                assert enable_timing, "timing events must be created with enable_timing=True"
                self.recorded = False

            def record(self) -> None:
                fake.calls.append("record")
                self.recorded = True

            def elapsed_time(self, end: Any) -> float:
                assert self.recorded and end.recorded
                assert fake.calls[-1] == "synchronize", "events must be read after a synchronize"
                return next(fake.elapsed_ms)

        self.Event = Event

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def record(name: str, value: Any = None) -> Any:
            def fn(*args: Any, **kwargs: Any) -> Any:
                self.calls.append(name)
                return value

            return fn

        monkeypatch.setattr(torch.cuda, "Event", self.Event)
        monkeypatch.setattr(torch.cuda, "synchronize", record("synchronize"))
        monkeypatch.setattr(torch.cuda, "empty_cache", record("empty_cache"))
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", record("reset_peak_memory_stats"))
        monkeypatch.setattr(torch.cuda, "memory_allocated", record("memory_allocated", 1_000))
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", record("max_memory_allocated", 123_456_789))
        monkeypatch.setattr(torch.cuda, "max_memory_reserved", record("max_memory_reserved", 234_567_890))
        monkeypatch.setattr(torch.cuda, "current_device", record("current_device", 0))
        props = types.SimpleNamespace(uuid="1234-abcd", name="Fake GPU", total_memory=8 << 30)
        monkeypatch.setattr(torch.cuda, "get_device_properties", record("get_device_properties", props))


def fake_pynvml(calls: list[str], used: int = 345_678_901, fail_init: bool = False) -> types.ModuleType:
    mod = types.ModuleType("pynvml")

    def nvmlInit() -> None:
        calls.append("nvmlInit")
        if fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlDeviceGetHandleByUUID(uuid: str) -> str:
        calls.append(f"byUUID:{uuid}")
        return "handle"

    def nvmlDeviceGetHandleByIndex(index: int) -> str:
        calls.append(f"byIndex:{index}")
        return "handle"

    def nvmlDeviceGetMemoryInfo(handle: str) -> Any:
        assert handle == "handle"
        calls.append("nvmlDeviceGetMemoryInfo")
        return types.SimpleNamespace(used=used, total=8 << 30, free=(8 << 30) - used)

    def nvmlShutdown() -> None:
        calls.append("nvmlShutdown")

    for fn in (
        nvmlInit,
        nvmlDeviceGetHandleByUUID,
        nvmlDeviceGetHandleByIndex,
        nvmlDeviceGetMemoryInfo,
        nvmlShutdown,
    ):
        setattr(mod, fn.__name__, fn)
    return mod


def test_measure_on_cuda_uses_events(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCuda()
    fake.install(monkeypatch)
    t = measure(
        lambda: fake.calls.append("step"),
        device="cuda",
        batch_size=8,
        warmup=1,
        iters=3,
        budget_s=1.0,
        min_iters=1,
        max_iters=10,
    ).to_dict()
    assert t["timer"] == "cuda_event"
    assert t["samples_s"] == pytest.approx([0.005, 0.007, 0.006])
    assert t["img_per_s"] == pytest.approx(8 / 0.006)
    timed = fake.calls[fake.calls.index("record") :]
    assert timed[:3] == ["record", "step", "record"] and timed[-1] == "synchronize"
    assert "synchronize" not in timed[:-1], "no host synchronisation between timed iterations"


def test_cuda_peak_memory_resets_then_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCuda()
    fake.install(monkeypatch)
    nvml_calls: list[str] = []
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(nvml_calls))
    with cuda_peak_memory("cuda:0") as probe:
        fake.calls.append("work")
        assert probe.record is None  # set when the phase ends
    calls = fake.calls
    assert calls.index("reset_peak_memory_stats") < calls.index("work") < calls.index("max_memory_allocated")
    mem = probe.measured
    assert isinstance(mem, CudaPhaseMemory)
    assert mem.peak_allocated_bytes == 123_456_789 and mem.peak_reserved_bytes == 234_567_890
    assert mem.allocated_before_bytes == 1_000 and mem.nvml_used_bytes == 345_678_901
    assert nvml_calls == ["nvmlInit", "byUUID:GPU-1234-abcd", "nvmlDeviceGetMemoryInfo", "nvmlShutdown"]


def test_nvml_failure_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(calls, fail_init=True))
    out = nvml_memory(0)
    assert out["nvml_used_bytes"] is None and "NVML Shared Library Not Found" in out["nvml_error"]
    calls.clear()
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(calls))
    assert nvml_memory(1)["nvml_used_bytes"] == 345_678_901
    assert calls[1] == "byIndex:1" and calls[-1] == "nvmlShutdown"


def test_cuda_memory_values_reach_the_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """The profile uses the CUDA probe's numbers as they are (the model itself runs on the CPU here)."""
    fake = FakeCuda()
    fake.install(monkeypatch)
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([]))
    monkeypatch.setattr(memory_mod, "phase_memory", lambda device: cuda_peak_memory("cuda:0"))
    settings = ProfileSettings(
        device="cpu", batch_size=2, img_size=32, mode="infer", warmup=1, iters=2, count_flops=False
    )
    record = profile_variant(conformer.get_config("nano"), settings)
    mem = record.memory.infer
    assert isinstance(mem, CudaPhaseMemory)
    assert mem.peak_allocated_bytes == 123_456_789 and mem.nvml_used_bytes == 345_678_901
    from conformer_bench.formatting import render_table

    table = render_table(record)
    assert "peak allocated" in table and "117.7 MiB" in table  # 123,456,789 bytes


# --- CPU resident memory ---------------------------------------------------------------------------------------


def test_cpu_peak_rss_sees_a_transient_allocation() -> None:
    size = 96 << 20
    with cpu_peak_rss() as probe:
        block = np.ones(size, dtype=np.uint8)  # touched pages: resident
        time.sleep(0.05)  # longer than the sampling interval
        del block
    mem = probe.measured
    assert isinstance(mem, CpuPhaseMemory)
    assert mem.peak_rss_increase_bytes >= 0.8 * size
    assert mem.peak_rss_bytes >= mem.rss_before_bytes + mem.peak_rss_increase_bytes - 1
    assert mem.rss_samples > 0


# --------------------------------------------------------------------------- timing beside a reference GEMM


class _FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_reference_pairs_cancel_a_host_slowdown(monkeypatch: pytest.MonkeyPatch) -> None:
    """From the 11th step on, the host runs everything 2x slower: raw img/s moves, img per reference GFLOP
    does not (but for the step at the switch, whose reference calls straddle it)."""
    from conformer_bench import timing as timing_module
    from conformer_bench.timing import ReferenceWorkload, measure

    clock = _FakeClock()
    monkeypatch.setattr(timing_module.time, "perf_counter", clock)
    calls = {"step": 0}

    def slowdown() -> float:
        return 2.0 if calls["step"] > 10 else 1.0

    def step() -> None:
        calls["step"] += 1
        clock.now += 0.020 * slowdown()

    def reference_step() -> None:
        clock.now += 0.004 * slowdown()

    reference = ReferenceWorkload("fake", flops=400_000_000, step=reference_step)
    out = measure(
        step, device="cpu", batch_size=16, warmup=2, iters=18, budget_s=1.0, min_iters=1, max_iters=100,
        reference=reference,
    ).to_dict()  # fmt: skip
    assert out["samples_s"] == pytest.approx([0.020] * 8 + [0.040] * 10)
    # 19 reference calls: one before the first step, one after each step (the 9th after the first slow step)
    assert out["reference"]["samples_s"] == pytest.approx([0.004] * 9 + [0.008] * 10)
    # 16 img / 0.02 s = 800 img/s against 0.4 GFLOP / 0.004 s = 100 GFLOP/s -> 8 img per GFLOP; the first
    # slow step is bracketed by one fast and one slow reference call: 16 * 0.006 / (0.04 * 0.4) = 6
    assert out["ref_ratio_samples"] == pytest.approx([8.0] * 8 + [6.0] + [8.0] * 9)
    assert out["img_per_ref_gflop"] == pytest.approx(8.0)
    assert out["img_per_s"] == pytest.approx(400.0)  # the raw median took the slow half
    assert out["reference"]["workload"] == "fake"


def test_reference_ratios_need_a_reference_call_on_both_sides() -> None:
    from conformer_bench.timing import reference_ratios

    assert reference_ratios([0.02], [0.004, 0.008], 16, 400_000_000) == pytest.approx([12.0])
    with pytest.raises(ValueError, match="before and after"):
        reference_ratios([0.02, 0.02], [0.004, 0.004], 16, 400_000_000)


def test_reference_workload_is_cpu_only_and_counts_its_flops() -> None:
    from conformer_bench.timing import gemm_reference, measure

    gemm = gemm_reference(n=8, calls=3)
    assert gemm.flops == 2 * 8**3 * 3
    gemm.step()
    with pytest.raises(ValueError, match="CPU steps only"):
        measure(
            lambda: None, device="cuda", batch_size=1, warmup=0, iters=1, budget_s=1.0, min_iters=1,
            max_iters=1, reference=gemm,
        )  # fmt: skip


def test_profile_with_timing_reference_records_the_pairs() -> None:
    from conformer import get_config
    from conformer_bench.profiling import ProfileSettings, profile_variant

    cfg = get_config("micro")
    settings = ProfileSettings(
        device="cpu", batch_size=2, img_size=32, mode="infer", warmup=1, iters=3, count_flops=False,
        threads=1, timing_reference=True,
    )  # fmt: skip
    record = profile_variant(cfg, settings)
    infer = record.throughput["infer"].timing
    assert len(infer.ref_ratio_samples) == 3 and infer.img_per_ref_gflop > 0
    assert infer.reference.flops == 2 * 256**3 * 8
    assert record.settings.timing_reference is True


def test_timing_reference_on_cuda_is_refused_before_building() -> None:
    from conformer import get_config
    from conformer_bench.errors import BenchError
    from conformer_bench.profiling import ProfileSettings, validate_settings

    with pytest.raises(BenchError, match="CPU steps only"):
        validate_settings(get_config("micro"), ProfileSettings(device="cuda", timing_reference=True))
