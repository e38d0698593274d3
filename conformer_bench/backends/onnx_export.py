"""The ONNX export of a Conformer (``torch.onnx.export(dynamo=True)``, dynamic batch), cached on disk.

The export takes seconds to minutes on a CPU (the graph's decomposition dominates), so it is kept, as the
FLOP records are: one file per config, image size, weights and tool versions under
``~/.cache/conformer-bench/onnx`` (``CONFORMER_BENCH_CACHE=<folder>`` puts it in ``<folder>/onnx``, ``=off``
exports into a folder that lives as long as the process). Files are written atomically, so concurrent
runs are safe. The graph has one input ``image`` (batch, channels, H, W) with a dynamic batch and one
output per present head, ``conv_logits`` and/or ``trans_logits``.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

from ..errors import exception_line
from ..files import atomic_write_bytes
from ..flops import CACHE_ENV
from ..records import Status
from ..records.speed import ExportInfo
from .base import Prepared, PrepareOptions, Runner, unsupported

INPUT_NAME = "image"
EXPORT_BATCH = 2  # the example batch traced; the batch dimension is exported as dynamic
_SESSION_EXPORTS: dict[str, Path] = {}  # key -> file, for this process when the cache is off


@dataclass(frozen=True)
class OnnxExport:
    """One exported graph: where it is and how it came to be."""

    path: Path
    output_names: tuple[str, ...]
    cache_hit: bool
    export_s: float  # 0 for a cache hit
    opset: int | None
    tools: dict[str, str]

    def record(self) -> ExportInfo:
        """What a speed record keeps of the export."""
        return ExportInfo(
            str(self.path),
            list(self.output_names),
            self.cache_hit,
            self.export_s,
            self.opset,
            dict(self.tools),
        )


def output_names(cfg: Any) -> tuple[str, ...]:
    """The graph's outputs, in the order of ConformerOutput: the heads the variant has."""
    return tuple(
        name
        for name, present in (("conv_logits", cfg.has_conv_head), ("trans_logits", cfg.has_trans_head))
        if present
    )


def export_onnx(model: Any, img_size: int) -> OnnxExport:
    """The ONNX graph of ``model`` (a plain Conformer; its weights are part of the cache key) at ``img_size``²."""
    key = _cache_key(model, img_size)
    names = output_names(model.cfg)
    path = _cached_path(key)
    if path is not None and path.is_file():
        return OnnxExport(path, names, True, 0.0, _opset(path), _tools())
    target = path if path is not None else _session_path(key)
    started = time.perf_counter()
    _export_to(model, img_size, names, target)
    return OnnxExport(target, names, False, time.perf_counter() - started, _opset(target), _tools())


