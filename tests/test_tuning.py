"""Kernel choices by measurement: the fastest candidate wins, decisions are cached per CPU fingerprint, and
every kernel the optimised model can pick computes the plain model's logits."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from conformer import create_model, optimize_for_inference
from conformer.optimize import (
    KernelChoices,
    _FusedAttention,
    _FusedConv,
    _FusedLinear,
    _scaled_query,
    describe_kernels,
    fused_kernels_available,
    kernel_decisions,
    mkl_linear_available,
)
from conformer.tuning import SCHEMA, KernelTuner, cpu_fingerprint, fingerprint_id, using_tuner

TOL = 1e-4  # relative, float32 (as tests/test_optimize.py)
ZEN4 = {"cpu_model": "AMD EPYC 9R14", "isa_flags": ["avx2", "avx512f", "avx512_bf16"], "logical_cpus": 2}
XEON_AMX = {**ZEN4, "cpu_model": "Intel Xeon Platinum 8488C", "isa_flags": [*ZEN4["isa_flags"], "amx_bf16"]}


class FakeClock:
    """A clock that each candidate advances by its own cost when it runs (no real timing)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.calls: list[str] = []

    def __call__(self) -> float:
        return self.now

    def kernel(self, name: str, cost_s: float) -> Callable[[], None]:
        def run() -> None:
            self.calls.append(name)
            self.now += cost_s

        return run


def tuner(tmp_path: Path, fingerprint: dict[str, Any], clock: FakeClock) -> KernelTuner:
    return KernelTuner(fingerprint=fingerprint, cache_dir=tmp_path, clock=clock, threads=lambda: 2)


def test_fastest_candidate_wins_and_is_cached_per_cpu_fingerprint(tmp_path: Path) -> None:
    clock = FakeClock()
    zen = tuner(tmp_path, ZEN4, clock)
    decision = zen.choose(
        "attention", "b8", {"sdpa": clock.kernel("sdpa", 3e-3), "bmm": clock.kernel("bmm", 2e-3)}
    )
    assert (decision.chosen, decision.source, decision.key) == ("bmm", "measured", "b8 threads=2")
    assert decision.seconds == pytest.approx({"sdpa": 3e-3, "bmm": 2e-3}) and decision.rounds >= 3
    stored = json.loads((tmp_path / f"{fingerprint_id(ZEN4)}.json").read_text())
    assert stored["fingerprint"] == ZEN4 and stored["decisions"]["attention|b8 threads=2"]["chosen"] == "bmm"

    # a new process on the same kind of CPU reads the decision: nothing runs
    again = tuner(tmp_path, ZEN4, FakeClock())
    cached = again.choose(
        "attention", "b8", {"sdpa": again.clock.kernel("sdpa", 1e-3), "bmm": again.clock.kernel("bmm", 9e-3)}
    )  # type: ignore[attr-defined]
    assert (cached.chosen, cached.source, again.measured) == ("bmm", "cached", 0)

    # another CPU (AMX) measures afresh, into its own file, and may choose otherwise
    amx_clock = FakeClock()
    amx = tuner(tmp_path, XEON_AMX, amx_clock)
    amx_choice = amx.choose(
        "attention", "b8", {"sdpa": amx_clock.kernel("sdpa", 1e-3), "bmm": amx_clock.kernel("bmm", 2e-3)}
    )
    assert (amx_choice.chosen, amx_choice.source) == ("sdpa", "measured")
    assert fingerprint_id(XEON_AMX) != fingerprint_id(ZEN4)
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_thread_count_is_part_of_the_key(tmp_path: Path) -> None:
    clock = FakeClock()
    threads = [1]
    t = KernelTuner(fingerprint=ZEN4, cache_dir=tmp_path, clock=clock, threads=lambda: threads[0])
    t.choose("conv", "k", {"fused": clock.kernel("fused", 1e-3), "aten": clock.kernel("aten", 2e-3)})
    threads[0] = 2
    t.choose("conv", "k", {"fused": clock.kernel("fused", 1e-3), "aten": clock.kernel("aten", 2e-3)})
    assert t.measured == 2


def test_failing_candidate_is_dropped_and_all_failing_raises(tmp_path: Path) -> None:
    clock = FakeClock()
    t = tuner(tmp_path, ZEN4, clock)

    def broken() -> None:
        raise RuntimeError("no kernel for this shape")

    assert t.choose("linear", "k", {"mkl": broken, "onednn": clock.kernel("onednn", 1e-3)}).chosen == "onednn"
    with pytest.raises(RuntimeError, match="every candidate failed"):
        t.choose("linear", "k2", {"mkl": broken, "onednn": broken})


def test_corrupt_cache_file_is_measured_over(tmp_path: Path) -> None:
    (tmp_path / f"{fingerprint_id(ZEN4)}.json").write_text('{"schema": 1, "decisions": {"x"')
    clock = FakeClock()
    t = tuner(tmp_path, ZEN4, clock)
    assert (
        t.choose(
            "conv", "k", {"fused": clock.kernel("fused", 2e-3), "aten": clock.kernel("aten", 1e-3)}
        ).chosen
        == "aten"
    )
    assert json.loads((tmp_path / f"{fingerprint_id(ZEN4)}.json").read_text())["schema"] == SCHEMA


