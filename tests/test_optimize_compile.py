"""The compiled paths' settings per device, and CUDA-graph outputs that survive the next replay, checked with a
stand-in for the compiled module (no GPU needed)."""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest
import torch
from torch import Tensor, nn

from conformer.optimize import _CompiledUnderConfig, compile_defaults


def test_compile_defaults_per_device() -> None:
    assert compile_defaults("cpu") == {"freezing": True}
    assert compile_defaults("cuda:1") == {"max_autotune": True, "triton.cudagraphs": True}
    assert compile_defaults("meta") == {}


class Out(NamedTuple):
    conv: Tensor
    trans: Tensor | None


class GraphLike(nn.Module):
    """Writes every call's result into the same buffers, as a CUDA-graph replay does."""

    def __init__(self) -> None:
        super().__init__()
        self.buffer = torch.zeros(2, 3)

    def forward(self, x: Tensor) -> Out:
        self.buffer.copy_(x)
        return Out(self.buffer, None)


def test_cuda_graph_outputs_are_copies_and_each_call_starts_a_step(monkeypatch: pytest.MonkeyPatch) -> None:
    steps: list[int] = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: steps.append(1))
    seen: list[Any] = []
    model = _CompiledUnderConfig(GraphLike(), {"triton.cudagraphs": True})
    monkeypatch.setattr(model.compiled, "forward", _spy(model.compiled.forward, seen))
    first = model(torch.ones(2, 3))
    second = model(torch.full((2, 3), 2.0))
    assert isinstance(first, Out) and first.trans is None
    assert torch.equal(first.conv, torch.ones(2, 3)), "the first output was overwritten by the second call"
    assert torch.equal(second.conv, torch.full((2, 3), 2.0)) and len(steps) == 2 and len(seen) == 2

    plain = _CompiledUnderConfig(GraphLike(), {"freezing": True})
    a = plain(torch.ones(2, 3))
    plain(torch.zeros(2, 3))
    assert torch.equal(a.conv, torch.zeros(2, 3)), "without CUDA graphs outputs are returned as they are"


def _spy(fn: Any, seen: list[Any]) -> Any:
    def call(*args: Any) -> Any:
        import torch._inductor.config as inductor_config

        seen.append(inductor_config.triton.cudagraphs)
        return fn(*args)

    return call