def _export_to(model: Any, img_size: int, names: tuple[str, ...], target: Path) -> None:
    """Export in eval mode to a temporary file beside ``target``, then move it into place."""
    import torch

    was_training = model.training
    model.eval()
    x = torch.zeros(EXPORT_BATCH, model.cfg.in_chans, img_size, img_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        with _quiet_exporter(), tempfile.TemporaryDirectory() as scratch:
            program = torch.onnx.export(
                model,
                (x,),
                dynamo=True,
                dynamic_shapes=({0: batch},),
                input_names=[INPUT_NAME],
                output_names=list(names),
                optimize=True,
                verbose=False,
            )
            assert program is not None
            scratch_file = Path(scratch) / "model.onnx"
            program.save(str(scratch_file))
            atomic_write_bytes(target, scratch_file.read_bytes())
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's notes on packages it does not need (torchvision) and deprecations stay out of the output."""
    loggers = [
        logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _cache_folder() -> Path | None:
    """``<CONFORMER_BENCH_CACHE>/onnx``, else ``~/.cache/conformer-bench/onnx``; ``None`` when the cache is off."""

    setting = os.environ.get(CACHE_ENV)
    if setting is not None:
        return None if setting.strip().lower() in ("", "off", "0", "no") else Path(setting) / "onnx"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "conformer-bench" / "onnx"


def _cached_path(key: str) -> Path | None:
    folder = _cache_folder()
    return None if folder is None else folder / f"{key}.onnx"


def _session_path(key: str) -> Path:
    """A file for this process only (cache off): one export per key, shared by the backends of a run."""
    if key not in _SESSION_EXPORTS:
        folder = Path(tempfile.mkdtemp(prefix="conformer-bench-onnx-"))
        atexit.register(shutil.rmtree, folder, True)
        _SESSION_EXPORTS[key] = folder / "model.onnx"
    return _SESSION_EXPORTS[key]


def _cache_key(model: Any, img_size: int) -> str:
    """Config (less its name), image size, a digest of the weights, the tools' versions and the code's digest."""
    config = {k: v for k, v in model.cfg.to_dict().items() if k not in ("name", "from_paper")}
    key = {"config": config, "img_size": img_size, "weights": _weights_digest(model), **_tools()}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _weights_digest(model: Any) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@lru_cache(maxsize=1)
def _tools() -> dict[str, str]:
    """Versions of torch, onnx and onnxscript and a digest of the model's and this module's code."""
    import torch

    import conformer.layers
    import conformer.model

    digest = hashlib.sha256()
    for source in (conformer.model.__file__, conformer.layers.__file__, __file__):
        digest.update(Path(source).read_bytes())
    return {
        "torch": torch.__version__,
        "onnx": version("onnx"),
        "onnxscript": version("onnxscript"),
        "code": digest.hexdigest()[:16],
    }


def _opset(path: Path) -> int | None:
    """The default-domain opset of the file (read without its weights)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in graph.opset_import if o.domain in ("", "ai.onnx")), None)


def as_conformer_output(cfg: Any, arrays: list[Any]) -> Any:
    """A ConformerOutput of float32 torch tensors from the graph's outputs (absent heads are ``None``)."""
    import torch

    from conformer.model import ConformerOutput

    found = dict(zip(output_names(cfg), arrays, strict=True))
    conv, trans = found.get("conv_logits"), found.get("trans_logits")
    return ConformerOutput(
        None if conv is None else torch.from_numpy(conv).float(),
        None if trans is None else torch.from_numpy(trans).float(),
    )


def as_numpy(x: Any) -> Any:
    """A float32 C-contiguous numpy view of a CPU tensor (no copy when it already is one)."""
    return x.detach().float().contiguous().numpy()


def prepare_from_export(
    backend: str,
    model: Any,
    precision: str,
    precision_name: str,
    options: PrepareOptions,
    description: str,
    open_graph: Callable[[OnnxExport], tuple[Runner, str]],
) -> Prepared:
    """The :class:`~conformer_bench.backends.Prepared` of a runtime that runs the ONNX export.

    ``open_graph(export) -> (run, kernels)`` loads the exported file into the runtime; an export or a load
    that fails makes the model ``unsupported`` by this backend, with the reason.
    """
    if options.device != "cpu":
        reason = f"{backend} runs on the CPU here; device {options.device} was asked for"
        return unsupported(backend, backend, precision, precision_name, description, reason)
    started = time.perf_counter()
    try:
        export = export_onnx(model, options.img_size)
    except Exception as exc:  # an operator the exporter cannot translate: this variant is not deployable here
        reason = f"the ONNX export failed ({exception_line(exc)})"
        return unsupported(backend, backend, precision, precision_name, description, reason)
    try:
        run, kernels = open_graph(export)
    except Exception as exc:
        reason = f"{backend} cannot load the ONNX export ({exception_line(exc)})"
        prepared = unsupported(backend, backend, precision, precision_name, description, reason)
        prepared.export = export.record()
        return prepared
    return Prepared(
        backend,
        backend,
        precision,
        precision_name,
        Status.OK,
        None,
        description,
        kernels=kernels,
        run=run,
        prepare_s=time.perf_counter() - started,
        export=export.record(),
    )