def test_one_preempted_call_does_not_flip_the_choice(tmp_path: Path) -> None:
    """On a loaded host a call can be preempted: the faster kernel still wins with one slow call in three."""
    clock = FakeClock()
    costs = iter([1e-3, 50e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3])
    fast_but_preempted = clock.kernel("a", 0.0)

    def a() -> None:
        fast_but_preempted()
        clock.now += next(costs)

    t = KernelTuner(fingerprint=ZEN4, cache_dir=tmp_path, clock=clock, threads=lambda: 1, rounds=3)
    decision = t.choose("conv", "k", {"a": a, "b": clock.kernel("b", 2e-3)})
    assert decision.chosen == "a" and decision.seconds["a"] == pytest.approx(1e-3)


def test_fingerprint_names_isa_and_libraries_not_a_vendor() -> None:
    fp = cpu_fingerprint()
    assert {"cpu_model", "isa_flags", "logical_cpus", "torch", "onednn", "aten_capability"} <= set(fp)
    assert fp["torch"] == torch.__version__


def test_unknown_kernel_is_refused() -> None:
    with pytest.raises(ValueError, match="attention='flash' is not a kernel"):
        KernelChoices(attention="flash")


def test_scale_folded_into_query_rows_is_exact_for_a_power_of_two() -> None:
    qkv = nn.Linear(16, 48)
    scaled = _scaled_query(qkv, 0.25)
    x = torch.randn(3, 16)
    with torch.no_grad():
        ref, out = qkv(x), scaled(x)
    torch.testing.assert_close(out[:, :16], ref[:, :16] * 0.25, rtol=1e-6, atol=1e-6)
    assert torch.equal(out[:, 16:], ref[:, 16:])


def randomize_norms(model: nn.Module) -> nn.Module:
    """Non-default BatchNorm statistics, so that folding has something to fold."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def rel_diff(out: tuple, ref: tuple) -> float:
    return max(
        float((a - b).abs().max() / b.abs().max()) for a, b in zip(out, ref, strict=True) if b is not None
    )


needs_fused = pytest.mark.skipif(not fused_kernels_available("cpu"), reason="needs oneDNN fused ops")


@needs_fused
@pytest.mark.parametrize(
    ("attention", "conv", "linear"),
    [
        ("sdpa", "fused", "onednn"),
        ("bmm", "aten", "onednn"),
        ("sdpa", "aten", "mkl"),
        ("bmm", "fused", "mkl"),
    ],
)
def test_every_kernel_matches_plain_micro(attention: str, conv: str, linear: str) -> None:
    model = randomize_norms(create_model("micro"))
    x = torch.randn(2, 3, 32, 32)
    opt = optimize_for_inference(model, kernels=KernelChoices(attention=attention, conv=conv, linear=linear))
    with torch.inference_mode():
        assert rel_diff(opt(x), model(x)) <= TOL
    assert not kernel_decisions(opt), "fixed choices measure nothing"
    described = describe_kernels(opt) or ""
    assert f"conv {conv} " in described and f"attention {attention} " in described, described
    assert all(m.candidates == (attention,) for m in opt.modules() if isinstance(m, _FusedAttention))
    assert all(m.candidates == (conv,) for m in opt.modules() if isinstance(m, _FusedConv))


@needs_fused
def test_auto_choices_follow_the_measurement_and_are_listed(tmp_path: Path) -> None:
    """A stand-in CPU on which the unfused conv, explicit attention and oneDNN linear are fastest: the model
    runs those, lists them with the timings, and still computes the plain logits."""
    cost_s = {"aten": 1e-3, "fused": 2e-3, "bmm": 1e-3, "sdpa": 2e-3, "onednn": 1e-3, "mkl": 2e-3}
    clock = FakeClock()

    class StandIn(KernelTuner):
        def _measure(self, kind: str, key: str, candidates: Any) -> Any:
            return super()._measure(
                kind, key, {name: self._costed(name, run) for name, run in candidates.items()}
            )

        def _costed(self, name: str, run: Callable[[], Any]) -> Callable[[], Any]:
            def call() -> Any:
                clock.kernel(name, cost_s[name])()
                return run()

            return call

    stand_in = StandIn(fingerprint=ZEN4, cache_dir=tmp_path, clock=clock, threads=lambda: 1, rounds=3)
    model = randomize_norms(create_model("micro"))
    x = torch.randn(2, 3, 32, 32)
    with using_tuner(stand_in), torch.inference_mode():
        opt = optimize_for_inference(model)
        assert rel_diff(opt(x), model(x)) <= TOL
    decisions = kernel_decisions(opt)
    chosen = {
        kind: {d.chosen for d in decisions if d.kind == kind} for kind in ("conv", "attention", "linear")
    }
    assert chosen["conv"] == {"aten"} and chosen["attention"] == {"bmm"}
    assert chosen["linear"] == ({"onednn"} if mkl_linear_available() else set())  # one candidate: no choice
    assert all(d.source == "measured" and set(d.seconds) == set(cost_s) & set(d.seconds) for d in decisions)
    assert all(len(d.seconds) == 2 for d in decisions)
    assert all(not m._packed for m in opt.modules() if isinstance(m, _FusedConv)), "unchosen packs freed"
    assert stand_in.measured == len(decisions)
    # the same kind of CPU, a new process: the cached choices, nothing measured
    fresh = KernelTuner(fingerprint=ZEN4, cache_dir=tmp_path, threads=lambda: 1)
    with using_tuner(fresh), torch.inference_mode():
        optimize_for_inference(model)(x)
    assert fresh.measured == 0 and len(fresh.decisions()) == len(decisions)
    assert any(isinstance(m, _FusedLinear) for m in opt.modules())
